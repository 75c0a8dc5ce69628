"""Mixed precision: AMX kernels, the precision rewrite, the emulator, the integer program,
the plan's fallbacks and the CLI. Tests that run AMX code skip on CPUs without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import cpu_flags
from tilecraft import driver, frontend
from tilecraft.backends.cpu import amx
from tilecraft.corpus import amx as amx_workloads
from tilecraft.costmodel import precision_plan
from tilecraft.costmodel.amx import LayerPrices
from tilecraft.passes import parallel, precision

needs_amx = pytest.mark.skipif(not amx.available(), reason="needs AMX (amx_bf16, amx_int8) and tile permission")


class _Block(torch.nn.Module):
    """Conv (64 channels) → ReLU → flatten → Linear, and an attention-like batched matmul."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16 * 6 * 6, 40)

    def forward(self, x):
        y = torch.relu(self.conv(x)).flatten(1)
        z = self.fc(y).reshape(1, 4, 10)
        return torch.bmm(z, z.transpose(1, 2))


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(256, 512), torch.nn.Linear(512, 256)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _mlp():
    torch.manual_seed(0)
    return frontend.import_module(_Mlp(), (torch.randn(64, 256),), spec="mlp2")


def _imported():
    torch.manual_seed(0)
    return frontend.import_module(_Block(), (torch.randn(1, 8, 6, 6),), spec="block")


@needs_amx
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize(
    ("batch", "m", "n", "k", "sched"),
    [
        (1, 64, 64, 128, precision.AmxSchedule()),
        (1, 33, 50, 72, precision.AmxSchedule(2, 2, 256, "ij")),  # edge tiles in every dimension
        (1, 7, 8, 20, precision.AmxSchedule(1, 3, 1024, "ji")),
        (3, 40, 24, 64, precision.AmxSchedule()),
    ],
)
def test_amx_kernel_matches_exact_reference(dtype, batch, m, n, k, sched):
    if k % (2 if dtype == "bf16" else 4):
        pytest.skip("K not a multiple of the VNNI factor")
    kernel = amx_workloads.workload(batch, m, n, k, dtype)
    result = amx_workloads.measure(kernel, sched, budget_s=0.0, min_runs=2)
    assert result.status == "ok", result.error


def test_amx_schedule_and_decision_json_roundtrip():
    s = precision.AmxSchedule(1, 3, 256, "ji")
    assert precision.AmxSchedule.from_json(s.to_json()) == s
    d = precision.PrecisionDecision(3, "int8", act_scale=0.5, act_scale_b=0.25, schedule=s, sensitivity=1e-3)
    assert precision.PrecisionDecision.from_json(d.to_json()) == d


def test_layers_and_eligibility():
    imp = _imported()
    layers = precision.layers(imp.module, len(imp.params))
    assert [x.op for x in layers] == ["linalg.conv_2d_nchw_fchw", "linalg.matmul", "linalg.batch_matmul"]
    conv, fc, bmm = layers
    assert (conv.m, conv.n, conv.k) == (16, 36, 72) and conv.weight is not None
    assert (fc.m, fc.n, fc.k) == (1, 40, 576) and fc.weight is not None
    assert bmm.weight is None and bmm.batch == 1
    assert conv.eligible == ("f32", "bf16", "int8")
    assert bmm.eligible == ("f32", "bf16")  # K = 10: not a multiple of 4
    assert "multiple" in bmm.why_not or bmm.why_not == ""


def test_emulator_maps_layers_and_matches_eager():
    imp = _imported()
    layers = precision.layers(imp.module, len(imp.params))
    emu = precision_plan.Emulator(imp.fx, imp.params, layers)
    amax = {}
    out = emu.run(imp.inputs, record=amax)
    assert precision_plan.relative_error(out, imp.reference()) < 1e-6
    assert set(amax) == {0, 1, 2} and all(a > 0 for a, _ in amax.values())


@needs_amx
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_lowered_compile_matches_its_emulation(mode):
    """Every layer lowered: the compiled output equals the emulated one (same rounding,
    same quantization), and stays near eager f32."""
    imp = _imported()
    layers = precision.layers(imp.module, len(imp.params))
    emu = precision_plan.Emulator(imp.fx, imp.params, layers)
    amax = {}
    emu.run(imp.inputs, record=amax)
    decisions = [
        precision.PrecisionDecision(
            x.index,
            mode if mode in x.eligible else "bf16",
            act_scale=amax[x.index][0] / 127,
            act_scale_b=amax[x.index][1] / 127,
        )
        for x in layers
    ]
    emulated = emu.run(imp.inputs, {d.layer: d for d in decisions})
    compiled = driver.compile_model(imp, cost_model="heuristic", precision=decisions)
    out = compiled.fn(*imp.inputs)
    assert precision_plan.relative_error(out, emulated) < 2e-3
    assert precision_plan.relative_error(out, imp.reference()) < (2e-2 if mode == "bf16" else 5e-2)
    # the packed weights replaced the f32 ones they came from
    assert any(p.dtype in (torch.bfloat16, torch.int8) for p in imp.params)


def test_solve_minimizes_latency_under_the_budget():
    options = {
        0: {"f32": (10.0, 0.0), "bf16": (4.0, 0.004), "int8": (2.0, 0.02)},
        1: {"f32": (6.0, 0.0), "bf16": (3.0, 0.003)},
        2: {"f32": (1.0, 0.0), "bf16": (0.9, 0.009)},
    }
    # errors add in quadrature: √(0.004² + 0.003² + 0.009²) = 0.0103 > 0.01
    assert precision_plan.solve(options, 0.01) == {0: "bf16", 1: "bf16", 2: "f32"}
    # √(0.02² + 0.003² + 0.009²) = 0.022 ≤ 0.03 (a linear sum, 0.032, would keep layer 2 f32)
    assert precision_plan.solve(options, 0.03) == {0: "int8", 1: "bf16", 2: "bf16"}
    assert precision_plan.solve(options, 1e-6) == {0: "f32", 1: "f32", 2: "f32"}


@needs_amx
def test_plan_auto_within_budget_and_fallback():
    imp = _mlp()
    target = driver.Target.parse("cpu")
    prices = LayerPrices(imp.module, driver.load_cost_model("analytical", target), target)
    plan = precision_plan.plan(imp, mode="auto", budget=0.05, price=prices)
    assert plan.lowered and plan.error <= 0.05 and not plan.message
    assert all(d.sensitivity is not None for d in plan.decisions)
    tiny = precision_plan.plan(imp, mode="auto", budget=1e-9, price=prices)
    assert not tiny.lowered and "too small" in tiny.message
    int8 = precision_plan.plan(imp, mode="int8", budget=1e-9, price=prices)
    assert not int8.lowered and "running f32" in int8.message


def test_plan_rejects_bad_requests():
    imp = _imported()
    target = driver.Target.parse("cpu")
    prices = LayerPrices(imp.module, driver.load_cost_model("analytical", target), target)
    with pytest.raises(precision.PrecisionError, match="budget must be positive"):
        precision_plan.plan(imp, mode="auto", budget=0.0, price=prices)
    with pytest.raises(precision.PrecisionError, match="unknown precision"):
        precision_plan.plan(imp, mode="fp8", budget=None, price=prices)
    with pytest.raises(precision.PrecisionError, match="cannot run in int8"):
        precision.rewrite(imp.module, imp.params, [precision.PrecisionDecision(2, "int8", act_scale=1.0)])


@needs_amx
def test_cli_run_precision_auto_and_budget_errors(tmp_path):
    run = [sys.executable, "-m", "tilecraft.cli", "run", "mlp", "--cost-model", "heuristic"]
    ok = subprocess.run([*run, "--precision", "auto"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "precision auto:" in ok.stdout and "relative L2 error" in ok.stdout
    tiny = subprocess.run([*run, "--precision", "auto", "--error-budget", "1e-9"], capture_output=True, text=True)
    assert tiny.returncode == 0 and "too small for any speedup" in tiny.stdout
    bad = subprocess.run([*run, "--precision", "auto", "--error-budget", "-1"], capture_output=True, text=True)
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "error: --error-budget must be a positive relative error (got -1)"
    )
    f32 = subprocess.run([*run, "--error-budget", "nan"], capture_output=True, text=True)  # (checked in f32 too)
    assert (
        f32.returncode == 2
        and f32.stderr.strip() == "error: --error-budget must be a positive relative error (got nan)"
    )


# ------------------------------------------------------------ AVX-512 BF16 without AMX


needs_avx512_bf16 = pytest.mark.skipif("avx512_bf16" not in cpu_flags(), reason="needs AVX512-BF16 (vdpbf16ps)")
needs_avx512_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(), reason="needs AVX512-VNNI (vpdpbusd)")


@needs_avx512_bf16
@pytest.mark.parametrize(
    ("batch", "m", "n", "k", "blocked", "sched"),
    [
        (1, 64, 64, 128, False, precision.AmxSchedule(4, 2, isa="avx512")),
        (1, 64, 64, 128, True, precision.AmxSchedule(6, 4, isa="avx512")),
        (1, 33, 50, 72, False, precision.AmxSchedule(6, 4, isa="avx512")),  # row and masked column edges
        (1, 7, 8, 20, False, precision.AmxSchedule(1, 4, order="ji", isa="avx512")),
        (3, 40, 24, 64, False, precision.AmxSchedule(8, 2, isa="avx512")),  # batched
        (1, 1, 1000, 512, False, precision.AmxSchedule(1, 4, isa="avx512")),  # one row, N % 16 = 8
    ],
)
def test_avx512_dot_kernel_matches_exact_reference(batch, m, n, k, blocked, sched):
    kernel = amx_workloads.workload(batch, m, n, k, "bf16", blocked=blocked)
    result = amx_workloads.measure(kernel, sched, budget_s=0.0, min_runs=2)
    assert result.status == "ok", result.error


@needs_avx512_bf16
def test_avx512_bf16_layers_compile_and_match_their_emulation():
    """Every layer lowered to vdpbf16ps kernels (what a CPU without AMX runs): the compiled
    output equals the emulated bf16 rounding, and stays near eager f32."""
    from tilecraft.costmodel.amx import avx512_schedule

    imp = _imported()
    layers = precision.layers(imp.module, len(imp.params))
    emu = precision_plan.Emulator(imp.fx, imp.params, layers)
    decisions = [
        precision.PrecisionDecision(x.index, "bf16", schedule=avx512_schedule(x.m, x.n))
        for x in layers
        if "bf16" in x.eligible
    ]
    emulated = emu.run(imp.inputs, {d.layer: d for d in decisions})
    compiled = driver.compile_model(imp, cost_model="heuristic", precision=decisions)
    out = compiled.fn(*imp.inputs)
    assert precision_plan.relative_error(out, emulated) < 2e-3
    assert precision_plan.relative_error(out, imp.reference()) < 2e-2


def test_low_precision_isa_follows_the_target():
    from tilecraft.backends.cpu.target import Target

    no_bf16 = Target.parse("cpu{amx=false avx512bf16=false avx512vnni=false}")
    assert driver.low_precision_isa(no_bf16) is None
    if "avx512_bf16" in cpu_flags():
        assert driver.low_precision_isa(Target.parse("cpu{amx=false}")) == "avx512"
    if amx.available():
        assert driver.low_precision_isa(Target.parse("cpu")) == "amx"


def test_plan_without_amx_offers_int8_only_with_a_weight():
    """With AVX-512 kernels (no AMX) int8 needs a 2-D weight (its sums make up for the u8
    shift): the batched matmul of two activations is offered bf16 only; precisions the CPU
    lacks are not offered at all."""
    imp = _imported()
    sched = precision.AmxSchedule(4, 2, isa="avx512")

    def price(layer, p):  # low precision twice as fast as f32: every layer worth lowering
        return (None, 1e-3) if p == "f32" else (sched, 0.5e-3)

    int8 = precision_plan.plan(imp, mode="int8", budget=None, price=price, isa="avx512")
    by_op = {x.op: d.precision for x, d in zip(int8.layers, int8.decisions)}
    assert by_op == {"linalg.conv_2d_nchw_fchw": "int8", "linalg.matmul": "int8", "linalg.batch_matmul": "f32"}
    no_vnni = precision_plan.plan(imp, mode="int8", budget=None, price=price, isa="avx512", allowed=("bf16",))
    assert all(d.precision == "f32" for d in no_vnni.decisions) and "no int8 kernels" in no_vnni.message
    auto = precision_plan.plan(imp, mode="auto", budget=0.05, price=price, isa="avx512", allowed=("bf16",))
    assert {d.precision for d in auto.decisions} <= {"f32", "bf16"}
    assert any(d.precision == "bf16" and d.schedule.isa == "avx512" for d in auto.decisions)


@needs_avx512_vnni
@pytest.mark.parametrize("unsigned", ["a", "b"])
@pytest.mark.parametrize(
    ("m", "n", "k", "blocked", "sched"),
    [
        (64, 64, 128, True, precision.AmxSchedule(6, 4, isa="avx512")),
        (33, 50, 72, False, precision.AmxSchedule(6, 4, isa="avx512")),  # row and masked column edges
        (1, 1000, 512, False, precision.AmxSchedule(1, 4, order="ji", isa="avx512")),
    ],
)
def test_avx512_vnni_kernel_matches_exact_reference(unsigned, m, n, k, blocked, sched):
    kernel = amx_workloads.workload(1, m, n, k, "int8", blocked=blocked, unsigned=unsigned)
    result = amx_workloads.measure(kernel, sched, budget_s=0.0, min_runs=2)
    assert result.status == "ok", result.error


def _int8_on_avx512(imp, keep=lambda layer: True):
    """Compile `imp` with the kept layers in int8 on vpdpbusd kernels: (compiled outputs,
    emulated outputs, the decisions)."""
    from tilecraft.costmodel.amx import avx512_schedule

    layers = precision.layers(imp.module, len(imp.params))
    emu = precision_plan.Emulator(imp.fx, imp.params, layers)
    amax = {}
    emu.run(imp.inputs, record=amax)
    decisions = [
        precision.PrecisionDecision(
            x.index, "int8", act_scale=amax[x.index][0] / 127, schedule=avx512_schedule(x.m, x.n)
        )
        for x in layers
        if keep(x)
    ]
    emulated = emu.run(imp.inputs, {d.layer: d for d in decisions})
    compiled = driver.compile_model(imp, cost_model="heuristic", precision=decisions)
    return compiled.fn(*imp.inputs), emulated, decisions


@needs_avx512_vnni
def test_avx512_int8_layers_compile_and_match_their_emulation():
    """The weighted layers in int8 on vpdpbusd (activations shifted into u8, the shift's
    contribution subtracted per channel): the compiled output equals the emulated int8
    quantization exactly as AMX's s8 × s8 would, and stays near eager f32."""
    imp = _imported()
    out, emulated, decisions = _int8_on_avx512(imp, lambda x: x.weight is not None and "int8" in x.eligible)
    assert len(decisions) == 2  # the convolution and the linear layer
    assert precision_plan.relative_error(out, emulated) < 2e-3
    assert precision_plan.relative_error(out, imp.reference()) < 5e-2


def test_avx512_schedule_json_roundtrip_and_bad_isa():
    s = precision.AmxSchedule(6, 4, isa="avx512")
    assert precision.AmxSchedule.from_json(s.to_json()) == s
    assert "isa" not in precision.AmxSchedule().to_json()  # AMX rows of the corpus keep their form
    with pytest.raises(precision.PrecisionError, match="isa"):
        precision.AmxSchedule(isa="sse")


class _SameGemms(torch.nn.Module):
    """A convolution and a linear layer whose int8 contractions are the same 16 × 49 × 72
    GEMM with opposite unsigned operands (the convolution's activation is B, the linear
    layer's is A): one kernel must not serve both."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(72, 49)

    def forward(self, x, z):
        return self.conv(x).flatten(), self.fc(z).flatten()


@needs_avx512_vnni
def test_avx512_int8_kernels_are_not_shared_across_unsigned_operands():
    torch.manual_seed(0)
    imp = frontend.import_module(_SameGemms(), (torch.randn(1, 8, 7, 7), torch.randn(16, 72)), spec="same-gemms")
    outs, emulated, _ = _int8_on_avx512(imp)
    for out, want in zip(outs, emulated):
        assert precision_plan.relative_error(out, want) < 2e-3


def test_bad_low_precision_schedule_is_a_precision_error():
    with pytest.raises(precision.PrecisionError, match="mr=0"):
        precision.AmxSchedule(0, 4, isa="avx512")


def test_low_precision_isa_needs_the_host_to_have_it(monkeypatch):
    """A target claiming AVX512-BF16/VNNI the host lacks gets no AVX-512 kernels (LLVM would
    abort compiling them for this host)."""
    from tilecraft.backends.cpu import target as target_mod

    bare = target_mod.Target(features=("avx2", "avx512", "fma"))
    monkeypatch.setattr(target_mod, "host", lambda: bare)
    claims = target_mod.Target(features=("avx2", "avx512", "avx512bf16", "avx512vnni", "fma"))
    assert driver.low_precision_features(claims) == ()
    assert driver.low_precision_isa(claims) is None


@pytest.mark.parametrize("isa", ["amx", "avx512"])
def test_low_precision_contractions_split_across_threads(isa):
    """At 2 threads each low-precision contraction (no op id, so no thread plan of its own)
    runs as a forall of two row chunks, its zero fill in each (`parallel.split_marked`), and
    computes exactly what the one-thread compile does."""
    if isa == "amx" and not amx.available():
        pytest.skip("needs AMX (amx_bf16, amx_int8) and tile permission")
    if isa == "avx512" and "avx512_bf16" not in cpu_flags():
        pytest.skip("needs AVX512-BF16 (vdpbf16ps)")
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel.amx import avx512_schedule

    torch.manual_seed(0)
    model, x = _Mlp().eval(), torch.randn(64, 256)  # (64 rows: two chunks of 32 each)
    imported = frontend.import_module(model, (x,), spec="rows")
    layers = precision.layers(imported.module, len(imported.params))
    sched = (lambda m, n: avx512_schedule(m, n)) if isa == "avx512" else (lambda m, n: None)
    decisions = [precision.PrecisionDecision(x.index, "bf16", schedule=sched(x.m, x.n)) for x in layers]
    target = Target.parse("cpu" if isa == "amx" else "cpu{amx=false}")
    outs = {}
    for threads in (1, 2):
        imp = frontend.import_module(model, (x,), spec="rows")
        text = driver.compile_model(imp, target=target, precision=decisions, threads=threads, emit="decided").text
        imp = frontend.import_module(model, (x,), spec="rows")
        compiled = driver.compile_model(imp, target=target, precision=decisions, threads=threads)
        outs[threads] = compiled.fn(x)
        if threads == 2:
            marked = [line for line in text.splitlines() if "tc.amx =" in line]
            indent = [len(line) - len(line.lstrip()) for line in marked]
            assert len(marked) == 2 and min(indent) > 4  # (the function body's ops sit at 4: these in a forall)
            assert parallel.SPLIT not in text
    assert torch.equal(outs[1], outs[2])
    with torch.no_grad():
        assert precision_plan.relative_error(outs[2], model(x)) < 2e-2


class _Stem(torch.nn.Module):
    """An RGB stem: 3 input channels, a 7×7 window at stride 2."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 7, stride=2, padding=3)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.parametrize("isa", ["amx", "avx512"])
@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_rgb_stem_runs_low_precision_on_padded_channels(mode, isa):
    """3 channels run as 4 (a zero channel in the input and the filter): the layer is
    eligible with K = 4·7·7, and the compiled output matches the emulated lowering (which
    the zero channel does not change; on AVX-512 int8 the activation is shifted into u8,
    and the zero channel with it, against zero weights)."""
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel.amx import avx512_schedule

    if isa == "amx" and not amx.available():
        pytest.skip("needs AMX (amx_bf16, amx_int8) and tile permission")
    need = "avx512_bf16" if mode == "bf16" else "avx512_vnni"
    if isa == "avx512" and need not in cpu_flags():
        pytest.skip(f"needs {need}")
    torch.manual_seed(0)
    model, x = _Stem().eval(), torch.randn(1, 3, 32, 32)
    imp = frontend.import_module(model, (x,), spec="stem")
    (layer,) = precision.layers(imp.module, len(imp.params))
    assert precision.padded_channels(3) == 4 and precision.padded_channels(8) == 8
    assert layer.k == 4 * 7 * 7 and layer.eligible == ("f32", "bf16", "int8")
    emu = precision_plan.Emulator(imp.fx, imp.params, [layer])
    amax = {}
    emu.run(imp.inputs, record=amax)
    sched = avx512_schedule(layer.m, layer.n) if isa == "avx512" else None
    d = precision.PrecisionDecision(0, mode, act_scale=amax[0][0] / 127, schedule=sched)
    emulated = emu.run(imp.inputs, {0: d})
    target = Target.parse("cpu" if isa == "amx" else "cpu{amx=false}")
    compiled = driver.compile_model(imp, target=target, cost_model="heuristic", precision=[d])
    out = compiled.fn(x)
    assert precision_plan.relative_error(out, emulated) < 2e-3
    with torch.no_grad():
        assert precision_plan.relative_error(out, model(x)) < (2e-2 if mode == "bf16" else 5e-2)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_tap_columns_equal_the_one_gather(mode, monkeypatch):
    """A 3×3 layer's VNNI columns gathered tap by tap from its relaid-out input
    (`TAP_COLUMNS`) hold exactly what the one gather wrote: the outputs are identical."""
    if not amx.available():
        pytest.skip("needs AMX (amx_bf16, amx_int8) and tile permission")
    imp = _imported()
    layers = precision.layers(imp.module, len(imp.params))
    d = precision.PrecisionDecision(0, mode, act_scale=0.05)
    outs = []
    for taps in (False, True):
        monkeypatch.setattr(precision, "TAP_COLUMNS", taps)
        imp = _imported()
        assert precision.layers(imp.module, len(imp.params))[0] == layers[0]
        outs.append(driver.compile_model(imp, cost_model="heuristic", precision=[d]).fn(*imp.inputs))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("mode", ["bf16", "auto"])
def test_a_batch_of_images_keeps_its_convolutions_f32_with_a_note(mode):
    """A convolution over 2 images is a layer of 2·F·OH·OW outputs (as the exported graph's
    node is), not eligible for low precision; the compile runs it f32 and matches eager
    (it was refused as not matching its graph node)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 20, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 17, 23)
    imp = frontend.import_module(model, (x,), spec="batch2")
    (layer,) = precision.layers(imp.module, len(imp.params))
    assert layer.batch == 2 and layer.eligible == ("f32",) and "batch 2" in layer.why_not
    compiled = driver.compile_model(imp, cost_model="heuristic", precision=mode)
    with torch.no_grad():
        assert torch.allclose(compiled.fn(x), model(x), atol=1e-5)


def test_forced_int8_is_held_to_the_default_budget_it_is_checked_against():
    """`--precision int8` with no `--error-budget` plans under the same 1% the run checks
    (it planned with none, lowered every layer at 1.95e-2 on mlp, then failed its own
    check); a larger budget lowers them."""
    imp = frontend.import_spec("mlp")

    def price(layer, p):  # low precision twice as fast: only the budget keeps a layer f32
        return (None, 1e-3) if p == "f32" else (precision.AmxSchedule(4, 2), 0.5e-3)

    plan = precision_plan.plan(imp, mode="int8", budget=None, price=price)
    assert plan.budget == precision_plan.DEFAULT_BUDGET
    assert plan.error > plan.budget  # (int8 everywhere on mlp: 1.95e-2)
    assert all(d.precision == "f32" for d in plan.decisions) and "budget" in plan.message
    loose = precision_plan.plan(imp, mode="int8", budget=0.5, price=price)
    assert all(d.precision == "int8" for d in loose.decisions)


_CONVS = """
import torch


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.b = torch.nn.Conv2d(64, 64, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


def block():
    torch.manual_seed(0)
    return Block().eval(), (torch.randn(1, 64, 16, 16),)
"""


def test_auto_is_calibrated_on_the_inputs_it_runs(tmp_path):
    """`run --inputs` with data unlike the examples (half the image 20 times larger): the
    plan is calibrated on those inputs, so its error holds there (calibrated on the
    examples, its int8 activation scales clipped them: 1.7e-1 against a 1% budget)."""
    from tilecraft.backends.cpu.target import host

    if driver.low_precision_isa(host()) is None:
        pytest.skip("no low-precision kernels on this CPU")
    (tmp_path / "convs.py").write_text(_CONVS)
    torch.manual_seed(1)
    x = torch.randn(1, 64, 16, 16)
    x[..., :8] *= 20
    report = driver.run_and_check(f"{tmp_path}/convs.py:block", precision="auto", inputs=[x], budget=0.05)
    assert report.precision.lowered and report.comparison.ok, report.relative_error


def test_forced_mode_says_why_a_layer_stays_f32():
    """A Linear of K = 258 has a bf16 form but no int8 one: `--precision int8` keeps it f32
    and the table's note says why (it was blank)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(258, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    imp = frontend.import_module(model, (torch.randn(32, 258),), spec="k258")

    def price(layer, p):
        return (None, 1e-3) if p == "f32" else (precision.AmxSchedule(4, 2), 0.5e-3)

    plan = precision_plan.plan(imp, mode="int8", budget=0.5, price=price)
    assert [d.precision for d in plan.decisions] == ["f32", "int8"]
    assert "K not a multiple of 4 (int8)" in plan.table().splitlines()[1]
