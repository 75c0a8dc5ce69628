"""`torch.compile(model, backend="tilecraft")`: each graph TorchDynamo captures, compiled by
the same pipeline as the CLI.

Registered through the `torch_dynamo_backends` entry point (pyproject), so the backend
name works without importing Tilecraft. Options (`torch.compile(..., options={...})`):
`target`, `cost_model`, `precision` (as `compile_model` takes them), `check` (compare the
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
marks dynamic (after a recompile on a new shape, or `mark_dynamic`) is compiled per
concrete shape it is called with, each compile cached in memory and on disk.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Sequence

import torch

OPTIONS = ("target", "cost_model", "precision", "check", "cache")


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
        full = [getattr(self, x) if k == "weight" else args[x] if k == "arg" else x for k, x in self.slots]
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
                self.state = state
        others = [a for i, a in enumerate(args) if i not in self.weights]
        key = tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else ("v", a) for a in others)
        fn = self.compiled.get(key)
        if fn is None:
            with self.lock:
                fn = self.compiled.get(key) or self._compile(args)
                self.compiled[key] = fn
        return fn(*args) if fn is self.gm else fn(*[a for a in others if isinstance(a, torch.Tensor)])

    def _compile(self, args) -> Callable:
        from tilecraft import driver, frontend

        bound = _Bound(self.gm, {i: args[i] for i in self.weights}, args).eval()
        user = [a for i, a in enumerate(args) if i not in self.weights and isinstance(a, torch.Tensor)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imported = frontend.import_module(bound, tuple(user), spec="torch.compile graph")
                fn, hit = driver.compile_for_call(imported, cache=self.cache, **self.options)
        except Exception as exc:  # never an exception in the user's forward: eager, and say why
            return self._fallback(_first_line(exc))
        with _lock:
            if hit:
                stats.cache_hits += 1
            else:
                stats.compiles += 1
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
