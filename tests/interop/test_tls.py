"""TLS on the listeners: h2 over TLS chosen by ALPN, HTTP/1.1 over TLS, and mutual TLS.

Certificates are made per test class with openssl(1) in the server's temporary directory: a CA,
a server certificate for 127.0.0.1 signed by it, and a client certificate signed by it (plus one
from an unrelated CA for the negative mutual-TLS case).
"""
import json
import os
import subprocess
import time
import unittest

import grpc

import harness


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=" + name,
            "-keyout", name + ".key", "-out", name + ".pem", cwd=d)


def make_leaf(d, ca, name, san=None):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout",
            name + ".key", "-out", name + ".csr", cwd=d)
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\n" % (san or "DNS:" + name))
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
            "-CAcreateserial", "-days", "2", "-out", name + ".pem", "-extfile", ext, cwd=d)


class TlsServer(harness.Server):
    """A Server whose readiness check speaks TLS (and presents a client certificate if given)."""

    def __init__(self, env, ca, client_cert=None, client_key=None, **kw):
        super().__init__(env, **kw)
        self.ca = ca
        self.client_cert = client_cert
        self.client_key = client_key

    def channel(self):
        def read(p):
            with open(p, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.client_key) if self.client_key else None,
            certificate_chain=read(self.client_cert) if self.client_cert else None)
        return grpc.secure_channel(self.target, creds)

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pinsd exited before answering\n" + self.stderr_tail())
            ch = self.channel()
            try:
                resp = unary(ch, harness.HEALTH, "Check", {}, timeout=1.0)
                if resp.get("status") == "SERVING":
                    return
                last = repr(resp)
            except grpc.RpcError as e:
                last = "%s %s" % (e.code(), e.details())
            finally:
                ch.close()
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("pinsd did not answer over TLS (last: %s)\n%s" % (last, self.stderr_tail()))


def unary(ch, service, method, fields, timeout=10):
    """A unary call on channel ch; returns the response as a dict (proto field names)."""
    path = harness.path_of(service, method)
    out = harness.message_class(harness.method_descriptor(path).output_type.full_name)
    stub = ch.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=out.FromString)
    return harness.to_dict(stub(harness.new_request(path, fields), timeout=timeout))


def curl(*args):
    p = subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                       timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class TlsTest(unittest.TestCase):
    """Server-authenticated TLS: ALPN h2 for gRPC and REST, http/1.1 for REST."""

    @classmethod
    def setUpClass(cls):
        cls.server = None
        tmp = harness.tempfile.mkdtemp(prefix="pinsd-tls-", dir="/tmp")
        cls.tmp = tmp
        make_ca(tmp, "ca")
        make_leaf(tmp, "ca", "server", san="IP:127.0.0.1,DNS:localhost")
        cls.ca = os.path.join(tmp, "ca.pem")
        env = {"TLS_CERT_FILE": os.path.join(tmp, "server.pem"),
               "TLS_KEY_FILE": os.path.join(tmp, "server.key")}
        cls.server = TlsServer(env, cls.ca, tmp=tmp)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.cleanup()

    def base(self):
        return "https://127.0.0.1:%d" % self.server.port

    def test_grpc_over_tls_round_trip(self):
        ch = self.server.channel()
        try:
            up = unary(ch, harness.MEMORY_PINS, "UpsertPin",
                               {"tenant_id": "tls", "key": "k", "value": {"a": 1}})
            self.assertEqual(up["pin"]["version"], "1")
            got = unary(ch, harness.MEMORY_PINS, "GetPin", {"tenant_id": "tls", "key": "k"})
            self.assertEqual(got["pin"]["value"], {"a": 1})
        finally:
            ch.close()

    def test_alpn_h2_serves_rest_and_probes(self):
        rc, out, err = curl("--http2", "--cacert", self.ca, "-o", "/dev/null", "-w",
                            "%{http_version} %{http_code}", self.base() + "/health")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, "2 200")

    def test_alpn_http11_serves_rest(self):
        rc, out, err = curl("--http1.1", "--cacert", self.ca, "-w", "\n%{http_version} %{http_code}",
                            "-H", "content-type: application/json", "-d",
                            '{"tenant_id":"tls","key":"rest","value":{"b":2}}',
                            self.base() + "/api/v1/memory/pins")
        self.assertEqual(rc, 0, err)
        body, status = out.rsplit("\n", 1)
        self.assertEqual(status, "1.1 201")
        self.assertEqual(json.loads(body)["value"], {"b": 2})

    def test_plaintext_client_on_tls_listener_fails_cleanly(self):
        rc, out, err = curl("--http2-prior-knowledge", "http://127.0.0.1:%d/health" % self.server.port)
        self.assertNotEqual(rc, 0)
        # The server survives the garbage handshake.
        rc, out, err = curl("--cacert", self.ca, "-o", "/dev/null", "-w", "%{http_code}",
                            self.base() + "/health")
        self.assertEqual(out, "200", err)

    def test_untrusted_client_rejects_the_server_certificate(self):
        rc, out, err = curl("-o", "/dev/null", self.base() + "/health")
        self.assertEqual(rc, 60, err)  # curl: peer certificate cannot be authenticated


class MutualTlsTest(unittest.TestCase):
    """TLS_CLIENT_CA_FILE: a client certificate signed by that CA is required."""

    @classmethod
    def setUpClass(cls):
        cls.server = None
        tmp = harness.tempfile.mkdtemp(prefix="pinsd-mtls-", dir="/tmp")
        cls.tmp = tmp
        make_ca(tmp, "ca")
        make_ca(tmp, "other")
        make_leaf(tmp, "ca", "server", san="IP:127.0.0.1")
        make_leaf(tmp, "ca", "client")
        make_leaf(tmp, "other", "stranger")
        cls.ca = os.path.join(tmp, "ca.pem")
        j = lambda n: os.path.join(tmp, n)  # noqa: E731
        env = {"TLS_CERT_FILE": j("server.pem"), "TLS_KEY_FILE": j("server.key"),
               "TLS_CLIENT_CA_FILE": cls.ca}
        cls.server = TlsServer(env, cls.ca, client_cert=j("client.pem"),
                               client_key=j("client.key"), tmp=tmp)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            cls.server.cleanup()

    def url(self):
        return "https://127.0.0.1:%d/health" % self.server.port

    def test_client_certificate_from_the_ca_is_accepted(self):
        j = lambda n: os.path.join(self.tmp, n)  # noqa: E731
        rc, out, err = curl("--cacert", self.ca, "--cert", j("client.pem"), "--key", j("client.key"),
                            "-o", "/dev/null", "-w", "%{http_code}", self.url())
        self.assertEqual((rc, out), (0, "200"), err)

    def test_missing_client_certificate_is_refused(self):
        rc, out, err = curl("--cacert", self.ca, "-o", "/dev/null", "-w", "%{http_code}", self.url())
        self.assertNotEqual(rc, 0)
        self.assertNotEqual(out, "200")

    def test_client_certificate_from_another_ca_is_refused(self):
        j = lambda n: os.path.join(self.tmp, n)  # noqa: E731
        rc, out, err = curl("--cacert", self.ca, "--cert", j("stranger.pem"), "--key",
                            j("stranger.key"), "-o", "/dev/null", "-w", "%{http_code}", self.url())
        self.assertNotEqual(rc, 0)
        self.assertNotEqual(out, "200")

    def test_grpc_with_client_certificate(self):
        ch = self.server.channel()
        try:
            resp = unary(ch, harness.HEALTH, "Check", {"service": ""})
            self.assertEqual(resp["status"], "SERVING")
        finally:
            ch.close()


class TlsConfigTest(unittest.TestCase):
    def test_key_that_does_not_match_the_certificate_stops_the_start(self):
        tmp = harness.tempfile.mkdtemp(prefix="pinsd-tlsbad-", dir="/tmp")
        make_ca(tmp, "a")
        make_ca(tmp, "b")
        srv = harness.Server({"TLS_CERT_FILE": os.path.join(tmp, "a.pem"),
                              "TLS_KEY_FILE": os.path.join(tmp, "b.key")}, tmp=tmp)
        try:
            with self.assertRaises(RuntimeError) as ctx:
                srv.start(ready_timeout=5)
            self.assertIn("TLS_KEY_FILE", str(ctx.exception))
        finally:
            srv.cleanup()


if __name__ == "__main__":
    unittest.main()
