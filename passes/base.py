"""What a pass is: a frozen dataclass with a kebab-case `name` whose fields are its options.

On the passes floor (imports dialects only). A pass rewrites an upstream MLIR module in
place (`apply`). Its options are its dataclass fields, spelled in pipelines as MLIR does
(`conv-im2col{thin=true}`); `from_options` parses them from text by the fields' types and
`spec()` prints the pass back in that syntax, so a pipeline that ran can be written down and
rerun by `tilecraft-opt -p`.

Some rewrites change the layout of the model's bound weights (im2col packs filters, the
weight padding widens rows). The bound weights are the function's leading arguments
(`tc.bound_args` on the function says how many); a pass that relays them out receives
them in `Weights` and replaces entries there. Where no values are at hand
(`tilecraft-opt` on a text file) they are meta tensors: the IR rewrite is the same, only
the types are carried.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch_mlir import ir

from tilecraft.dialects import tc
from tilecraft.dialects.irutil import entry_func


class PassOptionError(ValueError):
    """A pass option that does not parse, or a pass that does not exist."""


class Weights(list):
    """The bound weights of a module's entry function, in argument order (a list of
    tensors; meta tensors when only their types are known)."""

    @staticmethod
    def of_module(module: ir.Module, values: Sequence[torch.Tensor] | None = None) -> Weights:
        """`values` if given, else meta tensors typed as the entry function's first
        `tc.bound_args` arguments."""
        if values is not None:
            return Weights(values)
        fn = entry_func(module)
        n = tc.bound_args(fn)
        args = list(fn.regions[0].blocks[0].arguments)[:n]
        return Weights(torch.empty(ir.ShapedType(a.type).shape, dtype=_dtype(a.type), device="meta") for a in args)


_DTYPES = {
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "i8": torch.int8,
    "i32": torch.int32,
    "i64": torch.int64,
}


def _dtype(t: ir.Type) -> torch.dtype:
    elem = str(ir.ShapedType(t).element_type)
    return _DTYPES.get(elem, torch.float32)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "on", "yes"):
        return True
    if text.lower() in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse(kind, text: str):
    if kind is bool:
        return parse_bool(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    raise ValueError(f"options of type {kind} cannot be given as text")


@dataclasses.dataclass(frozen=True)
class ModulePass:
    """Base of every pass: subclasses set `name` and `summary`, declare options as fields
    with defaults, and implement `apply`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def apply(self, module: ir.Module, weights: Weights) -> None:
        raise NotImplementedError

    def run(self, module: ir.Module, weights: Sequence[torch.Tensor] | None = None) -> Weights:
        """Apply to `module` (in place, in its context); returns the bound weights after."""
        w = Weights.of_module(module, weights)
        with module.context:
            self.apply(module, w)
        return w

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        """Textual options: fields whose type is bool, int, float or str, in kebab case."""
        hints = typing.get_type_hints(cls)
        return {
            f.name.replace("_", "-"): f
            for f in dataclasses.fields(cls)
            if f.init and hints.get(f.name) in (bool, int, float, str)
        }

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> ModulePass:
        known = cls.options()
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, text in opts.items():
            field = known.get(key)
            if field is None:
                raise PassOptionError(
                    f"unknown option {key!r} of pass {cls.name} (known: {', '.join(known) or 'none'})"
                )
            try:
                kwargs[field.name] = _parse(hints[field.name], text)
            except ValueError as exc:
                raise PassOptionError(f"option {key} of {cls.name}: {exc}") from None
        return cls(**kwargs)

    def spec(self) -> str:
        """This pass in pipeline syntax, with the options that differ from the defaults."""
        parts = []
        for key, field in self.options().items():
            value = getattr(self, field.name)
            if value != field.default:
                parts.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        return f"{self.name}{{{' '.join(parts)}}}" if parts else self.name

    @classmethod
    def describe(cls) -> str:
        """One line for `--list-passes`: name, options with their defaults, summary."""
        opts = " ".join(
            f"{k}={str(f.default).lower() if isinstance(f.default, bool) else f.default}"
            for k, f in cls.options().items()
        )
        return f"{cls.name}{{{opts}}}" if opts else cls.name
