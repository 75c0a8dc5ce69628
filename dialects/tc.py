"""The `tc` dialect: the attributes through which decisions travel in the IR.

The ground floor (imports nothing of ours). A *decided* module is plain upstream MLIR plus
these attributes, so it prints, parses back and reproduces a compile:

- `tc.bound_args` (entry `func.func`, i64): how many leading arguments are bound weights.
- `tc.op_id` (structured ops, i64): the op's number in walk order (set by `tag_ops`).
- `tc.schedule` (structured ops, dict): the backend's schedule record for the op (CPU:
  `tiles`, `interchange`, `pack`, `decompose`, `vectorize`).
- `tc.fused` (structured ops, unit): fused into register tiles by the fusion rewrite.
- `tc.fusion` (module, JSON strings): the fusion groups planned (`FusionDecision`); the
  `fuse` pass applies them and moves them to `tc.fused_groups`.
- `tc.precision` (module, JSON strings): the per-layer precision plan
  (`PrecisionDecision`); the `precision` pass applies it and moves it to
  `tc.precision_applied`.
- `tc.amx`, `tc.amx_init` (generics): a low-precision contraction handed to the AMX
  kernels, and its accumulator's zero fill.
- `tc.copy_id` (buffer copies and fills, i64): tagged for vectorization after
  bufferization.

Schedules are builtin dictionaries (`{tiles = [array<i64: 64, 128, 128>, …], pack = true}`):
they need no registration, survive canonicalization, CSE, tiling and bufferization, and
read back typed (see ../shared/MLIR-NOTES.md). `check_schedule` is the one validator of
their shape. The same attributes are declared as an xDSL dialect in `dialects/tc_xdsl.py`
(for xDSL-side tools); the upstream pipeline needs no dialect to be loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from torch_mlir import ir

BOUND_ARGS = "tc.bound_args"
OP_ID = "tc.op_id"
SCHEDULE = "tc.schedule"
FUSED = "tc.fused"
FUSION = "tc.fusion"
PARALLEL = "tc.parallel"  # module records: kernels split into a chunk a thread (ParallelDecision)
PARALLELIZED = "tc.parallelized"  # the same records, once the parallelize pass applied them
FUSED_GROUPS = "tc.fused_groups"
PRECISION = "tc.precision"
PRECISION_APPLIED = "tc.precision_applied"
AMX = "tc.amx"  # a contraction `passes/precision.py` hands to the AMX kernels: not tiled
AMX_INIT = "tc.amx_init"  # the zero fill of such a contraction's accumulator: folded into the kernel
COPY_ID = "tc.copy_id"

SCHEDULE_KEYS = {"tiles": list, "interchange": list, "pack": bool, "decompose": bool, "vectorize": bool}


class DecisionAttrError(ValueError):
    """A `tc` attribute whose shape is not what its readers expect."""


# ----------------------------------------------------------------------- bound weights
def bound_args(fn: ir.Operation) -> int:
    return ir.IntegerAttr(fn.attributes[BOUND_ARGS]).value if BOUND_ARGS in fn.attributes else 0


def set_bound_args(fn: ir.Operation, n: int) -> None:
    fn.attributes[BOUND_ARGS] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64, context=fn.context), n)


# --------------------------------------------------------------------------- schedules
def check_schedule(d: dict) -> dict:
    """`d` if it is a well-formed schedule record (keys and value types), else raise."""
    unknown = set(d) - set(SCHEDULE_KEYS)
    if unknown or "tiles" not in d:
        raise DecisionAttrError(f"not a schedule: {d!r} (keys: {', '.join(SCHEDULE_KEYS)}; tiles required)")
    for key, kind in SCHEDULE_KEYS.items():
        if key in d and not isinstance(d[key], kind):
            raise DecisionAttrError(f"schedule field {key} is {type(d[key]).__name__}, expected {kind.__name__}")
    if not all(isinstance(level, (list, tuple)) and all(isinstance(x, int) for x in level) for level in d["tiles"]):
        raise DecisionAttrError(f"schedule tiles must be lists of integers: {d['tiles']!r}")
    return d


def schedule_attr(d: dict, context: ir.Context) -> ir.Attribute:
    """A schedule record (plain Python values) as a builtin dictionary attribute."""
    check_schedule(d)
    entries: dict[str, ir.Attribute] = {
        "tiles": ir.ArrayAttr.get([ir.DenseI64ArrayAttr.get(list(level), context=context) for level in d["tiles"]])
    }
    if d.get("interchange"):
        entries["interchange"] = ir.DenseI64ArrayAttr.get(list(d["interchange"]), context=context)
    for key in ("pack", "decompose", "vectorize"):
        if key in d:
            entries[key] = ir.BoolAttr.get(bool(d[key]), context=context)
    return ir.DictAttr.get(entries, context=context)


def read_schedule(op: ir.Operation) -> dict | None:
    """The op's `tc.schedule` as plain Python values, or None when it has none."""
    if SCHEDULE not in op.attributes:
        return None
    try:
        attr = ir.DictAttr(op.attributes[SCHEDULE])
        out: dict = {}
        for named in attr:
            key, value = named.name, named.attr
            if key == "tiles":
                out[key] = [list(ir.DenseI64ArrayAttr(level)) for level in ir.ArrayAttr(value)]
            elif key == "interchange":
                out[key] = list(ir.DenseI64ArrayAttr(value))
            else:
                out[key] = ir.BoolAttr(value).value
    except (ValueError, TypeError) as exc:
        raise DecisionAttrError(f"malformed {SCHEDULE} on {op.name}: {op.attributes[SCHEDULE]} ({exc})") from None
    return check_schedule(out)


# ------------------------------------------------------------------- module records
def set_records(module: ir.Module, name: str, records: Sequence[str]) -> None:
    """Attach JSON records (fusion groups, precision decisions) to the module."""
    ctx = module.context
    module.operation.attributes[name] = ir.ArrayAttr.get([ir.StringAttr.get(r, context=ctx) for r in records])


def take_records(module: ir.Module, name: str, applied: str) -> list[dict] | None:
    """Read the records under `name` and move them to `applied` (a pass consumed them)."""
    records = read_records(module, name)
    if records is not None:
        attrs = module.operation.attributes
        attrs[applied] = attrs[name]
        del attrs[name]
    return records


def read_records(module: ir.Module, name: str) -> list[dict] | None:
    """The module's JSON records under `name`, parsed; None when it has none."""
    attrs = module.operation.attributes
    if name not in attrs:
        return None
    try:
        return [json.loads(ir.StringAttr(a).value) for a in ir.ArrayAttr(attrs[name])]
    except (ValueError, TypeError) as exc:
        raise DecisionAttrError(f"malformed {name} on the module: {exc}") from None
