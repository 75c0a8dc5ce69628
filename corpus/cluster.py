"""Measurement on a Dask cluster: the runner `tilecraft corpus collect --scheduler` uses.

On the corpus floor; `collect.collect` drives it like `collect.LocalRunner`. Connects to a
`dask.distributed` scheduler, asks every worker which machine it is (the `--target` spec
resolved on the worker's own machine, so each row records the machine it was measured
on), and submits one task per (kernel, decision). A task needs one unit of the workers'
`measure` resource: start workers with as many units as cores they may measure on
(`dask worker ADDR --nthreads 2 --resources measure=2`), and two measurements never share
a core (each worker thread keeps a measuring subprocess pinned to a core no one else on
that machine holds, `measure.claim_core`). Dask re-runs the tasks of a worker that dies on
another worker; the collector commits results as they come back, so nothing is lost or
repeated.

    dask scheduler                                   # on one machine
    dask worker tcp://HOST:8786 --nthreads 2 --resources measure=2   # on each measuring machine
    tilecraft corpus collect --scheduler tcp://HOST:8786 --db postgresql://USER@DBHOST/corpus
"""

from __future__ import annotations

import collections
import threading

from tilecraft.corpus import measure
from tilecraft.corpus.db import CorpusError

RESOURCE = "measure"
_local = threading.local()  # on a worker: this thread's measuring subprocess


def worker_facts(target_spec: str, dask_worker=None) -> tuple[str, float, bool]:
    """Runs on each worker: the target its machine is (JSON), its `measure` units, and
    whether its process may start the measuring subprocess (a daemonic one may not)."""
    import multiprocessing

    from tilecraft.backends.cpu.target import Target

    units = dask_worker.state.total_resources.get(RESOURCE, 0) if dask_worker is not None else 0
    return Target.parse(target_spec).to_json(), units, not multiprocessing.current_process().daemon


def measure_task(kernel, decision, target_spec: str, timeout_s: float):
    """Runs on a worker: one measurement in this thread's pinned measuring subprocess."""
    from tilecraft.backends.cpu.target import Target

    worker = getattr(_local, "worker", None)
    if worker is None:
        worker = _local.worker = measure.MeasureWorker(timeout_s=timeout_s, cpu=measure.claim_core())
    target = Target.parse(target_spec)
    return worker.measure(kernel, decision, target), target


def connect(address: str, *, timeout_s: float = 10.0):
    """A `distributed.Client` for the scheduler at `address`, or a one-line error."""
    try:
        from distributed import Client
    except ImportError:
        raise CorpusError("--scheduler needs dask.distributed: pip install 'tilecraft[cluster]'") from None
    try:
        return Client(address, timeout=timeout_s)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise CorpusError(f"cannot reach the Dask scheduler at {address}: {reason}") from None


class DaskRunner:
    """Measures on the workers of the Dask scheduler at `address`."""

    def __init__(self, address: str, *, target_spec: str = "cpu", timeout_s: float = 120.0, connect_s: float = 10.0):
        from tilecraft.backends.cpu.target import Target

        self.address, self.target_spec, self.timeout_s = address, target_spec, timeout_s
        self.client = connect(address, timeout_s=connect_s)  # (a one-line error without distributed)
        from distributed.comm import get_address_host

        try:
            facts = self.client.run(worker_facts, target_spec)
        except Exception as exc:
            self.client.close()
            raise CorpusError(f"the workers at {address} cannot resolve --target {target_spec!r}: {exc}") from None
        if not facts:
            self.client.close()
            raise CorpusError(f"the Dask scheduler at {address} has no workers")
        self.targets: dict = {}
        self._hosts: dict[str, set[str]] = collections.defaultdict(set)  # target hash -> worker hosts
        self._units: dict[str, int] = collections.Counter()
        daemonic = sorted(addr for addr, (_, units, may_fork) in facts.items() if units >= 1 and not may_fork)
        if daemonic:
            self.client.close()
            raise CorpusError(
                f"the worker at {daemonic[0]} runs as a daemonic process and cannot start measuring "
                "subprocesses: start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False"
            )
        for addr, (target_json, units, _) in sorted(facts.items()):
            if units < 1:
                continue
            target = Target.from_json(target_json)
            self.targets[target.hash()] = target
            self._hosts[target.hash()].add(get_address_host(addr))
            self._units[target.hash()] += int(units)
        if not self.targets:
            self.client.close()
            raise CorpusError(
                f"no worker at {address} offers the '{RESOURCE}' resource: start workers with "
                f"`dask worker {address} --nthreads N --resources {RESOURCE}=N`"
            )

    def slots(self, target_hash: str) -> int:
        return 2 * self._units[target_hash]  # twice the units: the next task waits on the worker, not on us

    def submit(self, target_hash: str, kernel, decision):
        # One machine class: any worker with a free unit. Several: the hosts of that class
        # (a host, not a worker address, so a worker its nanny restarts still qualifies).
        hosts = sorted(self._hosts[target_hash]) if len(self.targets) > 1 else None
        return self.client.submit(
            measure_task,
            kernel,
            decision,
            self.target_spec,
            self.timeout_s,
            resources={RESOURCE: 1},
            workers=hosts,
            allow_other_workers=False,
            pure=False,
        )

    def wait(self, futures: list, timeout: float) -> set:
        from distributed import wait

        if not futures:
            return set()
        try:
            return wait(futures, timeout=timeout, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return set()

    def close(self) -> None:
        self.client.close()
