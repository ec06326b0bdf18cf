"""``liverseg submit``: server settings, the submission it sends, and how ``--watch`` reports a run.

What the Argo Server does with the request is Argo's (see test_workflows for what the templates do); here: that
the request names the right template with the right parameters, and that the settings come from the right place.
"""

from __future__ import annotations

import argparse
import json

import pytest
from hera.workflows.models import NodeStatus, ObjectMeta, Workflow, WorkflowSpec, WorkflowStatus

from liverseg.cli import main
from liverseg.errors import UsageError
from liverseg_workflows import pipeline, submit
from liverseg_workflows.submit import (
    ArgoServer,
    infer_parameters,
    pipeline_parameters,
    submission,
    watch,
)


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    submit.add_arguments(parser)
    return parser.parse_args(argv)


def test_pipeline_flags_become_template_parameters_and_only_those_given():
    args = parse("pipeline", "--dataset", "msd", "--epochs", "40", "--set", "train.lr=0.01", "--set",
                 "preprocess.spacing=[2,2,2]", "--gpus", "2", "-p", "tag=1.2.3", "-p", "profile=seed",
                 "--profile", "default")
    assert pipeline_parameters(args) == {"dataset": "msd", "epochs": "40", "gpus": "2", "profile": "seed",
                                         "overrides": "train.lr=0.01;preprocess.spacing=[2,2,2]", "tag": "1.2.3"}
    parameter_names = {p.name for p in pipeline.parameters(pipeline.WorkflowValues())}
    assert set(pipeline_parameters(args)) <= parameter_names


def test_infer_studies_become_one_json_list():
    args = parse("infer", "--study", "a=incoming/a.nii.gz", "--study", "incoming/dicom/b/", "--model", "v3")
    parameters = infer_parameters(args)
    assert json.loads(parameters["studies"]) == ["a=incoming/a.nii.gz", "incoming/dicom/b/"]
    assert parameters["model"] == "v3"


def test_submission_names_the_template_and_passes_parameters():
    request = submission(pipeline.NAME, {"dataset": "msd", "overrides": "a=1;b=2"})
    body = request.model_dump(by_alias=True, exclude_none=True)
    assert body == {"resourceKind": "WorkflowTemplate", "resourceName": pipeline.NAME,
                    "submitOptions": {"generateName": f"{pipeline.NAME}-",
                                      "parameters": ["dataset=msd", "overrides=a=1;b=2"]}}


def test_server_settings_from_environment_and_flags(tmp_path):
    env = {"LIVERSEG_ARGO_HOST": "https://argo.example:2746", "LIVERSEG_ARGO_TOKEN": "env-token",
           "LIVERSEG_ARGO_NAMESPACE": "research", "LIVERSEG_ARGO_VERIFY_TLS": "false"}
    server = ArgoServer.from_args(parse("pipeline"), env)
    assert (server.host, server.namespace, server.verify_tls, server.token) == \
        ("https://argo.example:2746", "research", False, "env-token")
    assert "env-token" not in repr(server)
    token = tmp_path / "token"
    token.write_text("file-token\n")
    server = ArgoServer.from_args(parse("pipeline", "--host", "http://127.0.0.1:2746", "--namespace", "liverseg",
                                        "--token-file", str(token), "--verify-tls"), env)
    assert (server.host, server.namespace, server.verify_tls, server.token) == \
        ("http://127.0.0.1:2746", "liverseg", True, "file-token")
    with pytest.raises(UsageError, match="must be a URL"):
        ArgoServer.from_args(parse("pipeline"), {"LIVERSEG_ARGO_HOST": "argo:2746"})


def test_submit_without_a_server_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("LIVERSEG_ARGO_HOST", raising=False)
    assert main(["submit", "infer", "--study", "incoming/a.nii.gz"]) == 2
    assert "LIVERSEG_ARGO_HOST" in capsys.readouterr().err


def workflow(phase: str | None, progress: str | None = None, nodes: dict | None = None) -> Workflow:
    return Workflow(metadata=ObjectMeta(name="liverseg-pipeline-abc"), spec=WorkflowSpec(),
                    status=WorkflowStatus(phase=phase, progress=progress, nodes=nodes))


def test_watch_reports_each_change_and_the_failed_steps():
    failed = NodeStatus(id="liverseg-pipeline-abc-123", name="n", display_name="train", type="Pod",
                        phase="Failed", message="OOMKilled (exit code 137)")
    states = iter([workflow(None), workflow("Running", "1/9"), workflow("Running", "1/9"),
                   workflow("Running", "5/9"), workflow("Failed", "8/9", {"x": failed})])
    lines: list[str] = []
    assert watch(lambda: next(states), echo=lines.append, sleep=lambda _: None) == "Failed"
    assert lines == [
        "liverseg-pipeline-abc: Pending",
        "liverseg-pipeline-abc: Running 1/9",
        "liverseg-pipeline-abc: Running 5/9",
        "liverseg-pipeline-abc: Failed 8/9",
        "  train: Failed: OOMKilled (exit code 137)  (argo logs liverseg-pipeline-abc liverseg-pipeline-abc-123)"]
