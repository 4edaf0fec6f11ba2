"""`mtl-train export`: TorchScript (traced by libtorch from mtl's own forward) and ONNX (through
the PyTorch twin), checked against mtl's outputs.

Run: .venv/bin/python -m pytest -q tests/test_export.py (after `cargo build --release`).

For every case of ARCHITECTURES (backbone and heads) × task kinds, a tiny run is trained and
exported; then on held-out random batches of several sizes (the tracer saw 2):
- `torch.jit.load(model.pt)` in eval mode returns a tuple in task order equal to
  `mtl-train predict`'s outputs (max relative error <= 1e-5, measured against each output's
  largest magnitude) — and the same in train mode, since the trace fixes eval behaviour;
- the description inside the archive (`mtl.json`) names the tasks, the input shape and the
  normalization;
- onnxruntime on `model.onnx` returns the same (<= 1e-5; bf16 runs within bf16 rounding, as
  the ONNX model computes in fp32), its outputs named after the tasks.
Then the refusals: exit 2 with one line and nothing written.

A new architecture is covered by adding it to ARCHITECTURES (a `model:` section and the tasks
it runs with); export itself traces whatever the model's forward does.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from test_interop import assert_ok, assert_user_error, mtl
from test_mtl_torch import _write_nyu

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "mtl-train"
TOL = 1e-5

SHAPES = {"dataset": "shapes", "train_size": 32, "val_size": 8, "image_size": 16, "batch_size": 8,
          "eval_batch_size": 8}
CLASS_AND_SEG = [{"name": "kind", "kind": "classification", "target": "kind", "classes": 10},
                 {"name": "seg", "kind": "segmentation", "target": "mask", "classes": 11}]
DENSE = [{"name": "semantic", "kind": "segmentation", "target": "semantic", "classes": 13},
         {"name": "depth", "kind": "regression", "target": "depth"},
         {"name": "normal", "kind": "normals", "target": "normal"}]

# name -> (data, model, tasks, extra top-level keys). Every backbone, both pools, every task
# kind, bf16 compute, and per-domain BatchNorm.
ARCHITECTURES = {
    "conv": (SHAPES, {"backbone": {"kind": "conv", "widths": [4, 8], "depth": 1},
                      "heads": {"kind": {"hidden": 8, "dropout": 0.5}}}, CLASS_AND_SEG, {}),
    "resnet": (SHAPES, {"backbone": {"kind": "resnet", "widths": [4], "depth": 1}}, CLASS_AND_SEG, {}),
    "mlp": (dict(SHAPES, grayscale=True, augment={"crop_padding": 0, "hflip": False}),
            {"backbone": {"kind": "mlp", "widths": [32, 16], "norm": "none", "activation": "gelu"}},
            CLASS_AND_SEG[:1] + [{"name": "count", "kind": "classification", "target": "count", "classes": 3}], {}),
    "conv-flatten": (SHAPES, {"backbone": {"kind": "conv", "widths": [4, 8, 8], "activation": "silu"},
                              "heads": {"kind": {"pool": "flatten", "hidden": 6}}}, CLASS_AND_SEG, {}),
    "conv-dense": ({"dataset": "nyuv2", "root": "nyu", "image_size": 8, "batch_size": 2},
                   {"backbone": {"kind": "conv", "widths": [4, 8]}, "heads": {"normal": {"decoder_width": 5}}},
                   DENSE, {}),
    "conv-bf16": (SHAPES, {"backbone": {"kind": "conv", "widths": [4, 8]}}, CLASS_AND_SEG, {"precision": "bf16"}),
    # Tasks with their own data, each group with its own BatchNorm state: every output is
    # computed with its own task's group's (docs/MULTI_INPUT.md, "Export").
    "conv-domains": (SHAPES, {"backbone": {"kind": "conv", "widths": [4, 8]}, "domain_norm": "affine"},
                     [CLASS_AND_SEG[0], dict(CLASS_AND_SEG[1], data={"train_size": 24})], {}),
    # Task fusion (initial predictions are training-only: the export holds the final heads) on
    # generated dense scenes.
    "mtinet-scenes": ({"dataset": "scenes", "train_size": 16, "val_size": 8, "image_size": 16, "batch_size": 8},
                      {"architecture": {"kind": "mtinet"}, "backbone": {"kind": "conv", "widths": [4, 8]}},
                      [dict(DENSE[0], classes=4), DENSE[1], DENSE[2]], {}),
}
# The input width a case's images have (NYUv2 keeps its 2:3 aspect: 8 → 8×12).
WIDTH = {"conv-dense": 12}


@pytest.fixture(scope="module")
def binary():
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build --release` (scripts/test.sh does)")
    return BINARY


def train_case(binary, tmp: Path, case: str) -> dict:
    data, model, tasks, extra = ARCHITECTURES[case]
    if data["dataset"] == "nyuv2":
        _write_nyu(tmp / "nyu")
    cfg = {"name": case, "seed": 5, "device": "cpu", "threads": 1, "data": data, "model": model, "tasks": tasks,
           "optim": {"kind": "adamw", "lr": 0.01}, "train": {"epochs": 1, "log_every": 1},
           "checkpoint": {"monitor": f"{tasks[0]['name']}.accuracy" if tasks[0]["kind"] == "classification"
                          else f"{tasks[0]['name']}.miou"}, **extra}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_ok(mtl(binary, tmp, "c.yaml", "--run-dir", "run"))
    return cfg


def mtl_outputs(binary, tmp: Path, x: torch.Tensor) -> dict:
    save_file({"input": x.contiguous()}, str(tmp / "in.safetensors"))
    assert_ok(mtl(binary, tmp, "predict", "run", "--input", "in.safetensors", "--output", "out.safetensors"))
    return load_file(str(tmp / "out.safetensors"))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


@pytest.mark.parametrize("case", sorted(ARCHITECTURES))
def test_exported_models_compute_what_mtl_computes(binary, tmp_path, case):
    import onnx
    import onnxruntime

    cfg = train_case(binary, tmp_path, case)
    assert_ok(mtl(binary, tmp_path, "export", "run", "--torchscript", "model.pt", "--onnx", "model.onnx",
                  *(["--size", f"8x{WIDTH[case]}"] if case in WIDTH else [])))
    names = [t["name"] for t in cfg["tasks"]]
    c = 1 if cfg["data"].get("grayscale") else 3
    h = cfg["data"]["image_size"]
    w = WIDTH.get(case, h)

    extra = {"mtl.json": ""}
    module = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    described = json.loads(extra["mtl.json"])
    assert [t["name"] for t in described["tasks"]] == names
    assert [t["kind"] for t in described["tasks"]] == [t["kind"] for t in cfg["tasks"]]
    assert described["input"]["shape"] == ["N", c, h, w] and len(described["input"]["mean"]) == c

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    assert [i.name for i in session.get_inputs()] == ["input"]
    onnx.checker.check_model(str(tmp_path / "model.onnx"))

    # One held-out batch through mtl; the exported models see it in pieces of other sizes
    # (eval-mode outputs do not depend on the rest of the batch).
    x = torch.randn(9, c, h, w, generator=torch.Generator().manual_seed(11))
    want = mtl_outputs(binary, tmp_path, x)
    # The ONNX model is the PyTorch twin's, which computes in fp32: a bf16 run differs by
    # bf16 rounding there (the TorchScript trace keeps mtl's bf16 casts).
    onnx_tol = 3e-2 if cfg.get("precision") == "bf16" else TOL
    for lo, hi in ((0, 1), (1, 4), (4, 9)):
        part = {k: v[lo:hi] for k, v in want.items()}
        for mode in ("eval", "train"):
            getattr(module, mode)()
            with torch.no_grad():
                got = module(x[lo:hi])
            assert isinstance(got, tuple) and len(got) == len(names), type(got)
            for name, t in zip(names, got):
                assert t.dtype == torch.float32 and t.shape == part[name].shape, (name, t.shape)
                assert rel_err(t, part[name]) <= TOL, (case, hi - lo, mode, name, rel_err(t, part[name]))
        for name, t in zip(names, session.run(None, {"input": x[lo:hi].numpy()})):
            assert rel_err(t, part[name]) <= onnx_tol, (case, hi - lo, "onnx", name, rel_err(t, part[name]))


def test_refusals_write_nothing(binary, tmp_path):
    train_case(binary, tmp_path, "mlp")
    fake = tmp_path / "python-without-onnx"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'onnx'\" >&2\nexit 1\n")
    fake.chmod(0o755)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(mtl(binary, tmp_path, "export", "nowhere", "--torchscript", "m.pt"), "nowhere")
    assert_user_error(mtl(binary, tmp_path, "export", "run"), "--torchscript")
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--torchscript", "no/such/dir/m.pt"), "no/such/dir")
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--torchscript", "m.pt", "--size", "0"), "--size")
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--torchscript", "m.pt", "--size", "16x"), "--size")
    # An MLP takes its training size only.
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--torchscript", "m.pt", "--size", "32"),
                      "--size", "16×16")
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--checkpoint", "worst", "--torchscript", "m.pt"),
                      "worst")
    # A Python without the packages: one line naming it and what to install.
    r = mtl(binary, tmp_path, "export", "run", "--onnx", "m.onnx", "--python", fake)
    assert_user_error(r, "python-without-onnx", "onnx", "pip install")
    r = mtl(binary, tmp_path, "export", "run", "--onnx", "m.onnx", "--python", tmp_path / "no-python")
    assert_user_error(r, "no-python")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_archive_is_a_plain_torchscript_zip(binary, tmp_path):
    train_case(binary, tmp_path, "conv")
    assert_ok(mtl(binary, tmp_path, "export", "run", "--checkpoint", "latest", "--torchscript", "m.pt"))
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        names = z.namelist()
        top = names[0].split("/")[0]
        assert all(n.startswith(top + "/") for n in names)
        assert f"{top}/extra/mtl.json" in names and f"{top}/data.pkl" in names
        assert z.getinfo(f"{top}/extra/mtl.json").compress_type == zipfile.ZIP_STORED
    assert not list(tmp_path.glob("*.tmp"))
    # Loads without asking for the description, and moves to another device like any module.
    module = torch.jit.load(str(tmp_path / "m.pt"), map_location="cpu")
    assert "forward" in module.code


# --- a run on a table (docs/TABLES.md, "Export") ----------------------------------------------

TABLE_TASKS = [{"name": "click", "kind": "binary", "target": "click"},
               {"name": "buy", "kind": "binary", "target": "buy", "given": "click"},
               {"name": "spend", "kind": "value", "target": "spend"},
               {"name": "tier", "kind": "classification", "target": "tier", "classes": 3}]


def write_shop(path: Path, n: int, seed: int):
    """A CSV of raw rows with every case the mapping handles: missing numbers, a 1-d and a
    numeric-looking categorical column, a city only the held-out rows have."""
    rng = np.random.default_rng(seed)
    city = np.array([f"c{c}" for c in rng.integers(0, 6 if seed == 1 else 8, n)])
    device = rng.integers(0, 3, n)
    age = rng.integers(18, 70, n).astype(float)
    age[rng.random(n) < 0.1] = np.nan
    price = rng.normal(10, 3, n).round(2)
    click = (rng.random(n) < 0.5).astype(int)
    buy = click * (rng.random(n) < 0.3)
    spend = (np.nan_to_num(age, nan=40) / 10 + rng.normal(0, 1, n)).round(3)
    tier = rng.integers(0, 3, n)
    cell = lambda v: "" if isinstance(v, float) and np.isnan(v) else str(v)  # noqa: E731
    rows = zip(age, price, city, device, click, buy, spend, tier)
    path.write_text("age,price,city,device,click,buy,spend,tier\n"
                    + "".join(",".join(cell(v) for v in r) + "\n" for r in rows))


def train_table(binary, tmp: Path, architecture: dict = None) -> dict:
    write_shop(tmp / "train.csv", 300, 1)
    write_shop(tmp / "val.csv", 120, 2)
    cfg = {"name": "table", "seed": 5, "device": "cpu", "threads": 1,
           "data": {"dataset": "table", "train": "train.csv", "val": "val.csv", "batch_size": 32,
                    "eval_batch_size": 64, "augment": {"crop_padding": 0, "hflip": False},
                    "features": {"numeric": ["age", "price"],
                                 "categorical": {"city": {"dim": 3}, "device": {"dim": 2}}}},
           "model": {"architecture": architecture or {"kind": "mmoe", "experts": 2},
                     "backbone": {"kind": "mlp", "widths": [8, 6], "norm": "none"}},
           "tasks": TABLE_TASKS, "optim": {"kind": "adamw", "lr": 0.01}, "train": {"epochs": 1, "log_every": 5},
           "checkpoint": {"monitor": "click.auc", "mode": "max"}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_ok(mtl(binary, tmp, "c.yaml", "--run-dir", "run"))
    return cfg


def map_with_description(table: dict, rows: dict) -> np.ndarray:
    """Raw rows (column → CSV cells) → the exported module's input, from the description alone."""
    missing_text = table["rules"]["missing_text"]
    numeric = {n["column"]: n for n in table["numeric"]}
    categorical = {c["column"]: c for c in table["categorical"]}

    def missing(v):
        return v is None or v in missing_text

    def key(v):
        return v  # CSV cells are text: the key as it is

    out = []
    for e in table["row"]:
        values, j = rows[e["column"]], e["entry"]
        if e["is"] == "standardized":
            n = numeric[e["column"]]
            out.append([0.0 if missing(v) else (float(np.float32(v)) - n["mean"][j]) / n["std"][j] for v in values])
        elif e["is"] == "missing":
            out.append([1.0 if missing(v) else 0.0 for v in values])
        else:
            c = categorical[e["column"]]
            out.append([c["oov_index"] if missing(v) else c["vocabulary"].get(key(v), c["oov_index"]) for v in values])
    return np.array(out, dtype=np.float64).T.astype(np.float32)


def predictions(tasks: list, outputs) -> dict:
    """What `predict --table` writes, from the exported module's outputs."""
    columns = {}
    for t, o in zip(tasks, outputs):
        o = np.asarray(o, dtype=np.float64)
        if t["kind"] == "classification":
            p = np.exp(o - o.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            columns[t["name"]], columns[f"{t['name']}_probability"] = p.argmax(1), p.max(1)
        elif t["kind"] == "binary":
            columns[t["name"]] = 1 / (1 + np.exp(-o[:, 0]))
        else:
            columns[t["name"]] = o[:, 0]
    return columns


def test_table_exports_map_raw_rows_from_their_description(binary, tmp_path):
    """A table run exports to TorchScript and ONNX; held-out raw rows mapped with nothing but
    the description (`mtl.json`, in the archive and in the ONNX metadata) give what
    `mtl-train predict --table` gives, to 1e-5."""
    import csv

    import onnx
    import onnxruntime

    cfg = train_table(binary, tmp_path)
    assert_ok(mtl(binary, tmp_path, "export", "run", "--torchscript", "model.pt", "--onnx", "model.onnx"))
    extra = {"mtl.json": ""}
    module = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    described = json.loads(extra["mtl.json"])
    from_onnx = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert dict(json.loads(from_onnx["mtl.json"]), format="") == dict(described, format="")
    table = described["input"]["table"]
    assert table["columns"] == ["age", "price", "city", "device"] and table["hashing"] is False
    assert described["input"]["shape"] == ["N", 2 + 1 + 2]  # age, price, age's indicator, 2 indices
    assert [(t["name"], t["kind"], t["given"]) for t in described["tasks"]] == [
        (t["name"], t["kind"], t.get("given")) for t in cfg["tasks"]]
    assert table["categorical"][1]["vocabulary"].keys() == {"0", "1", "2"}

    with open(tmp_path / "val.csv", newline="") as f:
        records = list(csv.DictReader(f))
    rows = {c: [r[c] for r in records] for c in table["columns"]}
    x = map_with_description(table, rows)
    assert (x[:, 3] == 0).any(), "cities only the held-out rows have are out of vocabulary"

    r = mtl(binary, tmp_path, "predict", "run", "--table", "val.csv", "--out", "p.csv")
    assert_ok(r)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    want = {h: np.array([float(l.split(",")[i]) for l in lines[1:]]) for i, h in enumerate(lines[0].split(","))}
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        scripted = [t.numpy() for t in module(torch.from_numpy(x))]
    for name, outputs in (("torchscript", scripted), ("onnx", session.run(None, {"input": x}))):
        got = predictions(described["tasks"], outputs)
        assert list(got) == list(want)
        for column in want:
            np.testing.assert_allclose(got[column], want[column], rtol=TOL, atol=1e-6, err_msg=f"{name}: {column}")

    before = sorted(p.name for p in tmp_path.iterdir())
    assert_user_error(mtl(binary, tmp_path, "export", "run", "--torchscript", "m.pt", "--size", "4"), "--size", "table")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("architecture", [{"kind": "hps"}, {"kind": "cgc"}, {"kind": "ple"},
                                          {"kind": "dselect_k", "experts": 3}, {"kind": "cross_stitch"}])
def test_every_table_architecture_exports(binary, tmp_path, architecture):
    """The other architectures on rows trace with a free batch dimension: `export` checks the
    file against mtl on a batch size the tracer did not see before keeping it."""
    train_table(binary, tmp_path, architecture)
    r = mtl(binary, tmp_path, "export", "run", "--torchscript", "model.pt")
    assert_ok(r)
    assert "input [N, 5]" in r.stdout and (tmp_path / "model.pt").is_file()
