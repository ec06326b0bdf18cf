#!/usr/bin/env python3
"""Build the five stage images: ``localhost/liverseg-<stage>:<version>`` (``make images`` runs this).

Steps, each cached so that a second build only redoes what changed:

1. The OS base. ``--base-image local`` (the Makefile's default) builds a Debian bookworm root filesystem with
   debootstrap and imports it as ``localhost/liverseg-os:bookworm`` (no registry needed; kept in the image store);
   any other value is an ordinary image reference (``python:3.11-slim``, a CUDA runtime image) pulled if missing.
2. The wheelhouse (``.liverseg/images/context/wheels``): the liverseg wheel, built from this working tree
   (reproducible: fixed SOURCE_DATE_EPOCH, built from a clean copy), and every dependency of every stage extra,
   built or downloaded on the host (a pip inside the build could not reach the index). The dependency versions are
   requirements.lock's (as constraints), the versions the tests ran; re-downloaded only when pyproject's
   dependencies, TORCH_SPEC or the lock change.
3. The pins of each layer (``requirements/<target>.txt``), resolved offline against the wheelhouse.
4. ``docker/base.Dockerfile`` targets ``imaging`` and ``ml`` (tags ``localhost/liverseg-base:imaging|ml``), then the
   five stage Dockerfiles on top of them, with the version and the git commit as build arguments.

The engine is the one that works here (``choose_engine``), used for every step, the OS base's import included:
podman (buildah for the builds when it is installed), else Docker when its daemon answers (a ``docker`` client
alone is not an engine). ``LIVERSEG_IMAGE_ENGINE=docker|podman`` picks one. With ``CI=true`` (or
``--install-tools``) missing podman/buildah/runc/debootstrap are installed with apt (as root); otherwise a missing
or broken engine is a one-line error naming what to install or start, never a traceback or a skip. Sizes and
timings go to ``.liverseg/images/build.json``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the wheelhouse key then covers the whole of pyproject.toml
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
WORK = ROOT / ".liverseg" / "images"
sys.path.insert(0, str(ROOT / "services"))  # the stage graph names the images; read it from this tree
from liverseg.graph import IMAGES  # noqa: E402

STAGES = tuple(image.name for image in IMAGES)
# Which base target each stage image is built on (docker/base.Dockerfile).
STAGE_BASE = {image.name: image.base for image in IMAGES}
# The stages a GPU base (--gpu-base-image) is used for.
GPU_STAGES = tuple(image.name for image in IMAGES if image.gpu)
BASE_TARGETS = {"core": "liverseg", "imaging": "liverseg[imaging]", "ml": "liverseg[ml]"}
OS_IMAGE = "localhost/liverseg-os:bookworm"
BASE_REPO = "localhost/liverseg-base"
IMAGE_REPO = "localhost/liverseg-{stage}"
ENV_ENGINE = "LIVERSEG_IMAGE_ENGINE"
ENGINES = ("auto", "podman", "docker")
# runc beside podman where we install: crun fails on some hosts (this project's CI machines among them).
PODMAN_TOOLS = ("podman", "buildah", "runc")
# Distributions that come from TORCH_SPEC, not from the venv's pins (a CUDA build brings its own).
TORCH_FAMILY = ("torch", "triton", "nvidia-")
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest date a zip (wheel) can hold
CONTAINERS_CONF = """\
# Written by docker/build.py for podman/buildah on machines where crun and systemd cgroups do not work.
# Set CONTAINERS_CONF yourself to use another file.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
{runtime}cgroup_manager = "cgroupfs"
"""


class BuildError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None, capture: bool = False, **kwargs) -> str:
    done = subprocess.run(cmd, env=env, text=True, check=False,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None, **kwargs)
    if done.returncode != 0:
        detail = (done.stderr or "").strip()[-2000:] if capture else ""
        raise BuildError(f"{' '.join(cmd[:4])} … exited with {done.returncode}\n{detail}")
    return done.stdout or ""


# -- project facts ---------------------------------------------------------------------------------------------
def project() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return {"version": found.group(1) if found else "0.0.0", "pyproject": text}


def version() -> str:
    return project()["version"]


def revision() -> str:
    """The commit the images are built from, ``-dirty`` when the packaged sources differ from it."""
    try:
        commit = run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture=True).strip()
        changed = run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                       "services", "workflows", "pyproject.toml"], capture=True).strip()
    except (BuildError, FileNotFoundError):
        return ""
    return f"{commit}-dirty" if changed else commit


def image_tag(stage: str, tag: str) -> str:
    return f"{IMAGE_REPO.format(stage=stage)}:{tag}"


# -- tools -----------------------------------------------------------------------------------------------------
def container_env() -> dict[str, str]:
    """Environment for podman/buildah: this project's containers.conf unless the caller set CONTAINERS_CONF."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        conf = WORK / "containers.conf"
        runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
        text = CONTAINERS_CONF.format(runtime=runtime)
        if not conf.exists() or conf.read_text() != text:
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(text)
        env["CONTAINERS_CONF"] = str(conf)
    env.setdefault("BUILDAH_ISOLATION", "chroot")  # builds inside an unprivileged container need it
    return env


def ensure_tools(tools: tuple[str, ...], install: bool) -> None:
    missing = [t for t in tools if shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None]
    if not missing:
        return
    if not install:
        raise BuildError(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)}), "
                         "or run with --install-tools (CI=true does) as root")
    if os.geteuid() != 0:
        raise BuildError(f"missing {', '.join(missing)} and not root: apt-get install {' '.join(missing)}")
    log(f"installing {' '.join(missing)} with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update", "-qq"], env=env, capture=True)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, capture=True)
    except (BuildError, FileNotFoundError) as exc:
        detail = " ".join(str(exc).split())[-300:]
        raise BuildError(f"could not install {' '.join(missing)} with apt ({detail})") from None
    still = [t for t in missing if shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None]
    if still:
        raise BuildError(f"apt-get installed {' '.join(missing)} but {', '.join(still)} "
                         f"{'is' if len(still) == 1 else 'are'} still not on PATH")


@dataclass(frozen=True)
class Engine:
    """The container engine every step uses: ``cli`` runs images, imports and inspects (``podman`` or
    ``docker``); ``builder`` builds (``buildah``, ``podman`` or ``docker``)."""

    cli: str
    builder: str

    @property
    def is_docker(self) -> bool:
        return self.cli == "docker"


def docker_daemon_problem(env: dict[str, str] | None = None) -> str | None:
    """None when a Docker daemon answers the ``docker`` client; else what the client said, in one line."""
    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
                              text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker daemon did not answer within 20 s"
    if done.returncode == 0 and done.stdout.strip():
        return None
    lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"docker version exited with {done.returncode}"


def buildkit_problem() -> str | None:
    """None when ``docker build`` can use BuildKit (the Dockerfiles' ``RUN --mount``) or the caller turned it off
    (``DOCKER_BUILDKIT=0``, e.g. for a daemon whose own builder takes ``--mount``); else why not, in one line."""
    if os.environ.get("DOCKER_BUILDKIT") == "0":
        return None
    done = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode == 0:
        return None
    return ("docker's daemon answers but its client has no buildx plugin, which the Dockerfiles' RUN --mount needs "
            "(BuildKit): install docker-buildx-plugin")


def choose_engine(install: bool, requested: str | None = None) -> Engine:
    """podman (with buildah when present), else Docker when its daemon answers; under ``install`` (CI=true, as
    root) a missing podman/buildah/runc is installed. Anything else is a ``BuildError`` of one line."""
    requested = requested or os.environ.get(ENV_ENGINE) or "auto"
    if requested not in ENGINES:
        raise BuildError(f"{ENV_ENGINE}={requested}: choose one of {', '.join(ENGINES)}")
    podman_ready = shutil.which("podman") is not None
    if requested in ("auto", "podman") and (podman_ready or (install and requested == "podman")):
        ensure_tools(PODMAN_TOOLS if install else ("podman",), install)
        return working_podman()
    docker_problem = "no docker client on PATH"
    if requested in ("auto", "docker") and shutil.which("docker"):
        docker_problem = docker_daemon_problem()
        if docker_problem is None:
            docker_problem = buildkit_problem()
            if docker_problem is None:
                return Engine("docker", "docker")
        else:
            docker_problem = f"docker is on PATH but its daemon does not answer ({docker_problem})"
    if requested == "docker":
        raise BuildError(f"{docker_problem}: start the Docker daemon, or build with podman "
                         f"({ENV_ENGINE}=podman; apt-get install {' '.join(PODMAN_TOOLS)})")
    if install:
        ensure_tools(PODMAN_TOOLS, install)
        return working_podman()
    raise BuildError(f"no working container engine: {docker_problem}, and podman is not installed; install it "
                     f"(apt-get install {' '.join(PODMAN_TOOLS)}, or run with --install-tools / CI=true as root) "
                     "or start the Docker daemon")


def working_podman() -> Engine:
    """podman, checked to answer (``podman info`` with this project's containers.conf), building with buildah
    when that is installed."""
    done = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], env=container_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout).split())[-300:]
        raise BuildError(f"podman is installed but does not work ({detail}); see CONTAINERS_CONF in the README")
    return Engine("podman", "buildah" if shutil.which("buildah") else "podman")


def image_exists(engine: Engine, ref: str, env: dict[str, str]) -> bool:
    return subprocess.run([engine.cli, "image", "inspect", ref], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


def image_info(engine: Engine, ref: str, env: dict[str, str]) -> dict:
    return json.loads(run([engine.cli, "image", "inspect", ref], env=env, capture=True))[0]


# -- 1. OS base ------------------------------------------------------------------------------------------------
def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


def os_base(engine: Engine, env: dict[str, str], install: bool) -> str:
    """Debian bookworm + python3 (minbase), imported as an image; built once, then taken from the image store."""
    if image_exists(engine, OS_IMAGE, env):
        return OS_IMAGE
    ensure_tools(("debootstrap",), install)
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root: run as root, or pass --base-image python:3.11-slim")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="liverseg-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm from {debian_mirror()} (once; about 1-2 min)")
        run(["debootstrap", "--variant=minbase", "--include=python3-minimal,python3-venv", "bookworm",
             str(rootfs), debian_mirror()], capture=True)
        # What a slim image leaves out: package caches and lists, docs, man pages, translations.
        for pattern in ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*",
                        "usr/share/doc/*", "usr/share/man/*", "usr/share/locale/*", "tmp/*"):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([engine.cli, "import", "--change", 'CMD ["/bin/bash"]', "-", OS_IMAGE],
                                  stdin=tar.stdout, env=env, capture_output=True, text=True, check=False)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise BuildError(f"{engine.cli} import of the bookworm root filesystem failed: "
                             f"{' '.join(imported.stderr.split())}")
    log(f"{OS_IMAGE} ready in {time.monotonic() - started:.0f} s")
    return OS_IMAGE


# -- 2. wheelhouse ---------------------------------------------------------------------------------------------
def pip(python: str, *args: str, capture: bool = True) -> str:
    return run([python, "-m", "pip", "--disable-pip-version-check", *args], capture=capture)


def python_version(python: str) -> str:
    return run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture=True).strip()


def lock_constraints() -> list[str]:
    """requirements.lock's pins (every dependency but torch's family and liverseg): the versions the test suite
    runs with (tests/lock.py)."""
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [line.strip() for line in lines if "==" in line and not line.startswith("#")]
    return sorted(p for p in pins if not p.lower().startswith((*TORCH_FAMILY, "liverseg")))


def build_liverseg_wheel(python: str, out: Path) -> Path:
    """The liverseg wheel from a clean copy of the packaged sources (a stale build/ folder cannot leak in)."""
    for old in out.glob("liverseg-*.whl"):
        old.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    with tempfile.TemporaryDirectory(prefix="liverseg-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (ROOT / name).exists():
                shutil.copy2(ROOT / name, src / name)
        for folder in ("services", "workflows"):
            shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        run([python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out),
             str(src)], env=env, capture=True)
    (wheel,) = out.glob("liverseg-*.whl")
    return wheel


def wheelhouse(context: Path, python: str, torch_spec: str) -> dict:
    """Every wheel the images install, in ``context/wheels``; dependencies fetched only when their inputs change."""
    wheels = context / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = build_liverseg_wheel(python, wheels)
    meta = project()
    constraints = lock_constraints()
    key_source = {"dependencies": meta.get("dependencies"), "extras": meta.get("optional-dependencies"),
                  "pyproject": meta.get("pyproject"), "version": meta["version"],
                  "torch": torch_spec, "constraints": constraints, "python": python_version(python)}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()
    key_file = context / "wheelhouse.key"
    if not (key_file.exists() and key_file.read_text() == key and (context / "pip.whl").exists()):
        log(f"wheelhouse: fetching dependencies ({torch_spec}, {len(constraints)} pins of requirements.lock)")
        for old in wheels.glob("*.whl"):
            if old != wheel:
                old.unlink()
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as cfile:
            cfile.write("\n".join(constraints) + "\n")
            cfile.flush()
            extras = ",".join(STAGES)
            pip(python, "wheel", "--quiet", "-w", str(wheels), "--find-links", str(wheels), "-c", cfile.name,
                torch_spec, f"liverseg[{extras}]=={meta['version']}", "pip")
        (pip_wheel,) = wheels.glob("pip-*.whl")
        shutil.copy2(pip_wheel, context / "pip.whl")  # pip runs from its wheel in the build: none in the image
        key_file.write_text(key)
    else:
        log("wheelhouse: dependencies cached")
    (context / "python-version").write_text(python_version(python) + "\n")
    return {"wheel": wheel, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}


# -- 3. pins ---------------------------------------------------------------------------------------------------
def resolve(python: str, wheels: Path, requirement: str) -> list[str]:
    """``name==version`` of everything ``requirement`` installs, resolved offline against the wheelhouse."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(python, "install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(wheels),
            "--quiet", "--report", str(report), requirement)
        items = json.loads(report.read_text())["install"]
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)


def resolve_all(context: Path, python: str) -> dict[str, list[str]]:
    """Pins of every base target and stage; resolved again only when the wheelhouse's dependencies changed."""
    cache = context / "pins.json"
    key = (context / "wheelhouse.key").read_text()
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["pins"]
    ver = version()
    requirements = {**BASE_TARGETS, **{stage: f"liverseg[{stage}]=={ver}" for stage in STAGES}}
    pins = {name: resolve(python, context / "wheels", req) for name, req in requirements.items()}
    cache.write_text(json.dumps({"key": key, "pins": pins}, indent=1))
    return pins


def write_requirements(context: Path, python: str, wheel: dict) -> dict[str, list[str]]:
    folder = context / "requirements"
    folder.mkdir(exist_ok=True)
    ver = version()
    resolved_all = resolve_all(context, python)
    pins: dict[str, list[str]] = {}
    for target, requirement in BASE_TARGETS.items():
        pins[target] = [p for p in resolved_all[target] if not p.startswith("liverseg==")]
        (folder / f"{target}.txt").write_text(
            f"# docker/base.Dockerfile target '{target}': {requirement} without liverseg itself\n"
            + "\n".join(pins[target]) + "\n")
    for stage in STAGES:
        resolved = resolved_all[stage]
        pins[stage] = resolved
        deps = [p for p in resolved if not p.startswith("liverseg==")]
        # The wheel's hash makes this file (and so the layer that installs it) change whenever the code does.
        (folder / f"{stage}.txt").write_text(
            f"# docker/{stage}.Dockerfile: liverseg[{stage}] and exactly these dependencies\n"
            f"# liverseg wheel sha256 {wheel['sha256']}\n"
            + "\n".join([*deps, f"liverseg[{stage}]=={ver}"]) + "\n")
    return pins


# -- 4. images -------------------------------------------------------------------------------------------------
def build_image(engine: Engine, dockerfile: Path, tag: str, context: Path, env: dict[str, str],
                build_args: dict[str, str], target: str | None = None, pull: bool = False) -> float:
    started = time.monotonic()
    previous = image_info(engine, tag, env)["Id"] if image_exists(engine, tag, env) else None
    if engine.is_docker:
        cmd = ["docker", "build"]
        env = {"DOCKER_BUILDKIT": "1", **env}  # RUN --mount needs BuildKit; a caller's setting wins
    else:
        cmd = ["buildah", "bud", "--layers"] if engine.builder == "buildah" else ["podman", "build", "--layers"]
        cmd.append("--pull=false" if pull else "--pull=never")
    cmd += ["-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        cmd += ["--build-arg", f"{name}={value}"]
    if target:
        cmd += ["--target", target]
    cmd.append(str(context))
    quiet = os.environ.get("LIVERSEG_IMAGES_VERBOSE", "") == ""
    log(f"build {tag}" + (f" (target {target})" if target else ""))
    done = subprocess.run(cmd, env=env, text=True, check=False, stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None)
    if done.returncode != 0:
        raise BuildError(f"building {tag} failed:\n{(done.stdout or '')[-4000:]}")
    replaced = previous and not engine.is_docker and image_info(engine, tag, env)["Id"] != previous
    # The image this tag pointed at before, once no tag names it any more (cache layers stay).
    if replaced and image_exists(engine, previous, env) and not image_info(engine, previous, env).get("RepoTags"):
        subprocess.run([engine.cli, "rmi", previous], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return round(time.monotonic() - started, 1)


def install_allowed(args: argparse.Namespace) -> bool:
    return args.install_tools or os.environ.get("CI", "").lower() == "true"


def build_all(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    install = install_allowed(args)
    engine = choose_engine(install, args.engine)
    log(f"engine: {engine.cli} (builds with {engine.builder})")
    env = container_env()
    timings: dict[str, float] = {}

    t = time.monotonic()
    base_image = os_base(engine, env, install) if args.base_image == "local" else args.base_image
    gpu_base = None
    if args.gpu_base_image:
        gpu_base = os_base(engine, env, install) if args.gpu_base_image == "local" else args.gpu_base_image
    timings["os_base"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    python = args.wheel_python or (str(ROOT / ".venv" / "bin" / "python")
                                   if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable)
    contexts = {"cpu": WORK / "context"}
    wheel = {"cpu": wheelhouse(contexts["cpu"], python, args.torch_spec)}
    pins = write_requirements(contexts["cpu"], python, wheel["cpu"])
    if gpu_base:
        contexts["gpu"] = WORK / "context-gpu"
        wheel["gpu"] = wheelhouse(contexts["gpu"], python, args.gpu_torch_spec or args.torch_spec)
        write_requirements(contexts["gpu"], python, wheel["gpu"])
    timings["wheelhouse"] = round(time.monotonic() - t, 1)

    stages = args.stages or list(STAGES)
    # Base targets each selected stage needs, per flavour (cpu, and gpu for train/infer when a GPU base is set).
    flavour = {s: ("gpu" if gpu_base and s in GPU_STAGES else "cpu") for s in stages}
    needed = sorted({(flavour[s], STAGE_BASE[s]) for s in stages}, key=lambda x: (x[0], x[1] != "imaging"))
    bases: dict[tuple[str, str], str] = {}
    for kind, target in needed:
        tag = f"{BASE_REPO}:{target}" + ("-gpu" if kind == "gpu" else "")
        source = gpu_base if kind == "gpu" else base_image
        timings[f"base:{target}{'-gpu' if kind == 'gpu' else ''}"] = build_image(
            engine, DOCKER / "base.Dockerfile", tag, contexts[kind], env, {"BASE_IMAGE": source}, target=target,
            pull=not source.startswith("localhost/"))
        bases[(kind, target)] = tag

    rev = revision() if args.revision is None else args.revision
    for kind, context in contexts.items():
        # Copied into every stage image (/opt/liverseg/build-info): when it changes, the labels are rebuilt too.
        (context / "build-info").write_text(f"version={version()}\nrevision={rev}\nflavour={kind}\n"
                                            f"base_image={gpu_base if kind == 'gpu' else base_image}\n")
    images = {}
    for stage in stages:
        tag = image_tag(stage, args.tag)
        timings[stage] = build_image(
            engine, DOCKER / f"{stage}.Dockerfile", tag, contexts[flavour[stage]], env,
            {"LIVERSEG_BASE": bases[(flavour[stage], STAGE_BASE[stage])], "VERSION": version(), "REVISION": rev})
        images[stage] = tag
    timings["total"] = round(time.monotonic() - started, 1)

    sizes = {ref: image_info(engine, ref, env)["Size"] for ref in [*images.values(), *bases.values()]}
    result = {"engine": engine.cli, "builder": engine.builder, "images": images,
              "bases": {f"{k}:{t}": v for (k, t), v in bases.items()}, "revision": rev,
              "version": version(), "base_image": base_image, "gpu_base_image": gpu_base, "seconds": timings,
              "sizes_bytes": sizes, "pins": {s: pins[s] for s in stages}}
    (WORK / "build.json").write_text(json.dumps(result, indent=2))
    return result


def report(result: dict) -> str:
    rows = [f"images {result['version']} (commit {result['revision'] or 'unknown'}), "
            f"built on {result['base_image']} in {result['seconds']['total']} s"]
    for stage, ref in result["images"].items():
        base = f"{BASE_REPO}:{STAGE_BASE[stage]}"
        base_size = result["sizes_bytes"].get(base) or result["sizes_bytes"].get(base + "-gpu", 0)
        size = result["sizes_bytes"][ref]
        rows.append(f"  {ref:<40} {size / 1e6:8.1f} MB  ({(size - base_size) / 1e6:.1f} MB on top of "
                    f"the shared {STAGE_BASE[stage]} base, {base_size / 1e6:.1f} MB)  {result['seconds'][stage]} s")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-image", default=os.environ.get("BASE_IMAGE") or "local",
                        help="base of every image: 'local' (debootstrap, no registry) or an image reference, "
                             "e.g. python:3.11-slim (default: $BASE_IMAGE or local)")
    parser.add_argument("--gpu-base-image", default=os.environ.get("BASE_IMAGE_GPU") or None,
                        help="base of the train and infer images, e.g. a CUDA runtime image ($BASE_IMAGE_GPU)")
    parser.add_argument("--torch-spec", default=os.environ.get("TORCH_SPEC") or "torch==2.13.0")
    parser.add_argument("--gpu-torch-spec", default=os.environ.get("TORCH_SPEC_GPU") or None,
                        help="torch for the GPU images' wheelhouse (default: --torch-spec)")
    parser.add_argument("--wheel-python", default=os.environ.get("WHEEL_PYTHON") or None,
                        help="the Python whose pip builds the wheelhouse; its major.minor must be the images' "
                             "(default: .venv/bin/python)")
    parser.add_argument("--tag", default=os.environ.get("IMAGE_TAG") or version())
    parser.add_argument("--revision", default=None, help="commit to record (default: git HEAD, -dirty if changed)")
    parser.add_argument("--stages", nargs="*", choices=STAGES)
    parser.add_argument("--install-tools", action="store_true", help="apt-get install missing tools (as root)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help=f"container engine (default: ${ENV_ENGINE} or auto: podman, else a Docker daemon)")
    parser.add_argument("--print-engine", action="store_true",
                        help="print the engine that would be used (installing it under --install-tools) and stop")
    parser.add_argument("--json", action="store_true", help="print the build record as JSON")
    args = parser.parse_args(argv)
    if args.print_engine:
        try:
            engine = choose_engine(install_allowed(args), args.engine)
        except BuildError as exc:
            print(f"docker/build.py: {exc}", file=sys.stderr)
            return 1
        print(f"{engine.cli} {engine.builder}")
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        # One build at a time per checkout (the context folder is shared); a second caller waits, then hits the cache.
        with open(WORK / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            result = build_all(args)
    except BuildError as exc:
        print(f"docker/build.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
