"""requirements.lock is what the test suite runs with (see tests/lock.py): the venv and the lock agree."""

from __future__ import annotations

import lock


def pins(lines: list[str]) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, _, version in
            (line.partition("==") for line in lines if "==" in line and not line.startswith("#"))}


def test_the_venv_runs_exactly_the_locked_versions():
    locked = pins(lock.LOCK.read_text().splitlines())
    installed = pins(lock.frozen())
    assert installed == locked, (
        f"requirements.lock and the venv disagree (run `make lock` after changing pyproject.toml): "
        f"only in the venv {sorted(set(installed.items()) - set(locked.items()))}, "
        f"only in the lock {sorted(set(locked.items()) - set(installed.items()))}")
