"""Prometheus metrics of a stage process, pushed to a Pushgateway when ``LIVERSEG_PUSHGATEWAY`` is set.

Stage pods are short-lived batch jobs, so they push rather than wait to be scraped. Grouping keys are the
workflow (run id), the stage and, for per-case pods, the case: each pod replaces only its own series.
"""

from __future__ import annotations

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

from liverseg.settings import ENV_PUSHGATEWAY, ENV_WORKER, ENV_WORKFLOW

log = logging.getLogger(__name__)


class StageMetrics:
    """The metrics one stage process records. A fresh registry per process: nothing global."""

    def __init__(self, stage: str, run_id: str, case: str | None = None):
        self.stage, self.run_id, self.case = stage, run_id, case
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Gauge("liverseg_stage_duration_seconds", "Wall time of the stage process", registry=r)
        self.last_success = Gauge("liverseg_stage_last_success_timestamp_seconds",
                                  "When the stage process last finished without a stage-level error", registry=r)
        self.cases = Counter("liverseg_stage_cases", "Cases handled, by outcome", ["outcome"], registry=r)
        self.bytes = Counter("liverseg_stage_bytes", "Bytes moved to/from the object store", ["direction"],
                             registry=r)
        self.case_seconds = Histogram("liverseg_stage_case_seconds", "Seconds per case",
                                      buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=r)
        self.train_loss = Gauge("liverseg_train_loss", "Mean training loss of the last epoch", registry=r)
        self.train_dice = Gauge("liverseg_train_val_dice", "Validation Dice of the last validated epoch",
                                registry=r)
        self.train_epoch = Gauge("liverseg_train_epoch", "Last completed epoch", registry=r)
        self.infer_seconds = Histogram("liverseg_infer_case_seconds", "Inference seconds per case",
                                       buckets=(0.5, 1, 2, 5, 10, 30, 60, 120), registry=r)

    def grouping_key(self) -> dict[str, str]:
        key = {"workflow": os.environ.get(ENV_WORKFLOW) or self.run_id, "stage": self.stage}
        if self.case:
            key["case"] = self.case
        if os.environ.get(ENV_WORKER):
            key["worker"] = os.environ[ENV_WORKER]  # worker processes of one stage push side by side
        return key

    def push(self) -> bool:
        """Push to the configured gateway; a metrics outage never fails a stage (it is logged)."""
        gateway = os.environ.get(ENV_PUSHGATEWAY)
        if not gateway:
            return False
        try:
            push_to_gateway(gateway, job="liverseg", grouping_key=self.grouping_key(), registry=self.registry,
                            timeout=10)
            return True
        except Exception as exc:
            log.warning("metrics push failed", extra={"gateway": gateway, "error": f"{type(exc).__name__}: {exc}"})
            return False
