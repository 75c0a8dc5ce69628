"""The accelerator's target description: a hardware configuration.

On the backends floor. `AccelTarget.parse("accel{block=16 inp_kb=32 wgt_kb=256 acc_kb=128
dram_gbs=8}")` validates a configuration (VTA's defaults when a key is left out: int8
inputs and weights, int32 accumulators, 16×16 blocks, 32 KiB inputs, 256 KiB weights,
128 KiB accumulators, 32 KiB micro-ops). Buffer depths are counted in entries (an input
entry is `block` int8, a weight entry `block²` int8, an accumulator entry `block` int32) and
must fit the ISA's index fields. The simulator, the lowering, the memory planner and the
cost model's config features all read this record; `hash()` keys corpora and caches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from tilecraft.backends.target import TargetError, from_file, parse_options

_INDEX_BITS = {"inp": 11, "acc": 11, "wgt": 10, "uop": 13}


@dataclasses.dataclass(frozen=True)
class AccelTarget:
    kind: str = "accel"
    block: int = 16  # BLOCK_IN = BLOCK_OUT; batch 1
    inp_kb: int = 32
    wgt_kb: int = 256
    acc_kb: int = 128
    uop_kb: int = 32
    dram_gbs: float = 8.0  # DRAM bandwidth, GB/s
    dram_latency: int = 64  # cycles before a DMA's first byte
    clock_mhz: float = 200.0
    alu_ii: int = 2  # cycles per ALU micro-op iteration (one accumulator entry)
    gemm_ii: int = 1  # cycles per GEMM micro-op iteration (one block × block product)
    pipeline: int = 4  # GEMM/ALU pipeline depth (cycles to drain)
    host_gflops: float = 2.0  # the CPU the accelerator is attached to (VTA's: a Cortex-A9 pair)

    def __post_init__(self):
        if self.kind != "accel":
            raise TargetError(f"not an accelerator target: {self.kind!r}")
        if self.block not in (4, 8, 16, 32, 64):
            raise TargetError(f"block={self.block} is not one of 4, 8, 16, 32, 64")
        for name in ("inp_kb", "wgt_kb", "acc_kb", "uop_kb", "dram_latency", "alu_ii", "gemm_ii", "pipeline"):
            if getattr(self, name) <= 0:
                raise TargetError(f"{name}={getattr(self, name)} must be positive")
        for name in ("dram_gbs", "clock_mhz", "host_gflops"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise TargetError(f"{name}={v} must be a positive finite number")
        for buf, bits in _INDEX_BITS.items():
            depth = getattr(self, f"{buf}_depth")
            if depth < 1:
                raise TargetError(f"{buf}_kb={getattr(self, f'{buf}_kb')} holds no {buf} entry of block {self.block}")
            if depth > 1 << bits:
                entry = {"inp": self.inp_entry, "acc": self.acc_entry, "wgt": self.wgt_entry, "uop": 4}[buf]
                most = (1 << bits) * entry // 1024
                raise TargetError(
                    f"{buf}_kb={getattr(self, f'{buf}_kb')} gives {depth} entries, beyond the ISA's {bits}-bit index"
                    f" (at block {self.block}: {buf}_kb={most} at most)"
                )

    # ------------------------------------------------------------------ entry sizes
    @property
    def inp_entry(self) -> int:
        return self.block

    @property
    def wgt_entry(self) -> int:
        return self.block * self.block

    @property
    def acc_entry(self) -> int:
        return 4 * self.block

    @property
    def inp_depth(self) -> int:
        return self.inp_kb * 1024 // self.inp_entry

    @property
    def wgt_depth(self) -> int:
        return self.wgt_kb * 1024 // self.wgt_entry

    @property
    def acc_depth(self) -> int:
        return self.acc_kb * 1024 // self.acc_entry

    @property
    def uop_depth(self) -> int:
        return self.uop_kb * 1024 // 4

    @property
    def bytes_per_cycle(self) -> float:
        return self.dram_gbs * 1e9 / (self.clock_mhz * 1e6)

    def dma_cycles(self, nbytes: int) -> int:
        """Cycles of one DMA moving `nbytes` (latency, then bandwidth)."""
        return self.dram_latency + int(-(-nbytes // self.bytes_per_cycle))

    # ------------------------------------------------------------------ identity
    def features(self) -> dict[str, float]:
        """The configuration as cost-model features."""
        return {
            "cfg_block": self.block,
            "cfg_inp_kb": self.inp_kb,
            "cfg_wgt_kb": self.wgt_kb,
            "cfg_acc_kb": self.acc_kb,
            "cfg_dram_bpc": self.bytes_per_cycle,
            "cfg_dram_latency": self.dram_latency,
            "cfg_alu_ii": self.alu_ii,
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        d = AccelTarget()
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name != "kind" and getattr(self, f.name) != getattr(d, f.name)
        ]
        return "accel{" + " ".join(changed) + "}" if changed else "accel"

    @staticmethod
    def from_file(path: str) -> AccelTarget:
        """A target written by `to_json`."""
        return from_file(AccelTarget, path, "an accelerator target")

    @staticmethod
    def parse(text: str) -> AccelTarget:
        return AccelTarget(**parse_options(AccelTarget, "accel", text, "accel{key=value ...}"))
