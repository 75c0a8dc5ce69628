"""Shared test helpers: compile a torch module or a zoo model and compare with eager."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore")
# LightGBM's OpenMP threads spin while they wait: on a busy 2-core machine the cost-model
# tests ran 20x slower. Set before anything imports lightgbm.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") and not os.environ.get("TILECRAFT_RUN_SLOW"):
        skip = pytest.mark.skip(reason="slow test: skipped in CI (set TILECRAFT_RUN_SLOW=1)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Tests (and the CLIs they start) use a compile cache of their own, not ~/.cache."""
    saved = os.environ.get("TILECRAFT_CACHE_DIR")
    os.environ["TILECRAFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
    if saved is None:
        os.environ.pop("TILECRAFT_CACHE_DIR", None)
    else:
        os.environ["TILECRAFT_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _private_model_dir(tmp_path, monkeypatch):
    """No test (nor the CLIs it starts) reads an adapted cost model installed in the user's
    home: each gets an empty model directory of its own (`costmodel/model.py`)."""
    monkeypatch.setenv("TILECRAFT_MODEL_DIR", str(tmp_path / "models"))


@pytest.fixture(scope="session")
def pg_server():
    """The URL of a PostgreSQL server's `postgres` database: the one `.ci/run` started
    (TILECRAFT_TEST_PG), else one started here when the binaries are installed."""
    url = os.environ.get("TILECRAFT_TEST_PG")
    if url:
        yield url
        return
    import pgserver

    if pgserver.binaries() is None:
        pytest.skip("no PostgreSQL server: install Debian's postgresql (.ci/run does)")
    url, workdir = pgserver.start()
    yield url
    pgserver.stop(workdir)


def _fresh_database(server_url: str) -> str:
    import uuid

    import psycopg

    name = f"corpus_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def corpus_location(request, tmp_path):
    """A fresh, empty corpus location on each engine: an SQLite path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "corpus.db")
    return _fresh_database(request.getfixturevalue("pg_server"))


class FakeCostModel:
    """A cost model for pass tests, so they do not change when the shipped model is
    retrained: untrained and deterministic. A kernel's latency is its roofline (flops at
    100 GFLOP/s, operand bytes at 10 GB/s); candidates rank in the order the legal space
    lists them (the heuristic default first), each 1% slower than the one before."""

    kind = "fake"

    def predict(self, kernel, decisions):
        import numpy as np

        from tilecraft.costmodel.model import Predictions

        base = max(kernel.flops / 1e11, kernel.bytes_moved / 1e10, 1e-9)
        latency = np.array([base * (1 + 0.01 * i) for i in range(len(decisions))])
        return Predictions(latency, np.full(len(decisions), 0.5), -latency)

    def update(self, records) -> None:
        pass

    def save(self, path: str) -> None:
        raise NotImplementedError("a fake cost model is not saved")


@pytest.fixture
def fake_cost_model() -> FakeCostModel:
    return FakeCostModel()


def compile_and_compare(model: torch.nn.Module, inputs, *, spec: str = "<test>"):
    from tilecraft import driver, frontend

    imported = frontend.import_module(model.eval(), tuple(inputs), spec=spec)
    compiled = driver.compile_model(imported)
    with torch.no_grad():
        ref = model(*inputs)
    return driver.compare(compiled.fn(*inputs), ref)


def cpu_flags() -> set[str]:
    """The host CPU's feature flags (/proc/cpuinfo), empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def reference_target():
    """The machine class the planner's decision tests were written on, whatever this host
    is: the seed corpus' Intel Xeon (AVX-512 with AMX; its shipped model), 2 cores, 2 MiB
    L2. A test that asserts which groups, tiles or splits the planner picks compiles for
    it; the code still runs here (LLVM compiles for this host, splitting 16-lane vectors
    in two where it has 8-lane registers; f32 code has no AMX), so it is still checked
    against eager. On the host's own target such a test would test its cost model's view
    of the host."""
    from tilecraft.backends.cpu.target import host

    return host().with_options(
        cpu_name="Intel(R) Xeon(R) Processor",
        avx2=True,
        fma=True,
        avx512=True,
        avx512bf16=True,
        avx512vnni=True,
        avx512fp16=True,
        amx=True,
        amx_bf16=True,
        amx_int8=True,
        cores=2,
        l1d_bytes=48 << 10,
        l2_bytes=2 << 20,
        l3_bytes=105 << 20,
    )
