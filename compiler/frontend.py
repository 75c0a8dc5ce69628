"""Frontend: a model spec → a linalg-on-tensors MLIR module plus what is needed to call it.

First stage of the flow. A model spec is a zoo name (`resnet18`), `path/to/file.py:factory`
(the factory returns `(module, example_inputs)`), or a `.mlir` file in linalg-on-tensors.

Weights are *lifted to function arguments*: the module is exported through
`torch.func.functional_call` with every parameter and buffer as a leading argument, so the
IR text stays small (no `dense_resource` blobs) and IR dumps stay readable. Ops that read
only weights (the transpose of a linear layer's weight, batch-norm scale and shift) are
evaluated once at compile time (`fold_weight_only`) and their results take the weights'
place. The runtime binds these leading arguments once (`Imported.params`) and callers
pass only the model inputs.

The torch → linalg lowering runs here with diagnostics captured, so an op that cannot be
lowered is reported in one line with its aten name and the model's Python source line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import linecache
import os
import re
import sys
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch_mlir import ir, passmanager

from tilecraft import batchnorm, complex_pairs, gcpause
from tilecraft.backends.cpu.runtime import Signature
from tilecraft.dialects import tc

FUNC_NAME = "forward"

TORCH_BACKEND_PIPELINE = (
    "builtin.module(func.func(torch-match-quantized-custom-ops),"
    "torchdynamo-export-to-torch-backend-pipeline{ extra-library=})"
)
LINALG_PIPELINE = "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=true})"


class FrontendError(ValueError):
    """The model could not be loaded, exported or lowered to linalg."""


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """What eager returns, in terms of the compiled function's results. The function
    returns each distinct tensor the model computes once (a tensor returned twice, or
    both returned and written into an input, is one result); `items` says, per leaf of
    eager's output, where it comes from: ("result", k), ("input", i) — the caller's own
    tensor, as eager returns it — or ("const", value), a Python value or a weight;
    `mutations` lists (input i, result k): eager modified input i in place, so the
    result is copied into the caller's tensor; `spec` rebuilds eager's structure."""

    items: tuple
    mutations: tuple[tuple[int, int], ...]
    spec: object  # torch.utils._pytree.TreeSpec
    n_results: int
    unsigned_inputs: tuple[int, ...] = ()  # uint8 inputs: the IR's i8 is signless, its ops unsigned
    unsigned_results: tuple[int, ...] = ()  # uint8 results
    complex_inputs: tuple[int, ...] = ()  # complex inputs: the compiled code reads (re, im) pairs
    complex_results: tuple[int, ...] = ()  # complex results, returned as (re, im) pairs

    def apply(self, results, inputs):
        from torch.utils import _pytree

        results = [results] if self.n_results == 1 else list(results)
        for k in self.unsigned_results:
            results[k] = results[k].view(torch.uint8) if isinstance(results[k], torch.Tensor) else results[k].view("u1")
        for k in self.complex_results:
            r = results[k]
            results[k] = (
                torch.view_as_complex(r) if isinstance(r, torch.Tensor) else r.view(_COMPLEX_NP[r.dtype])[..., 0]
            )
        for i, k in self.mutations:
            dst = inputs[i]
            if isinstance(dst, torch.Tensor):
                dst.copy_(results[k])
            else:  # a numpy array
                import numpy as np

                np.copyto(dst, np.asarray(results[k]))
        leaves = []
        for kind, value in self.items:
            leaves.append(results[value] if kind == "result" else inputs[value] if kind == "input" else value)
        return _pytree.tree_unflatten(leaves, self.spec)


_COMPLEX_NP = {np.dtype("float32"): np.complex64, np.dtype("float64"): np.complex128}


class EagerFunction:
    """A compiled function with eager's output semantics (`OutputPlan`); everything else
    (`signature`, `prepare`, `user_inputs`) is the compiled function's."""

    def __init__(self, fn, plan: OutputPlan):
        self.fn, self.plan = fn, plan
        # eager's output is the compiled function's own (one tensor, or a flat tuple of
        # them, none an input's in-place update, none reinterpreted): returned as it is
        self._direct = (
            not (plan.unsigned_inputs or plan.complex_inputs or plan.unsigned_results or plan.complex_results)
            and not plan.mutations
            and plan.items == tuple(("result", k) for k in range(plan.n_results))
            and _plain_spec(plan.spec, plan.n_results)
        )

    def _signless(self, inputs) -> list:
        """uint8 inputs as the int8 bytes the compiled code reads (others as they are)."""
        from tilecraft.backends.cpu.runtime import CallError

        out = list(inputs)
        for i in self.plan.unsigned_inputs:
            if i >= len(out):
                continue  # the compiled function reports the count
            t = out[i]
            dtype = getattr(t, "dtype", None)
            if dtype not in (torch.uint8, np.uint8):
                raise CallError(f"input {i}: expected a uint8 tensor, got {dtype}")
            out[i] = t.view(torch.int8) if isinstance(t, torch.Tensor) else t.view("i1")
        for i in self.plan.complex_inputs:
            if i >= len(out):
                continue
            t = out[i]
            if isinstance(t, torch.Tensor) and t.dtype.is_complex:
                out[i] = torch.view_as_real(t.resolve_conj())
            elif isinstance(t, np.ndarray) and np.iscomplexobj(t):
                out[i] = np.ascontiguousarray(t).view(t.real.dtype).reshape(*t.shape, 2)
            else:
                raise CallError(f"input {i}: expected a complex tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        return out

    def __call__(self, *inputs):
        if self._direct:
            return self.fn(*inputs)
        return self.plan.apply(self.fn(*self._signless(inputs)), inputs)

    def prepare(self, *inputs):
        return self.fn.prepare(*self._signless(inputs))

    def __getattr__(self, name):
        return getattr(self.fn, name)


def _plain_spec(spec, n: int) -> bool:
    """The pytree spec of one tensor (n = 1) or of a flat tuple of n tensors (n > 1)."""
    if n == 1:
        return spec.is_leaf()
    return spec.type is tuple and spec.num_children == n and all(c.is_leaf() for c in spec.children())


def plan_outputs(
    prog,
    graph: torch.fx.Graph,
    n_params: int,
    bound: list[torch.Tensor],
    spec: str,
    *,
    complex_inputs: tuple[int, ...] = (),
    complex_outputs: Sequence[bool] = (),
) -> OutputPlan:
    """Rewrite `graph`'s outputs to the distinct tensors it computes and say how eager's
    outputs are made from them (`OutputPlan`). `complex_inputs` (user input positions)
    and `complex_outputs` (per user output): complex tensors the graph holds as real
    pairs (`compiler/complex_pairs.py`)."""
    from torch.export.graph_signature import InputKind, OutputKind

    user_names = [s.arg.name for s in prog.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    position = {name: i - n_params for i, name in enumerate(user_names) if i >= n_params}
    bound_nodes = [n for n in graph.nodes if n.op == "placeholder" and n.name not in position]
    bound_value = dict(zip(bound_nodes, bound))
    out_node = next(n for n in graph.nodes if n.op == "output")
    flat = list(out_node.args[0])
    results: list[torch.fx.Node] = []
    index: dict[torch.fx.Node, int] = {}

    def result(node) -> int:
        if node not in index:
            index[node] = len(results)
            results.append(node)
        return index[node]

    items, mutations, mutated, complex_results = [], [], {}, set()
    n_user = 0
    for value, ospec in zip(flat, prog.graph_signature.output_specs):
        if ospec.kind == OutputKind.USER_INPUT_MUTATION and ospec.target in position:
            mutations.append((position[ospec.target], result(value)))
            mutated[value] = position[ospec.target]
            if position[ospec.target] in complex_inputs:
                complex_results.add(result(value))
            continue
        elif ospec.kind != OutputKind.USER_OUTPUT:
            continue  # a weight or buffer the model updates in place: its value is not kept
        cplx = n_user < len(complex_outputs) and complex_outputs[n_user]
        n_user += 1
        if not isinstance(value, torch.fx.Node):
            items.append(("const", value))
        elif value.op == "placeholder":
            if value.name in position:
                items.append(("input", position[value.name]))
            else:
                const = bound_value[value]
                items.append(("const", torch.view_as_complex(const) if cplx else const))
        elif value in mutated:
            items.append(("input", mutated[value]))
        elif isinstance(value.meta.get("val"), torch.Tensor):
            items.append(("result", result(value)))
            if cplx:
                complex_results.add(result(value))
        else:
            raise FrontendError(
                f"{spec}: the model returns a Python number computed from tensor data ({value.name}): "
                "return it as a tensor"
            )
    out_node.args = (tuple(results),)
    graph.eliminate_dead_code()

    def unsigned(node) -> bool:
        return getattr(node.meta.get("val"), "dtype", None) == torch.uint8

    user_nodes = sorted(
        (n for n in graph.nodes if n.op == "placeholder" and n.name in position), key=lambda n: position[n.name]
    )
    return OutputPlan(
        tuple(items),
        tuple(mutations),
        prog.call_spec.out_spec,
        len(results),
        unsigned_inputs=tuple(position[n.name] for n in user_nodes if unsigned(n)),
        unsigned_results=tuple(k for k, n in enumerate(results) if unsigned(n)),
        complex_inputs=tuple(complex_inputs),
        complex_results=tuple(sorted(complex_results)),
    )


@dataclasses.dataclass
class Imported:
    """A model in linalg-on-tensors form, with the weights its function expects first."""

    spec: str
    module: ir.Module
    params: list[torch.Tensor]  # bound leading arguments: weights, buffers, values folded from them
    inputs: tuple[torch.Tensor, ...]  # example inputs
    model: torch.nn.Module | None = None  # for the eager reference; None for .mlir input
    func_name: str = FUNC_NAME
    fx: torch.fx.GraphModule | None = None  # the exported graph the module came from (bound args first)
    outputs: OutputPlan | None = None  # how the function's results become eager's outputs (None: as they are)
    signature: Signature = dataclasses.field(init=False)  # of the linalg function, before lowering

    def __post_init__(self):
        self.signature = Signature.of_func(self.module, self.func_name)
        for op in self.module.body.operations:  # the entry function says how many leading args are bound
            op = op.operation
            if op.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == self.func_name:
                tc.set_bound_args(op, len(self.params))

    def eager_semantics(self, fn):
        """`fn` (the compiled function) returning what eager returns: outputs in eager's
        structure, Python constants and returned inputs as themselves, and in-place
        mutations of inputs applied to the caller's tensors."""
        return fn if self.outputs is None else EagerFunction(fn, self.outputs)

    def reference(self, *inputs: torch.Tensor):
        """Eager PyTorch output for `inputs` (the default: the example inputs)."""
        if self.model is None:
            raise FrontendError(f"{self.spec}: no PyTorch model to compare against (MLIR input)")
        with torch.no_grad():
            return self.model(*(inputs or self.inputs))


def load_model(spec: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Resolve a zoo name or `file.py:factory` to `(module in eval mode, example inputs)`."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, factory = spec.rsplit(":", 1)
        if not os.path.exists(path):
            raise FrontendError(f"model file not found: {path}")
        name = "tilecraft_user_model_" + re.sub(r"\W", "_", os.path.abspath(path))
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise FrontendError(f"{path}: cannot import: {type(exc).__name__}: {exc}") from exc
        if not hasattr(module, factory):
            raise FrontendError(f"{path}: no factory function {factory!r}")
        try:
            made = getattr(module, factory)()
        except Exception as exc:
            raise FrontendError(f"{spec}: the factory raised {type(exc).__name__}: {_first_line(exc)}") from None
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
            raise FrontendError(
                f"{spec}: the factory must return (torch.nn.Module, example inputs), got {type(made).__name__}"
            )
        model, inputs = made
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
        if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise FrontendError(f"{spec}: the factory's example inputs must be a tuple of tensors, got {inputs!r:.60}")
        return model.eval(), tuple(inputs)
    from tilecraft.corpus import zoo

    try:
        return zoo.get(spec)
    except KeyError as exc:
        raise FrontendError(exc.args[0] + "; or give path/to/file.py:factory or a .mlir file") from None


def import_spec(spec: str, *, context: ir.Context | None = None) -> Imported:
    """Load any model spec into linalg-on-tensors."""
    if spec.endswith(".mlir"):
        return import_mlir_file(spec, context=context)
    model, inputs = load_model(spec)
    return import_module(model, inputs, spec=spec, context=context)


def import_mlir_file(path: str, *, context: ir.Context | None = None) -> Imported:
    """A linalg-on-tensors `.mlir` file; its function's arguments are all user inputs."""
    if not os.path.exists(path):
        raise FrontendError(f"MLIR file not found: {path}")
    with open(path) as f:
        text = f.read()
    module = parse_mlir(text, context=context or new_context(), source=path)
    funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
    public = [f for f in funcs if "sym_visibility" not in f.attributes]
    if len(public) != 1:
        raise FrontendError(f"{path}: expected exactly one public func.func, found {len(public)}")
    name = ir.StringAttr(public[0].attributes["sym_name"]).value
    ftype = ir.FunctionType(ir.TypeAttr(public[0].attributes["function_type"]).value)
    for what, types in (("argument", ftype.inputs), ("result", ftype.results)):
        for i, t in enumerate(types):
            if isinstance(t.maybe_downcast(), ir.ShapedType) and not ir.ShapedType(t).has_static_shape:
                raise FrontendError(f"{path}: @{name} {what} {i} has a dynamic shape ({t}); give static shapes")
    imported = Imported(spec=path, module=module, params=[], inputs=(), func_name=name)
    imported.inputs = tuple(_random_input(s) for s in imported.signature.inputs)
    return imported


def new_context() -> ir.Context:
    from torch_mlir.dialects import torch as torch_d

    ctx = ir.Context()
    torch_d.register_dialect(ctx)
    return ctx


def parse_mlir(text: str, *, context: ir.Context, source: str = "<input>") -> ir.Module:
    try:
        return ir.Module.parse(text, context=context)
    except Exception as exc:
        detail = " ".join(str(exc).split()).replace("Unable to parse module assembly: ", "")
        raise FrontendError(f"malformed MLIR in {source}: {detail}") from None


def _random_input(spec) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if spec.torch_dtype.is_floating_point:
        return torch.randn(spec.shape, generator=g, dtype=torch.float32).to(spec.torch_dtype)
    if spec.torch_dtype == torch.bool:
        return torch.randint(0, 2, spec.shape, generator=g).bool()
    return torch.randint(0, 16, spec.shape, generator=g, dtype=spec.torch_dtype)


def drop_dead_results(module: ir.Module) -> int:
    """Drop the unused results of multi-result `linalg.generic`s whose computation feeds
    nothing else: torch-mlir takes a row maximum (softmax, `amax`) with `max.dim`, which
    also computes arg-max indices — an i64 reduction beside the f32 one that nobody reads,
    and that keeps the reduction from vectorizing. Returns how many results were dropped."""
    from torch_mlir.dialects import linalg

    dropped = 0
    for op in _generics(module):
        dead = [i for i, r in enumerate(op.results) if not list(r.uses)]
        if not dead or len(dead) == len(op.results):
            continue
        body = op.regions[0].blocks[0]
        n_in = len(op.operands) - len(op.results)
        yield_op = list(body.operations)[-1]
        keep = [i for i in range(len(op.results)) if i not in dead]
        removable = _private_chain(body, yield_op, [yield_op.operands[i] for i in dead], [n_in + i for i in dead])
        if removable is None:
            continue
        maps = list(ir.ArrayAttr(op.attributes["indexing_maps"]))
        with ir.InsertionPoint(op), op.location:
            new = linalg.GenericOp(
                [op.results[i].type for i in keep],
                list(op.operands)[:n_in],
                [op.operands[n_in + i] for i in keep],
                ir.ArrayAttr.get(maps[:n_in] + [maps[n_in + i] for i in keep]),
                op.attributes["iterator_types"],
            )
            arg_types = [a.type for a in body.arguments]
            kept_args = list(range(n_in)) + [n_in + i for i in keep]
            new_body = new.regions[0].blocks.append(*[arg_types[a] for a in kept_args])
        for old_i, new_arg in zip(kept_args, new_body.arguments):
            body.arguments[old_i].replace_all_uses_with(new_arg)
        values = [yield_op.operands[i] for i in keep]
        for child in list(body.operations)[:-1]:
            if not any(child == r for r in removable):
                new_body.append(child.operation)
        with ir.InsertionPoint(new_body), op.location:
            linalg.YieldOp(values)
        for i, r in zip(keep, new.results):
            op.results[i].replace_all_uses_with(r)
        inits = [op.operands[n_in + i].owner for i in dead]
        op.erase()
        for init in inits:
            _erase_if_unused(init)
        dropped += len(dead)
    return dropped


def bool_weights_as_bytes(module: ir.Module, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Bound i1 tensors (a causal mask, folded at compile time) become i8 bytes, truncated to
    i1 inside each `linalg.generic` that reads them: an i1 memref holds a byte per element,
    but a vector load of i1 reads packed bits, so an op reading i1 from memory stays scalar
    and no fusion group takes it. Only arguments every use of which is a generic's input.
    Returns the bound values (the widened ones as int8)."""
    from torch_mlir.dialects import arith

    fn = next(op.operation for op in module.body.operations if op.operation.name == "func.func")
    block = fn.regions[0].blocks[0]
    params = list(params)
    i8 = ir.IntegerType.get_signless(8)
    widened = False
    for i, value in enumerate(params):
        arg = block.arguments[i]
        t = ir.RankedTensorType(arg.type)
        if str(t.element_type) != "i1":
            continue
        uses = [(u.owner, u.operand_number) for u in arg.uses]
        if not uses or any(o.name != "linalg.generic" or n >= len(o.operands) - len(o.results) for o, n in uses):
            continue
        arg.set_type(ir.RankedTensorType.get(t.shape, i8))
        for owner, n in uses:
            body = owner.regions[0].blocks[0]
            byte = body.arguments[n]
            users = [(u.owner, u.operand_number) for u in byte.uses]
            byte.set_type(i8)
            with ir.InsertionPoint.at_block_begin(body), owner.location:
                bit = arith.trunci(ir.IntegerType.get_signless(1), byte)
            for user, m in users:
                user.operands[m] = bit
        params[i] = value.to(torch.int8)
        widened = True
    if not widened:
        return params
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    inputs = [a.type for a in block.arguments]
    fn.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(inputs, ftype.results))
    return params


def _erase_if_unused(op) -> None:
    """Erase a dead `linalg.fill` / `tensor.empty` (a dropped result's init), then its dead producers."""
    op = getattr(op, "operation", op)
    if isinstance(op, ir.Block) or op.name not in ("linalg.fill", "tensor.empty", "arith.constant"):
        return
    if any(list(r.uses) for r in op.results):
        return
    producers = [v.owner for v in op.operands]
    op.erase()
    for p in producers:
        _erase_if_unused(p)


def _generics(module: ir.Module) -> list[ir.Operation]:
    """The module's multi-result `linalg.generic`s."""
    from tilecraft.dialects.irutil import walk_ops

    out: list[ir.Operation] = []
    walk_ops(
        module.operation, lambda op: out.append(op) if op.name == "linalg.generic" and len(op.results) > 1 else None
    )
    return out


def _private_chain(body, yield_op, roots: list, dead_args: list[int]) -> list | None:
    """The body ops that compute only `roots` (the dead results' yielded values), or None
    if any of them (or the dead results' output arguments) feed something else."""

    def producer(v):
        owner = v.owner
        return None if isinstance(owner, ir.Block) else getattr(owner, "operation", owner)

    chain: list = []
    frontier = [p for p in map(producer, roots) if p is not None]
    while frontier:
        op = frontier.pop()
        if any(op == c for c in chain):
            continue
        chain.append(op)
        frontier += [p for p in map(producer, op.operands) if p is not None]
    allowed = [*chain, yield_op]
    for op in chain:
        for r in op.results:
            if any(not any(u.owner == a for a in allowed) for u in r.uses):
                return None
    for a in dead_args:
        if any(not any(u.owner == c for c in chain) for u in body.arguments[a].uses):
            return None
    return chain


class _Lifted(torch.nn.Module):
    """`model` with its weights as leading forward arguments."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        n = len(self.names)
        return torch.func.functional_call(self.model, dict(zip(self.names, args[:n])), args[n:])


_EXPORT_LOCK = threading.Lock()


def export_decomposed(module: torch.nn.Module, args: tuple, table: dict):
    """`torch.export.export(module, args, strict=False).run_decompositions(table)` in one
    trace instead of two, and without export's own tracer where it can: AOTAutograd's
    inference export (`_aot_export`), which `torch.export` itself calls under a
    torch-function mode that intercepts every tensor method a decomposition calls
    (MobileNet-V2: 48,000 calls; its frontend 1.16 -> 0.71 s). Where that path refuses the
    model (a data-dependent op, an output it cannot take), torch.export's own tracer with
    `table` applied while tracing (`_export_in_one_trace`), which says what is wrong."""
    try:
        prog = _aot_export(module, args, table)
    except Exception:
        prog = None
    return prog if prog is not None else _export_in_one_trace(module, args, table)


def _aot_export(module: torch.nn.Module, args: tuple, table: dict):
    """The graph `torch.export` makes (the same nodes for every zoo model), traced by
    AOTAutograd's `aot_export_module` as an inference graph and given the signature export
    gives it; None where it would not be the same program: an output that is not a tensor,
    a tensor of a Python scalar kept in the graph."""
    from torch._functorch.aot_autograd import aot_export_module
    from torch.export import _trace, exported_program
    from torch.export import graph_signature as gs
    from torch.utils import _pytree

    composite, table = exported_program._split_decomp_table_to_cia_and_python_decomp(dict(table))
    spec: dict = {}

    class _Flat(torch.nn.Module):  # (aot_export_module takes a tuple of tensors back)
        def __init__(self):
            super().__init__()
            if not isinstance(module, _Lifted):  # (a `_Lifted`'s weights are its arguments: not lifted again)
                self.inner = module  # (its parameters and buffers lifted as `inner.*`)

        def forward(self, *a):
            leaves, spec["out"] = _pytree.tree_flatten(module(*a))
            if not all(isinstance(x, torch.Tensor) for x in leaves):
                raise _NotTensors()
            return tuple(leaves)

    flat = _Flat()
    with (
        _EXPORT_LOCK,
        exported_program._override_composite_implicit_decomp(composite),
        _trace._ignore_backend_decomps(),
        torch.no_grad(),
    ):
        gm, sig = aot_export_module(flat, args, trace_joint=False, decompositions=table)
    if isinstance(module, _Lifted):  # a weight updated in place: torch.export's tracer says what it does
        weights = {n.name for n in list(gm.graph.nodes)[: len(module.names)] if n.op == "placeholder"}
        if weights & set(sig.user_inputs_to_mutate.values()):
            return None
    _lift_constants(gm, constants := {}, after={*sig.inputs_to_parameters, *sig.inputs_to_buffers})
    params = {f"inner.{k}": k for k, _ in module.named_parameters()}
    buffers = {f"inner.{k}": k for k, _ in module.named_buffers()}
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    persistent = set(module.state_dict(keep_vars=True))
    inputs, state_dict = [], {}
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        arg = gs.TensorArgument(name=node.name)
        if node.name in constants:
            inputs.append(gs.InputSpec(gs.InputKind.CONSTANT_TENSOR, arg, node.name))
        elif node.name in sig.inputs_to_parameters:
            target = params[sig.inputs_to_parameters[node.name]]
            inputs.append(gs.InputSpec(gs.InputKind.PARAMETER, arg, target))
            state_dict[target] = state[target]
        elif node.name in sig.inputs_to_buffers:
            target = buffers[sig.inputs_to_buffers[node.name]]
            kept = target in persistent
            inputs.append(gs.InputSpec(gs.InputKind.BUFFER, arg, target, persistent=kept))
            (state_dict if kept else constants)[target] = state[target]
        else:
            inputs.append(gs.InputSpec(gs.InputKind.USER_INPUT, arg, None))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = []
    n_mutations = len(sig.buffers_to_mutate) + len(sig.parameters_to_mutate) + len(sig.user_inputs_to_mutate)
    for i, value in enumerate(out_node.args[0]):  # (the updated inputs first, then the outputs)
        arg, name = gs.TensorArgument(name=value.name), value.name
        if i >= n_mutations:  # (an output may be an updated input's node too: `a.add_(b)` returns a)
            kind, target = gs.OutputKind.USER_OUTPUT, None
        elif name in sig.buffers_to_mutate:
            kind, target = gs.OutputKind.BUFFER_MUTATION, buffers[sig.buffers_to_mutate[name]]
        elif name in sig.parameters_to_mutate:
            kind, target = gs.OutputKind.PARAMETER_MUTATION, params[sig.parameters_to_mutate[name]]
        elif name in sig.user_inputs_to_mutate:
            kind, target = gs.OutputKind.USER_INPUT_MUTATION, sig.user_inputs_to_mutate[name]
        else:
            kind, target = gs.OutputKind.USER_OUTPUT, None
        outputs.append(gs.OutputSpec(kind, arg, target))
    in_spec = _pytree.tree_flatten((tuple(args), {}))[1]
    call = exported_program.ModuleCallSignature(inputs=[], outputs=[], in_spec=in_spec, out_spec=spec["out"])
    return exported_program.ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=gs.ExportGraphSignature(inputs, outputs),
        state_dict=state_dict,
        range_constraints={},
        module_call_graph=[exported_program.ModuleCallEntry(fqn="", signature=call)],
        constants=constants,
    )


def _lift_constants(gm: torch.fx.GraphModule, constants: dict, *, after: set[str]) -> None:
    """Tensors the graph reads as module attributes (a `torch.tensor(...)` in `forward`)
    become placeholders, as torch.export lifts them: after the parameters and buffers
    (`after`: their placeholders' names), before the user inputs. Their values go into
    `constants` under the placeholder's name. (The order matters to no reader: each
    placeholder's spec names it.)"""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    users = [n for n in placeholders if n.name not in after]
    for node in [n for n in gm.graph.nodes if n.op == "get_attr"]:
        value = getattr(gm, node.target)
        if not isinstance(value, torch.Tensor):
            raise _NotTensors()
        if users:
            where = gm.graph.inserting_before(users[0])
        elif placeholders:
            where = gm.graph.inserting_after(placeholders[-1])
        else:
            where = gm.graph.inserting_before(next(iter(gm.graph.nodes)))
        with where:
            ph = gm.graph.placeholder(f"c_{node.target}")
        placeholders.append(ph)
        ph.meta = dict(node.meta)
        node.replace_all_uses_with(ph)
        gm.graph.erase_node(node)
        constants[ph.name] = value
    if constants:
        gm.recompile()


class _NotTensors(Exception):
    """A model output that is not a tensor (torch.export's tracer takes those)."""


def _export_in_one_trace(module: torch.nn.Module, args: tuple, table: dict):
    """`torch.export.export(module, args, strict=False).run_decompositions(table)` in one
    trace instead of two: non-strict export straight to ATen IR (`pre_dispatch=False`)
    with `table` applied while tracing. The same graph (every zoo model: the same nodes);
    MobileNet-V2's frontend 2.5 -> 1.8 s. torch's `_export` hard-wires its ATen tracer
    without a table, so the tracer is wrapped for the call (torch is pinned exactly)."""
    from torch.export import _trace, exported_program

    # as `run_decompositions` splits it: composite ops the table names decompose by its
    # entry, the other preservable ones stay whole (`upsample_nearest2d.vec`)
    composite, table = exported_program._split_decomp_table_to_cia_and_python_decomp(dict(table))
    trace = _trace._export_to_aten_ir

    def with_table(*a, **k):
        k["decomp_table"] = table
        return trace(*a, **k)

    with _EXPORT_LOCK, exported_program._override_composite_implicit_decomp(composite):
        _trace._export_to_aten_ir = with_table
        try:
            return _trace._export(module, args, strict=False, pre_dispatch=False)
        finally:
            _trace._export_to_aten_ir = trace


# dtypes torch-mlir's importer maps to NumPy through ml_dtypes (`fx_importer`, at import)
_ML_DTYPES = {
    torch.bfloat16: "bfloat16",
    torch.float8_e5m2: "float8_e5m2",
    torch.float8_e4m3fn: "float8_e4m3fn",
    torch.float8_e5m2fnuz: "float8_e5m2fnuz",
    torch.float8_e4m3fnuz: "float8_e4m3fnuz",
    torch.float8_e8m0fnu: "float8_e8m0fnu",
}
_FX_IMPORTER_LOCK = threading.Lock()


class _LazyMlDtypes:
    """Stands for the ml_dtypes module until one of its types is asked for."""

    def __getattr__(self, name: str):
        import ml_dtypes

        return getattr(ml_dtypes, name)


class _LazyNpyTypes(dict):
    """torch dtype → NumPy type, the ml_dtypes ones resolved (imported) on first use."""

    def __missing__(self, dtype):
        if dtype not in _ML_DTYPES:
            raise KeyError(dtype)
        import ml_dtypes

        self[dtype] = value = getattr(ml_dtypes, _ML_DTYPES[dtype])
        return value

    def get(self, dtype, default=None):
        try:
            return self[dtype]
        except KeyError:
            return default

    def __contains__(self, dtype) -> bool:
        return dict.__contains__(self, dtype) or dtype in _ML_DTYPES


def _fx_importer():
    """torch-mlir's `fx_importer` module, imported without importing ml_dtypes.

    The importer imports ml_dtypes (0.55 s here: its C extension registers a dozen NumPy
    dtypes) only to turn bf16 and fp8 tensor literals into NumPy arrays; a process's first
    compile paid it every time. Imported here with ml_dtypes hidden (where nothing loaded it
    yet), then given a stand-in for the module and a dtype table that import ml_dtypes the
    first time a bf16 or fp8 literal needs it, so the importer works as its own import
    would have made it, for us and anyone else in the process."""
    with _FX_IMPORTER_LOCK:
        mod = sys.modules.get("torch_mlir.extras.fx_importer")
        if mod is not None:
            return mod
        hide = "ml_dtypes" not in sys.modules
        if hide:
            sys.modules["ml_dtypes"] = None  # `import ml_dtypes` there: ModuleNotFoundError
        try:
            import torch_mlir.extras.fx_importer as mod
        finally:
            if hide and sys.modules.get("ml_dtypes", False) is None:
                del sys.modules["ml_dtypes"]
        if mod.ml_dtypes is None and importlib.util.find_spec("ml_dtypes") is not None:
            mod.TORCH_DTYPE_TO_NPY_TYPE = _LazyNpyTypes(mod.TORCH_DTYPE_TO_NPY_TYPE)
            mod.ml_dtypes = _LazyMlDtypes()
        return mod


@gcpause.paused()
def import_module(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    spec: str = "<module>",
    context: ir.Context | None = None,
) -> Imported:
    """Export a module (weights lifted to arguments) and lower it to linalg-on-tensors."""
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    model = model.eval()
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    names = list(state)
    params = [t.detach() for t in state.values()]
    ctx = context or new_context()
    decompositions = get_decomposition_table()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                prog = export_decomposed(_Lifted(model, names), (*params, *inputs), batchnorm.table(decompositions))
            except Exception as exc:
                if "DataDependent" not in type(exc).__name__:
                    raise
                # `int(t)`, `.item()` in Python control flow: strict export (TorchDynamo) traces
                # through many of them, specializing on the example input's value
                prog = torch.export.export(_Lifted(model, names), (*params, *inputs), strict=True)
                prog = prog.run_decompositions(batchnorm.table(decompositions))
    except Exception as exc:
        raise FrontendError(f"{spec}: torch.export failed: {type(exc).__name__}: {_first_line(exc)}") from None
    _refuse_data_dependent_shapes(prog, spec)
    n_params = len(params)
    real_inputs, complex_inputs, complex_outputs = inputs, (), ()
    if complex_pairs.has_complex(prog):  # no complex arithmetic below: (re, im) pairs
        prog, real, flags, complex_outputs = _as_real_pairs(prog, [*params, *inputs], spec)
        params, real_inputs = real[:n_params], tuple(real[n_params:])
        complex_inputs = tuple(i for i, c in enumerate(flags[n_params:]) if c)
    widen_narrow_arithmetic(prog.graph)
    batchnorm.fold_batch_norms(prog.graph)  # into the convolution before, or a scale and shift
    try:
        graph, params = fold_weight_only(prog, n_params=n_params, params=params, inputs=real_inputs)
        importer = _fx_importer().FxImporter(context=ctx)
        outputs = plan_outputs(
            prog, graph, n_params, params, spec, complex_inputs=complex_inputs, complex_outputs=complex_outputs
        )
        importer.import_stateless_graph(graph, func_name=FUNC_NAME)
        fx = torch.fx.GraphModule(prog.graph_module, graph)
    except FrontendError:
        raise
    except Exception as exc:
        raise FrontendError(f"{spec}: FX import failed: {type(exc).__name__}: {_first_line(exc)}") from None
    module = importer.module
    for pipeline in (TORCH_BACKEND_PIPELINE, LINALG_PIPELINE):
        try:
            passmanager.PassManager.parse(pipeline, context=ctx).run(module.operation)
        except ir.MLIRError as exc:
            diags = [f"{d.location}\t{d.message}" for d in exc.error_diagnostics]
            raise FrontendError(f"{spec}: {_explain_lowering_failure(diags, exc)}") from None
    with ctx, ir.Location.unknown():
        drop_dead_results(module)  # softmax's unused arg-max
        params = bool_weights_as_bytes(module, params)  # a folded causal mask: vectorizable
    return Imported(spec=spec, module=module, params=params, inputs=tuple(inputs), model=model, fx=fx, outputs=outputs)


def _as_real_pairs(prog, args: list[torch.Tensor], spec: str):
    """`complex_pairs.as_real_pairs`, its failures as one line naming the op."""
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new, real, flags, outs = complex_pairs.as_real_pairs(prog, args)
            return new.run_decompositions(get_decomposition_table()), real, flags, outs
    except complex_pairs.UnsupportedComplex as exc:
        frames = re.findall(r'File "([^"]+)", line (\d+)', exc.node.meta.get("stack_trace") or "")
        user = _model_frame(reversed(frames))
        raise FrontendError(
            f"{spec}: complex tensors: {exc.node.target} is not supported{f' at {user}' if user else ''}"
        ) from None
    except Exception as exc:
        raise FrontendError(
            f"{spec}: complex tensors as real pairs failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


_BYTE_DIVISIONS = (
    *("div.Tensor_mode", "div.Scalar_mode", "remainder.Tensor", "remainder.Scalar", "floor_divide.default"),
    *("sub.Tensor", "sub.Scalar", "rsub.Tensor", "rsub.Scalar", "mul.Tensor", "mul.Scalar"),
)


_LOW_PRECISION_REDUCTIONS = ("sum.dim_IntList", "sum.default", "mean.dim", "mean.default", "cumsum.default")


def widen_narrow_arithmetic(graph: torch.fx.Graph) -> int:
    """Ops computed wider than their dtype, as eager computes them, then cast back:
    - int8/uint8 division, remainder, subtraction and multiplication in int32 (the same
      values: a quotient or remainder of bytes fits a byte, a difference or product cast
      back wraps modulo 256 as eager's does). torch-mlir's lowering of the byte forms
      crashes the process (`b // 2` on int8, `b - 50` on uint8: segfaults in the torch
      backend pipeline). `abs` of a uint8 is the identity (the signless IR's is signed).
    - f16/bf16 sums, means and cumulative sums accumulated in f32 (eager's CPU kernels
      accumulate in f32; summed in bf16 a row of 8 was 0.5% off).
    Returns how many ops were rewritten."""
    aten = torch.ops.aten
    n = 0
    for node in list(graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor):
            continue
        if node.target == aten.abs.default and val.dtype == torch.uint8:  # a copy of b (a new tensor, as eager's)
            node.target = aten.clone.default
            n += 1
            continue
        name = getattr(node.target, "__name__", "")
        if name in _BYTE_DIVISIONS and val.dtype in (torch.int8, torch.uint8):
            n += _compute_wider(graph, node, (torch.int8, torch.uint8), torch.int32)
        elif name in _LOW_PRECISION_REDUCTIONS and val.dtype in (torch.float16, torch.bfloat16):
            n += _compute_wider(graph, node, (torch.float16, torch.bfloat16), torch.float32)
    return n


def _compute_wider(graph: torch.fx.Graph, node: torch.fx.Node, narrow: tuple, wide_dtype) -> int:
    """Rewrite `node` to read its `narrow` tensor operands cast to `wide_dtype` and cast
    its result back (node metadata kept, values as fake tensors)."""
    aten = torch.ops.aten
    val = node.meta["val"]
    fake = getattr(val, "fake_mode", None)
    if fake is None:
        return 0

    def meta(new, value):
        new.meta.update({k: v for k, v in node.meta.items() if k not in ("val", "tensor_meta")})
        new.meta["val"] = value
        return new

    kwargs = {k: v for k, v in node.kwargs.items() if k != "dtype"}
    with graph.inserting_before(node), fake:
        args = []
        for a in node.args:
            av = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
            if isinstance(av, torch.Tensor) and av.dtype in narrow:
                a = meta(graph.call_function(aten._to_copy.default, (a,), {"dtype": wide_dtype}), av.to(wide_dtype))
            args.append(a)
        vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in args]
        wide = meta(graph.call_function(node.target, tuple(args), kwargs), node.target(*vals, **kwargs))
        back = meta(graph.call_function(aten._to_copy.default, (wide,), {"dtype": val.dtype}), val)
    node.replace_all_uses_with(back)
    graph.erase_node(node)
    return 1


_NOT_FOLDED = ("rand", "empty", "dropout", "bernoulli")


def fold_weight_only(prog, *, n_params: int, params: list[torch.Tensor], inputs) -> tuple[torch.fx.Graph, list]:
    """Evaluate, once and at compile time, every op that reads only weights and constants
    (transposes of linear weights, batch-norm scale and shift, …); their values become the
    bound leading arguments in place of the raw weights they came from. Returns the
    rewritten graph (bound placeholders first, then the model inputs) and the bound values.
    """
    from torch.export.graph_signature import InputKind

    gm = prog.graph_module
    graph = gm.graph
    specs = prog.graph_signature.input_specs
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    values: dict[torch.fx.Node, torch.Tensor] = {}  # bound placeholder → tensor
    user_inputs: list[torch.fx.Node] = []
    n_user = 0
    for node, ispec in zip(placeholders, specs):
        if ispec.kind == InputKind.USER_INPUT:
            if n_user < n_params:
                values[node] = params[n_user]
            else:
                user_inputs.append(node)
            n_user += 1
        elif ispec.kind == InputKind.CONSTANT_TENSOR:
            values[node] = prog.constants[ispec.target]
        elif ispec.target in prog.state_dict:
            values[node] = prog.state_dict[ispec.target]
        else:  # a non-persistent buffer (position ids, rotary frequencies) is kept with the constants
            values[node] = prog.constants[ispec.target]
    const = set(values)
    for node in graph.nodes:
        if node.op != "call_function" or any(word in str(node.target) for word in _NOT_FOLDED):
            continue
        shaped = any(f"aten.{name}_like" in str(node.target) for name in ("full", "zeros", "ones"))
        if (shaped or all(i in const for i in node.all_input_nodes)) and not _scalar_constructor(node):
            const.add(node)  # (a `full_like` reads only its input's shape)
    frontier = [
        n for n in graph.nodes if n in const and n.op == "call_function" and any(u not in const for u in n.users)
    ]
    if frontier:
        interp = torch.fx.Interpreter(gm, garbage_collect_values=False)
        it = iter(inputs)
        args = [values[n] if n in values else next(it) for n in placeholders]
        with torch.no_grad():
            if not _run_folded(interp, placeholders, args, const):  # (a `full_like` of an activation, say)
                interp.run(*args)
        fake_mode = (
            next(  # (a model with no tensor input has no placeholder to take it from)
                (n.meta["val"].fake_mode for n in graph.nodes if hasattr(n.meta.get("val"), "fake_mode")), None
            )
            or torch._subclasses.FakeTensorMode()
        )
        anchor = user_inputs[0] if user_inputs else next(n for n in graph.nodes if n.op != "placeholder")
        for i, node in enumerate(frontier):
            value = interp.env[node]
            if not isinstance(value, torch.Tensor):
                continue
            value = value.detach().contiguous()
            with graph.inserting_before(anchor):
                ph = graph.placeholder(f"folded_{i}")
            ph.meta = dict(node.meta)
            ph.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)  # (a new weight: static)
            node.replace_all_uses_with(ph)
            values[ph] = value
        graph.eliminate_dead_code()
        for node in list(values):
            if node in placeholders and not node.users:
                graph.erase_node(node)
                del values[node]
    # Bound placeholders first (in graph order), then the model inputs.
    for node in user_inputs:
        anchor = next(n for n in graph.nodes if n.op != "placeholder")
        anchor.prepend(node)
    graph.lint()
    bound = [values[n] for n in graph.nodes if n.op == "placeholder" and n in values]
    return graph, bound


def _run_folded(interp: torch.fx.Interpreter, placeholders, args, const) -> bool:
    """Evaluate only the folded nodes (not the whole model, as `interp.run` would); False,
    with nothing evaluated, where one of them reads a value computed from the inputs."""
    folded = [n for n in interp.graph.nodes if n in const and n.op == "call_function"]
    ready = set(placeholders)
    for node in folded:
        if any(i not in ready for i in node.all_input_nodes):
            return False
        ready.add(node)
    interp.env = dict(zip(placeholders, args))
    for node in folded:
        interp.env[node] = interp.run_node(node)
    return True


def _scalar_constructor(node) -> bool:
    """A tensor made from nothing (a constructor) of one element: it stays a literal in the
    IR (a division by it becomes a product); larger ones are folded like weights (a causal
    mask built from `arange` and `ones` is evaluated once)."""
    val = node.meta.get("val")
    return not node.all_input_nodes and (not isinstance(val, torch.Tensor) or val.numel() <= 1)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def _refuse_data_dependent_shapes(prog, spec: str) -> None:
    """An op whose result's shape depends on tensor values (`nonzero`, `bincount`, a
    masked select) cannot be compiled for static shapes: one line naming it and the
    model's source line."""
    for node in prog.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and not all(isinstance(d, int) for d in val.shape):
            frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
            user = _model_frame(reversed(frames))  # a stack trace lists the innermost frame last
            raise FrontendError(
                f"{spec}: {node.target} has a result shape that depends on tensor values"
                f"{f' at {user}' if user else ''}: not supported (static shapes only)"
            )


def _model_frame(frames) -> str | None:
    """`path:line` of the first of `frames` ((path, line), innermost first) outside torch and us."""
    ours = os.path.dirname(os.path.abspath(__file__))
    for path, line in frames:
        if f"{os.sep}torch{os.sep}" not in path and not path.startswith(ours):
            return f"{path}:{line}"
    return None


def _where(loc: str) -> str:
    """The model's own frame of a (callsite) location: the first outside torch and us."""
    frames = re.findall(r'"([^"]+)":(\d+):\d+', loc)
    return _model_frame(frames) or (f"{frames[0][0]}:{frames[0][1]}" if frames else loc)


_OP_PATTERNS = (r'name = "torch\.(aten\.[\w.]+)"', r"'torch\.(aten\.[\w.]+)'", r"'(torch\.[\w.]+)'")


def _explain_lowering_failure(diags: list[str], exc: Exception) -> str:
    """One line: the aten op that could not be lowered and the model line that made it."""
    for d in diags:
        loc, _, message = d.partition("\t")
        for pattern in _OP_PATTERNS:
            m = re.search(pattern, message)
            if m:
                where = _where(loc)
                src = ""
                fm = re.match(r"(.+):(\d+)$", where)
                if fm:
                    src = linecache.getline(fm.group(1), int(fm.group(2))).strip()
                return f"unsupported op {m.group(1)} at {where}" + (f": {src}" if src else "")
    if diags:
        loc, _, message = diags[0].partition("\t")
        return f"lowering to linalg failed at {_where(loc)}: {message.splitlines()[0]}"
    return f"lowering to linalg failed: {_first_line(exc)}"
