/* tcomp: the OpenMP runtime Tilecraft's parallel kernels run on.

   The CPU backend lowers a kernel split into chunks (an `scf.forall`) through the OpenMP
   dialect; LLVM's OpenMP translation makes each parallel loop a call of
   `__kmpc_fork_call` with an outlined body (the "microtask") that asks
   `__kmpc_for_static_init_8u` for its iterations. This library implements the six entry
   points that code calls (`tcomp.KMPC_CALLS`) for the one shape the backend emits: a
   parallel region holding exactly one worksharing loop over `index` (i64), statically
   scheduled, with no reduction, and nothing else (`tcomp.check_regions`). Built twice: a
   shared library the JIT's symbols are bound to one by one (never loaded globally, where
   it would shadow a real OpenMP runtime for other libraries in the process), and, with
   TCOMP_STATIC, an object linked into every `--emit so` library with its symbols hidden
   (the library then needs nothing but libc; linked `-z nodelete`, since its workers run
   its code for as long as the process lives).

   A region with more than MAX_ARGS arguments aborts: LLVM's translation passes a region's
   captured values as one struct (argc is 1), so no code the backend emits has more.

   What it does differently from libiomp5: iterations are claimed, not assigned. A static
   schedule gives each thread of the team its share up front, and the region ends at a
   join barrier, so a thread that the OS has not scheduled (another process busy on its
   core, a core just woken from idle) stalls every other: measured on the zoo's mlp at 2
   threads with a busy loop on the second core, libiomp5's region took 3x its quiet time,
   slower than one thread. Here every thread that arrives, the caller first, claims an
   unclaimed iteration (one chunk of the kernel: first the one a static schedule would give
   it, then any other) with an atomic bit and runs it, until none is left; the caller then
   waits only for the threads that joined the region, never for one that did not arrive. A
   thread that arrives after the caller has run out of work does not join at all (the
   region is closed: one atomic word holds its generation, the count of threads that joined
   and a closed bit).

   Workers spin on the job generation for TCOMP_SPIN_US (default 50 ms) after their last
   region and then sleep on a futex; the caller wakes sleepers when it publishes a job but
   does not wait for them. A waiting thread yields its core every YIELD_POLLS pauses, and a
   region runs on at most as many threads as the process has cores (its chunks are
   claimed, so fewer threads than chunks is only slower). One region runs on the pool at a time: a region started while
   another is running (another Python thread, or a region inside a region) runs on its
   caller's thread alone, which is correct and serial. The caller's SSE control word
   (MXCSR: rounding, flush-to-zero) is copied to the workers with each job, as libiomp5
   does. After fork() the child starts with no workers. */

#define _GNU_SOURCE
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256
#define MAX_ARGS 16
#define BITMAP 256
#define YIELD_POLLS 4096 /* pauses (about 100 us) between yields of a waiting thread */
#ifdef TCOMP_STATIC /* linked into a shared library of its own: nothing exported */
#define EXPORT __attribute__((visibility("hidden")))
#else
#define EXPORT __attribute__((visibility("default")))
#endif

typedef void (*microtask_t)(int32_t *, int32_t *, ...);

struct job {
  microtask_t fn;
  int argc;
  void *args[MAX_ARGS];
  _Atomic int team;     /* threads the region runs on, the caller included */
  unsigned mxcsr;       /* the caller's SSE control word */
  _Atomic uint64_t taken[BITMAP / 64]; /* iterations below BITMAP claimed, one bit each */
  _Atomic int64_t claims;               /* iterations claimed so far */
  _Atomic int64_t next;                 /* the next iteration from BITMAP on to claim */
  /* generation << 32 | joined workers << 1 | closed */
  _Atomic uint64_t entry;
  _Atomic uint32_t finished; /* joined workers that are done */
};

struct tls {
  struct job *job; /* the region this thread runs in, or NULL */
  int tid;         /* 0: a caller; 1..: a pool worker */
  int claimed;     /* this microtask invocation claimed an iteration */
  int64_t trips;   /* the region's trip count, from its loop */
  int team_request; /* __kmpc_push_num_threads, for the next fork */
};

static _Thread_local struct tls self;

static struct job pool_job;
static _Atomic uint32_t generation; /* the futex word: bumped for every job */
static _Atomic int sleepers;
static _Atomic int pool_busy;
static int workers; /* started so far */
static _Atomic int held; /* tests: workers join no region while set */
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static long spin_ns = 50L * 1000 * 1000;
static int default_team;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void invoke(struct job *j, int32_t *gtid) {
  int32_t btid = *gtid;
  void **a = j->args;
  microtask_t f = j->fn;
  switch (j->argc) {
  case 0: f(gtid, &btid); break;
  case 1: f(gtid, &btid, a[0]); break;
  case 2: f(gtid, &btid, a[0], a[1]); break;
  case 3: f(gtid, &btid, a[0], a[1], a[2]); break;
  case 4: f(gtid, &btid, a[0], a[1], a[2], a[3]); break;
  case 5: f(gtid, &btid, a[0], a[1], a[2], a[3], a[4]); break;
  case 6: f(gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5]); break;
  case 7: f(gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5], a[6]); break;
  case 8: f(gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]); break;
  default:
    f(gtid, &btid, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
      a[14], a[15]);
  }
}

/* Run the region's microtask until no iteration is left to claim. */
static void run_region(struct job *j, int tid) {
  struct tls outer = self; /* a region inside a region: the outer one's state comes back after */
  self.job = j;
  self.tid = tid;
  int32_t gtid = tid;
  for (;;) {
    self.claimed = 0;
    self.trips = 0;
    invoke(j, &gtid);
    if (!self.claimed || atomic_load_explicit(&j->claims, memory_order_relaxed) >= self.trips)
      break;
  }
  self = outer;
}

static long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *worker_main(void *arg) {
  int tid = (int)(intptr_t)arg;
  uint32_t seen = atomic_load(&generation);
  for (;;) {
    uint32_t g = atomic_load_explicit(&generation, memory_order_acquire);
    if (g == seen) {
      long start = now_ns();
      int polls = 0;
      while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
        _mm_pause();
        if (++polls % YIELD_POLLS == 0)
          sched_yield(); /* another thread waiting for this core runs first */
        if (polls % 256 == 0 && now_ns() - start > spin_ns) {
          atomic_fetch_add(&sleepers, 1);
          if (atomic_load(&generation) == seen)
            syscall(SYS_futex, &generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
          atomic_fetch_sub(&sleepers, 1);
          start = now_ns();
        }
      }
    }
    seen = g;
    struct job *j = &pool_job;
    if (atomic_load_explicit(&held, memory_order_relaxed))
      continue;
    /* join the region if it is this generation's, open, and wants this thread */
    uint64_t e = atomic_load_explicit(&j->entry, memory_order_acquire);
    int joined = 0;
    while ((uint32_t)(e >> 32) == g && !(e & 1) && tid < atomic_load_explicit(&j->team, memory_order_relaxed)) {
      if (atomic_compare_exchange_weak_explicit(&j->entry, &e, e + 2, memory_order_acq_rel, memory_order_acquire)) {
        joined = 1;
        break;
      }
    }
    if (!joined)
      continue;
    if (_mm_getcsr() != j->mxcsr)
      _mm_setcsr(j->mxcsr);
    run_region(j, tid);
    atomic_fetch_add_explicit(&j->finished, 1, memory_order_release);
  }
  return NULL;
}

static void after_fork_child(void) {
  workers = 0;
  atomic_store(&pool_busy, 0);
  atomic_store(&sleepers, 0);
  pthread_mutex_init(&start_lock, NULL);
}

static void init(void) {
  cpu_set_t set;
  default_team = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (default_team < 1)
    default_team = 1;
  const char *s = getenv("TCOMP_SPIN_US");
  if (s && *s)
    spin_ns = atol(s) * 1000L;
  pthread_atfork(NULL, NULL, after_fork_child);
}

/* Start workers 1 .. team-1 that are not running yet; the workers there are. */
static int start_workers(int team) {
  if (team - 1 <= workers)
    return workers;
  pthread_mutex_lock(&start_lock);
  sigset_t all, old; /* workers take no signals: they go to the process's own threads */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  while (workers < team - 1 && workers < MAX_THREADS - 1) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 8u << 20); /* as a main thread's: kernels keep tiles on the stack */
    pthread_t t;
    int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(workers + 1));
    pthread_attr_destroy(&attr);
    if (rc != 0)
      break; /* fewer threads: the caller claims the rest */
    pthread_detach(t);
    workers++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_mutex_unlock(&start_lock);
  return workers;
}

EXPORT int32_t __kmpc_global_thread_num(void *loc) {
  (void)loc;
  return self.tid;
}

EXPORT void __kmpc_push_num_threads(void *loc, int32_t gtid, int32_t n) {
  (void)loc;
  (void)gtid;
  self.team_request = n;
}

EXPORT void __kmpc_fork_call(void *loc, int32_t argc, microtask_t fn, ...) {
  (void)loc;
  pthread_once(&init_once, init);
  int team = self.team_request > 0 ? self.team_request : default_team;
  self.team_request = 0;
  if (team > default_team) /* more chunks than cores: the threads there are claim them all */
    team = default_team;
  if (argc > MAX_ARGS) {
    fprintf(stderr, "tcomp: a parallel region with %d arguments (at most %d)\n", argc, MAX_ARGS);
    abort();
  }
  struct job local;
  struct job *j = &local;
  int expected = 0;
  int pooled = team > 1 && self.job == NULL &&
               atomic_compare_exchange_strong(&pool_busy, &expected, 1);
  if (pooled) {
    j = &pool_job;
    if (start_workers(team) == 0) {
      atomic_store(&pool_busy, 0);
      pooled = 0;
      j = &local;
    }
  }
  va_list ap;
  va_start(ap, fn);
  for (int i = 0; i < argc; i++)
    j->args[i] = va_arg(ap, void *);
  va_end(ap);
  j->fn = fn;
  j->argc = argc;
  atomic_store_explicit(&j->team, team, memory_order_relaxed);
  j->mxcsr = _mm_getcsr();
  for (int w = 0; w < BITMAP / 64; w++)
    atomic_store_explicit(&j->taken[w], 0, memory_order_relaxed);
  atomic_store_explicit(&j->claims, 0, memory_order_relaxed);
  atomic_store_explicit(&j->next, BITMAP, memory_order_relaxed);
  atomic_store_explicit(&j->finished, 0, memory_order_relaxed);
  if (!pooled) {
    run_region(j, 0);
    return;
  }
  uint32_t g = atomic_load_explicit(&generation, memory_order_relaxed) + 1;
  atomic_store_explicit(&j->entry, (uint64_t)g << 32, memory_order_release);
  atomic_store(&generation, g); /* publishes the job (sequentially consistent: see `sleepers`) */
  if (atomic_load(&sleepers) > 0)
    syscall(SYS_futex, &generation, FUTEX_WAKE_PRIVATE, MAX_THREADS, NULL, NULL, 0);
  run_region(j, 0);
  /* close the region: no worker joins from now on; wait for those that did */
  uint64_t e = atomic_fetch_or_explicit(&j->entry, 1, memory_order_acq_rel);
  uint32_t joined = (uint32_t)(e & 0xffffffffu) >> 1;
  for (unsigned polls = 1; atomic_load_explicit(&j->finished, memory_order_acquire) < joined; polls++) {
    _mm_pause();
    if (polls % YIELD_POLLS == 0) /* a worker on this core (more threads than cores) runs */
      sched_yield();
  }
  atomic_store_explicit(&pool_busy, 0, memory_order_release);
}

/* An unclaimed iteration of `trips`, or -1: first the one a static schedule would give
   this thread (so that when every thread arrives, each runs the same part of every
   kernel, whose data it made in the kernel before), then the others in turn. */
static int64_t claim(struct job *j, int64_t trips) {
  int64_t mapped = trips < BITMAP ? trips : BITMAP;
  int team = atomic_load_explicit(&j->team, memory_order_relaxed);
  team = team > 0 ? team : 1;
  int64_t first = mapped * (self.tid % team) / team;
  for (int64_t k = 0; k < mapped; k++) {
    int64_t i = (first + k) % mapped;
    uint64_t bit = 1ull << (i % 64);
    if (atomic_load_explicit(&j->taken[i / 64], memory_order_relaxed) & bit)
      continue;
    if (!(atomic_fetch_or_explicit(&j->taken[i / 64], bit, memory_order_relaxed) & bit)) {
      atomic_fetch_add_explicit(&j->claims, 1, memory_order_relaxed);
      return i;
    }
  }
  int64_t i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
  if (i < trips) {
    atomic_fetch_add_explicit(&j->claims, 1, memory_order_relaxed);
    return i;
  }
  return -1;
}

/* The worksharing loop asks for its iterations (normalized: *lower = 0, *upper = trips - 1,
   incr = 1, as LLVM's OpenMPIRBuilder emits them): one unclaimed iteration, or none. */
EXPORT void __kmpc_for_static_init_8u(void *loc, int32_t gtid, int32_t schedtype, int32_t *lastiter,
                                      uint64_t *lower, uint64_t *upper, int64_t *stride, int64_t incr,
                                      int64_t chunk) {
  (void)loc;
  (void)gtid;
  (void)schedtype;
  (void)chunk;
  uint64_t lo = *lower, hi = *upper;
  int64_t step = incr ? incr : 1;
  int64_t trips = hi >= lo ? (int64_t)((hi - lo) / (uint64_t)step) + 1 : 0;
  self.trips = trips;
  if (!self.job) { /* not in a region: every iteration */
    *lastiter = trips > 0;
    *stride = trips * step;
    return;
  }
  int64_t i = claim(self.job, trips);
  if (i >= 0) {
    *lower = *upper = lo + (uint64_t)i * (uint64_t)step;
    *lastiter = i == trips - 1;
    self.claimed = 1;
  } else {
    *lower = hi + 1; /* empty: upper - lower + 1 == 0 */
    *lastiter = 0;
  }
  *stride = trips * step;
}

EXPORT void __kmpc_for_static_fini(void *loc, int32_t gtid) {
  (void)loc;
  (void)gtid;
}

/* The loop's closing barrier: the region ends with it, and `__kmpc_fork_call` returns only
   when every claimed iteration is done, which is all the barrier would guarantee. */
EXPORT void __kmpc_barrier(void *loc, int32_t gtid) {
  (void)loc;
  (void)gtid;
}

/* For tests: the workers started; workers held back from every region (a thread the OS
   does not run). */
EXPORT int tcomp_workers(void) { return workers; }
EXPORT void tcomp_hold_workers(int on) { atomic_store(&held, on); }
