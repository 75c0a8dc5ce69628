"""irutil: a failing pass's reproducer is its input, snapshotted before the pass ran."""

import os

import pytest
from torch_mlir import ir

from tilecraft import frontend
from tilecraft.dialects.irutil import ANY, PipelineError, apply_transform, named_sequence

FOLDABLE = """func.func @f() -> i32 {
  %a = arith.constant 1 : i32
  %b = arith.constant 2 : i32
  %c = arith.addi %a, %b : i32
  return %c : i32
}"""


def test_a_failing_transform_saves_the_module_as_it_was_before_it(monkeypatch):
    """The script folds the addition (the module changes in place), then fails: the
    reproducer holds the module before the script, not after (a copy made in MLIR,
    printed only on the failure)."""
    monkeypatch.delenv("TILECRAFT_NO_REPRODUCER", raising=False)
    module = ir.Module.parse(FOLDABLE, context=frontend.new_context())
    before = str(module)
    script = named_sequence(
        f"""    %f = transform.structured.match ops{{["func.func"]}} in %root : ({ANY}) -> {ANY}
    transform.apply_patterns to %f {{
      transform.apply_patterns.canonicalization
    }} : {ANY}
    %t, %l = transform.structured.tile_using_for %f tile_sizes [4] : ({ANY}) -> ({ANY}, {ANY})""",
        consumed=False,
    )
    with pytest.raises(PipelineError, match="stage 'tiled' failed") as info:
        apply_transform(module, script, stage="tiled", reproduce="cpu-tiled")
    assert "arith.addi" not in str(module)  # (the script did change it before failing)
    try:
        with open(info.value.reproducer) as f:
            assert f.read() == before
        assert info.value.command == f"tilecraft-opt {info.value.reproducer} -p 'cpu-tiled'"
    finally:
        os.unlink(info.value.reproducer)
