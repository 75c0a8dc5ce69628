"""The accelerator: ISA encoding, the simulator against the exact integer reference, whole
models (bit-exact, within 2% of eager), and the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xdsl.dialects.builtin import ModuleOp

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel import sim
from tilecraft.backends.accel.model import AccelModel, block_weights
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.backends.target import TargetError
from tilecraft.corpus import zoo
from tilecraft.dialects import accel as isa

T = AccelTarget()


# ------------------------------------------------------------------ ISA
def test_assemble_disassemble_round_trip_random_fields():
    rng = np.random.default_rng(0)
    ops = [isa.UopOp.make(int(rng.integers(2048)), int(rng.integers(2048)), int(rng.integers(1024)))]
    for cls in (isa.LoadOp, isa.StoreOp, isa.GemmOp, isa.AluOp, isa.FinishOp):
        for _ in range(5):
            values = {}
            for name, bits in cls.FIELDS:
                if not name:
                    continue
                lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in isa.SIGNED else (0, (1 << bits) - 1)
                values[name] = int(rng.integers(lo, hi + 1))
            if cls is isa.LoadOp:
                values["memory"] = int(rng.choice([0, 1, 2, 3, 5]))
            if cls is isa.StoreOp:
                values.update(memory=4, y_pad_0=0, y_pad_1=0, x_pad_0=0, x_pad_1=0)
            if cls is isa.AluOp:
                values["alu_opcode"] = int(rng.integers(5))
            ops.append(cls.make(**values))
    module = ModuleOp(ops)
    binary = isa.assemble(module)
    back = isa.disassemble(binary)
    assert isa.assemble(back) == binary
    assert str(back) == str(module)


def test_field_width_and_bad_binary_are_refused():
    with pytest.raises(Exception, match="does not fit 13 bits"):
        isa.assemble(ModuleOp([isa.GemmOp.make(uop_bgn=1 << 13)]))
    with pytest.raises(isa.AccelEncodingError, match="TCA1"):
        isa.disassemble(b"nope")
    with pytest.raises(isa.AccelEncodingError, match="does not hold"):
        isa.disassemble(b"TCA1" + (3).to_bytes(4, "little") + (0).to_bytes(4, "little"))


def test_target_parse_and_errors():
    t = AccelTarget.parse("accel{block=16 inp_kb=32 wgt_kb=256 acc_kb=128 dram_gbs=8}")
    assert (t.inp_depth, t.wgt_depth, t.acc_depth) == (2048, 1024, 2048)
    for bad, msg in [("accel{foo=1}", "unknown"), ("accel{inp_kb=64}", "11-bit"), ("accel{block=x}", "integer")]:
        with pytest.raises(TargetError, match=msg):
            AccelTarget.parse(bad)


# ------------------------------------------------------------------ one layer
def _layer(cin, cout, h, w, k, s, p, *, dw=False, res=False, seed=0):
    rng = np.random.default_rng(seed)
    layer = L.ConvLayer("l", cin, cout, h, w, k, k, s, p, dw, residual=res)
    layer.weight = rng.integers(-127, 128, (cout, 1 if dw else cin, k, k)).astype(np.int8)
    layer.bias = rng.integers(-1000, 1000, cout).astype(np.int32)
    layer.pre_shift = 4
    layer.mult = rng.integers(1 << 13, 1 << 15, cout).astype(np.int32)
    layer.shift = rng.integers(14, 20, cout).astype(np.int32)
    if res:
        layer.res_mult, layer.res_shift = 20000, 15
    layer.lo = 0
    return layer


def _run_layer(layer, sched, *, drop_tokens=False, target=T):
    b = T.block
    rng = np.random.default_rng(1)
    x = rng.integers(-127, 128, (layer.cin, layer.h, layer.w)).astype(np.int8)
    skip = rng.integers(-127, 128, (layer.cout, layer.oh, layer.ow)).astype(np.int8) if layer.residual else None
    regions, off = {}, 0
    wb = block_weights(layer, b)
    const = np.stack([layer.bias, layer.mult, 1 << (layer.shift - 1), layer.shift]).astype(np.int32)
    arrays = {
        "x": x.reshape(layer.cin // b, b, layer.h, layer.w).transpose(0, 2, 3, 1).copy(),
        "w": wb,
        "c": const.reshape(4, layer.cout // b, b).transpose(1, 0, 2).copy(),
        "o": np.zeros(layer.cout * layer.oh * layer.ow, np.int8),
    }
    if skip is not None:
        arrays["s"] = skip.reshape(layer.cout // b, b, layer.oh, layer.ow).transpose(0, 2, 3, 1).copy()
    for k, a in arrays.items():
        regions[k] = off
        off += -(-a.nbytes // 256) * 256
    dram = np.zeros(off, np.uint8)
    for k, a in arrays.items():
        dram[regions[k] : regions[k] + a.nbytes] = a.view(np.uint8).ravel()
    addr = L.Addresses(regions["x"] // b, regions["w"] // (b * b), regions["c"] // (4 * b), regions["o"] // b,
                       regions.get("s", 0) // b)  # fmt: skip
    insns, uops = [], []
    L.emit_layer(layer, sched, target, addr, insns, uops, 0, sync_in=False)
    if drop_tokens:
        for ins in insns:
            ins["pop_prev"] = 0 if ins["op"] == "gemm" else ins.get("pop_prev", 0)
    insns.append(dict(op="finish"))
    r = sim.simulate(isa.assemble_fields(insns, uops), target, dram)
    n = layer.cout * layer.oh * layer.ow
    out = dram[regions["o"] : regions["o"] + n].view(np.int8).reshape(layer.cout // b, layer.oh, layer.ow, b)
    return out.transpose(0, 3, 1, 2).reshape(layer.cout, layer.oh, layer.ow), L.reference_layer(layer, x, skip), r


@pytest.mark.parametrize(
    "layer, sched",
    [
        (_layer(32, 32, 8, 8, 3, 1, 1), L.ConvSchedule(4, 8, 1, 1, "co", True)),
        (_layer(32, 32, 8, 8, 3, 1, 1), L.ConvSchedule(3, 4, 2, 1, "sp", False)),
        (_layer(32, 64, 9, 9, 3, 2, 1, res=True), L.ConvSchedule(2, 5, 1, 1, "co", True)),
        (_layer(48, 48, 7, 7, 3, 1, 1, dw=True), L.ConvSchedule(3, 7, 1, 1, "sp", True)),
        (_layer(16, 32, 1, 24, 1, 1, 0), L.ConvSchedule(1, 8, 2, 1, "co", True)),  # a linear layer
        (_layer(16, 16, 11, 11, 7, 2, 3), L.ConvSchedule(2, 6, 1, 1, "co", True)),
    ],
)
def test_layer_on_the_simulator_equals_the_integer_reference(layer, sched):
    out, ref, r = _run_layer(layer, sched)
    assert np.array_equal(out, ref)
    assert 0 < r.utilization <= 1 and r.dram_write == layer.cout * layer.oh * layer.ow


def _layer_program(layer, sched, drop=()):
    insns, uops = [], []
    L.emit_layer(layer, sched, T, L.Addresses(0, 64, 0, 4096, 8192), insns, uops, 0, sync_in=False, sync_out=False)
    for ins in insns:
        for op, field in drop:
            if ins["op"] == op and field in ins and (op != "gemm" or field != "pop_next" or ins.get("reset")):
                ins[field] = 0
    insns.append(dict(op="finish"))
    return isa.assemble_fields(insns, uops)


@pytest.mark.parametrize(
    "drop, expect",
    [
        ((), None),
        ((("gemm", "pop_prev"),), "races"),  # products before their loads land
        ((("gemm", "pop_next"), ("store", "push_prev")), "races"),  # a reset before its store drained
        ((("load", "pop_next"),), "races"),  # a load over a slot still being read
    ],
)
def test_check_races_proves_or_refutes_synchronization(drop, expect):
    layer = _layer(32, 32, 8, 8, 3, 1, 1, res=True)
    problems = sim.check_races(_layer_program(layer, L.ConvSchedule(2, 8, 1, 1, "co", True), drop), T)
    if expect is None:
        assert problems == []
    else:
        assert any("race" in p or "overwrites" in p or "after FINISH" in p for p in problems), problems


def test_check_races_sees_a_store_landing_after_finish():
    """The last store's token dropped with the compute wait on it: FINISH may come first."""
    layer = _layer(32, 32, 8, 8, 3, 1, 1)
    insns, uops = [], []
    L.emit_layer(layer, L.ConvSchedule(4, 8, 1, 1, "co", True), T, L.Addresses(0, 64, 0, 4096, 8192), insns, uops,
                 0, sync_in=False, sync_out=False)  # fmt: skip
    last_store = max(i for i, ins in enumerate(insns) if ins["op"] == "store" and ins.get("push_prev"))
    last_wait = max(i for i, ins in enumerate(insns) if ins["op"] == "gemm" and ins.get("pop_next"))
    insns[last_store]["push_prev"] = insns[last_wait]["pop_next"] = 0
    insns.append(dict(op="finish"))
    problems = sim.check_races(isa.assemble_fields(insns, uops), T)
    assert any("after FINISH" in p for p in problems), problems


def test_a_missing_token_races_and_is_caught():
    layer = _layer(32, 32, 8, 8, 3, 1, 1)
    slow_dram = AccelTarget(dram_latency=5000)
    out, ref, _ = _run_layer(layer, L.ConvSchedule(2, 8, 1, 1, "co", True), target=slow_dram)
    assert np.array_equal(out, ref)  # with the tokens, slow loads only cost time
    out, ref, _ = _run_layer(layer, L.ConvSchedule(2, 8, 1, 1, "co", True), drop_tokens=True, target=slow_dram)
    assert not np.array_equal(out, ref)  # without them the GEMMs run before their loads land


def test_deadlock_and_overrun_are_simulation_errors():
    never = isa.assemble_fields([dict(op="gemm", pop_prev=1), dict(op="finish")], [])
    with pytest.raises(sim.SimulationError, match="deadlock"):
        sim.simulate(never, T)
    overrun = isa.assemble_fields(
        [dict(op="load", memory=isa.MEM_INP, sram_base=2040, y_size=1, x_size=16, x_stride=16), dict(op="finish")], []
    )
    with pytest.raises(sim.SimulationError, match="overruns"):
        sim.simulate(overrun, T, np.zeros(4096, np.uint8))


def test_schedule_space_respects_buffers():
    layer = _layer(64, 64, 56, 56, 3, 1, 1)
    space = L.space(layer, T)
    assert space and all(L.check_schedule(layer, s, T) for s in space)
    with pytest.raises(L.ScheduleError, match="overflows"):
        L.check_schedule(layer, L.ConvSchedule(56, 56, 4, 4, "co", True), T)


# ------------------------------------------------------------------ whole models
@pytest.mark.parametrize("name", ["mlp", "conv_autoencoder", "resnet18", "mobilenet_v2", "bert_mini"])
def test_zoo_model_on_the_accelerator(name):
    """Bit for bit against the integer reference, within 2% of eager, and every program's
    binary survives disassembly and reassembly exactly."""
    model, inputs = zoo.get(name)
    am = AccelModel(model, inputs, T)
    assert am.layers, "no layer went to the accelerator"
    out, stats = am.run(inputs, engine="sim")
    ref, ref_stats = am.run(inputs, engine="reference")
    assert torch.equal(out[0] if isinstance(out, tuple) else out, ref[0] if isinstance(ref, tuple) else ref)
    for k, v in stats.layer_outputs.items():
        assert np.array_equal(v, ref_stats.layer_outputs[k]), k
    with torch.no_grad():
        eager = model(*inputs)
    got = out[0] if isinstance(out, tuple) else out
    assert float((got - eager).norm() / eager.norm()) < 0.02
    for prog in am.programs:
        assert isa.assemble(isa.disassemble(prog)) == prog
        assert sim.check_races(prog, T) == []
    if name == "bert_mini":  # its linear layers on the accelerator, the rest on the host
        assert len(am.layers) == 16 and all(p.kind == "linear" for p in am.layers)


def test_cli_run_compile_and_errors(tmp_path, capsys):
    from tilecraft.cli import main

    assert main(["run", "mlp", "--target", "accel"]) == 0
    text = capsys.readouterr().out
    assert "bit-exact" in text and "GEMM-core utilization" in text and "DRAM traffic" in text
    out = tmp_path / "mlp.bin"
    assert main(["compile", "mlp", "--target", "accel", "--emit", "accel-bin", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:4] == b"TCAM" and b"TCA1" in data
    capsys.readouterr()
    assert main(["compile", "mlp", "--target", "accel{inp_kb=64}", "--emit", "accel-asm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inp_kb=64" in err


def test_memory_plan_keeps_mlp_activations_on_chip():
    """The plan keeps both hidden activations in the input buffer: only the logits are
    stored, planned bytes equal the simulator's, and the result stays bit-exact."""
    from tilecraft import accel_driver

    compiled = accel_driver.compile_accel("mlp", "accel")
    plan = compiled.plan
    assert [(a, b) for a, b, _ in plan.resident] == [(0, 1), (1, 2)]
    assert plan.solver == "highs" and plan.planned_bytes < plan.baseline_bytes
    r = accel_driver.run(compiled)
    assert r["bit_exact"] and r["rel_l2_vs_eager"] < 0.02
    assert r["dram_write"] == 32 * 16  # the 10 logits of 32 rows, padded to a block
    assert r["dram_read"] + r["dram_write"] == plan.planned_bytes


class _ConvLinear(torch.nn.Module):  # a linear over a conv output's last dim (channels-last MLPs)
    def __init__(self):
        super().__init__()
        self.c, self.l = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Linear(8, 12)

    def forward(self, x):
        return self.l(torch.relu(self.c(x)))


class _BatchNormNoAffine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn = torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32, affine=False)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c(x))))


class _PrunedChannel(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.c, self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.Conv2d(32, 16, 3, padding=1)
        with torch.no_grad():
            self.c.weight[5] *= factor  # 0: a pruned channel; 1e-3: a nearly dead one

    def forward(self, x):
        return self.c2(torch.relu(self.c(x)))


class _PrunedLinearWithBias(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(512, 32)
        with torch.no_grad():
            self.l.weight.abs_()
            self.l.weight[3] = 0
            self.l.bias[3] = 0.5

    def forward(self, x):
        return self.l(x.abs())


@pytest.mark.parametrize(
    "make, x",
    [
        (_PrunedLinearWithBias, (4, 512)),
        (_ConvLinear, (1, 8, 8, 8)),
        (_BatchNormNoAffine, (1, 16, 16, 16)),
        (lambda: _PrunedChannel(0.0), (1, 16, 16, 16)),
        (lambda: _PrunedChannel(1e-3), (1, 16, 16, 16)),
    ],
    ids=[
        "pruned-channel-keeps-its-bias",
        "conv-then-linear-on-last-dim",
        "batchnorm-without-affine",
        "pruned-channel",
        "weak-channel",
    ],  # fmt: skip
)
def test_awkward_models_stay_exact_and_accurate(make, x):
    torch.manual_seed(0)
    model, inputs = make().eval(), (torch.randn(*x),)
    am = AccelModel(model, inputs, T)
    out, _ = am.run(inputs)
    ref, _ = am.run(inputs, engine="reference")
    assert torch.equal(out, ref)
    with torch.no_grad():
        eager = model(*inputs)
    assert float((out - eager).norm() / eager.norm()) < 0.02
    assert all(p.layer.pre_shift <= 16 for p in am.layers)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "mlp", "--target", "accel{clock_mhz=inf}"], "positive finite"),
        (["run", "mlp", "--target", "accel{block=8}"], "inp_kb=16 at most"),
        (["run", "mlp", "--target", "accel", "--decisions", "x.json"], "--decisions is not supported"),
        (["run", "mlp", "--target", "accel", "--error-budget", "0.5"], "--error-budget is not supported"),
        (["explain", "mlp", "--target", "accel", "--json", "x.json"], "--json is not supported"),
        (["compile", "mlp", "--target", "accel", "--emit", "accel-bin"], "give -o FILE"),
        (["compile", "mlp", "--target", "accel", "--emit", "obj"], "not an accelerator output"),
        (["run", "m.mlir", "--target", "accel"], "carries no PyTorch model"),
    ],
)
def test_cli_accel_mistakes_are_one_line(argv, message, capsys):
    from tilecraft.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "internal error" not in err


def test_cli_accel_inputs_are_checked(tmp_path, capsys):
    from tilecraft.cli import main

    path = tmp_path / "in.npz"
    np.savez(path, np.zeros((16, 256), np.float32))
    assert main(["run", "mlp", "--target", "accel", "--inputs", str(path)]) == 2
    assert "input 0: expected (32, 256) float32, got (16, 256) float32" in capsys.readouterr().err


def test_cli_explain_shows_schedules_and_the_memory_plan(capsys):
    from tilecraft.cli import main

    assert main(["explain", "mlp", "--target", "accel"]) == 0
    out = capsys.readouterr().out
    assert "runner-up" in out and "memory plan:" in out and "highs" in out
    assert out.count("kept on chip:") == 2


def test_a_pruned_channel_keeps_its_bias():
    torch.manual_seed(0)
    model, inputs = _PrunedLinearWithBias().eval(), (torch.randn(4, 512),)
    am = AccelModel(model, inputs, T)
    out, _ = am.run(inputs)
    step = am.scales[am.layers[0].last.name]
    assert torch.all((out[:, 3] - 0.5).abs() <= step)  # within one output step of eager's 0.5
