"""What a process's first compile imports: neither lightgbm (scikit-learn, scipy.stats and
pandas come with it: 1.1-1.7 s) nor ml_dtypes (0.55 s) unless a model needs them
(docs/measurements.md, compile time)."""

from __future__ import annotations

import subprocess
import sys

import torch

from tilecraft import frontend

HEAVY = ("lightgbm", "sklearn", "pandas", "ml_dtypes")


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


def test_a_graph_with_bf16_values_gives_the_importer_ml_dtypes():
    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.zeros(2, dtype=torch.bfloat16)
    g.output(x)
    assert torch.bfloat16 in frontend._graph_dtypes(g)
    mod = frontend._fx_importer(g)
    assert mod.ml_dtypes is not None
    assert mod.TORCH_DTYPE_TO_NPY_TYPE[torch.bfloat16] is mod.ml_dtypes.bfloat16
    assert frontend._fx_importer(torch.fx.Graph()) is mod  # (imported once)
