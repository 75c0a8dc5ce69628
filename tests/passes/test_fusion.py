"""The fusion pass: legal groups, the rewrite (checked against eager), the partition, explain."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import reference_target
from tilecraft import cli, driver, frontend
from tilecraft.costmodel import fusion_plan
from tilecraft.passes import fold_unit_dims, fusion


class ConvBNReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        return F.relu6(self.bn(self.conv(x)))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(64)

    def forward(self, x):
        return torch.softmax(self.ln(x) * 2.0, dim=-1) + x


def _imported(model, *inputs):
    torch.manual_seed(0)
    model = model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return frontend.import_module(model, inputs, spec="<test>")


MLP = lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.GELU())  # noqa: E731


def test_fusion_decision_json_round_trip():
    d = fusion.FusionDecision(7, (6, 5, 1), (32, 0), (8, 0))
    assert fusion.FusionDecision.from_json(d.to_json()) == d
    r = fusion.FusionDecision(7, (6, 5, 1), (32, 0), (8, 32), registers=True)
    assert fusion.FusionDecision.from_json(r.to_json()) == r
    with pytest.raises(ValueError):
        fusion.FusionDecision.from_json('{"sink": 1}')


def test_candidates_are_legal_groups():
    imported = _imported(MLP(), torch.randn(16, 64))
    with imported.module.context:
        fusion.private_fills(imported.module)
        nodes = fusion.analyze(imported.module)
        cands = fusion.candidates(nodes)
    assert cands
    kinds = [{nodes[o].info.kind for o in g.ops} for g in cands]
    assert any("matmul" in k and "elementwise" in k for k in kinds)  # contraction + epilogue
    for g in cands:
        inside = set(g.ops)
        for m in g.members:  # a member's result feeds only the group
            assert all(u in inside for u in nodes[m].users)
        assert sum(nodes[o].info.kind in fusion.CONTRACTIONS for o in g.ops) <= 1
        assert any(g.tiles)


@pytest.mark.parametrize(
    "make,shape",
    [(MLP, (16, 64)), (ConvBNReLU, (1, 8, 16, 16)), (Norms, (32, 64))],
    ids=["linear-epilogue", "conv-bn-relu6", "layernorm-softmax"],
)
def test_every_candidate_group_fused_matches_eager(make, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model = make()
    base = _imported(model, x)
    with base.module.context:
        fusion.private_fills(base.module)
        cands = fusion.candidates(fusion.analyze(base.module))
    assert cands
    # the maximal groups (one per sink) and all of them pinned one at a time
    by_sink = {}
    for g in cands:
        if len(g.ops) > len(by_sink.get(g.sink, fusion.FusionDecision(0, (), ())).ops):
            by_sink[g.sink] = g
    for groups in [list(by_sink.values())[:1], *([g] for g in cands[:4])]:
        imported = _imported(model, x)
        compiled = driver.compile_model(imported, fusion=groups)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok, groups


def test_partition_is_a_set_partition_and_compiles(fake_cost_model):
    """The planner's partition (priced by the fake cost model: independent of the shipped
    one) covers every op once, predicts no worse than unfused, and compiles correctly when
    pinned."""
    from tilecraft.backends.cpu.target import Target

    target = Target.parse("cpu")
    torch.manual_seed(0)
    model, x = ConvBNReLU(), torch.randn(1, 8, 16, 16)
    imported = _imported(model, x)
    with imported.module.context:
        groups, report = fusion_plan.partition(imported.module, fake_cost_model, target)
    ops = [op for g in groups for op in g.ops]
    assert len(ops) == len(set(ops))
    assert groups and report["fused_s"] <= report["unfused_s"] + 1e-12
    compiled = driver.compile_model(_imported(model, x), fusion=groups)
    assert compiled.fusion == groups and driver.compare(compiled.fn(x), model(x)).ok


def test_fused_epilogue_is_vectorized_inside_the_conv_tiles():
    torch.manual_seed(0)
    model, x = ConvBNReLU(), torch.randn(1, 8, 16, 16)
    # the direct convolution; the plan of the machine class the test was written on
    compiled = driver.compile_model(_imported(model, x), emit="tiled", im2col=False, target=reference_target())
    assert compiled.fusion and len(compiled.fusion[0].ops) >= 5  # conv + fill + the batch-norm + relu6 chain
    text = compiled.text
    assert "scf.for" in text and "vector.transfer_read" in text
    assert text.count("linalg.generic") == 0  # every fused elementwise op became vector code


def test_matmul_epilogue_consumes_its_accumulator_in_registers():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 128), nn.GELU()).eval(), torch.randn(32, 64)
    imported = _imported(model, x)
    with imported.module.context:
        fusion.private_fills(imported.module)
        nodes = fusion.analyze(imported.module)
        group = max(fusion.candidates(nodes), key=lambda g: len(g.ops))
    assert group.registers and group.inner == (8, 32)  # one accumulator tile of the matmul
    compiled = driver.compile_model(_imported(model, x), fusion=[group])
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
    text = driver.compile_model(_imported(model, x), fusion=[group], emit="vector").text
    assert "iter_args" in text and "-> (vector<8x32xf32>)" in text  # the k loop carries registers
    assert text.count("memref.alloc") == 1 and "linalg.copy" not in text  # only the result is stored


def test_dataflow_graph_follows_tensors():
    import networkx as nx

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    imported = frontend.import_module(model, (torch.randn(4, 16),), spec="<test>")
    with imported.module.context:
        g = fusion.dataflow_graph(imported.module)
    assert nx.is_directed_acyclic_graph(g) and g.number_of_edges() >= g.number_of_nodes() - 2
    kinds = [g.nodes[n]["info"].kind for n in nx.topological_sort(g)]
    assert kinds.count("matmul") == 2


def test_explain_command(tmp_path, capsys):
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    assert cli.main(["explain", "mlp", "--json", str(out_json), "--png", str(out_png)]) == 0
    text = capsys.readouterr().out
    assert "chosen schedule" in text and "runner-up" in text and "best alternative" in text
    doc = json.loads(out_json.read_text())
    assert doc["kernels"] and doc["edges"] and "predicted_unfused_ms" in doc
    fused = [k for k in doc["kernels"] if len(k["ops"]) > 1]
    assert fused and all(k["alternatives"] and k["fusion"] != "-" for k in fused)
    assert out_png.stat().st_size > 1000


def test_explain_shows_each_kernels_thread_split(tmp_path, capsys):
    """`explain --threads 2` plans as `compile --threads 2` does: the split of each kernel
    (its chunks and the loop cut) is a column of the table and a field of the JSON."""
    out_json = tmp_path / "e.json"
    assert cli.main(["explain", "conv_autoencoder", "--threads", "2", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "2 threads" in text and "split" in text and re.search(r"\b2 x d[0-9]\b", text)
    doc = json.loads(out_json.read_text())
    splits = [k["split"] for k in doc["kernels"] if k["split"] is not None]
    assert doc["threads"] == 2 and splits and all(s["chunks"] == 2 for s in splits)
    assert cli.main(["explain", "mlp", "--threads", "1", "--json", str(out_json)]) == 0
    assert all(k["split"] is None for k in json.loads(out_json.read_text())["kernels"])
    assert "split" not in capsys.readouterr().out


def test_measured_tap_chain_reads_its_taps_from_one_input():
    """`explain --measure` outlines a group with the views it reads through: a tap chain
    takes the padded input once and slices its taps in the function, as in the model
    (one argument per tap ran a 64-channel 56² chain at 4.1 ms instead of 2.2)."""
    from torch_mlir import ir

    from tilecraft import explain
    from tilecraft.backends.cpu.target import Target
    from tilecraft.corpus.zoo import BasicBlock

    torch.manual_seed(0)
    model, x = BasicBlock(16, 16, 1).eval(), torch.randn(1, 16, 28, 28)
    imported = frontend.import_module(model, (x,), spec="<test>")
    target = Target.parse("cpu")
    with imported.module.context:
        driver.convolutions_as_gemms(imported, fusing=True)
        groups, _ = fusion_plan.partition(imported.module, driver.load_cost_model("lightgbm", target), target)
        nodes = fusion.analyze(imported.module)
        state = ir.AsmState(imported.module.operation)
        chain = next(g for g in groups if sum(nodes[o].info.kind == "matmul" for o in g.ops) == 9)
        per_tap = fusion.outline_group(nodes, chain.ops, state)
        as_run = fusion.outline_group(nodes, chain.ops, state, views=True)
    head = lambda text: text.split("{")[0]  # noqa: E731  (the signature)
    assert head(as_run).count("%arg") < head(per_tap).count("%arg") - 8  # 9 taps → 1 input
    assert as_run.count("tensor.extract_slice") >= 9
    assert explain.measure_group(as_run, chain, target) is not None  # checked against loops


def test_explain_measure_sums_its_kernels():
    """`explain --measure` reports the measured kernels' sum and the part in kernels with a
    contraction (what `bench/fusion_ceiling.py` bounds fusion's gain by)."""
    from tilecraft import explain

    r = explain.explain("mlp", measure=True)
    measured = [k["measured_ms"] for k in r["kernels"] if k.get("measured_ms") is not None]
    assert measured and r["unmeasured_kernels"] == len(r["kernels"]) - len(measured)
    assert r["measured_total_ms"] == pytest.approx(sum(measured))
    assert 0 < r["measured_contraction_ms"] <= r["measured_total_ms"]  # every mlp kernel holds its GEMM
    assert "measured total:" in explain.format_table(r)


def test_explain_measures_split_kernels_on_their_threads(monkeypatch):
    """With `--threads 2 --measure`, a kernel the plan splits is measured compiled for two
    threads (it was measured on one: the column did not show the split)."""
    from tilecraft import driver, explain

    seen = []
    compile_model = driver.compile_model

    def spy(*args, **kw):
        if "fusion" in kw:  # (a measured kernel's compile; not the naive reference's)
            seen.append(kw.get("threads", 1))
        return compile_model(*args, **kw)

    monkeypatch.setattr(driver, "compile_model", spy)
    r = explain.explain("mlp", measure=True, threads=2)
    split = [k for k in r["kernels"] if k["split"] is not None]
    assert split and all(k.get("measured_ms") is not None for k in split)
    assert len(seen) >= len(split) and set(seen) == {2}


class SiLUMul(nn.Module):
    def forward(self, x, y):
        return F.silu(x) * y + x


def test_light_groups_are_priced_on_the_unfused_scale():
    """A group of elementwise ops costs its ops' unfused predictions scaled by the ratio of
    rooflines: never more than unfused, and the whole chain (one read of x and y, one
    write) is the cheapest partition."""
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel import model as cm

    target = Target.parse("cpu")
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    imported = frontend.import_module(SiLUMul(), (x, y), spec="<test>")
    with imported.module.context:
        groups, report = fusion_plan.partition(imported.module, cm.create("lightgbm", target), target)
        nodes = fusion.analyze(imported.module)
    singles = report["singles"]
    assert all(cost > 0 for _, cost in report["candidates"])
    assert [set(g.ops) for g in groups] == [set(nodes)]
    assert report["fused_s"] < 0.8 * sum(singles[o] for o in nodes)
    compiled = driver.compile_model(frontend.import_module(SiLUMul(), (x, y), spec="<test>"))
    assert driver.compare(compiled.fn(x, y), SiLUMul()(x, y)).ok


def test_light_groups_take_register_tiles_that_do_not_spill():
    """A group of elementwise ops computes about LIGHT_BUDGET elements per tile (8 zmm per
    value), not the whole vector budget: 64 registers per value spilled."""
    x, y = torch.randn(256, 1024), torch.randn(256, 1024)
    imported = frontend.import_module(SiLUMul(), (x, y), spec="<test>")
    compiled = driver.compile_model(imported, target=reference_target())  # (half the tile on AVX2)
    (group,) = compiled.fusion
    assert group.tiles == (1, fusion.LIGHT_BUDGET) and fusion.LIGHT_BUDGET <= 256
    assert driver.compare(compiled.fn(x, y), SiLUMul()(x, y)).ok


def test_buffer_copies_are_dropped_or_vectorized():
    """Bufferization's copies of fused tiles onto themselves are erased and the rest become
    vector code: no scalar `linalg.copy` loop nest reaches the LLVM stage."""
    from tilecraft.backends.cpu import lowering

    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(16, 64)
    compiled = driver.compile_model(_imported(model, x), emit="vector")
    assert compiled.fusion and "linalg.copy" not in compiled.text
    with torch.no_grad():
        assert driver.compare(driver.compile_model(_imported(model, x)).fn(x), model(x)).ok
    assert lowering.COPY_ID  # copies that remain are tagged, tiled and vectorized by `lower_vectors_script`


def test_small_conv_group_is_split_along_rows():
    """A convolution whose whole output is one cache tile is split along its rows (its
    output channels stay whole for its register tiles), to have a loop to fuse into."""
    imported = _imported(ConvBNReLU(), torch.randn(1, 8, 16, 16))
    with imported.module.context:
        fusion.private_fills(imported.module)
        nodes = fusion.analyze(imported.module)
        conv_groups = [g for g in fusion.candidates(nodes) if any(nodes[o].info.kind == "conv2d" for o in g.ops)]
    assert conv_groups
    for g in conv_groups:
        assert g.tiles == (0, 0, 8, 0)


def test_transposed_epilogue_gets_two_dimensional_register_tiles():
    """An im2col GEMM's [N, OH, OW, F] result read as NCHW by its batch norm: register tiles
    of 16 channels by a run of columns, not single elements."""
    torch.manual_seed(0)
    model = ConvBNReLU()
    model.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    x = torch.randn(1, 16, 16, 16)
    compiled = driver.compile_model(_imported(model, x), target=reference_target())  # im2col: C = 16 (8 on AVX2)
    light = [g for g in compiled.fusion if not g.registers]  # (the GEMM and its fill: registers)
    assert light and all(len(g.tiles) == 3 for g in light)  # [F, OH, OW]: N = 1 is folded away
    assert light and all(g.tiles[-3] in (0, 16) for g in light)
    assert any(g.tiles[-1] > 1 for g in light)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model.eval()(x)).ok


def test_layer_norm_is_one_kernel_over_folded_rows():
    """[1, S, D] layer norm: unit dims folded (rows reduce into [S], not [S, 1]), the whole
    two-pass chain (16 ops, its f64 variance) one group by its closure, tiled by rows. (At
    [1, 32, 64] the model prices a split in two 0.4% lower, and measured both run 5.0 us:
    an unscaled HiGHS objective used to stop at the single group there.)"""
    model = nn.LayerNorm(256)
    x = torch.randn(1, 128, 256)
    imported = _imported(model, x)
    with imported.module.context:
        fold_unit_dims.fold_unit_dims(imported.module)
        assert "x1xf" not in str(imported.module)  # no [S, 1] keepdim rows left
        fusion.private_fills(imported.module)
        nodes = fusion.analyze(imported.module)
        work = {op for op, n in nodes.items() if n.info.name != "linalg.fill"}
        closures = [g for g in fusion.candidates(nodes) if work <= set(g.ops)]
        assert closures and closures[0].tiles[0] >= 1 and closures[0].tiles[1] == 0
    compiled = driver.compile_model(_imported(model, x), target=reference_target())
    assert [len(g.ops) for g in compiled.fusion] == [len(nodes)]
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_matmul_and_its_fill_fuse_into_register_tiles():
    """A matmul with no epilogue to take (an im2col GEMM, whose epilogue reads it through a
    reshape) still zeroes its accumulator in registers: {matmul, fill} is one group."""
    torch.manual_seed(0)
    model = ConvBNReLU()
    model.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    x = torch.randn(1, 16, 16, 16)
    compiled = driver.compile_model(_imported(model, x))
    assert [g for g in compiled.fusion if g.registers and len(g.ops) == 2]
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model.eval()(x)).ok


class BatchedProducts(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("u", torch.randn(16, 64, 64))

    def forward(self, v):
        return torch.bmm(v, self.u)


def test_a_contraction_and_its_fill_alone_cost_the_contraction():
    """A batched matmul whose result nothing else reads in its tiles (Winograd's products)
    costs, fused with its zero fill in registers, its own unfused prediction: the fill is
    then free, so {matmul, fill} is the partition's pick over a fill as a kernel of its
    own (a memset over the result)."""
    from tilecraft.backends.cpu.target import Target
    from tilecraft.costmodel import model as cm

    target = Target.parse("cpu")
    v = torch.randn(16, 784, 64)
    imported = frontend.import_module(BatchedProducts(), (v,), spec="<test>")
    with imported.module.context:
        groups, report = fusion_plan.partition(imported.module, cm.create("lightgbm", target), target)
        nodes = fusion.analyze(imported.module)
    (bmm,) = [op for op, n in nodes.items() if n.info.kind == "batch_matmul"]
    (group,) = groups
    fills = {p for p in nodes[bmm].producers.values() if fusion.is_fill(nodes[p])}
    assert group.registers and fills and set(group.ops) == {bmm} | fills
    (cost,) = [c for g, c in report["candidates"] if g == group]
    assert cost == pytest.approx(report["singles"][bmm])


def test_unit_dims_are_kept_beside_named_convolutions():
    """A depthwise convolution's [1, C, H, W] result keeps its batch dim in its epilogue
    (folding it would put a reshape between the two), so they still fuse."""
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
    x = torch.randn(1, 16, 16, 16)
    imported = _imported(model, x)
    before = str(imported.module)
    with imported.module.context:
        fold_unit_dims.fold_unit_dims(imported.module)
    assert str(imported.module) == before
    compiled = driver.compile_model(_imported(model, x), target=reference_target())
    assert any(len(g.ops) > 3 for g in compiled.fusion)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model.eval()(x)).ok
