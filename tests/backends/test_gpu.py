"""The GPU backend without a GPU: target, schedule space, cost model, the kernels' structure
checked against eager on the host, the launch plan, PTX and ptxas, the command line; and,
where a CUDA GPU is, the zoo against eager CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tilecraft import gpu_driver
from tilecraft.backends.gpu import ptx, runtime
from tilecraft.backends.gpu import schedule as gs
from tilecraft.backends.gpu.target import GpuTarget
from tilecraft.backends.target import TargetError, parse_target
from tilecraft.costmodel import gpu_model
from tilecraft.driver import compare, flatten

needs_ptx = pytest.mark.skipif(ptx.available() is not None, reason="the gpu extra (triton) is not installed")
needs_gpu = pytest.mark.skipif(runtime.gpu_available() is not None, reason="no CUDA GPU here")


# ------------------------------------------------------------------------ target
def test_target_parse_and_defaults():
    t = GpuTarget.parse("gpu{arch=sm_80 sms=108 dram_gbs=1555}")
    assert (t.arch, t.sms, t.dram_gbs, t.part) == ("sm_80", 108, 1555.0, "A100-SXM4-80GB")
    assert GpuTarget.parse("gpu").arch == "sm_90"
    assert parse_target("gpu{arch=sm_89}").kind == "gpu"
    assert GpuTarget.parse(GpuTarget(arch="sm_86").describe().split(" ")[0]).arch == "sm_86"


@pytest.mark.parametrize(
    "text", ["gpu{arch=sm_70}", "gpu{warps=4}", "gpu{sms=0}", "gpu{dram_gbs=fast}", "gpux", "gpu{arch}"]
)
def test_target_rejects_bad_configs(text):
    with pytest.raises(TargetError):
        GpuTarget.parse(text)


# ------------------------------------------------------------------------ schedules
@pytest.fixture(scope="module")
def bert_kernels():
    c = gpu_driver.compile_gpu("bert_mini", emit="decided", cost_model="heuristic")
    return [ch.kernel for ch in c.choices.values()]


def test_space_is_legal_and_starts_with_the_heuristic(bert_kernels):
    for k in bert_kernels:
        space = gs.space(k)
        assert space[0] == gs.default(k)
        assert len(space) == len(set(space))
        for s in space:
            gs.check(k, s)
            assert s.threads_per_block() <= gs.MAX_THREADS
            assert gs.GpuSchedule.from_json(s.to_json()) == s


def test_check_rejects_illegal_schedules(bert_kernels):
    k = next(k for k in bert_kernels if k.contraction is not None and k.info.kind == "matmul")
    m, n = k.info.extents[:2]
    with pytest.raises(gs.GpuScheduleError, match="divide"):
        gs.check(k, gs.GpuSchedule((m, 3, 0), (1, 1, 0)))
    with pytest.raises(gs.GpuScheduleError, match="cannot be tiled"):
        gs.check(k, gs.GpuSchedule((1, 1, 1), (1, 1, 1)))  # the reduction loop
    with pytest.raises(gs.GpuScheduleError, match="threads per block"):
        gs.check(k, gs.GpuSchedule((64, 64, 0), (1, 1, 0)))
    with pytest.raises(gs.GpuScheduleError):
        gs.GpuSchedule.from_json('{"block": [1]}')


@pytest.mark.parametrize(
    "text",
    ['{"block": [Infinity, 32, 0], "thread": [1, 1, 0]}', '{"block": "640", "thread": [1, 1, 0]}',
     '{"block": [true, 32, 0], "thread": [1, 1, 0]}', '{"block": [64.9, 32, 0], "thread": [1, 1, 0]}',
     '{"block": [64, 32, 0], "thread": [16, 8, 0], "mma": 1}', '[1, 2]', 'not json'],
)  # fmt: skip
def test_schedule_json_is_strict(text):
    with pytest.raises(gs.GpuScheduleError, match="not a GPU schedule"):
        gs.GpuSchedule.from_json(text)


def test_bad_schedule_attributes_and_target_files_are_one_line_errors(tmp_path):
    path = tmp_path / "m.mlir"
    path.write_text(
        """func.func @forward(%a: tensor<64x32xf32>) -> tensor<64x32xf32> {
  %e = tensor.empty() : tensor<64x32xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
    iterator_types = ["parallel", "parallel"]} ins(%a : tensor<64x32xf32>) outs(%e : tensor<64x32xf32>)
    attrs = {tc.gpu_schedule = 5 : i64} {
  ^bb0(%x: f32, %o: f32):
    %y = arith.addf %x, %x : f32
    linalg.yield %y : f32
  } -> tensor<64x32xf32>
  return %r : tensor<64x32xf32>
}
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tilecraft.cli", "compile", str(path), "--target", "gpu", "--emit", "tiled"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "is not a JSON string" in proc.stderr and "internal" not in proc.stderr
    for doc, why in (('{"sms": 1e400}', "not an integer"), ('{"sms": true}', "not an integer"),
                     ('{"dram_gbs": "fast"}', "not a number"), ('{"clock_mhz": 1e400}', "finite")):  # fmt: skip
        f = tmp_path / "t.json"
        f.write_text(doc)
        with pytest.raises(TargetError, match=why):
            GpuTarget.from_file(str(f))


def test_a_reduction_to_a_scalar_is_refused_in_one_line(tmp_path):
    src = tmp_path / "s.py"
    src.write_text(
        "import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n        return x.sum()\n"
        "def make():\n    return M(), (torch.randn(64, 32),)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tilecraft.cli", "compile", f"{src}:make", "--target", "gpu", "--emit", "tiled"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "a reduction to a scalar" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------ cost model
def test_analytical_model_prefers_register_tiles_on_a_large_matmul(tmp_path):
    k = _kernel_of(tmp_path, 2048, 2048, 2048)
    t = GpuTarget()
    tiled = gpu_model.analytical(k, gs.GpuSchedule((64, 64, 0), (4, 4, 0)), t)
    scalar = gpu_model.analytical(k, gs.GpuSchedule((16, 16, 0), (1, 1, 0)), t)
    assert tiled.seconds < scalar.seconds
    # the fastest schedule the model finds runs near the FP32 roofline, not past it
    best = gpu_model.GpuCostModel(t).rank(k, gs.space(k))[0][1]
    assert 2 * 2048**3 / (t.fp32_tflops * 1e12) <= best.seconds < 20 * 2 * 2048**3 / (t.fp32_tflops * 1e12)


def test_spills_and_registers_from_ptxas_lower_the_prediction(tmp_path):
    k = _kernel_of(tmp_path, 512, 512, 512)
    s, t = gs.GpuSchedule((64, 64, 0), (4, 4, 0)), GpuTarget()
    base = gpu_model.analytical(k, s, t, ptx.Resources(registers=40))
    heavy = gpu_model.analytical(k, s, t, ptx.Resources(registers=255, spill_stores=64, spill_loads=64))
    assert heavy.seconds > base.seconds and heavy.blocks_per_sm < base.blocks_per_sm


def test_learned_model_trains_on_rows_and_predicts(tmp_path):
    k = _kernel_of(tmp_path, 256, 256, 256)
    t = GpuTarget()
    rows = []
    for s in gs.space(k)[:60]:  # a synthetic "measurement": the analytical time, 30% slower on 1-point threads
        slow = 1.3 if s.per_thread() == 1 else 1.0
        rows.append((gpu_model.features(k, s, t), gpu_model.analytical(k, s, t).seconds * slow))
    path = str(tmp_path / "m.json.gz")
    gpu_model.train(rows, path=path, rounds=50)
    model = gpu_model.GpuCostModel.load(t, path)
    assert model.name == "gpu-lightgbm"
    one = gs.GpuSchedule((16, 16, 0), (1, 1, 0))
    assert model.predict(k, one).seconds > gpu_model.analytical(k, one, t).seconds * 1.1


def _kernel_of(tmp_path, m: int, n: int, kk: int) -> gs.Kernel:
    path = tmp_path / f"mm{m}x{n}x{kk}.mlir"
    path.write_text(
        f"""func.func @forward(%a: tensor<{m}x{kk}xf32>, %b: tensor<{kk}x{n}xf32>) -> tensor<{m}x{n}xf32> {{
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<{m}x{n}xf32>
  %z = linalg.fill ins(%cst : f32) outs(%e : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>
  %r = linalg.matmul ins(%a, %b : tensor<{m}x{kk}xf32>, tensor<{kk}x{n}xf32>) outs(%z : tensor<{m}x{n}xf32>)
    -> tensor<{m}x{n}xf32>
  return %r : tensor<{m}x{n}xf32>
}}
"""
    )
    c = gpu_driver.compile_gpu(str(path), emit="decided", cost_model="heuristic")
    return next(ch.kernel for ch in c.choices.values() if ch.kernel.contraction is not None)


# ------------------------------------------------------------------------ kernels on the host
@pytest.mark.parametrize(
    "name",
    ["mlp", "conv_autoencoder", "gpt2_block", "bert_mini", pytest.param("resnet18", marks=pytest.mark.slow),
     pytest.param("mobilenet_v2", marks=pytest.mark.slow)],
)  # fmt: skip
def test_zoo_kernels_emulated_on_the_host_match_eager(name):
    """Tiling, fusion, register tiles, bufferization and the leftover kernels, each forall
    run as a loop on the CPU: equal to eager within f32 tolerance."""
    fn, imported = gpu_driver.emulate(name)
    out = fn(*imported.inputs)
    ref = imported.reference(*imported.inputs)
    c = compare(flatten(out), flatten(ref))
    assert c.ok, c


def test_pinned_register_tiles_match_eager(tmp_path):
    k = _kernel_of(tmp_path, 64, 96, 40)
    pinned = {k.sink: gs.GpuSchedule((32, 32, 0), (4, 2, 0))}
    path = str(tmp_path / "mm64x96x40.mlir")
    c = gpu_driver.compile_gpu(path, emit="tiled", schedules=pinned)
    text = str(c.imported.module)
    assert "vector<4x2xf32>" in text  # the accumulator tile in registers
    fn, imported = gpu_driver.emulate(path)
    a, b = torch.randn(64, 40), torch.randn(40, 96)
    assert torch.allclose(fn(a, b), a @ b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ tensor cores
def _f16_matmul(tmp_path, m: int, n: int, kk: int, *, a_dtype: str = "f16", transpose_b: bool = False) -> str:
    path = tmp_path / f"mm_{a_dtype}_{m}x{n}x{kk}_{int(transpose_b)}.mlir"
    bt = f"{n}x{kk}" if transpose_b else f"{kk}x{n}"
    maps = (
        " indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d1, d2)>,"
        " affine_map<(d0, d1, d2) -> (d0, d1)>]"
        if transpose_b
        else ""
    )
    path.write_text(
        f"""func.func @forward(%a: tensor<{m}x{kk}x{a_dtype}>, %b: tensor<{bt}x{a_dtype}>) -> tensor<{m}x{n}xf32> {{
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<{m}x{n}xf32>
  %z = linalg.fill ins(%cst : f32) outs(%e : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>
  %r = linalg.matmul{maps} ins(%a, %b : tensor<{m}x{kk}x{a_dtype}>, tensor<{bt}x{a_dtype}>)
    outs(%z : tensor<{m}x{n}xf32>) -> tensor<{m}x{n}xf32>
  return %r : tensor<{m}x{n}xf32>
}}
"""
    )
    return str(path)


def _matmul_kernel(path: str) -> gs.Kernel:
    c = gpu_driver.compile_gpu(path, emit="decided", cost_model="heuristic")
    return next(ch.kernel for ch in c.choices.values() if ch.kernel.contraction is not None)


def test_only_plain_f16_matmuls_go_to_tensor_cores(tmp_path):
    assert _matmul_kernel(_f16_matmul(tmp_path, 64, 64, 32)).mma
    assert not _matmul_kernel(_f16_matmul(tmp_path, 64, 64, 32, a_dtype="bf16")).mma  # (no nvgpu lowering)
    assert not _matmul_kernel(_f16_matmul(tmp_path, 64, 64, 32, transpose_b=True)).mma
    assert not _matmul_kernel(_f16_matmul(tmp_path, 64, 64, 24)).mma  # k not a multiple of 16
    f32 = _kernel_of(tmp_path, 64, 64, 32)
    assert not f32.mma
    with pytest.raises(gs.GpuScheduleError, match="tensor cores"):
        gs.check(f32, gs.GpuSchedule((64, 64, 0), (32, 32, 0), True))


def test_mma_schedules_are_legal_and_the_default(tmp_path):
    k = _matmul_kernel(_f16_matmul(tmp_path, 256, 256, 64))
    d = gs.default(k)
    assert d.mma and d == gs.GpuSchedule((128, 128, 0), (64, 32, 0), True)
    assert d.threads() == (128, 2, 1) and d.warps() == 8 and d.per_thread() == 64
    assert "mma m16n8k16, 8 warps" in d.describe()
    mma = [s for s in gs.space(k) if s.mma]
    assert len(mma) > 10 and all(s.warps() <= gs.MMA_MAX_WARPS for s in mma)
    for s in mma:
        gs.check(k, s)
        assert gs.GpuSchedule.from_json(s.to_json()) == s
    with pytest.raises(gs.GpuScheduleError, match="fragments"):
        gs.check(k, gs.GpuSchedule((128, 128, 0), (24, 32, 0), True))
    with pytest.raises(gs.GpuScheduleError, match="warps per block"):
        gs.check(k, gs.GpuSchedule((256, 256, 0), (32, 32, 0), True))
    with pytest.raises(gs.GpuScheduleError, match="accumulators live in registers"):
        gs.check(k, gs.GpuSchedule((256, 128, 0), (128, 128, 0), True))
    big = _matmul_kernel(_f16_matmul(tmp_path, 4096, 4096, 64))
    assert {s for s in gs.space(big) if s.mma} == set(gs.mma_space(big))  # none trimmed away
    t = GpuTarget()
    ranked = gpu_model.GpuCostModel(t).rank(k, gs.space(k))
    assert ranked[0][0].mma  # tensor cores beat the FP32 units on an f16 matmul
    # ... but not past their peak
    best = gpu_model.analytical(_matmul_kernel(_f16_matmul(tmp_path, 4096, 4096, 4096)), d, t)
    assert best.seconds > 2 * 4096**3 / (t.tc_tflops * 1e12)


def test_an_f16_matmul_with_its_cast_runs_on_tensor_cores_and_matches_eager(tmp_path):
    """A model's f16 matmul (f32 accumulator, cast back to f16): the matmul a kernel of its
    own on tensor cores, the cast another; the mma kernel's vector code run on the host
    matches eager, and its PTX has the m16n8k16 mma.sync that ptxas accepts."""
    src = tmp_path / "mm.py"
    src.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, a, b):\n"
        "        return a @ b\n"
        "def make():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return M(), (torch.randn(64, 96, generator=g).half(), torch.randn(96, 128, generator=g).half())\n"
    )
    spec = f"{src}:make"
    c = gpu_driver.compile_gpu(spec, emit="tiled", cost_model="heuristic")
    mma = [ch for ch in c.choices.values() if ch.schedule.mma]
    assert len(mma) == 1 and mma[0].kernel.label() == "matmul"
    fn, imported = gpu_driver.emulate(spec, cost_model="heuristic")
    a, b = imported.inputs
    out = fn(a, b)
    ref = a.float() @ b.float()
    assert out.dtype == torch.float16
    assert float((out.float() - ref).norm() / ref.norm()) < 1e-2
    if ptx.available() is None:
        for arch in ("sm_80", "sm_90"):
            c = gpu_driver.compile_gpu(spec, target=f"gpu{{arch={arch}}}", emit="ptx", cost_model="heuristic")
            assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in c.text
            assert all(r.spill_stores == 0 for r in c.resources.values())


# ------------------------------------------------------------------------ launch plan
def test_host_plan_arena_never_overlaps_live_buffers():
    c = gpu_driver.compile_gpu("conv_autoencoder", emit="gpu", cost_model="heuristic")
    plan = c.plan
    assert plan.launches and len(plan.launches) == len(c.sinks)
    assert runtime.HostPlan.from_json(plan.to_json()) == plan
    n = plan.n_args
    live = {}
    for i, launch in enumerate(plan.launches):
        for a in launch.args:
            if isinstance(a, runtime.View) and a.buffer >= n:
                lo, hi = live.get(a.buffer - n, (i, i))
                live[a.buffer - n] = (min(lo, i), max(hi, i))
    for r in plan.results:
        live[r.buffer - n] = (live.get(r.buffer - n, (0, 0))[0], len(plan.launches))
    spans = {b: (plan.offsets[b], plan.offsets[b] + plan.buffers[b]) for b in live}
    for a in live:
        for b in live:
            if a < b and not (live[a][1] < live[b][0] or live[b][1] < live[a][0]):
                assert spans[a][1] <= spans[b][0] or spans[b][1] <= spans[a][0], (a, b)
    assert plan.arena_bytes < sum(plan.buffers)  # buffers whose lives do not overlap share memory


def test_results_read_from_their_arena_offset():
    """A result lives at its allocation's offset in the arena (and a view's own offset on
    top): read back from there, not from the arena's start."""
    from tilecraft.backends.cpu.runtime import TensorSpec

    arena = torch.zeros(4096, dtype=torch.uint8)
    want = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    arena[512 + 8 : 512 + 8 + 48] = want.reshape(-1).view(torch.uint8)
    plan = runtime.HostPlan(1, (1024, 1024), (), (runtime.View(2, 2, (3, 4), (4, 1), "f32"),), (0, 512), 2048)
    (got,) = runtime.read_results(plan, [TensorSpec((3, 4), "f32")], [torch.zeros(1)], arena)
    assert torch.equal(got, want)
    x = torch.arange(20.0)[4:]  # an argument result with a storage offset of its own
    plan = runtime.HostPlan(1, (), (), (runtime.View(0, 1, (2, 2), (2, 1), "f32"),), (), 0)
    (got,) = runtime.read_results(plan, [TensorSpec((2, 2), "f32")], [x], arena)
    assert got.tolist() == [[5.0, 6.0], [7.0, 8.0]]


def test_ptxas_report_parsing():
    text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k0' for 'sm_90'
ptxas info    : Function properties for k0
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers
"""
    r = ptx.parse_ptxas_report(text)
    assert r["k0"] == ptx.Resources(40, 2048, 16, 8, 4)
    assert r["k1"] == ptx.Resources(12, 0, 0, 0, 0)


# ------------------------------------------------------------------------ PTX, cubin, CLI
def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tilecraft.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@needs_ptx
def test_compile_emits_ptx_llvm_and_cubin(tmp_path):
    out = tmp_path / "m.cubin"
    r = _cli("compile", "mlp", "--target", "gpu{arch=sm_80}", "--emit", "cubin", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert "regs" in r.stderr and "spill B" in r.stderr and "forward_kernel" in r.stderr
    r = _cli("compile", "mlp", "--target", "gpu", "--emit", "llvm")
    assert r.returncode == 0 and "define ptx_kernel void @forward_kernel" in r.stdout


@needs_ptx
def test_explain_lists_schedule_runner_up_and_prediction(tmp_path):
    r = _cli("explain", "mlp", "--target", "gpu{arch=sm_90}", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "runner-up" in lines[1] and "pred us" in lines[1]
    assert sum(1 for x in lines if x.startswith("forward_kernel")) == 3
    assert "block " in lines[2] and "threads" in lines[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "mlp", "--target", "gpu{arch=sm_70}"], "arch='sm_70'"),
        (["compile", "mlp", "--target", "gpu", "--emit", "cubin"], "give -o FILE"),
        (["compile", "mlp", "--target", "gpu", "--emit", "vector"], "not a GPU output"),
        (["compile", "mlp", "--target", "gpu", "--precision", "bf16"], "--precision is not supported"),
        (["compile", "mlp", "--target", "gpu", "--cost-model", "nope"], "not a GPU cost model"),
        (["explain", "mlp", "--target", "gpu", "--measure"], "--measure is not supported"),
    ],
)
def test_cli_refuses_bad_gpu_requests_in_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "internal" not in r.stderr


@pytest.mark.skipif(runtime.gpu_available() is None, reason="a CUDA GPU is here")
def test_run_without_a_gpu_says_so():
    r = _cli("run", "mlp", "--target", "gpu")
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cubin_written_atomically_nothing_on_failure(tmp_path):
    out = tmp_path / "keep.cubin"
    out.write_bytes(b"old")
    r = _cli("compile", "mlp", "--target", "gpu{arch=sm_70}", "--emit", "cubin", "-o", str(out))
    assert r.returncode == 2 and out.read_bytes() == b"old"


# ------------------------------------------------------------------------ on a GPU
@needs_gpu
@pytest.mark.parametrize("name", ["mlp", "conv_autoencoder", "gpt2_block", "bert_mini", "resnet18", "mobilenet_v2"])
def test_zoo_on_the_gpu_matches_eager_cuda(name):
    r = gpu_driver.run_and_check(name)
    assert r.ok, r.table()
