/* store/breaker.h: the circuit breaker on the store (API.md section 7).
 *
 * Process wide, safe from any thread. More than `errors_per_min` store errors (calls that ended
 * with PINS_ESTORE) in a rolling minute open it: MemoryPins calls then fail fast with
 * PINS_EBREAKER_OPEN for `open_seconds`. Then exactly one call passes as the probe (half-open):
 * its success closes the breaker, a store error or a deadline reopens it; other outcomes give no
 * verdict, and a probe without a verdict after open_seconds lets the next call probe; a store that
 * reports a connection made again (store_breaker_store_back) cuts the open period short. The state
 * is exported as circuit_breaker_state{name="store"} (0 closed, 1 open, 2 half-open).
 */
#ifndef PINS_STORE_BREAKER_H
#define PINS_STORE_BREAKER_H

#include <stdbool.h>

typedef enum store_breaker_state {
    STORE_BREAKER_CLOSED = 0,
    STORE_BREAKER_OPEN = 1,
    STORE_BREAKER_HALF_OPEN = 2,
} store_breaker_state;

/* Sets the thresholds (BREAKER_ERRORS_PER_MIN, BREAKER_OPEN_SECONDS), closes the breaker and
 * registers its metric (once per process). Call before the workers start. */
void store_breaker_configure(int errors_per_min, int open_seconds);
/* Whether a MemoryPins call may run now (false: fail it with PINS_EBREAKER_OPEN). */
bool store_breaker_allow(void);
/* The outcome of a MemoryPins call that store_breaker_allow() let through: 0 or a PINS_E* code.
 * PINS_ESTORE counts as a store error; 0, NOT_FOUND, ALREADY_EXISTS and ABORTED prove the store
 * answers; other codes say nothing about the store. */
void store_breaker_record(int err);
/* The store made a connection again after losing it (PostgreSQL: a reconnect passed its schema
 * check, e.g. to a promoted standby): an open breaker lets the next call probe now instead of at
 * the end of open_seconds, so calls resume as soon as the store is back. */
void store_breaker_store_back(void);
/* The current state. */
store_breaker_state store_breaker_get(void);
/* Store errors counted in the rolling minute (while closed; the count restarts when it closes). */
int store_breaker_errors_last_minute(void);

#endif
