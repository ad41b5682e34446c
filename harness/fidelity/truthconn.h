/* Streams, connections, the schedule (a min-heap of wheel buckets), sends/queues and the response bytes.
 *
 * Part of truthserver.c, which is one translation unit: it includes this file once, after its system
 * headers and constants (split only to keep each file short; cbuild hashes every file of the server).
 */
#ifndef TB_TRUTHCONN_H
#define TB_TRUTHCONN_H

/* ---- streams, connections and the schedule ------------------------------------------------------ */
typedef struct Conn Conn;

typedef struct {
    Conn *conn; /* NULL once its connection closed: the schedule drops it when it comes up */
    int64_t rid, i, n, first_due, itl, prompt;
    int usage, cont;
    char *head; /* 'data: {"id":"<id>","object":...,"model":M,"choices":[' */
    size_t head_len;
} Stream;

struct Conn {
    int fd;
    Buf in, out;
    size_t out_off; /* out's bytes before this were sent (compacted lazily: no memmove per send) */
    I64s out_logs; /* log slots whose write time is set when out drains */
    Stream *stream;
    int64_t read_ns;
};

typedef struct {
    int64_t key;
    uint64_t seq;
    Stream *s;
} Slot;

typedef struct {
    int64_t ttft_ns, itl_ns, created;
    int lfd, ep, tfd;
    const char *congestion; /* TCP congestion control for every connection (--congestion), or NULL */
    int64_t armed_ns;
    Conn **conns; /* by fd */
    size_t nconns;
    Slot *heap;
    size_t heap_len, heap_cap;
    uint64_t seq;
    Log log;
    Buf scratch;
    unsigned char rnd[4096];
    size_t rnd_used;
} Server;

static int slot_less(const Slot *a, const Slot *b) {
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static void arm(Server *sv, Stream *s, int64_t due) {
    if (sv->heap_len == sv->heap_cap) {
        size_t cap = sv->heap_cap ? sv->heap_cap * 2 : 1024;
        Slot *h = realloc(sv->heap, cap * sizeof *h);
        if (!h) die_oom();
        sv->heap = h;
        sv->heap_cap = cap;
    }
    Slot x = {due / WHEEL_NS, sv->seq++, s};
    size_t k = sv->heap_len++;
    while (k > 0) {
        size_t up = (k - 1) / 2;
        if (!slot_less(&x, &sv->heap[up])) break;
        sv->heap[k] = sv->heap[up];
        k = up;
    }
    sv->heap[k] = x;
}

static Stream *pop(Server *sv) {
    Stream *top = sv->heap[0].s;
    Slot x = sv->heap[--sv->heap_len];
    size_t k = 0, n = sv->heap_len;
    for (;;) {
        size_t c = 2 * k + 1;
        if (c >= n) break;
        if (c + 1 < n && slot_less(&sv->heap[c + 1], &sv->heap[c])) c++;
        if (!slot_less(&sv->heap[c], &x)) break;
        sv->heap[k] = sv->heap[c];
        k = c;
    }
    if (n) sv->heap[k] = x;
    return top;
}

static void free_stream(Stream *s) {
    free(s->head);
    free(s);
}

static void ep_mod(Server *sv, Conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.fd = c->fd};
    epoll_ctl(sv->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void close_conn(Server *sv, Conn *c) {
    if (c->stream) {
        log_end(&sv->log, c->stream->rid, now_ns(), 1);
        c->stream->conn = NULL;
        c->stream = NULL;
    }
    sv->conns[c->fd] = NULL;
    epoll_ctl(sv->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.p);
    free(c->out.p);
    free(c->out_logs.v);
    free(c);
}

/* Queue what the socket did not take; the chunk's write time (slot) is set when it drains. */
static void queue(Server *sv, Conn *c, const char *rest, size_t n, int64_t slot) {
    int was_empty = c->out.len == 0;
    buf_add(&c->out, rest, n);
    if (slot >= 0) i64_push(&c->out_logs, slot);
    if (was_empty) ep_mod(sv, c, EPOLLIN | EPOLLOUT);
}

/* Send data, or queue it behind what is already queued; returns 0, or -1 if the connection closed. */
static int send_or_queue(Server *sv, Conn *c, const char *data, size_t n, int64_t slot) {
    if (c->out.len) {
        buf_add(&c->out, data, n);
        if (slot >= 0) i64_push(&c->out_logs, slot);
        return 0;
    }
    ssize_t sent = send(c->fd, data, n, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            close_conn(sv, c);
            return -1;
        }
        sent = 0;
    }
    if ((size_t)sent == n) {
        if (slot >= 0) sv->log.chunks.v[slot * 5 + 2] = now_ns();
        return 0;
    }
    queue(sv, c, data + sent, n - (size_t)sent, slot);
    return 0;
}

static void flush(Server *sv, Conn *c) {
    ssize_t sent = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        close_conn(sv, c);
        return;
    }
    c->out_off += (size_t)sent;
    if (c->out_off == c->out.len) {
        c->out.len = c->out_off = 0;
    } else if (c->out_off > 65536 && c->out_off > c->out.len / 2) {
        buf_drop(&c->out, c->out_off);
        c->out_off = 0;
    }
    if (c->out.len == 0) {
        int64_t t = now_ns();
        for (size_t k = 0; k < c->out_logs.len; k++) sv->log.chunks.v[c->out_logs.v[k] * 5 + 2] = t;
        c->out_logs.len = 0;
        ep_mod(sv, c, EPOLLIN);
    }
}

/* ---- the response bytes (truthsse.Shape) ------------------------------------------------------- */
static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}
#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put_dec(char *p, int64_t v) { /* v >= 0; sprintf was a tenth of the user time per chunk */
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static char *put_usage(char *p, int64_t prompt, int64_t completion) {
    p = PUTS(p, "{\"prompt_tokens\":");
    p = put_dec(p, prompt);
    p = PUTS(p, ",\"total_tokens\":");
    p = put_dec(p, prompt + completion);
    p = PUTS(p, ",\"completion_tokens\":");
    p = put_dec(p, completion);
    return PUTS(p, "}");
}

/* Chunk i's full bytes (HTTP chunk framing included) into sv->scratch; returns where they start. */
static char *render(Server *sv, const Stream *s, int64_t i, size_t *len) {
    buf_reserve(&sv->scratch, 2 * s->head_len + 512);
    char *base = sv->scratch.p, *body = base + 24, *p = body;
    int last = i == s->n - 1;
    p = put(p, s->head, s->head_len);
    p = PUTS(p, "{\"index\":0,\"text\":\" tok\",\"logprobs\":null,\"finish_reason\":");
    p = last ? PUTS(p, "\"length\"") : PUTS(p, "null");
    p = PUTS(p, ",\"stop_reason\":null}]");
    if (s->usage && s->cont) {
        p = PUTS(p, ",\"usage\":");
        p = put_usage(p, s->prompt, i + 1);
    }
    p = PUTS(p, "}\n\n");
    if (last) {
        if (s->usage) {
            p = put(p, s->head, s->head_len);
            p = PUTS(p, "],\"usage\":");
            p = put_usage(p, s->prompt, s->n);
            p = PUTS(p, "}\n\n");
        }
        p = PUTS(p, "data: [DONE]\n\n");
    }
    char *start = body - 2; /* "<size in hex>\r\n" right before the body */
    memcpy(start, "\r\n", 2);
    size_t size = (size_t)(p - body);
    do {
        *--start = "0123456789abcdef"[size & 15];
        size >>= 4;
    } while (size);
    p = last ? PUTS(p, "\r\n0\r\n\r\n") : PUTS(p, "\r\n");
    *len = (size_t)(p - start);
    return start;
}

#endif
