/* The fidelity benchmark's lean truth server, in C (issue 11 §2): a port of truthserver.py.
 *
 * Why C: the Python server costs 15-24 µs of CPU per token on a slow 2-core machine, so at
 * 1,024 streams × ITL 10 ms (~100k chunks/s) it needs more than a core, falls behind its own
 * schedule (TRUTH-LIMITED) and starves the client under test. This is the same server (same
 * HTTP behaviour, same bytes, same timing, same binary log that truthlog.read_truth_log reads)
 * at about half the CPU per chunk: its own code is about 1 µs of it, the rest is the kernel's
 * loopback TCP send (one send per chunk, which also runs the receiver's side and its wake-up).
 *
 * Timing: chunk i of a request is due at arrival + ttft + i*itl (arrival = monotonic time of the
 * read that completed the request). Streams wait in a min-heap ordered by (wheel bucket, arming
 * order); bucket k = [k*W, (k+1)*W) with W = 400 µs is written when the clock reaches its middle,
 * k*W + W/2, exactly the Python timer wheel's rule and order (a chunk goes out at most 0.2 ms early
 * or, on an idle loop, 0.2 ms late; the log keeps the real times). One timerfd (CLOCK_MONOTONIC,
 * absolute) wakes the epoll loop at the next bucket's middle.
 *
 * Writes: one send per chunk; when the socket is full the rest is queued, EPOLLOUT is armed and the
 * chunk's write time is set when the queue drains (attempt time = first try). Log per chunk: request,
 * chunk, write, due, attempt ns; per request arrival, prompt tokens, end (-1 open), gone flag. It is
 * dumped at SIGTERM/SIGINT in truthlog's format (TBTRUTH1 line, JSON header, little-endian int64).
 *
 * Build: gcc -O2 -Wall -Wextra -o tokenbench-truthserver truthserver.c -lm (harness/fidelity/cbuild.py);
 * the truth*.h files beside it are parts of this one translation unit.
 * Linux only (epoll, timerfd), like the Python server.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define WHEEL_NS 400000LL
#define FIRE_OFFSET_NS (WHEEL_NS / 2)
#define READ_SIZE 65536
#define MAX_HEAD (64 * 1024)
#define MAX_BODY (8 * 1024 * 1024)
#define MAX_TOKENS 100000000LL
#define MAX_DEPTH 512
#define ID_LEN 37 /* "cmpl-" + 32 hex */

static const char BAD_REQUEST[] =
    "{\"error\":\"truth server: streamed completions with a string prompt and max_tokens only\"}";
static const char NOT_FOUND[] = "{\"error\":\"the truth server serves /v1/completions\"}";
static const char STREAM_HEAD[] = "HTTP/1.1 200 OK\r\nserver: tokenbench-truth\r\ncontent-type: "
                                  "text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n";

static volatile sig_atomic_t running = 1;

#include "truthbuf.h"
#include "truthjson.h"
#include "truthconn.h"

/* ---- HTTP -------------------------------------------------------------------------------------- */
static void respond(Server *sv, Conn *c, const char *status, const char *body) {
    char msg[512];
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %s\r\nserver: tokenbench-truth\r\ncontent-type: application/json\r\n"
                     "content-length: %zu\r\n\r\n%s",
                     status, strlen(body), body);
    send_or_queue(sv, c, msg, (size_t)n, -1);
}

static int bytes_space(char c) { /* bytes.strip()'s whitespace */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static void strip(const char **a, const char **b) {
    while (*a < *b && bytes_space(**a)) (*a)++;
    while (*b > *a && bytes_space((*b)[-1])) (*b)--;
}

static void random_hex(Server *sv, char *out, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t k = 0; k < n; k += 2) {
        if (sv->rnd_used == sizeof sv->rnd) {
            if (getrandom(sv->rnd, sizeof sv->rnd, 0) != (ssize_t)sizeof sv->rnd) {
                for (size_t j = 0; j < sizeof sv->rnd; j++) sv->rnd[j] = (unsigned char)rand();
            }
            sv->rnd_used = 0;
        }
        unsigned char b = sv->rnd[sv->rnd_used++];
        out[k] = digits[b >> 4];
        out[k + 1] = digits[b & 15];
    }
}

static void start_stream(Server *sv, Conn *c, const char *rid, size_t rid_len, const char *body, size_t len) {
    Req r = {0};
    Scan s = {body, body + len};
    int members, ok = 0;
    long long n = 0;
    long words = 0;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '{' && scan_object(&s, 0, on_req, &r, &members) == 0) {
        skip_ws(&s);
        ok = s.p == s.end && r.has_prompt && r.has_max && to_int(&r.max_tokens, &n) == 0;
        ok = ok && r.has_stream && r.stream.truthy && n >= 1 && n <= MAX_TOKENS && r.prompt.type == J_STR;
        if (ok && r.has_opts && r.opts.truthy) { /* `stream_options or {}`, then .get(): a dict or falsy */
            Scan o = {r.opts.start, r.opts.stop};
            ok = r.opts.type == J_OBJ && scan_object(&o, 1, on_opts, &r, &members) == 0;
        }
    }
    if (!ok) {
        respond(sv, c, "400 Bad Request", BAD_REQUEST);
        return;
    }
    Scan ps = {r.prompt.start, r.prompt.stop};
    scan_string(&ps, NULL, &words);
    Buf model = {0}, name = {0};
    if (r.has_model && r.model.truthy) { /* str(req.get("model") or "sim-model") */
        if (r.model.type == J_STR) {
            Scan ms = {r.model.start, r.model.stop};
            scan_string(&ms, &name, NULL);
        } else if (r.model.type == J_TRUE) {
            buf_str(&name, "True");
        } else {
            buf_add(&name, r.model.start, (size_t)(r.model.stop - r.model.start));
        }
    } else {
        buf_str(&name, "sim-model");
    }
    json_utf8(&model, name.p, name.len);
    free(name.p);

    Stream *st = calloc(1, sizeof *st);
    if (!st) die_oom();
    Buf head = {0};
    char oid[ID_LEN + 1] = "cmpl-", num[32];
    random_hex(sv, oid + 5, 32);
    buf_str(&head, "data: {\"id\":\"");
    buf_add(&head, oid, ID_LEN);
    snprintf(num, sizeof num, "%lld", (long long)sv->created);
    buf_str(&head, "\",\"object\":\"text_completion\",\"created\":");
    buf_str(&head, num);
    buf_str(&head, ",\"model\":");
    buf_add(&head, model.p, model.len);
    buf_str(&head, ",\"choices\":[");
    free(model.p);
    st->head = head.p;
    st->head_len = head.len;
    st->conn = c;
    st->prompt = words;
    st->n = n;
    st->itl = sv->itl_ns;
    st->first_due = c->read_ns + sv->ttft_ns;
    st->usage = r.has_usage && r.usage.truthy;
    st->cont = r.has_cont && r.cont.truthy;
    st->rid = log_arrival(&sv->log, rid, rid_len, c->read_ns, words);
    c->stream = st;
    if (send_or_queue(sv, c, STREAM_HEAD, sizeof STREAM_HEAD - 1, -1) == 0) arm(sv, st, st->first_due);
    else free_stream(st); /* close_conn logged it gone */
}

/* Handle the complete requests in c->in, one at a time (the client waits for each response).
 * Returns -1 if the connection was closed. */
static int parse(Server *sv, Conn *c) {
    while (c->stream == NULL) {
        char *buf = c->in.p;
        char *end = c->in.len ? memmem(buf, c->in.len, "\r\n\r\n", 4) : NULL;
        if (!end) {
            if (c->in.len > MAX_HEAD) goto refuse;
            return 0;
        }
        if (end - buf > MAX_HEAD) goto refuse;
        const char *line = buf, *head_end = end, *rid = "", *rid_end = rid;
        const char *eol = memmem(line, (size_t)(head_end - line), "\r\n", 2);
        const char *req_end = eol ? eol : head_end;
        long long length = 0;
        for (const char *h = eol ? eol + 2 : head_end; h < head_end;) {
            const char *e = memmem(h, (size_t)(head_end - h), "\r\n", 2);
            if (!e) e = head_end;
            const char *colon = memchr(h, ':', (size_t)(e - h));
            const char *na = h, *nb = colon ? colon : e, *va = colon ? colon + 1 : e, *vb = e;
            strip(&na, &nb);
            strip(&va, &vb);
            if (nb - na == 14 && strncasecmp(na, "content-length", 14) == 0) {
                const char *q = va;
                if (q < vb && *q == '+') q++;
                if (q == vb && va != vb) goto refuse;
                length = 0;
                for (; q < vb; q++) {
                    if (*q < '0' || *q > '9') goto refuse;
                    length = length * 10 + (*q - '0');
                    if (length > MAX_BODY) goto refuse;
                }
            } else if (nb - na == 12 && strncasecmp(na, "x-request-id", 12) == 0) {
                rid = va;
                rid_end = vb;
            }
            h = e + 2;
        }
        size_t total = (size_t)(end - buf) + 4 + (size_t)length;
        if (c->in.len < total) return 0;
        /* request line: exactly three space-separated parts; the path up to any '?' */
        const char *sp1 = memchr(line, ' ', (size_t)(req_end - line));
        const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(req_end - sp1 - 1)) : NULL;
        int three = sp2 && !memchr(sp2 + 1, ' ', (size_t)(req_end - sp2 - 1));
        const char *path = three ? sp1 + 1 : "", *q = three ? memchr(path, '?', (size_t)(sp2 - path)) : NULL;
        size_t path_len = three ? (size_t)((q ? q : sp2) - path) : 0, method_len = three ? (size_t)(sp1 - line) : 0;
        /* copy what outlives the buffer's compaction */
        size_t rid_len = (size_t)(rid_end - rid), body_len = (size_t)length;
        char *tmp = malloc(rid_len + body_len + 1);
        if (!tmp) die_oom();
        memcpy(tmp, rid, rid_len);
        memcpy(tmp + rid_len, end + 4, body_len);
        int get = method_len == 3 && memcmp(line, "GET", 3) == 0;
        int post = method_len == 4 && memcmp(line, "POST", 4) == 0;
        int health = path_len == 7 && memcmp(path, "/health", 7) == 0;
        int compl = path_len == 15 && memcmp(path, "/v1/completions", 15) == 0;
        buf_drop(&c->in, total);
        int fd = c->fd;
        if (get && health) respond(sv, c, "200 OK", "{\"status\":\"ok\"}");
        else if (post && compl) start_stream(sv, c, tmp, rid_len, tmp + rid_len, body_len);
        else respond(sv, c, "404 Not Found", NOT_FOUND);
        free(tmp);
        if (sv->conns[fd] != c) return -1;
    }
    return 0;
refuse:
    close_conn(sv, c);
    return -1;
}

/* Write every chunk whose bucket's middle has passed; re-arm each stream for its next chunk. */
static void fire_due(Server *sv) {
    int64_t now = now_ns(), limit = (now - FIRE_OFFSET_NS) / WHEEL_NS;
    while (sv->heap_len) {
        if (sv->heap[0].key > limit) { /* read the clock again only when a later bucket comes up */
            now = now_ns();
            limit = (now - FIRE_OFFSET_NS) / WHEEL_NS;
            if (sv->heap[0].key > limit) break;
        }
        Stream *s = pop(sv);
        Conn *c = s->conn;
        if (!c) {
            free_stream(s);
            continue;
        }
        int64_t i = s->i, due = s->first_due + i * s->itl;
        size_t len;
        char *data = render(sv, s, i, &len);
        if (c->out.len) {
            send_or_queue(sv, c, data, len, log_chunk(&sv->log, s->rid, i, 0, due, now_ns()));
        } else {
            ssize_t sent = send(c->fd, data, len, MSG_NOSIGNAL);
            if (sent < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    close_conn(sv, c);
                    free_stream(s);
                    continue;
                }
                sent = 0;
            }
            int64_t t = now_ns();
            if ((size_t)sent == len) log_chunk(&sv->log, s->rid, i, t, due, t);
            else queue(sv, c, data + sent, len - (size_t)sent, log_chunk(&sv->log, s->rid, i, 0, due, t));
        }
        s->i = ++i;
        if (i == s->n) {
            c->stream = NULL;
            log_end(&sv->log, s->rid, now_ns(), 0);
            free_stream(s);
            if (c->in.len) parse(sv, c);
            continue;
        }
        arm(sv, s, due + s->itl);
    }
}

static void accept_all(Server *sv) {
    for (;;) {
        int fd = accept4(sv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of fds: the rest wait in the backlog */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (sv->congestion)
            setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, sv->congestion, (socklen_t)strlen(sv->congestion));
        if ((size_t)fd >= sv->nconns) {
            size_t n = sv->nconns ? sv->nconns : 1024;
            while (n <= (size_t)fd) n *= 2;
            Conn **cs = realloc(sv->conns, n * sizeof *cs);
            if (!cs) die_oom();
            memset(cs + sv->nconns, 0, (n - sv->nconns) * sizeof *cs);
            sv->conns = cs;
            sv->nconns = n;
        }
        Conn *c = calloc(1, sizeof *c);
        if (!c) die_oom();
        c->fd = fd;
        sv->conns[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(sv->ep, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void read_conn(Server *sv, Conn *c) {
    int64_t now = now_ns();
    buf_reserve(&c->in, READ_SIZE);
    ssize_t got = recv(c->fd, c->in.p + c->in.len, READ_SIZE, 0);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (got <= 0) {
        close_conn(sv, c);
        return;
    }
    c->read_ns = now;
    c->in.len += (size_t)got;
    if (c->in.len > (size_t)MAX_HEAD + MAX_BODY + 4) { /* a client that never waits: refuse it */
        close_conn(sv, c);
        return;
    }
    if (c->stream == NULL) parse(sv, c);
}

static void arm_timer(Server *sv, int64_t at) {
    if (at < 1) at = 1; /* 0 would disarm */
    struct itimerspec spec = {{0, 0}, {at / 1000000000LL, at % 1000000000LL}};
    timerfd_settime(sv->tfd, TFD_TIMER_ABSTIME, &spec, NULL);
    sv->armed_ns = at;
}

static void serve(Server *sv) {
    struct epoll_event evs[256];
    while (running) {
        fire_due(sv);
        if (sv->heap_len) {
            int64_t at = sv->heap[0].key * WHEEL_NS + FIRE_OFFSET_NS;
            if (at != sv->armed_ns) arm_timer(sv, at);
        }
        int n = epoll_wait(sv->ep, evs, 256, 200); /* the timer ends the wait; 200 ms bounds a signal's */
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            uint32_t ev = evs[k].events;
            if (fd == sv->lfd) {
                accept_all(sv);
                continue;
            }
            if (fd == sv->tfd) {
                uint64_t expiries;
                if (read(sv->tfd, &expiries, sizeof expiries) < 0) { /* already consumed */
                }
                sv->armed_ns = 0;
                continue;
            }
            Conn *c = (size_t)fd < sv->nconns ? sv->conns[fd] : NULL;
            if (!c) continue;
            if (ev & EPOLLOUT) {
                flush(sv, c);
                if (sv->conns[fd] != c) continue;
            }
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_conn(sv, c);
        }
    }
}

#include "truthproc.h"

int main(int argc, char **argv) {
    long port = -1;
    double ttft_ms = 100.0, itl_ms = 10.0;
    int nice = -10;
    const char *log_path = NULL, *congestion = NULL;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k], *v = NULL, *eq = strchr(a, '=');
        static const char *flags[] = {"--port", "--ttft-ms", "--itl-ms", "--log", "--nice", "--congestion"};
        size_t name_len = eq && strncmp(a, "--", 2) == 0 ? (size_t)(eq - a) : strlen(a);
        int which = -1;
        for (int f = 0; f < 6; f++)
            if (strlen(flags[f]) == name_len && strncmp(a, flags[f], name_len) == 0) which = f;
        if (which < 0) {
            char msg[256];
            snprintf(msg, sizeof msg, "unrecognized arguments: %s", a);
            usage_exit(msg);
        }
        if (eq && name_len < strlen(a)) v = eq + 1;
        else if (k + 1 < argc) v = argv[++k];
        else {
            char msg[64];
            snprintf(msg, sizeof msg, "argument %s: expected one argument", flags[which]);
            usage_exit(msg);
        }
        if (which == 0) port = (long)num_arg(a, v, 1);
        else if (which == 1) ttft_ms = num_arg(flags[1], v, 0);
        else if (which == 2) itl_ms = num_arg(flags[2], v, 0);
        else if (which == 3) log_path = v;
        else if (which == 4) nice = (int)num_arg(flags[4], v, 1);
        else congestion = v;
    }
    if (port < 0 || !log_path) usage_exit("the following arguments are required: --port, --log");

    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* default 50 µs: the kernel may fire that late */
    struct rlimit fds; /* one fd per stream: 1,024 streams would not fit a soft limit of 1,024 */
    if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < fds.rlim_max) {
        fds.rlim_cur = fds.rlim_max;
        setrlimit(RLIMIT_NOFILE, &fds);
    }
    Server *sv = calloc(1, sizeof *sv);
    if (!sv) die_oom();
    sv->log.nice = raise_priority(nice);
    sv->ttft_ns = (int64_t)(ttft_ms * 1e6);
    sv->itl_ns = (int64_t)(itl_ms * 1e6);
    sv->created = (int64_t)time(NULL);
    sv->rnd_used = sizeof sv->rnd;
    srand((unsigned)now_ns());

    sv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(sv->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (port > 65535 || bind(sv->lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(sv->lfd, 4096) != 0) {
        fprintf(stderr, "truth server: cannot listen on 127.0.0.1:%ld: %s\n", port,
                port > 65535 ? "port out of range" : strerror(errno));
        return 1;
    }
    /* Why a congestion control of its own (the fidelity driver asks for reno): over loopback the kernel
       takes in the client's ACKs on the client's CPU, so this socket's per-ACK work (BBR's model) is
       charged to the client's reader threads; a remote server would pay it on its own host. */
    sv->congestion = congestion;
    if (congestion && setsockopt(sv->lfd, IPPROTO_TCP, TCP_CONGESTION, congestion, (socklen_t)strlen(congestion)) != 0) {
        fprintf(stderr, "truth server: --congestion %s: %s\n", congestion, strerror(errno));
        return 1;
    }
    sv->ep = epoll_create1(EPOLL_CLOEXEC);
    sv->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (sv->ep < 0 || sv->tfd < 0) {
        fprintf(stderr, "truth server: epoll/timerfd: %s\n", strerror(errno));
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sv->lfd};
    epoll_ctl(sv->ep, EPOLL_CTL_ADD, sv->lfd, &ev);
    ev.data.fd = sv->tfd;
    epoll_ctl(sv->ep, EPOLL_CTL_ADD, sv->tfd, &ev);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("truth server on 127.0.0.1:%ld\n", port);
    fflush(stdout);

    serve(sv);

    for (size_t fd = 0; fd < sv->nconns; fd++)
        if (sv->conns[fd]) close_conn(sv, sv->conns[fd]);
    close(sv->lfd);
    struct timespec cpu;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
    return log_dump(&sv->log, log_path, (double)cpu.tv_sec + cpu.tv_nsec / 1e9) == 0 ? 0 : 1;
}
