"""GPU kernels and their schedules: which ops make one kernel, how it maps onto the grid.

On the backends floor. Reads a decided linalg-on-tensors module (after the canonical
passes). A *kernel* is a fusion group (`passes/fusion.py`'s legal groups, the largest per
sink: on a GPU an intermediate that stays in registers saves a round trip through DRAM and
a launch) or one op with the zero fill of its accumulator. Its `GpuSchedule` is the
decision: per sink loop, the thread-block tile (`block`, 0 = the loop is not tiled: each
block spans it whole) and the per-thread tile inside it (`thread`: a thread computes
`thread[i]` consecutive points along loop i, so it reuses what it loads from a row of A or
a column of B that many times). At most three loops are tiled; the innermost tiled loop
is x (consecutive threads touch consecutive addresses: coalesced), the next y, then z.
Reduction loops run whole inside each thread. An f16 matmul (f32 accumulator) may run on
tensor cores instead (`mma`): the block tile is split into warp tiles (`thread` is then
each warp's tile of m and n), each warp's tile a grid of m16n8k16 `mma.sync` fragments
accumulated in registers over k steps of 16. `space` lists the legal schedules of a
kernel (the heuristic first); the cost model (`costmodel/gpu_model.py`) ranks them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence

from torch_mlir import ir

from tilecraft.dialects import opinfo, tc
from tilecraft.dialects.irutil import walk_ops
from tilecraft.passes import fusion

GPU_SCHEDULE = "tc.gpu_schedule"  # on a kernel's sink op: its GpuSchedule (JSON)
GPU_KERNELS = "tc.gpu_kernels"  # on the module: the fusion groups that are kernels (FusionDecision JSON)
MAX_THREADS = 1024
MAX_MAPPED = 3  # x, y, z
THREAD_TILES = (1, 2, 4, 8)
WARP = 32
MMA_SHAPE = (16, 8, 16)  # mma.sync m16n8k16: f16 operands, f32 accumulators
MMA_BLOCKS = (32, 64, 128, 256)
MMA_WARP_TILES = ((16, 8), (16, 16), (32, 16), (32, 32), (64, 32), (32, 64), (64, 64))
MMA_MAX_WARPS = 8
MMA_MAX_WARP_TILE = 64  # along m or n: a 64x64 warp tile is 128 f32 accumulators a lane
BLOCK_TILES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GpuScheduleError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class GpuSchedule:
    """Per sink loop: the thread-block tile and each thread's tile in it (0 = untiled);
    with `mma`, each warp's tile instead (tensor cores)."""

    block: tuple[int, ...]
    thread: tuple[int, ...]
    mma: bool = False

    def threads(self) -> tuple[int, int, int]:
        """Threads per block along (x, y, z): the tiled loops, innermost first (x counts
        a warp as 32 threads under `mma`)."""
        per = [b // t for b, t in zip(self.block, self.thread) if b]
        per = per[::-1] + [1] * (MAX_MAPPED - len(per))
        return per[0] * (WARP if self.mma else 1), per[1], per[2]

    def warps(self) -> int:
        return -(-self.threads_per_block() // WARP)

    def grid(self, extents: Sequence[int]) -> tuple[int, int, int]:
        per = [e // b for e, b in zip(extents, self.block) if b]
        per = per[::-1] + [1] * (MAX_MAPPED - len(per))
        return per[0], per[1], per[2]

    def threads_per_block(self) -> int:
        return math.prod(self.threads())

    def per_thread(self) -> int:
        """Output points a thread accumulates (a warp's tile spread over its 32 lanes)."""
        return math.prod(t for t in self.thread if t) // (WARP if self.mma else 1)

    def to_json(self) -> str:
        d = {"block": list(self.block), "thread": list(self.thread)}
        if self.mma:
            d["mma"] = True
        return json.dumps(d)

    @staticmethod
    def from_json(text: str | dict) -> GpuSchedule:
        """A schedule from its JSON: `block` and `thread` lists of integers (not booleans,
        not floats), `mma` a boolean when present; anything else is refused."""

        def ints(v) -> tuple[int, ...]:
            if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ValueError
            return tuple(v)

        try:
            d = json.loads(text) if isinstance(text, str) else dict(text)
            if not {"block", "thread"} <= set(d) <= {"block", "thread", "mma"}:
                raise ValueError
            if not isinstance(d.get("mma", False), bool):
                raise ValueError
            return GpuSchedule(ints(d["block"]), ints(d["thread"]), d.get("mma", False))
        except (ValueError, TypeError):
            raise GpuScheduleError(f"not a GPU schedule: {text!r}") from None

    def describe(self) -> str:
        tiled = [(b, t) for b, t in zip(self.block, self.thread) if b]
        blocks = "x".join(str(b) for b, _ in tiled)
        per = "x".join(str(t) for _, t in tiled)
        if self.mma:
            return f"block {blocks} / warp {per} (mma m16n8k16, {self.warps()} warps)"
        x, y, z = self.threads()
        return f"block {blocks} / thread {per} ({x}x{y}x{z} threads)"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One GPU kernel: a sink op and the ops fused into it (nearest producer first)."""

    sink: int
    members: tuple[int, ...]
    tileable: tuple[bool, ...]  # sink loops a tile may split
    infos: tuple[opinfo.OpInfo, ...]  # sink first, then members
    operand_loops: tuple[tuple[tuple[int, ...], int], ...]  # external inputs: (sink loops it varies with, bytes)
    out_bytes: int
    mma: bool = False  # tensor cores can compute it (`mma_kernel`)

    @property
    def info(self) -> opinfo.OpInfo:
        return self.infos[0]

    @property
    def ops(self) -> tuple[int, ...]:
        return (self.sink, *self.members)

    @property
    def flops(self) -> int:
        return sum(i.flops for i in self.infos if i.name != "linalg.fill")

    @property
    def contraction(self) -> opinfo.OpInfo | None:
        return next((i for i in self.infos if i.kind in fusion.CONTRACTIONS), None)

    def label(self) -> str:
        names = [i.name.removeprefix("linalg.") for i in self.infos if i.name != "linalg.fill"]
        return "+".join(names[:1] + sorted(set(names[1:]))) or "fill"


def _bytes(t: ir.Type) -> int:
    st = t.maybe_downcast()
    if not isinstance(st, ir.ShapedType):
        return 0  # a scalar operand (a fill's value)
    width = st.element_type.width if hasattr(st.element_type, "width") else 32
    return math.prod(st.shape) * max(1, width // 8)


def kernels(module: ir.Module, groups: Sequence[fusion.FusionDecision] | None = None) -> list[Kernel]:
    """The module's kernels: `groups` (default: the largest legal group of each sink, as
    `fusion.maximal` takes them), every other op alone with its zero fills. Tags ops."""
    nodes = fusion.analyze(module)
    if groups is None:
        # an f16 matmul stays a kernel of its own (with its zero fill) to run on tensor
        # cores: its accumulators live in mma fragments, which no epilogue reads in place
        mma = {i for i, n in nodes.items() if mma_kernel(n.op, (n.info,))}

        def keep(g: fusion.FusionDecision) -> bool:
            if mma & set(g.members):
                return False
            return g.sink not in mma or all(fusion.is_fill(nodes[m]) for m in g.members)

        groups = fusion.maximal(nodes, keep=keep)
    out: list[Kernel] = []
    taken: set[int] = set()
    plans: list[tuple[int, tuple[int, ...]]] = []
    for g in groups:
        plans.append((g.sink, tuple(g.members)))
        taken |= set(g.ops)
    for op_id, node in nodes.items():
        if op_id in taken or fusion.is_fill(node):
            continue
        fills = tuple(sorted(p for p in node.producers.values() if fusion.is_fill(nodes[p]) and p not in taken))
        plans.append((op_id, fills))
        taken |= {op_id, *fills}
    for op_id in nodes:  # a fill nothing in a kernel reads: a kernel of its own
        if op_id not in taken:
            plans.append((op_id, ()))
            taken.add(op_id)
    for sink, members in sorted(plans):
        group = {sink, *members}
        if "parallel" not in nodes[sink].info.iterators:
            info = nodes[sink].info
            raise GpuScheduleError(
                f"op {sink} ({info.name} over {list(info.extents)}): a reduction to a scalar has no parallel"
                " loop to spread over the grid; the GPU backend does not compile it yet"
            )
        to_sink = fusion.loops_to_sink(nodes, group, sink)
        if to_sink is None:
            raise GpuScheduleError(f"op {sink}'s group does not map onto its loops")
        tileable = fusion.tileable_loops(nodes, group, sink, to_sink)
        inputs: list[tuple[tuple[int, ...], int]] = []
        for m in (sink, *members):
            node = nodes[m]
            n_in = len(node.op.operands) - len(node.op.results)
            for idx, v in enumerate(node.op.operands):
                if node.producers.get(idx) in group:
                    continue
                if idx >= n_in and not _reads_init(node):
                    continue  # an output written, not read
                loops = node.maps[idx] if idx < len(node.maps) else ()
                sink_loops = tuple(sorted({to_sink[m][lp] for lp in loops if lp is not None and lp in to_sink[m]}))
                inputs.append((sink_loops, _bytes(v.type)))
        out_bytes = sum(_bytes(r.type) for r in nodes[sink].op.results)
        infos = (nodes[sink].info, *(nodes[m].info for m in members))
        mma = mma_kernel(nodes[sink].op, infos)
        out.append(Kernel(sink, members, tuple(tileable), infos, tuple(inputs), out_bytes, mma))
    return out


def mma_kernel(op: ir.Operation, infos: Sequence[opinfo.OpInfo]) -> bool:
    """Tensor cores can compute the kernel: a plain `linalg.matmul` (row-major A and B, no
    transposed maps) of f16 operands into an f32 accumulator, m, n and k multiples of the
    m16n8k16 fragment, fused with nothing but its accumulator's fill."""
    info = infos[0]
    if info.name != "linalg.matmul" or any(i.name != "linalg.fill" for i in infos[1:]):
        return False
    if tuple(info.dtypes) != ("f16", "f16", "f32"):
        return False
    if "indexing_maps" in op.attributes:
        maps = [str(ir.AffineMapAttr(a).value) for a in ir.ArrayAttr(op.attributes["indexing_maps"])]
        if maps != [f"(d0, d1, d2) -> ({r})" for r in ("d0, d2", "d2, d1", "d0, d1")]:
            return False
    return all(e % f == 0 for e, f in zip(info.extents, MMA_SHAPE))


def _reads_init(node) -> bool:
    return node.info.kind in fusion.CONTRACTIONS or "reduction" in node.info.iterators


def mapped_loops(kernel: Kernel) -> list[int]:
    """The sink loops a schedule may tile: the innermost three tileable loops longer than
    one (or the innermost tileable loop when all are one)."""
    ext = kernel.info.extents
    loops = [i for i, t in enumerate(kernel.tileable) if t and ext[i] > 1][-MAX_MAPPED:]
    if not loops:
        loops = [i for i, t in enumerate(kernel.tileable) if t][-1:]
    return loops


def _tiles(extent: int, cap: int) -> list[int]:
    out = [b for b in BLOCK_TILES if b <= cap and extent % b == 0]
    if extent <= cap and extent not in out:
        out.append(extent)
    return out or [1]


def check(kernel: Kernel, s: GpuSchedule) -> None:
    """Raise GpuScheduleError unless `s` is legal for the kernel."""
    ext = kernel.info.extents
    if len(s.block) != len(ext) or len(s.thread) != len(ext):
        raise GpuScheduleError(f"schedule {s.to_json()} has not {len(ext)} loops")
    if s.mma:
        _check_mma(kernel, s)
        return
    tiled = [i for i, b in enumerate(s.block) if b]
    if not tiled or len(tiled) > MAX_MAPPED:
        raise GpuScheduleError(f"schedule {s.to_json()} tiles {len(tiled)} loops (1 to {MAX_MAPPED})")
    for i, (b, t) in enumerate(zip(s.block, s.thread)):
        if not b:
            if t:
                raise GpuScheduleError(f"loop {i}: a thread tile without a block tile")
            continue
        if not kernel.tileable[i]:
            raise GpuScheduleError(f"loop {i} cannot be tiled (a reduction, or a loop a fused op does not span)")
        if ext[i] % b or t <= 0 or b % t:
            raise GpuScheduleError(f"loop {i}: block {b} / thread {t} do not divide {ext[i]}")
    if s.threads_per_block() > MAX_THREADS:
        raise GpuScheduleError(f"{s.threads_per_block()} threads per block (at most {MAX_THREADS})")


def _check_mma(kernel: Kernel, s: GpuSchedule) -> None:
    if not kernel.mma:
        raise GpuScheduleError(
            f"schedule {s.to_json()}: tensor cores take only a plain f16 matmul into f32"
            " (m, n, k multiples of 16, 8, 16)"
        )
    (bm, bn, bk), (wm, wn, wk) = s.block, s.thread
    if bk or wk:
        raise GpuScheduleError(f"schedule {s.to_json()}: the k loop of an mma schedule is not tiled")
    fm, fn, _ = MMA_SHAPE
    for name, e, b, w, f in (("m", kernel.info.extents[0], bm, wm, fm), ("n", kernel.info.extents[1], bn, wn, fn)):
        if b <= 0 or w <= 0 or e % b or b % w or w % f:
            raise GpuScheduleError(f"loop {name}: block {b} / warp {w} do not divide {e} in fragments of {f}")
        if w > MMA_MAX_WARP_TILE:
            raise GpuScheduleError(
                f"loop {name}: a warp tile of {w} (at most {MMA_MAX_WARP_TILE}: the accumulators live in registers)"
            )
    if s.warps() > MMA_MAX_WARPS:
        raise GpuScheduleError(f"{s.warps()} warps per block (at most {MMA_MAX_WARPS} with tensor cores)")


def mma_space(kernel: Kernel) -> list[GpuSchedule]:
    """The tensor-core schedules of an f16 matmul kernel (none for any other): block tiles
    of m and n, warp tiles of m16n8 fragments, 1 to 8 warps a block."""
    if not kernel.mma:
        return []
    m, n, _ = kernel.info.extents
    out = []
    for bm, bn in itertools.product(MMA_BLOCKS, MMA_BLOCKS):
        for wm, wn in MMA_WARP_TILES:
            s = GpuSchedule((bm, bn, 0), (wm, wn, 0), True)
            if m % bm or n % bn or bm % wm or bn % wn or s.warps() > MMA_MAX_WARPS:
                continue
            out.append(s)
    return out


def space(kernel: Kernel, *, limit: int = 400) -> list[GpuSchedule]:
    """Legal schedules of a kernel, the heuristic first: over the mapped loops (x the
    innermost), block tiles that divide the loop and per-thread tiles that divide the
    block; 32 to 1024 threads a block (fewer only when the whole kernel has fewer points),
    at most 64 points a thread (16 without a contraction: a thread's tile lives in
    registers)."""
    ext = kernel.info.extents
    loops = mapped_loops(kernel)
    points = math.prod(ext[i] for i in loops)
    per_thread_cap = 64 if kernel.contraction else 16
    choices = []
    for i in loops:
        opts = []
        for b in _tiles(ext[i], 256):
            for t in THREAD_TILES:
                if b % t == 0 and t <= b:
                    opts.append((b, t))
        choices.append(opts)
    out = [default(kernel)]
    seen = {out[0]}
    for s in mma_space(kernel):  # tensor-core schedules first (they are few)
        if s not in seen:
            seen.add(s)
            out.append(s)
    for combo in itertools.product(*choices):
        threads = math.prod(b // t for b, t in combo)
        per = math.prod(t for _, t in combo)
        if threads > MAX_THREADS or per > per_thread_cap or threads < min(32, points):
            continue
        block = [0] * len(ext)
        thread = [0] * len(ext)
        for i, (b, t) in zip(loops, combo):
            block[i], thread[i] = b, t
        s = GpuSchedule(tuple(block), tuple(thread))
        if s not in seen:
            seen.add(s)
            out.append(s)
    keep = 1 + sum(1 for s in out[1:] if s.mma)  # the heuristic and every tensor-core schedule
    if len(out) > limit > keep:  # and an even spread of the rest of the enumeration
        rest, step = out[keep:], (len(out) - keep) / (limit - keep)
        out = out[:keep] + [rest[int(k * step)] for k in range(limit - keep) if int(k * step) < len(rest)]
    return out


def default(kernel: Kernel) -> GpuSchedule:
    """The heuristic: an f16 matmul on tensor cores, the largest block tile up to 128x128
    in warp tiles of 64x32 (or smaller); any other contraction's 64x64 output tile of 4x4
    points a thread (256 threads); anything else 256 threads of one point each, x across
    the innermost loop."""
    ext = kernel.info.extents
    if kernel.mma:
        bm = max(b for b in (16, *MMA_BLOCKS[:-1]) if ext[0] % b == 0)
        bn = max(b for b in (8, 16, *MMA_BLOCKS[:-1]) if ext[1] % b == 0)
        wm = max(w for w in (16, 32, 64) if bm % w == 0)
        wn = max(w for w in (8, 16, 32) if bn % w == 0)
        return GpuSchedule((bm, bn, 0), (wm, wn, 0), True)
    loops = mapped_loops(kernel)
    block = [0] * len(ext)
    thread = [0] * len(ext)
    budget = 256
    contraction = kernel.contraction is not None
    for n, i in enumerate(reversed(loops)):
        if contraction and n < 2:
            b = _tiles(ext[i], 64)[-1]
            t = max(x for x in THREAD_TILES if b % x == 0 and x <= 4)
        else:
            b = max(x for x in _tiles(ext[i], max(1, budget)))
            t = 1
        block[i], thread[i] = b, t
        budget = max(1, budget // (b // t))
    return GpuSchedule(tuple(block), tuple(thread))


def attached(module: ir.Module) -> dict[int, GpuSchedule]:
    """The `tc.gpu_schedule` attributes on the module's ops, by op id."""
    out: dict[int, GpuSchedule] = {}

    def visit(op: ir.Operation) -> None:
        if GPU_SCHEDULE in op.attributes and tc.OP_ID in op.attributes:
            op_id = ir.IntegerAttr(op.attributes[tc.OP_ID]).value
            attr = op.attributes[GPU_SCHEDULE]
            if not isinstance(attr, ir.StringAttr):
                raise GpuScheduleError(f"op {op_id}: {GPU_SCHEDULE} is not a JSON string: {attr}")
            out[op_id] = GpuSchedule.from_json(attr.value)

    walk_ops(module.operation, visit)
    return out
