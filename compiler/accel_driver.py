"""The accelerator flow, as straight-line code: `--target accel{...}` of compile, run and explain.

The face floor. Reads a model (zoo name or file:factory), the target configuration and the
accelerator cost model; writes accelerator assembly (`accel-asm`: the `accel` dialect, one
module per program), binaries (`accel-bin`), or a run report (cycles, GEMM utilization,
DRAM traffic, the simulator against the exact integer reference and against eager).
"""

from __future__ import annotations

import dataclasses
import struct
import time

import numpy as np
import torch

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel.model import AccelCompileError, AccelModel
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.costmodel import accel_plan
from tilecraft.dialects import accel as isa

EMITS = ("accel-asm", "accel-bin")


@dataclasses.dataclass
class AccelCompiled:
    model: AccelModel
    plan: accel_plan.MemoryPlan
    compile_seconds: float
    cost_model: str
    placement: dict[str, str] = dataclasses.field(default_factory=dict)  # layer -> priced choice


def _predictor(target: AccelTarget):
    """Cycles of (layer, schedules): the shipped accelerator cost model, else the simulator."""
    try:
        from tilecraft.costmodel import accel_model

        model = accel_model.load_shipped()
        memo: dict = {}

        def predict(layer, scheds):  # the planner and the placement ask about the same spaces
            key = (layer.shape_key(), layer.pre_shift > 0, tuple(scheds))
            if key not in memo:
                memo[key] = model.predict(layer, scheds, target)
            return memo[key]

        return predict, "lightgbm"
    except (ImportError, AttributeError, FileNotFoundError, OSError):
        from tilecraft.backends.accel import sim

        def simulate(layer, scheds):
            out = []
            for s in scheds[:64]:
                out.append(sim.simulate(L.layer_program(layer, s, target), target).cycles)
            return np.array(out + [float("inf")] * (len(scheds) - len(out)))

        return simulate, "simulator"


def compile_accel(spec: str, target_text: str, *, plan: bool = True) -> AccelCompiled:
    from tilecraft import frontend

    t0 = time.perf_counter()
    target_text = target_text.strip()
    target = AccelTarget.parse(target_text) if not target_text.endswith(".json") else _target_file(target_text)
    if spec.endswith(".mlir"):
        raise AccelCompileError(
            f"{spec}: a .mlir file carries no PyTorch model; --target accel takes a zoo name or path/to/file.py:factory"
        )
    module, inputs = frontend.load_model(spec)
    predict, kind = _predictor(target)
    holder: dict = {}

    def planner(layers, edges):
        mp = accel_plan.plan_memory(layers, target, predict, edges=edges if plan else (), greedy_only=not plan)
        holder["plan"] = mp
        if not plan:  # layer by layer, latency-first
            return [_fastest(layer, target, predict) for layer in layers]
        return [mp.schedule_of(layer.name) for layer in layers], {(a, b): addr for a, b, addr in mp.resident}

    host_rate = target.host_gflops * 1e9  # FLOP/s of the host the accelerator is attached to
    placed: dict[str, str] = {}

    def place(layer: L.ConvLayer) -> bool:
        """The accelerator when its predicted time beats the host's: a priced partition."""
        padded = dataclasses.replace(
            layer, cin=L.blocks(layer.cin, target.block), cout=L.blocks(layer.cout, target.block), pre_shift=1
        )
        space = L.space(padded, target, limit=accel_plan.SPACE_LIMIT)
        accel_s = float(np.min(predict(padded, space))) / (target.clock_mhz * 1e6) if space else float("inf")
        host_s = 2 * layer.macs / host_rate
        placed[layer.name] = f"accelerator {accel_s * 1e6:.0f} us vs host {host_s * 1e6:.0f} us"
        return accel_s <= host_s

    try:
        am = AccelModel(module, inputs, target, plan=planner, place=place)
    except AccelCompileError as exc:
        raise AccelCompileError(f"{spec}: {exc}") from None
    return AccelCompiled(am, holder["plan"], time.perf_counter() - t0, kind, placed)


def _fastest(layer, target, predict) -> L.ConvSchedule:
    space = L.space(layer, target, limit=accel_plan.SPACE_LIMIT)
    return space[int(np.argmin(predict(layer, space)))]


def emit(compiled: AccelCompiled, kind: str) -> bytes:
    am = compiled.model
    if kind == "accel-bin":
        out = b"TCAM" + struct.pack("<I", len(am.programs))
        for prog in am.programs:
            out += struct.pack("<I", len(prog)) + prog
        return out
    if kind == "accel-asm":
        parts = []
        for i, (prog, layers) in enumerate(zip(am.programs, am.program_layers)):
            names = ", ".join(f"{p.layer.name} {p.schedule.to_json()}" for p in layers)
            parts.append(f"// program {i}: {names}\n{str(isa.disassemble(prog))}\n")
        return "".join(parts).encode()
    raise AccelCompileError(f"unknown emit kind {kind!r} for the accelerator (one of {', '.join(EMITS)})")


def run(compiled: AccelCompiled, inputs=None) -> dict:
    """Run on the simulator and the integer reference, compare, and report."""
    am = compiled.model
    inputs = check_inputs(am, inputs) if inputs is not None else am.example_inputs
    t0 = time.perf_counter()
    out, stats = am.run(inputs, engine="sim")
    t1 = time.perf_counter()
    ref, ref_stats = am.run(inputs, engine="reference")
    with torch.no_grad():
        eager = am.eager(*inputs)
    flat = lambda v: [t for t in (v if isinstance(v, (tuple, list)) else [v]) if isinstance(t, torch.Tensor)]  # noqa: E731
    exact = all(torch.equal(a, b) for a, b in zip(flat(out), flat(ref))) and all(
        np.array_equal(stats.layer_outputs[k], ref_stats.layer_outputs[k]) for k in stats.layer_outputs
    )
    errs = [
        float((a.float() - b.float()).norm() / max(float(b.float().norm()), 1e-30))
        for a, b in zip(flat(out), flat(eager))
    ]
    t = am.target
    return {
        "layers": len(am.layers),
        "programs": stats.programs,
        "host_ops": len(am.on_host()),
        "instructions": stats.instructions,
        "cycles": stats.cycles,
        "ms_at_clock": stats.cycles / (t.clock_mhz * 1e3),
        "utilization": stats.utilization,
        "dram_read": stats.dram_read,
        "dram_write": stats.dram_write,
        "bit_exact": exact,
        "rel_l2_vs_eager": max(errs) if errs else 0.0,
        "sim_seconds": t1 - t0,
        "plan": compiled.plan,
    }


def check_inputs(am: AccelModel, inputs) -> tuple:
    """The user's inputs if they match the example inputs' count, shapes and dtypes."""
    from tilecraft.driver import DriverError

    want = am.example_inputs
    if len(inputs) != len(want):
        raise DriverError(f"the model takes {len(want)} input(s), got {len(inputs)}")
    for i, (got, ex) in enumerate(zip(inputs, want)):
        if tuple(got.shape) != tuple(ex.shape) or got.dtype != ex.dtype:
            raise DriverError(
                f"input {i}: expected {tuple(ex.shape)} {str(ex.dtype).replace('torch.', '')},"
                f" got {tuple(got.shape)} {str(got.dtype).replace('torch.', '')}"
            )
    return tuple(inputs)


def _target_file(path: str) -> AccelTarget:
    from tilecraft.backends.target import parse_target

    target = parse_target(path)
    if not isinstance(target, AccelTarget):
        raise AccelCompileError(f"{path} describes a {target.kind} target, not an accelerator")
    return target


def format_run(name: str, r: dict, target: AccelTarget, compile_seconds: float) -> str:
    plan = r["plan"]
    cut = 1 - plan.planned_bytes / plan.baseline_bytes if plan.baseline_bytes else 0.0
    traffic = r["dram_read"] + r["dram_write"]
    lines = [
        f"model {name} on {target.describe()} (simulated at {target.clock_mhz:g} MHz),"
        f" compiled in {compile_seconds:.1f} s",
        f"  accelerator layers     {r['layers']} in {r['programs']} programs ({r['instructions']} instructions)",
        f"  host ops               {r['host_ops']}",
        f"  cycles                 {r['cycles']:,} ({r['ms_at_clock']:.2f} ms at clock)",
        f"  GEMM-core utilization  {r['utilization']:.3f}",
        f"  DRAM traffic           {traffic:,} bytes (read {r['dram_read']:,}, write {r['dram_write']:,})",
        f"  memory plan            {plan.planned_bytes:,} bytes vs {plan.baseline_bytes:,} layer by layer"
        f" ({cut:.1%} less;"
        f" compulsory {plan.compulsory_bytes:,}; {plan.solver} in {plan.solve_seconds:.2f} s)",
        f"  simulator vs integer reference  {'bit-exact' if r['bit_exact'] else 'DIFFERENT'}",
        f"  relative L2 vs eager (f32)      {r['rel_l2_vs_eager']:.4f}",
    ]
    return "\n".join(lines)


def explain_rows(compiled: AccelCompiled, predict=None) -> list[dict]:
    am, target = compiled.model, compiled.model.target
    predict = predict or _predictor(target)[0]
    rows = []
    res_in = {b: addr for (a, b), addr in am.resident.items()}
    res_out = {a: addr for (a, b), addr in am.resident.items()}
    for k, p in enumerate(am.layers):
        space = L.space(p.layer, target, limit=accel_plan.SPACE_LIMIT)
        pred = np.asarray(predict(p.layer, space), float)
        order = np.argsort(pred)
        chosen = space.index(p.schedule) if p.schedule in space else None
        runner = next((space[i] for i in order if space[i] != p.schedule), None)
        tr = L.traffic(p.layer, p.schedule, target, resident_in=res_in.get(k), resident_out=res_out.get(k))
        rows.append(
            {
                "layer": p.layer.name,
                "kind": ("depthwise " if p.layer.depthwise else "") + p.kind,
                "shape": f"{p.layer.cin}->{p.layer.cout} {p.layer.h}x{p.layer.w} k{p.layer.kh} s{p.layer.stride}",
                "schedule": p.schedule.to_json(),
                "predicted_cycles": float(pred[chosen]) if chosen is not None else float("nan"),
                "runner_up": runner.to_json() if runner else None,
                "runner_up_cycles": float(pred[space.index(runner)]) if runner else float("nan"),  # noqa: E501
                "dram_bytes": tr["read"] + tr["write"],
            }
        )
    return rows


def format_explain(name: str, compiled: AccelCompiled) -> str:
    rows = explain_rows(compiled)
    plan = compiled.plan
    target = compiled.model.target
    out = [f"{name} on {target.describe()}: {len(rows)} accelerator layers, cost model {compiled.cost_model}"]
    out.append(
        f"{'layer':<14} {'kind':<18} {'shape':<26} {'schedule (th tw tco tci order dbl)':<36} {'pred cyc':>10}"
        f" {'runner-up':<30} {'pred':>10} {'DRAM B':>10}"
    )

    def fmt(s):
        return f"{s['th']} {s['tw']} {s['tco']} {s['tci']} {s['order']} {'y' if s['double'] else 'n'}" if s else "-"

    for r in rows:
        out.append(
            f"{r['layer']:<14} {r['kind']:<18} {r['shape']:<26} {fmt(r['schedule']):<36}"
            f" {r['predicted_cycles']:>10.0f} {fmt(r['runner_up']):<30} {r['runner_up_cycles']:>10.0f}"
            f" {r['dram_bytes']:>10,}"
        )
    out.append(
        f"memory plan: {plan.planned_bytes:,} bytes of DRAM traffic vs {plan.baseline_bytes:,} layer by layer"
        f" latency-first (compulsory {plan.compulsory_bytes:,}); predicted cycles {plan.planned_cycles:,.0f}"
        f" vs {plan.baseline_cycles:,.0f}; {plan.solver} in {plan.solve_seconds:.2f} s"
    )
    layers = compiled.model.layers
    for (a, b), addr in sorted(compiled.model.resident.items()):
        lay = layers[b].layer
        out.append(
            f"  kept on chip: {layers[a].layer.name} -> {layers[b].layer.name},"
            f" {lay.cin // target.block * lay.h * lay.w} input-buffer entries at entry {addr} (no store, no load)"
        )
    kept = [f"{name} ({why})" for name, why in compiled.placement.items() if name not in {r["layer"] for r in rows}]
    if kept:
        out.append("priced onto the host: " + "; ".join(kept))
    if compiled.model.on_host():
        out.append("on the host: " + ", ".join(compiled.model.on_host()))
    return "\n".join(out)
