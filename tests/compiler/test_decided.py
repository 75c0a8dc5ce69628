"""Decisions travel in the IR: a decided module reproduces the compile, and `tune`'s
decisions are the ones `compile` uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tilecraft import driver, frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.dialects import tc


def tilecraft(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilecraft.cli", *args], cwd=cwd, capture_output=True, text=True)


def opt(*args: str, cwd: str) -> subprocess.CompletedProcess:
    code = "import sys; from tilecraft.cli import opt_main; sys.exit(opt_main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("model", ["conv_autoencoder", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_decided_module_lowers_to_the_same_llvm(tmp_path, model):
    """`compile --emit decided` then `tilecraft-opt -p cpu-lower` gives exactly the LLVM
    dialect `compile --emit llvm` gives: every schedule and fusion group is in the IR
    (CI runs the conv autoencoder — convolutions, upsampling, a concat, fusion groups —
    and leaves ResNet-18 to the slow run)."""
    for args in (("--emit", "decided", "-o", "r.mlir"), ("--emit", "llvm", "-o", "r.ll.mlir")):
        proc = tilecraft("compile", model, *args, cwd=str(tmp_path))
        assert proc.returncode == 0, proc.stderr
    decided = (tmp_path / "r.mlir").read_text()
    assert "tc.schedule" in decided and tc.FUSED_GROUPS in decided and "tc.bound_args" in decided
    proc = opt("r.mlir", "-p", "cpu-lower", "-o", "r.opt.mlir", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r.opt.mlir").read_text() == (tmp_path / "r.ll.mlir").read_text()


TINY = """
import torch

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(256, 512)

    def forward(self, x):
        return torch.softmax(self.a(x), dim=-1) * 2.0

def factory():
    torch.manual_seed(0)
    return M().eval(), (torch.randn(64, 256),)
"""


def test_every_decision_tune_writes_is_used_by_compile(tmp_path):
    """`tune` searches the kernels of the decided module (after im2col and fusion), so each
    kernel key it writes names an op that `compile --decisions` schedules with it."""
    (tmp_path / "tiny.py").write_text(TINY)
    spec, out = f"{tmp_path / 'tiny.py'}:factory", tmp_path / "tiny.decisions.json"
    proc = tilecraft(
        "tune", spec, "--budget", "3", "--db", str(tmp_path / "t.db"), "--decisions-out", str(out), cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())["decisions"]
    assert written
    pinned = {k: tiling.TileDecision.from_json(v) for k, v in written.items()}
    compiled = driver.compile_model(frontend.import_spec(spec), emit="decided", decisions=pinned)
    module = frontend.parse_mlir(compiled.text, context=frontend.new_context())
    infos = tiling.tag_ops(module)
    used = tiling.attached(module)
    keys = {i.key for i in infos}
    assert set(pinned) <= keys, "tune wrote a kernel compile does not have"
    for info in infos:
        if info.key in pinned:
            assert used[info.op_id] == pinned[info.key]


def test_pipeline_spec_round_trips():
    """The passes a compile ran, written as a pipeline, parse back to the same passes."""
    from tilecraft import pipeline

    compiled = driver.compile_model(frontend.import_spec("mlp"), emit="llvm")
    text = pipeline.spec(compiled.passes)
    assert "conv-im2col" in text and "cpu-tiled" in text and "cpu-llvm" in text
    assert pipeline.parse(text) == compiled.passes


def test_a_failing_pass_saves_a_reproducer_that_names_it(tmp_path):
    """A pass that fails saves its input, decisions included, and prints the real
    `tilecraft-opt -p` command that fails the same way on it."""
    import re

    src = os.path.join(os.path.dirname(__file__), "..", "filecheck", "fuse_decided.mlir")
    text = open(src).read().replace('\\"tiles\\": [16, 32]', '\\"tiles\\": [16, 32, 4, 4]')  # 4 sizes, 2 loops
    (tmp_path / "bad.mlir").write_text(text)
    proc = opt("bad.mlir", "-p", "fuse", cwd=str(tmp_path))
    assert proc.returncode == 2 and "stage 'fuse' failed" in proc.stderr
    saved, command = re.search(r"input IR saved to (\S+); reproduce with: (.*)", proc.stderr).groups()
    assert command == f"tilecraft-opt {saved} -p 'fuse'"
    assert "tc.fusion" in open(saved).read()
    again = opt(saved, "-p", "fuse", cwd=str(tmp_path))
    assert again.returncode == 2 and "too many tiles" in again.stderr
    os.unlink(saved)
