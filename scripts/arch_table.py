#!/usr/bin/env python3
"""The table of docs/results/ARCHITECTURES.md from a scripts/arch_sweep.sh directory: per architecture,
the parameters (trainable, counted by scripts/mtl_torch.py from the run's weights), Δm (%, the
runs' last evaluation against the mean single-task baselines) as mean ± standard deviation over
the seeds with each seed's value, its paired difference to hard sharing (same seed) with the
t statistic of those differences, and every task's main metric (mean over the seeds).

    python scripts/arch_table.py OUT_DIR
"""
from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml  # noqa: E402

from mtl_torch import catalog, load_run  # noqa: E402

MAIN = ("accuracy", "miou", "abs_error", "mean_angle")
# Two-sided 95% critical values of Student's t by degrees of freedom.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def last_val(run: Path) -> dict:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    vals = [r for r in rows if r.get("split") == "val"]
    return vals[-1] if vals else {}


def sd(v):
    return statistics.stdev(v) if len(v) > 1 else float("nan")


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    order = [a["name"] for a in catalog()["architectures"]]  # the registry's order, hps first
    runs = {}
    for d in sorted(out.iterdir()):
        m = re.fullmatch(r"(.+)-seed(\d+)", d.name)
        if m and (d / "checkpoints" / "LATEST").is_file() and m.group(1) in order:
            runs.setdefault(m.group(1), {})[int(m.group(2))] = d
    base = json.load(open(out / "baselines-mean.json"))["metrics"]
    first = next(iter(next(iter(runs.values())).values()))
    cfg = yaml.safe_load((first / "config.yaml").read_text())
    tasks = [t["name"] for t in cfg["tasks"]]
    main_keys = [next(f"{t}.{m}" for m in MAIN if f"{t}.{m}" in base) for t in tasks]
    hps = {s: last_val(r).get("delta_m") for s, r in runs.get("hps", {}).items()}
    head = ["architecture", "parameters", "Δm % mean ± sd", "Δm % per seed",
            "Δm − hps (paired) mean ± sd, t"] + [f"{k}" for k in main_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| single-task (mean of seeds) | – | 0 | – | – | " + " | ".join(f"{base[k]:.4f}" for k in main_keys) + " |")
    for a in [a for a in order if a in runs]:
        seeds = sorted(runs[a])
        vals = {s: last_val(runs[a][s]) for s in seeds}
        dm = [vals[s]["delta_m"] for s in seeds]
        params = load_run(runs[a][seeds[0]], "LATEST").parameter_count()
        cell = f"{statistics.mean(dm):+.2f} ± {sd(dm):.2f}"
        per_seed = ", ".join(f"{d:+.2f}" for d in dm)
        if a == "hps":
            diff = "–"
        else:
            d = [vals[s]["delta_m"] - hps[s] for s in seeds if hps.get(s) is not None]
            if len(d) > 1 and sd(d) > 0:
                t = statistics.mean(d) / (sd(d) / math.sqrt(len(d)))
                sig = "" if abs(t) < T95.get(len(d) - 1, 2.0) else " *"
                diff = f"{statistics.mean(d):+.2f} ± {sd(d):.2f}, t = {t:+.1f}{sig}"
            else:
                diff = "–"
        metrics = " | ".join(f"{statistics.mean(vals[s][k] for s in seeds):.4f}" for k in main_keys)
        lines.append(f"| {a} | {params:,} | {cell} | {per_seed} | {diff} | {metrics} |")
    print("\n".join(lines))
    print(f"\nn = {len(next(iter(runs.values())))} seeds; * : the paired difference to hps is beyond the "
          "two-sided 95% t threshold for that n (otherwise it is within seed noise).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
