"""The per-tenant rate limiter against a running pinsd and a real redis-server (API.md 5, 7, 9).

Each test starts its own redis-server (Debian's, on a free loopback port, no persistence, in a
temporary directory) and stops it by PID, also on failure. gRPC through grpcio, REST through curl.
Every loop is bounded in count and time.

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_ratelimit   (from tests/interop)
"""

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import grpc

import harness
from harness import ServerTestCase, mp

SC = grpc.StatusCode
CURL = shutil.which("curl")
REDIS_SERVER = shutil.which("redis-server")
RATELIMIT_RE = re.compile(r"^limit=(\d+), remaining=(\d+), reset=(\d+)$")


class Redis:
    """One redis-server on a loopback port; stop() by PID."""

    def __init__(self, port=None):
        self.port = port or harness.free_port()
        self.dir = tempfile.mkdtemp(prefix="pinsd-redis-", dir="/tmp")
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self, timeout=10.0):
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING on port %d" % self.port)

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self):
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args):
        """One command over RESP; returns a str, int, list or None (a minimal client)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a.encode() if isinstance(a, str) else a
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            return self._read(f)

    def _read(self, f):
        line = f.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise RuntimeError("unexpected RESP reply %r" % line)


def upsert(tenant, key):
    return {"tenant_id": tenant, "key": key, "value": {"v": 1}}


def trailing(err_or_call):
    return {k: v for k, v in (err_or_call.trailing_metadata() or ())}


def metrics(server):
    c = server.h2()
    try:
        return c.get("/metrics").data.decode("utf-8")
    finally:
        c.close()


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def ready(server):
    c = server.h2()
    try:
        return harness.json_body(c.get("/ready"))
    finally:
        c.close()


def redis_check(server, want="ok", timeout=10.0):
    """/ready's Redis check once it reads want, or as it reads after timeout seconds. pinsd's
    workers connect to Redis on their loops after pinsd listens, so right after start-up (or
    after Redis comes back) the check may still read "down (fail-open)" for a moment."""
    t0 = time.monotonic()
    got = ready(server)["checks"]["redis"]
    while got != want and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
        got = ready(server)["checks"]["redis"]
    return got


def curl(server, method, path, body=None, timeout=10):
    """(status, headers {lower name: value}, body bytes) over HTTP/1.1."""
    cmd = [CURL, "-sS", "--http1.1", "-D", "-", "-X", method, "-m", str(timeout),
           "http://127.0.0.1:%d%s" % (server.port, path)]
    if body is not None:
        cmd += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5,
                         check=True).stdout
    head, _, data = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, data


@unittest.skipUnless(REDIS_SERVER, "redis-server is not installed")
class RateLimitTest(ServerTestCase):
    SERVER_ENV = {"RATE_LIMIT_RPM": "0"}  # the class server is unused; tests start their own

    def redis(self, port=None):
        r = Redis(port)
        self.addCleanup(r.cleanup)
        return r.start()

    def storm(self, client, tenant, n, max_seconds=60):
        """n rapid upserts of tenant; returns (accepted, refused errors, seconds)."""
        ok, refused = 0, []
        t0 = time.monotonic()
        for i in range(n):
            if time.monotonic() - t0 > max_seconds:
                self.fail("storm exceeded %d s after %d calls" % (max_seconds, i))
            try:
                client.call(mp("UpsertPin"), upsert(tenant, "k%d" % (i % 10)), timeout=10)
                ok += 1
            except grpc.RpcError as e:
                self.assertEqual(e.code(), SC.RESOURCE_EXHAUSTED, e.details())
                refused.append(e)
        return ok, refused, time.monotonic() - t0

    def assert_limit_metadata(self, md, limit, burst, refused):
        self.assertEqual(md.get("x-ratelimit-limit"), str(limit))
        policy = "%d;w=60" % limit if burst == limit else "%d;w=60;burst=%d" % (limit, burst)
        self.assertEqual(md.get("ratelimit-policy"), policy)
        m = RATELIMIT_RE.match(md.get("ratelimit", ""))
        self.assertIsNotNone(m, md)
        self.assertEqual(int(m.group(1)), limit)
        self.assertEqual(md.get("x-ratelimit-remaining"), m.group(2))
        if refused:
            self.assertGreaterEqual(int(md.get("retry-after", "0")), 1)
        else:
            self.assertNotIn("retry-after", md)

    # (1)
    def test_pin_storm_accepts_exactly_the_burst_and_spares_other_tenants(self):
        r = self.redis()
        for backend, env in (("redis", {"REDIS_URL": r.url}), ("local", {})):
            with self.subTest(backend=backend):
                # 6 a minute: one token refills every 10 s, so a slow (sanitizer) run cannot see a
                # refill between the storm and the REST check below.
                env = dict(env, RATE_LIMIT_RPM="6", RATE_LIMIT_BURST="100")
                s = self.fresh_server(env)
                c = s.client()
                try:
                    if backend == "redis":
                        self.assertEqual(redis_check(s), "ok")
                    ok, refused, secs = self.storm(c, "storm-" + backend, 1000)
                    # Exactly the burst, plus what refilled during the storm (one per 10 s).
                    self.assertGreaterEqual(ok, 100)
                    self.assertLessEqual(ok, 100 + math.ceil(secs / 10) + 1)
                    self.assertLessEqual(ok, 110)  # within 1% of the 1000 calls
                    self.assertEqual(len(refused), 1000 - ok)
                    self.assert_limit_metadata(trailing(refused[-1]), 6, 100, True)
                    self.assertIn("rate limit exceeded", refused[-1].details())
                    # Another tenant is unaffected.
                    _, call = c.call(mp("UpsertPin"), upsert("calm-" + backend, "k"),
                                     with_call=True)
                    md = trailing(call)
                    self.assert_limit_metadata(md, 6, 100, False)
                    self.assertEqual(md["x-ratelimit-remaining"], "99")
                    text = metrics(s)
                    self.assertGreaterEqual(metric(
                        text, 'rate_limit_decisions_total{decision="limited",backend="%s"}'
                        % backend) or 0, 1000 - ok)
                    # REST: 429 with the exact body shape and the headers.
                    if CURL:
                        st, h, body = curl(s, "POST", "/api/v1/memory/pins",
                                           upsert("storm-" + backend, "rest"))
                        self.assertEqual(st, 429, body)
                        doc = json.loads(body)
                        self.assertEqual(set(doc), {"detail", "code", "message"})
                        self.assertEqual(set(doc["detail"]), {"error", "limit", "retry_after"})
                        self.assertEqual(doc["detail"]["error"], "rate_limit_exceeded")
                        self.assertEqual(doc["detail"]["limit"], 6)
                        self.assertIsInstance(doc["detail"]["retry_after"], int)
                        self.assertGreaterEqual(doc["detail"]["retry_after"], 1)
                        self.assertEqual(doc["code"], 8)
                        self.assertIsInstance(doc["message"], str)
                        self.assertEqual(h.get("retry-after"), str(doc["detail"]["retry_after"]))
                        self.assert_limit_metadata(h, 6, 100, True)
                        st, h, body = curl(s, "POST", "/api/v1/memory/pins",
                                           upsert("calm-" + backend, "rest"))
                        self.assertEqual(st, 201, body)
                        self.assert_limit_metadata(h, 6, 100, False)
                finally:
                    c.close()
                    s.cleanup()

    # (2)
    def test_two_processes_sharing_redis_share_the_limit(self):
        r = self.redis()
        env = {"REDIS_URL": r.url, "RATE_LIMIT_RPM": "60", "RATE_LIMIT_BURST": "50"}
        a, b = self.fresh_server(env), self.fresh_server(env)
        ca, cb = a.client(), b.client()
        try:
            per = {"a": 0, "b": 0}
            t0 = time.monotonic()
            for i in range(200):
                name, c = ("a", ca) if i % 2 == 0 else ("b", cb)
                try:
                    c.call(mp("UpsertPin"), upsert("shared", "k%d" % (i % 5)))
                    per[name] += 1
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), SC.RESOURCE_EXHAUSTED, e.details())
            secs = time.monotonic() - t0
            total = per["a"] + per["b"]
            # One burst between both processes (each alone would have accepted 50).
            self.assertGreaterEqual(total, 50)
            self.assertLessEqual(total, 50 + math.ceil(secs) + 1)
            self.assertGreater(per["a"], 10)
            self.assertGreater(per["b"], 10)
            self.assertEqual(r.command("EXISTS", "pinsd:rl:{shared}"), 1)
            self.assertGreater(r.command("PTTL", "pinsd:rl:{shared}"), 0)
        finally:
            ca.close()
            cb.close()

    # (3)
    def test_redis_killed_mid_load_fails_open_and_sharing_resumes_after_restart(self):
        r = self.redis()
        port = r.port
        env = {"REDIS_URL": r.url, "RATE_LIMIT_RPM": "100000", "RATE_LIMIT_BURST": "100000"}
        s = self.fresh_server(env)
        c = s.client()
        try:
            self.assertEqual(redis_check(s), "ok")
            failures = 0
            t0 = time.monotonic()
            for i in range(400):
                self.assertLess(time.monotonic() - t0, 60, "load loop took too long")
                if i == 150:
                    r.stop(signal.SIGKILL)
                try:
                    c.call(mp("UpsertPin"), upsert("chaos", "k%d" % (i % 7)), timeout=5)
                except grpc.RpcError:
                    failures += 1
            self.assertEqual(failures, 0)
            text = metrics(s)
            self.assertEqual(metric(text, "rate_limit_redis_up"), 0.0)
            self.assertGreater(metric(
                text, 'rate_limit_decisions_total{decision="allowed",backend="local"}') or 0, 0)
            doc = ready(s)
            self.assertTrue(doc["ready"])
            self.assertEqual(doc["checks"]["redis"], "down (fail-open)")

            r2 = self.redis(port)
            t1 = time.monotonic()
            self.assertEqual(redis_check(s, timeout=5.0), "ok")
            self.assertLess(time.monotonic() - t1, 5.0)
            before = metric(metrics(s), 'rate_limit_decisions_total{decision="allowed",'
                                        'backend="redis"}') or 0
            for i in range(5):
                c.call(mp("UpsertPin"), upsert("after-restart", "k"))
            self.assertEqual(r2.command("EXISTS", "pinsd:rl:{after-restart}"), 1)
            after = metric(metrics(s), 'rate_limit_decisions_total{decision="allowed",'
                                       'backend="redis"}')
            self.assertEqual(after - before, 5)
            self.assertEqual(metric(metrics(s), "rate_limit_redis_up"), 1.0)
        finally:
            c.close()

    # (4)
    def test_rpm_zero_disables_limiting_and_headers(self):
        r = self.redis()
        s = self.fresh_server({"RATE_LIMIT_RPM": "0", "RATE_LIMIT_BURST": "1",
                               "REDIS_URL": r.url})
        c = s.client()
        try:
            for i in range(300):
                _, call = c.call(mp("UpsertPin"), upsert("free", "k%d" % (i % 3)),
                                 with_call=True)
            md = trailing(call)
            for name in ("ratelimit", "ratelimit-policy", "x-ratelimit-limit",
                         "x-ratelimit-remaining", "retry-after"):
                self.assertNotIn(name, md)
            text = metrics(s)
            self.assertGreaterEqual(metric(
                text, 'rate_limit_decisions_total{decision="allowed",backend="disabled"}'), 300)
            self.assertEqual(ready(s)["checks"]["redis"], "disabled")
            self.assertEqual(r.command("DBSIZE"), 0)  # Redis is not even contacted
            if CURL:
                st, h, body = curl(s, "POST", "/api/v1/memory/pins", upsert("free", "rest"))
                self.assertEqual(st, 201, body)
                self.assertFalse([k for k in h if "ratelimit" in k or k == "retry-after"], h)
        finally:
            c.close()

    # (5)
    def test_hung_redis_holds_calls_at_most_the_wait_then_the_local_bucket_decides(self):
        r = self.redis()
        env = {"REDIS_URL": r.url, "RATE_LIMIT_RPM": "100000", "RATE_LIMIT_BURST": "100000"}
        s = self.fresh_server(env)
        c = s.client()
        stopped = False
        try:
            self.assertEqual(redis_check(s), "ok")
            c.call(mp("UpsertPin"), upsert("hung", "k"))  # spends the tenant's first lease
            os.kill(r.proc.pid, signal.SIGSTOP)  # Redis accepts bytes but never answers
            stopped = True
            # Waves of concurrent calls: each waits for a lease request Redis does not answer,
            # at most RATELIMIT_WAIT_MS (50 ms), then the local bucket lets it through; after 20
            # such waits the worker drops the connection and decides at once.
            t0 = time.monotonic()
            waits = []
            for wave in range(6):
                t1 = time.monotonic()
                self.assertLess(t1 - t0, 60, "waves took too long")
                futs = [c.future(mp("GetPin"), {"tenant_id": "hung", "key": "k"}, timeout=5)
                        for _ in range(8)]
                for f in futs:
                    f.result()
                    self.assert_limit_metadata(trailing(f), 100000, 100000, False)
                waits.append(time.monotonic() - t1)
            self.assertGreaterEqual(waits[0], 0.04, waits)  # the first wave did wait for Redis
            self.assertLess(max(waits), 2.0, waits)
            self.assertGreaterEqual(metric(
                metrics(s), 'rate_limit_decisions_total{decision="allowed",backend="local"}') or 0,
                48)
            os.kill(r.proc.pid, signal.SIGCONT)
            stopped = False
            self.assertEqual(redis_check(s), "ok")
            before = metric(metrics(s), 'rate_limit_decisions_total{decision="allowed",'
                                        'backend="redis"}') or 0
            for _ in range(3):
                c.call(mp("GetPin"), {"tenant_id": "hung", "key": "k"})
            after = metric(metrics(s), 'rate_limit_decisions_total{decision="allowed",'
                                       'backend="redis"}')
            self.assertEqual(after - before, 3)
        finally:
            if stopped:
                os.kill(r.proc.pid, signal.SIGCONT)
            c.close()


if __name__ == "__main__":
    unittest.main()
