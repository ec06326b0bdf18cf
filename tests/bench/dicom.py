"""``make bench-dicom``: our DICOM↔NIfTI conversion against the reference tools, on the real TCIA series.

- DICOM → NIfTI: ``liverseg dicom to-nifti`` against ``dcm2niix``; NIfTI → DICOM: ``liverseg dicom from-nifti``
  against ``plastimatch convert``.
- Fair by construction: **both sides as whole processes** (start-up, imports and all, as a user runs them), **the
  same output kind**: uncompressed ``.nii`` on both sides for DICOM → NIfTI (dcm2niix ``-z n -b n``: no JSON
  sidecar, as ours writes none; both store the slices' values with scl_slope/scl_inter), the same uncompressed
  ``.nii`` input for NIfTI → DICOM (int16 HU without scaling, the series read by our reader), and one
  uncompressed file per slice out on both sides. Runs are interleaved (ours, theirs, then theirs, ours, …) so
  drifting machine load hits both; outputs are deleted between runs, untimed; the figure is the median wall time.
- Our package is byte-compiled first (``compileall``, what ``pip install`` does), so no run pays for compiling our
  sources (``PYTHONDONTWRITEBYTECODE`` would otherwise make every run do it); page caches are warmed by an untimed
  run of every command.
- Secondary rows: the same with gzip (level 1, single-threaded zlib on both sides: dcm2niix ``-z i -1``); NIfTI →
  DICOM from a dcm2niix-style input (int16 with scl_inter, which plastimatch converts more slowly: it is not the
  headline input for that reason); our in-process conversion time (the work without interpreter start-up); the
  start-up of a bare Python, of Python with the modules our commands import, and of ``import numpy``, so the
  split between start-up and conversion work is visible.
- Before timing, outputs are checked to be equivalent (same voxels in world space, same number of files), so the
  comparison is like for like.

Writes ``bench-results/dicom.json`` (``--out``); timing is never asserted in the unit tests.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGETS = {"to_nifti": 1.5, "from_nifti": 0.5}  # ours / theirs, at most
DEFAULT_SERIES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcia_pancreas_ct_cb001_dicom" / \
    "dicom"


def _timed(cmd: list[str], before: Callable[[], None]) -> float:
    before()
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench-dicom: {' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return seconds


def _fresh(path: Path) -> Callable[[], None]:
    def clean() -> None:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.suffix:  # an output folder: dcm2niix wants it to exist (an empty one, for every tool)
            path.mkdir()
    return clean


def _pair(ours: list[str], ours_out: Path, theirs: list[str], theirs_out: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(runs):
        order = [("ours", ours, ours_out), ("theirs", theirs, theirs_out)]
        for side, cmd, out in (order if i % 2 == 0 else order[::-1]):
            times[side].append(_timed(cmd, _fresh(out)))
    return times


def _row(times: dict[str, list[float]], theirs_name: str, target: float | None) -> dict:
    ours, theirs = statistics.median(times["ours"]), statistics.median(times["theirs"])
    row = {"ours_s": round(ours, 4), f"{theirs_name}_s": round(theirs, 4), "ratio": round(ours / theirs, 3),
           "runs": len(times["ours"]), "ours_runs_s": [round(t, 4) for t in times["ours"]],
           f"{theirs_name}_runs_s": [round(t, 4) for t in times["theirs"]]}
    if target is not None:
        row.update(target_ratio=target, target_met=ours / theirs <= target)
    return row


def _check_equivalent(ours_nii: Path, ref_dir: Path, ours_dicom: Path, plastimatch_dicom: Path) -> None:
    """Like for like: the NIfTIs hold the same voxels in world space, both DICOM outputs one file per slice."""
    import nibabel as nib
    import numpy as np

    a = nib.as_closest_canonical(nib.load(ours_nii))
    b = nib.as_closest_canonical(nib.load(next(ref_dir.glob("*.nii*"))))
    if not (np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine,
                                                                                      atol=1e-3)):
        raise SystemExit("bench-dicom: our NIfTI and dcm2niix's differ; not comparing times")
    n_ours = len(list((ours_dicom / "ct").glob("*.dcm")))
    n_theirs = len([p for p in plastimatch_dicom.rglob("*.dcm")])
    if n_ours != n_theirs or n_ours != a.shape[2]:
        raise SystemExit(f"bench-dicom: {n_ours} vs {n_theirs} DICOM files; not comparing times")


def _in_process(series: Path, nii: Path, work: Path, runs: int) -> dict[str, float]:
    """Our conversion work alone, in this (warm) process."""
    from liverseg.commands.dicom import from_nifti, to_nifti

    to, frm = [], []
    for i in range(runs):
        out = work / f"inproc_{i}.nii"
        started = time.perf_counter()
        to_nifti(series, out)
        to.append(time.perf_counter() - started)
        out.unlink()
        started = time.perf_counter()
        from_nifti(nii, work / f"inproc_{i}")
        frm.append(time.perf_counter() - started)
        shutil.rmtree(work / f"inproc_{i}")
    return {"to_nifti": round(statistics.median(to), 4), "from_nifti": round(statistics.median(frm), 4)}


def _hu_inputs(series: Path, work: Path) -> tuple[Path, Path]:
    """The NIfTI → DICOM inputs: the series in HU as int16 without scaling, .nii and .nii.gz."""
    from liverseg.imaging import dicom_read, dicom_volume, nifti

    volume = dicom_volume.series_to_volume(dicom_read.series_files(series))[0]
    return nifti.save_fast(work / "input.nii", volume), nifti.save_fast(work / "input.nii.gz", volume)


def _startup(runs: int) -> dict[str, float]:
    """Median start-up of a bare Python, of Python importing what ``liverseg dicom to-nifti``/``from-nifti``
    import before converting (the command modules and, for from-nifti, the code version), and of numpy alone."""
    to = "import liverseg.cli, liverseg.commands.dicom, liverseg.imaging.dicom_read"
    frm = f"{to}, liverseg.stages.convert, liverseg.imaging.dicom_write; liverseg.__version__"
    cases = {"python_bare_s": "pass", "to_nifti_imports_s": to, "from_nifti_imports_s": frm,
             "numpy_import_s": "import numpy"}
    return {name: round(statistics.median(_timed([sys.executable, "-c", code], lambda: None) for _ in range(runs)),
                        4) for name, code in cases.items()}


def run(series: Path, out_json: Path, runs: int, secondary_runs: int) -> dict:
    for tool in ("dcm2niix", "plastimatch"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench-dicom: {tool} is missing (make tools installs it)")
    files = sorted(p for p in series.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"bench-dicom: no files in {series}")
    import liverseg

    compileall.compile_dir(Path(liverseg.__file__).resolve().parent, quiet=1)
    py = [sys.executable, "-m", "liverseg", "dicom"]
    with tempfile.TemporaryDirectory(prefix="liverseg-bench-") as tmp:
        w = Path(tmp)
        nii, nii_gz = _hu_inputs(series, w)
        # dcm2niix-style input (the slices' values, scl_inter -1000) for the secondary from-nifti row.
        _timed([*py, "to-nifti", str(series), str(w / "scaled.nii")], lambda: None)
        cmds = {
            "ours_to": [*py, "to-nifti", str(series), str(w / "ours.nii")],
            "dcm2niix": ["dcm2niix", "-z", "n", "-b", "n", "-o", str(w / "d2n"), "-f", "ref", str(series)],
            "ours_from": [*py, "from-nifti", str(nii), str(w / "ours_dicom")],
            "plastimatch": ["plastimatch", "convert", "--input", str(nii), "--output-dicom", str(w / "pm")],
        }
        # Untimed warm-up of every command (page cache), then the equivalence check.
        for name, out in (("ours_to", w / "ours.nii"), ("dcm2niix", w / "d2n"), ("ours_from", w / "ours_dicom"),
                          ("plastimatch", w / "pm")):
            _timed(cmds[name], _fresh(out))
        _check_equivalent(w / "ours.nii", w / "d2n", w / "ours_dicom", w / "pm")

        to = _pair(cmds["ours_to"], w / "ours.nii", cmds["dcm2niix"], w / "d2n", runs)
        frm = _pair(cmds["ours_from"], w / "ours_dicom", cmds["plastimatch"], w / "pm", runs)
        to_gz = _pair([*py, "to-nifti", str(series), str(w / "ours.nii.gz")], w / "ours.nii.gz",
                      ["dcm2niix", "-z", "i", "-1", "-b", "n", "-o", str(w / "d2nz"), "-f", "ref", str(series)],
                      w / "d2nz", secondary_runs)
        frm_gz = _pair([*py, "from-nifti", str(nii_gz), str(w / "ours_dicom_gz")], w / "ours_dicom_gz",
                       ["plastimatch", "convert", "--input", str(nii_gz), "--output-dicom", str(w / "pmz")],
                       w / "pmz", secondary_runs)
        frm_scaled = _pair([*py, "from-nifti", str(w / "scaled.nii"), str(w / "ours_dicom_s")], w / "ours_dicom_s",
                           ["plastimatch", "convert", "--input", str(w / "scaled.nii"), "--output-dicom",
                            str(w / "pms")], w / "pms", secondary_runs)
        startup = _startup(runs)
        in_process = _in_process(series, nii, w, runs)

    result = {
        "to_nifti": {**_row(to, "dcm2niix", TARGETS["to_nifti"]), "ours_inprocess_s": in_process["to_nifti"]},
        "from_nifti": {**_row(frm, "plastimatch", TARGETS["from_nifti"]),
                       "ours_inprocess_s": in_process["from_nifti"]},
        "secondary": {"to_nifti_gz": _row(to_gz, "dcm2niix", None),
                      "from_nifti_gz_input": _row(frm_gz, "plastimatch", None),
                      "from_nifti_scaled_input": _row(frm_scaled, "plastimatch", None)},
        "startup": startup,
        "method": {
            "timing": "whole processes on both sides (start-up included), wall time, median of interleaved runs; "
                      "our package byte-compiled first (as pip install does)",
            "to_nifti": "uncompressed .nii on both sides; dcm2niix -z n -b n (no JSON sidecar)",
            "from_nifti": "the same uncompressed .nii input (int16 HU, no scaling); one uncompressed DICOM file per "
                          "slice out on both sides; plastimatch convert --output-dicom",
            "secondary": "gzip level 1 single-threaded zlib on both sides (dcm2niix -z i -1), .nii.gz input for "
                         "from_nifti; from_nifti_scaled_input: the dcm2niix-style .nii our to-nifti writes "
                         "(int16, scl_inter -1000); ours_inprocess_s: our conversion in a warm process, no "
                         "interpreter start-up; startup: bare Python, Python + the modules each command imports "
                         "before converting (neither imports numpy), and numpy's import for comparison",
            "equivalence": "checked before timing: same voxels in world space as dcm2niix, same file count as "
                           "plastimatch",
            "command": "make bench-dicom",
        },
        "series": {"path": str(series), "files": len(files)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "dcm2niix": _version(["dcm2niix", "-v"]), "plastimatch": _version(["plastimatch", "--version"])},
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _version(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[-1][:80] if text else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/bench/dicom.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, default=DEFAULT_SERIES, help=f"DICOM series (default {DEFAULT_SERIES})")
    parser.add_argument("--out", type=Path, default=Path("bench-results/dicom.json"))
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side (default 7)")
    parser.add_argument("--secondary-runs", type=int, default=3,
                        help="timed runs per side for the secondary rows (default 3)")
    args = parser.parse_args(argv)
    if not args.series.is_dir():
        print(f"bench-dicom: {args.series} is not a folder (pass --series DIR)", file=sys.stderr)
        return 2
    r = run(args.series, args.out, args.runs, args.secondary_runs)
    print(f"DICOM benchmark on {r['series']['files']} slices ({r['series']['path']}), median of {args.runs} "
          "interleaved runs, whole processes:")
    for name, theirs in (("to_nifti", "dcm2niix"), ("from_nifti", "plastimatch")):
        row = r[name]
        verdict = "met" if row["target_met"] else "NOT met"
        print(f"  {name:<11} ours {row['ours_s']:.3f} s  {theirs} {row[f'{theirs}_s']:.3f} s  "
              f"ratio {row['ratio']:.2f} (target <= {row['target_ratio']}: {verdict}; ours in-process "
              f"{row['ours_inprocess_s']:.3f} s)")
    for name, row in r["secondary"].items():
        theirs = "dcm2niix" if "dcm2niix_s" in row else "plastimatch"
        print(f"  {name:<11} ours {row['ours_s']:.3f} s  {theirs} {row[f'{theirs}_s']:.3f} s  ratio {row['ratio']:.2f}"
              f"  (median of {row['runs']})")
    print("  start-up: " + ", ".join(f"{k.removesuffix('_s')} {v:.3f} s" for k, v in r["startup"].items()))
    print(f"  to_nifti: uncompressed .nii both sides; from_nifti: same .nii input, one file per slice both sides. "
          f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
