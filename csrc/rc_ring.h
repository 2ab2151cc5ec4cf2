/* Ring index arithmetic and slot layout for ringcast's native ring.
 *
 * Positions are free-running 64-bit counters; a slot index is
 * `pos & mask`, so capacity is always a power of two. Sequence numbers
 * are separate from positions: a message dropped by `drop_newest`
 * consumes a sequence number but no slot, which is how a consumer sees
 * the gap. A ring may also be bounded in payload bytes (soft: a message is
 * admitted while the bytes held are below the bound, so the ring holds at
 * most the bound plus one message). Portable C99: no GNU extensions (MSVC, clang, gcc).
 */
#ifndef RC_RING_H
#define RC_RING_H

#include <stdint.h>
#include <stddef.h>

#define RC_RING_MAX_CAPACITY ((uint64_t)1 << 26) /* 64 Mi slots, 2 GiB: anything larger is a mistake */

enum rc_overflow {
    RC_BLOCK = 0,       /* refuse the push; the caller waits or reports WouldBlock */
    RC_DROP_OLDEST = 1, /* evict the oldest unread slot to make room */
    RC_DROP_NEWEST = 2  /* discard the message being pushed */
};

typedef struct rc_slot {
    uint64_t seq;
    uint64_t stamp; /* enqueue time (ns since the epoch) on stamped rings, else 0 */
    void *subject;  /* PyObject* (str), owned reference */
    void *payload;  /* PyObject*, owned reference */
    void *headers;  /* PyObject* (dict) or NULL, owned reference */
    uint64_t size;  /* payload bytes, counted against the ring's byte bound */
} rc_slot;

/* Smallest power of two >= n (n >= 1), capped at RC_RING_MAX_CAPACITY. */
static inline uint64_t rc_ring_round_capacity(uint64_t n)
{
    uint64_t c = 1;
    if (n > RC_RING_MAX_CAPACITY)
        return RC_RING_MAX_CAPACITY;
    while (c < n)
        c <<= 1;
    return c;
}

static inline uint64_t rc_ring_used(uint64_t wpos, uint64_t rpos)
{
    return wpos - rpos;
}

static inline rc_slot *rc_ring_at(rc_slot *slots, uint64_t mask, uint64_t pos)
{
    return &slots[pos & mask];
}

#endif /* RC_RING_H */
