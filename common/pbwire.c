/* common/pbwire.c: the wire-format depth check. One pass over the bytes with an explicit stack of
 * (end of message, descriptor) frames, so its cost is linear in the input and its stack use is
 * fixed (PBWIRE_MAX_DEPTH frames). Field lookup uses protobuf-c's binary search over the
 * descriptor's field ranges. */
#include "common/pbwire.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include "common/error.h"
#include "common/utf8.h"

static_assert(PBWIRE_MAX_DEPTH >= PINS_VALUE_WIRE_DEPTH,
              "the pre-check follows a request that carries the deepest pin value");

struct frame {
    const uint8_t *end;
    const ProtobufCMessageDescriptor *desc;
};

/* Reads a varint of at most max bytes from [*pp, end); returns false when it is longer or cut
 * short. */
static inline bool read_varint(const uint8_t **pp, const uint8_t *end, int max, uint64_t *pv)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < max; i++) {
        if (p >= end)
            return false;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if ((b & 0x80) == 0) {
            *pp = p;
            *pv = v;
            return true;
        }
    }
    return false;
}

int pbwire_check(const uint8_t *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                 int max_depth)
{
    return pbwire_check_ex(buf, len, desc, max_depth, NULL);
}

int pbwire_check_ex(const uint8_t *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                    int max_depth, const ProtobufCFieldDescriptor **pbad)
{
    if (pbad != NULL)
        *pbad = NULL;
    struct frame stack[PBWIRE_MAX_DEPTH];
    if (max_depth > PBWIRE_MAX_DEPTH)
        max_depth = PBWIRE_MAX_DEPTH;
    if (max_depth < 1 || (buf == NULL && len != 0))
        return PINS_EINVALID_ARGUMENT;
    const uint8_t *p = buf, *end = buf + len;
    int depth = 1;                              /* stack[depth - 1] is the current message */
    const ProtobufCFieldDescriptor *top = NULL; /* the depth-1 field being walked */
    stack[0] = (struct frame){end, desc};
    for (;;) {
        while (p == end) {
            if (depth == 1)
                return 0;
            depth--;
            end = stack[depth - 1].end;
            desc = stack[depth - 1].desc;
        }
        uint64_t tag, n;
        if (!read_varint(&p, end, 5, &tag) || tag > UINT32_MAX)
            return PINS_EINVALID_ARGUMENT;
        uint32_t number = (uint32_t)(tag >> 3);
        unsigned wire = (unsigned)(tag & 7);
        if (number == 0)
            return PINS_EINVALID_ARGUMENT;
        const ProtobufCFieldDescriptor *f =
            desc != NULL ? protobuf_c_message_descriptor_get_field(desc, number) : NULL;
        bool message = f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE;
        if (message && wire != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
            return PINS_EINVALID_ARGUMENT;
        switch (wire) {
        case PROTOBUF_C_WIRE_TYPE_VARINT:
            if (!read_varint(&p, end, 10, &n))
                return PINS_EINVALID_ARGUMENT;
            break;
        case PROTOBUF_C_WIRE_TYPE_64BIT:
            if (end - p < 8)
                return PINS_EINVALID_ARGUMENT;
            p += 8;
            break;
        case PROTOBUF_C_WIRE_TYPE_32BIT:
            if (end - p < 4)
                return PINS_EINVALID_ARGUMENT;
            p += 4;
            break;
        case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
            if (!read_varint(&p, end, 10, &n) || n > (uint64_t)(end - p))
                return PINS_EINVALID_ARGUMENT;
            if (!message) {
                /* proto3 strings are UTF-8; protobuf-c hands them out as C strings, so an
                 * embedded NUL would silently cut the value short. */
                if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING &&
                    (memchr(p, 0, n) != NULL || pins_utf8_count((const char *)p, n) < 0)) {
                    if (pbad != NULL)
                        *pbad = depth == 1 ? f : top;
                    return PINS_EINVALID_ARGUMENT;
                }
                p += n;
                break;
            }
            if (depth >= max_depth)
                return PINS_EINVALID_ARGUMENT;
            if (depth == 1)
                top = f;
            end = p + n;
            desc = f->descriptor;
            stack[depth++] = (struct frame){end, desc};
            break;
        default: /* groups (3, 4) and the undefined wire types 6 and 7 */
            return PINS_EINVALID_ARGUMENT;
        }
    }
}
