"""jobs/entrypoint.py against the multi-worker Indexed Job it is written for.

The Job + headless Service come from the built train-multiworker overlay, so
renaming the Job, the Service, the port or the worker count in the manifests
without keeping them consistent fails here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kustomize_build import build_overlay

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "jobs" / "entrypoint.py"
OVERLAY = ROOT / "k8s" / "overlays" / "train-multiworker"
NAMESPACE = "dcign-test"
PRINT_TF_CONFIG = "import os,json; print(os.environ['TF_CONFIG'])"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entrypoint = _load_module("dcign_jobs_entrypoint", ENTRYPOINT)


@pytest.fixture(scope="module")
def cluster():
    """The Indexed Job, its headless Service and what the entrypoint is given."""
    docs = build_overlay(OVERLAY)  # kubectl kustomize; skipped where kubectl is absent
    (job,) = [d for d in docs if d["kind"] == "Job"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    subdomain = pod["spec"]["subdomain"]
    return {"job": job, "pod": pod, "container": container, "env": env,
            "service": services[subdomain], "subdomain": subdomain}


def _field_path(env: dict, name: str) -> str:
    return env[name]["valueFrom"]["fieldRef"]["fieldPath"]


def test_job_and_service_fit_together(cluster):
    job, pod, svc, env = cluster["job"], cluster["pod"], cluster["service"], cluster["env"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    # every worker runs at once (MultiWorkerMirroredStrategy needs all of them)
    assert spec["parallelism"] == spec["completions"] >= 2
    assert int(env["NUM_WORKERS"]["value"]) == spec["completions"]
    # the headless Service is the pods' subdomain and selects exactly them
    assert svc["metadata"]["name"] == cluster["subdomain"] == env["WORKER_SERVICE"]["value"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    selector = svc["spec"]["selector"]
    assert selector and selector.items() <= pod["metadata"]["labels"].items()
    (port,) = svc["spec"]["ports"]
    assert int(env["WORKER_PORT"]["value"]) == port["port"] == port.get("targetPort", port["port"])
    assert {"name": port["name"], "containerPort": port["port"]} in cluster["container"]["ports"]
    # the rest comes from the downward API, so it follows the real pod
    assert _field_path(env, "JOB_COMPLETION_INDEX") == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert _field_path(env, "JOB_NAME") == "metadata.labels['batch.kubernetes.io/job-name']"
    assert _field_path(env, "POD_NAMESPACE") == "metadata.namespace"
    # exit 2 (bad env) fails the Job instead of retrying
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and 2 in r["onExitCodes"]["values"]
               and r["onExitCodes"]["containerName"] == cluster["container"]["name"]
               for r in rules if "onExitCodes" in r)
    args = cluster["container"]["args"]
    assert args[:3] == ["python", "/app/jobs/entrypoint.py", "--"]
    assert "--strategy=multi_worker" in args


def test_tf_config_matches_indexed_job_pod_names(cluster):
    job, svc = cluster["job"], cluster["service"]
    job_name, service = job["metadata"]["name"], svc["metadata"]["name"]
    n = job["spec"]["completions"]
    port = svc["spec"]["ports"][0]["port"]
    for index in range(n):  # JOB_COMPLETION_INDEX takes the values 0..completions-1
        tf_config = entrypoint.build_tf_config(index, n, job_name, service, NAMESPACE, port)
        assert tf_config["task"] == {"type": "worker", "index": index}
        workers = tf_config["cluster"]["worker"]
        assert list(tf_config["cluster"]) == ["worker"] and len(workers) == n
        for i, address in enumerate(workers):
            host, _, p = address.rpartition(":")
            assert int(p) == port
            # Indexed Job pod i has hostname "<job>-<i>"; subdomain <svc> gives
            # it the DNS name <hostname>.<svc>.<namespace>.svc
            hostname, svc_part, ns, suffix = host.split(".")
            assert hostname == f"{job_name}-{i}" and len(hostname) <= 63
            assert (svc_part, ns, suffix) == (service, NAMESPACE, "svc")
        # worker 0 (the chief: checkpoints, TensorBoard, exports) is pod 0
        assert workers[0].startswith(f"{job_name}-0.")


def test_build_tf_config_variants():
    short = entrypoint.build_tf_config(1, 2, "job", "svc")
    assert short == {"cluster": {"worker": ["job-0.svc:2222", "job-1.svc:2222"]},
                     "task": {"type": "worker", "index": 1}}
    fqdn = entrypoint.build_tf_config(0, 1, "job", "svc", "ns", 5000, cluster_domain="cluster.local")
    assert fqdn["cluster"]["worker"] == ["job-0.svc.ns.svc.cluster.local:5000"]


@pytest.mark.parametrize("kwargs", [
    dict(index=2, num_workers=2),
    dict(index=-1, num_workers=2),
    dict(index=0, num_workers=0),
    dict(index="0", num_workers=2),
    dict(index=0, num_workers=2, port=0),
    dict(index=0, num_workers=2, job_name="Job_Name"),
    dict(index=0, num_workers=2, service=""),
    dict(index=0, num_workers=2, job_name="j" * 62),   # hostname "<job>-1" > 63 chars
    dict(index=0, num_workers=2, cluster_domain="cluster.local"),  # needs a namespace
])
def test_build_tf_config_rejects(kwargs):
    args = dict(job_name="job", service="svc")
    args.update(kwargs)
    with pytest.raises(ValueError):
        entrypoint.build_tf_config(**args)


# --------------------------------------------------------------------------- #
# The script itself, as the pod runs it
# --------------------------------------------------------------------------- #
def pod_env(cluster, index: int) -> dict:
    """The environment the kubelet gives pod `index`: literal values from the
    manifest, downward-API ones resolved as Kubernetes would."""
    downward = {
        "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index),
        "metadata.labels['batch.kubernetes.io/job-name']": cluster["job"]["metadata"]["name"],
        "metadata.namespace": NAMESPACE,
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, e in cluster["env"].items():
        env[name] = e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def run_entrypoint(env: dict, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRYPOINT), *command], env=env,
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_exports_tf_config_and_execs(cluster):
    job, svc = cluster["job"], cluster["service"]
    n = job["spec"]["completions"]
    for index in (0, n - 1):
        out = run_entrypoint(pod_env(cluster, index), "--", sys.executable, "-c", PRINT_TF_CONFIG)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == entrypoint.build_tf_config(
            index, n, job["metadata"]["name"], svc["metadata"]["name"], NAMESPACE,
            svc["spec"]["ports"][0]["port"])
        assert out.stderr.startswith("entrypoint: TF_CONFIG=")


def test_entrypoint_replaces_itself(cluster):
    """exec, not a child process: same PID (so the trainer gets SIGTERM) and
    the command's exit status is the pod's."""
    proc = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), "--", sys.executable, "-c",
         "import os, sys; print(os.getpid()); sys.exit(7)"],
        env=pod_env(cluster, 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7
    assert int(stdout) == proc.pid


def test_entrypoint_overrides_inherited_tf_config(cluster):
    env = pod_env(cluster, 1)
    env["TF_CONFIG"] = '{"task": {"type": "worker", "index": 0}}'
    out = run_entrypoint(env, "--", sys.executable, "-c", PRINT_TF_CONFIG)
    assert json.loads(out.stdout)["task"]["index"] == 1


@pytest.mark.parametrize("change, command", [
    ({"JOB_COMPLETION_INDEX": None}, None),
    ({"JOB_COMPLETION_INDEX": "one"}, None),
    ({"JOB_COMPLETION_INDEX": "4", "NUM_WORKERS": "4"}, None),
    ({"NUM_WORKERS": "0"}, None),
    ({"NUM_WORKERS": None}, None),
    ({"JOB_NAME": ""}, None),            # label missing on a non-Indexed pod
    ({"WORKER_SERVICE": None}, None),
    ({"WORKER_PORT": "70000"}, None),
    ({"WORKER_PORT": "grpc"}, None),
    ({"POD_NAMESPACE": "Not_A_Namespace"}, None),
    ({}, []),                            # nothing to exec
    ({}, ["--"]),
])
def test_entrypoint_bad_env_exits_2_with_one_line(cluster, change, command):
    env = pod_env(cluster, 0)
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    if command is None:
        command = ["--", sys.executable, "-c", "print('should not run')"]
    out = run_entrypoint(env, *command)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("entrypoint: error: "), out.stderr


# --------------------------------------------------------------------------- #
# A malformed TF_CONFIG (set by hand, or by an operator) is named as such
# --------------------------------------------------------------------------- #
def test_entrypoint_env_errors_say_tf_config_cannot_be_built(cluster):
    env = pod_env(cluster, 0)
    env.pop("NUM_WORKERS")
    out = run_entrypoint(env, "--", sys.executable, "-c", "print('should not run')")
    assert out.returncode == 2 and out.stderr.strip() == "entrypoint: error: cannot build TF_CONFIG: NUM_WORKERS is not set"


class TestMalformedTfConfig:
    GOOD = {"cluster": {"worker": ["w0:2222", "w1:2222"]}, "task": {"type": "worker", "index": 1}}

    def test_the_entrypoints_tf_config_parses(self, cluster):
        from dcign_tf import distributed

        job, svc = cluster["job"], cluster["service"]
        built = entrypoint.build_tf_config(1, job["spec"]["completions"], job["metadata"]["name"],
                                           svc["metadata"]["name"], NAMESPACE)
        assert distributed.parse_tf_config(json.dumps(built)) == built
        assert distributed.parse_tf_config(json.dumps(self.GOOD)) == self.GOOD

    @pytest.mark.parametrize("text, problem", [
        ('{"cluster": ', "is not valid JSON"),
        ("[]", 'has no "cluster" object'),
        ('{"task": {"type": "worker", "index": 0}}', 'has no "cluster" object'),
        ('{"cluster": {"worker": "w0:2222"}, "task": {"type": "worker", "index": 0}}', "is not a list"),
        ('{"cluster": {"worker": ["w0"]}, "task": {"type": "worker", "index": 0}}', "is not a list of \"host:port\""),
        ('{"cluster": {"worker": ["w0:1"]}}', "task None is not"),
        ('{"cluster": {"worker": ["w0:1"]}, "task": {"type": "chief", "index": 0}}', "task {'type': 'chief'"),
        ('{"cluster": {"worker": ["w0:1"]}, "task": {"type": "worker", "index": 1}}', "task index 1 is not 0..0"),
        ('{"cluster": {"worker": ["w0:1"]}, "task": {"type": "worker", "index": "0"}}', "task index '0'"),
    ])
    def test_each_fault_names_tf_config(self, text, problem):
        from dcign_tf import distributed

        with pytest.raises(ValueError) as error:
            distributed.parse_tf_config(text)
        message = str(error.value)
        assert message.startswith("TF_CONFIG ") and problem in message and "\n" not in message, message

    def test_train_exits_2_saying_tf_config_is_the_problem(self, tmp_path):
        env = {**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker"}}'}
        out = subprocess.run([sys.executable, "-m", "dcign_tf.train", f"--flagfile={ROOT}/configs/test.flags",
                              "--strategy=multi_worker", f"--workdir={tmp_path}/run", f"--data_dir={tmp_path}/data"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        (line,) = [line for line in out.stderr.splitlines() if line.startswith("dcign_tf.train: error:")]
        assert "TF_CONFIG task index None" in line, line
