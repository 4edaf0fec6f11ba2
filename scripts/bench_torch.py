#!/usr/bin/env python3
"""The PyTorch side of ``scripts/bench.sh``: an idiomatic eager training loop for the model of
``scripts/mtl_torch.py``, on what ``mtl-train bench --export DIR`` wrote (the resolved config,
the train split as uint8, the initial weights), timed like ``src/cli/bench.rs`` times mtl's step.

The loop is what a PyTorch engineer would write for a dataset that fits on the device:

* the split lives on the device as uint8; every step gathers a batch by index from a per-epoch
  ``randperm`` drawn on the device, converts to float and normalizes there;
* augmentation (when the config asks for it) is the same batched work as mtl's
  ``src/data/augment.rs``: zero-pad the images (labels with the ignore index), then one
  ``gather`` per tensor with an index built from per-sample crop offsets and flip bits, drawn
  on the device (``torch.randint``), so no host round trip;
* forward, one cross-entropy per task (ignore index, label smoothing), the static weighted sum,
  ``optimizer.zero_grad(set_to_none=True)``, ``backward``, ``optimizer.step()`` with
  ``foreach=True`` (AdamW or SGD with the config's hyperparameters), ``scheduler.step()``
  (LambdaLR with mtl's warm-up + cosine/onecycle/step rule);
* per-task losses accumulate on the device (``running += losses.detach()``): no ``.item()``
  and no other host synchronisation inside the step;
* ``torch.set_num_threads(--threads)``; on CUDA ``cudnn.benchmark = True``, bf16 through
  ``torch.autocast`` (fp32 master weights, fp32 losses), optionally ``torch.compile``.

Timing: ``--warmup`` steps, then ``--reps`` repetitions of ``--steps`` steps, each between two
``torch.cuda.synchronize()`` on CUDA; median, min and max images/s. Memory: peak RSS (VmHWM,
reset after the warm-up) and, on CUDA, the caching allocator's peak plus ``cudaMemGetInfo``'s
used memory (the figure mtl reports). One JSON line is appended to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mtl_torch import build_model, dataset_normalization  # noqa: E402


def lr_lambda(cfg: dict, total_steps: int, steps_per_epoch: int):
    """mtl's src/optim/schedule.rs as a LambdaLR factor of the peak LR."""
    s = cfg.get("schedule") or {}
    kind = s.get("kind", "constant")
    warm = int(s.get("warmup_steps", 0))
    min_ratio = float(s.get("min_lr_ratio", 0.0))
    gamma, step_size = float(s.get("gamma", 0.1)), int(s.get("step_size", 1))
    pct = float(s.get("pct_start", 0.3))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        span = max(total_steps - warm, 1)
        p = min((step - warm) / span, 1.0)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
        if kind == "step":
            return gamma ** ((step // steps_per_epoch) // max(step_size, 1))
        if kind == "onecycle":
            if p < pct:
                q = p / pct
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * q))
            q = (p - pct) / max(1 - pct, 1e-12)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * q))
        raise ValueError(f"schedule kind {kind!r}")

    return f


def make_optimizer(model: torch.nn.Module, cfg: dict, fused: bool):
    o = cfg["optim"]
    kw = {"fused": True} if fused else {"foreach": True}
    if o["kind"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=float(o["lr"]), betas=tuple(float(b) for b in o["betas"]), eps=float(o["eps"]),
                                 weight_decay=float(o["weight_decay"]), **kw)
    return torch.optim.SGD(model.parameters(), lr=float(o["lr"]), momentum=float(o["momentum"]), nesterov=o["nesterov"],
                           weight_decay=float(o["weight_decay"]), **kw)


class Data:
    """The train split on the device and the batch pipeline (gather, normalize, crop + flip)."""

    def __init__(self, export: Path, cfg: dict, device: torch.device):
        from safetensors.torch import load_file

        t = load_file(str(export / "data.safetensors"))
        self.images = t["images"].to(device)
        self.targets = [t[f"target.{task['target']}"].to(device) for task in cfg["tasks"]]
        self.spatial = [y.dim() == 3 for y in self.targets]
        mean, std = dataset_normalization(cfg)
        c = self.images.shape[1]
        if c == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, c, 1, 1)
        self.n = self.images.shape[0]
        self.batch = int(cfg["data"]["batch_size"])
        aug = cfg["data"].get("augment") or {}
        self.pad = int(aug.get("crop_padding", 0))
        self.hflip = bool(aug.get("hflip", False))
        seg = [task for task in cfg["tasks"] if task["kind"] == "segmentation"]
        self.fill = int(seg[0].get("ignore_index", 255)) if seg else 255
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(int(cfg.get("seed", 0)))
        self.steps_per_epoch = max(self.n // self.batch, 1)
        self.perm = None
        self.pos = 0
        _, _, h, w = self.images.shape
        self.rows = torch.arange(h, device=device).view(1, h)
        self.cols = torch.arange(w, device=device).view(1, w)

    def next(self):
        if self.perm is None or self.pos == self.steps_per_epoch:
            self.perm = torch.randperm(self.n, device=self.device, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos * self.batch:(self.pos + 1) * self.batch]
        self.pos += 1
        x = (self.images.index_select(0, idx).float() / 255.0 - self.mean) / self.std
        ys = [y.index_select(0, idx).long() for y in self.targets]
        if self.pad == 0 and not self.hflip:
            return x, ys
        return self.crop_flip(x, ys)

    def crop_flip(self, x, ys):
        n, c, h, w = x.shape
        p = self.pad
        oy = torch.randint(0, 2 * p + 1, (n, 1), device=self.device, generator=self.gen)
        ox = torch.randint(0, 2 * p + 1, (n, 1), device=self.device, generator=self.gen)
        if self.hflip:
            flip = torch.randint(0, 2, (n, 1), device=self.device, generator=self.gen)
        else:
            flip = torch.zeros((n, 1), dtype=torch.long, device=self.device)
        rows = oy + self.rows                                   # [n, h]
        cols = ox + self.cols + flip * (w - 1 - 2 * self.cols)  # [n, w]
        index = (rows.view(n, h, 1) * (w + 2 * p) + cols.view(n, 1, w)).view(n, 1, h * w)
        area = (h + 2 * p) * (w + 2 * p)
        xo = F.pad(x, (p, p, p, p)).view(n, c, area).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)
        out = []
        for y, spatial in zip(ys, self.spatial):
            if spatial:
                y = F.pad(y, (p, p, p, p), value=self.fill).view(n, 1, area).gather(2, index).view(n, h, w)
            out.append(y)
        return xo, out


def peak_rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def status_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def load_average():
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def spread(values):
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1]}


SIDE_ORDER = ["mtl", "mtl-nchw", "mtl-unfused", "mtl-nchw-unfused", "torch-eager", "torch-eager-cl", "torch-eager-fused", "torch-compile"]


def profile_table(step, steps: int, sync, top: int = 14) -> str:
    """Self CPU time per aten op (ms per step, share of the step) over `steps` profiled steps;
    tch has no profiler binding, so this is how the ops mtl runs are attributed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        sync()
    ops = [(e.key, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()]
    ops = sorted((o for o in ops if o[1] > 0), key=lambda o: -o[1])
    total = sum(ms for _, ms in ops)
    out = ["| op | ms/step | share |", "|---|---|---|"]
    for name, ms in ops[:top]:
        out.append(f"| `{name}` | {ms:.1f} | {100 * ms / total:.0f}% |")
    rest = sum(ms for _, ms in ops[top:])
    out.append(f"| {len(ops) - top} other ops | {rest:.1f} | {100 * rest / total:.0f}% |")
    out.append(f"| **total** | {total:.1f} | |")
    return "\n".join(out)


def table(path: Path) -> str:
    """Markdown table of a results file: every side's repetitions pooled over the rounds;
    ratio = median mtl images/s over median torch-eager images/s, with the worst case
    (slowest mtl repetition over the fastest eager one) in brackets."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups = {}
    for r in rows:
        key = (r["config"], r["device"], r["precision"], r["batch_size"], r["threads"])
        g = groups.setdefault(key, {})
        g.setdefault(r["side"], []).append(r)

    def pooled(rs):
        ips = [r["batch_size"] * r["steps"] / t for r in rs for t in r["rep_seconds"]]
        return spread(ips), len(ips)

    def cpu_ms(rs):
        v = [1000 * c / (r["batch_size"] * r["steps"]) for r in rs for c in r.get("rep_cpu_seconds") or []]
        return statistics.median(v) if v else float("nan")

    def paired(a_rs, b_rs):
        """Ratios a/b of the repetitions that ran interleaved (same lockstep FIFO directory)."""
        a = [r for r in a_rs if r.get("lockstep")]
        b = [r for r in b_rs if r.get("lockstep")]
        if all(isinstance(r["lockstep"], str) for r in a + b):
            b_by_pair = {r["lockstep"]: r for r in b}
            matched = [(ra, b_by_pair[ra["lockstep"]]) for ra in a if ra["lockstep"] in b_by_pair]
        else:  # results written before pairs were named: in order
            matched = list(zip(a, b))
        ratios = []
        for ra, rb in matched:
            for ta, tb in zip(ra["rep_seconds"], rb["rep_seconds"]):
                ratios.append((ra["batch_size"] * ra["steps"] / ta) / (rb["batch_size"] * rb["steps"] / tb))
        return ratios

    out = ["| config | device | prec | batch | threads | side | images/s median [min–max] (n) | vs eager: ratio of medians | paired ratio median [min–max] | CPU ms/img | peak RSS MiB | device MiB; host issue share | load avg |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, sides in groups.items():
        eager = sides.get("torch-eager")
        e = pooled(eager)[0] if eager else None
        for side in sorted(sides, key=lambda s: SIDE_ORDER.index(s) if s in SIDE_ORDER else 99):
            rs = sides[side]
            sp, n = pooled(rs)
            ratio, pr = "–", "–"
            if e and side != "torch-eager":
                ratio = f"{sp['median'] / e['median']:.2f}"
                pairs = paired(rs, eager)
                if pairs:
                    pr = f"{statistics.median(pairs):.2f} [{min(pairs):.2f}–{max(pairs):.2f}]"
            rss = max(r["peak_rss_mib"] for r in rs)
            dev = [r.get("device_used_mib") for r in rs if r.get("device_used_mib") is not None]
            devs = f"{max(dev):.0f}" if dev else "–"
            if rs[0].get("allocator_peak_mib") is not None:
                devs += f" (alloc {max(r['allocator_peak_mib'] for r in rs):.0f})"
            issue = [r["issue_fraction"] for r in rs if r.get("issue_fraction") is not None]
            if issue:
                devs += f"; host issue {100 * statistics.median(issue):.0f}%"
            loads = [r["load_before"][0] for r in rs if r.get("load_before")] + \
                    [r["load_after"][0] for r in rs if r.get("load_after")]
            load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "–"
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {side} | "
                       f"{sp['median']:.1f} [{sp['min']:.1f}–{sp['max']:.1f}] ({n}) | {ratio} | {pr} | {cpu_ms(rs):.1f} | {rss:.0f} | {devs} | {load} |")
    # Sides that ran interleaved with plain mtl, as ratios of mtl's images/s to theirs: the
    # hand-tuned PyTorch variants (`bench.sh --extra`), and mtl itself with speed switches off
    # or another balancing method (`--ab`, `--balance`; the ratio is then their relative cost).
    wording = {"torch-eager-": "mtl has {r} {side}'s images/s", "mtl-": "{side} takes {r} mtl's time per step"}
    for key, sides in groups.items():
        for side in sides:
            prefix = next((p for p in wording if side.startswith(p)), None)
            pairs = paired(sides["mtl"], sides[side]) if prefix and "mtl" in sides else []
            if pairs:
                r = f"{statistics.median(pairs):.2f}× [{min(pairs):.2f}–{max(pairs):.2f}]"
                out.append(f"\n{key[0]} batch {key[3]}: " + wording[prefix].format(r=r, side=side) +
                           f" (paired, n={len(pairs)})")
    return "\n".join(out)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--table":
        print(table(Path(argv[1])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="`bench_torch.py --table RESULTS.jsonl` prints the comparison table.")
    ap.add_argument("export", type=Path, help="directory written by mtl-train bench --export")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (use mtl's threads)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (default mode)")
    ap.add_argument("--fused", action="store_true", help="fused=True optimizer instead of foreach=True")
    ap.add_argument("--json", type=Path, help="append the result as one JSON line")
    ap.add_argument("--profile", type=int, metavar="STEPS",
                    help="instead of timing: run STEPS steps under torch.profiler and print where the time goes")
    ap.add_argument("--lockstep", type=Path, metavar="DIR",
                    help="alternate repetitions with mtl-train bench through DIR/first.fifo, DIR/second.fifo")
    ap.add_argument("--lockstep-second", action="store_true", help="take the second turn (starts the exchange)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = yaml.safe_load((args.export / "config.yaml").read_text())
    precision = cfg.get("precision", "fp32")
    if (cfg.get("balance") or {}).get("method", "static") != "static":
        raise SystemExit("bench_torch: only balance.method static is mirrored here")
    kinds = {t["kind"] for t in cfg["tasks"]}
    if not kinds <= {"classification", "segmentation"}:
        raise SystemExit(f"bench_torch: task kinds {sorted(kinds)}: only classification and segmentation are mirrored")
    if precision == "bf16" and not cuda:
        raise SystemExit("bench_torch: bf16 is for CUDA (mtl's config says so too)")

    started = time.perf_counter()
    from safetensors.torch import load_file

    model = build_model(cfg)
    model.load_state_dict(load_file(str(args.export / "model.safetensors")), strict=True)
    model = model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = Data(args.export, cfg, device)
    opt = make_optimizer(model, cfg, args.fused)
    total = int(cfg["train"]["epochs"]) * data.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total, data.steps_per_epoch))
    tasks = cfg["tasks"]
    weights = [float(t.get("weight", 1.0)) for t in tasks]
    losses_fn = []
    for t in tasks:
        ignore = int(t.get("ignore_index", 255)) if t["kind"] == "segmentation" else -100
        losses_fn.append((ignore, float(t.get("label_smoothing", 0.0) or 0.0)))
    fwd = torch.compile(model) if args.compile else model
    running = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and precision == "bf16") else None

    def step():
        nonlocal running
        x, ys = data.next()
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if amp is not None:
            with amp:
                outs = list(fwd(x).values())
        else:
            outs = list(fwd(x).values())
        losses = [F.cross_entropy(o.float(), y, ignore_index=ig, label_smoothing=ls)
                  for o, y, (ig, ls) in zip(outs, ys, losses_fn)]
        loss = sum(w * l for w, l in zip(weights, losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += torch.stack([l.detach() for l in losses]).double()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    setup = time.perf_counter() - started
    if args.profile:
        for _ in range(args.warmup):
            step()
        print(profile_table(step, args.profile, sync))
        return 0
    turns = None
    if args.lockstep is not None:
        # O_RDWR: opening a FIFO this way never blocks (see src/cli/bench.rs, Lockstep).
        names = ("second.fifo", "first.fifo") if args.lockstep_second else ("first.fifo", "second.fifo")
        turns = [os.open(args.lockstep / n, os.O_RDWR) for n in names]
    for _ in range(args.warmup):
        step()
    sync()
    if turns is not None and args.lockstep_second:
        os.write(turns[1], b"t")
    peak_rss_reset()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = status_kib("VmRSS") / 1024
    load_before = load_average()
    reps, issue, cpu = [], [], []
    for _ in range(args.reps):
        if turns is not None:
            os.read(turns[0], 1)
        sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        issued = time.perf_counter() - t0
        sync()
        dt = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        reps.append(dt)
        issue.append(issued / dt)
        if turns is not None:
            os.write(turns[1], b"t")
    load_after = load_average()
    side = "torch-compile" if args.compile else "torch-eager"
    if args.channels_last:
        side += "-cl"
    if args.fused:
        side += "-fused"
    aug = "none" if (data.pad == 0 and not data.hflip) else f"crop{data.pad}" + ("+flip" if data.hflip else "")
    report = {
        "side": side,
        "config": cfg["name"],
        "device": str(device) if device.type == "cpu" else f"cuda({device.index or 0})",
        "precision": precision,
        "threads": torch.get_num_threads(),
        "batch_size": data.batch,
        "parameters": model.parameter_count(),
        "channels_last": args.channels_last,
        "augment": aug,
        "optimizer": cfg["optim"]["kind"],
        "warmup": args.warmup,
        "steps": args.steps,
        "reps": args.reps,
        "rep_seconds": reps,
        "rep_cpu_seconds": cpu,
        "images_per_second": spread([data.batch * args.steps / r for r in reps]),
        "issue_fraction": statistics.median(issue) if cuda else None,
        "peak_rss_mib": status_kib("VmHWM") / 1024,
        "base_rss_mib": base_rss,
        "device_used_mib": None,
        "allocator_peak_mib": None,
        "load_before": load_before,
        "load_after": load_after,
        "setup_seconds": setup,
        "lockstep": str(args.lockstep) if turns is not None else None,
        "torch": torch.__version__,
    }
    if cuda:
        free, total_mem = torch.cuda.mem_get_info(device)
        report["device_used_mib"] = (total_mem - free) / 2**20
        report["allocator_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    ips = report["images_per_second"]
    line = (f"{side} {cfg['name']} {report['device']} {precision} bs={data.batch} threads={report['threads']}: "
            f"{ips['median']:.1f} img/s (min {ips['min']:.1f}, max {ips['max']:.1f}; {args.reps} reps × {args.steps} steps), "
            f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    if cuda:
        line += (f", device memory {report['device_used_mib']:.0f} MiB, allocator peak "
                 f"{report['allocator_peak_mib']:.0f} MiB, host issue {100 * report['issue_fraction']:.0f}% of step time")
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
