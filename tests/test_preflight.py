"""``liverseg preflight`` against a fake Kubernetes API server.

No API server can run here, so a small HTTP server answers the few GET requests preflight makes with JSON shaped
like the real API's (the one fake in the suite). The command runs unchanged: real kubeconfig, real client.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from liverseg.cli import main
from liverseg_workflows.cluster import ARGO_CRDS, SERVICE_ACCOUNT, STORE_SECRET
from liverseg_workflows.preflight import tolerated, unschedulable_reason

NS = "liverseg"


def node(name: str, labels: dict, gpus: str = "2", taints: list | None = None, ready: str = "True",
         unschedulable: bool = False) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": "32", "nvidia.com/gpu": gpus},
                       "conditions": [{"type": "Ready", "status": ready}]}}


class FakeCluster:
    """The objects the fake API server holds; tests edit them."""

    def __init__(self):
        self.objects = {
            f"/api/v1/namespaces/{NS}": {"kind": "Namespace", "metadata": {"name": NS}},
            f"/api/v1/namespaces/{NS}/secrets/{STORE_SECRET}": {
                "kind": "Secret", "metadata": {"name": STORE_SECRET},
                "data": {k: base64.b64encode(b"not-a-real-credential").decode() for k in ("accesskey", "secretkey")}},
            f"/api/v1/namespaces/{NS}/serviceaccounts/{SERVICE_ACCOUNT}": {
                "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}},
            **{f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}": {
                "kind": "CustomResourceDefinition", "metadata": {"name": crd}} for crd in ARGO_CRDS},
        }
        self.nodes = [node("gpu-1", {"nvidia.com/gpu.present": "true", "pool": "research"},
                           taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]),
                      node("cpu-1", {"pool": "general"}, gpus="0")]
        self.requests: list[str] = []

    def answer(self, path: str, query: dict) -> tuple[int, dict]:
        self.requests.append(path)
        if path == "/api/v1/nodes":
            wanted = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
            items = [n for n in self.nodes if wanted.items() <= n["metadata"]["labels"].items()]
            return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items}
        if path in self.objects:
            return 200, self.objects[path]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{path} not found"}


@pytest.fixture
def cluster(tmp_path):
    fake = FakeCluster()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            assert self.headers["Authorization"] == "Bearer test-token"
            status, body = fake.answer(url.path, parse_qs(url.query))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "fake", "user": {"token": "test-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    fake.kubeconfig = kubeconfig
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


def preflight(cluster, tmp_path, capsys, values: dict | None = None) -> tuple[int, list[str]]:
    args = ["preflight", "--kubeconfig", str(cluster.kubeconfig)]
    if values is not None:
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(tmp_path / "values.yaml")]
    code = main(args)
    return code, capsys.readouterr().out.strip().splitlines()


def test_a_ready_cluster_passes_every_check(cluster, tmp_path, capsys):
    code, lines = preflight(cluster, tmp_path, capsys, {"gpu": {"nodeSelector": {"pool": "research"}}})
    assert code == 0, lines
    assert all(line.startswith("ok") for line in lines)
    assert len(lines) == 3 + len(ARGO_CRDS) + 1
    assert lines[-1] == "ok    GPU node (pool=research): 1 usable: gpu-1 (2 nvidia.com/gpu)"
    assert "not-a-real-credential" not in "\n".join(lines)


def test_each_missing_piece_is_a_failing_line_with_the_reason(cluster, tmp_path, capsys):
    del cluster.objects[f"/api/v1/namespaces/{NS}/secrets/{STORE_SECRET}"]
    del cluster.objects[f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{ARGO_CRDS[0]}"]
    cluster.nodes[0]["spec"]["taints"].append({"key": "dedicated", "value": "radiology", "effect": "NoSchedule"})
    code, lines = preflight(cluster, tmp_path, capsys)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == [
        f"FAIL  secret {NS}/{STORE_SECRET}: not found (docs/OPERATIONS.md: kubectl create secret generic)",
        f"FAIL  CRD {ARGO_CRDS[0]}: not found (install Argo Workflows)",
        "FAIL  GPU node (any node): gpu-1: taints not tolerated: dedicated=radiology:NoSchedule; "
        "cpu-1: 0 nvidia.com/gpu allocatable, 1 needed"]


def test_secret_without_its_keys_and_no_node_with_the_label_fail(cluster, tmp_path, capsys):
    cluster.objects[f"/api/v1/namespaces/{NS}/secrets/{STORE_SECRET}"]["data"].pop("secretkey")
    code, lines = preflight(cluster, tmp_path, capsys, {"gpu": {"nodeSelector": {"pool": "gpu-a100"}}})
    assert code == 1
    assert f"FAIL  secret {NS}/{STORE_SECRET}: keys missing: secretkey" in lines
    assert lines[-1].startswith("FAIL  GPU node (pool=gpu-a100): no node carries these labels")


def test_another_namespace_is_looked_up(cluster, tmp_path, capsys):
    code = main(["preflight", "--kubeconfig", str(cluster.kubeconfig), "--namespace", "elsewhere"])
    assert code == 1
    assert "/api/v1/namespaces/elsewhere" in cluster.requests
    assert capsys.readouterr().out.startswith("FAIL  namespace elsewhere: not found")


def test_unreadable_kubeconfig_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "kubeconfig").write_text("not: a kubeconfig\n")
    assert main(["preflight", "--kubeconfig", str(tmp_path / "kubeconfig")]) == 2


def taint(key, effect, value=None):
    return SimpleNamespace(key=key, value=value, effect=effect)


def toleration(key=None, operator="Equal", value=None, effect=None):
    return SimpleNamespace(key=key, operator=operator, value=value, effect=effect)


@pytest.mark.parametrize("tolerations, expected", [
    ([toleration("nvidia.com/gpu", "Exists")], True),
    ([toleration("nvidia.com/gpu", "Exists", effect="NoExecute")], False),   # other effect
    ([toleration("nvidia.com/gpu", "Equal", value="present")], True),
    ([toleration("nvidia.com/gpu", "Equal", value="absent")], False),
    ([toleration(None, "Exists")], True),                                      # tolerates everything
    ([], False),
])
def test_toleration_matching_follows_kubernetes(tolerations, expected):
    assert tolerated(taint("nvidia.com/gpu", "NoSchedule", "present"), tolerations) is expected


def test_cordoned_and_unready_nodes_are_not_usable():
    def as_objects(d):
        return json.loads(json.dumps(d), object_hook=lambda o: SimpleNamespace(**o))

    n = as_objects(node("n", {}, unschedulable=True))
    assert unschedulable_reason(n, [], 1) == "cordoned"
    n = as_objects(node("n", {}, ready="False"))
    assert unschedulable_reason(n, [], 1) == "not Ready (False)"
