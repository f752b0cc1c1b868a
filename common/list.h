/* common/list.h: the one intrusive doubly linked list (as h2o's include/h2o/linklist.h).
 *
 * A list is an anchor, a pins_list that is not part of any element; each element embeds a
 * pins_list node and is found from it with pins_list_entry (container_of). The list is circular
 * through the anchor, so insert and unlink are a few stores with no case for the ends, and an
 * element can unlink itself without knowing its list (a cancelled call leaving a queue).
 *
 * A node that is in no list has next == NULL: zeroed memory (calloc, designated initialisers) is
 * an unlinked node, and pins_list_unlink leaves one. An anchor must be initialised with
 * pins_list_init before use. The list owns nothing: elements live wherever their owner put them
 * (an arena, malloc), and must be unlinked before that memory goes. Not thread safe.
 */
#ifndef PINS_COMMON_LIST_H
#define PINS_COMMON_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pins_list {
    struct pins_list *next;
    struct pins_list *prev;
} pins_list;

/* The element of type type whose member node is. */
#define pins_list_entry(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

/* Makes anchor an empty list. */
static inline void pins_list_init(pins_list *anchor)
{
    anchor->next = anchor->prev = anchor;
}

static inline bool pins_list_is_empty(const pins_list *anchor)
{
    return anchor->next == anchor;
}

/* True while node is in a list. */
static inline bool pins_list_is_linked(const pins_list *node)
{
    return node->next != NULL;
}

/* Links node (in no list) just before pos: pins_list_insert(anchor, node) appends,
 * pins_list_insert(anchor->next, node) prepends. */
static inline void pins_list_insert(pins_list *pos, pins_list *node)
{
    node->prev = pos->prev;
    node->next = pos;
    node->prev->next = node;
    pos->prev = node;
}

/* Takes node (in a list) out of it; node is then unlinked. */
static inline void pins_list_unlink(pins_list *node)
{
    node->next->prev = node->prev;
    node->prev->next = node->next;
    node->next = node->prev = NULL;
}

/* The first node of the list, or NULL when it is empty. */
static inline pins_list *pins_list_first(const pins_list *anchor)
{
    return anchor->next != anchor ? anchor->next : NULL;
}

#endif
