"""liverseg ingest DIR: upload a Medical Segmentation Decathlon (Task03_Liver) folder to the store."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

__all__ = ["add_arguments", "dataset_name", "main"]


def dataset_name(path: Path) -> str:
    """A folder's name as a data set id (letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-.") or "dataset"
    return name[:100]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path)
    parser.add_argument("--dataset", help="dataset name in the store (default: the folder's name)")


def main(args: argparse.Namespace) -> int:
    from liverseg import logs
    from liverseg.data.msd import ingest
    from liverseg.store import ObjectStore

    logs.configure(stage="ingest")
    name = args.dataset or dataset_name(args.dir)
    details = ingest(ObjectStore.from_env(), args.dir, name)
    print(json.dumps({"dataset": name, "cases": len(details["cases"]), "set_aside": details["set_aside"]}))
    return 0
