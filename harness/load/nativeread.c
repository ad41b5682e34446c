/* tokenbench's native stream reader: one thread that reads and stamps every HTTP response of a
 * Locust process (issue 11 §2).
 *
 * Why: in Python, one chunk read costs a hub switch, a libev dispatch, a greenlet switch and a
 * recv (about 10 µs on a slow 2-core VM), all on the event loop that also sends requests and
 * interprets finished streams; when that loop is busy the read, and so its stamp, waits. Here a
 * thread that never takes the GIL waits in epoll_wait on every response socket the process has
 * handed it and recvmsg()s each readable one. Each read is stamped with the kernel's receive stamp
 * (SO_TIMESTAMPNS: when its last segment reached this host's TCP stack), moved onto
 * CLOCK_MONOTONIC, the clock time.monotonic_ns() reads; a read without one (a host that gives none,
 * bytes queued before the option was set) is stamped with clock_gettime(CLOCK_MONOTONIC) as it
 * returns. So a read's stamp does not wait for this thread either: the thread sleeps poll_ns after
 * each batch and takes what came meanwhile together. It only finds where the response ends (status line,
 * headers, chunked framing, Content-Length or close), so that the connection can be reused; the
 * Python side replays the kept reads through the same HTTP parser and SSE splitter as before, so a
 * response means exactly what it meant on the pure-Python path.
 *
 * A finished (or failed, or bounded) response is queued and an eventfd is written; the process's
 * gevent loop watches that eventfd and wakes the waiting user. All state is behind one mutex; the
 * thread holds it only while it handles one ready socket.
 *
 * Closed-loop chaining (tbr_arm): a user may hand over its *next* requests with the current one, up
 * to CHAIN_MAX of them, queued per connection in order. When the current response is complete and
 * keeps the connection, the thread parks it, sends the oldest armed request on the same socket at
 * once and goes on reading (and stamping) its response. Why: in closed loop, streams of one length
 * end together, and at 1,024 streams the Python thread took ~100 ms to wake 1,024 users and send
 * their next requests one by one: each stream sat idle at the server for half of that (issue 11 §2:
 * 91-95 % in flight). The thread's send costs one syscall. Why more than one ahead: with one, the
 * user must arm the request after next before the chained response ends (one response time, 1.4 s
 * in the fidelity benchmark); after a burst of completions a starved Python thread on a 2-core VM
 * took up to 1.9 s, and every response that ended unarmed left its stream idle until Python came.
 * Python still decides everything else (whether a request is admitted, what it holds, what a
 * response means); a chain not sent (the deadline passed, the connection closes) is not sent, nor
 * any armed after it, and Python sends the user's next request itself.
 *
 * The framing is in nativeframe.h, the chaining's queues in nativechain.h. Build: gcc -O2 -shared
 * -fPIC -pthread (harness/cbuild.py); loaded with ctypes (nativeread.py).
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

#include "nativechain.h"
#include "nativeframe.h"

typedef struct {
    int ep, efd, maxfd;
    Stream *streams;
    Ahead *ahead;     /* per fd: chained requests and parked responses */
    int *done;        /* ring of finished fds */
    int done_head, done_count;
    pthread_mutex_t mu;
    pthread_t thread;
    volatile int stop;
    int want_nice, want_sched;
    volatile int fifo;
    volatile int nice, started;
    int64_t real_minus_mono; /* CLOCK_REALTIME - CLOCK_MONOTONIC, read once per batch (kernel stamps) */
    volatile int64_t reads, unstamped; /* reads, and those that carried no kernel receive stamp */
    int64_t poll_ns;         /* kernel stamps: sleep this long after a batch, so reads come in batches */
} Reader;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* CLOCK_REALTIME - CLOCK_MONOTONIC now, from a realtime read between two monotonic ones (~100 ns). */
static int64_t realtime_offset(void) {
    int64_t a = now_ns(), w = real_ns(), b = now_ns();
    return w - (a + (b - a) / 2);
}

/* The kernel's receive stamp of the read (SO_TIMESTAMPNS: when the last segment it returned reached
 * this host's TCP stack, CLOCK_REALTIME) on the monotonic clock, or -1 if the read carried none. */
static int64_t kernel_stamp(Reader *r, struct msghdr *msg) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - r->real_minus_mono;
        }
    }
    return -1;
}

static void finish(Reader *r, int fd, int result) {
    Stream *st = &r->streams[fd];
    st->result = result;
    epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
    r->done[(r->done_head + r->done_count) % r->maxfd] = fd;
    r->done_count++;
}

static void reset(Stream *st, int64_t max_bytes, int64_t max_reads) {
    st->active = 1;
    st->state = S_HEAD;
    st->result = R_RUNNING;
    st->err = 0;
    st->len = st->nreads = st->pos = st->head_start = st->remaining = 0;
    st->blen = st->nbody = st->head_len = st->term_start = 0;
    st->chunked = st->close = 0;
    st->max_bytes = max_bytes;
    st->max_reads = max_reads;
}

/* fd's response is complete: send its oldest armed request if one may go; 1 if sent. One that may
 * not is dropped with every one armed after it (they would go out of order, or past the deadline). */
static int try_chain(Reader *r, int fd) {
    Ahead *a = &r->ahead[fd];
    Stream *st = &r->streams[fd];
    Chain *ch = chain_next(a);
    if (!ch) return 0;
    int64_t t = now_ns();
    Stream *slot = park_free(a);
    /* only on a connection the server keeps, with nothing past the response (stray bytes: Python judges) */
    if (st->close || st->pos != st->len || !slot || t >= ch->deadline) {
        chain_disarm(a);
        return 0;
    }
    Stream done = *st; /* park it; the next response reuses the free park slot's buffers */
    *st = *slot;
    *slot = done;
    slot->result = R_COMPLETE;
    a->npark++;
    reset(st, done.max_bytes, done.max_reads);
    ssize_t n = send(fd, ch->buf, (size_t)ch->len, MSG_DONTWAIT | MSG_NOSIGNAL);
    a->nsent++;
    ch->sent_ns = t;
    ch->sent_bytes = n > 0 ? n : 0; /* a failed send: Python sends it all and meets the error */
    r->done[(r->done_head + r->done_count) % r->maxfd] = fd; /* still watched: the next response */
    r->done_count++;
    return 1;
}

/* One recv on a readable socket: stamp it, keep it, advance the framing. Called with the lock held. */
static int on_readable(Reader *r, int fd) {
    Stream *st = &r->streams[fd];
    if (!st->active || st->result != R_RUNNING) return 0;
    if (grow((void **)&st->buf, &st->cap, st->len + 65536, 1) < 0) { finish(r, fd, R_ERROR); st->err = ENOMEM; return 1; }
    struct iovec iov = {.iov_base = st->buf + st->len, .iov_len = (size_t)(st->cap - st->len)};
    char ctrl[CMSG_SPACE(sizeof(struct timespec))];
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof ctrl};
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    int64_t t = now_ns();
    if (n > 0) {
        int64_t k = kernel_stamp(r, &msg);
        r->reads++;
        if (k < 0) r->unstamped++; /* none (data queued before the option, or a host without): now */
        else if (k < t) t = k;
        if (st->nreads && t < st->stamps[st->nreads - 1]) t = st->stamps[st->nreads - 1]; /* offset jitter */
    }
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
        if (res == R_COMPLETE && try_chain(r, fd)) return 1;
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
       what was granted is reported (tbr_sched, tbr_nice). With the kernel's receive stamps it still
       matters: a read that comes late returns every chunk queued meanwhile under the last one's
       stamp (measured at nice 0 and nice -10: stamp-lag p99 30-72 ms at 1,024 streams). */
    pid_t tid = (pid_t)syscall(SYS_gettid);
    pthread_setname_np(pthread_self(), "tb-reader"); /* so a CPU sampler tells it apart (fidelity/cpuwatch.py) */
    struct sched_param sp = {.sched_priority = 1};
    if (r->want_sched >= 2 && pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0) r->fifo = 1;
    if (!r->fifo && r->want_sched >= 1 && setpriority(PRIO_PROCESS, (id_t)tid, r->want_nice) != 0) {
        /* keep the default */
    }
    errno = 0;
    int got = getpriority(PRIO_PROCESS, (id_t)tid);
    r->nice = errno ? 0 : got;
    r->started = 1;
    struct timespec poll = {.tv_sec = 0, .tv_nsec = r->poll_ns};
    while (!r->stop) {
        int n = epoll_wait(r->ep, evs, 256, 200);
        if (n <= 0) continue;
        r->real_minus_mono = realtime_offset();
        int64_t unstamped = r->unstamped;
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
        /* Each read carries the kernel's stamp, so waiting costs the stamps nothing: sleep a little and
           take what came meanwhile in one batch. Why: a thread blocked in epoll_wait is woken by
           every segment that arrives, and on a VM each wake-up is an IPI the sender pays for (at 1,024
           streams, 47k wake-ups and epoll_waits a second, ~2 reads each). Only the end of a response
           is noticed later (by at most poll_ns), and with it a chained request's send. */
        if (r->poll_ns > 0 && n < 256 && r->unstamped == unstamped) nanosleep(&poll, NULL);
    }
    return NULL;
}

void *tbr_new(int maxfd, int want_sched, int want_nice, int64_t poll_ns) {
    Reader *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->maxfd = maxfd;
    r->poll_ns = poll_ns;
    r->real_minus_mono = realtime_offset();
    r->want_nice = want_nice;
    r->want_sched = want_sched;
    r->streams = calloc((size_t)maxfd, sizeof(Stream));
    r->ahead = calloc((size_t)maxfd, sizeof(Ahead)); /* pages are touched only for fds that chain */
    r->done = calloc((size_t)maxfd, sizeof(int));
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!r->streams || !r->ahead || !r->done || r->ep < 0 || r->efd < 0)
        return NULL;
    /* Priority inheritance: the Python thread takes this lock too, and where it is preempted while
       holding it (by the truth server, another real-time thread) a SCHED_FIFO reader waiting for it
       would wait as long, and its reads come late; holding it, Python runs at the reader's priority. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&r->mu, &attr);
    pthread_mutexattr_destroy(&attr);
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

/* The reader thread's CPU time so far, in ns, read from the caller's thread (not in the read loop,
 * where a thread CPU clock is a real syscall per batch). */
int64_t tbr_cpu_ns(void *h) {
    clockid_t id;
    struct timespec cpu;
    if (pthread_getcpuclockid(((Reader *)h)->thread, &id) != 0 || clock_gettime(id, &cpu) != 0) return 0;
    return (int64_t)cpu.tv_sec * 1000000000LL + cpu.tv_nsec;
}

/* Reads so far (out[0]) and those stamped by this thread because they carried no kernel stamp (out[1]). */
void tbr_stamps(void *h, int64_t *out) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    out[0] = r->reads;
    out[1] = r->unstamped;
    pthread_mutex_unlock(&r->mu);
}

/* 1 if the reader thread runs SCHED_FIFO (after tbr_nice has waited for it to start). */
int tbr_fifo(void *h) { return ((Reader *)h)->fifo; }

/* Hand fd's response to the thread. Bytes already waiting are fine (epoll is level-triggered). */
int tbr_watch(void *h, int fd, int64_t max_bytes, int64_t max_reads) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return -EBADF;
    int on = 1; /* the kernel's receive stamp on each read; idempotent, so set on every watch */
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    if (st->active) { pthread_mutex_unlock(&r->mu); return -EBUSY; }
    reset(st, max_bytes, max_reads);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    int rc = epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev);
    if (rc < 0) { rc = -errno; st->active = 0; }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Queue buf (len bytes) on fd's chain: sent as soon as a response ends with every request armed
 * before it sent, unless CLOCK_MONOTONIC has reached deadline by then. Call before tbr_watch (or
 * while attaching). -ENOSPC: CHAIN_MAX already queued. */
int tbr_arm(void *h, int fd, const char *buf, int64_t len, int64_t deadline) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return -EBADF;
    pthread_mutex_lock(&r->mu);
    int rc = chain_push(&r->ahead[fd], buf, len, deadline);
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Whether fd's oldest chained request was sent (out: sent_ns, bytes sent): 1, and it leaves the
 * queue; 0, and the whole queue is disarmed (none after it can have been sent). */
int tbr_chain(void *h, int fd, int64_t *out) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return 0;
    pthread_mutex_lock(&r->mu);
    int sent = chain_pop_sent(&r->ahead[fd], out);
    pthread_mutex_unlock(&r->mu);
    return sent;
}

/* fd has a response over for Python: a parked one, or the one being read has ended. */
static int over(Reader *r, int fd) {
    return r->ahead[fd].npark || (r->streams[fd].active && r->streams[fd].result != R_RUNNING);
}

/* fd's state for a user picking up a chained request: 1 a response is over (take it), 0 being
 * read (wait for the done queue), -1 not watched. */
int tbr_pending(void *h, int fd) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return -1;
    pthread_mutex_lock(&r->mu);
    int rc = over(r, fd) ? 1 : r->streams[fd].active ? 0 : -1;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* Forget fd (its socket is about to close): stop reading, drop parked responses and the chain. */
void tbr_drop(void *h, int fd) {
    Reader *r = h;
    if (fd < 0 || fd >= r->maxfd) return;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    if (st->active && st->result == R_RUNNING) epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
    st->active = 0;
    st->result = R_RUNNING;
    ahead_clear(&r->ahead[fd]);
    pthread_mutex_unlock(&r->mu);
}

/* Stop reading fd (the request's deadline passed); what was read stays for tbr_take. A parked
 * response is the one the deadline was for (it is over): the chained one goes on being read. */
void tbr_cancel(void *h, int fd) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    Stream *st = &r->streams[fd];
    Ahead *a = &r->ahead[fd];
    if (a->npark) { pthread_mutex_unlock(&r->mu); return; }
    chain_disarm(a); /* nothing armed goes out after a cancelled response */
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
        if (over(r, fd)) out[k++] = fd;
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
    Stream *st = park_oldest(&r->ahead[fd]);
    if (!st) st = &r->streams[fd];
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

/* Copy fd's first `keep` bytes and per-read ends/stamps out (sized by tbr_info) and free the slot for
 * reuse; the oldest parked response first (the chained one is still being read). A response cut as too large
 * is taken with keep = its head and no body: Python needs its status, not the megabytes. */
void tbr_take(void *h, int fd, int64_t keep, char *buf, int64_t *ends, int64_t *stamps, char *body,
              int64_t *bends, int64_t *bstamps) {
    Reader *r = h;
    pthread_mutex_lock(&r->mu);
    Ahead *a = &r->ahead[fd];
    Stream *st = park_oldest(a);
    int parked = st != NULL;
    if (parked) park_pop(a);
    else st = &r->streams[fd];
    if (!parked && st->result == R_RUNNING && st->active) epoll_ctl(r->ep, EPOLL_CTL_DEL, fd, NULL);
    memcpy(buf, st->buf, (size_t)(keep < st->len ? keep : st->len));
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
        stream_free(&r->streams[i]);
        ahead_free(&r->ahead[i]);
    }
    free(r->streams);
    free(r->ahead);
    free(r->done);
    close(r->ep);
    close(r->efd);
    free(r);
}
