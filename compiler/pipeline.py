"""Pipelines in MLIR's `name{key=value}` syntax over every registered pass.

On the compiler floor. A pipeline is a comma-separated list of elements; an element is a
registered Tilecraft pass (a target-neutral one from `passes/registry.py`, or a stage or
rewrite of a backend: `cpu-tiled{vectorize=false}`, `cpu-lower`, `expand-erf`) or
anything the upstream pass manager parses (`canonicalize`, `func.func(cse)`, a whole
`builtin.module(...)` string). Used by `tilecraft-opt -p` and to print the pipeline a
compile ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch_mlir import ir

from tilecraft.backends import backend as backends
from tilecraft.dialects.irutil import run_pipeline
from tilecraft.passes.base import ModulePass, PassOptionError, Weights
from tilecraft.passes.registry import PASSES


def registry() -> dict[str, type[ModulePass]]:
    """Every pass by name: the target-neutral ones, then each backend's."""
    out = dict(PASSES)
    for kind in backends.BACKENDS:
        for p in backends.create(kind).pass_types():
            out[p.name] = p
    return out


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


def parse(pipeline: str) -> list[ModulePass | str]:
    """The elements of a pipeline: pass objects, or upstream pipeline text."""
    known = registry()
    out: list[ModulePass | str] = []
    for element in split_top_level(pipeline):
        name, opts = parse_element(element)
        cls = known.get(name)
        if cls is None:
            out.append(element if element.startswith("builtin.module(") else f"builtin.module({element})")
            continue
        try:
            out.append(cls.from_options(opts))
        except PassOptionError as exc:
            raise PipelineSyntaxError(str(exc)) from None
    return out


def spec(passes: Sequence[ModulePass]) -> str:
    """Passes written back as a pipeline `tilecraft-opt -p` runs."""
    return ",".join(p.spec() for p in passes)


def run(
    module: ir.Module,
    pipeline: str,
    *,
    weights: Sequence[torch.Tensor] | None = None,
    on_stage: Callable[[str, ir.Module], None] | None = None,
) -> Weights:
    """Run a pipeline on `module` in place; `on_stage(name, module)` after each element.
    Returns the bound weights after (meta tensors when `weights` is None)."""
    w = Weights.of_module(module, weights)
    for element in parse(pipeline):
        if isinstance(element, str):
            name = parse_element(element[len("builtin.module(") : -1])[0]
            run_pipeline(module, element, stage=name)
        else:
            name = element.name
            try:
                with module.context:
                    element.apply(module, w)
            except ValueError as exc:  # an option value the pass rejects
                if type(exc) is not ValueError:
                    raise
                raise PipelineSyntaxError(str(exc)) from None
        if on_stage:
            on_stage(name, module)
    return w
