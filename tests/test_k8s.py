"""Offline checks of the container image recipe and the Kubernetes manifests.

No cluster, no Docker:
  * every overlay in k8s/overlays is built once per session with `kubectl kustomize`
    (kubectl's built-in kustomize v5, what `kubectl apply -k` applies); the
    manifest tests are skipped, saying why, where kubectl is not installed;
  * every built resource is validated against the Kubernetes OpenAPI schemas
    bundled in the `kubernetes-validate` package (strict: unknown fields fail),
    the TFJob against k8s/schemas/tfjob.json plus each of its pod templates
    against PodTemplateSpec;
  * policy checks (resources, non-root, no secrets, restart/backoff settings,
    the commands the pods run) - each checker is also shown to fail on a
    broken copy, so a passing run means something.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from kustomize_build import build_overlay

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS_DIR = K8S / "overlays"
DOCKERFILE = ROOT / "jobs" / "Dockerfile"

# The oldest Kubernetes we support (its Job schema is the first to accept our
# podFailurePolicy exit-code rules) and the newest one the installed
# kubernetes-validate bundles.
K8S_VERSIONS = sorted({"1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2])})
UID = 1000  # jobs/Dockerfile's user
HOME = "/home/dcign"  # jobs/Dockerfile's HOME (test_dockerfile checks): ~/.keras, ~/.cache/matplotlib live there
WRITABLE = ("/tmp", HOME)  # With a read-only root filesystem, what TF, Keras, absl and matplotlib write to

PVC, DEP, SVC, JOB, TFJOB = ("PersistentVolumeClaim", "Deployment", "Service", "Job", "TFJob")
COMMON = {PVC: 2, DEP: 1, SVC: 1}  # k8s/base: data + runs claims, TensorBoard
EXPECTED = {
    # overlay: (kinds, workload kind, GPUs per pod, --strategy, pods)
    "datagen": ({**COMMON, JOB: 1}, JOB, 0, None, 8),
    "train-1gpu": ({**COMMON, JOB: 1}, JOB, 1, "mirrored", 1),
    "train-4gpu": ({**COMMON, JOB: 1}, JOB, 4, "mirrored", 1),
    "train-8gpu": ({**COMMON, JOB: 1}, JOB, 8, "mirrored", 1),
    "train-multiworker": ({**COMMON, SVC: 2, JOB: 1}, JOB, 1, "multi_worker", 4),
    "train-tfjob": ({**COMMON, TFJOB: 1}, TFJOB, 1, "multi_worker", 4),
    "eval": ({**COMMON, JOB: 1}, JOB, 1, None, 1),
}
TRAIN_ARGS = ["-m", "dcign_tf.train", "--flagfile=configs/faces.flags",
              "--workdir=/runs/$(RUN_NAME)", "--data_dir=/data/faces"]


def overlay_names() -> list[str]:
    return sorted(p.name for p in OVERLAYS_DIR.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict]]:
    """Every overlay, built once per session by `kubectl kustomize` (about 0.1 s each)."""
    return {name: build_overlay(OVERLAYS_DIR / name) for name in overlay_names()}


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    if doc["kind"] in (DEP, JOB):
        return [(f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"])]
    if doc["kind"] == TFJOB:
        return [(f"TFJob/{doc['metadata']['name']}/{rtype}", spec["template"])
                for rtype, spec in doc["spec"]["tfReplicaSpecs"].items()]
    return []


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def workload(docs: list[dict]) -> dict:
    (doc,) = [d for d in docs if d["kind"] in (JOB, TFJOB)]
    return doc


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env") or []}


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
def test_overlays_are_the_expected_set():
    assert overlay_names() == sorted([*EXPECTED, STUDY])  # STUDY: two Jobs, checked at the end of this file


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_overlay_builds_to_expected_kinds(built, name):
    kinds, *_ = EXPECTED[name]
    assert Counter(d["kind"] for d in built[name]) == Counter(kinds)
    names = [d["metadata"]["name"] for d in built[name]]
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names), names


# --------------------------------------------------------------------------- #
# Schemas
# --------------------------------------------------------------------------- #
TFJOB_SCHEMA = json.loads((K8S / "schemas" / "tfjob.json").read_text(encoding="utf-8"))


def validate_tfjob(doc: dict, version: str) -> None:
    jsonschema.Draft202012Validator.check_schema(TFJOB_SCHEMA)
    jsonschema.Draft202012Validator(TFJOB_SCHEMA).validate(doc)
    # The embedded pod templates against the real PodTemplateSpec schema
    # (wrapped in a PodTemplate, the core kind whose `template` is one).
    for rtype, spec in doc["spec"]["tfReplicaSpecs"].items():
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate",
             "metadata": {"name": f"{doc['metadata']['name']}-{rtype.lower()}"},
             "template": spec["template"]}, version, strict=True)


def validate_doc(doc: dict, version: str) -> None:
    if doc["kind"] == TFJOB:
        validate_tfjob(doc, version)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resources_validate_against_schemas(built, name, version):
    for doc in built[name]:
        try:
            validate_doc(doc, version)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                        f"Kubernetes {version} at {'.'.join(map(str, e.path))}: {e.message}")


def _chief(job: dict, replicas: int = 1) -> dict:
    spec = copy.deepcopy(job["spec"]["tfReplicaSpecs"]["Worker"])
    spec["replicas"] = replicas
    return spec


@pytest.mark.parametrize("mutate", [
    lambda j, w, c: w.update(restartPolicy="Sometimes"),
    lambda j, w, c: w.update(replicas="4"),
    lambda j, w, c: w["template"]["spec"].update(restartPolicy="Never"),  # set per replica spec
    lambda j, w, c: j["spec"]["tfReplicaSpecs"].update(Master2=_chief(j)),
    lambda j, w, c: j["spec"]["tfReplicaSpecs"].update(Chief=_chief(j, replicas=2)),
    lambda j, w, c: j["spec"]["tfReplicaSpecs"].update(Chief=_chief(j), Master=_chief(j)),
    lambda j, w, c: j["spec"].update(tfReplicaSpecs={}),
    lambda j, w, c: j["spec"]["runPolicy"].update(cleanPodPolicy="Sometimes"),
    lambda j, w, c: j["spec"]["runPolicy"].update(backofLimit=3),
    lambda j, w, c: j["metadata"].update(name="DCIGN_train"),
    lambda j, w, c: c.update(name="trainer"),       # the operator needs "tensorflow"
    lambda j, w, c: c.pop("image"),
    lambda j, w, c: c["resources"].update(limitz={}),  # caught by PodTemplateSpec
    lambda j, w, c: c.update(imagePullPolicy=3),       # caught by PodTemplateSpec
])
def test_tfjob_validation_rejects_broken_jobs(built, mutate):
    job = copy.deepcopy(workload(built["train-tfjob"]))
    validate_tfjob(job, K8S_VERSIONS[0])
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    mutate(job, worker, worker["template"]["spec"]["containers"][0])
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_tfjob(job, K8S_VERSIONS[0])


def test_tfjob_schema_accepts_other_documented_shapes(built):
    job = copy.deepcopy(workload(built["train-tfjob"]))
    job["spec"]["tfReplicaSpecs"].update(Master=_chief(job), PS=_chief(job, replicas=2),
                                         Evaluator=_chief(job))
    job["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "ExitCode"
    job["spec"]["runPolicy"].update(ttlSecondsAfterFinished=3600, activeDeadlineSeconds=86400,
                                    suspend=False, schedulingPolicy={"minAvailable": 4, "queue": "gpu"})
    job["spec"]["successPolicy"] = "AllWorkers"
    validate_tfjob(job, K8S_VERSIONS[0])


def test_kubernetes_validate_rejects_unknown_fields(built):
    doc = copy.deepcopy(workload(built["train-1gpu"]))
    doc["spec"]["backofLimit"] = 4
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_doc(doc, K8S_VERSIONS[0])


# --------------------------------------------------------------------------- #
# Policy
# --------------------------------------------------------------------------- #
_UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
SECRET_NAME = re.compile(r"(PASSW|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|CREDENTIAL|PRIVATE)", re.I)
SECRET_VALUE = re.compile(r"(AKIA[0-9A-Z]{16}|-----BEGIN|gh[pousr]_[A-Za-z0-9]{20,}|xox[abp]-"
                          r"|[A-Za-z0-9+/=_-]{40,})")


def quantity(value) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and m.group(2) in _UNITS, f"bad quantity {value!r}"
    return float(m.group(1)) * _UNITS[m.group(2)]


def image_pin(image: str) -> str:
    """The tag (":1.0") or digest ("@sha256:...") of an image reference; "" when it has neither."""
    if "@" in image:
        return image[image.index("@"):]
    last = image.rsplit("/", 1)[-1]  # a registry's ":5000" is not a tag
    return last[last.index(":"):] if ":" in last else ""


def container_violations(where: str, c: dict) -> list[str]:
    out = []
    where = f"{where}/{c['name']}"
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(part) or {}):
                out.append(f"{where}: no {part}.{r}")
    for r, limit in (res.get("limits") or {}).items():
        request = (res.get("requests") or {}).get(r)
        if request is not None and quantity(request) > quantity(limit):
            out.append(f"{where}: {r} request > limit")
    gpus = [(res.get(p) or {}).get("nvidia.com/gpu") for p in ("requests", "limits")]
    if any(g is not None for g in gpus) and gpus[0] != gpus[1]:
        out.append(f"{where}: nvidia.com/gpu requests != limits")
    sc = c.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{where}: readOnlyRootFilesystem must be true")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        out.append(f"{where}: capabilities must drop ALL")
    if (sc.get("capabilities") or {}).get("add") or sc.get("privileged"):
        out.append(f"{where}: privileged / added capabilities")
    if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
        out.append(f"{where}: runs as root")
    if "command" in c:
        out.append(f"{where}: sets command (use args so the image's tini ENTRYPOINT stays PID 1)")
    image = c.get("image", "")
    if image_pin(image) in ("", ":latest"):
        out.append(f"{where}: image {image!r} is not pinned to a tag or digest")
    for e in c.get("env") or []:
        if "secretKeyRef" in (e.get("valueFrom") or {}):
            out.append(f"{where}: env {e['name']} reads a Secret")
        value = str(e.get("value", ""))
        if value and (SECRET_NAME.search(e["name"]) or SECRET_VALUE.search(value)):
            out.append(f"{where}: env {e['name']} looks like a secret")
    if any("secretRef" in s for s in c.get("envFrom") or []):
        out.append(f"{where}: envFrom a Secret")
    return out


def doc_violations(doc: dict) -> list[str]:
    kind, name = doc["kind"], doc["metadata"]["name"]
    out = []
    if kind == "Secret":
        out.append(f"Secret/{name}: no Secrets in the manifests")
    if kind == JOB:
        spec = doc["spec"]
        if not isinstance(spec.get("backoffLimit"), int):
            out.append(f"Job/{name}: no backoffLimit")
        restart = spec["template"]["spec"].get("restartPolicy")
        if restart not in ("Never", "OnFailure"):
            out.append(f"Job/{name}: restartPolicy must be Never or OnFailure")
        if restart == "Never":
            rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
            if not any(r["action"] == "Ignore" and any(
                    c["type"] == "DisruptionTarget" for c in r.get("onPodConditions") or [])
                    for r in rules):
                out.append(f"Job/{name}: with restartPolicy Never, preemptions must be ignored "
                           "by a podFailurePolicy DisruptionTarget rule")
    if kind == TFJOB:
        if not isinstance((doc["spec"].get("runPolicy") or {}).get("backoffLimit"), int):
            out.append(f"TFJob/{name}: no runPolicy.backoffLimit")
        for rtype, rspec in doc["spec"]["tfReplicaSpecs"].items():
            if rspec.get("restartPolicy") not in ("OnFailure", "ExitCode"):
                out.append(f"TFJob/{name}/{rtype}: restartPolicy must restart preempted workers")
    for where, template in pod_templates(doc):
        spec = template["spec"]
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            out.append(f"{where}: runAsNonRoot must be true")
        if psc.get("runAsUser") != UID or psc.get("runAsGroup") != UID or psc.get("fsGroup") != UID:
            out.append(f"{where}: runAsUser/runAsGroup/fsGroup must be the image's {UID}")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{where}: seccompProfile must be RuntimeDefault")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            out.append(f"{where}: host namespaces")
        if spec.get("automountServiceAccountToken") is not False:
            out.append(f"{where}: automountServiceAccountToken must be false (no pod calls the API)")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            if "secret" in v or "hostPath" in v:
                out.append(f"{where}: volume {v['name']} is a secret/hostPath")
        for c in containers(template):
            out += container_violations(where, c)
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
            for path in WRITABLE:
                mount = mounts.get(path)
                if mount is None or mount.get("readOnly") or "emptyDir" not in volumes.get(mount["name"], {}):
                    out.append(f"{where}/{c['name']}: {path} must be a writable emptyDir (the root is read-only)")
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_policy(built, name):
    problems = [p for doc in built[name] for p in doc_violations(doc)]
    assert problems == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_volumes_reference_claims_of_the_same_overlay(built, name):
    claims = {d["metadata"]["name"] for d in built[name] if d["kind"] == PVC}
    for doc in built[name]:
        for where, template in pod_templates(doc):
            volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims, where
            for c in containers(template):
                for m in c.get("volumeMounts") or []:
                    assert m["name"] in volumes, f"{where}: mount of unknown volume {m['name']}"
                    claim = volumes[m["name"]].get("persistentVolumeClaim") or {}
                    # the dataset is read-only for everything but its generator
                    if claim.get("claimName") == "dcign-data" and c["name"] != "datagen":
                        assert m.get("readOnly") is True, f"{where}/{c['name']}: /data writable"


@pytest.mark.parametrize("mutate, expected", [
    (lambda c, p, j: c["resources"].pop("limits"), "no limits.cpu"),
    (lambda c, p, j: c["resources"]["requests"].update(memory="64Gi"), "memory request > limit"),
    (lambda c, p, j: c["resources"]["limits"].update({"nvidia.com/gpu": 2}), "requests != limits"),
    (lambda c, p, j: p["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda c, p, j: p["securityContext"].update(runAsUser=0), "runAsUser"),
    (lambda c, p, j: p["securityContext"].pop("seccompProfile"), "seccompProfile"),
    (lambda c, p, j: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda c, p, j: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
    (lambda c, p, j: c["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
    (lambda c, p, j: p.pop("automountServiceAccountToken"), "automountServiceAccountToken"),
    (lambda c, p, j: c["volumeMounts"].pop(0), "/tmp must be a writable emptyDir"),
    (lambda c, p, j: [m.update(readOnly=True) for m in c["volumeMounts"] if m["mountPath"] == HOME],
     f"{HOME} must be a writable emptyDir"),
    (lambda c, p, j: [(v.pop("emptyDir"), v.update(persistentVolumeClaim={"claimName": "dcign-runs"}))
                      for v in p["volumes"] if v["name"] == "tmp"], "/tmp must be a writable emptyDir"),
    (lambda c, p, j: c.update(command=["python"]), "sets command"),
    (lambda c, p, j: c.update(image="registry.example.com/dcign-tf:latest"), "not pinned"),
    (lambda c, p, j: c.update(image="dcign-tf"), "not pinned"),
    (lambda c, p, j: c.update(image="registry.example.com:5000/dcign-tf"), "not pinned"),  # a port, no tag
    (lambda c, p, j: c["env"].append({"name": "WANDB_API_KEY", "value": "x" * 8}), "looks like a secret"),
    (lambda c, p, j: c["env"].append({"name": "OPTS", "value": "AKIAABCDEFGHIJKLMNOP"}), "looks like a secret"),
    (lambda c, p, j: c["env"].append({"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
     "reads a Secret"),
    (lambda c, p, j: p["volumes"].append({"name": "s", "secret": {"secretName": "s"}}), "secret/hostPath"),
    (lambda c, p, j: j["spec"].pop("backoffLimit"), "no backoffLimit"),
    (lambda c, p, j: j["spec"].pop("podFailurePolicy"), "DisruptionTarget"),
    (lambda c, p, j: p.update(restartPolicy="Always"), "Never or OnFailure"),
    (lambda c, p, j: j.update(kind="Secret"), "no Secrets"),
])
def test_policy_checks_can_fail(built, mutate, expected):
    job = copy.deepcopy(workload(built["train-1gpu"]))
    pod = job["spec"]["template"]["spec"]
    mutate(pod["containers"][0], pod, job)
    if job["kind"] == "Secret":
        problems = doc_violations({"apiVersion": "v1", "kind": "Secret", "metadata": job["metadata"]})
    else:
        problems = doc_violations(job)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------- #
# What the pods run
# --------------------------------------------------------------------------- #
def main_container(doc: dict) -> dict:
    (_, template), *_ = pod_templates(doc)
    return template["spec"]["containers"][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gpus_and_strategy(built, name):
    _, kind, gpus, strategy, pods = EXPECTED[name]
    doc = workload(built[name])
    assert doc["kind"] == kind
    c = main_container(doc)
    res = c["resources"]
    assert res["limits"].get("nvidia.com/gpu", 0) == gpus
    assert res["requests"].get("nvidia.com/gpu", 0) == gpus
    strategies = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--strategy=")]
    assert strategies == ([strategy] if strategy else [])
    if kind == TFJOB:
        assert doc["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == pods
    else:
        assert doc["spec"].get("parallelism", 1) == doc["spec"].get("completions", 1) == pods
    if gpus:  # tolerate the usual GPU-node taint
        (_, template), *_ = pod_templates(doc)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            template["spec"]["tolerations"]


@pytest.mark.parametrize("name", [n for n, e in EXPECTED.items() if e[3]])
def test_training_pods(built, name):
    doc = workload(built[name])
    (_, template), *_ = pod_templates(doc)
    spec = template["spec"]
    c = main_container(doc)
    args = c["args"]
    i = args.index("-m") - 1
    # Every replica gets whole groups: the batch is a multiple of GPUs per pod x pods.
    batch_args = [a for a in args if a.startswith("--groups_per_batch=")]
    assert len(batch_args) == 1
    groups = batch_args[0].split("=", 1)[1]
    if groups.startswith("$("):
        groups = env_of(c)[groups[2:-1]]["value"]
    assert int(groups) % (EXPECTED[name][2] * EXPECTED[name][4]) == 0
    args = [a for a in args if a not in batch_args]
    assert args[i:] == ["python"] + TRAIN_ARGS + [f"--strategy={EXPECTED[name][3]}"]
    if name == "train-multiworker":
        assert args[:i] == ["python", "/app/jobs/entrypoint.py", "--"]
    else:
        assert i == 0
    assert env_of(c)["RUN_NAME"]["value"]
    # long enough to finish a step and checkpoint after SIGTERM
    assert spec["terminationGracePeriodSeconds"] >= 120
    shm = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert shm and {"name": shm[0]["name"], "mountPath": "/dev/shm"} in c["volumeMounts"]
    if doc["kind"] == JOB:
        rules = doc["spec"]["podFailurePolicy"]["rules"]
        resumable = [r for r in rules if r["action"] == "Ignore" and 143 in
                     (r.get("onExitCodes") or {}).get("values", [])]
        assert resumable and resumable[0]["onExitCodes"]["containerName"] == c["name"]
        fail_fast = [r for r in rules if r["action"] == "FailJob"]
        assert all(0 not in r["onExitCodes"]["values"] for r in fail_fast)
    else:
        assert c["name"] == "tensorflow"
        assert doc["spec"]["runPolicy"]["backoffLimit"] >= 1


def test_datagen_indexed_job(built):
    doc = workload(built["datagen"])
    spec = doc["spec"]
    assert spec["completionMode"] == "Indexed"
    c = main_container(doc)
    index_env = env_of(c)["JOB_COMPLETION_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    flags = dict(a[2:].split("=", 1) for a in c["args"] if a.startswith("--"))
    assert c["args"][:3] == ["python", "-m", "dcign_tf.data.make_faces"]
    assert flags == {"data_dir": "/data/faces", "image_size": "150", "groups_per_factor": "3000",
                     "test_groups_per_factor": "350", "num_shards": "64", "seed": "0",
                     "shard_index": "$(JOB_COMPLETION_INDEX)",
                     "num_tasks": str(spec["completions"]),
                     "processes": flags["processes"]}
    # one renderer process per CPU the pod may use
    assert quantity(flags["processes"]) == quantity(c["resources"]["limits"]["cpu"])
    assert spec["parallelism"] <= spec["completions"] <= int(flags["num_shards"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert not mounts["/data"].get("readOnly")


def test_eval_job(built):
    c = main_container(workload(built["eval"]))
    assert c["args"] == ["python", "-m", "dcign_tf.evaluate", "--workdir=/runs/$(RUN_NAME)"]
    assert env_of(c)["RUN_NAME"]["value"] == "faces"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tensorboard(built, name):
    docs = built[name]
    (dep,) = [d for d in docs if d["kind"] == DEP]
    (svc,) = [d for d in docs if d["kind"] == SVC and d["metadata"]["name"] == "tensorboard"]
    c = main_container(dep)
    assert c["args"] == ["tensorboard", "--logdir=/runs", "--bind_all", "--port=6006"]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert svc["spec"]["ports"][0]["port"] == 6006
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names[svc["spec"]["ports"][0]["targetPort"]] == 6006
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {"name": "runs", "mountPath": "/runs", "readOnly": True} in c["volumeMounts"]


def test_run_names_agree(built):
    """Training and evaluation default to the same workdir /runs/$(RUN_NAME)."""
    names = {name: env_of(main_container(workload(built[name])))["RUN_NAME"]["value"]
             for name, e in EXPECTED.items() if e[3] or name == "eval"}
    assert set(names.values()) == {"faces"}, names


def test_same_image_everywhere(built):
    images = {c["image"] for docs in built.values() for d in docs
              for _, t in pod_templates(d) for c in containers(t)}
    assert len(images) == 1, images


# --------------------------------------------------------------------------- #
# The image
# --------------------------------------------------------------------------- #
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    return [tuple(line.strip().split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile():
    ins = dockerfile_instructions()
    by = {}
    for op, arg in ins:
        by.setdefault(op.upper(), []).append(arg)
    (base,) = by["FROM"]
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu", base), base
    assert by["WORKDIR"] == ["/app"]
    assert by["USER"][-1] in (f"{UID}", f"{UID}:{UID}")
    assert any(f"--uid {UID}" in r for r in by["RUN"])
    assert any("pip install --no-cache-dir /app" in r for r in by["RUN"])
    assert json.loads(by["ENTRYPOINT"][0]) == ["/usr/bin/tini", "--"]
    assert f"HOME={HOME}" in " ".join(by["ENV"]).split()  # the emptyDir the manifests mount there
    assert any("tini" in r for r in by["RUN"])
    # every COPY source exists in the repo, and what the pods run is copied
    copied = set()
    for arg in by["COPY"]:
        *sources, dest = arg.split()
        for s in sources:
            assert (ROOT / s).exists(), f"COPY source {s} missing from the repo"
            copied.add(str(Path(dest) / s) if dest.endswith("/") else dest)
    assert {"/app/jobs", "/app/configs", "/app/dcign_tf", "/app/setup.py"} <= copied
    ignore = (ROOT / "jobs" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for s in ("setup.py", "README.md", "dcign_tf/**", "configs/**", "jobs/**"):
        assert f"!{s}" in ignore


READ_ONLY_ROOT_SCRIPT = r"""
set -e
W="$1"
mount --make-rprivate /
mount --bind "$W/tmp" /tmp
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in /proc*|/sys*|/dev*|/tmp) ;; *) mount -o remount,bind,ro "$m" 2>/dev/null || true ;; esac
done
if touch "$REPO/.read-only-probe" 2>/dev/null; then rm -f "$REPO/.read-only-probe"; echo "root still writable"; exit 99; fi
cd "$REPO"
python -m dcign_tf.data.make_faces --data_dir="$W/data" --image_size=32 --group_size=4 --groups_per_factor=6     --test_groups_per_factor=2 --num_shards=2 --processes=1 --noprogress
mount --bind "$W/data" "$W/data" && mount -o remount,bind,ro "$W/data"   # read-only for training, as mounted
python -m dcign_tf.train --flagfile=configs/test.flags --data_dir="$W/data" --dataset=prebuilt     --workdir="$W/runs/run" --steps=2 --log_every=1 --checkpoint_every=2 --eval_every=2 --image_every=2 --progress=none
python -m dcign_tf.evaluate --workdir="$W/runs/run" --groups_per_factor=2
"""


def test_the_programs_run_with_a_read_only_root(tmp_path):
    """readOnlyRootFilesystem, tried: in a private mount namespace where every filesystem is read-only but
    /tmp and HOME (the emptyDirs), /dev/shm and the data and runs volumes, the datagen, train and eval
    commands succeed (train with the data read-only, as the pods mount it). Root only: skipped elsewhere."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (needs root): {probe.stderr.strip()}")
    # Under /dev/shm, which stays writable in the namespace as in the pods (and is outside /tmp, bound over).
    work = Path(tempfile.mkdtemp(prefix="dcign-read-only-root-", dir="/dev/shm"))
    try:
        for name in ("tmp", "home", "data", "runs"):
            (work / name).mkdir()
        env = {**os.environ, "HOME": str(work / "home"), "REPO": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("TMPDIR", None)
        result = subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_ROOT_SCRIPT, "sh", str(work)], env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert (work / "runs" / "run" / "eval" / "metrics.json").is_file()
        # What landed in HOME is what the home emptyDir is for.
        assert (work / "home" / ".keras").is_dir()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_files_the_pods_use_exist(built):
    """--flagfile and the entrypoint path resolve inside the image (WORKDIR /app)."""
    for docs in built.values():
        for d in docs:
            for _, t in pod_templates(d):
                for c in containers(t):
                    for a in c.get("args") or []:
                        if a.startswith("--flagfile="):
                            assert (ROOT / a.split("=", 1)[1]).is_file(), a
                        if a.startswith("/app/"):
                            assert (ROOT / a[len("/app/"):]).is_file(), a


def test_docs_cover_every_overlay():
    text = (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"k8s/overlays/{name}" in text, name
    for needle in ("docker build", "kubectl apply -k", "kubectl get jobs -w",
                   "kubectl logs -f", "kubectl port-forward svc/tensorboard 6006:6006"):
        assert needle in text, needle


def test_submit_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = subprocess.run(["bash", "-n", str(ROOT / "jobs" / "submit.sh")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------- #
# The study overlay: two Jobs (dcign-study trains, dcign-study-summary evaluates
# and summarises), so it is checked here rather than through EXPECTED.
# --------------------------------------------------------------------------- #
STUDY = "study"


def study_jobs(built) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in built[STUDY] if d["kind"] == JOB}


def test_study_overlay_builds_and_validates(built):
    docs = built[STUDY]
    assert Counter(d["kind"] for d in docs) == Counter({**COMMON, JOB: 2})
    assert set(study_jobs(built)) == {"dcign-study", "dcign-study-summary"}
    for version in K8S_VERSIONS:
        for doc in docs:
            validate_doc(doc, version)
    assert [p for doc in docs for p in doc_violations(doc)] == []
    test_volumes_reference_claims_of_the_same_overlay(built, STUDY)
    test_tensorboard(built, STUDY)


def test_study_jobs_run_one_study(built, monkeypatch):
    """One pod per run of the study the pods name, the summary Job on the same study, in this order:
    the pods train only, the summary Job trains nothing, waits for them and evaluates."""
    from absl import flags as absl_flags

    from dcign_tf import study as study_lib

    jobs = study_jobs(built)
    train, summary = jobs["dcign-study"], jobs["dcign-study-summary"]
    train_c, summary_c = main_container(train), main_container(summary)
    assert train_c["args"][:3] == summary_c["args"][:3] == ["python", "-m", "dcign_tf.study"]
    train_own = ["--only_index=$(JOB_COMPLETION_INDEX)", "--noevaluate"]
    shared = [a for a in train_c["args"][3:] if a not in train_own]
    assert [a for a in train_c["args"][3:] if a in train_own] == train_own
    summary_own = [a for a in summary_c["args"][3:] if a not in shared]
    assert summary_own[0] == "--notrain" and summary_own[1].startswith("--wait_s=")
    assert float(summary_own[1].split("=", 1)[1]) >= 86400 and len(summary_own) == 2
    assert [a for a in summary_c["args"][3:] if a in shared] == shared
    assert env_of(train_c)["STUDY_NAME"]["value"] == env_of(summary_c)["STUDY_NAME"]["value"]
    assert any(a.startswith("--study_dir=/runs/") for a in shared)

    # The Indexed Job has one completion per run of that study.
    spec = train["spec"]
    assert spec["completionMode"] == "Indexed"
    index_env = env_of(train_c)["JOB_COMPLETION_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    monkeypatch.chdir(ROOT)  # the pod's WORKDIR /app holds the repo's configs/
    flag_values = absl_flags.FlagValues()
    study_lib.define_flags(flag_values)
    name = env_of(train_c)["STUDY_NAME"]["value"]
    flag_values(["study", *(a.replace("$(STUDY_NAME)", name) for a in shared)])
    for a in shared:
        if a.startswith("--base_flagfile="):
            assert (ROOT / a.split("=", 1)[1]).is_file(), a
    study = study_lib.load_study(flag_values)
    assert spec["completions"] == spec["parallelism"] == len(study.runs) == 12

    # Training pods: one GPU, SIGTERM resumes; the summary pod holds no GPU while it waits.
    assert train_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in summary_c["resources"]["limits"]
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and 143 in (r.get("onExitCodes") or {}).get("values", []) for r in rules)
    assert train["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 120
