"""make bench-quality: both profiles on one fixed synthetic benchmark, the same CPU training budget each.

36 seeded phantoms (24 train, 4 val, 8 held out; the split is the plan's seeded hash, the same for both modes),
the whole pipeline per mode through the local runner against the embedded store, training capped at
``--budget-s`` wall seconds. Prints mean/min held-out Dice, mean HD95, the seed's own figure and wall times, and
writes bench-results/quality.json. Then segments the real 134-slice CT in ../shared/data with the better model
and saves the overlays (no label exists: a visual check) to bench-results/real_ct/.

    python tests/bench/quality.py [--budget-s 900] [--cases 36]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from liverseg.data.msd import ingest
from liverseg.data.synth import write_dataset
from liverseg.embedded import EmbeddedStore, find_free_s3_port
from liverseg.runner import RunSpec, run_pipeline
from liverseg.settings import home
from liverseg.store import ObjectStore

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "tcia_pancreas_ct_cb001_dicom" / "dicom"
SEED = 2026
# Per-mode epochs: enough to fill the budget; the budget stops training after the epoch that passes it.
EPOCHS = {"default": 40, "seed": 100}


def run_mode(mode: str, settings, dataset: str, cases: int, budget_s: float, reports: Path) -> dict:
    overrides = [f"split.test_fraction={8 / cases}", f"split.val_fraction={4 / cases}",
                 f"train.time_budget_s={budget_s}", f"train.epochs={EPOCHS[mode]}"]
    run_id = f"bench-{mode}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    started = time.monotonic()
    summary = run_pipeline(RunSpec(run_id, dataset, mode, overrides), settings, reports, echo=print)
    return {
        "mean_dice": summary["mean_dice"], "min_dice": summary["min_dice"], "hd95": summary["mean_hd95_mm"],
        "seed_style_dice": summary["mean_seed_style_dice"], "wall_s": round(time.monotonic() - started, 1),
        "train_s": summary["train_seconds"], "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
        "held_out_cases": summary["scored_cases"], "run_id": run_id, "model_file": summary["model_file"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=900.0, help="training wall budget per mode (s)")
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = home() / "data" / f"bench-quality-seed{SEED}-n{args.cases}"
    if not (data / "dataset.json").exists():
        print(f"generating {args.cases} phantoms (seed {SEED}) in {data}")
        write_dataset(data, args.cases, SEED)
    server = EmbeddedStore(root=home() / "bench-store", s3_port=find_free_s3_port())
    settings = server.up()
    try:
        ingest(ObjectStore(settings), data, data.name)
        results = {}
        for mode in ("default", "seed"):
            print(f"\n== {mode}: training budget {args.budget_s:.0f} s")
            results[mode] = run_mode(mode, settings, data.name, args.cases, args.budget_s, args.out / "runs")
    finally:
        server.down()
    results["budget_s"] = args.budget_s
    results["machine"] = "2-core CPU (no GPU)"
    (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    print("\nmode      mean Dice  min Dice  HD95 mm  seed-style*  epochs  train s  wall s")
    for mode in ("default", "seed"):
        r = results[mode]
        print(f"{mode:<9} {r['mean_dice']:9.4f} {r['min_dice']:9.4f} {r['hd95']:8.2f} {r['seed_style_dice']:12.4f} "
              f"{r['epochs_run']:7d} {r['train_s']:8.0f} {r['wall_s']:7.0f}")
    print("* 1 - soft Dice loss with background: the published method's figure, not a Dice of the liver")
    print(f"written {args.out / 'quality.json'}")
    real_ct_overlays(results, args.out / "real_ct")


def real_ct_overlays(results: dict, out: Path) -> None:
    """The better model on the real 134-slice CT (no label: overlays for a person to look at)."""
    if not REAL_CT.exists():
        print(f"real CT not found at {REAL_CT}: overlays skipped")
        return
    from liverseg.commands.segment import segment_study

    best = max(("default", "seed"), key=lambda m: results[m]["mean_dice"] or 0)
    model = Path(results[best]["model_file"])
    info = segment_study(REAL_CT, out, model.read_bytes(), f"{best}:{results[best]['run_id']}", None)
    print(f"real CT segmented with the {best} model: liver {info['liver_ml']} ml; overlays in {out}")


if __name__ == "__main__":
    main()
