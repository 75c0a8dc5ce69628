"""The CPU backend: x86-64 with AVX-512 (AVX2 where the target says so), JIT or object code.

On the backends floor; the first `Backend`. Stages after a decided module:
`cpu-tiled` (each op's `tc.schedule` applied by a transform script: cache and register
tiles, packing, conv → 1-D, per-tile vectorization), `cpu-vector` (hoisting, pads in
destination-passing style, one-shot bufferization, copies and fills vectorized, vector
lowering), `cpu-llvm` (AMX kernels, out-params, the LLVM dialect); then the JIT
(`ExecutionEngine`, -O2), an object file, a shared library or assembly
(`backends/cpu/lowering.py`). Schedules are `TileDecision`s (`backends/cpu/schedule.py`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch_mlir import ir

from tilecraft.backends.backend import Backend, BackendOptions
from tilecraft.backends.cpu import lowering, math_approx
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import Target
from tilecraft.passes.base import ModulePass, Weights


@dataclasses.dataclass(frozen=True)
class CpuOptions(BackendOptions):
    """Code-generation switches of the CPU stages (each on by default; off only to compare)."""

    vectorize: bool = True
    one_row_stream: bool = True
    pads_in_place: bool = True
    strided_reads: bool = True
    vectorize_fills: bool = True
    border_fills: bool = True
    two_core_jit: bool = True  # a large model's LLVM stage and JIT (or .so) split over two cores (`split.py`)


# ------------------------------------------------------------------------------ passes
@dataclasses.dataclass(frozen=True)
class ReciprocalConstantsPass(ModulePass):
    name: ClassVar[str] = "reciprocal-constants"
    summary: ClassVar[str] = "a division by a constant as a product by its reciprocal"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        math_approx.reciprocal_constants(module)


@dataclasses.dataclass(frozen=True)
class ExpandErfPass(ModulePass):
    name: ClassVar[str] = "expand-erf"
    summary: ClassVar[str] = "math.erf as a polynomial (vectorizable)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        math_approx.expand_erf(module)


@dataclasses.dataclass(frozen=True)
class ExpandExpPass(ModulePass):
    name: ClassVar[str] = "expand-exp"
    summary: ClassVar[str] = "f32 math.exp as a polynomial (vectorizable)"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        math_approx.expand_exp(module)


@dataclasses.dataclass(frozen=True)
class CpuTiledPass(ModulePass):
    name: ClassVar[str] = "cpu-tiled"
    summary: ClassVar[str] = (
        "decided → tiled: math rewrites, every op tiled by its tc.schedule (else the heuristic), "
        "register tiles vectorized"
    )
    vectorize: bool = True
    one_row_stream: bool = True

    def apply(self, module: ir.Module, weights: Weights) -> None:
        lowering.to_tiled(module, vectorize=self.vectorize, one_row_stream=self.one_row_stream)


@dataclasses.dataclass(frozen=True)
class CpuVectorPass(ModulePass):
    name: ClassVar[str] = "cpu-vector"
    summary: ClassVar[str] = (
        "tiled → vector: hoisting, pads in place, bufferization, copies vectorized, vector lowering"
    )
    vectorize: bool = True
    pads_in_place: bool = True
    strided_reads: bool = True
    vectorize_fills: bool = True
    border_fills: bool = True

    def apply(self, module: ir.Module, weights: Weights) -> None:
        lowering.to_vector(
            module,
            vectorize=self.vectorize,
            pads_in_place=self.pads_in_place,
            strided_reads=self.strided_reads,
            vectorize_fills=self.vectorize_fills,
            border_fills=self.border_fills,
        )


@dataclasses.dataclass(frozen=True)
class CpuLlvmPass(ModulePass):
    name: ClassVar[str] = "cpu-llvm"
    summary: ClassVar[str] = "vector → LLVM dialect: AMX kernels, out-params, loops, deallocation"

    def apply(self, module: ir.Module, weights: Weights) -> None:
        lowering.to_llvm(module)


@dataclasses.dataclass(frozen=True)
class CpuLowerPass(ModulePass):
    name: ClassVar[str] = "cpu-lower"
    summary: ClassVar[str] = "decided → LLVM dialect: cpu-tiled, cpu-vector, cpu-llvm"
    vectorize: bool = True

    def apply(self, module: ir.Module, weights: Weights) -> None:
        for p in CpuBackend().stage_passes(CpuOptions(vectorize=self.vectorize)):
            p.apply(module, weights)


# ----------------------------------------------------------------------------- backend
class CpuBackend(Backend):
    name = "cpu"
    stages = ("tiled", "vector", "llvm")
    emits = ("asm", "obj", "so", "jit")
    options_type = CpuOptions

    def parse_target(self, text: str) -> Target:
        return Target.parse(text)

    def default_decision(self, info, target) -> tiling.TileDecision:
        return tiling.default_decision(info, target)

    def space(self, info, target) -> list[tiling.TileDecision]:
        return tiling.space(info, target)

    def decision_from_json(self, text: str | dict) -> tiling.TileDecision:
        return tiling.TileDecision.from_json(text)

    def stage_passes(self, options: BackendOptions | None = None) -> list[ModulePass]:
        o = options if isinstance(options, CpuOptions) else CpuOptions()
        return [
            CpuTiledPass(vectorize=o.vectorize, one_row_stream=o.one_row_stream),
            CpuVectorPass(
                vectorize=o.vectorize,
                pads_in_place=o.pads_in_place,
                strided_reads=o.strided_reads,
                vectorize_fills=o.vectorize_fills,
                border_fills=o.border_fills,
            ),
            CpuLlvmPass(),
        ]

    def pass_types(self) -> list[type[ModulePass]]:
        return [
            ReciprocalConstantsPass,
            ExpandErfPass,
            ExpandExpPass,
            CpuTiledPass,
            CpuVectorPass,
            CpuLlvmPass,
            CpuLowerPass,
        ]
