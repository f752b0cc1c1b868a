"""pinsctl bench (tools/pinsctl/bench*.c) against a real pinsd.

Each run is a real `pinsctl bench --json` process; its own counts are checked against themselves
(requests sent = answers = -n) and against what pinsd counted in /metrics over the same run
(grpc_server_handled_total by method and code, memory_pins_operations_total by operation): the
mix, op by op; --rate pacing (the achieved rate, and the arrivals pinsd counted in windows of
about 100 ms); --conflicts (ABORTED counted apart from errors); a zipfian run (the hot key's
version against the cold keys'); mutual TLS with RBAC enforced and the machine token from the
environment (and without it: refusals counted); a run across a pinsd restart (SIGTERM: drain and
GOAWAY, then a new process on the same port); exit statuses 2 and 3; the per-second latency of
the timeline and the stall figures against the run's own (and the text report's --timeline).

Run: PINSD_BIN=build/pinsd PINSCTL_BIN=build/pinsctl /usr/bin/python3 -m unittest -v test_pinsctl_bench
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.request

import grpc

import harness
from harness import ServerTestCase, mp
from test_rbac import ENFORCED, MACHINE
import test_tls

PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(
    os.path.dirname(harness.PINSD_BIN), "pinsctl")

_CTL_VARS = ("MACHINE_SECRET_TOKEN", "PINS_TOKEN", "PINS_ADDR")
SERIES_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
OPS = ("get", "put", "list", "delete")
METHOD_OF = {"get": "GetPin", "put": "UpsertPin", "list": "ListPins", "delete": "DeletePin"}
OPERATION_OF = {"get": "get", "put": "upsert", "list": "list", "delete": "delete"}
LATENCY_FIELDS = ("count", "min", "mean", "p50", "p90", "p99", "p99.9", "max")
TOP_FIELDS = ("addr", "connections", "streams", "target_rate", "requests_target",
              "duration_target_s", "warmup_s", "mix", "keys", "tenants", "dist", "zipf_s",
              "value_size", "list_limit", "conflicts", "seed", "key_prefix", "tenant_prefix",
              "prefill", "duration_s", "requests", "answers", "ok", "errors", "aborted",
              "conflicts_sent", "failed_locally", "unanswered", "rps", "errors_by_code",
              "failed_locally_by_code", "ops", "latency_us", "timeline", "stall")
SECOND_FIELDS = ("ok", "errors", "failed_locally", "p50_ms", "p99_ms", "p99.9_ms", "max_ms")
STALL_FIELDS = ("run_p99_ms", "worst_second", "worst_p99_ms", "ratio", "seconds_over_3x",
                "seconds_considered", "min_answers", "complete_until_s")
OP_FIELDS = ("sent", "answers", "ok", "errors", "aborted", "failed_locally", "rps", "latency_us")


def run_bench(args, timeout=120, env=None):
    if not os.path.exists(PINSCTL):
        if os.environ.get("PINSCTL_BIN"):
            raise RuntimeError("PINSCTL_BIN=%s does not exist" % PINSCTL)
        raise unittest.SkipTest("pinsctl not found at %s (set PINSCTL_BIN)" % PINSCTL)
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k not in _CTL_VARS}
    env.update(extra)
    return subprocess.run([PINSCTL, "bench"] + list(args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def metrics(port):
    """{series: value} of pinsd's /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode("utf-8")
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES_RE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def handled(m, method, code=None):
    """grpc_server_handled_total of a MemoryPins method, one code or all."""
    prefix = ('grpc_server_handled_total{grpc_service="memorypins.v1.MemoryPins",'
              'grpc_method="%s",grpc_code="' % method)
    total = 0
    for k, v in m.items():
        if k.startswith(prefix) and (code is None or k == prefix + code + '"}'):
            total += v
    return int(total)


def operations(m, operation, status):
    return int(m.get('memory_pins_operations_total{operation="%s",status="%s"}'
                     % (operation, status), 0))


def delta(before, after, fn, *args):
    return fn(after, *args) - fn(before, *args)


class BenchTest(ServerTestCase):
    """One pinsd (SQLite, two workers, no rate limit) for the count-checking runs."""

    def bench_json(self, args, port=None, timeout=120):
        r = run_bench(["--addr", "127.0.0.1:%d" % (port or self.server.port), "--json"]
                      + list(args), timeout=timeout)
        self.assertEqual(r.returncode, 0, "pinsctl bench failed:\n%s\n%s" % (r.stdout, r.stderr))
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1, "one JSON object on one line: %r" % r.stdout)
        return json.loads(lines[0])

    def assertOwnCounts(self, rep, n=None):
        """The report agrees with itself: sent = answers (+ unanswered) and the sums add up."""
        if n is not None:
            self.assertEqual(rep["requests"], n)
        self.assertEqual(rep["unanswered"], 0)
        self.assertEqual(rep["failed_locally"], 0)
        self.assertEqual(rep["answers"], rep["requests"])
        self.assertEqual(rep["answers"], rep["ok"] + rep["errors"] + rep["aborted"])
        self.assertEqual(rep["requests"], sum(rep["ops"][op]["sent"] for op in OPS))
        self.assertEqual(rep["errors"], sum(rep["errors_by_code"].values()))
        for op in OPS:
            o = rep["ops"][op]
            self.assertEqual(o["sent"], o["answers"], op)
            self.assertEqual(o["answers"], o["ok"] + o["errors"] + o["aborted"], op)
        self.assertEqual(rep["latency_us"]["count"], rep["answers"])
        self.assertEqual(sum(t["ok"] for t in rep["timeline"]), rep["ok"])
        self.assertEqual(sum(t["errors"] for t in rep["timeline"]),
                         rep["errors"] + rep["aborted"])

    def test_counts_agree_with_pinsd_op_by_op(self):
        n = 3000
        mix = {"get": 50, "put": 30, "list": 10, "delete": 10}
        self.bench_json(["--prefill", "--keys", "200", "-n", "1"])  # every key exists
        before = metrics(self.server.port)
        rep = self.bench_json(["-n", str(n), "-c", "3", "-m", "8", "--keys", "200",
                               "--mix", ",".join("%s=%d" % kv for kv in mix.items())])
        after = metrics(self.server.port)
        self.assertOwnCounts(rep, n)
        for op, w in mix.items():
            o = rep["ops"][op]
            # The mix is exact: within 1% of the weights (here to the call).
            self.assertLessEqual(abs(o["sent"] - n * w / 100), n * 0.01, op)
            # pinsd counted every call of the run, by method and code.
            self.assertEqual(delta(before, after, handled, METHOD_OF[op]), o["sent"], op)
            self.assertEqual(delta(before, after, handled, METHOD_OF[op], "OK"), o["ok"], op)
            self.assertEqual(delta(before, after, handled, METHOD_OF[op], "NOT_FOUND"),
                             rep["ops"][op]["errors"], op)  # deletes make later reads miss
            served = sum(delta(before, after, operations, OPERATION_OF[op], s)
                         for s in ("success", "not_found"))
            self.assertEqual(served, o["sent"], op)
            self.assertEqual(delta(before, after, operations, OPERATION_OF[op], "success"),
                             o["ok"], op)
        self.assertEqual(set(rep["errors_by_code"]) - {"NOT_FOUND"}, set())

    def test_json_report_has_every_field(self):
        rep = self.bench_json(["-n", "200", "--mix", "get=1,put=1", "--warmup", "200ms",
                               "--dist", "zipfian", "--tenants", "2", "--seed", "7"])
        self.assertOwnCounts(rep, 200)
        for f in TOP_FIELDS:
            self.assertIn(f, rep)
        for op in OPS:
            for f in OP_FIELDS:
                self.assertIn(f, rep["ops"][op], op)
            for f in LATENCY_FIELDS:
                self.assertIn(f, rep["ops"][op]["latency_us"], op)
        lat = rep["latency_us"]
        for f in LATENCY_FIELDS:
            self.assertIn(f, lat)
        self.assertTrue(0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
                        <= lat["p99.9"] <= lat["max"], lat)
        self.assertTrue(lat["min"] <= lat["mean"] <= lat["max"], lat)
        self.assertEqual(rep["mix"], {"get": 1, "put": 1, "list": 0, "delete": 0})
        self.assertEqual(rep["dist"], "zipfian")
        self.assertEqual(rep["seed"], 7)
        self.assertIsNone(rep["target_rate"])
        self.assertGreater(rep["rps"], 0)
        self.assertEqual(rep["ops"]["put"]["ok"], 100)
        # The text report names the same numbers.
        r = run_bench(["--addr", self.server.target, "-n", "50"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"requests: 50 sent, 50 answered, 0 failed locally, 0 unanswered")
        self.assertRegex(r.stdout, r"p99\.9")

    def test_timeline_has_per_second_latency_and_stall(self):
        secs, rate = 3, 300
        rep = self.bench_json(["-d", "%ds" % secs, "-r", str(rate), "-c", "2", "-m", "8"])
        self.assertOwnCounts(rep)
        tl = rep["timeline"]
        # One entry per second of the run, by the answers' arrival: the last one holds the
        # answers that came after the sending ended, if any.
        self.assertGreaterEqual(len(tl), secs, tl)
        self.assertLessEqual(len(tl), secs + 2, tl)
        run_max_ms = rep["latency_us"]["max"] / 1e3
        run_p99_ms = rep["latency_us"]["p99"] / 1e3
        for i, t in enumerate(tl):
            for f in SECOND_FIELDS:
                self.assertIn(f, t, i)
            if t["ok"] + t["errors"] == 0:
                self.assertTrue(all(t[f] is None for f in ("p50_ms", "p99_ms", "p99.9_ms",
                                                          "max_ms")), t)
                continue
            self.assertTrue(0 < t["p50_ms"] <= t["p99_ms"] <= t["p99.9_ms"] <= t["max_ms"], t)
            self.assertLessEqual(t["max_ms"], run_max_ms + 0.002, (i, t, run_max_ms))
        # The slowest answer is in some second.
        self.assertAlmostEqual(max(t["max_ms"] or 0 for t in tl), run_max_ms, delta=0.002)
        stall = rep["stall"]
        for f in STALL_FIELDS:
            self.assertIn(f, stall)
        self.assertEqual(stall["min_answers"], 20)
        self.assertAlmostEqual(stall["run_p99_ms"], run_p99_ms, delta=0.002)
        # The seconds that count: complete ones (ended by the end of sending, -d here, or by
        # the last answer) with 20+ answers: every second of -d, not the drain after it.
        self.assertAlmostEqual(stall["complete_until_s"], max(secs, rep["duration_s"]),
                               delta=1e-5)
        counted = [i for i, t in enumerate(tl)
                   if t["ok"] + t["errors"] >= 20 and i + 1 <= stall["complete_until_s"]]
        self.assertEqual(stall["seconds_considered"], len(counted), (stall, tl))
        self.assertEqual(counted, list(range(secs)), (stall, tl))
        worst = max(tl[i]["p99_ms"] for i in counted)
        self.assertIn(stall["worst_second"], counted)
        self.assertAlmostEqual(stall["worst_p99_ms"], worst, delta=0.0015)
        self.assertAlmostEqual(tl[stall["worst_second"]]["p99_ms"], worst, delta=0.0015)
        self.assertAlmostEqual(stall["ratio"], worst / stall["run_p99_ms"],
                               delta=0.002 + 0.002 * stall["ratio"])
        self.assertEqual(stall["seconds_over_3x"],
                         sum(1 for i in counted if tl[i]["p99_ms"] > 3 * stall["run_p99_ms"]
                             + 0.0015), (stall, tl))
        # The text report says the same, and --timeline lists the seconds.
        r = run_bench(["--addr", self.server.target, "-d", "2s", "-r", "200", "--timeline"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"per second: worst p99 [0-9.]+ ms in second \d+ \([0-9.]+ x "
                         r"the run's p99\), \d+ seconds? over 3x")
        rows = re.findall(r"^ +(\d+) +(\d+) +\d+ +\d+ +([0-9.]+) +([0-9.]+) +([0-9.]+)",
                          r.stdout, re.M)
        self.assertGreaterEqual(len(rows), 2, r.stdout)
        self.assertEqual([int(row[0]) for row in rows], list(range(len(rows))), r.stdout)

    def test_warmup_is_not_counted(self):
        before = metrics(self.server.port)
        rep = self.bench_json(["-n", "300", "--warmup", "500ms", "-m", "2"])
        after = metrics(self.server.port)
        self.assertOwnCounts(rep, 300)
        self.assertGreater(delta(before, after, handled, "GetPin"), 300)

    def test_rate_is_paced_evenly(self):
        rate, secs = 400, 4
        samples = []  # (monotonic time, GetPin calls pinsd started so far)
        stop = threading.Event()
        key = ('grpc_server_started_total{grpc_service="memorypins.v1.MemoryPins",'
               'grpc_method="GetPin"}')

        def sampler():
            while not stop.is_set() and len(samples) < 2000:
                t0 = time.monotonic()
                v = metrics(self.server.port).get(key, 0)
                samples.append(((t0 + time.monotonic()) / 2, v))
                stop.wait(0.1)

        env = {k: v for k, v in os.environ.items() if k not in _CTL_VARS}
        th = threading.Thread(target=sampler)
        th.start()
        proc = subprocess.Popen(
            [PINSCTL, "bench", "--addr", self.server.target, "--json", "-d", "%ds" % secs,
             "-r", str(rate), "-c", "2", "-m", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            # A stall of bench in the middle of the run, as a loaded machine makes one: the
            # pacer then sends the overdue calls at once. The checks below must hold anyway.
            time.sleep(2)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.3)
            proc.send_signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)
            stop.set()
            th.join(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        rep = json.loads(out)
        self.assertOwnCounts(rep)
        self.assertEqual(rep["target_rate"], rate)
        # The achieved rate is the target's over the scheduled span: the schedule sends
        # rate x duration calls, stall or not.
        self.assertLessEqual(abs(rep["requests"] - rate * secs), rate * secs * 0.02)
        # req/s is measured up to the last answer: a slow last answer (up to 1 s here) lowers
        # it, nothing raises it past the target.
        self.assertLessEqual(rep["rps"], rate * 1.05, rep["rps"])
        self.assertGreaterEqual(rep["rps"], rate * secs / (secs + 1.0) * 0.98, rep["rps"])
        # Arrivals at pinsd are even: windows of about 100 ms between two scrapes, inside the
        # run. Their median rate is the target's, and at most a few windows (the stall above,
        # and one more the machine's own) hold more than twice their share.
        windows = []
        for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
            if v0 == 0 or v1 - v0 == 0:
                continue  # before the first or after the last call of the run
            windows.append((t1 - t0, v1 - v0))
        self.assertGreater(len(windows), secs * 4, "too few scrapes: %r" % windows)
        inner = windows[1:-1]  # the first and last windows hold the run's edges
        rates = sorted(n / dt for dt, n in inner)
        median = rates[len(rates) // 2]
        self.assertLessEqual(abs(median - rate), rate * 0.15, "median %.0f/s: %r" % (median, inner))
        bursts = [(dt, n) for dt, n in inner if n > 2 * rate * dt + 2]
        self.assertLessEqual(len(bursts), max(3, len(inner) // 10),
                             "bursts %r of windows %r" % (bursts, inner))

    def test_conflicts_are_counted_apart(self):
        before = metrics(self.server.port)
        rep = self.bench_json(["-n", "1000", "--mix", "put=100", "--keys", "20", "--prefill",
                               "--conflicts", "0.2", "--key-prefix", "conflict-"])
        after = metrics(self.server.port)
        self.assertOwnCounts(rep, 1000)
        self.assertGreater(rep["aborted"], 0)
        self.assertEqual(rep["errors"], 0, rep["errors_by_code"])  # ABORTED is not an error
        self.assertNotIn("ABORTED", rep["errors_by_code"])
        self.assertEqual(rep["ops"]["put"]["aborted"], rep["aborted"])
        # Only puts, no deletes: every stale put is refused.
        self.assertEqual(rep["aborted"], rep["conflicts_sent"])
        self.assertLessEqual(abs(rep["conflicts_sent"] - 200), 20)
        self.assertEqual(delta(before, after, handled, "UpsertPin", "ABORTED"), rep["aborted"])
        self.assertEqual(delta(before, after, handled, "UpsertPin", "OK"),
                         rep["ok"] + 20)  # + the prefill

    def test_zipfian_touches_hot_keys_far_more(self):
        n, keys = 3000, 100
        rep = self.bench_json(["-n", str(n), "--mix", "put=100", "--keys", str(keys),
                               "--prefill", "--dist", "zipfian", "--zipf-s", "0.99",
                               "--key-prefix", "zipf-", "-m", "4"])
        self.assertOwnCounts(rep, n)
        self.assertEqual(rep["ok"], n)

        def version(k):
            resp = self.client.call(mp("GetPin"), {"tenant_id": "bench-t0", "key": "zipf-%d" % k})
            return resp.pin.version

        h = sum((r + 1) ** -0.99 for r in range(keys))
        v0 = version(0)
        # The hottest key took its zipfian share of the puts (theory: n / H ~ 580), +1 for the
        # prefill.
        self.assertLessEqual(abs((v0 - 1) - n / h), 0.15 * n / h, v0)
        v1 = version(1)
        self.assertLessEqual(abs((v1 - 1) - n * 2 ** -0.99 / h), 0.2 * n * 2 ** -0.99 / h, v1)
        cold = sorted(version(k) - 1 for k in range(80, 100))
        median_cold = cold[len(cold) // 2]
        self.assertGreater(v0 - 1, 20 * max(median_cold, 1), (v0, cold))
        self.assertLess(median_cold, 2 * n * 81 ** -0.99 / h + 3, cold)

    def test_usage_errors_exit_2(self):
        for args in (["--mix", "get=0"], ["--mix", "read=1"], ["-c", "0"], ["-d", "1s", "-n", "5"],
                     ["--conflicts", "1.5"], ["--dist", "pareto"], ["--bogus"], ["-n"]):
            r = run_bench(["--addr", self.server.target] + args)
            self.assertEqual(r.returncode, 2, "%r: %s" % (args, r.stderr))
            self.assertIn("pinsctl", r.stderr)
        r = run_bench(["--help"])
        self.assertEqual(r.returncode, 0)
        for opt in ("--connections", "--streams", "--duration", "--requests", "--warmup", "--rate",
                    "--mix", "--keys", "--dist", "--zipf-s", "--tenants", "--value-size",
                    "--list-limit", "--prefill", "--conflicts", "--seed", "--json", "--timeline",
                    "--addr",
                    "--tls", "Exit status"):
            self.assertIn(opt, r.stdout)

    def test_interrupt_during_prefill_exits_130_without_report(self):
        env = {k: v for k, v in os.environ.items() if k not in _CTL_VARS}
        proc = subprocess.Popen(
            [PINSCTL, "bench", "--addr", self.server.target, "--prefill", "--keys", "1000000",
             "-m", "4", "--key-prefix", "interrupted-", "-n", "10", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            time.sleep(1.5)
            self.assertIsNone(proc.poll(), "the prefill ended early")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 130, err)
        self.assertEqual(out, "")  # no report of a load that never ran
        self.assertRegex(err, r"interrupted during the prefill \(\d+ of 1000000 upserts sent\)")

    def test_unreachable_exits_3(self):
        port = harness.free_port()
        r = run_bench(["--addr", "127.0.0.1:%d" % port, "-n", "10"], timeout=60)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot reach pinsd", r.stderr)


class SilentListener:
    """A loopback TCP listener that accepts connections and never reads or answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set() and len(self.conns) < 100:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        for c in self.conns:
            c.close()
        self.sock.close()


class BenchSilentServerTest(unittest.TestCase):
    """A server that accepts and never answers: the health check has its own deadline, and ^C
    ends the run while it waits."""

    def setUp(self):
        self.listener = SilentListener()
        self.addCleanup(self.listener.close)

    def test_silent_server_exits_3_even_with_timeout_0(self):
        t0 = time.monotonic()
        # Bounded by the subprocess timeout: a bench that waits for good fails here.
        r = run_bench(["--addr", "127.0.0.1:%d" % self.listener.port, "--timeout", "0",
                       "-n", "10"], timeout=40)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot reach pinsd", r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertGreater(elapsed, 9)  # the 10 s deadline of the health check
        self.assertLess(elapsed, 30)
        self.assertGreater(len(self.listener.conns), 0, "bench never connected")

    def test_silent_server_short_timeout_exits_3_at_it(self):
        t0 = time.monotonic()
        r = run_bench(["--addr", "127.0.0.1:%d" % self.listener.port, "--timeout", "1s",
                       "-n", "10"], timeout=40)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertLess(time.monotonic() - t0, 8)

    def test_interrupt_during_health_check_exits_130(self):
        env = {k: v for k, v in os.environ.items() if k not in _CTL_VARS}
        proc = subprocess.Popen(
            [PINSCTL, "bench", "--addr", "127.0.0.1:%d" % self.listener.port, "--timeout", "0",
             "-n", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 10
            while not self.listener.conns and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertTrue(self.listener.conns, "bench never connected")
            time.sleep(0.3)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=5)
            self.assertLess(time.monotonic() - t0, 3)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 130, err)
        self.assertEqual(out, "")
        self.assertIn("interrupted during the health check", err)


class BenchTlsTokenTest(unittest.TestCase):
    """Mutual TLS and RBAC enforced: the shared connection options (--addr https://, --ca,
    --cert, --key) and the machine token from the environment carry over to every call."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = harness.tempfile.mkdtemp(prefix="pinsctl-bench-tls-", dir="/tmp")
        test_tls.make_ca(cls.tmp, "ca")
        test_tls.make_leaf(cls.tmp, "ca", "server", san="IP:127.0.0.1")
        test_tls.make_leaf(cls.tmp, "ca", "client")
        cls.ca = os.path.join(cls.tmp, "ca.pem")
        env = dict(ENFORCED)
        env.update({"TLS_CERT_FILE": os.path.join(cls.tmp, "server.pem"),
                    "TLS_KEY_FILE": os.path.join(cls.tmp, "server.key"),
                    "TLS_CLIENT_CA_FILE": cls.ca})
        cls.server = test_tls.TlsServer(env, cls.ca, tmp=cls.tmp,
                                        client_cert=os.path.join(cls.tmp, "client.pem"),
                                        client_key=os.path.join(cls.tmp, "client.key"))
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def args(self):
        return ["--addr", "https://127.0.0.1:%d" % self.server.port, "--ca", self.ca,
                "--cert", os.path.join(self.tmp, "client.pem"),
                "--key", os.path.join(self.tmp, "client.key"), "--json"]

    def test_tls_and_token(self):
        r = run_bench(self.args() + ["-n", "400", "--mix", "get=1,put=1", "--prefill",
                                     "--keys", "20", "-c", "2"],
                      env={"MACHINE_SECRET_TOKEN": MACHINE})
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout)
        self.assertEqual(rep["requests"], 400)
        self.assertEqual(rep["ok"], 400, rep["errors_by_code"])
        self.assertEqual(rep["prefill"]["errors"], 0)

    def test_without_token_calls_are_refused_and_counted(self):
        r = run_bench(self.args() + ["-n", "50"])
        self.assertEqual(r.returncode, 0, r.stderr)  # the run completed
        rep = json.loads(r.stdout)
        self.assertEqual(rep["answers"], 50)
        self.assertEqual(rep["ok"], 0)
        self.assertEqual(rep["errors"], 50)
        self.assertLessEqual(set(rep["errors_by_code"]),
                             {"UNAUTHENTICATED", "PERMISSION_DENIED"})

    def test_a_failed_prefill_stops_the_run_with_exit_1(self):
        # Without the token every prefill upsert is refused: a load over missing keys would
        # measure NOT_FOUND answers, so the run stops before it, says why, and prints no report.
        r = run_bench(self.args() + ["-n", "50", "--prefill", "--keys", "20", "--tenants", "2"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertRegex(r.stderr, r"^pinsctl bench: prefill: 40 of 40 upserts failed \(the first: "
                         r"(UNAUTHENTICATED|PERMISSION_DENIED): .*\); the load was not run\n$")

    def test_without_client_certificate_pinsd_is_unreachable(self):
        r = run_bench(["--addr", "https://127.0.0.1:%d" % self.server.port, "--ca", self.ca,
                       "-n", "5", "--timeout", "3s"], env={"MACHINE_SECRET_TOKEN": MACHINE})
        self.assertEqual(r.returncode, 3, r.stderr)


class BenchRestartTest(ServerTestCase):
    """A run across a pinsd restart: SIGTERM (pinsd drains and sends GOAWAY), down for a while,
    then a new pinsd on the same port and data directory."""

    SERVER_ENV = {"PINS_DRAIN_SECONDS": "2"}

    def test_run_survives_goaway_and_restart(self):
        port = self.server.port
        proc = subprocess.Popen(
            [PINSCTL, "bench", "--addr", "127.0.0.1:%d" % port, "--json", "-d", "10s", "-r", "300",
             "-c", "2", "-m", "8", "--timeout", "1s", "--prefill", "--keys", "50"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if k not in _CTL_VARS})
        try:
            time.sleep(3)
            self.assertIsNone(proc.poll(), "bench ended early")
            self.server.signal(15)
            self.assertIsNotNone(self.server.wait_exit(15), "pinsd did not exit on SIGTERM")
            time.sleep(1.5)  # down: the bench's calls fail
            self.server.start()
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 0, err)
        rep = json.loads(out)
        self.assertEqual(rep["unanswered"], 0)
        # Calls made while pinsd was down never reached it: counted apart, by code, and kept
        # out of answers, req/s and the latency.
        self.assertGreater(rep["failed_locally"], 0, "no call failed while pinsd was down")
        self.assertIn("UNAVAILABLE", rep["failed_locally_by_code"])
        self.assertEqual(sum(rep["failed_locally_by_code"].values()), rep["failed_locally"])
        self.assertEqual(rep["answers"] + rep["failed_locally"], rep["requests"])
        self.assertEqual(rep["latency_us"]["count"], rep["answers"])
        self.assertEqual(rep["answers"], rep["ok"] + rep["errors"] + rep["aborted"])
        self.assertEqual(sum(t["failed_locally"] for t in rep["timeline"]),
                         rep["failed_locally"])
        # req/s counts the answers only (the JSON rounds both figures).
        self.assertAlmostEqual(rep["rps"], rep["answers"] / rep["duration_s"],
                               delta=rep["rps"] * 1e-4 + 0.01)
        # Calls succeeded again after the restart: the new process counted them, and the
        # report's last seconds hold successes only.
        m = metrics(port)
        self.assertGreater(handled(m, "GetPin", "OK"), 300)  # 2+ s at 300/s
        tail = rep["timeline"][-3:]
        self.assertTrue(all(t["ok"] > 0 and t["errors"] == 0 and t["failed_locally"] == 0
                            for t in tail), rep["timeline"])
        self.assertGreater(rep["ok"], 300 * 10 * 0.5)


class ForgetfulServer:
    """A gRPC server (grpcio) that answers health SERVING, every UpsertPin OK and stores nothing:
    ListPins answers total 0. What a bench sees when its upserts went to another process than the
    one it then asks. port: its own (0, no SO_REUSEPORT), or one pinsd listens on (SO_REUSEPORT,
    as grpcio sets by default: the kernel then shares the connections between the two)."""

    def __init__(self, port=0):
        from concurrent import futures
        self.upserts = 0
        self.lock = threading.Lock()
        health_resp = harness.message_class("grpc.health.v1.HealthCheckResponse")
        health_req = harness.message_class("grpc.health.v1.HealthCheckRequest")
        up_req = harness.message_class("memorypins.v1.UpsertPinRequest")
        up_resp = harness.message_class("memorypins.v1.UpsertPinResponse")
        list_req = harness.message_class("memorypins.v1.ListPinsRequest")
        list_resp = harness.message_class("memorypins.v1.ListPinsResponse")

        def upsert(req, ctx):
            with self.lock:
                self.upserts += 1
            return up_resp()

        def handler(fn, req_cls):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.FromString,
                response_serializer=lambda m: m.SerializeToString())

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  options=[("grpc.so_reuseport", 1 if port else 0)])
        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": handler(lambda req, ctx: health_resp(status=1), health_req)}),
            grpc.method_handlers_generic_handler("memorypins.v1.MemoryPins", {
                "UpsertPin": handler(upsert, up_req),
                "ListPins": handler(lambda req, ctx: list_resp(total=0), list_req)}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:%d" % port)
        self.server.start()

    def close(self):
        self.server.stop(grace=None).wait(10)


class BenchPrefillCheckTest(unittest.TestCase):
    """--prefill checks that the server holds the keys it acknowledged (one ListPins per tenant,
    limit 1, before and after), and a prefill through refused and stalled streams loses nothing."""

    def test_upserts_answered_ok_but_not_stored_exit_1(self):
        fake = ForgetfulServer()
        self.addCleanup(fake.close)
        r = run_bench(["--addr", "127.0.0.1:%d" % fake.port, "--prefill", "--keys", "50",
                       "--tenants", "3", "-c", "2", "-m", "4", "-n", "1"], timeout=60)
        self.assertEqual(fake.upserts, 150)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("does not hold the keys", r.stderr)
        self.assertIn("bench-t0 holds 0 pins", r.stderr)
        self.assertIn("the load was not run", r.stderr)

    def test_two_servers_on_one_port(self):
        # Another gRPC server with SO_REUSEPORT (grpcio's default) on pinsd's address binds beside
        # it, and the kernel hands each new connection to one of them (pinsd itself refuses to
        # start on a taken address, but cannot stop one started after it). The bench must not
        # report a prefill that the server it reports on does not hold.
        a = harness.Server({"PINS_WORKERS": "1"}, nports=2)
        self.addCleanup(a.cleanup)
        a.start()
        shared = a.ports[1]
        fake = ForgetfulServer(port=shared)
        self.addCleanup(fake.close)
        r = run_bench(["--addr", "127.0.0.1:%d" % shared, "--prefill", "--keys", "100",
                       "--tenants", "4", "-c", "8", "-m", "4", "-n", "1"], timeout=60)
        got = [handled(metrics(a.port), "UpsertPin", "OK"), fake.upserts]
        self.assertEqual(sum(got), 400, got)  # every upsert answered by one of them
        if min(got) > 0:
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("does not hold the keys", r.stderr)
            self.assertIn("Another server may listen on 127.0.0.1:%d" % shared, r.stderr)
        else:  # all 8 connections went to one process (1 run in 128)
            self.assertIn(r.returncode, (0, 1), r.stdout + r.stderr)

    def test_prefill_through_refused_and_stalled_streams_is_all_in_pinsd(self):
        # pinsd takes 2 streams per connection (the bench's other 14 are refused or queued) and
        # stops for a second mid-prefill; every upsert the bench counts as done must be in pinsd.
        srv = harness.Server({"PINS_WORKERS": "1", "PINS_MAX_CONCURRENT_STREAMS": "2"})
        self.addCleanup(srv.cleanup)
        srv.start()
        proc = subprocess.Popen(
            [PINSCTL, "bench", "--addr", srv.target, "--json", "--prefill", "--keys", "2000",
             "--tenants", "6", "-c", "3", "-m", "16", "-n", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if k not in _CTL_VARS})
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and proc.poll() is None:
                if handled(metrics(srv.port), "UpsertPin") >= 1000:
                    break
                time.sleep(0.05)
            self.assertIsNone(proc.poll(), "the prefill ended before pinsd was stopped")
            srv.signal(signal.SIGSTOP)
            time.sleep(1)
            srv.signal(signal.SIGCONT)
            out, err = proc.communicate(timeout=90)
        finally:
            srv.signal(signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 0, out + err)
        rep = json.loads(out)
        self.assertEqual(rep["prefill"]["upserts"], 12000)
        self.assertEqual(rep["prefill"]["errors"], 0)
        self.assertGreater(rep["prefill"]["seconds"], 1.0)  # the stop happened during it
        self.assertEqual(handled(metrics(srv.port), "UpsertPin", "OK"), 12000)
        ch = srv.client()
        try:
            for t in range(6):
                resp = ch.call(mp("ListPins"), {"tenant_id": "bench-t%d" % t, "prefix": "bench-",
                                                "limit": 1})
                self.assertEqual(int(resp.total), 2000, t)
        finally:
            ch.close()


if __name__ == "__main__":
    unittest.main()
