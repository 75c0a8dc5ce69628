"""Workload generator: random kernels beyond the zoo, so the corpus covers what users hit.

In the spirit of TenSet's and the Halide autoscheduler's random programs: op kinds
(matmul, batch matmul, conv2d, depthwise conv2d, max pooling, elementwise, reductions) ×
shapes drawn from the sizes real networks use × dtypes. On the corpus floor; used by
collection (`corpus/collect.py`) and by the fusion planner for stand-in matmuls. Writes
nothing; `random_kernels` returns `Kernel`s (through the same outlining as model kernels,
so keys agree).
"""

from __future__ import annotations

import random

from tilecraft.corpus import kernels

SIZES = (1, 7, 8, 14, 16, 28, 32, 48, 49, 56, 64, 96, 112, 128, 192, 196, 256, 384, 512, 768, 1024)
CHANNELS = (3, 8, 16, 24, 32, 48, 64, 96, 128, 160, 256, 320, 512)
ELEMENTWISE_BODIES = {
    "add": "%r = arith.addf %a, %b : {t}",
    "mul": "%r = arith.mulf %a, %b : {t}",
    "max": "%r = arith.maximumf %a, %b : {t}",
    "sub_exp": "%d = arith.subf %a, %b : {t}\n      %r = math.exp %d : {t}",
    "mul_add": "%m = arith.mulf %a, %b : {t}\n      %r = arith.addf %m, %a : {t}",
}


def _tensor(shape, dtype="f32") -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{dtype}>"


def matmul(m: int, n: int, k: int, batch: int = 0, dtype: str = "f32") -> str:
    lead = (batch,) if batch else ()
    a, b, c = _tensor((*lead, m, k), dtype), _tensor((*lead, k, n), dtype), _tensor((*lead, m, n), dtype)
    op = "linalg.batch_matmul" if batch else "linalg.matmul"
    return (
        f"func.func @f(%a: {a}, %b: {b}, %c: {c}) -> {c} {{\n"
        f"  %r = {op} ins(%a, %b : {a}, {b}) outs(%c : {c}) -> {c}\n  return %r : {c}\n}}\n"
    )


def conv2d(cin: int, cout: int, hw: int, k: int, stride: int, *, depthwise: bool = False) -> str:
    inp = (hw - 1) * stride + k
    x = _tensor((1, cin, inp, inp))
    attrs = f"{{dilations = dense<1> : vector<2xi64>, strides = dense<{stride}> : vector<2xi64>}}"
    if depthwise:
        w, o = _tensor((cin, k, k)), _tensor((1, cin, hw, hw))
        op = "linalg.depthwise_conv_2d_nchw_chw"
    else:
        w, o = _tensor((cout, cin, k, k)), _tensor((1, cout, hw, hw))
        op = "linalg.conv_2d_nchw_fchw"
    return (
        f"func.func @f(%x: {x}, %w: {w}, %o: {o}) -> {o} {{\n"
        f"  %r = {op} {attrs} ins(%x, %w : {x}, {w}) outs(%o : {o}) -> {o}\n  return %r : {o}\n}}\n"
    )


def max_pool(c: int, hw: int, k: int, stride: int) -> str:
    inp = (hw - 1) * stride + k
    x, win, o = _tensor((1, c, inp, inp)), _tensor((k, k)), _tensor((1, c, hw, hw))
    attrs = f"{{dilations = dense<1> : vector<2xi64>, strides = dense<{stride}> : vector<2xi64>}}"
    return (
        f"func.func @f(%x: {x}, %o: {o}) -> {o} {{\n  %win = tensor.empty() : {win}\n"
        f"  %r = linalg.pooling_nchw_max {attrs} ins(%x, %win : {x}, {win}) outs(%o : {o}) -> {o}\n"
        f"  return %r : {o}\n}}\n"
    )


def _maps(rank: int, keep: list[int]) -> str:
    dims = ", ".join(f"d{i}" for i in range(rank))
    return f"affine_map<({dims}) -> ({', '.join(f'd{i}' for i in keep)})>"


def elementwise(shape: tuple[int, ...], body: str, *, broadcast_last: bool = False, dtype: str = "f32") -> str:
    rank = len(shape)
    t = _tensor(shape, dtype)
    b_shape = shape[-1:] if broadcast_last else shape
    tb = _tensor(b_shape, dtype)
    ident = _maps(rank, list(range(rank)))
    bmap = _maps(rank, [rank - 1]) if broadcast_last else ident
    iters = ", ".join(['"parallel"'] * rank)
    code = ELEMENTWISE_BODIES[body].format(t=dtype)
    return (
        f"func.func @f(%x: {t}, %y: {tb}, %o: {t}) -> {t} {{\n"
        f"  %r = linalg.generic {{indexing_maps = [{ident}, {bmap}, {ident}], iterator_types = [{iters}]}}"
        f" ins(%x, %y : {t}, {tb}) outs(%o : {t}) {{\n"
        f"    ^bb0(%a: {dtype}, %b: {dtype}, %out: {dtype}):\n      {code}\n      linalg.yield %r : {dtype}\n"
        f"  }} -> {t}\n  return %r : {t}\n}}\n"
    )


def reduction(shape: tuple[int, ...], axis: int, kind: str = "sum", dtype: str = "f32") -> str:
    rank = len(shape)
    out_shape = tuple(s for i, s in enumerate(shape) if i != axis)
    t, to = _tensor(shape, dtype), _tensor(out_shape, dtype)
    iters = ", ".join('"reduction"' if i == axis else '"parallel"' for i in range(rank))
    op = {"sum": "arith.addf", "max": "arith.maximumf"}[kind]
    return (
        f"func.func @f(%x: {t}, %o: {to}) -> {to} {{\n"
        f"  %r = linalg.generic {{indexing_maps = [{_maps(rank, list(range(rank)))}, "
        f"{_maps(rank, [i for i in range(rank) if i != axis])}], iterator_types = [{iters}]}}"
        f" ins(%x : {t}) outs(%o : {to}) {{\n"
        f"    ^bb0(%a: {dtype}, %acc: {dtype}):\n      %r = {op} %a, %acc : {dtype}\n      linalg.yield %r : {dtype}\n"
        f"  }} -> {to}\n  return %r : {to}\n}}\n"
    )


def random_program(rng: random.Random) -> str:
    """One random single-op program (MLIR text)."""
    kind = rng.choices(
        ["matmul", "batch_matmul", "conv2d", "depthwise", "pool", "elementwise", "reduction"],
        weights=[5, 2, 4, 2, 1, 3, 2],
    )[0]
    small = [s for s in SIZES if s <= 512]
    if kind == "matmul":
        return matmul(rng.choice(SIZES), rng.choice(SIZES[2:]), rng.choice(SIZES[2:]))
    if kind == "batch_matmul":
        return matmul(
            rng.choice(small[2:]), rng.choice(small[2:]), rng.choice(small[2:]), batch=rng.choice((2, 4, 8, 12))
        )
    if kind in ("conv2d", "depthwise"):
        depthwise = kind == "depthwise"
        hw = rng.choice((7, 14, 28, 56))
        k, stride = (
            rng.choice(((1, 1), (3, 1), (3, 2), (5, 1), (7, 2))) if not depthwise else rng.choice(((3, 1), (3, 2)))
        )
        cin = rng.choice(CHANNELS)
        cout = rng.choice(CHANNELS[2:])
        return conv2d(cin, cout, hw, k, stride, depthwise=depthwise)
    if kind == "pool":
        return max_pool(rng.choice(CHANNELS[2:]), rng.choice((7, 14, 28, 56)), 3, rng.choice((1, 2)))
    rank = rng.choice((1, 2, 3))
    shape = tuple(rng.choice(SIZES[1:]) for _ in range(rank))
    while _numel(shape) > 1 << 21:
        shape = tuple(max(1, s // 2) for s in shape)
    if kind == "elementwise":
        return elementwise(shape, rng.choice(sorted(ELEMENTWISE_BODIES)), broadcast_last=rng.random() < 0.3)
    if rank == 1:
        shape = (rng.choice(SIZES[2:]), *shape)
    return reduction(shape, rng.randrange(len(shape)), rng.choice(("sum", "max")))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


MAX_FLOPS = 2_200_000_000  # up to a 1024³ matmul: bigger ones take minutes to check naively


def random_kernels(count: int, *, seed: int = 0, context=None) -> list[kernels.Kernel]:
    """`count` distinct random kernels of at most MAX_FLOPS, deterministic for a seed."""
    from torch_mlir import ir

    ctx = context or ir.Context()
    rng = random.Random(seed)
    out: dict[str, kernels.Kernel] = {}
    attempts = 0
    while len(out) < count and attempts < count * 20:
        attempts += 1
        module = ir.Module.parse(random_program(rng), context=ctx)
        for k in kernels.extract(module):
            if k.flops <= MAX_FLOPS:
                out.setdefault(k.key, k)
    return list(out.values())[:count]
