"""The `table` dataset against independent references (numpy, PyTorch, scikit-learn).

Run: .venv/bin/python -m pytest -q tests/test_tables.py (needs target/release/mtl-train).

A tiny binary-task run on a Parquet table (written by pyarrow, categorical columns only, so
many rows share a score: AUC's ties matter). From the run's config.yaml (the fitted
vocabularies) and its final weights, the model's val logits are recomputed here in PyTorch;
scikit-learn's roc_auc_score and log_loss on them must equal what mtl-train logged (AUC to
1e-6). The same table as CSV must give the same fitted mapping and the same metrics.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.metrics import log_loss, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "mtl-train"

CONFIG = """name: t
seed: 2
device: cpu
threads: 1
data:
  dataset: table
  train: train.{ext}
  val: val.{ext}
  features:
    numeric: [age]
    categorical: {{city: {{dim: 3, max_vocab: 5}}, device: {{dim: 2}}}}
  batch_size: 32
  eval_batch_size: 1   # one row per forward: identical rows score bit-identically (exact ties)
  augment: {{crop_padding: 0, hflip: false}}
model:
  backbone: {{kind: mlp, widths: [8], norm: none, activation: relu}}
  heads: {{click: {{hidden: 0}}}}
tasks:
  - {{name: click, kind: binary, target: click}}
optim: {{kind: adamw, lr: 0.05, weight_decay: 0.0}}
schedule: {{kind: constant}}
train: {{epochs: 3, eval_every: 3, log_every: 50}}
checkpoint: {{every: 3, monitor: click.auc, mode: max}}
"""


def table(n, seed):
    rng = np.random.default_rng(seed)
    city = rng.integers(0, 8, n)
    device = rng.integers(0, 3, n)
    # Ages on a coarse grid, some missing: rows repeat exactly, so scores tie.
    age = rng.integers(2, 5, n).astype(float) * 10
    age[rng.random(n) < 0.1] = np.nan
    p = 1 / (1 + np.exp(-(city - 3.5) * 0.6 - (device == 1)))
    click = (rng.random(n) < p).astype(np.int64)
    return {"age": age, "city": np.array([f"c{c}" for c in city]), "device": device, "click": click}


def write(d: Path, name: str, t: dict):
    missing = np.isnan(t["age"])
    pq.write_table(
        pa.table({"age": pa.array(np.where(missing, 0, t["age"]), mask=missing), "city": t["city"],
                  "device": t["device"], "click": t["click"]}),
        d / f"{name}.parquet", row_group_size=70)
    lines = ["age,city,device,click"] + [
        f"{'' if np.isnan(a) else int(a)},{c},{dv},{k}" for a, c, dv, k in zip(t["age"], t["city"], t["device"], t["click"])]
    (d / f"{name}.csv").write_text("\n".join(lines) + "\n")


def train(d: Path, ext: str, *overrides: str, name: str = "") -> Path:
    (d / f"{ext}.yaml").write_text(CONFIG.format(ext=ext))
    run = d / f"run-{name or ext}"
    r = subprocess.run([str(BINARY), f"{ext}.yaml", "--run-dir", run.name, *overrides], cwd=d, capture_output=True,
                       text=True, env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return run


def logits(run: Path, t: dict) -> np.ndarray:
    """The model's logits recomputed from config.yaml's fitted mapping and the final weights."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    fitted = cfg["data"]["features"]["fitted"]
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    w = load_file(str(run / "checkpoints" / latest / "model.safetensors"))
    parts, indicators = [], []
    for n in fitted["numeric"]:
        v = t[n["column"]].astype(np.float32)
        missing = np.isnan(v)
        parts.append(np.where(missing, 0, (v - n["mean"][0]) / n["std"][0]))
        if n["indicator"]:
            indicators.append(missing.astype(np.float32))
    dense = torch.tensor(np.stack(parts + indicators, 1), dtype=torch.float32)
    embedded = [dense]
    for c in fitted["categorical"]:
        index = {v: i + 1 for i, v in enumerate(c["vocab"])}
        keys = [str(v) for v in t[c["column"]]]
        idx = torch.tensor([index.get(k, 0) for k in keys])
        embedded.append(torch.nn.functional.embedding(idx, w[f"embeddings.{c['column']}.weight"]))
    rows = torch.cat(embedded, 1)
    out = []
    for h in rows.split(1):  # row by row, as mtl-train evaluated them
        for i in range(len(cfg["model"]["backbone"]["widths"])):
            h = torch.relu(torch.nn.functional.linear(h, w[f"backbone.layers.{i}.weight"], w[f"backbone.layers.{i}.bias"]))
        out.append(torch.nn.functional.linear(h, w["heads.click.fc.weight"], w["heads.click.fc.bias"]))
    return torch.cat(out)[:, 0].double().numpy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it first (scripts/test.sh does)", pytrace=False)
    d = tmp_path_factory.mktemp("tables")
    tr, va = table(700, 1), table(300, 2)
    write(d, "train", tr)
    write(d, "val", va)
    return {ext: train(d, ext) for ext in ("parquet", "csv")}, tr, va


def last_val(run: Path) -> dict:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "val"][-1]


def test_auc_and_logloss_equal_scikit_learn_on_the_same_predictions(runs):
    (by_ext, tr, va) = runs
    run = by_ext["parquet"]
    scores = logits(run, va)
    assert len(np.unique(scores)) < len(scores) / 4, "the scores must tie often"
    logged = last_val(run)
    auc = roc_auc_score(va["click"], scores)
    assert abs(logged["click.auc"] - auc) <= 1e-6, (logged["click.auc"], auc)
    p = 1 / (1 + np.exp(-scores))
    assert abs(logged["click.logloss"] - log_loss(va["click"], p)) <= 1e-5
    assert abs(logged["click.accuracy"] - np.mean((scores > 0) == (va["click"] == 1))) <= 1e-9
    assert auc > 0.6, auc


def test_a_streamed_parquet_table_fits_the_same_mapping_and_scores_as_scikit_learn(runs):
    """Below its mapped rows' size (1000 rows × 32 bytes), `data.max_memory_mb` makes the Parquet
    table stream (its row groups of 70 cut into chunks): the fitted mapping is the in-memory
    run's, and the AUC it logs is scikit-learn's on logits recomputed from its weights."""
    (by_ext, tr, va) = runs
    run = train(by_ext["parquet"].parent, "parquet", "--set", "data.max_memory_mb=0.01", name="streamed")
    fitted = yaml.safe_load((run / "config.yaml").read_text())["data"]["features"]["fitted"]
    memory = yaml.safe_load((by_ext["parquet"] / "config.yaml").read_text())["data"]["features"]["fitted"]
    assert fitted.pop("stream")["chunk_rows"] < 70
    assert fitted == memory
    auc = roc_auc_score(va["click"], logits(run, va))
    assert abs(last_val(run)["click.auc"] - auc) <= 1e-6


def test_standardization_and_vocabulary_are_the_train_splits(runs):
    (by_ext, tr, va) = runs
    fitted = yaml.safe_load((by_ext["parquet"] / "config.yaml").read_text())["data"]["features"]["fitted"]
    age = tr["age"][~np.isnan(tr["age"])]
    assert abs(fitted["numeric"][0]["mean"][0] - age.mean()) < 1e-9
    assert abs(fitted["numeric"][0]["std"][0] - age.std()) < 1e-9  # population std, as StandardScaler
    assert fitted["numeric"][0]["indicator"] is True
    values, counts = np.unique(tr["city"], return_counts=True)
    order = sorted(zip(-counts, values))[:5]
    assert fitted["categorical"][0]["vocab"] == [v for _, v in order]
    assert fitted["categorical"][1]["vocab"] == [str(v) for _, v in sorted(zip(*np.unique(tr["device"], return_counts=True)[::-1]), key=lambda x: (-x[0], str(x[1])))]


def test_csv_and_parquet_give_the_same_run(runs):
    (by_ext, _, _) = runs
    fit = [yaml.safe_load((r / "config.yaml").read_text())["data"]["features"]["fitted"] for r in by_ext.values()]
    assert fit[0] == fit[1]
    a, b = (last_val(r) for r in by_ext.values())
    a.pop("images_per_second", None), b.pop("images_per_second", None)
    assert a == b


def test_predict_table_gives_the_evaluated_scores(runs):
    """`predict --table` maps val rows with the run's fitted mapping: its probabilities score
    the AUC the evaluation logged, and refusals are one line, exit 2, nothing written."""
    (by_ext, _, va) = runs
    run = by_ext["parquet"]
    out = run.parent / "p.csv"
    r = subprocess.run([str(BINARY), "predict", str(run), "--table", str(run.parent / "val.parquet"), "--out", str(out)],
                       capture_output=True, text=True, env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "click" and len(lines) == 301
    p = np.array([float(l) for l in lines[1:]])
    assert abs(roc_auc_score(va["click"], p) - last_val(run)["click.auc"]) <= 1e-6
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits(run, va))), rtol=1e-5)
    bad = subprocess.run([str(BINARY), "predict", str(run), "--table", str(run.parent / "val.parquet"), "--out",
                          str(run.parent / "p.txt")], capture_output=True, text=True, env={"RUST_LOG": "warn"})
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and not (run.parent / "p.txt").exists()
