"""make bench-quality: phantom generators (and profiles) compared under the same CPU training budget, on phantoms
and on the real CT beside the repository.

Each mode is a generator and a profile: 36 seeded phantoms of that generator (24 train, 4 val, 8 held out; the
split is the plan's seeded hash), the whole pipeline through the local runner against the embedded store,
training capped at ``--budget-s`` wall seconds. For each mode: mean/min held-out phantom Dice (on its own
generator's phantoms), HD95, the seed's own figure, wall times, and what its model does on real CT
(``liverseg.real_ct``: Dice on the 3 labelled dcmqi slices, the liver volume and two plausibility figures on
the 134-slice TCIA series, overlays to look at in bench-results/real_ct/<mode>/). Writes
bench-results/quality.json.

    python tests/bench/quality.py [--budget-s 900] [--cases 36] [--modes legacy anatomy ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from liverseg.data.anatomy import VERSION
from liverseg.data.msd import ingest
from liverseg.data.synth import write_dataset
from liverseg.embedded import EmbeddedStore, find_free_s3_port
from liverseg.real_ct import check_model
from liverseg.runner import RunSpec, run_pipeline
from liverseg.settings import home
from liverseg.store import ObjectStore

ROOT = Path(__file__).resolve().parents[2]
SEED = 2026
# Per-profile epochs: the budget stops training after the epoch that passes it (and the poly schedule with it: a
# short budget ends at a higher learning rate). default: its profile's own 250, which a fast CPU finishes inside
# 900 s (24 cases in bf16 on a Xeon with AMX: ~640 s); the modes then compare at the same steps.
EPOCHS = {"default": 250, "seed": 100}
# name: (generator, profile, share of randomised-intensity cases, extra overrides)
MODES: dict[str, tuple[str, str, float, tuple[str, ...]]] = {
    "legacy": ("legacy", "default", 0.0, ()),
    "anatomy": ("anatomy", "default", 0.0, ()),
    "anatomy-random": ("anatomy", "default", 0.3, ()),
    "anatomy-whole": ("anatomy", "default", 0.0, ("train.thin_slab=0",)),
    "anatomy-liver-contrast": ("anatomy", "default", 0.0, ("train.liver_contrast=0.25",)),
    "anatomy-no-liver-contrast": ("anatomy", "default", 0.0, ("train.liver_contrast=0",)),
    "seed": ("legacy", "seed", 0.0, ()),
}
DEFAULT_MODES = ("legacy", "anatomy")


def dataset(generator: str, randomise: float, cases: int) -> Path:
    """The mode's phantoms, generated once and kept under the project's state folder."""
    version = VERSION if generator == "anatomy" else "legacy"
    data = home() / "data" / f"bench-quality-{version}-r{randomise:g}-seed{SEED}-n{cases}"
    if not (data / "dataset.json").exists():
        print(f"generating {cases} {generator} phantoms (seed {SEED}, randomise {randomise:g}) in {data}")
        started = time.monotonic()
        write_dataset(data, cases, SEED, generator=generator, randomise=randomise)
        print(f"  {time.monotonic() - started:.0f} s")
    return data


def run_mode(mode: str, settings, cases: int, budget_s: float, out: Path) -> dict:
    generator, profile, randomise, extra = MODES[mode]
    data = dataset(generator, randomise, cases)
    ingest(ObjectStore(settings), data, data.name)
    overrides = [f"split.test_fraction={8 / cases}", f"split.val_fraction={4 / cases}",
                 f"train.time_budget_s={budget_s}", f"train.epochs={EPOCHS[profile]}", *extra]
    run_id = f"bench-{mode}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    started = time.monotonic()
    summary = run_pipeline(RunSpec(run_id, data.name, profile, overrides), settings, out / "runs", echo=print)
    wall = round(time.monotonic() - started, 1)
    real = check_model(Path(summary["model_file"]).read_bytes(), out / "real_ct" / mode)
    print(f"  real CT: {real.line()}")
    return {
        "generator": generator, "profile": profile, "randomise": randomise, "overrides": list(extra),
        "mean_dice": summary["mean_dice"], "min_dice": summary["min_dice"], "hd95": summary["mean_hd95_mm"],
        "seed_style_dice": summary["mean_seed_style_dice"], "wall_s": wall,
        "train_s": summary["train_seconds"], "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
        "held_out_cases": summary["scored_cases"], "run_id": run_id, "model_file": summary["model_file"],
        "real_ct": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(real).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=900.0, help="training wall budget per mode (s)")
    parser.add_argument("--cases", type=int, default=36)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(DEFAULT_MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = EmbeddedStore(root=home() / "bench-store", s3_port=find_free_s3_port())
    settings = server.up()
    results: dict = {}
    try:
        for mode in args.modes:
            print(f"\n== {mode}: training budget {args.budget_s:.0f} s")
            results[mode] = run_mode(mode, settings, args.cases, args.budget_s, args.out)
    finally:
        server.down()
    results["budget_s"] = args.budget_s
    results["machine"] = "2-core CPU (no GPU)"
    (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'mode':<15} {'phantom Dice':>12} {'min':>7} {'HD95 mm':>8} {'epochs':>6} {'train s':>7} {'wall s':>6}"
          f"  {'dcmqi Dice':>10} {'TCIA ml':>8} {'far-left':>8} {'height mm':>9}")
    for mode in args.modes:
        r, real = results[mode], results[mode]["real_ct"]
        print(f"{mode:<15} {r['mean_dice']:12.4f} {r['min_dice']:7.4f} {r['hd95']:8.2f} {r['epochs_run']:6d} "
              f"{r['train_s']:7.0f} {r['wall_s']:6.0f}  {_fmt(real['dcmqi_dice'], '.4f'):>10} "
              f"{_fmt(real['tcia_liver_ml'], '.0f'):>8} {_fmt(real['tcia_left_fraction'], '.1%'):>8} "
              f"{_fmt(real['tcia_height_mm'], '.0f'):>9}")
    print("phantom Dice: each mode on its own generator's 8 held-out phantoms. dcmqi: 3 real unenhanced slices "
          "with a human label; TCIA: real 134-slice contrast CT, no label (adult liver ~1,200-2,000 ml; far-left: "
          "share of the mask beyond a quarter body-width left of the midline; height: the mask's z extent)")
    print(f"written {args.out / 'quality.json'}; overlays in {args.out / 'real_ct'}/<mode>/tcia_overlays.png")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
