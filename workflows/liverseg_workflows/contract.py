"""Each container template's image and command line with its parameters filled in: for container tests.

A contract test runs every command in its image and checks that the image accepts it:

    from liverseg_workflows.contract import container_calls

    for call in container_calls({"registry": "localhost", "tag": "dev", "run-id": "r1", "case": "liver_0",
                                 "dataset": "tiny", "profile": "default", "overrides": "", "max-cases": "0",
                                 "model": "champion", "study": "s=incoming/s.nii.gz", "bucket": "liverseg",
                                 "workflow.name": "wf", "workflow.status": "Succeeded",
                                 "workflow.duration": "1.0", "workflow.parameters": "[]", "gpus": "0",
                                 "loader-workers": "0"}):
        podman run --rm <call.image> <call.args>    # the image's entrypoint is call.command

Values are keyed by parameter name (a template input and the workflow parameter of the same name are the same
thing) or, for Argo's own variables, by the variable (``workflow.name``). A missing value raises ``KeyError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from liverseg_workflows.render import render_all
from liverseg_workflows.values import WorkflowValues

VARIABLE = re.compile(r"\{\{\s*(?:inputs\.parameters\.|workflow\.parameters\.)?([^{}\s]+)\s*\}\}")


@dataclass(frozen=True)
class ContainerCall:
    workflow: str          # the WorkflowTemplate's name
    template: str          # the container template's name
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]    # plain environment values (Secret and ConfigMap references left out)


def substitute(text: str, values: Mapping[str, str]) -> str:
    def value(match: re.Match) -> str:
        if match.group(1) not in values:
            raise KeyError(f"no test value for {match.group(0)} (key {match.group(1)!r})")
        return values[match.group(1)]
    return VARIABLE.sub(value, text)


def container_calls(values: Mapping[str, str], workflow_values: WorkflowValues | None = None) -> list[ContainerCall]:
    calls = []
    for obj in render_all(workflow_values).values():
        if obj["kind"] != "WorkflowTemplate":
            continue
        for template in obj["spec"]["templates"]:
            container = template.get("container")
            if container is None:
                continue
            calls.append(ContainerCall(
                workflow=obj["metadata"]["name"], template=template["name"],
                image=substitute(container["image"], values), command=list(container["command"]),
                args=[substitute(a, values) for a in container.get("args", [])],
                env={e["name"]: substitute(e["value"], values) for e in container.get("env", []) if "value" in e}))
    return calls
