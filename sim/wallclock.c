/* A steppable wall clock for one process: CLOCK_REALTIME (and its coarse
 * variant), gettimeofday() and time() answer the real time plus an offset in
 * seconds read from the file named by PEERJOBS_WALL_OFFSET_FILE ("+600",
 * "-600", "0"); CLOCK_MONOTONIC and everything else are untouched.
 *
 * Why not libfaketime (which `--clock-tool libfaketime` still uses): the
 * Debian 12 build (0.9.10) wakes timed lock waits late — a Python
 * `Lock.acquire(timeout=...)` released by another thread wakes up to 60 ms
 * late, and trio's `to_thread` hand-off, which the peer's committer uses for
 * its syncs, up to 0.2-2 s late — and Python >= 3.11's time.sleep() fails
 * with EINVAL under FAKETIME_DONT_FAKE_MONOTONIC (upstream issue #426). A
 * peer under it shows gray failures of libfaketime's making.
 *
 * The file is read again at most every RECHECK_NS of monotonic time, so a
 * step takes effect within 10 ms at the cost of one open/read/close per
 * 10 ms of clock reads. Built at run time by sim/nemesis.py
 * (`cc -shared -fPIC -O2 -o wallclock.so wallclock.c -ldl`).
 * Not modelled: absolute waits on CLOCK_REALTIME (pthread_cond_timedwait,
 * clock_nanosleep TIMER_ABSTIME) do not move with the offset, as they would
 * under a real step; Python and trio wait on relative or monotonic times.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RECHECK_NS 10000000LL   /* look at the offset file every 10 ms */
#define OFFSET_S_MAX 100000000.0 /* |offset| bound: about three years */

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static long long offset_ns;  /* read and written with __atomic builtins */
static long long next_check_ns;

static long long mono_ns(void) {
    struct timespec ts;
    real_clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void refresh(void) {
    long long now = mono_ns();
    if (now < __atomic_load_n(&next_check_ns, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&next_check_ns, now + RECHECK_NS, __ATOMIC_RELAXED);
    const char *path = getenv("PEERJOBS_WALL_OFFSET_FILE");
    if (!path)
        return;
    int saved = errno;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[64];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = '\0';
            char *end = NULL;
            double s = strtod(buf, &end);
            /* a half-written or bad file keeps the last good offset */
            if (end != buf && s >= -OFFSET_S_MAX && s <= OFFSET_S_MAX)
                __atomic_store_n(&offset_ns, (long long)(s * 1e9), __ATOMIC_RELAXED);
        }
    }
    errno = saved;
}

static int init(void) {
    if (!real_clock_gettime)
        real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    return real_clock_gettime != NULL;
}

static void shift(struct timespec *ts) {
    long long t = ts->tv_sec * 1000000000LL + ts->tv_nsec + __atomic_load_n(&offset_ns, __ATOMIC_RELAXED);
    ts->tv_sec = t / 1000000000LL;
    ts->tv_nsec = t % 1000000000LL;
    if (ts->tv_nsec < 0) {
        ts->tv_nsec += 1000000000LL;
        ts->tv_sec -= 1;
    }
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    if (!init()) {
        errno = ENOSYS;
        return -1;
    }
    int r = real_clock_gettime(clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        refresh();
        shift(ts);
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    tv->tv_sec = ts.tv_sec;  /* (glibc declares tv nonnull) */
    tv->tv_usec = ts.tv_nsec / 1000;
    if (tz) {
        struct timezone *z = tz;
        z->tz_minuteswest = 0;
        z->tz_dsttime = 0;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
