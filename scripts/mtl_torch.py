#!/usr/bin/env python3
"""The Rust `mtl` model as a plain ``torch.nn.Module``, loadable from a training run.

The module tree, the tensor names and the forward pass mirror ``src/model`` exactly, so a
checkpoint's ``model.safetensors`` loads with ``load_state_dict(..., strict=True)`` and gives
the same logits as the Rust forward pass (bit for bit in fp32 on the CPU, when checked
against models built and run by the Rust crate). Every architecture of ``model.architecture``
(``mtl-train list``; docs/MODEL_ARCHITECTURES.md) is a subclass of ``MultiTaskModel`` in
``ARCHITECTURES``; ``build_model`` picks the configured one.

What the Rust registries define (each dataset's normalization, each architecture's option
defaults) is not copied here: ``catalog()`` reads ``mtl-train list --json`` from the binary
(``$MTL_BIN``, else this checkout's ``target/release/mtl-train``, else ``mtl-train`` on
``PATH``). A run's config.yaml records every architecture option, so loading a run asks the
binary only for its dataset's normalization.

Use from Python (the model takes a *normalized* float ``[N, C, H, W]`` batch; ``normalize``
turns uint8 images into one the way ``src/data`` does for the run's dataset)::

    import sys; sys.path.insert(0, "scripts")
    from mtl_torch import build_model, load_run, normalize

    model = load_run("runs/my-run")          # BEST checkpoint, eval mode; or which="LATEST"
    x = normalize(images_uint8, model.config)
    with torch.no_grad():
        out = model(x)                       # {task name: logits}, in config task order
        seg = out["segment"]                 # [N, classes, H, W]; classification: [N, classes]
                                             # regression [N, 1, H, W]; normals [N, 3, H, W], unit
        logits = model.forward_list(x)       # the same tensors as a list, in task order

    model = build_model(yaml.safe_load(open("config.yaml")))   # fresh weights, no checkpoint

From the shell::

    python scripts/mtl_torch.py runs/my-run --check                  # load, print a summary
    python scripts/mtl_torch.py runs/my-run --checkpoint step-000500 \\
        --input batch.safetensors --output logits.safetensors        # eval-mode forward
    python scripts/mtl_torch.py runs/my-run --onnx model.onnx        # ONNX, any batch size

``--onnx`` (what ``mtl-train export --onnx`` runs) needs the ``onnx`` and ``onnxscript``
packages: it exports with ``torch.onnx.export(..., dynamo=True)``, input ``input`` (normalized
float ``[N, C, H, W]``, N free, H×W from ``--size H W`` or ``data.image_size``), one output per
task named after it, in task order; then checks the file with ``onnx.checker`` and, when
``onnxruntime`` is installed, against this module on a batch of another size.

``--input`` reads the tensor named ``input`` (NCHW float); ``--output`` holds one tensor per
task, named by the task. ``RUN_DIR`` may also be a checkpoint directory (one holding
``model.safetensors``) or the ``model.safetensors`` file itself.

Tasks with their own data (``tasks[i].data``) form data groups (``data_groups``); with
``model.domain_norm`` ``statistics`` (the default for several groups) or ``affine`` every
BatchNorm is a ``DomainBatchNorm2d`` keeping a set per group (``bn.domains.<g>.*``), and
``model(x)`` computes each task's output with its own group's set (``model(x, domain=g)``: every
head with group ``g``'s). ``normalize`` applies the top-level dataset's statistics; a task whose
data is another dataset's normalizes with that one's (docs/MULTI_INPUT.md).

A run on a table (``data.dataset: table``, docs/TABLES.md) takes mapped rows ``[N, F, 1, 1]``
(or ``[N, F]``): the standardized numeric entries, the missing indicators, then one vocabulary
index per categorical column, which ``embeddings.<column>`` embed before the ``mlp`` trunk;
``binary`` tasks return one logit, ``value`` tasks one value. ``map_rows`` maps raw rows with
the run's fitted mapping exactly as mtl-train does (``read_table`` reads a file as mtl-train
reads it), ``table_predictions`` gives what ``mtl-train predict --table`` writes and ``ctcvr``
ESMM's joint probability::

    fitted = table_mapping(model.config)
    x = torch.from_numpy(map_rows(fitted, read_table("rows.parquet", table_columns(fitted))))
    probabilities = table_predictions(model, model(x))

Only fp32 is modelled: a run trained with ``precision: bf16`` loads and runs here in fp32, so
its outputs differ from the Rust bf16 forward by bf16 rounding.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiTaskModel",
    "ARCHITECTURES",
    "build_model",
    "load_config",
    "resolve_checkpoint",
    "load_run",
    "predict",
    "resnet_widths",
    "TorchvisionResNet",
    "to_torchvision_key",
    "from_torchvision_key",
    "input_shape",
    "normalize",
    "dataset_normalization",
    "catalog",
    "export_onnx",
    "DomainBatchNorm2d",
    "data_groups",
    "table_mapping",
    "table_width",
    "table_columns",
    "map_rows",
    "read_table",
    "ctcvr",
    "table_predictions",
]

# The BatchNorm settings of src/model/layers.rs.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
POINTERS = ("BEST", "LATEST")
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "relu":
        return F.relu(x)
    if kind == "gelu":
        return F.gelu(x, approximate="none")
    if kind == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {kind!r} (relu, gelu, silu)")


def conv2d(c_in: int, c_out: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """Padding k // 2, as in layers.rs."""
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)


class DomainBatchNorm2d(nn.Module):
    """BatchNorm2d with its own running statistics per data group (``model.domain_norm:
    statistics``: ``weight``, ``bias``, ``domains.<g>.running_mean|running_var|
    num_batches_tracked``) or its own statistics and affine parameters (``affine``: all five
    under ``domains.<g>``), as src/model/layers.rs. ``domain`` says which group's images the
    next forward reads (``MultiTaskModel.forward`` sets it)."""

    def __init__(self, c: int, domains: int, own_affine: bool):
        super().__init__()
        self.num_features = c
        self.own_affine = own_affine
        if not own_affine:
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))
        self.domains = nn.ModuleList(
            [nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM, affine=own_affine) for _ in range(domains)])
        self.domain = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.domains[self.domain]
        if self.own_affine:
            return bn(x)
        if self.training:
            bn.num_batches_tracked.add_(1)
        return F.batch_norm(x, bn.running_mean, bn.running_var, self.weight, self.bias, self.training,
                            BN_MOMENTUM, BN_EPS)


# (data groups, own affine parameters) of the BatchNorm layers being built: set by
# MultiTaskModel while it builds (the layers that make a BatchNorm do not carry it).
_NORM_LAYOUT = (1, False)


def batch_norm(c: int) -> nn.Module:
    domains, own_affine = _NORM_LAYOUT
    if domains <= 1:
        return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)
    return DomainBatchNorm2d(c, domains, own_affine)


def _merged(top: dict, own: Optional[dict]) -> dict:
    """A task's data: the top-level ``data`` with the task's keys written over it, nested
    sections key by key (src/config ``task_data``)."""
    out = dict(top)
    for k, v in (own or {}).items():
        out[k] = _merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def data_groups(config: dict) -> List[int]:
    """Each task's data group, in task order: tasks whose merged data is equal share one,
    numbered in order of their first task (src/setup.rs)."""
    top = config.get("data") or {}
    seen: List[dict] = []
    groups = []
    for task in config["tasks"]:
        data = _merged(top, task.get("data"))
        if data not in seen:
            seen.append(data)
        groups.append(seen.index(data))
    return groups


def norm_layout(config: dict) -> Tuple[int, bool]:
    """(sets of BatchNorm state per layer, own affine parameters) for ``model.domain_norm``."""
    choice = _get(config["model"], "domain_norm", "auto")
    if choice not in DOMAIN_NORMS:
        raise ValueError(f"unknown domain_norm {choice!r} ({', '.join(DOMAIN_NORMS)})")
    groups = max(data_groups(config)) + 1
    bn = _get(config["model"]["backbone"], "norm", "batch") == "batch"
    if groups <= 1 or not bn or choice == "shared":
        return (1, False)
    return (groups, choice == "affine")


# model.domain_norm's choices; `auto` stands for `statistics` with several data groups.
DOMAIN_NORMS = ("auto", "shared", "statistics", "affine")


class ConvBnAct(nn.Module):
    """conv3×3 (bias only without norm) – BatchNorm – activation: ``conv.*``, ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, batch_norm_: bool, act: str):
        super().__init__()
        self.conv = conv2d(c_in, c_out, 3, 1, bias=not batch_norm_)
        self.bn = batch_norm(c_out) if batch_norm_ else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return activate(y, self.act)


class ConvNet(nn.Module):
    """Stages of ``depth`` ConvBnAct blocks; every stage after the first starts with a 2×2
    max-pool. Returns one map per stage, finest first. Names: ``stages.{i}.{j}.conv|bn``."""

    def __init__(self, c_in: int, widths: Sequence[int], depth: int, bn: bool, act: str):
        super().__init__()
        self.stages = nn.ModuleList()
        c = c_in
        for w in widths:
            stage = nn.ModuleList()
            for _ in range(depth):
                stage.append(ConvBnAct(c, w, bn, act))
                c = w
            self.stages.append(stage)
        self.widths = list(widths)

    spatial = True

    def num_stages(self) -> int:
        return len(self.stages)

    def stage_parts(self, i: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stage ``i`` on ``h`` (the image for stage 0): (its first block's output, its output)."""
        if i > 0:
            h = F.max_pool2d(h, kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
        return _run_blocks(self.stages[i], h)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = x
        maps = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = F.max_pool2d(h, kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
            for block in stage:
                h = block(h)
            maps.append(h)
        return maps


def _run_blocks(blocks: Sequence[nn.Module], h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    first = None
    for block in blocks:
        h = block(h)
        if first is None:
            first = h
    return (h if first is None else first), h


def stage(backbone: nn.Module, i: int, h: torch.Tensor) -> torch.Tensor:
    """Stage ``i`` of a backbone (ConvNet, ResNet or Mlp) on ``h``."""
    return backbone.stage_parts(i, h)[1]


def stage_prefixes(kind: str, i: int) -> List[str]:
    """Module paths (within a backbone) of stage ``i``'s tensors, as backbone.rs names them."""
    if kind == "conv":
        return [f"stages.{i}"]
    if kind == "resnet" and i == 0:
        return ["stem", "layers.0"]
    if kind in TORCHVISION_RESNETS:
        return ["stem", "layer1"] if i == 0 else [f"layer{i + 1}"]
    return [f"layers.{i}"]


class ConvBn(nn.Module):
    """A conv and its BatchNorm, no activation: the ResNet ``stem`` and ``shortcut``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        self.conv = conv2d(c_in, c_out, k, stride, bias=False)
        self.bn = batch_norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """``conv1|bn1|conv2|bn2`` and, when the stride or the width changes, ``shortcut.conv|bn``
    (1×1). The activation follows bn1 and the residual sum."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str):
        super().__init__()
        self.conv1 = conv2d(c_in, c_out, 3, stride)
        self.bn1 = batch_norm(c_out)
        self.conv2 = conv2d(c_out, c_out, 3, 1)
        self.bn2 = batch_norm(c_out)
        self.shortcut = ConvBn(c_in, c_out, 1, stride) if (stride != 1 or c_in != c_out) else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = activate(self.bn1(self.conv1(x)), self.act)
        h = self.bn2(self.conv2(h))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return activate(h + skip, self.act)


def resnet_widths(widths: Sequence[int]) -> List[int]:
    """One number w means [w, 2w, 4w, 8w]; a list is taken as it is."""
    if len(widths) == 1:
        w = int(widths[0])
        return [w, 2 * w, 4 * w, 8 * w]
    return [int(w) for w in widths]


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem at stride 1 (``stem.conv|bn``), then stages of basic
    blocks (``layers.{i}.{j}``), stride 2 at the first block of every stage after the first.
    Always batch-normalized (``backbone.norm`` does not apply to it, as in backbone.rs)."""

    def __init__(self, c_in: int, widths: Sequence[int], depth: int, act: str):
        super().__init__()
        self.stem = ConvBn(c_in, widths[0], 3, 1)
        self.layers = nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            layer = nn.ModuleList()
            for j in range(depth):
                layer.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1, act))
                c = w
            self.layers.append(layer)
        self.widths = list(widths)
        self.act = act

    spatial = True

    def num_stages(self) -> int:
        return len(self.layers)

    def stage_parts(self, i: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stage ``i`` (the stem and the first layer for stage 0): (first block's output, output)."""
        if i == 0:
            h = activate(self.stem(h), self.act)
        return _run_blocks(self.layers[i], h)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = activate(self.stem(x), self.act)
        maps = []
        for layer in self.layers:
            for block in layer:
                h = block(h)
            maps.append(h)
        return maps


# torchvision's ResNets (src/model/torchvision.rs): their blocks per layer, and which blocks.
TORCHVISION_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
TORCHVISION_BASE_WIDTH = 64


def torchvision_widths(kind: str, widths: Sequence[int]) -> List[int]:
    """The four layers' output channels: 64-128-256-512, ×4 for bottleneck blocks."""
    w = int(widths[0]) if widths else TORCHVISION_BASE_WIDTH
    expansion = 4 if TORCHVISION_RESNETS[kind] >= 50 else 1
    return [(w << i) * expansion for i in range(4)]


def torchvision_key_table(binary: Optional[str] = None) -> List[dict]:
    """``model::torchvision::KEY_TABLE`` from ``mtl-train list --json``: rows of
    {scope: top|block, mtl: prefix, torchvision: prefix}."""
    return catalog(binary)["torchvision_keys"]["table"]


def _translate(name: str, table: List[dict], to_torchvision: bool) -> str:
    parts = name.split(".", 2)
    block = (len(parts) == 3 and parts[0].startswith("layer") and parts[0][5:].isdigit() and parts[1].isdigit())
    head, rest = (f"{parts[0]}.{parts[1]}.", parts[2]) if block else ("", name)
    scope = "block" if block else "top"
    for row in table:
        src, dst = (row["mtl"], row["torchvision"]) if to_torchvision else (row["torchvision"], row["mtl"])
        if row["scope"] == scope and rest.startswith(src):
            return head + dst + rest[len(src):]
    return name


def to_torchvision_key(name: str, table: Optional[List[dict]] = None) -> str:
    """torchvision's state-dict key for an mtl backbone variable (relative to the backbone)."""
    return _translate(name, table if table is not None else torchvision_key_table(), True)


def from_torchvision_key(key: str, table: Optional[List[dict]] = None) -> str:
    """mtl's backbone variable name for a torchvision key."""
    return _translate(key, table if table is not None else torchvision_key_table(), False)


class _Shortcut(nn.Module):
    """torchvision's ``downsample`` (conv, BN) under mtl's names ``shortcut.conv|bn``."""

    def __init__(self, downsample: nn.Sequential):
        super().__init__()
        self.conv, self.bn = downsample[0], downsample[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class TorchvisionResNet(nn.Module):
    """torchvision's own ``resnet18`` … ``resnet101`` (``replace_stride_with_dilation`` from
    ``output_stride``), its modules re-hung under mtl's names (``stem.conv|bn``,
    ``layer{k}.{j}.shortcut.conv|bn``), so ``state_dict()`` has the run's keys and every
    forward is torchvision's. Returns the four layers' maps (strides 4, 8, 16, 32)."""

    spatial = True

    def __init__(self, kind: str, c_in: int, widths: Sequence[int], output_stride: int, act: str):
        super().__init__()
        import torchvision

        if widths and int(widths[0]) != TORCHVISION_BASE_WIDTH:
            raise ValueError(f"the twin builds torchvision's {kind} at its base width 64, not {widths[0]}")
        if act != "relu":
            raise ValueError(f"torchvision's {kind} uses relu, not {act}")
        dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[int(output_stride)]
        tv = getattr(torchvision.models, kind)(weights=None, replace_stride_with_dilation=dilate
                                               if any(dilate) else None)
        if c_in != 3:
            tv.conv1 = nn.Conv2d(c_in, TORCHVISION_BASE_WIDTH, 7, 2, 3, bias=False)
        self.stem = nn.Module()
        self.stem.conv, self.stem.bn = tv.conv1, tv.bn1
        self.maxpool = tv.maxpool
        for k in range(1, 5):
            layer = getattr(tv, f"layer{k}")
            for block in layer:
                if block.downsample is not None:
                    shortcut = _Shortcut(block.downsample)
                    del block._modules["downsample"]
                    block.shortcut = shortcut
                    # torchvision's forward calls self.downsample: the same module, unregistered.
                    object.__setattr__(block, "downsample", shortcut)
            setattr(self, f"layer{k}", layer)
        self.widths = torchvision_widths(kind, widths)

    def num_stages(self) -> int:
        return 4

    def stage_parts(self, i: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if i == 0:
            h = self.maxpool(torch.relu(self.stem.bn(self.stem.conv(h))))
        return _run_blocks(getattr(self, f"layer{i + 1}"), h)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps, h = [], x
        for i in range(4):
            h = self.stage_parts(i, h)[1]
            maps.append(h)
        return maps


class Mlp(nn.Module):
    """Linear layers on the flattened input (``layers.{i}``), activation after each. Returns
    a one-element list holding the last hidden vector ``[N, D]``."""

    def __init__(self, in_features: int, widths: Sequence[int], act: str):
        super().__init__()
        self.layers = nn.ModuleList()
        d = in_features
        for w in widths:
            self.layers.append(nn.Linear(d, w))
            d = w
        self.width = d
        self.act = act

    spatial = False

    def num_stages(self) -> int:
        return len(self.layers)

    def stage_parts(self, i: int, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if i == 0:
            h = torch.flatten(h, 1)
        h = activate(self.layers[i](h), self.act)
        return h, h

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = torch.flatten(x, 1)
        for layer in self.layers:
            h = activate(layer(h), self.act)
        return [h]


class ClassificationHead(nn.Module):
    """Mean over H, W of the last feature map (``pool: flatten``: the map flattened, C·H·W
    values; a vector is taken as it is), an optional ``hidden`` Linear + activation, dropout,
    then ``fc``."""

    def __init__(self, d_in: int, hidden: int, dropout: float, classes: int, act: str,
                 flatten: bool = False):
        super().__init__()
        d = d_in
        self.flatten = flatten
        self.hidden = None
        if hidden > 0:
            self.hidden = nn.Linear(d, hidden)
            d = hidden
        self.fc = nn.Linear(d, classes)
        self.dropout = float(dropout)
        self.act = act

    def forward(self, features: Sequence[torch.Tensor], out_hw: Tuple[int, int]) -> torch.Tensor:
        top = features[-1]
        if top.dim() == 4:
            h = torch.flatten(top, 1) if self.flatten else top.mean(dim=(-1, -2))
        else:
            h = top
        if self.hidden is not None:
            h = activate(self.hidden(h), self.act)
        if self.dropout > 0.0:
            h = F.dropout(h, self.dropout, self.training)
        return self.fc(h)


class SegmentationHead(nn.Module):
    """U-Net decoder: from the coarsest map, for each finer map upsample bilinearly
    (align_corners=False) to its size, concatenate [up, skip] and apply ConvBnAct
    (``decoder.{k}``); then a 1×1 ``classifier`` with bias. Logits are resized bilinearly to
    the input size when they differ."""

    def __init__(self, channels: Sequence[int], decoder_width: int, classes: int, bn: bool, act: str):
        super().__init__()
        ch = list(channels)
        c = ch[-1]
        self.decoder = nn.ModuleList()
        for k in range(len(ch) - 1):
            skip = ch[len(ch) - 2 - k]
            out = decoder_width if decoder_width > 0 else skip
            self.decoder.append(ConvBnAct(c + skip, out, bn, act))
            c = out
        self.classifier = conv2d(c, classes, 1, 1, bias=True)

    def forward(self, features: Sequence[torch.Tensor], out_hw: Tuple[int, int]) -> torch.Tensor:
        n = len(features)
        h = features[n - 1]
        if h.dim() != 4:
            raise ValueError(
                "a segmentation head needs a conv or resnet backbone (got a feature vector)"
            )
        for k, block in enumerate(self.decoder):
            skip = features[n - 2 - k]
            up = F.interpolate(h, size=tuple(skip.shape[-2:]), mode="bilinear", align_corners=False)
            h = block(torch.cat([up, skip], dim=1))
        logits = self.classifier(h)
        if tuple(logits.shape[-2:]) != tuple(out_hw):
            logits = F.interpolate(logits, size=tuple(out_hw), mode="bilinear", align_corners=False)
        return logits


class DenseHead(SegmentationHead):
    """The segmentation decoder with ``channels`` outputs: 1 for ``regression`` (depth),
    3 for ``normals``, whose output is L2-normalized over the channels (``F.normalize``)."""

    def __init__(self, channels: Sequence[int], decoder_width: int, out_channels: int, bn: bool,
                 act: str, normalize: bool):
        super().__init__(channels, decoder_width, out_channels, bn, act)
        self.normalize = normalize

    def forward(self, features: Sequence[torch.Tensor], out_hw: Tuple[int, int]) -> torch.Tensor:
        out = super().forward(features, out_hw)
        return F.normalize(out.float(), dim=1, eps=1e-12) if self.normalize else out


# `aspp` heads (src/model/aspp.rs): DeepLabV3's rates at output stride 8 and its width.
ASPP_RATES = (12, 24, 36)
ASPP_WIDTH = 256


class AsppHead(nn.Module):
    """DeepLabV3's head on the coarsest map: torchvision's own ``ASPP`` (``aspp.*``), then
    ``conv|bn`` (3×3, ReLU) and a 1×1 ``classifier``; logits resized to the input bilinearly
    with align_corners=True (LibMTL's NYUv2 trainer); unit-length outputs for normals."""

    def __init__(self, c_in: int, width: int, rates: Sequence[int], outputs: int, normalize: bool):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.aspp = ASPP(c_in, list(rates), width)
        self.conv = conv2d(width, width, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.classifier = conv2d(width, outputs, 1, 1, bias=True)
        self.normalize = normalize

    def forward(self, features: Sequence[torch.Tensor], out_hw: Tuple[int, int]) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(self.aspp(features[-1]))))
        logits = self.classifier(y)
        if tuple(logits.shape[-2:]) != tuple(out_hw):
            logits = F.interpolate(logits, size=tuple(out_hw), mode="bilinear", align_corners=True)
        return F.normalize(logits.float(), dim=1, eps=1e-12) if self.normalize else logits


# Output channels of the dense heads (src/model/heads.rs).
REGRESSION_CHANNELS = 1
NORMAL_CHANNELS = 3


def _get(d: Optional[dict], key: str, default):
    if d is None:
        return default
    v = d.get(key, default)
    return default if v is None else v


def input_shape(config: dict) -> Tuple[int, int, int]:
    """``(C, H, W)`` of the input the model takes: for images 1 channel if ``data.grayscale``
    else 3; for a table run ``(F, 1, 1)``, its mapped rows (``table_width``)."""
    fitted = table_mapping(config)
    if fitted is not None:
        return (table_width(fitted), 1, 1)
    data = config.get("data") or {}
    size = int(_get(data, "image_size", 32))
    return (1 if _get(data, "grayscale", False) else 3, size, size)


class Heads(nn.Module):
    """``heads.<task name>``: a ModuleDict without its reserved names, so that a task may be
    called anything a torch module may (``type``, ``train``, ``keys``, …), as in Rust."""

    def add(self, name: str, head: nn.Module) -> None:
        if not isinstance(name, str) or name == "" or "." in name:
            raise ValueError(f"task name {name!r} cannot name a torch module (empty or has '.')")
        if name in self._modules:
            raise ValueError(f"two tasks are named {name!r}")
        self._modules[name] = head

    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[name]

    def __contains__(self, name: str) -> bool:
        return name in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def names(self) -> List[str]:
        return list(self._modules)


def mtl_binary() -> str:
    """The ``mtl-train`` whose registries this module follows: ``$MTL_BIN``, else this
    checkout's ``target/release/mtl-train``, else the one on ``PATH``."""
    if os.environ.get("MTL_BIN"):
        return os.environ["MTL_BIN"]
    built = Path(__file__).resolve().parent.parent / "target" / "release" / "mtl-train"
    if built.is_file():
        return str(built)
    found = shutil.which("mtl-train")
    if found is None:
        raise FileNotFoundError(
            "mtl-train not found: set MTL_BIN, build target/release/mtl-train or put it on PATH "
            "(its `list --json` holds the datasets' normalization and the architectures' options)"
        )
    return found


@functools.lru_cache(maxsize=None)
def catalog(binary: Optional[str] = None) -> dict:
    """``mtl-train list --json``: the datasets (targets, normalization), task kinds, balancing
    methods and architectures (options with their defaults) and backbones."""
    out = subprocess.run([binary or mtl_binary(), "list", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _entry(section: str, name: str) -> dict:
    entries = catalog()[section]
    for e in entries:
        if e["name"] == name:
            return e
    raise ValueError(f"unknown {section[:-1]} {name!r} ({', '.join(e['name'] for e in entries)})")


def dataset_normalization(config: dict) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel (mean, std) of a config's images after dividing by 255: the config's
    ``data.normalization`` when it records one, else its dataset's (``mtl-train list --json``)."""
    norm = config["data"].get("normalization") or _entry("datasets", config["data"]["dataset"])["normalization"]
    return tuple(norm["mean"]), tuple(norm["std"])


def normalize(images: torch.Tensor, config: dict) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` images → the float input the model was trained on: per-channel
    mean and std after dividing by 255, the config's ``data.normalization`` when it records
    one, else its dataset's (``mtl-train list --json``). One grey channel uses the mean of
    the three values, as src/data/loader.rs does."""
    mean, std = dataset_normalization(config)
    c = images.shape[1]
    if c == 1:
        mean, std = (sum(mean) / 3.0,), (sum(std) / 3.0,)
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return (images.float() / 255.0 - m) / sd


# --- tables (src/data/table/fit.rs, src/model/table_input.rs) ---------------------------------

# CSV cells that are missing values (src/data/table/read.rs).
MISSING_TEXT = ("", "NA", "NaN", "nan", "null", "NULL", "?")


def table_mapping(config: dict) -> Optional[dict]:
    """A table run's fitted mapping (``data.features.fitted``): ``numeric`` [{column, mean,
    std, indicator}] and ``categorical`` [{column, dim, vocab}]; None for an image run."""
    features = (config.get("data") or {}).get("features") or {}
    return features.get("fitted")


def table_columns(fitted: dict) -> List[str]:
    """The feature columns a mapped row is made of: the numeric ones, then the categorical ones."""
    return [n["column"] for n in fitted["numeric"]] + [c["column"] for c in fitted["categorical"]]


def dense_width(fitted: dict) -> int:
    """Standardized numeric entries and missing indicators: a mapped row's first part."""
    return sum(len(n["mean"]) * (2 if n.get("indicator") else 1) for n in fitted["numeric"])


def table_width(fitted: dict) -> int:
    """Entries of a mapped row: the dense ones, then one vocabulary index per categorical column."""
    return dense_width(fitted) + len(fitted["categorical"])


class Embeddings(Heads):
    """``embeddings.<column>``: one ``nn.Embedding(len(vocab) + 1, dim)`` per categorical
    column (row 0 the out-of-vocabulary value). ``forward`` turns mapped rows ``[N, F, 1, 1]``
    (or ``[N, F]``) into the dense entries followed by every column's embedding, ``[N, W, 1,
    1]``: what the backbone reads."""

    def __init__(self, fitted: dict):
        super().__init__()
        self.dense = dense_width(fitted)
        for c in fitted["categorical"]:
            self.add(c["column"], nn.Embedding(len(c["vocab"]) + 1, int(c["dim"])))
        self.width = self.dense + sum(int(c["dim"]) for c in fitted["categorical"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(x, 1)
        parts = [flat[:, : self.dense]]
        for i, name in enumerate(self.names()):
            # Indices travel as floats (exact below 2^24); truncation as Rust's to_kind(Int64).
            parts.append(self[name](flat[:, self.dense + i].long()))
        return torch.cat(parts, 1)[:, :, None, None]


def _rust_number(v: float) -> str:
    """A number as a vocabulary key, as fit.rs prints it: integers without a decimal point
    (``3`` and ``3.0`` are one value), others as Rust's ``{}`` does (shortest round trip, never
    an exponent)."""
    import numpy as np

    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return np.format_float_positional(v, unique=True, trim="-")


def _cells(values) -> list:
    """A column as mtl's reader sees cells: None (missing), a float, or text."""
    if hasattr(values, "to_pylist"):  # pyarrow arrays and columns
        values = values.to_pylist()
    elif hasattr(values, "tolist"):  # pandas Series, NumPy arrays of text
        values = values.tolist()
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, (bool, int, float)):
            out.append(float(v))
        else:
            out.append(str(v))
    return out


def _column(values):
    """A NumPy array of numbers is an array column (float32, 1-d or N × width, NaN missing,
    as .npy and .npz are read); anything else (lists, pandas Series, pyarrow arrays) is cells."""
    import numpy as np

    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values.astype(np.float32)
    return _cells(values)


def _numeric(column, name: str):
    """float32 ``[N, width]`` (NaN missing); text that is no number is an error naming the row."""
    import numpy as np

    if isinstance(column, np.ndarray):
        return column.reshape(len(column), -1)
    out = np.empty((len(column), 1), dtype=np.float32)
    for row, c in enumerate(column):
        if c is None:
            out[row, 0] = np.nan
        elif isinstance(c, float):
            out[row, 0] = c
        else:
            try:
                v = float(c)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise ValueError(f"column {name!r}, row {row + 1}: {c!r} is not a number")
            out[row, 0] = v
    return out


def _keys(column, name: str) -> list:
    import numpy as np

    if isinstance(column, np.ndarray):
        if column.ndim != 1:
            raise ValueError(f"column {name!r} has {column.shape[1]} values per row; a categorical column has one")
        return [None if math.isnan(v) else _rust_number(float(v)) for v in column.tolist()]
    return [c if c is None or isinstance(c, str) else _rust_number(c) for c in column]


def map_rows(fitted: dict, table) -> "np.ndarray":
    """Raw rows → mtl's mapped rows, float32 ``[N, F]`` (``table_width``), exactly as
    src/data/table/fit.rs ``features``: each numeric column's entries ``(x − mean) / std``
    (missing: 0), then the indicators (1 where missing) of the columns that have them, then
    each categorical column's vocabulary index (``vocab[i]`` is i + 1; anything else 0).

    ``fitted`` is ``table_mapping(config)``; ``table`` maps column names to values: a dict,
    a pandas DataFrame, a pyarrow Table, or ``read_table``'s result. A NumPy array of numbers is read as
    ``.npy`` columns are (float32); lists, Series and pyarrow arrays as CSV/Parquet cells
    (None and NaN missing, strings as text). Reshape to ``[N, F, 1, 1]`` for the twin."""
    import numpy as np

    columns = {}
    for c in table_columns(fitted):
        try:
            columns[c] = _column(table[c])
        except KeyError:
            raise KeyError(f"no column {c!r} in the table") from None
    rows = {len(v) for v in columns.values()}
    if len(rows) != 1:
        raise ValueError(f"the columns have different lengths ({sorted(rows)})")
    n = rows.pop()
    dense, indicators, indices = [], [], []
    for spec in fitted["numeric"]:
        v = _numeric(columns[spec["column"]], spec["column"])
        if v.shape[1] != len(spec["mean"]):
            raise ValueError(f"column {spec['column']!r} has {v.shape[1]} values per row; the training split had "
                             f"{len(spec['mean'])}")
        missing = np.isnan(v)
        # f32 values, f64 arithmetic, an f32 result: as fit.rs.
        z = ((v.astype(np.float64) - np.array(spec["mean"])) / np.array(spec["std"])).astype(np.float32)
        dense.append(np.where(missing, np.float32(0), z))
        if spec.get("indicator"):
            indicators.append(missing.astype(np.float32))
    for spec in fitted["categorical"]:
        index = {v: i + 1 for i, v in enumerate(spec["vocab"])}
        keys = _keys(columns[spec["column"]], spec["column"])
        indices.append(np.array([[index.get(k, 0)] for k in keys], dtype=np.float32).reshape(n, 1))
    out = np.concatenate(dense + indicators + indices, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def read_table(path: Union[str, Path], columns: Sequence[str]) -> dict:
    """``columns`` of a table file as mtl-train reads them (src/data/table/read.rs): a CSV's
    cells as trimmed text (``MISSING_TEXT`` missing), a Parquet file's values (pyarrow; null
    and NaN missing), a ``.npz``'s arrays. The result goes to ``map_rows``."""
    import numpy as np

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        import csv

        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            missing = [c for c in columns if c not in header]
            if missing:
                raise KeyError(f"{p}: no column {missing[0]!r}")
            at = [header.index(c) for c in columns]
            cells = {c: [] for c in columns}
            for record in reader:
                for c, i in zip(columns, at):
                    text = record[i].strip() if i < len(record) else ""
                    cells[c].append(None if text in MISSING_TEXT else text)
        return cells
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(p, columns=list(columns))
        return {c: _cells(t.column(c).to_pylist()) for c in columns}
    if suffix == ".npz":
        with np.load(p) as z:
            return {c: z[c].astype(np.float32) for c in columns}
    raise ValueError(f"{p}: a table is a .csv, .parquet or .npz file")


class MultiTaskModel(nn.Module):
    """Hard parameter sharing (``model.architecture.kind: hps``, the default): one shared
    ``backbone`` and ``heads.<task>``, one head per task. The other architectures subclass it
    (``ARCHITECTURES``): they replace :meth:`build_trunk` and :meth:`task_features`.

    ``forward(x)`` returns an ordered dict task name → fp32 logits (in the config's task
    order); ``forward_list(x)`` the same tensors as a list; ``task_features(x)`` what each
    head reads; ``features(x)`` the first task's (the backbone's outputs for hard sharing).
    ``train()``/``eval()`` switch BatchNorm and dropout as usual.
    """

    kind = "hps"

    def __init__(self, config: dict):
        super().__init__()
        global _NORM_LAYOUT
        self.domain_of = data_groups(config)
        self.norm_layout = norm_layout(config)
        before, _NORM_LAYOUT = _NORM_LAYOUT, self.norm_layout
        try:
            self._build(config)
        finally:
            _NORM_LAYOUT = before

    def _build(self, config: dict) -> None:
        self.config = config
        model_cfg = config["model"]
        bb = model_cfg["backbone"]
        kind = bb["kind"]
        widths = [int(w) for w in bb.get("widths") or []]
        depth = int(_get(bb, "depth", 1))
        norm = _get(bb, "norm", "batch")
        if norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {norm!r} (batch, none)")
        act = _get(bb, "activation", "relu")
        activate(torch.zeros(1), act)  # validates the name
        c_in, h, w = input_shape(config)
        # A table's mapped rows reach the trunk through the embeddings (dense entries, then
        # every categorical column's embedding): the trunk reads that width.
        fitted = table_mapping(config)
        self.table = fitted is not None
        self.embeddings = Embeddings(fitted) if self.table and fitted["categorical"] else None
        if self.embeddings is not None:
            c_in = self.embeddings.width
        self.in_channels = c_in
        self.image_size = h
        bn = norm == "batch"
        if not widths and kind not in TORCHVISION_RESNETS:
            raise ValueError("model.backbone.widths is empty")
        if kind in TORCHVISION_RESNETS:
            stage_widths, spatial = torchvision_widths(kind, widths), True
        elif kind == "conv":
            stage_widths, spatial = list(widths), True
        elif kind == "resnet":
            stage_widths, spatial = resnet_widths(widths), True
        elif kind == "mlp":
            stage_widths, spatial = list(widths), False
        else:
            raise ValueError(f"unknown backbone kind {kind!r} (conv, resnet, mlp, {', '.join(TORCHVISION_RESNETS)})")
        self.backbone_kind = kind
        self.output_stride = int(_get(bb, "output_stride", 32))
        self._backbone_args = (kind, c_in, h, w, widths, depth, bn, act)
        self.stage_widths = stage_widths
        self.feature_channels = stage_widths if spatial else [stage_widths[-1]]
        self.spatial = spatial
        self.bn = bn
        self.act = act
        self.task_names: List[str] = [t["name"] for t in config["tasks"]]
        # ESMM: a task `given` a parent (its probability is conditional on the parent's).
        self.given: Dict[str, str] = {t["name"]: t["given"] for t in config["tasks"] if t.get("given")}
        self.options = architecture_options(config)
        self.build_trunk()

        heads_cfg = model_cfg.get("heads") or {}
        self.task_kinds: Dict[str, str] = {}
        self.heads = Heads()
        pools = {}
        for task in config["tasks"]:
            pool = _get(heads_cfg.get(task["name"]) or {}, "pool", "avg")
            if pool not in ("avg", "flatten"):
                raise ValueError(f"unknown pool {pool!r} (avg, flatten)")
            pools[task["name"]] = pool
        top_hw = None
        if spatial and "flatten" in pools.values():
            # The coarsest map's size, from an eval-mode pass of a blank image (as in Rust).
            was = self.training
            self.eval()
            with torch.no_grad():
                top_hw = tuple(self.task_features(torch.zeros(1, c_in, h, w))[0][-1].shape[-2:])
            self.train(was)
        channels = self.feature_channels
        for task in config["tasks"]:
            name, tkind, classes = task["name"], task["kind"], int(task.get("classes") or 0)
            hc = heads_cfg.get(name) or {}
            width = int(_get(hc, "decoder_width", 0))
            if _get(hc, "kind", "unet") == "aspp" and tkind in ("segmentation", "regression", "normals"):
                if self.norm_layout[0] > 1:
                    raise ValueError("the twin's aspp head has one BatchNorm state (no model.domain_norm groups)")
                outputs = {"segmentation": classes, "regression": REGRESSION_CHANNELS,
                           "normals": NORMAL_CHANNELS}[tkind]
                head = AsppHead(channels[-1], width or ASPP_WIDTH, _get(hc, "rates", None) or ASPP_RATES,
                                outputs, normalize=tkind == "normals")
            elif tkind == "classification":
                flatten = pools[name] == "flatten" and spatial
                d_in = channels[-1] * (top_hw[0] * top_hw[1] if flatten else 1)
                head = ClassificationHead(
                    d_in,
                    int(_get(hc, "hidden", 0)),
                    float(_get(hc, "dropout", 0.0)),
                    classes,
                    act,
                    flatten,
                )
            elif tkind in ("binary", "value"):
                # One logit (binary) or one value per row: a classification head with one output.
                head = ClassificationHead(channels[-1], int(_get(hc, "hidden", 0)), float(_get(hc, "dropout", 0.0)),
                                          1, act)
            elif tkind == "segmentation":
                head = SegmentationHead(channels, width, classes, bn, act)
            elif tkind == "regression":
                head = DenseHead(channels, width, REGRESSION_CHANNELS, bn, act, normalize=False)
            elif tkind == "normals":
                head = DenseHead(channels, width, NORMAL_CHANNELS, bn, act, normalize=True)
            else:
                raise ValueError(
                    f"unknown task kind {tkind!r} (classification, segmentation, regression, normals, binary, value)"
                )
            self.heads.add(name, head)
            self.task_kinds[name] = tkind

    # -- what an architecture defines --------------------------------------------------------

    def build_trunk(self) -> None:
        """Creates the modules between the input and the heads."""
        self.backbone = self.new_backbone()

    def task_features(self, x: torch.Tensor) -> List[List[torch.Tensor]]:
        """What each task's head reads, in task order."""
        feats = self.backbone(x)
        return [feats for _ in self.task_names]

    # -- helpers for the architectures --------------------------------------------------------

    def new_backbone(self) -> nn.Module:
        kind, c_in, h, w, widths, depth, bn, act = self._backbone_args
        if kind == "conv":
            return ConvNet(c_in, widths, depth, bn, act)
        if kind == "resnet":
            return ResNet(c_in, resnet_widths(widths), depth, act)
        if kind in TORCHVISION_RESNETS:
            return TorchvisionResNet(kind, c_in, widths, self.output_stride, act)
        return Mlp(c_in * h * w, widths, act)

    def new_backbones(self, count: int) -> nn.ModuleList:
        return nn.ModuleList([self.new_backbone() for _ in range(count)])

    def input_features(self) -> int:
        return self.in_channels * self.image_size * self.image_size

    def num_stages(self) -> int:
        return len(self.stage_widths)

    def keep(self, stage_outputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The features heads read from a list of per-stage tensors: all of them for conv
        and resnet, the last one for the MLP."""
        return list(stage_outputs) if self.spatial else [stage_outputs[-1]]

    # -- the model ----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """What the trunk reads: images as they are; a table's mapped rows ``[N, F, 1, 1]`` (or
        ``[N, F]``) with their categorical indices embedded, ``[N, W, 1, 1]``."""
        if not self.table:
            return x
        if self.embeddings is not None:
            return self.embeddings(x)
        return torch.flatten(x, 1)[:, :, None, None]

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.task_features(self.embed(x))[0]

    def forward(self, x: torch.Tensor, domain: Optional[int] = None) -> "OrderedDict[str, torch.Tensor]":
        """Every task's output, each as for its own data group's images (with that group's
        BatchNorm state when groups keep their own: one pass per group); with ``domain``, every
        head on one pass with that group's state."""
        groups = self.norm_layout[0]
        if groups > 1 and domain is None:
            out: Dict[str, torch.Tensor] = {}
            for d in range(groups):
                if d in self.domain_of:
                    both = self.forward(x, d)
                    out.update((n, both[n]) for n, g in zip(self.task_names, self.domain_of) if g == d)
            return OrderedDict((n, out[n]) for n in self.task_names)
        self.use_domain(domain or 0)
        x = self.embed(x)
        out_hw = (int(x.shape[2]), int(x.shape[3]))
        feats = self.task_features(x)
        return OrderedDict(
            (name, self.heads[name](f, out_hw).float()) for name, f in zip(self.task_names, feats)
        )

    def use_domain(self, domain: int) -> None:
        """The data group whose BatchNorm state the next forwards use."""
        for m in self.modules():
            if isinstance(m, DomainBatchNorm2d):
                m.domain = domain

    def forward_list(self, x: torch.Tensor) -> List[torch.Tensor]:
        return list(self.forward(x).values())

    def parameter_count(self) -> int:
        """Trainable scalars (what the Rust ``parameter_count`` counts)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# --- the architectures (src/model/arch/) ---------------------------------------------------

def architecture_kind(config: dict) -> str:
    arch = config["model"].get("architecture") or {}
    return arch.get("kind", "hps")


class ArchitectureOptions(dict):
    """``model.architecture``'s options as the config gives them. A run's config.yaml records
    every one; an option a hand-written config leaves out is its default from
    ``mtl-train list --json``, and then options the architecture does not have are refused."""

    def __init__(self, kind: str, given: dict):
        super().__init__(given)
        self.kind = kind

    def __missing__(self, key: str):
        defaults = _entry("architectures", self.kind)["options"]
        unknown = sorted(set(self) - set(defaults))
        if unknown:
            raise ValueError(f"model.architecture.{unknown[0]}: not an option of architecture {self.kind!r}")
        if key not in defaults:
            raise KeyError(key)
        self[key] = defaults[key]
        return self[key]


def architecture_options(config: dict) -> ArchitectureOptions:
    arch = dict(config["model"].get("architecture") or {})
    kind = arch.pop("kind", "hps")
    return ArchitectureOptions(kind, arch)


def weighted_sum(weights: torch.Tensor, items: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k w_k items_k`` for weights ``[K]`` or ``[N, K]`` (as arch/mod.rs ``weighted_sum``:
    stack, scale, sum over the stack)."""
    stacked = torch.stack(list(items), 0)
    shape = [len(items)]
    if weights.dim() == 2:
        shape.append(weights.shape[0])
        weights = weights.t()
    shape += [1] * (stacked.dim() - len(shape))
    return (weights.reshape(shape).to(stacked.dtype) * stacked).sum(0)


def gate(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A softmax gate on the flattened input."""
    return F.softmax(linear(torch.flatten(x, 1)), dim=-1)


def mix(weights: torch.Tensor, outputs: Sequence[Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """Per feature (stage), the experts' outputs mixed with ``weights`` ``[N, experts]``."""
    return [weighted_sum(weights, [o[s] for o in outputs]) for s in range(len(outputs[0]))]


class TaskParams(nn.Module):
    """Parameters named by task (or by number): ``<name>`` directly under this module."""

    def add(self, name: str, value: torch.Tensor) -> None:
        self._parameters[name] = nn.Parameter(value)

    def __getitem__(self, name: str) -> nn.Parameter:
        return self._parameters[name]


class CrossStitch(MultiTaskModel):
    """``columns.<task>`` (one backbone per task) and ``stitch.<i>.<task>`` (T weights): after
    stage i, task t reads Σ_j stitch[i][t]_j · column j's output."""

    kind = "cross_stitch"

    def build_trunk(self) -> None:
        t = len(self.task_names)
        self.columns = Heads()
        for name in self.task_names:
            self.columns.add(name, self.new_backbone())
        own = float(self.options["self_weight"])
        other = (1.0 - own) / (t - 1) if t > 1 else 0.0
        self.stitch = nn.ModuleList()
        for _ in range(self.num_stages()):
            unit = TaskParams()
            for k, name in enumerate(self.task_names):
                unit.add(name, torch.tensor([own if j == k else other for j in range(t)], dtype=torch.float32))
            self.stitch.append(unit)

    def task_features(self, x):
        names = self.task_names
        inputs = [x for _ in names]
        feats: List[List[torch.Tensor]] = [[] for _ in names]
        last = self.num_stages() - 1
        for i, unit in enumerate(self.stitch):
            outs = [stage(self.columns[n], i, h) for n, h in zip(names, inputs)]
            inputs = [weighted_sum(unit[n], outs) for n in names]
            if self.spatial or i == last:
                for f, h in zip(feats, inputs):
                    f.append(h)
        return feats


class Attention(nn.Module):
    """One task's mask at one stage: 1×1 ``conv1`` – ``bn1`` – activation – 1×1 ``conv2`` –
    ``bn2`` – sigmoid (conv biases only without BatchNorm)."""

    def __init__(self, c_in: int, mid: int, c_out: int, bn: bool, act: str):
        super().__init__()
        self.conv1 = conv2d(c_in, mid, 1, 1, bias=not bn)
        self.bn1 = batch_norm(mid) if bn else None
        self.conv2 = conv2d(mid, c_out, 1, 1, bias=not bn)
        self.bn2 = batch_norm(c_out) if bn else None
        self.act = act

    def forward(self, x):
        h = self.conv1(x)
        h = activate(self.bn1(h) if self.bn1 is not None else h, self.act)
        h = self.conv2(h)
        return torch.sigmoid(self.bn2(h) if self.bn2 is not None else h)


class Mtan(MultiTaskModel):
    """The shared ``backbone``, ``attention.<task>.<i>`` masks and the shared
    ``attention_blocks.<i>`` between them (src/model/arch/mtan.rs)."""

    kind = "mtan"

    def build_trunk(self) -> None:
        if not self.spatial:
            raise ValueError("mtan needs a conv or resnet backbone")
        self.backbone = self.new_backbone()
        ws = self.stage_widths
        width = int(self.options["attention_width"])
        self.attention = Heads()
        for name in self.task_names:
            self.attention.add(name, nn.ModuleList([
                Attention(w if i == 0 else 2 * w, width if width > 0 else w, w, self.bn, self.act)
                for i, w in enumerate(ws)
            ]))
        self.attention_blocks = nn.ModuleList(
            [ConvBnAct(ws[i], ws[i + 1], self.bn, self.act) for i in range(len(ws) - 1)])

    def task_features(self, x):
        names = self.task_names
        previous: List[Optional[torch.Tensor]] = [None for _ in names]
        feats: List[List[torch.Tensor]] = [[] for _ in names]
        h = x
        for i in range(self.num_stages()):
            first, out = self.backbone.stage_parts(i, h)
            for t, name in enumerate(names):
                a = previous[t]
                if a is None:
                    inp = first
                else:
                    if a.shape[-2:] != first.shape[-2:]:
                        a = F.max_pool2d(a, kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
                    inp = torch.cat([first, a], dim=1)
                attended = self.attention[name][i](inp) * out
                if i < len(self.attention_blocks):
                    previous[t] = self.attention_blocks[i](attended)
                feats[t].append(attended)
            h = out
        return feats


class Gates(Heads):
    """``gates.<task>``: one gate module per task."""


class Mmoe(MultiTaskModel):
    """``experts.<k>`` (backbones) and ``gates.<task>`` (linear, softmax)."""

    kind = "mmoe"

    def build_trunk(self) -> None:
        k = int(self.options["experts"])
        self.experts = self.new_backbones(k)
        self.gates = Gates()
        for name in self.task_names:
            self.gates.add(name, nn.Linear(self.input_features(), k))

    def task_features(self, x):
        outputs = [e(x) for e in self.experts]
        return [mix(gate(self.gates[n], x), outputs) for n in self.task_names]


class Cgc(MultiTaskModel):
    """``shared_experts.<k>``, ``task_experts.<task>.<k>`` and ``gates.<task>`` over
    [shared experts, the task's experts]."""

    kind = "cgc"

    def build_experts(self) -> Tuple[int, int]:
        """``shared_experts.<k>`` and ``task_experts.<task>.<k>`` (CGC's and PLE's); returns
        their numbers."""
        ks, kt = int(self.options["shared_experts"]), int(self.options["task_experts"])
        self.shared_experts = self.new_backbones(ks)
        self.task_experts = Heads()
        for name in self.task_names:
            self.task_experts.add(name, self.new_backbones(kt))
        return ks, kt

    def build_trunk(self) -> None:
        ks, kt = self.build_experts()
        self.gates = Gates()
        for name in self.task_names:
            self.gates.add(name, nn.Linear(self.input_features(), ks + kt))

    def task_features(self, x):
        shared = [e(x) for e in self.shared_experts]
        return [mix(gate(self.gates[n], x), shared + [e(x) for e in self.task_experts[n]])
                for n in self.task_names]


class Ple(Cgc):
    """CGC levels, one per stage: ``shared_experts.<k>`` and ``task_experts.<task>.<k>``
    (backbones whose stage i runs at level i), ``gates.<task>.<i>`` and, below the last level,
    ``shared_gates.<i>`` over every expert (src/model/arch/ple.rs)."""

    kind = "ple"

    def build_trunk(self) -> None:
        ks, kt = self.build_experts()
        sizes = [self.input_features()]
        with torch.no_grad():
            was = self.shared_experts.training
            self.shared_experts.eval()
            h = torch.zeros(1, self.in_channels, self.image_size, self.image_size)
            for i in range(self.num_stages()):
                h = stage(self.shared_experts[0], i, h)
                sizes.append(h.numel())
            self.shared_experts.train(was)
        levels = self.num_stages()
        self.gates = Gates()
        for name in self.task_names:
            self.gates.add(name, nn.ModuleList([nn.Linear(sizes[i], ks + kt) for i in range(levels)]))
        every = ks + kt * len(self.task_names)
        self.shared_gates = nn.ModuleList([nn.Linear(sizes[i], every) for i in range(levels - 1)])

    def task_features(self, x):
        names = self.task_names
        shared_input = x
        inputs = [x for _ in names]
        feats: List[List[torch.Tensor]] = [[] for _ in names]
        levels = self.num_stages()
        for i in range(levels):
            shared_out = [stage(e, i, shared_input) for e in self.shared_experts]
            own_out = [[stage(e, i, h) for e in self.task_experts[n]] for n, h in zip(names, inputs)]
            inputs = [weighted_sum(gate(self.gates[n][i], h), shared_out + own)
                      for n, h, own in zip(names, inputs, own_out)]
            if self.spatial or i == levels - 1:
                for f, h in zip(feats, inputs):
                    f.append(h)
            if i < levels - 1:
                every = shared_out + [o for own in own_out for o in own]
                shared_input = weighted_sum(gate(self.shared_gates[i], shared_input), every)
        return feats


class DselectKGate(nn.Module):
    """``z_logits`` (k·m outputs) and ``w_logits`` (k outputs) on the flattened image."""

    def __init__(self, d_in: int, experts: int, k: int, gamma: float):
        super().__init__()
        self.m = max(1, math.ceil(math.log2(experts)))
        self.k = k
        self.gamma = gamma
        self.z_logits = nn.Linear(d_in, k * self.m)
        self.w_logits = nn.Linear(d_in, k)
        with torch.no_grad():
            for p in self.z_logits.parameters():
                p.uniform_(-gamma / 100, gamma / 100)
            for p in self.w_logits.parameters():
                p.uniform_(-0.05, 0.05)
        codes = [[(e >> b) & 1 == 1 for b in reversed(range(self.m))] for e in range(experts)]
        self.register_buffer("codes", torch.tensor(codes).view(1, 1, experts, self.m), persistent=False)

    def smooth_step(self, t):
        g = self.gamma
        cubic = t ** 3 * (-2.0 / g ** 3) + t * (3.0 / (2.0 * g)) + 0.5
        return torch.where(t <= -g / 2.0, torch.zeros_like(t),
                           torch.where(t >= g / 2.0, torch.ones_like(t), cubic))

    def forward(self, x):
        """(expert weights ``[N, experts]``, selectors ``[N, k, experts]``)."""
        flat = torch.flatten(x, 1)
        s = self.smooth_step(self.z_logits(flat).reshape(-1, self.k, 1, self.m))
        selectors = torch.where(self.codes, s, 1 - s).prod(-1)
        weights = F.softmax(self.w_logits(flat), dim=1)
        return (weights.unsqueeze(-1) * selectors).sum(1), selectors


class DselectK(MultiTaskModel):
    """``experts.<e>`` and ``gates.<task>.z_logits|w_logits`` (src/model/arch/dselect_k.rs).
    In training mode ``self.regularizer`` holds the gates' regularization term."""

    kind = "dselect_k"

    def build_trunk(self) -> None:
        e, k = int(self.options["experts"]), int(self.options["k"])
        self.experts = self.new_backbones(e)
        self.gates = Gates()
        for name in self.task_names:
            self.gates.add(name, DselectKGate(self.input_features(), e, k, float(self.options["gamma"])))
        self.regularizer = None

    def task_features(self, x):
        outputs = [e(x) for e in self.experts]
        feats, reg = [], None
        power_of_two = len(self.experts) & (len(self.experts) - 1) == 0
        for name in self.task_names:
            weights, selectors = self.gates[name](x)
            if self.training:
                r = -(selectors * torch.log(selectors + 1e-6)).sum() * float(self.options["entropy_reg"])
                if not power_of_two:
                    r = r + (1 / selectors.sum(-1)).sum()
                reg = r if reg is None else reg + r
            feats.append(mix(weights, outputs))
        self.regularizer = reg
        return feats


class Ltb(MultiTaskModel):
    """``columns.<n>`` (T backbones; stage i of column n is node (i, n)) and
    ``branches.<i>.<n>`` (node (i, n)'s logits over the nodes of stage i − 1). Evaluation fixes
    every parent to the largest logit; training samples them with the straight-through
    Gumbel-softmax at temperature ``options['temperature'] / sqrt(self.epoch + 1)`` (torch's
    generator, not mtl's streams)."""

    kind = "ltb"
    epoch = 0

    def build_trunk(self) -> None:
        if not self.spatial or self.num_stages() < 2:
            raise ValueError("ltb needs a conv or resnet backbone of at least 2 stages")
        t = len(self.task_names)
        self.columns = self.new_backbones(t)
        self.branches = nn.ModuleDict()
        for i in range(1, self.num_stages()):
            p = TaskParams()
            for n in range(t):
                p.add(str(n), torch.zeros(t))
            self.branches[str(i)] = p

    def choices(self, i: int) -> torch.Tensor:
        """``[T (node), T (parent)]`` one-hot parent choices of stage i's nodes."""
        logits = torch.stack([self.branches[str(i)][str(n)] for n in range(len(self.columns))], 0)
        if self.training:
            tau = float(self.options["temperature"]) / math.sqrt(self.epoch + 1)
            return F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
        return F.one_hot(logits.argmax(-1), len(self.columns)).float()

    def tree(self) -> List[List[int]]:
        """Per stage from 1, every node's parent in the fixed (evaluation) tree."""
        with torch.no_grad():
            return [[int(v) for v in torch.stack([self.branches[str(i)][str(n)] for n in range(len(self.columns))]).argmax(-1)]
                    for i in range(1, self.num_stages())]

    def task_features(self, x):
        stages = self.num_stages()
        nodes = [[stage(c, 0, x) for c in self.columns]]
        choices = []
        for i in range(1, stages - 1):
            parents = self.choices(i)
            nodes.append([stage(c, i, weighted_sum(parents[n], nodes[i - 1])) for n, c in enumerate(self.columns)])
            choices.append(parents)
        leaves = self.choices(stages - 1)
        feats = []
        for t, col in enumerate(self.columns):
            ancestry = leaves[t]
            path = [weighted_sum(ancestry, nodes[stages - 2])]
            leaf = stage(col, stages - 1, path[0])
            for i in range(stages - 2, 0, -1):
                ancestry = (ancestry.unsqueeze(0) @ choices[i - 1]).squeeze(0)
                path.append(weighted_sum(ancestry, nodes[i - 1]))
            path.reverse()
            feats.append(path + [leaf])
        return feats


# --- task fusion: PAD-Net and MTI-Net (src/model/arch/fusion.rs, padnet.rs, mtinet.rs) ---------

def head_output(task: dict) -> Tuple[bool, int, bool]:
    """(dense, channels, unit_length) of a task's head output, as the task kinds say."""
    kind = task["kind"]
    if kind == "classification":
        return False, int(task["classes"]), False
    if kind == "segmentation":
        return True, int(task["classes"]), False
    if kind == "regression":
        return True, REGRESSION_CHANNELS, False
    if kind == "normals":
        return True, NORMAL_CHANNELS, True
    raise ValueError(f"unknown task kind {kind!r}")


class Predictor(nn.Module):
    """A task's initial prediction in its head's output shape: 1×1 ``classifier`` resized to
    the input (L2-normalized for normals), or mean pooling and a linear ``fc``."""

    def __init__(self, task: dict, c_in: int):
        super().__init__()
        self.dense, n, self.unit_length = head_output(task)
        if self.dense:
            self.classifier = conv2d(c_in, n, 1, 1, bias=True)
        else:
            self.fc = nn.Linear(c_in, n)

    def forward(self, f: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
        if not self.dense:
            return self.fc(f.mean(dim=(-1, -2))).float()
        y = self.classifier(f)
        if tuple(y.shape[-2:]) != tuple(out_hw):
            y = F.interpolate(y, size=tuple(out_hw), mode="bilinear", align_corners=False)
        y = y.float()
        return F.normalize(y, dim=1, eps=1e-12) if self.unit_length else y


class Distillation(nn.Module):
    """Multi-modal distillation for one target task: ``F_t + σ(gate(F_t)) ⊙ Σ_{s≠t}
    messages.<s>(F_s)``, 3×3 convolutions with biases (PAD-Net's eq. 3)."""

    def __init__(self, target: int, names: Sequence[str], width: int):
        super().__init__()
        self.target = target
        self.gate = conv2d(width, width, 3, 1, bias=True)
        messages = Heads()
        self.sources = [s for s in range(len(names)) if s != target]
        for s in self.sources:
            messages.add(names[s], conv2d(width, width, 3, 1, bias=True))
        self.messages = messages
        self.names = list(names)

    def forward(self, f: Sequence[torch.Tensor]) -> torch.Tensor:
        own = f[self.target]
        gate = torch.sigmoid(self.gate(own))
        m = None
        for s in self.sources:
            msg = self.messages[self.names[s]](f[s])
            m = msg if m is None else m + msg
        return own if m is None else own + gate * m


class _Fusion(MultiTaskModel):
    """What PAD-Net and MTI-Net share: ``aux_weight`` and the initial predictions, kept in
    ``self.auxiliary`` (task index, weight, prediction) by a training-mode forward."""

    def fusion_setup(self) -> None:
        if not self.spatial:
            raise ValueError(f"{self.kind} needs a conv or resnet backbone")
        self.aux_weight = float(self.options["aux_weight"])
        self.task_configs = list(self.config["tasks"])
        self.auxiliary: List[Tuple[int, float, torch.Tensor]] = []

    def predict_all(self, predictors: Sequence[nn.Module], feats: Sequence[torch.Tensor], out_hw) -> None:
        if self.training:
            for t, (p, f) in enumerate(zip(predictors, feats)):
                self.auxiliary.append((t, self.aux_weight, p(f, out_hw)))

    def forward(self, x: torch.Tensor, domain: Optional[int] = None):
        self.auxiliary = []
        return super().forward(x, domain)


class PadNet(_Fusion):
    """``initial.<task>`` on the coarsest map, ``aux.<task>`` predictors, ``distill.<task>``;
    each head reads the finer backbone maps and its distilled features (padnet.rs)."""

    kind = "padnet"

    def build_trunk(self) -> None:
        self.fusion_setup()
        self.backbone = self.new_backbone()
        w = self.stage_widths[-1]
        self.initial, self.aux, self.distill = Heads(), Heads(), Heads()
        for t, task in enumerate(self.task_configs):
            name = task["name"]
            self.initial.add(name, ConvBnAct(w, w, self.bn, self.act))
            self.aux.add(name, Predictor(task, w))
            self.distill.add(name, Distillation(t, self.task_names, w))

    def task_features(self, x):
        maps = self.backbone(x)
        top, skips = maps[-1], list(maps[:-1])
        initial = [self.initial[n](top) for n in self.task_names]
        self.predict_all([self.aux[n] for n in self.task_names], initial, tuple(x.shape[-2:]))
        return [skips + [self.distill[n](initial)] for n in self.task_names]


class Propagation(nn.Module):
    """MTI-Net's feature propagation into one scale: a shared ``bottleneck`` over every task's
    coarser initial features, upsampled, then per task a squeeze-and-excitation
    ``se.<task>.fc1|fc2`` (reduction 4)."""

    def __init__(self, names: Sequence[str], coarse: int, width: int, bn: bool, act: str):
        super().__init__()
        self.bottleneck = ConvBnAct(len(names) * coarse, width, bn, act)
        self.se = Heads()
        squeezed = max(width // 4, 1)
        for name in names:
            m = nn.Module()
            m.fc1 = nn.Linear(width, squeezed)
            m.fc2 = nn.Linear(squeezed, width)
            self.se.add(name, m)
        self.names = list(names)
        self.act = act

    def forward(self, coarse: Sequence[torch.Tensor], like: torch.Tensor) -> List[torch.Tensor]:
        shared = self.bottleneck(torch.cat(list(coarse), dim=1))
        shared = F.interpolate(shared, size=tuple(like.shape[-2:]), mode="bilinear", align_corners=False)
        pooled = shared.mean(dim=(-1, -2))
        out = []
        for name in self.names:
            se = self.se[name]
            s = torch.sigmoid(se.fc2(activate(se.fc1(pooled), self.act)))
            out.append(shared * s[:, :, None, None])
        return out


class MtiNet(_Fusion):
    """Per scale ``initial.<task>.<i>``, ``aux.<task>.<i>``, ``distill.<task>.<i>`` and, below
    the coarsest, ``propagate.<i>``; heads read the distilled features of every scale
    (mtinet.rs)."""

    kind = "mtinet"

    def build_trunk(self) -> None:
        self.fusion_setup()
        self.backbone = self.new_backbone()
        ws = self.stage_widths
        last = len(ws) - 1
        self.initial, self.aux, self.distill = Heads(), Heads(), Heads()
        for t, task in enumerate(self.task_configs):
            name = task["name"]
            self.initial.add(name, nn.ModuleList(
                [ConvBnAct(w if i == last else 2 * w, w, self.bn, self.act) for i, w in enumerate(ws)]))
            self.aux.add(name, nn.ModuleList([Predictor(task, w) for w in ws]))
            self.distill.add(name, nn.ModuleList([Distillation(t, self.task_names, w) for w in ws]))
        self.propagate = nn.ModuleList(
            [Propagation(self.task_names, ws[i + 1], ws[i], self.bn, self.act) for i in range(last)])

    def task_features(self, x):
        names = self.task_names
        out_hw = tuple(x.shape[-2:])
        maps = self.backbone(x)
        feats: List[List[torch.Tensor]] = [[] for _ in names]
        coarser = None
        for i in range(len(maps) - 1, -1, -1):
            m = maps[i]
            if coarser is not None:
                inputs = [torch.cat([m, p], dim=1) for p in self.propagate[i](coarser, m)]
            else:
                inputs = [m for _ in names]
            initial = [self.initial[n][i](inp) for n, inp in zip(names, inputs)]
            self.predict_all([self.aux[n][i] for n in names], initial, out_hw)
            for t, n in enumerate(names):
                feats[t].append(self.distill[n][i](initial))
            coarser = initial
        return [list(reversed(f)) for f in feats]


ARCHITECTURES = {
    cls.kind: cls for cls in (MultiTaskModel, CrossStitch, Mtan, Mmoe, Cgc, Ple, DselectK, Ltb, PadNet, MtiNet)
}


def build_model(config: dict) -> MultiTaskModel:
    """A freshly initialised model for a parsed ``config.yaml`` (a dict)."""
    kind = architecture_kind(config)
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r} ({', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[kind](config)


def load_config(path: Union[str, Path]) -> dict:
    import yaml

    with open(path, "r", encoding="utf-8") as f:
        return yaml.safe_load(f)


def resolve_checkpoint(path: Union[str, Path], which: str = "BEST") -> Tuple[Path, Path]:
    """``(config.yaml, model.safetensors)`` for a run directory, a checkpoint directory or a
    ``model.safetensors`` file. For a run directory ``which`` is ``BEST``, ``LATEST`` (read
    from ``checkpoints/<which>``) or a checkpoint directory name such as ``step-000500``."""
    p = Path(path)
    if p.is_file():
        ckpt = p.parent
        weights = p
    elif (p / WEIGHTS).is_file():
        ckpt = p
        weights = p / WEIGHTS
    elif (p / CONFIG).is_file():
        ckpts = p / "checkpoints"
        if which in POINTERS:
            pointer = ckpts / which
            if not pointer.is_file():
                raise FileNotFoundError(f"{pointer} does not exist (no {which} checkpoint yet?)")
            name = pointer.read_text(encoding="utf-8").strip()
            if not name:
                raise ValueError(f"{pointer} is empty")
        else:
            name = which
        ckpt = ckpts / name
        weights = ckpt / WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} does not exist")
        return p / CONFIG, weights
    else:
        raise FileNotFoundError(f"{p} is neither a run directory (with {CONFIG}) nor a checkpoint")
    # A checkpoint dir: its own config.yaml if it has one, else the run's (<run>/checkpoints/<ckpt>).
    for cand in (ckpt / CONFIG, ckpt.parent.parent / CONFIG):
        if cand.is_file():
            return cand, weights
    raise FileNotFoundError(f"no {CONFIG} found for {weights}")


def load_run(
    path: Union[str, Path], which: str = "BEST", device: Union[str, torch.device] = "cpu"
) -> MultiTaskModel:
    """Builds the run's model and loads a checkpoint with ``strict=True``; eval mode."""
    from safetensors.torch import load_file

    config_path, weights = resolve_checkpoint(path, which)
    model = build_model(load_config(config_path))
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.checkpoint = str(weights)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: MultiTaskModel, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """Eval-mode forward of a float NCHW batch; contiguous fp32 CPU outputs by task name."""
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = model(x.to(device=dev, dtype=torch.float32))
    finally:
        model.train(was_training)
    return OrderedDict((k, v.detach().float().cpu().contiguous()) for k, v in out.items())


def ctcvr(model: MultiTaskModel, outputs: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """ESMM: for each task ``given`` a parent, pCTCVR = σ(own) · σ(parent), computed as
    src/tasks/binary.rs does (exp of the summed log-sigmoids), ``[N]`` by task name."""
    return OrderedDict(
        (name, (F.logsigmoid(outputs[name][:, 0]) + F.logsigmoid(outputs[parent][:, 0])).exp())
        for name, parent in model.given.items()
    )


def table_predictions(model: MultiTaskModel, outputs: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """The columns ``mtl-train predict --table`` writes, from ``model``'s outputs: a ``binary``
    task's probability (σ of its logit; pCVR for an ESMM child), a ``value`` task's value, a
    ``classification`` task's class and ``<task>_probability``. float64 ``[N]`` each."""
    columns: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, out in outputs.items():
        kind = model.task_kinds[name]
        out = out.double()
        if kind == "classification":
            p, c = out.softmax(1).max(1)
            columns[name], columns[f"{name}_probability"] = c.double(), p
        elif kind == "binary":
            columns[name] = out[:, 0].sigmoid()
        elif kind == "value":
            columns[name] = out[:, 0]
        else:
            raise ValueError(f"task {name!r}: a {kind} task does not predict on table rows")
    return columns


class TupleOutputs(nn.Module):
    """The model with its outputs as a tuple in task order (what ONNX and TorchScript carry)."""

    def __init__(self, model: MultiTaskModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.model(x).values())


def example_input(config: dict, n: int, gen: torch.Generator, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """``n`` valid inputs: random normalized images ``[n, C, H, W]``, or for a table run mapped
    rows ``[n, F]`` of random standardized entries and random vocabulary indices."""
    fitted = table_mapping(config)
    if fitted is None:
        c, h, w = input_shape(config)
        h, w = size or (h, w)
        return torch.randn(n, c, h, w, generator=gen)
    parts = [torch.randn(n, dense_width(fitted), generator=gen)]
    for c in fitted["categorical"]:
        parts.append(torch.randint(len(c["vocab"]) + 1, (n, 1), generator=gen).float())
    return torch.cat(parts, 1)


def export_onnx(
    model: MultiTaskModel, path: Union[str, Path], size: Optional[Tuple[int, int]] = None,
    metadata: Optional[str] = None,
) -> float:
    """Writes ``model`` (eval mode) as ONNX to ``path``: input ``input`` ``[N, C, H, W]`` (a
    table run's mapped rows: ``[N, F]``) with N free, one output per task named after it, and
    ``metadata`` (mtl-train export's description) as ``metadata_props["mtl.json"]``. Checks the
    file with ``onnx.checker`` and returns the largest relative difference to ``model`` that
    onnxruntime gives on a batch of another size (NaN when onnxruntime is not installed)."""
    import onnx

    model = model.eval()
    wrapped = TupleOutputs(model).eval()
    gen = torch.Generator().manual_seed(0)
    example = example_input(model.config, 2, gen, size)
    batch = torch.export.Dim("batch", min=1)
    # The exporter reports every step and warns about operators this model does not use.
    import logging
    import warnings

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(path),
            input_names=["input"],
            output_names=list(model.task_names),
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if metadata is not None:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {"mtl.json": metadata})
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    try:
        import onnxruntime
    except ImportError:
        return float("nan")
    probe = example_input(model.config, 3, gen, size)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": probe.numpy()})
    with torch.no_grad():
        want = wrapped(probe)
    worst = 0.0
    for a, b in zip(got, want):
        b = b.numpy()
        worst = max(worst, float(abs(a - b).max() / max(abs(b).max(), 1e-6)))
    return worst


def _summary(model: MultiTaskModel, config: dict) -> str:
    sd = model.state_dict()
    groups: "OrderedDict[str, List[int]]" = OrderedDict()
    for key, t in sd.items():
        prefix = ".".join(key.split(".")[:2]) if key.startswith("heads.") else key.split(".")[0]
        g = groups.setdefault(prefix, [0, 0])
        g[0] += 1
        g[1] += t.numel()
    bb = config["model"]["backbone"]
    arch = ", ".join([model.kind] + [f"{k}={v}" for k, v in model.options.items()])
    lines = [
        f"checkpoint: {getattr(model, 'checkpoint', '-')}",
        f"architecture: {arch}",
        f"backbone: {bb['kind']} widths={list(bb['widths'])} depth={_get(bb, 'depth', 1)} "
        f"norm={_get(bb, 'norm', 'batch')} activation={_get(bb, 'activation', 'relu')}",
        f"input: {list(input_shape(config))}",
        f"parameters: {model.parameter_count()}",
        f"tensors: {len(sd)}",
    ]
    for prefix, (n, numel) in groups.items():
        lines.append(f"  {prefix}: {n} tensors, {numel} values")
    if isinstance(model, Ltb):
        for i, parents in enumerate(model.tree(), start=1):
            lines.append(f"  tree: stage {i} parents {parents}")
    c, h, w = input_shape(config)
    try:
        out = predict(model, torch.zeros(2, c, h, w))
    except Exception as e:  # noqa: BLE001 - a summary reports, it does not fail
        lines.append(f"  forward failed: {e}")
    else:
        for name, t in out.items():
            lines.append(f"  output {name} ({model.task_kinds[name]}): {list(t.shape)}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory, checkpoint directory or model.safetensors")
    ap.add_argument("--checkpoint", default="BEST", help="BEST, LATEST or a checkpoint name (default BEST)")
    ap.add_argument("--check", action="store_true", help="load and print a summary")
    ap.add_argument("--keys", action="store_true", help="with --check: also list every tensor")
    ap.add_argument("--input", help="safetensors file holding an NCHW float tensor named 'input'")
    ap.add_argument("--output", help="safetensors file to write each task's logits to")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--onnx", help="write the model as ONNX to this file")
    ap.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="with --onnx: input height and width")
    ap.add_argument("--metadata", help="with --onnx: a file whose text goes into the model's metadata_props as mtl.json")
    args = ap.parse_args(argv)
    if (args.input is None) != (args.output is None):
        ap.error("--input and --output go together")
    if not args.check and args.input is None and args.onnx is None:
        args.check = True

    from safetensors.torch import load_file, save_file

    config_path, _ = resolve_checkpoint(args.run, args.checkpoint)
    model = load_run(args.run, args.checkpoint, args.device)
    if args.check:
        print(_summary(model, load_config(config_path)))
        if args.keys:
            for key, t in model.state_dict().items():
                print(f"    {key} {list(t.shape)} {str(t.dtype).replace('torch.', '')}")
    if args.input is not None:
        tensors = load_file(args.input)
        if "input" not in tensors:
            raise SystemExit(f"{args.input} has no tensor named 'input' (has {sorted(tensors)})")
        out = predict(model, tensors["input"])
        save_file(dict(out), args.output, metadata={"checkpoint": str(model.checkpoint)})
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in out.items())
        print(f"wrote {args.output}: {shapes}")
    if args.onnx is not None:
        for package in ("onnx", "onnxscript"):
            try:
                __import__(package)
            except ImportError:
                raise SystemExit(f"mtl_torch: --onnx needs the {package} package: pip install onnx onnxscript")
        metadata = Path(args.metadata).read_text(encoding="utf-8") if args.metadata else None
        worst = export_onnx(model.cpu(), args.onnx, tuple(args.size) if args.size else None, metadata)
        shape = list(example_input(model.config, 1, torch.Generator(), tuple(args.size) if args.size else None).shape)
        shape = ", ".join(["N"] + [str(d) for d in shape[1:]])
        check = "onnxruntime not installed" if worst != worst else f"onnxruntime vs PyTorch: {worst:.1e}"
        print(f"wrote {args.onnx} (ONNX, input [{shape}], outputs {', '.join(model.task_names)}; {check})")
        if model.config.get("precision") == "bf16":
            print("note: the run computes in bf16, the ONNX model in fp32: outputs differ by bf16 rounding")
        if worst == worst and worst > 1e-4:
            raise SystemExit(f"mtl_torch: {args.onnx}: onnxruntime differs from PyTorch by {worst:.2e} (relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
