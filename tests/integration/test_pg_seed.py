"""pinsctl seed --verify --sql-verify against a real pinsd on a real PostgreSQL 15 (pg.py).

The runbook's seed file through ops/seed_memory_pins.py with both verifications (every row read
back from system.memory_pins and compared as jsonb, the TTL pin's expires_at set); then rows
changed behind pinsd's back by triggers on system.memory_pins: a row deleted right after its
insert, a row whose expires_at is forced into the past, and a row whose value is rewritten are
each reported as not SQL-verified (exit 1), while the others are. A DATABASE_URL that cannot be
used fails the SQL verification without printing its password, nor any part of a DATABASE_URL
libpq cannot parse; a database that never answers and a query that never ends are bounded by
SEED_TIMEOUT; an empty tenant is verified as "global".

Run: PINSD_BIN=build/pinsd PINSCTL_BIN=build/pinsctl /usr/bin/python3 -m unittest -v test_pg_seed
"""

import os
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, HERE)

import pg  # noqa: E402
import harness  # noqa: E402
from test_pinsctl_seed import (MACHINE, RUNBOOK_PINS, SeedCase, need_pinsctl,  # noqa: E402
                               run_seed, seed_env, PINSCTL)
from test_rbac import ENFORCED  # noqa: E402

_pg = None


def setUpModule():
    global _pg
    if not pg.available():
        raise unittest.SkipTest("PostgreSQL 15 binaries not found")
    need_pinsctl()
    _pg = pg.PgServer().start()
    r = subprocess.run([PINSCTL, "--database-url", _pg.url, "migrate", "upgrade", "head"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError("pinsctl migrate upgrade head: " + r.stderr)


def tearDownModule():
    if _pg is not None:
        _pg.destroy()


class SeedOnPostgres(SeedCase):

    @classmethod
    def setUpClass(cls):
        cls.SERVER_ENV = dict(ENFORCED, DATABASE_URL=_pg.url)
        super().setUpClass()

    def test_runbook_file_verified_by_api_and_sql(self):
        env = seed_env({"MACHINE_JWT": MACHINE, "PINSCTL_BIN": PINSCTL, "DATABASE_URL": _pg.url})
        r = subprocess.run([sys.executable, "ops/seed_memory_pins.py", "--file",
                            "ops/memory_pins_seed.json", "--base", self.base(), "--verify",
                            "--sql-verify"],
                           cwd=harness.REPO, env=env, capture_output=True, text=True, timeout=180)
        self.assertSeeded(r, 8)
        self.assertRegex(r.stdout, r"Verified API:\s+8\n")
        self.assertRegex(r.stdout, r"Verified SQL:\s+8\n")
        self.assertNoSecret(r)
        for tenant, key in RUNBOOK_PINS:
            self.assertIn("[VERIFIED] SQL: %s/%s" % (tenant, key), r.stdout)
        rows = _pg.query("SELECT tenant_id, key, source, ttl_seconds, expires_at IS NOT NULL"
                         " FROM system.memory_pins ORDER BY tenant_id, key")
        got = {(t, k): (s, ttl, exp) for t, k, s, ttl, exp in rows}
        for tenant, key in RUNBOOK_PINS:
            self.assertEqual(got[(tenant, key)][0], "seed_script")
        self.assertEqual(got[("test", "test:ephemeral")][1:], ("3600", "t"))
        self.assertEqual(got[("global", "test-key")][1:], ("", "f"))
        self.assertEqual(_pg.query("SELECT value::text FROM system.memory_pins"
                                   " WHERE tenant_id = 'global' AND key = 'test-key'"),
                         [['{"foo": "bar"}']])

    def test_sql_verify_detects_rows_changed_behind_its_back(self):
        _pg.psql("""
            CREATE FUNCTION seed_test_tamper() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.key = 'sv-rewritten' THEN NEW.value := '{"tampered": true}'::jsonb; END IF;
              IF NEW.key = 'sv-expired' THEN NEW.expires_at := now() - interval '1 hour'; END IF;
              RETURN NEW;
            END $$;
            CREATE FUNCTION seed_test_vanish() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              DELETE FROM system.memory_pins WHERE id = NEW.id;
              RETURN NULL;
            END $$;
            CREATE TRIGGER seed_test_tamper BEFORE INSERT ON system.memory_pins
              FOR EACH ROW EXECUTE FUNCTION seed_test_tamper();
            CREATE TRIGGER seed_test_vanish AFTER INSERT ON system.memory_pins
              FOR EACH ROW WHEN (NEW.key = 'sv-deleted') EXECUTE FUNCTION seed_test_vanish();
        """)
        self.addCleanup(_pg.psql, """
            DROP TRIGGER seed_test_tamper ON system.memory_pins;
            DROP TRIGGER seed_test_vanish ON system.memory_pins;
            DROP FUNCTION seed_test_tamper(); DROP FUNCTION seed_test_vanish();
        """)
        path = self.write([{"tenant_id": "seed-sv", "ttl_seconds": 600,
                            "pins": {"sv-kept": {"a": 1, "b": [1, 2]},
                                     "sv-deleted": {"a": 2},
                                     "sv-expired": {"a": 3},
                                     "sv-rewritten": {"a": 4}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--sql-verify"],
                     env={"MACHINE_JWT": MACHINE, "DATABASE_URL": _pg.url})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"Success:\s+4\n")
        self.assertRegex(r.stdout, r"Verified SQL:\s+1\n")
        self.assertIn("[VERIFIED] SQL: seed-sv/sv-kept", r.stdout)
        self.assertIn("[SQL VERIFY FAILED] seed-sv/sv-deleted: no live row", r.stdout)
        self.assertIn("[SQL VERIFY FAILED] seed-sv/sv-expired: no live row", r.stdout)
        self.assertIn("[SQL VERIFY FAILED] seed-sv/sv-rewritten: the row's value differs",
                      r.stdout)
        self.assertNotIn("All pins seeded and verified successfully!", r.stdout)

    def test_unusable_database_url_fails_without_printing_it(self):
        path = self.write([{"tenant_id": "seed-dburl", "pins": {"k": {}}}])
        url = "postgresql://postgres:hunter2-sekrit@127.0.0.1:%d/no_such_db" % _pg.port
        r = run_seed(["-f", path, "-b", self.base(), "--sql-verify"],
                     env={"MACHINE_JWT": MACHINE, "DATABASE_URL": url})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("cannot connect to DATABASE_URL", r.stderr)
        self.assertRegex(r.stdout, r"Verified SQL:\s+0\n")
        self.assertNotIn("hunter2-sekrit", r.stdout + r.stderr)
        self.assertNotIn(url, r.stdout + r.stderr)

    def test_unparsable_database_url_is_never_echoed(self):
        # libpq's parse errors quote the token they choke on, which can be the password: only a
        # fixed message goes out.
        path = self.write([{"tenant_id": "seed-dbparse", "pins": {"k": {}}}])
        for url, secret in (
                ("postgresql://nova:hunter%%zz2@127.0.0.1:%d/db" % _pg.port, "hunter%zz2"),
                ("postgresql://nova:hunter%%002@127.0.0.1:%d/db" % _pg.port, "hunter%002"),
                ("host=127.0.0.1 port=%d password=hunter2 sekrit" % _pg.port, "sekrit")):
            with self.subTest(url=url.replace(secret, "***")):
                r = run_seed(["-f", path, "-b", self.base(), "--sql-verify"],
                             env={"MACHINE_JWT": MACHINE, "DATABASE_URL": url})
                out = r.stdout + r.stderr
                self.assertEqual(r.returncode, 1, out.replace(secret, "***"))
                self.assertIn("DATABASE_URL cannot be parsed as a PostgreSQL connection string",
                              r.stderr)
                self.assertRegex(r.stdout, r"Verified SQL:\s+0\n")
                self.assertNotIn(secret, out)
                self.assertNotIn("hunter", out)
                self.assertNotIn("nova", out)

    def test_unanswering_database_is_bounded_by_seed_timeout(self):
        # A listener that takes the TCP connection (the kernel's backlog) and never answers: the
        # connection attempt ends after SEED_TIMEOUT (connect_timeout), not never.
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(lsock.close)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        url = "postgresql://nova:silent-sekrit@127.0.0.1:%d/db" % lsock.getsockname()[1]
        path = self.write([{"tenant_id": "seed-dbhang", "pins": {"k": {}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--sql-verify"],
                     env={"MACHINE_JWT": MACHINE, "DATABASE_URL": url, "SEED_TIMEOUT": "2"},
                     timeout=90)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("[OK] Upserted: seed-dbhang/k", r.stdout)
        self.assertIn("cannot connect to DATABASE_URL", r.stderr)
        self.assertNotIn("silent-sekrit", r.stdout + r.stderr)

    def test_slow_verification_query_is_bounded_by_statement_timeout(self):
        # A database whose system.memory_pins takes 60 s to read: the query is cancelled after
        # SEED_TIMEOUT (statement_timeout) and the pin counts as not SQL-verified.
        _pg.psql("DROP DATABASE IF EXISTS seed_slow", db="postgres")
        _pg.psql("CREATE DATABASE seed_slow", db="postgres")
        self.addCleanup(_pg.psql, "DROP DATABASE IF EXISTS seed_slow", db="postgres",
                        check=False)
        _pg.psql("""
            CREATE SCHEMA system;
            CREATE VIEW system.memory_pins AS
              SELECT 'seed-slow'::text AS tenant_id, 'k'::text AS key, '{}'::jsonb AS value,
                     NULL::timestamptz AS expires_at
              FROM pg_sleep(60);
        """, db="seed_slow")
        path = self.write([{"tenant_id": "seed-slow", "pins": {"k": {}}}])
        url = "postgresql://postgres@127.0.0.1:%d/seed_slow" % _pg.port
        r = run_seed(["-f", path, "-b", self.base(), "--sql-verify"],
                     env={"MACHINE_JWT": MACHINE, "DATABASE_URL": url, "SEED_TIMEOUT": "2"},
                     timeout=50)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("[SQL VERIFY FAILED] seed-slow/k", r.stdout)
        self.assertIn("statement timeout", r.stderr)
        self.assertRegex(r.stdout, r"Verified SQL:\s+0\n")

    def test_empty_tenant_is_verified_as_global(self):
        path = self.write([{"tenant_id": "", "pins": {"seed-empty-tenant": {"a": 1}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--verify", "--sql-verify"],
                     env={"MACHINE_JWT": MACHINE, "DATABASE_URL": _pg.url})
        self.assertSeeded(r, 1)
        self.assertIn("[OK] Upserted: global/seed-empty-tenant", r.stdout)
        self.assertIn("[VERIFIED] SQL: global/seed-empty-tenant", r.stdout)
        self.assertEqual(_pg.query("SELECT tenant_id FROM system.memory_pins"
                                   " WHERE key = 'seed-empty-tenant'"), [["global"]])


if __name__ == "__main__":
    unittest.main()
