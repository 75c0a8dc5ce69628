"""Error paths: one line naming the problem, exit code 2, no traceback."""

import json
import subprocess
import sys

import numpy as np
import pytest

UNSUPPORTED = """
import torch

class M(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        return torch.special.bessel_j0(y)

def factory():
    return M(), (torch.randn(4, 4),)
"""


def tilecraft(*args):
    return subprocess.run([sys.executable, "-m", "tilecraft.cli", *args], capture_output=True, text=True, timeout=600)


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_unsupported_op_names_op_and_source_line(tmp_path):
    model = tmp_path / "bad_model.py"
    model.write_text(UNSUPPORTED)
    proc = tilecraft("run", f"{model}:factory")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "unsupported op aten.special_bessel_j0" in lines[0]
    assert f"{model}:7" in lines[0] and "bessel_j0(y)" in lines[0]
    assert "Traceback" not in proc.stderr


def test_malformed_mlir(tmp_path):
    bad = tmp_path / "bad.mlir"
    bad.write_text("func.func @f(%a: tensor<4xf32>) -> tensor<4xf32> {\n  return %b : tensor<4xf32>\n}\n")
    proc = tilecraft("compile", str(bad))
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "malformed MLIR" in lines[0] and "undeclared SSA value" in lines[0]


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.zeros((3, 3), np.float32), "expected tensor<32x256xf32>, got tensor<3x3xf32>"),
        (np.zeros((32, 256), np.float64), "expected tensor<32x256xf32>, got tensor<32x256xf64>"),
    ],
)
def test_wrong_input_shape_or_dtype(tmp_path, array, needle):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, array)
    proc = tilecraft("run", "mlp", "--inputs", str(npz))
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and needle in lines[0]


def test_unknown_model_and_verbose_traceback():
    proc = tilecraft("compile", "no_such_model")
    assert proc.returncode == 2 and "unknown zoo model 'no_such_model'" in proc.stderr
    proc = tilecraft("--verbose", "compile", "no_such_model")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_runtime_checks_shape_and_dtype():
    import torch

    from tilecraft import driver
    from tilecraft.backends.cpu.runtime import CallError

    fn = driver.compile_model("mlp").fn
    with pytest.raises(CallError, match="expected 1 inputs, got 2"):
        fn(torch.zeros(32, 256), torch.zeros(1))
    with pytest.raises(CallError, match="input 0: expected tensor<32x256xf32>, got tensor<32x256xi64>"):
        fn(torch.zeros(32, 256, dtype=torch.int64))


def test_collect_with_an_unknown_kind_or_model_creates_nothing(tmp_path):
    db = tmp_path / "c.db"
    for args, needle in (
        (["--models", "", "--kinds", "bogus"], "--kinds: unknown op kind 'bogus' (known: batch_matmul"),
        (["--models", "nosuch"], "--models: unknown zoo model 'nosuch'"),
    ):
        proc = tilecraft("corpus", "collect", *args, "--db", str(db))
        assert proc.returncode == 2 and error_lines(proc) == [f"error: {error_lines(proc)[0][7:]}"]
        assert needle in proc.stderr and not db.exists()


def test_decisions_naming_no_kernel_of_the_model(tmp_path):
    dec = tmp_path / "tuned.json"
    decision = {"decompose": False, "interchange": [], "tiles": [[2, 512]], "vectorize": True}
    dec.write_text(json.dumps({"decisions": {"deadbeef": decision}}))
    proc = tilecraft("run", "mlp", "--decisions", str(dec))
    assert proc.returncode == 2 and len(error_lines(proc)) == 1
    assert "1 of 1 pinned decisions name no kernel of this model (e.g. deadbeef)" in proc.stderr


FACTORIES = """
import torch

def raises():
    raise RuntimeError("boom")

def not_a_pair():
    return 42

def inputs_not_tensors():
    return torch.nn.Linear(2, 2), "notatuple"
"""


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "{tmp}/f.py:raises"], "{tmp}/f.py:raises: the factory raised RuntimeError: boom"),
        (["run", "{tmp}/f.py:not_a_pair"], "the factory must return (torch.nn.Module, example inputs), got int"),
        (["run", "{tmp}/f.py:inputs_not_tensors"], "example inputs must be a tuple of tensors, got 'notatuple'"),
        (["run", "{tmp}/dyn.mlir"], "{tmp}/dyn.mlir: @forward argument 0 has a dynamic shape (tensor<?x4xf32>)"),
        (["run", "mlp", "--threads", "0"], "--threads must be a whole number from 1 to 256 (got 0)"),
        (["run", "mlp", "--threads", "100000"], "--threads must be a whole number from 1 to 256 (got 100000)"),
        (["run", "mlp", "--cost-model", "{tmp}/trunc.json.gz"], "{tmp}/trunc.json.gz is not a Tilecraft cost model"),
        (["compile", "mlp", "--emit", "so", "-o", "{tmp}/outdir"], "cannot write {tmp}/outdir: it is a directory"),
        (
            ["compile", "mlp", "-o", "{tmp}/missing/dir/out.mlir"],
            "cannot write {tmp}/missing/dir/out.mlir: No such file",
        ),
        (["run", "mlp", "--inputs", "{tmp}/not.npz"], "{tmp}/not.npz is not an .npz of arrays"),
        (["compile", "mlp", "--dump-ir-dir", "{tmp}/f.py"], "--dump-ir-dir {tmp}/f.py: not a directory"),
        (["explain", "mlp", "--png", "{tmp}/outdir"], "cannot write {tmp}/outdir: it is a directory"),
    ],
    ids=[
        "factory-raises",
        "factory-returns-int",
        "inputs-not-tensors",
        "dynamic-mlir",
        "threads-0",
        "threads-100000",
        "truncated-model",
        "output-is-dir",
        "output-dir-missing",
        "not-npz",
        "dump-ir-dir-is-a-file",
        "png-is-a-directory",
    ],
)
def test_user_mistakes_are_one_line_naming_their_path(tmp_path, args, needle):
    (tmp_path / "f.py").write_text(FACTORIES)
    (tmp_path / "dyn.mlir").write_text(
        "func.func @forward(%a: tensor<?x4xf32>) -> tensor<?x4xf32> { return %a : tensor<?x4xf32> }\n"
    )
    (tmp_path / "trunc.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    (tmp_path / "not.npz").write_text("garbage")
    (tmp_path / "outdir").mkdir()
    proc = tilecraft(*[a.format(tmp=tmp_path) for a in args])
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert needle.format(tmp=tmp_path) in lines[0] and "internal error" not in lines[0]
    assert not any(p.name.startswith(".tilecraft-") for p in tmp_path.rglob("*"))  # nothing half-written


def test_every_user_error_the_cli_catches_names_its_defining_module():
    """`cli._errors` finds each user error in the module that defines it, among the modules
    a command loaded: a wrong pair would let that error through as an internal error."""
    import importlib

    from tilecraft import cli

    for module, name in cli._USER_ERRORS:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception) and cls.__module__ == module, (module, name)
    assert len(cli._errors()) == len(cli._USER_ERRORS) + 1  # (all loaded now, and FileNotFoundError)


def test_fast_exit_flushes_runs_exit_handlers_and_keeps_the_code(tmp_path):
    """`cli.exit_fast` (the commands' exit without interpreter teardown): buffered output
    written, exit handlers run, the command's exit code kept; a running non-daemon thread
    is waited for, as the interpreter's own exit does."""
    marker, late = tmp_path / "atexit", tmp_path / "thread"
    code = f"""
import atexit, threading, time
from tilecraft import cli
atexit.register(lambda: open({str(marker)!r}, "w").close())
if {{thread}}:
    threading.Thread(target=lambda: (time.sleep(0.5), open({str(late)!r}, "w").close())).start()
print("unterminated line", end="")
cli.exit_fast(3)
"""
    for thread in (False, True):
        proc = subprocess.run([sys.executable, "-c", code.format(thread=thread)], capture_output=True, text=True)
        assert (proc.returncode, proc.stdout) == (3, "unterminated line")
        assert marker.exists() and late.exists() == thread
        marker.unlink()


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["run", "mlp", "--threads", "abc"],
            "error: argument --threads: invalid int value: 'abc' (see 'tilecraft run --help')",
        ),
        (["compile"], "error: the following arguments are required: model (see 'tilecraft compile --help')"),
        (["bogus"], "error: argument command: invalid choice: 'bogus'"),
    ],
    ids=["threads-abc", "no-model", "bad-command"],
)
def test_a_malformed_command_line_is_one_line(args, needle):
    """argparse's own refusals (a value of the wrong type, a missing argument) are one line
    naming the option and where help is, exit 2: not its usage block first."""
    proc = tilecraft(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(needle), proc.stderr


def test_tune_says_when_there_is_nothing_to_tune(tmp_path):
    """mlp's kernels all run in fused groups: tune measures nothing and says why (it printed
    an empty table)."""
    from tilecraft.tune import format_summary

    out = ["--db", f"{tmp_path}/t.db", "--decisions-out", f"{tmp_path}/d.json"]
    proc = tilecraft("tune", "mlp", "--budget", "2", *out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("kind") and lines[-1].endswith(f"decisions -> {tmp_path}/d.json")
    if len(lines) == 3:  # no kernel rows (where the host's plan fuses every kernel, as on AVX-512)
        assert lines[1].startswith("nothing to tune: every kernel runs in one of")
    summary = {"kernels": [], "fused_groups": 3, "measurements": 0, "seconds": 0.1, "decisions_out": "d.json"}
    assert "nothing to tune: every kernel runs in one of 3 fused groups" in format_summary(
        {**summary, "model_out": None}
    )


def test_asm_is_the_same_text_twice_and_jit_takes_no_output(tmp_path):
    a, b = (tilecraft("compile", "mlp", "--emit", "asm", "-o", f"{tmp_path}/{n}.s") for n in "ab")
    assert a.returncode == b.returncode == 0
    assert (tmp_path / "a.s").read_text() == (tmp_path / "b.s").read_text()  # (no temporary path in it)
    jit = tilecraft("compile", "mlp", "--emit", "jit", "-o", f"{tmp_path}/j.out")
    assert jit.returncode == 2 and "--emit jit compiles in memory and writes nothing" in jit.stderr
    assert not (tmp_path / "j.out").exists()
