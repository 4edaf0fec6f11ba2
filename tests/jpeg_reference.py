"""Pillow's decode of JPEGs this script writes: the reference for mtl's libjpeg-turbo decoder
(tests/jpeg.rs). Pillow bundles its own libjpeg-turbo; with libjpeg's default settings (the
accurate integer IDCT, fancy upsampling) both must give the same bytes.

Writes into argv[1] a set of JPEGs (photo-like 4:2:0 at quality 90, 4:4:4, grey, progressive,
odd sizes) and, per file and per requested size (0: full size, else Pillow's draft to that
size), the RGB bytes Pillow decodes as `<file>.<size>.rgb`; prints JSON listing them with
their width and height.
"""
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(rng, w, h):
    """Smooth structure plus fine noise: the entropy of a photo."""
    small = rng.uniform(0, 255, (max(h // 60, 2), max(w // 60, 2), 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    noise = rng.normal(0, 9, (h, w, 1)) + rng.normal(0, 3, (h, w, 3))
    return Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(29)
    files = {
        "photo_420.jpg": (photo_like(rng, 500, 375), dict(quality=90)),
        "photo_444.jpg": (photo_like(rng, 260, 333), dict(quality=95, subsampling=0)),
        "odd_422.jpg": (photo_like(rng, 37, 23), dict(quality=75, subsampling=1)),
        "progressive.jpg": (photo_like(rng, 300, 200), dict(quality=85, progressive=True)),
        "grey.jpg": (photo_like(rng, 129, 70).convert("L"), dict(quality=90)),
    }
    listing = []
    for name, (img, options) in files.items():
        img.save(out / name, **options)
        for size in (0, 64, 30):
            with Image.open(out / name) as im:
                if size:
                    im.draft("RGB", (size, size))
                rgb = im.convert("RGB")
            (out / f"{name}.{size}.rgb").write_bytes(rgb.tobytes())
            listing.append(dict(file=name, size=size, width=rgb.width, height=rgb.height))
    print(json.dumps(listing))


if __name__ == "__main__":
    main()
