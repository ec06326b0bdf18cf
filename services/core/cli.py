"""The ``liverseg`` command.

Stage commands come from the stage graph; each imports its stage lazily, so an image that installs one stage's
extra can run that stage without the others' dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

EXIT_USAGE = 2
M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2
# Command groups that live in their own modules; each module has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "liverseg.models_cli",
    "liverseg.infer.segment",
    "liverseg.workflows.render",
    "liverseg.workflows.submit",
    "liverseg.workflows.preflight",
    "liverseg.workflows.status",
    "liverseg.dicom_cli",
    "liverseg.deid_cli",
)
# Command groups that need neither the stage graph nor the store: dispatched before the full parser is built, so
# their start-up is Python + numpy only (a module here has ``run(argv)`` besides ``register``).
FAST_COMMANDS: dict[str, str] = {"dicom": "liverseg.dicom_cli"}


# -- store ---------------------------------------------------------------------------------------------------
def _embedded(args: argparse.Namespace):
    from .embedded import DEFAULT_S3_PORT, EmbeddedStore
    from .settings import home

    return EmbeddedStore(root=home() / "store", s3_port=getattr(args, "port", None) or DEFAULT_S3_PORT)


def cmd_store(args: argparse.Namespace) -> int:
    from .embedded import EmbeddedStoreError

    store = _embedded(args)
    try:
        if args.action == "up":
            settings = store.up()
            print(f"store up: s3 http://{settings.endpoint} bucket {settings.bucket}; settings in {store.env_file}")
        elif args.action == "down":
            print("store stopped" if store.down() else "store was not running")
        else:
            print(json.dumps(store.status(), indent=2))
    except EmbeddedStoreError as exc:
        print(f"liverseg store {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


# -- data ----------------------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import write_dataset

    ids = write_dataset(args.out, args.cases, args.seed)
    print(f"wrote {len(ids)} synthetic cases to {args.out} (MSD Task03_Liver layout)")
    return 0


def dataset_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-.") or "dataset"
    return name[:100]


def cmd_ingest(args: argparse.Namespace) -> int:
    from . import logs
    from .errors import ConflictError
    from .msd import DatasetError, ingest
    from .settings import SettingsError
    from .store import ObjectStore, StoreError

    logs.configure(stage="ingest")
    name = args.dataset or dataset_name(args.dir)
    try:
        details = ingest(ObjectStore.from_env(), args.dir, name)
    except (DatasetError, SettingsError, ValueError) as exc:
        print(f"liverseg ingest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConflictError, StoreError) as exc:
        print(f"liverseg ingest: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"dataset": name, "cases": len(details["cases"]), "set_aside": details["set_aside"]}))
    return 0


# -- run -----------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from . import logs
    from .config import ConfigError, env_override_pairs, load_profile
    from .graph import PIPELINE
    from .msd import DatasetError, ingest
    from .runner import RunFailed, RunSpec, format_summary, run_pipeline
    from .settings import ENV_ENDPOINT, StoreSettings, home
    from .store import ObjectStore
    from .synth import write_dataset

    logs.configure(level="WARNING", stage="run")
    try:
        profile = load_profile(args.profile, args.set)  # fail fast on a bad profile or override
    except ConfigError as exc:
        print(f"liverseg run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started_store = None
    if ENV_ENDPOINT not in os.environ:
        embedded = _embedded(args)
        if not embedded.running():
            print(f"starting the embedded store (weed mini) under {embedded.root}")
            embedded.up()
            started_store = embedded
        settings = embedded.settings()
    else:
        settings = StoreSettings.from_env()
    try:
        if args.data:
            data, dataset = Path(args.data), args.dataset or dataset_name(args.data)
        else:
            data = home() / "data" / f"synth-seed{args.seed}-n{args.cases}"
            dataset = args.dataset or data.name
            if not (data / "dataset.json").exists():
                print(f"generating {args.cases} synthetic cases (seed {args.seed}) in {data}")
                write_dataset(data, args.cases, args.seed)
        print(f"ingesting {data} as dataset '{dataset}'")
        try:
            ingested = ingest(ObjectStore(settings), data, dataset)
        except DatasetError as exc:
            print(f"liverseg run: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if ingested["set_aside"]:
            print(f"  set aside at ingest: {ingested['set_aside']}")
        run_id = args.run_id or f"{profile.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        spec = RunSpec(run_id=run_id, dataset=dataset, profile=profile.name,
                       overrides=[*env_override_pairs(os.environ), *args.set],
                       max_cases=args.max_cases)
        print(f"run {run_id}: {len(PIPELINE)} steps, each in its own process")
        try:
            summary = run_pipeline(spec, settings, args.report_dir)
        except RunFailed as exc:
            print(f"\nliverseg run: {exc}", file=sys.stderr)
            return 1
        print(format_summary(summary))
        report = Path(args.report_dir) / run_id / "summary.json"
        print(f"\n  report: {report}  (latest: {Path(args.report_dir) / 'latest'})")
        return 0
    finally:
        if started_store is not None:
            started_store.down()
            print("stopped the embedded store")


# -- parser --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__  # resolved on first use: the fast commands start without importlib.metadata
    from .graph import PIPELINE
    from .settings import home

    parser = argparse.ArgumentParser(
        prog="liverseg",
        description="Liver segmentation on CT: NIfTI -> DICOM -> slice groups -> MONAI 3D U-Net -> masks; "
                    "stages exchange data only through S3.")
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("store", help="start, stop or inspect the embedded S3 store (weed mini)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--port", type=int, default=None, help="S3 port (default 8333; 4 ports above it are used too)")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("synth", help="write a synthetic data set in the MSD Task03_Liver layout")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="upload an MSD Task03_Liver folder to the store")
    p.add_argument("dir", type=Path)
    p.add_argument("--dataset", help="dataset name in the store (default: the folder's name)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("run", help="run the whole pipeline locally, each stage in its own process")
    p.add_argument("--data", type=Path, help="an MSD Task03_Liver folder (default: generate synthetic cases)")
    p.add_argument("--dataset", help="dataset name in the store")
    p.add_argument("--cases", type=int, default=16, help="synthetic cases to generate (default 16)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--max-cases", type=int, default=0, help="use only the first N cases of the data set")
    p.add_argument("--profile", default=None, help="profile (default: $LIVERSEG_PROFILE or 'default')")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a profile value (repeatable)")
    p.add_argument("--run-id", help="run id (default: <profile>-<UTC time>)")
    p.add_argument("--report-dir", type=Path, default=home() / "reports")
    p.add_argument("--port", type=int, default=None, help="embedded store S3 port, when it is started")
    p.set_defaults(func=cmd_run)

    for step in PIPELINE:
        p = sub.add_parser(step.name, help=step.summary, description=step.summary)
        module = importlib.import_module(step.module)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts (``MALLOC_ARENA_MAX`` in the environment wins).

    By default each reading thread gets its own arena; their large, short-lived buffers fragment those arenas and
    a long stage's memory creeps up with every case (group over 30 cases: 307 -> 371 MB even after malloc_trim;
    flat at 260 MB with the cap). Elsewhere than glibc this does nothing. The short-lived ``FAST_COMMANDS`` (one
    series each) skip it and its ctypes import.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FAST_COMMANDS:
        return int(importlib.import_module(FAST_COMMANDS[argv[0]]).run(argv[1:]) or 0)
    limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    args.command_line = argv  # the stage --workers children rerun it with their own cases
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
