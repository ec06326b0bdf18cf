"""Workflow metrics (emitted by the Argo controller) and the alerts on them and on the stages' pushed metrics.

Argo prefixes custom metric names with ``argo_workflows_`` and exposes counters under that name as is. Stage pods
push ``liverseg_*`` series to the Pushgateway themselves (``liverseg.metrics``), grouped by workflow, stage, case.
"""

from __future__ import annotations

from typing import Any

from hera.workflows import Counter, Gauge, Label

ARGO_PREFIX = "argo_workflows_"
WORKFLOW_DURATION = "liverseg_workflow_duration_seconds"
WORKFLOW_FAILURES = "liverseg_workflow_failures"
STEP_FAILURES = "liverseg_step_failures"
# A train pod pushes at every checkpoint; this long without a push and without finishing is a stall. Generous,
# so that a slow first epoch on a large data set is not one.
TRAIN_STALL_MINUTES = 120
# The retrain CronWorkflow runs weekly: a week and a day without a finished evaluation means a run was missed.
MAX_DAYS_WITHOUT_SUCCESS = 8
# Pushgateway groups live until deleted; a train group older than this is a finished (failed) run, not a stall.
STALL_LOOKBACK_HOURS = 24


def workflow_metrics(template: str) -> list[Gauge | Counter]:
    """Workflow level: how long each run took, by outcome, and a count of runs that did not succeed."""
    labels = [Label(key="template", value=template)]
    return [
        Gauge(name=WORKFLOW_DURATION, help="Duration of the last liverseg workflow run, by template and status",
              labels=[*labels, Label(key="status", value="{{workflow.status}}")],
              value="{{workflow.duration}}", realtime=False),
        Counter(name=WORKFLOW_FAILURES, help="liverseg workflow runs that ended Failed or Error", labels=labels,
                when="{{workflow.status}} != Succeeded", value="1"),
    ]


def step_metrics(step: str) -> list[Counter]:
    """Template level: failed attempts of a step (retries included, so flaky infrastructure shows up)."""
    return [Counter(name=STEP_FAILURES, help="Failed or errored attempts of a liverseg step",
                    labels=[Label(key="step", value=step)], when="{{status}} != Succeeded", value="1")]


def rule_groups() -> list[dict[str, Any]]:
    """Prometheus rule groups (the ``spec`` of the PrometheusRule; ``promtool check rules`` reads them as is)."""
    failures = ARGO_PREFIX + WORKFLOW_FAILURES
    train = '{job="liverseg", stage="train"}'
    return [{"name": "liverseg", "rules": [
        {"alert": "LiversegWorkflowFailed",
         # A series that first appears at 1 has no value an hour ago: count it from 0.
         "expr": f"{failures} - ({failures} offset 1h or {failures} * 0) > 0",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "A liverseg workflow failed in the last hour",
                         "description": "argo list -n <namespace> --status Failed; then argo logs <workflow>. "
                                        "See docs/OPERATIONS.md (retry, resume training)."}},
        {"alert": "LiversegTrainingStalled",
         "expr": (f"(time() - max by (workflow) (push_time_seconds{train})) > {TRAIN_STALL_MINUTES * 60}\n"
                  f"and (time() - max by (workflow) (push_time_seconds{train})) < {STALL_LOOKBACK_HOURS * 3600}\n"
                  f"unless on (workflow) max by (workflow) (liverseg_stage_last_success_timestamp_seconds{train}) > 0"),
         "for": "10m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "Training has reported no epoch for a long time and has not finished",
                         "description": f"No checkpoint push for {TRAIN_STALL_MINUTES} min. Check the train pod "
                                        "(argo logs, kubectl describe pod: GPU, OOM, eviction)."}},
        {"alert": "LiversegNoRecentSuccessfulRun",
         "expr": (f'time() - max(liverseg_stage_last_success_timestamp_seconds{{job="liverseg", stage="evaluate"}})'
                  f" > {MAX_DAYS_WITHOUT_SUCCESS * 86400}"),
         "for": "1h",
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"No liverseg run has finished evaluation in {MAX_DAYS_WITHOUT_SUCCESS} days",
                         "description": "Is the liverseg-retrain CronWorkflow suspended or failing? "
                                        "argo cron list -n <namespace>"}},
    ]}]


def prometheus_rule(namespace: str) -> dict[str, Any]:
    """The PrometheusRule object (Prometheus Operator CRD)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "liverseg", "namespace": namespace},
            "spec": {"groups": rule_groups()}}
