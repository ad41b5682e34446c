/* tokenbench's native stream reader: closed-loop chaining per connection (nativeread.c includes it).
 *
 * Per fd, two rings, oldest first. `chain`: the requests a user handed over ahead of its response
 * (tbr_arm): first the nsent ones the thread has sent and Python has not asked about yet
 * (tbr_chain), then the armed ones, sent in order, each the moment the response before it ends.
 * `park`: complete responses whose next request was sent, kept for Python to take in order while
 * the thread reads on. Why a queue and not one slot, and why in order: nativeread.c. Split from
 * nativeread.c only to keep each file short; cbuild hashes it with the source.
 */
#ifndef TOKENBENCH_NATIVECHAIN_H
#define TOKENBENCH_NATIVECHAIN_H
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nativeframe.h"

#define CHAIN_MAX 4 /* requests armed ahead per connection (nativeread.py CHAIN_MAX) */

typedef struct {
    char *buf;        /* a next request, whole */
    int64_t len, cap;
    int64_t deadline; /* CLOCK_MONOTONIC ns: not sent at or after (the step's end of issuing) */
    int64_t sent_ns, sent_bytes; /* sent: stamp right before the send, bytes it took (Python sends the rest) */
} Chain;

typedef struct {
    Chain chain[CHAIN_MAX];
    int chead, nchain, nsent;
    Stream park[CHAIN_MAX];
    int phead, npark;
} Ahead;

/* The oldest armed request (every one before it sent), or NULL. */
static Chain *chain_next(Ahead *a) {
    return a->nsent < a->nchain ? &a->chain[(a->chead + a->nsent) % CHAIN_MAX] : NULL;
}

/* Drop the armed requests (not the sent ones, which Python has yet to ask about). */
static void chain_disarm(Ahead *a) { a->nchain = a->nsent; }

/* Queue a request at the end: 0, -ENOSPC (CHAIN_MAX queued) or -ENOMEM. */
static int chain_push(Ahead *a, const char *buf, int64_t len, int64_t deadline) {
    if (a->nchain == CHAIN_MAX) return -ENOSPC;
    Chain *ch = &a->chain[(a->chead + a->nchain) % CHAIN_MAX];
    if (grow((void **)&ch->buf, &ch->cap, len, 1) < 0) return -ENOMEM;
    memcpy(ch->buf, buf, (size_t)len);
    ch->len = len;
    ch->deadline = deadline;
    a->nchain++;
    return 0;
}

/* The oldest request, if the thread sent it: 1 and out = (sent_ns, bytes sent), and it leaves the
 * queue. Else 0, and the whole queue is disarmed: none after it can have gone out. */
static int chain_pop_sent(Ahead *a, int64_t *out) {
    if (!a->nsent) {
        a->nchain = 0;
        return 0;
    }
    Chain *ch = &a->chain[a->chead];
    out[0] = ch->sent_ns;
    out[1] = ch->sent_bytes;
    a->chead = (a->chead + 1) % CHAIN_MAX;
    a->nsent--;
    a->nchain--;
    return 1;
}

/* The park slot the next parked response goes into (its buffers are reused), or NULL when full. */
static Stream *park_free(Ahead *a) {
    return a->npark < CHAIN_MAX ? &a->park[(a->phead + a->npark) % CHAIN_MAX] : NULL;
}

/* The oldest parked response, or NULL. */
static Stream *park_oldest(Ahead *a) { return a->npark ? &a->park[a->phead] : NULL; }

static void park_pop(Ahead *a) {
    a->phead = (a->phead + 1) % CHAIN_MAX;
    a->npark--;
}

/* Forget everything (the socket is about to close); the buffers stay for reuse. */
static void ahead_clear(Ahead *a) {
    for (int i = 0; i < CHAIN_MAX; i++) a->park[i].active = 0;
    a->npark = a->nchain = a->nsent = 0;
}

static void stream_free(Stream *st) {
    free(st->buf);
    free(st->ends);
    free(st->stamps);
    free(st->body);
    free(st->bends);
    free(st->bstamps);
}

static void ahead_free(Ahead *a) {
    for (int i = 0; i < CHAIN_MAX; i++) {
        stream_free(&a->park[i]);
        free(a->chain[i].buf);
    }
}
#endif
