/* common/arena.h: the call lifetime's memory.
 *
 * An arena hands out memory from a chain of blocks and frees it all at once. Every call owns one:
 * the unpacked request, the reply under construction and every string a handler builds live in it
 * and die with the call. An arena has a byte limit; past it allocation fails with NULL, so a
 * hostile peer meets RESOURCE_EXHAUSTED long before malloc fails.
 *
 * Arenas are not thread safe; a call's arena is used only on its worker's thread.
 */
#ifndef PINS_COMMON_ARENA_H
#define PINS_COMMON_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stdarg.h>
#include <stddef.h>

typedef struct pins_arena pins_arena;

/* New arena that may hold up to limit bytes (0: no limit). Free with pins_arena_free().
 * Returns NULL when out of memory. */
pins_arena *pins_arena_new(size_t limit);
/* Frees the arena and everything allocated from it. NULL is allowed. */
void pins_arena_free(pins_arena *a);
/* Frees everything allocated from the arena but keeps its first block for reuse. */
void pins_arena_reset(pins_arena *a);
/* size bytes aligned to 16, or NULL when out of memory or over the limit. */
void *pins_arena_alloc(pins_arena *a, size_t size);
/* Zeroed memory for n elements of size bytes, NULL on overflow, out of memory or over the limit. */
void *pins_arena_calloc(pins_arena *a, size_t n, size_t size);
/* A NUL-terminated copy of s[0..len), or NULL. */
char *pins_arena_strndup(pins_arena *a, const char *s, size_t len);
/* A NUL-terminated copy of s, or NULL. */
char *pins_arena_strdup(pins_arena *a, const char *s);
/* printf into the arena, or NULL. */
char *pins_arena_printf(pins_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *pins_arena_vprintf(pins_arena *a, const char *fmt, va_list ap);
/* The limit given to pins_arena_new(). */
size_t pins_arena_limit(const pins_arena *a);
/* Bytes handed out so far (what the limit is measured against). */
size_t pins_arena_used(const pins_arena *a);
/* A protobuf-c allocator backed by the arena (free is a no-op). The allocator borrows a. */
ProtobufCAllocator pins_arena_allocator(pins_arena *a);

#endif
