"""torchvision ResNets with `pretrained: PATH` against torchvision itself.

Run: .venv/bin/python -m pytest -q tests/test_pretrained.py   (needs target/release/mtl-train)

For resnet18, resnet50 and a dilated resnet50 (replace_stride_with_dilation=[False, True, True],
`output_stride: 8`): a torchvision model with random weights of ours (BatchNorm statistics
perturbed, so evaluation mode matters) is saved by `torch.save(m.state_dict())` and named as
`model.backbone.pretrained`. Then

1. the imported weights land bit-identical in checkpoint `step-000000` (through the one key
   table, `model::torchvision::KEY_TABLE`, read from `mtl-train list --json`);
2. the run's config.yaml records the ImageNet normalization (`data.normalization`);
3. `mtl_torch.load_run` loads `step-000000` strictly into the twin, whose backbone *is*
   torchvision's module tree, and its backbone maps equal torchvision's own
   (IntermediateLayerGetter over layer1..layer4) on our batch;
4. `mtl-train predict` on that checkpoint equals the twin's outputs: a classification head
   (global pooling of layer4) and a U-Net segmentation head (reading all four layers), so
   every stage of mtl's backbone is compared, max relative error ≤ 1e-5; in the dilated case
   the segmentation head is DeepLabV3's ASPP (`kind: aspp`), which the twin builds from
   torchvision's own `torchvision.models.segmentation.deeplabv3.ASPP`.

Kept small: 32×32 images, batch 2, one training step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

torchvision = pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

import mtl_torch  # noqa: E402
from test_interop import BINARY, assert_ok, assert_user_error, mtl, rel_err, rust_predict, write_config  # noqa: E402

TOL = 1e-5
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

CASES = {
    "resnet18": ("resnet18", 32),
    "resnet50": ("resnet50", 32),
    "resnet50_os8": ("resnet50", 8),
}


@pytest.fixture(scope="module")
def binary():
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build --release --bins`", pytrace=False)
    return BINARY


def random_torchvision(kind: str, output_stride: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    dilate = {32: None, 16: [False, False, True], 8: [False, True, True]}[output_stride]
    m = getattr(torchvision.models, kind)(weights=None, replace_stride_with_dilation=dilate)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.num_batches_tracked.fill_(seed)
    return m.eval()


def config(kind: str, output_stride: int, weights: Path) -> dict:
    # The dilated case decodes with DeepLabV3's ASPP head (LibMTL's NYUv2 setting).
    heads = {"seg": {"kind": "aspp"}} if output_stride == 8 else {}
    return {
        "name": f"pretrained-{kind}",
        "seed": 1,
        "device": "cpu",
        "threads": 1,
        "data": {"dataset": "shapes", "train_size": 4, "val_size": 2, "image_size": 32,
                 "batch_size": 2, "eval_batch_size": 2},
        "model": {"backbone": {"kind": kind, "output_stride": output_stride, "pretrained": str(weights)},
                  "heads": heads},
        "tasks": [
            {"name": "kind", "kind": "classification", "target": "kind", "classes": 10},
            {"name": "seg", "kind": "segmentation", "target": "mask", "classes": 11},
        ],
        "optim": {"kind": "sgd", "lr": 0.01},
        "train": {"epochs": 1, "max_steps": 1},
    }


@pytest.mark.parametrize("case", list(CASES))
def test_torchvision_weights_load_exactly_and_compute_as_torchvision(binary, tmp_path, case):
    kind, output_stride = CASES[case]
    tv = random_torchvision(kind, output_stride, seed=7)
    weights = tmp_path / f"{kind}-random.pth"
    torch.save(tv.state_dict(), weights)
    cfg = config(kind, output_stride, weights)
    assert_ok(mtl(binary, tmp_path, write_config(tmp_path, cfg), "--run-dir", "run"))
    step0 = tmp_path / "run" / "checkpoints" / "step-000000"

    # 1. bit-identical import, through the key table.
    table = mtl_torch.torchvision_key_table(str(binary))
    saved = load_file(str(step0 / "model.safetensors"))
    backbone = {k[len("backbone."):]: v for k, v in saved.items() if k.startswith("backbone.")}
    want = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert sorted(mtl_torch.to_torchvision_key(k, table) for k in backbone) == sorted(want)
    for name, value in backbone.items():
        ref = want[mtl_torch.to_torchvision_key(name, table)]
        assert value.dtype == ref.dtype and torch.equal(value, ref), name

    # 2. the normalization follows the weights.
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["data"]["normalization"] == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    # 3. the twin loads the checkpoint strictly; its backbone maps are torchvision's.
    twin = mtl_torch.load_run(step0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    getter = torchvision.models._utils.IntermediateLayerGetter(
        tv, {f"layer{k}": str(k) for k in range(1, 5)})
    with torch.no_grad():
        ours = twin.features(x)
        theirs = list(getter(x).values())
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in theirs]
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) <= TOL

    # 4. mtl-train predict equals the twin: a U-Net head reads every stage; the dilated case's
    # ASPP head is torchvision's own ASPP module in the twin.
    if output_stride == 8:
        from torchvision.models.segmentation.deeplabv3 import ASPP
        assert isinstance(twin.heads["seg"].aspp, ASPP)
    rust = rust_predict(binary, tmp_path, step0, x)
    torch_out = mtl_torch.predict(twin, x)
    for name in ("kind", "seg"):
        assert rust[name].shape == torch_out[name].shape, name
        err = rel_err(rust[name], torch_out[name])
        print(f"{case} {name}: max relative error {err:.2e}")
        assert err <= TOL, f"{case} {name}: {err}"


def test_a_file_for_another_depth_is_refused_in_one_line(binary, tmp_path):
    weights = tmp_path / "r18.pth"
    torch.save(random_torchvision("resnet18", 32, seed=1).state_dict(), weights)
    cfg = config("resnet50", 32, weights)
    r = mtl(binary, tmp_path, write_config(tmp_path, cfg), "--run-dir", "run")
    assert_user_error(r, "holds resnet18 weights", "model.backbone.kind is resnet50")
    assert not (tmp_path / "run").exists()
