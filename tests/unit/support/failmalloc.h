/* tests/unit/support/failmalloc.h: allocation-failure runs (STYLE 24; nghttp2 failmalloc, curl
 * torture).
 *
 * A test program named test_failmalloc*.c is linked with failmalloc.c and with the linker's
 * --wrap for malloc, calloc, realloc and the allocating functions of common/arena.h
 * (tests/CMakeLists.txt). Every call that pins_core and the test make to one of them then goes
 * through a counter here; production code and the other test programs are built and linked as
 * before. ASan still sees every block: the wrappers call the real (intercepted) functions.
 * The protobuf-c allocator of pins_arena_allocator() is wrapped too, so an unpack into an arena
 * counts each of its allocations. Code inside shared libraries (libc, jansson, protobuf-c,
 * OpenSSL) allocating for itself is not counted.
 *
 * failmalloc_each() runs an operation once to count its allocations (N), then N more times,
 * failing the n-th allocation of run n (that one only: later ones succeed again, so that error
 * paths that keep going are exercised too). The operation's outcome is checked outside the
 * counted window, so checks may allocate freely.
 *
 * Single-threaded: the counter is a plain global.
 */
#ifndef PINS_TESTS_FAILMALLOC_H
#define PINS_TESTS_FAILMALLOC_H

#include <stdbool.h>
#include <stddef.h>

/* Starts counting; the fail_at-th allocation from now returns NULL (0: none fails). */
void failmalloc_arm(size_t fail_at);
/* Stops counting and returns the number of allocations made since failmalloc_arm(). */
size_t failmalloc_disarm(void);
/* True when an allocation was failed since the last failmalloc_arm(). */
bool failmalloc_fired(void);

/* The operation: runs with the counter armed and returns its result code (0: success). state
 * is the test's. */
typedef int (*failmalloc_op)(void *state);
/* The check: runs after each run of op with the counter disarmed; fired tells whether an
 * allocation of that run failed, rv is what op returned. It asserts what the run must have
 * produced and releases what op made. */
typedef void (*failmalloc_check)(void *state, int rv, bool fired);

/* Runs op and check once with no failure, then once per allocation n = 1..N that run made,
 * failing the n-th. Fails the test when the counting run made no allocation, or when a run
 * made more than 4 * N + 64 (a loop that retries a failed allocation forever would). Returns N. */
size_t failmalloc_each(failmalloc_op op, failmalloc_check check, void *state);

#endif
