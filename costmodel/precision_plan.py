"""The precision planner: which layers of a model run in bf16 or int8.

On the costmodel floor. Emulates each contraction layer in lower precision in PyTorch
(`Emulator`) to measure its sensitivity (the output's relative L2 error when only that
layer runs lower, on calibration inputs), prices each layer's options with a callback (the
f32 cost model and the AMX model), and chooses per layer by an integer program
(`costmodel/ilp.py`) that minimizes predicted latency under an error budget. Returns a
`PrecisionPlan` of `PrecisionDecision`s, which `passes/precision.py` applies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tilecraft.costmodel.ilp import InfeasibleError, solve_binary
from tilecraft.passes.precision import Layer, PrecisionDecision, PrecisionError, layers, quantize_per_channel

_FX_CONTRACTIONS = ("aten.mm.default", "aten.addmm.default", "aten.bmm.default", "aten.convolution.default")


def _flatten(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for y in x for t in _flatten(y)]
    if isinstance(x, dict):
        return [t for y in x.values() for t in _flatten(y)]
    return []


def relative_error(outs, refs) -> float:
    """‖out − ref‖ / ‖ref‖ over all outputs (L2, as one vector)."""
    outs, refs = _flatten(outs), _flatten(refs)
    num = sum(float((o.double() - r.double()).pow(2).sum()) for o, r in zip(outs, refs))
    den = sum(float(r.double().pow(2).sum()) for r in refs)
    return math.sqrt(num / den) if den else math.sqrt(num)


def _fake_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def _fake_int8(x: torch.Tensor, scale) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


class Emulator:
    """Runs the model's exported graph in eager PyTorch with chosen layers emulating their
    lowered precision (operands rounded to bf16, or fake-quantized to int8 exactly as the
    rewrite quantizes them; accumulation stays exact). Its contraction nodes are the
    module's layers, in order (checked against `layers` by shape)."""

    def __init__(self, gm: torch.fx.GraphModule, params: Sequence[torch.Tensor], module_layers: Sequence[Layer]):
        self.gm, self.params = gm, list(params)
        bound = [n for n in gm.graph.nodes if n.op == "placeholder"][: len(self.params)]
        self.weights = set(bound)
        self.nodes = [n for n in gm.graph.nodes if n.op == "call_function" and self._is_layer(n)]
        if len(self.nodes) != len(module_layers):
            raise PrecisionError(
                f"the exported graph has {len(self.nodes)} contractions, the module {len(module_layers)}: "
                "cannot tell which layer is which"
            )
        for node, layer in zip(self.nodes, module_layers):
            numel = math.prod(node.meta["val"].shape)
            if numel != layer.batch * layer.m * layer.n:
                raise PrecisionError(f"layer {layer.index} ({layer.name}) does not match graph node {node.name}")

    @staticmethod
    def _is_layer(n) -> bool:
        if str(n.target) not in _FX_CONTRACTIONS:
            return False
        return str(n.target) != "aten.convolution.default" or n.args[8] == 1

    def _operands(self, node) -> tuple[int, int]:
        """Positions of (A, B) in the node's args (addmm: after the bias)."""
        return (1, 2) if str(node.target) == "aten.addmm.default" else (0, 1)

    def run(
        self,
        inputs,
        lowered: Mapping[int, PrecisionDecision] | None = None,
        *,
        record: dict | None = None,
        keep: dict | None = None,
        reuse: dict | None = None,
    ):
        """Outputs with `lowered` layers emulated; `record` collects each layer's operand
        absolute maxima {layer: (max|A|, max|B|)} (max over runs). `keep` receives every
        node's value (an f32 run); `reuse` takes such values for the nodes before the first
        lowered layer, which then are not recomputed."""
        index = {n: i for i, n in enumerate(self.nodes)}
        lowered = lowered or {}
        emu = self
        initial = None
        if reuse is not None and lowered:
            first = self.nodes[min(lowered)]
            initial = {}
            for n in self.gm.graph.nodes:
                if n is first:
                    break
                if n in reuse:
                    initial[n] = reuse[n]

        class _Interp(torch.fx.Interpreter):
            def run_node(self, n):
                i = index.get(n)
                if i is None or (i not in lowered and record is None):
                    return super().run_node(n)
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                args = list(args)
                ia, ib = emu._operands(n)
                if record is not None:
                    old = record.get(i, (0.0, 0.0))
                    record[i] = (max(old[0], float(args[ia].abs().max())), max(old[1], float(args[ib].abs().max())))
                d = lowered.get(i)
                if d is not None and d.precision == "bf16":
                    args[ia], args[ib] = _fake_bf16(args[ia]), _fake_bf16(args[ib])
                elif d is not None and d.precision == "int8":
                    args[ia], args[ib] = emu._fake_int8_operands(n, args[ia], args[ib], d)
                return n.target(*args, **kwargs)

        with torch.no_grad():
            interp = _Interp(self.gm, garbage_collect_values=keep is None)
            out = interp.run(*self.params, *inputs, initial_env=initial)
        if keep is not None:
            keep.update(interp.env)
        return out

    def _fake_int8_operands(self, n, a: torch.Tensor, b: torch.Tensor, d: PrecisionDecision):
        target = str(n.target)
        _, ib = self._operands(n)
        # a weight the rewrite packs (bound, used by this layer only) gets per-channel scales
        packed = n.args[ib] in self.weights and len(n.args[ib].users) == 1
        if target == "aten.convolution.default":  # weight per output channel
            dim = 1 if n.args[6] else 0  # transposed: [C_in, C_out, …]
            q, s = quantize_per_channel(b, dim)
            shape = [1] * b.dim()
            shape[dim] = -1
            return _fake_int8(a, d.act_scale), q.float() * s.reshape(shape)
        if packed:  # mm / addmm with a weight B[K, N]: per column
            q, s = quantize_per_channel(b, 1)
            return _fake_int8(a, d.act_scale), q.float() * s
        return _fake_int8(a, d.act_scale), _fake_int8(b, d.act_scale_b)


def calibration_inputs(inputs: Sequence[torch.Tensor], count: int, *, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs and `count - 1` draws like them (floats: same mean and spread;
    integers: same range)."""
    g = torch.Generator().manual_seed(seed)
    out = [tuple(inputs)]
    for _ in range(count - 1):
        draw = []
        for x in inputs:
            if x.is_floating_point():
                draw.append(torch.randn(x.shape, generator=g) * x.std() + x.mean())
            elif x.dtype == torch.bool:
                draw.append(x.clone())
            else:
                draw.append(torch.randint(int(x.min()), int(x.max()) + 1, x.shape, generator=g, dtype=x.dtype))
        out.append(tuple(draw))
    return out


# ------------------------------------------------------------------------------ choosing
DEFAULT_BUDGET = 0.01  # relative L2 error of the model output
MODES = ("f32", "bf16", "int8", "auto")
# The precisions each kind of low-precision kernel runs (`backends/cpu/amx.py`, `avx512_dot.py`)
ISA_PRECISIONS = {"amx": ("bf16", "int8"), "avx512": ("bf16", "int8")}


@dataclasses.dataclass
class PrecisionPlan:
    """The per-layer choice and everything it was made from."""

    mode: str
    budget: float | None
    layers: list[Layer]
    decisions: list[PrecisionDecision]
    error: float | None = None  # emulated output error of the whole plan (max over calibration inputs)
    message: str = ""  # why the plan fell back to f32, if it did

    @property
    def lowered(self) -> list[PrecisionDecision]:
        return [d for d in self.decisions if d.precision != "f32"]

    @property
    def predicted_f32_s(self) -> float:
        return sum(d.f32_s or 0.0 for d in self.decisions)

    @property
    def predicted_s(self) -> float:
        return sum((d.predicted_s if d.predicted_s is not None else d.f32_s) or 0.0 for d in self.decisions)

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "budget": self.budget,
            "error": self.error,
            "message": self.message,
            "predicted_f32_s": self.predicted_f32_s,
            "predicted_s": self.predicted_s,
            "layers": [dataclasses.asdict(x) for x in self.layers],
            "decisions": [d.to_json() for d in self.decisions],
        }

    def table(self) -> str:
        rows = [("layer", "precision", "sensitivity", "f32 pred ms", "pred ms", "saving ms", "note")]
        for layer, d in zip(self.layers, self.decisions):
            pred = d.predicted_s if d.predicted_s is not None else d.f32_s
            saving = (d.f32_s - pred) if d.f32_s is not None and pred is not None else None
            rows.append(
                (
                    f"{layer.index:>2} {layer.name}",
                    d.precision,
                    f"{d.sensitivity:.1e}" if d.sensitivity is not None else "-",
                    f"{d.f32_s * 1e3:.3f}" if d.f32_s is not None else "-",
                    f"{pred * 1e3:.3f}" if pred is not None else "-",
                    f"{saving * 1e3:.3f}" if saving is not None else "-",
                    layer.why_not_in(self.mode),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        err = f"{self.error:.2e}" if self.error is not None else "-"
        budget = f"{self.budget:g}" if self.budget is not None else "none"
        f32, pred = self.predicted_f32_s, self.predicted_s
        ratio = f"{f32 / pred:.2f}x" if pred else "-"
        lines.append(
            f"precision {self.mode}: {len(self.lowered)}/{len(self.layers)} layers lowered; "
            f"output error {err} (budget {budget}); "
            f"contractions predicted {f32 * 1e3:.2f} -> {pred * 1e3:.2f} ms ({ratio})"
        )
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


def solve(options: Mapping[int, Mapping[str, tuple[float, float]]], budget: float) -> dict[int, str]:
    """Minimize Σ latency subject to Σ sensitivity² ≤ budget², one precision per layer.

    Layers' rounding errors are independent, so their relative L2 errors add in
    quadrature, not linearly: BERT-mini with every eligible layer in int8 (no AMX) errs
    8.08e-3 measured, against √Σs² = 8.2e-3 and Σs = 2.6e-2 (the linear sum kept 6 of its
    16 layers f32 under a 1% budget). The caller checks the plan's real error and
    tightens the budget where it is over. `options[layer][precision] = (latency_s,
    sensitivity)`; f32 must be present with sensitivity 0. HiGHS through
    `scipy.optimize.milp`."""
    keys = [(layer, p) for layer, ps in options.items() for p in ps]
    if not keys:
        return {}
    layer_ids = list(options)
    one = np.zeros((len(layer_ids), len(keys)))
    for j, (layer, _) in enumerate(keys):
        one[layer_ids.index(layer), j] = 1.0
    sens = np.array([[options[layer][p][1] ** 2 for layer, p in keys]])
    try:
        chosen, _ = solve_binary([options[layer][p][0] for layer, p in keys], equal=(one, 1), at_most=(sens, budget**2))
    except InfeasibleError:  # cannot happen with f32 at zero sensitivity, but be explicit
        return {layer: "f32" for layer in layer_ids}
    return {keys[j][0]: keys[j][1] for j in chosen}


def plan(
    imported,
    *,
    mode: str,
    budget: float | None,
    price,
    amx_available: bool = True,
    calibration: int = 2,
    isa: str = "amx",
    allowed: Sequence[str] | None = None,
) -> PrecisionPlan:
    """Choose every layer's precision (see the module docstring). `mode`: f32, bf16 or int8
    (every eligible layer; a plan over `budget` falls back to f32), or auto (the integer
    program under `budget`); `budget` defaults to 1% in every mode (`run` checks the output
    against it). `price(layer, precision)` → (AMX schedule,
    predicted seconds) is the latency model (`costmodel/amx.py: LayerPrices`). A plan whose
    output error exceeds the budget never runs: it falls back to f32 and says why. `isa`:
    the kernels the layers lower to, "amx" or "avx512" (`vdpbf16ps` / `vpdpbusd` without AMX;
    int8 only for layers with a 2-D weight, whose sums make up for the u8 shift;
    `amx_available` then means "low precision runs"); `allowed`: the precisions the CPU
    has instructions for (default: both)."""
    if mode not in MODES:
        raise PrecisionError(f"unknown precision {mode!r} (one of {', '.join(MODES)})")
    if budget is not None and not budget > 0:
        raise PrecisionError(f"the error budget must be positive, got {budget}")
    n_bound = len(imported.params)
    all_layers = layers(imported.module, n_bound)
    f32_only = [PrecisionDecision(x.index) for x in all_layers]
    if mode == "f32" or not all_layers:
        return PrecisionPlan(mode, budget, all_layers, f32_only)
    if budget is None:  # (bf16, int8 too: a compile is checked against it, so a plan over it never runs)
        budget = DEFAULT_BUDGET
    if not amx_available:
        return PrecisionPlan(
            mode, budget, all_layers, f32_only, message="no AMX, AVX512-BF16 or AVX512-VNNI here: running f32"
        )
    allowed = tuple(allowed) if allowed is not None else ISA_PRECISIONS[isa]
    if mode not in ("auto", *allowed):
        return PrecisionPlan(mode, budget, all_layers, f32_only, message=f"this CPU has no {mode} kernels: running f32")
    if imported.fx is None or imported.model is None:
        raise PrecisionError(
            f"{imported.spec}: low precision needs the PyTorch model (for calibration), not MLIR input"
        )
    emu = Emulator(imported.fx, imported.params, all_layers)
    inputs = calibration_inputs(imported.inputs, calibration)
    amax: dict = {}
    envs: list[dict] = [{} for _ in inputs]  # every node's f32 value: a lowered run starts at its first layer
    refs = [emu.run(x, record=amax, keep=env) for x, env in zip(inputs, envs)]

    def error(lowered: Mapping[int, PrecisionDecision]) -> float:
        return max(relative_error(emu.run(x, lowered, reuse=env), r) for x, r, env in zip(inputs, refs, envs))

    f32_s = {x.index: price(x, "f32")[1] for x in all_layers}
    candidates: dict[int, dict[str, PrecisionDecision]] = {}
    for layer in all_layers:
        a_max, b_max = amax.get(layer.index, (0.0, 0.0))
        options = {"f32": PrecisionDecision(layer.index, "f32", sensitivity=0.0, f32_s=f32_s[layer.index])}
        wanted = [p for p in layer.eligible if p in allowed and (mode == "auto" or p == mode)]
        if isa == "avx512" and (layer.weight is None or layer.batch > 1):  # vpdpbusd needs a 2-D weight (u8 shift)
            wanted = [p for p in wanted if p != "int8"]
        for p in wanted:
            sched, seconds = price(layer, p)
            if seconds is None:  # no price for it (no f32 price to scale): not a candidate
                continue
            d = PrecisionDecision(
                layer.index,
                p,
                act_scale=max(a_max, 1e-12) / 127.0 if p == "int8" else None,
                act_scale_b=max(b_max, 1e-12) / 127.0 if p == "int8" else None,
                schedule=sched,
                f32_s=f32_s[layer.index],
                predicted_s=seconds,
            )
            options[p] = dataclasses.replace(d, sensitivity=error({layer.index: d}))
        candidates[layer.index] = options

    def fallback(message: str, err: float | None = None) -> PrecisionPlan:
        decisions = [candidates[x.index]["f32"] for x in all_layers]
        return PrecisionPlan(mode, budget, all_layers, decisions, error=err, message=message)

    if mode in ("bf16", "int8"):
        chosen = {i: opts.get(mode, opts["f32"]) for i, opts in candidates.items()}
        lowered = {i: d for i, d in chosen.items() if d.precision != "f32"}
        err = error(lowered)
        if budget is not None and err > budget:
            return fallback(
                f"{mode} everywhere gives output error {err:.2e} > budget {budget:g}: running f32 "
                f"(try --precision auto, or a larger --error-budget)",
                err,
            )
        return PrecisionPlan(mode, budget, all_layers, [chosen[x.index] for x in all_layers], error=err)

    # auto: the integer program, tightened until the combined error (not just the
    # quadrature sum of per-layer sensitivities) fits the budget
    table = {  # (predicted seconds, sensitivity); a layer the f32 model cannot price stays f32
        i: {
            p: ((d.predicted_s if d.predicted_s is not None else d.f32_s) or 0.0, d.sensitivity or 0.0)
            for p, d in opts.items()
            if d.f32_s is not None or p == "f32"
        }
        for i, opts in candidates.items()
    }
    target_budget = budget
    for _ in range(8):
        choice = solve(table, target_budget)
        chosen = {i: candidates[i][p] for i, p in choice.items()}
        lowered = {i: d for i, d in chosen.items() if d.precision != "f32"}
        if not lowered:
            faster = [
                d
                for o in candidates.values()
                for d in o.values()
                if d.precision != "f32" and d.f32_s is not None and d.predicted_s < d.f32_s
            ]
            if not faster:
                return fallback("no layer is predicted faster in bf16 or int8 here: running f32")
            least = min(d.sensitivity for d in faster)
            return fallback(
                f"error budget {budget:g} is too small for any speedup (the least sensitive layer that would "
                f"be faster errs {least:.2e} alone): running f32"
            )
        err = error(lowered)
        if err <= budget:
            return PrecisionPlan(mode, budget, all_layers, [chosen[x.index] for x in all_layers], error=err)
        target_budget *= 0.8 * budget / err
    return fallback(f"no plan within error budget {budget:g} found (last tried errs {err:.2e}): running f32", err)
