"""Scale-out benchmark: collection and training on a Dask cluster against one process.

1. Collection: `corpus collect --models mlp --random 4 --decisions-per-kernel 4`, once on
   this machine (one measuring worker) and once on a Dask cluster, each into a fresh
   corpus (SQLite, or a fresh database on `--db-server`, a PostgreSQL URL): the (kernel,
   decision) pairs must be the same, none repeated; wall time of each.
2. Training: the LightGBM cost model fitted on the corpus's main machine, held-out by
   kernel (fold 0 of 5), once in this process and once data-parallel on the cluster
   (the boosters of `costmodel train --scheduler`): held-out MAPE, Spearman,
   pairwise-order accuracy, top-1, and the fit's wall time.

The cluster is a LocalCluster of 2 single-core measuring workers unless `--scheduler`
names one (its workers started with `--resources measure=N`).

    python bench/cluster.py [--scheduler tcp://HOST:8786] [--db-server postgresql://USER@HOST/postgres]
                            [--train-db corpus/data/seed.db.gz] [--json bench/results/cluster.json]
    python bench/cluster.py --quick     # 2 kernels' worth of collection, a slice of the corpus, fewer rounds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

from costmodel import quick_corpus  # bench/ is on sys.path when run as a script
from tilecraft.corpus.db import CorpusDB
from tilecraft.costmodel import evaluate, train
from tilecraft.costmodel.lightgbm_model import LightGBMCostModel

PAIRS = "SELECT m.workload, d.json FROM measurements m JOIN decisions d ON m.decision = d.id"


def fresh_location(server: str | None, tmp: str, name: str) -> str:
    if not server:
        return os.path.join(tmp, f"{name}.db")
    import psycopg

    db = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {db}")
    return server.rsplit("/", 1)[0] + "/" + db


def collect(location: str, args: list[str]) -> tuple[float, list]:
    cmd = [sys.executable, "-m", "tilecraft.cli", "corpus", "collect", "--quiet", "--db", location, *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    with CorpusDB(location, create=False) as db:
        return seconds, [tuple(r) for r in db.execute(PAIRS)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scheduler", help="a running Dask scheduler (default: a LocalCluster of 2 workers)")
    p.add_argument("--db-server", help="PostgreSQL URL whose server gets the fresh corpora (default: SQLite files)")
    p.add_argument("--train-db", default=os.path.join(os.path.dirname(__file__), "..", "corpus", "data", "seed.db.gz"))
    p.add_argument("--json", help="write every number here")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import dask
    import distributed

    cluster = None
    address = args.scheduler
    if not address:
        with dask.config.set({"distributed.worker.daemon": False}):  # workers start measuring subprocesses
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, resources={"measure": 1}, dashboard_address=None
            )
        address = cluster.scheduler_address
    client = distributed.Client(address)
    workers = len(client.scheduler_info()["workers"])
    out: dict = {"workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        # 1. collection
        plan = ["--models", "mlp", "--random", "2" if args.quick else "4", "--decisions-per-kernel"]
        plan += ["2" if args.quick else "4"]
        local_s, local = collect(fresh_location(args.db_server, tmp, "local"), plan)
        spread_s, spread = collect(fresh_location(args.db_server, tmp, "cluster"), [*plan, "--scheduler", address])
        same = set(local) == set(spread) and len(spread) == len(set(spread)) and len(local) == len(set(local))
        out["collection"] = {"pairs": len(local), "local_s": local_s, "cluster_s": spread_s, "same_pairs": same}
        print(f"collection: corpus collect {' '.join(plan)}  ({'PostgreSQL' if args.db_server else 'SQLite'})")
        print(f"{'runner':<28}{'pairs':>7}{'wall s':>9}")
        print(f"{'local (1 worker)':<28}{len(local):>7}{local_s:>9.1f}")
        print(f"{f'Dask ({workers} workers)':<28}{len(spread):>7}{spread_s:>9.1f}")
        print(f"same pairs, none repeated: {'yes' if same else 'NO'}\n")

        # 2. training
        db = args.train_db
        rounds = None
        if args.quick:
            db = quick_corpus(args.train_db, os.path.join(tmp, "quick.db"))
            rounds = {"latency": 60, "rank": 30, "util": 30}
        records, target = train.load_records(db)
        fit, held_out = evaluate.kernel_folds(records, 5)[0]
        groups = evaluate.by_kernel(held_out)
        rows = {}
        for name, kwargs in (("single process", {}), (f"data-parallel ({workers} workers)", {"client": client})):
            t0 = time.perf_counter()
            model = LightGBMCostModel(target, rounds=rounds).fit(fit, **kwargs)
            rows[name] = {**evaluate.score_model(model, groups), "fit_s": time.perf_counter() - t0}
        out["training"] = {"train_rows": len(fit), "held_out_kernels": len(groups), "models": rows}
        print(f"training: {len(fit)} rows, held out {len(groups)} kernels ({len(held_out)} rows), fold 0 of 5")
        print(f"{'fit':<28}{'MAPE':>8}{'Spearman':>10}{'pairwise':>10}{'top-1':>8}{'fit s':>8}")
        for name, r in rows.items():
            print(
                f"{name:<28}{r['mape']:>8.3f}{r['spearman']:>10.3f}{r['pairwise']:>10.3f}{r['top1']:>8.3f}"
                f"{r['fit_s']:>8.1f}"
            )
    client.close()
    if cluster is not None:
        cluster.close()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(out, f, indent=1, default=float)
        os.replace(args.json + ".tmp", args.json)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
