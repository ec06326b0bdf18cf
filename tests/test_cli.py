"""The command line: every stage has --help, logs are JSON lines without secrets, errors are one clear line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from liverseg import logs
from liverseg.graph import PIPELINE, topological
from liverseg.settings import StoreSettings
from liverseg.stagecli import worker_command_line
from liverseg.store import ObjectStore


def liverseg(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "liverseg", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, check=False, timeout=120)


@pytest.mark.parametrize("command", ["run", "store", "synth", "ingest", *[s.name for s in PIPELINE]])
def test_every_command_has_help(command):
    done = liverseg(command, "--help")
    assert done.returncode == 0 and "usage: liverseg" in done.stdout


def test_graph_is_ordered_and_names_the_five_stage_images():
    order = [s.name for s in topological()]
    assert order.index("convert") < order.index("group") < order.index("preprocess") < order.index("train")
    assert order.index("train") < order.index("infer") < order.index("evaluate")
    assert {s.image.name for s in PIPELINE} == {"convert", "group", "preprocess", "train", "infer"}
    assert [s.name for s in PIPELINE if s.resources.gpu] == ["train"]


def test_stage_without_store_settings_fails_clearly(tmp_path):
    done = liverseg("convert", "--run-id", "r", env={"PATH": "/usr/bin:/bin", "LIVERSEG_HOME": str(tmp_path)})
    assert done.returncode == 2
    line = json.loads(done.stderr.strip().splitlines()[-1])
    assert line["level"] == "error" and "store settings missing: LIVERSEG_S3_ENDPOINT" in line["error"]


def test_logs_are_json_and_never_show_the_secret(store_env, tmp_path):
    """A stage that fails (no plan) still logs JSON lines only, and the secret key appears nowhere."""
    done = liverseg("group", "--run-id", "no-such-run", env={**store_env, "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[-1]["error"].startswith("run no-such-run has no plan")
    assert store_env["LIVERSEG_S3_SECRET_KEY"] not in done.stderr + done.stdout


def test_run_id_must_be_safe(store_env, tmp_path):
    done = liverseg("convert", "--run-id", "../escape", env={**store_env, "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 2 and "invalid run id" in done.stderr


def test_workers_get_every_option_but_their_own_cases():
    parent = ["infer", "--run-id", "r", "--model", "champion", "--workers", "2", "--case", "a", "--case=b",
              "--device", "cpu"]
    assert worker_command_line(parent, ["c", "d"]) == [
        "infer", "--run-id", "r", "--model", "champion", "--device", "cpu", "--case", "c", "--case", "d"]
    assert worker_command_line(["convert", "--run-id", "r", "--work", "3", "--workers=2"], ["x"]) == [
        "convert", "--run-id", "r", "--case", "x"]


def test_a_secret_with_quotes_backslashes_and_accents_is_scrubbed(capsys):
    secret = 'pa"ss\\wörd-99'
    logs.configure()
    logs.register_secret(secret)
    logging.getLogger("liverseg.test").error("failed", extra={"error": f"auth with {secret} refused"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["error"] == "auth with *** refused"


def test_the_secret_of_any_store_client_is_scrubbed(capsys):
    """Settings read from the embedded store's file never pass through the environment the logger reads."""
    logs.configure()
    settings = StoreSettings(endpoint="127.0.0.1:9", access_key="someone", secret_key="only-this-test-knows-it-42")
    ObjectStore(settings)
    logging.getLogger("liverseg.test").error("failed", extra={"error": f"key {settings.secret_key} refused"})
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"] == "key *** refused"


def test_synth_msd_slices_draws_decathlon_size_cases(tmp_path):
    """``liverseg synth --msd-slices``: one 512x512 case per slice count, Decathlon spacings, the same bytes twice."""
    import nibabel as nib

    for out in (tmp_path / "a", tmp_path / "b"):
        done = subprocess.run([sys.executable, "-m", "liverseg", "synth", "--out", str(out), "--msd-slices", "8", "74",
                               "--seed", "3"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    dataset = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert [c["image"] for c in dataset["training"]] == ["./imagesTr/liver_0.nii.gz", "./imagesTr/liver_1.nii.gz"]
    for case, slices in (("liver_0", 8), ("liver_1", 74)):
        image = nib.load(tmp_path / "a" / "imagesTr" / f"{case}.nii.gz")
        label = nib.load(tmp_path / "a" / "labelsTr" / f"{case}.nii.gz")
        assert image.shape == label.shape == (512, 512, slices)
        in_plane, _, thickness = image.header.get_zooms()
        assert 0.56 <= in_plane <= 1.0 and 0.7 <= thickness <= 5.0
        assert image.get_data_dtype() == "int16" and label.get_data_dtype() == "uint8"
        for folder in ("imagesTr", "labelsTr"):
            assert ((tmp_path / "a" / folder / f"{case}.nii.gz").read_bytes()
                    == (tmp_path / "b" / folder / f"{case}.nii.gz").read_bytes())
    assert np.asarray(nib.load(tmp_path / "a" / "labelsTr" / "liver_1.nii.gz").dataobj).any()  # a liver in 74 slices


@pytest.mark.parametrize(("args", "error"), [
    (["--generator", "legacy", "--size", "msd"], "the legacy generator has pipeline-size grids"),
    (["--generator", "legacy", "--randomise", "0.3"], "no intensity randomisation"),
    (["--msd-slices", "120", "--generator", "legacy"], "--msd-slices draws anatomy phantoms"),
    (["--randomise", "2"], "randomise is a share of the cases"),
])
def test_synth_refuses_settings_its_generator_does_not_have(tmp_path, args, error):
    done = liverseg("synth", "--out", str(tmp_path / "out"), "--cases", "1", *args)
    assert done.returncode == 2 and error in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
