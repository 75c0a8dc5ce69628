"""The corpus database: workloads, decisions, targets and measurements in SQLite.

On the corpus floor. Written by `tilecraft corpus collect` (through the measurement
harness), read by the cost-model trainer (`costmodel/train.py`). SQLite in WAL mode with a
busy timeout, so several collector processes can write at once; every write is one short
transaction, and uniqueness constraints make a rerun skip finished work
(`has_measurement`) and never duplicate a row. The schema carries a version; `MIGRATIONS`
upgrades older files in place. `export_parquet` flattens the measurements for training.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator

SCHEMA_VERSION = 2
FEATURE_SCHEMA_VERSION = 1  # bumped by costmodel/features.py when features change

# MIGRATIONS[v] upgrades a database at version v to v + 1.
MIGRATIONS: dict[int, str] = {
    0: """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS targets (hash TEXT PRIMARY KEY, json TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS workloads (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        op TEXT NOT NULL,
        extents TEXT NOT NULL,
        shapes TEXT NOT NULL,
        dtypes TEXT NOT NULL,
        flops INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        mlir TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS decisions (
        id INTEGER PRIMARY KEY,
        workload TEXT NOT NULL REFERENCES workloads(key),
        json TEXT NOT NULL,
        UNIQUE (workload, json)
    );
    CREATE TABLE IF NOT EXISTS measurements (
        id INTEGER PRIMARY KEY,
        workload TEXT NOT NULL REFERENCES workloads(key),
        decision INTEGER NOT NULL REFERENCES decisions(id),
        target TEXT NOT NULL REFERENCES targets(hash),
        status TEXT NOT NULL,
        median_s REAL, min_s REAL, iqr_s REAL, runs INTEGER,
        gflops REAL, utilization REAL, compile_s REAL,
        error TEXT NOT NULL DEFAULT '',
        versions TEXT NOT NULL,
        feature_schema INTEGER NOT NULL,
        created REAL NOT NULL,
        UNIQUE (workload, decision, target)
    );
    CREATE INDEX IF NOT EXISTS measurements_by_workload ON measurements (workload, target);
    """,
    # v2: every model a kernel occurs in (leave-one-model-out evaluation needs all of them).
    1: """
    CREATE TABLE IF NOT EXISTS workload_sources (
        workload TEXT NOT NULL REFERENCES workloads(key),
        source TEXT NOT NULL,
        PRIMARY KEY (workload, source)
    );
    INSERT OR IGNORE INTO workload_sources SELECT key, source FROM workloads;
    """,
}


class CorpusError(RuntimeError):
    pass


def _decompressed(path: str) -> str:
    import gzip
    import shutil
    import tempfile

    if not os.path.exists(path):
        raise CorpusError(f"corpus database not found: {path}")
    fd, tmp = tempfile.mkstemp(suffix=".db", prefix="tilecraft-corpus-")
    try:
        with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as exc:
        os.unlink(tmp)
        raise CorpusError(f"{path}: cannot decompress ({exc})") from None
    return tmp


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("tilecraft", "torch", "torch-mlir"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class CorpusDB:
    """A corpus database. A `.db.gz` file (the shipped seed corpus) opens read-only from a
    decompressed temporary copy; decompress it by hand to collect into it."""

    def __init__(self, path: str, *, create: bool = True):
        if not create and not os.path.exists(path):
            raise CorpusError(f"corpus database not found: {path}")
        self.path = path
        self._tmp = None
        if path.endswith(".gz"):
            path = self._tmp = _decompressed(path)
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA busy_timeout=60000")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise CorpusError(f"{path}: not a corpus database ({exc})") from None
        self._versions = json.dumps(tool_versions(), sort_keys=True)

    # ------------------------------------------------------------------- schema
    def version(self) -> int:
        has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self.transaction():
            v = self.version()
            if v > SCHEMA_VERSION:
                raise CorpusError(f"{self.path}: schema version {v} is newer than this Tilecraft ({SCHEMA_VERSION})")
            while v < SCHEMA_VERSION:
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                v += 1
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(v),))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()
        if self._tmp:
            os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------- writes
    def add_target(self, target) -> str:
        h = target.hash()
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO targets VALUES (?, ?)", (h, target.to_json()))
        return h

    def add_workload(self, kernel, *, source: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO workloads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kernel.key,
                    kernel.kind,
                    kernel.name,
                    json.dumps(kernel.extents),
                    json.dumps(kernel.shapes),
                    json.dumps(kernel.dtypes),
                    kernel.flops,
                    kernel.bytes_moved,
                    kernel.mlir,
                    source,
                ),
            )
            c.execute("INSERT OR IGNORE INTO workload_sources VALUES (?, ?)", (kernel.key, source))

    def _decision_id(self, c, workload: str, decision_json: str) -> int:
        c.execute("INSERT OR IGNORE INTO decisions (workload, json) VALUES (?, ?)", (workload, decision_json))
        return c.execute("SELECT id FROM decisions WHERE workload=? AND json=?", (workload, decision_json)).fetchone()[
            0
        ]

    def has_measurement(self, workload: str, decision_json: str, target_hash: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM measurements m JOIN decisions d ON m.decision = d.id "
            "WHERE m.workload=? AND d.json=? AND m.target=?",
            (workload, decision_json, target_hash),
        ).fetchone()
        return row is not None

    def commit_measurement(self, m, target_hash: str) -> bool:
        """Record a measurement; False if that (workload, decision, target) was already there."""
        with self.transaction() as c:
            did = self._decision_id(c, m.kernel_key, m.decision)
            cur = c.execute(
                "INSERT OR IGNORE INTO measurements (workload, decision, target, status, median_s, min_s, iqr_s, runs,"
                " gflops, utilization, compile_s, error, versions, feature_schema, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    m.kernel_key,
                    did,
                    target_hash,
                    m.status,
                    m.median_s,
                    m.min_s,
                    m.iqr_s,
                    m.runs,
                    m.gflops,
                    m.utilization,
                    m.compile_s,
                    m.error,
                    self._versions,
                    FEATURE_SCHEMA_VERSION,
                    time.time(),
                ),
            )
            return cur.rowcount == 1

    # -------------------------------------------------------------------- reads
    def rows(self, *, target: str | None = None, status: str | None = "ok") -> list[dict]:
        """Measurements joined with their workload and decision, as plain dicts."""
        sql = (
            "SELECT w.key AS workload, w.kind, w.op, w.extents, w.shapes, w.dtypes, w.flops, w.bytes, "
            "d.json AS decision, m.target, m.status, m.median_s, m.min_s, m.iqr_s, m.runs, m.gflops, "
            "m.utilization, m.compile_s, m.feature_schema FROM measurements m "
            "JOIN workloads w ON m.workload = w.key JOIN decisions d ON m.decision = d.id WHERE 1=1"
        )
        args: list = []
        if target:
            sql += " AND m.target = ?"
            args.append(target)
        if status:
            sql += " AND m.status = ?"
            args.append(status)
        cur = self.conn.execute(sql + " ORDER BY m.id", args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur:
            row = dict(zip(names, values))
            for key in ("extents", "shapes", "dtypes"):
                try:
                    row[key] = json.loads(row[key])
                except (TypeError, json.JSONDecodeError):
                    raise CorpusError(f"corrupt corpus row: workload {row['workload']} has bad {key}") from None
            out.append(row)
        return out

    def sources(self) -> dict[str, list[str]]:
        """Every source (zoo model, generator seed, benchmark) each workload came from."""
        out: dict[str, list[str]] = {}
        for key, source in self.conn.execute("SELECT workload, source FROM workload_sources ORDER BY source"):
            out.setdefault(key, []).append(source)
        return out

    def workload_mlir(self, key: str) -> str:
        row = self.conn.execute("SELECT mlir FROM workloads WHERE key=?", (key,)).fetchone()
        if row is None:
            raise CorpusError(f"no workload {key}")
        return row[0]

    def stats(self) -> dict:
        c = self.conn
        by_kind = {}
        for kind, n_kernels, n_rows, n_ok, lo, hi in c.execute(
            "SELECT w.kind, COUNT(DISTINCT w.key), COUNT(m.id), SUM(m.status='ok'), MIN(m.median_s), MAX(m.median_s) "
            "FROM workloads w LEFT JOIN measurements m ON m.workload = w.key GROUP BY w.kind ORDER BY w.kind"
        ):
            by_kind[kind] = {"kernels": n_kernels, "rows": n_rows, "ok": n_ok or 0, "min_s": lo, "max_s": hi}
        spread = c.execute(
            "SELECT AVG(r) FROM (SELECT MAX(median_s) / MIN(median_s) AS r FROM measurements "
            "WHERE status='ok' GROUP BY workload, target HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        return {
            "schema_version": self.version(),
            "workloads": c.execute("SELECT COUNT(*) FROM workloads").fetchone()[0],
            "measured_workloads": c.execute("SELECT COUNT(DISTINCT workload) FROM measurements").fetchone()[0],
            "decisions": c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0],
            "measurements": c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0],
            "failed": c.execute("SELECT COUNT(*) FROM measurements WHERE status != 'ok'").fetchone()[0],
            "targets": c.execute("SELECT COUNT(*) FROM targets").fetchone()[0],
            "mean_best_worst_ratio": spread,
            "by_kind": by_kind,
        }

    def export_parquet(self, path: str, *, target: str | None = None) -> int:
        """Write the successful measurements as one flat Parquet table (atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.rows(target=target)
        for r in rows:
            for key in ("extents", "shapes", "dtypes"):
                r[key] = json.dumps(r[key])
        table = pa.Table.from_pylist(rows) if rows else pa.table({})
        tmp = path + ".tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return len(rows)
