/* tokenbench's native stream reader, the HTTP response framing (nativeread.c includes it).
 *
 * Only where a response ends is decided here (heads, 1xx interim heads, chunked framing with
 * extensions and trailers, Content-Length, close-delimited, 204/304); the body is copied out with the
 * chunk framing removed. The Python side gives every head and the framing's end to the real HTTP
 * parser, so what a response means is that parser's; a framing judged otherwise is replayed there.
 * Split from nativeread.c only to keep each file short; cbuild hashes both.
 */
#ifndef TOKENBENCH_NATIVEFRAME_H
#define TOKENBENCH_NATIVEFRAME_H
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { S_HEAD, S_SIZE, S_DATA, S_CRLF, S_TRAILER, S_LENGTH, S_EOF, S_DONE };
/* why a response stopped being read (tbr_result) */
enum { R_RUNNING = 0, R_COMPLETE = 1, R_EOF = 2, R_ERROR = 3, R_FRAMING = 4, R_TOO_LARGE = 5, R_CANCELLED = 6 };

typedef struct {
    int active;       /* registered and not yet taken */
    int state;        /* parse state */
    int result;       /* R_* */
    int err;          /* errno of a failed recv */
    char *buf;        /* raw response bytes */
    int64_t len, cap;
    int64_t *ends, *stamps; /* per read: end offset in buf, CLOCK_MONOTONIC ns after recv */
    int64_t nreads, rcap;
    int64_t pos;      /* parse position */
    int64_t head_start;
    int64_t remaining;/* chunk or content-length bytes still to come */
    int64_t max_bytes, max_reads;
    /* the body as the HTTP parser would hand it over (chunk framing removed), and the reads that
       added to it: the SSE splitter's input, without a Python call per read */
    char *body;
    int64_t blen, bcap;
    int64_t *bends, *bstamps;
    int64_t nbody, bkcap;
    int64_t head_len;   /* end of the final (non-1xx) head */
    int64_t term_start; /* chunked: where the last-chunk line starts */
    int chunked;
    int close;          /* the final head does not keep the connection (HTTP/1.0, Connection: close) */
} Stream;

static const char *find(const char *hay, int64_t n, const char *needle, int64_t m) {
    return (const char *)memmem(hay, (size_t)n, needle, (size_t)m);
}


static int grow(void **p, int64_t *cap, int64_t need, size_t item) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * item);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* Double two parallel int64 arrays (offsets and stamps) that share one capacity. */
static int grow_pair(int64_t **a, int64_t **b, int64_t *cap) {
    int64_t c = *cap ? *cap * 2 : 256;
    int64_t *na = realloc(*a, (size_t)c * sizeof(int64_t));
    if (!na) return -1;
    *a = na;
    int64_t *nb = realloc(*b, (size_t)c * sizeof(int64_t));
    if (!nb) return -1;
    *b = nb;
    *cap = c;
    return 0;
}


/* Status code and framing of the head in [s, e) (e points past the blank line). */
static int parse_head(Stream *st, const char *s, const char *e, int *status) {
    if (e - s < 12 || strncmp(s, "HTTP/1.", 7) != 0) return -1;
    const char *p = s + 8;
    if (*p != ' ') return -1;
    p++;
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9') return -1;
    *status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    int chunked = 0;
    int64_t length = -1;
    st->close = s[7] != '1'; /* HTTP/1.0 keeps a connection only when asked: never chained on */
    const char *line = find(s, e - s, "\r\n", 2);
    while (line && line + 2 < e - 2) {
        line += 2;
        const char *eol = find(line, e - line, "\r\n", 2);
        if (!eol) break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                /* chunked must be the last coding; any mention is enough to choose chunked framing,
                   the Python parser judges the details */
                for (const char *q = v; q + 7 <= eol; q++)
                    if (strncasecmp(q, "chunked", 7) == 0) chunked = 1;
            } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                for (const char *q = v; q + 5 <= eol; q++)
                    if (strncasecmp(q, "close", 5) == 0) st->close = 1;
            } else if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
                int64_t n = 0;
                const char *q = v;
                if (q == eol) return -1;
                for (; q < eol && *q >= '0' && *q <= '9'; q++) n = n * 10 + (*q - '0');
                while (q < eol && (*q == ' ' || *q == '\t')) q++;
                if (q != eol) return -1;
                length = n;
            }
        }
        line = eol;
    }
    if (*status >= 100 && *status < 200 && *status != 101) return 1; /* interim: another head follows */
    if (*status == 204 || *status == 304) {
        st->state = S_DONE;
    } else if (chunked) {
        st->state = S_SIZE;
        st->chunked = 1;
    } else if (length >= 0) {
        st->remaining = length;
        st->state = length == 0 ? S_DONE : S_LENGTH;
    } else {
        st->state = S_EOF;
    }
    return 0;
}


static int add_body(Stream *st, const char *src, int64_t n) {
    if (n <= 0) return 0;
    if (grow((void **)&st->body, &st->bcap, st->blen + n, 1) < 0) return -1;
    memcpy(st->body + st->blen, src, (size_t)n);
    st->blen += n;
    return 0;
}

/* Move what is there of the current chunk (or Content-Length body) into the body; -1: out of memory. */
static int take_body(Stream *st, int64_t avail) {
    int64_t take = avail < st->remaining ? avail : st->remaining;
    if (add_body(st, st->buf + st->pos, take) < 0) {
        st->result = R_ERROR;
        st->err = ENOMEM;
        return -1;
    }
    st->pos += take;
    st->remaining -= take;
    return 0;
}

/* Advance the framing over the bytes read so far; sets st->result when the response is over. */
static void advance(Stream *st) {
    const char *b = st->buf;
    for (;;) {
        int64_t avail = st->len - st->pos;
        switch (st->state) {
        case S_HEAD: {
            int64_t from = st->pos - 3 > st->head_start ? st->pos - 3 : st->head_start;
            const char *e = find(b + from, st->len - from, "\r\n\r\n", 4);
            if (!e) { st->pos = st->len; return; }
            int status = 0;
            int r = parse_head(st, b + st->head_start, e + 4, &status);
            st->pos = (e + 4) - b;
            if (r < 0) { st->result = R_FRAMING; return; }
            if (r == 1) { st->head_start = st->pos; continue; }
            st->head_len = st->pos;
            if (st->state == S_DONE) { st->result = R_COMPLETE; return; }
            continue;
        }
        case S_SIZE: {
            const char *eol = find(b + st->pos, avail, "\r\n", 2);
            if (!eol) {
                if (avail > 1024) st->result = R_FRAMING;
                return;
            }
            const char *q = b + st->pos;
            int64_t n = 0;
            int digits = 0;
            for (; q < eol; q++, digits++) {
                int c = *q, d;
                if (c >= '0' && c <= '9') d = c - '0';
                else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
                else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
                else break;
                if (n > ((int64_t)1 << 40)) { st->result = R_FRAMING; return; }
                n = n * 16 + d;
            }
            if (digits == 0 || (q < eol && *q != ';' && *q != ' ' && *q != '\t')) {
                st->result = R_FRAMING;
                return;
            }
            if (n == 0) st->term_start = st->pos;
            st->pos = (eol + 2) - b;
            if (n == 0) { st->state = S_TRAILER; continue; }
            st->remaining = n;
            st->state = S_DATA;
            continue;
        }
        case S_DATA:
            if (take_body(st, avail) < 0 || st->remaining) return;
            st->state = S_CRLF;
            continue;
        case S_CRLF:
            if (avail < 2) return;
            if (b[st->pos] != '\r' || b[st->pos + 1] != '\n') { st->result = R_FRAMING; return; }
            st->pos += 2;
            st->state = S_SIZE;
            continue;
        case S_TRAILER: {
            if (avail < 2) return;
            if (b[st->pos] == '\r' && b[st->pos + 1] == '\n') {
                st->pos += 2;
                st->state = S_DONE;
                st->result = R_COMPLETE;
                return;
            }
            const char *e = find(b + st->pos, avail, "\r\n\r\n", 4);
            if (!e) return;
            st->pos = (e + 4) - b;
            st->state = S_DONE;
            st->result = R_COMPLETE;
            return;
        }
        case S_LENGTH:
            if (take_body(st, avail) == 0 && st->remaining == 0) {
                st->state = S_DONE;
                st->result = R_COMPLETE;
            }
            return;
        case S_EOF:
            if (add_body(st, b + st->pos, avail) < 0) { st->result = R_ERROR; st->err = ENOMEM; return; }
            st->pos = st->len;
            return;
        default:
            st->pos = st->len;
            return;
        }
    }
}


#endif
