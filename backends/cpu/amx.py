"""AMX kernels for low-precision contractions (bf16 → f32, int8 → i32).

On the backends floor; runs in the CPU backend's `cpu-llvm` stage (`lowering.to_llvm`),
after bufferization. Reads the bufferized module; writes it back with each marked
contraction replaced by a call to a private AMX kernel function added to it.

`passes/precision.py` writes each contraction it lowers in precision as a `linalg.generic`
over VNNI-packed operands, marked `tc.amx` with an `AmxSchedule`; the generic's semantics
are exact, so the module means the same thing with or without this module. `lower_marked`
replaces each marked generic (on memrefs, after bufferization) by a call to a kernel
written here in the `x86.amx` dialect: register blocks of `mr × nr` accumulator tiles
(16 × 16), A tiles loaded row-major, B tiles loaded from the VNNI layout `[K/v, N·v]`
(v = 2 for bf16, 4 for int8), the K loop unrolled in chunks of `kc`. Edge blocks use smaller
static tiles, so no shape needs padding.

The tiles cannot be loop-carried (the scf → cf conversion does not know the tile type), so
the accumulators are loaded from and stored to C once per K chunk; the kernel therefore
accumulates into C, exactly as the generic does.

Linux hands out the AMX tile state per process on request: `enable()` asks for it once
(`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); running AMX code without it is a
SIGILL.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterator

from torch_mlir import ir
from torch_mlir.dialects import func

from tilecraft.dialects.irutil import walk_ops
from tilecraft.dialects.tc import AMX, AMX_INIT  # attributes: contraction (its schedule), its zero fill
from tilecraft.passes.precision import AmxSchedule

# Element type → (VNNI factor, K elements per tile row (64 bytes), accumulator type, tile op)
_TYPES = {"bf16": (2, 32, "f32", "x86.amx.tile_mulf"), "i8": (4, 64, "i32", "x86.amx.tile_muli")}


class AmxError(RuntimeError):
    """AMX is not usable on this machine, or a marked op cannot be lowered."""


# ------------------------------------------------------------------------------ enabling
@functools.cache
def available() -> bool:
    """The CPU has AMX-BF16 and AMX-INT8 and the kernel granted this process the tile state."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    if not {"amx_bf16", "amx_int8", "amx_tile"} <= set(flags):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    arch_prctl, req_xcomp_perm, xtiledata = 158, 0x1023, 18
    return libc.syscall(arch_prctl, req_xcomp_perm, xtiledata) == 0


def enable() -> None:
    if not available():
        raise AmxError("AMX is not available on this CPU (needs amx_bf16, amx_int8 and kernel tile permission)")


# ------------------------------------------------------------------------------ kernels
def _split(extent: int, block: int, tile: int) -> tuple[int, list[int]]:
    """(extent covered by full blocks, the tile sizes of the remainder block)."""
    full = extent - extent % block
    rem = extent - full
    return full, [tile] * (rem // tile) + ([rem % tile] if rem % tile else [])


class KernelWriter:
    """The MLIR text of one kernel function being written: its lines, the index constants
    they use (`c(v)` → `%cV`, declared once at the top) and fresh SSA names (`tmp`)."""

    def __init__(self):
        self.lines: list[str] = []
        self.consts: set[int] = set()
        self.n = 0

    def c(self, v: int) -> str:
        self.consts.add(v)
        return f"%c{v}"

    def tmp(self, stem: str) -> str:
        self.n += 1
        return f"%{stem}{self.n}"

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def function(self, name: str, args: str) -> str:
        """The written lines as `func.func private @name(args)`, constants first."""
        head = [f"func.func private @{name}({args}) {{"]
        head += [f"  %c{x} = arith.constant {x} : index" for x in sorted(self.consts)]
        return "\n".join(head + ["  " + line for line in self.lines] + ["  return", "}"])

    def per_batch(self, ops: GemmOperands, body) -> None:
        """`body(A, its type, B, its type, C, its type)` once, or in a loop over the batch
        (`%b`) on each batch's 2-D views."""
        if not ops.batched:
            body(*ops.values)
            return
        a_val, _, b_val, _, c_val, _ = ops.values
        self(f"scf.for %b = {self.c(0)} to {self.c(ops.a.shape[0])} step {self.c(1)} {{")
        body(*batch_view(self, a_val, ops.a), *batch_view(self, b_val, ops.b), *batch_view(self, c_val, ops.c))
        self("}")


def kernel_text(
    name: str, a_type: str, b_type: str, c_type: str, sched: AmxSchedule, *, zero_init: bool = False
) -> str:
    """Private funcs: `@name(%A, %B, %C)` accumulates A × B into C with AMX tiles.

    Types are memref types as printed (any strided layout with unit inner stride), the
    operands of a `tc.amx` generic: A `[(batch,) M, K/v, v]`; B VNNI-packed, either plain
    `[(batch,) K/v, N, v]` or blocked `[(batch,) N/16, K/v, 16, v]` (each B tile one
    contiguous KB: plain rows are N·v elements apart, which for large N maps a tile's 16
    rows onto a few cache sets); C `[(batch,) M, N]`, or `[(batch,) M, N/16, 16]` with a
    blocked B. Each register block shape and K chunk gets its own function
    `@name_bN(A, B, C, i, j, k)`, kept out of line by `no_inline` (after the LLVM
    conversion): LLVM configures the tile registers once per function, and blocks of
    different tile shapes in one function run out of them. With `zero_init` the first K
    chunk starts from zero tiles instead of loading C (C's contents are ignored)."""
    a, b, c = (ir.MemRefType(ir.Type.parse(t)) for t in (a_type, b_type, c_type))
    elem = str(a.element_type)
    if elem not in _TYPES:
        raise AmxError(f"AMX kernel: unsupported element type {elem}")
    v, kt, acc, mul = _TYPES[elem]
    w = KernelWriter()
    params = (a_type, b_type, c_type)
    ops = gemm_operands(w, a, b, c, v, "AMX kernel")
    blocked, m, n, k = ops.blocked, ops.m, ops.n, ops.k
    blocks: dict[tuple, str] = {}
    funcs: list[str] = []

    def chunk_func(at: str, bt: str, ct: str, rows: tuple, cols: tuple, ktiles: tuple, zero: bool = False) -> str:
        """The function adding one K chunk of one register block into C[i:, j:], from K
        offset k: rows × cols accumulator tiles, K tiles `ktiles` (all of one size);
        `zero`: the accumulators start at zero rather than at C."""
        key = (at, bt, ct, rows, cols, ktiles, zero)
        if key in blocks:
            return blocks[key]
        fname = blocks[key] = f"{name}_b{len(blocks)}"
        bw = KernelWriter()
        ri = [bw.tmp("i") for _ in rows]
        cj = [bw.tmp("j") for _ in cols]
        cjv = [bw.tmp("jv") for _ in cols]
        for r, off in zip(ri, _offsets(rows)):
            bw(f"{r} = arith.addi %i, {bw.c(off)} : index")
        for cc, cv, off in zip(cj, cjv, _offsets(cols)):
            bw(f"{cc} = arith.addi %j, {bw.c(off)} : index")
            bw(f"{cv} = arith.muli {cc}, {bw.c(v)} : index")
        accs = {}
        for x, (r, rr) in enumerate(zip(rows, ri)):
            for y, (cc, jj) in enumerate(zip(cols, cj)):
                accs[x, y] = t = bw.tmp("acc")
                if zero:
                    bw(f"{t} = x86.amx.tile_zero : !x86.amx.tile<{r}x{cc}x{acc}>")
                else:
                    bw(f"{t} = x86.amx.tile_load %C[{rr}, {jj}] : {ct} into !x86.amx.tile<{r}x{cc}x{acc}>")
        for kk, koff in zip(ktiles, _offsets(ktiles)):
            ks, kh = bw.tmp("ks"), bw.tmp("kh")
            bw(f"{ks} = arith.addi %k, {bw.c(koff)} : index")
            bw(f"{kh} = arith.divui {ks}, {bw.c(v)} : index")
            atiles, btiles = [], []
            for r, rr in zip(rows, ri):
                atiles.append(t := bw.tmp("a"))
                bw(f"{t} = x86.amx.tile_load %A[{rr}, {ks}] : {at} into !x86.amx.tile<{r}x{kk}x{elem}>")
            for cc, jj, jv in zip(cols, cj, cjv):
                btiles.append(t := bw.tmp("bt"))
                if blocked:  # row (j / 16) · K/v + k/v of the [N/16 · K/v, 16·v] view
                    jb, jr, row = bw.tmp("jb"), bw.tmp("jr"), bw.tmp("row")
                    bw(f"{jb} = arith.divui {jj}, {bw.c(16)} : index")
                    bw(f"{jr} = arith.muli {jb}, {bw.c(k // v)} : index")
                    bw(f"{row} = arith.addi {jr}, {kh} : index")
                    idx = f"{row}, {bw.c(0)}"
                else:
                    idx = f"{kh}, {jv}"
                bw(f"{t} = x86.amx.tile_load %B[{idx}] : {bt} into !x86.amx.tile<{kk // v}x{cc * v}x{elem}>")
            for x, r in enumerate(rows):
                for y, cc in enumerate(cols):
                    t = bw.tmp("acc")
                    bw(
                        f"{t} = {mul} {atiles[x]}, {btiles[y]}, {accs[x, y]} : !x86.amx.tile<{r}x{kk}x{elem}>, "
                        f"!x86.amx.tile<{kk // v}x{cc * v}x{elem}>, !x86.amx.tile<{r}x{cc}x{acc}>"
                    )
                    accs[x, y] = t
        for x, rr in enumerate(ri):
            for y, jj in enumerate(cj):
                bw(f"x86.amx.tile_store %C[{rr}, {jj}], {accs[x, y]} : {ct}, !x86.amx.tile<{rows[x]}x{cols[y]}x{acc}>")
        args = f"%A: {at}, %B: {bt}, %C: {ct}, %i: index, %j: index, %k: index"
        funcs.append(bw.function(fname, args))
        return fname

    def block(av: str, at: str, bv: str, bt: str, cv: str, ct: str, i: str, j: str, rows, cols) -> None:
        """One register block at C[i:, j:]: its K chunks (full chunks in a loop, then the
        remainder's full tiles, then its last partial tile), each a call."""
        rows, cols = tuple(rows), tuple(cols)
        kfull, krem = _split(k, sched.kc, kt)
        sig = f"({at}, {bt}, {ct}, index, index, index) -> ()"
        first = zero_init  # the next chunk called is the first: it starts from zero tiles

        def call(part: tuple, off: str) -> None:
            nonlocal first
            f = chunk_func(at, bt, ct, rows, cols, part, first)
            first = False
            w(f"func.call @{f}({av}, {bv}, {cv}, {i}, {j}, {off}) : {sig}")

        full = (kt,) * (sched.kc // kt)
        start = 0
        if kfull and first:
            call(full, w.c(0))
            start = sched.kc
        if start < kfull:
            k0 = w.tmp("k")
            w(f"scf.for {k0} = {w.c(start)} to {w.c(kfull)} step {w.c(sched.kc)} {{")
            call(full, k0)
            w("}")
        whole = tuple(t for t in krem if t == kt)
        tail = tuple(t for t in krem if t != kt)
        for part, off in ((whole, kfull), (tail, kfull + kt * len(whole))):
            if part:
                call(part, w.c(off))

    def start(kind: str, lo: str, ext: int, step: int, stem: str) -> str:
        """A loop over full blocks from `lo` (`ext` elements), or the remainder block's offset."""
        var = w.tmp(stem)
        if kind == "loop":
            hi = w.tmp("hi")
            w(f"{hi} = arith.addi {lo}, {w.c(ext)} : index")
            w(f"scf.for {var} = {lo} to {hi} step {w.c(step)} {{")
        else:
            w(f"{var} = arith.addi {lo}, {w.c(ext)} : index")
        return var

    def parts(extent: int, per_block: int) -> list[tuple[str, int, list[int]]]:
        """(kind, extent of full blocks or offset of the remainder, tile sizes)."""
        full, rem = _split(extent, 16 * per_block, 16)
        return ([("loop", full, [16] * per_block)] if full else []) + ([("rem", full, rem)] if rem else [])

    def sweep(av: str, at: str, bv: str, bt: str, cv: str, ct: str, jc: str, width: int) -> None:
        """Every register block of the columns [jc, jc + width)."""
        row_parts, col_parts = parts(m, sched.mr), parts(width, sched.nr)
        ij = sched.order == "ij"
        for okind, oext, otiles in row_parts if ij else col_parts:
            ov = start(okind, w.c(0) if ij else jc, oext, sum(otiles), "o")
            for ikind, iext, itiles in col_parts if ij else row_parts:
                iv = start(ikind, jc if ij else w.c(0), iext, sum(itiles), "p")
                if ij:
                    block(av, at, bv, bt, cv, ct, ov, iv, otiles, itiles)
                else:
                    block(av, at, bv, bt, cv, ct, iv, ov, itiles, otiles)
                if ikind == "loop":
                    w("}")
            if okind == "loop":
                w("}")

    def body(av: str, at: str, bv: str, bt: str, cv: str, ct: str) -> None:
        nc = sched.nc if sched.order == "ij" and 0 < sched.nc < n else n
        nc -= nc % (16 * sched.nr) if nc < n else 0  # a panel holds whole register blocks
        nc = nc or n
        full, rem = n - n % nc, n % nc
        if full == nc:
            sweep(av, at, bv, bt, cv, ct, w.c(0), nc)
        elif full:
            jc = w.tmp("jc")
            w(f"scf.for {jc} = {w.c(0)} to {w.c(full)} step {w.c(nc)} {{")
            sweep(av, at, bv, bt, cv, ct, jc, nc)
            w("}")
        if rem:
            sweep(av, at, bv, bt, cv, ct, w.c(full), rem)

    w.per_batch(ops, body)
    return "\n\n".join([w.function(name, f"%A: {params[0]}, %B: {params[1]}, %C: {params[2]}"), *funcs])


@dataclasses.dataclass(frozen=True)
class GemmOperands:
    """A `tc.amx` contraction's operands as 2-D (or batched 2-D) views: A `[(batch,) M, K]`,
    B `[(batch,) K/v, N·v]` or, blocked, `[(batch,) N/16 · K/v, 16·v]`, C `[(batch,) M, N]`;
    `values` are (A, its type, B, its type, C, its type) as SSA names and type strings."""

    values: tuple[str, str, str, str, str, str]
    a: ir.MemRefType
    b: ir.MemRefType
    c: ir.MemRefType
    batched: bool
    blocked: bool
    m: int
    n: int
    k: int


def gemm_operands(w: KernelWriter, a, b, c, v: int, who: str) -> GemmOperands:
    """Collapse the VNNI operands (`kernel_text`'s layouts) into `GemmOperands`, writing the
    reshapes to `w`; `who` names the kernel in errors."""
    lead = a.rank - 3
    if lead not in (0, 1) or b.rank - lead not in (3, 4):
        raise AmxError(f"{who}: unexpected operand types {a}, {b}, {c}")
    batched, blocked = lead == 1, b.rank - lead == 4
    keep = [[i] for i in range(lead)]
    a_val, a_t = _collapse(w, "%A", a, [*keep, [lead], [lead + 1, lead + 2]])
    if blocked:
        b_val, b_t = _collapse(w, "%B", b, [*keep, [lead, lead + 1], [lead + 2, lead + 3]])
        c_val, c_t = _collapse(w, "%C", c, [*keep, [lead], [lead + 1, lead + 2]])
    else:
        b_val, b_t = _collapse(w, "%B", b, [*keep, [lead], [lead + 1, lead + 2]])
        c_val, c_t = "%C", str(c)
    a2, b2, c2 = (ir.MemRefType(ir.Type.parse(t)) for t in (a_t, b_t, c_t))
    *_, m, k = a2.shape
    *_, n = c2.shape
    if blocked and n % 16:
        raise AmxError(f"{who}: a blocked B needs N % 16 == 0, got N={n}")
    if k % v:
        raise AmxError(f"{who}: K={k} is not a multiple of {v}")
    return GemmOperands((a_val, a_t, b_val, b_t, c_val, c_t), a2, b2, c2, batched, blocked, m, n, k)


def batch_view(w: KernelWriter, val: str, ty) -> tuple[str, str]:
    """2-D view of batch %b of a batched operand (rank-reducing subview): (value, type)."""
    _, r, cols = ty.shape
    strides, _ = ty.get_strides_and_offset()
    if strides[2] != 1:
        raise AmxError(f"low-precision kernel: operand {ty} has a non-unit inner stride")
    row = "?" if ty.is_dynamic_stride_or_offset(strides[1]) else str(strides[1])
    out = w.tmp("v")
    res = f"memref<{r}x{cols}x{ty.element_type}, strided<[{row}, 1], offset: ?>>"
    w(f"{out} = memref.subview {val}[%b, 0, 0] [1, {r}, {cols}] [1, 1, 1] : {ty} to {res}")
    return out, res


def _collapse(w: KernelWriter, val: str, ty, groups: list[list[int]]) -> tuple[str, str]:
    """`memref.collapse_shape` of `val` by `groups` (each group contiguous): (value, type)."""
    if all(len(g) == 1 for g in groups):
        return val, str(ty)
    shape = list(ty.shape)
    strides, offset = ty.get_strides_and_offset()

    def fmt(x: int) -> str:
        return "?" if ty.is_dynamic_stride_or_offset(x) else str(x)

    for g in groups:
        for outer, inner in zip(g, g[1:]):
            if ty.is_dynamic_stride_or_offset(strides[outer]) or strides[outer] != strides[inner] * shape[inner]:
                raise AmxError(f"AMX kernel: operand {ty} is not contiguous in dims {g}")
    dims = "x".join(str(math.prod(shape[i] for i in g)) for g in groups)
    identity = ", ".join(f"d{i}" for i in range(ty.rank))
    if str(ty.layout) == f"affine_map<({identity}) -> ({identity})>":
        res = f"memref<{dims}x{ty.element_type}>"
    else:
        layout = f"strided<[{', '.join(fmt(strides[g[-1]]) for g in groups)}], offset: {fmt(offset)}>"
        res = f"memref<{dims}x{ty.element_type}, {layout}>"
    text = ", ".join("[" + ", ".join(map(str, g)) + "]" for g in groups)
    out = w.tmp("f")
    w(f"{out} = memref.collapse_shape {val} [{text}] : {ty} into {res}")
    return out, res


def _offsets(sizes: list[int]) -> Iterator[int]:
    total = 0
    for s in sizes:
        yield total
        total += s


# ------------------------------------------------------------------------------ lowering
_BLOCK_FUNC = re.compile(r"^__tc_amx_\d+_b\d+$")
_ANY_BLOCK_FUNC = re.compile(r"^__tc_(amx|dot)_\d+_b\d+$")  # AMX and AVX-512 dot kernels (`avx512_dot.py`)


def uses_amx(module: ir.Module) -> bool:
    """The (LLVM-dialect) module contains AMX kernels."""
    return any(
        _BLOCK_FUNC.match(ir.StringAttr(op.attributes["sym_name"]).value)
        for op in module.body.operations
        if "sym_name" in op.attributes
    )


def keep_blocks_out_of_line(module: ir.Module) -> None:
    """Mark the kernels' block functions `no_inline` (an LLVM-dialect module): func-to-llvm
    drops the attribute, so it is set here."""
    for op in module.body.operations:
        op = op.operation
        if op.name == "llvm.func" and _ANY_BLOCK_FUNC.match(ir.StringAttr(op.attributes["sym_name"]).value):
            op.attributes["no_inline"] = ir.UnitAttr.get(module.context)


def marked(module: ir.Module) -> list[ir.Operation]:
    """The `tc.amx` contractions of a module."""
    out: list[ir.Operation] = []
    walk_ops(module.operation, lambda op: out.append(op) if AMX in op.attributes else None)
    return out


_VIEWS = ("memref.expand_shape", "memref.collapse_shape")


def _zero_fill_of(op: ir.Operation) -> ir.Operation | None:
    """The `tc.amx_init` zero fill of the buffer under `op`'s C (through reshapes), if
    nothing else touches the buffer before `op` (then the kernel may start from zero tiles
    and the fill may go). `op` sits directly in its function's body."""
    root = op.operands[2]
    while isinstance(root.owner, ir.Operation) and root.owner.name in _VIEWS:
        root = root.owner.operands[0]
    fills, others = [], []

    def collect(v: ir.Value) -> None:
        for use in v.uses:
            user = use.owner
            if user.name in _VIEWS:
                collect(user.results[0])
            elif user.name == "linalg.fill" and AMX_INIT in user.attributes:
                fills.append(user)
            elif user != op:
                others.append(user)

    collect(root)
    if len(fills) != 1:
        return None
    body = list(op.parent.regions[0].blocks[0].operations)

    def position(x: ir.Operation) -> int | None:
        while x.parent is not None and x.parent != op.parent:
            x = x.parent
        return next((i for i, y in enumerate(body) if y.operation == x), None)

    here = position(op)
    for user in others:  # any other user must come after the contraction (reading its result)
        pos = position(user)
        if pos is None or here is None or pos < here:
            return None
    return fills[0]


def unsigned_operand(op: ir.Operation) -> str:
    """ "a" or "b" when the contraction's body zero-extends that operand (u8 bytes: an int8
    activation shifted by 128 for `vpdpbusd`), else ""."""
    block = op.regions[0].blocks[0]
    for inner in block.operations:
        if inner.operation.name == "arith.extui":
            for i, name in enumerate("ab"):
                if inner.operands[0] == block.arguments[i]:
                    return name
    return ""


def lower_marked(module: ir.Module) -> int:
    """Replace every `tc.amx` generic on memrefs by a call to its AMX kernel; returns how
    many. Generics still on tensors (not bufferized) are an error."""
    ops = marked(module)
    if not ops:
        return 0
    ctx = module.context
    kernels: dict[str, str] = {}
    for op in ops:
        types = [str(o.type) for o in op.operands]
        if len(types) != 3 or not all(t.startswith("memref<") for t in types):
            raise AmxError(f"AMX contraction at {op.location}: expected 3 memref operands, got {', '.join(types)}")
        sched = AmxSchedule.from_json(ir.StringAttr(op.attributes[AMX]).value)
        fill = _zero_fill_of(op)
        if fill is not None:  # the kernel starts from zero tiles: the fill's pass over C is saved
            fill.erase()
        unsigned = unsigned_operand(op)  # (part of the key: a vpdpbusd kernel reads one operand as u8)
        key = json.dumps([types, sched.to_json(), fill is not None, unsigned])
        if key not in kernels:
            if sched.isa == "avx512":  # no AMX here: vdpbf16ps / vpdpbusd register blocks
                from tilecraft.backends.cpu import avx512_dot
                from tilecraft.backends.cpu.target import host

                need = "avx512vnni" if unsigned else "avx512bf16"  # (LLVM aborts on an instruction the host lacks)
                if not host().has(need):
                    raise AmxError(f"this CPU lacks {need}: the low-precision kernel at {op.location} cannot run here")

                kernels[key] = f"__tc_dot_{len(kernels)}"
                text = avx512_dot.kernel_text(
                    kernels[key], *types, sched, zero_init=fill is not None, unsigned=unsigned
                )
            elif unsigned:
                raise AmxError(f"AMX contraction at {op.location}: unsigned operands are lowered by AVX-512 kernels")
            else:
                kernels[key] = f"__tc_amx_{len(kernels)}"
                text = kernel_text(kernels[key], *types, sched, zero_init=fill is not None)
            parsed = ir.Module.parse(text, context=ctx)
            present = {
                ir.StringAttr(o.attributes["sym_name"]).value
                for o in module.body.operations
                if "sym_name" in o.attributes
            }
            for kop in list(parsed.body.operations):
                if ir.StringAttr(kop.attributes["sym_name"]).value not in present:  # (a shared declaration: once)
                    module.body.append(kop.operation)
        with ir.InsertionPoint(op), op.location:
            func.CallOp([], ir.FlatSymbolRefAttr.get(kernels[key], context=ctx), list(op.operands))
        op.erase()
    return len(ops)
