/* tests/fuzz/fuzz_grpc.c: libFuzzer target for the gRPC wire pieces that do not depend on HTTP/2
 * (protocols/grpc.c): the length-prefixed message framing, grpc-timeout, the percent-encoded and
 * cut grpc-message, and the content type.
 *
 * Byte 0 picks what the rest of the input is:
 *   0  a request body of length-prefixed messages. It is read the way transport/conn.c reads DATA
 *      frames (parse a prefix, refuse compressed or over-long messages, wait for the rest),
 *      once whole and once in pieces whose size byte 1 chooses (its top bits choose the message
 *      size limit). The prefix parser must refuse fewer than 5 bytes and exactly the prefixes
 *      with a reserved flag bit (PINS_EINVALID_ARGUMENT), leave its out-parameter untouched
 *      then, and otherwise give the flag and the big-endian length of the bytes; and
 *      how the body is split must not change the messages read or the outcome;
 *   1  a grpc-timeout value, checked against a direct reading of the spec (1 to 8 digits, one
 *      unit of H M S m u n, clamped at INT64_MAX / 2 nanoseconds);
 *   2  a status message (up to its first NUL): the encoding, at most PROTO_GRPC_MESSAGE_MAX
 *      bytes, must be printable ASCII whose percent-decoding gives back the message, or, when
 *      the whole encoding would pass the cap, the longest prefix of it that ends before a
 *      character's first byte and leaves room for the "..." that follows;
 *   3  a content-type value, checked against the rule of proto_grpc_content_type.
 * Anything else aborts so that libFuzzer reports it; ASan and UBSan catch the rest.
 *
 * Corpus: tests/fuzz/corpus/grpc/.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/arena.h"
#include "common/error.h"
#include "protocols/grpc.h"
#include "rpc/rpc_int.h"

#define MAX_MESSAGES 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

/* ---- framing -------------------------------------------------------------------------------- */

enum end { END_CLEAN, END_INSIDE, END_RESERVED, END_COMPRESSED, END_TOO_LARGE };

typedef struct outcome {
    size_t nmessages;
    uint64_t digest[MAX_MESSAGES];
    enum end end;
} outcome;

static uint64_t mix(uint64_t h, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (h ^ len) * 1099511628211ull;
}

/* One call of the prefix parser on p[0..avail), with its contract checked. */
static int parse_prefix(const uint8_t *p, size_t avail, proto_grpc_frame *pf)
{
    proto_grpc_frame f = {.compressed = true, .len = 0xdeadbeef};
    int rv = proto_grpc_frame_parse(p, avail, &f);
    if (avail < PROTO_GRPC_FRAME_HEADER || (p[0] & 0xfe) != 0) {
        check(rv == PINS_EINVALID_ARGUMENT);
    } else {
        check(rv == 0);
        uint32_t len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        check(f.compressed == ((p[0] & 1) != 0) && f.len == len);
        *pf = f;
        return 0;
    }
    check(f.compressed && f.len == 0xdeadbeef);
    return rv;
}

/* Reads the body as transport/conn.c does, fed piece bytes at a time. */
static void read_body(const uint8_t *data, size_t size, size_t piece, uint32_t max, outcome *out)
{
    uint8_t *buf = malloc(size + 1);
    check(buf != NULL);
    size_t have = 0, off = 0, fed = 0;
    memset(out, 0, sizeof(*out));
    out->end = END_CLEAN;
    while (fed < size) {
        size_t n = size - fed < piece ? size - fed : piece;
        memcpy(buf + have, data + fed, n);
        have += n;
        fed += n;
        for (;;) {
            proto_grpc_frame f;
            int rv = parse_prefix(buf + off, have - off, &f);
            if (have - off < PROTO_GRPC_FRAME_HEADER)
                break; /* wait for the whole prefix */
            if (rv != 0) {
                out->end = END_RESERVED;
                goto out;
            }
            if (f.compressed) {
                out->end = END_COMPRESSED;
                goto out;
            }
            if (f.len > max) {
                out->end = END_TOO_LARGE;
                goto out;
            }
            if (have - off - PROTO_GRPC_FRAME_HEADER < f.len)
                break;
            const uint8_t *msg = buf + off + PROTO_GRPC_FRAME_HEADER;
            if (out->nmessages < MAX_MESSAGES)
                out->digest[out->nmessages] = mix(1469598103934665603ull, msg, f.len);
            out->nmessages++;
            off += PROTO_GRPC_FRAME_HEADER + (size_t)f.len;
        }
    }
    if (off != have)
        out->end = END_INSIDE;
out:
    free(buf);
}

static void fuzz_frames(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    static const uint32_t limits[] = {16, 256, 4096, UINT32_MAX};
    size_t piece = (size_t)(data[0] & 63) + 1;
    uint32_t max = limits[data[0] >> 6];
    data++;
    size--;
    outcome whole, split;
    read_body(data, size, size > 0 ? size : 1, max, &whole);
    read_body(data, size, piece, max, &split);
    check(whole.end == split.end && whole.nmessages == split.nmessages);
    size_t n = whole.nmessages < MAX_MESSAGES ? whole.nmessages : MAX_MESSAGES;
    check(memcmp(whole.digest, split.digest, n * sizeof(whole.digest[0])) == 0);
}

/* ---- grpc-timeout --------------------------------------------------------------------------- */

static void fuzz_timeout(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    int64_t ns = -12345;
    int rv = proto_grpc_timeout_parse(v, size, &ns);
    bool valid =
        size >= 2 && size <= 9 && strchr("HMSmun", v[size - 1]) != NULL && v[size - 1] != '\0';
    for (size_t i = 0; valid && i + 1 < size; i++)
        valid = v[i] >= '0' && v[i] <= '9';
    if (!valid) {
        check(rv == PINS_EINVALID_ARGUMENT && ns == -12345);
        return;
    }
    check(rv == 0);
    __int128 digits = 0;
    for (size_t i = 0; i + 1 < size; i++)
        digits = digits * 10 + (v[i] - '0');
    __int128 unit = 1;
    switch (v[size - 1]) {
    case 'H':
        unit = (__int128)3600 * 1000000000;
        break;
    case 'M':
        unit = (__int128)60 * 1000000000;
        break;
    case 'S':
        unit = 1000000000;
        break;
    case 'm':
        unit = 1000000;
        break;
    case 'u':
        unit = 1000;
        break;
    default:
        break;
    }
    __int128 want = digits * unit;
    if (want > INT64_MAX / 2)
        want = INT64_MAX / 2;
    check(ns == (int64_t)want);
}

/* ---- grpc-message --------------------------------------------------------------------------- */

static int unhex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool esc(unsigned char c)
{
    return c < 0x20 || c > 0x7e || c == '%';
}

static void fuzz_message(const uint8_t *data, size_t size)
{
    char *msg = malloc(size + 1);
    check(msg != NULL);
    memcpy(msg, data, size);
    msg[size] = '\0';
    size_t n = strlen(msg);
    pins_arena *a = pins_arena_new(0);
    check(a != NULL);
    char *enc = proto_grpc_message_encode(a, msg);
    check(enc != NULL);
    size_t elen = strlen(enc);
    check(elen <= (size_t)PROTO_GRPC_MESSAGE_MAX);
    char *dec = malloc(elen + 1);
    check(dec != NULL);
    size_t dlen = 0;
    for (size_t i = 0; i < elen; i++) {
        unsigned char c = (unsigned char)enc[i];
        check(c >= 0x20 && c <= 0x7e);
        if (c != '%') {
            dec[dlen++] = (char)c;
            continue;
        }
        check(i + 2 < elen);
        int hi = unhex(enc[i + 1]), lo = unhex(enc[i + 2]);
        check(hi >= 0 && lo >= 0);
        unsigned char b = (unsigned char)(hi << 4 | lo);
        /* Only what must be escaped is. */
        check(b < 0x20 || b > 0x7e || b == '%');
        dec[dlen++] = (char)b;
        i += 2;
    }
    /* The cap counts encoded bytes: a message whose whole encoding fits is sent whole. */
    size_t full = 0, upto_k = 0;
    for (size_t i = 0; i < n; i++)
        full += esc((unsigned char)msg[i]) ? 3 : 1;
    if (full <= PROTO_GRPC_MESSAGE_MAX) {
        check(dlen == n && memcmp(dec, msg, n) == 0);
    } else {
        check(dlen >= 3 && memcmp(dec + dlen - 3, "...", 3) == 0);
        size_t k = dlen - 3;
        check(k < n && memcmp(dec, msg, k) == 0);
        check(((unsigned char)msg[k] & 0xc0) != 0x80); /* cut before a character's first byte */
        for (size_t i = 0; i < k; i++)
            upto_k += esc((unsigned char)msg[i]) ? 3 : 1;
        check(upto_k + 3 <= PROTO_GRPC_MESSAGE_MAX);
        /* The cut is the last character start that still leaves room for the ellipsis. */
        size_t next = k + 1, extra = esc((unsigned char)msg[k]) ? 3 : 1;
        while (next < n && ((unsigned char)msg[next] & 0xc0) == 0x80)
            extra += esc((unsigned char)msg[next++]) ? 3 : 1;
        check(next >= n || upto_k + extra + 3 > PROTO_GRPC_MESSAGE_MAX);
    }
    free(dec);
    free(msg);
    pins_arena_free(a);
}

/* ---- content type --------------------------------------------------------------------------- */

static void fuzz_content_type(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    static const char base[] = "application/grpc";
    const size_t bl = sizeof(base) - 1;
    bool want = false;
    if (size >= bl && strncasecmp(v, base, bl) == 0) {
        if (size == bl || v[bl] == ';') {
            want = true;
        } else if (v[bl] == '+') {
            size_t sub = bl + 1, end = sub;
            while (end < size && v[end] != ';')
                end++;
            want = end - sub == 5 && strncasecmp(v + sub, "proto", 5) == 0;
        }
    }
    check(proto_grpc_content_type(v, size) == want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] & 3) {
    case 0:
        fuzz_frames(data + 1, size - 1);
        break;
    case 1:
        fuzz_timeout(data + 1, size - 1);
        break;
    case 2:
        fuzz_message(data + 1, size - 1);
        break;
    default:
        fuzz_content_type(data + 1, size - 1);
        break;
    }
    return 0;
}
