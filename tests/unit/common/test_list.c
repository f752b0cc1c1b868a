/* tests/unit/common/test_list.c: the intrusive list (common/list.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/list.h"

typedef struct item {
    int value;
    pins_list link;
} item;

/* The values from first to last, and back, must be want[0..n). */
static void check(const pins_list *anchor, const int *want, size_t n)
{
    size_t i = 0;
    for (const pins_list *p = anchor->next; p != anchor; p = p->next, i++) {
        assert_true(i < n);
        assert_int_equal(pins_list_entry(p, item, link)->value, want[i]);
    }
    assert_int_equal(i, n);
    for (const pins_list *p = anchor->prev; p != anchor; p = p->prev)
        assert_int_equal(pins_list_entry(p, item, link)->value, want[--i]);
    assert_int_equal(pins_list_is_empty(anchor), n == 0);
}

static void test_list_appends_prepends_and_unlinks_anywhere(void **state)
{
    (void)state;
    pins_list anchor;
    pins_list_init(&anchor);
    assert_null(pins_list_first(&anchor));
    check(&anchor, NULL, 0);
    item it[4] = {{.value = 1}, {.value = 2}, {.value = 3}, {.value = 4}};
    assert_false(pins_list_is_linked(&it[0].link)); /* zeroed: unlinked */
    pins_list_insert(&anchor, &it[1].link);
    pins_list_insert(&anchor, &it[2].link);
    pins_list_insert(anchor.next, &it[0].link);
    pins_list_insert(&it[2].link, &it[3].link); /* before 3 */
    check(&anchor, (const int[]){1, 2, 4, 3}, 4);
    assert_ptr_equal(pins_list_entry(pins_list_first(&anchor), item, link), &it[0]);
    pins_list_unlink(&it[3].link); /* middle */
    assert_false(pins_list_is_linked(&it[3].link));
    check(&anchor, (const int[]){1, 2, 3}, 3);
    pins_list_unlink(&it[0].link); /* first */
    pins_list_unlink(&it[2].link); /* last */
    check(&anchor, (const int[]){2}, 1);
    pins_list_unlink(&it[1].link);
    check(&anchor, NULL, 0);
    pins_list_insert(&anchor, &it[3].link); /* an unlinked node may be linked again */
    check(&anchor, (const int[]){4}, 1);
}

static void test_list_drains_from_the_front(void **state)
{
    (void)state;
    pins_list anchor;
    pins_list_init(&anchor);
    item it[5];
    for (int i = 0; i < 5; i++) {
        it[i] = (item){.value = i};
        pins_list_insert(&anchor, &it[i].link);
    }
    int next = 0;
    for (pins_list *p = pins_list_first(&anchor); p != NULL; p = pins_list_first(&anchor)) {
        pins_list_unlink(p);
        assert_int_equal(pins_list_entry(p, item, link)->value, next++);
    }
    assert_int_equal(next, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_appends_prepends_and_unlinks_anywhere),
        cmocka_unit_test(test_list_drains_from_the_front),
    };
    return cmocka_run_group_tests_name("list", tests, NULL, NULL);
}
