"""TensorBoard event files, read by TensorBoard itself.

Run: .venv/bin/python -m pytest -q tests/test_tensorboard.py (after `cargo build --release`).

The `tensorboard` package's readers, not ours: `EventAccumulator` (scalars, images, tensors),
`plugin_event_accumulator` (what TensorBoard's Python backend serves, with its restart rule
applied to every kind of data), the hparams plugin's own parsers, and the TensorBoard server
itself (its Rust data server when it runs here) over HTTP.

1. The default config's model and tasks (fewer images and epochs): every value of every
   metrics.jsonl row is a scalar at its step under `<task>/<metric>` (val),
   `<task>/train_<metric>` (train) or `<split>/<key>`, equal to the value (as float32); nothing
   else is there. Val images of every per-pixel task at every evaluation, of the documented
   size; the config as text; hparams with the config's values, the session ended.
2. Every record is framed as TFRecord: masked CRC-32C of length and data (TensorBoard's CRC).
3. Resume: a run resumed from an earlier checkpoint (the steps after it were logged by the
   first attempt) and a run paused and resumed show every step once, with the values of
   metrics.jsonl; a run killed mid-write leaves files TensorBoard reads, and resumes cleanly.
4. Depth and normals (NYUv2 layout) get images too; `report.tensorboard: false` writes none.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_interop import assert_ok, assert_user_error, describe, mtl
from test_mtl_torch import _write_nyu

from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import api_pb2

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "mtl-train"
DEFAULT_CONFIG = ROOT / "configs" / "shapes_seg.yaml"
# The default config's model and tasks, on fewer images for fewer steps.
SMALL = ["--set", "data.train_size=192", "--set", "data.val_size=60", "--set", "data.eval_batch_size=25",
         "--set", "train.epochs=2", "--set", "train.log_every=1", "--set", "threads=1"]
EVERYTHING = {k: 0 for k in ("scalars", "images", "tensors", "histograms", "audio", "compressedHistograms")}


@pytest.fixture(scope="module")
def binary():
    if not BINARY.is_file():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build --release` (scripts/test.sh does)")
    return BINARY


@pytest.fixture(scope="module")
def default_run(binary, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default")
    assert_ok(mtl(binary, tmp, DEFAULT_CONFIG, "--run-dir", "run", "--set", "checkpoint.keep_last=10", *SMALL))
    return tmp / "run"


def rows(run: Path) -> list:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tag(split: str, key: str) -> str:
    """The documented mapping (README, src/train/tensorboard/mod.rs `tag`)."""
    if "." in key:
        task, metric = key.split(".", 1)
        return f"{task}/{metric}" if split == "val" else f"{task}/{split}_{metric}"
    return f"{split}/{key}"


def expected_scalars(run: Path) -> dict:
    """{tag: {step: value}} from metrics.jsonl."""
    out: dict = {}
    for r in rows(run):
        for k, v in r.items():
            if k in ("step", "epoch", "split"):
                continue
            out.setdefault(tag(r["split"], k), {})[r["step"]] = v
    return out


def accumulator(run: Path):
    acc = event_accumulator.EventAccumulator(str(run), size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def plugin_accumulator(run: Path):
    acc = plugin_event_accumulator.EventAccumulator(str(run), size_guidance=EVERYTHING,
                                                    tensor_size_guidance=EVERYTHING)
    acc.Reload()
    return acc


def assert_scalars_match(run: Path):
    """Every metrics.jsonl value is in TensorBoard at its step (float32), and nothing else."""
    acc = accumulator(run)
    want = expected_scalars(run)
    assert sorted(acc.Tags()["scalars"]) == sorted(want)
    for t, by_step in want.items():
        events = acc.Scalars(t)
        steps = [e.step for e in events]
        assert steps == sorted(by_step), (t, steps, sorted(by_step))
        for e in events:
            v = by_step[e.step]
            if v is None:  # metrics.jsonl writes NaN and infinities as null
                assert not np.isfinite(e.value), (t, e.step, e.value)
            else:
                assert e.value == np.float32(v), (t, e.step, e.value, v)
    return acc


def assert_no_step_twice(run: Path):
    """Per tag, no step twice, for every kind of data TensorBoard serves."""
    acc = plugin_accumulator(run)
    for t in acc.Tags()["tensors"]:
        steps = [e.step for e in acc.Tensors(t)]
        twice = [s for s, n in Counter(steps).items() if n > 1]
        assert not twice, f"{t}: steps {twice} more than once in {steps}"


def png_size(data: bytes):
    """(width, height) of a PNG, after checking it decompresses to RGB rows of that size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2), "8-bit RGB"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


def preview_size(h: int, w: int, images: int):
    """The documented layout: a 20 px header, then rows of image | target | prediction, tiles
    scaled by a whole factor to a longer side of at least 128 px, 2 px gutters."""
    scale = max(1, 128 // max(h, w))
    return 3 * w * scale + 4 * 2, 20 + images * h * scale + (images + 1) * 2


# --- 1. the default config --------------------------------------------------------------------


def test_every_metrics_value_is_a_tensorboard_scalar(default_run):
    acc = assert_scalars_match(default_run)
    val = [r for r in rows(default_run) if r["split"] == "val"]
    assert len(val) == 2, "one evaluation per epoch"
    for r in val:
        for task, metrics in (("kind", ("accuracy", "top5", "loss")), ("seg", ("miou", "pixel_accuracy", "loss"))):
            for m in metrics:
                got = {e.step: e.value for e in acc.Scalars(f"{task}/{m}")}
                assert got[r["step"]] == np.float32(r[f"{task}.{m}"])
    train_tags = set(acc.Tags()["scalars"]) - {tag("val", k) for r in val for k in r}
    assert {"kind/train_loss", "seg/train_loss", "kind/train_weight", "train/lr", "train/images_per_second"} <= train_tags


def test_val_images_at_every_evaluation(default_run):
    acc = accumulator(default_run)
    assert acc.Tags()["images"] == ["seg/val_images"], "the one per-pixel task of the default config"
    images = acc.Images("seg/val_images")
    assert [i.step for i in images] == [r["step"] for r in rows(default_run) if r["split"] == "val"]
    for i in images:
        assert (i.width, i.height) == preview_size(32, 32, 4) == png_size(i.encoded_image_string)


def test_config_text_and_hparams(default_run):
    acc = accumulator(default_run)
    config_yaml = (default_run / "config.yaml").read_text()
    (text,) = acc.Tensors("config")
    assert text.step == 0
    shown = text.tensor_proto.string_val[0].decode()
    assert "\n".join(l[4:] for l in shown.splitlines()) == config_yaml.rstrip("\n"), "the config, as code"
    config = yaml.safe_load(config_yaml)

    start = hparams_metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hp["optim.lr"] == config["optim"]["lr"]
    assert hp["data.batch_size"] == config["data"]["batch_size"]
    assert hp["model.backbone.kind"] == "conv" and hp["balance.method"] == "static"
    assert hp["model.backbone.widths"] == json.dumps(config["model"]["backbone"]["widths"], separators=(",", ":"))
    assert hp["tasks"] == "kind,seg" and hp["seed"] == config["seed"]

    end = hparams_metadata.parse_session_end_info_plugin_data(
        acc.SummaryMetadata(hparams_metadata.SESSION_END_INFO_TAG).plugin_data.content)
    assert end.status == api_pb2.STATUS_SUCCESS
    (end_event,) = acc.Tensors(hparams_metadata.SESSION_END_INFO_TAG)
    assert end_event.step == max(r["step"] for r in rows(default_run))


# --- 2. the file format -----------------------------------------------------------------------


def records(path: Path):
    """(length, data) of every TFRecord, checking both masked CRCs with TensorBoard's CRC."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert len_crc == masked_crc32c(header), f"{path}: length CRC of record {len(out)}"
        body = data[pos + 12:pos + 12 + n]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
        assert body_crc == masked_crc32c(body), f"{path}: data CRC of record {len(out)}"
        out.append(body)
        pos += 16 + n
    return out


def test_records_carry_tensorflows_masked_crc32c(default_run):
    from tensorboard.compat.proto import event_pb2

    (path,) = [p for p in default_run.iterdir() if "tfevents" in p.name]
    events = [event_pb2.Event.FromString(r) for r in records(path)]
    assert events[0].file_version == "brain.Event:2" and events[0].step == 0
    assert all(e.wall_time > 1.5e9 for e in events)


# --- 3. resume, pause, crash ------------------------------------------------------------------


def tiny(name: str, **train) -> dict:
    return {
        "name": name, "seed": 3, "device": "cpu", "threads": 1,
        "data": {"dataset": "shapes", "train_size": 96, "val_size": 40, "image_size": 16,
                 "batch_size": 16, "eval_batch_size": 20, "augment": {"crop_padding": 2, "hflip": True}},
        "model": {"backbone": {"kind": "conv", "widths": [4, 8], "depth": 1}},
        "tasks": [{"name": "kind", "kind": "classification", "target": "kind", "classes": 10},
                  {"name": "seg", "kind": "segmentation", "target": "mask", "classes": 11}],
        "optim": {"kind": "adamw", "lr": 0.01},
        "train": {"epochs": 3, "log_every": 2, **train},
        "checkpoint": {"every": 1, "keep_last": 10, "monitor": "seg.miou"},
    }


def train(binary, tmp: Path, cfg: dict, *extra) -> Path:
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert_ok(mtl(binary, tmp, "c.yaml", "--run-dir", "run", *extra))
    return tmp / "run"


def event_files(run: Path):
    return sorted(p for p in run.iterdir() if "tfevents" in p.name)


def test_resume_from_an_earlier_checkpoint_shows_every_step_once(binary, tmp_path):
    run = train(binary, tmp_path, tiny("again"))
    first = rows(run)
    # As after a crash: the first attempt logged steps 7..18, past the checkpoint at step 6.
    assert_ok(mtl(binary, tmp_path, "c.yaml", "--run-dir", "run", "--resume", "run/checkpoints/step-000006"))
    assert len(event_files(run)) == 2
    assert [(r["split"], r["step"]) for r in rows(run)] == [(r["split"], r["step"]) for r in first]
    assert_scalars_match(run)
    assert_no_step_twice(run)
    acc = accumulator(run)
    assert [i.step for i in acc.Images("seg/val_images")] == [6, 12, 18]


def test_pause_and_resume_logs_what_an_uninterrupted_run_logs(binary, tmp_path):
    whole_dir, paused_dir = tmp_path / "whole", tmp_path / "paused"
    whole_dir.mkdir()
    paused_dir.mkdir()
    whole = train(binary, whole_dir, tiny("p"))
    paused = train(binary, paused_dir, tiny("p"), "--set", "train.max_steps=8")
    assert_ok(mtl(binary, paused_dir, "c.yaml", "--run-dir", "run", "--resume"))
    assert_scalars_match(paused)
    assert_no_step_twice(paused)
    a, b = accumulator(whole), accumulator(paused)
    assert a.Tags()["scalars"] == b.Tags()["scalars"]
    for t in a.Tags()["scalars"]:
        if t == "train/images_per_second":
            continue
        assert [(e.step, e.value) for e in a.Scalars(t)] == [(e.step, e.value) for e in b.Scalars(t)], t


def test_a_torn_last_record_is_read_up_to_the_tear(default_run, tmp_path):
    (path,) = event_files(default_run)
    whole = len(records(path))
    data = path.read_bytes()
    for cut in (len(data) - 3, len(data) - 30, 5):
        run = tmp_path / f"cut{cut}"
        run.mkdir()
        (run / path.name).write_bytes(data[:cut])
        acc = accumulator(run)  # no exception
        seen = sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])
        assert (seen > 0) == (cut > 5), (cut, seen, whole)


def test_a_killed_run_leaves_readable_files_and_resumes_cleanly(binary, tmp_path):
    cfg = tiny("killed", epochs=40, log_every=1)
    cfg["data"]["train_size"] = 192
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([str(BINARY), "c.yaml", "--run-dir", "run"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "run"
    deadline = time.time() + 120
    # Kill once a checkpoint exists and more steps have been logged after it.
    while time.time() < deadline:
        if (run / "checkpoints" / "LATEST").is_file() and len(logged_rows(run)) > 30:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acc = accumulator(run)
    assert acc.Scalars("kind/train_loss"), "the killed run's events are readable"
    stop = max(r["step"] for r in logged_rows(run)) + 24
    assert_ok(mtl(binary, tmp_path, "c.yaml", "--run-dir", "run", "--resume", "--set", f"train.max_steps={stop}"))
    assert (run / "checkpoints" / f"step-{stop:06d}").is_dir()
    assert_scalars_match(run)
    assert_no_step_twice(run)


def logged_rows(run: Path) -> list:
    """The rows of metrics.jsonl, a torn last line (a killed writer's) left out."""
    out = []
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


# --- 4. dense tasks, switched off -------------------------------------------------------------


def test_depth_and_normals_are_shown_as_images(binary, tmp_path):
    _write_nyu(tmp_path / "nyu")
    cfg = {
        "name": "nyu", "seed": 1, "device": "cpu", "threads": 1,
        "data": {"dataset": "nyuv2", "root": "nyu", "image_size": 8, "batch_size": 2},
        "model": {"backbone": {"kind": "conv", "widths": [4, 8]}},
        "tasks": [{"name": "semantic", "kind": "segmentation", "target": "semantic", "classes": 13},
                  {"name": "depth", "kind": "regression", "target": "depth"},
                  {"name": "normal", "kind": "normals", "target": "normal"}],
        "optim": {"kind": "adamw", "lr": 0.01}, "train": {"epochs": 2, "log_every": 1},
        "checkpoint": {"monitor": "semantic.miou"},
    }
    run = train(binary, tmp_path, cfg)
    assert_scalars_match(run)
    acc = accumulator(run)
    assert sorted(acc.Tags()["images"]) == ["depth/val_images", "normal/val_images", "semantic/val_images"]
    for t in acc.Tags()["images"]:
        for i in acc.Images(t):
            # Two val images (fewer than report.preview_images), 8×12 as NYUv2 keeps its aspect.
            assert (i.width, i.height) == preview_size(8, 12, 2) == png_size(i.encoded_image_string)


def test_switched_off_and_bad_keys(binary, tmp_path):
    run = train(binary, tmp_path, tiny("off", epochs=1), "--set", "report.tensorboard=false")
    assert not event_files(run) and rows(run)
    (tmp_path / "b").mkdir()
    run = train(binary, tmp_path / "b", tiny("noimg", epochs=1), "--set", "report.preview_images=0")
    assert accumulator(run).Tags()["images"] == [] and event_files(run)
    r = mtl(binary, tmp_path, "c.yaml", "--run-dir", "x", "--set", "report.preview_images=65")
    assert_user_error(r, "report.preview_images")
    r = mtl(binary, tmp_path, "c.yaml", "--run-dir", "x", "--set", "report.tensorbord=false")
    assert_user_error(r, "tensorbord")
    assert not (tmp_path / "x").exists()


# --- TensorBoard's server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_tensorboard_server_serves_scalars_images_and_hparams(default_run, tmp_path):
    exe = Path(sys.executable).parent / "tensorboard"
    port = free_port()
    log = open(tmp_path / "tb.log", "w")
    server = subprocess.Popen([str(exe), "--logdir", str(default_run.parent), "--port", str(port),
                               "--host", "127.0.0.1", "--reload_interval", "1"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def get(path, body=None):
        req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.time() + 90
        while True:
            try:
                if "run" in get("/data/runs") and get("/data/plugin/scalars/tags").get("run"):
                    break
            except OSError:
                pass
            assert time.time() < deadline, (tmp_path / "tb.log").read_text()
            time.sleep(0.5)
        val = [r for r in rows(default_run) if r["split"] == "val"]
        got = get("/data/plugin/scalars/scalars?run=run&tag=seg/miou")
        assert [(s, v) for _, s, v in got] == [(r["step"], np.float32(r["seg.miou"])) for r in val]
        assert "seg/val_images" in get("/data/plugin/images/tags")["run"]
        groups = get("/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": []})["sessionGroups"]
        (group,) = groups
        assert group["hparams"]["balance.method"] == "static"
        final = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert final["seg/miou"] == pytest.approx(val[-1]["seg.miou"], rel=1e-6)
        assert final["kind/accuracy"] == pytest.approx(val[-1]["kind.accuracy"], rel=1e-6)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
