"""The accelerator simulator: executes a binary bit-exactly and counts its cycles.

On the backends floor; reads a binary (`dialects/accel.py`'s encoding) and an
`AccelTarget`, and a DRAM image (a numpy uint8 array the runtime lays out). The three
modules — load (LOAD of inputs and weights), compute (LOAD of micro-ops and accumulators,
GEMM, ALU, FINISH) and store (STORE) — each run their own instructions in program order,
concurrently, blocked only by their dependency-token queues (load→compute, compute→load,
compute→store, store→compute), as in VTA. The event loop always advances the module that
can start earliest, so the functional effects happen in a causally valid order; effects
are applied at once when an instruction starts, so a missing token shows in the result
only when the timing exposes it. `check_races` proves a program's synchronization for
every timing (happens-before analysis). A DMA costs `dram_latency + bytes / bandwidth` and writes at most one buffer
entry per cycle; a GEMM micro-op iteration (one `block × block` product) costs `gemm_ii`
cycles, an ALU one `alu_ii`, plus a pipeline drain per instruction.

With `dram=None` only the timing is computed (the cost-model corpus runs that way).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tilecraft.backends.accel.target import AccelTarget
from tilecraft.dialects import accel as isa


class SimulationError(RuntimeError):
    """The program cannot run: out-of-bounds access, a token never pushed (deadlock), …"""


@dataclasses.dataclass
class SimResult:
    cycles: int
    gemm_ops: int  # block × block products executed (useful GEMM-core cycles)
    alu_ops: int
    dram_read: int  # bytes
    dram_write: int
    module_busy: dict[str, int]
    instructions: int
    op_cycles: dict[str, int] = dataclasses.field(default_factory=dict)  # busy cycles per instruction kind

    @property
    def utilization(self) -> float:
        """Fraction of cycles the GEMM core does a block product."""
        return self.gemm_ops / self.cycles if self.cycles else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "utilization": self.utilization}


class Machine:
    """The on-chip state: buffers of entries (inputs int8, weights int8, accumulators int32)."""

    def __init__(self, target: AccelTarget, functional: bool):
        b = target.block
        self.t = target
        self.functional = functional
        if functional:
            self.inp = np.zeros((target.inp_depth, b), np.int8)
            self.wgt = np.zeros((target.wgt_depth, b, b), np.int8)
            self.acc = np.zeros((target.acc_depth, b), np.int32)
        self.uop = np.zeros((target.uop_depth, 3), np.int64)


def _module_of(ins: dict) -> str:
    if ins["op"] == "load":
        return "load" if ins["memory"] in (isa.MEM_INP, isa.MEM_WGT) else "compute"
    return "store" if ins["op"] == "store" else "compute"


# token queues: (module that pops, which side) -> queue name
_POPS = {
    ("load", "pop_next"): "c2l",
    ("compute", "pop_prev"): "l2c",
    ("compute", "pop_next"): "s2c",
    ("store", "pop_prev"): "c2s",
}
_PUSHES = {
    ("load", "push_next"): "l2c",
    ("compute", "push_prev"): "c2l",
    ("compute", "push_next"): "c2s",
    ("store", "push_prev"): "s2c",
}


def simulate(binary: bytes, target: AccelTarget, dram: np.ndarray | None = None) -> SimResult:
    """Run `binary` on `target`; `dram` (uint8, modified in place) holds the data, or None
    for timing only. The micro-op table is read from the binary (DRAM micro-op address 0)."""
    insns, uops = isa.decode_arrays(binary)
    m = Machine(target, functional=dram is not None)
    uop_table = np.array(uops, np.int64).reshape(-1, 3)
    queues: dict[str, list[int]] = {q: [] for q in ("l2c", "c2l", "c2s", "s2c")}
    per_module: dict[str, list[tuple[int, dict]]] = {"load": [], "compute": [], "store": []}
    for i, ins in enumerate(insns):
        per_module[_module_of(ins)].append((i, ins))
    head = {k: 0 for k in per_module}
    clock = {k: 0 for k in per_module}
    busy = {k: 0 for k in per_module}
    stats = {"gemm": 0, "alu": 0, "read": 0, "write": 0}
    op_cycles: dict[str, int] = {}
    finished = False
    while not finished:
        best = None
        for mod, lst in per_module.items():
            if head[mod] >= len(lst):
                continue
            _, ins = lst[head[mod]]
            pops = [q for (mm, side), q in _POPS.items() if mm == mod and ins.get(side)]
            if any(not queues[q] for q in pops):
                continue
            start = max([clock[mod]] + [queues[q][0] for q in pops])
            if best is None or start < best[0]:
                best = (start, mod, pops)
        if best is None:
            if all(head[k] >= len(v) for k, v in per_module.items()):
                raise SimulationError("the program ends without a FINISH")
            stuck = {k: v[head[k]][0] for k, v in per_module.items() if head[k] < len(v)}
            raise SimulationError(f"deadlock: instructions {stuck} wait for tokens never pushed")
        start, mod, pops = best
        index, ins = per_module[mod][head[mod]]
        for q in pops:
            queues[q].pop(0)
        try:
            cost = _execute(m, ins, uop_table, dram, stats)
        except (IndexError, ValueError) as exc:
            raise SimulationError(f"instruction {index} ({ins['op']}): {exc}") from None
        end = start + cost
        busy[mod] += cost
        kind = ins["op"] if ins["op"] != "gemm" or not ins["reset"] else "gemm-reset"
        op_cycles[kind] = op_cycles.get(kind, 0) + cost
        clock[mod] = end
        head[mod] += 1
        for (mm, side), q in _PUSHES.items():
            if mm == mod and ins.get(side):
                queues[q].append(end)
        if ins["op"] == "finish":
            finished = True
    return SimResult(
        cycles=max(clock.values()),
        gemm_ops=stats["gemm"],
        alu_ops=stats["alu"],
        dram_read=stats["read"],
        dram_write=stats["write"],
        module_busy=busy,
        instructions=len(insns),
        op_cycles=op_cycles,
    )


# ------------------------------------------------------------------ instructions
def _entry_bytes(t: AccelTarget, memory: int) -> int:
    return {
        isa.MEM_UOP: 4,
        isa.MEM_WGT: t.wgt_entry,
        isa.MEM_INP: t.inp_entry,
        isa.MEM_ACC: t.acc_entry,
        isa.MEM_OUT: t.block,
        isa.MEM_ACC8: t.block,
    }[memory]


def _depth(t: AccelTarget, memory: int) -> int:
    return {
        isa.MEM_UOP: t.uop_depth,
        isa.MEM_WGT: t.wgt_depth,
        isa.MEM_INP: t.inp_depth,
        isa.MEM_ACC: t.acc_depth,
        isa.MEM_ACC8: t.acc_depth,
    }[memory]


def _execute(m: Machine, ins: dict, uop_table: np.ndarray, dram, stats) -> int:
    op = ins["op"]
    if op == "finish":
        return 1
    if op == "load":
        return _load(m, ins, uop_table, dram, stats)
    if op == "store":
        return _store(m, ins, dram, stats)
    return _loop(m, ins, stats)


def _load(m: Machine, ins: dict, uop_table, dram, stats) -> int:
    t, mem = m.t, ins["memory"]
    ys, xs, stride = ins["y_size"], ins["x_size"], ins["x_stride"]
    rows = ins["y_pad_0"] + ys + ins["y_pad_1"]
    cols = ins["x_pad_0"] + xs + ins["x_pad_1"]
    base = ins["sram_base"]
    if base + rows * cols > _depth(t, mem):
        raise SimulationError(f"load of {rows}×{cols} entries at {base} overruns the buffer of {_depth(t, mem)}")
    eb = _entry_bytes(t, mem)
    nbytes = ys * xs * eb
    stats["read"] += nbytes
    cycles = (t.dma_cycles(nbytes) if nbytes else 1) + max(0, rows * cols - int(nbytes / t.bytes_per_cycle))
    if mem == isa.MEM_UOP:
        src = ins["dram_base"] + (np.arange(ys)[:, None] * stride + np.arange(xs)[None, :]).ravel()
        if src.size and src.max() >= len(uop_table):
            raise SimulationError(f"micro-op load reads entry {int(src.max())} of a table of {len(uop_table)}")
        m.uop[base : base + src.size] = uop_table[src]
        return cycles
    if dram is None:
        return cycles
    idx = ins["dram_base"] + (np.arange(ys)[:, None] * stride + np.arange(xs)[None, :])
    start = idx * eb
    if idx.size and (start.max() + eb) > dram.size:
        raise SimulationError(f"load reads DRAM byte {int(start.max() + eb)} beyond {dram.size}")
    raw = dram[start[..., None] + np.arange(eb)]  # [ys, xs, eb]
    b = t.block
    if mem == isa.MEM_INP:
        vals, buf = raw.view(np.int8).reshape(ys, xs, b), m.inp
    elif mem == isa.MEM_WGT:
        vals, buf = raw.view(np.int8).reshape(ys, xs, b, b), m.wgt
    elif mem == isa.MEM_ACC:
        vals, buf = np.ascontiguousarray(raw).view(np.int32).reshape(ys, xs, b), m.acc
    else:  # ACC8: int8 sign-extended into accumulator lanes
        vals, buf = raw.view(np.int8).reshape(ys, xs, b).astype(np.int32), m.acc
    tile = np.zeros((rows, cols) + vals.shape[2:], buf.dtype)
    tile[ins["y_pad_0"] : ins["y_pad_0"] + ys, ins["x_pad_0"] : ins["x_pad_0"] + xs] = vals
    buf[base : base + rows * cols] = tile.reshape((rows * cols,) + vals.shape[2:])
    return cycles


def _store(m: Machine, ins: dict, dram, stats) -> int:
    t = m.t
    ys, xs, stride, base = ins["y_size"], ins["x_size"], ins["x_stride"], ins["sram_base"]
    n = ys * xs
    if base + n > t.acc_depth:
        raise SimulationError(f"store of {n} entries at {base} overruns the accumulators ({t.acc_depth})")
    if ins["memory"] == isa.MEM_INP:  # on chip: accumulators → input buffer
        dst = ins["dram_base"] + (np.arange(ys)[:, None] * stride + np.arange(xs)[None, :]).ravel()
        if dst.size and dst.max() >= t.inp_depth:
            raise SimulationError(f"on-chip store writes input entry {int(dst.max())} beyond {t.inp_depth}")
        if m.functional:
            m.inp[dst] = m.acc[base : base + n].astype(np.int8)
        return n + 1
    nbytes = n * t.block
    stats["write"] += nbytes
    if dram is not None and n:
        idx = ins["dram_base"] + (np.arange(ys)[:, None] * stride + np.arange(xs)[None, :]).ravel()
        start = idx * t.block
        if start.max() + t.block > dram.size:
            raise SimulationError(f"store writes DRAM byte {int(start.max() + t.block)} beyond {dram.size}")
        dram[start[:, None] + np.arange(t.block)] = m.acc[base : base + n].astype(np.int8).view(np.uint8)
    return max(t.dma_cycles(nbytes), n)


def _loop_indices(ins: dict, uops: np.ndarray, col: int, f_out: str, f_in: str) -> np.ndarray:
    i0 = np.arange(ins["iter_out"])[:, None, None] * ins[f_out]
    i1 = np.arange(ins["iter_in"])[None, :, None] * ins[f_in]
    return (uops[None, None, :, col] + i0 + i1).reshape(-1)


def _loop(m: Machine, ins: dict, stats) -> int:
    t = m.t
    uops = m.uop[ins["uop_bgn"] : ins["uop_end"]]
    if ins["uop_end"] < ins["uop_bgn"]:
        raise SimulationError(f"micro-op range {ins['uop_bgn']}..{ins['uop_end']} is empty backwards")
    n = ins["iter_out"] * ins["iter_in"] * len(uops)
    gemm = ins["op"] == "gemm"
    ii = t.gemm_ii if gemm else t.alu_ii
    cycles = n * ii + t.pipeline
    if gemm and not ins["reset"]:
        stats["gemm"] += n
    elif not gemm:
        stats["alu"] += n
    if n == 0:
        return cycles
    dst = _loop_indices(ins, uops, 0, "dst_factor_out", "dst_factor_in")
    src = _loop_indices(ins, uops, 1, "src_factor_out", "src_factor_in")
    if dst.max() >= t.acc_depth:
        raise SimulationError(f"{ins['op']} writes accumulator {int(dst.max())} beyond {t.acc_depth}")
    if gemm and not ins["reset"]:
        wgt = _loop_indices(ins, uops, 2, "wgt_factor_out", "wgt_factor_in")
        if src.max() >= t.inp_depth or wgt.max() >= t.wgt_depth:
            raise SimulationError(f"gemm reads input {int(src.max())} / weight {int(wgt.max())} beyond the buffers")
    elif not gemm and not ins["use_imm"] and src.max() >= t.acc_depth:
        raise SimulationError(f"alu reads accumulator {int(src.max())} beyond {t.acc_depth}")
    if not m.functional:
        return cycles
    if gemm:
        if ins["reset"]:
            m.acc[dst] = 0
            return cycles
        # products of int8 over one block are exact in float32 (|sum| < 2^24 for block ≤ 64)
        prod = np.einsum("nb,nob->no", m.inp[src].astype(np.float32), m.wgt[wgt].astype(np.float32))
        acc = m.acc.astype(np.int64)
        np.add.at(acc, dst, prod.astype(np.int64))
        m.acc[:] = acc.astype(np.int32)  # wraps like the hardware
        return cycles
    a = m.acc[dst].astype(np.int64)
    bval = np.int64(ins["imm"]) if ins["use_imm"] else m.acc[src].astype(np.int64)
    if len(np.unique(dst)) != dst.size or (not ins["use_imm"] and np.intersect1d(dst, src).size):
        _alu_sequential(m, ins, dst, src)
        return cycles
    m.acc[dst] = _alu(ins["alu_opcode"], a, bval)
    return cycles


def _alu(opcode: int, a: np.ndarray, b) -> np.ndarray:
    if opcode == isa.ALU_MIN:
        r = np.minimum(a, b)
    elif opcode == isa.ALU_MAX:
        r = np.maximum(a, b)
    elif opcode == isa.ALU_ADD:
        r = a + b
    elif opcode == isa.ALU_MUL:
        r = a * b
    else:  # SHR: arithmetic right shift; a negative amount shifts left
        b = np.broadcast_to(np.asarray(b, np.int64), a.shape)
        r = np.where(b >= 0, a >> np.clip(b, 0, 63), a << np.clip(-b, 0, 63))
    return (r & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def _alu_sequential(m: Machine, ins: dict, dst, src) -> None:
    """An ALU loop whose iterations overlap (an entry written and read again): in order."""
    for d, s in zip(dst, src):
        b = np.int64(ins["imm"]) if ins["use_imm"] else m.acc[s].astype(np.int64)
        m.acc[d] = _alu(ins["alu_opcode"], m.acc[d].astype(np.int64), b)


# ------------------------------------------------------------------ synchronization check
_MODS = ("load", "compute", "store")


def check_races(binary: bytes, target: AccelTarget) -> list[str]:
    """Every way `binary`'s synchronization can fail, whatever the modules' timing: a wait
    no token can satisfy, a token left over, and every pair of accesses to one buffer entry
    or DRAM byte from two modules (one a write) that the token order does not order — found
    by happens-before analysis (vector clocks over program order and the token queues), so
    a clean answer holds for every timing, not only the one `simulate` ran."""
    insns, uops = isa.decode_arrays(binary)
    uop_table = np.array(uops, np.int64).reshape(-1, 3)
    mod = [_module_of(ins) for ins in insns]
    per = {m: [i for i, mm in enumerate(mod) if mm == m] for m in _MODS}
    pos = {i: k + 1 for m in _MODS for k, i in enumerate(per[m])}
    queues: dict[str, list[np.ndarray]] = {q: [] for q in ("l2c", "c2l", "c2s", "s2c")}
    head = {m: 0 for m in _MODS}
    clock: dict[int, np.ndarray] = {}
    last = {m: np.zeros(3, np.int64) for m in _MODS}
    order: list[int] = []
    progressed = True
    while progressed:
        progressed = False
        for m in _MODS:
            while head[m] < len(per[m]):
                i = per[m][head[m]]
                pops = [q for (mm, side), q in _POPS.items() if mm == m and insns[i].get(side)]
                if any(not queues[q] for q in pops):
                    break
                v = last[m].copy()
                for q in pops:
                    v = np.maximum(v, queues[q].pop(0))
                v[_MODS.index(m)] = pos[i]
                clock[i] = last[m] = v
                for (mm, side), q in _PUSHES.items():
                    if mm == m and insns[i].get(side):
                        queues[q].append(v)
                order.append(i)
                head[m] += 1
                progressed = True
    problems = [f"instruction {per[m][head[m]]} ({m}) waits forever" for m in _MODS if head[m] < len(per[m])]
    problems += [f"{len(v)} token(s) left in {q}" for q, v in queues.items() if v]

    def before(a: int, b: int) -> bool:
        return clock[b][_MODS.index(mod[a])] >= pos[a]

    b = target.block
    chunks = {isa.MEM_INP: 1, isa.MEM_WGT: b, isa.MEM_ACC: 4, isa.MEM_ACC8: 1}  # DRAM `block`-byte chunks per entry
    dram_extent = 1
    for ins in insns:
        if ins["op"] in ("load", "store") and ins["y_size"] * ins["x_size"]:
            top = ins["dram_base"] + (ins["y_size"] - 1) * ins["x_stride"] + ins["x_size"]
            dram_extent = max(dram_extent, top * chunks.get(ins["memory"], 1))
    sizes = {"inp": target.inp_depth, "wgt": target.wgt_depth, "acc": target.acc_depth, "dram": dram_extent}
    writer = {k: np.full(n, -1, np.int64) for k, n in sizes.items()}  # last writer of each entry
    reader = {k: {m: np.full(n, -1, np.int64) for m in _MODS} for k, n in sizes.items()}  # last reader per module

    def access(i: int, space: str, locs, write: bool) -> None:
        locs = np.unique(np.asarray(locs, np.int64).ravel())
        if not locs.size:
            return
        if locs[0] < 0 or locs[-1] >= sizes[space]:
            problems.append(
                f"instruction {i} ({insns[i]['op']}) reaches {space}[{int(locs[-1])}] beyond {sizes[space]}"
            )
            return
        for w in np.unique(writer[space][locs]).tolist():
            if w >= 0 and w != i and mod[w] != mod[i] and not before(w, i):
                problems.append(f"{space}: instruction {i} ({insns[i]['op']}) races the write of {w}")
        if write:
            for m in _MODS:
                if m != mod[i]:
                    for r in np.unique(reader[space][m][locs]).tolist():
                        if r >= 0 and not before(r, i):
                            problems.append(f"{space}: instruction {i} overwrites what {r} reads")
            writer[space][locs] = i
            for m in _MODS:
                reader[space][m][locs] = -1
        else:
            reader[space][mod[i]][locs] = i

    uop_buf = np.zeros((target.uop_depth, 3), np.int64)
    for i in order:
        ins = insns[i]
        op = ins["op"]
        if op in ("load", "store"):
            idx = (
                ins["dram_base"]
                + (np.arange(ins["y_size"])[:, None] * ins["x_stride"] + np.arange(ins["x_size"])[None, :]).ravel()
            )
        if op == "load":
            mem, base = ins["memory"], ins["sram_base"]
            if mem == isa.MEM_UOP:
                uop_buf[base : base + idx.size] = uop_table[idx]
                continue
            rows = ins["y_pad_0"] + ins["y_size"] + ins["y_pad_1"]
            cols = ins["x_pad_0"] + ins["x_size"] + ins["x_pad_1"]
            k = chunks[mem]
            access(i, "dram", (idx[:, None] * k + np.arange(k)).ravel(), False)
            buf = {isa.MEM_INP: "inp", isa.MEM_WGT: "wgt"}.get(mem, "acc")
            access(i, buf, np.arange(base, base + rows * cols), True)
        elif op == "store":
            access(i, "acc", np.arange(ins["sram_base"], ins["sram_base"] + idx.size), False)
            access(i, "inp" if ins["memory"] == isa.MEM_INP else "dram", idx, True)
        elif op in ("gemm", "alu"):
            u = uop_buf[ins["uop_bgn"] : ins["uop_end"]]
            if ins["iter_out"] * ins["iter_in"] * len(u) == 0:
                continue
            dst = _loop_indices(ins, u, 0, "dst_factor_out", "dst_factor_in")
            if op == "gemm" and not ins["reset"]:
                access(i, "inp", _loop_indices(ins, u, 1, "src_factor_out", "src_factor_in"), False)
                access(i, "wgt", _loop_indices(ins, u, 2, "wgt_factor_out", "wgt_factor_in"), False)
            elif op == "alu" and not ins["use_imm"]:
                access(i, "acc", _loop_indices(ins, u, 1, "src_factor_out", "src_factor_in"), False)
            if op == "alu" or not ins["reset"]:
                access(i, "acc", dst, False)
            access(i, "acc", dst, True)
    # the host reads DRAM after FINISH: every store must come before it (checked once every
    # access is recorded: the walk above may reach FINISH before stores it does not wait for)
    for f in (i for i in order if insns[i]["op"] == "finish"):
        for w in np.unique(writer["dram"]).tolist():
            if w >= 0 and not before(w, f):
                problems.append(f"dram: the store of {w} may land after FINISH")
    return problems
