"""GPU runtime: a compiled model as a sequence of kernel launches over device buffers.

On the backends floor; the end of the GPU backend. `host_plan` reads the host function of
a gpu-stage module (after outlining it holds only constants, allocations, views and
`gpu.launch_func`s) into a `HostPlan`: plain data, JSON-serializable, saved beside the
cubin. Every view is resolved statically to (buffer, element offset, sizes, strides) from
its memref type, so nothing is interpreted per call. The intermediate buffers are planned
once: their live ranges (first to last launch touching them) are packed into one arena,
first fit by decreasing size, so buffers whose lives do not overlap share memory.

`GpuFunction` loads the cubin with cuda-python (`cuModuleLoadData`), keeps the weights and
the arena on the device, and on each call checks the CUDA tensors it is given against the
signature, launches every kernel on torch's current stream (each memref argument expanded
as the NVVM lowering expects: allocated and aligned pointer, offset, sizes, strides) and
returns fresh output tensors. Without a GPU it refuses with a `CallError`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
from collections.abc import Sequence

import torch

from tilecraft.backends.cpu.runtime import CallError, Signature, TensorSpec

ALIGN = 256  # bytes: every planned buffer starts on a 256-byte boundary
_ELEM_BYTES = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1}
_VIEW_OPS = ("memref.subview", "memref.expand_shape", "memref.collapse_shape", "memref.cast", "memref.reinterpret_cast")


class HostPlanError(ValueError):
    """The host function holds something a launch sequence cannot express."""


@dataclasses.dataclass(frozen=True)
class View:
    """A memref argument: `buffer` (an argument's index, or n_args + an allocation's), and
    the strided view of it in elements."""

    buffer: int
    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class Scalar:
    value: float | int
    dtype: str  # i64 (an index), i32, f32, …


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[View | Scalar, ...]


@dataclasses.dataclass(frozen=True)
class HostPlan:
    n_args: int
    buffers: tuple[int, ...]  # bytes of each allocation
    launches: tuple[Launch, ...]
    results: tuple[View, ...]
    offsets: tuple[int, ...] = ()  # each allocation's byte offset in the arena
    arena_bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> HostPlan:
        d = json.loads(text)

        def arg(a: dict) -> View | Scalar:
            if "buffer" in a:
                return View(a["buffer"], a["offset"], tuple(a["sizes"]), tuple(a["strides"]), a["dtype"])
            return Scalar(a["value"], a["dtype"])

        launches = tuple(
            Launch(x["kernel"], tuple(x["grid"]), tuple(x["block"]), tuple(arg(a) for a in x["args"]))
            for x in d["launches"]
        )
        results = tuple(arg(a) for a in d["results"])
        return HostPlan(d["n_args"], tuple(d["buffers"]), launches, results, tuple(d["offsets"]), d["arena_bytes"])


def _element(t) -> str:
    return str(t.element_type)


def host_plan(module, func_name: str) -> HostPlan:
    """The launch sequence of `func_name` in a gpu-stage module, with its arena planned."""
    from torch_mlir import ir

    func = next(
        (
            op
            for op in module.body.operations
            if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == func_name
        ),
        None,
    )
    if func is None:
        raise HostPlanError(f"no function @{func_name} in the module")
    block = func.regions[0].blocks[0]
    root: dict = {}  # value → buffer index
    consts: dict = {}
    for i, a in enumerate(block.arguments):
        root[a] = i
    n_args = len(block.arguments)
    sizes: list[int] = []
    launches: list[Launch] = []
    results: list[View] = []

    def view(v) -> View:
        if v not in root:
            raise HostPlanError(f"a kernel argument that is not a view of a buffer: {v}")
        t = ir.MemRefType(v.type)
        strides, offset = t.get_strides_and_offset()
        if not t.has_static_shape or any(s < 0 or s > 1 << 62 for s in (*strides, offset)):
            raise HostPlanError(f"a dynamic view on the host: {t}")
        return View(root[v], offset, tuple(t.shape), tuple(strides), _element(t))

    def scalar(v) -> Scalar:
        if v not in consts:
            raise HostPlanError(f"a kernel argument computed on the host: {v}")
        t = str(v.type)
        return Scalar(consts[v], "i64" if t == "index" else t)

    for op in block.operations:
        op = op.operation
        name = op.name
        if name == "arith.constant":
            attr = op.attributes["value"]
            if isinstance(attr.maybe_downcast(), ir.FloatAttr):
                consts[op.results[0]] = ir.FloatAttr(attr).value
            elif isinstance(attr.maybe_downcast(), ir.IntegerAttr):
                consts[op.results[0]] = ir.IntegerAttr(attr).value
            # (else a vector or tensor constant a kernel took its own copy of: unused here)
        elif name in ("memref.alloc", "memref.alloca"):
            t = ir.MemRefType(op.results[0].type)
            root[op.results[0]] = n_args + len(sizes)
            sizes.append(math.prod(t.shape) * _ELEM_BYTES[_element(t)])
        elif name in _VIEW_OPS:
            root[op.results[0]] = root[op.operands[0]]
        elif name == "gpu.launch_func":
            seg = list(ir.DenseI32ArrayAttr(op.attributes["operandSegmentSizes"]))
            if seg[0] or any(seg[7:11]):
                raise HostPlanError("a launch with async dependencies, clusters or dynamic shared memory")
            ops = list(op.operands)
            pos = seg[0]
            dims = []
            for k in range(6):
                if ops[pos] not in consts:
                    raise HostPlanError("a launch whose grid or block size is not a constant")
                dims.append(int(consts[ops[pos]]))
                pos += seg[1 + k]
            pos += sum(seg[7:11])
            args = []
            for v in ops[pos : pos + seg[11]]:
                args.append(view(v) if isinstance(v.type.maybe_downcast(), ir.MemRefType) else scalar(v))
            kernel = str(op.attributes["kernel"]).split("::")[0].lstrip("@")
            launches.append(Launch(kernel, tuple(dims[:3]), tuple(dims[3:]), tuple(args)))
        elif name == "func.return":
            results = [view(v) for v in op.operands]
        else:
            raise HostPlanError(f"'{name}' in the host function (expected allocations, views and launches)")
    offsets, arena = plan_arena(sizes, launches, results, n_args)
    return HostPlan(n_args, tuple(sizes), tuple(launches), tuple(results), offsets, arena)


def plan_arena(
    sizes: Sequence[int], launches: Sequence[Launch], results: Sequence[View], n_args: int
) -> tuple[tuple[int, ...], int]:
    """Byte offsets of the allocations in one arena: live ranges from first to last launch
    (results live to the end), placed first fit by decreasing size among the allocations
    whose ranges overlap."""
    first = [len(launches)] * len(sizes)
    last = [-1] * len(sizes)
    for i, launch in enumerate(launches):
        for a in launch.args:
            if isinstance(a, View) and a.buffer >= n_args:
                b = a.buffer - n_args
                first[b], last[b] = min(first[b], i), max(last[b], i)
    for r in results:
        if r.buffer >= n_args:
            last[r.buffer - n_args] = len(launches)  # (live to the end: read after the last launch)
    order = sorted(range(len(sizes)), key=lambda b: -sizes[b])
    placed: list[tuple[int, int, int]] = []  # (offset, end, buffer)
    offsets = [0] * len(sizes)
    for b in order:
        size = -(-sizes[b] // ALIGN) * ALIGN
        busy = sorted((o, e) for o, e, c in placed if not (last[c] < first[b] or last[b] < first[c]))
        at = 0
        for o, e in busy:
            if at + size <= o:
                break
            at = max(at, e)
        offsets[b] = at
        placed.append((at, at + size, b))
    return tuple(offsets), max((e for _, e, _ in placed), default=0)


# ------------------------------------------------------------------------------ device
def gpu_available() -> str | None:
    """Why kernels cannot be launched here, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is available to this process (torch.cuda.is_available() is False)"
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError:
        return "launching needs cuda-python (pip install -e '.[gpu]')"
    return None


def _check(result) -> object:
    from cuda.bindings import driver as cu

    err = result[0]
    if err != cu.CUresult.CUDA_SUCCESS:
        _, msg = cu.cuGetErrorString(err)
        raise RuntimeError(f"CUDA driver: {msg.decode() if msg else err}")
    return result[1] if len(result) == 2 else result[1:]


_CTYPES = {
    "i64": ctypes.c_int64, "i32": ctypes.c_int32, "i16": ctypes.c_int16, "i8": ctypes.c_int8,
    "f32": ctypes.c_float, "f64": ctypes.c_double,
}  # fmt: skip


class GpuFunction:
    """A compiled model on the GPU: `bound` weights first, then the caller's inputs.

    The module is loaded into torch's primary context of the current device, made current
    on every call (a thread of its own may call). Each launch's parameter array is built
    once; a call rewrites only the pointer slots of the caller's inputs."""

    def __init__(self, cubin: bytes, plan: HostPlan, signature: Signature, *, bound: Sequence[torch.Tensor] = ()):
        why = gpu_available()
        if why:
            raise CallError(why)
        from cuda.bindings import driver as cu

        torch.cuda.init()
        _check(cu.cuInit(0))
        self._device = torch.cuda.current_device()
        self._ctx = _check(cu.cuDevicePrimaryCtxRetain(_check(cu.cuDeviceGet(self._device))))
        _check(cu.cuCtxSetCurrent(self._ctx))
        self.plan, self.signature = plan, signature
        self._module = _check(cu.cuModuleLoadData(cubin))
        self._kernels = {
            name: _check(cu.cuModuleGetFunction(self._module, name.encode()))
            for name in {x.kernel for x in plan.launches}
        }
        dev = torch.device("cuda", self._device)
        self._bound = [t.detach().to(dev).contiguous() for t in bound]
        for i, t in enumerate(self._bound):
            self._check(i, t)
        self._arena = torch.empty(max(plan.arena_bytes, 1), dtype=torch.uint8, device=dev)
        # per launch: its parameter values (ctypes), the address array, and the slots that
        # hold a caller's input pointer: (value, input buffer index)
        self._prepared = [self._params(launch) for launch in plan.launches]

    def __del__(self):
        try:
            from cuda.bindings import driver as cu

            cu.cuModuleUnload(self._module)
            cu.cuDevicePrimaryCtxRelease(self._device)
        except Exception:  # interpreter shutdown: nothing left to release into
            pass

    @property
    def user_inputs(self) -> tuple[TensorSpec, ...]:
        return self.signature.inputs[len(self._bound) :]

    def _check(self, index: int, t: torch.Tensor) -> None:
        want, got = self.signature.inputs[index], TensorSpec.of(t)
        if got != want:
            which = f"input {index - len(self._bound)}" if index >= len(self._bound) else f"bound argument {index}"
            raise CallError(f"{which}: expected tensor<{want}>, got tensor<{got}>")

    def _params(self, launch: Launch) -> tuple[list, object, list]:
        """The launch's kernel parameters as ctypes values (a memref: allocated and aligned
        pointer, offset, sizes, strides), the array of their addresses `cuLaunchKernel`
        reads, and the pointer slots a call fills with its inputs' addresses."""
        values: list = []
        slots: list = []
        n_bound = len(self._bound)
        for a in launch.args:
            if isinstance(a, Scalar):
                values.append(_CTYPES[a.dtype](a.value))
                continue
            if a.buffer >= self.plan.n_args:
                base = self._arena.data_ptr() + self.plan.offsets[a.buffer - self.plan.n_args]
            elif a.buffer < n_bound:
                base = self._bound[a.buffer].data_ptr()
            else:
                base = 0
            ptrs = [ctypes.c_void_p(base), ctypes.c_void_p(base)]
            if a.buffer < self.plan.n_args and a.buffer >= n_bound:
                slots += [(p, a.buffer) for p in ptrs]
            values += [*ptrs, ctypes.c_int64(a.offset)]
            values += [ctypes.c_int64(s) for s in a.sizes] + [ctypes.c_int64(s) for s in a.strides]
        return values, (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values]), slots

    def _launch(self, index: int, stream: int) -> None:
        from cuda.bindings import driver as cu

        launch, (_values, params, _slots) = self.plan.launches[index], self._prepared[index]
        _check(
            cu.cuLaunchKernel(
                self._kernels[launch.kernel], *launch.grid, *launch.block, 0, stream, ctypes.addressof(params), 0
            )
        )

    def _bind(self, args: list[torch.Tensor]) -> None:
        from cuda.bindings import driver as cu

        _check(cu.cuCtxSetCurrent(self._ctx))
        for _values, _params, slots in self._prepared:
            for ptr, buffer in slots:
                ptr.value = args[buffer].data_ptr()

    def _launch_all(self, args: list[torch.Tensor]) -> None:
        self._bind(args)
        stream = torch.cuda.current_stream(self._device).cuda_stream
        for i in range(len(self.plan.launches)):
            self._launch(i, stream)

    def _args(self, inputs) -> list[torch.Tensor]:
        user = self.user_inputs
        if len(inputs) != len(user):
            raise CallError(f"expected {len(user)} inputs, got {len(inputs)}")
        tensors = []
        for i, t in enumerate(inputs, start=len(self._bound)):
            if not isinstance(t, torch.Tensor):
                raise CallError(f"input {i - len(self._bound)}: expected a tensor, got {type(t).__name__}")
            if t.device != self._arena.device:
                where = self._arena.device
                raise CallError(
                    f"input {i - len(self._bound)}: a tensor on {t.device}; the compiled code runs on {where}"
                )
            t = t.detach().contiguous()
            self._check(i, t)
            tensors.append(t)
        return [*self._bound, *tensors]

    def time_launches(self, *inputs, repeats: int = 20) -> list[float]:
        """Seconds of each launch alone (median of `repeats`, CUDA events, after a warm-up
        run of the whole sequence): what the GPU corpus records per kernel."""
        import statistics

        args = self._args(inputs)
        self._launch_all(args)
        stream = torch.cuda.current_stream(self._device)
        out = []
        for i in range(len(self.plan.launches)):
            times = []
            for _ in range(repeats):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(stream)
                self._launch(i, stream.cuda_stream)
                b.record(stream)
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
            out.append(statistics.median(times))
        return out

    def __call__(self, *inputs):
        args = self._args(inputs)
        self._launch_all(args)
        outs = read_results(self.plan, self.signature.outputs, args, self._arena)
        return outs[0] if len(outs) == 1 else tuple(outs)


def read_results(
    plan: HostPlan, outputs: Sequence[TensorSpec], args: Sequence[torch.Tensor], arena: torch.Tensor
) -> list[torch.Tensor]:
    """Fresh copies of the results: each a strided view of an argument or of its
    allocation in the arena (a byte tensor)."""
    outs = []
    for r, spec in zip(plan.results, outputs):
        if r.buffer < plan.n_args:
            base = args[r.buffer]
        else:
            start = plan.offsets[r.buffer - plan.n_args]
            base = arena[start:].view(spec.torch_dtype)
        # (as_strided's offset counts from the storage's start, not the view's)
        outs.append(base.as_strided(r.sizes, r.strides, base.storage_offset() + r.offset).clone())
    return outs
