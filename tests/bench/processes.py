"""A process measured as a whole: wall seconds and its exact peak resident memory (``os.wait4``'s rusage of
that child alone: no sampling, nothing missed between samples).

Linux carries a process's high-water mark across ``exec`` from the memory it was forked with, so a child forked
straight from a benchmark that holds gigabytes would report the benchmark's size. The child is therefore started
by a bare ``python -S`` launcher (about 10 MB, the floor of every figure) that forks it and reports its rusage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

# Fork and exec argv[2:], wait4 for it, write its exit status and peak RSS (KiB) as JSON on fd argv[1].
_LAUNCHER = """
import json, os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(fd, json.dumps({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}).encode())
"""


def measured(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``argv``; its ``seconds``, ``peak_bytes``, ``stdout``. A failure stops the benchmark with its stderr."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *argv], env=env,
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL, pass_fds=(write_end,))
        os.close(write_end)
        with os.fdopen(read_end) as report:
            child = json.loads(report.read() or '{"code": -1, "maxrss_kib": 0}')
        process.wait()
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if child["code"] != 0 or process.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:6])} … failed ({child['code']}):\n{err.read()[-3000:]}")
        return {"seconds": round(seconds, 2), "peak_bytes": child["maxrss_kib"] * 1024, "stdout": out.read()}
