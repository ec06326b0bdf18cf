"""``make bench-segment``: ``liverseg segment`` on a real DICOM series against a plain MONAI pipeline doing less.

Both as whole processes, interleaved (ours, theirs, theirs, ours, …), the median of ``--runs`` each: wall time and
exact peak resident memory (``os.wait4``). Theirs is ``tests/bench/monai_segment.py`` (load, orientation,
spacing, window, crop, sliding window with the same network, window, overlap and blend, ``Invertd``, save NIfTI);
ours also keeps the largest component and writes the DICOM SEG, three overlays and a report. Goals: time ratio
≤ 1.0, memory ratio ≤ 0.5. Then one in-process run of the functions ``stages.infer.segment_study`` calls, each
timed, to say where the time goes. Writes bench-results/segment.json.

    python tests/bench/segment.py [--series DIR] [--model MODEL.pt] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processes import measured

ROOT = Path(__file__).resolve().parents[2]
SERIES = ROOT.parent / "shared" / "data" / "tcia_pancreas_ct_cb001_dicom" / "dicom"
MODEL = ROOT / ".liverseg" / "reports" / "latest" / "model.pt"


def phases(series: Path, model_file: Path, out: Path) -> dict[str, float]:
    """Seconds of each step of ``segment_study`` (the same functions, in its order) on one in-process run."""
    import hashlib

    import torch

    from liverseg.imaging import nifti, seg
    from liverseg.imaging.geometry import Volume
    from liverseg.ml import inference, transforms
    from liverseg.ml.modelfile import LoadedModel
    from liverseg.provenance import code_version
    from liverseg.report import overlay_pngs
    from liverseg.stages.infer import Study

    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - started, 3)
        return value

    data = model_file.read_bytes()
    model = timed("load model", lambda: LoadedModel.from_bytes(data, torch.device("cpu")))
    study = timed("read DICOM series", lambda: Study.read(series))
    profile = model.profile
    trainer = inference.Trainer(profile.train, profile.infer, model.device)
    network = timed("orient + spacing + window + crop", lambda: transforms.to_network(study.image, profile.preprocess))
    logits = timed("network (sliding window)", lambda: trainer.predict_logits(model.network, network.image.as_tensor()))
    probability = torch.softmax(logits[0], dim=0)[1:2]
    mask = timed("back to the study's grid + threshold",
                 lambda: transforms.to_original_grid(probability, network, study.image, profile.infer.threshold))
    mask = timed("largest component", lambda: inference.largest_component(mask))
    timed("mask.nii.gz (gzip)", lambda: nifti.save_fast(out / "mask.nii.gz", Volume(mask, study.image.affine)))
    namespace = f"segment|{study.slices[0].series_uid}|{hashlib.sha256(data).hexdigest()}|{code_version()}"
    timed("DICOM SEG", lambda: seg.label_to_seg(mask, [h.metadata() for h in study.slices], namespace,
                                                 algorithm="liverseg").save_as(out / "seg.dcm",
                                                                               enforce_file_format=True))
    timed("overlays (3 PNG)", lambda: overlay_pngs(study.image, mask))
    return seconds


def dice(a: Path, b: Path) -> float:
    import nibabel as nib
    import numpy as np

    # The two readers may store the same grid in other axis orders and signs: compare in RAS+, same grid required.
    x, y = (nib.as_closest_canonical(nib.load(p)) for p in (a, b))
    if x.shape != y.shape or not np.allclose(x.affine, y.affine, atol=1e-3):
        raise SystemExit(f"the two masks are not on the same grid: {x.shape} {x.affine.tolist()} vs {y.shape} "
                         f"{y.affine.tolist()}")
    x, y = (np.asarray(img.dataobj) > 0 for img in (x, y))
    return float(2 * np.logical_and(x, y).sum() / max(x.sum() + y.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=Path, default=SERIES)
    parser.add_argument("--model", type=Path, default=MODEL, help="a model file (default: the last make run's)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "segment.json")
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"bench-segment: no model file {args.model}: run `make run` first, or give --model")
    runs: dict[str, list[dict]] = {"ours": [], "monai": []}
    with tempfile.TemporaryDirectory(prefix="liverseg-bench-segment-") as tmp:
        work = Path(tmp)
        commands = {
            "ours": lambda n: [sys.executable, "-m", "liverseg", "segment", str(args.series), "--out",
                               str(work / f"ours-{n}"), "--model", str(args.model)],
            "monai": lambda n: [sys.executable, str(Path(__file__).parent / "monai_segment.py"), str(args.series),
                                str(args.model), str(work / f"monai-{n}")],
        }
        for n in range(args.runs):
            for side in (("ours", "monai") if n % 2 == 0 else ("monai", "ours")):
                row = measured(commands[side](n))
                row.pop("stdout")
                runs[side].append(row)
                print(f"  run {n + 1} {side:<6} {row['seconds']:7.1f} s  peak {row['peak_bytes'] / 2**30:.2f} GiB")
        agreement = dice(work / "ours-0" / "mask.nii.gz", work / "monai-0" / f"{args.series.name}_seg.nii.gz")
        (work / "phases").mkdir()
        steps = phases(args.series, args.model, work / "phases")
    median = {side: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "peak_bytes")}
              for side, rows in runs.items()}
    result = {"measured_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "series": str(args.series),
              "model": str(args.model), "runs": runs, "median": median,
              "time_ratio": round(median["ours"]["seconds"] / median["monai"]["seconds"], 3),
              "memory_ratio": round(median["ours"]["peak_bytes"] / median["monai"]["peak_bytes"], 3),
              "mask_dice_ours_vs_monai": round(agreement, 4), "phases_s": steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n  median: ours {median['ours']['seconds']:.1f} s {median['ours']['peak_bytes'] / 2**30:.2f} GiB, "
          f"monai {median['monai']['seconds']:.1f} s {median['monai']['peak_bytes'] / 2**30:.2f} GiB")
    print(f"  time ratio {result['time_ratio']} (goal <= 1.0), memory ratio {result['memory_ratio']} (goal <= 0.5); "
          f"masks agree at Dice {result['mask_dice_ours_vs_monai']}")
    print("\n  where ours spends its time (one in-process run):")
    total = sum(steps.values())
    for name, s in steps.items():
        print(f"    {name:<38} {s:7.2f} s  {s / total:5.1%}")
    print(f"  wrote {args.out}")


if __name__ == "__main__":
    main()
