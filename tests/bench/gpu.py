"""Training and inference throughput of the default model: fp32 against AMP (bf16 autocast), one device.

Meant for a GPU machine (CUDA): ``python tests/bench/gpu.py --steps 300``. It trains the default profile's U-Net
on random 2x(1x96x96x64) batches through the project's own Trainer step (loss, optimizer, channels-last where
it applies), reports samples/s for fp32 and AMP, peak GPU memory and mean GPU utilisation (nvidia-smi, sampled
every 0.5 s), and sliding-window inference seconds on a 1x256x256x128 volume. On CPU it runs fp32 only (bf16
autocast is 30-40x slower on this kind of CPU), which is how it is tested here. Writes bench-results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import torch

from liverseg.config import load_profile
from liverseg.ml.model import build_unet, memory_format
from liverseg.ml.training import Trainer

ROOT = Path(__file__).resolve().parents[2]


class GpuUtilisation:
    """Mean utilisation.gpu from nvidia-smi while the block runs (None without nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out:
                self.samples.append(float(out[0]))

    def __enter__(self) -> GpuUtilisation:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def train_steps(device: torch.device, steps: int, amp: bool) -> dict:
    profile = load_profile("default", environ={})
    trainer = Trainer(profile.train, profile.infer, device)
    trainer.amp = amp and device.type == "cuda"
    model = build_unet().to(device).to(memory_format=trainer.fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=profile.train.lr)
    x = torch.rand((2, 1, *profile.train.patch))
    y = (torch.rand((2, 1, *profile.train.patch)) > 0.7).float().to(device)
    warmup = min(10, steps // 5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with GpuUtilisation() as utilisation:
        for step in range(steps + warmup):
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = trainer.loss_fn(trainer._forward(model, x).float(), y)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {"steps": steps, "seconds": round(seconds, 2), "samples_per_s": round(2 * steps / seconds, 2),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "gpu_util_pct": utilisation.mean}


def inference_seconds(device: torch.device, amp: bool) -> float:
    profile = load_profile("default", environ={})
    trainer = Trainer(profile.train, profile.infer, device)
    trainer.amp = amp and device.type == "cuda"
    model = build_unet().to(device).to(memory_format=memory_format(device)).eval()
    volume = torch.rand((1, 256, 256, 128))
    trainer.predict_logits(model, volume)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.predict_logits(model, volume)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round(time.perf_counter() - started, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    modes = ("fp32", "amp") if device.type == "cuda" else ("fp32",)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": name, "torch": torch.__version__, "batch": "2x1x96x96x64"}
    for mode in modes:
        result[mode] = train_steps(device, args.steps, amp=mode == "amp")
        result[mode]["inference_256x256x128_s"] = inference_seconds(device, amp=mode == "amp")
        print(mode, result[mode], flush=True)
    if "amp" in result:
        result["amp_speedup"] = round(result["amp"]["samples_per_s"] / result["fp32"]["samples_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
