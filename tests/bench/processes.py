"""A process measured as a whole: wall seconds and its exact peak resident memory (``os.wait4``'s rusage of
that child alone: no sampling, nothing missed between samples)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def measured(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``argv``; its ``seconds``, ``peak_bytes``, ``stdout``. A failure stops the benchmark with its stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(argv[:6])} … failed:\n{err.read()[-3000:]}")
        return {"seconds": round(seconds, 2), "peak_bytes": usage.ru_maxrss * 1024, "stdout": out.read()}
