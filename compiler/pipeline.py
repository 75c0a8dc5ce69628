"""Named pipelines and the pass registry, in MLIR's `name{key=value}` syntax.

Used by `tilecraft-opt -p PIPELINE` and by the driver. A pipeline is a comma-separated
list of elements; an element is either a registered Tilecraft pass (`cpu-tiled`,
`cpu-tiled{vectorize=false}`, `expand-erf`, …) or anything the upstream pass manager
parses (`canonicalize`, `func.func(cse)`, or a whole `builtin.module(...)` string).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch_mlir import ir

from tilecraft.backends.cpu import lowering, math_approx


@dataclasses.dataclass(frozen=True)
class PassSpec:
    name: str
    run: Callable[..., None]  # (module, **options)
    options: dict[str, type]
    help: str


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "on", "yes"):
        return True
    if v.lower() in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _fuse(module: ir.Module, cost_model: str, strategy: str) -> None:
    from tilecraft import driver
    from tilecraft.backends.cpu.target import Target
    from tilecraft.passes import fusion

    target = Target.parse("cpu")
    if strategy == "maximal":
        fusion.private_fills(module)
        fusion.apply(module, fusion.maximal(fusion.analyze(module), target))
    elif strategy == "cost":
        driver.fuse_groups(module, driver.load_cost_model(cost_model, target), target)
    else:
        raise ValueError(f"fuse{{strategy={strategy}}}: one of cost, maximal")


def _precision(module: ir.Module, mode: str) -> None:
    """Every eligible contraction in `mode` (bf16; int8 needs calibrated scales: `compile`).
    Weights are not bound values here, so B operands are packed at run time."""
    from tilecraft.passes import precision

    if mode != "bf16":
        raise ValueError(f"precision{{mode={mode}}}: tilecraft-opt lowers to bf16 only (int8 needs calibration)")
    layers = precision.layers(module, 0)
    decisions = [precision.PrecisionDecision(x.index, "bf16") for x in layers if "bf16" in x.eligible]
    precision.rewrite(module, [], decisions)


REGISTRY: dict[str, PassSpec] = {
    p.name: p
    for p in (
        PassSpec("expand-erf", lambda m: math_approx.expand_erf(m), {}, "polynomial math.erf"),
        PassSpec("expand-exp", lambda m: math_approx.expand_exp(m), {}, "polynomial math.exp (f32)"),
        PassSpec(
            "precision",
            lambda m, mode="bf16": _precision(m, mode),
            {"mode": str},
            "every eligible contraction → bf16 AMX contraction (tc.amx generic; lowered by cpu-llvm)",
        ),
        PassSpec(
            "fuse",
            lambda m, cost_model="lightgbm", strategy="cost": _fuse(m, cost_model, strategy),
            {"cost-model": str, "strategy": str},
            "partition into fusion groups by predicted latency (strategy=maximal: every sink's largest"
            " legal group, no model); tile the sinks, fuse the groups",
        ),
        PassSpec(
            "cpu-tiled",
            lambda m, vectorize=True: lowering.to_tiled(m, vectorize=vectorize),
            {"vectorize": _bool},
            "linalg → tiled: default schedules, tiling, per-tile vectorization",
        ),
        PassSpec(
            "cpu-vector",
            lambda m, vectorize=True: lowering.to_vector(m, vectorize=vectorize),
            {"vectorize": _bool},
            "tiled → vector: hoisting, bufferization, vector lowering",
        ),
        PassSpec("cpu-llvm", lambda m: lowering.to_llvm(m), {}, "vector → LLVM dialect"),
        PassSpec(
            "cpu-lower",
            lambda m: lowering.lower(m, "llvm"),
            {},
            "linalg → LLVM dialect (cpu-tiled, cpu-vector, cpu-llvm)",
        ),
    )
}

# Named pipelines: the stages of a target, up to an emit point.
NAMED = {
    "cpu-tiled": "cpu-tiled",
    "cpu-vector": "cpu-tiled,cpu-vector",
    "cpu-llvm": "cpu-tiled,cpu-vector,cpu-llvm",
}


class PipelineSyntaxError(ValueError):
    pass


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not nested in (), {} or []."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth < 0:
                raise PipelineSyntaxError(f"unbalanced brackets in pipeline {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise PipelineSyntaxError(f"unbalanced brackets in pipeline {text!r}")
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def parse_element(text: str) -> tuple[str, dict[str, str]]:
    """`name{a=1 b=2}` (space- or comma-separated options) → ("name", {"a": "1", "b": "2"})."""
    if "{" not in text:
        return text.strip(), {}
    name, _, rest = text.partition("{")
    if not rest.endswith("}"):
        raise PipelineSyntaxError(f"expected '}}' at the end of {text!r}")
    opts = {}
    for item in rest[:-1].replace(",", " ").split():
        key, eq, value = item.partition("=")
        if not eq:
            raise PipelineSyntaxError(f"option {item!r} of {name} is not key=value")
        opts[key] = value
    return name.strip(), opts


def run(module: ir.Module, pipeline: str, *, on_stage: Callable[[str, ir.Module], None] | None = None) -> ir.Module:
    """Run a pipeline on `module` in place; `on_stage(name, module)` after each element."""
    pipeline = NAMED.get(pipeline.strip(), pipeline)
    for element in split_top_level(pipeline):
        name, opts = parse_element(element)
        spec = REGISTRY.get(name)
        if spec is None:
            wrapped = element if element.startswith("builtin.module(") else f"builtin.module({element})"
            lowering.run_pipeline(module, wrapped, stage=name)
        else:
            kwargs = {}
            for key, value in opts.items():
                if key not in spec.options:
                    raise PipelineSyntaxError(
                        f"unknown option {key!r} of pass {name} (known: {', '.join(spec.options) or 'none'})"
                    )
                try:
                    kwargs[key.replace("-", "_")] = spec.options[key](value)
                except ValueError as exc:
                    raise PipelineSyntaxError(f"option {key} of {name}: {exc}") from None
            with module.context:
                spec.run(module, **kwargs)
        if on_stage:
            on_stage(name, module)
    return module
