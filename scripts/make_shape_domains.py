#!/usr/bin/env python3
"""Generated domains in the Office-31 layout, for multi-input MTL without a download.

Six shape classes (circle, square, triangle, cross, ring, bar) are drawn at a random place and
size, in a colour opposite the background's, on a random two-tone textured background (32×32
RGB). Three domains render
the same classes differently, as Office-31's Amazon, DSLR and Webcam photograph the same
objects differently:

- `plain`:    the drawing as it is;
- `inverted`: colours inverted, then rotated by a random multiple of 90° and maybe mirrored;
- `noisy`:    Gaussian pixel noise (σ = 40) after a 3×3 box blur.

Domains have different sizes (120, 80 and 50 images per class by default), so the epoch rule
(`train.epoch_by`) and wrap-around of the smaller ones are exercised. Everything comes from
numpy's PCG64 seeded with --seed and the domain's index, so the files are the same on every
machine.

    python scripts/make_shape_domains.py data/shape-domains            # then configs/shapes_domains.yaml
    python scripts/make_shape_domains.py DIR --per-class 120 80 50 --seed 0

Writes DIR/<domain>/images/<class>/<i>.png (`data.dataset: office31`'s layout).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIDE = 32
CLASSES = ["circle", "square", "triangle", "cross", "ring", "bar"]
DOMAINS = ["plain", "inverted", "noisy"]


def background(rng: np.random.Generator) -> np.ndarray:
    """A random colour and a close one (±40 per channel) in stripes or checks of a random period."""
    a = rng.integers(0, 256, 3)
    b = np.clip(a + rng.integers(-40, 41, 3), 0, 255)
    period = int(rng.integers(3, 9))
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    mask = ((x // period) % 2 == 0) if rng.random() < 0.5 else (((x // period) + (y // period)) % 2 == 0)
    return np.where(mask[..., None], a, b).astype(np.uint8)


def draw_shape(img: Image.Image, kind: str, base: np.ndarray, rng: np.random.Generator) -> None:
    """The shape in a colour that stands out from the background `base` (the opposite colour, jittered)."""
    d = ImageDraw.Draw(img)
    r = float(rng.uniform(8, 13))
    cx, cy = rng.uniform(r + 1, SIDE - r - 1, 2)
    colour = tuple(int(v) for v in np.clip(255 - base + rng.integers(-50, 51, 3), 0, 255))
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, int(r / 3))
    if kind == "circle":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif kind == "cross":
        d.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=colour)
        d.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=colour)
    elif kind == "ring":
        d.ellipse(box, outline=colour, width=w)
    elif kind == "bar":
        angle = rng.uniform(0, math.pi)
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=w + 1)


def render(domain: str, kind: str, rng: np.random.Generator) -> Image.Image:
    base = background(rng)
    img = Image.fromarray(base, "RGB")
    draw_shape(img, kind, base[0, 0], rng)
    if domain == "inverted":
        img = Image.fromarray(255 - np.asarray(img), "RGB").rotate(90 * int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif domain == "noisy":
        img = img.filter(ImageFilter.BoxBlur(1))
        noisy = np.asarray(img).astype(np.float64) + rng.normal(0, 40, (SIDE, SIDE, 3))
        img = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, nargs=3, default=[120, 80, 50], metavar="N", help="images per class per domain")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for k, (domain, n) in enumerate(zip(DOMAINS, args.per_class)):
        rng = np.random.Generator(np.random.PCG64([args.seed, k]))
        for kind in CLASSES:
            folder = args.out / domain / "images" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                render(domain, kind, rng).save(folder / f"{i:04d}.png")
        print(f"{args.out / domain}: {len(CLASSES)} classes × {n} images")


if __name__ == "__main__":
    main()
