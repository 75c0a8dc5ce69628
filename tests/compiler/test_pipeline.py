"""The pass registry and the `name{key=value}` pipeline syntax."""

import pytest

from tilecraft import frontend, pipeline
from tilecraft.backends.cpu import schedule

MM = """func.func @mm(%a: tensor<64x48xf32>, %b: tensor<48x32xf32>) -> tensor<64x32xf32> {
  %cst = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x32xf32>
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64x32xf32>) -> tensor<64x32xf32>
  %r = linalg.matmul ins(%a, %b : tensor<64x48xf32>, tensor<48x32xf32>)
         outs(%f : tensor<64x32xf32>) -> tensor<64x32xf32>
  return %r : tensor<64x32xf32>
}"""


def test_split_and_parse():
    assert pipeline.split_top_level("a{x=1,y=2},func.func(cse,canonicalize),b") == [
        "a{x=1,y=2}",
        "func.func(cse,canonicalize)",
        "b",
    ]
    assert pipeline.parse_element("cpu-tiled{vectorize=false}") == ("cpu-tiled", {"vectorize": "false"})
    with pytest.raises(pipeline.PipelineSyntaxError):
        pipeline.split_top_level("a{x=1")
    with pytest.raises(pipeline.PipelineSyntaxError):
        pipeline.parse_element("a{x}")


def test_run_mixed_pipeline():
    m = frontend.parse_mlir(MM, context=frontend.new_context())
    stages = []
    pipeline.run(m, "cpu-tiled{vectorize=false},canonicalize,cse", on_stage=lambda n, _: stages.append(n))
    assert stages == ["cpu-tiled", "canonicalize", "cse"]
    assert "scf.for" in str(m) and "vector." not in str(m)


def test_unknown_option_and_pass():
    m = frontend.parse_mlir(MM, context=frontend.new_context())
    with pytest.raises(pipeline.PipelineSyntaxError, match="unknown option 'bogus'"):
        pipeline.run(m, "cpu-tiled{bogus=1}")
    with pytest.raises(Exception, match="no-such-pass"):
        pipeline.run(m, "no-such-pass")


def test_heuristics():
    assert schedule.divisor_at_most(56, 8) == 8
    assert schedule.divisor_at_most(1000, 32, multiple_of=16) == 25
    assert schedule.divisor_at_most(512, 32, multiple_of=16) == 32
    assert schedule.budget_tile((4, 128, 256)) == (1, 4, 256)
    info = schedule.OpInfo(0, "linalg.matmul", "matmul", (512, 512, 512), ("parallel", "parallel", "reduction"))
    s = schedule.default_decision(info)
    assert s.tiles == ((64, 128, 128), (8, 32, 1))


def test_every_registered_pass_is_listed_with_options_and_has_a_filecheck_test(capsys):
    """`tilecraft-opt --list-passes` lists every pass (each with its options and defaults),
    every pass the driver runs on a model is registered, and each has a FileCheck test."""
    import glob
    import os
    import re

    from tilecraft import cli, driver

    assert cli.opt_main(["--list-passes"]) == 0
    listed = capsys.readouterr().out
    known = pipeline.registry()
    for name, cls in known.items():
        assert re.search(rf"^{re.escape(cls.describe())}$", listed, re.M), name
        for key in cls.options():
            assert f"{key}=" in cls.describe()
    compiled = driver.compile_model(frontend.import_spec("conv_autoencoder"), emit="llvm")
    assert {p.name for p in compiled.passes} <= set(known)
    here = os.path.dirname(os.path.abspath(__file__))
    runs = " ".join(
        line
        for path in glob.glob(os.path.join(here, "..", "filecheck", "*.mlir"))
        for line in open(path)
        if line.startswith("// RUN:")
    )
    untested = [name for name in known if not re.search(rf"-p [\"']?[^|]*\b{re.escape(name)}\b", runs)]
    assert not untested, f"passes without a FileCheck test: {untested}"


def test_on_step_sees_the_module_from_the_frontend_step_on():
    from tilecraft import driver

    seen = []
    driver.compile_model("mlp", emit="linalg", on_step=lambda name, module, done: seen.append((name, module)))
    assert seen[0][0] == "frontend" and seen[0][1] is not None


def test_the_collector_is_paused_while_a_model_compiles_and_restored_after():
    """A compile runs without the cyclic collector (its full collections scanned the host's
    whole heap); the collector's state is the caller's again afterwards, after an error
    too, and a collector the caller had turned off stays off."""
    import gc

    import pytest

    from tilecraft import driver, frontend

    seen = []
    assert gc.isenabled()
    driver.compile_model(frontend.import_spec("mlp"), emit="linalg", on_step=lambda *_: seen.append(gc.isenabled()))
    assert seen and not any(seen) and gc.isenabled()
    with pytest.raises(driver.DriverError):
        driver.compile_model(frontend.import_spec("mlp"), emit="nope")
    assert gc.isenabled()
    gc.disable()
    try:
        driver.compile_model(frontend.import_spec("mlp"), emit="linalg")
        assert not gc.isenabled()
    finally:
        gc.enable()
