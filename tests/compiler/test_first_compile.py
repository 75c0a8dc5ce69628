"""What a process's first compile imports: neither lightgbm (scikit-learn, scipy.stats and
pandas come with it: 1.1-1.7 s) nor ml_dtypes (0.55 s) unless a model needs them, nor
scipy.optimize (0.23-0.44 s) where the fusion plan's set partition is solved without HiGHS
(docs/measurements.md, a process's first compile)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tilecraft import frontend

HEAVY = ("lightgbm", "sklearn", "pandas", "ml_dtypes", "scipy.optimize")


def test_a_first_compile_imports_none_of_the_heavy_modules():
    code = (
        "import sys, torch\n"
        "from tilecraft import driver, frontend\n"
        "m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))\n"
        "x = torch.randn(4, 32)\n"
        "c = driver.compile_model(frontend.import_module(m, (x,), spec='mlp'), threads=1)\n"
        "assert driver.compare(c.fn(x), m(x)).ok\n"
        f"print(sorted(n for n in {HEAVY!r} if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_importer_turns_bf16_literals_into_arrays_without_ml_dtypes_imported_first():
    code = (
        "import sys, torch\n"
        "from tilecraft import frontend\n"
        "mod = frontend._fx_importer()\n"
        "print('ml_dtypes' in sys.modules)\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(s):\n"
        "        super().__init__(); s.register_buffer('c', torch.arange(8, dtype=torch.bfloat16))\n"
        "    def forward(s, x): return x + s.c\n"
        "prog = torch.export.export(M(), (torch.ones(8, dtype=torch.bfloat16),))\n"
        "imp = mod.FxImporter(context=frontend.new_context())\n"
        "imp.import_frozen_program(prog)  # (the buffer becomes a bf16 literal)\n"
        "text = str(imp.module)\n"
        "print('ml_dtypes' in sys.modules, 'torch.vtensor.literal' in text and 'bf16' in text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True"]
    assert torch.float8_e4m3fn in frontend._fx_importer().TORCH_DTYPE_TO_NPY_TYPE


def test_the_collector_is_paused_while_tracing_and_restored_after():
    import gc

    from tilecraft import gcpause

    seen = []
    with gcpause.paused():
        with gcpause.paused():
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(RuntimeError):
        with gcpause.paused():
            raise RuntimeError("a failed trace")
    assert gc.isenabled()
    gc.disable()  # a caller's own choice stands
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    frontend.import_module(torch.nn.Linear(4, 2), (torch.randn(1, 4),), spec="linear")
    assert gc.isenabled()
