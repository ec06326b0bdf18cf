"""``liverseg record-status``: the workflows' exit handler writes how a run ended into the store.

``runs/<run-id>/workflows/<workflow>.json`` keeps, for every workflow that worked on a run (a run resumed by a
second workflow has two), its final status, duration and parameters: the run's history outlives the Workflow
objects, which Argo deletes after their TTL. No Kubernetes or Hera imports: every stage image can run it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)


def status_key(run_id: str, workflow: str) -> str:
    from liverseg.layout import check_id, run_prefix

    return f"{run_prefix(run_id)}/workflows/{check_id('workflow', workflow)}.json"


def status_record(workflow: str, status: str, duration: str, parameters: str) -> dict[str, Any]:
    try:
        params: Any = {p["name"]: p.get("value") for p in json.loads(parameters)}
    except (ValueError, TypeError, KeyError):
        params = parameters  # kept as given rather than lost
    try:
        seconds: float | None = round(float(duration), 1)
    except ValueError:
        seconds = None
    return {"workflow": workflow, "status": status, "duration_seconds": seconds, "parameters": params,
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def cmd_record_status(args: argparse.Namespace) -> int:
    from minio.error import S3Error

    from liverseg import logs
    from liverseg.settings import SettingsError
    from liverseg.store import ObjectStore, StoreError

    logs.configure(stage="record-status", run_id=args.run_id)
    try:
        key = status_key(args.run_id, args.workflow)
        ObjectStore.from_env().put_json(key, status_record(args.workflow, args.status, args.duration,
                                                           args.parameters))
    except (SettingsError, ValueError) as exc:
        log.error("cannot record the workflow status", extra={"error": str(exc)})
        return 2
    except (StoreError, S3Error) as exc:
        # Exit 1: the handler's retry strategy tries again; the workflow's own outcome is already decided.
        log.error("could not write the workflow status", extra={"error": str(exc)})
        return 1
    print(json.dumps({"key": key, "status": args.status}))
    sys.stdout.flush()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("record-status", help="(workflow exit handler) record how a workflow ended")
    p.add_argument("--run-id", required=True)
    p.add_argument("--workflow", required=True, help="the workflow's name")
    p.add_argument("--status", required=True, help="Succeeded, Failed or Error")
    p.add_argument("--duration", default="", help="seconds the workflow ran")
    p.add_argument("--parameters", default="[]", help="the workflow's parameters as Argo's JSON list")
    p.set_defaults(func=cmd_record_status)
