"""The watch loop against a real Orthanc and a real S3 store: two studies uploaded are listed once, segmented by the
infer stage as the CronWorkflow's pods would run it, recorded done, never listed again (their SEG and RTSTRUCT in
the study do not make them new); a study the infer stage sets aside is set aside with its reason; a study whose pods
fail is submitted again, then set aside; a re-run, or a run while studies are in flight, lists nothing new."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from archive_tools import Orthanc, phantom_volume, scanner_series
from liverseg import layout
from liverseg.commands.watch import archive_id
from liverseg.config import load_profile
from liverseg.ml.model import build_unet
from liverseg.ml.modelfile import to_bytes

pytestmark = pytest.mark.slow


def liverseg(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVERSEG")} | env
    return subprocess.run([sys.executable, "-m", "liverseg", *map(str, args)], capture_output=True, text=True,
                          env=environ, check=False, timeout=600)


def run_watch(env, root, *extra) -> dict:
    done = liverseg(env, "watch", "--archive", root, *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def orthanc(tmp_path):
    """An archive of this test's own: the watch loop sees every CT study in it."""
    server = Orthanc(tmp_path / "orthanc").up()
    yield server
    server.down()


def test_new_studies_are_segmented_once_failures_retried_then_set_aside(orthanc, store, store_env, tmp_path):
    env = {**store_env, **orthanc.env()}
    studies = {}
    for n, date in enumerate(("20260201", "20260202")):
        uid = f"2.25.{900000 + n}"
        studies[uid] = scanner_series(phantom_volume(n), tmp_path / f"study{n}", study_uid=uid, patient=f"w{n}",
                                      number=2, description="abdomen", study_date=date)
    # A CT study with nothing to segment: only a localizer.
    scout = "2.25.900009"
    studies[scout] = scanner_series(phantom_volume(9, (64, 64, 2)), tmp_path / "scout", study_uid=scout,
                                    patient="w9", number=1, description="scout", study_date="20260203",
                                    image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    for paths in studies.values():
        orthanc.upload(paths)
    model = store.put_bytes("models-under-test/untrained.pt", to_bytes({
        "format": "liverseg.model/v1", "state_dict": build_unet().state_dict(),
        "profile": load_profile("default", environ={}).model_dump(mode="json")}))

    out = tmp_path / "outputs"
    first = run_watch(env, orthanc.dicomweb_root, "--studies-out", out / "studies.json", "--run-id-out",
                      out / "run-id")
    run_id = (out / "run-id").read_text()
    assert run_id == first["run_id"] == f"watch-{archive_id(orthanc.dicomweb_root)}"
    ours = json.loads((out / "studies.json").read_text())
    assert ours == [orthanc.study_url(u) for u in studies]  # oldest first
    assert first["watermark"] >= "20260203"

    # The pods: one infer per study (here one process over all of them), results sent back to the archive.
    done = liverseg(env, "infer", "--run-id", run_id, "--model", model.key, "--send-to", orthanc.dicomweb_root,
                    *(a for u in ours for a in ("--study", u)))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(outcome["ok"]) == sorted(u for u in studies if u != scout)
    assert "no axial CT series to segment" in outcome["quarantined"][scout]

    # The next run: done, set aside with the stage's reason; the studies now hold SEG + RTSTRUCT, and are not new.
    second = run_watch(env, orthanc.dicomweb_root)
    assert sorted(second["done"]) == sorted(u for u in studies if u != scout)
    assert "a localizer" in second["set_aside"][scout]
    assert second["new"] == [] and second["studies"] == []
    for uid in studies:
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(uid))
        assert modalities == (["CT"] if uid == scout else ["CT", "RTSTRUCT", "SEG"]), (uid, modalities)
    third = run_watch(env, orthanc.dicomweb_root)  # a re-run: harmless
    assert third["studies"] == [] and third["done"] == [] and third["set_aside"] == {}
    prefix = layout.watch_prefix(archive_id(orthanc.dicomweb_root))
    records = {uid: store.get_json(f"{prefix}/studies/{uid}.json") for uid in studies}
    assert {uid: (r["status"], r["attempts"]) for uid, r in records.items()} == {
        **{u: ("done", 1) for u in studies if u != scout}, scout: ("set-aside", 1)}

    # A study whose pods all fail: waiting while recent, submitted again after --retry-after, then set aside.
    late = "2.25.900010"
    orthanc.upload(scanner_series(phantom_volume(10), tmp_path / "late", study_uid=late, patient="w10", number=2,
                                  description="abdomen", study_date="20260202"))  # dated before the watermark
    listed = run_watch(env, orthanc.dicomweb_root)
    assert listed["new"] == [late]  # found through the look-back
    assert run_watch(env, orthanc.dicomweb_root)["waiting"] == [late]  # in flight: not listed twice
    assert run_watch(env, orthanc.dicomweb_root, "--retry-after", "0")["retried"] == [late]
    assert run_watch(env, orthanc.dicomweb_root, "--retry-after", "0")["retried"] == [late]
    final = run_watch(env, orthanc.dicomweb_root, "--retry-after", "0")
    assert final["set_aside"] == {late: "no result after 3 attempts (the segment-study pods failed)"}
    assert run_watch(env, orthanc.dicomweb_root, "--retry-after", "0")["studies"] == []

    # Listed twice anyway (two runs started by hand at once): the second infer of a study is skipped.
    again = liverseg(env, "infer", "--run-id", run_id, "--model", model.key, "--send-to", orthanc.dicomweb_root,
                     "--study", orthanc.study_url(ours[0].rsplit("/", 1)[-1]))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["skipped"] == [ours[0].rsplit("/", 1)[-1]]
    for text in (first, second, third, final, done.stdout, done.stderr, again.stderr):
        assert orthanc.password not in json.dumps(text)
