"""Rust ↔ PyTorch interop: the release `mtl-train` binary against scripts/mtl_torch.py.

Run: .venv/bin/python -m pytest -q tests/test_interop.py
(`scripts/test.sh` builds target/release/mtl-train before pytest runs; this file fails with a
clear message when the binary is missing.)

1. Rust → PyTorch: a tiny run trained by `mtl-train`, then `mtl-train predict` on a seeded
   random batch, compared with `mtl_torch.load_run(...)` in eval mode on the same batch.
2. PyTorch → Rust: a randomly initialised `mtl_torch.build_model(config)` (BN statistics and
   num_batches_tracked perturbed) saved with safetensors, imported with `--init-from`; the
   imported starting point `checkpoints/step-000000` must hold exactly the file's tensors and
   predict what the PyTorch module predicts.
3. `--init-from` refusals (missing heads, wrong shape, wrong dtype) and `--allow-missing-heads`.
4. `predict` refusals (no such run, wrong channel count, no tensor named 'input').

Every refusal: exit code 2, exactly one stderr line starting with `error:`, no panic text.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import mtl_torch  # noqa: E402
from mtl_torch import build_model, load_run, predict  # noqa: E402

BINARY = ROOT / "target" / "release" / "mtl-train"

# Outputs must agree to this relative error. For each head's output tensors a (Rust) and b
# (PyTorch): rel_err = max|a - b| / max(max|b|, 1e-6), i.e. the largest absolute difference
# measured against the largest magnitude of the reference output (a per-tensor scale, so
# logits near zero do not blow the ratio up). Shapes and dtypes must match exactly.
TOL = 1e-4

# Largest relative error seen per test case, printed at the end of the session (pytest -s).
MEASURED: dict = {}


@pytest.fixture(scope="session")
def binary():
    if not BINARY.is_file():
        pytest.fail(
            f"{BINARY} is missing: build it first with "
            f"`source scripts/env.sh && cargo build --release --bins` (scripts/test.sh does this)",
            pytrace=False,
        )
    return BINARY


@pytest.fixture(scope="session", autouse=True)
def _report_errors():
    yield
    if MEASURED:
        print("\nmax relative errors (Rust vs PyTorch):")
        for k, v in MEASURED.items():
            print(f"  {k}: {v:.3e}")


# --- configs ---------------------------------------------------------------------------------


def tiny_config(case: str) -> dict:
    """The tiny config of tests/common/mod.rs (16×16 shapes, 96 train / 40 val images, one
    thread), with the backbone and tasks of each case."""
    cfg = {
        "name": f"interop-{case}",
        "seed": 3,
        "device": "cpu",
        "threads": 1,
        "data": {
            "dataset": "shapes",
            "train_size": 96,
            "val_size": 40,
            "image_size": 16,
            "batch_size": 16,
            "eval_batch_size": 20,
            "augment": {"crop_padding": 2, "hflip": True},
        },
        "model": {
            "backbone": {"kind": "conv", "widths": [4, 8], "depth": 1},
            "heads": {"kind": {"hidden": 8, "dropout": 0.1}},
        },
        "tasks": [
            {"name": "kind", "kind": "classification", "target": "kind", "classes": 10,
             "label_smoothing": 0.1},
            {"name": "seg", "kind": "segmentation", "target": "mask", "classes": 11},
        ],
        "optim": {"kind": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_steps": 3},
        "train": {"epochs": 2, "eval_every": 1, "log_every": 2},
        "checkpoint": {"every": 1, "keep_last": 5, "monitor": "seg.miou"},
    }
    if case == "conv":
        pass
    elif case == "resnet":
        cfg["model"]["backbone"] = {"kind": "resnet", "widths": [4], "depth": 1}
    elif case == "mlp":
        cfg["data"]["grayscale"] = True
        cfg["data"]["augment"] = {"crop_padding": 0, "hflip": False}
        cfg["model"]["backbone"] = {"kind": "mlp", "widths": [32], "norm": "none"}
        cfg["model"]["heads"] = {"kind": {"hidden": 8, "dropout": 0.1}, "count": {"hidden": 0}}
        cfg["tasks"] = [
            {"name": "kind", "kind": "classification", "target": "kind", "classes": 10},
            {"name": "count", "kind": "classification", "target": "count", "classes": 3},
        ]
        cfg["checkpoint"]["monitor"] = "kind.accuracy"
    else:
        raise ValueError(case)
    return cfg


# One config per backbone (make_config builds each); test_every_backbone_has_a_case keeps the
# list in step with the binary's registry.
CASES = ["conv", "resnet", "mlp"]
# The torchvision ResNets, whose cases (with torchvision as the reference) are in
# tests/test_pretrained.py.
TORCHVISION_CASES = ["resnet18", "resnet34", "resnet50", "resnet101"]


def test_every_backbone_has_a_case(binary):
    assert CASES + TORCHVISION_CASES == mtl_torch.catalog(str(binary))["backbones"]


def write_config(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


# --- running the binary ----------------------------------------------------------------------


def mtl(binary, cwd: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, RUST_LOG="warn")
    return subprocess.run([str(binary), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)  # a hang guard, not a timing check


def describe(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout:\n{r.stdout[-3000:]}\n--- stderr:\n{r.stderr[-3000:]}"


def assert_ok(r: subprocess.CompletedProcess):
    assert r.returncode == 0, describe(r)
    assert "panicked" not in r.stderr, describe(r)


def assert_user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one `error:` line on stderr holding every needle, no panic. Returns
    the error line."""
    assert r.returncode == 2, describe(r)
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, f"expected exactly one error line\n{describe(r)}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in: {lines[0]}"
    assert "panicked" not in r.stderr and "RUST_BACKTRACE" not in r.stderr, describe(r)
    return lines[0]


def train(binary, tmp_path: Path, cfg: dict, run_name: str = "run", *extra) -> Path:
    config = write_config(tmp_path, cfg)
    r = mtl(binary, tmp_path, config, "--run-dir", run_name, *extra)
    assert_ok(r)
    return tmp_path / run_name


def rust_predict(binary, tmp_path: Path, target, x: torch.Tensor, *extra) -> dict:
    inp = tmp_path / "in.safetensors"
    out = tmp_path / "rust_out.safetensors"
    save_file({"input": x.contiguous()}, str(inp))
    if out.exists():
        out.unlink()
    assert_ok(mtl(binary, tmp_path, "predict", target, *extra, "--input", inp, "--output", out))
    return load_file(str(out))


def random_batch(cfg: dict, n: int = 5, seed: int = 0) -> torch.Tensor:
    c, h, w = mtl_torch.input_shape(cfg)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max(max|b|, 1e-6) (see TOL)."""
    scale = max(b.abs().max().item(), 1e-6)
    return (a.double() - b.double()).abs().max().item() / scale


def compare(rust: dict, torch_out: dict, cfg: dict, label: str) -> float:
    names = [t["name"] for t in cfg["tasks"]]
    assert sorted(rust) == sorted(names), f"Rust wrote {sorted(rust)}, tasks are {names}"
    assert sorted(torch_out) == sorted(names)
    worst = 0.0
    for name in names:
        a, b = rust[name], torch_out[name]
        assert a.dtype == b.dtype == torch.float32, (name, a.dtype, b.dtype)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.isfinite(a).all(), name
        e = rel_err(a, b)
        assert e <= TOL, f"{label}: head {name!r}: relative error {e:.3e} > {TOL}"
        worst = max(worst, e)
    MEASURED[label] = max(MEASURED.get(label, 0.0), worst)
    return worst


def random_torch_model(cfg: dict, seed: int = 11):
    """A freshly initialised PyTorch model with perturbed BN state, so that the Rust side's
    defaults (mean 0, var 1, weight 1, bias 0, count 0) cannot pass by accident."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for i, m in enumerate(model.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.3)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.num_batches_tracked.fill_(17 + i)
    return model.eval()


def state_dict_of(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --- 1. Rust → PyTorch -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_rust_run_predicts_like_pytorch(binary, tmp_path, case):
    cfg = tiny_config(case)
    run = train(binary, tmp_path, cfg)
    x = random_batch(cfg, n=5, seed=1)
    # Both pointers for the conv case (BEST and LATEST may name different checkpoints).
    for which in ("best", "latest") if case == "conv" else ("best",):
        rust = rust_predict(binary, tmp_path, run, x, "--checkpoint", which)
        model = load_run(run, which.upper())
        assert not model.training
        # The run's trained BN statistics are in use (not the defaults of a fresh module).
        if case != "mlp":
            bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            assert bn and all(int(m.num_batches_tracked) > 0 for m in bn)
        with torch.no_grad():
            want = model(x)
        compare(rust, want, cfg, f"rust->torch {case}")
        if case != "mlp":
            # Control: a train-mode forward (batch statistics) is told apart at this tolerance,
            # so the agreement above says that Rust ran in eval mode with the running stats.
            with torch.no_grad():
                train_mode = model.train()(x)
            assert rel_err(rust["seg"], train_mode["seg"]) > 100 * TOL
    # The script's own CLI (as a user would call it) gives the same outputs on the real run.
    out = tmp_path / "py_out.safetensors"
    assert mtl_torch.main([str(run), "--input", str(tmp_path / "in.safetensors"),
                           "--output", str(out), "--checkpoint", which.upper()]) == 0
    compare(rust, load_file(str(out)), cfg, f"rust->torch-cli {case}")


# --- 2. PyTorch → Rust -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_init_from_pytorch_weights(binary, tmp_path, case):
    cfg = tiny_config(case)
    model = random_torch_model(cfg)
    sd = state_dict_of(model)
    weights = tmp_path / "w.safetensors"
    save_file(sd, str(weights))

    run = train(binary, tmp_path, cfg, "run", "--init-from", weights, "--set", "train.max_steps=1")
    ckpt = run / "checkpoints" / "step-000000"
    assert (ckpt / "model.safetensors").is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())

    # The imported starting point holds exactly the file's tensors.
    got = load_file(str(ckpt / "model.safetensors"))
    assert set(got) == set(sd), (set(got) ^ set(sd))
    for k, v in sd.items():
        assert got[k].dtype == v.dtype, (k, got[k].dtype, v.dtype)
        assert got[k].shape == v.shape, (k, got[k].shape, v.shape)
        assert torch.equal(got[k], v), k
    if case != "mlp":
        assert any(k.endswith("num_batches_tracked") for k in sd)

    # Rust predicts from it what the PyTorch module predicts (eval mode).
    x = random_batch(cfg, n=4, seed=2)
    rust = rust_predict(binary, tmp_path, ckpt, x)
    compare(rust, predict(model, x), cfg, f"torch->rust {case}")

    # One training step happened after the import, and the trained checkpoint differs.
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    assert latest == "step-000001", latest
    trained = load_file(str(run / "checkpoints" / latest / "model.safetensors"))
    assert any(not torch.equal(trained[k], sd[k]) for k in sd)


# --- Per-domain BatchNorm (tasks with their own data) -----------------------------------------


def domains_config(choice: str) -> dict:
    """The conv case with the segmentation task on shapes of its own (another group seed, fewer
    images): two data groups, BatchNorm in the backbone and in the decoder."""
    cfg = tiny_config("conv")
    cfg["name"] = f"interop-domains-{choice}"
    cfg["tasks"][1]["data"] = {"train_size": 64}
    cfg["model"]["domain_norm"] = choice
    cfg["train"]["epochs"] = 1
    return cfg


@pytest.mark.parametrize("choice", ["statistics", "affine"])
def test_per_domain_batchnorm_both_ways(binary, tmp_path, choice):
    cfg = domains_config(choice)
    # Rust → PyTorch: the run's state loads strict, and each task's outputs come from its own
    # group's statistics in both.
    run = train(binary, tmp_path, cfg)
    x = random_batch(cfg, n=5, seed=1)
    rust = rust_predict(binary, tmp_path, run, x)
    model = load_run(run)
    assert mtl_torch.data_groups(model.config) == [0, 1]
    sd = model.state_dict()
    bn = "backbone.stages.0.0.bn"
    assert f"{bn}.domains.1.running_mean" in sd and f"{bn}.running_mean" not in sd
    assert (f"{bn}.domains.1.weight" in sd) == (choice == "affine") != (f"{bn}.weight" in sd)
    assert not torch.equal(sd[f"{bn}.domains.0.running_mean"], sd[f"{bn}.domains.1.running_mean"])
    with torch.no_grad():
        want = model(x)
        # Control: the other group's statistics give other outputs at this tolerance.
        other = model(x, domain=0)
    compare(rust, want, cfg, f"rust->torch domains {choice}")
    assert rel_err(rust["seg"], other["seg"]) > 100 * TOL

    # PyTorch → Rust: perturbed per-group state imported with --init-from predicts alike.
    torch.manual_seed(5)
    fresh = build_model(cfg)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, t in fresh.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)
            elif name.endswith(("running_var", "weight")) and ".bn" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    weights = tmp_path / "w.safetensors"
    save_file(state_dict_of(fresh), str(weights))
    imported = train(binary, tmp_path, cfg, "imported", "--init-from", weights, "--set", "train.max_steps=1")
    rust = rust_predict(binary, tmp_path, imported / "checkpoints" / "step-000000", x)
    compare(rust, predict(fresh, x), cfg, f"torch->rust domains {choice}")


# --- 3. --init-from refusals -----------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_weights():
    cfg = tiny_config("conv")
    return cfg, state_dict_of(random_torch_model(cfg, seed=5))


def init_from(binary, tmp_path, cfg, tensors: dict, name: str, *extra):
    weights = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights))
    config = write_config(tmp_path, cfg)
    return mtl(binary, tmp_path, config, "--run-dir", f"run-{name}", "--init-from", weights,
               "--set", "train.max_steps=1", *extra)


def test_init_from_missing_heads(binary, tmp_path, conv_weights):
    cfg, sd = conv_weights
    no_heads = {k: v for k, v in sd.items() if not k.startswith("heads.")}
    removed = set(sd) - set(no_heads)
    assert removed

    r = init_from(binary, tmp_path, cfg, no_heads, "noheads")
    line = assert_user_error(r, "missing 'heads.", "noheads.safetensors")
    named = re.findall(r"missing '([^']+)'", line)
    assert named and all(k in removed for k in named), line
    assert not (tmp_path / "run-noheads" / "checkpoints" / "step-000000").exists()

    r = init_from(binary, tmp_path, cfg, no_heads, "noheads2", "--allow-missing-heads")
    assert_ok(r)
    got = load_file(str(tmp_path / "run-noheads2" / "checkpoints" / "step-000000" / "model.safetensors"))
    assert set(got) == set(sd)
    for k, v in no_heads.items():
        assert torch.equal(got[k], v), k

    # --allow-missing-heads does not excuse a missing backbone tensor.
    key = "backbone.stages.1.0.bn.running_var"
    partial = {k: v for k, v in no_heads.items() if k != key}
    r = init_from(binary, tmp_path, cfg, partial, "nobackbone", "--allow-missing-heads")
    assert_user_error(r, f"missing '{key}'")


def test_init_from_wrong_shape(binary, tmp_path, conv_weights):
    cfg, sd = conv_weights
    key = "backbone.stages.0.0.conv.weight"
    bad = dict(sd)
    want = list(sd[key].shape)
    assert want == [4, 3, 3, 3]
    bad[key] = torch.randn(4, 3, 5, 5)
    r = init_from(binary, tmp_path, cfg, bad, "shape")
    assert_user_error(r, key, "[4, 3, 5, 5]", "[4, 3, 3, 3]")

    # A head sized for another number of classes.
    key = "heads.kind.fc.weight"
    bad = dict(sd)
    bad[key] = torch.randn(7, sd[key].shape[1])
    r = init_from(binary, tmp_path, cfg, bad, "classes")
    assert_user_error(r, key, f"[7, {sd[key].shape[1]}]", str(list(sd[key].shape)))


def test_init_from_wrong_dtype(binary, tmp_path, conv_weights):
    cfg, sd = conv_weights
    key = "backbone.stages.0.0.conv.weight"
    bad = dict(sd)
    bad[key] = sd[key].double()
    r = init_from(binary, tmp_path, cfg, bad, "dtype")
    assert_user_error(r, key, "dtype")

    # Every float tensor in float64 (a model saved after .double()): still one error line.
    all64 = {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}
    r = init_from(binary, tmp_path, cfg, all64, "dtype-all")
    line = assert_user_error(r, "dtype")
    named = re.findall(r"'([^']+)' has dtype", line)
    assert named and all(k in sd and sd[k].is_floating_point() for k in named), line


def test_init_from_unexpected_and_missing_file(binary, tmp_path, conv_weights):
    cfg, sd = conv_weights
    extra = dict(sd)
    extra["heads.other.fc.weight"] = torch.zeros(2, 2)
    r = init_from(binary, tmp_path, cfg, extra, "extra")
    assert_user_error(r, "heads.other.fc.weight")

    config = write_config(tmp_path, cfg)
    r = mtl(binary, tmp_path, config, "--run-dir", "run-nofile", "--init-from", "absent.safetensors")
    assert_user_error(r, "absent.safetensors")


# --- 4. predict refusals ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_checkpoint(tmp_path_factory):
    """A checkpoint directory written from PyTorch (model.safetensors + config.yaml): all that
    `predict` needs, without a training run."""
    tmp = tmp_path_factory.mktemp("predict-errors")
    cfg = tiny_config("conv")
    ckpt = tmp / "ckpt"
    ckpt.mkdir()
    write_config(ckpt, cfg)
    save_file(state_dict_of(random_torch_model(cfg, seed=7)), str(ckpt / "model.safetensors"))
    return tmp, ckpt


def test_predict_no_such_run(binary, tmp_path):
    inp = tmp_path / "in.safetensors"
    save_file({"input": torch.zeros(2, 3, 16, 16)}, str(inp))
    r = mtl(binary, tmp_path, "predict", "no-such-run", "--input", inp, "--output", tmp_path / "o.safetensors")
    assert_user_error(r, "no-such-run")
    assert not (tmp_path / "o.safetensors").exists()


def test_predict_bad_input(binary, conv_checkpoint):
    tmp, run = conv_checkpoint
    out = tmp / "o.safetensors"

    def go(tensors: dict, name: str):
        inp = tmp / f"{name}.safetensors"
        save_file(tensors, str(inp))
        return mtl(binary, tmp, "predict", run, "--input", inp, "--output", out)

    # One channel for a three-channel model.
    assert_user_error(go({"input": torch.zeros(2, 1, 16, 16)}, "gray"), "'input'", "[2, 1, 16, 16]")
    # Not NCHW.
    assert_user_error(go({"input": torch.zeros(3, 16, 16)}, "chw"), "'input'")
    # Several tensors, none named 'input'.
    assert_user_error(go({"x": torch.zeros(2, 3, 16, 16), "y": torch.zeros(1)}, "noname"), "'input'")
    # The same call with a good input works (so the refusals above are about the input).
    assert_ok(go({"input": torch.zeros(2, 3, 16, 16)}, "good"))
    assert out.is_file()
    out.unlink()
    # The input file itself is missing.
    r = mtl(binary, tmp, "predict", run, "--input", tmp / "absent.safetensors", "--output", out)
    assert_user_error(r, "absent.safetensors")
    assert not out.exists()
