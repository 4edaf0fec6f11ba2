"""The `table` dataset against independent references (numpy, PyTorch, scikit-learn).

Run: .venv/bin/python -m pytest -q tests/test_tables.py (needs target/release/mtl-train).

A tiny binary-task run on a Parquet table (written by pyarrow, categorical columns only, so
many rows share a score: AUC's ties matter). The PyTorch twin (scripts/mtl_torch.py) loads the
run strictly, maps the val rows with `map_rows` from config.yaml's fitted vocabularies and
computes the logits; scikit-learn's roc_auc_score and log_loss on them must equal what
mtl-train logged (AUC to 1e-6). The same table as CSV must give the same fitted mapping and the
same metrics. Then, for every architecture that takes rows, a run with binary, ESMM
(`given:`) and value tasks: the twin's predictions equal `mtl-train predict --table`'s (1e-5),
and the twin's mapped rows fed to `predict --input` give what mtl's own mapping gives.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from sklearn.metrics import log_loss, roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "mtl-train"
sys.path.insert(0, str(ROOT / "scripts"))

import mtl_torch  # noqa: E402

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


def twin_rows(run: Path, table_file: Path):
    """The PyTorch twin of the run's latest checkpoint and `table_file`'s rows mapped by the twin
    from config.yaml's fitted mapping, as ``[N, F, 1, 1]``."""
    model = mtl_torch.load_run(run, "LATEST")
    fitted = mtl_torch.table_mapping(model.config)
    x = mtl_torch.map_rows(fitted, mtl_torch.read_table(table_file, mtl_torch.table_columns(fitted)))
    return model, torch.from_numpy(x)[:, :, None, None]


def logits(run: Path, table_file: Path) -> np.ndarray:
    """The click logits the twin computes, row by row as mtl-train evaluated them (identical
    rows then score bit-identically: the ties stay ties)."""
    model, x = twin_rows(run, table_file)
    with torch.no_grad():
        return torch.cat([model(row)["click"] for row in x.split(1)])[:, 0].double().numpy()


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
    scores = logits(run, run.parent / "val.parquet")
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
    auc = roc_auc_score(va["click"], logits(run, run.parent / "val.parquet"))
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
    # Identical rows can come out of a batched forward one bit apart on some CPUs (MKL's
    # AVX-512 kernels: the 300 rows' 69 distinct logits became 70 here), which turns one tied
    # pair into an ordered one: the AUC may move by at most one pair's weight.
    pairs = va["click"].sum() * (len(va["click"]) - va["click"].sum())
    assert abs(roc_auc_score(va["click"], p) - last_val(run)["click.auc"]) <= 1 / pairs + 1e-9
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits(run, run.parent / "val.parquet"))), rtol=1e-5)
    bad = subprocess.run([str(BINARY), "predict", str(run), "--table", str(run.parent / "val.parquet"), "--out",
                          str(run.parent / "p.txt")], capture_output=True, text=True, env={"RUST_LOG": "warn"})
    assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and not (run.parent / "p.txt").exists()


# Every architecture that takes rows (docs/TABLES.md), with its smallest options.
ARCHITECTURES = {
    "hps": "{kind: hps}",
    "mmoe": "{kind: mmoe, experts: 3}",
    "cgc": "{kind: cgc, shared_experts: 2, task_experts: 1}",
    "ple": "{kind: ple, shared_experts: 1, task_experts: 1}",
    "dselect_k": "{kind: dselect_k, experts: 3, k: 2}",
    "cross_stitch": "{kind: cross_stitch}",
}

# Numeric columns with missing values and a 2-wide one, categorical ones read as text and as
# numbers; tasks of kinds binary, binary given the first (ESMM) and value.
ARCH_CONFIG = """name: t
seed: 4
device: cpu
threads: 1
data:
  dataset: table
  train: train.{ext}
  val: val.{ext}
  features:
    numeric: [age, score]
    categorical: {{city: {{dim: 3, max_vocab: 5}}, device: {{dim: 2}}}}
  batch_size: 32
  eval_batch_size: 50
  augment: {{crop_padding: 0, hflip: false}}
model:
  architecture: {arch}
  backbone: {{kind: mlp, widths: [8, 6], norm: none, activation: relu}}
tasks:
  - {{name: click, kind: binary, target: click}}
  - {{name: buy, kind: binary, target: buy, given: click}}
  - {{name: spend, kind: value, target: spend}}
optim: {{kind: adamw, lr: 0.02, weight_decay: 0.0}}
schedule: {{kind: constant}}
train: {{epochs: 2, eval_every: 2, log_every: 50}}
"""


def shop(n, seed):
    """Rows with every case the mapping handles: missing numbers, a value only val has (OOV),
    numbers as categories."""
    rng = np.random.default_rng(seed)
    t = table(n, seed)
    t["city"][rng.random(n) < 0.05] = "c9"  # a city only val has: OOV in val
    t["score"] = rng.normal(3, 2, n).round(3)
    t["score"][rng.random(n) < 0.1] = np.nan
    t["buy"] = (t["click"] * (rng.random(n) < 0.4)).astype(np.int64)
    t["spend"] = (t["age"] / 10 + rng.normal(0, 1, n)).round(3)
    t["spend"][np.isnan(t["spend"])] = 0.0
    t["tier"] = rng.integers(0, 3, n)
    return t


def write_csv(path: Path, t: dict):
    def cell(v):
        return "" if isinstance(v, float) and np.isnan(v) else str(v)

    names = list(t)
    lines = [",".join(names)] + [",".join(cell(t[c][i]) for c in names) for i in range(len(t[names[0]]))]
    path.write_text("\n".join(lines) + "\n")


def predict_csv(run: Path, table_file: Path, out: Path) -> dict:
    r = subprocess.run([str(BINARY), "predict", str(run), "--checkpoint", "latest", "--table", str(table_file),
                        "--out", str(out)], capture_output=True, text=True,
                       env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    values = np.array([[float(v) for v in l.split(",")] for l in lines[1:]])
    return {h: values[:, i] for i, h in enumerate(header)}


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory):
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it first (scripts/test.sh does)", pytrace=False)
    d = tmp_path_factory.mktemp("shop")
    write_csv(d / "train.csv", shop(400, 5))
    write_csv(d / "val.csv", shop(150, 6))
    return d


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_twin_predicts_what_mtl_predicts(shop_dir, arch):
    """The twin loads every table architecture's run strictly; from its own mapping of the raw
    val rows it predicts what `predict --table` writes (binary probabilities, ESMM's pCVR,
    values) to 1e-5, and pCTCVR is pCVR × pCTR."""
    d = shop_dir / arch
    d.mkdir()
    for split in ("train", "val"):
        (d / f"{split}.csv").write_text((shop_dir / f"{split}.csv").read_text())
    (d / "c.yaml").write_text(ARCH_CONFIG.format(ext="csv", arch=ARCHITECTURES[arch]))
    r = subprocess.run([str(BINARY), "c.yaml", "--run-dir", "run"], cwd=d, capture_output=True, text=True,
                       env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    run = d / "run"
    want = predict_csv(run, d / "val.csv", d / "p.csv")
    model, x = twin_rows(run, d / "val.csv")
    assert model.kind == arch and model.given == {"buy": "click"}
    with torch.no_grad():
        out = model(x)
    got = mtl_torch.table_predictions(model, out)
    assert list(got) == list(want) == ["click", "buy", "spend"]
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-5, atol=1e-6, err_msg=f"{arch}: {name}")
    joint = mtl_torch.ctcvr(model, out)["buy"].double()
    np.testing.assert_allclose(joint.numpy(), got["buy"].numpy() * got["click"].numpy(), rtol=1e-6)


def test_twin_mapping_is_mtls(shop_dir):
    """The twin's mapped rows, given to `predict --input`, give what `predict --table` gives
    from mtl's own mapping (every case: missing numbers and their indicators, OOV values,
    numbers as categories), and every categorical index is one mtl could have given."""
    d = shop_dir / "mapping"
    d.mkdir()
    for split in ("train", "val"):
        (d / f"{split}.csv").write_text((shop_dir / f"{split}.csv").read_text())
    (d / "c.yaml").write_text(ARCH_CONFIG.format(ext="csv", arch=ARCHITECTURES["hps"]))
    r = subprocess.run([str(BINARY), "c.yaml", "--run-dir", "run"], cwd=d, capture_output=True, text=True,
                       env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    run = d / "run"
    _, x = twin_rows(run, d / "val.csv")
    fitted = mtl_torch.table_mapping(yaml.safe_load((run / "config.yaml").read_text()))
    assert x.shape[1] == mtl_torch.table_width(fitted) == 2 + 2 + 2  # age, score, 2 indicators, 2 indices
    assert (x[:, 4, 0, 0] == 0).any(), "an OOV city must map to 0"
    save_file({"input": x.contiguous()}, str(d / "x.safetensors"))
    r = subprocess.run([str(BINARY), "predict", str(run), "--checkpoint", "latest", "--input", str(d / "x.safetensors"),
                        "--out", str(d / "y.safetensors")], capture_output=True, text=True, env={"RUST_LOG": "warn"})
    assert r.returncode == 0, r.stderr
    y = load_file(str(d / "y.safetensors"))
    want = predict_csv(run, d / "val.csv", d / "p.csv")
    np.testing.assert_allclose(torch.sigmoid(y["click"][:, 0]).double().numpy(), want["click"], rtol=1e-6)
    np.testing.assert_allclose(y["spend"][:, 0].double().numpy(), want["spend"], rtol=1e-6, atol=1e-7)
    # The same rows from Parquet and as Python values map identically.
    t = shop(150, 6)
    columns = {c: t[c].tolist() for c in ("age", "score", "city", "device")}
    np.testing.assert_array_equal(mtl_torch.map_rows(fitted, columns), x[:, :, 0, 0].numpy())


def test_predict_table_writes_parquet_with_the_csvs_values(shop_dir):
    """`--out P.parquet` writes the CSV's columns (a classification task's class as int64, its
    probability, binary probabilities, values) with the same values."""
    d = shop_dir / "parquet-out"
    d.mkdir()
    for split in ("train", "val"):
        (d / f"{split}.csv").write_text((shop_dir / f"{split}.csv").read_text())
    config = ARCH_CONFIG.format(ext="csv", arch=ARCHITECTURES["hps"]).replace(
        "  - {name: spend, kind: value, target: spend}",
        "  - {name: spend, kind: value, target: spend}\n  - {name: tier, kind: classification, target: tier}")
    (d / "c.yaml").write_text(config)
    r = subprocess.run([str(BINARY), "c.yaml", "--run-dir", "run"], cwd=d, capture_output=True, text=True,
                       env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    want = predict_csv(d / "run", d / "val.csv", d / "p.csv")
    r = subprocess.run([str(BINARY), "predict", "run", "--checkpoint", "latest", "--table", "val.csv", "--out",
                        "p.parquet"], cwd=d, capture_output=True, text=True, env={"RUST_LOG": "warn"})
    assert r.returncode == 0, r.stderr
    got = pq.read_table(d / "p.parquet")
    assert got.column_names == list(want) == ["click", "buy", "spend", "tier", "tier_probability"]
    assert got.schema.field("tier").type == pa.int64() and got.schema.field("click").type == pa.float64()
    for name in want:
        np.testing.assert_array_equal(got.column(name).to_numpy(), want[name], err_msg=name)

