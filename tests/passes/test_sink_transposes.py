"""Channels-last between convolutions (`passes/sink_transposes.py`): transposes sunk through the
elementwise ops between two convolutions and cancelled; a tap chain's slice sunk below its
epilogue; the result matches eager, fused or not."""

import pytest
import torch

from tilecraft import driver, frontend
from tilecraft.corpus.zoo import BasicBlock
from tilecraft.dialects.irutil import entry_func
from tilecraft.passes import sink_transposes as layout


def _block_pair(c: int, hw: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(BasicBlock(c, c, 1), BasicBlock(c, c, 1)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(1, c, hw, hw)


def _transposes(module) -> int:
    body = entry_func(module).regions[0].blocks[0]
    return sum(1 for op in body.operations if layout.transpose_of(op.operation) is not None)


def test_transposes_between_convolutions_cancel():
    model, x = _block_pair(16, 28)
    with_layout = frontend.import_module(model, (x,), spec="<test>")
    before = frontend.import_module(model, (x,), spec="<test>")
    with before.module.context:
        driver.convolutions_as_gemms(before, fusing=True, layout=False)
    with with_layout.module.context:
        driver.convolutions_as_gemms(with_layout, fusing=True)
    # 4 convolutions: each transposed its input in and its result out (8). Now: the
    # pair's input in; the last convolution's result out (nothing below it wants NHWC);
    # and the first block's result out, once, for the second block's residual add
    assert _transposes(before.module) == 8
    assert _transposes(with_layout.module) == 3
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok


def test_chain_epilogue_joins_the_chain_in_registers():
    """The tap chain's wrapped-around columns are sliced off after its batch norm and
    ReLU, so fusion makes chain + epilogue one kernel, accumulators in registers."""
    model, x = _block_pair(16, 28)
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    # (9 taps, the fill and the epilogue: the batch norm folded into the taps' weights, its shift, the ReLU)
    chains = [d for d in compiled.fusion if d.registers and len(d.members) >= 10]
    assert len(chains) == 3  # all but the last (its epilogue ends in the NCHW result)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


@pytest.mark.parametrize("pool", [True, False])
def test_a_transpose_with_no_inverse_below_stays_put(pool):
    """Into a pooling (or the result), sinking would only move the transpose out of the
    epilogue that reads it vectorized: it stays, and the epilogue with it."""
    torch.manual_seed(0)
    tail = [torch.nn.MaxPool2d(2)] if pool else []
    model = torch.nn.Sequential(
        torch.nn.Conv2d(16, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), *tail
    ).eval()
    x = torch.randn(1, 16, 28, 28)
    imported = frontend.import_module(model, (x,), spec="<test>")
    with imported.module.context:
        from tilecraft.passes import im2col

        imported.params, _ = im2col.rewrite(imported.module, imported.params, thin=True)
        assert layout.sink_transposes(imported.module) == 0
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"))
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


def test_max_pooling_between_convolutions_runs_on_nhwc():
    """A stem into a max pooling into a basic block: the pooling is restated on NHWC (the
    max of its window's strided slices), so its transpose sinks below it and cancels
    against the block's; the -inf padding survives the move."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 7, 2, 3, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2, 1),
        BasicBlock(16, 16, 1),
    ).eval()
    x = torch.randn(1, 3, 56, 56) - 2.0  # mostly negative: a zero-padded pooling would differ
    counts = {}
    for poolings in ((), layout.POOLINGS):
        imported = frontend.import_module(model, (x,), spec="<test>")
        saved, layout.POOLINGS = layout.POOLINGS, poolings
        try:
            with imported.module.context:
                driver.convolutions_as_gemms(imported, fusing=True)
        finally:
            layout.POOLINGS = saved
        text = str(imported.module)
        counts[bool(poolings)] = (_transposes(imported.module), "pooling_nchw_max" in text)
    # NCHW pooling: the input's, the stem's result into the pooling, the block's result.
    # NHWC: the stem's result no longer goes back to NCHW, and no named pooling is left
    assert counts == {False: (3, True), True: (2, False)}
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok


def test_a_read_through_the_inverse_permutation_takes_the_source():
    """A downsampling block: its second convolution's batch norm ran on NCHW while the
    residual add (restated on NHWC for the shortcut) read it through the inverse
    permutation. The transpose now sinks below the batch norm, the add reads its NHWC
    result through the identity, and GEMM, batch norm, add and ReLU are one kernel with
    its accumulators in registers."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 16, 56, 56)
    transposes, in_registers = {}, {}
    for fold in (False, True):
        sink = layout.SinkTransposesPass(through_inverse=fold)
        imported = frontend.import_module(model, (x,), spec="<test>")
        for p in driver.canonical_passes(fusing=True):
            imported.params[:] = (sink if p.name == sink.name else p).run(imported.module, imported.params)
        transposes[fold] = _transposes(imported.module)
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), replace=[sink])
        in_registers[fold] = sum(len(d.members) for d in compiled.fusion if d.registers)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok
    assert transposes == {False: 5, True: 4}
    assert in_registers[True] > in_registers[False]
    compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=False)
    with torch.no_grad():
        assert driver.compare(compiled.fn(x), model(x)).ok


class _Decoder(torch.nn.Module):
    """A U-Net step: biased convolutions, a nearest upsampling and a skip concatenation
    between them, every tensor read by a later 3x3 convolution."""

    def __init__(self, c: int):
        super().__init__()
        self.down = torch.nn.Conv2d(c, 2 * c, 3, 2, 1)
        self.mid = torch.nn.Conv2d(2 * c, c, 3, 1, 1)
        self.out = torch.nn.Conv2d(2 * c, c, 3, 1, 1)

    def forward(self, x):
        z = torch.relu(self.down(x))
        y = torch.relu(self.mid(torch.nn.functional.interpolate(z, scale_factor=2.0, mode="nearest")))
        return self.out(torch.cat([y, x], 1))


def test_upsampling_and_concatenation_between_convolutions_run_on_nhwc(monkeypatch):
    """A biased convolution's result is transposed, then its bias added (not one
    transposing add), so the transpose sinks; a nearest upsampling (an index gather) and a
    channel concatenation are restated on NHWC. Left: the input's two transposes, into the
    first convolution and (only its channels) into the concatenation; the last
    convolution's is folded back into its bias add, which writes the NCHW result."""
    torch.manual_seed(0)
    model = _Decoder(16).eval()
    x = torch.relu(torch.randn(1, 16, 32, 32))  # (the skip input reads the NCHW input)
    from tilecraft.passes import subpixel

    monkeypatch.setattr(subpixel, "ENABLED", False)  # (the upsampling stays, for the layout pass to restate)
    counts = {}
    for on in (False, True):
        monkeypatch.setattr(layout, "GATHERS_AND_CONCATS", on)
        imported = frontend.import_module(model, (x,), spec="<test>")
        with imported.module.context:
            driver.convolutions_as_gemms(imported, fusing=True)
        counts[on] = _transposes(imported.module)
        for fuse in (True, False):
            compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
            with torch.no_grad():
                assert driver.compare(compiled.fn(x), model(x)).ok
    assert counts[True] < counts[False]
    assert counts[True] == 2


class _CatSame(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(16, 16, 3, 1, 1)
        self.o = torch.nn.Conv2d(32, 16, 3, 1, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.o(torch.cat([y, y], 1))


def test_a_concatenation_of_one_tensor_twice_runs_on_nhwc():
    """Both inputs of the concatenation are one transpose: restated once, erased once (the
    second erase of the same op failed with an out-of-bounds block)."""
    torch.manual_seed(0)
    model, x = _CatSame().eval(), torch.randn(1, 16, 6, 6)
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok


class _CatUnbiased(torch.nn.Module):
    """Unbiased convolutions: their results are transposes read by the concatenations directly."""

    def __init__(self, two: bool):
        super().__init__()
        self.a = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.b = torch.nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.o = torch.nn.Conv2d(32, 16, 3, 1, 1)
        self.p = torch.nn.Conv2d(32, 16, 3, 1, 1) if two else None

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = self.o(torch.cat([a, b], 1))
        return y + self.p(torch.cat([b, a], 1)) if self.p is not None else y


@pytest.mark.parametrize("two", [False, True])
def test_concatenations_of_transposes_run_on_nhwc(two):
    """A concatenation restated on NHWC erases the transposes it read; one still on the
    work list is skipped, not read after its erasure (an out-of-bounds block)."""
    torch.manual_seed(0)
    model, x = _CatUnbiased(two).eval(), torch.randn(1, 16, 6, 6)
    for fuse in (True, False):
        compiled = driver.compile_model(frontend.import_module(model, (x,), spec="<test>"), fuse=fuse)
        with torch.no_grad():
            assert driver.compare(compiled.fn(x), model(x)).ok
