"""The Helm chart: lints strictly, renders valid objects, installs the same objects as the kustomize dev overlay,
and its WorkflowTemplates and CronWorkflow equal what Hera renders for the same values."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_tools import REPO, argo_errors, by_kind_name, helm, kubernetes_validate, kustomize, load_all

from liverseg import __version__
from liverseg_workflows.render import render_all
from liverseg_workflows.values import WorkflowValues

CHART = REPO / "charts" / "liverseg"
NAMESPACE = "liverseg"
SITES = {"default": None, "dev": REPO / "k8s/overlays/dev/workflows.yaml",
         "hospital": REPO / "k8s/overlays/hospital/workflows.yaml"}
ARGO_KINDS = ("WorkflowTemplate", "CronWorkflow")


@pytest.fixture(scope="module")
def helm_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("helm")


def site_workflow_values(site: str) -> dict[str, Any]:
    """A site's workflow values document, as it goes under the chart's `workflows:` (namespace: the release's)."""
    document = yaml.safe_load(SITES[site].read_text()) if SITES[site] else {}
    document.pop("namespace", None)
    return document


def template(helm_home: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = ["template", "liverseg", str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    if values:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    done = helm(*args, home=helm_home)
    assert done.returncode == 0, done.stderr
    return load_all(done.stdout)


@pytest.mark.parametrize("site", list(SITES))
def test_lint_strict_passes(site, helm_home, tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"workflows": site_workflow_values(site)}))
    done = helm("lint", "--strict", str(CHART), "--values", str(path), home=helm_home)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [None, {"minio": {"enabled": True}, "prometheusRule": {"enabled": True}},
                                    {"networkPolicy": {"enabled": False}, "resourceQuota": {"enabled": False},
                                     "priorityClass": {"create": False}}])
def test_every_rendered_object_validates(values, helm_home, tmp_path):
    docs = template(helm_home, tmp_path, values)
    argo = [d for d in docs if d["kind"] in ARGO_KINDS]
    assert sorted(d["kind"] for d in argo) == ["CronWorkflow"] * 2 + ["WorkflowTemplate"] * 3
    for obj in argo:
        assert argo_errors(obj) == [], obj["metadata"]["name"]
    core = [d for d in docs if d["apiVersion"].partition("/")[0] not in ("argoproj.io", "monitoring.coreos.com")]
    done = kubernetes_validate(core, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert len(rules) == (1 if values and values.get("prometheusRule") else 0)
    assert not [d for d in docs if d["kind"] == "Secret"]


@pytest.mark.parametrize("site", list(SITES))
def test_workflow_objects_equal_what_hera_renders_for_the_same_values(site, helm_home, tmp_path):
    document = site_workflow_values(site)
    charted = by_kind_name([d for d in template(helm_home, tmp_path, {"workflows": document})
                            if d["kind"] in ARGO_KINDS])
    hera = by_kind_name([o for o in render_all(WorkflowValues.model_validate({**document, "namespace": NAMESPACE}))
                         .values() if o["kind"] in ARGO_KINDS])
    assert charted.keys() == hera.keys()
    for key, obj in charted.items():
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["spec"] == hera[key]["spec"], f"{key} differs between the chart and Hera"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "liverseg"


def test_chart_defaults_are_the_workflow_defaults():
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())["workflows"]
    defaults = WorkflowValues().model_dump(by_alias=True, mode="json", exclude={"namespace"},
                                           exclude_none=True)
    assert WorkflowValues.model_validate(chart_values).model_dump(by_alias=True, mode="json", exclude={"namespace"},
                                                                  exclude_none=True) == defaults
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__ == chart_values["parameters"]["tag"]


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what legitimately differs between the two installers: their labels, and the YAML
    formatting inside the artifact repository's text."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("labels", None)
    if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "artifact-repositories":
        obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
    return obj


def test_chart_installs_the_same_objects_as_the_dev_overlay(helm_home, tmp_path):
    dev = by_kind_name(kustomize(REPO / "k8s" / "overlays" / "dev"))
    dev_quota = dev[("ResourceQuota", "liverseg")]["spec"]["hard"]
    charted = template(helm_home, tmp_path, {"minio": {"enabled": True}, "archive": {"enabled": True},
                                             "viewer": {"enabled": True},
                                             "resourceQuota": {"hard": {"requests.nvidia.com/gpu": None}}})
    charted = by_kind_name([d for d in charted if d["kind"] not in ARGO_KINDS])
    assert charted[("ResourceQuota", "liverseg")]["spec"]["hard"] == dev_quota
    # Helm does not create the release namespace (helm install --create-namespace or kubectl create namespace).
    assert set(charted) == set(dev) - {("Namespace", NAMESPACE)}
    for key, obj in charted.items():
        assert _comparable(obj) == _comparable(dev[key]), key


def test_every_value_is_commented():
    """Each key in values.yaml has a comment line above it, except inside a value documented as a whole
    (a `# --` comment on a map such as resources or nodeSelector)."""
    undocumented, documented_indent = [], None
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        key = re.match(r"^( *)(?:- )?([\w./-]+):", line)
        if not key:
            continue
        indent = len(key.group(1))
        if documented_indent is not None and indent > documented_indent:
            continue
        documented_indent = None
        above = lines[number - 1].strip() if number else ""
        if not above.startswith("#"):
            undocumented.append(f"{number + 1}: {line.strip()}")
        elif above.startswith("# --"):
            documented_indent = indent
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)
