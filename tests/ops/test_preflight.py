"""ops/preflight.sh and ops/check_dashboards.py against a real local stack (deploy/local/stack.sh).

One stack for the module. Preflight passes on the healthy stack (a custom-format backup that
pg_restore reads, restored into a scratch database that is dropped again); fails, with one line
per check and exit status 1, when PostgreSQL is stopped, when Redis is stopped and when
Prometheus's guard is down; and refuses bad usage with exit status 2. No secret appears in its
output. check_dashboards.py finds data for every panel on the stack, and reports a panel whose
query returns nothing or does not parse.
"""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import strict  # noqa: E402,F401  (skips fail under ctest)
import stack  # noqa: E402

ROOT = stack.ROOT
PREFLIGHT = os.path.join(ROOT, "ops", "preflight.sh")
CHECK_DASHBOARDS = os.path.join(ROOT, "ops", "check_dashboards.py")
ST = None
LINE = re.compile(r"^(ok|FAIL|skip) +(\w+) ", re.M)


def setUpModule():
    global ST
    why = stack.missing()
    if why:
        raise unittest.SkipTest(why)
    ST = stack.Stack()


def tearDownModule():
    if ST is not None:
        ST.down()


def checks(out):
    """{check name: [verdicts]} of preflight's output."""
    got = {}
    for verdict, name in LINE.findall(out):
        got.setdefault(name, []).append(verdict)
    return got


class PreflightTest(unittest.TestCase):

    def setUp(self):
        self.backups = tempfile.mkdtemp(prefix="pins-preflight-")
        self.addCleanup(shutil.rmtree, self.backups, True)

    def preflight(self, *args, env=None):
        e = dict(ST.env, BACKUP_DIR=self.backups)
        e.update(env or {})
        return subprocess.run([PREFLIGHT] + list(args), env=e, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)

    def assert_no_secret(self, out):
        for k in ("MACHINE_SECRET_TOKEN", "JWT_SECRET", "PROM_RELOAD_TOKEN", "ADMIN_JWT"):
            self.assertNotIn(ST.env[k], out, k)
        self.assertNotIn("novapass", out)

    def test_1_passes_on_the_healthy_stack(self):
        r = self.preflight()
        self.assertEqual(r.returncode, 0, r.stdout)
        got = checks(r.stdout)
        for name, n in (("backup", 1), ("restore", 1), ("schema", 1), ("health", 2), ("ready", 2),
                        ("redis", 1), ("prometheus", 1)):
            self.assertEqual(got.get(name), ["ok"] * n, "%s in:\n%s" % (name, r.stdout))
        self.assertIn("preflight: PASS (9 checks)", r.stdout)
        self.assert_no_secret(r.stdout)
        dumps = glob.glob(os.path.join(self.backups, "pgdump_nova_aos_*.dump"))
        self.assertEqual(len(dumps), 1, os.listdir(self.backups))
        self.assertEqual(stat.S_IMODE(os.stat(dumps[0]).st_mode), 0o600)
        # Custom format: pg_restore reads it and it holds the pins table.
        toc = subprocess.run(["pg_restore", "--list", dumps[0]], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        self.assertRegex(toc, r"TABLE DATA system memory_pins ")
        # The scratch database is gone again.
        dbs = ST.run("bash", "-c", 'PGPASSWORD=novapass psql -h 127.0.0.1 -p "$PG_PORT" -U nova '
                     '-d nova_aos -Atc "SELECT datname FROM pg_database"').stdout
        self.assertNotIn("pins_restore_test", dbs)

    def test_2_restore_counts_the_rows_of_the_backup(self):
        ST.run("bash", "-c", 'for i in 1 2 3; do curl -sf -o /dev/null -X POST '
               '"$PINSD/api/v1/memory/pins" -H "X-Machine-Token: $MACHINE_SECRET_TOKEN" '
               '-d "{\\"tenant_id\\":\\"preflight\\",\\"key\\":\\"k$i\\",\\"value\\":{}}"; done')
        n = ST.run("bash", "-c", 'PGPASSWORD=novapass psql -h 127.0.0.1 -p "$PG_PORT" -U nova '
                   '-d nova_aos -Atc "SELECT count(*) FROM system.memory_pins"').stdout.strip()
        self.assertGreaterEqual(int(n), 3)
        r = self.preflight()
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertRegex(r.stdout, r"ok +restore .*restored with all %s rows" % n)

    def test_3_postgres_stopped_fails(self):
        ST.sh("stop postgres")
        try:
            r = self.preflight("--timeout", "5")
        finally:
            ST.sh("start postgres")
            ST.run("bash", "-c", 'for i in $(seq 60); do curl -sf -o /dev/null "$PINSD/ready" && '
                   'curl -sf -o /dev/null "$PINSD2_URL/ready" && exit 0; sleep 1; done; exit 1')
        self.assertEqual(r.returncode, 1, r.stdout)
        got = checks(r.stdout)
        self.assertEqual(got.get("backup"), ["FAIL"], r.stdout)
        self.assertEqual(got.get("restore"), ["FAIL"], r.stdout)
        self.assertEqual(got.get("schema"), ["FAIL"], r.stdout)
        self.assertEqual(got.get("ready"), ["FAIL", "FAIL"], r.stdout)
        self.assertEqual(got.get("health"), ["ok", "ok"], r.stdout)  # pinsd itself serves
        self.assertEqual(got.get("redis"), ["ok"], r.stdout)
        self.assertRegex(r.stdout, r"preflight: FAIL \(\d of 9 checks failed\)")
        self.assertEqual(glob.glob(os.path.join(self.backups, "*.dump")), [],
                         "a failed backup leaves no file behind")
        self.assert_no_secret(r.stdout)

    def test_4_redis_stopped_fails(self):
        ST.sh("stop redis")
        try:
            r = self.preflight("--no-restore-test")
        finally:
            ST.sh("start redis")
        self.assertEqual(r.returncode, 1, r.stdout)
        got = checks(r.stdout)
        self.assertEqual(got.get("redis"), ["FAIL"], r.stdout)
        self.assertEqual(got.get("restore"), ["skip"])
        # pinsd fails open without Redis: still ready.
        self.assertEqual(got.get("ready"), ["ok", "ok"], r.stdout)
        self.assertIn("preflight: FAIL (1 of 8 checks failed)", r.stdout)

    def test_5_prometheus_guard_down_fails(self):
        ST.sh("stop guard")
        try:
            r = self.preflight("--no-restore-test")
        finally:
            ST.sh("start guard")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertEqual(checks(r.stdout).get("prometheus"), ["FAIL"], r.stdout)

    def test_6_a_target_down_fails(self):
        """Prometheus answers but a pinsd target is down: the check names it."""
        ST.sh("stop pinsd2")
        try:
            ST.run("bash", "-c", 'for i in $(seq 60); do curl -s "$PROM/api/v1/targets" | '
                   'jq -e \'[.data.activeTargets[] | select(.health == "down")] | length > 0\' '
                   '>/dev/null && exit 0; sleep 1; done; exit 1')
            r = self.preflight("--no-restore-test")
        finally:
            ST.sh("start pinsd2")
        self.assertEqual(r.returncode, 1, r.stdout)
        got = checks(r.stdout)
        self.assertEqual(got.get("prometheus"), ["FAIL"], r.stdout)
        self.assertRegex(r.stdout, r"FAIL +prometheus .*not up: nova-backend http://127\.0\.0\.1:%s"
                         % re.escape(ST.env["PINSD2_URL"].rsplit(":", 1)[1]))
        self.assertEqual(got.get("health"), ["ok", "FAIL"], r.stdout)

    def test_7_usage_errors(self):
        for args, env, want in ((["--bogus"], {}, "unknown argument"),
                                (["--timeout", "0"], {}, "--timeout"),
                                ([], {"DATABASE_DIRECT_URL": "", "DATABASE_URL": ""}, "no database"),
                                (["--database-url", "mysql://x@h/db"], {}, "cannot be read")):
            with self.subTest(args=args):
                r = self.preflight(*args, env=env)
                self.assertEqual(r.returncode, 2, r.stdout)
                self.assertIn(want, r.stdout)
        r = self.preflight("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("pg_dump -Fc", r.stdout)


class CheckDashboardsTest(unittest.TestCase):

    def run_check(self, *args):
        return subprocess.run([sys.executable, CHECK_DASHBOARDS, "--prom", ST.env["PROM"]] +
                              list(args), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)

    def test_every_panel_shows_data_on_the_stack(self):
        # Traffic for the rate() panels (REST and gRPC), and a denial for the denial panels:
        # RBAC is enforced from here on (the other tests send the machine token).
        ST.sh("restart pinsd", env={"RBAC_ENFORCE": "true"})
        denied = ST.run("bash", "-c", 'curl -s -o /dev/null -w "%{http_code}" '
                        '"$PINSD/api/v1/memory/pins/k?tenant_id=dash"').stdout
        self.assertEqual(denied, "403")
        ST.run("bash", "-c", 'for i in $(seq 20); do curl -s -o /dev/null '
               '"$PINSD/api/v1/memory/pins/k?tenant_id=dash" -H "X-Machine-Token: '
               '$MACHINE_SECRET_TOKEN"; "$PINSCTL_BIN" put dash "k$i" "{}" >/dev/null; done')
        r = None
        for _ in range(30):
            r = self.run_check("--quiet")
            if r.returncode == 0:
                break
            ST.run("sleep", "2")
        self.assertEqual(r.returncode, 0, r.stdout)
        m = re.search(r"dashboards: (\d+) of (\d+) panels show data", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        self.assertEqual(m.group(1), m.group(2))
        self.assertGreater(int(m.group(2)), 40)

    def test_a_panel_without_data_fails(self):
        d = tempfile.mkdtemp(prefix="pins-dash-")
        self.addCleanup(shutil.rmtree, d, True)
        model = {"title": "broken", "panels": [
            {"title": "exists", "targets": [{"refId": "A", "expr": "vector(1)"}]},
            {"title": "nothing", "targets": [{"refId": "A", "expr": "pins_no_such_metric_total"}]},
            {"title": "syntax", "targets": [{"refId": "A", "expr": "sum(rate(up[5m]"}]},
        ]}
        path = os.path.join(d, "broken.json")
        with open(path, "w") as f:
            json.dump(model, f)
        r = self.run_check(path)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertRegex(r.stdout, r"ok +exists +\d+ series")
        self.assertRegex(r.stdout, r"NO +nothing +0 series")
        self.assertRegex(r.stdout, r"NO +syntax .*query failed")
        self.assertIn("dashboards: 1 of 3 panels show data", r.stdout)


if __name__ == "__main__":
    unittest.main()
