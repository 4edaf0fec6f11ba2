"""scripts/bench_process.py's split of a step into oneDNN's primitives and the rest
(``--onednn``): the parser against lines of known sum and against a real libtorch process.
Tables: the worker's DataLoader batches are the twin's mapped rows, and ``--clock loop`` reads
both sides' own rates (a tiny end-to-end run needs target/release/mtl-train)."""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BINARY = ROOT / "target" / "release" / "mtl-train"
sys.path.insert(0, str(SCRIPTS))
import bench_process  # noqa: E402


def test_only_execution_lines_are_summed(tmp_path):
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.10.2 (commit f1d4719)",
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,exec_time",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,,mb16_ic64oc64,9.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,,mb16_ic64oc64,1.25",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:acdb::f0 dst:f32::blocked:Acdb64a::f0,attr-scratchpad:user,,64x3x3x3,0.5",
        "a training log line, exec, 100",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,src:f32,,,mb16_ic64oc64,2.25",
    ]
    script = tmp_path / "fake.py"
    script.write_text("import sys\n" + "".join(f"print({line!r})\n" for line in lines))
    seconds, ms, _ = bench_process.timed([sys.executable, str(script)], dict(os.environ), onednn=True)
    assert ms == 4.0 and seconds > 0


def test_a_libtorch_process_reports_its_convolutions():
    code = (
        "import torch, torch.nn.functional as F\n"
        "torch.set_num_threads(1)\n"
        "x, w = torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3)\n"
        "for _ in range(N): F.conv2d(x, w, padding=1)\n"
    )
    env = dict(os.environ)
    t0 = time.perf_counter()
    _, few, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "2")], env, onednn=True)
    _, many, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "12")], env, onednn=True)
    wall = 1000 * (time.perf_counter() - t0)
    assert 0 < few < many < wall, (few, many, wall)
    _, off, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "2")], env)
    assert off == 0.0


def test_a_failing_process_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="failed"):
        bench_process.timed([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), onednn=True)


def test_peak_memory_is_the_process_own():
    """The peak resident memory is each process's alone: 300 MiB touched shows, and a small
    process run afterwards does not inherit it."""
    big = "import time\nb = bytearray(300 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(0.2)\n"
    _, _, peak_big = bench_process.timed([sys.executable, "-c", big], dict(os.environ))
    _, _, peak_small = bench_process.timed([sys.executable, "-c", "import time; time.sleep(0.2)"], dict(os.environ))
    assert peak_big > 300 and peak_small < 100, (peak_big, peak_small)


def write_table(path, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    missing = rng.random(n) < 0.2
    pq.write_table(pa.table({
        "x": pa.array(np.where(missing, np.nan, x), mask=missing),
        "city": pa.array(rng.integers(0, 5, n)),
        "click": (x > 0).astype(np.int64),
    }), path)


def test_table_batches_are_the_twins_mapped_rows(tmp_path):
    """A DataLoader over the mapped rows: whole batches, distinct rows of the first
    ``train_size``, each exactly as ``map_rows`` maps it, with its own label."""
    import mtl_torch
    write_table(tmp_path / "t.parquet", 50)
    fitted = {"numeric": [{"column": "x", "mean": [0.1], "std": [2.0], "indicator": True}],
              "categorical": [{"column": "city", "dim": 2, "vocab": ["3", "1"]}]}
    cfg = {"data": {"dataset": "table", "train": str(tmp_path / "t.parquet"), "batch_size": 8, "train_size": 40,
                    "features": {"fitted": fitted}},
           "tasks": [{"name": "click", "kind": "binary", "target": "click"}]}
    n, batches = bench_process.table_batches(cfg, "cpu")
    table = pq.read_table(tmp_path / "t.parquet")
    mapped = torch.from_numpy(mtl_torch.map_rows(fitted, {c: table.column(c).to_numpy() for c in ("x", "city")}))
    labels = torch.tensor(table.column("click").to_numpy())
    seen = []
    for _ in range(5):  # one epoch of 40 rows
        x, (y,) = next(batches)
        assert x.shape == (8, 3) and y.dtype == torch.int64
        seen += [tuple(r.tolist()) + (int(l),) for r, l in zip(x, y)]
    expected = [tuple(r.tolist()) + (int(l),) for r, l in zip(mapped[:40], labels[:40])]
    assert n == 40 and sorted(seen) == sorted(expected)
    loss = bench_process.task_loss("binary", torch.zeros(8, 1), torch.ones(8, dtype=torch.int64), -100, 0.0)
    assert abs(float(loss) - float(np.log(2))) < 1e-6


def test_loop_rate_is_the_last_training_row(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 2, "split": "train", "images_per_second": 10.0},
            {"step": 4, "split": "train", "images_per_second": 12.5},
            {"step": 4, "split": "val", "click.auc": 0.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench_process.loop_rate(log) == 12.5
    log.write_text(json.dumps({"step": 4, "split": "val"}) + "\n")
    with pytest.raises(SystemExit, match="no training rate"):
        bench_process.loop_rate(log)


@pytest.mark.skipif(not BINARY.exists(), reason="needs target/release/mtl-train")
def test_a_table_against_pytorch_on_their_own_clocks(tmp_path, capsys):
    """mtl-train and the PyTorch worker on a tiny Parquet table, one round: both rates read."""
    write_table(tmp_path / "train.parquet", 96)
    write_table(tmp_path / "val.parquet", 32, seed=1)
    (tmp_path / "t.yaml").write_text(
        "name: t\nseed: 0\ndata:\n  dataset: table\n  train: train.parquet\n  val: val.parquet\n"
        "  features: {numeric: [x], categorical: {city: {dim: 2}}}\n  augment: {crop_padding: 0, hflip: false}\n"
        "model:\n  architecture: {kind: mmoe, experts: 2}\n  backbone: {kind: mlp, widths: [8], norm: none}\n"
        "tasks:\n  - {name: click, kind: binary, target: click}\n  - {name: again, kind: binary, target: click}\n"
        "optim: {kind: adamw, lr: 0.01, weight_decay: 0.01}\ntrain: {epochs: 1}\n")
    out = tmp_path / "timings.jsonl"
    assert bench_process.main(["--clock", "loop", "--batch", "8", "--n2", "4", "--log-every", "2", "--threads", "1",
                               "--rounds", "1", "--mtl", str(BINARY), "--json", str(out), "--",
                               str(tmp_path / "t.yaml")]) == 0
    record = json.loads(out.read_text())
    assert set(record["per_step_seconds"]) == {"mtl", "torch-eager", "torch-fused"}
    assert all(v[0] > 0 for v in record["per_step_seconds"].values())
    assert "rows/s" in capsys.readouterr().out
