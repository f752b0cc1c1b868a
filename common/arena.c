/* common/arena.c: bump allocation over a chain of blocks. The first block is embedded in the
 * arena allocation so that a small call costs one malloc. */
#include "common/arena.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_BLOCK 4096
#define MIN_BLOCK   8192
#define ALIGN       16

struct block {
    struct block *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(ALIGN) unsigned char data[];
};

struct pins_arena {
    struct block *head; /* current block; older ones follow */
    size_t limit;
    size_t total; /* bytes handed out */
    struct block first;
};

static_assert(sizeof(struct block) % ALIGN == 0, "block header keeps data aligned");

pins_arena *pins_arena_new(size_t limit)
{
    pins_arena *a = malloc(sizeof(*a) + FIRST_BLOCK);
    if (a == NULL)
        return NULL;
    a->first.next = NULL;
    a->first.size = FIRST_BLOCK;
    a->first.used = 0;
    a->head = &a->first;
    a->limit = limit;
    a->total = 0;
    return a;
}

static void free_chain(pins_arena *a)
{
    struct block *b = a->head;
    while (b != NULL && b != &a->first) {
        struct block *next = b->next;
        free(b);
        b = next;
    }
}

void pins_arena_free(pins_arena *a)
{
    if (a == NULL)
        return;
    free_chain(a);
    free(a);
}

void pins_arena_reset(pins_arena *a)
{
    free_chain(a);
    a->first.used = 0;
    a->first.next = NULL;
    a->head = &a->first;
    a->total = 0;
}

void *pins_arena_alloc(pins_arena *a, size_t size)
{
    size_t need = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (need < size)
        return NULL;
    if (a->limit != 0 && (need > a->limit || a->total > a->limit - need))
        return NULL;
    struct block *b = a->head;
    if (b->size - b->used < need) {
        size_t bsize = need > MIN_BLOCK ? need : MIN_BLOCK;
        if (b->size * 2 > bsize && b->size < (1u << 20))
            bsize = b->size * 2 > need ? b->size * 2 : need;
        struct block *nb = malloc(sizeof(*nb) + bsize);
        if (nb == NULL)
            return NULL;
        nb->size = bsize;
        nb->used = 0;
        nb->next = b;
        a->head = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += need;
    a->total += need;
    return p;
}

void *pins_arena_calloc(pins_arena *a, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    void *p = pins_arena_alloc(a, n * size);
    if (p != NULL)
        memset(p, 0, n * size);
    return p;
}

char *pins_arena_strndup(pins_arena *a, const char *s, size_t len)
{
    char *p = pins_arena_alloc(a, len + 1);
    if (p == NULL)
        return NULL;
    if (len != 0)
        memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *pins_arena_strdup(pins_arena *a, const char *s)
{
    return pins_arena_strndup(a, s, strlen(s));
}

char *pins_arena_vprintf(pins_arena *a, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *p = pins_arena_alloc(a, (size_t)n + 1);
    if (p == NULL)
        return NULL;
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *pins_arena_printf(pins_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = pins_arena_vprintf(a, fmt, ap);
    va_end(ap);
    return p;
}

size_t pins_arena_limit(const pins_arena *a)
{
    return a->limit;
}

size_t pins_arena_used(const pins_arena *a)
{
    return a->total;
}

static void *pb_alloc(void *data, size_t size)
{
    return pins_arena_alloc(data, size);
}

static void pb_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

ProtobufCAllocator pins_arena_allocator(pins_arena *a)
{
    return (ProtobufCAllocator){.alloc = pb_alloc, .free = pb_free, .allocator_data = a};
}
