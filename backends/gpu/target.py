"""The GPU's target description: an NVIDIA architecture and the figures the cost model reads.

On the backends floor. `GpuTarget.parse("gpu{arch=sm_90}")` names a compute capability
(sm_80, sm_86, sm_89, sm_90 — the PTX is assembled for it) and fills in the published
figures of that generation's data-center part (SM count, clocks, DRAM and L2 bandwidth,
FP32 and tensor-core throughput, per-SM limits); any of them can be overridden
(`gpu{arch=sm_80 sms=108 dram_gbs=1555}` for an A100 40 GB). The schedule space, the
analytical model and the ptxas step read this record; `hash()` keys corpora and caches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from tilecraft.backends.target import TargetError, from_file, parse_options

# Per architecture: the reference part and its figures (vendor data sheets; dense, no sparsity).
_PARTS = {
    "sm_80": dict(
        part="A100-SXM4-80GB",
        sms=108,
        clock_mhz=1410,
        dram_gbs=2039,
        l2_gbs=5000,
        l2_mb=40,
        fp32_tflops=19.5,
        tc_tflops=312,
        smem_kb=164,
        regs=65536,
    ),
    "sm_86": dict(
        part="A10",
        sms=72,
        clock_mhz=1695,
        dram_gbs=600,
        l2_gbs=2000,
        l2_mb=6,
        fp32_tflops=31.2,
        tc_tflops=125,
        smem_kb=100,
        regs=65536,
    ),
    "sm_89": dict(
        part="L4",
        sms=58,
        clock_mhz=2040,
        dram_gbs=300,
        l2_gbs=1500,
        l2_mb=48,
        fp32_tflops=30.3,
        tc_tflops=121,
        smem_kb=100,
        regs=65536,
    ),
    "sm_90": dict(
        part="H100-SXM5-80GB",
        sms=132,
        clock_mhz=1830,
        dram_gbs=3350,
        l2_gbs=7000,
        l2_mb=50,
        fp32_tflops=67,
        tc_tflops=989,
        smem_kb=228,
        regs=65536,
    ),
}
ARCHS = tuple(_PARTS)
# PTX 8.1+: kernel parameter lists beyond 4 KiB (every memref descriptor is expanded)
_PTX_VERSION = {"sm_80": "+ptx84", "sm_86": "+ptx84", "sm_89": "+ptx84", "sm_90": "+ptx84"}


_INTS = ("sms", "smem_kb", "regs", "max_threads_sm", "max_blocks_sm")
_FLOATS = ("clock_mhz", "dram_gbs", "l2_gbs", "l2_mb", "fp32_tflops", "tc_tflops", "launch_us")


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    kind: str = "gpu"
    arch: str = "sm_90"
    part: str = ""
    sms: int = 0
    clock_mhz: float = 0.0
    dram_gbs: float = 0.0  # DRAM bandwidth, GB/s
    l2_gbs: float = 0.0  # L2 bandwidth, GB/s
    l2_mb: float = 0.0
    fp32_tflops: float = 0.0
    tc_tflops: float = 0.0  # f16/bf16 tensor cores, dense
    smem_kb: int = 0  # shared memory per SM
    regs: int = 0  # 32-bit registers per SM
    max_threads_sm: int = 2048
    max_blocks_sm: int = 32
    launch_us: float = 2.5  # a kernel launch's fixed cost (back to back, stream-ordered)

    def __post_init__(self):
        if self.kind != "gpu":
            raise TargetError(f"not a GPU target: {self.kind!r}")
        if self.arch not in _PARTS:
            raise TargetError(f"arch={self.arch!r} is not one of {', '.join(ARCHS)}")
        if not isinstance(self.part, str):
            raise TargetError(f"part={self.part!r} is not a string")
        for name in _INTS + _FLOATS:  # (a target file's JSON can hold anything)
            v = getattr(self, name)
            ok = isinstance(v, int) if name in _INTS else isinstance(v, int | float)
            if not ok or isinstance(v, bool):
                raise TargetError(f"{name}={v!r} is not {'an integer' if name in _INTS else 'a number'}")
        for key, value in _PARTS[self.arch].items():  # the reference part's figures where not given
            if not getattr(self, key):
                object.__setattr__(self, key, value)
        for name in _INTS:
            if getattr(self, name) <= 0:
                raise TargetError(f"{name}={getattr(self, name)} must be positive")
        for name in _FLOATS:
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise TargetError(f"{name}={v} must be a positive finite number")

    @property
    def ptx_features(self) -> str:
        return _PTX_VERSION[self.arch]

    @property
    def capability(self) -> int:
        return int(self.arch.removeprefix("sm_"))

    # ------------------------------------------------------------------ identity
    def features(self) -> dict[str, float]:
        """The target as cost-model features."""
        return {
            "gpu_sms": self.sms,
            "gpu_dram_gbs": self.dram_gbs,
            "gpu_l2_gbs": self.l2_gbs,
            "gpu_fp32_tflops": self.fp32_tflops,
            "gpu_tc_tflops": self.tc_tflops,
            "gpu_capability": self.capability,
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"gpu{{arch={self.arch}}} ({self.part}: {self.sms} SMs, {self.dram_gbs:g} GB/s)"

    @staticmethod
    def from_file(path: str) -> GpuTarget:
        """A target written by `to_json`."""
        return from_file(GpuTarget, path, "a GPU target")

    @staticmethod
    def parse(text: str) -> GpuTarget:
        changes = parse_options(GpuTarget, "gpu", text, "gpu{arch=sm_90 ...}")
        for key, value in changes.items():
            if not isinstance(value, str) and not value > 0:  # (0 is the field's "the reference part's figure")
                raise TargetError(f"target option {key}={value} must be positive")
        return GpuTarget(**changes)
