"""liverseg store up|down|status: the embedded S3 store (SeaweedFS ``weed mini`` on 127.0.0.1)."""

from __future__ import annotations

import argparse
import json

from liverseg.embedded import DEFAULT_S3_PORT, EmbeddedStore
from liverseg.settings import home

__all__ = ["add_arguments", "embedded", "main"]


def embedded(port: int | None = None) -> EmbeddedStore:
    """The project's embedded store, under ``$LIVERSEG_HOME/store``."""
    return EmbeddedStore(root=home() / "store", s3_port=port or DEFAULT_S3_PORT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=None,
                        help=f"S3 port (default {DEFAULT_S3_PORT}; 4 ports above it are used too)")


def main(args: argparse.Namespace) -> int:
    store = embedded(args.port)
    if args.action == "up":
        settings = store.up()
        print(f"store up: s3 http://{settings.endpoint} bucket {settings.bucket}; settings in {store.env_file}")
    elif args.action == "down":
        print("store stopped" if store.down() else "store was not running")
    else:
        print(json.dumps(store.status(), indent=2))
    return 0
