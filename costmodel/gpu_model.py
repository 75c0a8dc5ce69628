"""The GPU cost model: an analytical roofline/occupancy model, and a learned one on top.

On the cost-model floor. Predicts one kernel's time under a `GpuSchedule` on a
`GpuTarget`, from the decision and the kernel (`backends/gpu/schedule.py`: its loops,
flops, external inputs with the sink loops each varies with) and, once compiled, ptxas's
resource usage (registers, shared memory, spills).

The analytical model:
- occupancy: blocks per SM limited by threads, registers (estimated before ptxas: a
  thread's tile is its accumulators), shared memory and the block limit; the grid runs in
  waves of `SMs × blocks per SM`, the last one partly idle (`wave efficiency`);
- time = max(compute, DRAM, L2, L1) / wave efficiency + a launch's fixed cost, where
  compute is the flops at the FP32 peak scaled by the warps in flight (latency hiding)
  and by the thread tile (a 1-point thread issues two loads per FMA; an r×c tile
  reuses each load r or c times); DRAM moves every external input and the output once;
  L2 serves each block's slice of each input (an input is re-read once per block along
  every tiled loop it does not vary with); L1 serves each thread's loads the same way
  per thread, and spills add their bytes.

`GpuCostModel.learned` is a LightGBM regressor on log time, boosted from the analytical
estimate (as the accelerator's model is), trained on GPU corpus rows (`train`) when they
exist; `predict` uses it when it is loaded, else the analytical estimate.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from tilecraft.backends.gpu import schedule as gs
from tilecraft.backends.gpu.ptx import Resources
from tilecraft.backends.gpu.schedule import GpuSchedule, Kernel
from tilecraft.backends.gpu.target import GpuTarget
from tilecraft.dialects.irutil import replace_file

MODEL_PATH = os.path.join(os.path.dirname(__file__), "data", "gpu-model.json.gz")
L1_BYTES_PER_CLOCK = 128  # per SM
# the share of the tensor cores' peak an mma.sync kernel reaches with its fragments loaded
# from global memory through L1 (no shared-memory staging, no ldmatrix, no async copies)
MMA_EFFICIENCY = 0.25  # (a guess: no GPU has measured it yet)


@dataclasses.dataclass(frozen=True)
class GpuPrediction:
    seconds: float
    bound: str  # compute | dram | l2 | l1
    occupancy: float  # resident threads / the SM's maximum
    blocks_per_sm: int
    registers: int
    wave_efficiency: float

    @property
    def us(self) -> float:
        return self.seconds * 1e6


def estimated_registers(kernel: Kernel, s: GpuSchedule) -> int:
    """Registers a thread needs before ptxas says: its tile's accumulators and the
    operands it loads for them, over a base for indices and addresses (under `mma`, a
    lane's share of the warp's accumulator fragments and of one k step's A and B
    fragments: 4 and 2 registers each)."""
    per = s.per_thread()
    if s.mma:
        wm, wn = (t for t in s.thread if t)
        return min(255, 24 + per + 4 * (wm // 16) + 2 * (wn // 8))
    rows_cols = sum(t for t in s.thread if t)
    if kernel.contraction is not None:
        return min(255, 24 + per + 2 * rows_cols)
    return min(255, 16 + 2 * per + 2 * len(kernel.infos))


def _reads(kernel: Kernel, s: GpuSchedule, per: str) -> float:
    """Bytes the blocks (`per="block"`) or the threads (`per="thread"`) load in all: each
    input's slice, re-read along every tiled loop it does not vary with."""
    ext = kernel.info.extents
    total = 0.0
    for loops, nbytes in kernel.operand_loops:
        factor = 1.0
        for i, b in enumerate(s.block):
            if not b or i in loops:
                continue
            factor *= ext[i] // b if per == "block" else ext[i] // s.thread[i]
        total += nbytes * factor
    return total


def analytical(kernel: Kernel, s: GpuSchedule, target: GpuTarget, resources: Resources | None = None) -> GpuPrediction:
    """The roofline/occupancy estimate of one kernel under one schedule."""
    threads = s.threads_per_block()
    warps = -(-threads // 32)
    regs = resources.registers if resources and resources.registers else estimated_registers(kernel, s)
    smem = resources.shared_bytes if resources else 0
    by_threads = target.max_threads_sm // (warps * 32)
    by_regs = target.regs // max(1, -(-regs // 8) * 8 * warps * 32)
    by_smem = (target.smem_kb * 1024) // smem if smem else target.max_blocks_sm
    per_sm = max(1, min(target.max_blocks_sm, by_threads, by_regs, by_smem))
    grid = math.prod(s.grid(kernel.info.extents))
    slots = per_sm * target.sms
    waves = -(-grid // slots)
    # several waves: the last one partly idle; one partial wave: only the SMs that hold
    # blocks work (blocks spread one per SM first), which `active_sms` accounts for
    wave_eff = grid / (waves * slots) if waves > 1 else 1.0
    active_sms = min(target.sms, grid)
    warps_sm = min(per_sm, -(-grid // max(1, active_sms))) * warps
    latency_hiding = min(1.0, warps_sm / 16)
    ilp = 1.0 if kernel.contraction is None else min(1.0, 0.25 + 0.75 * s.per_thread() / 16)
    peak = target.fp32_tflops * 1e12 * (active_sms / target.sms)
    if s.mma:  # a warp's fragments a k step: independent mma.sync ops in flight
        frags = s.per_thread() * gs.WARP // (gs.MMA_SHAPE[0] * gs.MMA_SHAPE[1])
        ilp = min(1.0, 0.25 + 0.75 * frags / 16)
        peak = target.tc_tflops * MMA_EFFICIENCY * 1e12 * (active_sms / target.sms)
    compute = kernel.flops / (peak * latency_hiding * ilp)
    dram_bytes = kernel.out_bytes + sum(b for _, b in kernel.operand_loops)
    dram = dram_bytes / (target.dram_gbs * 1e9)
    l2 = (_reads(kernel, s, "block") + kernel.out_bytes) / (target.l2_gbs * 1e9)
    l1_bw = active_sms * L1_BYTES_PER_CLOCK * target.clock_mhz * 1e6
    spill = (resources.spill_loads + resources.spill_stores) * grid * threads if resources else 0
    l1 = (_reads(kernel, s, "thread") + spill) / (l1_bw * latency_hiding)
    parts = {"compute": compute, "dram": dram, "l2": l2, "l1": l1}
    bound = max(parts, key=parts.get)
    seconds = parts[bound] / wave_eff + target.launch_us * 1e-6
    occupancy = per_sm * warps * 32 / target.max_threads_sm
    return GpuPrediction(seconds, bound, min(1.0, occupancy), per_sm, regs, wave_eff)


FEATURES = (
    "log_flops", "log_out_bytes", "log_in_bytes", "contraction", "n_ops", "threads", "per_thread",
    "log_grid", "blocks_per_sm", "occupancy", "wave_eff", "registers", "spills", "log_l2_reads",
    "log_l1_reads", "log_analytical", "mma", "gpu_sms", "gpu_dram_gbs", "gpu_l2_gbs", "gpu_fp32_tflops",
    "gpu_tc_tflops", "gpu_capability",
)  # fmt: skip


def features(kernel: Kernel, s: GpuSchedule, target: GpuTarget, resources: Resources | None = None) -> list[float]:
    """The learned model's inputs: the kernel, the decision, the resources, the target."""
    p = analytical(kernel, s, target, resources)
    row = {
        "log_flops": math.log1p(kernel.flops),
        "log_out_bytes": math.log1p(kernel.out_bytes),
        "log_in_bytes": math.log1p(sum(b for _, b in kernel.operand_loops)),
        "contraction": float(kernel.contraction is not None),
        "n_ops": len(kernel.infos),
        "threads": s.threads_per_block(),
        "per_thread": s.per_thread(),
        "log_grid": math.log(math.prod(s.grid(kernel.info.extents))),
        "blocks_per_sm": p.blocks_per_sm,
        "occupancy": p.occupancy,
        "wave_eff": p.wave_efficiency,
        "registers": p.registers,
        "spills": (resources.spill_loads + resources.spill_stores) if resources else 0,
        "log_l2_reads": math.log1p(_reads(kernel, s, "block")),
        "log_l1_reads": math.log1p(_reads(kernel, s, "thread")),
        "log_analytical": math.log(p.seconds),
        "mma": float(s.mma),
        **target.features(),
    }
    return [float(row[f]) for f in FEATURES]


class GpuCostModel:
    """Predicts a kernel's time; `learned` (LightGBM) where trained, else analytical."""

    def __init__(self, target: GpuTarget, learned=None):
        self.target, self.learned = target, learned

    @property
    def name(self) -> str:
        return "gpu-lightgbm" if self.learned is not None else "gpu-analytical"

    def predict(self, kernel: Kernel, s: GpuSchedule, resources: Resources | None = None) -> GpuPrediction:
        p = analytical(kernel, s, self.target, resources)
        if self.learned is None:
            return p
        x = np.asarray([features(kernel, s, self.target, resources)])
        log_ratio = float(self.learned.predict(x, num_threads=1)[0])  # boosted from the analytical estimate
        return dataclasses.replace(p, seconds=p.seconds * math.exp(log_ratio))

    def rank(self, kernel: Kernel, schedules: Sequence[GpuSchedule]) -> list[tuple[GpuSchedule, GpuPrediction]]:
        """Schedules fastest first (ties: the earlier in `schedules`, the heuristic first)."""
        scored = [(s, self.predict(kernel, s)) for s in schedules]
        order = sorted(range(len(scored)), key=lambda i: (scored[i][1].seconds, i))
        return [scored[i] for i in order]

    @staticmethod
    def load(target: GpuTarget, path: str = MODEL_PATH) -> GpuCostModel:
        """The shipped learned model when one was trained on GPU rows, else analytical."""
        if not os.path.exists(path):
            return GpuCostModel(target)
        import lightgbm as lgb

        with gzip.open(path, "rt") as f:
            doc = json.load(f)
        if doc.get("features") != list(FEATURES):  # trained on another feature schema
            return GpuCostModel(target)
        return GpuCostModel(target, lgb.Booster(model_str=doc["model"]))


def train(rows: Sequence[tuple[list[float], float]], *, path: str | None = None, rounds: int = 200):
    """Fit the learned model on measured rows ((features, seconds), features as
    `features` gives them): the residual of log time over the analytical estimate."""
    import lightgbm as lgb

    x = np.asarray([r[0] for r in rows])
    analytic = x[:, FEATURES.index("log_analytical")]
    y = np.log(np.asarray([r[1] for r in rows])) - analytic
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 5,
              "verbose": -1, "seed": 0}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=list(FEATURES)), num_boost_round=rounds)
    if path:
        tmp = path + ".tmp"
        with gzip.open(tmp, "wt") as f:
            json.dump({"features": list(FEATURES), "model": booster.model_to_string()}, f)
        replace_file(tmp, path)
    return booster
