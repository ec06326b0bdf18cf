"""The ``liverseg-infer`` WorkflowTemplate: segment new studies with the champion model, one pod per study.

    argo submit -n liverseg --from workflowtemplate/liverseg-infer \\
        -p studies='["ct-0001=incoming/ct-0001.nii.gz", "ct-0002=incoming/dicom/ct-0002/"]'

Each item of ``studies`` is what ``liverseg infer --study`` takes: ``NAME=KEY`` or ``KEY``, a NIfTI object or a
prefix holding one DICOM series. Masks land in ``runs/<run-id>/infer/<name>/``.
"""

from __future__ import annotations

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate

from liverseg.graph import STEPS
from liverseg_workflows.pods import input_parameter, workflow_parameter
from liverseg_workflows.templates import RUN_ID, exit_handler, step_inputs, step_template, workflow_spec
from liverseg_workflows.values import WorkflowValues

NAME = "liverseg-infer"
ENTRYPOINT = "segment-studies"
TEMPLATE = "segment-study"
STUDY = "study"
DEADLINE_SECONDS = 6 * 3600


def parameters(values: WorkflowValues) -> list[Parameter]:
    p = values.parameters
    fields = type(p).model_fields
    return [
        Parameter(name="studies", description="JSON list of studies: [\"NAME=KEY\", ...] (required)"),
        Parameter(name="model", value=p.model, description=fields["model"].description),
        Parameter(name="run-id", value="", description="run id the masks are written under; empty: the "
                                                       "workflow's name"),
        Parameter(name="bucket", value=p.bucket, description=fields["bucket"].description),
        Parameter(name="registry", value=p.registry, description=fields["registry"].description),
        Parameter(name="tag", value=p.tag, description=fields["tag"].description),
    ]


def infer_template(values: WorkflowValues) -> WorkflowTemplate:
    infer = STEPS["infer"]
    with WorkflowTemplate(name=NAME, entrypoint=ENTRYPOINT, arguments=parameters(values),
                          **workflow_spec(values, NAME, DEADLINE_SECONDS)) as wt:
        # The pipeline's infer step in study mode: its own command line, plus the model and one study.
        # Not per case: the study names the cases (``--case`` would filter them).
        segment = step_template(infer, values, name=TEMPLATE, per_case=False, extra_inputs=["model", STUDY],
                                extra_args=["--model", input_parameter("model"), "--study", input_parameter(STUDY)])
        sources = {"run-id": RUN_ID, "model": workflow_parameter("model"), STUDY: "{{item}}"}
        with DAG(name=ENTRYPOINT):
            Task(name=TEMPLATE, template=segment, with_param=workflow_parameter("studies"),
                 arguments={i: sources[i] for i in [*step_inputs(infer, per_case=False), "model", STUDY]})
        exit_handler(infer.image.name)
    return wt
