"""The store on a real PostgreSQL 15, directly and through PgBouncer (tests/integration/pg.py).

(a) the backend-agnostic store suite (tests/unit/store/test_store.c) with PINS_TEST_DATABASE_URL,
    against PostgreSQL and against PgBouncer in transaction pooling mode;
(b) `pinsctl migrate`: up, down, up again, a re-run that changes nothing, and the M7 runbook's
    checks with psql (`\\d system.memory_pins` after the upgrade; after reverting 001,
    `\\dt system.memory_pins` says "Did not find any relation");
(c) the change feed (tests/unit/store/test_pg_feed.c: NOTIFY payloads inline and by reference,
    revisions, EXPIRE changes, reconnection, the pooler check) and the revisions' lock order
    (no deadlock while concurrent replicas write one tenant).
"""

import os
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pg  # noqa: E402

BUILD = os.path.dirname(os.environ.get("PINSD_BIN", os.path.join(HERE, "..", "..", "build",
                                                                 "pinsd")))
PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(BUILD, "pinsctl")
STORE_SUITE = os.environ.get("STORE_SUITE_BIN") or os.path.join(BUILD, "tests",
                                                                 "unit_store_test_store")
FEED_SUITE = os.environ.get("FEED_SUITE_BIN") or os.path.join(os.path.dirname(STORE_SUITE),
                                                              "unit_store_test_pg_feed")


def pinsctl(url, *args, check=True):
    r = subprocess.run([PINSCTL, "--database-url", url, "migrate"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError("pinsctl migrate %s failed: %s" % (" ".join(args), r.stderr))
    return r


class PgTestCase(unittest.TestCase):
    # Every statement is logged, so a test can tell named statements ("execute pinsd_N") from
    # unnamed ones ("execute <unnamed>").
    extra_conf = {"log_statement": "all"}

    def setUp(self):
        if not pg.available():
            self.skipTest("PostgreSQL 15 binaries not found")
        self.pg = pg.PgServer(extra_conf=self.extra_conf).start()
        self.addCleanup(self.pg.destroy)

    def executed(self):
        """The statement names the server log shows executed, with their counts."""
        names = {}
        with open(self.pg.log, errors="replace") as f:
            for m in re.finditer(r"execute ([a-z_0-9]+|<unnamed>)", f.read()):
                names[m.group(1)] = names.get(m.group(1), 0) + 1
        return names


class StoreSuiteTest(PgTestCase):

    def run_suite(self, url):
        env = dict(os.environ, PINS_TEST_DATABASE_URL=url, CMOCKA_MESSAGE_OUTPUT="stdout")
        r = subprocess.run([STORE_SUITE], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-4000:])
        self.assertIn("PASSED", r.stdout)
        self.assertNotIn("FAILED", r.stdout)
        # No statement of the store makes the server warn (SET LOCAL outside a transaction
        # block once did, on every read batch).
        with open(self.pg.log, errors="replace") as f:
            warnings = [line.rstrip() for line in f if "WARNING" in line]
        self.assertEqual(warnings[:3], [])

    def test_store_suite_on_postgres(self):
        pinsctl(self.pg.url, "upgrade", "head")
        self.run_suite(self.pg.url)
        # A direct connection prepares its statements by name and reuses them.
        names = self.executed()
        named = sum(n for k, n in names.items() if k.startswith("pinsd_"))
        self.assertGreater(named, 100, names)

    def run_feed_suite(self, env):
        env = dict(os.environ, CMOCKA_MESSAGE_OUTPUT="stdout", **env)
        r = subprocess.run([FEED_SUITE], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-4000:])
        self.assertIn("PASSED", r.stdout)
        self.assertNotIn("FAILED", r.stdout)
        return r.stdout

    def test_change_feed_on_postgres(self):
        pinsctl(self.pg.url, "upgrade", "head")
        bouncer = pg.PgBouncer(self.pg, pool_size=4).start()
        self.addCleanup(bouncer.destroy)
        out = self.run_feed_suite({"PINS_TEST_DATABASE_URL": self.pg.url,
                                   "PINS_TEST_POOLER_URL": bouncer.url})
        # Every test ran, the pooler's included; its error names the setting to fix, never a URL.
        self.assertNotIn("SKIPPED", out)
        self.assertIn("DATABASE_LISTEN_URL", out)
        self.assertNotIn(str(bouncer.port), out)
        with open(self.pg.log, errors="replace") as f:
            log = f.read()
        # Writers of one tenant on two stores, in multi-statement segments: no lock cycle.
        self.assertNotIn("deadlock detected", log)
        # Each change is in the history, once, with its tenant's revision.
        self.assertEqual(self.pg.query(
            "SELECT count(*) FROM (SELECT tenant_id, revision FROM system.pin_changes"
            " GROUP BY 1, 2 HAVING count(*) > 1) d"), [["0"]])
        self.assertEqual(self.pg.query(
            "SELECT count(*) FROM system.pin_revisions r WHERE r.revision <"
            " (SELECT coalesce(max(c.revision), 0) FROM system.pin_changes c"
            " WHERE c.tenant_id = r.tenant_id)"), [["0"]])

    def test_store_suite_through_pgbouncer_transaction_pooling(self):
        pinsctl(self.pg.url, "upgrade", "head")
        bouncer = pg.PgBouncer(self.pg, pool_size=4).start()
        self.addCleanup(bouncer.destroy)
        self.run_suite(bouncer.url)
        # Through the pooler pinsd sees PgBouncer's pid, not the server's: no named statement.
        names = self.executed()
        self.assertEqual([k for k in names if k.startswith("pinsd_")], [], names)
        self.assertGreater(names.get("<unnamed>", 0), 100, names)


class MigrationTest(PgTestCase):

    def test_002_gives_existing_tenants_a_revision_row(self):
        pinsctl(self.pg.url, "upgrade", "1")
        self.pg.psql("INSERT INTO system.memory_pins (key, tenant_id, value) VALUES"
                     " ('a', 't1', '{}'), ('b', 't1', '{}'), ('a', 't2', '{}')")
        pinsctl(self.pg.url, "upgrade", "head")
        self.assertEqual(self.pg.query("SELECT tenant_id, revision, trimmed"
                                       " FROM system.pin_revisions ORDER BY 1"),
                         [["t1", "0", "0"], ["t2", "0", "0"]])
        self.assertEqual(self.pg.query("SELECT DISTINCT revision FROM system.memory_pins"),
                         [["0"]])

    def tables(self):
        return sorted(r[0] for r in self.pg.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'system'"))

    def test_up_down_up_and_rerun_is_harmless(self):
        self.assertEqual(pinsctl(self.pg.url, "current").stdout.split()[0], "0")
        out = pinsctl(self.pg.url, "upgrade", "head").stdout
        self.assertIn("applied 2 migrations", out)
        self.assertEqual(self.tables(), ["memory_audit", "memory_pins", "pin_changes",
                                         "pin_revisions", "pins_schema_migrations", "rbac_audit"])
        self.assertEqual(self.pg.query("SELECT version, name FROM system.pins_schema_migrations"
                                       " ORDER BY version"),
                         [["1", "001_memory_pins"], ["2", "002_pin_revisions"]])
        self.pg.psql("INSERT INTO system.memory_pins (key, tenant_id, value)"
                     " VALUES ('k', 't', '{\"a\":1}')")
        out = pinsctl(self.pg.url, "upgrade", "head").stdout  # re-run: nothing to do
        self.assertIn("applied 0 migrations", out)
        self.assertEqual(self.pg.query("SELECT key FROM system.memory_pins"), [["k"]])
        self.assertIn("(head)", pinsctl(self.pg.url, "current").stdout)
        hist = pinsctl(self.pg.url, "history").stdout
        self.assertRegex(hist, r"001\s+001_memory_pins\s+\d{4}-\d\d-\d\dT")

        # 002 reverted alone: the revisions go, the pins stay.
        out = pinsctl(self.pg.url, "downgrade", "-1").stdout
        self.assertIn("reverted 1 migration", out)
        self.assertEqual(self.tables(), ["memory_audit", "memory_pins", "pins_schema_migrations",
                                         "rbac_audit"])
        self.assertEqual(self.pg.query("SELECT key FROM system.memory_pins"), [["k"]])
        out = pinsctl(self.pg.url, "downgrade", "-1").stdout
        self.assertIn("reverted 1 migration", out)
        self.assertEqual(self.tables(), ["pins_schema_migrations"])
        self.assertIn("not applied", pinsctl(self.pg.url, "history").stdout)
        r = pinsctl(self.pg.url, "downgrade", "-1", check=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no applied migration", r.stderr)

        pinsctl(self.pg.url, "upgrade", "+1")
        self.assertIn("memory_pins", self.tables())
        self.assertNotIn("pin_changes", self.tables())
        pinsctl(self.pg.url, "downgrade", "base")
        pinsctl(self.pg.url, "upgrade", "head")
        self.assertEqual(self.pg.query("SELECT count(*) FROM system.memory_pins"), [["0"]])

    def test_runbook_phase1_check_and_rollback(self):
        pinsctl(self.pg.url, "upgrade", "head")
        d = self.pg.psql("\\d system.memory_pins").stdout
        for col in ("id", "key", "tenant_id", "value", "source", "created_at", "updated_at",
                    "ttl_seconds", "expires_at", "version"):
            self.assertRegex(d, r"(?m)^%s\|" % col)
        idx = {r[0] for r in self.pg.query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'system'"
            " AND tablename = 'memory_pins'")}
        self.assertTrue({"ix_memory_pins_tenant_key", "ix_memory_pins_expires_at",
                         "ix_memory_pins_tenant_created"} <= idx)
        self.assertEqual(self.pg.query("SELECT count(*) FROM pg_trigger t JOIN pg_class c"
                                       " ON c.oid = t.tgrelid WHERE c.relname = 'memory_pins'"
                                       " AND NOT t.tgisinternal"), [["0"]])
        self.assertEqual(self.pg.query("SELECT system.cleanup_memory_audit(30),"
                                       " system.cleanup_rbac_audit(90)"), [["0", "0"]])
        # The M7 rollback now takes two steps: 002 (revisions), then 001 (the tables).
        pinsctl(self.pg.url, "downgrade", "-2")
        r = self.pg.psql("\\dt system.memory_pins", check=False)
        self.assertIn("Did not find any relation", r.stdout + r.stderr)

    def test_errors_are_clear_and_never_show_the_password(self):
        r = subprocess.run([PINSCTL, "--database-url",
                            "postgresql://u:s3cret@127.0.0.1:%d/pins" % pg.free_port(),
                            "migrate", "current"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect to the database", r.stderr)
        self.assertNotIn("s3cret", r.stderr)
        r = subprocess.run([PINSCTL, "migrate", "upgrade", "sideways"],
                           env=dict(os.environ, DATABASE_URL=self.pg.url),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        # pinsctl's help names migrate among its commands; migrate's own help lists its steps.
        r = subprocess.run([PINSCTL, "--help"], stdout=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 0)
        self.assertIn("  migrate ...", r.stdout)
        r = subprocess.run([PINSCTL, "migrate", "--help"], stdout=subprocess.PIPE, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0)
        self.assertIn("migrate upgrade head", r.stdout)


if __name__ == "__main__":
    unittest.main()
