"""CPU runtime: call a compiled entry function with torch tensors or numpy arrays.

On the backends floor; sits at the end of the CPU backend. Reads a compiled entry function
(JIT or shared library) and the caller's tensors; writes the results into fresh tensors.
The lowering gives every public function a C interface (`_mlir_ciface_<name>`) whose
arguments are pointers to memref descriptors, inputs first and then one out-parameter per
result (`buffer-results-to-out-params`). This module builds those descriptors with ctypes,
checks shapes and dtypes at call time, and works the same for a JIT `ExecutionEngine` and
for a shared library loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch

_DTYPES = {
    "f32": torch.float32,
    "f64": torch.float64,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "i1": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class CallError(ValueError):
    """An argument does not match the compiled signature."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # MLIR element type name: f32, i64, …

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.shape)) or 'scalar'}x{self.dtype}" if self.shape else f"{self.dtype}"

    @staticmethod
    def from_type(t) -> TensorSpec:
        from torch_mlir import ir

        st = ir.ShapedType(t)
        elem = str(st.element_type)
        if elem not in _DTYPES:
            raise CallError(f"unsupported element type {elem}")
        return TensorSpec(tuple(st.shape), elem)

    @staticmethod
    def of(t: torch.Tensor) -> TensorSpec:
        if t.dtype not in _NAMES:
            raise CallError(f"unsupported dtype {t.dtype}")
        return TensorSpec(tuple(t.shape), _NAMES[t.dtype])


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @staticmethod
    def of_func(module, name: str) -> Signature:
        """Signature of func `name` in a tensor-level module."""
        from torch_mlir import ir

        for op in module.body.operations:
            if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == name:
                ft = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
                return Signature(
                    tuple(TensorSpec.from_type(t) for t in ft.inputs),
                    tuple(TensorSpec.from_type(t) for t in ft.results),
                )
        raise CallError(f"no function @{name} in the module")


@functools.cache
def _descriptor_type(rank: int):
    fields = [("allocated", ctypes.c_void_p), ("aligned", ctypes.c_void_p), ("offset", ctypes.c_int64)]
    if rank:
        fields += [("sizes", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
    return type(f"MemRef{rank}D", (ctypes.Structure,), {"_fields_": fields})


def _descriptor(t: torch.Tensor):
    desc = _descriptor_type(t.dim())()
    desc.allocated = desc.aligned = t.data_ptr()
    desc.offset = 0
    if t.dim():
        desc.sizes[:] = list(t.shape)
        desc.strides[:] = list(t.stride())
    return desc


def _contiguous_strides(shape) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


def _packed(descs: list) -> tuple:
    """The packed wrapper's argument: `packed[i]` points at `args[i]`, the address of the
    i-th descriptor. Returns both (the caller keeps `args` and `descs` alive)."""
    n = len(descs)
    args = (ctypes.c_void_p * n)(*[ctypes.addressof(d) for d in descs])
    step = ctypes.sizeof(ctypes.c_void_p)
    return args, (ctypes.c_void_p * n)(*[ctypes.addressof(args) + i * step for i in range(n)])


class CompiledFunction:
    """A compiled entry point. `bound` tensors (weights) are passed first on every call.

    `address` is the address of the packed wrapper `_mlir__mlir_ciface_<name>(void **args)`
    that ExecutionEngine generates (present in the JIT and in dumped objects alike): args[i]
    points at a pointer to the i-th memref descriptor. `owner` (an ExecutionEngine or a
    ctypes CDLL) is kept alive as long as the function is.
    """

    def __init__(self, address: int, signature: Signature, *, owner, bound: Sequence[torch.Tensor] = ()):
        if not address:  # (calling it would jump to address 0 and take the process down)
            raise RuntimeError(
                "LLVM could not link the compiled module (no entry point; the JIT's own message, "
                "above on stderr, names the symbols it could not resolve)"
            )
        self.signature, self._owner = signature, owner
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
        self._bound = [t.detach().contiguous() for t in bound]
        for i, t in enumerate(self._bound):
            self._check(i, t)
        self._bound_descs = [_descriptor(t) for t in self._bound]
        # the fast path's per-call work: shapes and dtypes to check against, and per calling
        # thread one set of argument arrays whose descriptors only change their data pointers
        self._user = [(torch.Size(s.shape), s.torch_dtype) for s in self.user_inputs]
        self._outs = [(s.shape, s.torch_dtype) for s in signature.outputs]
        self._local = threading.local()

    def _frame(self):
        """This thread's argument arrays: a descriptor per user input and per output, laid
        out for contiguous tensors of the signature's shapes, and the packed pointers to
        every descriptor (the bound ones shared). Calls on one thread never overlap (the
        compiled code calls nothing back), so one set per thread serves every call."""
        frame = getattr(self._local, "frame", None)
        if frame is None:
            specs = [*self.user_inputs, *self.signature.outputs]
            descs = []
            for spec in specs:
                desc = _descriptor_type(len(spec.shape))()
                if spec.shape:
                    desc.sizes[:] = list(spec.shape)
                    desc.strides[:] = _contiguous_strides(spec.shape)
                descs.append(desc)
            args, packed = _packed([*self._bound_descs, *descs])
            frame = self._local.frame = (descs, args, packed)
        return frame

    @property
    def user_inputs(self) -> tuple[TensorSpec, ...]:
        return self.signature.inputs[len(self._bound) :]

    def _check(self, index: int, t: torch.Tensor) -> None:
        want = self.signature.inputs[index]
        got = TensorSpec.of(t)
        if got != want:
            which = f"input {index - len(self._bound)}" if index >= len(self._bound) else f"bound argument {index}"
            raise CallError(f"{which}: expected tensor<{want}>, got tensor<{got}>")

    def prepare(self, *inputs):
        """A zero-argument callable that runs the kernel on fixed inputs into fixed output
        buffers: no allocation or argument checking per call (for timing loops).
        Returns `(run, outputs)`; `run` keeps the inputs and outputs alive (a caller that
        drops `outputs` must not leave the kernel writing into freed memory)."""
        tensors = [t.detach().contiguous() for t in inputs]
        for i, t in enumerate(tensors, start=len(self._bound)):
            self._check(i, t)
        outs = [torch.empty(s.shape, dtype=s.torch_dtype) for s in self.signature.outputs]
        descs = [*self._bound_descs, *(_descriptor(t) for t in tensors + outs)]
        args, packed = _packed(descs)
        fn = self._fn
        keep = (tensors, outs, descs, args, self)

        def run():
            fn(packed)
            return keep

        return run, outs

    def __call__(self, *inputs):
        """Run on `inputs` (tensors or numpy arrays) into fresh output tensors. Tensors of
        exactly the signature's shapes and dtypes take a fast path: no descriptor is built
        (a few microseconds a call, which a sub-millisecond model feels)."""
        user = self._user
        if len(inputs) == len(user):
            ptrs = []
            for t, (shape, dtype) in zip(inputs, user):
                if type(t) is not torch.Tensor or t.dtype is not dtype or t.shape != shape or not t.is_cpu:
                    break
                if not t.is_contiguous():
                    t = t.contiguous()
                ptrs.append(t)
            else:
                outs = [torch.empty(shape, dtype=dtype) for shape, dtype in self._outs]
                descs, _, packed = self._frame()
                for desc, t in zip(descs, ptrs + outs):
                    desc.allocated = desc.aligned = t.data_ptr()
                self._fn(packed)  # (`ptrs` keeps inputs made contiguous alive until it returns)
                return outs[0] if len(outs) == 1 else tuple(outs)
        return self._call_checked(inputs)

    def _call_checked(self, inputs):
        user = self.user_inputs
        if len(inputs) != len(user):
            raise CallError(f"expected {len(user)} inputs, got {len(inputs)}")
        as_numpy = bool(inputs) and all(isinstance(x, np.ndarray) for x in inputs)
        tensors = []
        for i, x in enumerate(inputs, start=len(self._bound)):
            t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
            if not isinstance(t, torch.Tensor):
                raise CallError(f"input {i - len(self._bound)}: expected a tensor or array, got {type(x).__name__}")
            if t.device.type != "cpu":
                raise CallError(
                    f"input {i - len(self._bound)}: a tensor on {t.device}; the compiled code runs on the CPU"
                )
            t = t.detach().contiguous()
            self._check(i, t)
            tensors.append(t)
        outs = [torch.empty(s.shape, dtype=s.torch_dtype) for s in self.signature.outputs]
        # Every call builds its own argument arrays (kept alive until it returns), so one
        # compiled function may be called from many threads at once.
        descs = [*self._bound_descs, *(_descriptor(t) for t in tensors + outs)]
        args, packed = _packed(descs)  # (args and descs: kept alive until the call returns)
        self._fn(packed)
        results = [o.numpy() for o in outs] if as_numpy else outs
        return results[0] if len(results) == 1 else tuple(results)


def from_engine(engine, name: str, signature: Signature, *, bound: Sequence[torch.Tensor] = ()) -> CompiledFunction:
    return CompiledFunction(engine.raw_lookup(f"_mlir_ciface_{name}"), signature, owner=engine, bound=bound)


def from_shared_library(
    path: str, name: str, signature: Signature, *, bound: Sequence[torch.Tensor] = (), unload: bool = False
) -> CompiledFunction:
    """The entry function `name` of the library at `path`. `unload`: the library is this
    function's alone (a path no one else loads): when the function is dropped, its pool's
    blocks are freed and the library closed, as a dropped JIT engine's are (a library
    loaded twice is one handle, its pool shared: it stays loaded)."""
    lib = ctypes.CDLL(path)
    address = ctypes.cast(getattr(lib, f"_mlir__mlir_ciface_{name}"), ctypes.c_void_p).value
    if unload:
        try:  # the pool's release (the JIT's object keeps no destructor list a loader runs)
            release = ctypes.cast(lib[_RELEASE], ctypes.c_void_p).value
        except AttributeError:
            release = None
        weakref.finalize(lib, _unload, lib._handle, release).atexit = False  # (not under running threads at exit)
    return CompiledFunction(address, signature, owner=lib, bound=bound)


_RELEASE = "_mlir___tc_pool_release"  # (`pool.RELEASE`'s packed wrapper: `void(void **args)`)


def _unload(handle: int, release: int | None) -> None:
    """A dropped library's pool released, then `dlclose` (ctypes never closes one): its
    pooled buffers and its code go back, as a dropped JIT engine's do."""
    import _ctypes

    if release:
        ctypes.CFUNCTYPE(None, ctypes.c_void_p)(release)((ctypes.c_void_p * 1)())
    _ctypes.dlclose(handle)
