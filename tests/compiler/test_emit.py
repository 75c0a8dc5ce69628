"""Artifacts: assembly with AVX-512 FMA, objects, shared libraries callable through ctypes,
numpy in/out, several inputs and outputs, and IR dumps per stage."""

import dataclasses
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tilecraft import driver, frontend
from tilecraft.backends.cpu import runtime


def _widest_fma() -> str:
    from tilecraft.backends.cpu.target import host

    return "zmm" if host().has("avx512") else "ymm"  # (AVX2 + FMA: ymm)


def test_asm_has_fma_on_the_widest_registers(tmp_path):
    asm = driver.compile_model("mlp", emit="asm").text
    assert re.search(rf"vfmadd\d+ps\s+.*{_widest_fma()}", asm), f"expected FMA on {_widest_fma()} registers"
    if _widest_fma() == "ymm":
        assert "zmm" not in asm  # (an AVX2 host would fault on them)


@pytest.mark.slow
@pytest.mark.skipif(_widest_fma() != "zmm", reason="this host has no AVX-512")
def test_resnet18_asm_has_avx512_fma(tmp_path):
    out = tmp_path / "resnet18.s"
    proc = subprocess.run(
        [sys.executable, "-m", "tilecraft.cli", "compile", "resnet18", "--emit", "asm", "-o", str(out)]
    )
    assert proc.returncode == 0
    assert re.search(r"vfmadd\d+ps\s+.*zmm", out.read_text())


def test_shared_library_matches_jit(tmp_path):
    so = tmp_path / "mlp.so"
    compiled = driver.compile_model("mlp", emit="so", output=str(so))
    imported = compiled.imported
    fn = runtime.from_shared_library(str(so), imported.func_name, imported.signature, bound=imported.params)
    cmp = driver.compare(fn(*imported.inputs), imported.reference())
    assert cmp.ok


def test_object_file(tmp_path):
    obj = tmp_path / "mlp.o"
    driver.compile_model("mlp", emit="obj", output=str(obj))
    assert obj.read_bytes()[:4] == b"\x7fELF"


class TwoInTwoOut(torch.nn.Module):
    def forward(self, x, ids):
        return torch.tanh(x) * 2, (ids + 1).sum(0)


def test_multiple_inputs_outputs_numpy_and_dtypes():
    x, ids = torch.randn(4, 8), torch.randint(0, 9, (5, 3))
    imported = frontend.import_module(TwoInTwoOut(), (x, ids))
    fn = driver.compile_model(imported).fn
    a, b = fn(x.numpy(), ids.numpy())
    assert isinstance(a, np.ndarray) and b.dtype == np.int64
    ra, rb = TwoInTwoOut()(x, ids)
    np.testing.assert_allclose(a, ra.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b, rb.numpy())


def test_dump_ir_dir_and_mlir_input(tmp_path):
    linalg = driver.compile_model("mlp", emit="linalg").text
    src = tmp_path / "mlp.mlir"
    src.write_text(linalg)
    dump = tmp_path / "dump"
    report = driver.run_and_check(str(src), dump_ir_dir=str(dump), budget=0.05)
    assert report.comparison.ok and report.reference == "naive loops"
    assert sorted(os.listdir(dump)) == [
        "01-linalg.mlir",
        "02-decided.mlir",
        "03-tiled.mlir",
        "04-vector.mlir",
        "05-llvm.mlir",
    ]
    assert "llvm.func" in (dump / "05-llvm.mlir").read_text()


def test_cli_run_prints_report():
    proc = subprocess.run([sys.executable, "-m", "tilecraft.cli", "run", "mlp"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for key in (
        "eager median",
        "tilecraft median",
        "speedup vs eager",
        "compile time",
        "max abs error",
        "max rel error",
    ):
        assert key in proc.stdout
    assert "matches reference  yes" in proc.stdout


def test_prepared_run_keeps_its_output_buffers_alive():
    """A timing loop that drops `prepare`'s outputs must not have the kernel write into
    freed memory (it corrupted the heap: flaky `free(): invalid next size`)."""
    import gc
    import weakref

    x, ids = torch.randn(4, 8), torch.randint(0, 9, (5, 3))
    fn = driver.compile_model(frontend.import_module(TwoInTwoOut(), (x, ids))).fn
    run, outs = fn.prepare(x, ids)
    alive = [weakref.ref(o) for o in outs]
    del outs
    gc.collect()
    assert all(r() is not None for r in alive)
    run()


def test_a_padded_input_is_written_in_place_by_its_producer():
    """A convolution's zero-padded input is a buffer filled once whose interior the
    producing kernel writes (`cpu-vector{pads-in-place}`: pads in destination-passing style,
    empty tensors eliminated), not filled and then copied into: conv_autoencoder on NCHW
    (its layers kept apart, no NHWC between them), whose first epilogue and upsampling
    write into their pads (two buffers and their copies fewer)."""
    from tilecraft.backends.cpu.backend import CpuOptions
    from tilecraft.corpus import zoo
    from tilecraft.passes.sink_transposes import SinkTransposesPass
    from tilecraft.passes.subpixel import SubpixelConvPass

    model, inputs = zoo.get("conv_autoencoder")

    @dataclasses.dataclass(frozen=True)
    class Off(SinkTransposesPass):
        def apply(self, module, weights) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class SubpixelOff(SubpixelConvPass):
        def apply(self, module, weights) -> None:
            pass

    def buffers(in_place: bool) -> tuple[int, str]:
        imported = frontend.import_module(model, inputs, spec="<test>")
        options = CpuOptions(pads_in_place=in_place, border_fills=in_place)
        text = driver.compile_model(imported, emit="vector", options=options, replace=[Off(), SubpixelOff()]).text
        return len(re.findall(r"memref\.alloc\b", text)), text

    copied, before = buffers(False)
    in_place, text = buffers(True)
    assert "linalg.map" in before and "linalg.map" not in text  # the pad's fill-then-copy is gone
    assert in_place <= copied - 2
    assert re.search(r"iter_args\(%\w+ = %subview_\d+\) -> \(memref<16x64x64xf32, strided<\[4356, 66, 1\]", text)
    # the pads' fills are vectorized (`cpu-vector{vectorize-fills}`), not left as scalar loops
    assert not re.search(r"linalg\.fill (?!\{tc\.op_id)", text)
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(*inputs), model(*inputs)).ok


def test_a_one_row_matmul_keeps_its_accumulator_in_registers():
    """A classifier's 1×K @ K×N: the register tile's mul + reduction becomes a contraction
    before its unit dims are cast away, so its k loop carries the accumulator as a vector
    (before, it was loaded and stored at every k: 1×1280 @ 1280×1008, 0.28 ms against 0.072)."""
    torch.manual_seed(0)
    model, x = torch.nn.Linear(512, 1000).eval(), torch.randn(1, 512)
    text = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), emit="vector").text
    assert re.search(r"scf\.for .* iter_args\(%\w+ = %\w+\) -> \(vector<\d+xf32>\)", text)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_a_read_along_a_strided_last_dim_is_contiguous_loads_and_a_shuffle():
    """`x[..., ::2]` reads its register tiles through a stride on the last dimension: per
    row, one contiguous load and a shuffle (`backends/cpu/strided.py`), not a scalar load
    and a dynamic-index insert per element (7.2 ms against 0.33 for a [96, 114, 114] input)."""

    class EvenOdd(torch.nn.Module):
        def forward(self, x):
            return x[:, :, :, 0::2] * 2.0, x[:, :, 1:, 1::3] + 1.0

    x = torch.randn(1, 4, 10, 38)
    text = driver.compile_model(frontend.import_module(EvenOdd(), (x,), spec="<test>"), emit="vector").text
    assert "vector.shuffle" in text
    assert not re.search(r"memref\.load %\w+\[[^\]]*\] : memref<[^>]*strided<\[[^\]]*, [2-9]\]", text)
    compiled = driver.compile_model(frontend.import_module(EvenOdd(), (x,), spec="<test>"))
    assert driver.compare(compiled.fn(x), EvenOdd()(x)).ok


def test_an_output_that_is_a_device_or_a_pipe_is_written_into_not_replaced(tmp_path):
    """`-o /dev/null` (any path that is no regular file) gets the bytes written into it:
    the atomic rename of a finished temporary file over it replaced /dev/null itself with
    a regular file when tilecraft ran as root. A FIFO stands in for the device here."""
    import stat
    import threading

    from tilecraft.dialects.irutil import replace_file

    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    driver.atomic_write(str(fifo), b"module {}\n")
    reader.join(timeout=60)
    assert got == [b"module {}\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the pipe
    assert [p.name for p in tmp_path.iterdir()] == ["out.pipe"]  # no temporary left
    # a regular file is still replaced whole
    plain, tmp = tmp_path / "out.mlir", tmp_path / "out.mlir.tmp"
    plain.write_text("old")
    tmp.write_text("new")
    replace_file(str(tmp), str(plain))
    assert plain.read_text() == "new" and not tmp.exists()
