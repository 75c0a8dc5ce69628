"""The compile cache (`compiler/cache.py`) as `tilecraft run` uses it: a miss compiles and
stores, a hit loads and is still checked against eager, `--no-cache` compiles afresh, a
damaged entry recompiles, and a changed option or weight misses."""

from __future__ import annotations

import os

import pytest
import torch

from tilecraft import cache, cli, driver, frontend

TINY = """
import torch


def factory():
    torch.manual_seed({seed})
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    return model, (torch.randn(4, 16),)
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> str:
    path = str(tmp_path / "cache")
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", path)
    return path


@pytest.fixture
def spec(tmp_path, cache_dir) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(TINY.format(seed=0))
    return f"{path}:factory"


def run(spec: str, **options) -> driver.RunReport:
    return driver.run_and_check(spec, budget=0.01, cache=True, **options)


def compile_time_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("compile time"))


def test_miss_then_hit_runs_the_same_code(spec, cache_dir):
    miss = run(spec)
    assert miss.cache == "cache miss, stored" and miss.comparison.ok
    [entry] = cache.CompileCache().entries()
    assert os.path.dirname(entry) == cache_dir
    assert sorted(os.listdir(entry)) == [cache.META, cache.LIBRARY, cache.PARAMS]

    hit = run(spec)
    assert hit.cache.startswith("cache hit") and hit.comparison.ok
    assert hit.comparison == miss.comparison  # the same errors against the same eager outputs
    assert hit.schedules == miss.schedules
    assert "compile time" in hit.table() and "(cache hit" in hit.table() and "import time" in hit.table()

    imported = frontend.import_spec(spec)
    fresh = driver.compile_model(imported).fn(*imported.inputs)  # the JIT, no cache
    cached = cache.CompileCache().load(os.path.basename(entry)).fn(*imported.inputs)
    assert torch.equal(cached, fresh)
    torch.testing.assert_close(cached, imported.reference(), rtol=driver.RTOL, atol=driver.ATOL)


def test_no_cache_neither_reads_nor_writes(spec, capsys):
    assert cli.main(["run", spec, "--no-cache"]) == 0
    assert "cache" not in compile_time_line(capsys.readouterr().out)
    assert cache.CompileCache().entries() == []

    assert run(spec).cache == "cache miss, stored"  # (1 thread)
    assert cli.main(["run", spec, "--no-cache", "--threads", "1"]) == 0
    assert "cache" not in compile_time_line(capsys.readouterr().out)
    assert cli.main(["run", spec, "--threads", "1"]) == 0
    assert "(cache hit" in compile_time_line(capsys.readouterr().out)
    assert cli.main(["run", spec, "--threads", "2"]) == 0  # code for another thread count: its own entry
    assert "(cache miss" in compile_time_line(capsys.readouterr().out)


@pytest.mark.parametrize("damaged", [cache.LIBRARY, cache.PARAMS, cache.META])
def test_damaged_entry_recompiles(spec, damaged):
    run(spec)
    [entry] = cache.CompileCache().entries()
    path = os.path.join(entry, damaged)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)

    again = run(spec)
    assert again.cache == "cache miss, stored" and again.comparison.ok
    assert run(spec).cache.startswith("cache hit")


def test_changed_option_or_weights_miss(spec, tmp_path):
    run(spec)
    assert run(spec, cost_model="analytical").cache == "cache miss, stored"
    assert run(spec, target="cpu{l2_bytes=262144}").cache == "cache miss, stored"
    other = tmp_path / "other.py"
    other.write_text(TINY.format(seed=1))  # the same IR, other weights
    assert run(f"{other}:factory").cache == "cache miss, stored"
    assert len(cache.CompileCache().entries()) == 4
    assert run(spec, target="cpu{l2_bytes=262144}").cache.startswith("cache hit")


def test_low_precision_is_not_cached(spec):
    report = run(spec, precision="bf16")
    assert report.cache == "not cached: --precision bf16"
    assert cache.CompileCache().entries() == []


def test_key_covers_module_weights_options_and_tools(monkeypatch):
    def key(text, params, options):
        return cache.key(cache.key_parts(text, params, options))

    w = [torch.ones(2, 3)]
    base = key("module", w, {"fuse": True})
    assert key("module", [torch.ones(2, 3)], {"fuse": True}) == base
    assert key("module'", w, {"fuse": True}) != base
    assert key("module", [torch.full((2, 3), 2.0)], {"fuse": True}) != base
    assert key("module", [torch.ones(3, 2)], {"fuse": True}) != base  # same bytes, other shape
    assert key("module", w, {"fuse": False}) != base
    versions = cache.tool_versions()
    monkeypatch.setattr(cache, "tool_versions", lambda: {**versions, "tilecraft-sources": "edited"})
    assert key("module", w, {"fuse": True}) != base


def test_unwritable_cache_still_runs(tmp_path, monkeypatch, spec):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TILECRAFT_CACHE_DIR", str(tmp_path / "file" / "cache"))
    report = run(spec)
    assert report.cache.startswith("cache miss, not stored") and report.comparison.ok


def test_info_and_clear(spec, cache_dir, capsys):
    run(spec)
    os.makedirs(os.path.join(cache_dir, ".tmp-killed"))  # a store a killed process left
    with open(os.path.join(cache_dir, "notes.txt"), "w") as f:  # not the cache's: kept
        f.write("mine")
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"location  {cache_dir}" in out and "entries   1" in out

    assert cli.main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries" in out and ".tmp-killed" in out
    assert sorted(os.listdir(cache_dir)) == ["notes.txt"]
    assert run(spec).cache == "cache miss, stored"
