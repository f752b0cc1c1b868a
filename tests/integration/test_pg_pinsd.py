"""A real pinsd on a real PostgreSQL 15 (tests/integration/pg.py).

(c) every MemoryPins RPC behaves as on SQLite: the data-path classes of tests/interop/test_grpc.py
    run unchanged against a pinsd with DATABASE_URL;
(d) PostgreSQL stopped and restarted under a bounded load: calls fail fast with UNAVAILABLE (never
    past their deadline, no crash), the service recovers within 5 s of PostgreSQL's return, and
    every acknowledged write and its audit row are in the database afterwards;
(e) connection exhaustion (another client holds every connection slot): bounded errors, no crash,
    recovery once the slots are released;
(f) the circuit breaker opens after BREAKER_ERRORS_PER_MIN store errors and closes after a good
    probe, visible in circuit_breaker_state{name="store"};
(g) through PgBouncer (transaction mode), a 90/10 get/put load with every read audited runs
    without an error, a mixed-up protocol stream in either server's log, or a lost write;
plus /ready answering 503 with checks.store "down" while PostgreSQL is unreachable, and
"schema_behind" before `pinsctl migrate upgrade head`.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import pg  # noqa: E402
import harness  # noqa: E402
from harness import Server, mp  # noqa: E402
import test_grpc  # noqa: E402
import test_metrics  # noqa: E402

PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(
    os.path.dirname(harness.PINSD_BIN), "pinsctl")

# The shared database of the data-path classes; filled by setUpModule before any class starts.
PG_ENV = dict(test_grpc.BASE_ENV)
_pg = None


def setUpModule():
    global _pg
    if not pg.available():
        raise unittest.SkipTest("PostgreSQL 15 binaries not found")
    _pg = pg.PgServer().start()
    migrate(_pg.url, "upgrade", "head")
    PG_ENV["DATABASE_URL"] = _pg.url


def tearDownModule():
    if _pg is not None:
        _pg.destroy()


def migrate(url, *args):
    r = subprocess.run([PINSCTL, "--database-url", url, "migrate"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("pinsctl migrate %s: %s" % (" ".join(args), r.stderr))
    return r.stdout


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port, name, labels):
    _, text = http_get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + "{") and all('%s="%s"' % kv in line for kv in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def on_clients(target, nthreads, body):
    """Runs body(client, t) for t in range(nthreads), each on a thread with a gRPC client of its
    own, and returns the gRPC errors that ended a body."""
    errors = []

    def run(t):
        c = harness.GrpcClient(target)
        try:
            body(c, t)
        except grpc.RpcError as e:
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def server_warnings(db):
    """The WARNING lines of db's server log (pinsd's statements must never cause one)."""
    with open(db.log, encoding="utf-8", errors="replace") as f:
        return [line.rstrip() for line in f if "WARNING" in line]


# ---- (c) the data-path interop classes, on PostgreSQL ---------------------------------------

def _on_pg(cls):
    return type(cls.__name__ + "OnPostgres", (cls,), {"SERVER_ENV": PG_ENV,
                                                      "__module__": __name__})


UpsertGetDeleteOnPostgres = _on_pg(test_grpc.UpsertGetDeleteTest)
ExpectedVersionOnPostgres = _on_pg(test_grpc.ExpectedVersionTest)
ListOnPostgres = _on_pg(test_grpc.ListTest)
TtlAndCleanupOnPostgres = _on_pg(test_grpc.TtlAndCleanupTest)
ValidationOnPostgres = _on_pg(test_grpc.ValidationTest)



class HotKeyOnPostgres(unittest.TestCase):
    """Many clients on one key at once: pinsd runs the upserts of one key that wait together as
    one statement (store/README.md, "Runs of one key") and looks the key of reads waiting together
    up once ("Reads"); every call must still end as if the calls ran one after the other."""

    def start(self, pool):
        """A PostgreSQL with pg_stat_statements and pinsd on it, one worker, pool connections."""
        db = pg.PgServer(extra_conf={"shared_preload_libraries": "pg_stat_statements"}).start()
        self.addCleanup(db.destroy)
        migrate(db.url, "upgrade", "head")
        db.psql("CREATE EXTENSION pg_stat_statements")
        server = Server(dict(PG_ENV, DATABASE_URL=db.url, DB_POOL_SIZE=str(pool),
                             PINS_WORKERS="1"))
        self.addCleanup(server.cleanup)
        server.start()
        return db, server

    def test_concurrent_upserts_of_one_key_form_one_history(self):
        db, server = self.start(pool=2)
        nthreads, ncalls = 8, 40
        got = []

        def writer(c, t):
            for i in range(ncalls):
                r = c.call(mp("UpsertPin"), {"tenant_id": "hot", "key": "k",
                                             "value": {"v": "t%d-%d" % (t, i)}}, timeout=10)
                got.append((r.pin.version, r.created, harness.to_dict(r.pin)["value"]["v"]))

        self.assertEqual(on_clients(server.target, nthreads, writer), [])
        n = nthreads * ncalls
        # Each call its own version, 1..n, and only the first one created the pin.
        self.assertEqual(sorted(v for v, _, _ in got), list(range(1, n + 1)))
        self.assertEqual([v for v, created, _ in got if created], [1])
        client = server.client()
        self.addCleanup(client.close)
        pin = harness.to_dict(client.call(mp("GetPin"), {"tenant_id": "hot", "key": "k"}).pin)
        last = [val for v, _, val in got if v == n][0]
        self.assertEqual((pin["version"], pin["value"]), (str(n), {"v": last}))
        # The audit rows form one chain: each write's old hash is the previous write's new hash,
        # from none (the first) to the stored value.
        rows = db.query("SELECT coalesce(old_value_hash, ''), new_value_hash FROM"
                         " system.memory_audit WHERE tenant_id = 'hot' AND key = 'k'"
                         " AND operation = 'upsert'")
        self.assertEqual(len(rows), n)
        after = dict(rows)
        self.assertEqual(len(after), n, "two writes saw the same value before them")
        h, steps = "", 0
        while h in after:
            h = after[h]
            steps += 1
        self.assertEqual(steps, n)
        want = hashlib.sha256(json.dumps({"v": last}, separators=(",", ":")).encode())
        self.assertEqual(h, want.hexdigest()[:16])
        # Runs of calls did form: the statement for several upserts of one key ran, fewer times
        # than there were calls.
        runs = db.query("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                        " WHERE query LIKE '%WITH ORDINALITY AS q(value%'")
        self.assertGreater(int(runs[0][0]), 0)
        self.assertLess(int(runs[0][0]), n)
        self.assertEqual(server_warnings(db)[:3], [])
        self.assertTrue(server.alive())

    def test_concurrent_reads_of_one_key_share_its_row(self):
        """Reads of one key waiting together are one element of the read batch, its row read and
        its value packed once: every call gets the pin and its value as written, and the server
        returned fewer rows than there were calls."""
        db, server = self.start(pool=1)
        client = server.client()
        self.addCleanup(client.close)
        values = {key: {"k": key, "n": [1, 2.5, -3e-7, None, True, False, 1e300],
                        "s": "\u00fcn\u00efc\u00f8de \"q\" \\ \U0001f600", "e": {},
                        "o": {"deep": {"er": [[], {"x": "y"}]}}}
                  for key in ("k", "other")}
        for key, value in values.items():
            client.call(mp("UpsertPin"), {"tenant_id": "hot", "key": key, "value": value,
                                          "ttl_seconds": 3600})
        db.query("SELECT pg_stat_statements_reset()")
        nthreads, ncalls = 8, 50
        got, wrong = [], []

        def reader(c, t):
            for i in range(ncalls):
                key = "other" if t == 0 and i % 2 else "k"
                r = c.call(mp("GetPin"), {"tenant_id": "hot", "key": key}, timeout=10)
                got.append((key, r.pin.key, r.pin.version, harness.to_dict(r.pin)["value"]))
                # a key of another tenant in the same batches is not found
                if i % 10 == 9:
                    try:
                        c.call(mp("GetPin"), {"tenant_id": "cold", "key": "k"}, timeout=10)
                        wrong.append("tenant cold found the pin of tenant hot")
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.NOT_FOUND:
                            raise

        self.assertEqual(on_clients(server.target, nthreads, reader), [])
        self.assertEqual(wrong, [])
        self.assertEqual(len(got), nthreads * ncalls)
        for want, key, version, value in got:
            self.assertEqual((key, version, value), (want, 1, values[want]))
        stats = db.query("SELECT coalesce(sum(calls), 0), coalesce(sum(rows), 0)"
                         " FROM pg_stat_statements WHERE query LIKE '%AS q(tenant_id, key, now_us%'")
        statements, rows = int(stats[0][0]), int(stats[0][1])
        self.assertGreater(statements, 0)
        self.assertLess(rows, len(got), "every read of the hot key had a row of its own")
        self.assertEqual(server_warnings(db)[:3], [])
        self.assertTrue(server.alive())


class PreparedStatementsOnPostgres(unittest.TestCase):
    """Connected straight to PostgreSQL, pinsd prepares its statements once per connection: the
    server plans the read batch once per connection (a generic plan) and the upsert a few times,
    however many calls run them (pg_stat_statements counts both)."""

    def test_statements_are_planned_once_per_connection(self):
        db = pg.PgServer(extra_conf={"shared_preload_libraries": "pg_stat_statements",
                                     "pg_stat_statements.track_planning": "on"}).start()
        self.addCleanup(db.destroy)
        migrate(db.url, "upgrade", "head")
        db.psql("CREATE EXTENSION pg_stat_statements")
        server = Server(dict(test_grpc.BASE_ENV, DATABASE_URL=db.url, DB_POOL_SIZE="2",
                             PINS_WORKERS="1"))
        self.addCleanup(server.cleanup)
        server.start()
        client = server.client()
        self.addCleanup(client.close)
        for i in range(60):
            client.call(mp("UpsertPin"), {"tenant_id": "prep", "key": "k%d" % (i % 7),
                                          "value": {"i": i}})
        for i in range(300):
            r = client.call(mp("GetPin"), {"tenant_id": "prep", "key": "k%d" % (i % 7)})
            self.assertEqual(r.pin.key, "k%d" % (i % 7))
        # query last: the statements' texts hold '||', and psql's output is '|'-separated
        rows = [["|".join(r[2:]), r[0], r[1]] for r in db.query(
            "SELECT calls, plans, query FROM pg_stat_statements"
            " WHERE query LIKE '%WITH ORDINALITY%' OR query LIKE 'WITH lk AS%'")]
        reads = [r for r in rows if "WITH ORDINALITY" in r[0] and "memory_pins p" in r[0]]
        writes = [r for r in rows if r[0].startswith("WITH lk AS") and "value_hash" in r[0]
                  and "INSERT INTO system.memory_pins" in r[0]]
        self.assertEqual(len(reads), 1, rows)
        self.assertGreaterEqual(int(reads[0][1]), 300, rows)
        self.assertLessEqual(int(reads[0][2]), 2, rows)  # one generic plan per connection
        self.assertEqual(len(writes), 1, rows)
        self.assertGreaterEqual(int(writes[0][1]), 60, rows)
        self.assertLessEqual(int(writes[0][2]), 12, rows)  # custom plans first, then generic
        # The generic plan is asked for without SET LOCAL, which warns outside a transaction
        # block: a segment is an implicit transaction, and the server log took one per batch.
        self.assertEqual(server_warnings(db)[:3], [])


class PooledLoadOnPostgres(unittest.TestCase):
    """(g) Through PgBouncer in transaction mode a pooled connection has one segment in flight
    (store/README.md, "Segments"): PgBouncer 1.18 keeps the server connection only for the Syncs
    it has already read, so when pinsd pipelined segments, the rest of a large next segment (an
    audit insert's Bind of ~100 KB) went to another server connection (`portal "" does not
    exist`, `invalid frontend message type 32`, PgBouncer's `server conn crashed?`, failed
    upserts). A 90/10 get/put load over many keys with every read audited must run without an
    error, and every pin and audit row written must be in PostgreSQL."""

    TENANTS, KEYS = 10, 1000
    TENANT_PREFIX, KEY_PREFIX = "pool-t", "k-"
    # Log lines of the mixed-up protocol streams, lower case.
    PG_BAD = ("portal", "invalid frontend message", "unexpected message")
    PGB_BAD = ("server conn crashed",)

    def bench(self, srv, *args, timeout=180):
        """Runs pinsctl bench against srv with the tenants and keys of this test; returns its
        JSON report."""
        cmd = [PINSCTL, "--addr", srv.target, "bench", "--keys", str(self.KEYS),
               "--tenants", str(self.TENANTS), "--tenant-prefix", self.TENANT_PREFIX,
               "--key-prefix", self.KEY_PREFIX, "--json"] + list(args)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        self.assertEqual(r.returncode, 0, "%s: exit %d\n%s\n%s" % (
            " ".join(cmd), r.returncode, r.stderr[-2000:], self.logs()))
        return json.loads(r.stdout)

    def logs(self):
        """The tails of PgBouncer's and PostgreSQL's logs, for failure messages."""
        try:
            with open(self.pgb_log, "rb") as f:
                pgb = f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            pgb = ""
        return "---- pgbouncer.log ----\n%s\n---- postgres.log ----\n%s" % (
            pgb, self.db.tail_log())

    def bad_lines(self, path, needles):
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip() for line in f if any(n in line.lower() for n in needles)]

    def pins(self):
        """(pins, sum of their versions, upsert audit rows) of this test's tenants."""
        like = "tenant_id LIKE '%s%%'" % self.TENANT_PREFIX
        n, versions = self.db.query("SELECT count(*), coalesce(sum(version), 0)"
                                    " FROM system.memory_pins WHERE " + like)[0]
        audited = self.db.query("SELECT count(*) FROM system.memory_audit WHERE %s"
                                " AND operation = 'upsert'" % like)[0][0]
        return int(n), int(versions), int(audited)

    def test_mixed_load_with_read_audit_through_pgbouncer(self):
        self.db = pg.PgServer().start()
        self.addCleanup(self.db.destroy)
        migrate(self.db.url, "upgrade", "head")
        bouncer = pg.PgBouncer(self.db).start()
        self.addCleanup(bouncer.destroy)
        self.pgb_log = os.path.join(bouncer.dir, "pgbouncer.log")
        # Every read its own audit row (no summaries within the run), so the audit inserts carry
        # hundreds of rows each; one worker with four connections, which the load keeps busy
        # (before the fix this failed in about one run of three here, on a bench error or on
        # `portal "" does not exist` in the server log alone).
        srv = Server(dict(test_grpc.BASE_ENV, DATABASE_URL=bouncer.url, DB_POOL_SIZE="4",
                          PINS_WORKERS="1", PINS_AUDIT_READ_ROWS_PER_SECOND="100000",
                          BREAKER_ERRORS_PER_MIN="1000000"))
        self.addCleanup(srv.cleanup)
        self.addCleanup(harness._print_tail_on_failure, self, srv)
        srv.start(ready_timeout=20)

        rep = self.bench(srv, "--mix", "get=90,put=10", "-c", "4", "-m", "32", "-d", "4s",
                         "--prefill")
        want = self.TENANTS * self.KEYS
        summary = {k: rep[k] for k in ("prefill", "requests", "answers", "errors",
                                       "failed_locally", "unanswered", "errors_by_code",
                                       "failed_locally_by_code")}
        self.assertEqual(rep["prefill"]["upserts"], want, summary)
        self.assertEqual(rep["prefill"]["errors"], 0, summary)
        self.assertEqual((rep["errors"], rep["failed_locally"], rep["unanswered"]), (0, 0, 0),
                         "%s\n%s\n%s" % (summary, srv.stderr_tail(8), self.logs()))
        put_ok, get_ok = rep["ops"]["put"]["ok"], rep["ops"]["get"]["ok"]
        self.assertGreater(put_ok, 0, summary)
        self.assertGreater(get_ok, 0, summary)
        self.assertEqual(rep["answers"], rep["requests"], summary)

        # Every pin of the prefill is stored once, and every acknowledged put on top of it:
        # a fresh database, each prefill upsert creating version 1, each put adding one version
        # and one audit row. pinsctl bench's prefill once reported upserts done that this pinsd
        # never processed (another process listening on the same port took a share of the
        # connections; pinsd now refuses such a port, and the prefill counts the keys through
        # ListPins, exit 1 when short): should the count still be short, it says so on stderr,
        # the prefill runs once more and the count alone is checked.
        n, versions, audited = self.pins()
        if n == want:
            self.assertEqual((versions, audited), (want + put_ok, want + put_ok),
                             "pins %d, sum of versions %d, upsert audit rows %d, puts OK %d"
                             % (n, versions, audited, put_ok))
        else:
            sys.stderr.write("\n%s: %d of %d pins stored after pinsctl bench --prefill"
                             " reported all done; running the prefill again\n"
                             % (self.id(), n, want))
            self.bench(srv, "--mix", "put=100", "-c", "4", "-m", "32", "-n", "1", "--prefill")
            n, _, _ = self.pins()
            self.assertEqual(n, want, "pins stored after a second prefill")

        # The reads were audited row by row (the audit inserts this test is about); audit rows
        # are written after the answers, so wait for them a bounded while.
        reads = 0
        end = time.monotonic() + 15
        while reads == 0 and time.monotonic() < end:
            reads = int(self.db.query("SELECT count(*) FROM system.memory_audit WHERE tenant_id"
                                      " LIKE '%s%%' AND operation = 'get' AND key <> '*'"
                                      % self.TENANT_PREFIX)[0][0])
            time.sleep(0.1)
        self.assertGreater(reads, 0, "no read audit rows")

        self.assertEqual(self.bad_lines(self.pgb_log, self.PGB_BAD)[:5], [])
        self.assertEqual(self.bad_lines(self.db.log, self.PG_BAD)[:5], [])
        self.assertTrue(srv.alive(), "pinsd died")


class AdminAuditOnPostgres(harness.ServerTestCase):
    """ListRbacAudit, ListMemoryAudit and GetStatus answered by the PostgreSQL backend."""

    @classmethod
    def setUpClass(cls):
        # PG_ENV gets DATABASE_URL in setUpModule, after this class was defined.
        cls.SERVER_ENV = dict(PG_ENV, RBAC_ENFORCE="true", MACHINE_SECRET_TOKEN="pg-admin-secret",
                              RBAC_TRUST_X_ROLES="true")
        super().setUpClass()

    def test_audits_and_status_on_postgres(self):
        admin = [("x-machine-token", "pg-admin-secret")]
        tenant = "pg-admin-audit"
        try:
            self.client.call(mp("GetPin"), {"tenant_id": tenant, "key": "k"},
                             metadata=[("x-request-id", "pg-denied-1")])
            self.fail("an unauthenticated call was allowed")
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": "k", "value": {"a": 1}},
                         metadata=admin + [("x-agent-id", "pg-agent")])
        self.client.call(mp("GetPin"), {"tenant_id": tenant, "key": "k"}, metadata=admin)
        path = harness.path_of(harness.ADMIN, "ListRbacAudit")
        deadline = time.monotonic() + 10
        # Refused on its headers: the row has no tenant (the body naming it is never read).
        while True:
            rbac = self.client.call(path, {"allowed": False, "subject": "anonymous",
                                           "resource": "memory_pin", "action": "read"},
                                    metadata=admin)
            denied = [e for e in rbac.entries if e.request_id == "pg-denied-1"]
            mem = self.client.call(harness.path_of(harness.ADMIN, "ListMemoryAudit"),
                                   {"tenant_id": tenant}, metadata=[("x-roles", "admin")])
            if (denied and mem.total >= 2) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(len(denied), 1, rbac)
        self.assertEqual(denied[0].reason, "no-credentials")
        self.assertEqual(denied[0].path, "/memorypins.v1.MemoryPins/GetPin")
        self.assertEqual(denied[0].tenant_id, "")
        self.assertEqual(sorted(e.operation for e in mem.entries), ["get", "upsert"])
        upsert = [e for e in mem.entries if e.operation == "upsert"][0]
        self.assertEqual(upsert.agent_id, "pg-agent")
        status = self.client.call(harness.path_of(harness.ADMIN, "GetStatus"), {}, metadata=admin)
        self.assertEqual(status.store["backend"], "postgres")
        self.assertEqual(status.store["state"], "ok")


# ---- (d), (e), (f), /ready: each test has its own PostgreSQL ------------------------------

class ResilienceTest(unittest.TestCase):

    def setUp(self):
        self.pg = pg.PgServer(max_connections=20).start()
        self.addCleanup(self.pg.destroy)
        migrate(self.pg.url, "upgrade", "head")

    def pinsd(self, **env):
        e = {"DATABASE_URL": self.pg.url, "RATE_LIMIT_RPM": "0", "DB_POOL_SIZE": "4",
             "PINS_SWEEP_INTERVAL_SECONDS": "3600"}
        e.update({k: str(v) for k, v in env.items()})
        srv = Server(env=e)
        self.addCleanup(srv.cleanup)
        srv.start(ready_timeout=20)
        client = harness.GrpcClient(srv.target)
        self.addCleanup(client.close)
        return srv, client

    def wait_ready(self, srv, want, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = http_get(srv.port, "/ready")
            if (status == 200) == want:
                return time.monotonic()
            time.sleep(0.05)
        self.fail("/ready did not become %s within %.1f s" % ("200" if want else "503", timeout))

    def test_ready_reports_schema_behind_then_serves_after_upgrade(self):
        migrate(self.pg.url, "downgrade", "base")
        srv, client = self.pinsd()
        status, body = http_get(srv.port, "/ready")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["checks"]["store"], "schema_behind")
        m = test_metrics.scrape(srv)
        self.assertEqual(m["store_schema_behind"], 1)
        self.assertEqual(m["pins_ready"], 0)
        self.assertGreaterEqual(m['store_errors_total{kind="schema"}'], 1)
        with self.assertRaises(grpc.RpcError) as cm:
            client.call(mp("GetPin"), {"tenant_id": "t", "key": "k"}, timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        migrate(self.pg.url, "upgrade", "head")
        self.wait_ready(srv, True, 10)
        m = test_metrics.scrape(srv)
        self.assertEqual(m["store_schema_behind"], 0)
        # /ready answers from one worker; every worker's connections re-check the schema on
        # their own reconnect backoff (at most 2 s), so writes may need a moment longer.
        r = self.upsert_within(client, 5.0)
        self.assertTrue(r.created)

    def test_migration_reverted_under_a_running_pinsd_shows_on_ready(self):
        """The runbook's rollback (`pinsctl migrate downgrade base`) while pinsd serves: /ready turns
        503 schema_behind at once (its ping reads the schema version), calls fail UNAVAILABLE
        (a missing table drops the connection for a schema check), and `upgrade head` brings
        both back. The read cache starts over with the schema: the pin written again after the
        upgrade (revision 1 of a new history) is what reads see, never the cached row of the
        old history (revision 3)."""
        srv, client = self.pinsd()
        r = self.upsert_within(client, 5.0)
        self.assertTrue(r.created)
        for v in (2, 3):
            client.call(mp("UpsertPin"), {"tenant_id": "t", "key": "k", "value": {"a": v}})
        for _ in range(5):  # cached by now, or read: either way the latest
            got = client.call(mp("GetPin"), {"tenant_id": "t", "key": "k"}).pin
            self.assertEqual((got.version, got.value["a"]), (3, 3))
        status, _ = http_get(srv.port, "/ready")
        self.assertEqual(status, 200)
        migrate(self.pg.url, "downgrade", "base")
        status, body = http_get(srv.port, "/ready")
        self.assertEqual(status, 503, body)
        self.assertEqual(json.loads(body)["checks"]["store"], "schema_behind")
        self.assertEqual(test_metrics.scrape(srv)["store_schema_behind"], 1)
        for method, req in (("GetPin", {"tenant_id": "t", "key": "k"}),
                            ("UpsertPin", {"tenant_id": "t", "key": "k2", "value": {"a": 2}})):
            with self.assertRaises(grpc.RpcError) as cm:
                client.call(mp(method), req, timeout=5)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, method)
        status, _ = http_get(srv.port, "/ready")
        self.assertEqual(status, 503)
        migrate(self.pg.url, "upgrade", "head")
        self.wait_ready(srv, True, 10)
        self.assertEqual(test_metrics.scrape(srv)["store_schema_behind"], 0)
        r = self.upsert_within(client, 5.0)
        self.assertTrue(r.created)  # the downgrade dropped the table with its rows
        self.assertEqual(r.pin.revision, 1)
        for _ in range(20):
            got = client.call(mp("GetPin"), {"tenant_id": "t", "key": "k"}).pin
            self.assertEqual((got.version, got.value["a"]), (1, 1))
            time.sleep(0.02)

    def upsert_within(self, client, seconds):
        """UpsertPin retried on UNAVAILABLE for at most seconds; returns the response."""
        end = time.monotonic() + seconds
        while True:
            try:
                return client.call(mp("UpsertPin"), {"tenant_id": "t", "key": "k",
                                                     "value": {"a": 1}}, timeout=2)
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                if time.monotonic() >= end:
                    raise
                time.sleep(0.05)

    def test_metrics_on_postgres(self):
        """The store families on PostgreSQL: store_info names the backend, the backend's error
        kinds and every pool state exist from the start, every single-pin read is a cache miss
        with the read cache off (PINS_PG_READ_CACHE=false), and the other new families show their
        zero series as on SQLite."""
        srv, client = self.pinsd(DB_POOL_SIZE=4, PINS_PG_READ_CACHE="false")
        m = test_metrics.scrape(srv)
        want = test_metrics.startup_series(2)
        for kind in ("busy", "io"):  # SQLite's own kinds
            del want['store_errors_total{kind="%s"}' % kind]
        for kind in ("connect", "query", "timeout", "queue_full", "schema"):
            want['store_errors_total{kind="%s"}' % kind] = None
        for state in ("idle", "busy", "connecting", "down"):
            want['store_pool_connections{state="%s"}' % state] = None
        del want['store_info{backend="sqlite"}']
        want['store_info{backend="postgres"}'] = 1
        missing = [k for k in want if k not in m]
        self.assertEqual(missing, [])
        for series, value in want.items():
            if value is not None:
                self.assertEqual(m[series], value, series)
        self.assertNotIn('store_info{backend="sqlite"}', m)
        for kind in ("query", "timeout", "queue_full", "schema"):
            self.assertEqual(m['store_errors_total{kind="%s"}' % kind], 0, kind)
        # Every connection of the pool is counted in one state; all of them come up.
        pool = lambda m: sum(m['store_pool_connections{state="%s"}' % s]
                             for s in ("idle", "busy", "connecting", "down"))
        self.assertEqual(pool(m), 4)
        deadline = time.monotonic() + 20
        while (m['store_pool_connections{state="idle"}'] + m['store_pool_connections{state="busy"}']
               < 4 and time.monotonic() < deadline):
            time.sleep(0.1)
            m = test_metrics.scrape(srv)
        self.assertEqual(m['store_pool_connections{state="idle"}']
                         + m['store_pool_connections{state="busy"}'], 4, m)

        client.call(mp("UpsertPin"), {"tenant_id": "pgm", "key": "k", "value": {"a": "b"}})
        before = test_metrics.scrape(srv)
        for _ in range(2):
            client.call(mp("GetPin"), {"tenant_id": "pgm", "key": "k"})
        with self.assertRaises(grpc.RpcError):
            client.call(mp("GetPin"), {"tenant_id": "pgm", "key": "absent"})
        after = test_metrics.scrape(srv)
        # both reads of the pin, not the absent one
        self.assertEqual(after["memory_cache_misses_total"], before["memory_cache_misses_total"] + 2)
        self.assertEqual(after["memory_cache_hits_total"], before["memory_cache_hits_total"])
        self.assertEqual(after["memory_value_size_bytes_count"], 1)
        self.assertEqual(after['rpc_requests_total{protocol="grpc",grpc_code="NOT_FOUND"}'],
                         before['rpc_requests_total{protocol="grpc",grpc_code="NOT_FOUND"}'] + 1)
        self.assertGreaterEqual(after['memory_audit_writes_total{status="success"}'], 1)
        self.assertEqual(after['memory_audit_writes_total{status="error"}'], 0)
        self.assertEqual(after["pins_ready"], 1)

    def test_read_cache_answers_reads_once_the_feed_is_ready(self):
        """With the read cache (the default), reads of a pin are answered from it once the
        change feed is ready: each read counts once, as a hit or a miss, an absent pin as
        neither, and a later write is seen by every read after it."""
        srv, client = self.pinsd(DB_POOL_SIZE=4)
        deadline = time.monotonic() + 20
        while test_metrics.scrape(srv).get("watch_feed_up") != 1:
            self.assertLess(time.monotonic(), deadline, "the change feed stayed down")
            time.sleep(0.1)
        client.call(mp("UpsertPin"), {"tenant_id": "pgc", "key": "k", "value": {"v": 1}})
        before = test_metrics.scrape(srv)
        reads = 0
        while True:  # the first read may miss (fills the cache); the cache is ready in a moment
            self.assertLess(time.monotonic(), deadline, "no read was answered from the cache")
            got = client.call(mp("GetPin"), {"tenant_id": "pgc", "key": "k"}).pin
            self.assertEqual(got.value["v"], 1)
            reads += 1
            if test_metrics.scrape(srv)["memory_cache_hits_total"] > before["memory_cache_hits_total"]:
                break
            time.sleep(0.05)
        with self.assertRaises(grpc.RpcError):
            client.call(mp("GetPin"), {"tenant_id": "pgc", "key": "absent"})
        after = test_metrics.scrape(srv)
        counted = lambda m: m["memory_cache_hits_total"] + m["memory_cache_misses_total"]
        self.assertEqual(counted(after) - counted(before), reads)
        # the next write replaces the cached row before any later read can be answered
        client.call(mp("UpsertPin"), {"tenant_id": "pgc", "key": "k", "value": {"v": 2}})
        for _ in range(20):
            got = client.call(mp("GetPin"), {"tenant_id": "pgc", "key": "k"}).pin
            self.assertEqual(got.value["v"], 2)

    def test_starts_while_postgres_is_down_and_connects_when_it_comes_up(self):
        self.pg.stop()
        srv, client = self.pinsd()
        status, body = http_get(srv.port, "/ready")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["checks"]["store"], "down")
        t0 = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            client.call(mp("GetPin"), {"tenant_id": "t", "key": "k"}, timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertLess(time.monotonic() - t0, 2.0, "a call with the store down must fail fast")
        self.pg.start(create_db=False)
        up = self.pg_started = time.monotonic()
        ready_at = self.wait_ready(srv, True, 10)
        self.assertLess(ready_at - up, 5.5)
        # Every worker reconnects on its own backoff: the service as a whole has recovered once
        # writes succeed, which must happen within 5 s of PostgreSQL's return.
        done = None
        while done is None and time.monotonic() - up < 10:
            try:
                client.call(mp("UpsertPin"), {"tenant_id": "t", "key": "k", "value": {"a": 1}},
                            timeout=2)
                done = time.monotonic()
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                time.sleep(0.05)
        self.assertIsNotNone(done, "writes did not recover")
        self.assertLess(done - up, 5.5)
        self.assertTrue(srv.alive())

    def test_restart_under_load_fails_fast_recovers_and_keeps_acknowledged_writes(self):
        srv, client = self.pinsd(BREAKER_ERRORS_PER_MIN=1000000)
        acked = {}
        last_ack = [0.0] * 4
        errors = []
        slow = []
        stop = threading.Event()

        def writer(n):
            c = harness.GrpcClient(srv.target)
            try:
                for i in range(100000):  # bounded; the test stops it much earlier
                    if stop.is_set():
                        break
                    key = "w%d-%d" % (n, i)
                    t0 = time.monotonic()
                    try:
                        c.call(mp("UpsertPin"), {"tenant_id": "load", "key": key,
                                                 "value": {"i": i}}, timeout=2)
                        acked[key] = i
                        last_ack[n] = time.monotonic()
                    except grpc.RpcError as e:
                        errors.append(e.code())
                        time.sleep(0.01)
                    if time.monotonic() - t0 > 2.5:
                        slow.append(key)
            finally:
                c.close()

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            self.pg.stop()
            time.sleep(2.0)
            self.pg.start(create_db=False)
            back = time.monotonic()
            ready = self.wait_ready(srv, True, 10)
            recovered = time.monotonic() - back
            n_before = len(acked)
            # Every writer's connection (whichever worker serves it) writes again soon after
            # /ready: one connection's return makes every session retry at once, not after its
            # own backoff of up to 2 s.
            end = ready + 1.0
            while min(last_ack) <= ready and time.monotonic() < end:
                time.sleep(0.05)
            lagging = [n for n in range(4) if last_ack[n] <= ready]
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertTrue(srv.alive(), "pinsd died")
        self.assertLess(recovered, 5.0)
        self.assertGreater(len(acked), n_before, "no write acknowledged after recovery")
        self.assertEqual(lagging, [], "writers without an acknowledged write 1 s after /ready")
        self.assertTrue(errors, "stopping PostgreSQL produced no error")
        self.assertEqual(set(errors) - {grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED}, set())
        self.assertEqual(slow, [], "calls ran past their deadline")
        rows = self.pg.query("SELECT key FROM system.memory_pins WHERE tenant_id = 'load'")
        stored = {r[0] for r in rows}
        missing = set(acked) - stored
        self.assertEqual(missing, set(), "acknowledged writes lost")
        audited = {r[0] for r in self.pg.query(
            "SELECT key FROM system.memory_audit WHERE tenant_id = 'load'"
            " AND operation = 'upsert'")}
        self.assertEqual(set(acked) - audited, set(), "acknowledged writes without audit rows")

    def hold_lock(self, tenant, secs):
        """Starts a psql session that holds the row lock of (tenant, 'k') for secs seconds, and
        returns it once it holds the lock."""
        holder = subprocess.Popen([pg.PSQL, "-h", "127.0.0.1", "-p", str(self.pg.port), "-U",
                                   "postgres", "-d", "pins", "-c",
                                   "BEGIN; SELECT 1 FROM system.memory_pins WHERE tenant_id = '%s'"
                                   " AND key = 'k' FOR UPDATE; SELECT pg_sleep(%d); COMMIT;"
                                   % (tenant, secs)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(holder.kill)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if self.pg.query("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(%d)%%'"
                             " AND state = 'active' AND pid <> pg_backend_pid()" % secs):
                return holder
            time.sleep(0.05)
        self.fail("the lock holder did not start")

    def test_scrapes_neither_wait_for_a_busy_store_nor_add_to_its_errors(self):
        """Every connection of the pool waits on a table lock another session holds: scrapes are
        answered from the last readiness verdict (the store was fine a moment ago) and count no
        store error (a scrape used to ping with a 1 s deadline: pins_ready 0 and a timeout error
        per scrape); once the lock goes, the writes complete and still no error was counted."""
        srv, client = self.pinsd(DB_POOL_SIZE=2, PINS_WORKERS=1)
        client.call(mp("UpsertPin"), {"tenant_id": "busy", "key": "k", "value": {}})
        self.assertEqual(test_metrics.scrape(srv)["pins_ready"], 1)
        holder = subprocess.Popen([pg.PSQL, "-h", "127.0.0.1", "-p", str(self.pg.port), "-U",
                                   "postgres", "-d", "pins", "-c",
                                   "BEGIN; LOCK TABLE system.memory_pins IN ACCESS EXCLUSIVE MODE;"
                                   " SELECT pg_sleep(8); COMMIT;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(holder.kill)
        end = time.monotonic() + 5
        while not self.pg.query("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(8)%%'"
                                " AND state = 'active' AND pid <> pg_backend_pid()"):
            self.assertLess(time.monotonic(), end, "the lock holder did not start")
            time.sleep(0.05)
        before = test_metrics.scrape(srv)
        # tenants of their own: a session has one write segment per tenant in flight
        futures = [client.future(mp("UpsertPin"), {"tenant_id": "busy%d" % i, "key": "k%d" % i,
                                                   "value": {}}, timeout=30) for i in range(8)]
        # Until every connection of the pool waits on the lock (bounded).
        end = time.monotonic() + 10
        while test_metrics.scrape(srv)['store_pool_connections{state="busy"}'] < 2:
            self.assertLess(time.monotonic(), end, "the pool did not fill up")
            time.sleep(0.05)
        scrapes = [test_metrics.scrape(srv) for _ in range(20)]
        for m in scrapes:
            self.assertEqual(m["pins_ready"], 1, "a busy pool is not a store that is down")
        kinds = ("connect", "query", "timeout", "queue_full")
        for k in kinds:
            key = 'store_errors_total{kind="%s"}' % k
            self.assertEqual(scrapes[-1][key], before[key], key)
        holder.wait(30)
        for f in futures:
            f.result()  # both writes went through once the lock was released
        deadline = time.monotonic() + 10
        while test_metrics.scrape(srv)["pins_ready"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        after = test_metrics.scrape(srv)
        self.assertEqual(after["pins_ready"], 1)
        for k in kinds:
            key = 'store_errors_total{kind="%s"}' % k
            self.assertEqual(after[key], before[key], key)

    def test_deadline_cancels_the_statement_on_the_server(self):
        self.check_deadline_cancel(self.pg.url)

    def test_deadline_cancels_the_statement_through_pgbouncer(self):
        bouncer = pg.PgBouncer(self.pg).start()
        self.addCleanup(bouncer.destroy)
        self.check_deadline_cancel(bouncer.url)

    def check_deadline_cancel(self, url):
        srv, client = self.pinsd(DATABASE_URL=url, BREAKER_ERRORS_PER_MIN=1000000)
        client.call(mp("UpsertPin"), {"tenant_id": "dl", "key": "k", "value": {"v": "before"}})
        # Another session holds the row lock for 4 s, so pinsd's next upsert of the key waits.
        holder = self.hold_lock("dl", 4)
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                   " AND query LIKE '%memory_pins%' AND pid <> pg_backend_pid()")
        with self.assertRaises(grpc.RpcError) as cm:
            client.call(mp("UpsertPin"), {"tenant_id": "dl", "key": "k", "value": {"v": "late"}},
                        timeout=0.5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The statement was waiting on the lock when its deadline passed; the cancel request ends
        # it on the server long before the holder lets go (a dropped connection would not: a
        # backend waiting on a lock does not read its socket).
        end = time.monotonic() + 0.9
        n = None
        while time.monotonic() < end:
            n = int(self.pg.query(waiting)[0][0])
            if n == 0:
                break
            time.sleep(0.05)
        self.assertEqual(n, 0, "the upsert still waits on the row lock past its deadline")
        self.assertIsNone(holder.poll(), "the lock holder ended too early for this test")
        holder.wait(10)
        # Cancelled, its transaction rolled back: the late value never lands, not even once the
        # lock is free, and the next write is version 2.
        pin = harness.to_dict(client.call(mp("GetPin"), {"tenant_id": "dl", "key": "k"}).pin)
        self.assertEqual((pin["value"], pin["version"]), ({"v": "before"}, "1"))
        r = client.call(mp("UpsertPin"), {"tenant_id": "dl", "key": "k", "value": {"v": "after"}})
        self.assertEqual(r.pin.version, 2)
        audited = self.pg.query("SELECT count(*) FROM system.memory_audit WHERE tenant_id = 'dl'"
                                " AND operation = 'upsert'")
        self.assertEqual(audited, [["2"]])
        self.assertTrue(srv.alive())

    def test_a_cancelled_statement_still_awaited_runs_again(self):
        # A cancel request (a late one of ours, or an operator's pg_cancel_backend) can end a
        # statement whose call still waits: the call runs once more instead of failing.
        srv, client = self.pinsd(BREAKER_ERRORS_PER_MIN=1000000)
        client.call(mp("UpsertPin"), {"tenant_id": "cx", "key": "k", "value": {"v": "before"}})
        holder = self.hold_lock("cx", 2)
        result = {}

        def write():
            try:
                result["r"] = client.call(mp("UpsertPin"), {"tenant_id": "cx", "key": "k",
                                                            "value": {"v": "mid"}}, timeout=10)
            except grpc.RpcError as e:
                result["e"] = e

        t = threading.Thread(target=write)
        t.start()
        pid = None
        end = time.monotonic() + 5
        while pid is None and time.monotonic() < end:
            rows = self.pg.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                 " AND query LIKE '%memory_pins%' AND pid <> pg_backend_pid()")
            pid = rows[0][0] if rows else None
            time.sleep(0.02)
        self.assertIsNotNone(pid, "the upsert never waited on the lock")
        self.assertEqual(self.pg.query("SELECT pg_cancel_backend(%s)" % pid), [["t"]])
        t.join(15)
        holder.wait(10)
        self.assertNotIn("e", result, result.get("e") and result["e"].details())
        self.assertEqual(result["r"].pin.version, 2)
        pin = harness.to_dict(client.call(mp("GetPin"), {"tenant_id": "cx", "key": "k"}).pin)
        self.assertEqual((pin["value"], pin["version"]), ({"v": "mid"}, "2"))
        self.assertEqual(self.pg.query("SELECT count(*) FROM system.memory_audit"
                                       " WHERE tenant_id = 'cx' AND operation = 'upsert'"), [["2"]])

    def test_connection_exhaustion_bounded_errors_and_recovery(self):
        # pinsd connects as an ordinary role, so the superuser_reserved_connections (3 of 20)
        # are not its own: 17 superuser sessions leave it no slot, while psql still gets in.
        self.pg.psql("CREATE ROLE pinsd LOGIN; GRANT USAGE ON SCHEMA system TO pinsd;"
                     " GRANT ALL ON ALL TABLES IN SCHEMA system TO pinsd;"
                     " GRANT ALL ON ALL SEQUENCES IN SCHEMA system TO pinsd")
        self.pg.url_pinsd = "postgresql://pinsd@127.0.0.1:%d/pins" % self.pg.port
        srv, client = self.pinsd(DATABASE_URL=self.pg.url_pinsd, DB_POOL_SIZE=2, PINS_WORKERS=1,
                                 BREAKER_ERRORS_PER_MIN=1000000)
        client.call(mp("UpsertPin"), {"tenant_id": "x", "key": "k", "value": {"a": 1}})
        hogs = []
        self.addCleanup(lambda: [h.kill() for h in hogs])
        # pinsd holds 3 sessions (its pool of 2 and its change feed): 16 hogs and pinsd fill 19
        # slots, and the 17th hog takes the last one to end pinsd's sessions before it sleeps.
        for n in range(17):
            sql = "SELECT pg_sleep(60)"
            if n == 16:
                time.sleep(1.5)
                sql = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                       " WHERE usename = 'pinsd'; " + sql)
            hogs.append(subprocess.Popen([pg.PSQL, "-h", "127.0.0.1", "-p", str(self.pg.port),
                                          "-U", "postgres", "-d", "pins", "-c", sql],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3)
        codes = []
        t0 = time.monotonic()
        for i in range(20):  # bounded
            try:
                client.call(mp("GetPin"), {"tenant_id": "x", "key": "k"}, timeout=2)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        self.assertLess(time.monotonic() - t0, 20 * 2.5)
        self.assertIn(grpc.StatusCode.UNAVAILABLE, codes)
        self.assertEqual(set(codes) - {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.DEADLINE_EXCEEDED}, set())
        self.assertGreaterEqual(metric(srv.port, "store_errors_total", {"kind": "connect"}), 1)
        # Release the slots: end the sessions server-side (a killed psql leaves its backend
        # asleep), then reap the clients.
        self.pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE query = 'SELECT pg_sleep(60)'")
        for h in hogs:
            h.kill()
            h.wait(10)
        self.wait_ready(srv, True, 10)
        r = client.call(mp("GetPin"), {"tenant_id": "x", "key": "k"}, timeout=5)
        self.assertEqual(r.pin.key, "k")
        self.assertTrue(srv.alive())

    def test_breaker_opens_after_errors_and_closes_after_good_probe(self):
        srv, client = self.pinsd(BREAKER_ERRORS_PER_MIN=5, BREAKER_OPEN_SECONDS=2)
        client.call(mp("UpsertPin"), {"tenant_id": "b", "key": "k", "value": {"a": 1}})
        self.assertEqual(metric(srv.port, "circuit_breaker_state", {"name": "store"}), 0)
        self.pg.stop()
        messages = []
        for _ in range(12):  # bounded: 6 store errors open it
            try:
                client.call(mp("GetPin"), {"tenant_id": "b", "key": "k"}, timeout=2)
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE)
                messages.append(e.details())
        self.assertEqual(metric(srv.port, "circuit_breaker_state", {"name": "store"}), 1)
        self.assertTrue(any("breaker" in m for m in messages), messages)
        self.pg.start(create_db=False)
        self.wait_ready(srv, True, 10)
        time.sleep(2.2)  # BREAKER_OPEN_SECONDS: the next call is the probe
        r = client.call(mp("GetPin"), {"tenant_id": "b", "key": "k"}, timeout=5)
        self.assertEqual(r.pin.key, "k")
        self.assertEqual(metric(srv.port, "circuit_breaker_state", {"name": "store"}), 0)
        client.call(mp("GetPin"), {"tenant_id": "b", "key": "k"}, timeout=5)


if __name__ == "__main__":
    unittest.main()
