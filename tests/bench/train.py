"""make bench-train: the training input pipeline against what the train step consumes, our step against a bare MONAI
loop, 2 gloo processes against 1, and the loader workers a GPU node needs. Writes bench-results/train.json.

Every ratio is against a reference measured in the same command, interleaved where it can be (the machine may be
shared): medians over rounds that alternate the two sides.

- ``loader``: patches per second the input pipeline delivers (steady state, after its first batch) with 0, 1 and 2
  workers, for the ``default`` profile (the ``make run`` phantoms at 3 mm) and the ``gpu`` profile (volumes of a real
  MSD case's size at 1.5x1.5x2 mm: 256x256x250); ``consumed_per_s``: the patches per second our train step takes
  here on the same profile's batch; ``loader_capacity_ratio`` = best delivered / consumed.
- ``overhead_vs_bare``: our ``Trainer.step`` / a plain loop (the same UNet, loss, optimiser, memory format,
  precision and batch, written out below), and ``loop_vs_bare``: our step fed by the loader (0 workers) / the same
  plain loop; one step of each in turn, medians of the per-turn ratios.
- ``ddp``: 2 gloo processes (1 thread each, half the batch each) against 1 process (2 threads, the whole batch) on
  the same fixed batches: seconds per step and the largest difference of the loss over the same steps (batch norm
  sees half the batch per process: not zero).
- ``gpu_projection``: loader workers a GPU node needs for the ``gpu`` profile at the step rates published for
  nnU-Net's liver model (MIC-DKFZ/nnUNet documentation/expected_epoch_times.md), from the per-worker rate here.

    python tests/bench/train.py [--out bench-results/train.json] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from liverseg.config import TrainConfig, load_profile
from liverseg.data.synth import dataset_case
from liverseg.imaging.geometry import Volume
from liverseg.ml import distributed
from liverseg.ml.distributed import Ranks, launch
from liverseg.ml.loader import batches, draw_order, training_dataset
from liverseg.ml.model import bf16_native, build_unet, memory_format
from liverseg.ml.training import Trainer
from liverseg.ml.transforms import preprocess_pair

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
GOALS = {"loader_capacity_ratio": 1.5, "overhead_vs_bare": 1.05}
# nnU-Net v1 reference epoch times (250 iterations, batch 2, patch 128^3, mixed precision, PyTorch 1.7.1 + cuDNN
# 8.1.0.77), Task003_Liver 3d_fullres, from MIC-DKFZ/nnUNet documentation/expected_epoch_times.md. The same voxel
# rate is assumed for our smaller U-Net (16-256 channels against nnU-Net's 32-320): a floor, not a measurement.
NNUNET_LIVER_EPOCH_S = {"A100 40GB (DGX A100)": 44.48, "V100 32GB SXM3 (DGX-2)": 75.53, "RTX 2080 Ti": 106.76}
NNUNET_VOXELS_PER_EPOCH = 250 * 2 * 128**3


def phantoms(cases: int, profile_name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``cases`` ``make run`` phantoms (seed 0), preprocessed as the profile does."""
    cfg = load_profile(profile_name, environ={}).preprocess
    out = []
    for i in range(cases):
        p = dataset_case(0, i)
        image, label = preprocess_pair(Volume(p.image, p.affine), Volume(p.label, p.affine), cfg)
        out.append((torch.from_numpy(image), torch.from_numpy(label)))
    return out


def real_sized(cases: int, shape=(256, 256, 250)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Volumes of a real case's size after the gpu profile's preprocessing, with a liver-sized label (~6%)."""
    out = []
    for i in range(cases):
        g = torch.Generator().manual_seed(i)
        image = torch.rand((1, *shape), generator=g)
        label = torch.zeros((1, *shape), dtype=torch.uint8)
        label[:, 40:150, 60:180, 60 + i * 5:160 + i * 5] = 1
        out.append((image, label))
    return out


def delivered(data, cfg: TrainConfig, workers: int, batches_n: int) -> dict:
    """Patches per second from the loader alone, after its first batch (worker start-up reported apart)."""
    cfg = cfg.model_copy(update={"loader_workers": workers})
    dataset = training_dataset([i for i, _ in data], [lab for _, lab in data], cfg)
    order = draw_order(len(data), cfg.batch_size, batches_n + 1, seed=1)
    started = time.perf_counter()
    stream = iter(batches(dataset, order, cfg, 1, CPU))
    x, _ = next(stream)
    first = time.perf_counter() - started
    started, patches = time.perf_counter(), 0
    for x, _ in stream:
        patches += x.shape[0]
    return {"patches_per_s": round(patches / (time.perf_counter() - started), 2), "first_batch_s": round(first, 2)}


def batch_of(cfg: TrainConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = cfg.batch_size * cfg.samples_per_volume
    x = torch.rand((n, 1, *cfg.patch), generator=g)
    return x, (x > 0.7).float()


class Bare:
    """The plain MONAI loop: the same UNet, loss, optimiser, memory format, precision and batch, nothing else."""

    def __init__(self, cfg: TrainConfig, bf16: bool):
        torch.manual_seed(0)
        self.model = build_unet().to(memory_format=memory_format(CPU))
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.bf16 = bf16

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x.contiguous(memory_format=torch.channels_last_3d))
        loss = self.loss(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()


class Ours:
    def __init__(self, profile, ranks: Ranks | None = None):
        torch.manual_seed(0)
        self.trainer = Trainer(profile.train, profile.infer, CPU, ranks)
        self.net = build_unet().to(memory_format=self.trainer.fmt)
        self.model = self.trainer.replica(self.net)
        self.optimizer = self.trainer._optimizer(self.net)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return self.trainer.step(self.model, self.optimizer, x, y)


def seconds(step, x, y, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        step(x, y)
        out.append(time.perf_counter() - started)
    return out


def consumed(profile, steps: int) -> dict:
    ours = Ours(profile)
    x, y = batch_of(profile.train)
    ours.step(x, y)  # warm-up
    per_step = statistics.median(seconds(ours.step, x, y, steps))
    return {"step_s": round(per_step, 3), "patches_per_step": x.shape[0],
            "consumed_per_s": round(x.shape[0] / per_step, 2)}


def overhead(profile, data, triplets: int) -> dict:
    """Our step, the bare step and our step fed by the loader (no workers), one step each in turn, the order
    rotating: a slow spell of the shared machine hits all three; medians of the per-triplet ratios."""
    ours, fed = Ours(profile), Ours(profile)
    bare = Bare(profile.train, bf16=ours.trainer.amp)
    x, y = batch_of(profile.train)
    cfg = profile.train
    dataset = training_dataset([i for i, _ in data], [lab for _, lab in data], cfg)
    stream = iter(batches(dataset, draw_order(len(data), 1, triplets + 2, 3), cfg, 3, CPU))
    steps = {"ours": lambda: ours.step(x, y), "bare": lambda: bare.step(x, y), "loop": lambda: fed.step(*next(stream))}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(triplets):
        for name in names[i % 3:] + names[:i % 3]:
            started = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - started)
    ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["bare"], strict=True))
             for k in ("ours", "loop")}
    return {"ours_step_s": round(statistics.median(times["ours"]), 3),
            "bare_step_s": round(statistics.median(times["bare"]), 3),
            "loop_step_s": round(statistics.median(times["loop"]), 3), "overhead_vs_bare": round(ratio["ours"], 3),
            "loop_vs_bare": round(ratio["loop"], 3), "steps_each": triplets}


def ddp_steps(ranks: Ranks, profile, global_batches: list) -> dict:
    """Our step under DDP on this rank's half of each global batch; rank 0 returns every rank's mean losses."""
    ours = Ours(profile, ranks)
    ours.trainer._threads()
    losses, times = [], []
    for x, y in global_batches:
        half = slice(ranks.rank * x.shape[0] // 2, (ranks.rank + 1) * x.shape[0] // 2)
        started = time.perf_counter()
        losses.append(ours.step(x[half], y[half]))
        times.append(time.perf_counter() - started)
    per_rank = distributed.gather(losses)
    return {"losses": [sum(v) / len(v) for v in zip(*per_rank, strict=True)], "step_s": times}


def ddp(profile, steps: int, tmp: Path) -> dict:
    """The same global batches through 1 process (all threads) before and after 2 gloo processes (1 thread each)."""
    cfg = profile.train.model_copy(update={"batch_size": 2})
    global_batches = [batch_of(cfg, seed) for seed in range(steps + 1)]
    threads = torch.get_num_threads()

    def one_process() -> tuple[list[float], list[float]]:
        single, losses, times = Ours(profile.model_copy(update={"train": cfg})), [], []
        for x, y in global_batches:
            t = time.perf_counter()
            losses.append(single.step(x, y))
            times.append(time.perf_counter() - t)
        return losses, times[1:]  # the first step warms up

    losses_one, before = one_process()
    two = launch(2, "cpu", tmp / "ddp", lambda r: ddp_steps(r, profile, global_batches), ddp_steps,
                 (profile, global_batches))
    torch.set_num_threads(threads)  # rank 0 ran here with its share of the cores
    _, after = one_process()
    one_s, two_s = statistics.median(before + after), statistics.median(two["step_s"][1:])
    diffs = [abs(a - b) for a, b in zip(losses_one, two["losses"], strict=True)]
    return {"global_batch_patches": global_batches[0][0].shape[0], "steps": len(global_batches),
            "one_process_step_s": round(one_s, 3), "two_process_step_s": round(two_s, 3),
            "two_vs_one": round(two_s / one_s, 3), "max_loss_diff": round(max(diffs), 5),
            "loss_one": [round(v, 5) for v in losses_one], "loss_two": [round(v, 5) for v in two["losses"]]}


def projection(per_worker: float, patch: tuple[int, int, int]) -> dict:
    """Workers for the gpu profile at nnU-Net's published liver step rates, with the 1.5x margin of the goal."""
    voxels = math.prod(patch)
    rows = {}
    for card, epoch_s in NNUNET_LIVER_EPOCH_S.items():
        patches_per_s = NNUNET_VOXELS_PER_EPOCH / epoch_s / voxels
        rows[card] = {"nnunet_epoch_s": epoch_s, "patches_per_s_needed": round(patches_per_s, 1),
                      "workers_needed": math.ceil(patches_per_s / per_worker),
                      "workers_with_1.5x_margin": math.ceil(1.5 * patches_per_s / per_worker)}
    return {"per_worker_patches_per_s_here": per_worker, "patch": list(patch), "cards": rows,
            "source": "MIC-DKFZ/nnUNet documentation/expected_epoch_times.md (Task003_Liver 3d_fullres, "
                      "250 iterations x 2 patches of 128^3, mixed precision)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "train.json")
    parser.add_argument("--rounds", type=int, default=3, help="loader measurements per setting")
    parser.add_argument("--triplets", type=int, default=20, help="steps of each kind for the overhead ratio")
    args = parser.parse_args()
    started = time.monotonic()
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                    "cpus": len(os.sched_getaffinity(0)), "cpu_bf16": bf16_native(CPU),
                    "load_average_before": os.getloadavg(), "goals": GOALS}
    profiles = {name: load_profile(name, environ={}) for name in ("default", "gpu")}
    data = {"default": phantoms(4, "default"), "gpu": real_sized(4)}
    print("loader ...", flush=True)
    result["loader"] = {}
    for name, profile in profiles.items():
        n = 16 if name == "default" else 6
        runs = {w: [delivered(data[name], profile.train, w, n) for _ in range(args.rounds)] for w in (0, 1, 2)}
        rates = {f"workers_{w}": statistics.median(r["patches_per_s"] for r in rs) for w, rs in runs.items()}
        first = {f"workers_{w}": statistics.median(r["first_batch_s"] for r in rs) for w, rs in runs.items()}
        use = consumed(profile, 3 if name == "default" else 2)
        result["loader"][name] = {"patch": list(profile.train.patch), "delivered_per_s": rates,
                                  "first_batch_s": first, **use,
                                  "loader_capacity_ratio": round(max(rates.values()) / use["consumed_per_s"], 2)}
        print(name, result["loader"][name], flush=True)
    print("overhead ...", flush=True)
    result["overhead"] = overhead(profiles["default"], data["default"], args.triplets)
    print(result["overhead"], flush=True)
    print("ddp ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["ddp"] = ddp(profiles["default"], 8, Path(tmp))
    print({k: v for k, v in result["ddp"].items() if not k.startswith("loss_")}, flush=True)
    per_worker = result["loader"]["gpu"]["delivered_per_s"]["workers_1"]
    result["gpu_projection"] = projection(per_worker, tuple(profiles["gpu"].train.patch))
    result["load_average_after"] = os.getloadavg()
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {args.out}")


def table(r: dict) -> str:
    rows = ["", f"bench-train {r['date']}  torch {r['torch']}  {r['cpus']} CPUs  "
            f"{'bf16 autocast' if r.get('cpu_bf16') else 'fp32'}  load {r['load_average_before']}",
            "", "  profile  patch         delivered patches/s (0 / 1 / 2 workers)   consumed/s   capacity  goal"]
    for name, L in r["loader"].items():
        d = L["delivered_per_s"]
        rows.append(f"  {name:<8} {'x'.join(map(str, L['patch'])):<13} {d['workers_0']:>8} / {d['workers_1']:>6} / "
                    f"{d['workers_2']:>6}              {L['consumed_per_s']:>8}   {L['loader_capacity_ratio']:>7}x  "
                    f">= {GOALS['loader_capacity_ratio']}")
    o = r["overhead"]
    rows += ["", f"  step: ours {o['ours_step_s']} s, bare MONAI loop {o['bare_step_s']} s -> overhead_vs_bare "
                 f"{o['overhead_vs_bare']} (goal <= {GOALS['overhead_vs_bare']}); with the loader (0 workers) "
                 f"{o['loop_step_s']} s -> {o['loop_vs_bare']}"]
    d = r["ddp"]
    rows += [f"  ddp: {d['global_batch_patches']} patches a step: 1 process {d['one_process_step_s']} s, 2 gloo "
             f"processes {d['two_process_step_s']} s ({d['two_vs_one']}x); max loss difference over {d['steps']} "
             f"steps {d['max_loss_diff']}", "", "  gpu_projection (gpu profile, per worker here "
             f"{r['gpu_projection']['per_worker_patches_per_s_here']} patches/s):"]
    for card, c in r["gpu_projection"]["cards"].items():
        rows.append(f"    {card:<26} {c['patches_per_s_needed']:>6} patches/s -> {c['workers_needed']} workers "
                    f"({c['workers_with_1.5x_margin']} with 1.5x margin)")
    rows.append(f"    source: {r['gpu_projection']['source']}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
