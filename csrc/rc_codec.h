/* Wire primitives of the ringcast protocol (docs/protocol.md).
 *
 * A frame is a run of records; a record is `cmd:u8 len:u32le body[len]`.
 * Inside a body, integers are unsigned LEB128 varints and strings are a
 * varint length followed by UTF-8 bytes. The fixed-width record length lets
 * an encoder back-patch it and a decoder reject an oversize record before
 * touching its body. Portable C99: no GNU extensions (MSVC, clang, gcc).
 */
#ifndef RC_CODEC_H
#define RC_CODEC_H

#include <stdint.h>
#include <stddef.h>

#define RC_PROTO_VERSION 3      /* what this side speaks (docs/protocol.md) */
#define RC_PROTO_VERSION_MIN 1  /* oldest a broker still serves */
#define RC_REC_HDR 5          /* cmd byte + u32 length */
#define RC_UVARINT_MAX 10     /* bytes in the longest uint64 varint */

/* Record command bytes (docs/protocol.md, "Commands"). */
enum rc_cmd {
    /* client -> broker */
    RC_HELLO = 0x01,
    RC_PUB = 0x02,
    RC_SUB = 0x03,
    RC_CLOSE = 0x04,
    RC_CREDIT = 0x05,
    RC_DECLARE = 0x06,
    RC_SEND = 0x07,
    RC_CONSUME = 0x08,
    RC_ACK = 0x09,
    RC_NACK = 0x0A,
    RC_SERVE = 0x0B,
    RC_REQ = 0x0C,
    RC_REP = 0x0D,
    RC_REPERR = 0x0E,
    RC_STATS = 0x0F,
    RC_HB = 0x10,
    RC_BYE = 0x11,
    RC_PUBS = 0x12,  /* version 3: a run of PUB of one subject without headers */
    /* broker -> client */
    RC_WELCOME = 0x81,
    RC_OK = 0x82,
    RC_ERR = 0x83,
    RC_MSG = 0x84,
    RC_QMSG = 0x85,
    RC_RQST = 0x86,
    RC_REPLY = 0x87,
    RC_REPLYERR = 0x88,
    RC_PCREDIT = 0x89,
    RC_STATSREP = 0x8A,
    RC_MSGS = 0x8B   /* version 3: a run of MSG of one subject, consecutive seqs */
};

static inline void rc_u32le_put(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)((v >> 8) & 0xff);
    p[2] = (unsigned char)((v >> 16) & 0xff);
    p[3] = (unsigned char)((v >> 24) & 0xff);
}

static inline uint32_t rc_u32le_get(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline size_t rc_uvarint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Write v at p (room for RC_UVARINT_MAX bytes); returns bytes written. */
static inline size_t rc_uvarint_put(unsigned char *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

/* Read a varint from p[0:avail]. Returns bytes consumed, or 0 when the
 * input is truncated or longer than a uint64 can hold. */
static inline size_t rc_uvarint_get(const unsigned char *p, size_t avail, uint64_t *out)
{
    uint64_t v = 0;
    unsigned shift = 0;
    size_t i;
    if (avail >= 3) {  /* sequence numbers and lengths: up to 2^21, unrolled */
        uint64_t b0 = p[0], b1 = p[1], b2 = p[2];
        if (b0 < 0x80) {
            *out = b0;
            return 1;
        }
        if (b1 < 0x80) {
            *out = (b0 & 0x7f) | (b1 << 7);
            return 2;
        }
        if (b2 < 0x80) {
            *out = (b0 & 0x7f) | ((b1 & 0x7f) << 7) | (b2 << 14);
            return 3;
        }
    }
    for (i = 0; i < avail && i < RC_UVARINT_MAX; i++) {
        uint64_t b = p[i];
        if (shift == 63 && b > 1)
            return 0;
        v |= (b & 0x7f) << shift;
        if (b < 0x80) {
            *out = v;
            return i + 1;
        }
        shift += 7;
    }
    return 0;
}

#endif /* RC_CODEC_H */
