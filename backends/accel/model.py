"""A whole model on the accelerator: partition, calibration, integer lowering, runtime.

On the backends floor; reads an exported PyTorch program (ATen graph) and writes programs
for the simulator. The flow:

1. **Partition.** Every `conv2d` (dense, or depthwise) with batch 1 and every `linear`
   whose weight is a constant is an accelerator layer, together with the ops that follow
   it alone — batch norm (folded into the weights), a residual `add`, ReLU / ReLU6
   (clamps). The layer runs where its last absorbed op stood (a residual's other branch
   is computed first). Everything else (pooling, softmax, layer norm, GELU, attention's
   activation × activation products, …) runs on the host in float through PyTorch. Where a
   layer's cost on the host would beat the accelerator, the caller's `place` callback may
   keep it there (the planner prices that choice).
2. **Calibration.** The float model runs once on the calibration inputs; every tensor that
   crosses into or out of the accelerator gets a symmetric int8 scale (max |x| / 127).
3. **Integer lowering.** Weights per output channel in int8, bias in int32, the dyadic
   requantization (`lower.ConvLayer`), residual rescaling, clamps. Channels are padded to
   the block; tensors live in DRAM blocked as `[C/block][H][W][block]`.
4. **Programs.** Consecutive accelerator layers form one program (a binary); the host
   quantizes what it hands over and dequantizes what it takes back.

`AccelModel.run(inputs, engine="sim")` executes on the simulator; `engine="reference"`
computes each accelerator layer with the exact integer reference instead, so the two
results must agree bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel import sim
from tilecraft.backends.accel.target import AccelTarget
from tilecraft.dialects import accel as isa

aten = torch.ops.aten
_CONV = aten.conv2d.default
_LINEAR = aten.linear.default
_BN = aten._native_batch_norm_legit_no_training.default
_ADD = aten.add.Tensor
_RELU = (aten.relu.default, aten.relu_.default)
_HARDTANH = (aten.hardtanh.default, aten.hardtanh_.default)


class AccelCompileError(ValueError):
    """A model the accelerator flow cannot take (one line, naming the op)."""


@dataclasses.dataclass
class LayerPlan:
    """One accelerator layer: its integer layer, schedule and the graph values it joins."""

    layer: L.ConvLayer
    schedule: L.ConvSchedule | None
    anchor: torch.fx.Node
    last: torch.fx.Node  # the value it produces (the chain's last op)
    inp: torch.fx.Node
    skip: torch.fx.Node | None
    main: torch.fx.Node  # the value before the residual add / clamp (calibration)
    kind: str  # "conv" | "linear"
    out_channels: int
    relu6: bool = False
    relu: bool = False
    bn: tuple | None = None
    bias: torch.fx.Node | None = None
    absorbed: tuple = ()


@dataclasses.dataclass
class RunStats:
    cycles: int = 0
    gemm_ops: int = 0
    dram_read: int = 0
    dram_write: int = 0
    programs: int = 0
    instructions: int = 0
    layer_outputs: dict = dataclasses.field(default_factory=dict)

    @property
    def utilization(self) -> float:
        return self.gemm_ops / self.cycles if self.cycles else 0.0


def _const(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach()
    return None


def _pair(v, default: int):
    if v is None:
        return [default, default]
    if isinstance(v, str):
        return v
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v


def _sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


class AccelModel:
    """A model compiled for the accelerator (see the module docstring)."""

    def __init__(
        self,
        module: torch.nn.Module,
        example_inputs: Sequence[torch.Tensor],
        target: AccelTarget,
        *,
        calibration: Sequence[Sequence[torch.Tensor]] | None = None,
        plan: Callable[[list[L.ConvLayer]], Sequence[L.ConvSchedule]] | None = None,
        place: Callable[[L.ConvLayer], bool] | None = None,
    ):
        self.target = target
        self.eager = module.eval()
        self.example_inputs = tuple(example_inputs)
        try:
            ep = torch.export.export(module.eval(), tuple(example_inputs)).run_decompositions({})
        except Exception as exc:  # torch.export's refusals come in many types
            first = (str(exc).splitlines() or [""])[0][:200]
            raise AccelCompileError(f"torch.export failed: {type(exc).__name__}: {first}") from None
        self.gm = ep.module()
        self._out_spec = ep.call_spec.out_spec
        self.graph = self.gm.graph
        self.layers = self._partition()
        if place is not None:
            self.layers = [p for p in self.layers if place(p.layer)]
        values = self._calibrate([tuple(example_inputs)] + [tuple(c) for c in (calibration or [])])
        self._quantize(values)
        self._order()
        self.resident: dict[tuple[int, int], int] = {}  # (producer, consumer) -> input-buffer entry
        if plan:
            chosen = plan([p.layer for p in self.layers], self.chain_edges())
            if isinstance(chosen, tuple):
                chosen, self.resident = chosen[0], dict(chosen[1])
        else:
            chosen = [self.default_schedule(p.layer) for p in self.layers]
        for p, s in zip(self.layers, chosen, strict=True):
            L.check_schedule(p.layer, s, target)
            p.schedule = s
        self._build()

    def chain_edges(self) -> list[tuple[int, int]]:
        """(producer, consumer) layer indices whose tensor could stay on chip: the consumer
        runs right after the producer in one program, the tensor is its input and has no
        other use, and the consumer reads it unpadded."""
        index = {id(p): i for i, p in enumerate(self.layers)}
        edges = []
        for kind, item in self.steps:
            if kind != "accel":
                continue
            for a, b in zip(item, item[1:]):
                if b.inp is a.last and len(a.last.users) == 1 and b.layer.pad == 0 and b.skip is not a.last:
                    edges.append((index[id(a)], index[id(b)]))
        return edges

    def default_schedule(self, layer: L.ConvLayer) -> L.ConvSchedule:
        """The backend's heuristic schedule (the largest double-buffered tile)."""
        from tilecraft.backends.accel.backend import AccelBackend

        try:
            return AccelBackend().default_decision(layer, self.target)
        except L.ScheduleError as exc:
            raise AccelCompileError(str(exc)) from None

    # ------------------------------------------------------------------ partition
    def _partition(self) -> list[LayerPlan]:
        plans = []
        self._claimed: set[torch.fx.Node] = set()
        self._layouts: dict[str, tuple] = {}  # tensor -> (layout, channels, h, w) as a layer sees it
        for node in self.graph.nodes:
            if node.op != "call_function" or node.target not in (_CONV, _LINEAR):
                continue
            plan = self._match(node)
            if plan is not None:
                if self._layouts_agree(plan):
                    plans.append(plan)
                    self._claimed.update(plan.absorbed)
        # A residual add whose sum goes only to the host stays there, in float: fusing it
        # saves no traffic (the sum would leave in int8 anyway) and would quantize the
        # residual stream once more (transformers' x + sublayer(x) before a layer norm).
        feeds_accel = {p.inp for p in plans} | {p.skip for p in plans if p.skip is not None}
        for p in plans:
            if p.skip is not None and p.last not in feeds_accel:
                keep = p.absorbed.index(p.main) + 1
                p.absorbed, p.last, p.skip, p.relu, p.relu6 = p.absorbed[:keep], p.main, None, False, False
        return plans

    def _match(self, node: torch.fx.Node) -> LayerPlan | None:
        gm = self.gm
        x, w = node.args[0], _const(gm, node.args[1])
        bias_node = node.args[2] if len(node.args) > 2 else None
        if w is None or (bias_node is not None and _const(gm, bias_node) is None):
            return None
        xs = x.meta["val"].shape
        if node.target == _CONV:
            args = list(node.args) + [None] * (7 - len(node.args))
            stride, padding, dilation = (_pair(args[i], d) for i, d in ((3, 1), (4, 0), (5, 1)))
            groups = args[6] if args[6] is not None else 1
            if (
                len(xs) != 4
                or xs[0] != 1
                or isinstance(padding, str)
                or len(set(stride)) != 1
                or len(set(padding)) != 1
                or set(dilation) != {1}
            ):
                return None
            cout, cin_g, kh, kw = w.shape
            depthwise = groups != 1
            if depthwise and not (groups == xs[1] == cout and cin_g == 1):
                return None
            if kh != kw or padding[0] > 15:
                return None
            layer = L.ConvLayer(node.name, xs[1], cout, xs[2], xs[3], kh, kw, stride[0], padding[0], depthwise)
            kind = "conv"
        else:
            m = math.prod(xs[:-1])
            layer = L.ConvLayer(node.name, xs[-1], w.shape[0], 1, m)
            kind = "linear"
        plan = LayerPlan(layer, None, node, node, x, None, node, kind, w.shape[0], bias=bias_node)
        absorbed = [node]
        cur = node
        nxt = self._next(cur)
        if kind == "conv" and nxt is not None and nxt.target == _BN and nxt.args[0] is cur:
            get = _sole_user(nxt)
            if get is not None and get.target.__name__ == "getitem" and get.args[1] == 0:
                gamma, beta, mean, var = (_const(gm, a) for a in nxt.args[1:5])
                if mean is None or var is None:  # statistics that are not constants: no folding
                    plan.last = plan.main = node
                    plan.absorbed = (node,)
                    return plan
                gamma = torch.ones_like(mean) if gamma is None else gamma  # affine=False
                beta = torch.zeros_like(mean) if beta is None else beta
                plan.bn = (gamma, beta, mean, var, nxt.args[6])
                absorbed += [nxt, get]
                cur = get
                nxt = self._next(cur)
        plan.main = cur
        if nxt is not None and nxt.target == _ADD and len(nxt.args) == 2 and not nxt.kwargs.get("alpha"):
            other = nxt.args[1] if nxt.args[0] is cur else nxt.args[0]
            if (
                isinstance(other, torch.fx.Node)
                and other is not cur
                and tuple(other.meta["val"].shape) == tuple(cur.meta["val"].shape)
            ):
                plan.skip = other
                absorbed.append(nxt)
                cur = nxt
                nxt = self._next(cur)
        if nxt is not None and nxt.target in _RELU:
            plan.relu = True
            absorbed.append(nxt)
            cur = nxt
        elif nxt is not None and nxt.target in _HARDTANH and tuple(nxt.args[1:3]) == (0.0, 6.0):
            plan.relu6 = True
            absorbed.append(nxt)
            cur = nxt
        plan.last = cur
        plan.absorbed = tuple(absorbed)
        return plan

    def _layouts_agree(self, plan: LayerPlan) -> bool:
        """Record how the layer sees its tensors (`chw`: a convolution's NCHW; `pixels`: a
        linear layer's [..., C] as a 1×M image); one tensor seen two ways stays on the host."""
        lay, seen = plan.layer, self._layouts
        kind = "chw" if plan.kind == "conv" else "pixels"
        mine = {plan.inp.name: (kind, lay.cin, lay.h, lay.w)}
        # the output (and a residual's other input) as the chain's last value will be seen
        out = (kind, lay.cout, lay.oh, lay.ow)
        for n in self._chain_values(plan):
            mine[n.name] = out
        if any(seen.get(k, v) != v for k, v in mine.items()):
            return False
        seen.update(mine)
        return True

    @staticmethod
    def _chain_values(plan: LayerPlan) -> list[torch.fx.Node]:
        vals = [n for n in plan.absorbed if n.target != _BN]  # every value the chain produces
        return vals + ([plan.skip] if plan.skip is not None else [])

    def _next(self, node: torch.fx.Node) -> torch.fx.Node | None:
        """The op a layer may absorb after `node`: its only user, not another layer's."""
        user = _sole_user(node)
        return None if user is None or user in self._claimed else user

    # ------------------------------------------------------------------ calibration
    def _calibrate(self, batches: list[tuple]) -> dict[str, float]:
        """max |value| of every node over the calibration batches; the values themselves of
        the tensors that cross into or out of the accelerator (for their scales)."""
        crossing = {n.name for p in self.layers for n in (p.inp, p.last, p.skip, p.main) if n is not None}
        peak: dict[str, float] = {}
        self._samples: dict[str, list[torch.Tensor]] = {}
        for batch in batches:
            interp = _Recorder(self.gm, crossing)
            with torch.no_grad():
                interp.run(*batch)
            for name, v in interp.values.items():
                peak[name] = max(peak.get(name, 0.0), v)
            for name, t in interp.kept.items():
                self._samples.setdefault(name, []).append(t)
        self._peaks = peak
        return peak

    def _scale(self, node: torch.fx.Node, values: dict[str, float]) -> float:
        """The symmetric int8 scale with the least squared error over the calibration values:
        clipping the rare largest values buys a finer step for all the others."""
        peak = max(values.get(node.name, 0.0), 1e-8)
        samples = self._samples.get(node.name)
        if not samples:
            return peak / 127.0
        x = torch.cat([t.reshape(-1) for t in samples]).double()
        best, best_err = peak / 127.0, None
        for frac in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5):
            s = peak * frac / 127.0
            err = float(((torch.round(x / s).clamp(-127, 127) * s - x) ** 2).sum())
            if best_err is None or err < best_err:
                best, best_err = s, err
        return best

    def _quantize(self, values: dict[str, float]) -> None:
        b = self.target.block
        self.scales: dict[str, float] = {}
        for p in self.layers:
            for n in (p.inp, p.last) + ((p.skip,) if p.skip is not None else ()):
                self.scales[n.name] = self._scale(n, values)
        for p in self.layers:
            layer = p.layer
            w = _const(self.gm, p.anchor.args[1]).double()
            bias = (
                _const(self.gm, p.bias).double() if p.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            )
            if p.bn is not None:
                gamma, beta, mean, var, eps = (t.double() if isinstance(t, torch.Tensor) else t for t in p.bn)
                k = gamma / torch.sqrt(var + eps)
                w = w * k.reshape(-1, *([1] * (w.dim() - 1)))
                bias = (bias - mean) * k + beta
            if p.kind == "linear":
                w = w[:, :, None, None]
            s_in, s_out = self.scales[p.inp.name], self.scales[p.last.name]
            peak_w = w.abs().amax(dim=(1, 2, 3))
            live = peak_w > 0  # a pruned (all-zero) channel: its products are 0, its bias remains
            spare = peak_w[live].max() if bool(live.any()) else torch.tensor(127.0, dtype=peak_w.dtype)
            s_w = torch.where(live, peak_w, spare) / 127.0
            wq = torch.round(w / s_w[:, None, None, None]).clamp(-127, 127).to(torch.int8).numpy()
            cout, cin = layer.cout, layer.cin
            cout_p, cin_p = L.blocks(cout, b), L.blocks(cin, b)
            wpad = np.zeros((cout_p, 1 if layer.depthwise else cin_p, layer.kh, layer.kw), np.int8)
            wpad[:cout, : wq.shape[1]] = wq
            acc_scale = (s_in * s_w).numpy()
            bias_q = np.zeros(cout_p, np.int64)
            bias_q[:cout] = np.round(bias.numpy() / acc_scale)
            # the accumulator's reach: the largest calibrated pre-activation value of any
            # channel in its accumulator units (bias included), with margin
            peak_c = self._channel_peaks(p)
            reach = float(np.max(peak_c / acc_scale, initial=0.0)) * 4 + 1
            pre = min(31, max(0, math.ceil(math.log2(reach)) - 16))
            mult, shift = np.zeros(cout_p, np.int64), np.ones(cout_p, np.int64)
            for c in range(cout):
                mult[c], shift[c] = L.dyadic(float(acc_scale[c]) / s_out * (1 << pre), bits=15, max_shift=31)
            layer.cin, layer.cout = cin_p, cout_p
            layer.weight, layer.bias = wpad, np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int32)
            layer.pre_shift, layer.mult, layer.shift = pre, mult.astype(np.int32), shift.astype(np.int32)
            if p.skip is not None:
                layer.residual = True
                layer.res_mult, layer.res_shift = L.dyadic(self.scales[p.skip.name] / s_out, bits=15, max_shift=15)
            layer.lo = 0 if (p.relu or p.relu6) else -127
            layer.hi = min(127, int(round(6.0 / s_out))) if p.relu6 else 127

    def _channel_peaks(self, p: LayerPlan) -> np.ndarray:
        """max |value| per output channel of the layer's pre-activation value (calibration)."""
        samples = self._samples.get(p.main.name) or []
        cout = p.out_channels
        if not samples:
            return np.full(cout, self._peaks.get(p.main.name, 1.0))
        x = torch.cat(
            [t.reshape(-1, cout) if p.kind == "linear" else t.transpose(0, 1).reshape(cout, -1).t() for t in samples]
        )
        return x.abs().amax(dim=0).double().numpy()

    # ------------------------------------------------------------------ programs
    def _order(self) -> None:
        """Host ops and runs of accelerator layers, in graph order (a layer at its last op)."""
        at = {p.last: p for p in self.layers}
        inside = {n for p in self.layers for n in p.absorbed}
        self.steps: list = []  # ("host", node) | ("accel", [LayerPlan])
        for node in self.graph.nodes:
            if node in at:
                if self.steps and self.steps[-1][0] == "accel":
                    self.steps[-1][1].append(at[node])
                else:
                    self.steps.append(("accel", [at[node]]))
            elif node not in inside and node.op == "call_function":
                self.steps.append(("host", node))
            elif node.op in ("placeholder", "get_attr", "output"):
                self.steps.append(("host", node))

    def _build(self) -> None:
        """DRAM layout and one binary per run of consecutive layers."""
        t = self.target
        index = {id(p): i for i, p in enumerate(self.layers)}
        res_in = {b: addr for (a, b), addr in self.resident.items()}
        res_out = {a: addr for (a, b), addr in self.resident.items()}
        self.on_chip = {self.layers[a].last.name for a, _ in self.resident}
        # DRAM: every tensor the accelerator touches, weights and constants
        align = max(t.block * t.block, 4 * t.block, 64)
        self._dram_size = 0
        self.addr: dict[str, int] = {}  # byte offsets

        def alloc(key: str, nbytes: int) -> int:
            if key not in self.addr:
                self.addr[key] = self._dram_size
                self._dram_size += -(-nbytes // align) * align
            return self.addr[key]

        self.tensor_geom: dict[str, tuple[int, int, int]] = {}  # name -> (channels padded, h, w)
        self.tensor_kind: dict[str, str] = {}  # name -> "chw" | "pixels"
        for p in self.layers:
            lay = p.layer
            kind = "chw" if p.kind == "conv" else "pixels"
            for n, geom in (
                (p.inp, (lay.cin, lay.h, lay.w)),
                (p.last, (lay.cout, lay.oh, lay.ow)),
                (p.skip, (lay.cout, lay.oh, lay.ow)),
            ):
                if n is not None:
                    self.tensor_geom[n.name], self.tensor_kind[n.name] = geom, kind
        for name, (c, h, w) in self.tensor_geom.items():
            alloc("t:" + name, c * h * w)
        self._weights = {}
        for p in self.layers:
            lay = p.layer
            wb = block_weights(lay, t.block)
            const = np.stack([lay.bias, lay.mult, (1 << (lay.shift.astype(np.int64) - 1)).astype(np.int32), lay.shift])
            cb = const.astype(np.int32).reshape(4, lay.cout // t.block, t.block).transpose(1, 0, 2).copy()
            alloc("w:" + p.anchor.name, wb.nbytes)
            alloc("c:" + p.anchor.name, cb.nbytes)
            self._weights[p.anchor.name] = (wb, cb)
        self.programs: list[bytes] = []
        self.program_layers: list[list[LayerPlan]] = []
        for kind, item in self.steps:
            if kind != "accel":
                continue
            insns: list[dict] = []
            uops: list[tuple[int, int, int]] = []
            for i, p in enumerate(item):
                b = t.block
                addr = L.Addresses(
                    inp=self.addr["t:" + p.inp.name] // b,
                    wgt=self.addr["w:" + p.anchor.name] // (b * b),
                    const=self.addr["c:" + p.anchor.name] // (4 * b),
                    out=self.addr["t:" + p.last.name] // b,
                    skip=self.addr["t:" + p.skip.name] // b if p.skip is not None else 0,
                )
                k = index[id(p)]
                L.emit_layer(p.layer, p.schedule, t, addr, insns, uops, 0, sync_in=i > 0, sync_out=i + 1 < len(item),
                             resident_in=res_in.get(k), resident_out=res_out.get(k))  # fmt: skip
            insns.append(dict(op="finish"))
            self.programs.append(isa.assemble_fields(insns, uops))
            self.program_layers.append(item)

    def dram_image(self) -> np.ndarray:
        dram = np.zeros(self._dram_size, np.uint8)
        for name, (wb, cb) in self._weights.items():
            for key, arr in (("w:" + name, wb), ("c:" + name, cb)):
                a = self.addr[key]
                dram[a : a + arr.nbytes] = arr.view(np.uint8).ravel()
        return dram

    # ------------------------------------------------------------------ runtime
    def run(self, inputs: Sequence[torch.Tensor], *, engine: str = "sim") -> tuple[object, RunStats]:
        """Execute the model; `engine` "sim" (the simulator) or "reference" (numpy)."""
        stats = RunStats()
        dram = self.dram_image()
        env: dict[str, object] = {}
        in_dram: set[str] = set()
        accel_made: set[str] = set()
        placeholders = iter(inputs)

        def host_value(node):
            if node.name not in env and node.name in accel_made:
                env[node.name] = self._dequantize(dram, node)
            return env[node.name]

        def arg(a):
            return torch.fx.node.map_arg(a, host_value)

        prog = 0
        for kind, item in self.steps:
            if kind == "host":
                node = item
                if node.op == "placeholder":
                    env[node.name] = next(placeholders)
                elif node.op == "get_attr":
                    env[node.name] = _const(self.gm, node)
                elif node.op == "output":
                    flat = list(arg(node.args[0]))
                    return torch.utils._pytree.tree_unflatten(flat, self._out_spec), stats
                else:
                    with torch.no_grad():
                        env[node.name] = node.target(*arg(node.args), **arg(node.kwargs))
                continue
            made_here = {p.last.name for p in item}
            for p in item:  # hand over what the host made
                for n in (p.inp, p.skip):
                    if n is not None and n.name not in in_dram and n.name not in made_here:
                        self._quantize_into(dram, n, host_value(n))
                        in_dram.add(n.name)
            if engine == "sim":
                r = sim.simulate(self.programs[prog], self.target, dram)
                stats.cycles += r.cycles
                stats.gemm_ops += r.gemm_ops
                stats.dram_read += r.dram_read
                stats.dram_write += r.dram_write
                stats.instructions += r.instructions
            else:
                for p in item:
                    x = self._read(dram, p.inp.name)
                    skip = self._read(dram, p.skip.name) if p.skip is not None else None
                    self._write(dram, p.last.name, L.reference_layer(p.layer, x, skip))
            stats.programs += 1
            prog += 1
            for p in item:
                in_dram.add(p.last.name)
                accel_made.add(p.last.name)
                if p.last.name not in self.on_chip:  # a tensor kept on chip never reaches DRAM
                    stats.layer_outputs[p.last.name] = self._read(dram, p.last.name).copy()
        raise AccelCompileError("the graph has no output")  # pragma: no cover

    def _read(self, dram: np.ndarray, name: str) -> np.ndarray:
        c, h, w = self.tensor_geom[name]
        b = self.target.block
        a = self.addr["t:" + name]
        raw = dram[a : a + c * h * w].view(np.int8).reshape(c // b, h, w, b)
        return raw.transpose(0, 3, 1, 2).reshape(c, h, w)

    def _write(self, dram: np.ndarray, name: str, x: np.ndarray) -> None:
        c, h, w = self.tensor_geom[name]
        b = self.target.block
        a = self.addr["t:" + name]
        dram[a : a + c * h * w] = x.reshape(c // b, b, h, w).transpose(0, 2, 3, 1).reshape(-1).view(np.uint8)

    def _quantize_into(self, dram: np.ndarray, node: torch.fx.Node, value: torch.Tensor) -> None:
        c, h, w = self.tensor_geom[node.name]
        x = value.detach().float()
        x = x.reshape(h, w, -1).permute(2, 0, 1) if self.tensor_kind[node.name] == "pixels" else x.reshape(-1, h, w)
        q = torch.round(x / self.scales[node.name]).clamp(-127, 127).to(torch.int8).numpy()
        full = np.zeros((c, h, w), np.int8)
        full[: q.shape[0]] = q
        self._write(dram, node.name, full)

    def _dequantize(self, dram: np.ndarray, node: torch.fx.Node) -> torch.Tensor:
        shape = tuple(node.meta["val"].shape)
        q = torch.from_numpy(self._read(dram, node.name).astype(np.float32)) * self.scales[node.name]
        if self.tensor_kind[node.name] == "chw":
            return q[: shape[1]].reshape(shape)
        return q[: shape[-1]].reshape(shape[-1], -1).t().reshape(shape)

    # ------------------------------------------------------------------ reports
    def on_host(self) -> list[str]:
        return [n.name for kind, n in self.steps if kind == "host" and n.op == "call_function"]


def block_weights(layer: L.ConvLayer, b: int) -> np.ndarray:
    """A layer's int8 weights as DRAM weight entries [Cout/b][Cin/b][KH][KW][b][b] (depthwise:
    block-diagonal [C/b][KH][KW][b][b])."""
    w = layer.weight
    if layer.depthwise:
        out = np.zeros((layer.cout // b, layer.kh, layer.kw, b, b), np.int8)
        for c in range(layer.cout):
            out[c // b, :, :, c % b, c % b] = w[c, 0]
        return out
    return w.reshape(layer.cout // b, b, layer.cin // b, b, layer.kh, layer.kw).transpose(0, 2, 4, 5, 1, 3).copy()


class _Recorder(torch.fx.Interpreter):
    """Runs the float graph; records max |value| of every tensor node and keeps the values
    of the nodes named in `keep`."""

    def __init__(self, gm, keep: set[str]):
        super().__init__(gm)
        self.values: dict[str, float] = {}
        self.keep, self.kept = keep, {}

    def run_node(self, n):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            self.values[n.name] = float(out.detach().abs().max())
            if n.name in self.keep:
                self.kept[n.name] = out.detach().clone()
        return out
