"""AVX-512 dot-product kernels for bf16 and int8 contractions where there is no AMX
(`vdpbf16ps`, AVX512-BF16; `vpdpbusd`, AVX512-VNNI).

On the backends floor; called by `backends/cpu/amx.py: lower_marked` in the `cpu-llvm`
stage for a `tc.amx` contraction whose schedule says `isa = "avx512"` (the precision planner
picks it on a CPU with AVX512-BF16 and no AMX). The operands are the AMX kernel's, so the
VNNI-packed layouts, the rewrite in `passes/precision.py` and its exact semantics are shared:
A `[(batch,) M, K/2, 2]`; B plain `[(batch,) K/2, N, 2]` or blocked
`[(batch,) N/16, K/2, 16, 2]`; C `[(batch,) M, N]` or `[(batch,) M, N/16, 16]`.

A register block is `mr` rows × `nr` vectors of 16 columns, its `mr · nr` f32 accumulators
carried in registers over the whole K loop. Each step of K/2 loads `nr` B vectors (a K pair
of 16 columns: 32 bf16, one zmm, contiguous in both layouts), broadcasts each row's A pair
(one 32-bit lane) and issues `mr · nr` `x86.avx512.dot` (`vdpbf16ps`: per lane, acc + the
pair's two products, exact products summed in f32). int8 (v = 4) is the same block with
`vpdpbusd`: each i32 lane adds four u8 × s8 products, so one operand's bytes are unsigned
(the precision pass shifts that activation by 128 and subtracts the shift's contribution,
known from the weights, after the contraction). A column remainder (a plain B with
N % 16 ≠ 0) is read and written with masked loads and stores; a row remainder is a block of
fewer rows. Each block shape is its own function (kept out of line), like the AMX kernels.
"""

from __future__ import annotations

from torch_mlir import ir

from tilecraft.backends.cpu.amx import AmxError, KernelWriter, gemm_operands
from tilecraft.dialects.irutil import append_helper, symbol_name

LANES = 16  # f32 accumulators per zmm; a K pair of 16 columns is 32 bf16


# `vpdpbusd` has no op in the x86 dialect, and `llvm.call_intrinsic` inside a kernel stops the
# buffer-deallocation pass ("ops with unknown memory side effects"): the kernels call this
# private function, declared (with each int8 kernel's text) until the module is LLVM dialect,
# then defined (`define_vpdpbusd`)
# as the intrinsic, always inlined.
VPDPBUSD = "__tc_vpdpbusd_512"
_I8_SIG = "(vector<16xi32>, vector<64xi8>, vector<64xi8>) -> vector<16xi32>"
VPDPBUSD_DECL = f"func.func private @{VPDPBUSD}{_I8_SIG}"
VPDPBUSD_DEF = (
    f"llvm.func internal @{VPDPBUSD}(%acc: vector<16xi32>, %a: vector<64xi8>, %b: vector<64xi8>) -> vector<16xi32> "
    "attributes {always_inline} {\n"
    f'  %r = llvm.call_intrinsic "llvm.x86.avx512.vpdpbusd.512"(%acc, %a, %b) : {_I8_SIG}\n'
    "  llvm.return %r : vector<16xi32>\n}"
)


def define_vpdpbusd(module: ir.Module) -> None:
    """In the LLVM-dialect module: the `VPDPBUSD` declaration becomes its definition."""
    decl = next((op for op in module.body.operations if symbol_name(op) == VPDPBUSD), None)
    if decl is None:
        return
    decl.operation.erase()
    append_helper(module, VPDPBUSD_DEF)


# element type → (VNNI factor, accumulator element)
_TYPES = {"bf16": (2, "f32"), "i8": (4, "i32")}


def kernel_text(
    name: str, a_type: str, b_type: str, c_type: str, sched, *, zero_init: bool = False, unsigned: str = ""
) -> str:
    """Private funcs: `@name(%A, %B, %C)` accumulates A × B into C (or, with `zero_init`,
    writes A × B into C, whose contents are ignored). int8 (`vpdpbusd`) multiplies unsigned
    by signed bytes: `unsigned` names the operand ("a" or "b") whose bytes are unsigned."""
    a, b, c = (ir.MemRefType(ir.Type.parse(t)) for t in (a_type, b_type, c_type))
    elem = str(a.element_type)
    if elem not in _TYPES:
        raise AmxError(f"AVX-512 dot kernel: {elem} operands are not supported (bf16, i8)")
    if (elem == "i8") != (unsigned in ("a", "b")):
        raise AmxError("AVX-512 dot kernel: int8 needs exactly one unsigned operand (vpdpbusd: u8 × s8)")
    v, acc_elem = _TYPES[elem]
    w = KernelWriter()
    params = (a_type, b_type, c_type)
    # A [M, K]; B blocked [N/16 · K/v, 16·v]: row (j/16)·(K/v) + k/v, or plain [K/v, N·v]: column v·j
    ops = gemm_operands(w, a, b, c, v, "AVX-512 dot kernel")
    blocked, m, n, k = ops.blocked, ops.m, ops.n, ops.k
    kh_n = k // v
    funcs: list[str] = []
    blocks: dict[tuple, str] = {}

    def block_func(at: str, bt: str, ct: str, rows: int, widths: tuple[int, ...]) -> str:
        """C[i:i+rows, j:j+Σwidths] (+)= A · B: one register block; `widths` are the
        columns of each vector (16, or a remainder read and written under a mask)."""
        key = (at, bt, ct, rows, widths)
        if key in blocks:
            return blocks[key]
        fname = blocks[key] = f"{name}_b{len(blocks)}"
        bw = KernelWriter()
        vf, vb = f"vector<{LANES}x{acc_elem}>", f"vector<{v * LANES}x{elem}>"
        zero = "0" if acc_elem == "i32" else "0.000000e+00"
        ri = [bw.tmp("i") for _ in range(rows)]
        for x, r in enumerate(ri):
            bw(f"{r} = arith.addi %i, {bw.c(x)} : index")
        cj = [bw.tmp("j") for _ in widths]
        for y, cc in enumerate(cj):
            bw(f"{cc} = arith.addi %j, {bw.c(LANES * y)} : index")
        masks = {}
        for wd in sorted(set(widths) - {LANES}):
            masks[wd] = (bw.tmp("mc"), bw.tmp("mb"))
            bw(f"{masks[wd][0]} = vector.constant_mask [{wd}] : vector<{LANES}xi1>")
            bw(f"{masks[wd][1]} = vector.constant_mask [{v * wd}] : vector<{v * LANES}xi1>")
        zf, zb = bw.tmp("zf"), bw.tmp("zb")
        bw(f"{zf} = arith.constant dense<{zero}> : {vf}")
        bw(f"{zb} = arith.constant dense<{'0' if elem == 'i8' else zero}> : {vb}")
        acc0 = []
        for r in ri:
            for cc, wd in zip(cj, widths):
                t = bw.tmp("cin")
                if zero_init:
                    t = zf
                elif wd == LANES:
                    bw(f"{t} = vector.load %C[{r}, {cc}] : {ct}, {vf}")
                else:
                    mc = masks[wd][0]
                    bw(f"{t} = vector.maskedload %C[{r}, {cc}], {mc}, {zf} : {ct}, vector<{LANES}xi1>, {vf} into {vf}")
                acc0.append(t)
        kv, accs = bw.tmp("kh"), [bw.tmp("a") for _ in acc0]
        res = bw.tmp("r")
        iter_args = ", ".join(f"{x} = {y}" for x, y in zip(accs, acc0))
        bw(
            f"{res}:{len(accs)} = scf.for {kv} = {bw.c(0)} to {bw.c(kh_n)} step {bw.c(1)} "
            f"iter_args({iter_args}) -> ({', '.join([vf] * len(accs))}) {{"
        )
        ka = bw.tmp("ka")
        bw(f"  {ka} = arith.muli {kv}, {bw.c(v)} : index")
        bvec = []
        for cc, wd in zip(cj, widths):
            t = bw.tmp("bv")
            if blocked:  # row (j / 16) · K/2 + k/2
                jb, row = bw.tmp("jb"), bw.tmp("row")
                bw(f"  {jb} = arith.divui {cc}, {bw.c(LANES)} : index")
                bw(f"  {row} = affine.apply affine_map<(d0, d1) -> (d0 * {kh_n} + d1)>({jb}, {kv})")
                bw(f"  {t} = vector.load %B[{row}, {bw.c(0)}] : {bt}, {vb}")
            else:
                col = bw.tmp("col")
                bw(f"  {col} = arith.muli {cc}, {bw.c(v)} : index")
                if wd == LANES:
                    bw(f"  {t} = vector.load %B[{kv}, {col}] : {bt}, {vb}")
                else:
                    mb, mt = masks[wd][1], f"vector<{v * LANES}xi1>"
                    bw(f"  {t} = vector.maskedload %B[{kv}, {col}], {mb}, {zb} : {bt}, {mt}, {vb} into {vb}")
            bvec.append(t)
        new = []
        for x, r in enumerate(ri):
            pair, word, lane, bcast, av = (bw.tmp(s) for s in ("p", "w", "l", "s", "av"))
            bw(f"  {pair} = vector.load %A[{r}, {ka}] : {at}, vector<{v}x{elem}>")
            bw(f"  {word} = vector.bitcast {pair} : vector<{v}x{elem}> to vector<1xi32>")
            bw(f"  {lane} = vector.extract {word}[0] : i32 from vector<1xi32>")
            bw(f"  {bcast} = vector.broadcast {lane} : i32 to vector<{LANES}xi32>")
            bw(f"  {av} = vector.bitcast {bcast} : vector<{LANES}xi32> to {vb}")
            for y in range(len(widths)):
                t, acc = bw.tmp("d"), accs[x * len(widths) + y]
                if elem == "bf16":
                    bw(f"  {t} = x86.avx512.dot {acc}, {av}, {bvec[y]} : {vb} -> {vf}")
                else:  # vpdpbusd: acc + the four u8 × s8 products of each lane (see `VPDPBUSD`)
                    u, sg = (av, bvec[y]) if unsigned == "a" else (bvec[y], av)
                    bw(f"  {t} = func.call @{VPDPBUSD}({acc}, {u}, {sg}) : ({vf}, {vb}, {vb}) -> {vf}")
                new.append(t)
        bw(f"  scf.yield {', '.join(new)} : {', '.join([vf] * len(new))}")
        bw("}")
        for x, r in enumerate(ri):
            for y, (cc, wd) in enumerate(zip(cj, widths)):
                val = f"{res}#{x * len(widths) + y}"
                if wd == LANES:
                    bw(f"vector.store {val}, %C[{r}, {cc}] : {ct}, {vf}")
                else:
                    bw(f"vector.maskedstore %C[{r}, {cc}], {masks[wd][0]}, {val} : {ct}, vector<{LANES}xi1>, {vf}")
        args = f"%A: {at}, %B: {bt}, %C: {ct}, %i: index, %j: index"
        funcs.append(bw.function(fname, args))
        return fname

    def col_parts(width: int) -> list[tuple[str, int, tuple[int, ...]]]:
        """(kind, extent of full blocks or offset of the remainder, vector widths)."""
        step = LANES * sched.nr
        full = width - width % step
        rem = width - full
        widths = [LANES] * (rem // LANES) + ([rem % LANES] if rem % LANES else [])
        return ([("loop", full, (LANES,) * sched.nr)] if full else []) + ([("rem", full, tuple(widths))] if rem else [])

    def row_parts() -> list[tuple[str, int, int]]:
        full = m - m % sched.mr
        return ([("loop", full, sched.mr)] if full else []) + ([("rem", full, m - full)] if m > full else [])

    def start(kind: str, ext: int, step: int, stem: str) -> str:
        var = w.tmp(stem)
        if kind == "loop":
            w(f"scf.for {var} = {w.c(0)} to {w.c(ext)} step {w.c(step)} {{")
        else:
            w(f"{var} = arith.constant {ext} : index")
        return var

    def body(av: str, at: str, bv: str, bt: str, cv: str, ct: str) -> None:
        sig = f"({at}, {bt}, {ct}, index, index) -> ()"
        rows, cols = row_parts(), col_parts(n)
        ij = sched.order == "ij"
        for okind, oext, osize in rows if ij else cols:
            ov = start(okind, oext, osize if ij else LANES * len(osize), "o")
            for ikind, iext, isize in cols if ij else rows:
                iv = start(ikind, iext, LANES * len(isize) if ij else isize, "p")
                i, j, r, wd = (ov, iv, osize, isize) if ij else (iv, ov, isize, osize)
                f = block_func(at, bt, ct, r, wd)
                w(f"func.call @{f}({av}, {bv}, {cv}, {i}, {j}) : {sig}")
                if ikind == "loop":
                    w("}")
            if okind == "loop":
                w("}")

    w.per_batch(ops, body)
    decl = [VPDPBUSD_DECL] if elem == "i8" else []  # (the module keeps one: `amx.lower_marked`)
    return "\n\n".join([w.function(name, f"%A: {params[0]}, %B: {params[1]}, %C: {params[2]}"), *funcs, *decl])
