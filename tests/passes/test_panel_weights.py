"""Large matmul weights stored as column panels (`passes/panel_weights.py`): which matmuls
are rewritten, the weight's new layout, the epilogue read through the panels' transpose,
and the compiled model against eager at 1 and 2 threads."""

import pytest
import torch

from conftest import reference_target
from tilecraft import driver, frontend
from tilecraft.passes import panel_weights


def _imported(model, x):
    return frontend.import_module(model.eval(), (x,), spec="<test>")


class Mlp(torch.nn.Module):
    """x @ W (+ bias) (+ a residual) → ReLU: a GEMM and an elementwise epilogue."""

    def __init__(self, k, n, bias=True, residual=False):
        super().__init__()
        self.fc = torch.nn.Linear(k, n, bias=bias)
        self.residual = residual

    def forward(self, x, r=None):
        y = self.fc(x)
        if self.residual:
            y = y + r
        return torch.relu(y)


def test_a_large_weight_is_stored_as_panels_and_read_by_a_batched_matmul():
    torch.manual_seed(0)
    k, n = 512, 1024  # 2 MB of weight
    model, x = Mlp(k, n), torch.randn(16, k)
    imported = _imported(model, x)
    before = [p.clone() for p in imported.params]
    with imported.module.context:
        params, done = panel_weights.panel_weights(imported.module, imported.params)
    assert done == 1
    (w,) = [p for p in params if tuple(p.shape) == (n // 32, k, 32)]
    (orig,) = [p for p in before if tuple(p.shape) == (k, n)]
    assert torch.equal(w[3, 7], orig[7, 96:128])  # Bp[j, k, p] = B[k, 32j + p]
    text = str(imported.module)
    assert "linalg.batch_matmul" in text and "linalg.matmul" not in text
    assert "affine_map<(d0, d1, d2, d3) -> (d1, d3)>" in text  # A broadcast over the panels
    # the bias and ReLU read the panels' result transposed: no copy of their own
    assert "(d0, d1, d2) -> (d1, d0, d2)" in text
    assert "linalg.yield %in : f32" not in text  # (the transpose's body)


@pytest.mark.parametrize(
    "k, n, m, why",
    [
        (128, 256, 16, "small: stays in cache"),
        (1024, 512, 512, "A too large: read again for every panel"),
        (4608, 1024, 49, "weight too large (18 MB): not measured"),
        (1024, 1000, 16, "columns not whole panels"),
        (1024, 1024, 1, "one row: streams whole rows already"),
        (1024, 1024, 17, "split-ragged would leave a one-row rest (16 + 1)"),
    ],
)
def test_matmuls_left_as_they_are(k, n, m, why):
    torch.manual_seed(0)
    model, x = Mlp(k, n), torch.randn(m, k)
    imported = _imported(model, x)
    with imported.module.context:
        _, done = panel_weights.panel_weights(imported.module, imported.params)
    assert done == 0, why


def test_off_means_untouched(monkeypatch):
    monkeypatch.setattr(panel_weights, "ENABLED", False)
    model, x = Mlp(512, 1024), torch.randn(16, 512)
    imported = _imported(model, x)
    with imported.module.context:
        _, done = panel_weights.panel_weights(imported.module, imported.params)
    assert done == 0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias, residual", [(True, False), (False, True), (False, False)])
def test_panelled_layers_match_eager(threads, bias, residual):
    torch.manual_seed(0)
    k, n, m = 512, 768, 48
    model = Mlp(k, n, bias=bias, residual=residual).eval()
    inputs = (torch.randn(m, k), torch.randn(m, n)) if residual else (torch.randn(m, k),)
    compiled = driver.compile_model(frontend.import_module(model, inputs, spec="<test>"), threads=threads)
    assert any(p.name == "panel-weights" for p in compiled.passes)
    assert "linalg.batch_matmul" in str(compiled.imported.module) or compiled.fn is not None
    with torch.no_grad():
        assert driver.compare(compiled.fn(*inputs), model(*inputs)).ok


def test_a_bare_matmul_keeps_the_transpose_and_matches_eager():
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1024, 512) / 32)

        def forward(self, x):
            return x @ self.w

    torch.manual_seed(0)
    model, x = Bare().eval(), torch.randn(24, 1024)
    imported = _imported(model, x)
    with imported.module.context:
        _, done = panel_weights.panel_weights(imported.module, imported.params)
    assert done == 1 and "(d0, d1, d2) -> (d1, d0, d2)" in str(imported.module)
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize("threads", [1, 2])
def test_a_pointwise_convolution_block_reads_its_panels_in_its_batch_norm(threads, monkeypatch):
    """An inverted residual's 1×1 convolutions (MobileNet-V2 at 7×7) as panelled GEMMs:
    their NHWC batch norms join the panels' read once the reshapes are sunk
    (`panel-epilogues`), and the block matches eager."""
    from torch import nn

    monkeypatch.setattr(panel_weights, "MIN_BYTES", 1 << 14)
    absorbed = []
    run = panel_weights.absorb_epilogues
    monkeypatch.setattr(panel_weights, "absorb_epilogues", lambda m: absorbed.append(run(m)) or absorbed[-1])
    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv2d(64, 384, 1, bias=False), nn.BatchNorm2d(384), nn.ReLU6(),
        nn.Conv2d(384, 384, 3, 1, 1, groups=384, bias=False), nn.BatchNorm2d(384), nn.ReLU6(),
        nn.Conv2d(384, 64, 1, bias=False), nn.BatchNorm2d(64),
    ).eval()  # fmt: skip
    for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 64, 7, 7)
    compiled = driver.compile_model(frontend.import_module(block, (x,), spec="<test>"), threads=threads)
    assert absorbed[-1] >= 1  # (panel-epilogues: the batch norm and ReLU6 behind the NHWC reshape)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), block(x)).ok


def test_a_reshape_into_heads_after_a_panelled_matmul_is_not_taken_for_its_epilogue():
    """`fc(x).reshape(-1, 32) * s`: the collapse behind the panels' transpose makes
    [M·J, 32], not [M, N]; the op reading it stays as it is (it had been restated with the
    panels' grouping: IR that did not verify)."""

    class Heads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(512, 512, bias=False)
            self.s = torch.nn.Parameter(torch.randn(32))

        def forward(self, x):
            return self.fc(x).reshape(-1, 32) * self.s

    torch.manual_seed(0)
    model, x = Heads().eval(), torch.randn(16, 512)
    compiled = driver.compile_model(_imported(model, x))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize("threads", [1, 2])
def test_panels_larger_than_l2_run_k_in_chunks_and_match_eager(threads):
    """ResNet-18's layer-4 GEMM (49×4608 @ 4608×512, 9.4 MB of weight, beyond L2): its
    panels' group keeps the accumulators in memory across K chunks (`registers` off, the
    chunk in the batched matmul's own cache tile), and the epilogue matches eager."""
    from tilecraft.passes import fusion

    torch.manual_seed(0)
    model, x = Mlp(4608, 512, residual=True).eval(), (torch.randn(49, 4608), torch.randn(49, 512))
    compiled = driver.compile_model(
        frontend.import_module(model, x, spec="<test>"), threads=threads, target=reference_target()
    )
    (group,) = [g for g in compiled.fusion if len(g.tiles) == 3]  # (m, panel, p)
    assert not group.registers
    (bmm,) = [c for c in compiled.choices if c.kernel.name == "linalg.batch_matmul"]
    assert bmm.decision.tiles[0][-1] < 4608  # K in chunks
    with torch.no_grad():
        assert driver.compare(compiled.fn(*x), model(*x)).ok
    assert fusion.CHUNK_STREAMED_PANELS


def test_a_panelled_matmul_tiled_whole_in_its_group_runs_as_fmas():
    """A batched matmul over panels whose cache tile is the group's whole tile (no loop of
    its own: here K = 1152 in one chunk, after interchanging k outside the columns) is
    restated as a matmul in a one-trip loop; left batched, it vectorized to one scalar
    reduction per element (ResNet-18's 196×1152 @ 1152×256 layer ran at half speed)."""
    import dataclasses

    from tilecraft.backends.cpu.schedule import TileDecision

    torch.manual_seed(0)
    model, x = Mlp(1152, 256).eval(), torch.randn(49, 1152)
    plain = driver.compile_model(_imported(model, x), emit="decided")
    groups = [dataclasses.replace(g, registers=False) if len(g.tiles) == 3 else g for g in plain.fusion]
    (key,) = {c.kernel.key for c in plain.choices if c.kernel.name == "linalg.batch_matmul"} or {None}
    if key is None:  # (fused in registers: its kernel is planned with the unfused group)
        chunked = driver.compile_model(_imported(model, x), emit="decided", fusion=groups, im2col=True)
        (key,) = {c.kernel.key for c in chunked.choices if c.kernel.name == "linalg.batch_matmul"}
    pinned = {key: TileDecision(tiles=((1, 49, 32, 1152), (1, 7, 32, 1)), interchange=(0, 1, 3, 2))}
    asm = driver.compile_model(_imported(model, x), emit="asm", fusion=groups, im2col=True, decisions=pinned)
    assert "vfmadd231ps" in asm.text
    compiled = driver.compile_model(_imported(model, x), fusion=groups, im2col=True, decisions=pinned)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok
