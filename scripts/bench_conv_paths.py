#!/usr/bin/env python3
"""The convolution paths libtorch offers on the CPU, per ResNet-18 layer shape: forward +
backward (input and weight gradients) time of one 3×3 convolution, channels-last fp32.

- ``onednn``: ``F.conv2d`` as libtorch runs it (oneDNN's JIT kernels, weights reordered to
  oneDNN's blocked layout inside every call);
- ``slow_conv2d``: the same op with oneDNN switched off (libtorch's im2col + GEMM per sample);
- ``im2col+gemm``: the whole batch as one im2col matrix and one MKL ``mm`` per pass, written
  with tensor ops (autograd differentiates it).

It answers whether an engine built on libtorch could route a convolution around oneDNN to make
a step faster (docs/results/BENCHMARKS.md, "Where a ResNet-18 step goes"). Each row also shows the
largest relative difference of the other paths' outputs and gradients from oneDNN's.

    python scripts/bench_conv_paths.py --threads 2 --batch 16
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# (in channels, out channels, input side, stride): ResNet-18's 3×3 layers on 32×32 images and
# its decoder's first layers.
SHAPES = [(64, 64, 32, 1), (64, 128, 32, 2), (128, 128, 16, 1), (128, 256, 16, 2), (256, 256, 8, 1),
          (256, 512, 8, 2), (512, 512, 4, 1), (768, 64, 8, 1)]


def im2col_conv(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """A 3×3, padding-1 convolution of channels-last ``x`` by channels-last ``w`` as one GEMM."""
    n, c, h, wd = x.shape
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # NHWC, padded
    oh, ow = (h - 1) // stride + 1, (wd - 1) // stride + 1
    cols = torch.cat([xp[:, dy:dy + stride * (oh - 1) + 1:stride, dx:dx + stride * (ow - 1) + 1:stride, :]
                      for dy in range(3) for dx in range(3)], dim=-1)
    o = w.shape[0]
    y = cols.reshape(n * oh * ow, 9 * c).mm(w.permute(0, 2, 3, 1).reshape(o, 9 * c).t())
    return y.view(n, oh, ow, o).permute(0, 3, 1, 2)


def run(path: str, x: torch.Tensor, w: torch.Tensor, stride: int, reps: int):
    def once():
        x.grad, w.grad = None, None
        if path == "im2col+gemm":
            y = im2col_conv(x, w, stride)
        else:
            with torch.backends.mkldnn.flags(enabled=path == "onednn"):
                y = F.conv2d(x, w, stride=stride, padding=1)
        y.backward(torch.ones_like(y))
        return y
    for _ in range(3):
        once()
    t0 = time.perf_counter()
    for _ in range(reps):
        y = once()
    return 1000 * (time.perf_counter() - t0) / reps, (y.detach(), x.grad.clone(), w.grad.clone())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = ["onednn", "slow_conv2d", "im2col+gemm"]
    print(f"batch {args.batch}, {args.threads} threads, channels-last fp32, forward + backward, ms per call\n")
    print("| in → out, side, stride | " + " | ".join(paths) + " | largest relative difference from oneDNN |")
    print("|---" * (len(paths) + 2) + "|")
    for ci, co, side, stride in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, ci, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(co, ci, 3, 3, generator=g) / (9 * ci) ** 0.5).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        w.requires_grad_()
        results = {p: run(p, x, w, stride, args.reps) for p in paths}
        ref = results["onednn"][1]
        diff = max(((a - b).abs().max() / b.abs().max()).item()
                   for p in paths[1:] for a, b in zip(results[p][1], ref))
        print(f"| {ci} → {co}, {side}², {stride} | " + " | ".join(f"{results[p][0]:.1f}" for p in paths) + f" | {diff:.1e} |")


if __name__ == "__main__":
    main()
