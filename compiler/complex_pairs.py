"""Complex tensors as pairs of reals: the exported graph restated without a complex dtype.

Part of the frontend (`compiler/frontend.py`). torch-mlir's linalg lowering has no complex
arithmetic (`arith.muli` on `complex<f32>`; LLVM rejected what got through), so a model
that computes with complex64/complex128 tensors is re-exported here with each complex
tensor held as a real one with a trailing dimension of 2 (`torch.view_as_real`'s layout,
so the caller's complex tensors are passed and returned without a copy): the exported
ATen graph is interpreted over such pairs (`_Pairs`) and that interpretation exported
again. Arithmetic (add, sub, mul, div, neg, conj, abs, angle, exp, pow by small integers,
reciprocal), matrix products (AC − BD, AD + BC), sums and means, views and layout ops,
`complex`/`polar`/`view_as_*`/`real`/`imag`, casts and fills, and FFTs of any length (as
products with DFT matrices) are restated; any other op on a complex tensor is one line
naming it and the model's source line.
"""

from __future__ import annotations

import math

import torch

aten = torch.ops.aten

_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64, torch.complex32: torch.float16}


class UnsupportedComplex(Exception):
    """An op on complex tensors this rewrite does not restate (`node`: where)."""

    def __init__(self, node: torch.fx.Node):
        super().__init__(str(node.target))
        self.node = node


class Z:
    """A complex tensor as a real one with a trailing dimension of 2 (re, im)."""

    __slots__ = ("t",)

    def __init__(self, t: torch.Tensor):
        self.t = t

    @property
    def re(self) -> torch.Tensor:
        return self.t[..., 0]

    @property
    def im(self) -> torch.Tensor:
        return self.t[..., 1]

    @property
    def rank(self) -> int:
        return self.t.dim() - 1


def is_complex(val) -> bool:
    return isinstance(val, torch.Tensor) and val.dtype.is_complex


def has_complex(prog) -> bool:
    """Whether any value of the exported program is a complex tensor."""
    return any(is_complex(n.meta.get("val")) for n in prog.graph.nodes)


def _parts(x):
    """(re, im) of a pair, a real tensor or a Python number (im may be the number 0)."""
    if isinstance(x, Z):
        return x.re, x.im
    if isinstance(x, complex):
        return x.real, x.imag
    return x, 0


def _make(re, im, like=None) -> Z:
    """A pair from its parts, broadcast to one shape (a number part becomes a tensor)."""
    ref = re if isinstance(re, torch.Tensor) else im if isinstance(im, torch.Tensor) else like
    if not isinstance(re, torch.Tensor):
        re = torch.full_like(ref, re)
    if not isinstance(im, torch.Tensor):
        im = torch.full_like(ref, im)
    re, im = torch.broadcast_tensors(re, im)
    return Z(torch.stack([re, im], -1))


def _col(x):
    """A real operand broadcast against a pair's (re, im) dimension."""
    return x.unsqueeze(-1) if isinstance(x, torch.Tensor) else x


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _dims(ds, rank: int) -> list[int]:
    return list(range(rank)) if ds is None or len(ds) == 0 else [_dim(d, rank) for d in ds]


def _real(x) -> bool:
    return not isinstance(x, (Z, complex))


def _mul(a, b) -> Z:
    if isinstance(a, Z) and _real(b):
        return Z(a.t * _col(b))
    if isinstance(b, Z) and _real(a):
        return Z(_col(a) * b.t)
    ar, ai = _parts(a)
    br, bi = _parts(b)
    return _make(ar * br - ai * bi, ar * bi + ai * br)


def _div(a, b) -> Z:
    if isinstance(a, Z) and _real(b):
        return Z(a.t / _col(b))
    ar, ai = _parts(a)
    br, bi = _parts(b)
    den = br * br + bi * bi
    return _make(
        (ar * br + ai * bi) / den, (ai * br - ar * bi) / den, like=br if isinstance(br, torch.Tensor) else None
    )


def _add(a, b, alpha=1, sign=1) -> Z:
    if isinstance(a, Z) and isinstance(b, Z):
        return Z(a.t + sign * alpha * b.t)
    ar, ai = _parts(a)
    br, bi = _parts(b)
    like = next(x for x in (ar, br) if isinstance(x, torch.Tensor))
    return _make(ar + sign * alpha * br, ai + sign * alpha * bi, like=like)


def _matmul(op, a, b) -> Z:
    if not isinstance(b, Z):
        return _make(op(a.re, b), op(a.im, b))
    if not isinstance(a, Z):
        return _make(op(a, b.re), op(a, b.im))
    return _make(op(a.re, b.re) - op(a.im, b.im), op(a.re, b.im) + op(a.im, b.re))


def _pow(z: Z, n) -> Z:
    if not isinstance(n, int) and not (isinstance(n, float) and n.is_integer()):
        raise TypeError("only integer powers")
    n = int(n)
    if n == 0:
        return _make(torch.ones_like(z.re), 0)
    out, base = None, z if n > 0 else _div(1.0, z)
    for _ in range(abs(n)):
        out = base if out is None else _mul(out, base)
    return out


def _dft(n_in: int, n_out: int, inverse: bool, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin matrices [n_in, n_out] of the DFT (sign −1 forward, +1 inverse)."""
    k = torch.arange(n_in, dtype=torch.float64)[:, None] * torch.arange(n_out, dtype=torch.float64)[None, :]
    angle = (2 * math.pi / max(n_in, n_out)) * torch.remainder(k, max(n_in, n_out))
    sign = 1.0 if inverse else -1.0
    return torch.cos(angle).to(dtype), (sign * torch.sin(angle)).to(dtype)


def _scale(x, n: int, normalization: int):
    return x if normalization == 0 else x / math.sqrt(n) if normalization == 1 else x / n


def _fft_dim(re, im, dim: int, forward: bool, normalization: int, n_out: int | None = None, onesided=False):
    """One complex DFT along `dim` of (re, im) (`im` None: a real input): products with
    the DFT matrix. `onesided`: keep n // 2 + 1 outputs (r2c)."""
    n = re.shape[dim]
    m = n // 2 + 1 if onesided else n
    cos, sin = _dft(n, m, not forward, re.dtype)
    re_t = re.movedim(dim, -1)
    out_re, out_im = re_t @ cos, re_t @ sin
    if im is not None:
        im_t = im.movedim(dim, -1)
        out_re, out_im = out_re - im_t @ sin, out_im + im_t @ cos
    return _scale(out_re, n, normalization).movedim(-1, dim), _scale(out_im, n, normalization).movedim(-1, dim)


def _fft_c2r(z: Z, dims, normalization: int, last: int):
    """Inverse of a one-sided DFT: all but the last dim as complex inverses, the last one
    real from its n // 2 + 1 coefficients (Hermitian symmetry)."""
    re, im = z.re, z.im
    rank = z.rank
    dims = _dims(dims, rank)
    for d in dims[:-1]:
        re, im = _fft_dim(re, im, d, False, normalization)
    d = dims[-1]
    half = last // 2 + 1  # the coefficients an output of `last` points reads: trimmed, or zeros added
    have = re.shape[d]
    if have > half:
        re, im = re.narrow(d, 0, half), im.narrow(d, 0, half)
    elif have < half:
        pad = list(re.shape)
        pad[d] = half - have
        re, im = torch.cat([re, re.new_zeros(pad)], d), torch.cat([im, im.new_zeros(pad)], d)
    k = torch.arange(half, dtype=torch.float64)[:, None]
    t = torch.arange(last, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * k * t / last
    weight = torch.full((half, 1), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if last % 2 == 0:
        weight[-1] = 1.0
    cos, sin = (weight * torch.cos(angle)).to(re.dtype), (weight * torch.sin(angle)).to(re.dtype)
    out = re.movedim(d, -1) @ cos - im.movedim(d, -1) @ sin
    return _scale(out, last, normalization).movedim(-1, d)


def _restate(node: torch.fx.Node, args, kwargs):
    """The node's value over pairs, or NotImplemented."""
    t = node.target
    name = getattr(t, "__name__", str(t))  # e.g. "mul.Tensor"
    packet = name.split(".")[0]
    a = args[0] if args else None
    val = node.meta.get("val")
    if packet == "view_as_complex":
        return Z(a)
    if packet == "view_as_real":
        return a.t
    if packet == "real":
        return a.re if isinstance(a, Z) else a
    if packet == "imag":
        return a.im
    if packet == "complex":
        return _make(args[0], args[1])
    if packet == "polar":
        return _make(args[0] * torch.cos(args[1]), args[0] * torch.sin(args[1]))
    if packet in ("add", "sub"):
        return _add(args[0], args[1], kwargs.get("alpha", 1), -1 if packet == "sub" else 1)
    if packet == "rsub":
        return _add(args[1], args[0], kwargs.get("alpha", 1), -1)
    if packet == "mul":
        return _mul(args[0], args[1])
    if packet == "div":
        return _div(args[0], args[1])
    if packet == "reciprocal":
        return _div(1.0, a)
    if packet == "neg":
        return Z(-a.t)
    if packet in ("_conj", "conj", "conj_physical"):
        return _make(a.re, -a.im)
    if packet in ("clone", "alias", "detach", "lift_fresh_copy", "resolve_conj", "resolve_neg", "contiguous"):
        return Z(a.t.clone()) if packet == "clone" else Z(a.t)
    if packet == "abs":
        return torch.sqrt(a.re * a.re + a.im * a.im)
    if packet == "angle":
        return torch.atan2(a.im, a.re)
    if packet == "exp":
        r = torch.exp(a.re)
        return _make(r * torch.cos(a.im), r * torch.sin(a.im))
    if packet == "pow" and name.endswith("Tensor_Scalar"):
        return _pow(a, args[1])
    if packet in ("mm", "bmm", "matmul"):
        return _matmul(t, args[0], args[1])
    if packet in ("sum", "mean"):
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        op = torch.sum if packet == "sum" else torch.mean
        return Z(op(a.t, _dims(dims, a.rank), keepdim=keep))
    if packet in ("view", "_unsafe_view", "reshape"):
        return Z(a.t.reshape([*args[1], 2]))
    if packet == "permute":
        return Z(a.t.permute([*_dims(args[1], a.rank), a.rank]))
    if packet == "transpose":
        return Z(a.t.transpose(_dim(args[1], a.rank), _dim(args[2], a.rank)))
    if packet == "t":
        return Z(a.t.transpose(0, 1)) if a.rank == 2 else a
    if packet == "unsqueeze":
        return Z(a.t.unsqueeze(_dim(args[1], a.rank + 1)))
    if packet == "squeeze":
        if len(args) == 1:
            return Z(a.t.reshape([*(s for s in a.t.shape[:-1] if s != 1), 2]))
        ds = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        return Z(a.t.squeeze(tuple(_dims(ds, a.rank))))
    if packet == "expand":
        return Z(a.t.expand([*args[1], 2]))
    if packet == "select":
        return Z(a.t.select(_dim(args[1], a.rank), args[2]))
    if packet == "slice":
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        rest = list(args[2:])
        return Z(aten.slice.Tensor(a.t, _dim(dim, a.rank), *rest))
    if packet in ("cat", "stack"):
        parts = [x if isinstance(x, Z) else _make(x, 0) for x in a]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        rank = parts[0].rank + (1 if packet == "stack" else 0)
        return Z((torch.cat if packet == "cat" else torch.stack)([p.t for p in parts], _dim(dim, rank)))
    if packet == "copy_":
        src = args[1] if isinstance(args[1], Z) else _make(args[1], 0, like=a.re)
        a.t.copy_(src.t)
        return a
    if packet in ("_to_copy", "to"):
        dtype = kwargs.get("dtype")
        if isinstance(a, Z):
            if dtype is None or dtype.is_complex:
                return Z(a.t.to(_REAL.get(dtype, a.t.dtype)))
            return a.re.to(dtype)
        return _make(a.to(_REAL[dtype]), 0)
    if packet in ("full", "scalar_tensor"):
        dtype = _REAL[kwargs["dtype"]]
        fill = complex(args[1] if packet == "full" else args[0])
        shape = args[0] if packet == "full" else []
        return _make(torch.full(shape, fill.real, dtype=dtype), fill.imag)
    if packet in ("zeros_like", "ones_like", "full_like"):
        fill = complex(0 if packet == "zeros_like" else 1 if packet == "ones_like" else args[1])
        dtype = kwargs.get("dtype")
        if dtype is not None and not dtype.is_complex:  # a real tensor shaped like a complex one
            return torch.full_like(a.re, fill.real, dtype=dtype)
        return _make(torch.full_like(a.re, fill.real), fill.imag)
    if packet in ("_fft_c2c", "_fft_r2c"):
        dims, norm = list(args[1]), args[2]
        forward = args[3] if packet == "_fft_c2c" else True
        onesided = packet == "_fft_r2c" and args[3]
        if isinstance(a, Z):
            re, im = a.re, a.im
        else:
            re, im = a, None
        rank = re.dim()
        ds = _dims(dims, rank)
        for i, d in enumerate(reversed(ds)):  # the one-sided dim is the last one: first
            re, im = _fft_dim(re, im, d, forward, norm, onesided=onesided and i == 0)
        return _make(re, im)
    if packet in ("fft_fft", "fft_ifft", "fft_rfft", "fft_irfft"):
        n = args[1] if len(args) > 1 else kwargs.get("n")
        dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
        norm = args[3] if len(args) > 3 else kwargs.get("norm")
        inverse = packet in ("fft_ifft", "fft_irfft")
        re, im = (a.re, a.im) if isinstance(a, Z) else (a, None)
        dim = _dim(dim, re.dim())
        size = re.shape[dim]
        if packet == "fft_irfft":
            last = n if n is not None else 2 * (size - 1)
            code = {None: 2, "backward": 2, "ortho": 1, "forward": 0}[norm]
            return _fft_c2r(a if isinstance(a, Z) else _make(a, 0), [dim], code, last)
        if n is not None and n != size:
            return NotImplemented
        code = {None: 0, "backward": 0, "ortho": 1, "forward": 2}[norm]
        if inverse:
            code = {0: 2, 1: 1, 2: 0}[code]
        re, im = _fft_dim(re, im, dim, not inverse, code, onesided=packet == "fft_rfft")
        return _make(re, im)
    if packet == "_fft_c2r":
        return _fft_c2r(a, args[1], args[2], args[3])
    del val
    return NotImplemented


def _interpret(gm: torch.fx.GraphModule, inputs: list, mutations: dict[int, int], out_spec):
    """Run `gm`'s graph over `inputs` (one per placeholder: a tensor, or a pair for a
    complex one); mutations (flat output k → input i) are applied to the inputs' tensors;
    returns the user outputs in eager's structure."""
    from torch.utils import _pytree

    env: dict[torch.fx.Node, object] = {}
    placeholders = iter(inputs)

    def load(x):
        return torch.fx.node.map_arg(x, lambda n: env[n])

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(placeholders)
        elif node.op == "get_attr":
            value = getattr(gm, node.target)
            env[node] = Z(torch.view_as_real(value)) if is_complex(value) else value
        elif node.op == "call_function":
            a, kw = load(node.args), load(node.kwargs)
            touches = is_complex(node.meta.get("val")) or any(isinstance(x, Z) for x in _pytree.tree_leaves((a, kw)))
            if not touches:
                env[node] = node.target(*a, **kw)
                continue
            try:
                out = _restate(node, a, kw)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                out = NotImplemented
            if out is NotImplemented:
                raise UnsupportedComplex(node)
            env[node] = out
        elif node.op == "output":
            flat = [env[x] if isinstance(x, torch.fx.Node) else x for x in node.args[0]]
            flat = [x.t if isinstance(x, Z) else x for x in flat]
            for k, i in mutations.items():
                dst = inputs[i]
                (dst.t if isinstance(dst, Z) else dst).copy_(flat[k])
            user = [x for k, x in enumerate(flat) if k not in mutations]
            return _pytree.tree_unflatten(user, out_spec)
        else:
            raise UnsupportedComplex(node)
    raise AssertionError("graph without an output")


class _Pairs(torch.nn.Module):
    """The exported graph over pairs: its user inputs as arguments (complex ones as
    pairs), its lifted constants kept as they are."""

    def __init__(self, prog, complex_in: list[bool], mutations: dict[int, int]):
        super().__init__()
        from tilecraft.exported import input_slots

        self.gm, self.out_spec, self.mutations = prog.graph_module, prog.call_spec.out_spec, mutations
        self.complex_in = complex_in
        self.slots = [  # per placeholder: ("arg", k) or ("value", tensor or pair)
            (kind, Z(torch.view_as_real(x)) if kind == "value" and is_complex(x) else x)
            for kind, x in input_slots(prog)
        ]

    def forward(self, *args):
        inputs = [(Z(args[x]) if self.complex_in[x] else args[x]) if kind == "arg" else x for kind, x in self.slots]
        return _interpret(self.gm, inputs, self.mutations, self.out_spec)


def as_real_pairs(prog, args: list[torch.Tensor]):
    """Re-export `prog` with complex tensors as real pairs. `args`: its user inputs.
    Returns (program, real args, complex flags of the user inputs, complex flags of its
    flat user outputs). Raises UnsupportedComplex."""
    from torch.export.graph_signature import InputKind, OutputKind

    specs = prog.graph_signature.input_specs
    users = [s.arg.name for s in specs if s.kind == InputKind.USER_INPUT]
    complex_in = [is_complex(a) for a in args]
    placeholder = [s.arg.name for s in specs]
    out_node = next(n for n in prog.graph.nodes if n.op == "output")
    mutations, complex_out = {}, []
    for k, (value, ospec) in enumerate(zip(out_node.args[0], prog.graph_signature.output_specs)):
        if ospec.kind == OutputKind.USER_INPUT_MUTATION:
            mutations[k] = placeholder.index(ospec.target)
        elif ospec.kind == OutputKind.USER_OUTPUT:
            complex_out.append(isinstance(value, torch.fx.Node) and is_complex(value.meta.get("val")))
    del users
    real_args = [torch.view_as_real(a.resolve_conj()).clone() if is_complex(a) else a for a in args]
    new = torch.export.export(_Pairs(prog, complex_in, mutations), tuple(real_args), strict=False)
    return new, real_args, complex_in, complex_out
