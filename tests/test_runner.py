"""The local runner hands each step exactly the configuration the run was checked with."""

from __future__ import annotations

from liverseg.config import env_override_pairs
from liverseg.data.msd import ingest
from liverseg.graph import STEPS
from liverseg.runner import RunSpec, run_step
from liverseg.stagekit import load_plan


def test_plan_step_sees_the_profiles_file_and_environment_overrides(store, settings, tiny_dataset, tmp_path,
                                                                     monkeypatch):
    """Steps run with a cleaned environment in an empty folder: a profile from LIVERSEG_CONFIG (given relative
    to the caller's folder) and LIVERSEG__* overrides must still reach the plan, or it records another profile."""
    (tmp_path / "profiles.yaml").write_text("profiles:\n  mine:\n    train: {epochs: 7, patch: [32, 32, 32]}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIVERSEG_CONFIG", "profiles.yaml")
    environ = {"LIVERSEG__TRAIN__LR": "0.003", "LIVERSEG__SPLIT__SEED": "5"}
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    ingest(store, tiny_dataset, "tiny")
    spec = RunSpec(run_id="cfg", dataset="tiny", profile="mine",
                   overrides=[*env_override_pairs(environ), "train.epochs=3"])
    (tmp_path / "logs").mkdir()
    run_step(STEPS["plan"], spec, settings, tmp_path / "logs")
    profile = load_plan(store, "cfg").config()
    assert profile.name == "mine" and profile.train.patch == (32, 32, 32)
    assert (profile.train.lr, profile.split.seed, profile.train.epochs) == (0.003, 5, 3)
