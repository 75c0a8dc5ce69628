"""A throwaway PostgreSQL server on loopback for the corpus tests (Debian's package).

`.ci/run` starts one before the tests and stops it after:

    eval "$(python tests/pgserver.py start)"     # exports TILECRAFT_TEST_PG(_DIR)
    python tests/pgserver.py stop "$TILECRAFT_TEST_PG_DIR"

`tests/conftest.py` uses the server that `TILECRAFT_TEST_PG` names, or starts its own when
the binaries are installed. The cluster lives in a fresh directory under /tmp, trusts
loopback connections, and runs without fsync (a test server, thrown away after).
PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile

USER = "tilecraft"


def binaries() -> str | None:
    """The directory holding initdb and pg_ctl (the newest installed version), or None."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return dirs[-1] if dirs and os.path.exists(os.path.join(dirs[-1], "initdb")) else None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> tuple[str, str]:
    """Start a server; returns (URL of its `postgres` database, its directory)."""
    bindir = binaries()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    workdir = tempfile.mkdtemp(prefix="tilecraft-pg-")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    data = os.path.join(workdir, "data")
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(_as_server_user([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", USER, "--no-sync"]), **run)
    port = _free_port()
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    log = os.path.join(workdir, "server.log")
    subprocess.run(_as_server_user([f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "-o", options, "start"]), **run)
    return f"postgresql://{USER}@127.0.0.1:{port}/postgres", workdir


def stop(workdir: str) -> None:
    bindir = binaries()
    data = os.path.join(workdir, "data")
    if bindir and os.path.exists(data):
        subprocess.run(
            _as_server_user([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"]:
        url, workdir = start()
        print(f"export TILECRAFT_TEST_PG={url} TILECRAFT_TEST_PG_DIR={workdir}")
    elif sys.argv[1:2] == ["stop"] and len(sys.argv) == 3:
        stop(sys.argv[2])
    else:
        sys.exit("usage: python tests/pgserver.py start | stop DIR")
