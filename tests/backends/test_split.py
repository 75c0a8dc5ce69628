"""A large model's LLVM stage and JIT on two cores (`backends/cpu/split.py`,
`lowering.ParallelJit`): the same results as one module compiled whole, a child that fails
leaves its half to the parent, and a dropped library is unloaded."""

import gc

import pytest
import torch

from conftest import cpu_flags
from tilecraft import driver, frontend
from tilecraft.backends.cpu import lowering, runtime, split
from tilecraft.backends.cpu.backend import CpuOptions
from tilecraft.corpus import zoo


@pytest.fixture
def two_cores(monkeypatch):
    """Split wherever the module is large enough, on any host; count the splits."""
    monkeypatch.setattr(split, "cores", lambda: 2)
    started = []
    start = lowering.ParallelJit.start.__func__

    def spy(cls, module, name):
        out = start(cls, module, name)
        started.append(out is not None)
        return out

    monkeypatch.setattr(lowering.ParallelJit, "start", classmethod(spy))
    return started


def _compile(name: str, **kw):
    return driver.compile_model(frontend.import_spec(name), **kw)


def test_split_matches_the_whole_module(two_cores):
    model, inputs = zoo.get("conv_autoencoder")
    whole = _compile("conv_autoencoder", options=CpuOptions(two_core_jit=False))
    halves = _compile("conv_autoencoder")
    assert two_cores == [True]
    ref = model(*inputs)
    assert torch.allclose(halves.fn(*inputs), ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(halves.fn(*inputs), whole.fn(*inputs))


def test_split_with_threads(two_cores):
    model, inputs = zoo.get("conv_autoencoder")
    c = _compile("conv_autoencoder", threads=2)
    assert two_cores == [True]
    assert torch.allclose(c.fn(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def test_small_module_compiles_whole(two_cores):
    _compile("mlp")
    assert two_cores == [False]


def test_failed_child_leaves_its_half_to_the_parent(two_cores, monkeypatch):
    def broken(text, tmp):
        raise RuntimeError("child broke")

    monkeypatch.setattr(lowering, "_compile_half", broken)
    model, inputs = zoo.get("conv_autoencoder")
    c = _compile("conv_autoencoder")
    assert two_cores == [True]
    assert torch.allclose(c.fn(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


def test_dropped_library_is_unloaded(two_cores, monkeypatch):
    unloaded = []
    unload = runtime._unload
    monkeypatch.setattr(runtime, "_unload", lambda h, d: (unloaded.append(d is not None), unload(h, d)))
    _, inputs = zoo.get("conv_autoencoder")
    c = _compile("conv_autoencoder")
    c.fn(*inputs)
    del c
    gc.collect()
    assert unloaded == [True]  # (its destructors found and run: the pool's blocks freed)


def test_plan_keeps_shared_values_in_forward(two_cores):
    """Buffers both halves use are made in `forward` and passed in; the moved half
    returns nothing."""
    imported = frontend.import_spec("conv_autoencoder")
    driver.compile_model(imported, emit="vector")
    module = imported.module
    lowering.prepare_llvm(module)
    fn = next(lowering.public_funcs(module))
    ops = split.plan(fn, min_weight=1)
    assert ops
    other = split.outline(module, fn, ops, "forward__tc_half")
    assert other is not None
    names = [op.operation.name for op in fn.regions[0].blocks[0].operations]
    assert names.count("func.call") == 1
    call = next(op for op in fn.regions[0].blocks[0].operations if op.operation.name == "func.call")
    assert len(call.results) == 0
    module.operation.verify()
    other.operation.verify()


def test_stuck_child_is_killed_and_its_half_compiled_here(two_cores, monkeypatch):
    import time

    monkeypatch.setattr(lowering, "_compile_half", lambda text, tmp: time.sleep(600))
    monkeypatch.setattr(lowering.ParallelJit, "PATIENCE", 0)
    monkeypatch.setattr(lowering.ParallelJit, "GRACE", 0.5)
    model, inputs = zoo.get("conv_autoencoder")
    t0 = time.monotonic()
    c = _compile("conv_autoencoder")
    assert two_cores == [True] and time.monotonic() - t0 < 120
    assert torch.allclose(c.fn(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX512-VNNI (vpdpbusd)")
def test_split_with_low_precision_kernels(two_cores, monkeypatch):
    """int8 kernels are functions calling block functions calling the `vpdpbusd` helper:
    the half gets all of them (and the rest keeps what it still calls)."""
    monkeypatch.setattr(split, "MIN_WEIGHT", 1)
    _, inputs = zoo.get("mlp")
    low = {"precision": "int8", "error_budget": 0.1, "target": "cpu{amx=false}"}  # (mlp in int8: 1.95e-2)
    whole = _compile("mlp", **low, options=CpuOptions(two_core_jit=False))
    halves = _compile("mlp", **low)
    assert two_cores == [True]
    assert {d.precision for d in halves.precision.decisions} == {"int8"}
    assert torch.equal(halves.fn(*inputs), whole.fn(*inputs))


@pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX512-VNNI (vpdpbusd)")
def test_shared_library_with_the_vpdpbusd_helper(tmp_path):
    """`--emit so` of int8 kernels without AMX: the inlined, dropped helper once made the
    object dump give up and write nothing."""
    _, inputs = zoo.get("mlp")
    imported = frontend.import_spec("mlp")
    path = str(tmp_path / "m.so")
    low = {"precision": "int8", "error_budget": 0.1, "target": "cpu{amx=false}"}  # (mlp in int8: 1.95e-2)
    c = driver.compile_model(imported, **low, emit="so", output=path)
    loaded = runtime.from_shared_library(c.path, imported.func_name, imported.signature, bound=imported.params)
    fn = imported.eager_semantics(loaded)
    jitted = _compile("mlp", **low, options=CpuOptions(two_core_jit=False))
    assert torch.equal(fn(*inputs), jitted.fn(*inputs))


def test_shared_library_of_two_halves(two_cores, tmp_path):
    """`--emit so` (the compile cache's form) splits too: the linked library is the file."""
    _, inputs = zoo.get("conv_autoencoder")
    imported = frontend.import_spec("conv_autoencoder")
    c = driver.compile_model(imported, emit="so", output=str(tmp_path / "m.so"))
    assert two_cores == [True]
    loaded = runtime.from_shared_library(c.path, imported.func_name, imported.signature, bound=imported.params)
    whole = _compile("conv_autoencoder", options=CpuOptions(two_core_jit=False))
    assert torch.equal(imported.eager_semantics(loaded)(*inputs), whole.fn(*inputs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.so"]  # (nothing else left there)
