"""A real Prometheus scraping a real pinsd, on both stores (the runbook's Phase 6 and the alerts).

For the embedded SQLite store (with a real redis-server for the limiter) and for a real PostgreSQL 15,
one test each:

1. Prometheus (Debian's) scrapes pinsd every 2 s, evaluates the rules every second, under the job `nova-backend` and loads the
   shipped rules file ops/prometheus_rules/m7_rbac_memory_alerts.yml.
2. A bounded mixed load over all four protocols (REST, gRPC, Connect, gRPC-Web): upserts of several
   sizes, reads that hit and miss, lists, deletes, a cleanup, a watch stream, pins with a 1 s TTL the
   sweeper reclaims, a burst on one tenant past its rate limit (429s), calls without credentials in
   shadow mode (shadow denials) and, after a restart with RBAC_ENFORCE=true, denied ones (403).
3. Store errors provoked for real: on SQLite another connection holds the write lock past pinsd's
   busy timeout; on PostgreSQL the server is stopped under load. With the breaker threshold lowered,
   Prometheus's /api/v1/alerts shows CircuitBreakerOpen and StoreErrors go pending, then firing.
4. Every panel query of both Grafana dashboards (tests/ops/dashboards.py reads them) is evaluated
   through Prometheus's HTTP API and must return at least one finite sample; the events the load
   provoked (denials, errors, 429s, expiries, cache hits, each protocol) must show as non-zero.
5. `promtool check metrics` on pinsd's /metrics prints nothing.

Every server runs on 127.0.0.1 on a free port in a temporary directory and is stopped by PID; every
loop is bounded in count and time.
"""

import http.client
import json
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import strict  # noqa: E402,F401  (skips fail under ctest)
import grpc  # noqa: E402

import dashboards  # noqa: E402
import harness  # noqa: E402
import pg  # noqa: E402
import prom  # noqa: E402
from test_ratelimit import Redis, REDIS_SERVER  # noqa: E402

ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
RULES = os.path.join(ROOT, "ops", "prometheus_rules", "m7_rbac_memory_alerts.yml")
PROMTOOL = "/usr/bin/promtool"
PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(os.path.dirname(harness.PINSD_BIN), "pinsctl")
TOKEN = "ops-test-machine-token-0123456789"
PKG = "memorypins.v1.MemoryPins"
RPM = 60  # per tenant; the burst tenant sends more than this in a second

# The events of the load, as PromQL that must be above zero once Prometheus has scraped them.
# [10m] windows: the run is shorter, so every event of the run is inside.
EVENTS = {
    "RBAC denials (enforced)": 'sum(increase(rbac_decisions_total{decision="denied"}[10m]))',
    "RBAC shadow denials": "sum(increase(rbac_shadow_denials_total[10m]))",
    "memory pin errors": 'sum(increase(memory_pins_operations_total{status="error"}[10m]))',
    "store errors": "sum(increase(store_errors_total[10m]))",
    "rate-limited calls": 'sum(increase(rate_limit_decisions_total{decision="limited"}[10m]))',
    "expired pins reclaimed": "sum(increase(memory_pins_expired_reclaimed_total[10m]))",
    "sweeper batches": 'sum(increase(memory_pins_sweep_batches_total{status="success"}[10m]))',
    "cleanup calls": 'sum(increase(memory_pins_operations_total{operation="cleanup"}[10m]))',
    "not-found reads": 'sum(increase(memory_pins_operations_total{status="not_found"}[10m]))',
    "cache misses": "sum(increase(memory_cache_misses_total[10m]))",
    "value sizes observed": "sum(increase(memory_value_size_bytes_count[10m]))",
    "watch events sent": "sum(increase(watch_events_sent_total[10m]))",
    "rbac audit writes": 'sum(increase(rbac_audit_writes_total{status="success"}[10m]))',
    "grpc calls": 'sum(increase(rpc_requests_total{protocol="grpc"}[10m]))',
    "connect calls": 'sum(increase(rpc_requests_total{protocol="connect"}[10m]))',
    "grpc-web calls": 'sum(increase(rpc_requests_total{protocol="grpc_web"}[10m]))',
    "rest calls": 'sum(increase(rpc_requests_total{protocol="rest"}[10m]))',
}
SQLITE_EVENTS = {
    "cache hits": "sum(increase(memory_cache_hits_total[10m]))",
    "redis-backed limiter decisions": 'sum(increase(rate_limit_decisions_total{backend="redis"}[10m]))',
}


def finite_samples(result):
    """The finite values of an instant-query result (vector or scalar)."""
    out = []
    for r in result:
        v = float(r["value"][1])
        if math.isfinite(v):
            out.append(v)
    return out


class Client:
    """The four protocols of pinsd against one server, over HTTP/1.1 (REST, Connect, gRPC-Web) and
    HTTP/2 (gRPC). Returns HTTP statuses or gRPC codes; never raises on an answered error."""

    def __init__(self, srv, token=None):
        self.srv = srv
        self.token = token
        self.grpc = srv.client()

    def close(self):
        self.grpc.close()

    def headers(self, extra=None):
        h = {}
        if self.token:
            h["X-Machine-Token"] = self.token
        h.update(extra or {})
        return h

    def http(self, method, path, body=None, headers=None, timeout=15):
        c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=self.headers(headers))
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def rest_upsert(self, tenant, key, value, ttl=None, timeout=15):
        body = {"tenant_id": tenant, "key": key, "value": value}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        return self.http("POST", "/api/v1/memory/pins", json.dumps(body),
                         {"Content-Type": "application/json"}, timeout=timeout)

    def rest_get(self, tenant, key):
        return self.http("GET", "/api/v1/memory/pins/%s?tenant_id=%s" % (key, tenant))

    def rest_list(self, tenant):
        return self.http("GET", "/api/v1/memory/pins?tenant_id=%s&limit=5" % tenant)

    def rest_delete(self, tenant, key):
        return self.http("DELETE", "/api/v1/memory/pins/%s?tenant_id=%s" % (key, tenant))

    def connect(self, method, fields):
        return self.http("POST", "/%s/%s" % (PKG, method), json.dumps(fields),
                         {"Content-Type": "application/json"})

    def grpc_web(self, method, fields):
        msg = harness.new_request(harness.mp(method), fields).SerializeToString()
        frame = b"\x00" + len(msg).to_bytes(4, "big") + msg
        return self.http("POST", "/%s/%s" % (PKG, method), frame,
                         {"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"})

    def grpc_call(self, method, fields):
        md = [("x-machine-token", self.token)] if self.token else None
        try:
            self.grpc.call(harness.mp(method), fields, timeout=15, metadata=md)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def any(self, i, method, fields):
        """Method through the protocol i selects (round robin over the four)."""
        proto = i % 4
        if proto == 0:
            return self.grpc_call(method, fields)
        if proto == 1:
            return self.connect(method, fields)
        if proto == 2:
            return self.grpc_web(method, fields)
        t, k = fields["tenant_id"], fields.get("key")
        if method == "UpsertPin":
            return self.rest_upsert(t, k, fields["value"])
        if method == "GetPin":
            return self.rest_get(t, k)
        if method == "ListPins":
            return self.rest_list(t)
        return self.rest_delete(t, k)


def mixed_load(c, rounds=320, tenants=16, keys=6):
    """Reads (hits and misses), writes of several sizes, lists and deletes over many tenants and
    keys, through every protocol in turn. Bounded by rounds."""
    sizes = (8, 200, 1500, 9000)
    for i in range(rounds):
        t, k = "tenant-%d" % (i % tenants), "key-%d" % (i % keys)
        op = i % 10
        if op in (0, 1, 2, 3):
            c.any(i, "GetPin", {"tenant_id": t, "key": k})
        elif op in (4, 5, 6):
            c.any(i, "UpsertPin", {"tenant_id": t, "key": k,
                                   "value": {"note": "x" * sizes[i % len(sizes)], "n": i}})
        elif op == 7:
            c.any(i, "ListPins", {"tenant_id": t})
        elif op == 8:
            c.any(i, "DeletePin", {"tenant_id": t, "key": "key-%d" % ((i + 3) % keys)})
        else:
            c.any(i, "GetPin", {"tenant_id": t, "key": "absent-%d" % i})


class Watch(threading.Thread):
    """An SSE watch stream on one tenant, read until stop() or its deadline."""

    def __init__(self, srv, tenant, token=None, limit_s=60):
        super().__init__(daemon=True)
        self.srv, self.tenant, self.token, self.limit_s = srv, tenant, token, limit_s
        self.events = 0
        self.status = None
        self.conn = None
        self.opened = threading.Event()

    def run(self):
        self.conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=self.limit_s)
        h = {"Accept": "text/event-stream"}
        if self.token:
            h["X-Machine-Token"] = self.token
        try:
            self.conn.request("GET", "/api/v1/memory/watch?tenant_id=%s" % self.tenant, headers=h)
            r = self.conn.getresponse()
            self.status = r.status
            self.opened.set()
            deadline = time.monotonic() + self.limit_s
            while time.monotonic() < deadline:
                line = r.readline()
                if not line:
                    break
                if line.startswith(b"data:"):
                    self.events += 1
        except (OSError, http.client.HTTPException):
            pass
        finally:
            self.opened.set()

    def stop(self):
        if self.conn is not None and self.conn.sock is not None:
            try:
                self.conn.sock.shutdown(2)
            except OSError:
                pass
        self.join(10)


def scrape(srv):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class PrometheusScrapesPinsd(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        if not os.path.exists(RULES):
            self.fail("the rules file %s is missing" % RULES)

    # ---- the pieces --------------------------------------------------------------------------

    def start_prometheus(self, srv):
        conf = (
            "global:\n  scrape_interval: 2s\n  evaluation_interval: 1s\n  scrape_timeout: 2s\n"
            "rule_files:\n  - %s\n"
            "scrape_configs:\n  - job_name: nova-backend\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n" % (json.dumps(RULES), srv.port))
        p = prom.Prometheus(config_text=conf)
        self.addCleanup(p.stop)
        p.start()
        return p

    def pinsd(self, env):
        srv = harness.Server(env=env)
        self.addCleanup(srv.cleanup)
        srv.start(ready_timeout=30)
        return srv

    def wait_scraped(self, p, srv, timeout=30):
        """Until Prometheus holds a successful scrape of pinsd that began after this call."""
        since = time.time()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            last = p.query('timestamp(up{job="nova-backend"} == 1)')
            if last and float(last[0]["value"][1]) > since:
                return
        self.fail("no successful scrape of pinsd within %d s (last: %r)" % (timeout, last))

    def load(self, p, srv, shadow):
        """One phase of load: every kind of event twice, with a Prometheus scrape in between.
        increase() counts from a series' first sample, so an event that creates its series (the
        first denial, the first 429, the first error of a kind) only shows from its second one."""
        c = Client(srv, token=None if shadow else TOKEN)
        self.addCleanup(c.close)
        w = Watch(srv, "tenant-1", token=c.token)
        w.start()
        self.assertTrue(w.opened.wait(10), "the watch stream did not open")
        self.assertEqual(w.status, 200, "watch stream status")
        self.wait_scraped(p, srv)  # every family's first sample before the events
        for rounds, ttl_pins in ((320, 20), (60, 5)):
            self.events(srv, c, shadow, rounds, ttl_pins)
            self.wait_scraped(p, srv)
        w.stop()
        self.assertGreater(w.events, 0, "the watch stream saw no event")

    def events(self, srv, c, shadow, rounds, ttl_pins):
        mixed_load(c, rounds=rounds)
        for i in range(3):  # events for the watch stream on tenant-1
            self.assertIn(c.rest_upsert("tenant-1", "watched", {"i": i}), (200, 201))
        reclaimed = metric_sum(scrape(srv)[1], "memory_pins_expired_reclaimed_total")
        for i in range(ttl_pins):
            self.assertEqual(c.rest_upsert("ttl-tenant", "short-%d" % i, {"i": i}, ttl=1), 201)
        # One tenant past its limit: RPM calls are allowed (the burst), the rest are 429.
        limited = sum(1 for i in range(RPM + 10) if c.rest_get("burst", "k%d" % i) == 429)
        self.assertGreater(limited, 0, "the burst tenant was never rate limited")
        if shadow:
            # An admin call, allowed in shadow mode: counted as operation="cleanup".
            self.assertEqual(c.http("POST", "/api/v1/memory/pins/cleanup?tenant_id=tenant-0"), 200)
        else:
            anon = Client(srv)
            self.addCleanup(anon.close)
            denied = [anon.rest_upsert("tenant-2", "k", {}) for _ in range(4)]
            self.assertEqual(set(denied), {403}, "calls without credentials under RBAC_ENFORCE=true")
            self.assertEqual(anon.grpc_call("GetPin", {"tenant_id": "tenant-2", "key": "k"}),
                             "UNAUTHENTICATED")
        # The sweeper (every second) reclaims the TTL pins.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = metric_sum(scrape(srv)[1], "memory_pins_expired_reclaimed_total")
            if now >= reclaimed + ttl_pins:
                break
            time.sleep(0.5)
        else:
            self.fail("the sweeper did not reclaim the %d expired pins within 20 s" % ttl_pins)

    def hold_sqlite_write_lock(self, p, srv, c, writes=2):
        """Another connection holds SQLite's write lock past pinsd's 5 s busy timeout while pinsd
        writes, one write after the other with a scrape between them (see load): each fails (a
        store error), nothing else is harmed."""
        db = sqlite3.connect(os.path.join(srv.data_dir, "pins.db"), timeout=1, isolation_level=None)
        results = []
        try:
            db.execute("BEGIN EXCLUSIVE")
            for i in range(writes):
                # Its own busy timeout (5 s) plus, on a worker that flushes audit rows under
                # the same lock, one more: bounded well inside 30 s.
                results.append(c.rest_upsert("locked", "k%d" % i, {"i": i}, timeout=30))
                self.wait_scraped(p, srv)
            db.execute("ROLLBACK")
        finally:
            db.close()
        self.assertTrue(all(s >= 500 for s in results),
                        "writes under a held write lock: %r" % results)
        self.assertEqual(c.rest_upsert("locked", "after", {}), 201, "a write after the lock")

    def check_panels_and_events(self, p, events):
        failures = []
        queries = dashboards.panel_queries()
        self.assertGreater(len(queries), 30, "the dashboards' panel queries")
        for dash, title, ref, expr in queries:
            try:
                vals = finite_samples(p.query(expr))
            except Exception as e:  # noqa: BLE001  (a query Prometheus rejects is a failure too)
                failures.append("%s / %s [%s]: %s\n    %s" % (dash, title, ref, e, expr))
                continue
            if not vals:
                failures.append("%s / %s [%s]: no data\n    %s" % (dash, title, ref, expr))
        self.assertEqual(failures, [], "panels without data:\n" + "\n".join(failures))
        zero = []
        for what, expr in events.items():
            vals = finite_samples(p.query(expr))
            if not vals or vals[0] <= 0:
                raw = [(r["metric"], [v for _, v in r["values"]][-40:])
                       for name in dashboards.metric_names(expr)
                       for r in p.query(name + "[10m]")]
                zero.append("%s: %s -> %r\n    samples: %r" % (what, expr, vals, raw))
        self.assertEqual(zero, [], "events the load provoked that Prometheus does not show:\n"
                         + "\n".join(zero))

    def promtool_check_metrics(self, srv):
        st, text = scrape(srv)
        self.assertEqual(st, 200)
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""), "promtool check metrics")

    def wait_alerts(self, p, names, timeout, during=None):
        """Polls /api/v1/alerts until each alert of names was seen pending and then firing;
        calls during() between polls. Returns {name: [states in order]}."""
        seen = {n: [] for n in names}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if during is not None:
                during()
            states = {}
            for a in p.api("/api/v1/alerts")["data"]["alerts"]:
                n = a["labels"].get("alertname")
                if n in seen:
                    # firing wins over pending when several series of one alert exist
                    if states.get(n) != "firing":
                        states[n] = a["state"]
            for n, s in states.items():
                if not seen[n] or seen[n][-1] != s:
                    seen[n].append(s)
            if all("firing" in v for v in seen.values()):
                return seen
            time.sleep(1)
        self.fail("alerts not firing within %d s: %r" % (timeout, seen))

    def scraped_phases(self, env, backend, between=None):
        """pinsd (env, shadow mode) scraped by Prometheus: the load, between(p, srv), then the
        same process restarted with RBAC_ENFORCE=true on the same port and data, the load again;
        promtool check metrics and store_info{backend}. Returns (srv, p)."""
        srv = self.pinsd(dict(env, RATE_LIMIT_RPM=str(RPM), MACHINE_SECRET_TOKEN=TOKEN,
                              PINS_SWEEP_INTERVAL_SECONDS="1", RBAC_ENFORCE="false"))
        p = self.start_prometheus(srv)
        self.load(p, srv, shadow=True)
        if between is not None:
            between(p, srv)
        self.wait_scraped(p, srv)
        srv.stop()
        srv.extra_env["RBAC_ENFORCE"] = "true"
        srv.start(ready_timeout=30)
        self.load(p, srv, shadow=False)
        self.wait_scraped(p, srv)
        self.promtool_check_metrics(srv)
        info = p.query('store_info{job="nova-backend"}')
        self.assertEqual([r["metric"]["backend"] for r in info], [backend])
        return srv, p

    # ---- the two stores ----------------------------------------------------------------------

    @unittest.skipUnless(REDIS_SERVER, "redis-server is not installed")
    def test_sqlite_store_with_redis(self):
        redis = Redis()
        self.addCleanup(redis.stop)
        redis.start()
        srv, p = self.scraped_phases(
            {"REDIS_URL": redis.url}, "sqlite",
            between=lambda p, srv: self.hold_sqlite_write_lock(p, srv, Client(srv)))
        self.check_panels_and_events(p, dict(EVENTS, **SQLITE_EVENTS))

    def test_postgresql_store_alerts_fire_when_it_stops(self):
        if not pg.available():
            self.fail("PostgreSQL 15 binaries not found")
        server = pg.PgServer()
        self.addCleanup(server.destroy)
        server.start()
        r = subprocess.run([PINSCTL, "--database-url", server.url, "migrate", "upgrade", "head"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        srv, p = self.scraped_phases({"DATABASE_URL": server.url, "BREAKER_ERRORS_PER_MIN": "3",
                                      "BREAKER_OPEN_SECONDS": "5", "DB_POOL_SIZE": "4"},
                                     "postgres")

        # PostgreSQL stops under a trickle of writes: store errors, the breaker opens, and both
        # alerts go pending, then firing (their for: is 1m; evaluation every second).
        server.stop()
        c = Client(srv, token=TOKEN)
        self.addCleanup(c.close)
        codes = []

        def trickle():  # spread over tenants: the limiter must not answer instead of the store
            for _ in range(2):
                codes.append(c.rest_upsert("outage-%d" % (len(codes) % 20), "k", {"n": len(codes)}))

        seen = self.wait_alerts(p, ["CircuitBreakerOpen", "StoreErrors"], timeout=240,
                                during=trickle)
        for name, states in seen.items():
            self.assertEqual(states[:2], ["pending", "firing"], "%s went %r" % (name, states))
        self.assertTrue(codes and set(codes) <= {500, 503}, "writes during the outage: %r"
                        % sorted(set(codes)))
        self.assertIn(503, codes, "the open breaker answers 503")
        self.assertTrue(srv.alive(), "pinsd exited during the outage\n" + srv.stderr_tail())
        # pins_ready followed the outage (scrapes refresh it in the background).
        ready = finite_samples(p.query('min(pins_ready{job="nova-backend"})'))
        self.assertEqual(ready, [0.0], "pins_ready during the outage")
        # Every panel still has data, with the outage's errors in it.
        self.check_panels_and_events(p, EVENTS)


if __name__ == "__main__":
    unittest.main()
