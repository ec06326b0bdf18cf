"""The kustomize base and overlays: they build, every core object passes ``kubernetes-validate --strict``, and
they provide what the rendered workflows refer to by name, with least privilege and default-deny networking."""

from __future__ import annotations

import json

import pytest
import yaml
from cluster_tools import REPO, by_kind_name, kubernetes_validate, kustomize

from liverseg.dicomweb import ENV_PASSWORD, ENV_USERNAME
from liverseg.settings import ENV_ACCESS_KEY, ENV_ENDPOINT, ENV_PUSHGATEWAY, ENV_SECRET_KEY, STORE_ENV_KEYS
from liverseg_workflows.cluster import (
    ARCHIVE_SECRET,
    ARCHIVE_SECRET_KEYS,
    ARTIFACT_REPOSITORIES_CONFIGMAP,
    ARTIFACT_REPOSITORY_KEY,
    PUSHGATEWAY,
    SERVICE_ACCOUNT,
    SETTINGS_CONFIGMAP,
    STORE_SECRET,
    STORE_SECRET_KEYS,
    TRAINING_PRIORITY_CLASS,
    WORKFLOW_POD_LABELS,
)
from liverseg_workflows.values import WorkflowValues

OVERLAYS = ("dev", "hospital")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, kustomize(REPO / "k8s" / "overlays" / request.param)


def test_every_core_object_passes_strict_validation(overlay, tmp_path):
    _, docs = overlay
    done = kubernetes_validate(docs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(docs)


def test_strict_validation_catches_unknown_fields(tmp_path):
    docs = kustomize(REPO / "k8s" / "base")
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")
    quota["spec"]["hardd"] = quota["spec"].pop("hard")
    assert kubernetes_validate([quota], tmp_path).returncode != 0


def test_overlays_provide_everything_the_workflows_name(overlay):
    name, docs = overlay
    objects = by_kind_name(docs)
    values = WorkflowValues.from_yaml(REPO / "k8s" / "overlays" / name / "workflows.yaml")
    for kind, obj_name in [("Namespace", values.namespace), ("ServiceAccount", SERVICE_ACCOUNT),
                           ("Role", SERVICE_ACCOUNT), ("RoleBinding", SERVICE_ACCOUNT),
                           ("ConfigMap", SETTINGS_CONFIGMAP), ("ConfigMap", ARTIFACT_REPOSITORIES_CONFIGMAP),
                           ("PriorityClass", TRAINING_PRIORITY_CLASS), ("Deployment", PUSHGATEWAY),
                           ("Service", PUSHGATEWAY), ("ResourceQuota", "liverseg"), ("LimitRange", "liverseg")]:
        assert (kind, obj_name) in objects, (kind, obj_name)
    cluster_scoped = {"Namespace", "PriorityClass"}
    for d in docs:
        assert d["metadata"].get("namespace") == (None if d["kind"] in cluster_scoped else values.namespace), d
    # Credentials are never in the manifests: the Secret is created by hand and referenced by name.
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert f"name: {STORE_SECRET}" in text


def test_settings_configmap_sets_only_non_secret_store_settings(overlay):
    _, docs = overlay
    data = by_kind_name(docs)[("ConfigMap", SETTINGS_CONFIGMAP)]["data"]
    assert set(data) <= set(STORE_ENV_KEYS) | {ENV_PUSHGATEWAY, "LIVERSEG_LOG_LEVEL"}
    assert not {ENV_ACCESS_KEY, ENV_SECRET_KEY} & set(data)
    host, _, port = data[ENV_ENDPOINT].partition(":")
    assert host and port.isdigit() and "://" not in data[ENV_ENDPOINT]
    assert data[ENV_PUSHGATEWAY] == f"{PUSHGATEWAY}:9091"
    repository = yaml.safe_load(by_kind_name(docs)[("ConfigMap", ARTIFACT_REPOSITORIES_CONFIGMAP)]["data"]
                                [ARTIFACT_REPOSITORY_KEY])
    assert repository["archiveLogs"] is True
    assert repository["s3"]["endpoint"] == data[ENV_ENDPOINT]
    assert {repository["s3"]["accessKeySecret"]["key"], repository["s3"]["secretKeySecret"]["key"]} == \
        set(STORE_SECRET_KEYS.values())


def test_workflow_pods_get_only_what_the_emissary_executor_needs(overlay):
    _, docs = overlay
    objects = by_kind_name(docs)
    assert objects[("Role", SERVICE_ACCOUNT)]["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}]
    binding = objects[("RoleBinding", SERVICE_ACCOUNT)]
    assert binding["roleRef"]["kind"] == "Role"  # namespaced: no cluster-wide rights
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                                    "namespace": "liverseg"}]


def test_network_is_denied_by_default_and_opened_per_need(overlay):
    name, docs = overlay
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    workflow = {"matchLabels": {"app.kubernetes.io/component": WORKFLOW_POD_LABELS["app.kubernetes.io/component"]}}
    egress_ports = {n: {p["port"] for rule in spec.get("egress", []) for p in rule["ports"]}
                    for n, spec in policies.items() if spec["podSelector"] == workflow}
    assert egress_ports == {"workflow-to-store": {9000}, "workflow-to-pushgateway": {9091},
                            "workflow-to-kube-api": {443, 6443},
                            "workflow-to-archive": {8042} if name == "dev" else {443}}
    archive = policies["workflow-to-archive"]["egress"][0]["to"][0]
    assert ("podSelector" in archive) == (name == "dev")  # dev: the overlay's Orthanc; hospital: the site's PACS
    assert {p["port"] for p in policies["allow-dns"]["egress"][0]["ports"]} == {53}
    store = policies["workflow-to-store"]["egress"][0]["to"][0]
    assert ("podSelector" in store) == (name == "dev")  # dev: the in-namespace MinIO; hospital: an address range
    assert "argo-server-ingress" in policies


def test_dev_minio_takes_its_credentials_from_the_secret():
    docs = by_kind_name(kustomize(REPO / "k8s" / "overlays" / "dev"))
    minio = docs[("Deployment", "liverseg-minio")]["spec"]["template"]["spec"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["containers"][0]["env"] if "valueFrom" in e}
    assert env == {"MINIO_ROOT_USER": {"name": STORE_SECRET, "key": STORE_SECRET_KEYS[ENV_ACCESS_KEY]},
                   "MINIO_ROOT_PASSWORD": {"name": STORE_SECRET, "key": STORE_SECRET_KEYS[ENV_SECRET_KEY]}}
    assert ("PersistentVolumeClaim", "liverseg-minio") in docs
    assert "requests.nvidia.com/gpu" not in docs[("ResourceQuota", "liverseg")]["spec"]["hard"]


def test_every_deployment_runs_non_root_on_a_read_only_filesystem(overlay):
    _, docs = overlay
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}, d["metadata"]["name"]


def test_dev_deploys_an_archive_and_a_viewer_the_hospital_names_its_own():
    dev = by_kind_name(kustomize(REPO / "k8s" / "overlays" / "dev"))
    hospital = by_kind_name(kustomize(REPO / "k8s" / "overlays" / "hospital"))
    for kind, name in [("Deployment", "liverseg-orthanc"), ("Service", "liverseg-orthanc"),
                       ("PersistentVolumeClaim", "liverseg-orthanc"), ("ConfigMap", "liverseg-orthanc"),
                       ("Deployment", "liverseg-viewer"), ("Service", "liverseg-viewer"),
                       ("ConfigMap", "liverseg-viewer")]:
        assert (kind, name) in dev and (kind, name) not in hospital, (kind, name)
    # Orthanc's one user is the archive Secret the workflow pods read; no credential in the manifests.
    orthanc = dev[("Deployment", "liverseg-orthanc")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in orthanc["env"]}
    assert env == {v: {"name": ARCHIVE_SECRET, "key": ARCHIVE_SECRET_KEYS[v]} for v in (ENV_USERNAME, ENV_PASSWORD)}
    config = json.loads(dev[("ConfigMap", "liverseg-orthanc")]["data"]["orthanc.json"])
    assert config["AuthenticationEnabled"] is True and config["DicomWeb"]["Enable"] is True
    assert config["RegisteredUsers"] == {f"${{{ENV_USERNAME}}}": f"${{{ENV_PASSWORD}}}"}
    # The test suite's Orthanc and the viewer test start from these very files; the chart ships the same bytes.
    for component, chart in [("archive/orthanc.json", "orthanc.json"), ("viewer/app-config.js", "viewer/app-config.js"),
                             ("viewer/default.conf", "viewer/default.conf")]:
        shipped = (REPO / "charts/liverseg/files" / chart).read_bytes()
        assert (REPO / "k8s/components" / component).read_bytes() == shipped, chart
    viewer = dev[("ConfigMap", "liverseg-viewer")]["data"]
    assert "proxy_pass http://liverseg-orthanc:8042" in viewer["default.conf"]
    assert "qidoRoot: '/dicom-web'" in viewer["app-config.js"]
    # The workflows of each site point at its archive.
    assert WorkflowValues.from_yaml(REPO / "k8s/overlays/dev/workflows.yaml").parameters.archive == \
        "http://liverseg-orthanc:8042/dicom-web"
    assert "orthanc" not in WorkflowValues.from_yaml(REPO / "k8s/overlays/hospital/workflows.yaml").parameters.archive
