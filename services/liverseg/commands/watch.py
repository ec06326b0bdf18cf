"""liverseg watch --archive ROOT: which CT studies of the archive to segment now, each exactly once.

Run by the ``liverseg-watch`` CronWorkflow every few minutes (``concurrencyPolicy: Forbid``); its list of study URLs
fans out to the ``liverseg-infer`` template's ``segment-study`` pod, one pod per study, all in one run
(``watch-<archive>``, the case id is the StudyInstanceUID). Each run

1. reconciles what it submitted before, from the infer manifests of that run: a study with a result is ``done``; a
   study the infer stage set aside (bad data: no CT series, a series split across studies, …) is ``set-aside``
   with the stage's reason, since the same data would fail the same way again; a study without a manifest
   ``--retry-after`` seconds after its submission (its pod failed every retry) is submitted again, at most
   ``--max-attempts`` times in all, then set aside with the reason;
2. asks the archive (QIDO-RS) for studies with CT dated from the watermark on (minus ``--lookback-days``, for
   studies that arrive late), oldest first, and submits every one it has no record of, ``--max-studies`` at most;
3. writes what it decided to the store (``layout.watch_prefix``) before it prints the list: a run that dies
   after that is harmless (a new run sees the records), and a study recorded once is never listed as new again.

Why the infer template's pods rather than inference in this pod, or ``liverseg submit``: one pod per study with
the template's resources, image and retries, no Argo Server token in the cluster, and the infer stage's
manifests make a study that is listed twice (two runs started by hand at once) cost compute, never a second
result: the same run and case skip, and the archive keeps the same SOP Instance UIDs once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from liverseg import layout
from liverseg import manifest as mf
from liverseg.graph import MASK

__all__ = ["StudyRecord", "WatchState", "add_arguments", "archive_id", "main", "watch"]

log = logging.getLogger(__name__)
STEP = MASK.step  # the infer step, whose manifests say what became of each study


def archive_id(root: str) -> str:
    """A key-safe id of an archive: its host and a hash of its whole root URL."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", root.split("://", 1)[-1].split("/", 1)[0].split("@")[-1])
    return f"{host[:48]}-{hashlib.sha256(root.rstrip('/').encode()).hexdigest()[:10]}"


class StudyRecord(BaseModel):
    """What the watch loop knows of one study."""

    study_uid: str
    url: str
    study_date: str = ""
    status: Literal["submitted", "done", "set-aside"] = "submitted"
    attempts: int = 0
    first_seen: str
    last_submitted: str | None = None
    reason: str | None = None


class WatchState(BaseModel):
    """The watermark: studies dated before it (less the look-back) are not asked for again."""

    archive: str
    watermark: str | None = None
    updated: str | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _since(watermark: str | None, lookback_days: int) -> str | None:
    if not watermark:
        return None
    return (datetime.strptime(watermark, "%Y%m%d") - timedelta(days=lookback_days)).strftime("%Y%m%d")


def watch(store, archive, *, model_run: str, max_attempts: int, retry_after_s: float, lookback_days: int,
          max_studies: int, now: datetime | None = None) -> dict[str, Any]:
    """One watch run against ``archive`` (``dicomweb.Archive``); the decisions, as the command prints them."""
    now = now or _now()
    prefix = layout.watch_prefix(archive_id(archive.root))
    state_key = f"{prefix}/state.json"
    state = WatchState.model_validate(store.get_json(state_key)) if store.exists(state_key) else \
        WatchState(archive=archive.root)
    records = {ref.key.rsplit("/", 1)[-1].removesuffix(".json"): StudyRecord.model_validate(store.get_json(ref.key))
               for ref in store.list(f"{prefix}/studies/")}
    submit: list[StudyRecord] = []
    decided: dict[str, Any] = {"done": [], "retried": [], "set_aside": {}, "waiting": []}

    # 1. what became of the studies submitted before
    for uid, record in records.items():
        if record.status != "submitted":
            continue
        result = mf.read(store, layout.manifest_key(model_run, STEP, uid))
        if result is not None and result.ok:
            record.status = "done"
            decided["done"].append(uid)
        elif result is not None:
            record.status, record.reason = "set-aside", f"set aside by the infer stage: {result.error}"
            decided["set_aside"][uid] = record.reason
        elif record.last_submitted and \
                (now - datetime.fromisoformat(record.last_submitted)).total_seconds() < retry_after_s:
            decided["waiting"].append(uid)  # still in flight, or not yet worth another pod
            continue
        elif record.attempts >= max_attempts:
            record.status = "set-aside"
            record.reason = f"no result after {record.attempts} attempts (the segment-study pods failed)"
            decided["set_aside"][uid] = record.reason
        else:
            submit.append(record)
            decided["retried"].append(uid)
            continue
        store.put_json(f"{prefix}/studies/{uid}.json", record.model_dump(mode="json"))

    # 2. new CT studies since the watermark
    found = archive.ct_studies(since=_since(state.watermark, lookback_days))
    new = [s for s in found if s["study_uid"] not in records]
    room = max(0, max_studies - len(submit))
    listed, later = new[:room], new[room:]
    for study in listed:
        record = StudyRecord(study_uid=study["study_uid"], url=f"{archive.root}/studies/{study['study_uid']}",
                             study_date=study["date"], first_seen=now.isoformat())
        records[record.study_uid] = record
        submit.append(record)

    # 3. record, then list: a study is written as submitted before any pod can see it
    for record in submit:
        record.attempts += 1
        record.last_submitted = now.isoformat()
        store.put_json(f"{prefix}/studies/{record.study_uid}.json", record.model_dump(mode="json"))
    # Oldest first: the studies deferred to the next run are dated on or after every one listed here.
    dates = [s["date"] for s in listed if s["date"]]
    if dates and (state.watermark is None or max(dates) > state.watermark):
        state.watermark = max(dates)
    state.updated = now.isoformat()
    store.put_json(state_key, state.model_dump(mode="json"))
    return {"archive": archive.root, "run_id": model_run, "watermark": state.watermark, "found": len(found),
            "new": [s["study_uid"] for s in listed], "deferred": len(later), **decided,
            "studies": [r.url for r in submit]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", required=True, metavar="ROOT",
                        help="DICOMweb root to watch, e.g. https://pacs.example/dicom-web (credentials: "
                             "LIVERSEG_DICOMWEB_*)")
    parser.add_argument("--run-id", default=None,
                        help="the infer run the studies are segmented in (default: watch-<archive id>)")
    parser.add_argument("--max-attempts", type=int, default=3, help="submissions of one study before it is set "
                                                                    "aside (default 3)")
    parser.add_argument("--retry-after", type=float, default=3600.0, metavar="SECONDS",
                        help="a submitted study without a result this long after is submitted again (default 3600)")
    parser.add_argument("--lookback-days", type=int, default=2,
                        help="also ask for studies dated this many days before the watermark (late arrivals)")
    parser.add_argument("--max-studies", type=int, default=20, help="studies submitted per run at most (default 20)")
    parser.add_argument("--studies-out", type=Path, default=None, metavar="FILE",
                        help="write the JSON list of study URLs to segment here (the workflow's fan-out)")
    parser.add_argument("--run-id-out", type=Path, default=None, metavar="FILE",
                        help="write the run id here (the workflow's output parameter)")


def main(args: argparse.Namespace) -> int:
    from liverseg import logs
    from liverseg.dicomweb import Archive
    from liverseg.errors import UsageError
    from liverseg.store import ObjectStore

    logs.configure(stage="watch")
    if args.max_attempts < 1 or args.max_studies < 1 or args.retry_after < 0 or args.lookback_days < 0:
        raise UsageError("--max-attempts and --max-studies must be at least 1, --retry-after and --lookback-days "
                         "not negative")
    archive = Archive(args.archive)
    run_id = layout.check_id("run", args.run_id or f"watch-{archive_id(archive.root)}")
    decided = watch(ObjectStore.from_env(), archive, model_run=run_id, max_attempts=args.max_attempts,
                    retry_after_s=args.retry_after, lookback_days=args.lookback_days, max_studies=args.max_studies)
    for path, value in ((args.studies_out, json.dumps(decided["studies"])), (args.run_id_out, run_id)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)
    log.info("watch decided", extra={k: v for k, v in decided.items() if k != "studies"})
    print(json.dumps(decided))
    return 0
