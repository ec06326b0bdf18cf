"""The hospital loop against a real PACS: the TCIA CT in Orthanc (DICOMweb, authentication on), segmented from its
study URL, the SEG and RTSTRUCT sent back with STOW-RS, read back from Orthanc and checked (dciodvfy, the CT
series referenced, the same voxels as mask.nii.gz through highdicom, an even-odd contour reader and plastimatch);
re-sent without a duplicate; credentials never printed; nothing left in the temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import ALLOWED_WARNINGS, dciodvfy, plastimatch_label, rtstruct_label, tcia_files
from liverseg.imaging import dicom_read
from model_files import soft_tissue_model
from viewer_server import TlsFront

pytestmark = pytest.mark.slow
SEG_STORAGE, RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3"
# What dciodvfy says of the TCIA CT's own Patient and Study attributes, which derived objects copy as they are.
INHERITED_WARNINGS = (
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    "Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = <Pancreas-CT-CB_001> - Retired Person "
    "Name form",
)


@pytest.fixture(scope="module")
def tcia_study(orthanc) -> str:
    files = tcia_files()
    assert orthanc.upload(files) == len(files)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return soft_tissue_model(tmp_path_factory.mktemp("model") / "soft-tissue.pt")


def liverseg(env: dict[str, str], *args, tmp=None) -> subprocess.CompletedProcess:
    # One try per request: the failures below are for good, and five tries would back off for 30 s each.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVERSEG")} | {
        "LIVERSEG_DICOMWEB_RETRY_ATTEMPTS": "1"} | env
    if tmp is not None:
        environ["TMPDIR"] = str(tmp)
    return subprocess.run([sys.executable, "-m", "liverseg", *map(str, args)], capture_output=True, text=True,
                          env=environ, check=False, timeout=900)


def test_a_study_from_the_archive_is_segmented_and_its_seg_and_rtstruct_go_back(orthanc, tcia_study, model,
                                                                                 tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    done = liverseg(orthanc.env(), "segment", orthanc.study_url(tcia_study), "--out", out, "--model", model,
                    "--send-to", orthanc.dicomweb_root, tmp=scratch)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    ct_series = str(pydicom.dcmread(tcia_files()[0], stop_before_pixels=True).SeriesInstanceUID)
    assert result["series"]["series_uid"] == ct_series
    assert "ORIGINAL\\PRIMARY" in result["series"]["reason"] and "134 slices" in result["series"]["reason"]
    assert {"seg.dcm", "rtstruct.dcm", "mask.nii.gz", "report.html"} <= set(result["files"])
    assert result["not_written"] == {}
    assert sorted(s["modality"] for s in result["sent"]) == ["RTSTRUCT", "SEG"]
    assert list(scratch.iterdir()) == [], "the retrieved series stayed behind"
    assert orthanc.password not in done.stdout + done.stderr
    assert "series 201" in (out / "report.html").read_text()

    # Read back from the archive: both objects are in the study, valid, and reference the CT series.
    stored = {i["MainDicomTags"]["SOPInstanceUID"]: i for i in orthanc.instances_of_study(tcia_study)}
    assert len(stored) == 134 + 2
    objects = {}
    for sent in result["sent"]:
        path = tmp_path / f"{sent['modality']}.dcm"
        path.write_bytes(orthanc.instance_file(stored[sent["sop_instance_uid"]]["ID"]))
        objects[sent["modality"]] = (path, pydicom.dcmread(path))
    assert objects["SEG"][1].SOPClassUID == SEG_STORAGE and objects["RTSTRUCT"][1].SOPClassUID == RTSTRUCT_STORAGE
    for path, ds in objects.values():
        errors, warnings = dciodvfy(path)
        assert errors == [], (path.name, errors)
        assert set(warnings) <= {*ALLOWED_WARNINGS, *INHERITED_WARNINGS}, (path.name, warnings)
        assert ds.StudyInstanceUID == tcia_study
        assert [str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence] == [ct_series]

    # The same voxels as mask.nii.gz, on the source grid, three ways.
    mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj) > 0
    assert mask.sum() > 100_000, "the test needs a mask with something in it"
    ordered = dicom_read.sort_by_position(dicom_read.read_headers(tcia_files()))
    slices = [h.ds for h in ordered]
    seg = hd.seg.Segmentation.from_dataset(objects["SEG"][1])
    frames = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in slices], combine_segments=True,
                                               skip_overlap_checks=True)
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)) > 0, mask)
    assert seg.get_segment_description(1).segment_label == "Liver"
    np.testing.assert_array_equal(rtstruct_label(objects["RTSTRUCT"][1], slices), mask)
    np.testing.assert_array_equal(plastimatch_label(objects["RTSTRUCT"][0], tcia_files()[0].parent, tmp_path), mask)

    # Sent again: the same SOP Instance UIDs, nothing new in the archive.
    again = liverseg(orthanc.env(), "segment", orthanc.study_url(tcia_study), "--out", tmp_path / "again",
                     "--model", model, "--send-to", orthanc.dicomweb_root)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == result["sent"]
    assert len(orthanc.instances_of_study(tcia_study)) == 134 + 2


def test_archive_credentials_and_urls_fail_in_one_line_without_the_secret(orthanc, tcia_study, tmp_path):
    model = tmp_path / "never-read.pt"  # each of these fails before the model is loaded
    wrong = {**orthanc.env(), "LIVERSEG_DICOMWEB_PASSWORD": "not-the-password-123"}
    done = liverseg(wrong, "segment", orthanc.study_url(tcia_study), "--out", tmp_path / "o", "--model", model)
    assert done.returncode == 1 and "refused the credentials (401)" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "not-the-password-123" not in done.stderr + done.stdout
    with_userinfo = orthanc.study_url(tcia_study).replace("http://", f"http://{orthanc.username}:{orthanc.password}@")
    done = liverseg({}, "segment", with_userinfo, "--out", tmp_path / "o", "--model", model)
    assert done.returncode == 2 and "carries credentials" in done.stderr, done.stderr
    assert orthanc.password not in done.stderr + done.stdout
    done = liverseg(orthanc.env(), "segment", orthanc.study_url("1.2.3.4.5"), "--out", tmp_path / "o",
                    "--model", model)
    assert done.returncode == 1 and "study 1.2.3.4.5 is not in the archive" in done.stderr, done.stderr
    done = liverseg(orthanc.env(), "segment", "http://127.0.0.1:9/dicom-web/studies/1.2.3", "--out",
                    tmp_path / "o", "--model", model)
    assert done.returncode == 1 and "cannot reach the archive" in done.stderr, done.stderr


def test_bearer_tokens_and_a_private_ca(orthanc, tmp_path):
    """A bearer token is sent (Orthanc takes basic only, so it is refused), and never printed; HTTPS to an archive
    whose certificate a private CA signed works with LIVERSEG_DICOMWEB_CA_BUNDLE and fails in one line without."""
    model = tmp_path / "never-read.pt"
    token = {"LIVERSEG_DICOMWEB_TOKEN": "tok-0123456789abcdef"}
    done = liverseg(token, "segment", orthanc.study_url("1.2.3"), "--out", tmp_path / "o", "--model", model)
    assert done.returncode == 1 and "refused the credentials (401)" in done.stderr, done.stderr
    assert "tok-0123456789abcdef" not in done.stderr + done.stdout
    both = {**orthanc.env(), **token}
    done = liverseg(both, "segment", orthanc.study_url("1.2.3"), "--out", tmp_path / "o", "--model", model)
    assert done.returncode == 2 and "not both" in done.stderr, done.stderr

    certificate, key = tmp_path / "ca.pem", tmp_path / "key.pem"  # self-signed: its own CA
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with TlsFront(orthanc.url, certificate, key) as front:
        url = f"{front.url}/dicom-web/studies/2.25.42"
        trusted = {**orthanc.env(), "LIVERSEG_DICOMWEB_CA_BUNDLE": str(certificate)}
        done = liverseg(trusted, "segment", url, "--out", tmp_path / "o", "--model", model)
        assert done.returncode == 1 and "study 2.25.42 is not in the archive" in done.stderr, done.stderr
        done = liverseg(orthanc.env(), "segment", url, "--out", tmp_path / "o", "--model", model)
        assert done.returncode == 1 and "TLS to the archive" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and orthanc.password not in done.stderr
        missing = {**orthanc.env(), "LIVERSEG_DICOMWEB_CA_BUNDLE": str(tmp_path / "nowhere.pem")}
        done = liverseg(missing, "segment", url, "--out", tmp_path / "o", "--model", model)
        assert done.returncode == 2 and "not a file" in done.stderr, done.stderr
