/* A slow disk for one process: every fsync/fdatasync first sleeps
 * PEERJOBS_SLOWSYNC_MS milliseconds, then does the real call.
 *
 * Built at run time by sim/nemesis.py (`cc -shared -fPIC -O2 -o slowsync.so
 * slowsync.c -ldl`) and loaded into one peer with LD_PRELOAD by
 * `python -m sim cluster --chaos slow-disk`. The delay is read once, at the
 * first sync; a missing, empty or non-numeric value means no delay, and the
 * value is capped at SLOWSYNC_MS_MAX so that a typo cannot wedge a peer.
 *
 * The sleep happens in whichever thread calls the sync, exactly as a slow
 * device would block it: this is the point (the peer must not let anything
 * that has to stay timely, such as membership, wait behind it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SLOWSYNC_MS_MAX 60000L

static long delay_ms = -1;

static void slow_down(void) {
    if (delay_ms < 0) {  /* a benign race: every thread computes the same value */
        const char *s = getenv("PEERJOBS_SLOWSYNC_MS");
        char *end = NULL;
        long ms = s ? strtol(s, &end, 10) : 0;
        if (!s || end == s || *end != '\0' || ms < 0)
            ms = 0;
        delay_ms = ms > SLOWSYNC_MS_MAX ? SLOWSYNC_MS_MAX : ms;
    }
    if (delay_ms > 0) {
        int saved = errno;
        struct timespec left = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0 && errno == EINTR) {
        }
        errno = saved;
    }
}

typedef int (*sync_fn)(int);

/* The real call, looked up once (a benign race, like delay_ms). */
static int call_real(const char *name, sync_fn *cache, int fd) {
    if (!*cache)
        *cache = (sync_fn)dlsym(RTLD_NEXT, name);
    if (!*cache) {
        errno = ENOSYS;
        return -1;
    }
    slow_down();
    return (*cache)(fd);
}

int fsync(int fd) {
    static sync_fn real;
    return call_real("fsync", &real, fd);
}

int fdatasync(int fd) {
    static sync_fn real;
    return call_real("fdatasync", &real, fd);
}
