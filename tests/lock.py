"""``make lock``: write requirements.lock from the project venv (``pip freeze``), the versions the tests ran.

The venv (``make venv``), CI (which runs ``make test`` on a fresh machine) and the images (``docker/build.py``'s
wheelhouse) all install with ``-c requirements.lock``, so a fresh machine gets what the tests ran. Torch and its
CUDA companions are left out: each install picks its build (``TORCH_SPEC``: the CPU wheel here, a CUDA build for
the GPU images). ``tests/test_lock.py`` fails while the venv and the lock disagree.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# Chosen per install, not locked: the torch build (CPU or CUDA) and what comes with it.
UNLOCKED_PREFIXES = ("torch", "triton", "nvidia-", "liverseg")
HEADER = """\
# The versions the test suite ran with: `make venv`, CI and the images install with `-c requirements.lock`.
# Regenerate with `make lock` after changing dependencies in pyproject.toml (tests/test_lock.py checks it).
# Torch is not here: TORCH_SPEC picks its build (CPU wheel by default, a CUDA build for GPU images).
"""


def frozen(python: str = sys.executable) -> list[str]:
    """``name==version`` of every distribution in ``python``'s environment that the lock holds, sorted."""
    out = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True).stdout
    pins = [line.strip() for line in out.splitlines() if "==" in line and not line.startswith("#")]
    return sorted((p for p in pins if not p.lower().startswith(UNLOCKED_PREFIXES)), key=str.lower)


def main() -> None:
    LOCK.write_text(HEADER + "\n".join(frozen()) + "\n")
    print(f"wrote {LOCK}")


if __name__ == "__main__":
    main()
