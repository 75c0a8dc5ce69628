"""Islands (`dialects/islands.py`): ops moved into private functions and back."""

from __future__ import annotations

import pytest
from torch_mlir import ir

from tilecraft.dialects import islands

TEXT = """
func.func @f(%a: tensor<4xf32>, %b: tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) {
  %cst = arith.constant 1.0 : f32
  %e = tensor.empty() : tensor<4xf32>
  %fill = linalg.fill ins(%cst : f32) outs(%e : tensor<4xf32>) -> tensor<4xf32>
  %0 = linalg.add ins(%fill, %a : tensor<4xf32>, tensor<4xf32>) outs(%e : tensor<4xf32>) -> tensor<4xf32>
  %1 = linalg.mul ins(%0, %b : tensor<4xf32>, tensor<4xf32>) outs(%e : tensor<4xf32>) -> tensor<4xf32>
  %2 = linalg.sub ins(%1, %0 : tensor<4xf32>, tensor<4xf32>) outs(%e : tensor<4xf32>) -> tensor<4xf32>
  %3 = linalg.exp ins(%2 : tensor<4xf32>) outs(%e : tensor<4xf32>) -> tensor<4xf32>
  return %3, %1 : tensor<4xf32>, tensor<4xf32>
}
"""


def _module():
    ctx = ir.Context()
    return ctx, ir.Module.parse(TEXT, context=ctx)


def _ops(module) -> dict[str, ir.Operation]:
    fn = module.body.operations[0].operation
    return {op.operation.name: op.operation for op in fn.regions[0].blocks[0].operations}


def _funcs(module) -> list[str]:
    return [ir.StringAttr(op.operation.attributes["sym_name"]).value for op in module.body.operations]


def test_round_trip_keeps_the_program():
    ctx, module = _module()
    want = str(ir.Module.parse(TEXT, context=ctx))
    ops = _ops(module)
    with islands.islands(module, [[ops["linalg.mul"], ops["linalg.add"]]]) as made:
        assert made == 1
        module.operation.verify()
        assert _funcs(module) == ["__tc_island0", "f"]
        island = module.body.operations[0].operation
        assert islands.ISLAND in island.attributes
        inner = [op.operation.name for op in island.regions[0].blocks[0].operations]
        # the fill feeding only the island moved with it; the constant and the empty were copied in
        assert inner == ["arith.constant", "tensor.empty", "linalg.fill", "linalg.add", "linalg.mul", "func.return"]
        # results: the add (used by the sub after it) and the mul (the sub, the return)
        assert len(island.regions[0].blocks[0].operations[5].operands) == 2
    module.operation.verify()
    assert _funcs(module) == ["f"]
    # the same ops in the same order (the constant and the empty copied: names aside)
    names = [op.operation.name for op in _ops_list(module)]
    assert names.count("linalg.add") == names.count("linalg.mul") == 1
    assert names.index("linalg.add") < names.index("linalg.mul") < names.index("linalg.sub")
    # the empty, still used outside, was copied in; back out, the copy merged with it (CSE)
    assert len(str(module).splitlines()) == len(want.splitlines())
    assert str(module).count("tensor.empty") == str(module).count("arith.constant") == 1


def _ops_list(module):
    return list(module.body.operations[0].operation.regions[0].blocks[0].operations)


def test_a_value_used_outside_before_the_island_ends_refuses():
    ctx, module = _module()
    ops = _ops(module)
    before = str(module)
    # the add's result feeds the mul, which stands between the add and the sub
    with islands.islands(module, [[ops["linalg.add"], ops["linalg.sub"]]]) as made:
        assert made == 0
        assert str(module) == before
    assert str(module) == before


def test_groups_sharing_an_op_merge_and_errors_still_inline():
    ctx, module = _module()
    ops = _ops(module)
    with pytest.raises(RuntimeError, match="inside"):
        with islands.islands(module, [[ops["linalg.sub"]], [ops["linalg.exp"], ops["linalg.sub"]]]) as made:
            assert made == 1
            assert _funcs(module) == ["__tc_island0", "f"]
            raise RuntimeError("inside")
    module.operation.verify()
    assert _funcs(module) == ["f"]


def test_ops_are_keyed_by_address_not_by_the_bindings_hash():
    ctx, module = _module()
    ops = _ops(module)
    add = ops["linalg.add"]
    k = islands.key(add)
    with ctx:
        add.operands[1] = module.body.operations[0].operation.regions[0].blocks[0].arguments[1]
    assert islands.key(add) == k  # (the bindings' hash may change with the operands; the key does not)
    assert islands.key(_ops(module)["linalg.add"]) == k
