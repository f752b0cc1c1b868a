"""Three pinsd replicas on one real PostgreSQL 15 (writes through PgBouncer in transaction mode,
the change feed on direct connections: DATABASE_LISTEN_URL) and one real Redis (the shared rate
limiter), all on loopback (tests/integration/pg.py, tests/interop/test_ratelimit.Redis):

- a watcher on each replica sees every write made on any replica, exactly once and in commit
  order, under a bounded concurrent write load from all three;
- EXPIRE events from the sweeper of another replica;
- a change larger than NOTIFY's 8000-byte payload arrives whole;
- a watcher cut mid-stream resumes on another replica with no gap and no duplicate;
- a slow SSE consumer is cut off (its last event an error naming the revision to resume from)
  while a watcher on the same replica keeps up;
- reads on one replica right after a write acknowledged on another never see an older version,
  and some of them come from the read cache;
- the read cache while the LISTEN connections are killed again and again: never stale, and
  serving again once the feeds are back; a skipped revision, announced, keeps it serving;
- the LISTEN connections killed with pg_terminate_backend: streams end with UNAVAILABLE naming
  their last revision, the feed comes back, and resuming from that revision misses nothing
  written meanwhile;
- one replica SIGKILLed under a write load while the clients retry through the others: no
  acknowledged write is lost.

Every loop is bounded in count and time; nothing asserts on how long something took.
"""
import json
import os
import re
import signal
import sys
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
import test_metrics  # noqa: E402
from test_ratelimit import REDIS_SERVER, Redis  # noqa: E402
from test_watch_bounds import SlowSseReader  # noqa: E402
from test_watch_resume import EXPIRE, PUT, StreamReader  # noqa: E402

SC = grpc.StatusCode
RETRYABLE = (SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED)


class ReplicasTest(unittest.TestCase):
    """One PostgreSQL, one PgBouncer, one Redis and three pinsd for the class; replica 0 sweeps
    every second, the others never (so an EXPIRE event seen elsewhere comes from replica 0)."""

    @classmethod
    def setUpClass(cls):
        if not pg.available():
            raise unittest.SkipTest("PostgreSQL 15 binaries not found")
        if REDIS_SERVER is None:
            raise unittest.SkipTest("redis-server not found")
        cls.servers = []
        cls.pg = pg.PgServer().start()
        try:
            migrate(cls.pg.url, "upgrade", "head")
            cls.bouncer = pg.PgBouncer(cls.pg).start()
            cls.redis = Redis()
            cls.redis.start()
            for i in range(3):
                s = Server(cls.env(i))
                cls.servers.append(s)
                s.start(ready_timeout=30)
            cls.clients = [s.client() for s in cls.servers]
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def env(cls, i):
        return {"DATABASE_URL": cls.bouncer.url, "DATABASE_LISTEN_URL": cls.pg.url,
                "REDIS_URL": cls.redis.url, "RATE_LIMIT_RPM": "1000000",
                "RATE_LIMIT_BURST": "1000000", "DB_POOL_SIZE": "4",
                "PINS_SWEEP_INTERVAL_SECONDS": "1" if i == 0 else "3600"}

    @classmethod
    def tearDownClass(cls):
        for c in getattr(cls, "clients", []):
            c.close()
        for s in cls.servers:
            s.cleanup()
        for name in ("redis", "bouncer"):
            srv = getattr(cls, name, None)
            if srv is not None:
                (srv.cleanup if name == "redis" else srv.destroy)()
        cls.pg.destroy()
        findings = sum((s.sanitizer_findings for s in cls.servers), [])
        if findings:
            raise AssertionError("sanitizer report from a replica:\n" + "\n".join(findings))

    def setUp(self):
        for s in self.servers:
            self.addCleanup(harness._print_tail_on_failure, self, s)
        self.feed_up_everywhere()

    # -- helpers

    def upsert(self, i, tenant, key, value, **kw):
        fields = {"tenant_id": tenant, "key": key, "value": value}
        fields.update(kw)
        return self.clients[i].call(mp("UpsertPin"), fields).pin

    def watch(self, i, tenant, since=0, prefix=""):
        r = StreamReader(self.clients[i], {"tenant_id": tenant, "since_revision": since,
                                           "prefix": prefix})
        self.addCleanup(r.cancel)
        return r

    def live(self, readers, tenant, i=0):
        """A marker write reaches every reader: they are all subscribed. Returns its revision."""
        pin = self.upsert(i, tenant, "marker-%d" % time.monotonic_ns(), {})
        for r in readers:
            got = r.events_until(pin.revision)
            self.assertTrue(got and got[-1].pin.revision == pin.revision,
                            "a watcher did not see the marker: %r" % got)
        return pin.revision

    def feed_up_everywhere(self, timeout=30):
        """Waits until every replica's change feed is live (watch_feed_up 1: a watch is accepted
        there), bounded."""
        deadline = time.monotonic() + timeout
        for i, s in enumerate(self.servers):
            while test_metrics.scrape(s).get("watch_feed_up") != 1:
                self.assertLess(time.monotonic(), deadline, "replica %d's feed stayed down" % i)
                time.sleep(0.1)

    # -- tests

    def test_every_replica_sees_every_write_once_in_commit_order(self):
        t = "fanout"
        readers = [self.watch(i, t) for i in range(3)]
        start = self.live(readers, t)
        acked = [[] for _ in range(3)]

        def writer(i):
            c = self.servers[i].client()
            try:
                for n in range(120):
                    acked[i].append(c.call(mp("UpsertPin"), {
                        "tenant_id": t, "key": "k%d" % (n % 11), "value": {"w": i, "n": n}},
                        timeout=20).pin.revision)
            finally:
                c.close()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        self.assertEqual([len(a) for a in acked], [120, 120, 120])
        last = max(max(a) for a in acked)
        seqs = []
        for r in readers:
            seqs.append([e.pin.revision for e in r.events_until(last, timeout=60)])
        all_acked = sorted(sum(acked, []))
        self.assertEqual(len(set(all_acked)), 360, "two writes got one revision")
        for i, seq in enumerate(seqs):
            self.assertEqual(seq, sorted(set(seq)), "replica %d: out of order or twice" % i)
            self.assertEqual(seq, [r for r in seq if r > start])
            self.assertEqual(set(all_acked) - set(seq), set(), "replica %d missed writes" % i)
        self.assertEqual(seqs[0], seqs[1])
        self.assertEqual(seqs[1], seqs[2])

    def test_expire_event_from_another_replicas_sweeper(self):
        t = "expire-elsewhere"
        r = self.watch(2, t)
        self.live([r], t, 1)
        p = self.upsert(1, t, "short", {"x": 1}, ttl_seconds=1)
        got = r.events_until(p.revision + 1, timeout=30)
        self.assertEqual([(e.type, e.pin.key) for e in got], [(PUT, "short"), (EXPIRE, "short")])
        self.assertEqual(got[1].pin.revision, p.revision + 1)
        self.assertEqual(got[1].pin.value["x"], 1)

    def test_change_larger_than_a_notify_payload_arrives_whole(self):
        t = "big"
        r = self.watch(2, t)
        self.live([r], t)
        blob = "".join(chr(0x41 + (i % 26)) for i in range(20000))
        p = self.upsert(0, t, "big", {"blob": blob, "n": 7})
        small = self.upsert(0, t, "small", {"n": 8})
        got = r.events_until(small.revision)
        self.assertEqual([e.pin.key for e in got], ["big", "small"])
        self.assertEqual(got[0].pin.value["blob"], blob)
        self.assertEqual(got[0].pin.revision, p.revision)

    def test_cut_watcher_resumes_on_another_replica_without_gap_or_duplicate(self):
        t = "cut-replicas"
        r = self.watch(0, t)
        start = self.live([r], t)
        acked = []

        def writer():
            c = self.servers[1].client()
            try:
                for n in range(300):
                    acked.append(c.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % (n % 13),
                                                          "value": {"n": n}}, timeout=20).pin.revision)
            finally:
                c.close()

        w = threading.Thread(target=writer)
        w.start()
        seen = []
        while len(seen) < 80:
            item = r.next(20)
            self.assertIsNotNone(item, "no event within 20 s")
            self.assertEqual(item[0], "event", item)
            seen.append(item[1].pin.revision)
        r.cancel()
        r2 = self.watch(2, t, since=seen[-1])
        w.join(120)
        self.assertEqual(len(acked), 300)
        seen += [e.pin.revision for e in r2.events_until(max(acked), timeout=60)]
        self.assertEqual(seen, sorted(set(seen)), "a gap-free merge has no duplicate")
        self.assertEqual(seen[0], start + 1)
        self.assertEqual(set(acked) - set(seen), set())

    def test_slow_consumer_is_cut_while_others_keep_up(self):
        t = "slow-replicas"
        s = Server(dict(self.env(1), PINS_WATCH_PENDING_BYTES="65536"))
        self.addCleanup(lambda: self.assertEqual(s.sanitizer_findings, []))
        self.addCleanup(s.cleanup)
        s.start(ready_timeout=30)
        c = s.client()
        self.addCleanup(c.close)
        slow = SlowSseReader(s.port, t)
        self.addCleanup(slow.close)
        slow.pump(lambda: slow.headers is not None, 30)
        self.assertEqual((slow.headers or {}).get(":status"), "200")
        fast = StreamReader(c, {"tenant_id": t})
        self.addCleanup(fast.cancel)
        self.live([fast], t)  # the slow stream gets this marker too (unread)
        blob = "z" * 40000
        pins = [self.upsert(i % 3, t, "b%d" % i, {"blob": blob}) for i in range(4)]
        got = fast.events_until(pins[-1].revision)
        self.assertEqual([e.pin.key for e in got], ["b0", "b1", "b2", "b3"])
        slow.open_window()
        slow.pump(lambda: False, 30)
        self.assertTrue(slow.ended, "the slow stream was not ended (reset %r)" % slow.reset_code)
        events = re.findall(r"event: (\w+)\ndata: ([^\n]*)\n\n", slow.data.decode())
        self.assertEqual(events[-1][0], "error", events)
        err = json.loads(events[-1][1])
        self.assertEqual(err["code"], 8)
        m = re.search(r"since_revision=(\d+)", err["message"])
        self.assertIsNotNone(m, err)
        ids = [int(x) for x in re.findall(r"^id: (\d+)$", slow.data.decode(), re.M)]
        self.assertEqual(int(m.group(1)), ids[-1] if ids else int(m.group(1)))
        resumed = StreamReader(c, {"tenant_id": t, "since_revision": int(m.group(1))})
        self.addCleanup(resumed.cancel)
        rest = resumed.events_until(pins[-1].revision)
        self.assertEqual(rest[-1].pin.revision, pins[-1].revision)
        got = [r for r in ids if r >= pins[0].revision] + [e.pin.revision for e in rest]
        self.assertEqual(got, [p.revision for p in pins],
                         "the slow stream's events and the resumed ones: each change once")

    def cache_hits(self):
        return sum(test_metrics.scrape(s).get("memory_cache_hits_total", 0) for s in self.servers)

    def test_reads_after_an_acknowledged_write_elsewhere_are_never_stale(self):
        """The checker of the read cache: each write is followed at once by reads on both other
        replicas (twice: the second finds the row the first cached, or the change the feed
        applied). A stale read is a version below the acknowledged one. The cache must have
        answered some of the reads, or the test proved nothing about it."""
        t = "stale-check"
        stale = []
        hits = self.cache_hits()
        for n in range(300):
            w = n % 3
            p = self.upsert(w, t, "k%d" % (n % 5), {"n": n})
            for rd in ((w + 1) % 3, (w + 2) % 3, (w + 1) % 3, (w + 2) % 3):
                got = self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": p.key}).pin
                if got.version < p.version or got.value["n"] != n:
                    stale.append((n, w, rd, p.version, got.version))
        self.assertEqual(stale, [])
        self.assertGreater(self.cache_hits() - hits, 0, "no read was answered by the cache")

    def test_read_cache_is_dropped_while_the_feed_is_down_and_serves_again_after(self):
        """The LISTEN connections killed again and again, each time with a write on one replica
        and reads on the others racing the feeds' reconnection: never stale. Once the feeds are
        back, reads are answered from the cache again."""
        t = "cache-feed-kill"
        for i in range(3):  # cached everywhere
            self.upsert(0, t, "k%d" % i, {"n": -1})
            for rd in range(3):
                self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": "k%d" % i})
        stale = []
        last = {}
        for n in range(6):
            self.pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'pinsd-feed' AND datname = 'pins'")
            for m in range(5):
                w = (n + m) % 3
                p = self.upsert(w, t, "k%d" % (m % 3), {"n": n * 10 + m})
                last[p.key] = p.version
                for rd in ((w + 1) % 3, (w + 2) % 3):
                    got = self.clients[rd].call(mp("GetPin"),
                                                {"tenant_id": t, "key": p.key}).pin
                    if got.version < p.version:
                        stale.append((n, m, rd, p.version, got.version))
        self.assertEqual(stale, [])
        self.feed_up_everywhere()
        before = self.cache_hits()
        deadline = time.monotonic() + 30
        while self.cache_hits() == before:  # the caches get ready once their barrier is back
            self.assertLess(time.monotonic(), deadline, "the caches never served again")
            for rd in range(3):
                for key in last:
                    self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": key})
            time.sleep(0.05)
        # what the caches hold after the outages: every last write, on every replica (a change
        # missed while a feed was down must not come back with the cache)
        for rd in range(3):
            for key, version in last.items():
                got = self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": key}).pin
                self.assertEqual(got.version, version, "replica %d, %s" % (rd, key))

    def test_a_skipped_revision_announced_keeps_the_cache_answering(self):
        """A statement that takes a revision and writes nothing (an insert that lost a race)
        announces it on channel pinsd_revisions ("s <revision> <tenant>"), in its transaction.
        Done here by hand in one transaction, as the statement does: the tenant's latest
        revision then has no change, and the caches answer its reads all the same; without the
        announcement they would read PostgreSQL until the tenant's next change."""
        t = "skip-announced"
        self.upsert(0, t, "k", {"v": 1})
        self.pg.query("BEGIN; UPDATE system.pin_revisions SET revision = revision + 1"
                      " WHERE tenant_id = '%s';"
                      " SELECT pg_notify('pinsd_revisions', 's ' || revision || ' %s')"
                      " FROM system.pin_revisions WHERE tenant_id = '%s'; COMMIT" % (t, t, t))
        for rd in range(3):
            deadline = time.monotonic() + 30
            m0 = test_metrics.scrape(self.servers[rd])["memory_cache_hits_total"]
            while True:
                got = self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": "k"}).pin
                self.assertEqual(got.value["v"], 1)
                if test_metrics.scrape(self.servers[rd])["memory_cache_hits_total"] > m0:
                    break
                self.assertLess(time.monotonic(), deadline,
                                "replica %d never answered from its cache" % rd)
                time.sleep(0.05)

    def test_an_insert_race_skips_a_revision_and_the_caches_keep_answering(self):
        """Two replicas create one key of a new tenant at once (expected_version 0): the
        statement that loses takes a revision, writes nothing and answers ALREADY_EXISTS on its
        retry, so the tenant's latest revision has no change. The statement announces the skip
        (store/pg_sql.c, sk), and every replica's cache answers that tenant's reads. The race is
        the common outcome of a simultaneous start (most tries); tries are bounded."""
        skipped = []
        for a in range(40):
            t = "race-%d-%d" % (a, time.monotonic_ns())
            go = threading.Barrier(2)

            def create(i, t=t, go=go):
                go.wait(10)
                try:
                    self.upsert(i, t, "k", {"i": i}, expected_version=0)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), SC.ALREADY_EXISTS, e.details())

            threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            rows = self.pg.query(
                "SELECT v.revision, (SELECT max(c.revision) FROM system.pin_changes c"
                " WHERE c.tenant_id = v.tenant_id) FROM system.pin_revisions v"
                " WHERE v.tenant_id = '%s'" % t)
            if int(rows[0][0]) > int(rows[0][1]):
                skipped.append(t)
            if len(skipped) >= 3:
                break
        self.assertTrue(skipped, "no try raced in 40: the skip path was not exercised")
        for t in skipped:
            for rd in range(3):
                deadline = time.monotonic() + 30
                m0 = test_metrics.scrape(self.servers[rd])["memory_cache_hits_total"]
                while True:
                    self.clients[rd].call(mp("GetPin"), {"tenant_id": t, "key": "k"})
                    if test_metrics.scrape(self.servers[rd])["memory_cache_hits_total"] > m0:
                        break
                    self.assertLess(time.monotonic(), deadline,
                                    "replica %d never answered %s from its cache" % (rd, t))
                    time.sleep(0.05)

    def test_listen_connection_killed_streams_end_and_resume_without_loss(self):
        t = "listen-kill"
        readers = [self.watch(i, t) for i in range(3)]
        start = self.live(readers, t)
        # a watcher that got no event yet still learns a revision to resume from: its tenant's
        # latest when it started (a write before it, none after it until the cut)
        qt = "listen-kill-quiet"
        before = self.upsert(0, qt, "before", {}).revision
        quiet = self.watch(2, qt)
        quiet.stream.initial_metadata()  # sent once the stream has read its start revision
        killed = self.pg.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'pinsd-feed' AND datname = 'pins'")
        self.assertEqual(len(killed), 3, "one LISTEN connection per replica: %r" % killed)
        during = []
        for n in range(5):  # written while the feeds reconnect
            during.append(self.upsert(1, t, "during%d" % n, {"n": n}).revision)
            time.sleep(0.05)
        resume_from = []
        for r in readers:
            item = r.next(30)
            while item is not None and item[0] == "event":
                item = r.next(30)
            self.assertIsNotNone(item, "a stream was not ended after its feed was lost")
            self.assertEqual(item[1].code(), SC.UNAVAILABLE, item[1].details())
            m = re.search(r"since_revision=(\d+)", item[1].details())
            self.assertIsNotNone(m, item[1].details())
            resume_from.append(int(m.group(1)))
            self.assertGreaterEqual(resume_from[-1], start)
        item = quiet.next(30)
        self.assertIsNotNone(item)
        self.assertEqual((item[0], item[1].code()), ("end", SC.UNAVAILABLE), item)
        m = re.search(r"since_revision=(\d+)", item[1].details())
        self.assertEqual(int(m.group(1)), before, item[1].details())
        self.feed_up_everywhere()
        after = self.upsert(2, t, "after", {}).revision
        for i, since in enumerate(resume_from):
            r = self.watch(i, t, since=since)
            got = [e.pin.revision for e in r.events_until(after)]
            self.assertEqual(got, list(range(since + 1, after + 1)),
                             "replica %d resumed with a gap or a duplicate" % i)
            self.assertTrue(set(during) <= set(got) or since >= max(during))

    def test_sigkilled_replica_under_load_loses_no_acknowledged_write(self):
        t = "kill-replica"
        victim = Server(self.env(1))
        self.addCleanup(victim.cleanup)  # SIGKILLed: no sanitizer report to expect
        victim.start(ready_timeout=30)
        targets = [victim.target, self.servers[0].target, self.servers[2].target]
        acked = {}
        lock = threading.Lock()
        failures = []

        def writer(w):
            chans = {}
            try:
                for n in range(150):
                    key = "w%d-%d" % (w, n)
                    for attempt in range(30):  # bounded retries through the next replica
                        tgt = targets[(w + n + attempt) % 3]
                        c = chans.get(tgt) or chans.setdefault(tgt, harness.GrpcClient(tgt))
                        try:
                            p = c.call(mp("UpsertPin"), {"tenant_id": t, "key": key,
                                                         "value": {"w": w, "n": n}}, timeout=5).pin
                            with lock:
                                acked[key] = p.version
                            break
                        except grpc.RpcError as e:
                            if e.code() not in RETRYABLE:
                                failures.append((key, e.code(), e.details()))
                                return
                            time.sleep(0.05)
            finally:
                for c in chans.values():
                    c.close()

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 30
        while len(acked) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(victim.proc.pid, signal.SIGKILL)
        for th in threads:
            th.join(180)
        self.assertEqual(failures, [])
        self.assertEqual(len(acked), 450, "every write was acknowledged by some replica")
        for key, version in acked.items():
            got = self.clients[0].call(mp("GetPin"), {"tenant_id": t, "key": key}).pin
            self.assertGreaterEqual(got.version, version, key)
        rows = self.pg.query("SELECT count(*) FROM system.memory_pins WHERE tenant_id = '%s'" % t)
        self.assertEqual(int(rows[0][0]), 450)


if __name__ == "__main__":
    unittest.main()
