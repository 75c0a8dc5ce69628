"""Inference batch norms: folded into the convolution before them, or a scale and shift.

On the compiler floor; runs in the frontend (`frontend.import_module`) on the exported
ATen graph, before weight-only ops are folded. The export keeps each inference batch norm
whole (`aten._native_batch_norm_legit_no_training`: `TABLE` leaves it out of the
decomposition table), which traces one node where the decomposition traced about ten:
MobileNet-V2's 52 batch norms were the largest part of its export.

- A batch norm whose input is a convolution used by nothing else (all float32) is folded
  into it: weight W·s (s = γ / √(var + ε), along the output channels), then one add of
  (b − mean)·s + β (kept out of the convolution's bias: the GEMM and tap-chain rewrites
  and fusion take a zero-filled accumulator; as its bias, MobileNet-V2 ran 10% slower).
  Both are weight-only, so `frontend.fold_weight_only` evaluates them once.
- Any other is (x − mean)·s + β, with s and the reshaped statistics weight-only too.

The folded weights round differently from eager's normalization of the convolution's
output (a relative difference of about 1e-7 per element), well within the output checks.
"""

from __future__ import annotations

import operator

import torch

ENABLED = True  # (off only to compare: the batch norms decomposed while exporting)
BN = torch.ops.aten._native_batch_norm_legit_no_training.default
CONV = torch.ops.aten.convolution.default


def table(full: dict) -> dict:
    """The decomposition table without the inference batch norm (kept whole to fold)."""
    return {k: v for k, v in full.items() if k is not BN} if ENABLED else full


def fold_batch_norms(graph: torch.fx.Graph) -> int:
    """Rewrite every inference batch norm of `graph` (see the module docstring). Returns
    how many were folded into a convolution."""
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "call_function" and n.target is BN]:
        outs = [u for u in bn.users if u.target is operator.getitem and u.args[1] == 0]
        if len(outs) != len(bn.users):
            continue  # (its saved statistics are read: left to the lowering)
        x, gamma, beta, mean, var, _, eps = bn.args
        with graph.inserting_before(bn):
            make = _Maker(graph, x)
            scale = make(torch.ops.aten.rsqrt.default, make(torch.ops.aten.add.Scalar, var, eps))
            if gamma is not None:
                scale = make(torch.ops.aten.mul.Tensor, scale, gamma)
            shape = [-1] + [1] * (_val(x).dim() - 2)  # per channel (dim 1), broadcast from the right
            if _foldable(x, bn):
                conv, w, b = x, x.args[1], x.args[2]
                w_shape = [-1] + [1] * (_val(w).dim() - 1)
                new_w = make(torch.ops.aten.mul.Tensor, w, make(torch.ops.aten.view.default, scale, w_shape))
                if b is None:
                    shift = make(torch.ops.aten.neg.default, mean)
                else:
                    shift = make(torch.ops.aten.sub.Tensor, b, mean)
                new_b = make(torch.ops.aten.mul.Tensor, shift, scale)
                if beta is not None:
                    new_b = make(torch.ops.aten.add.Tensor, new_b, beta)
                conv.args = (conv.args[0], new_w, None, *conv.args[3:])
                # (the shift as an add after it, not the convolution's bias: the GEMM and
                # tap-chain rewrites and fusion take a zero-filled accumulator)
                result = make(torch.ops.aten.add.Tensor, conv, make(torch.ops.aten.view.default, new_b, shape))
                folded += 1
            else:
                y = make(torch.ops.aten.sub.Tensor, x, make(torch.ops.aten.view.default, mean, shape))
                y = make(torch.ops.aten.mul.Tensor, y, make(torch.ops.aten.view.default, scale, shape))
                if beta is not None:
                    y = make(torch.ops.aten.add.Tensor, y, make(torch.ops.aten.view.default, beta, shape))
                if _val(y).dtype != _val(x).dtype:  # (low-precision input, float32 statistics)
                    y = make(torch.ops.prims.convert_element_type.default, y, _val(x).dtype)
                result = y
        for out in outs:
            out.replace_all_uses_with(result)
            graph.erase_node(out)
        graph.erase_node(bn)
    return folded


def _val(node):
    return node.meta["val"]


def _foldable(x, bn) -> bool:
    """`x` a (non-transposed) convolution used by the batch norm alone, all in float32."""
    if not isinstance(x, torch.fx.Node) or x.target is not CONV or len(x.users) != 1 or x.args[6]:
        return False
    tensors = [a for a in (*x.args[:3], *bn.args[1:5]) if isinstance(a, torch.fx.Node)]
    return all(getattr(_val(t), "dtype", None) == torch.float32 for t in tensors)


class _Maker:
    """New nodes with their fake values (the FX importer reads each node's `val`)."""

    def __init__(self, graph: torch.fx.Graph, anchor: torch.fx.Node):
        self.graph = graph
        self.mode = _val(anchor).fake_mode

    def __call__(self, target, *args):
        node = self.graph.call_function(target, args)
        fake = [_val(a) if isinstance(a, torch.fx.Node) else a for a in args]
        with self.mode:
            node.meta["val"] = target(*fake)
        return node
