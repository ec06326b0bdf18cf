"""liverseg run: the whole pipeline locally, each step in its own process, over the store (``runner``).

Without ``--data`` it generates synthetic cases first (anatomy phantoms, ``data.synth.write_dataset``, in a data
folder named by the generator's version, so a set drawn by another version is never reused); without store
settings in the environment it starts the embedded store for the run and stops it afterwards. After the summary
it prints what the model does on the real CT beside the checkout (``real_ct``), when that is there.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from liverseg.settings import home

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="an MSD Task03_Liver folder (default: generate synthetic cases)")
    parser.add_argument("--dataset", help="dataset name in the store")
    parser.add_argument("--cases", type=int, default=16, help="synthetic cases to generate (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N cases of the data set")
    parser.add_argument("--profile", default=None, help="profile (default: $LIVERSEG_PROFILE or 'default')")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a profile value (repeatable)")
    parser.add_argument("--run-id", help="run id (default: <profile>-<UTC time>)")
    parser.add_argument("--report-dir", type=Path, default=home() / "reports")
    parser.add_argument("--port", type=int, default=None, help="embedded store S3 port, when it is started")


def main(args: argparse.Namespace) -> int:
    from liverseg import logs
    from liverseg.commands.ingest import dataset_name
    from liverseg.commands.store import embedded
    from liverseg.config import env_override_pairs, load_profile
    from liverseg.data.anatomy import VERSION
    from liverseg.data.msd import ingest
    from liverseg.data.synth import write_dataset
    from liverseg.graph import PIPELINE
    from liverseg.runner import RunSpec, format_summary, run_pipeline
    from liverseg.settings import ENV_ENDPOINT, StoreSettings
    from liverseg.store import ObjectStore

    logs.configure(level="WARNING", stage="run")
    profile = load_profile(args.profile, args.set)  # fail fast on a bad profile or override
    started_store = None
    if ENV_ENDPOINT not in os.environ:
        store = embedded(args.port)
        if not store.running():
            print(f"starting the embedded store (weed mini) under {store.root}")
            store.up()
            started_store = store
        settings = store.settings()
    else:
        settings = StoreSettings.from_env()
    try:
        if args.data:
            data, dataset = Path(args.data), args.dataset or dataset_name(args.data)
        else:
            data = home() / "data" / f"synth-{VERSION}-seed{args.seed}-n{args.cases}"
            dataset = args.dataset or data.name
            if not (data / "dataset.json").exists():
                print(f"generating {args.cases} synthetic cases (seed {args.seed}) in {data}")
                write_dataset(data, args.cases, args.seed)
        print(f"ingesting {data} as dataset '{dataset}'")
        ingested = ingest(ObjectStore(settings), data, dataset)
        if ingested["set_aside"]:
            print(f"  set aside at ingest: {ingested['set_aside']}")
        run_id = args.run_id or f"{profile.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        spec = RunSpec(run_id=run_id, dataset=dataset, profile=profile.name,
                       overrides=[*env_override_pairs(os.environ), *args.set], max_cases=args.max_cases)
        print(f"run {run_id}: {len(PIPELINE)} steps, each in its own process")
        summary = run_pipeline(spec, settings, args.report_dir)
        print(format_summary(summary))
        print(real_ct_lines(Path(summary["model_file"]), Path(args.report_dir) / run_id / "real_ct"))
        report = Path(args.report_dir) / run_id / "summary.json"
        print(f"\n  report: {report}  (latest: {Path(args.report_dir) / 'latest'})")
        return 0
    finally:
        if started_store is not None:
            started_store.down()
            print("stopped the embedded store")


def real_ct_lines(model_file: Path, out: Path) -> str:
    """The run's model on the real CT beside the checkout, when it is there (``real_ct.check_model``, about 15 s
    on 2 cores): its figures printed, and written with the overlays and the TCIA mask into ``out``."""
    from liverseg.real_ct import DCMQI, TCIA, check_model, shared_data

    data = shared_data()
    if not any((data / name).exists() for name in (DCMQI, TCIA)):
        return f"\n  real CT: none under {data} (skipped)"
    check = check_model(model_file.read_bytes(), out, data)
    out.mkdir(parents=True, exist_ok=True)
    figures = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(check).items()}
    (out / "real_ct.json").write_text(json.dumps(figures, indent=2))
    return (f"\n  real CT ({data}): {check.line()}\n  overlays: {check.overlay}\n"
            "  (a check of transfer to real anatomy, not a clinical figure: README, 'What the make run model is')")
