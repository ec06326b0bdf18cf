"""liverseg models list|show|promote|rollback: the model registry for operators."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every version, with its held-out Dice; * marks the champion")
    show = actions.add_parser("show", help="a version's card (provenance, evaluation)")
    show.add_argument("version")
    promote = actions.add_parser("promote", help="make a version the champion (recorded as a manual decision)")
    promote.add_argument("version")
    rollback = actions.add_parser("rollback", help="make the previous champion (or --to VERSION) the champion")
    rollback.add_argument("--to", default=None)
    actions.add_parser("decisions", help="the promotion log, oldest first")


def main(args: argparse.Namespace) -> int:
    from liverseg.registry import Registry
    from liverseg.store import ObjectStore

    registry = Registry(ObjectStore.from_env())
    if args.action == "list":
        champion = registry.champion()
        for version in registry.versions():
            card = registry.card(version)
            mark = "*" if version == champion else " "
            print(f"{mark} {version:<40} held-out Dice {card['evaluation']['mean_dice']}  "
                  f"profile {card['profile']}  registered {card['registered_at']}")
    elif args.action == "show":
        print(json.dumps(registry.card(args.version), indent=2))
    elif args.action == "promote":
        registry.card(args.version)
        print(json.dumps(registry.decide(args.version, True, "manual promotion", {"manual": True},
                                         gated_against=registry.champion()), indent=2))
    elif args.action == "rollback":
        print(json.dumps(registry.rollback(args.to), indent=2))
    else:
        print(json.dumps(registry.decisions(), indent=2))
    return 0
