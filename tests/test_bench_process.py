"""scripts/bench_process.py's split of a step into oneDNN's primitives and the rest
(``--onednn``): the parser against lines of known sum and against a real libtorch process."""
import os
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import bench_process  # noqa: E402


def test_only_execution_lines_are_summed(tmp_path):
    lines = [
        "onednn_verbose,v1,info,oneDNN v3.10.2 (commit f1d4719)",
        "onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,exec_time",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,,mb16_ic64oc64,9.5",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32,,,mb16_ic64oc64,1.25",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:acdb::f0 dst:f32::blocked:Acdb64a::f0,attr-scratchpad:user,,64x3x3x3,0.5",
        "a training log line, exec, 100",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,backward_weights,src:f32,,,mb16_ic64oc64,2.25",
    ]
    script = tmp_path / "fake.py"
    script.write_text("import sys\n" + "".join(f"print({line!r})\n" for line in lines))
    seconds, ms, _ = bench_process.timed([sys.executable, str(script)], dict(os.environ), onednn=True)
    assert ms == 4.0 and seconds > 0


def test_a_libtorch_process_reports_its_convolutions():
    code = (
        "import torch, torch.nn.functional as F\n"
        "torch.set_num_threads(1)\n"
        "x, w = torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3)\n"
        "for _ in range(N): F.conv2d(x, w, padding=1)\n"
    )
    env = dict(os.environ)
    t0 = time.perf_counter()
    _, few, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "2")], env, onednn=True)
    _, many, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "12")], env, onednn=True)
    wall = 1000 * (time.perf_counter() - t0)
    assert 0 < few < many < wall, (few, many, wall)
    _, off, _ = bench_process.timed([sys.executable, "-c", code.replace("N", "2")], env)
    assert off == 0.0


def test_a_failing_process_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="failed"):
        bench_process.timed([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), onednn=True)


def test_peak_memory_is_the_process_own():
    """The peak resident memory is each process's alone: 300 MiB touched shows, and a small
    process run afterwards does not inherit it."""
    big = "import time\nb = bytearray(300 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(0.2)\n"
    _, _, peak_big = bench_process.timed([sys.executable, "-c", big], dict(os.environ))
    _, _, peak_small = bench_process.timed([sys.executable, "-c", "import time; time.sleep(0.2)"], dict(os.environ))
    assert peak_big > 300 and peak_small < 100, (peak_big, peak_small)
