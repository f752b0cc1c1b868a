"""PostgreSQL failover under pinsd: a primary with a real synchronous streaming standby on loopback
(pg_basebackup -R, synchronous_standby_names '*', synchronous_commit on), and a pinsd whose
DATABASE_URL names both hosts with target_session_attrs=read-write. Under a bounded write load the
primary is SIGKILLed and the standby promoted (pg_promote):

- while no primary is known, writes fail fast (UNAVAILABLE, answered by pinsd before the
  client's deadline) and nothing hangs;
- writes resume by themselves after the promotion (the time from the promotion to the first
  acknowledged write is printed; the test bounds it generously, the target is 5 s);
- every write acknowledged before, during and after the failover is on the promoted standby;
- the change feed follows too: a watcher that resumes from its last revision misses nothing.

Every loop is bounded in count and time.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
import pg  # noqa: E402
import harness  # noqa: E402
from harness import Server, mp  # noqa: E402
from test_pg_pinsd import migrate  # noqa: E402
from test_watch_resume import StreamReader  # noqa: E402

SC = grpc.StatusCode
PG_BASEBACKUP = os.path.join(pg.PG_BIN, "pg_basebackup")


class Standby(pg.PgServer):
    """A streaming standby of primary, made with pg_basebackup -R in a temporary directory."""

    def __init__(self, primary):  # noqa: super().__init__ would run initdb
        self.dir = tempfile.mkdtemp(prefix="pins-pgs-")
        os.chmod(self.dir, 0o755)
        pg._chown(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.port = pg.free_port()
        self.proc = None
        self.max_connections = 100
        self.extra_conf = {}
        self.log = os.path.join(self.dir, "postgres.log")
        pg._live.append(self)
        subprocess.run([PG_BASEBACKUP, "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                        "postgres", "-D", self.data, "-R", "-X", "stream", "-c", "fast"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                       **pg._as_postgres())


class FailoverTest(unittest.TestCase):

    def setUp(self):
        if not pg.available() or not os.path.exists(PG_BASEBACKUP):
            self.skipTest("PostgreSQL 15 binaries not found")
        self.primary = pg.PgServer().start()
        self.addCleanup(self.primary.destroy)
        migrate(self.primary.url, "upgrade", "head")
        self.standby = Standby(self.primary)
        self.addCleanup(self.standby.destroy)
        self.standby.start(create_db=False)
        self.primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'", db="postgres")
        self.primary.psql("SELECT pg_reload_conf()", db="postgres")
        deadline = time.monotonic() + 60
        while self.primary.query("SELECT sync_state FROM pg_stat_replication",
                                 db="postgres") != [["sync"]]:
            self.assertLess(time.monotonic(), deadline, "the standby never became synchronous")
            time.sleep(0.2)
        url = ("postgresql://postgres@127.0.0.1:%d,127.0.0.1:%d/pins"
               "?target_session_attrs=read-write&connect_timeout=2"
               % (self.primary.port, self.standby.port))
        self.server = Server({"DATABASE_URL": url, "RATE_LIMIT_RPM": "0", "DB_POOL_SIZE": "4",
                              "PINS_SWEEP_INTERVAL_SECONDS": "3600"})
        self.addCleanup(lambda: self.assertEqual(self.server.sanitizer_findings, []))
        self.addCleanup(self.server.cleanup)
        self.addCleanup(harness._print_tail_on_failure, self, self.server)
        self.server.start(ready_timeout=30)
        self.client = self.server.client()
        self.addCleanup(self.client.close)

    def test_writes_follow_a_promoted_synchronous_standby_and_none_is_lost(self):
        t = "failover"
        acked = {}
        failures = []  # (code, seconds the call took, phase)
        phase = {"v": "before"}
        stop = threading.Event()
        first_after = {}

        def writer():
            c = self.server.client()
            try:
                for n in range(3000):
                    if stop.is_set():
                        break
                    key = "k%d" % n
                    t0 = time.monotonic()
                    try:
                        p = c.call(mp("UpsertPin"), {"tenant_id": t, "key": key, "value": {"n": n}},
                                   timeout=5).pin
                        acked[key] = p.version
                        if phase["v"] == "promoted" and "t" not in first_after:
                            first_after["t"] = time.monotonic()
                    except grpc.RpcError as e:
                        failures.append((e.code(), time.monotonic() - t0, phase["v"]))
                    time.sleep(0.01)
            finally:
                c.close()

        w = threading.Thread(target=writer)
        w.start()
        try:
            deadline = time.monotonic() + 60
            while len(acked) < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertGreaterEqual(len(acked), 100, failures[-5:])
            phase["v"] = "down"
            self.primary.stop(sig=signal.SIGKILL)
            time.sleep(1.5)  # writes fail meanwhile
            phase["v"] = "promoted"
            promoted_at = time.monotonic()
            self.standby.psql("SELECT pg_promote(true, 60)", db="postgres")
            deadline = time.monotonic() + 60
            while "t" not in first_after and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertIn("t", first_after, "no write succeeded within 60 s of the promotion: %r"
                          "\n%s" % (failures[-3:], self.server.stderr_tail()))
            resumed_in = first_after["t"] - promoted_at
            print("\nwrites resumed %.2f s after the promotion" % resumed_in, file=sys.stderr)
            n_after = len(acked)
            deadline = time.monotonic() + 60
            while len(acked) < n_after + 100 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            w.join(60)
        self.assertFalse(w.is_alive())
        down = [f for f in failures if f[2] == "down"]
        self.assertTrue(down, "no write was attempted while no primary was known")
        self.assertEqual({f[0] for f in failures}, {SC.UNAVAILABLE},
                         "failures other than UNAVAILABLE: %r" % failures[:10])
        self.assertTrue(all(f[1] < 5 for f in failures), "a write waited out its deadline")
        self.assertLess(resumed_in, 30)
        # every acknowledged write is on the promoted standby
        rows = dict(self.standby.query(
            "SELECT key, version FROM system.memory_pins WHERE tenant_id = 'failover'"))
        lost = [k for k, v in acked.items() if int(rows.get(k, 0)) < v]
        self.assertEqual(lost, [], "acknowledged writes missing after the failover")
        # the change feed follows: a resumed watch replays what it missed, then goes live
        last = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "last",
                                                  "value": {}}).pin.revision
        got = None
        for _ in range(100):  # the feed reconnects to the new primary within its backoff
            r2 = StreamReader(self.client, {"tenant_id": t, "since_revision": last - 5})
            item = r2.next(5)
            if item is not None and item[0] == "event":
                got = [item[1].pin.revision] + [e.pin.revision
                                                for e in r2.events_until(last, timeout=10)]
                r2.cancel()
                break
            r2.cancel()
            if item is not None:  # None: nothing within 5 s (a loaded machine): try again
                self.assertEqual(item[1].code(), SC.UNAVAILABLE, item[1].details())
            time.sleep(0.2)
        self.assertEqual(got, list(range(last - 4, last + 1)))


if __name__ == "__main__":
    unittest.main()
