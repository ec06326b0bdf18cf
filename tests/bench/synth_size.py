"""make bench-synth: time and peak memory of the phantom generators, from the pipeline's grids to the largest MSD
liver grid (512×512×987), each case in a fresh process so its peak RSS is its own, writing included.

Rows: case 0 of seed 0 of a ``make run`` data set (anatomy, then legacy), anatomy phantoms of 200 and 987 slices
as ``liverseg synth --msd-slices`` writes them (``data.synth.write_msd_cases``), and the legacy generator on a
512×512×300 grid for comparison (it holds whole-grid float32 arrays: its peak grows with the grid, about 12 GB at
987 slices, so it is not run there). Writes bench-results/synth.json.

    python tests/bench/synth_size.py [--out bench-results/synth.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("anatomy-pipeline", "legacy-pipeline", "anatomy-512x512x200", "anatomy-512x512x987", "legacy-512x512x300")


def one(row: str) -> dict:
    """Runs in the child: write the row's case into a temporary MSD folder and measure it."""
    import nibabel as nib
    import numpy as np

    from liverseg.data.synth import GridSpec, make_phantom, write_dataset, write_msd_cases

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generator, size = row.split("-", 1)
        if size == "pipeline":
            write_dataset(out, 1, 0, generator=generator)
        elif generator == "anatomy":
            write_msd_cases(out, [int(size.split("x")[2])], seed=0)
        else:
            grid = GridSpec((512, 512, 300), (0.75, 0.75, 1.33), (True, True, False))
            p = make_phantom(np.random.default_rng(0), grid)
            nib.save(nib.Nifti1Image(p.image, p.affine), out / "image.nii.gz")
            nib.save(nib.Nifti1Image(p.label, p.affine), out / "label.nii.gz")
        shape = next(nib.load(f).shape for f in sorted(out.rglob("*.nii.gz")))
    return {"grid": list(shape), "voxels_m": round(float(np.prod(shape)) / 1e6, 1),
            "seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "synth.json")
    parser.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.child)))
        return
    results = {}
    print(f"{'case':<22} {'grid':>14} {'Mvox':>6} {'seconds':>8} {'peak RSS MB':>11} {'bytes/voxel':>11}")
    for row in ROWS:
        done = subprocess.run([sys.executable, __file__, "--child", row], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results[row] = r
        print(f"{row:<22} {'x'.join(map(str, r['grid'])):>14} {r['voxels_m']:6.1f} {r['seconds']:8.1f} "
              f"{r['peak_rss_mb']:11d} {r['peak_rss_mb'] / r['voxels_m']:11.1f}")
    print("bytes/voxel: peak RSS over voxels (the output alone is 3: int16 image, uint8 label)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
