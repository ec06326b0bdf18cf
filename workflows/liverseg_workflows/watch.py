"""``liverseg-watch``: new CT studies of the archive segmented once each, every few minutes.

    WorkflowTemplate liverseg-watch     watch ─▶ segment-study × each new study (liverseg-infer's template)
    CronWorkflow     liverseg-watch     runs it on the site's schedule, never two at once (Forbid)

``liverseg watch`` (one small pod) decides which studies to segment and records that in the store
(``liverseg.commands.watch``); its list fans out to ``liverseg-infer``'s ``segment-study`` template by reference, so
each study gets the very pod, image, resources and retries a submitted ``liverseg-infer`` gives it, in the watch
run's fixed run id. ``argo submit --from workflowtemplate/liverseg-watch`` runs one watch by hand.
"""

from __future__ import annotations

from hera.workflows import DAG, CronWorkflow, Parameter, Task, WorkflowTemplate
from hera.workflows.models import TemplateRef, ValueFrom, WorkflowTemplateRef

from liverseg.graph import INFER_IMAGE
from liverseg.graph import Resources as StepResources
from liverseg_workflows import infer
from liverseg_workflows.pods import RETRY_TRANSIENT, TMP, archive_access, liverseg_container, workflow_parameter
from liverseg_workflows.templates import resources, workflow_spec
from liverseg_workflows.values import WorkflowValues

NAME = "liverseg-watch"
ENTRYPOINT = "watch-and-segment"
WATCH = "watch"
STUDIES, RUN_ID = "studies", "run-id"
# A watch run queries the archive and writes a few small objects; its fan-out's pods bring their own resources.
WATCH_RESOURCES = StepResources(cpu="1", memory="1Gi")
DEADLINE_SECONDS = 6 * 3600
# Every few minutes: a run that could not start within the next few is skipped, not run late.
STARTING_DEADLINE_SECONDS = 600
SITE_PARAMETERS = ("archive", infer.SEND_TO, "model", "bucket", "registry", "tag")


def parameters(values: WorkflowValues) -> list[Parameter]:
    defaults = values.parameters.model_dump(by_alias=True)
    fields = type(values.parameters).model_fields
    descriptions = {f.alias or name: f.description for name, f in fields.items()}
    return [Parameter(name=p, value=defaults[p], description=descriptions[p]) for p in SITE_PARAMETERS]


def watch_template(values: WorkflowValues) -> WorkflowTemplate:
    spec = workflow_spec(values, NAME, DEADLINE_SECONDS)
    # No exit handler: it records a run's outcome under its run id, and a watch run's run id is the archive's own.
    spec.pop("on_exit")
    with WorkflowTemplate(name=NAME, entrypoint=ENTRYPOINT, arguments=parameters(values), **spec) as wt:
        outputs = {STUDIES: f"{TMP}/outputs/studies.json", RUN_ID: f"{TMP}/outputs/run-id"}
        watch = liverseg_container(
            WATCH, INFER_IMAGE.name,
            [WATCH, "--archive", workflow_parameter("archive"), "--studies-out", outputs[STUDIES],
             "--run-id-out", outputs[RUN_ID]], [],
            outputs=[Parameter(name=n, value_from=ValueFrom(path=p)) for n, p in outputs.items()],
            resources=resources(WATCH_RESOURCES), retry_strategy=RETRY_TRANSIENT, **archive_access())
        sources = {"run-id": f"{{{{tasks.{WATCH}.outputs.parameters.{RUN_ID}}}}}",
                   "model": workflow_parameter("model"), infer.STUDY: "{{item}}",
                   infer.SEND_TO: workflow_parameter(infer.SEND_TO)}
        with DAG(name=ENTRYPOINT):
            found = Task(name=WATCH, template=watch)
            segment = Task(name=infer.TEMPLATE, template_ref=TemplateRef(name=infer.NAME, template=infer.TEMPLATE),
                           with_param=f"{{{{tasks.{WATCH}.outputs.parameters.{STUDIES}}}}}",
                           arguments={i: sources[i] for i in infer.segment_inputs()})
            found >> segment
    return wt


def watch_cron(values: WorkflowValues) -> CronWorkflow:
    watch = values.watch
    return CronWorkflow(
        name=NAME, namespace=values.namespace, labels={"app.kubernetes.io/part-of": "liverseg"},
        schedules=list(watch.schedules), timezone=watch.timezone, cron_suspend=watch.suspend,
        # A long fan-out keeps its slot: the next run reconciles what it did, it never runs beside it.
        concurrency_policy="Forbid", starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
        successful_jobs_history_limit=3, failed_jobs_history_limit=5,
        workflow_template_ref=WorkflowTemplateRef(name=NAME),
    )
