"""Mixed precision: which contractions run in bf16 or int8 (on AMX), and the rewrite.

On the passes floor; sits before fusion in the flow (`compiler/driver.py`, stage
`precision`). Reads a linalg-on-tensors module, its bound weights and the plan (the
module's `tc.precision` records); writes the module back with each lowered layer
rewritten, and the weights it packs replaced in the bound arguments.

- `layers(module)`: the contractions (matmul, batch_matmul, conv2d NCHW) and, for each,
  the precisions it can run in.
- `rewrite(module, params, decisions)`: a lowered layer becomes a conversion of its
  activation (bf16 rounding, or int8 quantization with a calibrated per-tensor scale), a
  VNNI-packed B operand (weights packed once, here; activations packed at run time; a
  convolution's input gathered im2col-style straight into the packed layout), a
  `linalg.generic` contraction marked `tc.amx` (lowered by `backends/cpu/amx.py`) and, for
  int8, a dequantization with per-channel weight scales. Every new op has exact linalg
  semantics: the module computes the same with or without the AMX lowering.
- the plan (`costmodel/precision_plan.py`, on the costmodel floor): per-layer
  sensitivity (the output error when only that layer runs lower, on calibration inputs),
  per-layer predicted latency at each precision, and the choice: an integer program
  (HiGHS through `scipy.optimize.milp`) minimizing predicted latency under an error
  budget — HAWQ-V3's formulation with a learned latency model instead of bit-operation
  counts. `PrecisionDecision` records (defined here) carry the result.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch_mlir import ir

from tilecraft.dialects import tc
from tilecraft.dialects.irutil import (
    bound_arg_number,
    call_helper,
    element_type_of,
    entry_func,
    erase_if_dead,
    inline_helpers,
    int_list_attr,
    is_zero_fill,
    shape_of,
    tensor_t,
)
from tilecraft.dialects.tc import AMX, AMX_INIT
from tilecraft.passes.base import ModulePass, Weights

_VNNI = {"bf16": 2, "int8": 4}
_ELEM = {"bf16": "bf16", "int8": "i8"}
_CONTRACTIONS = ("linalg.matmul", "linalg.batch_matmul", "linalg.conv_2d_nchw_fchw")


ISAS = ("amx", "avx512")


class PrecisionError(ValueError):
    """A precision request that cannot be honoured (unknown layer, ineligible precision)."""


@dataclasses.dataclass(frozen=True)
class AmxSchedule:
    """How an AMX contraction is blocked: `mr × nr` accumulator tiles per register block
    (at most 8 tiles with the A and B tiles: mr + nr + mr·nr ≤ 8 avoids spills), `kc` K
    elements per chunk between accumulator loads and stores (a multiple of the tile's K),
    loop order `ij` (rows outer: a row panel of A stays in cache) or `ji`, and with `ij`
    an optional cache block of `nc` columns (0: none): the rows sweep one panel of B
    (K × nc) at a time, so that panel stays in L2 instead of streaming once per row block."""

    mr: int = 2
    nr: int = 2
    kc: int = 1024
    order: str = "ij"
    nc: int = 0
    # "amx" (tiles), or "avx512": `backends/cpu/avx512_dot.py`'s vdpbf16ps register blocks of
    # mr rows × nr 16-column vectors (kc and nc unused), for a CPU with AVX512-BF16 and no AMX
    isa: str = "amx"

    def __post_init__(self):
        if self.isa not in ISAS:
            raise PrecisionError(f"unknown low-precision kernel isa {self.isa!r} (one of {', '.join(ISAS)})")
        if min(self.mr, self.nr, self.kc) < 1 or self.nc < 0 or self.order not in ("ij", "ji"):
            raise PrecisionError(
                f"bad low-precision schedule: mr={self.mr} nr={self.nr} kc={self.kc} nc={self.nc} order={self.order!r}"
                " (mr, nr, kc >= 1; nc >= 0; order ij or ji)"
            )

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        if not d["nc"]:  # the form measured before nc existed: corpus rows keep matching
            del d["nc"]
        if d["isa"] == "amx":  # likewise before isa existed
            del d["isa"]
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> AmxSchedule:
        return AmxSchedule(**json.loads(text))


def generic_maps(lead: int, *, blocked: bool) -> tuple[list[str], list[str]]:
    """(indexing maps, iterator types) of the `tc.amx` generic over A `[lead.., M, K/v, v]`,
    B `[lead.., K/v, N, v]` and C `[lead.., M, N]`, or blocked B `[lead.., N/16, K/v, 16,
    v]` and C `[lead.., M, N/16, 16]`. Loops: lead.., m, n (blocked: nb, ni), k, vv."""
    ld = [f"d{i}" for i in range(lead)]
    if blocked:
        m, nb, ni, k, vv = (f"d{lead + i}" for i in range(5))
        dims = [*ld, m, nb, ni, k, vv]
        results = [[*ld, m, k, vv], [*ld, nb, k, ni, vv], [*ld, m, nb, ni]]
    else:
        m, n, k, vv = (f"d{lead + i}" for i in range(4))
        dims = [*ld, m, n, k, vv]
        results = [[*ld, m, k, vv], [*ld, k, n, vv], [*ld, m, n]]
    maps = [f"affine_map<({', '.join(dims)}) -> ({', '.join(r)})>" for r in results]
    iters = ["parallel"] * (len(dims) - 2) + ["reduction"] * 2
    return maps, iters


SPACE = tuple(
    AmxSchedule(mr, nr, kc, order, nc)
    for mr, nr in ((2, 2), (1, 3), (3, 1), (1, 2), (2, 1), (1, 1))
    for kc in (256, 1024)
    for order, nc in (("ij", 0), ("ji", 0), ("ij", 512))
)


def default_schedule(m: int, n: int, k: int) -> AmxSchedule:
    """2 × 2 blocks, B panels of 512 columns (the best of `SPACE` at 1024³, bf16 with
    blocked B), fewer tiles where an edge is small."""
    mr = 2 if m >= 32 else 1
    nr = 2 if n >= 32 else 1
    return AmxSchedule(mr, nr, 1024, "ij", 512 if n > 512 else 0)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One contraction as a GEMM: C[(batch,) M, N] += A[(batch,) M, K] · B[(batch,) K, N].

    A convolution is W[F, KH·KW·C] · cols[KH·KW·C, OH·OW] (M = F, N = OH·OW)."""

    index: int  # position among the module's contractions (module order)
    op: str  # linalg op name
    batch: int  # a batch_matmul's batch, a convolution's images (low precision only at 1), else 1
    m: int
    n: int
    k: int
    weight: int | None  # bound argument number of the weight operand (None: two activations)
    eligible: tuple[str, ...]  # precisions it can run in (always f32)
    why_not: str = ""  # why bf16/int8 are not eligible

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.n * self.k

    @property
    def blocked(self) -> bool:
        """B is packed blocked (`backends/cpu/amx.py`): a matmul's with N % 16 == 0 (a
        convolution's im2col B stays plain)."""
        return self.op != "linalg.conv_2d_nchw_fchw" and self.n % 16 == 0

    @property
    def name(self) -> str:
        shape = f"{self.batch}×" if self.batch > 1 else ""
        return f"{self.op.removeprefix('linalg.')} {shape}{self.m}×{self.n}×{self.k}"

    def why_not_in(self, precision: str) -> str:
        """Why the layer cannot run in `precision`: its own reason, else (a low precision
        it has no form for) the K its element groups need; "" where it can."""
        if self.why_not or precision not in _VNNI or precision in self.eligible:
            return self.why_not
        return f"K not a multiple of {_VNNI[precision]} ({precision})"


@dataclasses.dataclass(frozen=True)
class PrecisionDecision:
    """How one layer runs. Scales are the int8 quantization's: `act_scale` per tensor for
    the activation (and `act_scale_b` for a second activation operand); weights get
    per-channel scales computed from the weights at rewrite time."""

    layer: int
    precision: str = "f32"
    act_scale: float | None = None
    act_scale_b: float | None = None
    schedule: AmxSchedule | None = None
    sensitivity: float | None = None  # relative output error with only this layer lowered
    f32_s: float | None = None  # predicted latency at f32
    predicted_s: float | None = None  # predicted latency at `precision`

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["schedule"] = dataclasses.asdict(self.schedule) if self.schedule else None
        return d

    @staticmethod
    def from_json(d: Mapping) -> PrecisionDecision:
        d = dict(d)
        if d.get("schedule"):
            d["schedule"] = AmxSchedule(**d["schedule"])
        return PrecisionDecision(**d)


# ------------------------------------------------------------------------------ layers
def contraction_ops(module: ir.Module) -> list[ir.Operation]:
    body = entry_func(module).regions[0].blocks[0]
    return [op.operation for op in body.operations if op.operation.name in _CONTRACTIONS]


def describe(op: ir.Operation, index: int, n_bound: int) -> Layer:
    a, b, c = (op.operands[i] for i in range(3))
    dtypes = {element_type_of(a), element_type_of(b), element_type_of(c)}
    why = "" if dtypes == {"f32"} else f"element types {sorted(dtypes)} (f32 only)"
    if op.name == "linalg.matmul":
        (m, k), (_, n) = shape_of(a), shape_of(b)
        layer = Layer(index, op.name, 1, m, n, k, bound_arg_number(b, n_bound), ())
    elif op.name == "linalg.batch_matmul":
        (bs, m, k), (_, _, n) = shape_of(a), shape_of(b)
        layer = Layer(index, op.name, bs, m, n, k, None, ())
    else:
        (nb, ch, _, _), (f, _, kh, kw), (_, _, oh, ow) = shape_of(a), shape_of(b), shape_of(c)
        k = padded_channels(ch) * kh * kw
        layer = Layer(index, op.name, nb, f, oh * ow, k, bound_arg_number(b, n_bound), ())
        if nb != 1:
            why = why or f"batch {nb} (convolutions run low precision at batch 1)"
        elif int_list_attr(op, "dilations") != [1, 1]:
            why = why or "dilated convolution"
        elif layer.weight is None:
            why = why or "weight is not a bound argument used once"
    eligible = ["f32"]
    if not why:
        conv = op.name == "linalg.conv_2d_nchw_fchw"  # (channels padded: `padded_channels`)
        for p, v in _VNNI.items():
            if conv or layer.k % v == 0:
                eligible.append(p)
        if len(eligible) == 1:
            why = "K not a multiple of 2"
    return dataclasses.replace(layer, eligible=tuple(eligible), why_not=why)


def padded_channels(ch: int) -> int:
    """A convolution's input channels as its low-precision forms run it: whole VNNI groups
    of 4 (int8; bf16's pairs too), zero channels added where `ch` is not (an RGB stem's 3
    channels run as 4; each tap's K is its channels, so a group never spans two taps)."""
    return -(-ch // _VNNI["int8"]) * _VNNI["int8"]


def layers(module: ir.Module, n_bound: int) -> list[Layer]:
    """Every contraction of the module's function, in module order."""
    return [describe(op, i, n_bound) for i, op in enumerate(contraction_ops(module))]


# ------------------------------------------------------------------------------ rewrite
def _map(n: int, results: str) -> str:
    dims = ", ".join(f"d{i}" for i in range(n))
    return f"affine_map<({dims}) -> ({results})>"


def _generic(
    res: str,
    ins: list[tuple[str, str]],
    out: tuple[str, str],
    maps: list[str],
    iters: list[str],
    body: str,
    *,
    attrs: str = "",
) -> str:
    ins_v = ", ".join(v for v, _ in ins)
    ins_t = ", ".join(t for _, t in ins)
    extra = f", {attrs}" if attrs else ""
    its = ", ".join(f'"{i}"' for i in iters)
    return (
        f"{res} = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [{its}]{extra}}} "
        f"ins({ins_v} : {ins_t}) outs({out[0]} : {out[1]}) {{\n{body}\n}} -> {out[1]}"
    )


def _convert_body(h: _Helper, precision: str, scale: float | None, *, shifted: bool = False) -> str:
    """The region converting one f32 to bf16, or to int8 with `scale` (its constants are
    written to `h` first); `shifted`: the int8 value + 128 as an unsigned byte (1..255, the
    u8 operand of `vpdpbusd`; the contraction subtracts the shift's contribution)."""
    if precision == "bf16":
        return "^bb0(%x: f32, %o: bf16):\n  %t = arith.truncf %x : f32 to bf16\n  linalg.yield %t : bf16"
    inv, lo, hi, magic = h.tmp(), h.tmp(), h.tmp(), h.tmp()
    h(f"{inv} = arith.constant {1.0 / scale!r} : f32")
    h(f"{lo} = arith.constant -1.270000e+02 : f32")
    h(f"{hi} = arith.constant 1.270000e+02 : f32")
    h(f"{magic} = arith.constant 0x4B400000 : f32")  # 1.5 · 2^23: adding it rounds to nearest even
    if shifted:
        shift = h.tmp()
        h(f"{shift} = arith.constant 1.280000e+02 : f32")
        return (
            f"^bb0(%x: f32, %o: i8):\n  %s = arith.mulf %x, {inv} : f32\n"
            f"  %l = arith.maximumf %s, {lo} : f32\n  %h = arith.minimumf %l, {hi} : f32\n"
            f"  %m = arith.addf %h, {magic} : f32\n  %r = arith.subf %m, {magic} : f32\n"
            f"  %u = arith.addf %r, {shift} : f32\n  %w = arith.fptosi %u : f32 to i32\n"
            "  %q = arith.trunci %w : i32 to i8\n  linalg.yield %q : i8"
        )
    return (
        f"^bb0(%x: f32, %o: i8):\n  %s = arith.mulf %x, {inv} : f32\n"
        f"  %l = arith.maximumf %s, {lo} : f32\n  %h = arith.minimumf %l, {hi} : f32\n"
        f"  %m = arith.addf %h, {magic} : f32\n  %r = arith.subf %m, {magic} : f32\n"
        "  %q = arith.fptosi %r : f32 to i8\n  linalg.yield %q : i8"
    )


def _contract_body(precision: str, unsigned: str = "") -> str:
    """The multiply-accumulate region; int8 with `unsigned` "a" or "b": that operand's bytes
    are unsigned (zero-extended)."""
    if precision == "bf16":
        return (
            "^bb0(%x: bf16, %y: bf16, %z: f32):\n  %xf = arith.extf %x : bf16 to f32\n"
            "  %yf = arith.extf %y : bf16 to f32\n  %p = arith.mulf %xf, %yf : f32\n"
            "  %s = arith.addf %z, %p : f32\n  linalg.yield %s : f32"
        )
    xe, ye = ("extui" if unsigned == "a" else "extsi"), ("extui" if unsigned == "b" else "extsi")
    return (
        f"^bb0(%x: i8, %y: i8, %z: i32):\n  %xi = arith.{xe} %x : i8 to i32\n  %yi = arith.{ye} %y : i8 to i32\n"
        "  %p = arith.muli %xi, %yi : i32\n  %s = arith.addi %z, %p : i32\n  linalg.yield %s : i32"
    )


def quantize_per_channel(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per-channel quantization along `dim`: (q, scales)."""
    reduce = [d for d in range(w.dim()) if d != dim]
    amax = w.abs().amax(dim=reduce) if reduce else w.abs()
    scales = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    shape = [1] * w.dim()
    shape[dim] = -1
    q = torch.clamp(torch.round(w / scales.reshape(shape)), -127, 127).to(torch.int8)
    return q, scales


def _pack_vnni(b: torch.Tensor, v: int) -> torch.Tensor:
    """[(batch,) K, N] → [(batch,) K/v, N, v]: pairs (quads) of consecutive K rows interleaved."""
    *lead, k, n = b.shape
    return b.reshape(*lead, k // v, v, n).transpose(-1, -2).contiguous()


class _Helper:
    """Text of one private helper function that replaces one layer."""

    def __init__(self, name: str):
        self.name, self.args, self.lines, self.n = name, [], [], 0

    def arg(self, ty: str) -> str:
        v = f"%arg{len(self.args)}"
        self.args.append((v, ty))
        return v

    def tmp(self) -> str:
        self.n += 1
        return f"%v{self.n}"

    def __call__(self, text: str) -> None:
        self.lines.append(text)

    def text(self, result: str, rty: str) -> str:
        args = ", ".join(f"{v}: {t}" for v, t in self.args)
        body = "\n".join(self.lines + [f"return {result} : {rty}"])
        return f"func.func private @{self.name}({args}) -> {rty} {{\n{body}\n}}"


def _convert(
    h: _Helper, src: str, shape: Sequence[int], precision: str, scale: float | None, *, shifted: bool = False
) -> str:
    """Elementwise f32 → bf16/i8 of a whole tensor."""
    body = _convert_body(h, precision, scale, shifted=shifted)
    e, out = h.tmp(), h.tmp()
    ty = tensor_t(shape, _ELEM[precision])
    h(f"{e} = tensor.empty() : {ty}")
    ident = _map(len(shape), ", ".join(f"d{i}" for i in range(len(shape))))
    h(_generic(out, [(src, tensor_t(shape, "f32"))], (e, ty), [ident, ident], ["parallel"] * len(shape), body))
    return out


def _expand_k(h: _Helper, src: str, lead: Sequence[int], k: int, v: int, elem: str) -> tuple[str, str]:
    """[lead…, K] → [lead…, K/v, v] (free reshape)."""
    out = h.tmp()
    r = len(lead)
    groups = ", ".join([f"[{i}]" for i in range(r)] + [f"[{r}, {r + 1}]"])
    ty = tensor_t([*lead, k // v, v], elem)
    sizes = ", ".join(map(str, [*lead, k // v, v]))
    h(f"{out} = tensor.expand_shape {src} [{groups}] output_shape [{sizes}] : {tensor_t([*lead, k], elem)} into {ty}")
    return out, ty


def _split_n(h: _Helper, val: str, shape: Sequence[int], elem: str) -> str:
    """[.., M, N] → [.., M, N/16, 16] (free reshape)."""
    out, r = h.tmp(), len(shape)
    groups = ", ".join([f"[{i}]" for i in range(r - 1)] + [f"[{r - 1}, {r}]"])
    new = [*shape[:-1], shape[-1] // 16, 16]
    sizes = ", ".join(map(str, new))
    h(
        f"{out} = tensor.expand_shape {val} [{groups}] output_shape [{sizes}] : "
        f"{tensor_t(shape, elem)} into {tensor_t(new, elem)}"
    )
    return out


def _join_n(h: _Helper, val: str, shape: Sequence[int], elem: str) -> str:
    """[.., M, N/16, 16] → [.., M, N]."""
    out, r = h.tmp(), len(shape)
    groups = ", ".join([f"[{i}]" for i in range(r - 1)] + [f"[{r - 1}, {r}]"])
    new = [*shape[:-1], shape[-1] // 16, 16]
    h(f"{out} = tensor.collapse_shape {val} [{groups}] : {tensor_t(new, elem)} into {tensor_t(shape, elem)}")
    return out


def _amx_contract(
    h: _Helper,
    a: tuple[str, str],
    b: tuple[str, str],
    c: tuple[str, str],
    batched: bool,
    precision: str,
    sched: AmxSchedule,
    *,
    blocked: bool = False,
    unsigned: str = "",
) -> str:
    out = h.tmp()
    maps, iters = generic_maps(1 if batched else 0, blocked=blocked)
    attrs = f"{AMX} = {json.dumps(sched.to_json())}"
    h(_generic(out, [a, b], c, maps, iters, _contract_body(precision, unsigned), attrs=attrs))
    return out


def _dequantize(
    h: _Helper,
    acc: str,
    init: str | None,
    shape: Sequence[int],
    scales: torch.Tensor,
    channel_dim: int,
    shift: torch.Tensor | None = None,
) -> str:
    """init + float(acc - shift[channel]) · scale[channel] (f32; no init: a zero one).
    `shift`: the i32 contribution of a u8-shifted activation (128 · the weight's sum over
    K per channel), subtracted exactly before the conversion."""
    if shift is not None:  # acc - shift[channel], in i32
        sc, sub, e0 = h.tmp(), h.tmp(), h.tmp()
        vals = ", ".join(str(int(x)) for x in shift.tolist())
        h(f"{sc} = arith.constant dense<[{vals}]> : {tensor_t([len(shift)], 'i32')}")
        h(f"{e0} = tensor.empty() : {tensor_t(shape, 'i32')}")
        r0 = len(shape)
        ident0 = _map(r0, ", ".join(f"d{i}" for i in range(r0)))
        body0 = "^bb0(%q: i32, %t: i32, %o: i32):\n  %d = arith.subi %q, %t : i32\n  linalg.yield %d : i32"
        h(
            _generic(
                sub,
                [(acc, tensor_t(shape, "i32")), (sc, tensor_t([len(shift)], "i32"))],
                (e0, tensor_t(shape, "i32")),
                [ident0, _map(r0, f"d{channel_dim}"), ident0],
                ["parallel"] * r0,
                body0,
            )
        )
        acc = sub
    cst, out = h.tmp(), h.tmp()
    values = ", ".join(repr(float(x)) for x in scales.tolist())
    h(f"{cst} = arith.constant dense<[{values}]> : {tensor_t([len(scales)], 'f32')}")
    r = len(shape)
    ident = _map(r, ", ".join(f"d{i}" for i in range(r)))
    e = h.tmp()
    h(f"{e} = tensor.empty() : {tensor_t(shape, 'f32')}")
    ins = [(acc, tensor_t(shape, "i32")), (cst, tensor_t([len(scales)], "f32"))]
    maps = [ident, _map(r, f"d{channel_dim}")]
    if init is None:
        body = (
            "^bb0(%q: i32, %s: f32, %o: f32):\n  %f = arith.sitofp %q : i32 to f32\n"
            "  %m = arith.mulf %f, %s : f32\n  linalg.yield %m : f32"
        )
    else:
        ins.append((init, tensor_t(shape, "f32")))
        maps.append(ident)
        body = (
            "^bb0(%q: i32, %s: f32, %c: f32, %o: f32):\n  %f = arith.sitofp %q : i32 to f32\n"
            "  %m = arith.mulf %f, %s : f32\n  %a = arith.addf %c, %m : f32\n  linalg.yield %a : f32"
        )
    h(_generic(out, ins, (e, tensor_t(shape, "f32")), [*maps, ident], ["parallel"] * r, body))
    return out


def _zeros(h: _Helper, shape: Sequence[int], elem: str) -> str:
    """The accumulator's zero fill, marked for the AMX kernel to start from zero tiles
    instead (`tc.amx_init`: not tiled, erased when the kernel replaces the contraction)."""
    z, e, out = h.tmp(), h.tmp(), h.tmp()
    zero = "0" if elem.startswith("i") else "0.000000e+00"
    h(f"{z} = arith.constant {zero} : {elem}")
    h(f"{e} = tensor.empty() : {tensor_t(shape, elem)}")
    # the layer's name as the value: CSE must not merge two layers' fills into one buffer
    mark = f'{AMX_INIT} = "{h.name}"'
    h(
        f"{out} = linalg.fill {{{mark}}} ins({z} : {elem}) outs({e} : {tensor_t(shape, elem)}) "
        f"-> {tensor_t(shape, elem)}"
    )
    return out


# A convolution's VNNI columns are gathered tap by tap from its input relaid out once to
# [C/v, H, W, v] and converted (`_tap_columns`), not by one gather reading 4 channels H·W
# apart per element, which ran scalar where its tile did not vectorize (resnet18's 14² and
# 7² layers, 0.33 ms each). resnet18 --precision auto: 8.93 -> 7.51 ms at 1 thread, 6.01 ->
# 5.83 at 2 (its compile at 2 threads 3.4-3.8 -> 4.6-4.7 s). Windows with 2 to MAX_TAPS taps:
# a pointwise layer's one gather reads whole rows already (MobileNet-V2's lost 5% as taps), and
# each tap is a copy kernel to compile (a 7×7 stem's 49 made resnet18's compile 3 s longer).
# Relaying out and converting in one generic vectorized into 4×16 byte shuffles that took
# LLVM 1.8 s longer on MobileNet-V2.
TAP_COLUMNS = True
MAX_TAPS = 9


def _tap_columns(h: _Helper, x: str, chw: tuple, window: tuple, v: int, elem: str, cbody: str) -> str:
    """cols [KH, KW, C/v, OH, OW, v] of a convolution's input `x` [1, C, H, W] (f32): `x`
    relaid out once to [C/v, H, W, v] (whole VNNI groups of channels contiguous), then
    converted (`cbody`: bf16 rounding or int8 quantization) to xq; then per tap (i, j) the
    window slice xq[:, i::SH, j::SW, :] copied into the tap's block (in place: one buffer).
    At stride 1 each block row is one contiguous run of OW·v elements."""
    (ch, hx, wx), (kh, kw, oh, ow, sh, sw) = chw, window
    g = ch // v
    x3, x4 = h.tmp(), h.tmp()
    h(
        f"{x3} = tensor.collapse_shape {x} [[0, 1], [2], [3]] : {tensor_t([1, ch, hx, wx], 'f32')} into "
        f"{tensor_t([ch, hx, wx], 'f32')}"
    )
    h(
        f"{x4} = tensor.expand_shape {x3} [[0, 1], [2], [3]] output_shape [{g}, {v}, {hx}, {wx}] : "
        f"{tensor_t([ch, hx, wx], 'f32')} into {tensor_t([g, v, hx, wx], 'f32')}"
    )
    xq_t, xt_t = tensor_t([g, hx, wx, v], elem), tensor_t([g, hx, wx, v], "f32")
    e, xt = h.tmp(), h.tmp()  # the f32 input relaid out, then converted element-wise
    h(f"{e} = tensor.empty() : {xt_t}")
    relayout = [_map(4, "d0, d3, d1, d2"), _map(4, "d0, d1, d2, d3")]
    copy = "^bb0(%x: f32, %o: f32):\n  linalg.yield %x : f32"
    h(_generic(xt, [(x4, tensor_t([g, v, hx, wx], "f32"))], (e, xt_t), relayout, ["parallel"] * 4, copy))
    e2, xq = h.tmp(), h.tmp()
    h(f"{e2} = tensor.empty() : {xq_t}")
    ident = [_map(4, "d0, d1, d2, d3")] * 2
    h(_generic(xq, [(xt, xt_t)], (e2, xq_t), ident, ["parallel"] * 4, cbody))
    cols_t, blk_t = tensor_t([kh, kw, g, oh, ow, v], elem), tensor_t([g, oh, ow, v], elem)
    cols = h.tmp()
    h(f"{cols} = tensor.empty() : {cols_t}")
    for i in range(kh):
        for j in range(kw):
            tap, nxt = h.tmp(), h.tmp()
            h(
                f"{tap} = tensor.extract_slice {xq}[0, {i}, {j}, 0] [{g}, {oh}, {ow}, {v}] [1, {sh}, {sw}, 1] : "
                f"{xq_t} to {blk_t}"
            )
            h(
                f"{nxt} = tensor.insert_slice {tap} into {cols}[{i}, {j}, 0, 0, 0, 0] [1, 1, {g}, {oh}, {ow}, {v}] "
                f"[1, 1, 1, 1, 1, 1] : {blk_t} into {cols_t}"
            )
            cols = nxt
    return cols


def _rewrite_one(
    op: ir.Operation, layer: Layer, d: PrecisionDecision, params: list[torch.Tensor], name: str
) -> tuple[str, list[ir.Value], dict[int, torch.Tensor]]:
    """(helper func text, call operands, bound weights to replace) for one layer."""
    p, v = d.precision, _VNNI[d.precision]
    elem = _ELEM[p]
    sched = d.schedule or default_schedule(layer.m, layer.n, layer.k)
    h = _Helper(name)
    a_val, b_val, c_val = (op.operands[i] for i in range(3))
    operands: list[ir.Value] = []
    new_params: dict[int, torch.Tensor] = {}
    if p == "int8" and d.act_scale is None:
        raise PrecisionError(f"layer {layer.index} ({layer.name}): int8 needs a calibrated activation scale")
    acc = "f32" if p == "bf16" else "i32"
    # int8 on AVX-512 VNNI (no AMX): vpdpbusd multiplies u8 by s8, so the activation is
    # shifted into u8 and 128 · (the weight's sum over K) is subtracted per channel after
    u8 = p == "int8" and sched.isa == "avx512"
    if u8 and (layer.weight is None or op.name == "linalg.batch_matmul"):
        raise PrecisionError(f"layer {layer.index} ({layer.name}): int8 without AMX needs a 2-D weight operand")
    if op.name in ("linalg.matmul", "linalg.batch_matmul"):
        batched = op.name == "linalg.batch_matmul"
        lead = [layer.batch] if batched else []
        a = h.arg(tensor_t([*lead, layer.m, layer.k], "f32"))
        operands.append(a_val)
        al = _convert(h, a, [*lead, layer.m, layer.k], p, d.act_scale, shifted=u8)
        a3 = _expand_k(h, al, [*lead, layer.m], layer.k, v, elem)
        blocked = layer.blocked  # B tiles contiguous: [N/16, K/v, 16, v]
        kv, n = layer.k // v, layer.n
        bshape = [*lead, n // 16, kv, 16, v] if blocked else [*lead, kv, n, v]
        bty = tensor_t(bshape, elem)
        scales = shift = None
        if layer.weight is not None:  # packed once, here
            w = params[layer.weight]
            if p == "bf16":
                packed = _pack_vnni(w.to(torch.bfloat16), v)
            else:
                q, scales = quantize_per_channel(w, 1)
                packed = _pack_vnni(q, v)
                if u8:  # Σ_k (a + 128) · w = Σ_k a · w + 128 · Σ_k w, per column
                    shift = 128 * q.to(torch.int64).sum(dim=0)
            if blocked:
                packed = packed.reshape(kv, n // 16, 16, v).permute(1, 0, 2, 3).contiguous()
            new_params[layer.weight] = packed
            b3 = h.arg(bty)
            operands.append(b_val)
        else:  # converted and packed at run time, in one pass
            b = h.arg(tensor_t([*lead, layer.k, n], "f32"))
            operands.append(b_val)
            body = _convert_body(h, p, d.act_scale_b)
            e, b3 = h.tmp(), h.tmp()
            h(f"{e} = tensor.empty() : {bty}")
            r = len(lead)
            ld = [f"d{i}" for i in range(r)]
            if blocked:  # loops (lead, nb, k, ni, vv)
                src = [*ld, f"d{r + 1} * {v} + d{r + 3}", f"d{r} * 16 + d{r + 2}"]
            else:  # loops (lead, k, n, vv)
                src = [*ld, f"d{r} * {v} + d{r + 2}", f"d{r + 1}"]
            rank = len(bshape)
            out_map = _map(rank, ", ".join(f"d{i}" for i in range(rank)))
            ins = [(b, tensor_t([*lead, layer.k, n], "f32"))]
            h(_generic(b3, ins, (e, bty), [_map(rank, ", ".join(src)), out_map], ["parallel"] * rank, body))
            if p == "int8":
                scales = torch.full((n,), d.act_scale_b)
        cshape = [*lead, layer.m, n]
        zero = is_zero_fill(c_val)  # the usual case: the kernel starts from zero tiles
        c = None
        if not zero:
            c = h.arg(tensor_t(cshape, "f32"))
            operands.append(c_val)
        split = [*lead, layer.m, n // 16, 16] if blocked else cshape
        if p == "bf16" and not zero:
            init = _split_n(h, c, cshape, acc) if blocked else c
        else:  # zeros in the contraction's own layout (a fill behind a reshape is rewritten without its mark)
            init = _zeros(h, split, acc)
        cty = tensor_t(split, acc)
        r = _amx_contract(
            h, (a3[0], a3[1]), (b3, bty), (init, cty), batched, p, sched, blocked=blocked, unsigned="a" if u8 else ""
        )
        if blocked:
            r = _join_n(h, r, cshape, acc)
        if p == "int8":
            r = _dequantize(h, r, c, cshape, scales * d.act_scale, len(cshape) - 1, shift)
        return h.text(r, tensor_t(cshape, "f32")), operands, new_params
    # convolution, batch 1: W[F, KH·KW·C] · cols[KH·KW·C, OH·OW]
    (_, ch0, hx, wx), (f, _, kh, kw), (_, _, oh, ow) = shape_of(a_val), shape_of(b_val), shape_of(c_val)
    (sh, sw) = int_list_attr(op, "strides")
    ch = padded_channels(ch0)  # (zero channels added, in the input and the filter alike)
    w = torch.nn.functional.pad(params[layer.weight], (0, 0, 0, 0, 0, ch - ch0))
    w = w.permute(0, 2, 3, 1).reshape(f, kh * kw * ch)  # K ordered (kh, kw, c)
    if p == "bf16":
        wq, scales = w.to(torch.bfloat16), None
    else:
        wq, scales = quantize_per_channel(w, 0)
    new_params[layer.weight] = wq.reshape(f, kh * kw * ch // v, v).contiguous()
    x = h.arg(tensor_t(shape_of(a_val), "f32"))
    wa = h.arg(tensor_t([f, kh * kw * ch // v, v], elem))
    x_t = tensor_t([1, ch, hx, wx], "f32")
    if ch != ch0:
        zero, xp = h.tmp(), h.tmp()
        h(f"{zero} = arith.constant 0.0 : f32")
        h(
            f"{xp} = tensor.pad {x} low[0, 0, 0, 0] high[0, {ch - ch0}, 0, 0] {{\n"
            f"^bb0(%i0: index, %i1: index, %i2: index, %i3: index):\n  tensor.yield {zero} : f32\n"
            f"}} : {tensor_t(shape_of(a_val), 'f32')} to {x_t}"
        )
        x = xp
    zero = is_zero_fill(c_val)
    operands += [a_val, b_val]
    c = None
    if not zero:
        c = h.arg(tensor_t(shape_of(c_val), "f32"))
        operands.append(c_val)
    cols_shape = [kh, kw, ch // v, oh, ow, v]
    cbody = _convert_body(h, p, d.act_scale, shifted=u8)
    if TAP_COLUMNS and 1 < kh * kw <= MAX_TAPS:
        cols = _tap_columns(h, x, (ch, hx, wx), (kh, kw, oh, ow, sh, sw), v, elem, cbody)
    else:  # one gather: each element reads x[c, y·s + i, x·s + j], 4 channels H·W apart (scalar)
        e, cols = h.tmp(), h.tmp()
        h(f"{e} = tensor.empty() : {tensor_t(cols_shape, elem)}")
        src = _map(6, f"0, d2 * {v} + d5, d3 * {sh} + d0, d4 * {sw} + d1")
        ident = _map(6, "d0, d1, d2, d3, d4, d5")
        h(_generic(cols, [(x, x_t)], (e, tensor_t(cols_shape, elem)), [src, ident], ["parallel"] * 6, cbody))
    b3, bty = h.tmp(), tensor_t([kh * kw * ch // v, oh * ow, v], elem)
    h(f"{b3} = tensor.collapse_shape {cols} [[0, 1, 2], [3, 4], [5]] : {tensor_t(cols_shape, elem)} into {bty}")
    c2, c2ty = None, tensor_t([f, oh * ow], "f32")
    if c is not None:
        c2 = h.tmp()
        h(f"{c2} = tensor.collapse_shape {c} [[0, 1], [2, 3]] : {tensor_t(shape_of(c_val), 'f32')} into {c2ty}")
    init = c2 if p == "bf16" and c2 is not None else _zeros(h, [f, oh * ow], acc)
    r = _amx_contract(
        h,
        (wa, tensor_t([f, kh * kw * ch // v, v], elem)),
        (b3, bty),
        (init, tensor_t([f, oh * ow], acc)),
        False,
        p,
        sched,
        unsigned="b" if u8 else "",
    )
    if p == "int8":  # (u8: the activation columns are B; 128 · each filter's sum over K)
        shift = 128 * wq.to(torch.int64).sum(dim=1) if u8 else None
        r = _dequantize(h, r, c2, [f, oh * ow], scales * d.act_scale, 0, shift)
    out = h.tmp()
    oty = tensor_t(shape_of(c_val), "f32")
    h(f"{out} = tensor.expand_shape {r} [[0, 1], [2, 3]] output_shape [1, {f}, {oh}, {ow}] : {c2ty} into {oty}")
    return h.text(out, tensor_t(shape_of(c_val), "f32")), operands, new_params


def rewrite(
    module: ir.Module, params: list[torch.Tensor], decisions: Sequence[PrecisionDecision]
) -> list[torch.Tensor]:
    """Rewrite every layer whose decision is not f32 (in place); returns the new bound
    arguments (packed weights replace the f32 ones they came from)."""
    lowered = [d for d in decisions if d.precision != "f32"]
    if not lowered:
        return list(params)
    ctx = module.context
    fn = entry_func(module)
    ops = contraction_ops(module)
    infos = [describe(op, i, len(params)) for i, op in enumerate(ops)]
    params = list(params)
    for d in lowered:
        if not 0 <= d.layer < len(ops):
            raise PrecisionError(f"no layer {d.layer} (the module has {len(ops)} contractions)")
        layer = infos[d.layer]
        if d.precision not in layer.eligible:
            raise PrecisionError(f"layer {d.layer} ({layer.name}) cannot run in {d.precision}: {layer.why_not}")
        op = ops[d.layer]
        name = f"__tc_lp_{d.layer}"
        text, operands, new_params = _rewrite_one(op, layer, d, params, name)
        block = fn.regions[0].blocks[0]
        for arg_no, tensor in new_params.items():
            block.arguments[arg_no].set_type(_tensor_type(tensor, ctx))
            params[arg_no] = tensor
        init = op.operands[2].owner
        call_helper(module, op, text, name, operands)
        erase_if_dead(init)
    inline_helpers(module)
    return params


_TORCH_ELEM = {torch.float32: "f32", torch.bfloat16: "bf16", torch.int8: "i8"}


def _tensor_type(t: torch.Tensor, ctx) -> ir.Type:
    return ir.Type.parse(tensor_t(list(t.shape), _TORCH_ELEM[t.dtype]), context=ctx)


# ------------------------------------------------------------------------------ sensitivity


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class PrecisionPass(ModulePass):
    name: ClassVar[str] = "precision"
    summary: ClassVar[str] = (
        "contractions → VNNI-packed bf16/int8 AMX contractions (tc.amx; lowered by cpu-llvm): "
        "mode=decided applies the module's tc.precision plan; mode=bf16 lowers every eligible one"
    )
    mode: str = "decided"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        if self.mode == "decided":
            records = tc.take_records(module, tc.PRECISION, tc.PRECISION_APPLIED) or []
            decisions = [PrecisionDecision.from_json(r) for r in records]
        elif self.mode == "bf16":  # int8 needs calibrated activation scales: `tilecraft compile --precision int8`
            found = layers(module, len(weights))
            decisions = [PrecisionDecision(x.index, "bf16") for x in found if "bf16" in x.eligible]
        else:
            raise ValueError(f"precision{{mode={self.mode}}}: one of decided, bf16 (int8 needs calibration)")
        if any(d.precision != "f32" for d in decisions):
            weights[:] = rewrite(module, weights, decisions)
