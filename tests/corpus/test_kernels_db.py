"""Kernel outlining and keys; the corpus database: resumability, migrations, concurrency."""

import json
import multiprocessing as mp
import sqlite3

import pytest

from tilecraft import frontend
from tilecraft.backends.cpu.target import host
from tilecraft.corpus import generator, kernels
from tilecraft.corpus.db import SCHEMA_VERSION, CorpusDB, CorpusError
from tilecraft.corpus.measure import Measurement


def test_model_kernels_reparse_to_the_same_key():
    imported = frontend.import_spec("gpt2_block")
    ks = kernels.extract(imported.module)
    assert len(ks) == len({k.key for k in ks}) > 10
    ctx = frontend.new_context()
    for k in ks:
        assert kernels.infos_of(k.mlir, ctx).key == k.key


def test_key_ignores_names_and_weights_but_not_shapes():
    ctx = frontend.new_context()
    a = kernels.extract(frontend.parse_mlir(generator.matmul(32, 64, 16), context=ctx))[0]
    renamed = generator.matmul(32, 64, 16).replace("%a", "%lhs").replace("%b", "%rhs")
    b = kernels.extract(frontend.parse_mlir(renamed, context=ctx))[0]
    c = kernels.extract(frontend.parse_mlir(generator.matmul(32, 64, 32), context=ctx))[0]
    assert a.key == b.key != c.key


def test_generator_is_deterministic_and_diverse():
    a = generator.random_kernels(20, seed=3)
    b = generator.random_kernels(20, seed=3)
    assert [k.key for k in a] == [k.key for k in b]
    assert len({k.kind for k in a}) >= 4


def _measurement(key, decision, status="ok", t=1e-3):
    return Measurement(key, decision, status, median_s=t, min_s=t, iqr_s=0.0, runs=10, gflops=1.0, utilization=0.5)


def test_db_roundtrip_resume_and_stats(tmp_path):
    path = str(tmp_path / "c.db")
    k = generator.random_kernels(1, seed=1)[0]
    with CorpusDB(path) as db:
        th = db.add_target(host())
        db.add_workload(k, source="test")
        db.add_workload(k, source="test")  # idempotent
        assert db.commit_measurement(_measurement(k.key, '{"a": 1}'), th)
        assert not db.commit_measurement(_measurement(k.key, '{"a": 1}'), th)  # never duplicated
        assert db.has_measurement(k.key, '{"a": 1}', th) and not db.has_measurement(k.key, '{"a": 2}', th)
        db.commit_measurement(_measurement(k.key, '{"a": 2}', t=5e-3), th)
        db.commit_measurement(_measurement(k.key, '{"a": 3}', status="wrong", t=None), th)
        s = db.stats()
        assert s["measurements"] == 3 and s["failed"] == 1 and s["workloads"] == 1
        assert s["mean_best_worst_ratio"] == pytest.approx(5.0)
        assert len(db.rows()) == 2 and db.rows()[0]["extents"] == list(k.extents)
        n = db.export_parquet(str(tmp_path / "c.parquet"))
    import pyarrow.parquet as pq

    assert n == 2 and pq.read_table(str(tmp_path / "c.parquet")).num_rows == 2


def test_db_rejects_garbage_and_newer_schema(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorpusError, match="not a corpus database"):
        CorpusDB(str(junk))
    path = str(tmp_path / "new.db")
    CorpusDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(CorpusError, match="newer"):
        CorpusDB(path)
    with pytest.raises(CorpusError, match="not found"):
        CorpusDB(str(tmp_path / "missing.db"), create=False)


def _one_row_db(path: str, seed: int):
    """A corpus with one workload and one measurement; returns the kernel."""
    k = generator.random_kernels(1, seed=seed)[0]
    with CorpusDB(path) as db:
        db.add_workload(k, source="t")
        db.commit_measurement(_measurement(k.key, "{}"), db.add_target(host()))
    return k


def test_corrupt_row_is_reported(tmp_path):
    path = str(tmp_path / "c.db")
    k = _one_row_db(path, seed=2)
    with CorpusDB(path) as db:
        db.conn.execute("UPDATE workloads SET shapes = '[[1, 2' WHERE key = ?", (k.key,))
        with pytest.raises(CorpusError, match=f"corrupt corpus row: workload {k.key}"):
            db.rows()


def _writer(path, key, start, count):
    with CorpusDB(path) as db:
        th = db.add_target(host())
        for i in range(start, start + count):
            db.commit_measurement(_measurement(key, json.dumps({"i": i})), th)


def test_several_writer_processes(tmp_path):
    path = str(tmp_path / "c.db")
    k = generator.random_kernels(1, seed=4)[0]
    with CorpusDB(path) as db:
        db.add_target(host())
        db.add_workload(k, source="t")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k.key, i * 50, 60)) for i in range(3)]  # overlapping ranges
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with CorpusDB(path) as db:
        assert db.stats()["measurements"] == 160


def test_compressed_corpus_opens_read_only(tmp_path):
    import gzip
    import shutil

    path = str(tmp_path / "c.db")
    _one_row_db(path, seed=6)
    with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    with CorpusDB(path + ".gz", create=False) as db:
        assert db.stats()["measurements"] == 1
    (tmp_path / "bad.db.gz").write_bytes(b"not gzip")
    with pytest.raises(CorpusError, match="cannot decompress"):
        CorpusDB(str(tmp_path / "bad.db.gz"), create=False)


def test_shipped_seed_corpus_reads():
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "corpus", "data", "seed.db.gz")
    with CorpusDB(path, create=False) as db:
        s = db.stats()
    assert s["measurements"] >= 4000 and s["measured_workloads"] >= 300
