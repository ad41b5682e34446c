/* tokenbench's native stream reader: one thread that reads and stamps every HTTP response of a
 * Locust process (issue 11 §2).
 *
 * Why: in Python, one chunk read costs a hub switch, a libev dispatch, a greenlet switch and a
 * recv (about 10 µs on a slow 2-core VM), all on the event loop that also sends requests and
 * interprets finished streams; when that loop is busy the read, and so its stamp, waits. Here a
 * thread that never takes the GIL waits in epoll_wait on every response socket the process has
 * handed it, recv()s each readable one and stamps that read with clock_gettime(CLOCK_MONOTONIC),
 * the clock time.monotonic_ns() reads. It only finds where the response ends (status line,
 * headers, chunked framing, Content-Length or close), so that the connection can be reused; the
 * Python side replays the kept reads through the same HTTP parser and SSE splitter as before, so a
 * response means exactly what it meant on the pure-Python path.
 *
 * A finished (or failed, or bounded) response is queued and an eventfd is written; the process's
 * gevent loop watches that eventfd and wakes the waiting user. All state is behind one mutex; the
 * thread holds it only while it handles one ready socket.
 *
 * The framing is in nativeframe.h (part 2 of 2). Build: gcc -O2 -shared -fPIC -pthread
 * (harness/cbuild.py); loaded with ctypes (nativeread.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nativeframe.h"

typedef struct {
    int ep, efd, maxfd;
    Stream *streams;
    int *done;        /* ring of finished fds */
    int done_head, done_count;
    pthread_mutex_t mu;
    pthread_t thread;
    volatile int stop;
    int want_nice, want_sched;
    volatile int fifo;
    volatile int64_t cpu_ns; /* the thread's own CPU time, refreshed after each batch of reads */
    volatile int nice, started;
} Reader;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void finish(Reader *r, int fd, int result) {
    Stream *st = &r->streams[fd];
    st->result = result;
    epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
    r->done[(r->done_head + r->done_count) % r->maxfd] = fd;
    r->done_count++;
}

/* One recv on a readable socket: stamp it, keep it, advance the framing. Called with the lock held. */
static int on_readable(Reader *r, int fd) {
    Stream *st = &r->streams[fd];
    if (!st->active || st->result != R_RUNNING) return 0;
    if (grow((void **)&st->buf, &st->cap, st->len + 65536, 1) < 0) { finish(r, fd, R_ERROR); st->err = ENOMEM; return 1; }
    ssize_t n = recv(fd, st->buf + st->len, (size_t)(st->cap - st->len), MSG_DONTWAIT);
    int64_t t = now_ns();
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        st->err = errno;
        finish(r, fd, R_ERROR);
        return 1;
    }
    if (n == 0) {
        finish(r, fd, R_EOF); /* a close-delimited body ends here too */
        return 1;
    }
    if (st->nreads + 1 > st->rcap && grow_pair(&st->ends, &st->stamps, &st->rcap) < 0) {
        st->err = ENOMEM;
        finish(r, fd, R_ERROR);
        return 1;
    }
    st->len += n;
    st->ends[st->nreads] = st->len;
    st->stamps[st->nreads] = t;
    st->nreads++;
    if (st->len > st->max_bytes || st->nreads > st->max_reads) { finish(r, fd, R_TOO_LARGE); return 1; }
    int64_t before = st->blen;
    advance(st);
    if (st->blen > before) {
        if (st->nbody + 1 > st->bkcap && grow_pair(&st->bends, &st->bstamps, &st->bkcap) < 0) {
            st->err = ENOMEM;
            finish(r, fd, R_ERROR);
            return 1;
        }
        st->bends[st->nbody] = st->blen;
        st->bstamps[st->nbody] = t;
        st->nbody++;
    }
    if (st->result != R_RUNNING) {
        int res = st->result;
        st->result = R_RUNNING;
        finish(r, fd, res);
        return 1;
    }
    return 0;
}

static void *run(void *arg) {
    Reader *r = arg;
    struct epoll_event evs[256];
    /* A read waits for a core when another task holds it: under CFS a woken thread preempts only
       past the wake-up granularity (ms), and a server at a better nice in another autogroup (the
       fidelity benchmark's truth server) is hardly ever preempted at all. Measured at 256 streams on
       a 2-core VM: stamp-lag p99 1.6 ms at nice -10, 0.14 ms as SCHED_FIFO 1. So, by want_sched:
       2 = SCHED_FIFO at the lowest real-time priority (it only ever waits in epoll_wait or does one
       recv; the kernel's RT throttling still leaves others 5 %), falling back to 1 = nice
       want_nice for this thread alone, falling back to 0 = as started. Each needs CAP_SYS_NICE;
       what was granted is reported (tbr_sched, tbr_nice). */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    struct sched_param sp = {.sched_priority = 1};
    if (r->want_sched >= 2 && pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0) r->fifo = 1;
    if (!r->fifo && r->want_sched >= 1 && setpriority(PRIO_PROCESS, (id_t)tid, r->want_nice) != 0) {
        /* keep the default */
    }
    errno = 0;
    int got = getpriority(PRIO_PROCESS, (id_t)tid);
    r->nice = errno ? 0 : got;
    r->started = 1;
    while (!r->stop) {
        int n = epoll_wait(r->ep, evs, 256, 200);
        if (n <= 0) continue;
        int woke = 0;
        /* The lock per socket, not per batch: a batch of 256 reads holds it for ~1 ms on a slow VM,
           and the Python thread's watch/take calls (its event loop) would wait that long. */
        for (int i = 0; i < n; i++) {
            pthread_mutex_lock(&r->mu);
            woke |= on_readable(r, evs[i].data.fd);
            pthread_mutex_unlock(&r->mu);
        }
        if (woke) {
            uint64_t one = 1;
            ssize_t w = write(r->efd, &one, sizeof one);
            (void)w;
        }
        struct timespec cpu;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu);
        r->cpu_ns = (int64_t)cpu.tv_sec * 1000000000LL + cpu.tv_nsec;
    }
    return NULL;
}

void *tbr_new(int maxfd, int want_sched, int want_nice) {
    Reader *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->maxfd = maxfd;
    r->want_nice = want_nice;
    r->want_sched = want_sched;
    r->streams = calloc((size_t)maxfd, sizeof(Stream));
    r->done = calloc((size_t)maxfd, sizeof(int));
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!r->streams || !r->done || r->ep < 0 || r->efd < 0) return NULL;
    pthread_mutex_init(&r->mu, NULL);
    if (pthread_create(&r->thread, NULL, run, r) != 0) return NULL;
    return r;
}

int tbr_eventfd(void *h) { return ((Reader *)h)->efd; }

/* The reader thread's niceness once it runs (waits for the thread to start). */
int tbr_nice(void *h) {
    Reader *r = h;
    while (!r->started) usleep(100);
    return r->nice;
}

/* The reader thread's CPU time so far, in ns (as of its last batch of reads). */
int64_t tbr_cpu_ns(void *h) { return ((Reader *)h)->cpu_ns; }

/* 1 if the reader thread runs SCHED_FIFO (after tbr_nice has waited for it to start). */
int tbr_fifo(void *h) { return ((Reader *)h)->fifo; }

/* Hand fd's response to the thread. Bytes already waiting are fine (epoll is level-triggered). */
int tbr_watch(void *h, int fd, int64_t max_bytes, int64_t max_reads) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return -EBADF;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    if (st->active) { pthread_mutex_unlock(&r->mu); return -EBUSY; }
    st->active = 1;
    st->state = S_HEAD;
    st->result = R_RUNNING;
    st->err = 0;
    st->len = st->nreads = st->pos = st->head_start = st->remaining = 0;
    st->blen = st->nbody = st->head_len = st->term_start = 0;
    st->chunked = 0;
    st->max_bytes = max_bytes;
    st->max_reads = max_reads;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    int rc = epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev);
    if (rc < 0) { rc = -errno; st->active = 0; }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Stop reading fd (the request's deadline passed); what was read stays for tbr_take. */
void tbr_cancel(void *h, int fd) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    if (st->active && st->result == R_RUNNING) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
        st->result = R_CANCELLED;
    }
    pthread_mutex_unlock(&r->mu);
}

/* Finished fds, oldest first, at most n; reads the eventfd first so no wake-up is lost. An entry whose
 * response is no longer over (taken after a deadline, and the fd watched again) is dropped here. */
int tbr_pop_done(void *h, int *out, int n) {
    Reader *r = h;
    uint64_t v;
    ssize_t rd = read(r->efd, &v, sizeof v);
    (void)rd;
    pthread_mutex_lock(&r->mu);
    int k = 0;
    while (k < n && r->done_count) {
        int fd = r->done[r->done_head];
        r->done_head = (r->done_head + 1) % r->maxfd;
        r->done_count--;
        if (r->streams[fd].active && r->streams[fd].result != R_RUNNING) out[k++] = fd;
    }
    if (r->done_count) {
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof one);
        (void)w;
    }
    pthread_mutex_unlock(&r->mu);
    return k;
}

/* Sizes of fd's response: info[0] result, [1] errno, [2] bytes, [3] reads, [4] bytes the framing
 * consumed, [5] body bytes, [6] reads that added body bytes, [7] end of the final head, [8] start of
 * the last-chunk line (chunked) , [9] chunked. */
void tbr_info(void *h, int fd, int64_t *info) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    info[0] = st->result;
    info[1] = st->err;
    info[2] = st->len;
    info[3] = st->nreads;
    info[4] = st->pos;
    info[5] = st->blen;
    info[6] = st->nbody;
    info[7] = st->head_len;
    info[8] = st->term_start;
    info[9] = st->chunked;
    pthread_mutex_unlock(&r->mu);
}

/* Copy fd's bytes and per-read ends/stamps out (sized by tbr_info) and free the slot for reuse. */
void tbr_take(void *h, int fd, char *buf, int64_t *ends, int64_t *stamps, char *body, int64_t *bends,
              int64_t *bstamps) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    if (st->result == R_RUNNING && st->active) epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
    memcpy(buf, st->buf, (size_t)st->len);
    memcpy(ends, st->ends, (size_t)st->nreads * sizeof(int64_t));
    memcpy(stamps, st->stamps, (size_t)st->nreads * sizeof(int64_t));
    if (body) memcpy(body, st->body, (size_t)st->blen);
    if (bends) memcpy(bends, st->bends, (size_t)st->nbody * sizeof(int64_t));
    if (bstamps) memcpy(bstamps, st->bstamps, (size_t)st->nbody * sizeof(int64_t));
    st->active = 0;
    st->result = R_RUNNING;
    if (st->cap > (1 << 20)) { free(st->buf); st->buf = NULL; st->cap = 0; }
    if (st->bcap > (1 << 20)) { free(st->body); st->body = NULL; st->bcap = 0; }
    pthread_mutex_unlock(&r->mu);
}

void tbr_close(void *h) {
    Reader *r = h;
    r->stop = 1;
    pthread_join(r->thread, NULL);
    for (int i = 0; i < r->maxfd; i++) {
        free(r->streams[i].buf);
        free(r->streams[i].ends);
        free(r->streams[i].stamps);
        free(r->streams[i].body);
        free(r->streams[i].bends);
        free(r->streams[i].bstamps);
    }
    free(r->streams);
    free(r->done);
    close(r->ep);
    close(r->efd);
    free(r);
}
