#!/usr/bin/env python3
"""Set TF_CONFIG for a multi-worker Indexed Job pod, then exec the trainer.

    python jobs/entrypoint.py -- python -m dcign_tf.train --strategy=multi_worker ...

Kubernetes names the pods of an Indexed Job "<job name>-<index>" and, with
`subdomain: <headless service>` in the pod template, gives pod i the DNS name
"<job>-<i>.<service>.<namespace>.svc". That is all MultiWorkerMirroredStrategy
needs: this script writes

    TF_CONFIG = {"cluster": {"worker": ["<job>-0.<svc>.<ns>.svc:<port>", ...]},
                 "task": {"type": "worker", "index": <JOB_COMPLETION_INDEX>}}

and replaces itself (os.execvp) with the command after "--", so the trainer
keeps this process's PID and receives SIGTERM directly when the pod is
preempted (it then checkpoints and exits 143). Worker 0 is the chief.

Environment (set in k8s/workloads/train-multiworker/job.yaml):
  JOB_COMPLETION_INDEX  this pod's index (set by the Job controller)
  NUM_WORKERS           number of workers (== the Job's completions)
  JOB_NAME              the Job's name (downward API: the job-name label)
  WORKER_SERVICE        the headless Service == the pod template's subdomain
  POD_NAMESPACE         optional; without it the short "<job>-<i>.<svc>" is used
  WORKER_PORT           optional, default 2222
  CLUSTER_DOMAIN        optional, e.g. "cluster.local" to fully qualify names

Anything wrong with them: one line on stderr and exit status 2 (which the
Job's podFailurePolicy treats as "don't retry").
"""
from __future__ import annotations

import json
import os
import re
import sys

DEFAULT_PORT = 2222
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_label(what: str, value: str) -> None:
    if not (isinstance(value, str) and len(value) <= 63 and _DNS_LABEL.match(value)):
        raise ValueError(f"{what} must be a DNS label (lower-case letters, digits, '-', "
                         f"at most 63 characters), got {value!r}")


def worker_host(index: int, job_name: str, service: str, namespace: str | None = None,
                cluster_domain: str | None = None) -> str:
    """DNS name of Indexed Job pod `index` under its headless service."""
    host = f"{job_name}-{index}.{service}"
    if namespace:
        host += f".{namespace}.svc"
        if cluster_domain:
            host += f".{cluster_domain}"
    return host


def build_tf_config(index: int, num_workers: int, job_name: str, service: str,
                    namespace: str | None = None, port: int = DEFAULT_PORT,
                    cluster_domain: str | None = None) -> dict:
    """TF_CONFIG for worker `index` of `num_workers`; raises ValueError if inconsistent."""
    for what, value in (("index", index), ("num_workers", num_workers), ("port", port)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be an integer, got {value!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if not 0 <= index < num_workers:
        raise ValueError(f"index must be in [0, {num_workers}), got {index}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in [1, 65535], got {port}")
    _check_label("job name", job_name)
    _check_label("service", service)
    if namespace:
        _check_label("namespace", namespace)
    # The pod hostname "<job>-<index>" is itself a DNS label (Kubernetes
    # truncates longer ones, which would break these addresses).
    _check_label("pod hostname", f"{job_name}-{num_workers - 1}")
    if cluster_domain and not namespace:
        raise ValueError("cluster_domain needs a namespace")
    workers = [f"{worker_host(i, job_name, service, namespace, cluster_domain)}:{port}"
               for i in range(num_workers)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def _int_env(env: dict, name: str, default: int | None = None) -> int:
    raw = env.get(name, "")
    if raw.strip() == "":
        if default is None:
            raise ValueError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _str_env(env: dict, name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ValueError(f"{name} is not set")
    return value


def tf_config_from_env(env: dict) -> dict:
    return build_tf_config(
        index=_int_env(env, "JOB_COMPLETION_INDEX"),
        num_workers=_int_env(env, "NUM_WORKERS"),
        job_name=_str_env(env, "JOB_NAME"),
        service=_str_env(env, "WORKER_SERVICE"),
        namespace=env.get("POD_NAMESPACE", "").strip() or None,
        port=_int_env(env, "WORKER_PORT", DEFAULT_PORT),
        cluster_domain=env.get("CLUSTER_DOMAIN", "").strip() or None,
    )


def main(argv: list[str]) -> int:
    command = argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("entrypoint: error: no command to run (usage: entrypoint.py -- CMD [ARGS...])", file=sys.stderr)
        return 2
    try:
        tf_config = json.dumps(tf_config_from_env(os.environ), separators=(",", ":"))
    except ValueError as e:
        print(f"entrypoint: error: cannot build TF_CONFIG: {e}", file=sys.stderr)
        return 2
    os.environ["TF_CONFIG"] = tf_config
    print(f"entrypoint: TF_CONFIG={tf_config}", file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)
    except OSError as e:   # e.g. command not found
        print(f"entrypoint: error: cannot run {command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
