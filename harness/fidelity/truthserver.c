/* The fidelity benchmark's lean truth server, in C (issue 11 §2): a port of truthserver.py.
 *
 * Why C: the Python server costs 13-17 µs of CPU per token on a slow 2-core machine, so at
 * 1,024 streams × ITL 10 ms (~100k chunks/s) it needs more than a core, falls behind its own
 * schedule (TRUTH-LIMITED) and starves the client under test. This is the same server (same
 * HTTP behaviour, same bytes, same timing, same binary log that truthlog.read_truth_log reads)
 * at a few µs per chunk, most of it the kernel's loopback send.
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
 * Build: gcc -O2 -Wall -Wextra -o tokenbench-truthserver truthserver.c (harness/fidelity/cbuild.py).
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

/* ---- small growable buffers ------------------------------------------------------------------ */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static void die_oom(void) {
    fputs("truth server: out of memory\n", stderr);
    exit(1);
}

static void buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) die_oom();
    b->p = p;
    b->cap = cap;
}

static void buf_add(Buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_str(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_drop(Buf *b, size_t n) { /* remove the first n bytes */
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

typedef struct {
    int64_t *v;
    size_t len, cap;
} I64s;

static void i64_push(I64s *a, int64_t x) {
    if (a->len == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 1024;
        int64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) die_oom();
        a->v = v;
        a->cap = cap;
    }
    a->v[a->len++] = x;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- the log (truthlog.TruthLogWriter) -------------------------------------------------------- */
typedef struct {
    Buf ids;         /* every request id's raw header bytes, back to back */
    I64s id_end;     /* end offset of each id in ids */
    I64s arrival, prompt, end, gone, chunks; /* chunks: 5 int64 per row */
    int nice;
} Log;

static int64_t log_arrival(Log *lg, const char *id, size_t n, int64_t t, int64_t prompt) {
    buf_add(&lg->ids, id, n);
    i64_push(&lg->id_end, (int64_t)lg->ids.len);
    i64_push(&lg->arrival, t);
    i64_push(&lg->prompt, prompt);
    i64_push(&lg->end, -1);
    i64_push(&lg->gone, 0);
    return (int64_t)lg->arrival.len - 1;
}

static int64_t log_chunk(Log *lg, int64_t rid, int64_t i, int64_t write, int64_t due, int64_t attempt) {
    I64s *a = &lg->chunks; /* the hot path: one capacity check per row, not per value */
    if (a->len + 5 > a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 5 * 4096;
        int64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) die_oom();
        a->v = v;
        a->cap = cap;
    }
    int64_t *row = a->v + a->len;
    row[0] = rid;
    row[1] = i;
    row[2] = write;
    row[3] = due;
    row[4] = attempt;
    a->len += 5;
    return (int64_t)(a->len / 5) - 1;
}

static void log_end(Log *lg, int64_t rid, int64_t t, int gone) {
    lg->end.v[rid] = t;
    lg->gone.v[rid] = gone;
}

/* One byte of a JSON string as orjson writes it: '"', '\\' and control characters escaped. */
static void json_byte(Buf *b, unsigned c) {
    char tmp[8];
    const char *esc = c == '"'    ? "\\\""
                      : c == '\\' ? "\\\\"
                      : c == '\b' ? "\\b"
                      : c == '\t' ? "\\t"
                      : c == '\n' ? "\\n"
                      : c == '\f' ? "\\f"
                      : c == '\r' ? "\\r"
                                  : NULL;
    if (esc) {
        buf_str(b, esc);
    } else if (c < 0x20) {
        snprintf(tmp, sizeof tmp, "\\u%04x", c);
        buf_str(b, tmp);
    } else {
        tmp[0] = (char)c;
        buf_add(b, tmp, 1);
    }
}

/* A header's bytes (which the Python server decodes as latin-1) as a JSON string. */
static void json_latin1(Buf *b, const unsigned char *s, size_t n) {
    buf_add(b, "\"", 1);
    for (size_t k = 0; k < n; k++) {
        if (s[k] >= 0x80) {
            char u[2] = {(char)(0xC0 | (s[k] >> 6)), (char)(0x80 | (s[k] & 0x3F))};
            buf_add(b, u, 2);
        } else {
            json_byte(b, s[k]);
        }
    }
    buf_add(b, "\"", 1);
}

static int mkdirs_for(const char *path) { /* mkdir -p of path's parent */
    char *dir = strdup(path);
    if (!dir) return -1;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
            free(dir);
            return -1;
        }
        *p = '/';
    }
    free(dir);
    return 0;
}

static int write_arr(FILE *fh, const I64s *a) {
    for (size_t k = 0; k < a->len; k++) {
        uint64_t x = (uint64_t)a->v[k];
        unsigned char le[8];
        for (int j = 0; j < 8; j++) le[j] = (unsigned char)(x >> (8 * j));
        if (fwrite(le, 1, 8, fh) != 8) return -1;
    }
    return 0;
}

static int log_dump(const Log *lg, const char *path, double cpu_s) {
    Buf h = {0};
    char num[96];
    snprintf(num, sizeof num, "{\"requests\":%zu,\"chunks\":%zu,\"cpu_s\":%.9f,\"nice\":%d,\"ids\":[",
             lg->arrival.len, lg->chunks.len / 5, cpu_s, lg->nice);
    buf_str(&h, num);
    size_t start = 0;
    for (size_t k = 0; k < lg->id_end.len; k++) {
        if (k) buf_add(&h, ",", 1);
        size_t stop = (size_t)lg->id_end.v[k];
        json_latin1(&h, (const unsigned char *)lg->ids.p + start, stop - start);
        start = stop;
    }
    buf_str(&h, "]}\n");
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    if (!tmp) die_oom();
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    int rc = -1;
    mkdirs_for(path);
    FILE *fh = fopen(tmp, "wb");
    if (fh) {
        rc = fwrite("TBTRUTH1\n", 1, 9, fh) == 9 && fwrite(h.p, 1, h.len, fh) == h.len ? 0 : -1;
        if (rc == 0)
            rc = write_arr(fh, &lg->arrival) || write_arr(fh, &lg->prompt) || write_arr(fh, &lg->end) ||
                         write_arr(fh, &lg->gone) || write_arr(fh, &lg->chunks)
                     ? -1
                     : 0;
        if (fclose(fh) != 0) rc = -1;
        if (rc == 0 && rename(tmp, path) != 0) rc = -1;
    }
    if (rc != 0) fprintf(stderr, "truth server: cannot write the log %s: %s\n", path, strerror(errno));
    free(tmp);
    free(h.p);
    return rc;
}

/* ---- a small strict JSON scanner (what orjson.loads accepts, for the fields the server reads) -- */
typedef enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ } JType;

typedef struct {
    JType type;
    const char *start, *stop; /* the value's text */
    int truthy;               /* Python's bool() of the parsed value */
} JVal;

typedef struct {
    const char *p, *end;
} Scan;

static void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static int py_space(unsigned cp) { /* str.isspace(), which str.split() splits on */
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

static void put_utf8(Buf *b, unsigned cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_add(b, u, n);
}

/* Scan a string at s->p (on its opening quote): validates escapes, surrogates and UTF-8. Optionally
 * decodes it into out (UTF-8) and counts whitespace-separated words. Returns code points, -1 if bad. */
static long scan_string(Scan *s, Buf *out, long *words) {
    const unsigned char *p = (const unsigned char *)s->p + 1, *end = (const unsigned char *)s->end;
    long count = 0, w = 0;
    int in_word = 0;
    for (;;) {
        if (p >= end) return -1;
        unsigned c = *p, cp;
        if (c == '"') {
            p++;
            break;
        }
        if (c < 0x20) return -1;
        if (c == '\\') {
            if (p + 1 >= end) return -1;
            char e = (char)p[1];
            p += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (end - p < 4 || hex4((const char *)p, &cp)) return -1;
                p += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4((const char *)p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                break;
            default: return -1;
            }
        } else if (c < 0x80) {
            cp = c;
            p++;
        } else { /* UTF-8: shortest form, no surrogates, at most U+10FFFF */
            int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC2 ? 1 : -1;
            if (n < 0 || c > 0xF4 || end - p <= n) return -1;
            cp = c & (0x3F >> n);
            for (int k = 1; k <= n; k++) {
                if ((p[k] & 0xC0) != 0x80) return -1;
                cp = (cp << 6) | (p[k] & 0x3F);
            }
            if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
                (cp >= 0xD800 && cp <= 0xDFFF))
                return -1;
            p += n + 1;
        }
        count++;
        if (py_space(cp)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            w++;
        }
        if (out) put_utf8(out, cp);
    }
    s->p = (const char *)p;
    if (words) *words = w;
    return count;
}

static int scan_number(Scan *s, int *nonzero) {
    const char *p = s->p, *end = s->end;
    int nz = 0;
    if (p < end && *p == '-') p++;
    if (p >= end) return -1;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') {
        nz = 1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else return -1;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') nz |= *p++ != '0';
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    char tmp[64];
    size_t n = (size_t)(p - s->p);
    if (n < sizeof tmp) { /* orjson refuses numbers that overflow a double */
        memcpy(tmp, s->p, n);
        tmp[n] = 0;
        if (isinf(strtod(tmp, NULL))) return -1;
    } else {
        return -1;
    }
    s->p = p;
    *nonzero = nz;
    return 0;
}

static int scan_value(Scan *s, JVal *v, int depth);

/* Call on_member(key, value) for each member of the object at s->p; fails on bad JSON. */
typedef void (*MemberFn)(void *ctx, const char *key, size_t key_len, const JVal *v);

static int scan_object(Scan *s, int depth, MemberFn fn, void *ctx, int *members) {
    if (depth > MAX_DEPTH) return -1;
    s->p++; /* '{' */
    int n = 0;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        *members = 0;
        return 0;
    }
    Buf key = {0};
    int rc = -1;
    for (;;) {
        skip_ws(s);
        if (s->p >= s->end || *s->p != '"') break;
        key.len = 0;
        if (scan_string(s, fn ? &key : NULL, NULL) < 0) break;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') break;
        s->p++;
        JVal v;
        if (scan_value(s, &v, depth + 1)) break;
        if (fn) fn(ctx, key.p ? key.p : "", key.len, &v);
        n++;
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            rc = 0;
        }
        break;
    }
    free(key.p);
    *members = n;
    return rc;
}

static int scan_value(Scan *s, JVal *v, int depth) {
    skip_ws(s);
    if (s->p >= s->end || depth > MAX_DEPTH) return -1;
    v->start = s->p;
    char c = *s->p;
    if (c == '{') {
        int n;
        if (scan_object(s, depth, NULL, NULL, &n)) return -1;
        v->type = J_OBJ;
        v->truthy = n > 0;
    } else if (c == '[') {
        s->p++;
        int n = 0;
        skip_ws(s);
        if (s->p < s->end && *s->p == ']') {
            s->p++;
        } else {
            for (;;) {
                JVal item;
                if (scan_value(s, &item, depth + 1)) return -1;
                n++;
                skip_ws(s);
                if (s->p < s->end && *s->p == ',') {
                    s->p++;
                    continue;
                }
                if (s->p < s->end && *s->p == ']') {
                    s->p++;
                    break;
                }
                return -1;
            }
        }
        v->type = J_ARR;
        v->truthy = n > 0;
    } else if (c == '"') {
        long n = scan_string(s, NULL, NULL);
        if (n < 0) return -1;
        v->type = J_STR;
        v->truthy = n > 0;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        if (scan_number(s, &v->truthy)) return -1;
        v->type = J_NUM;
    } else {
        static const struct {
            const char *word;
            JType type;
        } lits[] = {{"null", J_NULL}, {"false", J_FALSE}, {"true", J_TRUE}};
        int hit = 0;
        for (size_t k = 0; k < 3 && !hit; k++) {
            size_t n = strlen(lits[k].word);
            if ((size_t)(s->end - s->p) >= n && memcmp(s->p, lits[k].word, n) == 0) {
                s->p += n;
                v->type = lits[k].type;
                v->truthy = lits[k].type == J_TRUE;
                hit = 1;
            }
        }
        if (!hit) return -1;
    }
    v->stop = s->p;
    return 0;
}

/* ---- the request's fields ---------------------------------------------------------------------- */
typedef struct {
    JVal prompt, max_tokens, stream, model, opts, usage, cont;
    int has_prompt, has_max, has_stream, has_model, has_opts, has_usage, has_cont;
} Req;

static int key_is(const char *key, size_t n, const char *name) {
    return n == strlen(name) && memcmp(key, name, n) == 0;
}

static void on_req(void *ctx, const char *key, size_t n, const JVal *v) {
    Req *r = ctx;
    if (key_is(key, n, "prompt")) r->prompt = *v, r->has_prompt = 1;
    else if (key_is(key, n, "max_tokens")) r->max_tokens = *v, r->has_max = 1;
    else if (key_is(key, n, "stream")) r->stream = *v, r->has_stream = 1;
    else if (key_is(key, n, "model")) r->model = *v, r->has_model = 1;
    else if (key_is(key, n, "stream_options")) r->opts = *v, r->has_opts = 1;
}

static void on_opts(void *ctx, const char *key, size_t n, const JVal *v) {
    Req *r = ctx;
    if (key_is(key, n, "include_usage")) r->usage = *v, r->has_usage = 1;
    else if (key_is(key, n, "continuous_usage_stats")) r->cont = *v, r->has_cont = 1;
}

/* Python's int() of the parsed max_tokens: ints, floats (truncated), bools and digit strings. */
static int to_int(const JVal *v, long long *out) {
    if (v->type == J_TRUE || v->type == J_FALSE) {
        *out = v->type == J_TRUE;
        return 0;
    }
    char tmp[64];
    const char *a = v->start, *b = v->stop;
    if (v->type == J_STR) {
        Scan s = {a, b};
        Buf d = {0};
        if (scan_string(&s, &d, NULL) < 0) return -1;
        size_t i = 0, j = d.len;
        while (i < j && py_space((unsigned char)d.p[i])) i++;
        while (j > i && py_space((unsigned char)d.p[j - 1])) j--;
        size_t k = i;
        if (k < j && (d.p[k] == '+' || d.p[k] == '-')) k++;
        int ok = k < j && j - i < sizeof tmp;
        for (size_t q = k; ok && q < j; q++) ok = d.p[q] >= '0' && d.p[q] <= '9';
        if (ok) {
            memcpy(tmp, d.p + i, j - i);
            tmp[j - i] = 0;
        }
        free(d.p);
        if (!ok) return -1;
        errno = 0;
        *out = strtoll(tmp, NULL, 10);
        return errno ? -1 : 0;
    }
    if (v->type != J_NUM || (size_t)(b - a) >= sizeof tmp) return -1;
    memcpy(tmp, a, (size_t)(b - a));
    tmp[b - a] = 0;
    if (strpbrk(tmp, ".eE")) {
        double d = trunc(strtod(tmp, NULL));
        if (!(d > -9e18 && d < 9e18)) return -1;
        *out = (long long)d;
        return 0;
    }
    errno = 0;
    *out = strtoll(tmp, NULL, 10);
    return errno ? -1 : 0;
}

/* A (valid UTF-8) model name as orjson.dumps(str) writes it. */
static void json_utf8(Buf *b, const char *s, size_t n) {
    buf_add(b, "\"", 1);
    for (size_t k = 0; k < n; k++) json_byte(b, (unsigned char)s[k]);
    buf_add(b, "\"", 1);
}

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

/* ---- process set-up: priority (cpushare.raise_priority), timer slack, flags ------------------- */
static int raise_priority(int nice) {
    setpriority(PRIO_PROCESS, 0, nice);
    pid_t sid = getsid(0);
    if ((sid == getpid() || sid == getppid()) && access("/proc/self/autogroup", F_OK) == 0) {
        FILE *fh = fopen("/proc/self/autogroup", "w");
        if (!fh) return 0;
        int ok = fprintf(fh, "%d\n", nice) > 0;
        ok = (fclose(fh) == 0) && ok;
        if (!ok) return 0; /* the group's share is unchanged, whatever the process's own nice */
        char text[256] = {0};
        fh = fopen("/proc/self/autogroup", "r");
        if (!fh) return 0;
        size_t n = fread(text, 1, sizeof text - 1, fh);
        fclose(fh);
        text[n] = 0;
        char *at = NULL;
        for (char *p = strstr(text, "nice"); p; p = strstr(p + 4, "nice")) at = p + 4;
        char *stop;
        long v = at ? strtol(at, &stop, 10) : 0;
        return at && stop != at ? (int)v : 0;
    }
    errno = 0;
    return getpriority(PRIO_PROCESS, 0);
}

static void on_signal(int sig) {
    (void)sig;
    running = 0;
}

static void usage_exit(const char *msg) {
    fprintf(stderr,
            "usage: tokenbench-truthserver --port PORT [--ttft-ms MS] [--itl-ms MS] --log PATH [--nice N]\n"
            "tokenbench-truthserver: error: %s\n",
            msg);
    exit(2);
}

static double num_arg(const char *flag, const char *v, int integer) {
    char *stop;
    errno = 0;
    double d = integer ? (double)strtol(v, &stop, 10) : strtod(v, &stop);
    if (!*v || *stop || errno || !isfinite(d)) {
        char msg[256];
        snprintf(msg, sizeof msg, "argument %s: invalid %s value: '%s'", flag, integer ? "int" : "float", v);
        usage_exit(msg);
    }
    return d;
}

int main(int argc, char **argv) {
    long port = -1;
    double ttft_ms = 100.0, itl_ms = 10.0;
    int nice = -10;
    const char *log_path = NULL;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k], *v = NULL, *eq = strchr(a, '=');
        static const char *flags[] = {"--port", "--ttft-ms", "--itl-ms", "--log", "--nice"};
        size_t name_len = eq && strncmp(a, "--", 2) == 0 ? (size_t)(eq - a) : strlen(a);
        int which = -1;
        for (int f = 0; f < 5; f++)
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
        else nice = (int)num_arg(flags[4], v, 1);
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
