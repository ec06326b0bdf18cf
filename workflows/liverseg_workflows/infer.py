"""The ``liverseg-infer`` WorkflowTemplate: segment new studies with the champion model, one pod per study.

    argo submit -n liverseg --from workflowtemplate/liverseg-infer \\
        -p studies='["ct-0001=incoming/ct-0001.nii.gz", "https://pacs.example/dicom-web/studies/1.2.3"]' \\
        -p send-to=https://pacs.example/dicom-web

Each item of ``studies`` is what ``liverseg infer --study`` takes: ``NAME=KEY`` or ``KEY``, a NIfTI object, a
prefix holding one DICOM series, or a DICOMweb study URL. Masks land in ``runs/<run-id>/infer/<name>/``; with
``send-to``, each study's SEG and RTSTRUCT also go to that DICOMweb archive. ``liverseg-watch`` fans out to the
same ``segment-study`` template.
"""

from __future__ import annotations

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate

from liverseg.graph import STEPS
from liverseg_workflows.pods import archive_access, input_parameter, workflow_parameter
from liverseg_workflows.templates import RUN_ID, exit_handler, step_inputs, step_template, workflow_spec
from liverseg_workflows.values import WorkflowValues

NAME = "liverseg-infer"
ENTRYPOINT = "segment-studies"
TEMPLATE = "segment-study"
STUDY = "study"
SEND_TO = "send-to"
DEADLINE_SECONDS = 6 * 3600


def parameters(values: WorkflowValues) -> list[Parameter]:
    p = values.parameters
    fields = type(p).model_fields
    return [
        Parameter(name="studies", description="JSON list of studies: [\"NAME=KEY\", ...] (required)"),
        Parameter(name="model", value=p.model, description=fields["model"].description),
        Parameter(name=SEND_TO, value=p.send_to, description=fields["send_to"].description),
        Parameter(name="run-id", value="", description="run id the masks are written under; empty: the "
                                                       "workflow's name"),
        Parameter(name="bucket", value=p.bucket, description=fields["bucket"].description),
        Parameter(name="registry", value=p.registry, description=fields["registry"].description),
        Parameter(name="tag", value=p.tag, description=fields["tag"].description),
    ]


SEGMENT_INPUTS = ("model", STUDY, SEND_TO)


def segment_inputs() -> list[str]:
    """The ``segment-study`` template's input parameters (``liverseg-watch`` passes the same)."""
    return [*step_inputs(STEPS["infer"], per_case=False), *SEGMENT_INPUTS]


def infer_template(values: WorkflowValues) -> WorkflowTemplate:
    infer = STEPS["infer"]
    with WorkflowTemplate(name=NAME, entrypoint=ENTRYPOINT, arguments=parameters(values),
                          **workflow_spec(values, NAME, DEADLINE_SECONDS)) as wt:
        # The pipeline's infer step in study mode: its own command line, plus the model, one study and where to
        # send its results. Not per case: the study names the cases (``--case`` would filter them).
        segment = step_template(infer, values, name=TEMPLATE, per_case=False, extra_inputs=list(SEGMENT_INPUTS),
                                extra_args=["--model", input_parameter("model"), "--study", input_parameter(STUDY),
                                            "--send-to", input_parameter(SEND_TO)], **archive_access())
        sources = {"run-id": RUN_ID, "model": workflow_parameter("model"), STUDY: "{{item}}",
                   SEND_TO: workflow_parameter(SEND_TO)}
        with DAG(name=ENTRYPOINT):
            Task(name=TEMPLATE, template=segment, with_param=workflow_parameter("studies"),
                 arguments={i: sources[i] for i in segment_inputs()})
        exit_handler(infer.image.name)
    return wt
