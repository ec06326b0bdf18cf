"""Write docs/RELIABILITY.md from what the tests and benchmarks recorded (never from hand-typed figures).

Inputs: .liverseg/reliability/*.json (rows written by tests/test_reliability.py and
tests/test_bad_input_corpus.py) and bench-results/scale.json (make bench-scale). `make reliability-doc` runs
those tests first.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ROOT / ".liverseg" / "reliability"
SCALE = ROOT / "bench-results" / "scale.json"
OUT = ROOT / "docs" / "RELIABILITY.md"


def main() -> None:
    faults = [json.loads(p.read_text()) for p in sorted(ROWS.glob("[a-d]-*.json"))]
    corpus_file = ROWS / "bad-inputs.json"
    if not faults or not corpus_file.exists():
        sys.exit(f"no recorded rows in {ROWS}: run 'make reliability-doc' (it runs the tests first)")
    corpus = json.loads(corpus_file.read_text())
    lines = ["# Reliability", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `make reliability-doc` from the rows the "
             "tests record (tests/test_reliability.py, tests/test_bad_input_corpus.py) and from "
             "`make bench-scale` (bench-results/scale.json). Do not edit by hand.", "",
             "## Faults injected", "",
             f"{len(faults)} injected, {sum(f['survived'] for f in faults)} survived.", "",
             "| fault | survived | evidence |", "|---|---|---|"]
    lines += [f"| {f['fault']} | {'yes' if f['survived'] else 'NO'} | {f['detail']} |" for f in faults]
    kinds = corpus["kinds"]
    lines += ["", "## Bad input", "",
              f"{len(kinds)} kinds, {sum(k['handled'] for k in kinds)} handled (a one-line reason naming the case "
              "and file; the case set aside; the others go on).", "",
              "| cases in | ok | quarantined | set aside at ingest | lost |", "|---|---|---|---|---|",
              f"| {corpus['cases_in']} | {corpus['ok']} | {corpus['quarantined']} | {corpus['set_aside_at_ingest']} "
              f"| {corpus['lost']} |", "",
              "| input | kind | where | reason given |", "|---|---|---|---|"]
    lines += [f"| {k['input']} | {k['kind']} | {k['where']} | {k['reason'].replace('|', '/')[:160]} |"
              for k in kinds]
    lines += ["", "## Load (convert -> group -> preprocess)", ""]
    if SCALE.exists():
        scale = json.loads(SCALE.read_text())
        lines += ["| cases | s per case | peak RSS MB | workers |", "|---|---|---|---|"]
        lines += [f"| {n} | {r['s_per_case']} | {r['peak_rss_mb']} | {r['workers']} |"
                  for n, r in sorted(scale.items(), key=lambda kv: int(kv[0]))]
        sizes = sorted(scale, key=int)
        growth = scale[sizes[-1]]["peak_rss_mb"] / scale[sizes[0]]["peak_rss_mb"]
        lines += ["", f"Peak RSS at {sizes[-1]} cases is {growth:.2f}x the peak at {sizes[0]}: stages hold one case "
                      "at a time, so memory does not grow with the number of cases."]
    else:
        lines.append("Not measured yet: run `make bench-scale`.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
