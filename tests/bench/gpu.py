"""make bench-gpu: the ``gpu`` profile on a GPU machine, in one command. Writes bench-results/gpu.json.

1. ``step``: the training step alone (8 patches of 96^3 made on the device), fp32 and bf16 autocast (AMP);
2. ``pipeline``: the step fed by the input pipeline with loader workers (cached volumes of a real case's size),
   how long the step waited for data;
3. ``processes``: 1 process, and 2 data-parallel processes when 2 GPUs are visible (NCCL), fed by the pipeline;
4. ``inference``: ``segment`` on a 512x512x400 study (preprocessing, sliding windows of 96^3, 4 at a time, the
   inverse transforms), and the sliding windows alone.

Figures: samples (patches) per second, GPU busy % (nvidia-smi, sampled every 0.5 s), peak GPU memory, with the
card's name. On a machine without CUDA it runs the same code on the CPU (fp32, gloo for 2 processes), which is how it
is checked on this project's machines: ``python tests/bench/gpu.py --steps 2 --study 160 160 96 --workers 1``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from liverseg.config import load_profile
from liverseg.imaging.geometry import Volume
from liverseg.ml import distributed
from liverseg.ml.distributed import Ranks, launch
from liverseg.ml.inference import segment
from liverseg.ml.loader import batches, draw_order, share_of_batch, training_dataset
from liverseg.ml.model import build_unet
from liverseg.ml.training import Trainer

ROOT = Path(__file__).resolve().parents[2]
PROFILE = load_profile("gpu", environ={})


class GpuUtilisation:
    """Mean utilization.gpu of the visible GPUs from nvidia-smi while the block runs (None without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out:
                self.samples.append(sum(map(float, out)) / len(out))

    def __enter__(self) -> GpuUtilisation:
        if shutil.which("nvidia-smi"):
            threading.Thread(target=self._poll, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _trainer(device: torch.device, amp: bool, ranks: Ranks | None = None, workers: int | None = None):
    cfg = PROFILE.train if workers is None else PROFILE.train.model_copy(update={"loader_workers": workers})
    trainer = Trainer(cfg, PROFILE.infer, device, ranks)
    trainer.amp = amp and trainer.amp  # bf16 only where the card has it
    torch.manual_seed(0)
    net = build_unet().to(device).to(memory_format=trainer.fmt)
    return trainer, trainer.replica(net), trainer._optimizer(net)


def step_alone(device: torch.device, steps: int, amp: bool) -> dict:
    trainer, model, optimizer = _trainer(device, amp)
    n = PROFILE.train.batch_size * PROFILE.train.samples_per_volume
    x = torch.rand((n, 1, *PROFILE.train.patch), device=device)
    y = (torch.rand((n, 1, *PROFILE.train.patch), device=device) > 0.7).float()
    for _ in range(min(3, steps)):
        trainer.step(model, optimizer, x, y)
    _sync(device)
    _reset_peak(device)
    with GpuUtilisation() as busy:
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step(model, optimizer, x, y)
        _sync(device)
        seconds = time.perf_counter() - started
    return {"amp": trainer.amp, "steps": steps, "samples_per_s": round(n * steps / seconds, 2),
            "gpu_busy_pct": busy.mean, "peak_mem_gb": _peak_gb(device)}


def real_sized(cases: int, shape=(256, 256, 250)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cached units of a real MSD case's size at the gpu profile's spacing, with a liver-sized label."""
    out = []
    for i in range(cases):
        image = torch.rand((1, *shape), generator=torch.Generator().manual_seed(i))
        label = torch.zeros((1, *shape), dtype=torch.uint8)
        label[:, 40:150, 60:180, 60 + 5 * i:160 + 5 * i] = 1
        out.append((image, label))
    return out


def pipeline_steps(ranks: Ranks, device_type: str, steps: int, workers: int, cases: int) -> dict:
    """The step fed by the input pipeline on this rank's device; every rank's figures, summed, on rank 0."""
    device = ranks.device(device_type)
    trainer, model, optimizer = _trainer(device, True, ranks, workers)
    trainer._threads()
    data = real_sized(cases)
    volumes, patches = share_of_batch(trainer.cfg.batch_size, trainer.cfg.samples_per_volume, ranks.world_size)
    local = trainer.cfg.model_copy(update={"batch_size": volumes, "samples_per_volume": patches})
    dataset = training_dataset([i for i, _ in data], [lab for _, lab in data], local)
    stream = iter(batches(dataset, draw_order(len(data), volumes, steps + 2, 1), local, 1 + ranks.rank, device))
    for _ in range(2):  # warm-up: workers started, first batches made
        trainer.step(model, optimizer, *next(stream))
    _sync(device)
    _reset_peak(device)
    waited, samples = 0.0, 0
    with GpuUtilisation() as busy:
        started = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            x, y = next(stream)
            waited += time.perf_counter() - t
            trainer.step(model, optimizer, x, y)
            samples += x.shape[0]
        _sync(device)
        seconds = time.perf_counter() - started
    mine = {"samples_per_s": samples / seconds, "waited_for_data_pct": 100 * waited / seconds}
    if ranks.distributed:
        everyone = distributed.gather([mine["samples_per_s"], mine["waited_for_data_pct"]])
        mine = {"samples_per_s": sum(r[0] for r in everyone), "waited_for_data_pct": max(r[1] for r in everyone)}
    return {"processes": ranks.world_size, "loader_workers": workers, "steps": steps,
            "samples_per_s": round(mine["samples_per_s"], 2),
            "waited_for_data_pct": round(mine["waited_for_data_pct"], 1),
            "gpu_busy_pct": busy.mean, "peak_mem_gb_rank0": _peak_gb(device)}


def inference(device: torch.device, shape: tuple[int, int, int]) -> dict:
    """``segment`` on a synthetic study (body of soft tissue in air) at 0.78x0.78x1.25 mm."""
    array = np.full(shape, -1000, np.int16)
    (x0, y0), (x1, y1) = ((np.array(shape[:2]) * f).astype(int) for f in (0.15, 0.85))  # a box of tissue
    array[x0:x1, y0:y1, :] = np.random.default_rng(0).normal(40, 30, (x1 - x0, y1 - y0, shape[2]))
    study = Volume(array, np.diag([0.78, 0.78, 1.25, 1.0]))
    torch.manual_seed(0)
    model = build_unet().to(device).to(memory_format=Trainer(PROFILE.train, PROFILE.infer, device).fmt)
    _reset_peak(device)
    with GpuUtilisation() as busy:
        started = time.perf_counter()
        result = segment(model, study, PROFILE, device)
        _sync(device)
        whole = time.perf_counter() - started
    trainer = Trainer(PROFILE.train, PROFILE.infer, device)
    grid = tuple(round(s * sp / t) for s, sp, t in zip(shape, (0.78, 0.78, 1.25), PROFILE.preprocess.spacing,
                                                        strict=True))
    started = time.perf_counter()
    trainer.predict_logits(model.eval(), torch.rand((1, *grid)))
    _sync(device)
    return {"study": list(shape), "segment_s": round(whole, 2), "network_grid": list(grid),
            "sliding_windows_s": round(time.perf_counter() - started, 2), "gpu_busy_pct": busy.mean,
            "peak_mem_gb": _peak_gb(device), "mask_voxels": int(result.mask.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps of each training measurement")
    parser.add_argument("--workers", type=int, default=PROFILE.train.loader_workers, help="loader workers")
    parser.add_argument("--cases", type=int, default=4, help="cached volumes for the pipeline")
    parser.add_argument("--study", type=int, nargs=3, default=(512, 512, 400), help="inference study shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    cards = torch.cuda.device_count() if device.type == "cuda" else 0
    result: dict = {"device": torch.cuda.get_device_name(device) if cards else "cpu", "cards": cards,
                    "torch": torch.__version__, "cuda": torch.version.cuda,
                    "batch": f"{PROFILE.train.batch_size * PROFILE.train.samples_per_volume}x1x"
                             f"{'x'.join(map(str, PROFILE.train.patch))}"}
    result["step"] = {mode: step_alone(device, args.steps, amp=mode == "amp") for mode in ("fp32", "amp")}
    print("step", result["step"], flush=True)
    result["pipeline"] = [pipeline_steps(Ranks(), device.type, args.steps, args.workers, args.cases)]
    print("pipeline", result["pipeline"][0], flush=True)
    if cards >= 2 or device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            call = (device.type, args.steps, args.workers, args.cases)
            result["pipeline"].append(launch(2, device.type, Path(tmp), lambda r: pipeline_steps(r, *call),
                                             pipeline_steps, call))
        print("pipeline, 2 processes", result["pipeline"][1], flush=True)
    result["inference"] = inference(device, tuple(args.study))
    print("inference", result["inference"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
