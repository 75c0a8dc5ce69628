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


def test_db_roundtrip_resume_and_stats(tmp_path, corpus_location):
    path = corpus_location
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


def test_corrupt_row_is_reported(corpus_location):
    path = corpus_location
    k = _one_row_db(path, seed=2)
    with CorpusDB(path) as db:
        db.execute("UPDATE workloads SET shapes = '[[1, 2' WHERE key = ?", (k.key,))
        with pytest.raises(CorpusError, match=f"corrupt corpus row: workload {k.key}"):
            db.rows()


def _writer(path, key, start, count):
    with CorpusDB(path) as db:
        th = db.add_target(host())
        for i in range(start, start + count):
            db.commit_measurement(_measurement(key, json.dumps({"i": i})), th)


def test_several_writer_processes(corpus_location):
    path = corpus_location
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


def test_damaged_sqlite_file_is_refused_with_its_path(tmp_path):
    path = str(tmp_path / "c.db")
    with CorpusDB(path) as db:
        k = generator.random_kernels(1, seed=8)[0]
        th = db.add_target(host())
        db.add_workload(k, source="t")
        for i in range(300):  # enough rows for several pages
            db.commit_measurement(_measurement(k.key, json.dumps({"i": i, "pad": "x" * 200})), th)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(open(path, "rb").read())
    page = 4096
    for n in range(2, 6):  # scribble over the b-tree headers of a few pages
        data[n * page : n * page + 12] = b"\xff" * 12
    open(path, "wb").write(bytes(data))
    with pytest.raises(CorpusError, match=f"{path}: (damaged database|not a corpus database)"):
        CorpusDB(path)


def test_unreachable_server_is_one_line_without_the_password():
    with pytest.raises(CorpusError) as info:
        CorpusDB("postgresql://me:hunter2@127.0.0.1:1/corpus")
    msg = str(info.value)
    assert "cannot connect to the corpus database postgresql://me@127.0.0.1:1/corpus" in msg
    assert "hunter2" not in msg and "\n" not in msg


def test_server_without_a_corpus_is_refused_when_reading(pg_server):
    from conftest import _fresh_database

    url = _fresh_database(pg_server)
    with pytest.raises(CorpusError, match="holds no corpus"):
        CorpusDB(url, create=False)


def test_newer_schema_is_refused_on_both_engines(corpus_location):
    CorpusDB(corpus_location).close()
    with CorpusDB(corpus_location) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(CorpusError, match="newer"):
        CorpusDB(corpus_location)


def _queued_db(location, n=6):
    k = generator.random_kernels(1, seed=9)[0]
    db = CorpusDB(location)
    th = db.add_target(host())
    db.add_workload(k, source="t")
    ids = db.enqueue(th, [(k.key, json.dumps({"i": i})) for i in range(n)])
    return db, k, th, ids


def test_queue_claims_each_task_once_and_commit_takes_it_off(corpus_location):
    db, k, th, ids = _queued_db(corpus_location)
    with db, CorpusDB(corpus_location) as other:
        assert len(ids) == 6 and db.enqueue(th, [(k.key, json.dumps({"i": 0}))]) == ids[:1]  # shared, not doubled
        mine = db.claim("a:1:x", ids, 4, lease_s=60)
        theirs = other.claim("b:1:y", ids, 4, lease_s=60)
        assert len(mine) == 4 and len(theirs) == 2
        assert not {t[0] for t in mine} & {t[0] for t in theirs}
        assert db.claim("a:1:x", ids, 4, lease_s=60) == []  # everything is held
        db.commit_measurement(_measurement(k.key, mine[0][2]), th)
        assert db.unfinished(ids) == 5 and db.stats()["queued"] == 5
        other.release("b:1:y")  # a collector stopping early gives its claims back
        assert len(db.claim("a:1:x", ids, 9, lease_s=60)) == 2
        # a measured pair is never enqueued again
        assert db.enqueue(th, [(k.key, mine[0][2])]) == []


def test_expired_lease_and_dead_owner_return_tasks_to_the_queue(corpus_location):
    import socket

    db, k, th, ids = _queued_db(corpus_location, n=3)
    with db:
        assert len(db.claim("far:1:x", ids, 1, lease_s=-1)) == 1  # a lease already over
        assert len(db.claim("me:1:y", ids, 9, lease_s=60)) == 3
        dead = f"{socket.gethostname()}:999999999:z"  # this machine, no such process
        db.release("me:1:y")
        assert len(db.claim(dead, ids, 9, lease_s=600)) == 3
        assert db.release_dead_owners() == 1
        assert len(db.claim("me:1:y", ids, 9, lease_s=60)) == 3


@pytest.mark.parametrize(
    "location, message",
    [
        (
            "postgresql://me:hunter2@127.0.0.1:1/corpus",
            "cannot connect to the corpus database postgresql://me@127.0.0.1:1/corpus",
        ),
        ("{tmp}/damaged.db", "{tmp}/damaged.db: not a corpus database"),
    ],
    ids=["unreachable-server", "not-a-database"],
)
def test_cli_bad_database_is_one_line_naming_it(tmp_path, location, message):
    import subprocess
    import sys

    (tmp_path / "damaged.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 5000)
    location, message = location.format(tmp=tmp_path), message.format(tmp=tmp_path)
    for cmd in (
        ["corpus", "stats"],
        ["corpus", "export", "-o", str(tmp_path / "x.parquet")],
        ["costmodel", "train", "--out", str(tmp_path / "m.json.gz")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "tilecraft.cli", *cmd, "--db", location], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr and "hunter2" not in done.stderr and "internal error" not in done.stderr
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "m.json.gz").exists()
