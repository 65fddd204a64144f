/* threads.c -- a small pthread pool (not OpenMP: libgomp hangs in a child
 * forked after the parent used it, and PyTorch DataLoader workers fork).
 *
 * One job at a time owns the pool.  A job is fn(ctx, u) for u in [0, units);
 * the caller and up to nthreads - 1 workers take units from an atomic
 * counter.  A second caller that finds the pool busy runs its whole job on
 * its own thread: no waiting on another job, no deadlock.  Workers start
 * lazily, on the first job that wants them.  After fork() the child forgets
 * the workers (they do not exist there) and starts new ones when needed. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common.h"
#include "fastloss.h"

#define FL_MAX_THREADS 256

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;  /* workers: a new job was published */
    pthread_cond_t done;  /* caller: the last worker left the job */
    int nworkers;         /* worker threads started */
    int busy;             /* a job owns the pool */
    uint64_t gen;         /* bumped for every job */
    int open;             /* the current job still accepts workers */
    int seats;            /* workers it may still take */
    int active;           /* workers inside it */
    fl_unit_fn fn;
    void *ctx;
    int64_t units;
    _Atomic int64_t next; /* next unit to hand out */
} P = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static _Atomic int fl_nthreads; /* 0: not chosen yet */

static void run_units(fl_unit_fn fn, void *ctx, int64_t units)
{
    for (;;) {
        int64_t u = atomic_fetch_add_explicit(&P.next, 1, memory_order_relaxed);
        if (u >= units)
            return;
        fn(ctx, u);
    }
}

static void *worker(void *arg)
{
    uint64_t seen = (uint64_t)(uintptr_t)arg;
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (P.gen == seen)
            pthread_cond_wait(&P.wake, &P.mu);
        seen = P.gen;
        if (!P.open || P.seats == 0)
            continue;
        P.seats--;
        P.active++;
        fl_unit_fn fn = P.fn;
        void *ctx = P.ctx;
        int64_t units = P.units;
        pthread_mutex_unlock(&P.mu);
        run_units(fn, ctx, units);
        pthread_mutex_lock(&P.mu);
        if (--P.active == 0)
            pthread_cond_signal(&P.done);
    }
    return NULL;
}

/* fork: hold the lock across fork() so the child gets a consistent copy;
 * the child then has no workers and an idle pool. */
static void atfork_prepare(void) { pthread_mutex_lock(&P.mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&P.mu); }
static void atfork_child(void)
{
    pthread_mutex_init(&P.mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    pthread_cond_init(&P.done, NULL);
    P.nworkers = 0;
    P.busy = 0;
    P.open = 0;
    P.seats = 0;
    P.active = 0;
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Called with P.mu held.  Returns the number of workers running. */
static int start_workers(int want)
{
    if (want > FL_MAX_THREADS - 1)
        want = FL_MAX_THREADS - 1;
    while (P.nworkers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker, (void *)(uintptr_t)P.gen);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break; /* run with what we have */
        P.nworkers++;
    }
    return P.nworkers;
}

void fl_parallel_for(fl_unit_fn fn, void *ctx, int64_t units, int nthreads)
{
    if (nthreads > units)
        nthreads = (int)units;
    if (nthreads > 1) {
        pthread_once(&atfork_once, register_atfork);
        pthread_mutex_lock(&P.mu);
        if (!P.busy && start_workers(nthreads - 1) > 0) {
            P.busy = 1;
            P.fn = fn;
            P.ctx = ctx;
            P.units = units;
            atomic_store(&P.next, 0);
            P.seats = nthreads - 1 < P.nworkers ? nthreads - 1 : P.nworkers;
            P.open = 1;
            P.gen++;
            pthread_cond_broadcast(&P.wake);
            pthread_mutex_unlock(&P.mu);

            run_units(fn, ctx, units);

            pthread_mutex_lock(&P.mu);
            P.open = 0; /* late wakers stay out; units are all taken anyway */
            while (P.active > 0)
                pthread_cond_wait(&P.done, &P.mu);
            P.busy = 0;
            pthread_mutex_unlock(&P.mu);
            return;
        }
        pthread_mutex_unlock(&P.mu);
    }
    for (int64_t u = 0; u < units; u++) /* alone, on this thread */
        fn(ctx, u);
}

/* ---- thread count ----------------------------------------------------------- */

static int default_threads(void)
{
    const char *s = getenv("OMP_NUM_THREADS");
    if (s && *s) {
        char *end;
        long v = strtol(s, &end, 10); /* "4,2" (nested) -> 4 */
        if (end != s && v > 0)
            return v > FL_MAX_THREADS ? FL_MAX_THREADS : (int)v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0)
            return c > FL_MAX_THREADS ? FL_MAX_THREADS : c;
    }
    return 1;
}

int fl_set_num_threads(int n)
{
    if (n <= 0)
        n = default_threads();
    if (n > FL_MAX_THREADS)
        n = FL_MAX_THREADS;
    atomic_store(&fl_nthreads, n);
    return n;
}

int fl_get_num_threads(void)
{
    int n = atomic_load(&fl_nthreads);
    return n > 0 ? n : fl_set_num_threads(0);
}

int fl_threads_for(int64_t n) { return n < FL_PAR_MIN ? 1 : fl_get_num_threads(); }
