"""Every architecture × backbone through the release `mtl-train` binary and scripts/mtl_torch.py.

Run: .venv/bin/python -m pytest -q tests/test_architectures.py (needs target/release/mtl-train)

For each architecture and each backbone it accepts, on three tasks:
1. PyTorch → mtl: `mtl_torch.build_model` with perturbed weights (BatchNorm statistics,
   cross-stitch units, LTB branch logits: so that no initial value passes by accident) saved
   with safetensors and imported with `--init-from`; `mtl-train predict --input/--output` on
   the imported checkpoint equals the PyTorch module's eval-mode outputs.
2. mtl → PyTorch: the same run trained two steps; `mtl_torch.load_run` (strict load) predicts
   what `mtl-train predict` predicts from the trained checkpoint.
Both within a relative error of 1e-5; the largest error per case is printed with `pytest -s`
(0 means bit-identical). The run's config.yaml records every option, and they are the
defaults `mtl-train list --json` reports (which mtl_torch.py fills hand-written configs with).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_interop import (  # noqa: E402, F401  (helpers and the `binary` fixture)
    BINARY,
    binary,
    mtl,
    random_batch,
    random_torch_model,
    rust_predict,
    state_dict_of,
    train,
)
import mtl_torch  # noqa: E402
from mtl_torch import catalog, load_run, predict  # noqa: E402

TOL = 1e-5
MEASURED: dict = {}

# Every architecture with every backbone it accepts, from the binary's registries (none
# without the binary: then test_the_binary_lists_architectures fails, naming it).
ARCHITECTURES = {a["name"]: a for a in (catalog(str(BINARY))["architectures"] if BINARY.is_file() else [])}
# The torchvision ResNets are full size in the twin (torchvision's widths): every architecture
# runs on them in src/model/arch/tests.rs, and their twin is checked in tests/test_pretrained.py.
SMALL_BACKBONES = ("conv", "resnet", "mlp")
CASES = [(a, b) for a, entry in ARCHITECTURES.items() for b in entry["backbones"] if b in SMALL_BACKBONES]
MAPS_ONLY = sorted(a for a, entry in ARCHITECTURES.items() if "mlp" not in entry["backbones"])


def test_the_binary_lists_architectures(binary):
    names = [a["name"] for a in catalog(str(binary))["architectures"]]
    assert names[0] == "hps" and len(names) == len(set(names)) >= 8
    assert set(names) == set(mtl_torch.ARCHITECTURES), "every architecture has its PyTorch twin"
    assert {"mtan", "ltb"} <= set(MAPS_ONLY)


def arch_config(arch: str, backbone: str) -> dict:
    """Three tasks on 16×16 shapes, a three-stage backbone (so PLE has a shared gate and LTB
    an ancestor below the leaf's parent), small enough to train two steps in a second."""
    cfg = {
        "name": f"arch-{arch}-{backbone}",
        "seed": 4,
        "device": "cpu",
        "threads": 1,
        "data": {"dataset": "shapes", "train_size": 48, "val_size": 16, "image_size": 16,
                 "batch_size": 16, "eval_batch_size": 16},
        "model": {"architecture": {"kind": arch}, "backbone": {"kind": "conv", "widths": [4, 6, 8], "depth": 2},
                  "heads": {"kind": {"hidden": 5}}},
        "tasks": [
            {"name": "kind", "kind": "classification", "target": "kind", "classes": 10},
            {"name": "seg", "kind": "segmentation", "target": "mask", "classes": 11},
            {"name": "color", "kind": "classification", "target": "color", "classes": 6},
        ],
        "optim": {"kind": "adamw", "lr": 0.01},
        "train": {"epochs": 1, "log_every": 1},
    }
    if backbone == "resnet":
        cfg["model"]["backbone"] = {"kind": "resnet", "widths": [4, 6, 8], "depth": 1}
    elif backbone == "mlp":
        cfg["data"]["grayscale"] = True
        cfg["model"]["backbone"] = {"kind": "mlp", "widths": [16, 12, 10], "norm": "none"}
        cfg["tasks"][1] = {"name": "seg", "kind": "classification", "target": "count", "classes": 3}
    return cfg


def perturbed_model(cfg: dict):
    model = random_torch_model(cfg)
    g = torch.Generator().manual_seed(23)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("stitch.", "branches.")):
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(b.abs().max().item(), 1e-6)
    return (a.double() - b.double()).abs().max().item() / scale


def compare(rust: dict, want: dict, label: str):
    assert sorted(rust) == sorted(want)
    worst = 0.0
    for name, b in want.items():
        a = rust[name]
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, (name, a.shape, b.shape)
        assert torch.isfinite(a).all(), name
        e = rel_err(a, b)
        assert e <= TOL, f"{label}: head {name!r}: relative error {e:.3e} > {TOL}"
        worst = max(worst, e)
    MEASURED[label] = worst


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MEASURED:
        print("\nmax relative errors, mtl vs PyTorch (0: bit-identical):")
        for k, v in MEASURED.items():
            print(f"  {k}: {v:.3e}")


@pytest.mark.parametrize("arch,backbone", CASES)
def test_architecture_matches_pytorch_both_ways(binary, tmp_path, capsys, arch, backbone):
    cfg = arch_config(arch, backbone)
    model = perturbed_model(cfg)
    weights = tmp_path / "w.safetensors"
    save_file(state_dict_of(model), str(weights))
    run = train(binary, tmp_path, cfg, "run", "--init-from", weights, "--set", "train.max_steps=2")
    x = random_batch(cfg, n=5, seed=1)

    rust = rust_predict(binary, tmp_path, run / "checkpoints" / "step-000000", x)
    compare(rust, predict(model, x), f"torch->mtl {arch} {backbone}")

    trained = load_run(run, "LATEST")
    rust = rust_predict(binary, tmp_path, run, x, "--checkpoint", "latest")
    compare(rust, predict(trained, x), f"mtl->torch {arch} {backbone}")
    assert any(not torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())

    if arch == "ltb":
        # The fixed tree of the trained checkpoint, as --check prints it.
        capsys.readouterr()
        assert mtl_torch.main([str(run), "--checkpoint", "LATEST", "--check"]) == 0
        tree = [line for line in capsys.readouterr().out.splitlines() if "tree: stage" in line]
        assert tree == [f"  tree: stage {i} parents {p}" for i, p in enumerate(trained.tree(), start=1)]
        assert len(tree) == 2 and all(0 <= int(n) < 3 for line in tree for n in re.findall(r"\d+", line.split("parents")[1]))
    recorded = dict(yaml.safe_load((run / "config.yaml").read_text())["model"].get("architecture") or {"kind": "hps"})
    assert recorded.pop("kind") == arch
    defaults = ARCHITECTURES[arch]["options"]
    assert {k: float(v) for k, v in recorded.items()} == {k: float(v) for k, v in defaults.items()}


@pytest.mark.parametrize("arch", MAPS_ONLY)
def test_maps_only_architectures_refuse_the_mlp(binary, tmp_path, arch):
    cfg = arch_config(arch, "mlp")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = mtl(binary, tmp_path, config)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{arch} needs a conv or resnet backbone" in errors[0], r.stderr
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError):
        perturbed_model(cfg)


def test_glyph_digits_feed_the_multimnist_config(binary, tmp_path):
    """scripts/make_glyph_digits.py writes MNIST's idx format, the same files for the same
    seed, ten told-apart classes; configs/multimnist_glyphs.yaml trains on them."""
    import struct

    import numpy as np

    import make_glyph_digits as glyphs

    out = tmp_path / "glyphs"
    glyphs.write(out, 60, 30, seed=0)
    raw = (out / "train-images-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\0\0\x08\x03" and struct.unpack(">III", raw[4:16]) == (60, 28, 28)
    labels = (out / "train-labels-idx1-ubyte").read_bytes()
    assert labels[:8] == b"\0\0\x08\x01" + struct.pack(">I", 60) and max(labels[8:]) <= 9
    images, classes = glyphs.make(200, 5)
    again, _ = glyphs.make(200, 5)
    assert np.array_equal(images, again) and images.dtype == np.uint8 and images.max() == 255
    means = np.stack([images[classes == c].mean(0) for c in range(10)])
    gaps = [np.abs(means[a] - means[b]).mean() for a in range(10) for b in range(a + 1, 10)]
    assert min(gaps) > 5, "two digit classes look alike on average"
    r = mtl(binary, tmp_path, Path(__file__).resolve().parents[1] / "configs" / "multimnist_glyphs.yaml",
            "--run-dir", "run", "--device", "cpu", "--set", f"data.root={out}", "--set", "data.train_size=60",
            "--set", "train.epochs=1", "--set", "data.eval_batch_size=30", "--set", "model.architecture.kind=ple")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "LATEST").is_file()
