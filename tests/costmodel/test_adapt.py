"""A model per machine (`costmodel/model.py`: `choose`, `create`) and adaptation to this one
(`costmodel/adapt.py`, `tilecraft costmodel adapt`).

Model choice and fine-tuning use made-up machines and a synthetic corpus (latencies from a
hidden function of the decision), so they hold on any host; one test measures for real,
through the CLI, with a budget of a few seconds.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from tilecraft import cli, frontend
from tilecraft.backends.cpu import schedule as tiling
from tilecraft.backends.cpu.target import Target, host
from tilecraft.corpus import generator, kernels
from tilecraft.corpus.db import CorpusDB
from tilecraft.costmodel import adapt
from tilecraft.costmodel import model as cm
from tilecraft.costmodel.analytical import estimate
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel
from tilecraft.costmodel.model import Record

FAST = {"latency": 60, "rank": 30, "util": 30}
XEON, AMD = cm.SHIPPED_MODELS


def _machine(name: str, features=("avx2", "avx512", "fma"), **fields) -> Target:
    return Target(cpu_name=name, features=features, **fields)


def _kernel(text: str) -> kernels.Kernel:
    return kernels.extract(frontend.parse_mlir(text, context=frontend.new_context()))[0]


# ------------------------------------------------------------------- which model
def test_shipped_models_are_the_machines_they_say():
    for s in cm.SHIPPED_MODELS:
        assert os.path.getsize(s.path) < 3.5e6, s.file
        doc = json.loads(gzip.open(s.path, "rt").read())
        trained = Target.from_json(doc["target"])
        assert (trained.cpu_name, trained.features) == (s.cpu_name, tuple(sorted(s.features)))
        assert cm.choose(trained) == cm.ModelChoice(s.path, "class", cm.describe_machine(s.cpu_name, s.features))


def test_choice_order_installed_then_class_then_nearest(tmp_path):
    xeon = _machine(XEON.cpu_name, XEON.features, l3_bytes=300 << 20)  # another Xeon of the same class
    amd = _machine(AMD.cpu_name, AMD.features)
    assert cm.choose(xeon).path == XEON.path and cm.choose(xeon).how == "class"
    assert cm.choose(amd).path == AMD.path and cm.choose(amd).how == "class"
    # not a class of ours: the nearest, by vendor, then by the ISA features in common
    assert cm.choose(_machine("AMD Ryzen 9 7950X")).path == AMD.path
    assert cm.choose(_machine("Intel(R) Core(TM) i9", ("avx2", "fma"))).path == XEON.path
    odd = cm.choose(_machine("Some RISC-V", ("fma",)))
    assert odd.how == "foreign"
    # an adapted model installed for exactly this target comes first
    assert cm.installed_path(xeon) == os.path.join(os.environ[cm.MODEL_DIR_ENV], f"{xeon.hash()}.json.gz")
    os.makedirs(os.path.dirname(cm.installed_path(xeon)))
    shutil.copy(AMD.path, cm.installed_path(xeon))
    assert cm.choose(xeon) == cm.ModelChoice(cm.installed_path(xeon), "installed", cm.choose(xeon).trained_on)
    assert cm.choose(xeon, installed=False).path == XEON.path
    assert cm.choose(amd).path == AMD.path  # installed for another target: not this one's


def test_models_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cm.MODEL_DIR_ENV, str(tmp_path / "here"))
    assert cm.models_dir() == str(tmp_path / "here")
    monkeypatch.delenv(cm.MODEL_DIR_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cm.models_dir() == str(tmp_path / "xdg" / "tilecraft" / "models")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cm.models_dir() == str(tmp_path / "home" / ".local" / "share" / "tilecraft" / "models")


def test_create_says_once_when_the_model_is_foreign(capsys):
    # a name no other test uses: the note is once per process and target
    foreign = _machine(f"Test CPU {random.random()}", ("avx2", "fma"))
    assert cm.create("lightgbm", foreign).kind == "lightgbm"
    cm.create("lightgbm", foreign)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"target {foreign.hash()}" in err[0] and cm.choose(foreign).trained_on in err[0]
    assert "run 'tilecraft costmodel adapt' on that machine to adapt it" in err[0]
    cm.create("lightgbm", _machine(XEON.cpu_name, XEON.features, clock_ghz=2.1))  # its class: no note
    assert capsys.readouterr().err == ""


def test_a_commands_model_notes_follow_its_output_and_a_failure_prints_none(capsys):
    # (on a machine with no model of its own, `tilecraft run m --inputs bad.pt` once printed
    # the foreign-model note and then its error: two lines where a user's mistake gets one)
    foreign = _machine(f"Test CPU {random.random()}", ("avx2", "fma"))
    with pytest.raises(ValueError), cm.deferred_notes():
        cm.create("lightgbm", foreign)
        raise ValueError("the user's mistake")
    assert capsys.readouterr().err == ""
    foreign = _machine(f"Test CPU {random.random()}", ("avx2", "fma"))
    with cm.deferred_notes():
        cm.create("lightgbm", foreign)
        print("the command's output")
        assert capsys.readouterr().err == ""
    out, err = capsys.readouterr()
    assert (
        out == "" and err.startswith("tilecraft: no cost model for this machine") and f"target {foreign.hash()}" in err
    )


def test_an_installed_model_is_used_quietly_and_a_broken_one_is_named(capsys):
    me = _machine(XEON.cpu_name, XEON.features, clock_ghz=1.9)
    path = cm.installed_path(me)
    os.makedirs(os.path.dirname(path))
    shutil.copy(XEON.path, path)
    assert cm.create("lightgbm", me).kind == "lightgbm"
    assert capsys.readouterr().err == ""
    with open(path, "wb") as f:
        f.write(b"not a model")
    assert cm.create("lightgbm", me).kind == "lightgbm"  # falls back to the shipped one
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path in err[0] and "tilecraft costmodel adapt" in err[0], err


# ------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def machines():
    """Two machines' rows of the same matmuls: the second is slower, more so with narrow
    register tiles, and packing, which helps on the first, hurts on it."""
    here = host()
    rng = random.Random(0)
    shapes = [(64, 128, 256), (128, 128, 128), (256, 64, 128), (96, 128, 192), (192, 256, 128), (64, 256, 256)]
    shapes += [(128, 192, 96), (160, 128, 128), (256, 256, 64), (128, 256, 64)]
    old, new = [], []
    other = dataclasses.replace(here, clock_ghz=here.clock_ghz + 0.5, l3_bytes=here.l3_bytes * 2)
    for m, n, k in shapes:
        kern = _kernel(generator.matmul(m, n, k))
        space = tiling.space(kernels.infos_of(kern.mlir, frontend.new_context()), here)
        for d in rng.sample(space, min(24, len(space))):
            t = estimate(kern, d, here) * (0.6 if d.pack else 1.0)
            old.append(Record(kern, d, t, 1e-4 / t, target=other))
            t_new = 2.0 * estimate(kern, d, here) * (3.0 if d.tiles[-1][-1] < 32 else 1.0) * (2.5 if d.pack else 1.0)
            new.append(Record(kern, d, t_new, 1e-4 / t_new, target=here))
    base = LightGBMCostModel(here, rounds=FAST).fit(old)
    return here, base, new


def test_fine_tune_moves_latency_and_leaves_the_base_alone(machines):
    here, base, new = machines
    k, ds = new[0].kernel, [r.decision for r in new if r.kernel.key == new[0].kernel.key]
    truth = np.array([r.latency_s for r in new if r.kernel.key == k.key])
    before = base.predict(k, ds)
    lat = adapt.fine_tune(base, new, "latency")
    assert np.abs(np.log(lat.predict(k, ds).latency_s / truth)).mean() < np.abs(np.log(before.latency_s / truth)).mean()
    assert lat.boosters["rank"] is base.boosters["rank"]  # `latency` leaves the ranker as it was
    both = adapt.fine_tune(base, new, "latency+rank")
    assert both.boosters["rank"].num_trees() > base.boosters["rank"].num_trees()
    assert np.allclose(base.predict(k, ds).latency_s, before.latency_s)  # the base is untouched
    with pytest.raises(cm.CostModelError, match="unknown fine-tuning mode"):
        adapt.fine_tune(base, new, "everything")


def test_cross_validation_picks_the_ranker_when_it_pays(machines):
    here, base, new = machines
    cv = adapt.cross_validate(base, new)
    assert set(cv) == set(adapt.MODES)
    assert cv["latency+rank"]["pairwise"] > cv["base"]["pairwise"]
    assert adapt.pick_mode(cv) == "latency+rank"
    same = {m: {"pairwise": 0.88, "mape": 0.3} for m in adapt.MODES}
    assert adapt.pick_mode(same) == "latency"  # a ranker that gains nothing is left alone
    worse = {"base": {"pairwise": 0.9, "mape": 0.2}, "latency": {"pairwise": 0.8, "mape": 0.3}}
    worse["latency+rank"] = worse["latency"]
    assert adapt.pick_mode(worse) == "base"


def test_plan_covers_kinds_within_the_budget_and_spreads_decisions(machines):
    here, base, new = machines
    ctx = frontend.new_context()

    def pool_kernel(text, cost_s=0.1):
        k = _kernel(text)
        space = tiling.space(kernels.infos_of(k.mlir, ctx), here)[:12]
        return adapt.PoolKernel(k, "test", tuple(space), (cost_s,) * len(space), 2.0)

    pool = [
        pool_kernel(generator.matmul(64, 64, 64)),
        pool_kernel(generator.matmul(128, 64, 256)),
        pool_kernel(generator.matmul(256, 256, 256), cost_s=30.0),  # past the budget's share
        pool_kernel(generator.elementwise((64, 128), "add")),
        pool_kernel(generator.reduction((64, 128), 1)),
    ]
    planned = list(adapt.plan(base, here, pool, budget_s=60, per_kernel=4))
    kinds = [p.kernel.kind for p, _, _ in planned]
    assert kinds[:3] == ["matmul", "elementwise", "reduction"]  # round-robin over kinds first
    matmuls = [p.kernel.extents for p, _, _ in planned if p.kernel.kind == "matmul"]
    assert len(matmuls) == 2 and (256, 256, 256) not in matmuls
    for p, decisions, expected in planned:
        assert len(decisions) == min(4, len(p.decisions)) and expected < 60 * adapt.KERNEL_SHARE
        order = np.argsort(-base.predict(p.kernel, list(p.decisions)).score, kind="stable")
        ranked = [p.decisions[i] for i in order]
        assert decisions[0] == ranked[0] and decisions[-1] == ranked[-1]  # the top and the bottom


def test_two_workers_measure_side_by_side_and_keep_the_plans_order():
    from tilecraft.corpus import measure

    here = host()
    ctx = frontend.new_context()
    texts = [generator.elementwise((64, 128), "add"), generator.matmul(32, 32, 32), generator.reduction((64, 128), 1)]
    planned = []
    for text in texts:
        k = _kernel(text)
        space = tuple(tiling.space(kernels.infos_of(k.mlir, ctx), here)[:2])
        planned.append((adapt.PoolKernel(k, "test", space, (0.1,) * len(space), 2.0), list(space), 1.0))
    m = adapt.measure_planned(iter(planned), here, budget_s=120, workers=2)
    assert m.failed == 0 and len(m.results) == 6
    expected = [(p.kernel.key, d.to_json()) for p, ds, _ in planned for d in ds]
    assert [(r.kernel.key, r.decision.to_json()) for r in m.records] == expected  # the plan's order
    assert not measure._CORE_LOCKS  # every core given back

    def failing():
        yield planned[0]
        raise ValueError("the plan broke")

    with pytest.raises(ValueError, match="the plan broke"):
        adapt.measure_planned(failing(), here, budget_s=120, workers=2)
    assert not measure._CORE_LOCKS


def test_an_interrupt_stops_every_worker_at_once(monkeypatch):
    from tilecraft.corpus import measure

    class SlowWorker:  # a candidate that would run 30 s unless killed
        def __init__(self, *, timeout_s, cpu=None):
            self.timeout_s, self.killed = timeout_s, threading.Event()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def interrupt(self):
            self.killed.set()

        def measure(self, kernel, decision, target):
            status = "crash" if self.killed.wait(30) else "ok"
            return measure.Measurement(kernel.key, "", status, median_s=1e-3, utilization=0.5)

    monkeypatch.setattr(measure, "MeasureWorker", SlowWorker)
    pk = adapt.PoolKernel(_kernel(generator.matmul(16, 16, 16)), "test", (), (), 2.0)
    planned = ((pk, [None] * 6, 1.0) for _ in range(10))
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        adapt.measure_planned(planned, host(), budget_s=120, workers=2)
    assert time.perf_counter() - t0 < 5  # not the other worker's 30 s
    assert not measure._CORE_LOCKS


# ------------------------------------------------------------------------ the CLI
def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["costmodel", "adapt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--budget", "-3"], "-3"),
        (["--budget", "0"], "--budget"),
        (["--workers", "0"], "--workers"),
        (["--base", "/nonexistent/base.json.gz"], "/nonexistent/base.json.gz"),
        (["--out", "/nonexistent/dir/m.json.gz"], "/nonexistent/dir/m.json.gz"),
        (["--db", "corpus.db.gz"], "corpus.db.gz"),
        (["--db", "/nonexistent/dir/c.db"], "/nonexistent/dir/c.db"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, named):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and named in err, err
    assert not os.listdir(tmp_path)  # (the model directory is under it)


def test_a_base_that_is_no_model_is_refused(capsys, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    code, _, err = _run(capsys, "--base", str(junk), "--out", str(tmp_path / "m.json.gz"))
    assert code == 2 and str(junk) in err and "not a Tilecraft cost model" in err
    assert sorted(os.listdir(tmp_path)) == ["junk.json"]


def test_adapt_measures_here_and_installs_a_model_for_this_machine(capsys, tmp_path):
    db = str(tmp_path / "corpus.db")
    code, out, err = _run(capsys, "--budget", "6", "--db", db, "--quiet")
    assert code == 0, err
    me = host()
    path = cm.installed_path(me)
    assert f"installed for this machine: {path}" in out
    assert "measured " in out and " rows of " in out and "pairwise" in out
    model = cm.create("lightgbm", me)
    adapted = model.meta["adapted"]
    assert adapted["target"] == me.hash() and adapted["rows"] >= 1 and adapted["measured_s"] <= 6 + 5
    assert capsys.readouterr().err == ""  # its own model: no note
    with CorpusDB(db, create=False) as corpus:
        assert len(corpus.rows(target=me.hash())) == adapted["rows"]
