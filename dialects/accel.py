"""The `accel` dialect: the instruction set of Tilecraft's GEMM accelerator, one op per
instruction, with its binary encoding (assembler) and decoding (disassembler).

The ground floor (imports nothing of ours). The machine is in the style of TVM's VTA
(`hw_spec.h`): 128-bit instructions LOAD, STORE, GEMM, ALU and FINISH; every instruction
carries four dependency-token bits (pop/push to the previous/next module) through which
the load, compute and store modules synchronize; GEMM and ALU run a two-level loop over a
range of 32-bit micro-ops held in the micro-op buffer. Buffers hold *entries*: an input
entry is `block` int8 values (one pixel's channel block), a weight entry a `block × block`
int8 matrix, an accumulator entry `block` int32 values; DRAM addresses count entries of the
memory they name.

Memory ids (`memory`): 0 micro-ops, 1 weights, 2 inputs, 3 accumulators (int32 from DRAM),
4 out (STORE: accumulator lanes narrowed to int8, into DRAM), 5 acc8 (LOAD: int8 values from
DRAM sign-extended into accumulator lanes — the skip tensor of a residual add). A STORE to
memory 2 moves accumulator entries, narrowed to int8, into the input buffer on chip
(`dram_base` is then the input-buffer entry): how a tensor stays on chip between layers.

Bit layout (little-endian from bit 0), as VTA's but for the extra memory ids:
  all:         opcode:3 pop_prev:1 pop_next:1 push_prev:1 push_next:1
  LOAD/STORE:  memory:3 sram_base:16 dram_base:32 _:6 | y_size:16 x_size:16 x_stride:16
               y_pad_0:4 y_pad_1:4 x_pad_0:4 x_pad_1:4
  GEMM:        reset:1 uop_bgn:13 uop_end:14 iter_out:14 iter_in:14 _:1 | dst_factor_out:11
               dst_factor_in:11 src_factor_out:11 src_factor_in:11 wgt_factor_out:10
               wgt_factor_in:10
  ALU:         reset:1 uop_bgn:13 uop_end:14 iter_out:14 iter_in:14 _:1 | dst_factor_out:11
               dst_factor_in:11 src_factor_out:11 src_factor_in:11 alu_opcode:3 use_imm:1
               imm:16 (signed)
  micro-op:    dst_idx:11 src_idx:11 wgt_idx:10 (32 bits)

A program's binary is `TCA1`, the instruction count and the micro-op count (little-endian
u32 each), the instructions (16 bytes each), then the micro-ops (4 bytes each); the
micro-ops are placed at DRAM micro-op address 0 when a program runs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import I64, IntegerAttr, ModuleOp, i64
from xdsl.ir import Dialect
from xdsl.irdl import IRDLOperation, ParsePropInAttrDict, irdl_op_definition, prop_def
from xdsl.utils.exceptions import VerifyException

OPCODES = {"load": 0, "store": 1, "gemm": 2, "finish": 3, "alu": 4}
MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_OUT, MEM_ACC8 = range(6)
ALU_MIN, ALU_MAX, ALU_ADD, ALU_SHR, ALU_MUL = range(5)
ALU_NAMES = ("min", "max", "add", "shr", "mul")

_DEPS = (("pop_prev", 1), ("pop_next", 1), ("push_prev", 1), ("push_next", 1))
_MEM_FIELDS = (
    ("memory", 3),
    ("sram_base", 16),
    ("dram_base", 32),
    ("", 6),
    ("y_size", 16),
    ("x_size", 16),
    ("x_stride", 16),
    ("y_pad_0", 4),
    ("y_pad_1", 4),
    ("x_pad_0", 4),
    ("x_pad_1", 4),
)
_LOOP_FIELDS = (("reset", 1), ("uop_bgn", 13), ("uop_end", 14), ("iter_out", 14), ("iter_in", 14), ("", 1))
_FACTORS = (("dst_factor_out", 11), ("dst_factor_in", 11), ("src_factor_out", 11), ("src_factor_in", 11))
UOP_FIELDS = (("dst_idx", 11), ("src_idx", 11), ("wgt_idx", 10))
SIGNED = frozenset({"imm"})


class AccelEncodingError(ValueError):
    """A field out of its width, or bytes that are not an accelerator binary."""


_INTS: dict[int, IntegerAttr] = {}


def _int(v: int) -> IntegerAttr:
    """One i64 attribute per value (programs repeat a few thousand values many times)."""
    attr = _INTS.get(v)
    if attr is None:
        attr = _INTS[v] = IntegerAttr(int(v), i64)
    return attr


def _field(bits: int):
    del bits  # the width lives in FIELDS; every field is an i64 property
    return prop_def(IntegerAttr[I64])


class InstructionOp(IRDLOperation):
    """Common to the five instructions: the field table and its verifier."""

    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = ()

    @classmethod
    def make(cls, **values: int) -> InstructionOp:
        names = [n for n, _ in cls.FIELDS if n]
        unknown = set(values) - set(names)
        if unknown:
            raise AccelEncodingError(f"{cls.name} has no field {', '.join(sorted(unknown))}")
        return cls(properties={n: _int(values.get(n, 0)) for n in names})

    def fields(self) -> dict[str, int]:
        return {n: self.properties[n].value.data for n, _ in self.FIELDS if n}

    def verify_(self) -> None:
        for name, bits in self.FIELDS:
            if not name:
                continue
            v = self.properties[name].value.data
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in SIGNED else (0, (1 << bits) - 1)
            if not lo <= v <= hi:
                raise VerifyException(f"{self.name}: {name} = {v} does not fit {bits} bits")


class MemoryOp(InstructionOp):
    """The fields LOAD and STORE share (a DMA between DRAM and a buffer)."""

    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = _DEPS + _MEM_FIELDS
    pop_prev, pop_next, push_prev, push_next = (_field(1) for _ in range(4))
    memory, sram_base, dram_base = _field(3), _field(16), _field(32)
    y_size, x_size, x_stride = _field(16), _field(16), _field(16)
    y_pad_0, y_pad_1, x_pad_0, x_pad_1 = (_field(4) for _ in range(4))
    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)


@irdl_op_definition
class LoadOp(MemoryOp):
    """DMA from DRAM into a buffer: a `y_size × x_size` window of rows `x_stride` entries
    apart, framed by zero padding (y_pad_0 rows above, x_pad_0 entries left, …)."""

    name = "accel.load"

    def verify_(self) -> None:
        super().verify_()
        if self.properties["memory"].value.data not in (MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_ACC8):
            raise VerifyException(f"accel.load: memory {self.properties['memory'].value.data} is not loadable")


@irdl_op_definition
class StoreOp(MemoryOp):
    """Accumulator entries narrowed to int8: to DRAM (memory 4) or into the input buffer
    on chip (memory 2, `dram_base` is the input-buffer entry); no padding."""

    name = "accel.store"

    def verify_(self) -> None:
        super().verify_()
        f = self.fields()
        if f["memory"] not in (MEM_OUT, MEM_INP):
            raise VerifyException(f"accel.store: memory {f['memory']} is not a store target (4 out, 2 inp)")
        if any(f[p] for p in ("y_pad_0", "y_pad_1", "x_pad_0", "x_pad_1")):
            raise VerifyException("accel.store: stores take no padding")


@irdl_op_definition
class GemmOp(InstructionOp):
    """for i0 < iter_out, i1 < iter_in, uop in [uop_bgn, uop_end):
    acc[dst] (+)= wgt[w] · inp[src] with index = uop's + i0·factor_out + i1·factor_in
    (`reset` zeroes acc[dst] instead)."""

    name = "accel.gemm"
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        _DEPS + _LOOP_FIELDS + _FACTORS + (("wgt_factor_out", 10), ("wgt_factor_in", 10))
    )
    pop_prev, pop_next, push_prev, push_next = (_field(1) for _ in range(4))
    reset, uop_bgn, uop_end, iter_out, iter_in = (_field(14) for _ in range(5))
    dst_factor_out, dst_factor_in, src_factor_out, src_factor_in = (_field(11) for _ in range(4))
    wgt_factor_out, wgt_factor_in = _field(10), _field(10)
    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)


@irdl_op_definition
class AluOp(InstructionOp):
    """Lane-wise acc[dst] = op(acc[dst], imm if use_imm else acc[src]) over the same loop
    nest as GEMM; ops min, max, add, shr (arithmetic; a negative amount shifts left), mul
    (int32, wrapping)."""

    name = "accel.alu"
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = (
        _DEPS + _LOOP_FIELDS + _FACTORS + (("alu_opcode", 3), ("use_imm", 1), ("imm", 16))
    )
    pop_prev, pop_next, push_prev, push_next = (_field(1) for _ in range(4))
    reset, uop_bgn, uop_end, iter_out, iter_in = (_field(14) for _ in range(5))
    dst_factor_out, dst_factor_in, src_factor_out, src_factor_in = (_field(11) for _ in range(4))
    alu_opcode, use_imm, imm = _field(3), _field(1), _field(16)
    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)

    def verify_(self) -> None:
        super().verify_()
        if self.properties["alu_opcode"].value.data >= len(ALU_NAMES):
            raise VerifyException(f"accel.alu: alu_opcode {self.properties['alu_opcode'].value.data} is not an op")


@irdl_op_definition
class FinishOp(InstructionOp):
    """The end of the program (the host waits for it)."""

    name = "accel.finish"
    FIELDS: ClassVar[tuple[tuple[str, int], ...]] = _DEPS
    pop_prev, pop_next, push_prev, push_next = (_field(1) for _ in range(4))
    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)


@irdl_op_definition
class UopOp(IRDLOperation):
    """One micro-op of the program's table (its position is its DRAM micro-op address)."""

    name = "accel.uop"
    FIELDS: ClassVar = UOP_FIELDS
    dst_idx, src_idx, wgt_idx = _field(11), _field(11), _field(10)
    assembly_format = "attr-dict"
    irdl_options = (ParsePropInAttrDict(),)

    @classmethod
    def make(cls, dst_idx: int, src_idx: int, wgt_idx: int = 0) -> UopOp:
        return cls(
            properties={n: _int(v) for n, v in zip(("dst_idx", "src_idx", "wgt_idx"), (dst_idx, src_idx, wgt_idx))}
        )

    def fields(self) -> dict[str, int]:
        return {n: self.properties[n].value.data for n, _ in UOP_FIELDS}

    def verify_(self) -> None:
        for name, bits in UOP_FIELDS:
            v = self.properties[name].value.data
            if not 0 <= v < (1 << bits):
                raise VerifyException(f"accel.uop: {name} = {v} does not fit {bits} bits")


INSTRUCTIONS: dict[int, type[InstructionOp]] = {
    OPCODES["load"]: LoadOp,
    OPCODES["store"]: StoreOp,
    OPCODES["gemm"]: GemmOp,
    OPCODES["finish"]: FinishOp,
    OPCODES["alu"]: AluOp,
}
_OPCODE_OF = {cls: code for code, cls in INSTRUCTIONS.items()}
_BY_NAME = {cls.name.split(".", 1)[1]: cls for cls in INSTRUCTIONS.values()}


# ------------------------------------------------------------------ binary encoding
def _pack(layout: Sequence[tuple[str, int]], values: dict[str, int], what: str) -> int:
    word, pos = 0, 0
    for name, bits in layout:
        v = values.get(name, 0) if name else 0
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if name in SIGNED else (0, (1 << bits) - 1)
        if not lo <= v <= hi:
            raise AccelEncodingError(f"{what}: {name} = {v} does not fit {bits} bits")
        word |= (v & ((1 << bits) - 1)) << pos
        pos += bits
    return word


def _unpack(layout: Sequence[tuple[str, int]], word: int) -> dict[str, int]:
    out, pos = {}, 0
    for name, bits in layout:
        v = (word >> pos) & ((1 << bits) - 1)
        if name in SIGNED and v >= 1 << (bits - 1):
            v -= 1 << bits
        if name:
            out[name] = v
        pos += bits
    return out


def encode_instruction(op: InstructionOp) -> bytes:
    layout = (("opcode", 3),) + type(op).FIELDS
    word = _pack(layout, {"opcode": _OPCODE_OF[type(op)], **op.fields()}, op.name)
    return word.to_bytes(16, "little")


def decode_instruction(raw: bytes) -> InstructionOp:
    word = int.from_bytes(raw, "little")
    opcode = word & 0b111
    if opcode not in INSTRUCTIONS:
        raise AccelEncodingError(f"opcode {opcode} is not an instruction")
    cls = INSTRUCTIONS[opcode]
    values = _unpack((("opcode", 3),) + cls.FIELDS, word)
    values.pop("opcode")
    return cls.make(**values)


def assemble(module: ModuleOp) -> bytes:
    """The binary of a program module (micro-ops and instructions, in order)."""
    module.verify()
    uops = [tuple(op.fields().values()) for op in module.ops if isinstance(op, UopOp)]
    insns = [{"op": op.name.split(".", 1)[1], **op.fields()} for op in module.ops if isinstance(op, InstructionOp)]
    return assemble_fields(insns, uops)


def assemble_fields(insns: Sequence[dict], uops: Sequence[tuple[int, int, int]]) -> bytes:
    """The binary of instructions given as field dicts (`{"op": "gemm", ...}`, absent fields
    zero) and micro-ops as (dst, src, wgt): the lowering's fast path, same encoding."""
    body = bytearray()
    for ins in insns:
        cls = _BY_NAME.get(ins["op"])
        if cls is None:
            raise AccelEncodingError(f"no instruction {ins['op']!r}")
        body += _pack((("opcode", 3),) + cls.FIELDS, {**ins, "opcode": _OPCODE_OF[cls]}, cls.name).to_bytes(
            16, "little"
        )
    table = b"".join(
        _pack(UOP_FIELDS, dict(zip(("dst_idx", "src_idx", "wgt_idx"), u)), "accel.uop").to_bytes(4, "little")
        for u in uops
    )
    return b"TCA1" + struct.pack("<II", len(insns), len(uops)) + bytes(body) + table


def _counts(binary: bytes) -> tuple[int, int]:
    """(instructions, micro-ops) a binary's header announces, checked against its length."""
    if len(binary) < 12 or binary[:4] != b"TCA1":
        raise AccelEncodingError("not an accelerator binary (no TCA1 header)")
    n_insn, n_uop = struct.unpack_from("<II", binary, 4)
    if len(binary) != 12 + 16 * n_insn + 4 * n_uop:
        raise AccelEncodingError(
            f"binary of {len(binary)} bytes does not hold {n_insn} instructions and {n_uop} micro-ops"
        )
    return n_insn, n_uop


def disassemble(binary: bytes) -> ModuleOp:
    """The program module of a binary (the inverse of `assemble`, exactly)."""
    n_insn, n_uop = _counts(binary)
    insns = [decode_instruction(binary[12 + 16 * i : 28 + 16 * i]) for i in range(n_insn)]
    base = 12 + 16 * n_insn
    uops = [
        UopOp.make(**_unpack(UOP_FIELDS, int.from_bytes(binary[base + 4 * i : base + 4 * i + 4], "little")))
        for i in range(n_uop)
    ]
    return ModuleOp([*uops, *insns])


def decode_arrays(binary: bytes):
    """(instruction field dicts with their op name, micro-ops as (dst, src, wgt) tuples) of
    a binary, without building IR (the simulator's fast path)."""
    n_insn, n_uop = _counts(binary)
    insns = []
    for i in range(n_insn):
        word = int.from_bytes(binary[12 + 16 * i : 28 + 16 * i], "little")
        opcode = word & 0b111
        if opcode not in INSTRUCTIONS:
            raise AccelEncodingError(f"instruction {i}: opcode {opcode} is not an instruction")
        cls = INSTRUCTIONS[opcode]
        values = _unpack((("opcode", 3),) + cls.FIELDS, word)
        values["op"] = cls.name.split(".", 1)[1]
        insns.append(values)
    base = 12 + 16 * n_insn
    uops = []
    for i in range(n_uop):
        u = _unpack(UOP_FIELDS, int.from_bytes(binary[base + 4 * i : base + 4 * i + 4], "little"))
        uops.append((u["dst_idx"], u["src_idx"], u["wgt_idx"]))
    return insns, uops


Accel = Dialect("accel", [LoadOp, StoreOp, GemmOp, AluOp, FinishOp, UopOp], [])
