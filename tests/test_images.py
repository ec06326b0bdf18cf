"""The stage images, built from this tree: what they contain, how they run, and the whole pipeline run in them.

The pipeline runs as the cluster would run it: every container template of the rendered WorkflowTemplates
(``liverseg_workflows.contract``), with its command, arguments and plain environment, in its image, with the
pods' restrictions (uid 10001, read-only root filesystem with only /tmp writable, no capabilities, no privilege
escalation) and the store settings the Secret and ConfigMap would give, against the real store. ``plan`` writes
its case lists to /tmp/outputs as Argo reads them, and the per-case steps fan out over those lists. The same
dataset goes through the local runner (``liverseg run``'s code path) in another bucket, and the two runs must
agree: plan, statuses, quarantine reasons, groups, per-case Dice, masks on the original grids.

Marked ``images``: ``make test-images`` runs this module (CI: ``.ci/run`` after ``make test``). The images are
(re)built first by docker/build.py (cached: seconds when nothing changed). Without podman/buildah the tests skip
with the reason, except under CI=true, where the build installs them (apt, as root) or the tests fail.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from liverseg import layout
from liverseg.graph import topological
from liverseg.settings import ENV_BUCKET, StoreSettings
from liverseg.store import ObjectStore

pytestmark = [pytest.mark.images, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() == "true"
TINY_TRAINING = ["train.epochs=2", "train.val_interval=1", "train.patch=[48,48,32]", "train.checkpoint_every=1"]
RUN = "ctr-e2e"
STUDY_RUN = "ctr-study"
WORKFLOW_NAME = "liverseg-pipeline-x7k2p"
# The restrictions of the workflow pods (workflows/liverseg_workflows/pods.py), as podman flags.
# --read-only-tmpfs=false: podman would otherwise also make /var/tmp and /run writable; a pod has only its /tmp
# emptyDir.
POD_FLAGS = ["--rm", "--pull=never", "--network=host", "--read-only", "--read-only-tmpfs=false",
             "--tmpfs", "/tmp:rw,mode=1777", "--user", "10001:10001", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges"]
# Placeholders filled per call: the contract helper substitutes one value per parameter.
CASE_SLOT, RUN_SLOT = "@CASE@", "@RUN@"


def load_build_module():
    spec = importlib.util.spec_from_file_location("liverseg_image_build", ROOT / "docker" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = load_build_module()


# -- images --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def images() -> dict:
    """Build (or confirm, from cache) every stage image from this tree; the build record (tags, sizes, pins)."""
    if not CI:
        # These tests run containers the way podman does (image mount, --read-only-tmpfs): they need podman.
        try:
            engine = build.choose_engine(install=False, requested="podman")
        except build.BuildError as exc:
            pytest.skip(f"{exc} (under CI=true podman is installed, never skipped)")
        assert engine.cli == "podman"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "build.py"), "--json", "--engine", "podman"]
                          + (["--install-tools"] if CI else []), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"image build failed:\n{done.stderr[-4000:]}"
    record = json.loads(done.stdout)
    print(f"images ready in {time.monotonic() - started:.0f} s: {record['seconds']}")
    return record


def podman(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env={**build.container_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def inspect(ref: str) -> dict:
    done = podman("image", "inspect", ref)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def in_image(ref: str, code: str) -> str:
    """Run Python code in the image, locked down like a pod; its stdout."""
    done = podman("run", *POD_FLAGS, "--entrypoint", "python", ref, "-c", code, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def stage_only_bytes(ref: str, base: str) -> int:
    """Installed bytes of the distributions the stage adds over its base (infer: the DICOMweb client, contourpy)."""
    wheels = build.WORK / "context" / "wheels"
    pins = build.resolve(sys.executable, wheels, f"liverseg[{base}]")
    base_names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    code = ("import importlib.metadata as m, json, sys; skip = set(json.loads(sys.argv[1])) | {'liverseg'}; "
            "name = lambda d: d.metadata['Name'].lower().replace('_', '-'); "
            "print(sum(f.size or 0 for d in m.distributions() if name(d) not in skip for f in (d.files or [])))")
    done = podman("run", *POD_FLAGS, "--entrypoint", "python", ref, "-c", code, json.dumps(sorted(base_names)),
                  timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


# -- what the images are -------------------------------------------------------------------------------------
def test_every_stage_has_an_image_tagged_with_the_version(images):
    assert set(images["images"]) == set(build.STAGES)
    for stage, ref in images["images"].items():
        assert ref == f"localhost/liverseg-{stage}:{os.environ.get('IMAGE_TAG') or build.version()}"


def test_images_run_as_uid_10001_with_the_liverseg_entrypoint_and_labels(images):
    from liverseg_workflows.cluster import RUN_AS_USER

    for stage, ref in images["images"].items():
        config = inspect(ref)["Config"]
        user = config["User"].split(":")
        assert user[0] == str(RUN_AS_USER) and user[-1] == str(RUN_AS_USER), (stage, config["User"])
        assert config["Entrypoint"] == ["liverseg"]
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["HOME"] == "/tmp" and env["LIVERSEG_HOME"].startswith("/tmp/")
        for var in ("XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "TMPDIR"):
            assert env[var].startswith("/tmp"), var
        assert env["LIVERSEG_CODE_VERSION"] == images["revision"]
        assert config["WorkingDir"] == "/tmp"
        labels = config["Labels"]
        assert labels["org.opencontainers.image.title"] == f"liverseg-{stage}"
        assert labels["org.opencontainers.image.version"] == build.version()
        assert labels["org.opencontainers.image.revision"] == images["revision"]
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
        # No credentials in the image's configuration or its recorded build steps.
        assert not [k for k in env if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", k)], env
        history = json.dumps(inspect(ref).get("History", []))
        assert "S3_SECRET" not in history and "ACCESS_KEY" not in history


def test_each_image_installs_only_its_stage_extra(images):
    """The installed distributions are exactly what ``pip install liverseg[<stage>]`` resolves to."""
    listing = "import importlib.metadata as m, json; print(json.dumps(sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()})))"  # noqa: E501
    wheels = build.WORK / "context" / "wheels"
    for stage, ref in images["images"].items():
        installed = set(json.loads(in_image(ref, listing)))
        expected = {p.split("==")[0].lower().replace("_", "-")
                    for p in build.resolve(sys.executable, wheels, f"liverseg[{stage}]")}
        assert installed == expected, (stage, installed ^ expected)
        assert "pip" not in installed  # pip ran from its wheel at build time only
        has_torch = "torch" in installed
        assert has_torch == (stage in ("preprocess", "train", "infer")), stage
    assert not {"hera", "kubernetes"} & installed  # the ops extra is never in a stage image


def test_ml_images_share_one_torch_layer(images):
    """Every stage image is its base plus a few small layers: the OS, core and imaging layers are the same in all
    five images, the torch layer the same in the three ML images (a node stores and pulls each once)."""
    bases = {target: inspect(f"{build.BASE_REPO}:{target}")["RootFS"]["Layers"] for target in ("imaging", "ml")}
    assert bases["ml"][:len(bases["imaging"])] == bases["imaging"]
    for stage, ref in images["images"].items():
        layers = inspect(ref)["RootFS"]["Layers"]
        base = bases[build.STAGE_BASE[stage]]
        assert layers[:len(base)] == base, stage
        assert len(layers) - len(base) <= 3, stage
        added = images["sizes_bytes"][ref] - images["sizes_bytes"][f"{build.BASE_REPO}:{build.STAGE_BASE[stage]}"]
        own = stage_only_bytes(ref, build.STAGE_BASE[stage])
        assert added - own < 5e6, (stage, added, own)  # the liverseg wheel, two small files and the stage's own extra
    sizes = {s: images["sizes_bytes"][ref] for s, ref in images["images"].items()}
    print("image sizes (MB):", {s: round(b / 1e6) for s, b in sizes.items()})
    assert sizes["convert"] < 600e6 and sizes["train"] < 2.0e9


def test_root_filesystem_is_read_only_and_only_tmp_is_writable(images):
    probe = """
import os, tempfile
results = {}
for path in ("/", "/opt/liverseg", "/opt/liverseg/lib", "/etc", "/var/tmp", "/usr/local", os.path.expanduser("~"),
             tempfile.gettempdir(), os.environ["XDG_CACHE_HOME"]):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            results[path] = "writable"
    except OSError as exc:
        results[path] = type(exc).__name__
import json; print(json.dumps({"uid": os.getuid(), "results": results}))
"""
    for ref in images["images"].values():
        out = json.loads(in_image(ref, probe))
        assert out["uid"] == 10001
        writable = {p for p, r in out["results"].items() if r == "writable"}
        assert writable == {"/tmp", "/tmp/.cache"}, out


def test_images_hold_no_secrets_source_or_data(images, weed):
    """Every file of every image: no store settings file, no credentials, no repository, no data sets, and none of
    the secret keys this machine knows (the test store's, the embedded store's) in any file's content."""
    secrets = [weed.settings().secret_key]
    local_env = ROOT / ".liverseg" / "store" / "store.env"
    if local_env.exists():
        secrets += [v for k, v in build_env_file(local_env).items() if "SECRET" in k and len(v) >= 8]
    # Anywhere in the image: files that hold credentials. Outside installed packages: the repository and its data.
    secret_names = re.compile(r"(^|/)(store\.env|\.liverseg|\.git|\.aws|\.ssh|\.netrc|\.pypirc|\.docker|id_rsa"
                              r"|id_ed25519|\.git-credentials)(/|$)")
    source_names = re.compile(r"(^|/)(\.env|credentials|\.venv|pyproject\.toml|services|tests|workflows|docker)(/|$)")
    data_suffix = re.compile(r"\.(nii|nii\.gz|dcm|npz|pt|pth|ckpt|nrrd)$")
    for stage, ref in images["images"].items():
        mounted = podman("image", "mount", ref)
        if mounted.returncode != 0 and not CI:
            pytest.skip(f"podman image mount needs root here: {mounted.stderr.strip()}")
        assert mounted.returncode == 0, mounted.stderr
        root = Path(mounted.stdout.strip())
        try:
            findings, files = [], 0
            for folder, dirs, names in os.walk(root):
                rel = Path(folder).relative_to(root).as_posix()
                packaged = "/site-packages" in f"/{rel}"  # packages' own test data and 'tests' modules are fine
                for name in [*dirs, *names]:
                    path = f"{rel}/{name}".removeprefix("./")
                    if secret_names.search(path) or (not packaged and (source_names.search(path)
                                                                      or data_suffix.search(name))):
                        findings.append(path)
                files += len(names)
            # Contents: grep the whole tree (site-packages included) for each secret, as root on the host side.
            grep = subprocess.run(["grep", "-rlFf", "-", str(root)], input="\n".join(secrets), text=True,
                                  capture_output=True, check=False)
            assert grep.returncode in (0, 1), grep.stderr
            findings += [f"secret in {line}" for line in grep.stdout.splitlines()]
        finally:
            podman("image", "unmount", ref)
        assert files > 1000, (stage, files)
        assert not findings, (stage, findings[:20])


def build_env_file(path: Path) -> dict[str, str]:
    from liverseg.settings import read_env_file

    return read_env_file(path)


# -- the pipeline in the images, through the workflow templates ----------------------------------------------
@dataclasses.dataclass
class ContainerRun:
    local: ObjectStore
    ctr: ObjectStore
    data: Path
    templates: set[tuple[str, str]]
    executed: dict[tuple[str, str], list[int]]
    outcomes: dict[str, dict]
    seconds: dict[str, float]
    local_summary: dict


def make_dataset(tiny_dataset: Path, root: Path) -> Path:
    """The tiny synthetic set plus one unreadable image, which convert must set aside in both runs."""
    shutil.copytree(tiny_dataset, root)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "imagesTr" / "liver_90.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 50))
    shutil.copy(root / "labelsTr" / "liver_0.nii.gz", root / "labelsTr" / "liver_90.nii.gz")
    meta["training"].append({"image": "./imagesTr/liver_90.nii.gz", "label": "./labelsTr/liver_90.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def fresh_store(weed, name: str) -> ObjectStore:
    settings = dataclasses.replace(weed.settings(), bucket=name)
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


def pod_env(settings: StoreSettings, call_env: dict[str, str]) -> dict[str, str]:
    """What a pod's environment holds: the Secret and ConfigMap (store settings) and the template's own values."""
    return {**{k: v for k, v in settings.to_env().items() if k != ENV_BUCKET}, **call_env}


def run_call(call, settings: StoreSettings, outputs: Path | None = None, **slots: str):
    """One container template, as the pod would run it: command = entrypoint, args, env, restrictions."""
    fill = {CASE_SLOT: slots.get("case", ""), RUN_SLOT: slots.get("run", RUN)}

    def sub(text: str) -> str:
        for slot, value in fill.items():
            text = text.replace(slot, value)
        return text

    env = {k: sub(v) for k, v in pod_env(settings, call.env).items()}
    volumes = ["-v", f"{outputs}:/tmp/outputs:rw"] if outputs else []
    argv = ["run", *POD_FLAGS, *volumes, *[a for k in env for a in ("-e", k)],
            "--entrypoint", json.dumps(call.command[:1]), sub(call.image),
            *call.command[1:], *[sub(a) for a in call.args]]
    started = time.monotonic()
    done = podman(*argv, env=env, timeout=1200)  # values travel in podman's environment, never on its argv
    return done, round(time.monotonic() - started, 1)


@pytest.fixture(scope="module")
def container_run(images, weed, tiny_dataset, tmp_path_factory) -> ContainerRun:
    from liverseg.data.msd import ingest
    from liverseg.runner import RunSpec, run_pipeline
    from liverseg_workflows.contract import container_calls

    tmp = tmp_path_factory.mktemp("container-e2e")
    data = make_dataset(tiny_dataset, tmp / "msd")
    stamp = f"{int(time.time())}-{os.getpid()}"
    local, ctr = fresh_store(weed, f"img-local-{stamp}"), fresh_store(weed, f"img-ctr-{stamp}")
    for store in (local, ctr):
        ingest(store, data, "tiny")
    seconds: dict[str, float] = {}

    started = time.monotonic()
    spec = RunSpec(run_id=RUN, dataset="tiny", profile="default", overrides=TINY_TRAINING)
    local_summary = run_pipeline(spec, local.settings, tmp / "reports", echo=lambda *a, **k: None)
    seconds["local_runner"] = round(time.monotonic() - started, 1)

    study_key = "incoming/study_1.nii.gz"
    ctr.put_file(study_key, data / "imagesTr" / "liver_1.nii.gz")
    tag = images["images"]["convert"].rsplit(":", 1)[1]
    values = {"registry": "localhost", "tag": tag, "run-id": RUN_SLOT, "case": CASE_SLOT,
              "dataset": "tiny", "profile": "default", "overrides": ";".join(TINY_TRAINING), "max-cases": "0",
              "model": "champion", "study": f"study_1={study_key}", "bucket": ctr.bucket, "send-to": "",
              "archive": "",  # liverseg-watch without an archive: a clean usage error (exit 2)
              "workflow.name": WORKFLOW_NAME, "workflow.status": "Succeeded", "workflow.duration": "321.5",
              "workflow.parameters": json.dumps([{"name": "run-id", "value": RUN}]),
              # No GPU here; as many loader workers as the profile has, so training draws what the runner's draws.
              "gpus": "0", "loader-workers": "0"}
    calls = {(c.workflow, c.template): c for c in container_calls(values)}
    executed: dict[tuple[str, str], list[int]] = {}
    outcomes: dict[str, dict] = {}

    def record(key, done, took, label):
        executed.setdefault(key, []).append(done.returncode)
        outcomes[label] = {"rc": done.returncode, "seconds": took, "stdout": done.stdout, "stderr": done.stderr}
        return done

    started = time.monotonic()
    outputs = tmp / "argo-outputs"
    outputs.mkdir()
    outputs.chmod(0o1777)  # the pod's emptyDir: writable by uid 10001
    case_lists: dict[str, list[str]] = {}
    for step in topological():
        key = ("liverseg-pipeline", step.name)
        call = calls[key]
        if step.covers == "run":
            done, took = run_call(call, ctr.settings, outputs if step.name == "plan" else None)
            record(key, done, took, step.name)
            assert done.returncode == 0, (f"{step.name} failed in its image:\n{done.stderr[-3000:]}\n"
                                          f"set aside so far: {quarantined(ctr)}")
            if step.name == "plan":  # Argo reads the plan's output parameters from these files
                case_lists = {"cases": json.loads((outputs / "cases.json").read_text()),
                              "test": json.loads((outputs / "test-cases.json").read_text())}
            continue
        # Per-case steps: one pod per case of the plan's list, two at a time (the workflow's parallelism caps it).
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {case: pool.submit(run_call, call, ctr.settings, case=case)
                       for case in case_lists[step.covers]}
            for case, future in futures.items():
                done, took = future.result()
                record(key, done, took, f"{step.name}/{case}")
                assert done.returncode == 0, f"{step.name} {case} failed in its image:\n{done.stderr[-3000:]}"
    seconds["containers_pipeline"] = round(time.monotonic() - started, 1)

    # The exit handler, then the infer workflow on a study with the champion the pipeline just promoted.
    started = time.monotonic()
    record(("liverseg-pipeline", "record-status"),
           *run_call(calls[("liverseg-pipeline", "record-status")], ctr.settings), "record-status")
    record(("liverseg-infer", "segment-study"),
           *run_call(calls[("liverseg-infer", "segment-study")], ctr.settings, run=STUDY_RUN),
           "segment-study")
    record(("liverseg-infer", "record-status"),
           *run_call(calls[("liverseg-infer", "record-status")], ctr.settings, run=STUDY_RUN),
           "infer/record-status")
    # Templates added to the workflows later: each must at least parse and run, or fail with a clean error.
    for key, call in calls.items():
        if key not in executed:
            record(key, *run_call(call, ctr.settings, case="liver_0"), f"{key[0]}/{key[1]}")
    seconds["containers_other_templates"] = round(time.monotonic() - started, 1)
    print(f"container e2e timings (s): {seconds}")
    return ContainerRun(local, ctr, data, set(calls), executed, outcomes, seconds, local_summary)


def quarantined(store: ObjectStore) -> dict[str, str]:
    return {r.key: store.get_json(r.key)["reason"] for r in store.list(f"runs/{RUN}/quarantine/")}


def manifests(store: ObjectStore, run: str, stage: str, cases: list[str]) -> dict[str, dict]:
    return {c: store.get_json(layout.manifest_key(run, stage, c)) for c in cases}


def test_every_workflow_template_ran_in_its_image(container_run):
    assert container_run.templates == set(container_run.executed)
    assert len(container_run.templates) >= 10
    known = {("liverseg-pipeline", s.name) for s in topological()} | {
        ("liverseg-pipeline", "record-status"), ("liverseg-infer", "segment-study"),
        ("liverseg-infer", "record-status")}
    for key, codes in container_run.executed.items():
        if key in known:
            assert set(codes) == {0}, (key, codes)
        else:  # a template this test does not drive yet: a clean failure is acceptable, a crash is not
            outcome = container_run.outcomes[f"{key[0]}/{key[1]}"]
            assert outcome["rc"] in (0, 1, 2) and "Traceback" not in outcome["stderr"], (key, outcome)


def test_plan_and_statuses_match_the_local_runner(container_run):
    local, ctr = container_run.local, container_run.ctr
    plan_l = local.get_json(layout.manifest_key(RUN, "plan"))["details"]["plan"]
    plan_c = ctr.get_json(layout.manifest_key(RUN, "plan"))["details"]["plan"]
    assert plan_c["split"] == plan_l["split"] and sorted(plan_c["cases"]) == sorted(plan_l["cases"])
    assert plan_c["profile"] == plan_l["profile"]
    cases = sorted(plan_c["cases"])
    assert "liver_90" in cases
    for stage in ("convert", "group", "preprocess"):
        m_l, m_c = manifests(local, RUN, stage, cases), manifests(ctr, RUN, stage, cases)
        assert {c: m["status"] for c, m in m_c.items()} == {c: m["status"] for c, m in m_l.items()}, stage
        assert [m["status"] for m in m_c.values()].count("ok") == 5, stage
    quarantined = [s.get_json(layout.quarantine_key(RUN, "convert", "liver_90")) for s in (ctr, local)]
    assert quarantined[0]["reason"] == quarantined[1]["reason"] and "not a readable NIfTI" in quarantined[0]["reason"]
    # Every container manifest records the commit the image was built from (LIVERSEG_CODE_VERSION).
    revision = json.loads((build.WORK / "build.json").read_text())["revision"]
    expected = f"{build.version()}+{revision}" if revision else build.version()
    assert {m["code_version"] for m in manifests(ctr, RUN, "group", cases).values()} == {expected}


def test_groups_and_training_match_the_local_runner(container_run):
    local, ctr = container_run.local, container_run.ctr
    for case in [f"liver_{i}" for i in range(5)]:
        g_l = local.get_json(layout.manifest_key(RUN, "group", case))["details"]["groups"]
        g_c = ctr.get_json(layout.manifest_key(RUN, "group", case))["details"]["groups"]
        assert g_c == g_l, case
    metrics_l = local.get_json(f"runs/{RUN}/train/metrics.json")
    metrics_c = ctr.get_json(f"runs/{RUN}/train/metrics.json")
    assert [m["epoch"] for m in metrics_c] == [m["epoch"] for m in metrics_l] == [1, 2]


def test_dice_per_case_matches_and_masks_are_on_the_original_grid(container_run, tmp_path):
    from liverseg.ml.metrics import dice

    local, ctr, data = container_run.local, container_run.ctr, container_run.data
    summary_l = container_run.local_summary
    summary_c = ctr.get_json(f"{layout.stage_prefix(RUN, 'evaluate')}/summary.json")
    assert summary_c["cases"], "no held-out case was scored in the containers"
    assert set(summary_c["cases"]) == set(summary_l["cases"])
    assert set(summary_c.get("set_aside", {})) == set(summary_l.get("set_aside", {}))
    for case, scores in summary_c["cases"].items():
        mask_c = nib.load(ctr.get_file(f"runs/{RUN}/infer/{case}/mask.nii.gz", tmp_path / f"{case}-c.nii.gz"))
        mask_l = nib.load(local.get_file(f"runs/{RUN}/infer/{case}/mask.nii.gz", tmp_path / f"{case}-l.nii.gz"))
        study = nib.load(data / "imagesTr" / f"{case}.nii.gz")
        label = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj)
        assert mask_c.shape == study.shape
        np.testing.assert_allclose(mask_c.affine, study.affine, atol=1e-4)
        arr_c, arr_l = np.asarray(mask_c.dataobj), np.asarray(mask_l.dataobj)
        assert set(np.unique(arr_c)) <= {0, 1}
        # Dice computed the same way as the infer stage (hard foreground, liver = label >= 1), from the stored mask.
        assert round(dice(arr_c.astype(bool), label >= 1), 5) == scores["dice"]
        # Same code, same wheels, same seed: the containers' model scores as the local runner's did.
        assert scores["dice"] == pytest.approx(summary_l["cases"][case]["dice"], abs=1e-4), case
        assert dice(arr_c.astype(bool), arr_l.astype(bool)) > 0.999, case
    assert ctr.get_json(layout.CHAMPION_KEY)["version"] == RUN


def test_exit_handler_and_study_inference_ran_in_their_images(container_run, tmp_path):
    ctr, data = container_run.ctr, container_run.data
    status = ctr.get_json(f"runs/{RUN}/workflows/{WORKFLOW_NAME}.json")
    assert status["status"] == "Succeeded" and status["duration_seconds"] == 321.5
    assert status["parameters"] == {"run-id": RUN}
    assert ctr.get_json(f"runs/{STUDY_RUN}/workflows/{WORKFLOW_NAME}.json")["status"] == "Succeeded"
    mask = nib.load(ctr.get_file(f"runs/{STUDY_RUN}/infer/study_1/mask.nii.gz", tmp_path / "study.nii.gz"))
    study = nib.load(data / "imagesTr" / "liver_1.nii.gz")
    assert mask.shape == study.shape
    np.testing.assert_allclose(mask.affine, study.affine, atol=1e-4)
    assert np.asarray(mask.dataobj).sum() > 0


def test_stage_logs_hold_no_secret_and_no_traceback(container_run):
    secret = container_run.ctr.settings.secret_key
    lines = [line for o in container_run.outcomes.values() for line in o["stderr"].splitlines() if line.strip()]
    assert len(lines) > 30
    assert not any(secret in line for o in container_run.outcomes.values() for line in (o["stdout"], o["stderr"]))
    assert not any("Traceback" in o["stderr"] for o in container_run.outcomes.values())
    print("container step seconds:", {k: o["seconds"] for k, o in container_run.outcomes.items()})


def test_a_bad_store_setting_is_a_clean_error_in_the_image(images, weed):
    """Exit 2 and one line, not a traceback, when a template runs against a wrong bucket or without settings."""
    ref = images["images"]["convert"]
    done = podman("run", *POD_FLAGS, ref, "plan", "--run-id", "x", "--dataset", "tiny", timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "LIVERSEG_S3_ENDPOINT" in done.stderr
