"""liverseg promote: entry point (see promote.py for the gate)."""

from __future__ import annotations

import argparse

from liverseg.stagecli import add_run_options, execute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, per_case=False)


def main(args: argparse.Namespace) -> int:
    def body(ctx):
        from .promote import promote

        details = promote(ctx)
        return {"version": details["version"], "promoted": details["decision"]["promoted"],
                "reason": details["decision"]["reason"]}

    return execute("promote", args, body)
