/* common/base64.h: base64 (RFC 4648 sections 4 and 5), both alphabets, both directions.
 *
 * Flags, or-ed:
 *   PINS_BASE64_URL        the URL-safe alphabet ('-' '_' for 62 and 63) instead of the standard
 *                          one ('+' '/'). JWTs and the ListPins page token use it.
 *   PINS_BASE64_MIXED      decode: either alphabet, even mixed in one text (proto3 JSON bytes).
 *   PINS_BASE64_PAD        encode: pad with '=' to a multiple of 4 characters. Decode: a text
 *                          whose length is a multiple of 4 may end in one or two '=' (then
 *                          required to be exactly the padding); unpadded text is accepted too.
 *                          Without the flag, '=' is refused like any other foreign character.
 *   PINS_BASE64_CANONICAL  decode: the bits left over after the last whole byte must be zero, so
 *                          that a byte string has exactly one text (JWT parts).
 *   PINS_BASE64_LOOSE_TAIL decode: a last character that completes no byte (a length of 4k + 1)
 *                          is checked against the alphabet and otherwise ignored, instead of
 *                          refused. Only the ListPins page token uses it: its decoder always did.
 * Decoding is strict otherwise: any character outside the alphabet (whitespace included) refuses
 * the text, and so does a length of 4k + 1 characters (without LOOSE_TAIL).
 *
 * Pure functions on caller memory; safe from any thread.
 */
#ifndef PINS_COMMON_BASE64_H
#define PINS_COMMON_BASE64_H

#include <stddef.h>
#include <stdint.h>

enum {
    PINS_BASE64_URL = 1u << 0,
    PINS_BASE64_MIXED = 1u << 1,
    PINS_BASE64_PAD = 1u << 2,
    PINS_BASE64_CANONICAL = 1u << 3,
    PINS_BASE64_LOOSE_TAIL = 1u << 4,
};

/* Characters pins_base64_encode writes for n bytes (without the NUL). n < SIZE_MAX / 2. */
size_t pins_base64_encoded_len(size_t n, unsigned flags);

/* Encodes in[0..n) into out, which holds pins_base64_encoded_len(n, flags) + 1 bytes, and
 * NUL-terminates it. Flags: URL, PAD. Returns the length written (without the NUL). */
size_t pins_base64_encode(const void *in, size_t n, unsigned flags, char *out);

/* The most bytes pins_base64_decode writes for len characters (exact for unpadded text). */
static inline size_t pins_base64_decoded_max(size_t len)
{
    return len / 4 * 3 + (len % 4 == 0 ? 0 : len % 4 - 1);
}

/* Decodes in[0..len) into out (pins_base64_decoded_max(len) bytes); *pn gets the byte count.
 * Returns 0, or PINS_EINVALID_ARGUMENT when the text is not base64 under flags (*pn is then
 * untouched, out may have been written). */
int pins_base64_decode(const char *in, size_t len, unsigned flags, uint8_t *out, size_t *pn);

#endif
