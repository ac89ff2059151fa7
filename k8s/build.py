#!/usr/bin/env python3
"""Build a kustomization with the small subset of kustomize this repo uses.

    python k8s/build.py k8s/overlays/train-4gpu      # prints YAML, like
    kubectl kustomize k8s/overlays/train-4gpu        # (which needs kubectl)

Why: CI only has `pip install -e ".[test]"`, and kustomize is not on PyPI, so
tests/test_k8s.py builds every overlay with this module (and compares it with
the real `kubectl kustomize` / `kustomize build` whenever one is on PATH).

Supported, with kustomize's semantics (checked against kustomize v5.5):

  resources    YAML files (multi-document) inside the kustomization's own
               directory, and directories holding a kustomization.yaml
  components   directories holding a `kind: Component` kustomization; their
               resources are added and their transformers applied to
               everything accumulated so far
  patches      strategic-merge patches, inline (`patch:`) or from a file
               (`path:`), either matched by the patch's own kind/name or
               applied to every resource selected by `target`
               (group, version, kind, name, namespace - exact match)
  namespace    sets metadata.namespace on namespaced resources
  labels       `pairs` added to metadata.labels only (no selectors/templates)
  images       name -> newName / newTag / digest, for every `containers` and
               `initContainers` list anywhere in a resource (CRDs included)

Transformers run in kustomize's fixed order: patches, namespace, labels,
images. Strategic merge: maps merge recursively, `null` deletes a key, lists
of scalars are replaced; lists of maps are merged by key for core API kinds
(containers/initContainers/env/volumes by name, volumeMounts by mountPath,
patch elements first, then the untouched ones, as kustomize orders them) and
replaced for other kinds (CRDs such as TFJob, as kustomize does).

Anything else - namePrefix/nameSuffix (the Indexed Job's hostnames and
subdomain would not follow a rename), generators, replacements, JSON 6902
patches, `$patch` directives, label/annotation selectors - raises
UnsupportedError instead of being silently ignored.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches",
                    "namespace", "labels", "images"}
# Kinds with no namespace (the namespace transformer leaves them alone).
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                  "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
                  "IngressClass", "RuntimeClass", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration"}
# API groups/versions whose schema kustomize knows; lists of maps in their
# resources are merged by these keys (patchMergeKey in the Kubernetes API).
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath"}


class UnsupportedError(ValueError):
    """The kustomization uses something outside the supported subset."""


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no kustomization.yaml in {directory}")


def _load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            raise ValueError(f"{path}: every document needs apiVersion and kind")
    return docs


def _inside(root: Path, rel: str) -> Path:
    """A file path that must stay inside `root` (kustomize's load restrictor)."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise UnsupportedError(
            f"{root}: file {rel!r} is outside the kustomization directory "
            "(kustomize refuses this; reference a directory instead)")
    return path


def _read_kustomization(directory: Path, want_kind: str) -> dict:
    kfile = _kustomization_file(directory)
    with open(kfile, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    kind = k.get("kind", "Kustomization")
    if kind != want_kind:
        raise UnsupportedError(f"{kfile}: kind {kind}, expected {want_kind}")
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedError(f"{kfile}: unsupported field(s) {sorted(unknown)}; "
                               "k8s/build.py implements only " + ", ".join(sorted(SUPPORTED_FIELDS)))
    return k


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
def build(directory: str | Path) -> list[dict]:
    """Build the kustomization in `directory`; returns the resources."""
    return _build(Path(directory), "Kustomization")


def _build(directory: Path, kind: str, accumulated: list[dict] | None = None) -> list[dict]:
    k = _read_kustomization(directory, kind)
    resources = list(accumulated or [])
    for entry in k.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            resources += _build(target, "Kustomization")
        else:
            resources += _load_docs(_inside(directory, entry))
        _check_unique(resources, directory)
    for entry in k.get("components") or []:
        resources = _build(directory / entry, "Component", resources)
    for patch in k.get("patches") or []:
        _apply_patch(resources, patch, directory)
    if "namespace" in k:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res.setdefault("metadata", {})["namespace"] = k["namespace"]
    for label in k.get("labels") or []:
        _apply_labels(resources, label, directory)
    for image in k.get("images") or []:
        for res in resources:
            _apply_image(res, image)
    _check_unique(resources, directory)
    return resources


def _res_id(res: dict) -> tuple:
    meta = res.get("metadata") or {}
    return (_group(res["apiVersion"]), res["kind"], meta.get("namespace"), meta.get("name"))


def _check_unique(resources: list[dict], directory: Path) -> None:
    seen = set()
    for res in resources:
        rid = _res_id(res)
        if rid in seen:
            raise ValueError(f"{directory}: duplicate resource {rid}")
        seen.add(rid)


def _apply_labels(resources: list[dict], label: dict, directory: Path) -> None:
    extra = set(label) - {"pairs", "includeSelectors", "includeTemplates"}
    if extra or label.get("includeSelectors") or label.get("includeTemplates"):
        raise UnsupportedError(f"{directory}: labels support only `pairs` "
                               "(metadata.labels), not selectors/templates")
    pairs = label.get("pairs") or {}
    if not all(isinstance(v, str) for v in pairs.values()):
        raise ValueError(f"{directory}: label values must be strings (quote them): {pairs}")
    for res in resources:
        labels = res.setdefault("metadata", {}).get("labels") or {}
        labels.update(pairs)
        res["metadata"]["labels"] = labels


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #
def _split_image(image: str) -> tuple[str, str]:
    """'reg:5000/a/b:1.0' -> ('reg:5000/a/b', ':1.0'); digest -> ('..', '@sha..')."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _apply_image(node: Any, spec: dict) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise UnsupportedError(f"images: unsupported field(s) {sorted(unknown)}")
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _new_image(container["image"], spec)
            else:
                _apply_image(value, spec)
    elif isinstance(node, list):
        for item in node:
            _apply_image(item, spec)


def _new_image(image: str, spec: dict) -> str:
    name, suffix = _split_image(image)
    if name != spec["name"]:
        return image
    if spec.get("digest"):
        suffix = "@" + spec["digest"]
    elif spec.get("newTag") is not None:
        suffix = ":" + str(spec["newTag"])
    return spec.get("newName", name) + suffix


# --------------------------------------------------------------------------- #
# patches (strategic merge only)
# --------------------------------------------------------------------------- #
def _apply_patch(resources: list[dict], entry: dict, directory: Path) -> None:
    unknown = set(entry) - {"patch", "path", "target"}
    if unknown:
        raise UnsupportedError(f"{directory}: patches: unsupported field(s) {sorted(unknown)}")
    if ("patch" in entry) == ("path" in entry):
        raise ValueError(f"{directory}: a patch needs exactly one of `patch` or `path`")
    text = entry["patch"] if "patch" in entry else \
        _inside(directory, entry["path"]).read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict) or "kind" not in docs[0]:
        raise UnsupportedError(f"{directory}: only single strategic-merge patches are "
                               "supported (no JSON 6902 patches, no multi-document patches)")
    patch = docs[0]
    if entry.get("target") is not None:
        selected = [r for r in resources if _selected(r, entry["target"], directory)]
    else:
        pmeta = patch.get("metadata") or {}
        selected = [r for r in resources
                    if r["kind"] == patch["kind"]
                    and _group(r["apiVersion"]) == _group(patch.get("apiVersion", ""))
                    and r["metadata"].get("name") == pmeta.get("name")
                    and r["metadata"].get("namespace") == pmeta.get("namespace")]
    if not selected:
        raise ValueError(f"{directory}: patch matches no resource: {entry.get('target') or patch.get('metadata')}")
    for res in selected:
        api_version, kind, meta = res["apiVersion"], res["kind"], res["metadata"]
        name, namespace = meta.get("name"), meta.get("namespace")
        merged = _merge(res, patch, api_version in CORE_API_VERSIONS, "")
        # kustomize keeps identity: the patch's own name/kind/namespace are ignored.
        merged["apiVersion"], merged["kind"] = api_version, kind
        merged["metadata"]["name"] = name
        if namespace is None:
            merged["metadata"].pop("namespace", None)
        else:
            merged["metadata"]["namespace"] = namespace
        res.clear()
        res.update(merged)


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _selected(res: dict, target: dict, directory: Path) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise UnsupportedError(f"{directory}: patch target field(s) {sorted(unknown)} "
                               "unsupported (use kind/name)")
    api = res["apiVersion"]
    actual = {"group": _group(api), "version": api.split("/")[-1], "kind": res["kind"],
              "name": res["metadata"].get("name"), "namespace": res["metadata"].get("namespace")}
    return all(actual[key] == value for key, value in target.items())


def _merge(dest: Any, patch: Any, core: bool, field: str) -> Any:
    """Strategic merge of `patch` into a copy of `dest`."""
    if isinstance(patch, dict):
        if any(str(k).startswith("$") for k in patch):
            raise UnsupportedError(f"strategic-merge directives ($patch, ...) unsupported at {field!r}")
        if not isinstance(dest, dict):
            return copy.deepcopy(patch)
        out = copy.deepcopy(dest)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(dest.get(key), value, core, key)
        return out
    if isinstance(patch, list):
        if not (core and patch and all(isinstance(p, dict) for p in patch)):
            return copy.deepcopy(patch)   # scalars, or a CRD's list: replaced
        key = MERGE_KEYS.get(field)
        if key is None:
            raise UnsupportedError(f"strategic merge of list {field!r} is outside the "
                                   f"supported subset (merge keys known for {sorted(MERGE_KEYS)})")
        old = {item.get(key): item for item in dest or [] if isinstance(item, dict)}
        merged = [_merge(old.get(item.get(key)), item, core, field) for item in patch]
        touched = {item.get(key) for item in patch}
        return merged + [copy.deepcopy(item) for item in dest or [] if item.get(key) not in touched]
    return copy.deepcopy(patch)


def dump(resources: list[dict]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=False, default_flow_style=False)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python k8s/build.py KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(dump(build(argv[1])))
    except (UnsupportedError, ValueError, FileNotFoundError) as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
