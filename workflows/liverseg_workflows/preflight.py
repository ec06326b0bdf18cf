"""``liverseg preflight``: is this cluster ready to run liverseg? One line per check, exit 1 if any fails.

    liverseg preflight --values k8s/overlays/hospital/workflows.yaml [--kubeconfig FILE] [--context NAME]

Checks the namespace, the store Secret (its keys, never its values), the workflow ServiceAccount, Argo's CRDs, and
at least one node the training pod can land on: matching the GPU node selector, schedulable, Ready, every
NoSchedule/NoExecute taint tolerated, with enough allocatable GPUs. The client calls are kept to a handful of
reads; the decisions are plain functions of the objects read.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverseg.errors import UsageError
from liverseg_workflows.cluster import ARGO_CRDS, GPU_RESOURCE, SERVICE_ACCOUNT, STORE_SECRET, STORE_SECRET_KEYS


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def tolerated(taint: Any, tolerations: Iterable[Any]) -> bool:
    """Kubernetes' rule: a toleration matches a taint on key (or an empty key with Exists), value (for Equal)
    and effect (or an empty effect)."""
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.operator == "Exists" and (not t.key or t.key == taint.key):
            return True
        if t.operator == "Equal" and t.key == taint.key and (t.value or "") == (taint.value or ""):
            return True
    return False


def gpu_quantity(node: Any) -> int:
    return int((node.status.allocatable or {}).get(GPU_RESOURCE, "0"))


def unschedulable_reason(node: Any, tolerations: Iterable[Any], gpus: int) -> str | None:
    """Why the training pod cannot land on ``node``, or None if it can."""
    if node.spec.unschedulable:
        return "cordoned"
    ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "Unknown")
    if ready != "True":
        return f"not Ready ({ready})"
    blocking = [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")
                and not tolerated(t, list(tolerations))]
    if blocking:
        return "taints not tolerated: " + ", ".join(f"{t.key}={t.value or ''}:{t.effect}" for t in blocking)
    if gpu_quantity(node) < gpus:
        return f"{gpu_quantity(node)} {GPU_RESOURCE} allocatable, {gpus} needed"
    return None


def check_gpu_nodes(nodes: list[Any], selector: str, tolerations: list[Any], gpus: int) -> Check:
    name = f"GPU node ({selector or 'any node'})"
    if not nodes:
        return Check(name, False, "no node carries these labels (kubectl get nodes --show-labels)")
    reasons = {n.metadata.name: unschedulable_reason(n, tolerations, gpus) for n in nodes}
    usable = [n for n, why in reasons.items() if why is None]
    if usable:
        return Check(name, True, f"{len(usable)} usable: " + ", ".join(
            f"{n.metadata.name} ({gpu_quantity(n)} {GPU_RESOURCE})" for n in nodes if n.metadata.name in usable))
    return Check(name, False, "; ".join(f"{n}: {why}" for n, why in reasons.items()))


def _api_error(exc: Any) -> str:
    return {404: "not found", 403: "forbidden to read it (RBAC)", 401: "unauthorized"}.get(
        exc.status, f"API error {exc.status} {exc.reason}")


def run_checks(api_client: Any, values: Any) -> list[Check]:
    from kubernetes.client import ApiextensionsV1Api, CoreV1Api
    from kubernetes.client.exceptions import ApiException

    core, crds = CoreV1Api(api_client), ApiextensionsV1Api(api_client)
    ns = values.namespace
    checks = []

    def check(name: str, read, found: str = "present", hint: str = "") -> Any:
        try:
            obj = read()
        except ApiException as exc:
            checks.append(Check(name, False, _api_error(exc) + (f" ({hint})" if exc.status == 404 and hint else "")))
            return None
        checks.append(Check(name, True, found))
        return obj

    check(f"namespace {ns}", lambda: core.read_namespace(ns), hint="kubectl apply -k k8s/overlays/<site>")
    secret = check(f"secret {ns}/{STORE_SECRET}", lambda: core.read_namespaced_secret(STORE_SECRET, ns),
                   hint="docs/OPERATIONS.md: kubectl create secret generic")
    if secret is not None:
        missing = sorted(set(STORE_SECRET_KEYS.values()) - set(secret.data or {}))
        if missing:
            checks[-1] = Check(checks[-1].name, False, f"keys missing: {', '.join(missing)}")
        else:
            checks[-1] = Check(checks[-1].name, True, f"keys {', '.join(sorted(STORE_SECRET_KEYS.values()))}")
    check(f"serviceaccount {ns}/{SERVICE_ACCOUNT}",
          lambda: core.read_namespaced_service_account(SERVICE_ACCOUNT, ns), hint="k8s/base or the Helm chart")
    for crd in ARGO_CRDS:
        # Existence is all we need: skip deserialising a large CRD.
        check(f"CRD {crd}", lambda crd=crd: crds.read_custom_resource_definition(crd, _preload_content=False),
              hint="install Argo Workflows")
    selector = ",".join(f"{k}={v}" for k, v in values.gpu.node_selector.items())
    try:
        nodes = core.list_node(label_selector=selector).items
    except ApiException as exc:
        checks.append(Check(f"GPU node ({selector})", False, "cannot list nodes: " + _api_error(exc)))
    else:
        checks.append(check_gpu_nodes(nodes, selector, list(values.gpu.tolerations), int(values.parameters.gpus)))
    return checks


def api_client(kubeconfig: Path | None, context: str | None):
    """The cluster's API: a kubeconfig (given, $KUBECONFIG or ~/.kube/config), else the in-cluster account."""
    from kubernetes import config

    try:
        return config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None, context=context)
    except config.ConfigException:
        config.load_incluster_config()
        from kubernetes.client import ApiClient

        return ApiClient()


def main(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException
    from pydantic import ValidationError

    from liverseg_workflows.values import WorkflowValues

    try:
        values = WorkflowValues.from_yaml(args.values) if args.values else WorkflowValues()
        if args.namespace:
            values = values.model_copy(update={"namespace": args.namespace})
        client = api_client(args.kubeconfig, args.context)
    except (OSError, ValidationError, ConfigException) as exc:
        raise UsageError(str(exc)) from None
    with client:
        checks = run_checks(client, values)
    for c in checks:
        print(c.line())
    return 0 if all(c.ok for c in checks) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--values", type=Path, help="site values (namespace, GPU node selector, tolerations, gpus)")
    parser.add_argument("--namespace", help="overrides the values' namespace")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
