"""Compiled code's heap temporaries come from the module's own pool (`backends/cpu/pool.py`)."""

import json
import subprocess
import sys

import pytest

from tilecraft import driver

SCRIPT = r"""
import ctypes, gc, json, resource, torch
from tilecraft import driver, frontend
from tilecraft.backends.cpu import pool

ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD fixed low (OpenVINO leaves it so)

class M(torch.nn.Module):
    def forward(self, x):
        return (torch.relu(x @ x.T) * 2).sum(dim=0)  # a 2048x2048 temporary (16 MB)

x = torch.randn(2048, 512)
ref = M()(x)

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

def faults_per_call():
    c = driver.compile_model(frontend.import_module(M(), (x,), spec="<t>"))
    assert driver.compare(c.fn(x), ref).ok
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        c.fn(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

out = {"pooled": faults_per_call()}
rss = [rss_mb()]
for _ in range(4):  # modules compiled and dropped: their pools freed with them
    faults_per_call()
    gc.collect()
    rss.append(rss_mb())
out["rss_growth_mb"] = rss[-1] - rss[1]
pool.pool_allocations = lambda module, **_: 0
out["unpooled"] = faults_per_call()
print(json.dumps(out))
"""


@pytest.mark.slow  # (74 s on a 2-core Zen 3: outside CI, for the suite's 15 minutes)
def test_temporaries_do_not_fault_in_fresh_pages_and_pools_die_with_their_module():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["unpooled"] > 500, r  # (the check means something: each call maps its 16 MB anew)
    assert r["pooled"] < 20, r
    assert r["rss_growth_mb"] < 32, r  # three more pools kept would be 48 MB


def test_malloc_and_free_calls_go_through_the_pool():
    text = driver.compile_model("mlp", emit="llvm").text
    calls = [line for line in text.splitlines() if "llvm.call @malloc" in line or "llvm.call @free" in line]
    assert "llvm.call @__tc_pool_alloc" in text and "llvm.call @__tc_pool_free" in text
    assert len(calls) == 3  # only the pool's own: a miss, a full pool, the release at unload


def test_pooling_keeps_its_destructor_hides_its_functions_and_runs_once():
    from torch_mlir import ir

    from tilecraft import frontend
    from tilecraft.backends.cpu import pool

    text = """
    llvm.module_flags [#llvm.mlir.module_flag<error, "tc", 1 : i32>]
    llvm.func @malloc(i64) -> !llvm.ptr
    llvm.func @free(!llvm.ptr)
    llvm.func @f(%n: i64) {
      %p = llvm.call @malloc(%n) : (i64) -> !llvm.ptr
      llvm.call @free(%p) : (!llvm.ptr) -> ()
      llvm.return
    }"""
    module = ir.Module.parse(text, context=frontend.new_context())
    assert pool.pool_allocations(module) == 2
    assert pool.pool_allocations(module) == 0  # (a second call must not make the pool call itself)
    out = str(module)
    assert "llvm.mlir.global_dtors dtors = [@__tc_pool_release]" in out  # (beside an op without a name)
    assert "llvm.func hidden @__tc_pool_alloc" in out and out.count("llvm.call @__tc_pool_alloc") == 1
    assert out.count("llvm.call @malloc") == 1 and module.operation.verify()
