"""HTTP/1.1 against pinsd (transport/h1.c): raw sockets for exact bytes, and curl --http1.1.

Covers API.md section 1 (HTTP/1.1 keep-alive, Content-Length and chunked bodies on every listener)
and the request-smuggling and size rules of transport/h1_int.h. The class server runs with
MAX_REQUEST_BYTES=2048 so that the 413 paths are cheap to reach.
Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_http1   (from tests/interop)
"""

import json
import shutil
import socket
import struct
import signal
import subprocess
import threading
import time
import unittest

from harness import ServerTestCase

TOO_LARGE = {"detail": "request body larger than MAX_REQUEST_BYTES", "code": 8,
             "message": "message larger than the limit"}


class Response:
    def __init__(self, version, status, headers, body):
        self.version, self.status, self.headers, self.body = version, status, headers, body

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "Response(%s %d %r %r)" % (self.version, self.status, self.headers, self.body[:200])


class H1:
    """One raw HTTP/1.1 connection with a response reader (bounded in time)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            raise EOFError("connection closed by the server")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self):
        """Status line and headers of the next response (interim ones included)."""
        version, status = self._line().decode("latin-1").split(" ", 2)[:2]
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers.append((k.strip(), v.strip()))
        return Response(version, int(status), headers, b"")

    def read_response(self, head_request=False):
        r = self.read_head()
        if head_request or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        if (r.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._exact(size)
                self._exact(2)
            r.body = body
        elif r.header("content-length") is not None:
            r.body = self._exact(int(r.header("content-length")))
        else:
            while not self.eof:
                try:
                    self._fill()
                except EOFError:
                    break
            r.body, self.buf = self.buf, b""
        return r

    def closed_by_server(self, timeout=3.0):
        """True when the server closes the connection (EOF, or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def get(path, host="127.0.0.1", extra=b"", method=b"GET"):
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n" \
        + extra + b"\r\n"


class Http1Test(ServerTestCase):
    SERVER_ENV = {"MAX_REQUEST_BYTES": "2048", "MEMORY_MAX_SIZE_BYTES": "1024"}

    def conn(self):
        c = H1(self.server.port)
        self.addCleanup(c.close)
        return c

    def assertMalformed(self, r):
        self.assertEqual(r.status, 400, r)
        body = r.json()
        self.assertEqual(body["code"], 3)
        self.assertEqual(body["message"], "malformed request")
        self.assertTrue(body["detail"].startswith("malformed HTTP request: "), body)

    # -- probes and keep-alive

    def test_probes_over_http1(self):
        c = self.conn()
        for path in ("/health", "/ready", "/health/ready", "/metrics"):
            with self.subTest(path=path):
                c.send(get(path))
                r = c.read_response()
                self.assertEqual(r.version, "HTTP/1.1")
                self.assertEqual(r.status, 200, r)
                self.assertEqual(int(r.header("content-length")), len(r.body))
                self.assertTrue(r.header("x-request-id"))
                self.assertIsNone(r.header("connection"))
                if path == "/metrics":
                    self.assertIn(b"# TYPE", r.body)
                else:
                    self.assertEqual(r.header("content-type"), "application/json")
                    body = r.json()
                    if path == "/health":
                        self.assertEqual(body["status"], "healthy")
                        self.assertEqual(body["service"], "pinsd")
                    else:
                        self.assertIs(body["ready"], True)

    def test_keep_alive_two_requests_one_socket(self):
        c = self.conn()
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)
        c.send(get("/health", extra=b"X-Request-Id: second-one\r\n"))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-request-id"), "second-one")
        self.assertFalse(c.closed_by_server(0.3))

    def test_pipelined_requests_answered_in_order(self):
        c = self.conn()
        c.send(get("/health", extra=b"X-Request-Id: p1\r\n")
               + get("/no/such/route", extra=b"X-Request-Id: p2\r\n")
               + get("/metrics", extra=b"X-Request-Id: p3\r\n"))
        got = [c.read_response() for _ in range(3)]
        self.assertEqual([r.header("x-request-id") for r in got], ["p1", "p2", "p3"])
        self.assertEqual([r.status for r in got], [200, 404, 200])
        self.assertEqual(got[0].json()["status"], "healthy")
        self.assertIn(b"# TYPE", got[2].body)

    def test_many_pipelined_requests_in_one_write(self):
        c = self.conn()
        n = 50
        c.send(b"".join(get("/health", extra=b"X-Request-Id: m%d\r\n" % i) for i in range(n)))
        ids = [c.read_response().header("x-request-id") for _ in range(n)]
        self.assertEqual(ids, ["m%d" % i for i in range(n)])

    def test_chunked_body_to_unknown_route_keeps_connection(self):
        c = self.conn()
        c.send(b"POST /api/v1/nothing-here HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\n\r\n"
               b"5\r\n{\"a\":\r\n3;ext=1\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json()["code"], 5)
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)

    def test_expect_100_continue(self):
        c = self.conn()
        body = b'{"x": 1}'
        c.send(b"POST /api/v1/nothing-here HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        interim = c.read_head()
        self.assertEqual(interim.status, 100)
        c.send(body)
        r = c.read_response()
        self.assertEqual(r.status, 404, r)
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)

    def test_absolute_form_target(self):
        c = self.conn()
        c.send(get("http://127.0.0.1/health"))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["status"], "healthy")

    def test_head_has_no_body(self):
        c = self.conn()
        c.send(get("/health", method=b"HEAD"))
        r = c.read_response(head_request=True)
        self.assertEqual(r.status, 200)
        self.assertGreater(int(r.header("content-length")), 0)
        # No body bytes: the next response starts right away.
        c.send(get("/health", extra=b"X-Request-Id: after-head\r\n"))
        r2 = c.read_response()
        self.assertEqual(r2.status, 200)
        self.assertEqual(r2.header("x-request-id"), "after-head")

    def test_http10_gets_connection_close(self):
        c = self.conn()
        c.send(b"GET /health HTTP/1.0\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_server())

    def test_http10_keep_alive(self):
        c = self.conn()
        c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.header("connection").lower(), "keep-alive")
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)

    def test_connection_close_from_client(self):
        c = self.conn()
        c.send(get("/health", extra=b"Connection: close\r\n"))
        r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_server())

    # -- smuggling and malformed input

    def test_content_length_with_transfer_encoding_is_400_and_closes(self):
        c = self.conn()
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        self.assertMalformed(r)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_server())

    def test_duplicate_content_length_is_400(self):
        for cl in (b"Content-Length: 3\r\nContent-Length: 3\r\n",
                   b"Content-Length: 3\r\nContent-Length: 4\r\n",
                   b"Content-Length: 3, 3\r\n"):
            with self.subTest(cl=cl):
                c = self.conn()
                c.send(b"POST /x HTTP/1.1\r\nHost: x\r\n" + cl + b"\r\nabcd")
                self.assertMalformed(c.read_response())
                self.assertTrue(c.closed_by_server())

    def test_transfer_encoding_other_than_chunked_is_400(self):
        for te in (b"gzip", b"gzip, chunked", b"chunked, gzip", b"xchunked"):
            with self.subTest(te=te):
                c = self.conn()
                c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te
                       + b"\r\n\r\n0\r\n\r\n")
                self.assertMalformed(c.read_response())
                self.assertTrue(c.closed_by_server())

    def test_obs_fold_and_bad_header_characters_are_400(self):
        for hdrs in (b"X-A: a\r\n b\r\n", b"Transfer-Encoding:\r\n chunked\r\n",
                     b"X-A : a\r\n", b"X-A: a\x01b\r\n", b"X A: a\r\n", b"X-A: a\rb\r\n"):
            with self.subTest(hdrs=hdrs):
                c = self.conn()
                c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
                self.assertMalformed(c.read_response())
                self.assertTrue(c.closed_by_server())

    def test_garbage_is_400_with_reason(self):
        c = self.conn()
        c.send(b"HELLO THERE\r\n\r\n")
        r = c.read_response()
        self.assertMalformed(r)
        self.assertTrue(c.closed_by_server())

    def test_missing_host_is_400(self):
        c = self.conn()
        c.send(b"GET /health HTTP/1.1\r\n\r\n")
        self.assertMalformed(c.read_response())

    def test_unsupported_version_is_505(self):
        c = self.conn()
        c.send(b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 505)
        self.assertTrue(c.closed_by_server())
        c = self.conn()
        c.send(b"GET /health HTTP/1.2\r\nHost: x\r\n\r\n")  # llhttp: invalid minor version
        self.assertIn(c.read_response().status, (400, 505))

    # -- limits

    def test_body_over_max_request_bytes_is_413_and_closes(self):
        c = self.conn()
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n" + b"a" * 4096)
        r = c.read_response()
        self.assertEqual(r.status, 413)
        self.assertEqual(r.json(), TOO_LARGE)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(c.closed_by_server())

    def test_chunked_body_over_max_request_bytes_is_413(self):
        c = self.conn()
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"400\r\n" + b"b" * 1024 + b"\r\n" + b"400\r\n" + b"b" * 1024 + b"\r\n"
               + b"400\r\n" + b"b" * 1024 + b"\r\n0\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 413)
        self.assertEqual(r.json(), TOO_LARGE)
        self.assertTrue(c.closed_by_server())

    def test_expect_continue_over_limit_gets_413_without_100(self):
        c = self.conn()
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n")
        r = c.read_response()
        self.assertEqual(r.status, 413)
        self.assertEqual(r.json(), TOO_LARGE)
        self.assertTrue(c.closed_by_server())

    def test_body_at_the_limit_is_accepted(self):
        c = self.conn()
        c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2048\r\n\r\n" + b"a" * 2048)
        self.assertEqual(c.read_response().status, 404)

    def test_101_headers_is_431(self):
        c = self.conn()
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(100))  # + Host = 101 fields
        c.send(get("/health", extra=extra))
        r = c.read_response()
        self.assertEqual(r.status, 431)
        self.assertEqual(r.json()["code"], 8)
        self.assertTrue(c.closed_by_server())

    def test_100_headers_is_fine(self):
        c = self.conn()
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(99))  # + Host = 100 fields
        c.send(get("/health", extra=extra))
        self.assertEqual(c.read_response().status, 200)

    def test_header_bytes_over_64k_is_431(self):
        c = self.conn()
        c.send(get("/health", extra=b"X-Big: " + b"v" * 70000 + b"\r\n"))
        self.assertEqual(c.read_response().status, 431)

    def test_long_url_is_414(self):
        c = self.conn()
        c.send(get("/" + "a" * 9000))
        self.assertEqual(c.read_response().status, 414)

    def test_slow_headers_close_the_connection(self):
        c = self.conn()
        c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        self.assertTrue(c.closed_by_server(timeout=13.0))
        self.assertGreater(time.monotonic() - start, 8.0)
        if c.buf:
            self.assertTrue(c.buf.startswith(b"HTTP/1.1 408 "), c.buf)

    # -- flow control and peers that go away

    def test_client_that_reads_late_gets_every_response_in_order(self):
        # 4000 pipelined requests written by a thread while nothing is read for a while: the
        # server stops reading and answering (its buffers are bounded) and resumes once we read.
        c = self.conn()
        c.sock.settimeout(20.0)
        n = 4000
        # About 1 MB of requests (past the server's 256 KiB input bound) asking for about 2.5 MB
        # of responses (past its 1 MiB output bound).
        pad = b"X-Pad: " + b"p" * 200 + b"\r\n"
        data = b"".join(get("/metrics" if i % 10 == 0 else "/health",
                            extra=b"X-Request-Id: s%d\r\n" % i + pad) for i in range(n))
        sender = threading.Thread(target=c.send, args=(data,), daemon=True)
        sender.start()
        time.sleep(1.0)
        ids = []
        for _ in range(n):
            r = c.read_response()
            self.assertEqual(r.status, 200)
            ids.append(r.header("x-request-id"))
        sender.join(10)
        self.assertEqual(ids, ["s%d" % i for i in range(n)])

    def test_half_closed_client_still_gets_its_responses(self):
        c = self.conn()
        c.send(get("/health", extra=b"X-Request-Id: h1\r\n")
               + get("/ready", extra=b"X-Request-Id: h2\r\n"))
        c.sock.shutdown(socket.SHUT_WR)
        r1, r2 = c.read_response(), c.read_response()
        self.assertEqual((r1.status, r1.header("x-request-id")), (200, "h1"))
        self.assertEqual((r2.status, r2.header("x-request-id")), (200, "h2"))
        self.assertTrue(c.closed_by_server())

    def test_peers_that_leave_mid_request_do_not_hurt_the_server(self):
        partials = [
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Half",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
            get("/ready") * 20,
            get("/metrics") * 20,
        ]
        for data in partials * 3:
            c = H1(self.server.port)
            c.send(data)
            # SO_LINGER 0: the close is a reset, while the server may still be answering.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        c = self.conn()
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)

    def test_drain_closes_idle_keep_alive_connections(self):
        s = self.fresh_server(env={"MAX_REQUEST_BYTES": "2048", "PINS_DRAIN_SECONDS": "5"})
        c = H1(s.port)
        self.addCleanup(c.close)
        c.send(get("/health"))
        self.assertEqual(c.read_response().status, 200)
        start = time.monotonic()
        s.signal(signal.SIGTERM)
        self.assertTrue(c.closed_by_server(timeout=4.0))
        self.assertEqual(s.wait_exit(10), 0)
        self.assertLess(time.monotonic() - start, 4.0)

    # -- a real client

    @unittest.skipUnless(shutil.which("curl"), "curl not installed")
    def test_curl_http11_verbose(self):
        url = "http://%s/health" % self.server.target
        p = subprocess.run(["curl", "--http1.1", "-sS", "-v", "--max-time", "10", url, url],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        err = p.stderr.decode("latin-1")
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("< HTTP/1.1 200 OK", err)
        self.assertIn("Re-using existing connection", err)
        out = p.stdout.decode()
        self.assertEqual(out.count('"status":"healthy"'), 2, out)

    @unittest.skipUnless(shutil.which("curl"), "curl not installed")
    def test_curl_chunked_upload(self):
        url = "http://%s/api/v1/nowhere" % self.server.target
        p = subprocess.run(["curl", "--http1.1", "-sS", "--max-time", "10", "-o", "/dev/null",
                            "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                            "--data-binary", "@-", url],
                           input=b'{"k": "v"}', stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, b"404")


if __name__ == "__main__":
    unittest.main()
