/* A small strict JSON scanner (what orjson.loads accepts) and the request fields the server reads.
 *
 * Part of truthserver.c, which is one translation unit: it includes this file once, after its system
 * headers and constants (split only to keep each file short; cbuild hashes every file of the server).
 */
#ifndef TB_TRUTHJSON_H
#define TB_TRUTHJSON_H

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

#endif
