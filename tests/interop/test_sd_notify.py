"""pinsd's readiness notification (server/sdnotify.c): the sd_notify(3) protocol of Type=notify
units (deploy/systemd/pinsd.service).

The test binds the datagram socket a service manager would own, starts pinsd with NOTIFY_SOCKET
naming it (a filesystem path, or an abstract name '@...'), and checks that READY=1 arrives and that
at that moment every listener answers GET /health; that STATUS= lines come along; that SIGTERM
brings STOPPING=1 before the process exits 0; and that a NOTIFY_SOCKET pinsd cannot use does not
stop it from serving. Servers listen on 127.0.0.1 on free ports and are stopped by PID.
"""
import http.client
import os
import secrets
import signal
import socket
import shutil
import tempfile
import time
import unittest

import harness


def receive(sock, want, timeout, proc=None):
    """Datagrams from sock until one holds the line want (bounded by timeout). Returns the list of
    datagrams received, each a list of lines, the last one holding want."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            if proc is not None and proc.poll() is not None and want != "STOPPING=1":
                raise AssertionError("pinsd exited with %s before sending %s (got %r)"
                                     % (proc.returncode, want, got))
            continue
        lines = data.decode("utf-8", "replace").split("\n")
        got.append(lines)
        if want in lines:
            return got
    raise AssertionError("no %s within %.0f s (got %r)" % (want, timeout, got))


def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/health")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class NoWaitServer(harness.Server):
    """A harness.Server whose start() returns as soon as the process runs: the test itself waits
    for the notification instead of polling the health Check."""

    def wait_ready(self, timeout=10.0):
        return None


class SdNotifyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pinsd-sdnotify-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def bind(self, abstract):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = "pinsd-test-%s" % secrets.token_hex(8)
            sock.bind("\0" + name)
            return sock, "@" + name
        path = os.path.join(self.tmp, "notify.sock")
        sock.bind(path)
        return sock, path

    def start(self, notify_socket, nports=2):
        srv = NoWaitServer(env={"NOTIFY_SOCKET": notify_socket}, nports=nports,
                           tmp=os.path.join(self.tmp, "srv"))
        os.makedirs(srv.tmp, exist_ok=True)
        self.addCleanup(srv.cleanup)
        srv.start()
        return srv

    def ready_then_stopping(self, abstract):
        sock, name = self.bind(abstract)
        srv = self.start(name)
        got = receive(sock, "READY=1", 60, srv.proc)
        # At the moment READY=1 arrives every listener serves: no retry, no sleep.
        for port in srv.ports:
            status, body = health(port)
            self.assertEqual(status, 200, "GET /health on %d: %r" % (port, body))
        ready = got[-1]
        self.assertTrue(any(l.startswith("STATUS=serving") for l in ready), ready)
        for earlier in got[:-1]:
            self.assertNotIn("READY=1", earlier)
            self.assertTrue(all(l.startswith("STATUS=") for l in earlier if l), earlier)
        self.assertTrue(srv.alive())

        srv.signal(signal.SIGTERM)
        got = receive(sock, "STOPPING=1", 30)
        self.assertIn("STATUS=draining", got[-1])
        self.assertFalse(any("READY=1" in d for d in got), got)
        self.assertEqual(srv.wait_exit(60), 0, srv.stderr_tail())

    def test_path_socket_ready_and_stopping(self):
        self.ready_then_stopping(abstract=False)

    def test_abstract_socket_ready_and_stopping(self):
        self.ready_then_stopping(abstract=True)

    def test_unusable_notify_socket_still_serves(self):
        # Neither an absolute path nor '@name': pinsd warns once and serves without notifying.
        srv = self.start("relative/notify.sock", nports=1)
        harness.Server.wait_ready(srv, 60)
        self.assertEqual(health(srv.port)[0], 200)
        self.assertEqual(srv.stop(), 0)
        with open(srv.stderr_path, "rb") as f:
            self.assertIn(b"NOTIFY_SOCKET", f.read())

    def test_missing_socket_file_still_serves(self):
        # An absolute path nobody listens on: the datagram is refused, pinsd serves regardless.
        srv = self.start(os.path.join(self.tmp, "nobody.sock"), nports=1)
        harness.Server.wait_ready(srv, 60)
        self.assertEqual(health(srv.port)[0], 200)
        self.assertEqual(srv.stop(), 0)

    def test_full_notify_queue_does_not_block(self):
        # A manager that never reads its socket: the receive queue is full before pinsd starts
        # (filled until the kernel refuses more). Notifications are dropped, never waited for:
        # pinsd serves /health and exits on SIGTERM.
        sock, name = self.bind(abstract=False)
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(filler.close)
        filler.setblocking(False)
        sent = 0
        for _ in range(100000):
            try:
                filler.sendto(b"STATUS=filler", name)
            except BlockingIOError:
                break
            sent += 1
        else:
            self.fail("the notify socket's queue never filled")
        self.assertGreater(sent, 0)
        srv = self.start(name, nports=1)
        harness.Server.wait_ready(srv, 60)
        self.assertEqual(health(srv.port)[0], 200)
        srv.signal(signal.SIGTERM)
        self.assertEqual(srv.wait_exit(60), 0, srv.stderr_tail())

    def test_abstract_name_of_the_maximum_length(self):
        # '@' and 107 bytes: the whole 108-byte sun_path (its leading NUL for the '@').
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        name = ("pinsd-test-%s-" % secrets.token_hex(8)).ljust(107, "x")
        self.assertEqual(len(name), 107)
        sock.bind("\0" + name)
        srv = self.start("@" + name, nports=1)
        receive(sock, "READY=1", 60, srv.proc)
        self.assertEqual(health(srv.port)[0], 200)
        self.assertEqual(srv.stop(), 0)

    def test_too_long_name_says_so(self):
        srv = self.start("@" + "y" * 108, nports=1)
        harness.Server.wait_ready(srv, 60)
        self.assertEqual(health(srv.port)[0], 200)
        self.assertEqual(srv.stop(), 0)
        with open(srv.stderr_path, "rb") as f:
            log = f.read()
        self.assertIn(b"NOTIFY_SOCKET is too long", log)
        self.assertNotIn(b"neither an absolute path", log)


if __name__ == "__main__":
    unittest.main()
