"""The runbook's Phase 5 chaos experiments (scripts/chaos/*.sh) against one local stack.

One deploy/local/stack.sh stack for the whole module (tests/ops/stack.py: PostgreSQL 15, PgBouncer,
Redis, two pinsd replicas, Prometheus, free loopback ports, a temporary DIR, stopped by PID), made
quick: BREAKER_ERRORS_PER_MIN=5 and BREAKER_OPEN_SECONDS=5 so the breaker opens and closes in
seconds (5 s: a fail-fast round on a loaded machine stays well inside one open period, so at most
one half-open probe per replica gets through), RATE_LIMIT_RPM=100 (burst 100), PostgreSQL max_connections 60 so db_exhaustion holds few
sessions (about 20 to 35). Then:

- the guard: without CHAOS_ALLOWED=true every script prints the runbook's error line and exits 1
  before touching anything (Redis still answers, every service still up); a pinsd started with
  CHAOS_ALLOWED=false makes every script refuse (exit 1), again touching nothing; a missing stack
  exits 1 and a bad option exits 2; a stack directory owned by another user or writable by others
  is refused (exit 1) before anything in it is sourced;
- each script PASSes on the healthy stack (exit 0, the PASS line last, its figures present and
  plausible: pin_storm's accepted and limited counts equal the deltas of pinsd's own
  rate_limit_decisions_total on both replicas and lie within burst .. burst + refill + 1;
  redis_disconnect's ops all ok with zero errors; pg_restart's breaker opened, its 503s fast and
  the recovery time below the bound; db_exhaustion's pinsd client connections on PgBouncer (SHOW
  CLIENTS, measured outside pinsd) and its pool gauges within DB_POOL_SIZE);
- each script FAILs (exit 1, a FAIL line last) on a configuration that breaks what it checks:
  pin_storm with Redis stopped (each replica's local bucket accepts a burst: about twice the
  shared bucket) and with RATE_LIMIT_RPM=0; redis_disconnect with MEMORY_PINS_ENABLED=false;
  pg_restart with BREAKER_ERRORS_PER_MIN so high the breaker never opens; db_exhaustion with a
  leaking pinsd (20 extra idle PgBouncer clients with application_name pinsd, more than the 16 of
  both pools together: what PgBouncer's SHOW CLIENTS measures, not pinsd's gauge); the good
  configuration is restored after each, and the services a script stopped are running again.

It takes about 2 to 3 minutes on an idle machine (pg_restart waits for the breaker on both sides).
"""

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # noqa: E402  (imports ../interop/strict.py)

ROOT = stack.ROOT
CHAOS = os.path.join(ROOT, "scripts", "chaos")
SCRIPTS = ("redis_disconnect", "db_exhaustion", "pin_storm", "pg_restart")
GUARD_LINE = "ERROR: CHAOS_ALLOWED not set. Aborting."
GOOD = {"CHAOS_ALLOWED": "true", "MEMORY_PINS_ENABLED": "true", "RATE_LIMIT_RPM": "100",
        "RATE_LIMIT_BURST": "100", "BREAKER_ERRORS_PER_MIN": "5", "BREAKER_OPEN_SECONDS": "5",
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

    def test_unsafe_stack_dir_refused(self):
        """A stack directory another user owns, or anyone may write, is refused before its
        stack.env (planted to create a marker file when sourced) is read."""
        base = tempfile.mkdtemp(prefix="pins-chaos-unsafe-")
        self.addCleanup(shutil.rmtree, base, True)
        marker = os.path.join(base, "SOURCED")
        nobody = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else None
        cases = [("mode 0777", 0o777, None)]
        if nobody is not None:
            cases.append(("owned by nobody", 0o755, nobody))
        for what, mode, owner in cases:
            d = os.path.join(base, "stack-" + str(mode))
            os.mkdir(d)
            with open(os.path.join(d, "stack.env"), "w") as f:
                f.write("touch %s\nexport PINSD_URL=%s PINSD2_URL=%s\n"
                        % (marker, ST.env["PINSD_URL"], ST.env["PINSD2_URL"]))
            if owner is not None:
                os.chown(d, owner, -1)
            os.chmod(d, mode)
            for name in SCRIPTS:
                with self.subTest(script=name, case=what):
                    r = self.script(name, "--stack", d, timeout=60)
                    self.assertEqual(r.returncode, 1, r.stdout)
                    self.assertIn("refusing stack directory", r.stdout)
                    self.assertNotIn("PASS", r.stdout)
                    self.assertFalse(os.path.exists(marker), r.stdout)
        # the file itself owned by another user, in a safe directory
        if nobody is not None:
            d = os.path.join(base, "stack-file")
            os.mkdir(d, 0o700)
            env_file = os.path.join(d, "stack.env")
            with open(env_file, "w") as f:
                f.write("touch %s\n" % marker)
            os.chown(env_file, nobody, -1)
            r = self.script("pin_storm", "--stack", d, timeout=60)
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("refusing file", r.stdout)
            self.assertFalse(os.path.exists(marker), r.stdout)
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
        fast = re.match(r"(\d+) of (\d+) answered 503 .* (\d+) over 1s$",
                        figure(r.stdout, "fail fast while open"))
        self.assertTrue(fast, r.stdout)
        # all but the half-open probe of each replica, and no more slow answers than probes
        self.assertGreaterEqual(int(fast.group(1)), int(fast.group(2)) - 2, r.stdout)
        self.assertLessEqual(int(fast.group(3)), 2, r.stdout)
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
        m = re.match(r"(\d+) pinsd client connections of DB_POOL_SIZE 8 \+ 8 = 16$",
                     figure(r.stdout, "pgbouncer peak"))
        self.assertTrue(m, r.stdout)
        self.assertTrue(1 <= int(m.group(1)) <= 16, r.stdout)
        self.assertRegex(figure(r.stdout, "spike"), r"\b0 failed\), \d+ PostgreSQL samples, "
                         r"/metrics failed 0\+0\)$")
        held, planned = map(int, re.match(r"(\d+) idle sessions held \(of (\d+) planned\)",
                                          figure(r.stdout, "holders")).groups())
        self.assertGreaterEqual(held * 10, planned * 9, r.stdout)
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

    def test_db_exhaustion_fails_when_pinsd_leaks_connections(self):
        # A leaking pinsd, as PgBouncer sees it: 20 more idle client connections with
        # application_name pinsd than the two pools (8 + 8) allow. pinsd's own gauges stay within
        # DB_POOL_SIZE, so only the outside measurement can catch it.
        m = re.match(r"postgres(?:ql)?://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)", ST.env["DATABASE_URL"])
        user, password, host, port, db = m.groups()
        env = dict(ST.env, PGPASSWORD=password, PGAPPNAME="pinsd", PGCONNECT_TIMEOUT="10")
        leaks = []
        try:
            for _ in range(20):
                leaks.append(subprocess.Popen(
                    ["psql", "-X", "-q", "-h", host, "-p", port, "-U", user, db], env=env,
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # every one of them connected before the experiment (bounded wait)
            n = 0
            for _ in range(100):
                r = ST.run("psql", "-X", "-At", "-h", host, "-p", port, "-U", user, "pgbouncer",
                           "-c", "SHOW CLIENTS", env={"PGPASSWORD": password}, timeout=60)
                n = len(re.findall(r"\|pinsd(?:\||$)", r.stdout, re.M))
                if n >= 20:
                    break
                time.sleep(0.2)
            self.assertGreaterEqual(n, 20, r.stdout)
            r = self.script("db_exhaustion", "--stack", ST.dir, "-d", "3")
            self.assertFail(r, "db_exhaustion",
                            r"PgBouncer saw (\d+) pinsd client connections, more than the "
                            r"replicas' DB_POOL_SIZE together \(16\)")
            for label in ("pool peak pinsd1", "pool peak pinsd2"):
                self.assertRegex(figure(r.stdout, label), r"^[0-8] open ", r.stdout)
        finally:
            for p in leaks:
                p.kill()
                p.wait(timeout=30)
                p.stdin.close()
        self.assertAllUp()


if __name__ == "__main__":
    unittest.main()
