"""docker/build.py picks the container engine that works here, and says in one line what to do when none does.

Each case runs ``docker/build.py --print-engine`` in a child process whose PATH holds only fake ``docker``,
``podman``, ``buildah`` and ``apt-get`` programs: a Docker client whose daemon does not answer (this project's
machines), one whose daemon answers, podman with or without buildah, and an apt-get that only records what it was
asked to install. Nothing is installed and no container runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[1] / "docker" / "build.py"
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"


def fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    return folder


def print_engine(bin_dir: Path, tmp_path: Path, ci: bool, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CI": "true" if ci else "false",
           "CONTAINERS_CONF": str(tmp_path / "containers.conf")}
    return subprocess.run([sys.executable, str(BUILD), "--print-engine", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """Exit 1, no traceback, one error line (after any ``[images]`` progress lines)."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("[images] ")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_docker_client_without_daemon_and_no_podman_is_one_line_naming_what_to_install(bin_dir, tmp_path):
    fake(bin_dir, "docker", f'echo "{NO_DAEMON}" >&2; exit 1')
    line = one_line_error(print_engine(bin_dir, tmp_path, ci=False))
    assert "docker is on PATH but its daemon does not answer (Cannot connect to the Docker daemon" in line
    assert "apt-get install podman buildah runc" in line and "start the Docker daemon" in line


def test_nothing_at_all_is_one_line_too(bin_dir, tmp_path):
    line = one_line_error(print_engine(bin_dir, tmp_path, ci=False))
    assert "no docker client on PATH" in line and "podman is not installed" in line


def test_under_ci_a_docker_client_without_daemon_makes_it_install_podman(bin_dir, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("installing with apt needs root (CI runs as root)")
    fake(bin_dir, "docker", f'echo "{NO_DAEMON}" >&2; exit 1')
    calls = tmp_path / "apt-calls"
    fake(bin_dir, "apt-get", f'echo "$@" >> {calls}')  # installs nothing: the build must notice
    line = one_line_error(print_engine(bin_dir, tmp_path, ci=True))
    installs = [c.split() for c in calls.read_text().splitlines() if " install " in f" {c} "]
    assert installs and {"podman", "buildah"} <= set(installs[0]), calls.read_text()
    assert "still not on PATH" in line and "podman" in line


def test_a_docker_daemon_that_answers_is_used(bin_dir, tmp_path):
    fake(bin_dir, "docker", 'echo 28.2.2')
    done = print_engine(bin_dir, tmp_path, ci=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["docker", "docker"]


def test_a_docker_daemon_without_buildx_is_one_line_naming_the_plugin(bin_dir, tmp_path):
    fake(bin_dir, "docker", 'if [ "$1" = buildx ]; then echo "docker: unknown command: docker buildx" >&2; exit 1; fi\n'
                            'echo 28.2.2')
    line = one_line_error(print_engine(bin_dir, tmp_path, ci=False))
    assert "no buildx plugin" in line and "install docker-buildx-plugin" in line and "podman" in line


def test_podman_is_preferred_and_builds_with_buildah_when_present(bin_dir, tmp_path):
    fake(bin_dir, "docker", 'echo 28.2.2')
    fake(bin_dir, "podman", 'echo runc')
    done = print_engine(bin_dir, tmp_path, ci=False)
    assert done.returncode == 0 and done.stdout.split() == ["podman", "podman"], done.stderr
    fake(bin_dir, "buildah", 'exit 0')
    done = print_engine(bin_dir, tmp_path, ci=False)
    assert done.returncode == 0 and done.stdout.split() == ["podman", "buildah"], done.stderr


def test_podman_that_does_not_work_is_named(bin_dir, tmp_path):
    fake(bin_dir, "podman", 'echo "Error: default OCI runtime \\"crun\\" not found" >&2; exit 125')
    line = one_line_error(print_engine(bin_dir, tmp_path, ci=False))
    assert "podman is installed but does not work" in line and "crun" in line


def test_docker_asked_for_without_a_daemon_says_start_it(bin_dir, tmp_path):
    fake(bin_dir, "docker", f'echo "{NO_DAEMON}" >&2; exit 1')
    fake(bin_dir, "podman", 'echo runc')
    line = one_line_error(print_engine(bin_dir, tmp_path, False, "--engine", "docker"))
    assert "daemon does not answer" in line and "start the Docker daemon" in line
