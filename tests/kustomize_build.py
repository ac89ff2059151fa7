"""Builds the k8s/ overlays for the tests with `kubectl kustomize` (kubectl's built-in kustomize v5),
the same build `kubectl apply -k` applies. Skips the calling test where kubectl is not installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml


def build_overlay(directory: Path) -> list[dict]:
    """The resources `kubectl kustomize DIRECTORY` builds (offline: no cluster is contacted)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the overlays are built with `kubectl kustomize` (kubectl 1.27+, "
                    "kustomize v5); install kubectl to run the manifest checks")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr.strip()}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
