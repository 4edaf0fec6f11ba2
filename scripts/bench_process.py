#!/usr/bin/env python3
"""Whole-process speed: complete ``mtl-train CONFIG --set train.max_steps=N`` training processes
against a PyTorch training loop written here, independently of ``scripts/bench_torch.py`` and of
mtl's step timer, on the same model twin (``scripts/mtl_torch.py``), the same data and initial
weights (``mtl-train bench --export``), the same batch and thread count.

Every side trains twice per round, for N1 and for N2 steps, and the per-step time is
``(wall(N2) - wall(N1)) / (N2 - N1)``: process start, library loading, data generation or
loading, the final evaluation and checkpoint are in both runs and cancel. What a real step
costs beyond ``Trainer::step`` (logging every ``train.log_every`` steps, TensorBoard events, the
host reads they need) stays in. Rounds alternate the order of the sides; the paired ratio of a
round is the PyTorch variant's per-step time over mtl's in that round.

``--clock loop`` runs one process per side and round, for N2 steps, and takes the speed from each
process's own clock over its training loop: mtl's ``images_per_second`` in metrics.jsonl (training
rows or images since the loop started over the seconds since, at the last log line), the worker's
same figure in the JSONL it writes. Start-up (reading and mapping a table) then costs no rounds
twice; the whole process's time is reported beside it.

Tables (``data.dataset: table``): the worker reads the config's training file itself (pyarrow),
maps it with the twin's ``map_rows`` and the run's fitted mapping from the exported config.yaml
(standardization and vocabularies: what mtl-train fitted), and trains from a
``torch.utils.data.DataLoader`` over a ``TensorDataset`` whose sampler is a ``BatchSampler``
(``batch_size=None``: one gather per tensor per batch, not one ``__getitem__`` per row, and no
worker processes: the rows are in memory); binary tasks with BCE with logits, value tasks with MSE.

    python scripts/bench_process.py --clock loop --batch 512 --n2 60 --log-every 20 --threads 2 \
        -- configs/table_impressions.yaml

PyTorch variants (``--variants``): ``eager`` (foreach AdamW/SGD, NCHW), ``cl`` (model and inputs
``channels_last``), ``fused`` (``fused=True`` optimizer), ``compile`` (``torch.compile`` of the
model; needs a C++ compiler on the CPU, compile time is start-up and cancels).

    python scripts/bench_process.py --batch 16 --n1 20 --n2 120
    python scripts/bench_process.py --batch 16 --n1 3 --n2 13 -- configs/cifar_seg.yaml \\
        --set data.dataset=shapes --set tasks.0.target=kind --set tasks.1.classes=11 \\
        --set data.train_size=2048 --set data.val_size=256 --set data.download=false

``--onednn`` (CPU) runs every timed process a second time, untimed, under ``ONEDNN_VERBOSE=1``, and
splits each side's step into the time inside oneDNN's primitives (the convolutions and their
weight reorders: the same kernels, called the same way, on both sides; summed from the execution
times oneDNN prints) and everything else (the timed step minus that); it prints the ceiling:
mtl's speed-up over the fastest PyTorch variant if mtl spent nothing outside oneDNN. The verbose
processes are not timed: formatting ~150 lines per ResNet-18 step costs tens of milliseconds.

Arguments after ``--`` are mtl's config and ``--set`` overrides (default: configs/shapes_seg.yaml).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent


# Task kinds whose targets are float maps (NaN: no value), with mtl's losses (src/tasks).
DENSE_VALUES = ("regression", "normals")


def task_loss(kind, out, y, ignore_index, label_smoothing):
    """mtl's loss of a task kind: cross-entropy; masked L1 over finite depth; 1 − cosine over
    pixels with a finite normal. Means over the valid pixels, without a host read."""
    import torch.nn.functional as F
    if kind == "regression":
        valid = y.isfinite()
        err = ((out.squeeze(1) - y.nan_to_num(0.0)).abs()).where(valid, 0.0)
        return err.sum() / valid.sum().clamp_min(1)
    if kind == "normals":
        valid = y.isfinite().all(1)
        cos = (out * y.nan_to_num(0.0)).sum(1)
        return (1.0 - cos).where(valid, 0.0).sum() / valid.sum().clamp_min(1)
    if kind == "binary":  # src/tasks/binary.rs: one logit per row
        return F.binary_cross_entropy_with_logits(out.reshape(-1), y.float())
    if kind == "value":  # src/tasks/value.rs
        return F.mse_loss(out.reshape(-1), y.float())
    return F.cross_entropy(out, y, ignore_index=ignore_index, label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------
# The PyTorch side: one training process (`bench_process.py --worker EXPORT N VARIANT THREADS`).
# ---------------------------------------------------------------------------------------------

def read_config(path: Path) -> dict:
    """A resolved config.yaml (libyaml's loader when there: a table's vocabularies are long)."""
    import yaml
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def image_batches(cfg: dict, export: Path, device: str, variant: str):
    """The image worker's batches: ``mtl-train bench --export``'s uint8 training split on the
    device, a ``randperm`` per epoch, normalized, augmented as mtl does. Returns (training
    samples, an endless iterator of (x, targets))."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from mtl_torch import dataset_normalization

    data = load_file(str(export / "data.safetensors"))
    images = data["images"].to(device)
    tasks = cfg["tasks"]
    targets = [data[f"target.{t['target']}"].to(device) for t in tasks]
    n, c, h, w = images.shape
    mean, std = dataset_normalization(cfg)
    if c == 1:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    mean = torch.tensor(mean, device=device).view(1, c, 1, 1)
    std = torch.tensor(std, device=device).view(1, c, 1, 1)
    batch = int(cfg["data"]["batch_size"])
    aug = cfg["data"].get("augment") or {}
    pad, hflip = int(aug.get("crop_padding", 0)), bool(aug.get("hflip", False))
    if (pad or hflip) and any(t["kind"] in DENSE_VALUES for t in tasks):
        raise SystemExit("bench_process: the worker augments class labels only; set data.augment={} for depth/normals")
    ignore_fill = next((int(t.get("ignore_index", 255)) for t in tasks if t["kind"] == "segmentation"), 255)
    per_epoch = max(n // batch, 1)

    def augment(x, ys):
        # Random crop after zero padding, then a random horizontal flip, per sample, written as
        # advanced indexing into the padded batch (labels padded with the ignore index).
        b = x.shape[0]
        oy = torch.randint(0, 2 * pad + 1, (b,), device=device)
        ox = torch.randint(0, 2 * pad + 1, (b,), device=device)
        rows = oy[:, None] + torch.arange(h, device=device)[None, :]
        cols = ox[:, None] + torch.arange(w, device=device)[None, :]
        if hflip:
            flip = torch.rand(b, device=device) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=device)[:, None, None]
        xp = F.pad(x, (pad, pad, pad, pad))
        xo = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        out = []
        for y in ys:
            if y.dim() == 3:
                y = F.pad(y, (pad, pad, pad, pad), value=ignore_fill)[bi, rows[:, :, None], cols[:, None, :]]
            out.append(y)
        return xo.contiguous(), out

    def batches():
        while True:
            perm = torch.randperm(n, device=device)
            for pos in range(per_epoch):
                idx = perm[pos * batch:(pos + 1) * batch]
                x = (images[idx].float() / 255.0 - mean) / std
                ys = [t[idx].float() if k["kind"] in DENSE_VALUES else t[idx].long() for t, k in zip(targets, tasks)]
                if pad or hflip:
                    x, ys = augment(x, ys)
                if variant == "cl":
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, ys

    return n, batches()


def table_batches(cfg: dict, device: str):
    """The table worker's batches, as a PyTorch user writes them: the config's training file read
    with pyarrow (the first ``data.train_size`` rows when set), mapped by the twin's ``map_rows``
    with the run's fitted mapping, and a ``DataLoader`` over a ``TensorDataset`` with a shuffled
    ``BatchSampler`` (``batch_size=None``: each item is a whole batch, one gather per tensor).
    Returns (training rows, an endless iterator of (x, targets))."""
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
    from mtl_torch import map_rows, table_columns, table_mapping

    d = cfg["data"]
    path = d["train"]
    if not isinstance(path, str) or not path.endswith((".parquet", ".pq")):
        raise SystemExit(f"bench_process: the table worker reads Parquet; data.train is {path!r}")
    fitted = table_mapping(cfg)
    columns = table_columns(fitted)
    targets = list(dict.fromkeys(t["target"] for t in cfg["tasks"]))
    table = pq.read_table(path, columns=columns + targets)
    if int(d.get("train_size") or 0) > 0:
        table = table.slice(0, int(d["train_size"]))
    x = torch.from_numpy(map_rows(fitted, {c: table.column(c).to_numpy() for c in columns}))
    ys = [torch.tensor(table.column(t["target"]).to_numpy()) for t in cfg["tasks"]]
    dataset = TensorDataset(x, *ys)
    sampler = BatchSampler(RandomSampler(dataset), int(d["batch_size"]), drop_last=True)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None)

    def batches():
        while True:
            for x, *ys in loader:
                yield x.to(device, non_blocking=True), [y.to(device, non_blocking=True) for y in ys]

    return len(dataset), batches()


def worker(export: Path, steps: int, variant: str, threads: int, device: str, log: Optional[Path] = None) -> None:
    """``steps`` training steps of the twin from mtl's initial weights; with ``log``, one JSON
    line per log boundary appended to it: the step, the window's mean losses, and
    ``images_per_second``, the samples trained since the loop started over the seconds since
    (the figure mtl's metrics.jsonl holds)."""
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT / "scripts"))
    from mtl_torch import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = read_config(export / "config.yaml")
    model = build_model(cfg)
    model.load_state_dict(load_file(str(export / "model.safetensors")), strict=True)
    model = model.to(device).train()
    if variant == "cl":
        model = model.to(memory_format=torch.channels_last)
    tasks = cfg["tasks"]
    if cfg["data"].get("dataset") == "table":
        n, batches = table_batches(cfg, device)
    else:
        n, batches = image_batches(cfg, export, device, variant)
    batch = int(cfg["data"]["batch_size"])

    o = cfg["optim"]
    kw = {"fused": True} if variant == "fused" else {"foreach": True}
    if o["kind"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=float(o["lr"]), betas=tuple(map(float, o["betas"])),
                                eps=float(o.get("eps", 1e-8)), weight_decay=float(o["weight_decay"]), **kw)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=float(o["lr"]), momentum=float(o["momentum"]),
                              nesterov=bool(o["nesterov"]), weight_decay=float(o["weight_decay"]), **kw)
    per_epoch = max(n // batch, 1)
    total = int(cfg["train"]["epochs"]) * per_epoch
    sch = cfg.get("schedule") or {}
    warm, floor = int(sch.get("warmup_steps", 0)), float(sch.get("min_lr_ratio", 0.0))

    def factor(step: int) -> float:  # warm-up then cosine (the configs benchmarked here)
        if step < warm:
            return (step + 1) / warm
        if sch.get("kind", "constant") != "cosine":
            return 1.0
        p = min((step - warm) / max(total - warm, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    fwd = torch.compile(model) if variant == "compile" else model
    losses_spec = [(int(t.get("ignore_index", 255)) if t["kind"] == "segmentation" else -100,
                    float(t.get("label_smoothing", 0.0) or 0.0), float(t.get("weight", 1.0))) for t in tasks]
    log_every = int(cfg["train"].get("log_every", 25))

    running = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    started = time.perf_counter()
    for step in range(steps):
        x, ys = next(batches)
        outs = list(fwd(x).values())
        losses = [task_loss(k["kind"], out, y, ig, ls) for out, y, k, (ig, ls, _) in zip(outs, ys, tasks, losses_spec)]
        loss = sum(wt * l for l, (_, _, wt) in zip(losses, losses_spec))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += torch.stack([l.detach() for l in losses]).double()
        if (step + 1) % log_every == 0:  # a real loop logs: one host read per log line
            line = json.dumps({"step": step + 1, "losses": (running / log_every).tolist(),
                               "images_per_second": (step + 1) * batch / (time.perf_counter() - started)})
            print(line, flush=True)
            if log is not None:
                with open(log, "a") as f:
                    f.write(line + "\n")
            running.zero_()
    with tempfile.TemporaryDirectory() as d:  # a real run ends with a checkpoint
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------

def load_average() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def timed(cmd, env=None, onednn=False) -> tuple[float, float, float]:
    """Seconds one process takes; with ``onednn`` the milliseconds it spent inside oneDNN's
    primitives (the process runs with ``ONEDNN_VERBOSE=1`` and the execution times oneDNN prints,
    ``onednn_verbose,...,exec,cpu,<primitive>,...,<ms>``, are summed); and its peak resident
    memory in MiB: the kernel's high-water mark ``VmHWM`` of the process's own address space,
    read every 20 ms until it exits (``ru_maxrss`` would not do: it keeps the high-water mark of
    the forking parent's copy, this script's, across the exec)."""
    if onednn:
        env = dict(env or os.environ, ONEDNN_VERBOSE="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out if onednn else subprocess.DEVNULL, stderr=err, env=env)
        peak_kib = 0
        while p.poll() is None:
            peak_kib = max(peak_kib, high_water_kib(p.pid))
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"bench_process: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{err.read()[-2000:]}")
        return dt, onednn_ms(out.read()) if onednn else 0.0, peak_kib / 1024


def high_water_kib(pid: int) -> int:
    """``VmHWM`` of a running process in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def onednn_ms(verbose: str) -> float:
    """The sum of the execution times in ``ONEDNN_VERBOSE=1`` output."""
    total = 0.0
    for line in verbose.splitlines():
        fields = line.split(",")
        if fields[0] == "onednn_verbose" and len(fields) > 5 and fields[3] == "exec":
            total += float(fields[-1])
    return total


def loop_rate(log: Path) -> float:
    """Samples per second over the training loop at its last log line: the last ``train`` row's
    ``images_per_second`` of mtl's metrics.jsonl, or the worker's last line."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split", "train") == "train" and "images_per_second" in r]
    if not rows:
        raise SystemExit(f"bench_process: {log} holds no training rate (is --n2 a multiple of --log-every?)")
    return float(rows[-1]["images_per_second"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker(Path(argv[1]), int(argv[2]), argv[3], int(argv[4]), argv[5] if len(argv) > 5 else "cpu",
               Path(argv[6]) if len(argv) > 6 else None)
        return 0
    mtl_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, mtl_args = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides; the run ends with a host read, so no sync is missed)")
    ap.add_argument("--clock", choices=["diff", "loop"], default="diff",
                    help="diff: per-step time from processes of N1 and N2 steps; loop: one N2-step process per side "
                         "and round, speed from its own training-loop clock (mtl's metrics.jsonl)")
    ap.add_argument("--n1", type=int, help="steps of the short run (--clock diff)")
    ap.add_argument("--n2", type=int, required=True, help="steps of the long run")
    ap.add_argument("--log-every", type=int, help="train.log_every on both sides (--clock loop: must divide N2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", help="comma list of eager, cl, fused, compile (default eager,cl,fused; tables eager,fused)")
    ap.add_argument("--mtl", default=str(ROOT / "target/release/mtl-train"))
    ap.add_argument("--json", type=Path, help="append one JSON line with every timing")
    ap.add_argument("--onednn", action="store_true",
                    help="CPU: run every process a second time under ONEDNN_VERBOSE=1 (untimed) and split each "
                         "side's step into the time inside oneDNN's primitives (convolutions, weight reorders) "
                         "and everything else")
    args = ap.parse_args(argv)
    # The PyTorch side reads the datasets' normalization from this binary (mtl_torch.catalog).
    os.environ.setdefault("MTL_BIN", os.path.abspath(args.mtl))
    if not mtl_args:
        mtl_args = [str(ROOT / "configs/shapes_seg.yaml")]
    loop = args.clock == "loop"
    if loop:
        if args.onednn:
            raise SystemExit("bench_process: --onednn splits the difference of two processes; use --clock diff")
        if not args.log_every or args.n2 % args.log_every:
            raise SystemExit("bench_process: --clock loop reads the rate at the last log line: give --log-every dividing --n2")
        args.n1 = 0
    elif args.n1 is None or args.n2 <= args.n1:
        raise SystemExit("bench_process: --n2 must exceed --n1")
    if args.onednn and args.device != "cpu":
        raise SystemExit("bench_process: --onednn splits CPU steps (oneDNN runs the CPU's convolutions)")
    sets = mtl_args + ["--set", f"data.batch_size={args.batch}", "--set", f"threads={args.threads}",
                       "--set", "precision=fp32", "--device", args.device]
    if args.log_every:
        sets += ["--set", f"train.log_every={args.log_every}"]
    env = dict(os.environ, RUST_LOG="warn")
    work = Path(tempfile.mkdtemp(prefix="mtl-bench-process."))
    export = work / "export"
    subprocess.run([args.mtl, "bench", *sets, "--warmup", "0", "--reps", "0", "--export", str(export)], check=True, env=env)
    table = read_config(export / "config.yaml")["data"].get("dataset") == "table"
    unit = "rows" if table else "images"
    # No evaluation or checkpoint inside the timed steps (one each at the end of both runs).
    steps_per_epoch = max(int(subprocess.check_output(
        [sys.executable, "-c", "import sys; from safetensors import safe_open; "
         "f = safe_open(sys.argv[1], 'pt'); print(f.get_slice('images').get_shape()[0])", str(export / "data.safetensors")]
    ).decode()) // args.batch, 1)
    if args.n2 >= steps_per_epoch:
        raise SystemExit(f"bench_process: --n2 {args.n2} reaches the end of an epoch ({steps_per_epoch} steps): "
                         "an evaluation would fall inside the timed difference; lower it or raise data.train_size")

    runs = [0]

    def mtl_cmd(steps):
        runs[0] += 1
        return [args.mtl, *sets, "--set", f"train.max_steps={steps}", "--run-dir", str(work / f"run{runs[0]}")]

    def torch_cmd(variant, steps):
        runs[0] += 1
        return [sys.executable, __file__, "--worker", str(export), str(steps), variant, str(args.threads), args.device,
                str(work / f"worker{runs[0]}.jsonl")]

    def rate_of(cmd):  # --clock loop: the process's own figure
        return loop_rate(Path(cmd[-1]) / "metrics.jsonl" if cmd[0] == args.mtl else Path(cmd[-1]))

    variants = args.variants or ("eager,fused" if table else "eager,cl,fused")
    sides = ["mtl"] + [f"torch-{v}" for v in variants.split(",")]
    if "torch-compile" in sides:
        # An untimed run fills torch.compile's on-disk cache: otherwise whichever timed process
        # comes first compiles from scratch and the other loads the result (measured here:
        # 22.6 s for 10 steps, 17.6 s for 160), and the start-up does not cancel.
        timed(torch_cmd("compile", args.n1 or args.log_every), env)
    per_step = {s: [] for s in sides}
    peak_mib = {s: [] for s in sides}  # each long run's peak resident memory
    process_s = {s: [] for s in sides}  # each long run's whole time
    in_onednn = {s: [] for s in sides}  # seconds per step inside oneDNN, with --onednn
    loads = []
    for r in range(args.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        if r % 2:
            order = order[::-1]
        for side in order:
            loads.append(load_average())
            times, onednn = [], []
            for steps in ((args.n2,) if loop else (args.n1, args.n2)):
                cmd = mtl_cmd(steps) if side == "mtl" else torch_cmd(side[len("torch-"):], steps)
                seconds, _, peak = timed(cmd, env)
                times.append(seconds)
                if args.onednn:  # a second, untimed process: the verbose printing costs time
                    cmd = mtl_cmd(steps) if side == "mtl" else cmd
                    onednn.append(timed(cmd, env, onednn=True)[1] / 1000)
            peak_mib[side].append(peak)  # the long run's
            process_s[side].append(times[-1])
            if loop:
                per_step[side].append(args.batch / rate_of(cmd))
                print(f"round {r + 1} {side}: {times[0]:.1f}s ({args.n2} steps): "
                      f"{1000 * per_step[side][-1]:.1f} ms/step on its own clock", flush=True)
                continue
            per_step[side].append((times[1] - times[0]) / (args.n2 - args.n1))
            if args.onednn:
                in_onednn[side].append((onednn[1] - onednn[0]) / (args.n2 - args.n1))
            print(f"round {r + 1} {side}: {times[0]:.1f}s ({args.n1} steps), {times[1]:.1f}s ({args.n2} steps): "
                  f"{1000 * per_step[side][-1]:.1f} ms/step", flush=True)
    loads.append(load_average())
    name = Path(mtl_args[0]).stem
    steps_text = f"steps {args.n2}, clock: each process's training loop" if loop else f"steps {args.n1}/{args.n2}"
    print(f"\n{name}, {args.device}, batch {args.batch}, threads {args.threads}, {steps_text}, {args.rounds} rounds, "
          f"load average {min(loads):.1f}–{max(loads):.1f}\n")
    split = " oneDNN ms/step | outside oneDNN |" if args.onednn else ""
    print(f"| side | ms/step median [min–max] | {unit}/s (median) | mtl's speed-up: paired ratio median [min–max] "
          f"| process s ({args.n2} steps) median [min–max] | peak RSS MiB (max) |{split}")
    print("|---|---|---|---|---|---|" + ("---|---|" if args.onednn else ""))
    for side in sides:
        ms = [1000 * v for v in per_step[side]]
        ratio = "–"
        if side != "mtl":
            rs = [t / m for t, m in zip(per_step[side], per_step["mtl"])]
            ratio = f"{statistics.median(rs):.2f} [{min(rs):.2f}–{max(rs):.2f}]"
        inside = [1000 * v for v in in_onednn[side]]
        outside = [m - i for m, i in zip(ms, inside)]
        cells = f" {statistics.median(inside):.1f} | {statistics.median(outside):.1f} |" if args.onednn else ""
        ps = process_s[side]
        print(f"| {side} | {statistics.median(ms):.1f} [{min(ms):.1f}–{max(ms):.1f}] | "
              f"{1000 * args.batch / statistics.median(ms):.1f} | {ratio} | "
              f"{statistics.median(ps):.1f} [{min(ps):.1f}–{max(ps):.1f}] | {max(peak_mib[side]):.0f} |{cells}")
    if args.onednn:
        # The ceiling: mtl's speed-up over the fastest variant if mtl spent nothing outside oneDNN.
        best = min((s for s in sides if s != "mtl"), key=lambda s: statistics.median(per_step[s]))
        print(f"\nceiling: if mtl spent nothing outside oneDNN, it would be "
              f"{statistics.median(per_step[best]) / statistics.median(in_onednn['mtl']):.2f}× {best} (the fastest PyTorch variant here)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"config": name, "device": args.device, "args": mtl_args, "batch": args.batch, "threads": args.threads,
                                "clock": args.clock, "n1": args.n1, "n2": args.n2, "per_step_seconds": per_step,
                                "process_seconds": process_s, "peak_rss_mib": peak_mib, "load": loads,
                                "onednn_seconds_per_step": in_onednn if args.onednn else None}) + "\n")
    subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
