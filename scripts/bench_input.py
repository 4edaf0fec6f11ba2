#!/usr/bin/env python3
"""Input pipeline speed: mtl's streaming decoder against PyTorch's ``DataLoader`` on a generated
folder of JPEGs the size of Oxford-IIIT Pet's (500×375, with a PNG trimap-like mask each).

Two kinds of images (``--entropy``): ``low``, smooth ramps and shapes blurred before saving
(~36 kB a JPEG at quality 90), and ``photo``, smooth structure plus fine-grained luma and
chroma noise as a camera's photos have (~75 kB; entropy decoding then dominates the decode).
``--no-masks`` leaves the segmentation task and the mask PNGs out on both sides.

* **mtl**: ``mtl-train bench --input-only`` on a ``folder`` dataset with ``data.max_memory_mb``
  too small to hold the split, so it streams: ``data.decode_threads`` threads decode JPEG +
  PNG, resize to ``data.image_size`` (antialiased bilinear; masks nearest) and batch; the
  trainer's thread then crops (padding 8), flips and normalizes each batch and trains nothing,
  as the PyTorch loop below only iterates its DataLoader.
* **PyTorch**: ``DataLoader(num_workers=W, batch_size=B, shuffle=True)`` over a ``Dataset`` whose
  ``__getitem__`` is what torchvision's transforms do (written with PIL and torch here, as
  torchvision is not installed): ``Image.open().convert("RGB")``, ``resize((S, S), BILINEAR)``
  (mask: NEAREST), random crop after zero padding 8 (mask padded with 255), random horizontal
  flip, ``ToTensor`` + ``Normalize``. The loop only iterates the batches. ``torch-draft``
  adds PIL's ``Image.draft("RGB", (S, S))`` before ``convert``: the same DCT scaling, the
  trick a PyTorch user can write by hand (torchvision's transforms do not).

Every side uses W workers/threads, the same batch and image size; the first batches (start-up,
worker spawn) are excluded; the sides run one after another, the order rotating each round, and
each side's images/s is paired with PyTorch's plain DataLoader of the same round. ``--wait`` also times the real model's
step (``configs/folder_example.yaml``: ResNet widths [32], batch 16, 128²) streamed against the
same run with the split in memory: the difference is what the step waits for data.

``mtl`` runs with the default decoding (libjpeg-turbo, ``data.decode_scale: auto``: 1/2 size
for 500×375 → 128²), ``mtl-full`` with ``data.decode_scale: false`` (full size, as the plain
DataLoader decodes), ``mtl-zune`` with zune-jpeg at full size (the decoder before libjpeg-turbo).
``--sweep 1,2,4,8,16`` times mtl alone at each decode-thread count.

    python scripts/bench_input.py --images 2000 --workers 2 --rounds 2 [--wait]
    python scripts/bench_input.py --entropy photo --images 800 --no-masks --workers 2 --rounds 6 \
        --batches 40 --sides mtl,mtl-full,mtl-zune,torch,torch-draft
    python scripts/bench_input.py --entropy photo --images 800 --no-masks --sweep 2,4,8,16 --rounds 2 --sides mtl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_like(rng: random.Random, noise: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth structure (random fields at two scales, a few shapes, slightly blurred) plus
    per-pixel noise that is not blurred: luma σ 9 and chroma σ 3 levels, as a camera's."""
    def field(gw: int, gh: int) -> np.ndarray:
        small = noise.uniform(0, 255, (gh, gw, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)

    img = Image.fromarray((0.7 * field(6, 5) + 0.3 * field(24, 18)).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(w - 60), rng.randrange(h - 60)
        box = (x0, y0, x0 + rng.randint(40, 200), y0 + rng.randint(40, 200))
        d.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    a = a + noise.normal(0, 9, (h, w, 1)) + noise.normal(0, 3, (h, w, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def generate(root: Path, n: int, seed: int = 0, entropy: str = "low") -> None:
    """n photo-like 500×375 JPEGs (smooth gradients, shapes, noise: JPEG sizes near a photo's;
    ``entropy="photo"``: fine-grained noise as well, see :func:`photo_like`), a 2-class mask
    PNG each and labels.csv with a class column."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = ["file,label"]
    noise = np.random.default_rng(seed)
    for i in range(n):
        w, h = (500, 375) if i % 4 else (375, 500)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * rng.random() + yy * rng.random()) % 256 for _ in range(3)], -1)
        img = Image.fromarray((base + noise.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8))
        mask = Image.new("L", (w, h), 0)
        d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        for _ in range(rng.randint(2, 5)):
            x0, y0 = rng.randrange(w - 60), rng.randrange(h - 60)
            box = (x0, y0, x0 + rng.randint(40, 200), y0 + rng.randint(40, 200))
            d.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
            dm.ellipse(box, fill=1)
        img = img.filter(ImageFilter.GaussianBlur(0.8))
        if entropy == "photo":
            img = photo_like(rng, noise, w, h)
        name = f"img{i:05d}"
        img.save(root / "images" / f"{name}.jpg", quality=90)
        mask.save(root / "masks" / f"{name}.png")
        rows.append(f"{name}.jpg,{rng.randrange(37)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


class Folder:
    """torchvision-style transforms, with PIL and torch."""

    def __init__(self, root: Path, size: int, pad: int, draft: bool = False, masks: bool = True):
        self.root, self.size, self.pad, self.draft, self.masks = root, size, pad, draft, masks
        self.names = sorted(p.stem for p in (root / "images").glob("*.jpg"))
        labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
        self.labels = [int(labels[f"{n}.jpg"]) for n in self.names]

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        import torch

        name, s, p = self.names[i], self.size, self.pad
        img = Image.open(self.root / "images" / f"{name}.jpg")
        if self.draft:
            img.draft("RGB", (s, s))
        img = img.convert("RGB").resize((s, s), Image.BILINEAR)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # a copy, as PILToTensor makes
        if self.masks:
            mask = Image.open(self.root / "masks" / f"{name}.png").resize((s, s), Image.NEAREST)
            y = torch.from_numpy(np.asarray(mask).astype(np.int64))
        else:
            y = torch.zeros(s, s, dtype=torch.int64)
        # RandomCrop(s, padding=p) + RandomHorizontalFlip, image and mask together.
        x = torch.nn.functional.pad(x, (p, p, p, p))
        y = torch.nn.functional.pad(y, (p, p, p, p), value=255)
        top, left = random.randint(0, 2 * p), random.randint(0, 2 * p)
        x, y = x[:, top:top + s, left:left + s], y[top:top + s, left:left + s]
        if random.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        # ToTensor + Normalize.
        x = (x.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return (x, self.labels[i], y) if self.masks else (x, self.labels[i])


def torch_images_per_second(root: Path, size: int, batch: int, workers: int, batches: int, skip: int,
                            draft: bool, masks: bool = True) -> float:
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    loader = DataLoader(Folder(root, size, 8, draft, masks), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)
    def endless():  # the next epoch's batches when a small folder runs out (as mtl's loader does)
        while True:
            yield from loader

    it = endless()
    for _ in range(skip):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - t0)


def mtl_config(root: Path, size: int, batch: int, workers: int, tiny: bool, stream: bool, path: Path,
               masks: bool = True, decoding: dict | None = None) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/folder_example.yaml").read_text())
    cfg["data"].update(root=str(root), image_size=size, batch_size=batch, decode_threads=workers,
                       max_memory_mb=1 if stream else 4096, **(decoding or {}))
    cfg["data"]["augment"] = {"crop_padding": 8, "hflip": True}
    cfg["tasks"][0]["classes"] = 37
    cfg["tasks"][1]["classes"] = 2
    if not masks:
        cfg["tasks"] = cfg["tasks"][:1]
        cfg["checkpoint"]["monitor"] = f"{cfg['tasks'][0]['name']}.accuracy"
    if tiny:
        # One conv of width 1, no BatchNorm: from memory this step runs at ~800 images/s here,
        # so a streamed run measures the decoders.
        cfg["model"]["backbone"] = {"kind": "conv", "widths": [1], "depth": 1, "norm": "none"}
        if masks:
            cfg["model"]["heads"] = {"mask": {"decoder_width": 1}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


MTL = [str(ROOT / "target/release/mtl-train")]
# mtl's sides: the data keys each sets (mtl: the defaults).
MTL_SIDES = {"mtl": {}, "mtl-full": {"decode_scale": False},
             "mtl-zune": {"jpeg_decoder": "zune-jpeg", "decode_scale": False}}


def mtl_bench(config: Path, threads: int, warmup: int, steps: int, reps: int, input_only: bool = False) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run([MTL[0], "bench", str(config), "--device", "cpu",
                        "--set", f"threads={threads}", "--warmup", str(warmup), "--steps", str(steps),
                        "--reps", str(reps), "--json", out.name] + (["--input-only"] if input_only else []),
                       check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
        return json.loads(Path(out.name).read_text().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="the image folder (generated when it has no images/)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="decode threads (mtl) = num_workers (PyTorch)")
    ap.add_argument("--batches", type=int, default=100, help="timed batches per repetition")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wait", action="store_true", help="also: the real model's step, streamed vs in memory")
    ap.add_argument("--sides", default="mtl,torch,torch-draft",
                    help="comma list of mtl, mtl-full, mtl-zune, torch, torch-draft (torch is always run: "
                         "the pairing)")
    ap.add_argument("--entropy", choices=["low", "photo"], default="low",
                    help="low: blurred ramps and shapes; photo: fine-grained noise as in photos")
    ap.add_argument("--no-masks", action="store_true", help="classification only: no mask PNGs read")
    ap.add_argument("--sweep", help="comma list of decode-thread counts: time mtl alone at each")
    ap.add_argument("--mtl", default=MTL[0], help="the mtl-train binary")
    args = ap.parse_args()
    MTL[0] = args.mtl
    masks = not args.no_masks
    suffix = "" if args.entropy == "low" else f"-{args.entropy}"
    root = args.dir or Path(tempfile.gettempdir()) / f"mtl-bench-input{suffix}-{args.images}"
    if not (root / "images").is_dir():
        t0 = time.perf_counter()
        generate(root, args.images, entropy=args.entropy)
        print(f"generated {args.images} JPEGs in {root} ({time.perf_counter() - t0:.0f}s)")
    size_mb = sum(f.stat().st_size for f in (root / "images").iterdir()) / 2**20
    print(f"{root}: {args.images} JPEGs, {size_mb:.0f} MiB; batch {args.batch}, {args.size}², "
          f"{args.workers} workers, masks {masks}, {os.cpu_count()} cores, "
          f"load {open('/proc/loadavg').read().split()[0]}")
    work = Path(tempfile.mkdtemp(prefix="mtl-bench-input."))
    if args.sweep:
        counts = [int(n) for n in args.sweep.split(",")]
        mtl_sides = [x for x in args.sides.split(",") if x in MTL_SIDES]
        seen = {(side, n): [] for side in mtl_sides for n in counts}
        for r in range(args.rounds):
            for side, n in seen:
                cfg = mtl_config(root, args.size, args.batch, n, True, True, work / f"{side}{n}.yaml", masks,
                                 MTL_SIDES[side])
                ips = mtl_bench(cfg, 1, 3, args.batches, 1, input_only=True)["images_per_second"]["median"]
                seen[side, n].append(ips)
                print(f"round {r + 1}, {side}, {n} decode threads: {ips:.0f} images/s", flush=True)
        print("\n| side | decode threads | images/s median [min–max] |\n|---|---|---|")
        for (side, n), v in seen.items():
            print(f"| {side} | {n} | {statistics.median(v):.0f} [{min(v):.0f}–{max(v):.0f}] |")
        return 0
    tiny = {side: mtl_config(root, args.size, args.batch, args.workers, True, True, work / f"{side}.yaml", masks,
                             decoding) for side, decoding in MTL_SIDES.items()}
    sides = [x for x in args.sides.split(",") if x != "torch"] + ["torch"]
    res = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            if side.startswith("mtl"):
                rep = mtl_bench(tiny[side], 1, 3, args.batches, 1, input_only=True)
                ips = rep["images_per_second"]["median"]
            else:
                ips = torch_images_per_second(root, args.size, args.batch, args.workers, args.batches, 3,
                                              side == "torch-draft", masks)
            res[side].append(ips)
            print(f"round {r + 1} {side}: {ips:.0f} images/s", flush=True)
    print(f"\n| side | images/s median [min–max] | / PyTorch DataLoader, paired: median [min–max] |\n|---|---|---|")
    for side, v in res.items():
        ratios = [a / b for a, b in zip(v, res["torch"])]
        ratio = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]" if side != "torch" else "–"
        print(f"| {side} | {statistics.median(v):.0f} [{min(v):.0f}–{max(v):.0f}] | {ratio} |")
    if args.wait:
        # The real model's step (threads = the cores the decoders leave: 1 with 2 workers on 2 cores).
        threads = max((os.cpu_count() or 2) - args.workers, 1)
        cfgs = {s: mtl_config(root, args.size, args.batch, args.workers, False, s == "stream", work / f"{s}.yaml",
                              masks)
                for s in ("stream", "memory")}
        ms = {"stream": [], "memory": []}
        for r in range(args.rounds):
            for side in (["stream", "memory"] if r % 2 == 0 else ["memory", "stream"]):
                rep = mtl_bench(cfgs[side], threads, 3, 10, 2)
                ms[side] += [1000 * t / rep["steps"] for t in rep["rep_seconds"]]
        s, m = statistics.median(ms["stream"]), statistics.median(ms["memory"])
        print(f"\nfolder_example's model, batch {args.batch}, {threads} compute thread(s): step {s:.0f} ms streamed "
              f"vs {m:.0f} ms from memory: {100 * max(s - m, 0) / s:.0f}% of a streamed step waits for data "
              f"(streamed {ms['stream']}, memory {ms['memory']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
