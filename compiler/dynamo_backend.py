"""`torch.compile(model, backend="tilecraft")`: each graph TorchDynamo captures, compiled by
the same pipeline as the CLI.

Registered through the `torch_dynamo_backends` entry point (pyproject), so the backend
name works without importing Tilecraft. Options (`torch.compile(..., options={...})`):
`target`, `cost_model`, `precision`, `threads` (as `compile_model` takes them; threads:
default 1, large kernels split into that many chunks on OpenMP threads), `check` (compare the
first call of each compiled graph against the graph run eagerly; a mismatch falls back to
eager with a warning) and `cache` (default on: compiles are stored in and loaded from the
on-disk compile cache, `compiler/cache.py`, so a second process does not compile again).

Weights arrive as graph inputs (dynamo lifts a module's parameters and buffers); they are
bound once, as the CLI binds them (`frontend.import_module` lifts them again and folds
the ops that read only weights), and each call passes only the other inputs. A graph the
pipeline cannot compile runs eagerly, with one warning line naming the reason — never an
exception in the user's forward. Dynamo's graph breaks (a Python branch on tensor data)
give several graphs; each is compiled on its own, and the branch is taken in Python at run
time.

Weights changed in place or replaced (`load_state_dict`) are seen (tensor versions) and
the graph compiled again. With gradients needed (grad mode on and an input or weight that
requires them) a graph runs eagerly: the compiled code has no backward.

Shapes: a graph with static shapes is compiled once, at the first call. A graph dynamo
marks dynamic in one size (after a recompile on a new shape, or `mark_dynamic`) is
compiled per bucket of that size — the next power of two, inputs padded and the padding
masked wherever positions meet (`compiler/shape_buckets.py`): lengths 1…128 take 8
compiles. A graph that cannot run padded (an index from the end, the size used as a
value, several dynamic sizes) is compiled per concrete shape. Every compile is cached in
memory and on disk.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Sequence

import torch

OPTIONS = ("target", "cost_model", "precision", "threads", "check", "cache")


@dataclasses.dataclass
class Stats:
    """What the backend did in this process: graphs received, compiles run (a disk-cache
    hit is not a compile), cache hits, graphs or shapes that fell back to eager."""

    graphs: int = 0
    compiles: int = 0
    cache_hits: int = 0
    fallbacks: int = 0

    def reset(self) -> None:
        self.graphs = self.compiles = self.cache_hits = self.fallbacks = 0


stats = Stats()
_lock = threading.Lock()


class BackendOptionError(ValueError):
    """An option `torch.compile(..., backend="tilecraft", options=...)` does not take."""


def tilecraft_backend(gm: torch.fx.GraphModule, example_inputs: Sequence, options: dict | None = None) -> Callable:
    """The dynamo backend: returns a callable that runs `gm` compiled by Tilecraft."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BackendOptionError(f"tilecraft backend: unknown option {unknown[0]!r} (options: {', '.join(OPTIONS)})")
    threads = options.get("threads", 1)
    from tilecraft import driver  # (the compile that follows imports it anyway)

    try:
        driver.check_threads(threads)
    except driver.DriverError:
        raise BackendOptionError(
            f"tilecraft backend: threads={threads!r}: a whole number from 1 to {driver.MAX_THREADS}"
        ) from None
    with _lock:
        stats.graphs += 1
    return GraphRunner(gm, list(example_inputs), options)


def _is_weight(node: torch.fx.Node, value) -> bool:
    """A graph input that is a module's parameter or buffer (dynamo names them
    `L_self_modules_..._parameters_weight_`, `..._buffers_...`)."""
    if isinstance(value, torch.nn.Parameter):
        return True
    name = node.target if isinstance(node.target, str) else node.name
    return isinstance(value, torch.Tensor) and ("_parameters_" in name or "_buffers_" in name)


class _Bound(torch.nn.Module):
    """`gm` with its weight inputs held as buffers; forward takes the other inputs."""

    def __init__(self, gm: torch.fx.GraphModule, weights: dict[int, torch.Tensor], args: Sequence):
        super().__init__()
        self.gm = gm
        self.slots: list[tuple[str, object]] = []
        n_tensors = 0
        for i, a in enumerate(args):
            if i in weights:
                name = f"w{i}"
                self.register_buffer(name, weights[i].detach(), persistent=False)
                self.slots.append(("weight", name))
            elif isinstance(a, torch.Tensor):
                self.slots.append(("arg", n_tensors))
                n_tensors += 1
            else:  # a size dynamo passes as a number: this compile is for its value
                self.slots.append(("const", a))

    def forward(self, *args):
        full = [
            getattr(self, x)
            if k == "weight"
            else args[x]
            if k == "arg"
            else args[x[0]].shape[x[1]]
            if k == "size"
            else x
            for k, x in self.slots
        ]
        return self.gm(*full)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class GraphRunner:
    """One dynamo graph: compiled per input shape at first use, eager where it cannot be."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list, options: dict):
        self.gm = gm
        self.check = bool(options.pop("check", False))
        self.cache = bool(options.pop("cache", True))
        self.options = options
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.weights = {
            i: v for i, (n, v) in enumerate(zip(placeholders, example_inputs)) if _is_weight(n, v) and _concrete(v)
        }
        self.n_inputs = len(example_inputs)
        self.compiled: dict[tuple, Callable] = {}
        self.lock = threading.Lock()
        self.state: tuple | None = None
        self.warned_grad = False
        from tilecraft import shape_buckets

        self.dynamic = shape_buckets.dynamic_dims(gm)  # (symbol, [(input, dim)]) or None
        self.symbolic = None  # (exported program, its symbol), built at the first bucketed call

    def _weights_state(self, args) -> tuple:
        return tuple((id(args[i]), args[i]._version) for i in self.weights)

    def __call__(self, *args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            if not self.warned_grad:  # compiled code has no backward: eager keeps autograd working
                self.warned_grad = True
                warnings.warn(
                    "tilecraft: gradients are needed: this graph runs eagerly (forward-only code)", stacklevel=2
                )
            return self.gm(*args)
        state = self._weights_state(args)
        if state != self.state:  # weights replaced or changed in place: their folded forms are stale
            with self.lock:
                self.compiled.clear()
                self.symbolic = None  # (it holds the weights too)
                self.state = state
        dynamic = self.dynamic
        if dynamic is not None:
            out = self._bucketed(args, dynamic)
            if out is not NotImplemented:
                return out
        others = [a for i, a in enumerate(args) if i not in self.weights]
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("v", a) for a in others)
        fn = self.compiled.get(key)
        if fn is None:
            with self.lock:
                fn = self.compiled.get(key) or self._compile(args)
                self.compiled[key] = fn
        return fn(*args) if fn is self.gm else fn(*[a for a in others if isinstance(a, torch.Tensor)])

    def _bucketed(self, args, dynamic):
        """Run a dynamic graph through the compile of its size's bucket (`shape_buckets`);
        NotImplemented when it cannot be bucketed (then compiled per exact shape)."""
        from torch.utils import _pytree

        from tilecraft import shape_buckets

        _, dims = dynamic
        n = args[dims[0][0]].shape[dims[0][1]]
        size = shape_buckets.bucket(n)
        key = ("bucket", size)
        fn = self.compiled.get(key)
        if fn is None:
            with self.lock:
                fn = self.compiled.get(key)
                if fn is None:
                    try:
                        fn = self._compile_bucket(args, size, dims)
                    except shape_buckets.Unbucketable:
                        fn = None
                    except Exception as exc:  # a bucket that fails compiles per exact shape instead
                        warnings.warn(f"tilecraft: no shape buckets for this graph: {_first_line(exc)}", stacklevel=3)
                        fn = None
                    if fn is None:
                        self.dynamic = None
                        return NotImplemented
                    self.compiled[key] = fn
        padded, out_dims = self._pad(args, size, dims), fn.out_dims
        out = fn(*padded, torch.tensor(n))
        leaves, spec = _pytree.tree_flatten(out)
        for k, ds in enumerate(out_dims):
            if k < len(leaves) and isinstance(leaves[k], torch.Tensor) and ds:
                t = leaves[k]
                for d in ds:
                    t = t.narrow(d, 0, n)
                leaves[k] = t.contiguous()
        return _pytree.tree_unflatten(leaves, spec)

    def _pad(self, args, size: int, dims) -> list:
        """The graph's tensor inputs other than weights, each padded with zeros to `size`
        along its dynamic dimension (`dims`: (input, dim) pairs)."""
        padded = []
        for i, a in enumerate(args):
            if i in self.weights or not isinstance(a, torch.Tensor):
                continue
            for j, d in dims:
                if j == i and a.shape[d] < size:
                    shape = list(a.shape)
                    shape[d] = size - a.shape[d]
                    a = torch.cat([a, a.new_zeros(shape)], d)
            padded.append(a)
        return padded

    def _compile_bucket(self, args, size: int, dims) -> Callable:
        from tilecraft import frontend, shape_buckets

        if self.symbolic is None:
            self.symbolic = self._export_symbolic(args, dims)
        prog, sym = self.symbolic
        example = self._pad(args, size, dims)
        masked = shape_buckets.Masked(prog, sym).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                masked(*example, torch.tensor(1))  # every op masks or is refused before a compile
            imported = frontend.import_module(masked, (*example, torch.tensor(1)), spec="torch.compile graph (bucket)")
            fn = self._compile_imported(imported)
        out_dims = shape_buckets.output_padded_dims(prog, sym)

        def call(*a):
            return fn(*a)

        call.out_dims = out_dims
        return call

    def _export_symbolic(self, args, dims):
        """The graph exported once with its dynamic size symbolic (weights bound, sizes
        dynamo passes as numbers read off the tensors): (program, its symbol)."""
        from torch.export import Dim

        bound = _Bound(self.gm, {i: args[i] for i in self.weights}, args).eval()
        tensor_pos = {}  # graph input index -> position among the tensor arguments
        for i, a in enumerate(args):
            if i not in self.weights and isinstance(a, torch.Tensor):
                tensor_pos[i] = len(tensor_pos)
        i0, d0 = dims[0]
        for k, (kind, _x) in enumerate(bound.slots):
            if kind == "const":  # the dynamic size itself
                bound.slots[k] = ("size", (tensor_pos[i0], d0))
        example = self._pad(args, max(2, args[i0].shape[d0]), dims)
        size = Dim("n", min=1, max=1 << 16)
        spec = [dict() for _ in example]
        for i, d in dims:
            spec[tensor_pos[i]][d] = size
        from torch_mlir.extras.fx_decomp_util import get_decomposition_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.export.export(bound, tuple(example), dynamic_shapes=(tuple(spec),), strict=False)
            prog = prog.run_decompositions(get_decomposition_table())
        sym = None
        for node in prog.graph.nodes:
            val = node.meta.get("val")
            if node.op == "placeholder" and isinstance(val, torch.Tensor):
                for s_ in val.shape:
                    if isinstance(s_, torch.SymInt):
                        sym = str(s_)
        if sym is None:
            from tilecraft.shape_buckets import Unbucketable

            raise Unbucketable("the exported graph has no symbolic size")
        return prog, sym

    def _compile_imported(self, imported) -> Callable:
        """The pipeline's function for an imported graph (through the disk cache), counted."""
        from tilecraft import driver

        fn, hit = driver.compile_for_call(imported, cache=self.cache, **self.options)
        with _lock:
            if hit:
                stats.cache_hits += 1
            else:
                stats.compiles += 1
        return fn

    def _compile(self, args) -> Callable:
        from tilecraft import driver, frontend

        bound = _Bound(self.gm, {i: args[i] for i in self.weights}, args).eval()
        user = [a for i, a in enumerate(args) if i not in self.weights and isinstance(a, torch.Tensor)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imported = frontend.import_module(bound, tuple(user), spec="torch.compile graph")
                fn = self._compile_imported(imported)
        except Exception as exc:  # never an exception in the user's forward: eager, and say why
            return self._fallback(_first_line(exc))
        if self.check:
            with torch.no_grad():
                ref = self.gm(*args)
            got = fn(*user)
            if not driver.compare(got, ref).ok:
                return self._fallback("the compiled graph does not match eager")
        return fn

    def _fallback(self, why: str) -> Callable:
        with _lock:
            stats.fallbacks += 1
        warnings.warn(f"tilecraft: this graph runs eagerly: {why}", stacklevel=3)
        return self.gm


def _concrete(v) -> bool:
    return isinstance(v, torch.Tensor) and not isinstance(v, torch._subclasses.FakeTensor)
