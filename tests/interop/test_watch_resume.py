"""Revisions, resuming watches and EXPIRE events on the embedded store, over real transports
(grpcio, curl for SSE): every change of a tenant takes its next revision (Pin.revision, the
list's revision, the SSE event id); WatchPins with since_revision replays the kept history and then
goes live with no gap and no duplicate, also when the stream is cut mid-way under a concurrent
write load; a revision whose history was trimmed, or one above the tenant's latest, answers
OUT_OF_RANGE; the sweeper and CleanupExpiredPins send one EXPIRE event per reclaimed pin.

Every loop is bounded in count and time; nothing asserts on how long something took.
"""
import json
import tempfile
import subprocess
import shutil
import os
import queue
import re
import threading
import time
import unittest

import grpc

from harness import ServerTestCase, mp
from test_watch_bounds import CURL, HTTP_VERSIONS, sse

SC = grpc.StatusCode
PUT, DELETE, EXPIRE = 1, 2, 3


class StreamReader:
    """Reads a WatchPins stream on a thread into a queue; ends with ("end", error or None)."""

    def __init__(self, client, fields, timeout=120):
        self.stream = client.server_stream(mp("WatchPins"), fields, timeout=timeout)
        self.q = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for ev in self.stream:
                self.q.put(("event", ev))
            self.q.put(("end", None))
        except grpc.RpcError as e:
            self.q.put(("end", e))

    def next(self, timeout=20.0):
        """The next event, or the stream's end ("end", error) ; None after timeout."""
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def events_until(self, revision, timeout=30.0):
        """Events until one with pin.revision >= revision; fails the caller by returning what it
        got when the stream ends or the time is up."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.next(max(0.1, deadline - time.monotonic()))
            if item is None or item[0] == "end":
                break
            got.append(item[1])
            if item[1].pin.revision >= revision:
                break
        return got

    def cancel(self):
        self.stream.cancel()
        self.thread.join(10)


class WatchResumeTest(ServerTestCase):
    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def upsert(self, tenant, key, n=0, **kw):
        fields = {"tenant_id": tenant, "key": key, "value": {"n": n}}
        fields.update(kw)
        return self.client.call(mp("UpsertPin"), fields).pin

    def watch(self, fields):
        r = StreamReader(self.client, fields)
        self.addCleanup(r.cancel)
        return r

    def subscribed(self, reader, tenant):
        """A marker change reaches the stream: it is live. Returns the marker's revision."""
        pin = self.upsert(tenant, "marker-%d" % time.monotonic_ns())
        got = reader.events_until(pin.revision)
        self.assertTrue(got and got[-1].pin.revision == pin.revision, got)
        return pin.revision

    def test_every_change_takes_the_tenants_next_revision(self):
        a1 = self.upsert("rev-a", "k1")
        a2 = self.upsert("rev-a", "k1", 2)
        b1 = self.upsert("rev-b", "k1")
        self.client.call(mp("DeletePin"), {"tenant_id": "rev-a", "key": "k1"})
        a4 = self.upsert("rev-a", "k2")
        self.assertGreater(a1.revision, 0)
        self.assertEqual([a2.revision, a4.revision], [a1.revision + 1, a1.revision + 3])
        self.assertEqual(b1.revision, 1, "revisions are per tenant")
        # a refused conditional write takes none
        with self.assertRaises(grpc.RpcError) as cm:
            self.upsert("rev-a", "k2", expected_version=7)
        self.assertEqual(cm.exception.code(), SC.ABORTED)
        got = self.client.call(mp("GetPin"), {"tenant_id": "rev-a", "key": "k2"}).pin
        self.assertEqual(got.revision, a4.revision)
        lst = self.client.call(mp("ListPins"), {"tenant_id": "rev-a"})
        self.assertEqual(lst.revision, a4.revision)
        self.assertEqual([p.revision for p in lst.pins], [a4.revision])

    def test_since_revision_replays_then_goes_live_exactly_once(self):
        t = "resume-grpc"
        first = self.upsert(t, "a", 1)
        missed = [self.upsert(t, "a", 2), self.upsert(t, "b", 3)]
        self.client.call(mp("DeletePin"), {"tenant_id": t, "key": "b"})
        r = self.watch({"tenant_id": t, "since_revision": first.revision})
        got = r.events_until(first.revision + 3)
        self.assertEqual([(e.type, e.pin.key, e.pin.revision) for e in got],
                         [(PUT, "a", missed[0].revision), (PUT, "b", missed[1].revision),
                          (DELETE, "b", first.revision + 3)])
        live = self.upsert(t, "c", 4)
        got = r.events_until(live.revision)
        self.assertEqual([(e.pin.key, e.pin.revision) for e in got], [("c", live.revision)])
        self.assertEqual(got[0].pin.value["n"], 4)

    def test_prefix_filters_the_history_too(self):
        t = "resume-prefix"
        base = self.upsert(t, "x.0")
        self.upsert(t, "y.1")
        x2 = self.upsert(t, "x.2")
        r = self.watch({"tenant_id": t, "prefix": "x.", "since_revision": base.revision})
        got = r.events_until(x2.revision)
        self.assertEqual([e.pin.key for e in got], ["x.2"])

    def test_list_then_watch_from_the_lists_revision_loses_nothing(self):
        t = "list-watch"
        for i in range(5):
            self.upsert(t, "k%d" % i, i)
        lst = self.client.call(mp("ListPins"), {"tenant_id": t})
        after = [self.upsert(t, "late%d" % i, i) for i in range(3)]
        r = self.watch({"tenant_id": t, "since_revision": lst.revision})
        got = r.events_until(after[-1].revision)
        self.assertEqual([e.pin.revision for e in got], [p.revision for p in after])

    def test_future_revision_is_out_of_range(self):
        t = "resume-future"
        p = self.upsert(t, "a")
        r = self.watch({"tenant_id": t, "since_revision": p.revision + 5})
        item = r.next()
        self.assertEqual(item[0], "end", item)
        self.assertEqual(item[1].code(), SC.OUT_OF_RANGE, item[1].details())
        self.assertIn("since_revision", item[1].details())

    def test_negative_revision_is_invalid(self):
        r = self.watch({"tenant_id": "neg", "since_revision": -1})
        item = r.next()
        self.assertEqual(item[1].code(), SC.INVALID_ARGUMENT, item[1].details())

    def test_cut_mid_stream_under_writes_resumes_without_gap_or_duplicate(self):
        t = "cut"
        start = self.upsert(t, "start").revision
        r = self.watch({"tenant_id": t, "since_revision": start})
        acked = []
        stop = threading.Event()

        def writer():
            c = self.server.client()
            try:
                for i in range(400):
                    if stop.is_set():
                        break
                    acked.append(c.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % (i % 37),
                                                          "value": {"i": i}}).pin.revision)
            finally:
                c.close()

        w = threading.Thread(target=writer)
        w.start()
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 100 and time.monotonic() < deadline:
            item = r.next(5)
            self.assertIsNotNone(item)
            self.assertEqual(item[0], "event", item)
            seen.append(item[1].pin.revision)
        r.cancel()  # the cut: a client that goes away mid-stream
        r2 = self.watch({"tenant_id": t, "since_revision": seen[-1]})
        w.join(60)
        stop.set()
        self.assertFalse(w.is_alive())
        last = max(acked)
        seen += [e.pin.revision for e in r2.events_until(last, timeout=60)]
        self.assertEqual(seen, list(range(start + 1, last + 1)),
                         "every revision after the start exactly once, in order")
        self.assertTrue(set(acked) <= set(seen))

    def test_many_streams_catch_up_at_once_each_exactly(self):
        """More streams than a worker reads history for at once, each with more history than a
        page: every one gets every change, in order, then the live ones."""
        t = "many-catch-up"
        base = self.upsert(t, "base").revision
        for i in range(300):
            self.upsert(t, "k%d" % (i % 17), i)
        readers = [self.watch({"tenant_id": t, "since_revision": base}) for _ in range(12)]
        live = self.upsert(t, "live", 1).revision
        for r in readers:
            got = [e.pin.revision for e in r.events_until(live, timeout=60)]
            self.assertEqual(got, list(range(base + 1, live + 1)))

    def test_trimmed_history_is_out_of_range_and_recent_history_still_resumes(self):
        s = self.fresh_server({"PINS_WATCH_HISTORY_MAX_ROWS": "1000",
                               "PINS_SWEEP_INTERVAL_SECONDS": "1"})
        c = s.client()
        self.addCleanup(c.close)
        t = "trim"
        first = c.call(mp("UpsertPin"), {"tenant_id": t, "key": "k", "value": {}}).pin.revision
        last = first
        for i in range(1100):
            last = c.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % (i % 50),
                                            "value": {"i": i}}).pin.revision
        code = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the sweeper trims within a few of its ticks
            stream = c.server_stream(mp("WatchPins"), {"tenant_id": t, "since_revision": first},
                                     timeout=5)
            try:
                next(stream)
                code = None
            except grpc.RpcError as e:
                code = e.code()
                if code == SC.OUT_OF_RANGE:
                    self.assertIn("no longer kept", e.details())
                    break
            finally:
                stream.cancel()
            time.sleep(0.3)
        self.assertEqual(code, SC.OUT_OF_RANGE, "history of 1100 changes kept past 1000 rows")
        stream = c.server_stream(mp("WatchPins"), {"tenant_id": t, "since_revision": last - 10},
                                 timeout=10)
        got = []
        for ev in stream:
            got.append(ev.pin.revision)
            if ev.pin.revision == last:
                break
        stream.cancel()
        self.assertEqual(got, list(range(last - 9, last + 1)))


class ExpireEventsTest(ServerTestCase):
    """The sweeper's EXPIRE events (its own server), and CleanupExpiredPins' (no sweeper)."""

    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def test_cleanup_sends_one_expire_event_per_reclaimed_pin(self):
        t = "exp-cleanup"
        r = StreamReader(self.client, {"tenant_id": t})
        self.addCleanup(r.cancel)
        marker = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "m", "value": {}}).pin
        self.assertEqual(r.events_until(marker.revision)[-1].pin.revision, marker.revision)
        pins = [self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "e%d" % i,
                                                   "value": {"i": i}, "ttl_seconds": 1}).pin
                for i in range(3)]
        got = r.events_until(pins[-1].revision)
        self.assertEqual(len(got), 3)
        time.sleep(1.2)  # past the TTL: the cleanup below must find them expired
        resp = self.client.call(mp("CleanupExpiredPins"), {"tenant_id": t})
        self.assertEqual(resp.deleted_count, 3)
        got = r.events_until(pins[-1].revision + 3)
        self.assertEqual(sorted((e.type, e.pin.key) for e in got),
                         [(EXPIRE, "e0"), (EXPIRE, "e1"), (EXPIRE, "e2")])
        self.assertEqual([e.pin.revision for e in got],
                         list(range(pins[-1].revision + 1, pins[-1].revision + 4)))
        self.assertTrue(all(e.pin.value["i"] == int(e.pin.key[1:]) for e in got),
                        "an EXPIRE event carries the pin as it was")

    def test_sweeper_sends_expire_events(self):
        s = self.fresh_server({"PINS_SWEEP_INTERVAL_SECONDS": "1"})
        c = s.client()
        self.addCleanup(c.close)
        t = "exp-sweep"
        r = StreamReader(c, {"tenant_id": t})
        self.addCleanup(r.cancel)
        m = c.call(mp("UpsertPin"), {"tenant_id": t, "key": "m", "value": {}}).pin
        self.assertEqual(r.events_until(m.revision)[-1].pin.revision, m.revision)
        p = c.call(mp("UpsertPin"), {"tenant_id": t, "key": "gone", "value": {"x": 1},
                                     "ttl_seconds": 1}).pin
        got = r.events_until(p.revision + 1, timeout=30)
        self.assertEqual([(e.type, e.pin.key, e.pin.revision) for e in got],
                         [(PUT, "gone", p.revision), (EXPIRE, "gone", p.revision + 1)])


@unittest.skipUnless(CURL, "curl not installed")
class SseLongStreamTest(ServerTestCase):
    """A long SSE stream does not accumulate its events: with the smallest request bound the
    call's arena holds about 1 MiB, and 2000 events of about 700 bytes pass through it."""

    SERVER_ENV = {"MAX_REQUEST_BYTES": "1024", "MEMORY_MAX_SIZE_BYTES": "1024",
                  "PINS_SWEEP_INTERVAL_SECONDS": "3600", "PINS_WATCH_PENDING_BYTES": "16777216"}

    def test_two_thousand_events_on_one_stream(self):
        t = "sse-long"
        r = sse(self, self.server.port, "--http1.1", "tenant_id=" + t)
        self.assertIsNotNone(r.wait_for(r"^HTTP/\S+ 200.*?\r\n\r\n"), r.text)
        last = 0
        for i in range(2000):
            last = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % (i % 50),
                                                      "value": {"v": "x" * 600, "i": i}}).pin.revision
        m = r.wait_for(r"^id: %d\nevent: put\n" % last, timeout=60)
        self.assertIsNotNone(m, r.text[-500:])
        self.assertNotIn("event: error", r.text)
        self.assertEqual(len(re.findall(r"^event: put$", r.text, re.M)), 2000)


    def test_two_thousand_events_on_one_connect_json_stream(self):
        """The same through Connect streaming with JSON (application/connect+json), whose
        messages are unpacked for the JSON encoder (rpc_call_send_unpacked)."""
        t = "connect-long"
        tmp = tempfile.mkdtemp(prefix="pinsd-cwatch-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tmp, True)
        # from a revision: the changes after it arrive whenever the stream starts
        since = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "start",
                                                   "value": {}}).pin.revision
        body = json.dumps({"tenantId": t, "sinceRevision": str(since)}).encode()
        with open(os.path.join(tmp, "req"), "wb") as f:
            f.write(bytes([0]) + len(body).to_bytes(4, "big") + body)
        out = os.path.join(tmp, "out")
        p = subprocess.Popen(
            [CURL, "-sS", "-N", "--http2-prior-knowledge", "--max-time", "90", "-o", out,
             "-H", "Content-Type: application/connect+json", "--data-binary",
             "@" + os.path.join(tmp, "req"),
             "http://127.0.0.1:%d%s" % (self.server.port, mp("WatchPins"))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        last = 0
        for i in range(2000):
            last = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % (i % 50),
                                                      "value": {"v": "x" * 600, "i": i}}).pin.revision
        frames = []
        deadline = time.monotonic() + 60
        while True:
            data = b""
            if os.path.exists(out):
                with open(out, "rb") as f:
                    data = f.read()
            frames, i = [], 0
            while len(data) - i >= 5:
                n = int.from_bytes(data[i + 1:i + 5], "big")
                if len(data) - i - 5 < n:
                    break
                frames.append((data[i], data[i + 5:i + 5 + n]))
                i += 5 + n
            msgs = [json.loads(m) for fl, m in frames if fl == 0]
            if msgs and int(msgs[-1].get("pin", {}).get("revision", 0)) >= last:
                break
            self.assertFalse(any(fl == 2 for fl, _ in frames), frames[-1:])  # ended early
            self.assertLess(time.monotonic(), deadline, "got %d messages" % len(msgs))
            time.sleep(0.1)
        self.assertEqual(len(msgs), 2000, msgs[:1])
        self.assertEqual([int(m["pin"]["revision"]) for m in msgs][-1], last)


@unittest.skipUnless(CURL, "curl not installed")
class SseResumeTest(ServerTestCase):
    """SSE events carry their revision as id:, and Last-Event-ID (or since_revision) resumes."""

    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def test_last_event_id_and_since_revision_resume_after_that_event(self):
        for v in HTTP_VERSIONS:
            for how in ("header", "query"):
                with self.subTest(v, how=how):
                    t = "sse-resume-%s-%s" % (v[2:8], how)
                    revs = [self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "k%d" % i,
                                                               "value": {"i": i}}).pin.revision
                            for i in range(3)]
                    if how == "header":
                        r = sse(self, self.server.port, v, "tenant_id=" + t,
                                headers=("Last-Event-ID: %d" % revs[0],))
                    else:
                        r = sse(self, self.server.port, v,
                                "tenant_id=%s&since_revision=%d" % (t, revs[0]))
                    self.assertIsNotNone(r.wait_for(r"^id: %d\n" % revs[2]), r.text)
                    live = self.client.call(mp("UpsertPin"), {"tenant_id": t, "key": "live",
                                                              "value": {}}).pin.revision
                    m = r.wait_for(r"^id: %d\nevent: put\ndata: ([^\n]*)\n\n" % live)
                    self.assertIsNotNone(m, r.text)
                    self.assertEqual(json.loads(m.group(1))["pin"]["revision"], live)
                    ids = [int(x) for x in re.findall(r"^id: (\d+)$", r.text, re.M)]
                    self.assertEqual(ids, revs[1:] + [live])

    def test_bad_last_event_id_is_a_clear_error(self):
        r = sse(self, self.server.port, "--http1.1", "tenant_id=sse-bad",
                headers=("Last-Event-ID: abc",))
        m = r.wait_for(r"^HTTP/\S+ (\d+)")
        self.assertIsNotNone(m, r.text)
        self.assertEqual(m.group(1), "422")
        self.assertIsNotNone(r.wait_for(r"last-event-id"), r.text)


if __name__ == "__main__":
    unittest.main()
