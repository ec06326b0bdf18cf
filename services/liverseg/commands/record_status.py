"""``liverseg record-status``: the workflows' exit handler writes how a run ended into the store.

``runs/<run-id>/workflows/<workflow>.json`` keeps, for every workflow that worked on a run (a run resumed by a
second workflow has two), its final status, duration and parameters: the run's history outlives the Workflow
objects, which Argo deletes after their TTL. No Kubernetes or Hera imports: every stage image can run it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

__all__ = ["add_arguments", "main", "status_key", "status_record"]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--workflow", required=True, help="the workflow's name")
    parser.add_argument("--status", required=True, help="Succeeded, Failed or Error")
    parser.add_argument("--duration", default="", help="seconds the workflow ran")
    parser.add_argument("--parameters", default="[]", help="the workflow's parameters as Argo's JSON list")


def main(args: argparse.Namespace) -> int:
    """Exit 1 when the store cannot take the record: the handler's retry strategy tries again (the workflow's own
    outcome is already decided)."""
    from liverseg import logs
    from liverseg.store import ObjectStore

    logs.configure(stage="record-status", run_id=args.run_id)
    key = status_key(args.run_id, args.workflow)
    ObjectStore.from_env().put_json(key, status_record(args.workflow, args.status, args.duration, args.parameters))
    print(json.dumps({"key": key, "status": args.status}))
    sys.stdout.flush()
    return 0
