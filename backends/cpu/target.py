"""Target description: a validated, hashable, serializable picture of the machine.

On the backends floor: the CPU backend's target description (`backends/target.py` is the
protocol), read by the CPU stages, the measurement harness and the cost models (the passes,
a floor below, take it duck-typed). `Target.host()` reads the host: ISA features from
/proc/cpuinfo, cores, cache sizes from sysfs, clock, and derived peak FLOP/s and
memory-bandwidth estimates. `Target.parse(text)` accepts `cpu`, `cpu{avx512=false cores=1}`
or a path to a JSON file written by `to_json`. Measurements and cost models are keyed by
`Target.hash()`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import re

from tilecraft.backends.target import TargetError  # noqa: F401  (re-exported)

# Flags of /proc/cpuinfo we care about, by our name.
_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512": "avx512f",
    "avx512bf16": "avx512_bf16",
    "avx512vnni": "avx512_vnni",
    "avx512fp16": "avx512_fp16",
    "amx": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
}


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str = "cpu"
    arch: str = "x86_64"
    cpu_name: str = "generic"
    features: tuple[str, ...] = ()  # sorted names from _FEATURES
    cores: int = 1
    l1d_bytes: int = 32 * 1024
    l2_bytes: int = 1024 * 1024
    l3_bytes: int = 8 * 1024 * 1024
    clock_ghz: float = 2.0
    fma_units: int = 2  # FMA pipes per core
    mem_bandwidth_gbs: float = 10.0  # one core's sustained DRAM bandwidth (estimate)
    cache_bandwidth_gbs: float = 60.0  # one core's sustained L2 bandwidth (estimate)

    def __post_init__(self):
        if self.kind != "cpu":
            raise TargetError(f"unknown target kind {self.kind!r} (available: cpu)")
        unknown = set(self.features) - set(_FEATURES)
        if unknown:
            raise TargetError(f"unknown CPU features {sorted(unknown)} (known: {', '.join(_FEATURES)})")
        for name in ("cores", "l1d_bytes", "l2_bytes", "l3_bytes", "fma_units"):
            if getattr(self, name) <= 0:
                raise TargetError(f"{name} must be positive")
        if min(self.clock_ghz, self.mem_bandwidth_gbs, self.cache_bandwidth_gbs) <= 0:
            raise TargetError("clock_ghz and mem_bandwidth_gbs must be positive")
        object.__setattr__(self, "features", tuple(sorted(set(self.features))))

    # ------------------------------------------------------------------ derived rates
    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def vector_bits(self) -> int:
        return 512 if self.has("avx512") else 256 if self.has("avx2") else 128

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def peak_gflops_f32(self) -> float:
        """One core's f32 peak: clock × FMA pipes × lanes × 2 FLOP per FMA."""
        return self.clock_ghz * self.fma_units * self.f32_lanes * 2

    def bandwidth_gbs(self, working_set_bytes: int) -> float:
        """Sustained bandwidth for a working set: L2's if it fits there, else DRAM's."""
        return self.cache_bandwidth_gbs if working_set_bytes <= self.l2_bytes else self.mem_bandwidth_gbs

    def roofline_gflops(self, flops: int, bytes_moved: int) -> float:
        """Attainable GFLOP/s for a kernel: min(compute peak, intensity × bandwidth)."""
        return min(self.peak_gflops_f32, flops / max(bytes_moved, 1) * self.bandwidth_gbs(bytes_moved))

    # ---------------------------------------------------------------- (de)serializing
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Target:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TargetError(f"target JSON is malformed: {exc}") from None
        fields = {f.name for f in dataclasses.fields(Target)}
        if not isinstance(d, dict) or set(d) - fields:
            raise TargetError(
                f"target JSON has unknown fields: {sorted(set(d) - fields) if isinstance(d, dict) else d}"
            )
        d["features"] = tuple(d.get("features", ()))
        return Target(**d)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def with_options(self, **options) -> Target:
        """Override fields; a feature name with a boolean turns that feature on or off."""
        features = set(self.features)
        fields = {f.name: f.type for f in dataclasses.fields(Target)}
        changes = {}
        for key, value in options.items():
            if key in _FEATURES:
                (features.add if _as_bool(key, value) else features.discard)(key)
                if key == "avx512" and not _as_bool(key, value):
                    features -= {f for f in features if f.startswith("avx512")}
            elif key in fields and key != "features":
                kind = {"int": int, "float": float, "str": str}[fields[key]]
                try:
                    changes[key] = kind(value)
                except ValueError:
                    raise TargetError(f"target option {key}={value!r} is not a {fields[key]}") from None
            else:
                raise TargetError(f"unknown target option {key!r}")
        return dataclasses.replace(self, features=tuple(features), **changes)

    @staticmethod
    def parse(text: str) -> Target:
        """`cpu`, `cpu{avx512=false cores=1}`, or a path to a target JSON file."""
        if text.endswith(".json") or os.path.sep in text:
            if not os.path.exists(text):
                raise TargetError(f"target file not found: {text}")
            with open(text) as f:
                return Target.from_json(f.read())
        m = re.fullmatch(r"\s*(\w+)\s*(?:\{(.*)\})?\s*", text)
        if not m:
            raise TargetError(f"malformed target {text!r} (expected cpu or cpu{{key=value ...}})")
        if m.group(1) != "cpu":
            raise TargetError(f"unknown target {m.group(1)!r} (available: cpu)")
        options = {}
        for item in (m.group(2) or "").replace(",", " ").split():
            key, eq, value = item.partition("=")
            if not eq:
                raise TargetError(f"target option {item!r} is not key=value")
            options[key] = value
        return host().with_options(**options)


def _as_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "on", "yes"):
        return True
    if str(value).lower() in ("0", "false", "off", "no"):
        return False
    raise TargetError(f"target option {key}={value!r} is not a boolean")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _size(text: str | None) -> int | None:
    m = re.fullmatch(r"(\d+)([KMG]?)", text or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


@functools.cache
def host() -> Target:
    """The machine this process runs on (read once per process)."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    flags = set(re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M).group(1).split()) if "flags" in cpuinfo else set()
    name = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    caches = {}
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        level, kind = _read(f"{base}/{entry}/level"), _read(f"{base}/{entry}/type")
        size = _size(_read(f"{base}/{entry}/size"))
        if level and size and kind in ("Data", "Unified"):
            caches[int(level)] = size
    mhz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    clock = int(mhz) / 1e6 if mhz and mhz.isdigit() else None
    if clock is None:
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
        clock = float(m.group(1)) / 1e3 if m else 2.0
    features = tuple(ours for ours, flag in _FEATURES.items() if flag in flags)
    default = Target()
    return Target(
        arch=platform.machine() or "x86_64",
        cpu_name=name.group(1).strip() if name else "generic",
        features=features,
        cores=os.cpu_count() or 1,
        l1d_bytes=caches.get(1, default.l1d_bytes),
        l2_bytes=caches.get(2, default.l2_bytes),
        l3_bytes=caches.get(3, default.l3_bytes),
        clock_ghz=round(clock, 3),
        # Server cores with AVX-512 have two FMA pipes; a 12 GB/s per-core stream is typical.
        fma_units=2,
        mem_bandwidth_gbs=12.0,
        cache_bandwidth_gbs=60.0,
    )
