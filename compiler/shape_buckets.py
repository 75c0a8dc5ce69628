"""Shape buckets for `torch.compile`'s dynamic graphs: one compile serves every size up to a
power of two, its inputs padded and the padding masked out.

Part of the torch.compile backend (`compiler/dynamo_backend.py`). A graph dynamo marks
dynamic in one size (a sequence length `s`) is exported once with `s` symbolic; every
value whose shape has a dimension of exactly `s` is padded there. Padding is harmless to
ops that treat positions independently (elementwise, a linear layer over features, layer
norm over features, views that keep `s` its own dimension), so the graph runs unchanged on
zeros beyond the real length `n` — except where positions meet: an op reducing or
contracting over a padded dimension. There the padded positions are masked with the
reduction's identity (`amax` −∞; `sum` 0; `mean` sums and divides by `n`; softmax −∞, so
padded keys get weight 0; a matmul contracting over it: 0 in both operands). The masked
graph is exported again at the bucket's size with `n` as a 0-d input and compiled like any
graph: lengths 1…128 take 8 compiles (1, 2, 4, …, 128), each cached on disk.

A graph whose padded dimension merges with another (a reshape to `s·d`), is indexed from
its end, gathered, sorted or reduced by an op this does not mask is not bucketed
(`Unbucketable`): the backend compiles it per exact shape instead.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


class Unbucketable(Exception):
    """The graph cannot run padded (the reason names the op)."""


def bucket(n: int) -> int:
    """The bucket for a size: the next power of two (1, 2, 4, …)."""
    return 1 << max(0, (n - 1).bit_length())


def dynamic_dims(gm: torch.fx.GraphModule) -> tuple[str, list[tuple[int, int]]] | None:
    """The one symbol dynamo made dynamic and the (placeholder, dim) positions whose size
    is exactly it; None when no or several symbols, or a size is an expression of one."""
    dims, symbols = [], set()
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        ev = node.meta.get("example_value")
        if isinstance(ev, torch.SymInt):
            symbols.add(str(ev))
        elif isinstance(ev, torch.Tensor):
            for d, size in enumerate(ev.shape):
                if isinstance(size, torch.SymInt):
                    symbols.add(str(size))
                    dims.append((i, d))
    if len(symbols) != 1 or not dims or not all(s.isidentifier() for s in symbols):
        return None
    return symbols.pop(), dims


# Ops that read positions along a dimension (an index, an order, a reduction this does not
# mask): refused when that dimension is the padded one.
_POSITIONAL = {
    *("select", "slice", "index", "index_select", "gather", "scatter", "sort", "topk", "argmax", "argmin"),
    *("max", "min", "var", "var_mean", "std", "logsumexp", "prod", "any", "all", "cumprod", "flip", "roll"),
    "_scaled_dot_product_flash_attention_for_cpu",
}
_REDUCE_IDENTITY = {"amax": float("-inf"), "amin": float("inf"), "sum": 0.0}


def _dims(node, sym: str) -> tuple[list[int], list[int]]:
    """A value's padded dimensions (size exactly `sym`) and merged ones (`k*sym`: a
    reshape folded a batch into it, padding between each batch row's real positions)."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return [], []
    padded, merged = [], []
    for d, size in enumerate(val.shape):
        if isinstance(size, torch.SymInt):
            text = str(size).replace(" ", "")
            if text == sym:
                padded.append(d)
            elif text.endswith("*" + sym) and text[: -len(sym) - 1].isdigit():
                merged.append(d)
            else:
                raise Unbucketable(f"{node.name} has a dimension of {size}")
    return padded, merged


def _padded(node, sym: str) -> list[int]:
    return _dims(node, sym)[0]


# Ops that may take the padded size as an argument (a shape, an end): its value there
# is the bucket's, which is what the padded tensors have.
_SIZE_ARGS = {
    *("view", "_unsafe_view", "reshape", "expand", "arange", "zeros", "ones", "empty", "new_zeros", "new_ones"),
    *("new_empty", "sym_size", "sym_numel", "sym_stride", "repeat", "empty_strided", "as_strided"),
}


def _symbolic(x) -> bool:
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    return isinstance(val, (torch.SymInt, torch.SymFloat))


def check_size_uses(node: torch.fx.Node, sym: str) -> None:
    """Refuse an op that computes with the padded size as a value (a mean written as a
    sum over `x.shape[1]`, an index from the end): padded, it would read the bucket's
    size, not the real one."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return  # Python arithmetic on sizes makes sizes
    packet = node.target.__name__.split(".")[0]
    flat = torch.fx.node.map_aggregate((node.args, node.kwargs), lambda v: v)
    leaves = []
    torch.fx.node.map_aggregate(flat, lambda v: leaves.append(v))
    uses = [v for v in leaves if _symbolic(v)]
    if not uses:
        return
    if packet in ("full", "new_full"):
        fill = node.args[1] if packet == "full" else node.args[2]
        if _symbolic(fill):
            raise Unbucketable(f"{node.name}: a fill value from the padded size")
        return
    if packet in _SIZE_ARGS:
        return
    if packet == "slice":  # (x, dim, start, end, step): an end of exactly the size means "to the end"
        start = node.args[2] if len(node.args) > 2 else None
        end = node.args[3] if len(node.args) > 3 else None
        if not _symbolic(start) and (not _symbolic(end) or str(end.meta["val"]) == sym):
            return
    raise Unbucketable(f"{node.name} ({node.target}) computes with the padded size")


def _norm_dims(dims, rank: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(rank))
    dims = [dims] if isinstance(dims, int) else dims
    return [d + rank if d < 0 else d for d in dims]


def _dim_arg(packet: str, args, kwargs):
    """The dimension(s) an op works along, as written (None: all of them)."""
    default = 0 if packet in ("cat", "stack", "split", "split_with_sizes", "unbind") else None
    if packet in ("split", "split_with_sizes", "linalg_vector_norm", "norm"):  # (x, size|ord, dim, ...)
        return args[2] if len(args) > 2 else kwargs.get("dim", default)
    if len(args) > 1 and isinstance(args[1], (int, list, tuple)):
        return args[1]
    return kwargs.get("dim", default)


def _mask(x: torch.Tensor, dim: int, n: torch.Tensor, fill: float) -> torch.Tensor:
    size = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = size
    keep = (torch.arange(size) < n).view(shape)
    if not x.dtype.is_floating_point and abs(fill) == float("inf"):  # integers: their extremes
        info = torch.iinfo(x.dtype)
        fill = info.min if fill < 0 else info.max
    return torch.where(keep, x, torch.full((), fill, dtype=x.dtype))


def _run_node(node: torch.fx.Node, args, kwargs, sym: str, n: torch.Tensor):
    """The node's value with padded positions masked where they would mix with real ones."""
    name = getattr(node.target, "__name__", str(node.target))
    packet = name.split(".")[0]
    a = args[0] if args else None
    a_pad, a_merged = _dims(node.args[0], sym) if node.args else ([], [])
    _dims(node, sym)  # (a size of another form is refused here)
    if packet in ("amax", "amin", "sum", "mean", *_POSITIONAL) and isinstance(a, torch.Tensor) and a_merged:
        if set(_norm_dims(_dim_arg(packet, args, kwargs), a.dim())) & set(a_merged):
            raise Unbucketable(f"{name} along a padded dimension merged with another")
    if packet in ("amax", "amin", "sum", "mean") and isinstance(a, torch.Tensor) and a_pad:
        hit = [d for d in _norm_dims(_dim_arg(packet, args, kwargs), a.dim()) if d in a_pad]
        if hit:
            fill = _REDUCE_IDENTITY.get(packet, 0.0)
            for d in hit:
                a = _mask(a, d, n, fill)
            out = node.target(a, *args[1:], **kwargs)
            if packet == "mean":  # the mean of the real positions: rescale by padded / real count
                scale = 1.0
                for d in hit:
                    scale = scale * (a.shape[d] / n.to(out.dtype))
                out = out * scale
            return out
    if packet in ("_softmax", "_log_softmax") and _norm_dims(args[1], a.dim())[0] in a_merged:
        raise Unbucketable(f"{name} along a padded dimension merged with another")
    if packet in ("_softmax", "_log_softmax") and a_pad:
        dim = _norm_dims(args[1], a.dim())[0]
        if dim in a_pad:
            return node.target(_mask(a, dim, n, float("-inf")), *args[1:], **kwargs)
    if packet in ("mm", "bmm", "addmm", "baddbmm"):
        lhs_i, rhs_i = (1, 2) if packet in ("addmm", "baddbmm") else (0, 1)
        lhs, rhs = args[lhs_i], args[rhs_i]
        lk, rk = lhs.dim() - 1, rhs.dim() - 2
        if lk in _dims(node.args[lhs_i], sym)[1] or rk in _dims(node.args[rhs_i], sym)[1]:
            raise Unbucketable(f"{name} contracts a padded dimension merged with another")
        if lk in _padded(node.args[lhs_i], sym) or rk in _padded(node.args[rhs_i], sym):
            args = list(args)
            args[lhs_i], args[rhs_i] = _mask(lhs, lk, n, 0.0), _mask(rhs, rk, n, 0.0)
        return node.target(*args, **kwargs)
    if a_pad and packet in _POSITIONAL:
        hit = [d for d in _norm_dims(_dim_arg(packet, args, kwargs), a.dim()) if d in a_pad]
        if not hit:
            return node.target(*args, **kwargs)
        if packet == "slice" and (len(args) < 3 or args[2] is None or args[2] >= 0):
            return node.target(*args, **kwargs)  # a prefix or window from the front: positions keep their meaning
        raise Unbucketable(f"{name} along the padded dimension")
    _check_position_wise(node, args, kwargs, sym, name, packet)
    return node.target(*args, **kwargs)


# Ops that keep every position where it is (or make new tensors): safe on padded values.
_LAYOUT = {
    *("view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "clone"),
    *("_to_copy", "alias", "detach", "contiguous", "lift_fresh_copy", "copy", "where", "masked_fill", "sym_size"),
    *("full", "zeros", "ones", "empty", "arange", "full_like", "zeros_like", "ones_like", "empty_like"),
    *("scalar_tensor", "new_zeros", "new_ones", "new_full", "new_empty", "_assert_tensor_metadata"),
}
# Ops along given dimensions: safe when those avoid the padded ones (a layer norm's
# variance over features), or when a prefix is all they read (a cumulative sum).
_ALONG = {
    *_POSITIONAL,
    *("amax", "amin", "sum", "mean", "linalg_vector_norm", "norm", "_softmax", "_log_softmax", "cat", "stack"),
    *("split", "split_with_sizes", "unbind", "cumsum"),
}


def _check_position_wise(node, args, kwargs, sym: str, name: str, packet: str) -> None:
    """Refuse an op that would mix padded positions into real ones: only pointwise ops,
    layout ops, and ops along dimensions other than the padded ones run unmasked."""
    touched = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda v: touched.append(v))
    hits = [_dims(v, sym) for v in touched]
    if not any(p or m for p, m in hits):
        return
    op = node.target
    if isinstance(op, torch._ops.OpOverload) and torch.Tag.pointwise in op.tags:
        return
    if packet in _LAYOUT:
        return
    if packet == "native_layer_norm":  # normalizes over its last len(normalized_shape) dims
        rank, k = args[0].dim(), len(args[1])
        if not {d for p, m in hits[:1] for d in (*p, *m)} & set(range(rank - k, rank)):
            return
    if packet in _ALONG:
        first = args[0][0] if packet in ("cat", "stack") else args[0]
        rank = first.dim() + (1 if packet == "stack" else 0)
        padded = {d for p, m in hits for d in (*p, *m)}
        if packet == "cumsum" or not set(_norm_dims(_dim_arg(packet, args, kwargs), rank)) & padded:
            return
    raise Unbucketable(f"{name} on a padded tensor")


class Masked(torch.nn.Module):
    """An exported program (one symbolic size `sym`) run on inputs padded to a bucket,
    with `n` (a 0-d int64 tensor) the real size."""

    def __init__(self, prog, sym: str):
        super().__init__()
        from tilecraft.exported import input_slots

        self.gm, self.sym, self.out_spec = prog.graph_module, sym, prog.call_spec.out_spec
        self.slots: list = []
        for i, (kind, x) in enumerate(input_slots(prog)):
            if kind == "value":  # a buffer, so the compile lifts and binds it as a weight
                self.register_buffer(f"c{i}", x, persistent=False)
                kind, x = "buffer", f"c{i}"
            self.slots.append((kind, x))

    def forward(self, *args):
        from torch.utils import _pytree

        *user, n = args
        env: dict = {}
        it = iter(self.slots)
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                kind, x = next(it)
                env[node] = user[x] if kind == "arg" else getattr(self, x)
            elif node.op == "call_function":
                a = torch.fx.node.map_arg(node.args, lambda v: env[v])
                kw = torch.fx.node.map_arg(node.kwargs, lambda v: env[v])
                check_size_uses(node, self.sym)
                env[node] = _run_node(node, a, kw, self.sym, n)
            elif node.op == "output":
                flat = [env[x] if isinstance(x, torch.fx.Node) else x for x in node.args[0]]
                return _pytree.tree_unflatten(flat, self.out_spec)
            else:
                raise Unbucketable(f"{node.op} node {node.name}")
        raise Unbucketable("a graph without an output")


def output_padded_dims(prog, sym: str) -> list[list[int]]:
    """Per flat output of `prog`: its padded dimensions."""
    out_node = next(n for n in prog.graph.nodes if n.op == "output")
    out = []
    for x in out_node.args[0]:
        padded, merged = _dims(x, sym) if isinstance(x, torch.fx.Node) else ([], [])
        if merged:
            raise Unbucketable(f"output {x.name} has a padded dimension merged with another")
        out.append(padded)
    return out
