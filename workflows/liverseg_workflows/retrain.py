"""The ``liverseg-retrain`` CronWorkflow: the whole pipeline on a schedule, never two at once.

It refers to the ``liverseg-pipeline`` WorkflowTemplate instead of copying it, so a template update applies to
the next scheduled run. Each run's id is its workflow name (the template's ``run-id`` default).
"""

from __future__ import annotations

from hera.workflows import CronWorkflow
from hera.workflows.models import WorkflowTemplateRef

from liverseg_workflows import pipeline
from liverseg_workflows.values import WorkflowValues

NAME = "liverseg-retrain"
# A run that could not start within an hour of its slot (controller down, cluster full) is skipped, not run late
# on top of the working day.
STARTING_DEADLINE_SECONDS = 3600


def retrain_cron(values: WorkflowValues) -> CronWorkflow:
    retrain = values.retrain
    return CronWorkflow(
        name=NAME, namespace=values.namespace, labels={"app.kubernetes.io/part-of": "liverseg"},
        schedules=list(retrain.schedules), timezone=retrain.timezone, cron_suspend=retrain.suspend,
        # Training holds the GPU for hours: a run still going when the next slot comes keeps it.
        concurrency_policy="Forbid", starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
        successful_jobs_history_limit=3, failed_jobs_history_limit=5,
        workflow_template_ref=WorkflowTemplateRef(name=pipeline.NAME),
    )
