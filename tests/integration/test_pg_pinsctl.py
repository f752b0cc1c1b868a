"""pinsctl against a real pinsd on a real PostgreSQL 15 (tests/integration/pg.py).

The command classes of tests/interop/test_pinsctl.py run unchanged on PostgreSQL: every command
and its --json output compared with grpcio, the tables, the exit statuses, watch while grpcio
writes, cleanup of expired pins, over h2c, TLS and mutual TLS. Then `pinsctl ready` and the
data commands while PostgreSQL is down (the server's no: exit 1, checks printed) and after it is
back.

Run: PINSD_BIN=build/pinsd PINSCTL_BIN=build/pinsctl /usr/bin/python3 -m unittest -v test_pg_pinsctl
"""

import json
import os
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, HERE)

import pg  # noqa: E402
import harness  # noqa: E402
import test_pinsctl  # noqa: E402
from test_pinsctl import run_ctl  # noqa: E402

PG_ENV = {"RATE_LIMIT_RPM": "0", "PINS_SWEEP_INTERVAL_SECONDS": "3600"}
_pg = None


def migrate(url):
    r = subprocess.run([test_pinsctl.PINSCTL, "--database-url", url, "migrate", "upgrade", "head"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("pinsctl migrate upgrade head: " + r.stderr)


def setUpModule():
    global _pg
    if not pg.available():
        raise unittest.SkipTest("PostgreSQL 15 binaries not found")
    _pg = pg.PgServer().start()
    migrate(_pg.url)
    PG_ENV["DATABASE_URL"] = _pg.url


def tearDownModule():
    if _pg is not None:
        _pg.destroy()


class PinsctlOnPostgres(test_pinsctl.CommandsMixin, harness.ServerTestCase):
    """Every command over h2c, pinsd on PostgreSQL."""

    TENANT_PREFIX = "pg"

    @classmethod
    def setUpClass(cls):
        # PG_ENV gets DATABASE_URL in setUpModule, after this class was defined.
        cls.SERVER_ENV = dict(PG_ENV)
        super().setUpClass()

    def test_the_server_is_on_postgres(self):
        doc = test_pinsctl.one_json(self, self.ctl("--json", "status"))
        self.assertEqual(doc["store"].get("backend"), "postgres", doc["store"])


class PinsctlTlsOnPostgres(test_pinsctl.PinsctlTlsTest):
    """The commands over TLS, pinsd on PostgreSQL."""

    TENANT_PREFIX = "pgtls"

    @classmethod
    def store_env(cls):
        return {"DATABASE_URL": PG_ENV["DATABASE_URL"]}


class PinsctlMutualTlsOnPostgres(test_pinsctl.PinsctlMutualTlsTest):
    """The commands over mutual TLS, pinsd on PostgreSQL."""

    TENANT_PREFIX = "pgmtls"

    @classmethod
    def store_env(cls):
        return {"DATABASE_URL": PG_ENV["DATABASE_URL"]}


class ReadyWhilePostgresIsDown(unittest.TestCase):
    """A cluster of its own, stopped under a running pinsd and started again."""

    def setUp(self):
        self.db = pg.PgServer().start()
        self.addCleanup(self.db.destroy)
        migrate(self.db.url)
        self.server = harness.Server(dict(PG_ENV, DATABASE_URL=self.db.url))
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def ctl(self, *args, **kw):
        return run_ctl(["--addr", self.server.target, "--timeout", "5s"] + list(args), **kw)

    def wait_ready_exit(self, want, timeout=30):
        deadline = time.monotonic() + timeout
        r = None
        while time.monotonic() < deadline:
            r = self.ctl("ready")
            if r.returncode == want:
                return r
            time.sleep(0.3)
        self.fail("pinsctl ready did not exit %d within %d s (last: %r)" % (want, timeout, r))

    def test_ready_and_calls_follow_the_database(self):
        r = self.ctl("put", "pgdown", "k", '{"a": 1}')
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.wait_ready_exit(0)
        self.assertIn("ready: true", r.stdout)

        self.db.stop()
        r = self.wait_ready_exit(1)
        self.assertIn("ready: false", r.stdout)
        self.assertIn("  store: down", r.stdout)
        self.assertIn("pinsctl: ready: not ready (HTTP 503)", r.stderr)
        doc = json.loads(self.ctl("ready", "--json").stdout)
        self.assertEqual((doc["ready"], doc["checks"]["store"]), (False, "down"))
        # The server answers, with a no: exit 1, never 3, and within the deadline.
        start = time.monotonic()
        r = self.ctl("get", "pgdown", "k")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"^pinsctl: get: (UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED): ")
        self.assertLess(time.monotonic() - start, 15)
        r = self.ctl("health")
        self.assertIn(r.returncode, (0, 1), r.stderr)

        self.db.start(create_db=False)
        self.wait_ready_exit(0)
        r = self.ctl("--json", "get", "pgdown", "k")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["value"], {"a": 1})


if __name__ == "__main__":
    unittest.main()
