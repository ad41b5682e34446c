/* Growable buffers, the monotonic clock, JSON string output and the binary log (truthlog.py's format).
 *
 * Part of truthserver.c, which is one translation unit: it includes this file once, after its system
 * headers and constants (split only to keep each file short; cbuild hashes every file of the server).
 */
#ifndef TB_TRUTHBUF_H
#define TB_TRUTHBUF_H

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

#endif
