"""The accelerator corpus: simulated cycles of (layer, schedule, hardware config) triples.

On the corpus floor; the accelerator's counterpart of the kernel harness, with the
simulator (`backends/accel/sim.py`, timing only) as the measurement. Reads the zoo's
conv and linear layer shapes (`layer_specs`, by running the zoo models once with hooks)
and a set of `AccelTarget` configurations (`CONFIGS`, `UNSEEN`); writes rows — the layer,
the schedule, the config, and the simulated cycles, utilization, GEMM products, DRAM
bytes and instruction count — as gzip JSON lines (`corpus/data/accel-corpus.jsonl.gz`),
which `costmodel/accel_model.py` trains on:

    python -m tilecraft.corpus.accel_corpus [--per-layer 24] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import multiprocessing
import os
import random
import time
import zlib
from collections.abc import Iterable, Sequence

from tilecraft.backends.accel import lower as L
from tilecraft.backends.accel import sim
from tilecraft.backends.accel.target import AccelTarget

CORPUS_PATH = os.path.join(os.path.dirname(__file__), "data", "accel-corpus.jsonl.gz")

# Training configurations: blocks 8/16/32, buffers within the ISA's index widths, DRAM
# from an edge device's 2 GB/s to 32 GB/s, DMA latencies and ALU initiation intervals.
CONFIGS = (
    "accel",  # VTA's defaults
    "accel{block=8 inp_kb=8 wgt_kb=32 acc_kb=32 dram_gbs=2 dram_latency=100 alu_ii=4}",
    "accel{block=32 inp_kb=64 wgt_kb=512 acc_kb=256 dram_gbs=32 dram_latency=48 alu_ii=1}",
    "accel{block=16 inp_kb=16 wgt_kb=128 acc_kb=64 dram_gbs=4 dram_latency=128 alu_ii=1}",
    "accel{block=32 inp_kb=32 wgt_kb=256 acc_kb=128 dram_gbs=16 dram_latency=200 alu_ii=2}",
    "accel{block=8 inp_kb=16 wgt_kb=64 acc_kb=64 dram_gbs=12 dram_latency=32 alu_ii=1}",
)
# The configuration no model is trained on: few-shot transfer is measured on it.
UNSEEN = "accel{block=16 inp_kb=24 wgt_kb=192 acc_kb=96 dram_gbs=6 dram_latency=80 alu_ii=3}"

MAX_INSNS = 3000  # sampled schedules stay under this many instructions (simulation time)
TOP = 3  # the largest-tile schedules are always sampled (what a planner mostly picks)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A conv or linear layer's shape before channel padding (a linear layer over M rows is
    a 1×1 convolution over a 1×M image)."""

    name: str  # first zoo layer with this shape, e.g. "resnet18/blocks.0.conv1"
    cin: int
    cout: int
    h: int
    w: int
    k: int = 1
    stride: int = 1
    pad: int = 0
    depthwise: bool = False
    residual: bool = False

    @property
    def shape(self) -> str:
        """The shape's identity (a row's group when the corpus is split by layer)."""
        s = f"{self.cin}x{self.cout}_{self.h}x{self.w}_k{self.k}s{self.stride}p{self.pad}"
        return s + ("_dw" if self.depthwise else "") + ("_res" if self.residual else "")

    def layer(self, target: AccelTarget) -> L.ConvLayer:
        """The layer with channels padded to the config's block (timing only: no weights)."""
        cin, cout = L.blocks(self.cin, target.block), L.blocks(self.cout, target.block)
        if self.depthwise:
            cin = cout = max(cin, cout)
        return L.ConvLayer(
            self.shape,
            cin,
            cout,
            self.h,
            self.w,
            self.k,
            self.k,
            self.stride,
            self.pad,
            self.depthwise,
            residual=self.residual,
            pre_shift=1,
        )


# ------------------------------------------------------------------ the zoo's layers
ZOO_MODELS = ("resnet18", "mobilenet_v2", "bert_mini", "mlp", "conv_autoencoder")


def layer_specs(models: Iterable[str] = ZOO_MODELS) -> list[LayerSpec]:
    """The distinct conv and linear layer shapes of zoo models at their example inputs."""
    import torch  # here, not at the top: the cost model and the pool's workers never need torch
    from torch import nn

    from tilecraft.corpus import zoo

    seen: dict[str, LayerSpec] = {}
    for model_name in models:
        model, inputs = zoo.get(model_name)
        residual = _residual_convs(model)
        found: list[LayerSpec] = []

        def hook(mod, args, _out, name):
            x = args[0]
            if isinstance(mod, nn.Linear):
                rows = math.prod(x.shape[:-1])
                found.append(LayerSpec(f"{model_name}/{name}", mod.in_features, mod.out_features, 1, rows))
                return
            k, s, p = mod.kernel_size[0], mod.stride[0], mod.padding[0]
            dw = mod.groups > 1
            if dw and not mod.groups == mod.in_channels == mod.out_channels:
                raise ValueError(f"{model_name}/{name}: grouped convolution is not depthwise")
            spec = LayerSpec(
                f"{model_name}/{name}", mod.in_channels, mod.out_channels, x.shape[2], x.shape[3], k, s, p, dw
            )
            found.append(dataclasses.replace(spec, residual=name in residual))

        handles = [
            m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n))
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        ]
        with torch.no_grad():
            model(*inputs)
        for h in handles:
            h.remove()
        for spec in found:
            seen.setdefault(spec.shape, spec)
    return list(seen.values())


def _residual_convs(model) -> set[str]:
    """Names of the convolutions whose output a residual add consumes directly: a ResNet
    basic block's second conv, an inverted residual's projection."""
    from tilecraft.corpus import zoo

    out = set()
    for name, m in model.named_modules():
        if isinstance(m, zoo.BasicBlock):
            out.add(f"{name}.conv2")
        elif isinstance(m, zoo.InvertedResidual) and m.residual:
            last = max(i for i, c in enumerate(m.body) if c.__class__.__name__ == "Conv2d")
            out.add(f"{name}.body.{last}")
    return out


# ------------------------------------------------------------------ sampling and timing
def instructions_bound(layer: L.ConvLayer, s: L.ConvSchedule, target: AccelTarget) -> int:
    """An upper bound on the schedule's instruction count, without emitting it."""
    b = target.block
    n_sp = -(-layer.oh // s.th) * (layer.ow // s.tw)
    tiles = n_sp * (layer.cout // b // s.tco)
    n_ci = 1 if layer.depthwise else layer.cin // b // s.tci
    loads = s.tco if layer.depthwise else s.tci
    return tiles * n_ci * (loads + 2) + tiles * (12 + s.tco * (2 if layer.residual else 1))


def sample(layer: L.ConvLayer, target: AccelTarget, n: int, rng: random.Random) -> list[L.ConvSchedule]:
    """`n` schedules of the layer's space: the `TOP` largest tiles, then a uniform sample
    of those under `MAX_INSNS` instructions (fewer when the space is smaller)."""
    space = L.space(layer, target)
    small = [s for s in space[TOP:] if instructions_bound(layer, s, target) <= MAX_INSNS]
    return space[:TOP] + rng.sample(small, min(len(small), max(0, n - TOP)))


def simulate(layer: L.ConvLayer, s: L.ConvSchedule, target: AccelTarget) -> sim.SimResult:
    """Timing-only simulation of one layer under one schedule on one config."""
    return sim.simulate(L.layer_program(layer, s, target), target, None)


def row(spec: LayerSpec, s: L.ConvSchedule, config: str, r: sim.SimResult) -> dict:
    """A corpus row: what was run (unpadded layer, schedule, config) and what it cost."""
    return {
        "layer": dataclasses.asdict(spec),
        "schedule": s.to_json(),
        "config": config,
        "cycles": r.cycles,
        "utilization": r.utilization,
        "gemm_ops": r.gemm_ops,
        "dram_read": r.dram_read,
        "dram_write": r.dram_write,
        "instructions": r.instructions,
    }


def _collect_one(task: tuple[LayerSpec, str, int, int]) -> list[dict]:
    spec, config, n, seed = task
    target = AccelTarget.parse(config)
    layer = spec.layer(target)
    rng = random.Random(zlib.crc32(f"{seed}/{spec.shape}/{config}".encode()))
    return [row(spec, s, config, simulate(layer, s, target)) for s in sample(layer, target, n, rng)]


def collect(
    configs: Sequence[str], layers: Sequence[LayerSpec], *, per_layer: int = 24, seed: int = 0, workers: int = 2
) -> list[dict]:
    """Simulate `per_layer` sampled schedules of every layer on every config (in a pool of
    `workers` processes); rows in (config, layer) order, deterministic for a seed."""
    tasks = [(spec, c, per_layer, seed) for c in configs for spec in layers]
    # the slowest tasks first, so the pool does not wait on one at the end
    order = sorted(range(len(tasks)), key=lambda i: -_work(tasks[i]))
    if workers <= 1:
        done = {i: _collect_one(tasks[i]) for i in order}
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            done = dict(zip(order, pool.imap(_collect_one, [tasks[i] for i in order], chunksize=1)))
    return [r for i in range(len(tasks)) for r in done[i]]


def _work(task: tuple[LayerSpec, str, int, int]) -> float:
    spec, config, _, _ = task
    b = AccelTarget.parse(config).block
    return spec.h * spec.w * L.blocks(spec.cout, b) / b


def write(rows: Iterable[dict], path: str) -> None:
    with gzip.open(path, "wt", compresslevel=9) as f:
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def read(path: str = CORPUS_PATH) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tilecraft.corpus.accel_corpus", description=__doc__.split("\n")[0])
    p.add_argument("--per-layer", type=int, default=24, help="schedules sampled per (layer, config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=CORPUS_PATH)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    specs = layer_specs()
    rows = collect((*CONFIGS, UNSEEN), specs, per_layer=args.per_layer, seed=args.seed, workers=args.workers)
    write(rows, args.out)
    print(
        f"{len(rows)} rows: {len(specs)} layer shapes × {len(CONFIGS) + 1} configs, "
        f"{time.perf_counter() - t0:.0f} s, {os.path.getsize(args.out) / 1e6:.2f} MB → {args.out}"
    )


if __name__ == "__main__":
    main()
