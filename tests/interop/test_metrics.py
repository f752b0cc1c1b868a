"""The metrics of issue 12 on a real pinsd (SQLite store) over the real transport: every new family
is exposed from start-up with its zero series, and each one moves when the fact it counts happens:
cache misses and hits of GetPin, value sizes of upserts, the sweeper reclaiming expired pins, RPCs
by protocol (grpcio, Connect and gRPC-Web through curl, REST), throttled tenants, open watch
streams, readiness and build information; `promtool check metrics` finds nothing to report in the
exposition.

Every wait is a bounded poll of /metrics, never a fixed sleep that a slow machine could outrun.

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_metrics   (from tests/interop)
"""

import os
import re
from contextlib import closing
import shutil
import subprocess
import time
import unittest
import urllib.request

import grpc

import harness
from harness import ServerTestCase, mp, new_request
from test_connect_grpcweb import envelope, envelopes, grpcweb_trailers
from test_rest import CURL, curl

PROMTOOL = os.environ.get("PROMTOOL_BIN") or "/usr/bin/promtool"
# name, then labels whose quoted values may hold braces and escaped quotes, then the value.
SERIES_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)$')
GRPC_CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED"]
PROTOCOLS = ["grpc", "grpc_web", "connect", "rest"]
SIZE_BUCKETS = ["64", "256", "1024", "4096", "16384", "65536", "262144", "1048576", "+Inf"]
# The harness waits for a SERVING health Check over gRPC before a test starts: those calls are the
# only ones a fresh server has answered.
STARTUP_SERIES = {'rpc_requests_total{protocol="grpc",grpc_code="OK"}'}


def scrape_text(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        assert r.status == 200, r.status
        return r.read().decode("utf-8")


def parse(text):
    """{series: value} of an exposition, series as rendered (`name` or `name{labels}`)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES_RE.match(line)
        assert m is not None, "unparsable exposition line %r" % line
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def scrape(server):
    return parse(scrape_text(server.port))


def label(name, **labels):
    return "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in labels.items()))


# Every series of the new families that must exist from start-up, with the value it must have on a
# fresh server (None: present, any value).
def startup_series(workers):
    s = {
        "memory_cache_hits_total": 0,
        "memory_cache_misses_total": 0,
        "memory_value_size_bytes_count": 0,
        "memory_value_size_bytes_sum": 0,
        "memory_pins_expired_reclaimed_total": 0,
        label("memory_pins_sweep_batches_total", status="success"): 0,
        label("memory_pins_sweep_batches_total", status="error"): 0,
        "memory_pins_sweep_lag_seconds": None,
        "memory_pins_sweep_interval_seconds": 3600,  # SERVER_ENV
        label("store_info", backend="sqlite"): 1,
        "store_schema_behind": 0,
        label("store_pool_connections", state="idle"): workers,
        label("store_pool_connections", state="busy"): 0,
        label("store_pool_connections", state="connecting"): 0,
        label("store_pool_connections", state="down"): 0,
        label("memory_audit_writes_total", status="success"): 0,
        label("memory_audit_writes_total", status="error"): 0,
        label("rbac_audit_writes_total", status="success"): None,
        label("rbac_audit_writes_total", status="error"): 0,
        "pins_ready": 1,
        "rate_limit_redis_configured": 0,
        "rate_limit_throttled_tenants": 0,
        "watch_streams_active": 0,
        "watch_events_sent_total": 0,
        "watch_streams_refused_total": 0,
        "watch_feed_up": 1,
        "watch_feed_interruptions_total": 0,
    }
    for kind in ("busy", "io", "query", "schema"):
        s[label("store_errors_total", kind=kind)] = 0
    for le in SIZE_BUCKETS:
        s[label("memory_value_size_bytes_bucket", le=le)] = 0
    for p in PROTOCOLS:
        for code in GRPC_CODES:
            series = label("rpc_requests_total", protocol=p, grpc_code=code)
            s[series] = None if series in STARTUP_SERIES else 0
        s[label("rpc_request_duration_seconds_count", protocol=p)] = None
    for op in ("upsert", "get", "list", "delete", "cleanup"):
        for status in ("success", "not_found", "error"):
            s[label("memory_pins_operations_total", operation=op, status=status)] = 0
    return s


class MetricsTest(ServerTestCase):
    # The sweeper stays out of the way of the class server (its own test starts one that sweeps).
    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def poll(self, server, pred, what, timeout=30.0):
        """Scrapes until pred(metrics) holds; fails after timeout with the last values."""
        deadline = time.monotonic() + timeout
        m = scrape(server)
        while not pred(m):
            if time.monotonic() > deadline:
                self.fail("%s: not reached within %.0f s" % (what, timeout))
            time.sleep(0.1)
            m = scrape(server)
        return m

    def upsert(self, server, tenant, key, value=None, ttl=None):
        fields = {"tenant_id": tenant, "key": key, "value": value or {"a": 1}}
        if ttl is not None:
            fields["ttl_seconds"] = ttl
        with closing(server.client()) as c:
            return c.call(mp("UpsertPin"), fields).pin

    def test_every_new_family_is_exposed_at_start_with_its_zero_series(self):
        s = self.fresh_server()
        m = scrape(s)
        missing = []
        for series, want in startup_series(2).items():
            if series not in m:
                missing.append(series)
            elif want is not None:
                self.assertEqual(m[series], want, series)
        self.assertEqual(missing, [])
        self.assertGreaterEqual(m["memory_pins_sweep_lag_seconds"], 0)
        build = [k for k in m if k.startswith("pins_build_info{")]
        self.assertEqual(len(build), 1, build)
        self.assertRegex(build[0], r'^pins_build_info\{version="\d+\.\d+\.\d+",'
                                   r'revision="([0-9a-f]{7,40}|unknown)"\}$')
        self.assertEqual(m[build[0]], 1)

    def test_get_pin_twice_is_a_miss_then_a_hit(self):
        s = self.fresh_server()
        self.upsert(s, "cache", "k")
        # A new process: the read cache starts empty, the pin is in the file.
        s.stop()
        s.start()
        before = scrape(s)
        with closing(s.client()) as c:
            c.call(mp("GetPin"), {"tenant_id": "cache", "key": "k"})
            one = scrape(s)
            c.call(mp("GetPin"), {"tenant_id": "cache", "key": "k"})
            two = scrape(s)
        self.assertEqual(one["memory_cache_misses_total"], before["memory_cache_misses_total"] + 1)
        self.assertEqual(one["memory_cache_hits_total"], before["memory_cache_hits_total"])
        self.assertEqual(two["memory_cache_hits_total"], before["memory_cache_hits_total"] + 1)
        self.assertEqual(two["memory_cache_misses_total"], one["memory_cache_misses_total"])

    def test_upsert_observes_its_value_size(self):
        before = scrape(self.server)
        self.upsert(self.server, "size", "k", {"a": "x" * 100})  # {"a":"x...x"}: 108 bytes
        after = scrape(self.server)
        b = lambda m, le: m[label("memory_value_size_bytes_bucket", le=le)]
        self.assertEqual(after["memory_value_size_bytes_count"],
                         before["memory_value_size_bytes_count"] + 1)
        self.assertEqual(b(after, "64"), b(before, "64"))
        self.assertEqual(b(after, "256"), b(before, "256") + 1)
        self.assertEqual(b(after, "+Inf"), b(before, "+Inf") + 1)
        grown = after["memory_value_size_bytes_sum"] - before["memory_value_size_bytes_sum"]
        self.assertTrue(100 < grown <= 256, grown)

    def test_sweeper_reclaims_expired_pins_and_counts_them(self):
        s = self.fresh_server({"PINS_SWEEP_INTERVAL_SECONDS": "1"})
        self.assertEqual(scrape(s)["memory_pins_sweep_interval_seconds"], 1)
        for i in range(3):
            self.upsert(s, "sweep", "k%d" % i, ttl=1)
        m = self.poll(s, lambda m: m["memory_pins_expired_reclaimed_total"] >= 3,
                      "three expired pins reclaimed")
        self.assertEqual(m["memory_pins_expired_reclaimed_total"], 3)
        self.assertGreaterEqual(m[label("memory_pins_sweep_batches_total", status="success")], 1)
        self.assertEqual(m[label("memory_pins_sweep_batches_total", status="error")], 0)
        # Each pass now leaves nothing behind: the lag falls back to about 0 after every pass.
        self.poll(s, lambda m: m["memory_pins_sweep_lag_seconds"] < 0.5, "sweep lag back to ~0")
        with closing(s.client()) as c:
            listed = c.call(mp("ListPins"), {"tenant_id": "sweep", "include_expired": True})
        self.assertEqual(len(listed.pins), 0)

    def assertCountedOnce(self, before, after, protocol, code):
        """rpc_requests_total grew by exactly one call, under protocol and code."""
        for p in PROTOCOLS:
            for c in GRPC_CODES:
                series = label("rpc_requests_total", protocol=p, grpc_code=c)
                want = before[series] + (1 if (p, c) == (protocol, code) else 0)
                self.assertEqual(after[series], want, series)
        series = label("rpc_request_duration_seconds_count", protocol=protocol)
        self.assertEqual(after[series], before[series] + 1)

    @unittest.skipUnless(CURL, "curl not installed")
    def test_rpcs_are_counted_by_protocol(self):
        s = self.server
        self.upsert(s, "proto", "k")
        get = new_request(mp("GetPin"), {"tenant_id": "proto", "key": "k"}).SerializeToString()

        before = scrape(s)
        with closing(s.client()) as c:
            c.call(mp("GetPin"), {"tenant_id": "proto", "key": "k"})
        after = scrape(s)
        self.assertCountedOnce(before, after, "grpc", "OK")

        before = after
        r = curl(s.port, "POST", mp("GetPin"), "--http1.1", '{"tenantId":"proto","key":"absent"}',
                 ("Content-Type: application/json", "Connect-Protocol-Version: 1"))
        self.assertEqual(r.status, 404, r)
        after = scrape(s)
        self.assertCountedOnce(before, after, "connect", "NOT_FOUND")

        before = after
        r = curl(s.port, "POST", mp("GetPin"), "--http2-prior-knowledge", envelope(get),
                 ("Content-Type: application/grpc-web+proto", "X-Grpc-Web: 1"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(grpcweb_trailers(envelopes(r.body)[-1][1])["grpc-status"], "0")
        after = scrape(s)
        self.assertCountedOnce(before, after, "grpc_web", "OK")

        before = after
        r = curl(s.port, "GET", "/api/v1/memory/pins/k?tenant_id=proto", "--http1.1")
        self.assertEqual(r.status, 200, r)
        after = scrape(s)
        self.assertCountedOnce(before, after, "rest", "OK")

    def test_calls_refused_on_their_headers_are_rbac_decisions_not_rpcs(self):
        """RBAC_ENFORCE=true refuses a call without credentials on its headers, before a mapping
        begins it (no body is read): it is an RBAC denial and an HTTP 403/401, not an RPC, as in
        grpc_server_handled_total."""
        s = self.fresh_server({"RBAC_ENFORCE": "true", "MACHINE_SECRET_TOKEN": "t" * 32})
        denied = label("rbac_decisions_total", resource="memory_pin", action="write",
                       decision="denied", reason="no-credentials")
        for path, body, headers, status in (
                ("/api/v1/memory/pins", '{"tenant_id":"t","key":"k","value":{}}',
                 ("Content-Type: application/json",), 403),
                (mp("UpsertPin"), '{"tenantId":"t","key":"k","value":{}}',
                 ("Content-Type: application/json", "Connect-Protocol-Version: 1"), 401)):
            before = scrape(s)
            r = curl(s.port, "POST", path, "--http1.1", body, headers)
            self.assertEqual(r.status, status, r)
            after = scrape(s)
            self.assertEqual(after[denied], before.get(denied, 0) + 1)
            rpcs = [k for k in after if k.startswith("rpc_requests_total") and after[k] != before[k]]
            self.assertEqual(rpcs, [], path)

    def test_throttled_tenants_counts_distinct_refused_tenants(self):
        s = self.fresh_server({"RATE_LIMIT_RPM": "2"})
        self.assertEqual(scrape(s)["rate_limit_throttled_tenants"], 0)

        def exhaust(tenant):
            codes = []
            with closing(s.client()) as c:
                for _ in range(4):  # the burst is the RPM: the third call is refused
                    try:
                        c.call(mp("GetPin"), {"tenant_id": tenant, "key": "k"})
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as e:
                        codes.append(e.code())
            self.assertIn(grpc.StatusCode.RESOURCE_EXHAUSTED, codes)

        exhaust("rl-a")
        m = scrape(s)
        self.assertEqual(m["rate_limit_throttled_tenants"], 1)
        self.assertGreaterEqual(m[label("rate_limit_decisions_total", decision="limited",
                                        backend="local")], 1)
        exhaust("rl-a")
        self.assertEqual(scrape(s)["rate_limit_throttled_tenants"], 1)
        exhaust("rl-b")
        self.assertEqual(scrape(s)["rate_limit_throttled_tenants"], 2)

    def test_an_open_watch_stream_is_counted(self):
        s = self.server
        before = scrape(s)
        self.assertEqual(before["watch_streams_active"], 0)
        with closing(s.client()) as c:
            stream = c.server_stream(mp("WatchPins"), {"tenant_id": "watched"}, timeout=30)
            try:
                self.poll(s, lambda m: m["watch_streams_active"] == 1, "the stream is counted")
                self.upsert(s, "watched", "k")
                event = next(stream)
                self.assertEqual(event.pin.key, "k")
                m = self.poll(s, lambda m: m["watch_events_sent_total"]
                              == before["watch_events_sent_total"] + 1, "the event is counted")
                self.assertEqual(m["watch_streams_active"], 1)
            finally:
                stream.cancel()
            self.poll(s, lambda m: m["watch_streams_active"] == 0, "the stream is gone")
        # The stream the client cancelled is an RPC ended CANCELLED, but its lifetime is no
        # latency: the duration histogram counts the upsert above and not the stream.
        cancelled = 'rpc_requests_total{protocol="grpc",grpc_code="CANCELLED"}'
        handled = ('grpc_server_handled_total{grpc_service="memorypins.v1.MemoryPins",'
                   'grpc_method="WatchPins",grpc_code="CANCELLED"}')
        m = self.poll(s, lambda m: m[cancelled] == before[cancelled] + 1, "the stream is counted")
        self.assertEqual(m.get(handled, 0), before.get(handled, 0) + 1)
        durations = 'rpc_request_duration_seconds_count{protocol="grpc"}'
        self.assertEqual(m[durations], before[durations] + 1)

    def test_readiness_backend_and_build_info(self):
        m = scrape(self.server)
        self.assertEqual(m["pins_ready"], 1)
        self.assertEqual(m[label("store_info", backend="sqlite")], 1)
        self.assertNotIn(label("store_info", backend="postgres"), m)
        self.assertEqual(len([k for k in m if k.startswith("pins_build_info{")]), 1)

    @unittest.skipUnless(os.access(PROMTOOL, os.X_OK), "promtool not installed at %s" % PROMTOOL)
    def test_promtool_finds_no_problem_in_the_exposition(self):
        s = self.server
        self.upsert(s, "lint", "k")
        with closing(s.client()) as c:
            c.call(mp("GetPin"), {"tenant_id": "lint", "key": "k"})
            self.assertRpcError(grpc.StatusCode.NOT_FOUND, c.call, mp("GetPin"),
                                {"tenant_id": "lint", "key": "absent"})
        text = scrape_text(s.port)
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode("utf-8"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        report = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, report)
        self.assertEqual(report.strip(), "")


if __name__ == "__main__":
    unittest.main()
