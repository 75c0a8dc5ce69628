"""tcomp, the OpenMP runtime of parallel kernels (`backends/cpu/tcomp.c`): its entry points
driven from a C program the way LLVM's OpenMP translation calls them (every iteration run
exactly once, by whichever thread claims it; a worker that never arrives does not stall
the region; regions inside regions and from two threads at once; after fork()), and the
check that refuses a parallel region it does not run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from torch_mlir import ir

from tilecraft.backends.cpu import lowering, tcomp

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

HARNESS = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
void __kmpc_fork_call(void *, int32_t, void *, ...);
void __kmpc_push_num_threads(void *, int32_t, int32_t);
int32_t __kmpc_global_thread_num(void *);
void __kmpc_for_static_init_8u(void *, int32_t, int32_t, int32_t *, uint64_t *, uint64_t *, int64_t *,
                               int64_t, int64_t);
void __kmpc_for_static_fini(void *, int32_t);
void __kmpc_barrier(void *, int32_t);
int tcomp_workers(void);
void tcomp_hold_workers(int);

struct task { int64_t trips; _Atomic int runs[512]; _Atomic int by_worker; int nested; long work_ns; };

static void region(struct task *t, int team);

/* the shape of an outlined OpenMP loop body */
static void micro(int32_t *gtid, int32_t *btid, struct task *t) {
  (void)btid;
  int32_t last = 0;
  uint64_t lo = 0, hi = (uint64_t)t->trips - 1;
  int64_t stride = 1;
  int32_t id = __kmpc_global_thread_num(NULL);
  __kmpc_for_static_init_8u(NULL, id, 34, &last, &lo, &hi, &stride, 1, 0);
  for (uint64_t i = lo; i <= hi && hi - lo < 512; i++) {
    atomic_fetch_add(&t->runs[i], 1);
    if (*gtid != 0) atomic_fetch_add(&t->by_worker, 1);
    if (t->work_ns) {  /* busy for a while: time for a worker to claim the other iteration */
      struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
      do clock_gettime(CLOCK_MONOTONIC, &b);
      while ((b.tv_sec - a.tv_sec) * 1000000000L + b.tv_nsec - a.tv_nsec < t->work_ns);
    }
    if (t->nested) {  /* a region inside a region: runs on this thread */
      struct task inner; memset(&inner, 0, sizeof inner); inner.trips = 3;
      region(&inner, 2);
      for (int k = 0; k < 3; k++) if (inner.runs[k] != 1) t->nested = -1000;
    }
  }
  __kmpc_for_static_fini(NULL, id);
  __kmpc_barrier(NULL, id);
}

static void region(struct task *t, int team) {
  __kmpc_push_num_threads(NULL, __kmpc_global_thread_num(NULL), team);
  __kmpc_fork_call(NULL, 1, (void *)micro, t);
}

static int check(int64_t trips, int team, int nested) {
  struct task t; memset(&t, 0, sizeof t); t.trips = trips; t.nested = nested;
  region(&t, team);
  for (int64_t i = 0; i < trips; i++)
    if (t.runs[i] != 1) {
      printf("trips %ld team %d: iteration %ld ran %d times\n", trips, team, i, t.runs[i]);
      return 1;
    }
  if (t.nested < 0) { printf("a nested region lost iterations\n"); return 1; }
  return 0;
}

static void *other(void *arg) {
  int *bad = arg;
  for (int r = 0; r < 2000; r++) *bad |= check(5, 2, 0);
  return NULL;
}

int main(void) {
  int bad = 0;
  int64_t trips[] = {1, 2, 3, 7, 64, 65, 300};
  for (int r = 0; r < 200; r++)
    for (unsigned k = 0; k < sizeof trips / sizeof *trips; k++)
      for (int team = 1; team <= 4; team++) bad |= check(trips[k], team, 0);
  for (int r = 0; r < 200; r++) bad |= check(4, 2, 1);
  /* the worker joins some regions when it is free to */
  struct task t; int joined = 0;
  for (int r = 0; r < 2000 && !joined; r++) {
    memset(&t, 0, sizeof t); t.trips = 2; t.work_ns = 200000; region(&t, 2); joined = t.by_worker > 0;
  }
  printf("workers %d, a worker ran iterations: %d\n", tcomp_workers(), joined);
  /* held workers never arrive: the caller runs every iteration and does not wait */
  tcomp_hold_workers(1);
  for (int r = 0; r < 500; r++) {
    memset(&t, 0, sizeof t); t.trips = 2; region(&t, 2);
    if (t.runs[0] != 1 || t.runs[1] != 1 || t.by_worker) { printf("held: wrong\n"); bad = 1; break; }
  }
  tcomp_hold_workers(0);
  /* two threads start regions at once: one on the pool, the other alone */
  pthread_t th; int bad2 = 0;
  pthread_create(&th, NULL, other, &bad2);
  for (int r = 0; r < 2000; r++) bad |= check(5, 2, 0);
  pthread_join(th, NULL);
  bad |= bad2;
  /* a child of fork() starts its own workers */
  pid_t pid = fork();
  if (pid == 0) { int b = 0; for (int r = 0; r < 200; r++) b |= check(7, 2, 0); _exit(b); }
  int status = 0; waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status)) { printf("child: wrong\n"); bad = 1; }
  printf(bad ? "FAIL\n" : "OK\n");
  return bad;
}
"""


def test_runtime_semantics(tmp_path):
    lib = tcomp.library()
    assert lib is not None
    src = tmp_path / "harness.c"
    src.write_text(HARNESS)
    exe = tmp_path / "harness"
    subprocess.run(
        ["cc", "-O2", "-pthread", "-o", str(exe), str(src), lib, f"-Wl,-rpath,{lib.rsplit('/', 1)[0]}"], check=True
    )
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"workers {min(cores, 4) - 1}," in proc.stdout  # a team of 4 runs on the cores there are
    if cores > 1:
        assert "a worker ran iterations: 1" in proc.stdout


def test_library_exports_what_the_translation_calls():
    lib = tcomp.library()
    names = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    assert all(f" {name}\n" in names for name in tcomp.KMPC_CALLS)


def test_iomp5_on_request(monkeypatch):
    monkeypatch.setenv("TILECRAFT_OPENMP", "iomp5")
    assert tcomp.library() is None
    assert lowering.openmp_library().endswith("libiomp5.so")


REDUCTION = """
func.func @k(%n: index, %m: memref<?xf32>) -> f32 {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %z = arith.constant 0.0 : f32
  %r = scf.parallel (%i) = (%c0) to (%n) step (%c1) init (%z) -> f32 {
    %v = memref.load %m[%i] : memref<?xf32>
    scf.reduce(%v : f32) {
    ^bb0(%a: f32, %b: f32):
      %s = arith.addf %a, %b : f32
      scf.reduce.return %s : f32
    }
  }
  return %r : f32
}
"""
PLAIN = (
    REDUCTION.replace("-> f32 {\n    %v", "{\n    %v")
    .replace(
        "scf.reduce(%v : f32) {\n    ^bb0(%a: f32, %b: f32):\n      %s = arith.addf %a, %b : f32\n      "
        "scf.reduce.return %s : f32\n    }",
        "memref.store %v, %m[%i] : memref<?xf32>",
    )
    .replace(" init (%z)", "")
    .replace("%r = scf.parallel", "scf.parallel")
    .replace("return %r : f32", "return %z : f32")
)
TO_LLVM = (
    "builtin.module(convert-scf-to-openmp{num-threads=2},convert-scf-to-cf,finalize-memref-to-llvm,"
    "convert-arith-to-llvm,convert-func-to-llvm,convert-openmp-to-llvm,reconcile-unrealized-casts)"
)


@pytest.mark.parametrize(
    "text, why",
    [
        ("llvm.func @f() {\n  omp.parallel {\n    omp.barrier\n    omp.terminator\n  }\n  llvm.return\n}", "ops"),
        (REDUCTION, "a worksharing loop with .*reduction"),
        (PLAIN, None),
    ],
)
def test_a_region_it_does_not_run_is_refused(text, why):
    from torch_mlir import passmanager

    with ir.Context(), ir.Location.unknown():
        module = ir.Module.parse(text)
        if "func.func" in text:
            passmanager.PassManager.parse(TO_LLVM).run(module.operation)
        if why is None:
            tcomp.check_regions(module)  # the plain loop: accepted
        else:
            with pytest.raises(RuntimeError, match=f"does not run: {why}"):
                tcomp.check_regions(module)


def test_not_loaded_globally():
    """The JIT is bound to tcomp symbol by symbol: nothing of it is visible to the process
    (a library that links a real OpenMP runtime and loads later must not find ours)."""
    import ctypes

    from tilecraft import driver
    from tilecraft.corpus import zoo

    driver.compile_model("mlp", threads=2).fn(*zoo.get("mlp")[1])
    assert not hasattr(ctypes.CDLL(None), "tcomp_workers")


def test_shared_library_carries_the_runtime(tmp_path):
    from tilecraft import driver

    out = str(tmp_path / "mlp.so")
    driver.compile_model("mlp", threads=2, emit="so", output=out)
    deps = subprocess.run(["ldd", out], capture_output=True, text=True).stdout
    assert "tcomp" not in deps and "iomp5" not in deps and "not found" not in deps
    exported = subprocess.run(["nm", "-D", "--defined-only", out], capture_output=True, text=True).stdout
    assert "__kmpc" not in exported and "tcomp" not in exported
    dynamic = subprocess.run(["readelf", "-d", out], capture_output=True, text=True).stdout
    assert "NODELETE" in dynamic  # its workers run its code: never unloaded


UNLOAD = r"""
import ctypes, gc, os, signal, sys, time
from tilecraft import driver, frontend
from tilecraft.backends.cpu import runtime, tcomp
from tilecraft.corpus import zoo

model, inputs = zoo.get("conv_autoencoder")
signal.signal(signal.SIGUSR1, lambda *a: None)
# the two-core JIT (a shared library this process loads): on the shared pool
c = driver.compile_model("conv_autoencoder", threads=2)
for _ in range(20):
    c.fn(*inputs)
workers = ctypes.CDLL(tcomp.library()).tcomp_workers()
del c
gc.collect()  # closed while its regions' workers still spin
# an --emit so library (its own tcomp), loaded, run, closed
imp = frontend.import_module(model, inputs, spec="conv_autoencoder")
out = os.path.join(sys.argv[1], "m.so")
driver.compile_model(imp, threads=2, emit="so", output=out)
fn = runtime.from_shared_library(out, imp.func_name, imp.signature, bound=imp.params, unload=True)
for _ in range(20):
    fn(*inputs)
del fn
gc.collect()
for _ in range(20):  # signals for every thread that takes them
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.01)
print("survived", workers)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the two-core JIT needs two cores")
def test_libraries_closed_under_running_workers(tmp_path):
    """Closing a compiled library whose regions' workers are still spinning (or sleeping)
    does not take their code away: the process lives on, and takes signals."""
    import sys

    proc = subprocess.run([sys.executable, "-c", UNLOAD, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    survived, workers = proc.stdout.split()[-2:]
    assert survived == "survived" and int(workers) > 0  # the JIT's library ran on the shared pool


def test_compiled_kernels_run_without_their_workers():
    """A 2-thread mlp whose worker never arrives (held) still finishes, right, on the caller."""
    import ctypes

    import torch

    from tilecraft import driver
    from tilecraft.corpus import zoo

    model, inputs = zoo.get("mlp")
    compiled = driver.compile_model("mlp", threads=2)
    rt = ctypes.CDLL(tcomp.library())
    with torch.no_grad():
        ref = model(*inputs)
    rt.tcomp_hold_workers(1)
    try:
        held = [compiled.fn(*inputs) for _ in range(3)]
    finally:
        rt.tcomp_hold_workers(0)
    assert all(driver.compare(out, ref).ok for out in held)
    assert driver.compare(compiled.fn(*inputs), ref).ok
    if len(os.sched_getaffinity(0)) > 1:
        assert rt.tcomp_workers() > 0  # the JIT's regions ran on this library's pool
