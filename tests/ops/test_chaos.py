"""The runbook's Phase 5 chaos experiments (scripts/chaos/*.sh) against one local stack.

One deploy/local/stack.sh stack for the whole module (tests/ops/stack.py: PostgreSQL 15, PgBouncer,
Redis, two pinsd replicas, Prometheus, free loopback ports, a temporary DIR, stopped by PID), made
quick: BREAKER_ERRORS_PER_MIN=5 and BREAKER_OPEN_SECONDS=2 so the breaker opens and closes in
seconds, RATE_LIMIT_RPM=100 (burst 100), PostgreSQL max_connections 60 so db_exhaustion holds few
sessions (about 20 to 35). Then:

- the guard: without CHAOS_ALLOWED=true every script prints the runbook's error line and exits 1
  before touching anything (Redis still answers, every service still up); a pinsd started with
  CHAOS_ALLOWED=false makes every script refuse (exit 1), again touching nothing; a missing stack
  exits 1 and a bad option exits 2;
- each script PASSes on the healthy stack (exit 0, the PASS line last, its figures present and
  plausible: pin_storm's accepted and limited counts equal the deltas of pinsd's own
  rate_limit_decisions_total on both replicas and lie within burst .. burst + refill + 1;
  redis_disconnect's ops all ok with zero errors; pg_restart's breaker opened and the recovery
  time is below the bound; db_exhaustion's pool peaks within DB_POOL_SIZE);
- each script FAILs (exit 1, a FAIL line last) on a configuration that breaks what it checks:
  pin_storm with Redis stopped (each replica's local bucket accepts a burst: about twice the
  shared bucket) and with RATE_LIMIT_RPM=0; redis_disconnect with MEMORY_PINS_ENABLED=false;
  pg_restart with BREAKER_ERRORS_PER_MIN so high the breaker never opens; db_exhaustion with
  DB_POOL_SIZE=40 per replica (80 connections that PostgreSQL's 57 slots cannot give); the good
  configuration is restored after each, and the services a script stopped are running again.

It takes about 2 to 3 minutes on an idle machine (pg_restart waits for the breaker on both sides).
"""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # noqa: E402  (imports ../interop/strict.py)

ROOT = stack.ROOT
CHAOS = os.path.join(ROOT, "scripts", "chaos")
SCRIPTS = ("redis_disconnect", "db_exhaustion", "pin_storm", "pg_restart")
GUARD_LINE = "ERROR: CHAOS_ALLOWED not set. Aborting."
GOOD = {"CHAOS_ALLOWED": "true", "MEMORY_PINS_ENABLED": "true", "RATE_LIMIT_RPM": "100",
        "RATE_LIMIT_BURST": "100", "BREAKER_ERRORS_PER_MIN": "5", "BREAKER_OPEN_SECONDS": "2",
        "DB_POOL_SIZE": "8"}

ST = None


def setUpModule():
    global ST
    why = stack.missing()
    if why:
        raise unittest.SkipTest(why)
    env = dict(GOOD, PINS_STACK_PG_MAX_CONNECTIONS="60")
    ST = stack.Stack(env=env)


def tearDownModule():
    if ST is not None:
        ST.down()


def metrics(url):
    r = ST.run("curl", "-sS", "--fail", "--max-time", "10", url + "/metrics", timeout=30)
    assert r.returncode == 0, r.stdout
    out = {}
    for line in r.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def decisions(decision):
    """rate_limit_decisions_total{decision=...} summed over both replicas and every backend."""
    total = 0
    for url in (ST.env["PINSD_URL"], ST.env["PINSD2_URL"]):
        for name, v in metrics(url).items():
            if name.startswith("rate_limit_decisions_total{") and \
                    'decision="%s"' % decision in name:
                total += v
    return int(total)


def figure(out, label):
    """The text after '<label>:' in a script's figures."""
    m = re.search(r"^\s*" + re.escape(label) + r":\s*(.*)$", out, re.M)
    assert m, "no figure %r in:\n%s" % (label, out)
    return m.group(1)


class Chaos(unittest.TestCase):
    def script(self, name, *args, env=None, unset=(), timeout=600):
        e = dict(ST.env, CHAOS_ALLOWED="true")
        e.update(env or {})
        for k in unset:
            e.pop(k, None)
        return subprocess.run([os.path.join(CHAOS, name + ".sh"), *args], env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def last_line(self, r):
        lines = [x for x in r.stdout.splitlines() if x.strip()]
        return lines[-1] if lines else ""

    def assertPass(self, r, name):
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertTrue(self.last_line(r).startswith("PASS: %s: " % name), r.stdout)

    def assertFail(self, r, name, why_re):
        self.assertEqual(r.returncode, 1, r.stdout)
        last = self.last_line(r)
        self.assertTrue(last.startswith("FAIL: %s: " % name), r.stdout)
        self.assertRegex(last, why_re, r.stdout)

    def configure(self, **env):
        """Rolling restart of both replicas with GOOD overridden by env."""
        r = ST.sh("restart pinsd", env=dict(GOOD, **env))
        self.assertEqual(r.returncode, 0, r.stdout)

    def restore(self):
        self.configure()

    def assertAllUp(self):
        r = ST.sh("status")
        self.assertEqual(r.returncode, 0, r.stdout)
        r = ST.run("redis-cli", "-h", ST.env["REDIS_HOST"], "-p", ST.env["REDIS_PORT"], "ping",
                   timeout=30)
        self.assertEqual(r.stdout.strip(), "PONG", r.stdout)

    # --- guard and targeting -------------------------------------------------------------------

    def test_guard_without_chaos_allowed(self):
        pids = ST.pids()
        for name in SCRIPTS:
            for env, unset in (({}, ("CHAOS_ALLOWED",)), ({"CHAOS_ALLOWED": "false"}, ()),
                               ({"CHAOS_ALLOWED": "TRUE"}, ())):
                with self.subTest(script=name, env=env):
                    r = self.script(name, "--stack", ST.dir, env=env, unset=unset, timeout=60)
                    self.assertEqual(r.returncode, 1, r.stdout)
                    self.assertIn(GUARD_LINE, r.stdout)
                    self.assertNotIn("PASS", r.stdout)
                    self.assertNotIn("stopping", r.stdout)
        self.assertAllUp()
        self.assertEqual(ST.pids(), pids)  # nothing restarted

    def test_refused_when_pinsd_disallows_chaos(self):
        self.configure(CHAOS_ALLOWED="false")
        try:
            pids = ST.pids()
            for name in SCRIPTS:
                with self.subTest(script=name):
                    r = self.script(name, "--stack", ST.dir, timeout=60)
                    self.assertEqual(r.returncode, 1, r.stdout)
                    self.assertIn("chaos_allowed=false", r.stdout)
                    self.assertNotIn("PASS", r.stdout)
            self.assertAllUp()
            self.assertEqual(ST.pids(), pids)
        finally:
            self.restore()

    def test_missing_stack_and_usage(self):
        for name in SCRIPTS:
            with self.subTest(script=name):
                r = self.script(name, "--stack", os.path.join(ST.dir, "nope"), timeout=60)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn("stack.env missing", r.stdout)
                r = self.script(name, "--no-such-option", timeout=60)
                self.assertEqual(r.returncode, 2, r.stdout)
                r = self.script(name, "--help", unset=("CHAOS_ALLOWED",), timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout)
                self.assertIn("usage:", r.stdout)
                self.assertIn("--stack DIR", r.stdout)
        self.assertAllUp()

    # --- pin_storm ----------------------------------------------------------------------------

    def test_pin_storm_pass_matches_pinsd_metrics(self):
        allowed0, limited0 = decisions("allowed"), decisions("limited")
        # the default target: PINS_STACK_DIR of the environment (stack.env exports it)
        r = self.script("pin_storm", "-n", "1000", "-c", "20")
        self.assertPass(r, "pin_storm")
        accepted = int(figure(r.stdout, "accepted"))
        limited = int(figure(r.stdout, "limited (429)").split()[0])
        self.assertEqual(accepted, decisions("allowed") - allowed0, r.stdout)
        self.assertEqual(limited, decisions("limited") - limited0, r.stdout)
        self.assertEqual(accepted + limited, 1000, r.stdout)
        self.assertEqual(figure(r.stdout, "errors (5xx)"), "0")
        lo, hi = map(int, re.match(r"\[(\d+), (\d+)\]", figure(r.stdout, "expected range")).groups())
        self.assertEqual(lo, 100)
        self.assertTrue(lo <= accepted <= hi, r.stdout)
        self.assertGreaterEqual(hi, 102)
        self.assertIn("0 without Retry-After", figure(r.stdout, "limited (429)"))

    def test_pin_storm_fails_with_per_replica_buckets(self):
        # Redis down: each replica falls back to its own bucket, so both accept a burst.
        r = ST.sh("stop redis")
        self.assertEqual(r.returncode, 0, r.stdout)
        try:
            r = self.script("pin_storm", "--stack", ST.dir)
            self.assertFail(r, "pin_storm", r"accepted \d+ outside \[100, \d+\]")
            self.assertGreaterEqual(int(figure(r.stdout, "accepted")), 190, r.stdout)
        finally:
            r = ST.sh("start redis")
            self.assertEqual(r.returncode, 0, r.stdout)
        self.assertAllUp()

    def test_pin_storm_fails_without_rate_limit(self):
        self.configure(RATE_LIMIT_RPM="0", RATE_LIMIT_BURST="0")
        try:
            r = self.script("pin_storm", "--stack", ST.dir, "-n", "300")
            self.assertFail(r, "pin_storm", r"rate limiting is disabled")
            self.assertEqual(figure(r.stdout, "accepted"), "300")
        finally:
            self.restore()

    # --- redis_disconnect ---------------------------------------------------------------------

    def test_redis_disconnect_pass(self):
        r = self.script("redis_disconnect", "--stack", ST.dir, "--ops", "120")
        self.assertPass(r, "redis_disconnect")
        self.assertTrue(figure(r.stdout, "ops sent").startswith("120 "), r.stdout)
        self.assertEqual(figure(r.stdout, "ops ok"), "120")
        self.assertEqual(figure(r.stdout, "ops failed"), "0")
        self.assertTrue(figure(r.stdout, "pinsd error ops delta").startswith("0 "))
        self.assertEqual(figure(r.stdout, "/ready fail-open"), "2 of 2 replicas")
        rec = float(figure(r.stdout, "recovery").split("s")[0])
        self.assertLess(rec, 300)
        self.assertAllUp()

    def test_redis_disconnect_fails_with_feature_off(self):
        self.configure(MEMORY_PINS_ENABLED="false")
        try:
            r = self.script("redis_disconnect", "--stack", ST.dir, "--ops", "20")
            self.assertFail(r, "redis_disconnect", r"20 of 20 calls failed .*503=20")
        finally:
            self.restore()
        self.assertAllUp()  # Redis was started again

    # --- pg_restart ---------------------------------------------------------------------------

    def test_pg_restart_pass(self):
        r = self.script("pg_restart", "--stack", ST.dir, "--open-timeout", "120")
        self.assertPass(r, "pg_restart")
        self.assertTrue(figure(r.stdout, "breaker opened").startswith("yes"), r.stdout)
        fast = re.match(r"(\d+) of (\d+) answered 503", figure(r.stdout, "fail fast while open"))
        self.assertTrue(fast, r.stdout)
        # all but the half-open probe of each replica (BREAKER_OPEN_SECONDS=2 is short)
        self.assertGreaterEqual(int(fast.group(1)), int(fast.group(2)) - 2, r.stdout)
        rec = float(figure(r.stdout, "recovery").split("s")[0])
        self.assertLess(rec, 300)
        self.assertIn("breaker closed closed", figure(r.stdout, "recovery"))
        self.assertAllUp()

    def test_pg_restart_fails_when_breaker_never_opens(self):
        self.configure(BREAKER_ERRORS_PER_MIN="1000000")
        try:
            r = self.script("pg_restart", "--stack", ST.dir, "--open-timeout", "8")
            self.assertFail(r, "pg_restart", r"did not open")
            self.assertTrue(figure(r.stdout, "breaker opened").startswith("no"), r.stdout)
        finally:
            self.restore()
        self.assertAllUp()  # PostgreSQL was started again

    # --- db_exhaustion ------------------------------------------------------------------------

    def test_db_exhaustion_pass(self):
        r = self.script("db_exhaustion", "--stack", ST.dir, "-c", "32", "-m", "4", "-d", "4")
        self.assertPass(r, "db_exhaustion")
        for label in ("pool peak pinsd1", "pool peak pinsd2"):
            m = re.match(r"(\d+) open \((\d+) busy\) of DB_POOL_SIZE 8", figure(r.stdout, label))
            self.assertTrue(m, r.stdout)
            self.assertLessEqual(int(m.group(1)), 8)
            self.assertGreaterEqual(int(m.group(1)), 1)
        held = int(figure(r.stdout, "holders").split()[0])
        self.assertGreaterEqual(held, 1, r.stdout)
        peak = re.match(r"(\d+) client backends of 57", figure(r.stdout, "postgres peak"))
        self.assertTrue(peak, r.stdout)
        self.assertGreaterEqual(int(peak.group(1)), held)
        self.assertLess(int(peak.group(1)), 57)
        self.assertIn(" 0 failed, 0 internal", figure(r.stdout, "calls"))
        # the holders are gone, on PostgreSQL's side too
        self.assertEqual(self.pg_count("application_name LIKE 'pins-chaos-hold-%'"), 0)

    def pg_count(self, where):
        m = re.match(r"postgres(?:ql)?://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)",
                     ST.env["DATABASE_DIRECT_URL"])
        user, password, host, port, db = m.groups()
        r = ST.run("psql", "-X", "-At", "-h", host, "-p", port, "-U", user, db, "-c",
                   "SELECT count(*) FROM pg_stat_activity WHERE " + where,
                   env={"PGPASSWORD": password}, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        return int(r.stdout.strip())

    def test_db_exhaustion_fails_when_pools_exceed_postgres(self):
        self.configure(DB_POOL_SIZE="40")
        try:
            r = self.script("db_exhaustion", "--stack", ST.dir, "-d", "2")
            self.assertFail(r, "db_exhaustion", r"pools \(80 connections\) do not fit")
        finally:
            self.restore()


if __name__ == "__main__":
    unittest.main()
