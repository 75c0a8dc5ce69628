"""Every zoo model compiles to PTX that ptxas accepts for sm_80 and sm_90 (no GPU needed),
with every launch's kernel in the cubin and its resources reported."""

from __future__ import annotations

import pytest

from tilecraft import gpu_driver
from tilecraft.backends.gpu import ptx
from tilecraft.backends.gpu.target import GpuTarget
from tilecraft.corpus import zoo

pytestmark = pytest.mark.skipif(ptx.available() is not None, reason="the gpu extra (triton) is not installed")


# (the two slowest, 38-48 s each on a 2-core Zen 3, run outside CI: the suite's 15 minutes)
_SLOW_PTX = {"bert_mini", "resnet18"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_PTX else n for n in zoo.ZOO])
def test_zoo_model_to_ptx_for_sm80_and_sm90(name):
    c = gpu_driver.compile_gpu(name, target="gpu{arch=sm_90}", emit="ptx")
    assert ".target sm_90" in c.text
    names = {launch.kernel for launch in c.plan.launches}
    assert names <= set(c.resources), names - set(c.resources)
    assert all(c.resources[n].registers > 0 for n in names)
    assert len(c.launches) == len(c.plan.launches) and all(r.predicted_us > 0 for r in c.launches)
    t80 = GpuTarget(arch="sm_80")
    code = ptx.to_ptx(c.kernels_mlir, arch=t80.arch, features=t80.ptx_features)
    assert ".target sm_80" in code
    cubin, resources = ptx.assemble(code, arch="sm_80")
    assert cubin[:4] == b"\x7fELF" and names <= set(resources)
