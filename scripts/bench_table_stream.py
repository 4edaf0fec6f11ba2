#!/usr/bin/env python3
"""Peak memory of a table run, held in memory against streamed (docs/TABLES.md, "Streaming").

For each size (MiB of mapped rows: float32 entries and an int64 label, as the in-memory path
holds them) a Parquet table is written with pyarrow: 24 numeric columns (6 with 5 % missing,
so 6 indicators), two categorical ones (50 and 1000 values) and a binary label; a val table of
20 000 rows. ``mtl-train`` trains ``--steps`` steps on it twice, with ``data.max_memory_mb``
above the table (held in memory) and at ``--limit`` (streamed), and the process's peak resident
memory (``VmHWM``, polled every 20 ms by ``bench_process.timed``) is recorded, with the wall time.

    python scripts/bench_table_stream.py --limit 20 --sizes 100 200 --steps 300

Row groups are written at 8192 rows, below the streamed chunk size, so no chunk re-decodes
rows of its group (docs/TABLES.md on row groups larger than a chunk).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_process import timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "mtl-train"
NUMERIC, WITH_MISSING, VOCABS = 24, 6, (50, 1000)
# Mapped bytes a row takes in memory: numeric entries, indicators, vocabulary indices (float32), the label (int64).
ROW_BYTES = 4 * (NUMERIC + WITH_MISSING + len(VOCABS)) + 8

CONFIG = """name: stream
seed: 0
device: cpu
threads: 1
data:
  dataset: table
  train: train.parquet
  val: val.parquet
  features:
    numeric: [{numeric}]
    categorical: {{k0: {{dim: 4}}, k1: {{dim: 8, max_vocab: 500}}}}
  batch_size: 256
  eval_batch_size: 1024
  augment: {{crop_padding: 0, hflip: false}}
model:
  backbone: {{kind: mlp, widths: [64, 32], norm: none}}
tasks:
  - {{name: click, kind: binary, target: click}}
optim: {{kind: adamw, lr: 0.003, weight_decay: 0.0}}
schedule: {{kind: constant}}
train: {{epochs: 100, eval_every: 100000, log_every: 100}}
checkpoint: {{every: 100000, monitor: click.auc, mode: max}}
"""


def write_table(path: Path, rows: int, seed: int) -> None:
    """``rows`` rows, written 131 072 at a time (the generator's own memory stays small)."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 1 << 17):
        n = min(1 << 17, rows - start)
        x = rng.standard_normal((n, NUMERIC)).astype(np.float32)
        cols = {}
        for j in range(NUMERIC):
            mask = (rng.random(n) < 0.05) if j < WITH_MISSING else None
            cols[f"x{j}"] = pa.array(x[:, j], mask=mask)
        k0, k1 = rng.integers(0, VOCABS[0], n), rng.zipf(1.5, n) % VOCABS[1]
        cols["k0"] = pa.array([f"v{v}" for v in k0])
        cols["k1"] = pa.array(k1)
        logit = x[:, 0] + 0.5 * x[:, 7] - 0.3 * (k0 % 3)
        cols["click"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
        batch = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch, row_group_size=8192)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=float, default=20.0, help="data.max_memory_mb of the streamed runs")
    ap.add_argument("--sizes", type=float, nargs="+", default=[100.0, 200.0], help="MiB of mapped train rows")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip-memory", action="store_true", help="streamed runs only")
    args = ap.parse_args()
    if not BINARY.is_file():
        sys.exit(f"{BINARY} is missing: cargo build --release --bins --features bench")
    print(f"| mapped train rows | rows | file MiB | mode | data.max_memory_mb | peak RSS MiB | wall s ({args.steps} steps) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "t.yaml").write_text(CONFIG.format(numeric=", ".join(f"x{j}" for j in range(NUMERIC))))
        write_table(d / "val.parquet", 20_000, 2)
        for size in args.sizes:
            rows = int(size * (1 << 20) / ROW_BYTES)
            write_table(d / "train.parquet", rows, 1)
            file_mb = (d / "train.parquet").stat().st_size / (1 << 20)
            limits = [args.limit] + ([] if args.skip_memory else [100_000.0])
            for limit in limits:
                run = d / f"run-{size}-{limit}"
                cmd = [str(BINARY), str(d / "t.yaml"), "--run-dir", str(run),
                       "--set", f"train.max_steps={args.steps}", "--set", f"data.max_memory_mb={limit}"]
                wall, _, peak = timed(cmd, env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
                # The run records its layout when it streamed (data.features.fitted.stream).
                mode = "streamed" if "stream:" in (run / "config.yaml").read_text() else "in memory"
                print(f"| {size:.0f} MiB | {rows} | {file_mb:.0f} | {mode} | {limit:g} | {peak:.0f} | {wall:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
