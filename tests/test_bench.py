"""Every bench script's `--quick` mode, as CI runs it: so that no benchmark rots.

Each script runs in a subprocess from the repository root (`python bench/X.py --quick`),
compiling, checking against eager, timing and printing its table on a small case; the
test asserts it exits 0 and printed its table's rows. Quick modes write under
bench/results/quick/ (or nowhere), never over a full run's results.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


def _perf_records() -> bool:
    """`perf record` and `objdump` are on PATH and perf may sample this user's processes."""
    if not shutil.which("perf") or not shutil.which("objdump"):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = ["perf", "record", "-q", "-o", os.path.join(tmp, "perf.data"), "--", "true"]
        return subprocess.run(probe, capture_output=True).returncode == 0


def _amx() -> bool:
    from tilecraft.backends.cpu import amx

    return amx.available()


needs_perf = pytest.mark.skipif(not _perf_records(), reason="needs Linux `perf` (allowed to record) and `objdump`")

# (script and its options, regexes its stdout must match: the table's rows)
CASES = [
    pytest.param(
        ["costmodel.py"],
        [r"^lightgbm\s+[\d.]+", r"^search on [1-9]\d* held-out kernels", r"^mlp\s.*\syes$"],
        id="costmodel",
    ),
    pytest.param(["models.py"], [r"^bert\s+[\d.]+\s+yes\s+[\d.]+\s+[\d.]+\s+[\d.]+"], id="models"),
    pytest.param(["torch_compile.py"], [r"^mlp(\s+[\d.]+){7}$", r"^geomean: tilecraft vs eager"], id="torch_compile"),
    pytest.param(
        ["e2e.py"], [r"^mlp\s+yes\s+\d+\s+[\d.]+", r"^mlp\s+[\d.]+ \((onnxruntime|openvino|eager)\)"], id="e2e"
    ),
    pytest.param(
        ["accel_costmodel.py"],
        [r"^known configs: lightgbm\s+[01]\.\d{3}", r"^unseen config: adapted \(10 samples\)\s+[01]\.\d{3}"],
        id="accel_costmodel",
    ),
    pytest.param(["gpu.py"], [r"^mlp\s+(sm_80\s+[\d.]+\s+3\s|yes\s)", r"^conv_autoencoder\s"], id="gpu"),
    pytest.param(["accel.py"], [r"^mlp\s+[\d.]+\s+3\s+0\s+[\d,]+\s.*\syes\s+0\.0\d+$"], id="accel"),
    pytest.param(["fusion.py"], [r"^softmax_4x128x128\s.*\syes$", r"^chosen partition within 5%"], id="fusion"),
    pytest.param(["fusion.py", "--calibrate"], [r"^factors \{'\w+': [\d.]+"], id="fusion-calibrate"),
    pytest.param(["fusion_ceiling.py"], [r"^mlp\s+[\d.]+\s+[\d.]+\s+\d+", r"^geomean\s+[\d.]+"], id="fusion_ceiling"),
    pytest.param(
        ["loop_profile.py"],
        [r"^mlp \(fused\): [\d.]+ ms per inference", r"^  nest\s+\d+ @"],
        id="loop_profile",
        marks=needs_perf,
    ),
    # part 1 (the AMX GEMMs) runs where the CPU has AMX, part 2 (the zoo, f32 without AMX) everywhere
    pytest.param(
        ["precision.py"],
        [r"^mlp\s+[\d.]+\s+[\d.]+\s+[\d.]+"]
        + ([r"^bf16 kernel \(bf16 in, f32 out\)\s+torch eager bf16\s+\d+\s+\d+", r"^int8 Linear \("] if _amx() else []),
        id="precision",
    ),
    pytest.param(
        ["accel_crosscheck.py"],
        [
            r"^\| small \(16, 16, 16\) \| \d+ \| 16 \| \d+ \| 61 \| [\d.]+ \| 45 \| (sim|formula) \|$",
            r"ideal/SCALE-Sim = M/\(M\+46\)",
        ],
        id="accel_crosscheck",
    ),
    pytest.param(["schedules.py"], [r"^matmul 128\^3\s+4/\d+\s+[\d.]+"], id="schedules"),
    pytest.param(
        ["ab.py"],
        [r"^mlp\s+1t  SCALAR_ONLY_STRIDED=False:\s+[\d.]+ ms  SCALAR_ONLY_STRIDED=True:\s+[\d.]+ ms  ratio [\d.]+$"],
        id="ab",
    ),
    pytest.param(
        ["runtime.py"],
        [r"^mlp\s+quiet\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", r"^mlp\s+busy cpu \d+\s+[\d.]+"],
        id="runtime",
        marks=pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores"),
    ),
    pytest.param(
        ["costmodel_adapt.py"],
        [r"^xeon\s+\d+\s+\d+\s+[\d.]+\s+\S+\s+[01]\.\d{3} -> [01]\.\d{3}", r"^amd-only\s+\d+"],
        id="costmodel_adapt",
    ),
]


@pytest.mark.parametrize("script, table", CASES)
def test_quick_mode_prints_its_table(script, table):
    # OpenMP threads that sleep rather than spin while they wait: on a busy 2-core CI
    # machine LightGBM's spinning threads made one training many times slower.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    cmd = [sys.executable, os.path.join("bench", script[0]), "--quick", *script[1:]]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-4000:]}"
    for row in table:
        assert re.search(row, done.stdout, re.MULTILINE), f"{' '.join(cmd)} printed no {row!r}:\n{done.stdout}"
