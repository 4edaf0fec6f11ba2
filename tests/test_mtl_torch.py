"""Tests of scripts/mtl_torch.py, the PyTorch twin of the Rust model.

Run: .venv/bin/python -m pytest -q tests/test_mtl_torch.py

The key names and the forward pass are checked against the naming rules of src/model and an
independent functional re-implementation written from the state dict alone. A cross-language
check only needs `make_run` (a run directory laid out as the Rust trainer writes it) plus the
Rust `mtl-train predict` output on the same `input` tensor, compared with `run_cli`'s.
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import mtl_torch  # noqa: E402
from mtl_torch import build_model, load_run, predict, resolve_checkpoint  # noqa: E402

BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def make_config(kind="conv", widths=(4, 8, 16), depth=1, norm="batch", activation="relu",
                image_size=12, grayscale=False, tasks=None, heads=None):
    """A config dict shaped like the serde serialisation of `Config` (fields the model does
    not read included, as a real run's config.yaml has them)."""
    if tasks is None:
        tasks = [
            {"name": "shape", "kind": "classification", "target": "shape", "classes": 3},
            {"name": "segment", "kind": "segmentation", "target": "mask", "classes": 4},
        ]
    full_tasks = [
        dict({"weight": 1.0, "label_smoothing": 0.0, "ignore_index": 255}, **t) for t in tasks
    ]
    return {
        "name": "test",
        "seed": 0,
        "device": "cpu",
        "precision": "fp32",
        "threads": 0,
        "data": {"dataset": "shapes", "root": None, "train_size": 8, "val_size": 8,
                 "image_size": image_size, "grayscale": grayscale, "batch_size": 4,
                 "eval_batch_size": 4, "augment": {"crop_padding": 0, "hflip": False}},
        "model": {
            "backbone": {"kind": kind, "widths": list(widths), "depth": depth, "norm": norm,
                         "activation": activation},
            "heads": heads if heads is not None else {},
        },
        "tasks": full_tasks,
    }


def yaml_roundtrip(cfg):
    return yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False))


# --- expected key sets, written from the naming rules -------------------------------------


def bn_keys(prefix):
    return {f"{prefix}.{t}" for t in BN_TENSORS}


def conv_block_keys(prefix, bn):
    keys = {f"{prefix}.conv.weight"}
    return keys | (bn_keys(f"{prefix}.bn") if bn else {f"{prefix}.conv.bias"})


def expected_keys(cfg):
    bb = cfg["model"]["backbone"]
    bn = bb["norm"] == "batch"
    keys = set()
    if bb["kind"] == "conv":
        channels = list(bb["widths"])
        for i in range(len(channels)):
            for j in range(bb["depth"]):
                keys |= conv_block_keys(f"backbone.stages.{i}.{j}", bn)
    elif bb["kind"] == "resnet":
        w = bb["widths"]
        channels = [w[0], 2 * w[0], 4 * w[0], 8 * w[0]] if len(w) == 1 else list(w)
        keys |= {"backbone.stem.conv.weight"} | bn_keys("backbone.stem.bn")
        c = channels[0]
        for i, width in enumerate(channels):
            for j in range(bb["depth"]):
                p = f"backbone.layers.{i}.{j}"
                keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
                keys |= bn_keys(f"{p}.bn1") | bn_keys(f"{p}.bn2")
                stride = 2 if i > 0 and j == 0 else 1
                if stride != 1 or c != width:
                    keys |= {f"{p}.shortcut.conv.weight"} | bn_keys(f"{p}.shortcut.bn")
                c = width
    else:
        channels = [bb["widths"][-1]]
        for i in range(len(bb["widths"])):
            keys |= {f"backbone.layers.{i}.weight", f"backbone.layers.{i}.bias"}
    for t in cfg["tasks"]:
        p = f"heads.{t['name']}"
        hc = cfg["model"]["heads"].get(t["name"], {})
        if t["kind"] == "classification":
            if hc.get("hidden", 0) > 0:
                keys |= {f"{p}.hidden.weight", f"{p}.hidden.bias"}
            keys |= {f"{p}.fc.weight", f"{p}.fc.bias"}
        else:
            for k in range(len(channels) - 1):
                keys |= conv_block_keys(f"{p}.decoder.{k}", bn)
            keys |= {f"{p}.classifier.weight", f"{p}.classifier.bias"}
    return keys


# --- an independent functional forward from the state dict -------------------------------


def act_fn(name):
    return {"relu": F.relu, "gelu": lambda x: F.gelu(x, approximate="none"), "silu": F.silu}[name]


def ref_forward(cfg, sd, x):
    """Eval-mode forward using only `sd` and torch.nn.functional."""
    bb = cfg["model"]["backbone"]
    act = act_fn(bb["activation"])

    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"],
                            sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.1, 1e-5)

    def cba(h, p):
        h = F.conv2d(h, sd[f"{p}.conv.weight"], sd.get(f"{p}.conv.bias"), padding=1)
        return act(bn(h, f"{p}.bn") if f"{p}.bn.weight" in sd else h)

    feats = []
    if bb["kind"] == "conv":
        h = x
        for i in range(len(bb["widths"])):
            if i > 0:
                h = F.max_pool2d(h, 2)
            for j in range(bb["depth"]):
                h = cba(h, f"backbone.stages.{i}.{j}")
            feats.append(h)
    elif bb["kind"] == "resnet":
        h = act(bn(F.conv2d(x, sd["backbone.stem.conv.weight"], padding=1), "backbone.stem.bn"))
        i = 0
        while f"backbone.layers.{i}.0.conv1.weight" in sd:
            for j in range(bb["depth"]):
                p = f"backbone.layers.{i}.{j}"
                s = 2 if i > 0 and j == 0 else 1
                y = act(bn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn1"))
                y = bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                if f"{p}.shortcut.conv.weight" in sd:
                    skip = bn(F.conv2d(h, sd[f"{p}.shortcut.conv.weight"], stride=s),
                              f"{p}.shortcut.bn")
                else:
                    skip = h
                h = act(y + skip)
            feats.append(h)
            i += 1
    else:
        h = x.reshape(x.shape[0], -1)
        for i in range(len(bb["widths"])):
            h = act(F.linear(h, sd[f"backbone.layers.{i}.weight"], sd[f"backbone.layers.{i}.bias"]))
        feats.append(h)

    out = {}
    for t in cfg["tasks"]:
        p = f"heads.{t['name']}"
        if t["kind"] == "classification":
            pool = (cfg["model"]["heads"].get(t["name"]) or {}).get("pool", "avg")
            if feats[-1].dim() == 4:
                h = feats[-1].flatten(1) if pool == "flatten" else feats[-1].mean(dim=(2, 3))
            else:
                h = feats[-1]
            if f"{p}.hidden.weight" in sd:
                h = act(F.linear(h, sd[f"{p}.hidden.weight"], sd[f"{p}.hidden.bias"]))
            out[t["name"]] = F.linear(h, sd[f"{p}.fc.weight"], sd[f"{p}.fc.bias"])
        else:
            h = feats[-1]
            for k in range(len(feats) - 1):
                skip = feats[len(feats) - 2 - k]
                up = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                h = cba(torch.cat([up, skip], 1), f"{p}.decoder.{k}")
            y = F.conv2d(h, sd[f"{p}.classifier.weight"], sd[f"{p}.classifier.bias"])
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            if t["kind"] == "normals":
                y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out[t["name"]] = y
    return out


def randomise_bn(model, seed=1):
    """Non-trivial running statistics and affine parameters, so eval-mode BN matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


# The model itself handles sizes that config validation refuses (10 is not divisible by 4 for
# three conv stages): those exercise the floor pooling and the upsampling to the skip's size.
CASES = {
    "conv-batch": dict(kind="conv", widths=(4, 8, 16), depth=2, norm="batch", image_size=12,
                       heads={"shape": {"hidden": 8, "dropout": 0.25}}),
    "conv-none-odd": dict(kind="conv", widths=(3, 5, 6), depth=1, norm="none", image_size=10,
                          activation="gelu", heads={"segment": {"decoder_width": 7}}),
    "resnet-tiny": dict(kind="resnet", widths=(4,), depth=1, image_size=8, activation="silu"),
    "resnet-depth2": dict(kind="resnet", widths=(4, 6), depth=2, image_size=8,
                          heads={"segment": {"decoder_width": 5}}),
    "dense-heads": dict(kind="conv", widths=(4, 8), depth=1, norm="batch", image_size=8,
                        tasks=[{"name": "semantic", "kind": "segmentation", "target": "s", "classes": 5},
                               {"name": "depth", "kind": "regression", "target": "d", "classes": 0},
                               {"name": "normal", "kind": "normals", "target": "n", "classes": 0}],
                        heads={"normal": {"decoder_width": 6}}),
    "resnet-dense": dict(kind="resnet", widths=(4,), depth=1, image_size=8, activation="gelu",
                         tasks=[{"name": "depth", "kind": "regression", "target": "d", "classes": 0},
                                {"name": "normal", "kind": "normals", "target": "n", "classes": 0}]),
    "lenet-flatten": dict(kind="conv", widths=(3, 5, 6), norm="none", image_size=12, grayscale=True,
                          tasks=[{"name": "left", "kind": "classification", "target": "l", "classes": 10},
                                 {"name": "right", "kind": "classification", "target": "r", "classes": 10}],
                          heads={"left": {"pool": "flatten", "hidden": 7},
                                 "right": {"pool": "flatten"}}),
    "mlp": dict(kind="mlp", widths=(16, 12), norm="none", image_size=6, grayscale=True,
                tasks=[{"name": "digit", "kind": "classification", "target": "a", "classes": 10},
                       {"name": "parity", "kind": "classification", "target": "b", "classes": 2}],
                heads={"parity": {"hidden": 5, "dropout": 0.5}}),
}


@pytest.fixture(params=sorted(CASES))
def cfg(request):
    return yaml_roundtrip(make_config(**CASES[request.param]))


def batch(cfg, n=3, seed=0):
    c, h, w = mtl_torch.input_shape(cfg)
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_key_set_matches_naming_rules(cfg):
    sd = build_model(cfg).state_dict()
    assert set(sd) == expected_keys(cfg)
    # Every BatchNorm carries all five tensors; num_batches_tracked is an int64 scalar.
    bn_prefixes = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".running_var")}
    for p in bn_prefixes:
        assert bn_keys(p) <= set(sd)
        assert sd[f"{p}.num_batches_tracked"].dtype == torch.int64
        assert sd[f"{p}.num_batches_tracked"].shape == ()
        assert re.search(r"\.(bn|bn1|bn2)$", p), p
    bb = cfg["model"]["backbone"]
    if bb["kind"] == "mlp" or (bb["kind"] == "conv" and bb["norm"] == "none"):
        assert not bn_prefixes
        assert all(f"{k[:-len('weight')]}bias" in sd for k in sd if k.endswith("conv.weight"))
    else:
        assert bn_prefixes
        # Conv bias only where there is no norm: the segmentation classifier.
        for k in sd:
            if k.endswith(".conv.bias") or k.endswith(".conv1.bias"):
                pytest.fail(f"{k}: conv bias next to a BatchNorm")


def test_shapes_and_functional_reference(cfg):
    model = randomise_bn(build_model(cfg)).eval()
    x = batch(cfg)
    with torch.no_grad():
        out = model(x)
        ref = ref_forward(cfg, model.state_dict(), x)
    assert list(out) == [t["name"] for t in cfg["tasks"]]
    for t in cfg["tasks"]:
        y = out[t["name"]]
        assert y.dtype == torch.float32
        if t["kind"] == "classification":
            assert y.shape == (x.shape[0], t["classes"])
        else:
            c = {"regression": 1, "normals": 3}.get(t["kind"], t["classes"])
            assert y.shape == (x.shape[0], c, x.shape[2], x.shape[3])
        torch.testing.assert_close(y, ref[t["name"]], rtol=1e-5, atol=1e-5)
    assert [o.shape for o in model.forward_list(x)] == [o.shape for o in out.values()]


def test_train_step_updates_bn_and_backprops(cfg):
    model = build_model(cfg).train()
    x = batch(cfg, n=4)
    loss = sum(o.float().square().mean() for o in model(x).values())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 1


def test_safetensors_roundtrip_strict(cfg, tmp_path):
    torch.manual_seed(0)
    a = randomise_bn(build_model(cfg), seed=3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    torch.manual_seed(1)
    b = build_model(cfg)
    b.load_state_dict(load_file(str(path)), strict=True)
    x = batch(cfg)
    pa, pb = predict(a, x), predict(b, x)
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=0, atol=0)
    # A missing or an extra tensor is refused.
    sd = load_file(str(path))
    extra = dict(sd, **{"backbone.extra": torch.zeros(1)})
    with pytest.raises(RuntimeError):
        build_model(cfg).load_state_dict(extra, strict=True)
    sd.pop(sorted(sd)[0])
    with pytest.raises(RuntimeError):
        build_model(cfg).load_state_dict(sd, strict=True)


def test_parameter_count_by_hand():
    cfg = make_config(kind="conv", widths=(4, 8), depth=1, norm="batch", image_size=8,
                      heads={"shape": {"hidden": 6}})
    model = build_model(cfg)
    backbone = (3 * 4 * 9 + 2 * 4) + (4 * 8 * 9 + 2 * 8)  # conv weights + BN affine
    shape = (8 * 6 + 6) + (6 * 3 + 3)
    segment = ((8 + 4) * 4 * 9 + 2 * 4) + (4 * 4 + 4)  # decoder to the skip's width, 1×1 classifier
    assert model.parameter_count() == backbone + shape + segment


def test_resnet_single_width_expands():
    model = build_model(make_config(kind="resnet", widths=(4,), depth=1, image_size=8))
    assert model.feature_channels == [4, 8, 16, 32]
    feats = model.eval().features(torch.zeros(1, 3, 8, 8))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 8, 8), (8, 4, 4), (16, 2, 2), (32, 1, 1)]


def test_odd_sizes_pool_floor_and_upsample():
    cfg = make_config(kind="conv", widths=(2, 3, 4), image_size=11)
    feats = build_model(cfg).eval().features(torch.zeros(1, 3, 11, 11))
    assert [f.shape[-1] for f in feats] == [11, 5, 2]


def test_task_names():
    tasks = [{"name": "type", "kind": "classification", "target": "t", "classes": 2},
             {"name": "train", "kind": "segmentation", "target": "m", "classes": 2}]
    model = build_model(make_config(tasks=tasks))
    assert "heads.type.fc.weight" in model.state_dict()
    assert list(model.eval()(torch.zeros(1, 3, 12, 12))) == ["type", "train"]
    bad = [{"name": "a.b", "kind": "classification", "target": "t", "classes": 2}]
    with pytest.raises(ValueError):
        build_model(make_config(tasks=bad))


def test_defaults_when_fields_missing():
    cfg = make_config()
    for k in ("depth", "norm", "activation"):
        del cfg["model"]["backbone"][k]
    del cfg["model"]["heads"]
    del cfg["data"]["image_size"]
    full = build_model(make_config(image_size=32, depth=1))
    assert set(build_model(cfg).state_dict()) == set(full.state_dict())


@pytest.mark.parametrize("field,value", [("kind", "vit"), ("norm", "layer"), ("activation", "tanh")])
def test_unknown_settings_are_refused(field, value):
    cfg = make_config()
    cfg["model"]["backbone"][field] = value
    with pytest.raises(ValueError):
        build_model(cfg)


# --- run layout, load_run and the CLI -----------------------------------------------------


def make_run(tmp_path, cfg, steps=(2, 3), best=2, latest=3):
    """A run directory as the Rust trainer lays it out; each checkpoint has other weights."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for s in steps:
        torch.manual_seed(s)
        m = randomise_bn(build_model(cfg), seed=s)
        d = ckpts / f"step-{s:06d}"
        d.mkdir()
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "model.safetensors"))
    (ckpts / "BEST").write_text(f"step-{best:06d}\n")
    (ckpts / "LATEST").write_text(f"step-{latest:06d}")
    return run


def weights_of(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def assert_state_equal(model, sd):
    msd = model.state_dict()
    assert set(msd) == set(sd)
    for k in sd:
        assert torch.equal(msd[k], sd[k]), k


def test_load_run_pointers_and_paths(tmp_path):
    cfg = make_config(**CASES["conv-batch"])
    run = make_run(tmp_path, cfg)
    best = load_run(run)
    assert not best.training
    assert_state_equal(best, weights_of(run, 2))
    assert_state_equal(load_run(run, "LATEST"), weights_of(run, 3))
    assert_state_equal(load_run(run, "step-000003"), weights_of(run, 3))
    ckpt = run / "checkpoints" / "step-000003"
    assert_state_equal(load_run(ckpt), weights_of(run, 3))
    assert_state_equal(load_run(ckpt / "model.safetensors"), weights_of(run, 3))
    assert resolve_checkpoint(run, "LATEST") == (run / "config.yaml", ckpt / "model.safetensors")
    (run / "checkpoints" / "BEST").unlink()
    with pytest.raises(FileNotFoundError):
        load_run(run)
    with pytest.raises(FileNotFoundError):
        load_run(run, "step-000009")


def test_load_run_refuses_mismatched_config(tmp_path):
    cfg = make_config(**CASES["conv-batch"])
    run = make_run(tmp_path, cfg)
    other = copy.deepcopy(cfg)
    other["model"]["backbone"]["widths"] = [4, 8, 12]
    (run / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(RuntimeError):
        load_run(run)


def run_cli(run, input_tensor, out_path, *extra):
    """What the cross-language test compares with `mtl-train predict`'s output."""
    in_path = out_path.with_name("input.safetensors")
    save_file({"input": input_tensor.contiguous()}, str(in_path))
    assert mtl_torch.main([str(run), *extra, "--input", str(in_path), "--output", str(out_path)]) == 0
    return load_file(str(out_path))


@pytest.mark.parametrize("case", ["conv-batch", "resnet-tiny", "mlp"])
def test_cli_predict_and_check(tmp_path, capsys, case):
    cfg = make_config(**CASES[case])
    run = make_run(tmp_path, cfg)
    x = batch(cfg, n=2, seed=5)
    got = run_cli(run, x, tmp_path / "out.safetensors", "--checkpoint", "LATEST")
    want = predict(load_run(run, "LATEST"), x)
    assert set(got) == set(want) == {t["name"] for t in cfg["tasks"]}
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    if case != "conv-batch":
        return
    # A subprocess run of the script, as the lead's interop test will call it.
    import subprocess

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "mtl_torch.py"), str(run), "--check"],
                       capture_output=True, text=True, check=True)
    n = build_model(cfg).parameter_count()
    assert f"parameters: {n}" in r.stdout
    assert f"tensors: {len(expected_keys(cfg))}" in r.stdout
    assert "step-000002" in r.stdout  # BEST by default


def test_normalize():
    cfg = make_config()
    img = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    x = mtl_torch.normalize(img, cfg)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-2.0, 2.0, (128 / 255 - 0.5) / 0.25]))
    cfg["data"]["dataset"] = "cifar10_seg"
    grey = mtl_torch.normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), cfg)
    m, s = (0.4914 + 0.4822 + 0.4465) / 3, (0.2470 + 0.2435 + 0.2616) / 3
    torch.testing.assert_close(grey, torch.full((1, 1, 2, 2), (1 - m) / s))


# --- dense heads and flattening pools ----------------------------------------------------


def test_dense_heads_reuse_the_decoder_and_normals_are_unit_vectors():
    cfg = make_config(**CASES["dense-heads"])
    model = randomise_bn(build_model(cfg)).eval()
    sd = model.state_dict()
    # The same decoder tree as a segmentation head, only the classifier's width differs.
    assert sd["heads.depth.classifier.weight"].shape == (1, 4, 1, 1)
    assert sd["heads.normal.classifier.weight"].shape == (3, 6, 1, 1)
    assert sd["heads.semantic.decoder.0.conv.weight"].shape == sd["heads.depth.decoder.0.conv.weight"].shape
    out = predict(model, batch(cfg, n=2))
    norms = out["normal"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    assert out["depth"].shape == (2, 1, 8, 8)
    assert (out["depth"].abs() > 0).any()


def test_flatten_pool_sees_position():
    cfg = make_config(**CASES["lenet-flatten"])
    model = build_model(cfg).eval()
    # 12 → 6 → 3: the flattened coarsest map has 6·3·3 inputs.
    assert model.heads["left"].hidden.in_features == 6 * 3 * 3
    assert model.heads["right"].fc.in_features == 6 * 3 * 3
    # Mirror an input left-right: average pooling would hardly notice; flattening does.
    x = batch(cfg, n=1)
    a, b = predict(model, x)["right"], predict(model, x.flip(-1))["right"]
    assert not torch.allclose(a, b, atol=1e-4)
    bad = make_config(**dict(CASES["lenet-flatten"], heads={"left": {"pool": "max"}}))
    with pytest.raises(ValueError):
        build_model(bad)


def test_normalize_knows_every_dataset():
    datasets = mtl_torch.catalog()["datasets"]
    assert len(datasets) >= 8
    for d in datasets:
        cfg = make_config()
        cfg["data"]["dataset"] = d["name"]
        x = mtl_torch.normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), cfg)
        want = [(1 - m) / s for m, s in zip(d["normalization"]["mean"], d["normalization"]["std"])]
        torch.testing.assert_close(x.flatten(), torch.tensor(want, dtype=torch.float32), msg=d["name"])
    with pytest.raises(ValueError, match="unknown dataset"):
        mtl_torch.normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), {"data": {"dataset": "nope"}})


def test_normalize_prefers_the_configs_recorded_normalization():
    cfg = make_config()
    cfg["data"]["normalization"] = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    x = mtl_torch.normalize(torch.full((1, 3, 1, 1), 51, dtype=torch.uint8), cfg)
    torch.testing.assert_close(x.flatten(), torch.full((3,), 0.2))


# --- Rust ↔ PyTorch on the new heads, through the binary -----------------------------------

BINARY = ROOT / "target" / "release" / "mtl-train"


def _npy(path, shape, values):
    """A .npy v1.0 file of little-endian float32, header written as NumPy does."""
    import struct

    dims = ", ".join(str(d) for d in shape)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % dims
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
                     + struct.pack(f"<{len(values)}f", *values))


def _write_nyu(root, h=8, w=12):
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            d = root / split
            px = [(y, x) for y in range(h) for x in range(w)]
            cls = [((x // 4) + i) % 3 for y, x in px]
            _npy(d / "image" / f"{i}.npy", (h, w, 3), [v for c in cls for v in (c / 3, 0.5, 1 - c / 3)])
            _npy(d / "label" / f"{i}.npy", (h, w), [float(c) if y else -1.0 for (y, x), c in zip(px, cls)])
            _npy(d / "depth" / f"{i}.npy", (h, w, 1), [1.0 + c + y / 10 if y else 0.0 for (y, x), c in zip(px, cls)])
            _npy(d / "normal" / f"{i}.npy", (h, w, 3), [v for c in cls for v in (0.0, 0.6 * (c - 1), 0.8)])


def _write_mnist(root, n=20):
    import gzip
    import struct

    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        labels = bytes(i % 10 for i in range(n))
        pixels = bytes((37 * i + p) % 256 if (p // 28) % 10 == i % 10 else 0 for i in range(n) for p in range(784))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">4I", 0x803, n, 28, 28) + pixels))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, n) + labels)


INTEROP = {
    "nyuv2-dense": {
        "data": {"dataset": "nyuv2", "root": "nyu", "image_size": 8, "batch_size": 2,
                 "augment": {"hflip": True, "max_scale": 1.2}},
        "model": {"backbone": {"kind": "conv", "widths": [4, 8]}, "heads": {"normal": {"decoder_width": 5}}},
        "tasks": [{"name": "semantic", "kind": "segmentation", "target": "semantic", "classes": 13},
                  {"name": "depth", "kind": "regression", "target": "depth"},
                  {"name": "normal", "kind": "normals", "target": "normal"}],
        "checkpoint": {"monitor": "semantic.miou"},
    },
    "multimnist-flatten": {
        "data": {"dataset": "multimnist", "root": "mnist", "image_size": 28, "grayscale": True, "batch_size": 5},
        "model": {"backbone": {"kind": "conv", "widths": [3, 4, 5], "norm": "none"},
                  "heads": {"left": {"pool": "flatten", "hidden": 6}, "right": {"pool": "flatten"}}},
        "tasks": [{"name": "left", "kind": "classification", "target": "left", "classes": 10},
                  {"name": "right", "kind": "classification", "target": "right", "classes": 10}],
        "checkpoint": {"monitor": "left.accuracy"},
    },
}


@pytest.mark.parametrize("case", sorted(INTEROP))
def test_rust_run_with_new_heads_predicts_like_pytorch(tmp_path, case):
    import subprocess

    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build --release` (scripts/test.sh does)")
    if case.startswith("nyuv2"):
        _write_nyu(tmp_path / "nyu")
    else:
        _write_mnist(tmp_path / "mnist")
    cfg = dict(INTEROP[case], name=case, seed=1, device="cpu", threads=1,
               optim={"kind": "adamw", "lr": 0.01}, train={"epochs": 2, "log_every": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([str(BINARY), "c.yaml", "--run-dir", "run"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    model = load_run(run, "LATEST")
    c, h, w = mtl_torch.input_shape(model.config)
    if case.startswith("nyuv2"):
        w = 12  # NYUv2 keeps its aspect: height 8 → 8×12
    x = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(7))
    save_file({"input": x}, str(tmp_path / "in.safetensors"))
    r = subprocess.run([str(BINARY), "predict", "run", "--checkpoint", "latest", "--input", "in.safetensors",
                        "--output", "out.safetensors"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rust = load_file(str(tmp_path / "out.safetensors"))
    want = predict(model, x)
    assert set(rust) == set(want)
    for k in want:
        assert rust[k].shape == want[k].shape, k
        torch.testing.assert_close(rust[k], want[k], rtol=1e-4, atol=1e-5)
    if case.startswith("nyuv2"):
        assert rust["depth"].shape == (3, 1, 8, 12) and rust["normal"].shape == (3, 3, 8, 12)
        norms = rust["normal"].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)


def test_domain_norm_groups_and_refusals():
    cfg = make_config()
    cfg["tasks"][1]["data"] = {"train_size": 10}
    assert mtl_torch.data_groups(cfg) == [0, 1]
    model = mtl_torch.build_model(cfg)
    keys = set(model.state_dict())
    assert "backbone.stages.0.0.bn.domains.1.running_var" in keys and "backbone.stages.0.0.bn.weight" in keys
    cfg["model"]["domain_norm"] = "shared"
    assert not any(".domains." in k for k in mtl_torch.build_model(cfg).state_dict())
    cfg["model"]["domain_norm"] = "own"
    with pytest.raises(ValueError, match="domain_norm"):
        mtl_torch.build_model(cfg)
