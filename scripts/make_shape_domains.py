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

With `--style looks` the three domains differ in pixel statistics instead, as photographs from
different sources do (product shots on white against webcam pictures):

- `light`:   dark shapes on a light, almost plain background;
- `dark`:    saturated coloured shapes on black, drawn smaller and shifted towards a corner;
- `blurred`: low-contrast shapes on mid-grey texture, blurred (5×5) with pixel noise (σ = 25).

Domains have different sizes (120, 80 and 50 images per class by default), so the epoch rule
(`train.epoch_by`) and wrap-around of the smaller ones are exercised. Everything comes from
numpy's PCG64 seeded with --seed and the domain's index, so the files are the same on every
machine.

    python scripts/make_shape_domains.py data/shape-domains            # then configs/shapes_domains.yaml
    python scripts/make_shape_domains.py DIR --per-class 120 80 50 --seed 0
    python scripts/make_shape_domains.py data/look-domains --style looks   # configs/look_domains.yaml

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
LOOKS = ["light", "dark", "blurred"]


def background(rng: np.random.Generator) -> np.ndarray:
    """A random colour and a close one (±40 per channel) in stripes or checks of a random period."""
    a = rng.integers(0, 256, 3)
    b = np.clip(a + rng.integers(-40, 41, 3), 0, 255)
    period = int(rng.integers(3, 9))
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    mask = ((x // period) % 2 == 0) if rng.random() < 0.5 else (((x // period) + (y // period)) % 2 == 0)
    return np.where(mask[..., None], a, b).astype(np.uint8)


def draw_shape(img: Image.Image, kind: str, base: np.ndarray, rng: np.random.Generator,
               colour=None, radius=(8, 13), corner: bool = False) -> None:
    """The shape in `colour`, by default one that stands out from the background `base` (the
    opposite colour, jittered); `corner` places it in the lower right."""
    d = ImageDraw.Draw(img)
    r = float(rng.uniform(*radius))
    low = SIDE / 2 - 2 if corner else r + 1
    cx, cy = rng.uniform(max(low, r + 1), SIDE - r - 1, 2)
    if colour is None:
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


def render_look(domain: str, kind: str, rng: np.random.Generator) -> Image.Image:
    """A shape in one of the `--style looks` domains (see the module's description)."""
    if domain == "light":
        base = rng.integers(215, 256, 3)
        img = Image.fromarray(np.broadcast_to(base, (SIDE, SIDE, 3)).astype(np.uint8), "RGB")
        draw_shape(img, kind, base, rng, colour=tuple(int(v) for v in rng.integers(0, 70, 3)))
        return img
    if domain == "dark":
        img = Image.fromarray(rng.integers(0, 16, (SIDE, SIDE, 3)).astype(np.uint8), "RGB")
        hue = np.zeros(3)
        hue[rng.integers(0, 3)] = 1.0
        colour = np.clip(hue * rng.uniform(180, 255) + rng.uniform(0, 90, 3), 0, 255)
        draw_shape(img, kind, np.zeros(3), rng, colour=tuple(int(v) for v in colour), radius=(6, 8), corner=True)
        return img
    grey = int(rng.integers(100, 156))
    base = np.clip(background(rng).astype(np.int64) // 4 + grey - 32, 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    colour = tuple(int(v) for v in np.clip(grey + rng.choice([-1, 1]) * rng.uniform(35, 60) + rng.integers(-10, 11, 3), 0, 255))
    draw_shape(img, kind, base[0, 0], rng, colour=colour)
    img = img.filter(ImageFilter.BoxBlur(2))
    noisy = np.asarray(img).astype(np.float64) + rng.normal(0, 25, (SIDE, SIDE, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, nargs=3, default=[120, 80, 50], metavar="N", help="images per class per domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", choices=["shapes", "looks"], default="shapes",
                   help="shapes: plain / inverted / noisy; looks: light / dark / blurred (pixel statistics differ)")
    args = p.parse_args()
    domains, draw = (DOMAINS, render) if args.style == "shapes" else (LOOKS, render_look)
    for k, (domain, n) in enumerate(zip(domains, args.per_class)):
        rng = np.random.Generator(np.random.PCG64([args.seed, k]))
        for kind in CLASSES:
            folder = args.out / domain / "images" / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(domain, kind, rng).save(folder / f"{i:04d}.png")
        print(f"{args.out / domain}: {len(CLASSES)} classes × {n} images")


if __name__ == "__main__":
    main()
