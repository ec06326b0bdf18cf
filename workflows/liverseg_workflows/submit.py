"""``liverseg submit pipeline|infer``: start a workflow from its WorkflowTemplate through the Argo Server.

    export LIVERSEG_ARGO_HOST=https://argo.hospital.example:2746 LIVERSEG_ARGO_NAMESPACE=liverseg
    export LIVERSEG_ARGO_TOKEN="$(argo auth token)"         # or a ServiceAccount token; never a flag value
    liverseg submit pipeline --dataset Task03_Liver --epochs 50 --watch
    liverseg submit infer --study ct-0001=incoming/ct-0001.nii.gz --study incoming/dicom/ct-0002/
    liverseg submit infer --study https://pacs.example/dicom-web/studies/1.2.3 --send-to https://pacs.example/dicom-web

Only the parameters given are sent; the template's defaults fill in the rest. ``--watch`` follows the workflow
until it ends and exits 0 only if it succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverseg.errors import EXIT_FAILED, EXIT_OK, CannotRun, UsageError

ENV_HOST = "LIVERSEG_ARGO_HOST"
ENV_TOKEN = "LIVERSEG_ARGO_TOKEN"
ENV_NAMESPACE = "LIVERSEG_ARGO_NAMESPACE"
ENV_VERIFY_TLS = "LIVERSEG_ARGO_VERIFY_TLS"
FINISHED = ("Succeeded", "Failed", "Error")
# Flags that set a pipeline parameter of the same name (dashes as in the template).
PIPELINE_FLAGS = ("run-id", "dataset", "profile", "epochs", "max-cases", "gpus", "bucket", "registry", "tag")
INFER_FLAGS = ("run-id", "model", "send-to", "bucket", "registry", "tag")


@dataclass(frozen=True)
class ArgoServer:
    """Where and as whom to submit; flags win over the environment. The token is kept out of ``repr``."""

    host: str
    namespace: str
    verify_tls: bool = True
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: dict[str, str] | None = None) -> ArgoServer:
        env = os.environ if environ is None else environ
        host = args.host or env.get(ENV_HOST, "")
        if not host.startswith(("http://", "https://")):
            raise UsageError(f"the Argo Server address (--host or {ENV_HOST}) must be a URL such as "
                             f"https://argo.example.org:2746 (got {host!r})")
        token = Path(args.token_file).read_text().strip() if args.token_file else env.get(ENV_TOKEN)
        verify = args.verify_tls if args.verify_tls is not None else \
            env.get(ENV_VERIFY_TLS, "true").strip().lower() not in {"0", "false", "no", "off"}
        return cls(host=host, namespace=args.namespace or env.get(ENV_NAMESPACE) or "liverseg",
                   verify_tls=verify, token=token or None)

    def service(self):
        from hera.workflows import WorkflowsService

        return WorkflowsService(host=self.host, token=self.token, namespace=self.namespace,
                                verify_ssl=self.verify_tls)


def parse_assignments(items: list[str]) -> dict[str, str]:
    parameters = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-p takes NAME=VALUE (got {item!r})")
        parameters[name] = value
    return parameters


def pipeline_parameters(args: argparse.Namespace) -> dict[str, str]:
    parameters = {flag: str(v) for flag in PIPELINE_FLAGS if (v := getattr(args, flag.replace("-", "_"))) is not None}
    if args.set:
        parameters["overrides"] = ";".join(args.set)
    return {**parameters, **parse_assignments(args.parameter)}


def infer_parameters(args: argparse.Namespace) -> dict[str, str]:
    parameters = {flag: str(v) for flag in INFER_FLAGS if (v := getattr(args, flag.replace("-", "_"))) is not None}
    parameters["studies"] = json.dumps(args.study)
    return {**parameters, **parse_assignments(args.parameter)}


def submission(template: str, parameters: dict[str, str]):
    """The Argo Server request: a Workflow from ``template`` with these parameter values."""
    from hera.workflows.models import SubmitOpts, WorkflowSubmitRequest

    return WorkflowSubmitRequest(resource_kind="WorkflowTemplate", resource_name=template,
                                 submit_options=SubmitOpts(generate_name=f"{template}-",
                                                           parameters=[f"{k}={v}" for k, v in parameters.items()]))


def progress_line(workflow) -> str:
    status = workflow.status
    phase = (status.phase if status else None) or "Pending"
    progress = f" {status.progress}" if status and status.progress else ""
    message = f" ({status.message})" if status and status.message else ""
    return f"{workflow.metadata.name}: {phase}{progress}{message}"


def failed_steps(workflow) -> list[str]:
    nodes = (workflow.status.nodes if workflow.status else None) or {}
    return [f"  {n.display_name}: {n.phase}: {n.message or 'no message'}  (argo logs {workflow.metadata.name} "
            f"{n.id})" for n in nodes.values() if n.type == "Pod" and n.phase in ("Failed", "Error")]


def watch(get: Callable[[], Any], echo: Callable[[str], None] = print, poll_seconds: float = 10.0,
          sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll ``get()`` (the workflow) until it finishes, printing each change; return the final phase."""
    last = None
    while True:
        workflow = get()
        line = progress_line(workflow)
        if line != last:
            echo(line)
            last = line
        phase = workflow.status.phase if workflow.status else None
        if phase in FINISHED:
            for line in failed_steps(workflow):
                echo(line)
            return phase
        sleep(poll_seconds)


def main(args: argparse.Namespace) -> int:
    from hera.exceptions import HeraException
    from requests import RequestException

    from liverseg_workflows.infer import NAME as INFER
    from liverseg_workflows.pipeline import NAME as PIPELINE

    try:
        server = ArgoServer.from_args(args)
        template, parameters = ((PIPELINE, pipeline_parameters(args)) if args.action == "pipeline"
                                else (INFER, infer_parameters(args)))
    except OSError as exc:  # the token file
        raise UsageError(str(exc)) from None
    service = server.service()
    try:
        workflow = service.submit_workflow(submission(template, parameters), namespace=server.namespace)
        name = workflow.metadata.name
        print(f"submitted {name} (from {template}) in {server.namespace}: {service.get_workflow_link(name)}")
        if not args.watch:
            return 0
        phase = watch(lambda: service.get_workflow(name, namespace=server.namespace),
                      poll_seconds=args.poll_seconds)
    except (HeraException, RequestException) as exc:
        raise CannotRun(f"the Argo Server at {server.host} answered: {exc}") from None
    return EXIT_OK if phase == "Succeeded" else EXIT_FAILED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="action", required=True, metavar="WORKFLOW")
    pipeline = kinds.add_parser("pipeline", help="train and evaluate a model (liverseg-pipeline)")
    pipeline.add_argument("--dataset", help="an ingested dataset name")
    pipeline.add_argument("--profile", help="pipeline profile")
    pipeline.add_argument("--epochs", type=int, help="training epochs (default: the profile's)")
    pipeline.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                          help="override a profile value (repeatable)")
    pipeline.add_argument("--max-cases", type=int, help="use only the first N cases")
    pipeline.add_argument("--gpus", type=int, help="GPUs for the training pod")
    infer = kinds.add_parser("infer", help="segment studies with a model (liverseg-infer)")
    infer.add_argument("--study", action="append", required=True, metavar="[NAME=]KEY",
                       help="a NIfTI object, a prefix with one DICOM series or a DICOMweb study URL (repeatable)")
    infer.add_argument("--model", help="'champion' (the template's default), a version or a model key")
    infer.add_argument("--send-to", metavar="ROOT", help="DICOMweb root that receives each study's SEG and RTSTRUCT")
    for sub in (pipeline, infer):
        sub.add_argument("--run-id", help="run id (default: the workflow's name); an existing one resumes it")
        sub.add_argument("--bucket", help="store bucket")
        sub.add_argument("--registry", help="image registry")
        sub.add_argument("--tag", help="image tag")
        sub.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                         help="any template parameter (repeatable; wins over the flags above)")
        sub.add_argument("--host", help=f"Argo Server URL (default ${ENV_HOST})")
        sub.add_argument("--namespace", help=f"namespace (default ${ENV_NAMESPACE}, else liverseg)")
        sub.add_argument("--token-file", help=f"file holding the bearer token (default ${ENV_TOKEN}); no token "
                                              "flag, so it never shows in shell history or ps")
        sub.add_argument("--verify-tls", action=argparse.BooleanOptionalAction, default=None,
                         help=f"verify the server certificate (default ${ENV_VERIFY_TLS}, else yes)")
        sub.add_argument("--watch", action="store_true", help="follow the workflow until it ends")
        sub.add_argument("--poll-seconds", type=float, default=10.0, help=argparse.SUPPRESS)
