#!/usr/bin/env python3
"""Generated stand-ins for the MNIST files: "glyph digits", so that the `multimnist` dataset
(src/data/multimnist.rs: two digits overlaid, a left and a right label) runs without a download.

Each digit 0–9 is a pen-stroke skeleton (polylines and ellipse arcs in a unit box) drawn with a
random stroke width (1.6–2.8 px), its control points jittered (±0.07 of the box), then scaled
(0.80–1.05 per axis), sheared (±0.25), rotated (±15°) and placed in a 28×28 canvas with its
20×20 box centred as MNIST's are (±1.5 px). Pixels are rendered at 2× and averaged, uint8 with
the ink at 255. Everything comes from numpy's PCG64 seeded with --seed (train) and --seed + 1
(test), so the files are the same on every machine.

    .venv/bin/python scripts/make_glyph_digits.py data/glyph-digits            # 60000 + 10000, as MNIST
    .venv/bin/python scripts/make_glyph_digits.py DIR --train 12000 --test 2000 --seed 0

Writes DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx, MNIST's format);
configs/multimnist_glyphs.yaml reads them.
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

SIDE = 28
SUPER = 2  # rendering resolution factor


def _ellipse(cx, cy, rx, ry, start=0.0, end=360.0, n=18):
    a = np.radians(np.linspace(start, end, n))
    return [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in a]


# Strokes of each digit in a unit box (x right, y down): lists of points joined by segments.
STROKES = {
    0: [_ellipse(0.5, 0.5, 0.3, 0.42, n=24)],
    1: [[(0.35, 0.25), (0.55, 0.08), (0.55, 0.92)]],
    2: [[(0.2, 0.3), (0.3, 0.13), (0.55, 0.08), (0.77, 0.2), (0.75, 0.42), (0.2, 0.92), (0.85, 0.92)]],
    3: [[(0.2, 0.14), (0.65, 0.1), (0.78, 0.28), (0.45, 0.48), (0.8, 0.62), (0.72, 0.86), (0.2, 0.9)]],
    4: [[(0.66, 0.92), (0.66, 0.08), (0.14, 0.66), (0.86, 0.66)]],
    5: [[(0.8, 0.1), (0.28, 0.1), (0.24, 0.45), (0.6, 0.4), (0.8, 0.6), (0.7, 0.86), (0.2, 0.9)]],
    6: [[(0.72, 0.08), (0.38, 0.32), (0.25, 0.65)], _ellipse(0.5, 0.68, 0.26, 0.22, n=20)],
    7: [[(0.15, 0.12), (0.85, 0.12), (0.4, 0.92)]],
    8: [_ellipse(0.5, 0.29, 0.22, 0.2, n=18), _ellipse(0.5, 0.71, 0.27, 0.21, n=18)],
    9: [_ellipse(0.5, 0.32, 0.25, 0.22, n=20), [(0.75, 0.32), (0.62, 0.92)]],
}

_grid = (np.arange(SIDE * SUPER) + 0.5) / SUPER
_PX, _PY = np.meshgrid(_grid, _grid)
_POINTS = np.stack([_PX.ravel(), _PY.ravel()], 1)  # pixel centres, in 28-px units


def _segments(digit: int, rng: np.random.Generator) -> np.ndarray:
    """``[S, 2, 2]`` stroke segments of one random instance, in 28-px canvas coordinates."""
    m = np.eye(2)
    m = m @ np.diag(rng.uniform(0.80, 1.05, 2))
    m = m @ np.array([[1.0, rng.uniform(-0.25, 0.25)], [0.0, 1.0]])
    a = np.radians(rng.uniform(-15, 15))
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ m
    centre = np.array([SIDE / 2, SIDE / 2]) + rng.uniform(-1.5, 1.5, 2)
    segs = []
    for stroke in STROKES[digit]:
        p = np.asarray(stroke) + rng.uniform(-0.07, 0.07, (len(stroke), 2))
        p = (p - 0.5) * 20.0 @ m.T + centre
        segs.extend(zip(p[:-1], p[1:]))
    return np.asarray(segs)


def render(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One 28×28 uint8 glyph."""
    segs = _segments(digit, rng)
    width = rng.uniform(1.6, 2.8)
    a, b = segs[:, 0], segs[:, 1]                      # [S, 2]
    ab = b - a
    t = ((_POINTS[:, None, :] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    nearest = a + t[..., None] * ab                    # [P, S, 2]
    d = np.sqrt(((_POINTS[:, None, :] - nearest) ** 2).sum(-1)).min(1)
    ink = np.clip(width / 2 + 0.5 - d, 0.0, 1.0)       # a soft pen edge
    ink = ink.reshape(SIDE, SUPER, SIDE, SUPER).mean((1, 3))
    return np.round(ink * 255).astype(np.uint8)


def make(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.stack([render(int(d), rng) for d in labels]) if n else np.zeros((0, SIDE, SIDE), np.uint8)
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's idx format: magic 0x0000080N (uint8, N dimensions), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write(out: Path, train: int, test: int, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", train, seed), ("t10k", test, seed + 1)):
        images, labels = make(n, s)
        (out / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (out / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write(args.out, args.train, args.test, args.seed)
    print(f"wrote {args.train} + {args.test} glyph digits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
