/* store/pg_sched.c: the PostgreSQL backend's scheduler (store/pg_int.h, and its one-key-per-write
 * contract).
 *
 * Calls wait FIFO in the session's bounded queue. Once per loop iteration (ss->kick, so the calls
 * read from all clients in that iteration go together) and whenever a connection has room, the
 * queue is cut into segments; each ends with one sync, so a segment is one implicit transaction,
 * and goes to the least busy connection (a read batch: to the first with room and no other kind
 * of segment in flight, see pick_read_conn(); through a pooler a connection has one segment in
 * flight, see has_room()):
 *   - GetPin calls waiting together (up to GET_BATCH_MAX) become one statement that looks up all
 *     their keys at once, each distinct (tenant, key) once: calls of one key share its row, each
 *     checked against its own clock for expiry;
 *   - upserts and deletes waiting together (up to WRITE_BATCH_MAX) are consecutive statements of
 *     one segment, one transaction with one commit, sorted by tenant and key so that two
 *     segments take their row locks in the same order and never deadlock. A write whose tenant
 *     a write segment of this session has in flight waits for it (busy[], the tenant slots).
 *     Consecutive upserts of one key without expected_version are one statement
 *     (store__pg_sql_upsert_chain) that writes the row once and answers each call as if run in
 *     turn. Through a pooler, a statement text that several calls of the segment run is parsed
 *     once after store__pg_sql_generic, so that its one generic plan serves them all;
 *   - every other call is a segment of its own.
 */
#include "store/pg_int.h"

#include <stdint.h>
#include <string.h>

#include "common/error.h"
#include "common/fmt.h"
#include "common/hash.h"

/* r left the write segment it was sent in: its key no longer counts as in flight. */
void store__pg_busy_release(pg_session *ss, pg_req *r)
{
    for (pg_req *k = r->kids; k != NULL; k = k->next)
        store__pg_busy_release(ss, k);
    if (r->busy_at != 0) {
        ss->busy[r->busy_at - 1]--;
        r->busy_at = 0;
    }
}

/* Fails every waiting call with PINS_ESTORE (no connection is up or coming up). */
void store__pg_fail_queue(pg_session *ss, const char *detail)
{
    while (ss->wq_head != NULL) {
        pg_req *r = ss->wq_head;
        ss->wq_head = r->next;
        if (ss->wq_head == NULL)
            ss->wq_tail = NULL;
        ss->wq_len--;
        store__pg_fail_req(ss, r, PINS_ESTORE, detail);
    }
}

/* Adds r to l for another run: a batch's calls one by one (the batch is freed); an abandoned call
 * is freed instead. */
void store__pg_requeue(req_list *l, pg_req *r)
{
    if (store__pg_is_batch(r)) {
        while (r->kids != NULL) {
            pg_req *k = r->kids;
            r->kids = k->next;
            store__pg_requeue(l, k);
        }
        store__pg_req_free(r);
        return;
    }
    if (r->abandoned) {
        store__pg_req_free(r);
        return;
    }
    PQclear(r->res);
    r->res = NULL;
    r->next = NULL;
    if (l->tail != NULL)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

/* Puts the calls of l in front of the waiting ones. */
void store__pg_requeue_front(pg_session *ss, req_list *l)
{
    if (l->head == NULL)
        return;
    l->tail->next = ss->wq_head;
    if (ss->wq_head == NULL)
        ss->wq_tail = l->tail;
    ss->wq_head = l->head;
    ss->wq_len += l->n;
    *l = (req_list){0};
}

/* The busy[] slot of a write's tenant (pins_hash_tenant_key with an empty key). Every write
 * locks its tenant's revision row until its transaction commits (store/pg_sql.c), so two
 * segments of one tenant in flight would only queue one behind the other in the database, each
 * holding the locks of every other tenant it writes meanwhile: a session keeps at most one write
 * segment per tenant in flight, and the next one takes every write of the tenant that piled up.
 * Two tenants may share a slot: a write then waits for the other tenant's segment too, which
 * costs time, never correctness. */
static uint32_t tenant_slot(const pg_req *r)
{
    const char *tenant = r->params[0] != NULL ? r->params[0] : "";
    return (uint32_t)(pins_hash_tenant_key(tenant, "", NULL, NULL) & (BUSY_SLOTS - 1));
}

/* A read's slot: the hash of its tenant and key, with which send_gets() finds equal keys in a
 * batch (the tenant alone would put every key of a tenant on one probe chain). */
static uint32_t key_slot(const pg_req *r)
{
    const char *tenant = r->params[0] != NULL ? r->params[0] : "";
    const char *key = r->params[1] != NULL ? r->params[1] : "";
    return (uint32_t)(pins_hash_tenant_key(tenant, key, NULL, NULL) & (BUSY_SLOTS - 1));
}

/* Whether c is up and has room for another segment. Through a pooler a connection has one
 * segment in flight at a time: PgBouncer (1.18, transaction pooling) gives the server connection
 * back to its pool at the ReadyForQuery of a segment's sync unless it has already read the next
 * segment's Sync, so the rest of a next segment still streaming in (an audit insert's Bind of
 * ~100 KB) reached another server connection (measured: "portal \"\" does not exist", "invalid
 * frontend message type", a parameter cut into another message's bytes, the server connection
 * closed). */
static bool has_room(const pg_conn *c)
{
    return c->state == C_UP && !c->recheck && c->nsegs < (c->direct ? SEGS_MAX : SEGS_MAX_POOLED);
}

/* The connection for a read batch: the first with room and nothing but read batches in flight,
 * so that a light read load keeps one server process busy instead of waking several that share
 * the CPU with us and with each other, and a read never waits in a pipeline behind a write's
 * commit (its WAL flush) or an audit insert of thousands of rows; else the one with room and the
 * fewest segments in flight; NULL when none has room. */
static pg_conn *pick_read_conn(pg_session *ss)
{
    pg_conn *best = NULL;
    for (int i = 0; i < ss->nconns; i++) {
        pg_conn *c = &ss->conns[i];
        if (!has_room(c))
            continue;
        if (c->nslow == 0)
            return c;
        if (best == NULL || c->nsegs < best->nsegs)
            best = c;
    }
    return best;
}

/* The connection for any other segment: the one with room and the fewest segments in flight,
 * the last of equals, so that these segments keep to the connections that reads take last. */
static pg_conn *pick_conn(pg_session *ss)
{
    pg_conn *best = NULL;
    for (int i = ss->nconns - 1; i >= 0; i--) {
        pg_conn *c = &ss->conns[i];
        if (has_room(c) && (best == NULL || c->nsegs < best->nsegs))
            best = c;
    }
    return best;
}

static bool is_get(const pg_req *r)
{
    return r->kind == OP_GET;
}

static bool take_get(const pg_session *ss, const pg_req *r)
{
    return is_get(r);
}

static bool is_write(const pg_req *r)
{
    return (r->kind == OP_UPSERT || r->kind == OP_DELETE) && !r->solo;
}

/* A batchable write whose key no write segment of this session holds: it may go now. Writes of
 * a key in flight wait for that segment, so one hot key never has more than one transaction of
 * a session queued on its row lock (each would wake the others at every commit), and the next
 * segment takes all the writes that piled up meanwhile. */
static bool is_free_write(const pg_session *ss, const pg_req *r)
{
    return is_write(r) && ss->busy[r->slot] == 0;
}

/* Moves waiting calls that pred accepts, in queue order, into out[1..max) after out[0] (taken
 * already). Returns how many out holds. */
static int queue_take(pg_session *ss, bool (*pred)(const pg_session *, const pg_req *),
                      pg_req **out, int max)
{
    int n = 1;
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL && n < max;) {
        pg_req *next = r->next;
        if (pred(ss, r)) {
            if (prev != NULL)
                prev->next = next;
            else
                ss->wq_head = next;
            if (ss->wq_tail == r)
                ss->wq_tail = prev;
            ss->wq_len--;
            r->next = NULL;
            out[n++] = r;
        } else {
            prev = r;
        }
        r = next;
    }
    return n;
}

/* The oldest waiting call that may go now (any but a write of a key in flight, and no write
 * unless writes_ok), or NULL; *pprev is the call before it in the queue (NULL: it is the
 * head). */
static pg_req *queue_peek(const pg_session *ss, pg_req **pprev, bool writes_ok)
{
    pg_req *prev = NULL;
    for (pg_req *r = ss->wq_head; r != NULL; prev = r, r = r->next) {
        if (is_write(r) && (!writes_ok || !is_free_write(ss, r)))
            continue;
        *pprev = prev;
        return r;
    }
    return NULL;
}

/* Takes r, whose predecessor in the queue is prev (queue_peek), out of the queue. */
static void queue_unlink(pg_session *ss, pg_req *r, pg_req *prev)
{
    if (prev != NULL)
        prev->next = r->next;
    else
        ss->wq_head = r->next;
    if (ss->wq_tail == r)
        ss->wq_tail = prev;
    ss->wq_len--;
    r->next = NULL;
}

/* Starts n PostgreSQL array literals (text "{...}"), each of bounded requests' elements. */
static void arrays_open(pins_buf *arr, int n)
{
    for (int i = 0; i < n; i++) {
        pins_buf_init(&arr[i], SIZE_MAX);
        (void)pins_buf_add_byte(&arr[i], '{');
    }
}

/* Closes the n array literals and moves them into b's parameters from at. Returns false, with
 * the arrays freed, when one of them or b (NULL) could not be allocated. */
static bool arrays_take(pg_req *b, int at, pins_buf *arr, int n)
{
    bool ok = b != NULL;
    for (int i = 0; i < n; i++) {
        (void)pins_buf_add_byte(&arr[i], '}');
        ok = ok && pins_buf_error(&arr[i]) == 0;
    }
    for (int i = 0; i < n; i++) {
        if (!ok) {
            pins_buf_free(&arr[i]);
            continue;
        }
        b->owned[at + i] = pins_buf_take(&arr[i], NULL);
        b->params[at + i] = b->owned[at + i];
    }
    return ok;
}

/* Appends s as an element of a PostgreSQL array literal. */
static void buf_elem(pins_buf *b, const char *s, bool first)
{
    (void)pins_buf_add(b, first ? "\"" : ",\"", first ? 1 : 2);
    for (const char *p = s != NULL ? s : ""; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            (void)pins_buf_add_byte(b, '\\');
        (void)pins_buf_add_byte(b, *p);
    }
    (void)pins_buf_add_byte(b, '"');
}

/* Whether two GetPin calls name one (tenant, key); a NULL parameter reads as "", as in the
 * batch's arrays. */
static bool same_key(const pg_req *a, const pg_req *b)
{
    for (int i = 0; i < 2; i++) {
        if (strcmp(a->params[i] != NULL ? a->params[i] : "",
                   b->params[i] != NULL ? b->params[i] : "") != 0)
            return false;
    }
    return true;
}

/* Sends first and the GetPin calls waiting with it as one statement on c. The arrays hold each
 * distinct (tenant, key) once, with the earliest clock of its calls: a row live then comes back,
 * and deliver_gets() checks it against each call's own clock.
 *
 * With the read cache ready (store/pg_cache.c), a key the cache holds, of a tenant with an
 * applied revision, is left out of the arrays (its calls are cache_cand), and the statement
 * reads the revision of every tenant of the batch too (store__pg_sql_get_batch_ri): the read
 * index deliver_gets() checks before it answers those calls from the cache. A key not cached
 * notes its stripe's generation first, so that its row fills the cache only if no change reached
 * the stripe meanwhile. */
static void send_gets(pg_session *ss, pg_conn *c, pg_req *first)
{
    pg_req *kids[GET_BATCH_MAX];
    kids[0] = first;
    int n = queue_take(ss, take_get, kids, GET_BATCH_MAX);
    int at[2 * GET_BATCH_MAX]; /* open addressing on slot: distinct key + 1, 0 empty */
    int firstof[GET_BATCH_MAX], nd = 0;
    int64_t now[GET_BATCH_MAX];
    bool no_cache[GET_BATCH_MAX];
    memset(at, 0, sizeof(at));
    for (int i = 0; i < n; i++) {
        pg_req *k = kids[i];
        uint32_t h = k->slot & (2 * GET_BATCH_MAX - 1);
        while (at[h] != 0 && !same_key(kids[firstof[at[h] - 1]], k))
            h = (h + 1) & (2 * GET_BATCH_MAX - 1);
        if (at[h] == 0) {
            firstof[nd] = i;
            now[nd] = k->now_us;
            no_cache[nd] = k->no_cache;
            at[h] = ++nd;
        } else {
            if (k->now_us < now[at[h] - 1])
                now[at[h] - 1] = k->now_us;
            no_cache[at[h] - 1] = no_cache[at[h] - 1] || k->no_cache;
        }
        k->key_at = at[h] - 1;
        k->next = i + 1 < n ? kids[i + 1] : NULL;
    }
    pg_rcache *rc = ss->st->rcache;
    bool ri = ss->evb != NULL && store__pg_rcache_ready(rc);
    /* Per distinct key: its element in the read arrays (-1: from the cache), its tenant's
     * element, whether it is cached, and its stripe's generation. */
    int readof[GET_BATCH_MAX], tenantof[GET_BATCH_MAX], firstof_tenant[GET_BATCH_MAX];
    bool cached[GET_BATCH_MAX] = {false}, known[GET_BATCH_MAX] = {false}; /* per tenant */
    uint64_t gen[GET_BATCH_MAX] = {0};
    int nr = 0, nt = 0;
    for (int d = 0; d < nd; d++) {
        const pg_req *k = kids[firstof[d]];
        const char *tenant = k->params[0] != NULL ? k->params[0] : "";
        const char *key = k->params[1] != NULL ? k->params[1] : "";
        readof[d] = nr;
        tenantof[d] = -1;
        if (!ri) {
            nr++;
            continue;
        }
        for (int t = 0; t < nt && tenantof[d] < 0; t++) {
            const pg_req *o = kids[firstof[firstof_tenant[t]]];
            if (strcmp(o->params[0] != NULL ? o->params[0] : "", tenant) == 0)
                tenantof[d] = t;
        }
        if (tenantof[d] < 0) {
            firstof_tenant[nt] = d;
            known[nt] = store__pg_rcache_known(rc, tenant);
            tenantof[d] = nt++;
        }
        cached[d] = store_cache_probe(store__pg_rcache_cache(rc), tenant, key, &gen[d]);
        if (!no_cache[d] && cached[d] && known[tenantof[d]])
            readof[d] = -1;
        else
            nr++;
    }
    for (int i = 0; i < n; i++) {
        pg_req *k = kids[i];
        int d = k->key_at;
        k->key_at = readof[d];
        k->tenant_at = tenantof[d];
        k->cache_cand = readof[d] < 0;
        /* a tenant without an applied revision would never be answered from the cache */
        k->cache_fill = ri && readof[d] >= 0 && !cached[d] && known[tenantof[d]];
        k->cache_gen = gen[d];
    }
    pg_req *b = calloc(1, sizeof(*b));
    pins_buf arr[4];
    arrays_open(arr, 4); /* at most GET_BATCH_MAX validated tenants and keys */
    bool firstr = true;
    for (int d = 0; d < nd; d++) {
        if (readof[d] < 0)
            continue;
        char num[PINS_FMT_INT_MAX];
        pins_fmt_i64(num, now[d]);
        buf_elem(&arr[0], kids[firstof[d]]->params[0], firstr);
        buf_elem(&arr[1], kids[firstof[d]]->params[1], firstr);
        buf_elem(&arr[2], num, firstr);
        firstr = false;
    }
    for (int t = 0; t < nt; t++)
        buf_elem(&arr[3], kids[firstof[firstof_tenant[t]]]->params[0], t == 0);
    int np = ri ? 4 : 3;
    if (!ri)
        pins_buf_free(&arr[3]);
    if (!arrays_take(b, 0, arr, np)) {
        free(b);
        for (int i = 0; i < n; i++)
            store__pg_fail_req(ss, kids[i], PINS_ENOMEM, "out of memory batching reads");
        return;
    }
    b->kind = OP_GET_BATCH;
    b->sql = ri ? store__pg_sql_get_batch_ri : store__pg_sql_get_batch;
    b->kids = kids[0];
    b->nkids = n;
    b->nparams = np;
    store__pg_conn_send(c, b);
}

/* Orders writes by tenant, then key (NULL first), keeping the order of equal ones. */
static int write_cmp(const pg_req *a, const pg_req *b)
{
    for (int i = 0; i < 2; i++) {
        const char *x = a->params[i] != NULL ? a->params[i] : "";
        const char *y = b->params[i] != NULL ? b->params[i] : "";
        int d = strcmp(x, y);
        if (d != 0)
            return d;
    }
    return 0;
}

/* Appends s as an element of a PostgreSQL array literal; NULL is an SQL NULL. */
static void buf_elem_null(pins_buf *b, const char *s, bool first)
{
    if (s == NULL)
        (void)pins_buf_add(b, first ? "NULL" : ",NULL", first ? 4 : 5);
    else
        buf_elem(b, s, first);
}

/* An upsert that may join a chain (no expected_version, not a retry on its own). */
static bool chainable(const pg_req *r)
{
    return r->kind == OP_UPSERT && !r->solo && r->params[7] == NULL;
}

/* True when b, the upsert after a of the same key, finds a's pin live: a has no expiry, or it
 * lies after b's time. Only then does running both in one statement give what running them one
 * after the other gives. */
static bool chain_continues(const pg_req *a, const pg_req *b)
{
    return a->params[6] == NULL || strtoll(a->params[6], NULL, 10) >
                                       strtoll(b->params[4] != NULL ? b->params[4] : "0", NULL, 10);
}

/* One OP_UPSERT_CHAIN statement for the n >= 2 upserts w[0..n) of one key, in order; NULL when
 * out of memory (they are then sent one by one). */
static pg_req *chain_new(pg_req **w, int n)
{
    static const int from[9] = {2, 3, 4,  5, 6,
                                8, 9, 10, 11}; /* store__pg_sql_upsert's $3..$12, not $8 */
    pg_req *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    pins_buf arr[9];
    arrays_open(arr, 9); /* at most WRITE_BATCH_MAX validated requests */
    for (int i = 0; i < n; i++) {
        for (int p = 0; p < 9; p++)
            buf_elem_null(&arr[p], w[i]->params[from[p]], i == 0);
    }
    if (!arrays_take(b, 2, arr, 9)) {
        free(b);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        w[i]->next = i + 1 < n ? w[i + 1] : NULL;
    b->kind = OP_UPSERT_CHAIN;
    b->sql = store__pg_sql_upsert_chain;
    b->kids = w[0];
    b->nkids = n;
    b->deadline_ns = w[0]->deadline_ns;
    b->nparams = 11;
    b->params[0] = w[0]->params[0]; /* borrowed from the first call, freed with it */
    b->params[1] = w[0]->params[1];
    return b;
}

/* Sends first and the upserts and deletes waiting with it as one segment (one transaction) on c,
 * in tenant and key order. Consecutive upserts of one key without expected_version become one
 * statement (chain_new). Each run of one statement text is parsed once, as the unnamed
 * statement, and executed for each call: PostgreSQL analyses it once per segment and, after a
 * few executions, plans it once too (no named statement: PgBouncer transaction pooling works). */
static void send_writes(pg_session *ss, pg_conn *c, pg_req *first)
{
    pg_req *w[WRITE_BATCH_MAX];
    w[0] = first;
    int n = queue_take(ss, is_free_write, w, WRITE_BATCH_MAX);
    for (int i = 1; i < n; i++) { /* insertion sort: stable, n is small */
        pg_req *r = w[i];
        int j = i;
        for (; j > 0 && write_cmp(w[j - 1], r) > 0; j--)
            w[j] = w[j - 1];
        w[j] = r;
    }
    for (int i = 0; i < n; i++) {
        uint32_t slot = w[i]->slot;
        if (ss->busy[slot] < UINT16_MAX) {
            ss->busy[slot]++;
            w[i]->busy_at = slot + 1;
        }
    }
    pg_req *st[WRITE_BATCH_MAX]; /* the statements: calls and chains */
    int ns = 0;
    for (int i = 0; i < n;) {
        int j = i + 1;
        if (chainable(w[i])) {
            while (j < n && chainable(w[j]) && write_cmp(w[j - 1], w[j]) == 0 &&
                   chain_continues(w[j - 1], w[j]))
                j++;
        }
        pg_req *chain = j - i >= 2 ? chain_new(&w[i], j - i) : NULL;
        if (chain != NULL) {
            st[ns++] = chain;
            i = j;
        } else {
            st[ns++] = w[i++];
        }
    }
    bool generic = false; /* store__pg_sql_generic sent in this segment (through a pooler) */
    for (int i = 0; i < ns; i++) {
        bool same = i > 0 && st[i]->sql == st[i - 1]->sql;
        /* Through a pooler each unnamed statement is planned at every Bind (a custom plan: the
         * statement is new to PostgreSQL in every segment), which for an upsert costs more than
         * running it; when the next call reuses it, one generic plan serves them all. A direct
         * connection keeps named statements, planned once per connection. */
        bool reused = !c->direct && !generic && i + 1 < ns && st[i + 1]->sql == st[i]->sql;
        put_mode mode = same ? PUT_REUSE : reused ? PUT_PARSE_GENERIC : PUT_PARSE;
        generic = generic || reused;
        if (store__pg_conn_put(c, st[i], mode))
            continue;
        /* c was dropped with what it had: the others wait for another connection. */
        req_list l = {0};
        for (int j = i + 1; j < ns; j++) {
            store__pg_busy_release(ss, st[j]);
            store__pg_requeue(&l, st[j]);
        }
        store__pg_requeue_front(ss, &l);
        if (!store__pg_any_conn_alive(ss))
            store__pg_fail_queue(ss, ss->down_reason);
        return;
    }
    store__pg_conn_sync(c);
}

/* Sends waiting calls, a segment at a time, to the least busy connections that are up. */
void store__pg_dispatch(pg_session *ss)
{
    while (ss->wq_head != NULL) {
        /* A read batch goes to the first connection with room and no other kind of segment in
         * flight (pick_read_conn). Other segments (writes: each ends with a commit, which
         * PostgreSQL flushes together across connections) go to the least busy connection,
         * counted from the last. */
        pg_req *prev = NULL;
        int writing = 0;
        for (int i = 0; i < ss->nconns; i++)
            writing += ss->conns[i].nwrite;
        pg_req *r = queue_peek(ss, &prev, writing < WRITE_SEGS_MAX);
        if (r == NULL)
            return;
        pg_conn *c = is_get(r) ? pick_read_conn(ss) : pick_conn(ss);
        if (c == NULL)
            return;
        queue_unlink(ss, r, prev);
        if (is_get(r))
            send_gets(ss, c, r);
        else if (is_write(r))
            send_writes(ss, c, r);
        else
            store__pg_conn_send(c, r);
    }
}

void store__pg_on_kick(void *arg)
{
    pg_session *ss = arg;
    store__pg_dispatch(ss);
    store__pg_tick_arm(ss);
}

/* Queues r (fails it at once when no connection is up or coming up, or the queue is full), then
 * waits for it in blocking mode. Always returns 0: the callback runs exactly once. */
int store__pg_submit(pg_session *ss, pg_req *r)
{
    bool done = false;
    if (ss->evb == NULL)
        r->pdone = &done;
    if (r->kind == OP_UPSERT || r->kind == OP_DELETE) /* once: the dispatcher looks at it */
        r->slot = tenant_slot(r);
    else if (r->kind == OP_GET)
        r->slot = key_slot(r);
    if (!store__pg_any_conn_alive(ss)) {
        store__pg_count_error("connect");
        store__pg_fail_req(ss, r, PINS_ESTORE,
                           ss->down_reason[0] != '\0' ? ss->down_reason : "no database connection");
        return 0;
    }
    if (ss->wq_len >= QUEUE_MAX) {
        store__pg_count_error("queue_full");
        store__pg_fail_req(ss, r, PINS_ESTORE,
                           "every database connection is busy and the queue is full");
        return 0;
    }
    r->next = NULL;
    if (ss->wq_tail != NULL)
        ss->wq_tail->next = r;
    else
        ss->wq_head = r;
    ss->wq_tail = r;
    ss->wq_len++;
    if (ss->kick != NULL) {
        store__defer_arm(ss->kick);
        return 0;
    }
    store__pg_dispatch(ss);
    store__pg_wait_done(ss, &done);
    return 0;
}

/* Submits r when its parameters were all bound (ok), else frees it. Returns store__pg_submit()'s
 * result or PINS_ENOMEM. */
int store__pg_submit_if(pg_session *ss, pg_req *r, bool ok)
{
    if (!ok) {
        store__pg_req_free(r);
        return PINS_ENOMEM;
    }
    return store__pg_submit(ss, r);
}
