"""The ``liverseg`` command: one table of commands, one way to run each, one table of exit codes.

Every command is a module with ``add_arguments(parser)`` and ``main(args) -> int``: the pipeline's steps come from
the stage graph (``graph.Step.module``), the others are listed in ``COMMANDS``. Only the module of the command
being run is imported, so an image that installs one stage's extra runs that stage without the others'
dependencies, and ``liverseg dicom …`` starts without the store client or torch. An error that reaches this
level ends the command with ``errors.exit_code``: one line on stderr (``liverseg <command>: <what>``; a JSON log
line for commands that run in pods), secrets scrubbed, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from dataclasses import dataclass

from liverseg.errors import EXIT_INTERNAL, EXIT_USAGE, exit_code

__all__ = ["COMMANDS", "Command", "commands", "limit_malloc_arenas", "main"]

M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2


@dataclass(frozen=True)
class Command:
    """``liverseg <name>``: ``module`` implements it; ``logs_json``: it runs in pods, so its errors are a JSON log
    line; ``long_running``: it caps malloc arenas first (see ``limit_malloc_arenas``)."""

    name: str
    module: str
    summary: str
    logs_json: bool = False
    long_running: bool = True


COMMANDS: tuple[Command, ...] = (
    Command("run", "liverseg.commands.run", "run the whole pipeline locally, each step in its own process"),
    Command("store", "liverseg.commands.store", "start, stop or inspect the embedded S3 store (weed mini)",
            long_running=False),
    Command("synth", "liverseg.commands.synth", "write a synthetic data set in the MSD Task03_Liver layout"),
    Command("ingest", "liverseg.commands.ingest", "upload an MSD Task03_Liver folder to the store"),
    Command("segment", "liverseg.commands.segment", "segment one study (DICOM folder, NIfTI or DICOMweb study URL) "
                                                    "into a folder"),
    Command("watch", "liverseg.commands.watch", "which new CT studies of a DICOMweb archive to segment (once each)",
            logs_json=True, long_running=False),
    Command("models", "liverseg.commands.models", "list, inspect, promote or roll back registered models",
            long_running=False),
    Command("dicom", "liverseg.commands.dicom", "DICOM tools: to-nifti, from-nifti, group (no store needed)",
            long_running=False),
    Command("deidentify", "liverseg.commands.deid", "de-identified copy of a DICOM folder (PS3.15 basic profile, "
                                                    "dates shifted and UIDs remapped consistently per key)"),
    Command("record-status", "liverseg.commands.record_status", "(workflow exit handler) record how a workflow ended",
            logs_json=True, long_running=False),
    Command("workflows", "liverseg_workflows.render", "Argo WorkflowTemplates, CronWorkflow and alert rules as YAML",
            long_running=False),
    Command("submit", "liverseg_workflows.submit", "start liverseg-pipeline or liverseg-infer through the Argo Server",
            long_running=False),
    Command("preflight", "liverseg_workflows.preflight", "check that the cluster is ready for liverseg workflows",
            long_running=False),
)


def commands() -> dict[str, Command]:
    """Every command: the stage graph's steps (in pipeline order), then ``COMMANDS``."""
    from liverseg.graph import PIPELINE

    steps = [Command(s.name, s.module, s.summary, logs_json=True) for s in PIPELINE]
    return {c.name: c for c in (*steps, *COMMANDS)}


def usage(table: dict[str, Command]) -> str:
    width = max(len(name) for name in table)
    lines = ["usage: liverseg COMMAND [ARGS...]   (liverseg COMMAND --help for its options)", "",
             "Liver segmentation on CT: NIfTI -> DICOM -> slice groups -> MONAI 3D U-Net -> masks; stages exchange "
             "data only through S3.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in table.values()]
    return "\n".join(lines)


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts (``MALLOC_ARENA_MAX`` in the environment wins).

    By default each reading thread gets its own arena; their large, short-lived buffers fragment those arenas and
    a long stage's memory creeps up with every case (group over 30 cases: 307 -> 371 MB even after malloc_trim;
    flat at 260 MB with the cap). Elsewhere than glibc this does nothing. Short commands skip it and its ctypes
    import.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _report(command: Command, args: argparse.Namespace, exc: BaseException, code: int) -> None:
    from liverseg.logs import scrub

    action = getattr(args, "action", None)
    where = f"liverseg {command.name}{f' {action}' if isinstance(action, str) else ''}"
    message = " ".join(scrub(str(exc)).split()) or type(exc).__name__
    if code == EXIT_INTERNAL:
        message = f"internal error: {type(exc).__name__}: {message}"
    if command.logs_json:
        logging.getLogger("liverseg.cli").error("command failed", extra={"error": message, "exit_code": code})
    else:
        print(f"{where}: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(table), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from liverseg import __version__

        print(f"liverseg {__version__}")
        return 0
    command = table.get(argv[0])
    if command is None:
        print(f"liverseg: unknown command {argv[0]!r}\n\n{usage(table)}", file=sys.stderr)
        return EXIT_USAGE
    if command.long_running:
        limit_malloc_arenas()
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"liverseg {command.name}", description=command.summary)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    args.command_line = argv  # per-case steps' --workers children rerun it with their own cases
    try:
        return int(module.main(args) or 0)
    except Exception as exc:
        code = exit_code(exc)
        _report(command, args, exc, code)
        return code
    except KeyboardInterrupt as exc:
        code = exit_code(exc)
        _report(command, args, exc, code)
        return code


if __name__ == "__main__":
    sys.exit(main())
