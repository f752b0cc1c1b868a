"""Bounds a hostile or broken peer meets on the wire (HTTP/2 and HTTP/1.1), each against a real
pinsd: credentials decided on HEADERS, the budget of buffered bytes, request deadlines, GOAWAY
before an idle close, accept() out of descriptors, unsendable answers, reserved gRPC flag bits, and
a DATABASE_URL that cannot be parsed."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import unittest
import urllib.request

import grpc
import h2.errors
import h2.events
import h2.settings

from harness import (HEALTH, PINSD_BIN, REFLECTION_V1, Server, ServerTestCase, grpc_frame,
                     message_class, mp, new_request, path_of)

SC = grpc.StatusCode


def metrics_text(server):
    with server.h2() as c:
        return c.get("/metrics").data.decode("utf-8")


def metric(text, series):
    """The value of one series line ("name" or "name{labels}"), or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def wait_for(pred, timeout, what):
    """Polls pred (bounded) until it returns a true value; fails the test with what."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError("%s not reached within %.0f s (last: %r)" % (what, timeout, last))


def http1_head_only(port, head):
    """Sends an HTTP/1.1 request head announcing a body it never sends and reads the answer until
    the server closes; returns its status line, its header block (lower case) and its body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(head)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_, _, body = data.partition(b"\r\n\r\n")
        return head_.split(b"\r\n")[0], head_.lower(), body
    finally:
        s.close()


def health_up(port, procs, timeout=30):
    """Polls http://127.0.0.1:port/health until it answers 200 (True), or until every process of
    procs has exited or timeout seconds have passed (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None for p in procs):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def spawn(env):
    """pinsd with env, its stderr piped (read it once it has exited)."""
    return subprocess.Popen([PINSD_BIN], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(procs):
    """Stops every process of procs still running (SIGTERM, then SIGKILL after 30 s), waits for
    them and closes their stderr."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stderr is not None:
            p.stderr.close()


def upsert_body(nbytes):
    """A serialised UpsertPinRequest of about nbytes: a value holding one long string."""
    req = new_request(mp("UpsertPin"), {"tenant_id": "t", "key": "k",
                                        "value": {"s": "x" * nbytes}})
    return req.SerializeToString()


class CredentialsOnHeaders(ServerTestCase):
    """Item: a request without credentials is refused when its HEADERS arrive, before any body
    byte is buffered or decoded."""

    SERVER_ENV = {"RBAC_ENFORCE": "true", "JWT_SECRET": "s3cret-for-tests"}

    def test_grpc_without_credentials_is_refused_before_its_body(self):
        with self.server.h2() as c:
            # HEADERS only: no DATA, no END_STREAM. The answer must not wait for the body.
            sid = c.start(c.grpc_headers(mp("UpsertPin")), None, end_stream=False)
            r = c.wait(sid, 10)
            self.assertEqual(r.grpc_status, 16, r)  # UNAUTHENTICATED
            self.assertIn("no-credentials", r.grpc_message)

    def test_rest_over_http1_is_refused_before_its_body(self):
        status, head, body = http1_head_only(self.server.port, 
            b"POST /api/v1/memory/pins HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
        self.assertTrue(status.startswith(b"HTTP/1.1 403 "), status)
        self.assertIn(b"connection: close", head)
        self.assertNotIn(b"100 continue", head)
        answer = json.loads(body)
        self.assertEqual(answer["reason"], "no-credentials")
        self.assertEqual(answer["resource"], "memory_pin")
        self.assertEqual(answer["action"], "write")

    def test_rest_and_connect_over_http2_are_refused_before_their_body(self):
        with self.server.h2() as c:
            rest = c.start([(":method", "POST"), (":scheme", "http"),
                            (":path", "/api/v1/memory/pins"), (":authority", "x"),
                            ("content-type", "application/json")], None, end_stream=False)
            r = c.wait(rest, 10)
            self.assertEqual(r.status, 403, r)
            self.assertEqual(json.loads(r.data)["reason"], "no-credentials")
            conn = c.start([(":method", "POST"), (":scheme", "http"), (":path", mp("UpsertPin")),
                            (":authority", "x"), ("content-type", "application/json")], None,
                           end_stream=False)
            r = c.wait(conn, 10)
            self.assertEqual(json.loads(r.data)["code"], "unauthenticated", r)

    def test_unguarded_methods_still_wait_for_their_body(self):
        with self.server.h2() as c:
            sid = c.start(c.grpc_headers(path_of(HEALTH, "Check")), None, end_stream=False)
            c.pump_for(0.5)
            self.assertIsNone(c.streams[sid].grpc_status)
            c.send_body(sid, grpc_frame(b""), end_stream=True)
            self.assertEqual(c.wait(sid, 10).grpc_status, 0)


class BufferBudget(ServerTestCase):
    """Items: request bodies and decoded messages are charged to a per-connection and a
    per-process budget; past it a request is refused instead of buffered."""

    SERVER_ENV = {"PINS_CONN_BUFFER_BYTES": str(1 << 20), "PINS_REQUEST_TIMEOUT_SECONDS": "60"}

    def test_streams_past_the_connection_budget_are_refused_and_nothing_leaks(self):
        body = grpc_frame(upsert_body(600_000))
        with self.server.h2() as c:
            sids = []
            for _ in range(5):
                sid = c.start(c.grpc_headers(mp("UpsertPin")), None, end_stream=False)
                c.send_body(sid, body[:-10], end_stream=False)  # never the last bytes
                sids.append(sid)
            c.pump_for(0.5)
            refused = [s for s in sids if c.streams[s].grpc_status == 8]
            self.assertGreaterEqual(len(refused), 3, [c.streams[s] for s in sids])
            for s in refused:
                self.assertIn("too many request bytes", c.streams[s].grpc_message)
            text = metrics_text(self.server)
            self.assertGreaterEqual(metric(text, "connection_buffer_refusals_total"), 3)
            held = metric(text, "connection_buffered_bytes")
            self.assertLessEqual(held, (1 << 20) + 65536, text)
            self.assertGreater(held, 0)
            # The stream that fits completes normally once its last bytes come.
            ok = [s for s in sids if c.streams[s].grpc_status is None]
            self.assertEqual(len(ok), 1)
            c.send_body(ok[0], body[-10:], end_stream=True)
            self.assertEqual(c.wait(ok[0], 10).grpc_status, 0)
        # Every charge is given back when the streams and the connection are gone.
        wait_for(lambda: metric(metrics_text(self.server), "connection_buffered_bytes") == 0, 10,
                 "connection_buffered_bytes back to 0")


class RefusalsInTheRequestsProtocol(ServerTestCase):
    """Item: what the transport refuses before the bridge (a body over MAX_REQUEST_BYTES) is
    answered in the request's protocol: Connect's error JSON, not the REST body."""

    SERVER_ENV = {"MAX_REQUEST_BYTES": "65536", "MEMORY_MAX_SIZE_BYTES": "32768"}

    def test_connect_body_over_the_limit_gets_connects_error_on_both_versions(self):
        status, _, body = http1_head_only(
            self.server.port, ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Content-Length: 100000\r\n\r\n" % mp("UpsertPin")).encode())
        self.assertEqual(json.loads(body)["code"], "resource_exhausted", (status, body))
        with self.server.h2() as c:
            sid = c.start([(":method", "POST"), (":scheme", "http"), (":path", mp("UpsertPin")),
                           (":authority", "x"), ("content-type", "application/json")], None,
                          end_stream=False)
            c.send_body(sid, b"{" + b" " * 70000, end_stream=False)
            r = c.wait(sid, 10)
            self.assertEqual(json.loads(r.data)["code"], "resource_exhausted", r)


class RequestDeadlines(ServerTestCase):
    """Item: unfinished requests have a deadline on both HTTP versions, so that connection slots
    are not held forever."""

    SERVER_ENV = {"PINS_REQUEST_TIMEOUT_SECONDS": "1"}

    def test_http2_request_without_end_stream_gets_deadline_exceeded(self):
        with self.server.h2() as c:
            sid = c.start(c.grpc_headers(mp("GetPin")), None, end_stream=False)
            c.send_body(sid, grpc_frame(b"\x0a\x01t")[:4], end_stream=False)
            r = c.wait(sid, 10)
            self.assertEqual(r.grpc_status, 4, r)
            self.assertIn("not complete within 1 seconds", r.grpc_message)
            rest = c.start([(":method", "POST"), (":scheme", "http"),
                            (":path", "/api/v1/memory/pins"), (":authority", "x"),
                            ("content-type", "application/json")], None, end_stream=False)
            r = c.wait(rest, 10)
            self.assertEqual(r.status, 408, r)

    def test_http1_body_that_never_completes_gets_408(self):
        s = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        try:
            s.sendall(b"POST /api/v1/memory/pins HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ten")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        finally:
            s.close()

    def test_a_held_connection_frees_its_slot(self):
        srv = self.fresh_server({"PINS_MAX_CONNECTIONS": "1", "PINS_IDLE_TIMEOUT_SECONDS": "2",
                                 "PINS_REQUEST_TIMEOUT_SECONDS": "1", "PINS_WORKERS": "1"})

        def connect():
            try:
                return srv.h2(timeout=2)
            except (OSError, ConnectionError):
                return None
        # The one connection slot: a stream whose request never ends.
        h = wait_for(connect, 10, "a connection to the new server")
        try:
            h.start(h.grpc_headers(mp("GetPin")), None, end_stream=False)
            h._flush()

            def health_ok():
                try:
                    c = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                except OSError:
                    return False
                try:
                    c.settimeout(2)
                    c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return c.recv(64).startswith(b"HTTP/1.1 200 ")
                except OSError:
                    return False
                finally:
                    c.close()
            wait_for(health_ok, 20, "/health answered while a connection held the only slot")
        finally:
            h.close()


class IdleGoaway(ServerTestCase):
    """Item: an idle HTTP/2 connection gets GOAWAY (NO_ERROR, last stream processed) before it
    closes, so clients calling around the idle timeout never see UNAVAILABLE."""

    SERVER_ENV = {"PINS_IDLE_TIMEOUT_SECONDS": "1"}

    def test_idle_close_sends_goaway_first(self):
        with self.server.h2() as c:
            r = c.grpc_call(path_of(HEALTH, "Check"), b"")
            self.assertEqual(r.grpc_status, 0)
            deadline = time.monotonic() + 10
            while c.goaway is None and not c.closed and time.monotonic() < deadline:
                c._pump(deadline - time.monotonic())
            self.assertIsNotNone(c.goaway, "the connection closed without GOAWAY")
            self.assertEqual(int(c.goaway.error_code), 0)
            self.assertEqual(c.goaway.last_stream_id, 1)

    def test_grpcio_calls_around_the_idle_timeout_all_succeed(self):
        req = message_class("grpc.health.v1.HealthCheckRequest")()
        failures = []
        with grpc.insecure_channel(self.server.target) as ch:
            check = ch.unary_unary(path_of(HEALTH, "Check"),
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=message_class(
                                       "grpc.health.v1.HealthCheckResponse").FromString)
            for i in range(16):
                try:
                    check(req, timeout=10)
                except grpc.RpcError as e:
                    failures.append((i, e.code(), e.details()))
                time.sleep(0.85 + (i % 4) * 0.1)  # 0.85 .. 1.15 s: across the idle timeout
        self.assertEqual(failures, [])


class GoawayReachesThePeer(ServerTestCase):
    """Item: a connection nghttp2 ends with GOAWAY (here RST_STREAM on an idle stream, which
    grpcio sends when it cancels a call at the wrong moment) is closed without a TCP reset, even
    while the peer keeps sending: the peer reads the GOAWAY and then end of file, so clients retry
    on a new connection instead of failing calls with UNAVAILABLE ("Connection reset by peer")."""

    def test_goaway_then_eof_not_reset(self):
        with self.server.h2() as c:
            r = c.grpc_call(path_of(HEALTH, "Check"), b"")
            self.assertEqual(r.grpc_status, 0)
            rst_idle = (4).to_bytes(3, "big") + bytes([3, 0]) + (101).to_bytes(4, "big") + \
                (8).to_bytes(4, "big")
            ping = (8).to_bytes(3, "big") + bytes([6, 0]) + (0).to_bytes(4, "big") + b"\0" * 8
            c.sock.sendall(rst_idle)
            # The peer has not read the GOAWAY yet and goes on writing (the next request): that
            # must not meet a closed socket, whose reset would fail it.
            err = None
            for _ in range(3):
                time.sleep(0.2)
                try:
                    c.sock.sendall(ping)
                except OSError as e:
                    err = e
                    break
            data = b""
            c.sock.settimeout(10)
            while err is None:
                try:
                    chunk = c.sock.recv(65536)
                except OSError as e:
                    err = e
                    break
                if not chunk:
                    break
                data += chunk
            self.assertIsNone(err, "the connection was reset (%r) after %d bytes" % (err, len(data)))
            # A GOAWAY frame (type 7) with PROTOCOL_ERROR (1) is in what was read.
            off, goaway = 0, None
            while off + 9 <= len(data):
                n, t = int.from_bytes(data[off:off + 3], "big"), data[off + 3]
                if t == 7:
                    goaway = data[off + 9:off + 9 + n]
                off += 9 + n
            self.assertIsNotNone(goaway, "no GOAWAY before the end of the connection")
            self.assertEqual(int.from_bytes(goaway[4:8], "big"), 1)
            c.closed = True
        text = metrics_text(self.server)
        self.assertGreaterEqual(metric(text, 'connection_closed_total{reason="protocol_error"}'), 1)


class OutOfDescriptors(ServerTestCase):
    """Item: accept() failing with EMFILE pauses accepting with one log line instead of spinning
    the workers and the log."""

    SERVER_ENV = {"PINS_MAX_CONNECTIONS": "10000", "PINS_IDLE_TIMEOUT_SECONDS": "30"}

    def cpu_seconds(self, pid):
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def test_emfile_pauses_accept_and_recovers(self):
        srv = self.fresh_server()
        pid = srv.proc.pid
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=48:48"], check=True)
        socks = []
        try:
            for _ in range(80):
                socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            time.sleep(0.5)
            cpu0 = self.cpu_seconds(pid)
            time.sleep(2.0)
            cpu = self.cpu_seconds(pid) - cpu0
            with open(srv.stderr_path, "rb") as f:
                log = f.read().decode("utf-8", "replace")
            paused = [ln for ln in log.splitlines() if "accept" in ln]
            self.assertGreaterEqual(len(paused), 1, log[-2000:])
            self.assertLessEqual(len(paused), 4, "\n".join(paused[:10]))
            self.assertLess(cpu, 1.0, "pinsd used %.2f CPU-seconds in 2 s while out of "
                            "descriptors" % cpu)
        finally:
            for s in socks:
                s.close()

        def health_ok():
            try:
                with srv.h2(timeout=2) as c:
                    return c.get("/health").status == 200
            except (OSError, ConnectionError):
                return False
        wait_for(health_ok, 20, "/health once descriptors were free again")


class UnsendableAnswers(ServerTestCase):
    """Item: an answer whose header block would pass 64 KiB (a status message echoing a 70 KB
    service name) ends the stream instead of hanging it."""

    def test_health_check_of_a_70kb_service_name_answers(self):
        name = "s" * 70_000
        req = new_request(path_of(HEALTH, "Check"), {"service": name})
        e = self.assertRpcError(SC.NOT_FOUND, self.client.call, path_of(HEALTH, "Check"),
                                {"service": name}, timeout=10)
        self.assertLessEqual(len(e.details()), 4096)
        self.assertTrue(e.details().endswith("..."), e.details()[-40:])
        with self.server.h2() as c:
            r = c.grpc_call(path_of(HEALTH, "Check"), req)
            self.assertEqual(r.grpc_status, 5, r)


class ReservedFlags(ServerTestCase):
    """Item: gRPC message flag bytes other than 0 and 1 are refused."""

    def test_flag_bytes_with_reserved_bits_are_invalid_argument(self):
        payload = new_request(mp("GetPin"), {"tenant_id": "t", "key": "k"}).SerializeToString()
        with self.server.h2() as c:
            for flag in (0x02, 0x80, 0xff):
                framed = bytes([flag]) + len(payload).to_bytes(4, "big") + payload
                r = c.grpc_call(mp("GetPin"), framed=framed)
                self.assertEqual(r.grpc_status, 3, r)
                self.assertIn("message flags 0x%02x" % flag, r.grpc_message)


class ReflectionWindowZero(ServerTestCase):
    """Item: answers a peer will not accept (flow-control window 0) are bounded by the
    connection's budget, and the connection is closed once its output stalls."""

    SERVER_ENV = {"PINS_CONN_BUFFER_BYTES": str(1 << 20), "PINS_REQUEST_TIMEOUT_SECONDS": "2"}

    def test_reflection_answers_stay_within_the_budget_and_the_stall_closes(self):
        c = self.server.h2()
        try:
            c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            c._flush()
            c.pump_for(0.2)
            req = new_request(path_of(REFLECTION_V1, "ServerReflectionInfo"),
                              {"file_by_filename": "memorypins/v1/memory_pins.proto"})
            frame = grpc_frame(req.SerializeToString())
            sid = c.start(c.grpc_headers(path_of(REFLECTION_V1, "ServerReflectionInfo")), None,
                          end_stream=False)
            for _ in range(20):  # 20 x 25 requests of a few KB of answer each
                c.conn.send_data(sid, frame * 25)
                c._flush()
                c.pump_for(0.02)
            peak = 0
            for _ in range(10):
                held = metric(metrics_text(self.server), "connection_buffered_bytes")
                peak = max(peak, held)
                time.sleep(0.1)
            self.assertGreater(peak, 512 << 10)  # the answers did pile up
            self.assertLessEqual(peak, (1 << 20) + (256 << 10))
            wait_for(lambda: metric(metrics_text(self.server),
                                    'connection_closed_total{reason="output_stalled"}'), 20,
                     "the stalled connection closed")
            wait_for(lambda: metric(metrics_text(self.server), "connection_buffered_bytes") == 0,
                     10, "connection_buffered_bytes back to 0")
        finally:
            c.close()


class AnswersLargerThanTheSocketTakes(ServerTestCase):
    """Item: pinsd writes HTTP/2 frames straight to the socket while nothing waits in its output
    buffer, and buffers only what the socket does not take, in order. Answers much larger than a
    socket takes at once, to a reader that first stops reading and then reads slowly, all arrive
    complete, each on its own stream, byte for byte."""

    def test_answers_past_a_full_socket_arrive_whole_and_in_order(self):
        values = {}
        for i in range(8):
            key = "big-%02d" % i
            values[key] = ("%02d" % i) * 150000 + "-end"  # 300 KB each, distinct per key
            self.client.call(mp("UpsertPin"), {"tenant_id": "wbatch", "key": key,
                                               "value": {"s": values[key]}})
        c = self.server.h2()
        try:
            # More answer bytes than the two sockets can ever hold (the client's receive buffer,
            # fixed here, and the maximum of the server's send buffer, tcp_wmem), so that part
            # of them must wait in pinsd's output buffer while the reader does not read.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            buffers = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            with open("/proc/sys/net/ipv4/tcp_wmem") as f:
                buffers += int(f.read().split()[2])
            per_round = sum(len(v) for v in values.values())
            rounds = buffers // per_round + 2
            self.assertLess(rounds * per_round, 15 << 20)  # within the client's 16 MB window
            self.assertLessEqual(rounds * len(values), 100)  # and its 100 streams
            get_cls = message_class("memorypins.v1.GetPinResponse")
            sids = {}
            for _ in range(rounds):
                for key in sorted(values):
                    req = new_request(mp("GetPin"), {"tenant_id": "wbatch", "key": key})
                    body = grpc_frame(req.SerializeToString())
                    sids[c.start(c.grpc_headers(mp("GetPin")), body)] = key
            time.sleep(0.5)  # not reading: pinsd's writes stop short and the rest is buffered
            # Then read in pieces with pauses: each time pinsd's buffer has drained it writes
            # straight to the socket again, and the socket fills again part way through a write.
            deadline = time.monotonic() + 60
            while not all(c.streams[sid].ended or c.streams[sid].reset_code is not None
                          for sid in sids) and not c.closed:
                self.assertLess(time.monotonic(), deadline, "answers still missing after 60 s")
                c._pump(0.5)
                time.sleep(0.002)
            for sid, key in sids.items():
                r = c.wait(sid, 1)
                self.assertEqual(r.grpc_status, 0, r)
                msgs = r.messages()
                self.assertEqual(len(msgs), 1, r)
                pin = get_cls.FromString(msgs[0]).pin
                self.assertEqual(pin.key, key)
                self.assertEqual(pin.value.fields["s"].string_value, values[key])
        finally:
            c.close()


class NonReadingPeers(ServerTestCase):
    """Item: a peer that stops reading does not hold its connection and the bytes queued for it
    forever: output that has not moved for PINS_REQUEST_TIMEOUT_SECONDS closes the connection."""

    SERVER_ENV = {"PINS_REQUEST_TIMEOUT_SECONDS": "1"}

    def test_http1_client_that_never_reads_is_closed(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.server.port))
        try:
            s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
            wait_for(lambda: metric(metrics_text(self.server),
                                    'connection_closed_total{reason="output_stalled"}'), 20,
                     "the connection of a client that does not read closed")
        finally:
            s.close()


class DatabaseUrlAtStart(unittest.TestCase):
    """Item: a DATABASE_URL that cannot be parsed stops the start with a clear line that does not
    show the password."""

    def test_non_numeric_port_is_refused_at_start(self):
        if not os.path.exists(PINSD_BIN):
            self.fail("pinsd binary not found at %s" % PINSD_BIN)
        srv = Server()
        self.addCleanup(srv.cleanup)
        env = srv.env()
        env["DATABASE_URL"] = "postgresql://pins:hunter2@db:54x2/pins"
        p = subprocess.run([PINSD_BIN], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn("invalid DATABASE_URL: the port must be a number", out)
        self.assertNotIn("hunter2", out)


class AddressInUseAtStart(ServerTestCase):
    """A second pinsd on an address the first one listens on (or claimed, starting at the same
    instant), or any program listening there, stops it at start: with SO_REUSEPORT on both it
    would bind beside the first, and the kernel would hand it a share of the connections (writes
    acknowledged by a process nobody watches)."""

    def spare(self, listen="127.0.0.1:{port}"):
        """A Server that is not started (cleaned up after the test), its port, and its
        environment with PINS_LISTEN = listen (formatted with port)."""
        srv = Server()
        self.addCleanup(srv.cleanup)
        port = srv.ports[0]
        env = srv.env()
        env["PINS_LISTEN"] = listen.format(port=port)
        return srv, port, env

    def refused(self, env, message):
        """Runs pinsd with env; it must exit non-zero saying message."""
        p = subprocess.run([PINSD_BIN], env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn(message, out)

    def runs(self, env, port):
        """Starts pinsd with env (stopped after the test); it must answer /health on port."""
        p = spawn(env)
        self.addCleanup(stop, [p])
        self.assertTrue(health_up(port, [p]), p.stderr.read().decode("utf-8", "replace")
                        if p.poll() is not None else "no answer within 30 s")
        return p

    def test_second_server_on_a_taken_port_refuses_to_start(self):
        _, _, env = self.spare("127.0.0.1:%d" % self.server.port)
        self.refused(env, "cannot listen on 127.0.0.1:%d: another pinsd is starting or running "
                     "there" % self.server.port)
        # Another program listening with SO_REUSEPORT (as gRPC servers do) stops it too.
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(8)
            env["PINS_LISTEN"] = "127.0.0.1:%d" % lsock.getsockname()[1]
            self.refused(env, "cannot listen on 127.0.0.1:%d: another process already listens "
                         "there" % lsock.getsockname()[1])
        finally:
            lsock.close()
        # pinsd's own addresses that share a port (the wildcard and loopback) do not count.
        _, port, env = self.spare("0.0.0.0:{port},127.0.0.1:{port}")
        stop([self.runs(env, port)])
        # The first one still answers on its port.
        for _ in range(8):
            with urllib.request.urlopen("http://127.0.0.1:%d/health" % self.server.port,
                                        timeout=10) as r:
                self.assertEqual(r.status, 200)

    def test_an_address_claimed_by_another_pinsd_refuses_to_start(self):
        """Two pinsd started at the same instant both passed the probe (neither listened yet)
        and then shared the port. Each pinsd claims its addresses first with an abstract Unix
        socket; one held elsewhere (here by the test, as a pinsd starting at the same instant
        would) stops the start, and once it is released the same start succeeds."""
        other, port, env = self.spare()
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        claim.bind("\0pinsd-listen 127.0.0.1 %d" % port)
        try:
            self.refused(env, "cannot listen on 127.0.0.1:%d: another pinsd is starting or "
                         "running there" % port)
        finally:
            claim.close()
        other.start()  # the same address, released: it starts and answers
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=10) as r:
            self.assertEqual(r.status, 200)
        # ... and holds the claim while it runs.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self.assertRaises(OSError):
                probe.bind("\0pinsd-listen 127.0.0.1 %d" % port)
        finally:
            probe.close()

    def test_one_address_spelled_twice_starts(self):
        """localhost and 127.0.0.1 on one port are one address claimed once, not a second pinsd."""
        _, port, env = self.spare("localhost:{port},127.0.0.1:{port}")
        self.runs(env, port)

    def test_a_successor_starts_while_the_old_one_drains(self):
        """The claims go with the listeners when the drain starts: a pinsd started to take over
        the address runs while the old one still waits for a call in flight."""
        old = Server({"PINS_DRAIN_SECONDS": "20", "PINS_REQUEST_TIMEOUT_SECONDS": "60"})
        self.addCleanup(old.cleanup)
        old.start()
        c = old.h2()
        self.addCleanup(c.close)
        # A call whose body never ends keeps the old pinsd draining.
        c.start(c.grpc_headers(mp("GetPin")), None, end_stream=False)
        c.pump_for(0.2)
        old.signal(signal.SIGTERM)
        _, _, env = self.spare("127.0.0.1:%d" % old.port)
        deadline = time.time() + 15
        successor = None
        while successor is None and time.time() < deadline:
            proc = spawn(env)
            try:
                proc.wait(timeout=2)  # refused while the old listeners are still open
            except subprocess.TimeoutExpired:
                successor = proc  # still running: it took the address
                self.addCleanup(stop, [proc])
                break
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
            self.assertIn("cannot listen on 127.0.0.1:%d" % old.port, err)
            time.sleep(0.2)
        self.assertIsNotNone(successor, "no successor could start within 15 s")
        self.assertTrue(old.alive(), "the old pinsd should still be draining")
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % old.port, timeout=10) as r:
            self.assertEqual(r.status, 200)

    def test_servers_started_together_leave_one_on_the_port(self):
        """Four pinsd on one address started at once: exactly one keeps running."""
        base, port, env = self.spare()
        procs = []
        self.addCleanup(stop, procs)
        for i in range(4):
            e = dict(env)
            e["PINS_DATA_DIR"] = os.path.join(base.tmp, "together-%d" % i)
            os.makedirs(e["PINS_DATA_DIR"], exist_ok=True)
            procs.append(spawn(e))
        self.assertTrue(health_up(port, procs), "none of them answers")
        # The losers stop at start; give them the time to get there.
        end = time.time() + 30
        while time.time() < end and sum(p.poll() is None for p in procs) > 1:
            time.sleep(0.1)
        running = [p for p in procs if p.poll() is None]
        self.assertEqual(len(running), 1, [p.returncode for p in procs])
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read().decode("utf-8", "replace")
                self.assertIn("cannot listen on 127.0.0.1:%d" % port, err)

if __name__ == "__main__":
    unittest.main()
