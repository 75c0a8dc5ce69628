"""The corpus database: workloads, decisions, targets, measurements and the work queue.

On the corpus floor. Written by `tilecraft corpus collect` (through the measurement
harness), read by the cost-model trainer (`costmodel/train.py`). Two engines behind one
class: an SQLite file (the embedded default; WAL mode with a busy timeout, so several
collector processes on one machine can write at once) or a PostgreSQL server
(`postgresql://user@host/db`, for collectors on many machines). Every write is one short
transaction; uniqueness constraints make a rerun skip finished work (`has_measurement`)
and never duplicate a row. The schema carries a version; `MIGRATIONS` upgrades an older
corpus in place, the same statements on both engines.

The `tasks` table is the work queue of concurrent collectors: a collector enqueues the
(workload, decision, target) triples it plans, then claims a few at a time (`SELECT … FOR
UPDATE SKIP LOCKED` on PostgreSQL; SQLite's write lock serializes claims), each claim a
lease on the database's clock that the collector renews while it works. Committing a
measurement deletes its task in the same transaction, so no pair is measured twice by
live collectors, and a dead collector's claims return to the queue when their lease ends
(at once, for a collector on the same machine whose process is gone).
`export_parquet` flattens the measurements for training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator

SCHEMA_VERSION = 3
FEATURE_SCHEMA_VERSION = 1  # bumped by costmodel/features.py when features change

# MIGRATIONS[v] upgrades a database at version v to v + 1. The statements run on both
# engines: `{id}` is the engine's auto-numbered key; the other types mean the same in both
# (SQLite's affinity rules read BIGINT as INTEGER and DOUBLE PRECISION as REAL).
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
        flops BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        mlir TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS decisions (
        id {id},
        workload TEXT NOT NULL REFERENCES workloads(key),
        json TEXT NOT NULL,
        UNIQUE (workload, json)
    );
    CREATE TABLE IF NOT EXISTS measurements (
        id {id},
        workload TEXT NOT NULL REFERENCES workloads(key),
        decision INTEGER NOT NULL REFERENCES decisions(id),
        target TEXT NOT NULL REFERENCES targets(hash),
        status TEXT NOT NULL,
        median_s DOUBLE PRECISION, min_s DOUBLE PRECISION, iqr_s DOUBLE PRECISION, runs INTEGER,
        gflops DOUBLE PRECISION, utilization DOUBLE PRECISION, compile_s DOUBLE PRECISION,
        error TEXT NOT NULL DEFAULT '',
        versions TEXT NOT NULL,
        feature_schema INTEGER NOT NULL,
        created DOUBLE PRECISION NOT NULL,
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
    INSERT INTO workload_sources SELECT key, source FROM workloads WHERE true ON CONFLICT DO NOTHING;
    """,
    # v3: the work queue of concurrent collectors (a task leaves it when it is measured).
    2: """
    CREATE TABLE IF NOT EXISTS tasks (
        id {id},
        workload TEXT NOT NULL REFERENCES workloads(key),
        decision TEXT NOT NULL,
        target TEXT NOT NULL REFERENCES targets(hash),
        owner TEXT NOT NULL DEFAULT '',
        expires DOUBLE PRECISION NOT NULL DEFAULT 0,
        UNIQUE (workload, decision, target)
    );
    CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner);
    """,
}

# A task whose pair is already measured (another collector got there first): never claimed.
_UNMEASURED = (
    "NOT EXISTS (SELECT 1 FROM measurements m JOIN decisions d ON m.decision = d.id "
    "WHERE m.workload = t.workload AND d.json = t.decision AND m.target = t.target)"
)


class CorpusError(RuntimeError):
    pass


def is_server_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def redacted(location: str) -> str:
    """A database location fit for a message: a server URL without its password."""
    return re.sub(r"^(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1@", location)


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


def new_owner() -> str:
    """A collector's name on its claims: host, process and a nonce (a restarted process
    with a reused pid is still someone else)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _owner_is_dead(owner: str) -> bool:
    """True for a claim owner on this machine whose process is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _SQLite:
    """The embedded engine: one file, WAL, writers serialized by BEGIN IMMEDIATE."""

    id_column = "INTEGER PRIMARY KEY"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    skip_locked = ""  # the write lock taken by BEGIN IMMEDIATE already serializes claims
    errors: tuple = (sqlite3.Error,)

    def __init__(self, path: str, shown: str):
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            self.conn.execute("PRAGMA busy_timeout=60000")
            problems = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise CorpusError(f"{shown}: damaged database (SQLite quick_check: {problems[0][:200]})")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise CorpusError(f"{shown}: not a corpus database ({exc})") from None
        except CorpusError:
            self.conn.close()
            raise

    def execute(self, sql: str, args: Iterable = ()):
        return self.conn.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: list) -> None:
        self.conn.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def has_table(self, name: str) -> bool:
        return self.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def lock_schema(self) -> None:
        pass  # BEGIN IMMEDIATE holds the write lock

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """The server engine (psycopg 3): autocommit outside explicit transactions."""

    id_column = "SERIAL PRIMARY KEY"
    now = "(EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION)"
    skip_locked = "FOR UPDATE OF t SKIP LOCKED"

    def __init__(self, url: str, shown: str):
        try:
            import psycopg
        except ImportError:
            raise CorpusError(f"{shown}: a PostgreSQL corpus needs psycopg: pip install 'tilecraft[cluster]'") from None
        self.errors = (psycopg.Error,)
        try:
            self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CorpusError(f"cannot connect to the corpus database {shown}: {reason[:300]}") from None

    def execute(self, sql: str, args: Iterable = ()):
        return self.conn.execute(sql.replace("?", "%s"), tuple(args))

    def executemany(self, sql: str, rows: list) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def has_table(self, name: str) -> bool:
        row = self.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?", (name,)
        ).fetchone()
        return row is not None

    def lock_schema(self) -> None:
        # two collectors starting at once must not both create the schema
        self.execute("SELECT pg_advisory_xact_lock(7270161)")

    def close(self) -> None:
        self.conn.close()


class CorpusDB:
    """A corpus database: an SQLite file, or a PostgreSQL server URL
    (`postgresql://user@host:port/db`). A `.db.gz` file (the shipped seed corpus) opens
    read-only from a decompressed temporary copy; decompress it by hand to collect into it.
    `conn` is the engine's own DB-API connection; `execute` takes `?` placeholders on both."""

    def __init__(self, location: str, *, create: bool = True):
        self.path = redacted(location)  # what messages show
        self.server = is_server_url(location)
        self._tmp = None
        if self.server:
            self._engine = _Postgres(location, self.path)
        else:
            if not create and not os.path.exists(location):
                raise CorpusError(f"corpus database not found: {location}")
            if location.endswith(".gz"):
                location = self._tmp = _decompressed(location)
            try:
                self._engine = _SQLite(location, self.path)
            except CorpusError:
                self._drop_tmp()
                raise
        self.conn = self._engine.conn
        try:
            if self.server and not create and not self._engine.has_table("meta"):
                raise CorpusError(f"{self.path}: holds no corpus (run `tilecraft corpus collect --db` first)")
            self._migrate()
        except BaseException:
            self.close()
            raise
        self._versions = json.dumps(tool_versions(), sort_keys=True)

    # ------------------------------------------------------------------- engine
    def execute(self, sql: str, args: Iterable = ()):
        try:
            return self._engine.execute(sql, args)
        except self._engine.errors as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> CorpusError:
        return CorpusError(f"{self.path}: {' '.join(str(exc).split())[:300] or type(exc).__name__}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[CorpusDB]:
        try:
            with self._engine.transaction():
                yield self
        except self._engine.errors as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------- schema
    def version(self) -> int:
        if not self._engine.has_table("meta"):
            return 0
        row = self.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        try:
            with self.transaction():
                self._engine.lock_schema()
                v = self.version()
                for u in range(v, SCHEMA_VERSION):
                    for statement in MIGRATIONS[u].replace("{id}", self._engine.id_column).split(";"):
                        if statement.strip():
                            self.execute(statement)
                    self.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                        (str(u + 1), str(u + 1)),
                    )
        except CorpusError as exc:  # (its message: "<path>: <what the engine said>")
            raise CorpusError(f"{self.path}: not a corpus database ({str(exc).partition(': ')[2]})") from None
        if v > SCHEMA_VERSION:
            raise CorpusError(f"{self.path}: schema version {v} is newer than this Tilecraft ({SCHEMA_VERSION})")

    def close(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.close()
            self._engine = None
        self._drop_tmp()

    def _drop_tmp(self) -> None:
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
            c.execute("INSERT INTO targets VALUES (?, ?) ON CONFLICT DO NOTHING", (h, target.to_json()))
        return h

    def add_workload(self, kernel, *, source: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO workloads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            c.execute("INSERT INTO workload_sources VALUES (?, ?) ON CONFLICT DO NOTHING", (kernel.key, source))

    def _decision_id(self, workload: str, decision_json: str) -> int:
        self.execute(
            "INSERT INTO decisions (workload, json) VALUES (?, ?) ON CONFLICT DO NOTHING", (workload, decision_json)
        )
        return self.execute(
            "SELECT id FROM decisions WHERE workload=? AND json=?", (workload, decision_json)
        ).fetchone()[0]

    def has_measurement(self, workload: str, decision_json: str, target_hash: str) -> bool:
        row = self.execute(
            "SELECT 1 FROM measurements m JOIN decisions d ON m.decision = d.id "
            "WHERE m.workload=? AND d.json=? AND m.target=?",
            (workload, decision_json, target_hash),
        ).fetchone()
        return row is not None

    def commit_measurement(self, m, target_hash: str) -> bool:
        """Record a measurement (and take its task off the queue); False if that
        (workload, decision, target) was already there."""
        with self.transaction() as c:
            did = c._decision_id(m.kernel_key, m.decision)
            cur = c.execute(
                "INSERT INTO measurements (workload, decision, target, status, median_s, min_s, iqr_s, runs,"
                " gflops, utilization, compile_s, error, versions, feature_schema, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            c.execute(
                "DELETE FROM tasks WHERE workload=? AND decision=? AND target=?",
                (m.kernel_key, m.decision, target_hash),
            )
            return cur.rowcount == 1

    # --------------------------------------------------------------- the queue
    def enqueue(self, target_hash: str, pairs: list[tuple[str, str]]) -> list[int]:
        """Put the (workload key, decision JSON) pairs not yet measured on `target_hash` on
        the queue (a pair already queued, by anyone, is shared); returns their task ids."""
        ids = []
        with self.transaction() as c:
            for workload, decision in pairs:
                if c.has_measurement(workload, decision, target_hash):
                    continue
                c.execute(
                    "INSERT INTO tasks (workload, decision, target) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    (workload, decision, target_hash),
                )
                row = c.execute(
                    "SELECT id FROM tasks WHERE workload=? AND decision=? AND target=?",
                    (workload, decision, target_hash),
                ).fetchone()
                ids.append(row[0])
        return ids

    def claim(self, owner: str, task_ids: list[int], n: int, *, lease_s: float) -> list[tuple[int, str, str]]:
        """Claim up to `n` of `task_ids` that nobody holds (or whose holder's lease ran out)
        and whose pair is still unmeasured: [(task id, workload key, decision JSON)]."""
        if n <= 0 or not task_ids:
            return []
        now = self._engine.now
        claimed: list[tuple[int, str, str]] = []
        with self.transaction() as c:
            for chunk in _chunks(task_ids, 500):
                marks = ",".join("?" * len(chunk))
                rows = c.execute(
                    f"SELECT t.id, t.workload, t.decision FROM tasks t WHERE t.id IN ({marks}) AND t.expires < {now} "
                    f"AND {_UNMEASURED} ORDER BY t.id LIMIT ? {self._engine.skip_locked}",
                    (*chunk, n - len(claimed)),
                ).fetchall()
                for task_id, workload, decision in rows:
                    c.execute(f"UPDATE tasks SET owner=?, expires={now} + ? WHERE id=?", (owner, lease_s, task_id))
                    claimed.append((task_id, workload, decision))
                if len(claimed) >= n:
                    break
        return claimed

    def renew(self, owner: str, *, lease_s: float) -> None:
        """Extend the lease on every task `owner` holds (a collector's heartbeat)."""
        with self.transaction() as c:
            c.execute(f"UPDATE tasks SET expires={self._engine.now} + ? WHERE owner=?", (lease_s, owner))

    def release(self, owner: str) -> None:
        """Give back what `owner` still holds (a collector stopping early)."""
        with self.transaction() as c:
            c.execute("UPDATE tasks SET owner='', expires=0 WHERE owner=?", (owner,))

    def release_dead_owners(self) -> int:
        """Free the claims of collectors on this machine whose process is gone."""
        owners = [r[0] for r in self.execute("SELECT DISTINCT owner FROM tasks WHERE owner != ''")]
        dead = [o for o in owners if _owner_is_dead(o)]
        for owner in dead:
            self.release(owner)
        return len(dead)

    def unfinished(self, task_ids: list[int]) -> int:
        """How many of `task_ids` are still unmeasured (held by someone, or free)."""
        n = 0
        for chunk in _chunks(task_ids, 500):
            marks = ",".join("?" * len(chunk))
            n += self.execute(
                f"SELECT COUNT(*) FROM tasks t WHERE t.id IN ({marks}) AND {_UNMEASURED}", chunk
            ).fetchone()[0]
        return n

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
        cur = self.execute(sql + " ORDER BY m.id", args)
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

    def targets(self) -> dict[str, str]:
        """Every machine the corpus holds: {target hash: target JSON}."""
        return dict(self.execute("SELECT hash, json FROM targets"))

    def main_target(self) -> str | None:
        """The JSON of the target with the most measurements (None for an empty corpus)."""
        row = self.execute(
            "SELECT t.json FROM measurements m JOIN targets t ON t.hash = m.target "
            "GROUP BY t.hash, t.json ORDER BY COUNT(*) DESC, t.hash LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def workload_mlirs(self) -> dict[str, str]:
        return dict(self.execute("SELECT key, mlir FROM workloads"))

    def sources(self) -> dict[str, list[str]]:
        """Every source (zoo model, generator seed, benchmark) each workload came from."""
        out: dict[str, list[str]] = {}
        for key, source in self.execute("SELECT workload, source FROM workload_sources ORDER BY source"):
            out.setdefault(key, []).append(source)
        return out

    def workload_mlir(self, key: str) -> str:
        row = self.execute("SELECT mlir FROM workloads WHERE key=?", (key,)).fetchone()
        if row is None:
            raise CorpusError(f"no workload {key}")
        return row[0]

    def stats(self) -> dict:
        def one(sql: str):
            return self.execute(sql).fetchone()[0]

        by_kind = {}
        for kind, n_kernels, n_rows, n_ok, lo, hi in self.execute(
            "SELECT w.kind, COUNT(DISTINCT w.key), COUNT(m.id), SUM(CASE WHEN m.status = 'ok' THEN 1 ELSE 0 END), "
            "MIN(m.median_s), MAX(m.median_s) "
            "FROM workloads w LEFT JOIN measurements m ON m.workload = w.key GROUP BY w.kind ORDER BY w.kind"
        ):
            by_kind[kind] = {"kernels": n_kernels, "rows": n_rows, "ok": int(n_ok or 0), "min_s": lo, "max_s": hi}
        spread = one(
            "SELECT AVG(r) FROM (SELECT MAX(median_s) / MIN(median_s) AS r FROM measurements "
            "WHERE status='ok' GROUP BY workload, target HAVING COUNT(*) > 1) AS spreads"
        )
        return {
            "schema_version": self.version(),
            "workloads": one("SELECT COUNT(*) FROM workloads"),
            "measured_workloads": one("SELECT COUNT(DISTINCT workload) FROM measurements"),
            "decisions": one("SELECT COUNT(*) FROM decisions"),
            "measurements": one("SELECT COUNT(*) FROM measurements"),
            "failed": one("SELECT COUNT(*) FROM measurements WHERE status != 'ok'"),
            "targets": one("SELECT COUNT(*) FROM targets"),
            "queued": one("SELECT COUNT(*) FROM tasks"),
            "mean_best_worst_ratio": None if spread is None else float(spread),
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
        from tilecraft.dialects.irutil import replace_file

        replace_file(tmp, path)
        return len(rows)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
