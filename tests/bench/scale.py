"""make bench-scale: convert → group → preprocess over 10, 50 and 200 synthetic cases (legacy phantoms: the data
its recorded figures were measured on, and the data folder it keeps).

Each stage runs as its own process (``--workers W`` children share the cases); wall time per case and the peak
resident memory of the largest process (VmHWM, polled every 0.1 s) are measured for each size. Peak RSS must not
grow with the number of cases: stages hold one case at a time. Writes bench-results/scale.json as
``{"10": {"s_per_case", "peak_rss_mb"}, "50": {...}, "200": {...}}``.

    python tests/bench/scale.py [--sizes 10 50 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from liverseg.config import load_profile
from liverseg.data.msd import ingest
from liverseg.data.synth import write_dataset
from liverseg.embedded import EmbeddedStore, find_free_s3_port
from liverseg.settings import home
from liverseg.stages.plan import make_plan
from liverseg.store import ObjectStore

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("convert", "group", "preprocess")
SEED = 4242


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return found


def _hwm_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), reset by exec: unlike ru_maxrss, not inherited from its parent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_stage(stage: str, run_id: str, workers: int, env: dict[str, str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS in MB of the largest process: the stage or one of its workers, stage result)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "liverseg", stage, "--run-id", run_id, "--workers",
                                str(workers)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0.0
    while process.poll() is None:
        peak = max([peak, *(_hwm_mb(p) for p in _descendants(process.pid))])
        time.sleep(0.1)
    out = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed with exit code {process.returncode}")
    return time.monotonic() - started, peak, json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    cases = max(args.sizes)
    data = home() / "data" / f"bench-scale-seed{SEED}-n{cases}"
    if not (data / "dataset.json").exists():
        print(f"generating {cases} phantoms in {data}")
        write_dataset(data, cases, SEED, generator="legacy")
    server = EmbeddedStore(root=home() / "bench-scale-store", s3_port=find_free_s3_port())
    settings = server.up()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIVERSEG")}, **settings.to_env()}
    results: dict[str, dict[str, float]] = {}
    try:
        store = ObjectStore(settings)
        ingest(store, data, data.name)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for size in sorted(args.sizes):
            run_id = f"scale-{size}-{stamp}"
            make_plan(store, run_id, data.name, load_profile("default", environ={}), max_cases=size)
            wall, peak, per_stage = 0.0, 0.0, {}
            for stage in STAGES:
                seconds, rss, result = run_stage(stage, run_id, args.workers, env)
                lost = size - len(result["ok"]) - len(result["skipped"]) - len(result["quarantined"])
                if lost:
                    raise SystemExit(f"{stage} lost {lost} cases at size {size}")
                wall += seconds
                peak = max(peak, rss)
                per_stage[stage] = {"s": round(seconds, 1), "peak_rss_mb": round(rss, 1),
                                    "quarantined": len(result["quarantined"])}
            results[str(size)] = {"s_per_case": round(wall / size, 3), "peak_rss_mb": round(peak, 1),
                                  "workers": args.workers, "stages": per_stage}
            print(f"{size:4d} cases: {wall / size:6.2f} s/case, peak RSS {peak:7.1f} MB  {per_stage}")
    finally:
        server.down()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2))
    sizes = sorted(args.sizes)
    growth = results[str(sizes[-1])]["peak_rss_mb"] / results[str(sizes[0])]["peak_rss_mb"]
    print(f"peak RSS at {sizes[-1]} cases / at {sizes[0]} cases: {growth:.2f}x  -> {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
