"""Integer-only layers and their lowering to accelerator instructions.

On the backends floor. A `ConvLayer` is one layer the accelerator runs with no floating
point (HAWQ-V3's scheme): int8 input and weights (per-output-channel scales), int32
accumulation seeded with an int32 bias, requantization by a dyadic multiplier —
`((acc >> pre_shift) * mult[c] + round[c]) >> shift[c]` — an optional residual input
rescaled the same way with immediates and added, then clamping (ReLU is MAX 0, ReLU6 a MIN
as well). Convolutions (dense, or depthwise as block-diagonal weights) and linear layers (a
1×1 convolution over a 1×M image) are all `ConvLayer`s.

Tensors live in DRAM as `[C/block][H][W][block]` int8 entries; weights as
`[Cout/block][Cin/block][KH][KW]` entries of `block × block` (output-major); the epilogue
constants as `[Cout/block][bias, mult, round, shift]` accumulator entries.

A `ConvSchedule` is the per-layer decision: an output tile of `th × tw` pixels and `tco`
output channel blocks, `tci` input channel blocks per reduction step, the loop order
(`co` outer: a weight tile stays while the spatial tiles stream; `sp` outer: an input
tile stays while the output channel tiles stream) and double buffering (two input/weight
tiles and two accumulator tiles in flight through the token queues, halving each tile's
room). `emit_layer` writes the layer's instructions; `reference_layer` is the exact
integer reference in numpy, written independently of the instruction stream.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from tilecraft.backends.accel.target import AccelTarget
from tilecraft.dialects import accel as isa


class ScheduleError(ValueError):
    """A schedule that does not fit the layer or the target's buffers."""


@dataclasses.dataclass
class ConvLayer:
    name: str
    cin: int  # padded to a multiple of block
    cout: int
    h: int
    w: int
    kh: int = 1
    kw: int = 1
    stride: int = 1
    pad: int = 0
    depthwise: bool = False
    weight: np.ndarray | None = None  # int8 [cout, cin, kh, kw] ([cout, 1, kh, kw] depthwise)
    bias: np.ndarray | None = None  # int32 [cout]
    pre_shift: int = 0
    mult: np.ndarray | None = None  # int32 [cout]
    shift: np.ndarray | None = None  # int32 [cout], ≥ 1
    residual: bool = False
    res_mult: int = 0  # residual: ((x * res_mult) + (1 << (res_shift-1))) >> res_shift
    res_shift: int = 1
    lo: int = -127
    hi: int = 127

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.pad - self.kh) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pad - self.kw) // self.stride + 1

    @property
    def macs(self) -> int:
        per = self.kh * self.kw * (1 if self.depthwise else self.cin)
        return self.oh * self.ow * self.cout * per

    def shape_key(self) -> tuple:
        return (
            self.cin,
            self.cout,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.stride,
            self.pad,
            self.depthwise,
            self.residual,
        )


@dataclasses.dataclass(frozen=True)
class ConvSchedule:
    th: int
    tw: int
    tco: int  # output channel blocks per tile
    tci: int  # input channel blocks per reduction step (= tco for depthwise)
    order: str = "co"  # "co": output-channel tiles outer; "sp": spatial tiles outer
    double: bool = True

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> ConvSchedule:
        try:
            return ConvSchedule(**d)
        except TypeError as exc:
            raise ScheduleError(f"not an accelerator schedule: {d!r} ({exc})") from None


# ------------------------------------------------------------------ footprint and space
def _geometry(layer: ConvLayer, s: ConvSchedule, t: AccelTarget) -> dict:
    b = t.block
    cib, cob = layer.cin // b, layer.cout // b
    ir = (s.th - 1) * layer.stride + layer.kh
    ic = (s.tw - 1) * layer.stride + layer.kw
    slots = 2 if s.double else 1
    tci = s.tco if layer.depthwise else s.tci
    taps = layer.kh * layer.kw
    inp_tile = tci * ir * ic
    wgt_tile = s.tco * taps * (1 if layer.depthwise else tci)
    acc_tile = s.tco * s.th * s.tw
    acc_need = slots * acc_tile * (2 if layer.residual else 1) + 4 * s.tco
    gemm_uops = s.tco * taps * (1 if layer.depthwise else tci)
    uops = slots**3 * gemm_uops + slots * s.tco * 10
    return dict(
        cib=cib,
        cob=cob,
        ir=ir,
        ic=ic,
        slots=slots,
        tci=tci,
        inp_tile=inp_tile,
        wgt_tile=wgt_tile,
        acc_tile=acc_tile,
        acc_need=acc_need,
        uops=uops,
        taps=taps,
    )


def check_schedule(layer: ConvLayer, s: ConvSchedule, t: AccelTarget) -> dict:
    """The schedule's geometry if it is legal for the layer on the target, else raise."""
    g = _geometry(layer, s, t)
    if s.order not in ("co", "sp"):
        raise ScheduleError(f"order {s.order!r} is not co or sp")
    if layer.ow % s.tw or s.th < 1 or s.th > layer.oh:
        raise ScheduleError(f"tile {s.th}×{s.tw} does not tile the {layer.oh}×{layer.ow} output (tw must divide it)")
    if g["cob"] % s.tco or (not layer.depthwise and g["cib"] % s.tci):
        raise ScheduleError(f"channel tiles {s.tco}/{s.tci} do not divide {g['cob']}/{g['cib']} blocks")
    if g["slots"] * g["inp_tile"] > t.inp_depth:
        raise ScheduleError(f"input tile of {g['inp_tile']} entries ×{g['slots']} overflows {t.inp_depth}")
    if g["slots"] * g["wgt_tile"] > t.wgt_depth:
        raise ScheduleError(f"weight tile of {g['wgt_tile']} entries ×{g['slots']} overflows {t.wgt_depth}")
    if g["acc_need"] > t.acc_depth:
        raise ScheduleError(f"accumulator tiles need {g['acc_need']} entries, more than {t.acc_depth}")
    if g["uops"] > t.uop_depth or s.th * s.tw >= 1 << 14:
        raise ScheduleError(f"{g['uops']} micro-ops overflow the micro-op buffer ({t.uop_depth})")
    if (s.tw - 1) * layer.stride + layer.kw > 2047 or g["ic"] * layer.stride >= 1 << 11 or s.th * s.tw >= 1 << 11:
        raise ScheduleError("tile strides exceed the ISA's 11-bit loop factors")
    return g


def space(layer: ConvLayer, t: AccelTarget, limit: int | None = None) -> list[ConvSchedule]:
    """The legal schedules of a layer (largest tiles first)."""
    out = _space(layer.shape_key(), t)
    return list(out[:limit] if limit else out)


@functools.lru_cache(maxsize=512)
def _space(key: tuple, t: AccelTarget) -> tuple[ConvSchedule, ...]:
    """`space` of a layer shape (models repeat shapes: each is enumerated once)."""
    layer = ConvLayer("space", *key[:9], residual=key[9])
    b = t.block
    cib, cob = layer.cin // b, layer.cout // b
    tws = [d for d in _divisors(layer.ow)]
    ths = sorted({min(layer.oh, x) for x in (1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64, layer.oh)})
    tcos = _divisors(cob)
    tcis = [1] if layer.depthwise else _divisors(cib)
    out = []
    for th in ths:
        for tw in tws:
            for tco in tcos:
                for tci in tcis:
                    for double in (True, False):
                        for order in ("co", "sp"):
                            s = ConvSchedule(th, tw, tco, tco if layer.depthwise else tci, order, double)
                            try:
                                check_schedule(layer, s, t)
                            except ScheduleError:
                                continue
                            out.append(s)
    out.sort(key=lambda s: -(s.th * s.tw * s.tco * s.tci) - (0.5 if s.double else 0))
    return tuple(out)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def traffic(
    layer: ConvLayer, s: ConvSchedule, t: AccelTarget, *, resident_in=None, resident_out=None
) -> dict[str, int]:
    """DRAM bytes the schedule moves (counted over its instructions, as the simulator does)."""
    insns: list[dict] = []
    emit_layer(layer, s, t, Addresses(), insns, [], 0, sync_in=False, resident_in=resident_in,
               resident_out=resident_out)  # fmt: skip
    read = write = 0
    for ins in insns:
        if ins["op"] == "load":
            eb = {
                isa.MEM_UOP: 4,
                isa.MEM_INP: t.block,
                isa.MEM_WGT: t.block * t.block,
                isa.MEM_ACC: 4 * t.block,
                isa.MEM_ACC8: t.block,
            }[ins["memory"]]
            read += ins["y_size"] * ins["x_size"] * eb
        elif ins["op"] == "store" and ins["memory"] == isa.MEM_OUT:
            write += ins["y_size"] * ins["x_size"] * t.block
    return {"read": read, "write": write}


# ------------------------------------------------------------------ lowering
@dataclasses.dataclass(frozen=True)
class Addresses:
    """DRAM bases of a layer's tensors, in entries of each memory (all 0: timing only)."""

    inp: int = 0  # input entries
    wgt: int = 0  # weight entries
    const: int = 0  # accumulator entries
    out: int = 0  # out entries (block int8)
    skip: int = 0  # acc8 entries (block int8)


def layer_program(layer: ConvLayer, s: ConvSchedule, t: AccelTarget) -> bytes:
    """The binary of one layer alone (FINISH after it; DRAM at address 0): what timing-only
    simulations of a (layer, schedule, config) run."""
    insns: list[dict] = []
    uops: list[tuple[int, int, int]] = []
    emit_layer(layer, s, t, Addresses(), insns, uops, 0, sync_in=False, sync_out=False)
    insns.append(dict(op="finish"))
    return isa.assemble_fields(insns, uops)


def emit_layer(
    layer: ConvLayer,
    s: ConvSchedule,
    t: AccelTarget,
    addr: Addresses,
    insns: list[dict],
    uop_table: list[tuple[int, int, int]],
    uop_dram: int,
    *,
    sync_in: bool,
    resident_in: int | None = None,
    resident_out: int | None = None,
    sync_out: bool = True,
) -> int:
    """Append the layer's instructions to `insns` and its micro-ops to `uop_table` (placed
    at DRAM micro-op address `uop_dram + len(before)`); returns the number of micro-ops.

    `sync_in`: the layer's first load waits for a token from compute (the previous layer's
    stores have drained), which the previous layer's end pushes (`sync_out`: a layer follows). `resident_in`: the input
    already sits whole in the input buffer at that entry (the memory plan kept it on chip;
    no input loads, one spatial tile, no padding); `resident_out`: the output is stored on
    chip into the input buffer at that entry instead of DRAM."""
    g = check_schedule(layer, s, t)
    if resident_in is not None and (layer.pad or s.th != layer.oh or s.tw != layer.ow):
        raise ScheduleError(f"layer {layer.name}: a resident input needs pad 0 and one spatial tile")
    row = layer.w if resident_in is not None else g["ic"]  # the input rows' stride in the buffer
    slots, ir, ic, taps = g["slots"], g["ir"], g["ic"], g["taps"]
    tci = g["tci"]
    inp_slot = [k * g["inp_tile"] for k in range(slots)]
    wgt_slot = [k * g["wgt_tile"] for k in range(slots)]
    acc_tile = g["acc_tile"]
    acc_slot = [k * acc_tile for k in range(slots)]
    skip_slot = [slots * acc_tile + k * acc_tile for k in range(slots)]
    const_base = slots * acc_tile * (2 if layer.residual else 1)

    # the layer's micro-op table (deduplicated); loaded once at the start
    local: dict[tuple[int, int, int], int] = {}
    ranges: dict[tuple, tuple[int, int]] = {}

    def uop_range(key: tuple, items: list[tuple[int, int, int]]) -> tuple[int, int]:
        if key not in ranges:
            start = len(local)
            for i, u in enumerate(items):
                local[(key, i)] = u  # type: ignore[index]
            ranges[key] = (start, start + len(items))
        return ranges[key]

    def gemm_uops(islot: int, wslot: int, aslot: int, cbase: int = 0) -> tuple[int, int]:
        items = []
        if resident_in is not None:
            src0 = resident_in + cbase * layer.h * layer.w
            islot, ir_ic = 0, layer.h * layer.w
        else:
            src0, ir_ic = inp_slot[islot], ir * ic
        for j in range(s.tco):
            ks = [j] if layer.depthwise else range(tci)
            for kk, k in enumerate(ks):
                for y in range(layer.kh):
                    for x in range(layer.kw):
                        w_idx = (
                            wgt_slot[wslot]
                            + ((j * (1 if layer.depthwise else tci) + (0 if layer.depthwise else kk)) * layer.kh + y)
                            * layer.kw
                            + x
                        )
                        items.append((acc_slot[aslot] + j * s.th * s.tw, src0 + k * ir_ic + y * row + x, w_idx))
        return uop_range(("gemm", islot, wslot, aslot, src0), items)

    def tile_uops(aslot: int, src: str | None) -> tuple[int, int]:
        items = []
        for j in range(s.tco):
            dst = acc_slot[aslot] + j * s.th * s.tw
            if src is None:
                items.append((dst, 0, 0))
            elif src == "skip":
                items.append((dst, skip_slot[aslot] + j * s.th * s.tw, 0))
            elif src == "skipself":
                items.append((skip_slot[aslot] + j * s.th * s.tw, 0, 0))
            else:
                items.append((dst, const_base + 4 * j + {"bias": 0, "mult": 1, "round": 2, "shift": 3}[src], 0))
        return uop_range(("tile", aslot, src), items)

    # steps in loop order
    cob, cib = g["cob"], g["cib"]
    sp_tiles = [(oh0, ow0) for oh0 in range(0, layer.oh, s.th) for ow0 in range(0, layer.ow, s.tw)]
    co_tiles = list(range(0, cob, s.tco))
    ci_steps = [0] if layer.depthwise else list(range(0, cib, tci))
    tiles = (
        [(sp, co) for co in co_tiles for sp in sp_tiles]
        if s.order == "co"
        else [(sp, co) for sp in sp_tiles for co in co_tiles]
    )
    n_steps = len(tiles) * len(ci_steps)

    # pre-register every micro-op range so the table is complete before the first GEMM
    for a in range(slots):
        for i in range(slots if resident_in is None else 1):
            for w in range(slots):
                for cbase in (co_tiles if layer.depthwise else ci_steps) if resident_in is not None else [0]:
                    gemm_uops(i, w, a, cbase)
        for src in (None, "bias", "mult", "round", "shift") + (("skip", "skipself") if layer.residual else ()):
            tile_uops(a, src)
    table = list(local.values())
    if len(table) > t.uop_depth:
        raise ScheduleError(f"layer {layer.name}: {len(table)} micro-ops overflow the micro-op buffer ({t.uop_depth})")
    base = uop_dram + len(uop_table)
    uop_table.extend(table)
    # the micro-op load: compute module, no tokens needed (in order with the GEMMs)
    insns.append(
        dict(
            op="load", memory=isa.MEM_UOP, sram_base=0, dram_base=base, y_size=1, x_size=len(table), x_stride=len(table)
        )
    )

    cur_inp: list = [None] * slots
    cur_wgt: list = [None] * slots
    inp_at = wgt_at = -1  # slot of the most recent tile
    cur_const = None
    step = 0
    for t_idx, ((oh0, ow0), co0) in enumerate(tiles):
        th_ = min(s.th, layer.oh - oh0)
        aslot = t_idx % slots
        # -------- compute: constants, reset (waits for the store of the tile before)
        if cur_const != co0:
            insns.append(
                dict(
                    op="load",
                    memory=isa.MEM_ACC,
                    sram_base=const_base,
                    dram_base=addr.const + 4 * co0,
                    y_size=1,
                    x_size=4 * s.tco,
                    x_stride=4 * s.tco,
                )
            )
            cur_const = co0
        ub, ue = tile_uops(aslot, None)
        insns.append(
            dict(
                op="gemm",
                reset=1,
                uop_bgn=ub,
                uop_end=ue,
                iter_out=th_ * s.tw,
                iter_in=1,
                dst_factor_out=1,
                pop_next=1 if t_idx >= slots else 0,
            )
        )
        for ci0 in ci_steps:
            # -------- load module: input and weight tiles (skipped when already there)
            ikey = (oh0, ow0, co0 if layer.depthwise else ci0)
            wkey = (co0, ci0)
            loads = []
            if resident_in is not None:
                islot = 0
            elif ikey == (cur_inp[inp_at] if inp_at >= 0 else None):
                islot = inp_at
            else:
                islot = (inp_at + 1) % slots
                cur_inp[islot], inp_at = ikey, islot
                cbase = co0 if layer.depthwise else ci0
                ih0 = oh0 * layer.stride - layer.pad
                iw0 = ow0 * layer.stride - layer.pad
                rows = (th_ - 1) * layer.stride + layer.kh
                y0, y1 = max(0, -ih0), max(0, ih0 + rows - layer.h)
                x0, x1 = max(0, -iw0), max(0, iw0 + ic - layer.w)
                for k in range(tci):
                    loads.append(
                        dict(
                            op="load",
                            memory=isa.MEM_INP,
                            sram_base=inp_slot[islot] + k * ir * ic,
                            dram_base=addr.inp + (cbase + k) * layer.h * layer.w + max(ih0, 0) * layer.w + max(iw0, 0),
                            y_size=rows - y0 - y1,
                            x_size=ic - x0 - x1,
                            x_stride=layer.w,
                            y_pad_0=y0,
                            y_pad_1=y1,
                            x_pad_0=x0,
                            x_pad_1=x1,
                        )
                    )
            if wkey == (cur_wgt[wgt_at] if wgt_at >= 0 else None):
                wslot = wgt_at
            else:
                wslot = (wgt_at + 1) % slots
                cur_wgt[wslot], wgt_at = wkey, wslot
                if layer.depthwise:
                    loads.append(
                        dict(
                            op="load",
                            memory=isa.MEM_WGT,
                            sram_base=wgt_slot[wslot],
                            dram_base=addr.wgt + co0 * taps,
                            y_size=1,
                            x_size=s.tco * taps,
                            x_stride=s.tco * taps,
                        )
                    )
                else:
                    loads.append(
                        dict(
                            op="load",
                            memory=isa.MEM_WGT,
                            sram_base=wgt_slot[wslot],
                            dram_base=addr.wgt + (co0 * cib + ci0) * taps,
                            y_size=s.tco,
                            x_size=tci * taps,
                            x_stride=cib * taps,
                        )
                    )
            if not loads:
                loads.append(
                    dict(op="load", memory=isa.MEM_INP, sram_base=0, dram_base=0, y_size=0, x_size=0, x_stride=0)
                )
            if step >= slots or (step == 0 and sync_in):
                loads[0]["pop_next"] = 1
            loads[-1]["push_next"] = 1
            insns.extend(loads)
            # -------- compute: the step's products; frees its slots for the load `slots` steps on
            ub, ue = gemm_uops(islot, wslot, aslot, co0 if layer.depthwise else ci0)
            insns.append(
                dict(
                    op="gemm",
                    uop_bgn=ub,
                    uop_end=ue,
                    iter_out=th_,
                    iter_in=s.tw,
                    dst_factor_out=s.tw,
                    dst_factor_in=1,
                    src_factor_out=layer.stride * row,
                    src_factor_in=layer.stride,
                    pop_prev=1,
                    push_prev=1 if step < n_steps - slots else 0,
                )
            )
            step += 1
        # -------- compute: epilogue over the tile's entries
        n = th_ * s.tw

        def alu(src, opcode, imm=None, last=False):
            ub, ue = tile_uops(aslot, src)
            d = dict(op="alu", uop_bgn=ub, uop_end=ue, iter_out=n, iter_in=1, dst_factor_out=1, alu_opcode=opcode)
            if src in ("skip",):
                d["src_factor_out"] = 1
            if imm is not None:
                d["use_imm"], d["imm"] = 1, imm
            insns.append(d)

        alu("bias", isa.ALU_ADD)
        if layer.pre_shift:
            alu(None, isa.ALU_SHR, layer.pre_shift)
        alu("mult", isa.ALU_MUL)
        alu("round", isa.ALU_ADD)
        alu("shift", isa.ALU_SHR)
        if layer.residual:
            for j in range(s.tco):
                insns.append(
                    dict(
                        op="load",
                        memory=isa.MEM_ACC8,
                        sram_base=skip_slot[aslot] + j * s.th * s.tw,
                        dram_base=addr.skip + (co0 + j) * layer.oh * layer.ow + oh0 * layer.ow + ow0,
                        y_size=th_,
                        x_size=s.tw,
                        x_stride=layer.ow,
                    )
                )
            alu("skipself", isa.ALU_MUL, layer.res_mult)
            alu("skipself", isa.ALU_ADD, 1 << (layer.res_shift - 1))
            alu("skipself", isa.ALU_SHR, layer.res_shift)
            alu("skip", isa.ALU_ADD)
        alu(None, isa.ALU_MAX, layer.lo)
        alu(None, isa.ALU_MIN, layer.hi)
        insns[-1]["push_next"] = 1
        # -------- store module
        for j in range(s.tco):
            insns.append(
                dict(
                    op="store",
                    memory=isa.MEM_OUT if resident_out is None else isa.MEM_INP,
                    sram_base=acc_slot[aslot] + j * s.th * s.tw,
                    dram_base=(addr.out if resident_out is None else resident_out)
                    + (co0 + j) * layer.oh * layer.ow
                    + oh0 * layer.ow
                    + ow0,
                    y_size=th_,
                    x_size=s.tw,
                    x_stride=layer.ow,
                    pop_prev=1 if j == 0 else 0,
                    push_prev=1 if j == s.tco - 1 else 0,
                )
            )
    # drain: compute takes the last tiles' store tokens, then tells the load module
    for _ in range(min(slots, len(tiles))):
        insns.append(dict(op="gemm", uop_bgn=0, uop_end=0, iter_out=0, iter_in=0, pop_next=1))
    insns.append(dict(op="gemm", uop_bgn=0, uop_end=0, iter_out=0, iter_in=0, push_prev=int(sync_out)))
    return len(table)


# ------------------------------------------------------------------ exact reference
def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) % (1 << 32)) - (1 << 31)


def reference_layer(layer: ConvLayer, x: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
    """The layer's int8 output [cout, oh, ow] from int8 input [cin, h, w], in int64 numpy."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (layer.pad, layer.pad), (layer.pad, layer.pad)))
    oh, ow, s = layer.oh, layer.ow, layer.stride
    w = layer.weight.astype(np.float64)
    acc = np.zeros((layer.cout, oh, ow), np.float64)
    for y in range(layer.kh):
        for xx in range(layer.kw):
            patch = xp[:, y : y + s * (oh - 1) + 1 : s, xx : xx + s * (ow - 1) + 1 : s]  # [cin, oh, ow]
            if layer.depthwise:
                acc += w[:, 0, y, xx][:, None, None] * patch
            else:
                acc += np.tensordot(w[:, :, y, xx], patch, axes=(1, 0))
    a = _wrap32(acc.astype(np.int64) + layer.bias.astype(np.int64)[:, None, None])
    a = a >> layer.pre_shift
    a = _wrap32(a * layer.mult.astype(np.int64)[:, None, None])
    a = _wrap32(a + (np.int64(1) << (layer.shift.astype(np.int64) - 1))[:, None, None])
    a = a >> layer.shift.astype(np.int64)[:, None, None]
    if layer.residual:
        r = _wrap32(skip.astype(np.int64) * layer.res_mult)
        r = _wrap32(r + (1 << (layer.res_shift - 1))) >> layer.res_shift
        a = _wrap32(a + r)
    return np.clip(a, layer.lo, layer.hi).astype(np.int8)


# ------------------------------------------------------------------ quantization
def dyadic(m: float, *, bits: int = 15, max_shift: int = 31) -> tuple[int, int]:
    """(mult, shift) with mult / 2**shift ≈ m, mult < 2**bits, 1 ≤ shift ≤ max_shift."""
    if m <= 0:
        return 0, 1
    shift = int(math.floor(math.log2((1 << (bits - 1)) / m)))
    shift = max(1, min(max_shift, shift))
    mult = int(round(m * (1 << shift)))
    while mult >= 1 << bits and shift > 1:
        shift -= 1
        mult = int(round(m * (1 << shift)))
    return min(mult, (1 << bits) - 1), shift


def blocks(n: int, block: int) -> int:
    return -(-n // block) * block
