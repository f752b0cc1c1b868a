"""Watch streams (WatchPins over gRPC, GET /api/v1/memory/watch as SSE): slots per principal and
per process, the SSE response head sent on subscription, heartbeats.

Every wait is bounded; nothing asserts on how long something took.
"""
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
import unittest

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

import harness
from harness import ServerTestCase, grpc_frame, mp, new_request

SC = grpc.StatusCode
CURL = shutil.which("curl")
HTTP_VERSIONS = ("--http1.1", "--http2-prior-knowledge")
TOKEN = "watch-bounds-machine-token"
MACHINE = (("x-machine-token", TOKEN),)


class SseReader:
    """curl -N on the watch route; the raw output (head and body) is read as it arrives."""

    def __init__(self, port, version, query, headers=()):
        cmd = [CURL, "-sS", "-N", "-i", version, "--max-time", "60"]
        for h in headers:
            cmd += ["-H", h]
        cmd.append("http://127.0.0.1:%d/api/v1/memory/watch?%s" % (port, query))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.text = ""

    def wait_for(self, pattern, timeout=20.0):
        """Reads until pattern (a regex) matches the output so far; returns the match or None
        after timeout seconds or when curl ended."""
        rx = re.compile(pattern, re.S | re.I | re.M)
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            m = rx.search(self.text)
            if m is not None:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return rx.search(self.text)
                self.text += chunk.decode("utf-8", "replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


def sse(testcase, port, version, query, headers=()):
    r = SseReader(port, version, query, headers)
    testcase.addCleanup(r.close)
    return r


# ================================================================================================
class WatchSlotsTest(ServerTestCase):
    """PINS_WATCH_MAX_PER_PRINCIPAL and PINS_WATCH_MAX over gRPC and SSE."""

    SERVER_ENV = {"PINS_WATCH_MAX": "5", "PINS_WATCH_MAX_PER_PRINCIPAL": "3",
                  "MACHINE_SECRET_TOKEN": TOKEN, "PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def watch(self, tenant, metadata=None):
        stream = self.client.server_stream(mp("WatchPins"), {"tenant_id": tenant}, timeout=60,
                                           metadata=metadata)
        self.addCleanup(stream.cancel)
        return stream

    def subscribed(self, tenant, streams, key="k"):
        """One change of tenant reaches every stream: they are all subscribed."""
        self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": key, "value": {"n": 1}})
        for s in streams:
            self.assertEqual(next(s).pin.key, key)

    def refused(self, stream):
        with self.assertRaises(grpc.RpcError) as cm:
            next(stream)
        self.assertEqual(cm.exception.code(), SC.RESOURCE_EXHAUSTED, cm.exception.details())
        return cm.exception.details()

    def watch_until_admitted(self, tenant, metadata=None, tries=100):
        """A slot given back when a stream ended is free again shortly after: retries (bounded)
        until a new stream is subscribed; returns it."""
        for i in range(tries):
            s = self.watch(tenant, metadata)
            key = "again-%d" % i
            self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": key, "value": {}})
            try:
                if next(s).pin.key == key:
                    return s
            except grpc.RpcError as e:
                self.assertEqual(e.code(), SC.RESOURCE_EXHAUSTED, e.details())
            time.sleep(0.1)
        self.fail("no watch slot came free after a stream ended")

    def test_one_principal_holds_at_most_its_share_and_the_process_at_most_the_total(self):
        anon = [self.watch("slots") for _ in range(3)]
        self.subscribed("slots", anon, "a1")
        why = self.refused(self.watch("slots"))
        self.assertIn("for this caller (at most 3)", why)

        # Another principal still gets watches, up to the process's total of 5.
        machine = [self.watch("slots", MACHINE) for _ in range(2)]
        self.subscribed("slots", anon + machine, "a2")
        why = self.refused(self.watch("slots", MACHINE))
        self.assertIn("too many watch streams are open (at most 5)", why)

        # An SSE watch is a watch slot too: 503 with the REST error body.
        if CURL:
            for v in HTTP_VERSIONS:
                with self.subTest(v):
                    p = subprocess.run([CURL, "-sS", v, "--max-time", "20", "-w", "\n%{http_code}",
                                        "http://127.0.0.1:%d/api/v1/memory/watch?tenant_id=slots"
                                        % self.server.port],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
                    body, _, code = p.stdout.decode().rpartition("\n")
                    self.assertEqual(code, "503", p.stdout)
                    self.assertEqual(json.loads(body)["code"], 8, body)

        # Ending a stream gives its slot back.
        anon[0].cancel()
        self.watch_until_admitted("slots")
        for s in anon[1:] + machine:
            s.cancel()
        self.watch_until_admitted("slots", MACHINE)


# ================================================================================================
class StalledWatcher:
    """A WatchPins stream on its own HTTP/2 connection whose receive window stays 0: the server
    can queue events for it but never send one."""

    def __init__(self, port, tenant, sse=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0,
                                         h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.sid = self.conn.get_next_available_stream_id()
        if sse:
            self.conn.send_headers(self.sid, [
                (":method", "GET"), (":scheme", "http"),
                (":path", "/api/v1/memory/watch?tenant_id=" + tenant),
                (":authority", "127.0.0.1:%d" % port)], end_stream=True)
        else:
            self.conn.send_headers(self.sid, [
                (":method", "POST"), (":scheme", "http"), (":path", mp("WatchPins")),
                (":authority", "127.0.0.1:%d" % port), ("content-type", "application/grpc"),
                ("te", "trailers")])
            req = new_request(mp("WatchPins"), {"tenant_id": tenant}).SerializeToString()
            self.conn.send_data(self.sid, grpc_frame(req), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.headers = None
        self.reset_code = None
        self.trailers = None

    def wait_subscribed(self, timeout=30.0):
        """The response headers come when the stream is subscribed (window or not)."""
        self.pump(lambda: self.headers is not None, timeout)
        return self.headers is not None

    def pump_until_ended(self, timeout=30.0):
        self.pump(lambda: self.reset_code is not None or self.trailers is not None, timeout)

    def pump(self, done, timeout):
        """Processes frames (never opening the window) until done() or timeout seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if not r:
                continue
            data = self.sock.recv(65536)
            if not data:
                return
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == self.sid:
                    self.headers = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == self.sid:
                    self.reset_code = int(ev.error_code)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == self.sid:
                    self.trailers = dict(ev.headers)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def close(self):
        self.sock.close()


class WatchOverrunTest(ServerTestCase):
    """A watcher that reads nothing is ended once PINS_WATCH_PENDING_BYTES are waiting for it,
    and what it held is given back at once; readers of the same changes are not affected."""

    SERVER_ENV = {"PINS_WATCH_PENDING_BYTES": "65536", "PINS_WATCH_MAX": "2",
                  "PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def buffered_bytes(self):
        with self.server.h2() as c:
            r = c.get("/metrics")
        m = re.search(rb"^connection_buffered_bytes (\d+)", bytes(r.data), re.M)
        self.assertIsNotNone(m, "no connection_buffered_bytes in /metrics")
        return int(m.group(1))

    def test_stalled_grpc_watcher_is_reset_and_its_buffer_freed(self):
        reader = self.client.server_stream(mp("WatchPins"), {"tenant_id": "stall"}, timeout=60)
        self.addCleanup(reader.cancel)
        stalled = StalledWatcher(self.server.port, "stall")
        self.addCleanup(stalled.close)
        self.assertTrue(stalled.wait_subscribed(), "no response headers on subscription")
        # The reader subscribed too: a first change reaches it.
        for i in range(100):
            self.client.call(mp("UpsertPin"), {"tenant_id": "stall", "key": "probe-%d" % i,
                                               "value": {}})
            if next(reader).pin.key == "probe-%d" % i:
                break
        blob = "x" * 40000
        for i in range(4):  # 160 kB of events for a 64 KiB bound
            self.client.call(mp("UpsertPin"), {"tenant_id": "stall", "key": "big-%d" % i,
                                               "value": {"blob": blob}})
        stalled.pump_until_ended()
        self.assertEqual(stalled.reset_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                         "the stalled watcher was not ended: trailers %r" % stalled.trailers)
        self.assertEqual([next(reader).pin.key for _ in range(4)],
                         ["big-%d" % i for i in range(4)])
        # Its queued events were dropped with it: nothing near 64 KiB stays buffered (bounded
        # polling: the metric is read on another connection).
        for _ in range(100):
            if self.buffered_bytes() < 40000:
                break
            time.sleep(0.1)
        self.assertLess(self.buffered_bytes(), 40000)


class WatchStallTest(ServerTestCase):
    """A watcher that takes nothing of what waits for it, even below PINS_WATCH_PENDING_BYTES, is
    ended after PINS_REQUEST_TIMEOUT_SECONDS instead of holding its bytes until it leaves."""

    SERVER_ENV = {"PINS_REQUEST_TIMEOUT_SECONDS": "1", "PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def test_stalled_watchers_are_reset_on_both_transports(self):
        for sse in (False, True):
            with self.subTest(sse=sse):
                tenant = "idle-%s" % sse
                stalled = StalledWatcher(self.server.port, tenant, sse=sse)
                self.addCleanup(stalled.close)
                self.assertTrue(stalled.wait_subscribed(), "no response headers on subscription")
                self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": "k",
                                                   "value": {"n": 1}})
                stalled.pump_until_ended(timeout=60)
                self.assertEqual(stalled.reset_code, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                 "the stalled watcher was not ended: trailers %r"
                                 % stalled.trailers)


# ================================================================================================
class SlowSseReader:
    """GET /api/v1/memory/watch over HTTP/2 with a receive window of 0 until open_window()."""

    def __init__(self, port, tenant):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0,
                                         h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [
            (":method", "GET"), (":scheme", "http"),
            (":path", "/api/v1/memory/watch?tenant_id=" + tenant),
            (":authority", "127.0.0.1:%d" % port)], end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.headers = None
        self.data = b""
        self.ended = False
        self.reset_code = None
        self.reading = False

    def open_window(self):
        self.reading = True
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.conn.increment_flow_control_window(1 << 24)
        self.sock.sendall(self.conn.data_to_send())

    def pump(self, done, timeout):
        """Processes frames until done() or timeout seconds; acknowledges data once reading."""
        deadline = time.monotonic() + timeout
        while not done() and not self.ended and self.reset_code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.sock], [], [], min(left, 0.5))
            if not r:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            for ev in self.conn.receive_data(chunk):
                if getattr(ev, "stream_id", None) != self.sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    self.headers = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    self.data += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, self.sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    self.reset_code = int(ev.error_code)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def close(self):
        self.sock.close()


class SseSlowReaderTest(ServerTestCase):
    """An SSE reader more than PINS_WATCH_PENDING_BYTES behind gets, once it reads again, what was
    queued for it, a last `event: error` (RESOURCE_EXHAUSTED) and the end of the response."""

    SERVER_ENV = {"PINS_WATCH_PENDING_BYTES": "65536", "PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def ended_watches(self):
        with self.server.h2() as c:
            r = c.get("/metrics")
        m = re.search(rb'^grpc_server_handled_total\{[^}]*grpc_method="WatchPins",'
                      rb'grpc_code="RESOURCE_EXHAUSTED"\} (\d+)', bytes(r.data), re.M)
        return int(m.group(1)) if m else 0

    def test_slow_sse_reader_gets_a_last_error_event_and_the_end(self):
        slow = SlowSseReader(self.server.port, "slow-sse")
        self.addCleanup(slow.close)
        slow.pump(lambda: slow.headers is not None, 30)
        self.assertEqual((slow.headers or {}).get(":status"), "200", "no head on subscription")
        blob = "y" * 40000
        for i in range(4):  # 160 kB of events for a 64 KiB bound
            self.client.call(mp("UpsertPin"), {"tenant_id": "slow-sse", "key": "big-%d" % i,
                                               "value": {"blob": blob}})
        for _ in range(300):  # the watch ended on its worker (bounded polling)
            if self.ended_watches() >= 1:
                break
            time.sleep(0.1)
        self.assertEqual(self.ended_watches(), 1, "the slow reader's watch was not ended")
        slow.open_window()
        slow.pump(lambda: False, 30)
        self.assertTrue(slow.ended, "the response did not end (reset %r)" % slow.reset_code)
        events = re.findall(r"event: (\w+)\ndata: ([^\n]*)\n\n", slow.data.decode())
        self.assertGreaterEqual(len(events), 2, slow.data[:300])
        self.assertTrue(all(e == "put" for e, _ in events[:-1]), [e for e, _ in events])
        self.assertEqual(events[-1][0], "error")
        self.assertEqual(json.loads(events[-1][1])["code"], 8)


# ================================================================================================
@unittest.skipUnless(CURL, "curl not installed")
class SseStreamTest(ServerTestCase):
    """The SSE head on subscription, the heartbeat (resuming: test_watch_resume)."""

    SERVER_ENV = {"PINS_SSE_HEARTBEAT_SECONDS": "1", "PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def test_head_is_sent_on_subscription_before_any_event(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = sse(self, self.server.port, v, "tenant_id=quiet-" + v[2:8])
                m = r.wait_for(r"^HTTP/\S+ 200.*?content-type: text/event-stream.*?\r\n\r\n")
                self.assertIsNotNone(m, "no response head before the first event: %r" % r.text)
                self.assertNotIn("event:", r.text)

    def test_idle_stream_gets_comment_heartbeats_between_events(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                tenant = "beat-" + v[2:8]
                r = sse(self, self.server.port, v, "tenant_id=" + tenant)
                self.assertIsNotNone(r.wait_for(r"\r\n\r\n.*?^: ping\n\n"),
                                     "no heartbeat on an idle stream: %r" % r.text)
                self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": "k",
                                                   "value": {"n": 1}})
                m = r.wait_for(r"event: put\ndata: (.*?)\n\n")
                self.assertIsNotNone(m, r.text)
                self.assertEqual(json.loads(m.group(1))["pin"]["key"], "k")
                n = r.text.count(": ping\n\n")
                self.assertIsNotNone(r.wait_for(r"(?:^: ping\n\n.*){%d}" % (n + 1)),
                                     "heartbeats stopped after an event: %r" % r.text)



# ================================================================================================
class WatchSettingsTest(ServerTestCase):
    @classmethod
    def setUpClass(cls):  # no shared server
        pass

    @classmethod
    def tearDownClass(cls):
        pass

    def test_bad_values_stop_the_start_naming_the_variable(self):
        for var, val in [("PINS_SSE_HEARTBEAT_SECONDS", "-1"),
                         ("PINS_SSE_HEARTBEAT_SECONDS", "3601"),
                         ("PINS_SSE_HEARTBEAT_SECONDS", "soon"),
                         ("PINS_WATCH_MAX", "0"), ("PINS_WATCH_MAX_PER_PRINCIPAL", "0"),
                         ("PINS_WATCH_PENDING_BYTES", "100")]:
            with self.subTest(var, val=val):
                s = harness.Server({var: val})
                self.addCleanup(s.cleanup)
                with self.assertRaises(RuntimeError):
                    s.start(ready_timeout=5)
                self.assertIsNotNone(s.returncode, "pinsd kept running with %s=%s" % (var, val))
                self.assertNotEqual(s.returncode, 0)
                with open(s.stderr_path, "rb") as f:
                    self.assertIn(var, f.read().decode("utf-8", "replace"))


if __name__ == "__main__":
    unittest.main()
