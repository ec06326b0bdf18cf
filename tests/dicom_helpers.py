"""DICOM test helpers: real-data paths, re-encoded copies of real slices, dciodvfy, NRRD, the CLI."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pydicom

from conftest import shared_data_or_skip
from liverseg.imaging.geometry import Volume

TCIA = "tcia_pancreas_ct_cb001_dicom"
DCMQI = "dcmqi_ct3slice_liver"
# dciodvfy warnings our objects may carry, each justified in docs/DICOM.md ("dciodvfy warnings").
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS+ <-> LPS+ (the same flip both ways)
ALLOWED_WARNINGS = (
    "Missing attribute or value that would be needed to build DICOMDIR - Study Date",
    "Missing attribute or value that would be needed to build DICOMDIR - Study Time",
)


def tcia_files() -> list[Path]:
    return sorted((shared_data_or_skip(TCIA) / "dicom").glob("*.dcm"))


def dcmqi_dir() -> Path:
    return shared_data_or_skip(DCMQI)


def rewrite(sources: Iterable[Path], out_dir: Path, edit: Callable[[pydicom.Dataset, int], None] | None = None,
            names: Callable[[int], str] = lambda i: f"{i:04d}.dcm") -> list[Path]:
    """Copies of ``sources`` through pydicom, each passed to ``edit(ds, index)`` first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        if edit is not None:
            edit(ds, i)
        path = out_dir / names(i)
        ds.save_as(path)
        paths.append(path)
    return paths


def dcmtk(tool: str, *args: str) -> None:
    """Run a dcmtk converter (installed by ``make tools``)."""
    if shutil.which(tool) is None:
        raise AssertionError(f"{tool} (dcmtk) is missing: run 'make tools'")
    subprocess.run([tool, *args], check=True, capture_output=True)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for one file (it prints them on stderr, exit status 0 either way)."""
    if shutil.which("dciodvfy") is None:
        raise AssertionError("dciodvfy (dicom3tools) is missing: run 'make tools'")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False, timeout=60)
    lines = (done.stderr + done.stdout).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [re.sub(r"^Warning - ", "", line) for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid_dicom(paths: Iterable[Path]) -> None:
    """Zero dciodvfy errors, and only the documented warnings, on every file."""
    for path in paths:
        errors, warnings = dciodvfy(path)
        assert errors == [], f"{path}: {errors}"
        unexpected = [w for w in warnings if w not in ALLOWED_WARNINGS]
        assert unexpected == [], f"{path}: undocumented dciodvfy warnings {unexpected}"


def read_nrrd(path: Path) -> Volume:
    """A 3D NRRD (raw or gzip, little endian, LPS space) as a Volume in RAS+ (enough for the dcmqi label)."""
    raw = Path(path).read_bytes()
    head, _, data = raw.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    assert fields["space"] == "left-posterior-superior" and fields.get("endian", "little") == "little"
    sizes = [int(v) for v in fields["sizes"].split()]
    dtype = {"short": np.int16, "unsigned char": np.uint8, "uchar": np.uint8, "int": np.int32}[fields["type"]]
    if fields["encoding"] == "gzip":
        data = gzip.decompress(data)
    array = np.frombuffer(data, dtype=dtype).reshape(sizes, order="F")
    directions = re.findall(r"\(([^)]*)\)", fields["space directions"])
    lps = np.eye(4)
    lps[:3, :3] = np.array([[float(v) for v in d.split(",")] for d in directions]).T
    lps[:3, 3] = [float(v) for v in fields["space origin"].strip("()").split(",")]
    return Volume(array, LPS_FROM_RAS @ lps)


def liverseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liverseg", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, check=False, timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit 1 and exactly one stderr line containing every needle; no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def nifti_to_dicom(image, label, patient_id: str, uid_namespace: str, out: Path, created=None) -> None:
    """The convert stage's ``encode_case`` on in-memory volumes, written to ``out`` (``ct/``, ``seg.dcm``)."""
    from liverseg.imaging.dicom_write import SeriesInfo
    from liverseg.stages.convert import encode_case

    encode_case(image, label, SeriesInfo(patient_id=patient_id, uid_namespace=uid_namespace),
                created=created).write(Path(out))


def centres_inside(points: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(rows, columns): the voxel centres inside one closed polygon of (column, row) points, by the even-odd rule
    (a crossing at a vertex counts once: half-open edges)."""
    inside = np.zeros((rows, columns), dtype=bool)
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centres = np.arange(columns)
    for row in range(max(0, int(np.floor(y0.min()))), min(rows, int(np.ceil(y0.max())) + 1)):
        crossing = (y0 <= row) != (y1 <= row)
        xs = x0[crossing] + (row - y0[crossing]) * (x1[crossing] - x0[crossing]) / (y1[crossing] - y0[crossing])
        inside[row] = (np.sum(xs[:, None] < centres[None, :], axis=0) % 2).astype(bool)
    return inside


def rtstruct_label(rtstruct: pydicom.Dataset, slices: list[pydicom.Dataset], roi_number: int = 1) -> np.ndarray:
    """An RT Structure Set ROI read back onto its CT slices (in ``slices`` order) as a label (i, j, k) = (column,
    row, slice): each contour goes to the slice its ContourImageSequence names, in that slice's pixel grid, and a
    voxel is inside when an odd number of the slice's contours enclose its centre (nested contours are holes)."""
    first = slices[0]
    label = np.zeros((int(first.Columns), int(first.Rows), len(slices)), dtype=bool)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(slices)}
    roi = next(r for r in rtstruct.ROIContourSequence if int(r.ReferencedROINumber) == roi_number)
    for contour in getattr(roi, "ContourSequence", []):
        k = index[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
        ds = slices[k]
        points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
        offset = points - np.array([float(v) for v in ds.ImagePositionPatient])
        along_row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        along_column = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        delta_row, delta_column = (float(v) for v in ds.PixelSpacing)
        assert np.allclose(offset @ np.cross(along_row, along_column), 0, atol=1e-3), "contour off its slice"
        indices = np.stack([offset @ along_row / delta_column, offset @ along_column / delta_row], axis=1)
        label[:, :, k] ^= centres_inside(indices, int(ds.Rows), int(ds.Columns)).T
    return label


def plastimatch_label(rtstruct: Path, ct_folder: Path, work: Path, xor: bool = True) -> np.ndarray:
    """plastimatch's rasterisation of the structure set's first ROI on the CT (``--xor-contours``: nested contours
    are holes), as a label (i, j, k) in the CT's column, row, slice order (slices ascending along the normal)."""
    if shutil.which("plastimatch") is None:
        raise AssertionError("plastimatch is missing: run 'make tools'")
    out = Path(work) / "plastimatch"
    args = ["plastimatch", "convert", "--input", str(rtstruct), "--referenced-ct", str(ct_folder),
            "--output-prefix", str(out), *(["--xor-contours"] if xor else [])]
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    (mha,) = out.glob("*.mha")
    head, _, data = mha.read_bytes().partition(b"ElementDataFile = LOCAL\n")
    fields = dict(line.split(" = ", 1) for line in head.decode().splitlines() if " = " in line)
    assert [float(v) for v in fields["TransformMatrix"].split()] == [1, 0, 0, 0, 1, 0, 0, 0, 1], "axial CT only"
    assert fields["ElementType"] == "MET_UCHAR"
    sizes = [int(v) for v in fields["DimSize"].split()]
    return np.frombuffer(data, dtype=np.uint8).reshape(sizes[::-1]).transpose(2, 1, 0) > 0
