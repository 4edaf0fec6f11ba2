"""The GPU check's CPU rehearsal: scripts/gpu_check.sh is the one script a lent GPU machine runs,
so a change that breaks any of its sections (a renamed config key, a script's flag) must fail the
suite here, on a machine without a GPU. DRY=1 SMOKE=1 runs every section on the CPU with the
smallest settings (one epoch of 512 images, one step per benchmark case, the cuda_* unit tests
only, which return early without CUDA); every row of the summary must be PASS and name what it
measures on a GPU."""

import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every section of the check, as its summary names it in a rehearsal (Gloo stands in for NCCL).
SECTIONS = [
    "unit tests (lib)",
    "train shapes_seg fp32",
    "train shapes_seg bf16",
    "Gloo world of 1: shapes_seg bs=8",
    "Gloo world of 1: cifar_seg bs=8",
    "--nproc 1 through Gloo vs plain",
    "nyuv2_resnet50 vs LibMTL",
    "benchmark",
    "speed tables",
]


def summary_rows(stdout: str) -> dict:
    assert "== gpu_check summary" in stdout, stdout[-4000:]
    summary = stdout[stdout.index("== gpu_check summary"):]
    table = summary.split("\n\n")[0].splitlines()[3:]  # the benchmark tables follow a blank line
    rows = {}
    for line in table:
        name, result, detail = (c.strip() for c in line.strip().strip("|").split("|"))
        rows[name] = (result, detail)
    return rows


def test_every_section_of_the_gpu_check_passes_its_cpu_rehearsal(tmp_path):
    prepare = subprocess.run(["bash", "scripts/gpu_check.sh", "--prepare"], cwd=ROOT,
                             capture_output=True, text=True, timeout=1800)
    assert prepare.returncode == 0, prepare.stdout[-2000:] + prepare.stderr[-3000:]
    env = dict(os.environ, DRY="1", SMOKE="1", EPOCHS="1", TEST_FILTER="cuda_", OUT=str(tmp_path))
    env.pop("PY", None)  # the script must find the project's python by itself
    run = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    rows = summary_rows(run.stdout)
    assert list(rows) == SECTIONS, rows
    failed = {name: detail for name, (result, detail) in rows.items() if result != "PASS"}
    assert not failed, failed
    for name, (_, detail) in rows.items():
        assert "on a GPU: " in detail, (name, detail)
    assert run.returncode == 0, run.stdout[-3000:]
