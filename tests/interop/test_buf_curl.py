"""buf curl against pinsd through server reflection only (no proto files).

Uses <repo>/tools/node_modules/.bin/buf (installed by tools/deps.sh --test), or BUF_BIN.
Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_buf_curl   (from tests/interop)
"""

import json
import os
import subprocess
import unittest

import harness
from harness import ADMIN, HEALTH, MEMORY_PINS, REFLECTION_V1, REFLECTION_V1ALPHA, ServerTestCase

BUF = os.environ.get("BUF_BIN") or os.path.join(harness.REPO, "tools", "node_modules", ".bin", "buf")

METHODS = ["UpsertPin", "GetPin", "ListPins", "DeletePin", "CleanupExpiredPins", "WatchPins"]


@unittest.skipUnless(os.access(BUF, os.X_OK), "buf not installed at %s (tools/deps.sh --test)" % BUF)
class BufCurlTest(ServerTestCase):
    SERVER_ENV = {"RATE_LIMIT_RPM": "0"}

    def buf(self, *args, data=None, reflect_protocol=None, check=True):
        url = "http://%s" % self.server.target
        cmd = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
        if reflect_protocol:
            cmd += ["--reflect-protocol", reflect_protocol]
        if data is not None:
            cmd += ["-d", json.dumps(data)]
        cmd += list(args[:-1]) + [url + args[-1]]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30,
                           env=dict(os.environ, BUF_CACHE_DIR=os.path.join(self.server.tmp,
                                                                           "bufcache")))
        if check:
            self.assertEqual(p.returncode, 0, "%s\nstdout: %s\nstderr: %s"
                             % (" ".join(cmd), p.stdout.decode(), p.stderr.decode()))
        return p

    def test_list_services(self):
        for proto in (None, "grpc-v1", "grpc-v1alpha"):
            with self.subTest(reflect_protocol=proto):
                p = self.buf("--list-services", "", reflect_protocol=proto)
                names = set(p.stdout.decode().split())
                expected = {MEMORY_PINS, ADMIN, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA}
                self.assertTrue(expected <= names, "missing %s in %r" % (expected - names, names))

    def test_list_methods(self):
        # with reflection the URL must be the base URL: every method of every service is listed
        p = self.buf("--list-methods", "")
        allm = set(p.stdout.decode().split())
        got = sorted(m for m in allm if m.startswith(MEMORY_PINS + "/"))
        self.assertEqual(got, sorted("%s/%s" % (MEMORY_PINS, m) for m in METHODS))
        self.assertIn("%s/GetStatus" % ADMIN, allm)
        self.assertIn("%s/Check" % HEALTH, allm)
        self.assertIn("%s/UpsertPin" % MEMORY_PINS, allm)

    def test_upsert_get_round_trip(self):
        value = {"note": "from buf curl", "n": 3, "tags": ["a", "b"], "nested": {"ok": True}}
        p = self.buf("/%s/UpsertPin" % MEMORY_PINS,
                     data={"tenantId": "bufcurl", "key": "buf-key", "value": value,
                           "ttlSeconds": 3600})
        up = json.loads(p.stdout.decode())
        self.assertIs(up["created"], True)
        pin = up["pin"]
        self.assertEqual(pin["tenantId"], "bufcurl")
        self.assertEqual(pin["key"], "buf-key")
        self.assertEqual(pin["value"], value)
        self.assertEqual(pin["source"], "api")
        self.assertEqual(pin["version"], "1")  # proto3 JSON: int64 as a string
        self.assertEqual(pin["ttlSeconds"], 3600)
        self.assertEqual(pin["createdAt"], pin["updatedAt"])
        self.assertRegex(pin["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertIn("expiresAt", pin)

        p = self.buf("/%s/GetPin" % MEMORY_PINS, data={"tenant_id": "bufcurl", "key": "buf-key"})
        got = json.loads(p.stdout.decode())
        self.assertEqual(got["pin"], pin)

        p = self.buf("/%s/UpsertPin" % MEMORY_PINS,
                     data={"tenantId": "bufcurl", "key": "buf-key", "value": {"v": 2}})
        up2 = json.loads(p.stdout.decode())
        self.assertEqual(up2["pin"]["version"], "2")
        self.assertNotIn("created", up2, "created=false is omitted in proto3 JSON")
        self.assertNotIn("expiresAt", up2["pin"])
        self.assertEqual(up2["pin"]["createdAt"], pin["createdAt"])

    def test_not_found_exit_code_and_error(self):
        p = self.buf("/%s/GetPin" % MEMORY_PINS, data={"tenantId": "bufcurl", "key": "nope key"},
                     check=False)
        self.assertEqual(p.returncode, 5 << 3, p.stderr.decode())
        err = json.loads(p.stderr.decode())
        self.assertEqual(err["code"], "not_found")
        self.assertIn("nope key", err["message"])

    def test_health_check(self):
        p = self.buf("/%s/Check" % HEALTH, data={"service": MEMORY_PINS})
        self.assertEqual(json.loads(p.stdout.decode()), {"status": "SERVING"})


@unittest.skipUnless(os.access(BUF, os.X_OK), "buf not installed at %s (tools/deps.sh --test)" % BUF)
class BufCurlErrorsTest(ServerTestCase):
    """What buf curl's Connect, gRPC-Web and gRPC clients read from pinsd's errors."""

    SCHEMA = (
        'syntax = "proto3";\n'
        "package memorypins.v1;\n"
        "service MemoryPins { rpc Nope(NopeRequest) returns (NopeResponse); }\n"
        "message NopeRequest {}\n"
        "message NopeResponse {}\n")

    def buf(self, protocol, h2, path, args=(), data="{}"):
        cmd = [BUF, "curl", "--protocol", protocol]
        if h2:
            cmd.append("--http2-prior-knowledge")
        cmd += list(args) + ["-d", data, "http://%s%s" % (self.server.target, path)]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60,
                           env=dict(os.environ, BUF_CACHE_DIR=os.path.join(self.server.tmp,
                                                                           "bufcache")))
        self.assertNotEqual(p.returncode, 0, " ".join(cmd))
        return json.loads(p.stderr.decode())

    def protocols(self):
        for protocol in ("connect", "grpcweb", "grpc"):
            for h2 in ((False, True) if protocol != "grpc" else (True,)):
                yield protocol, h2

    def test_unknown_method_is_unimplemented_with_the_servers_message(self):
        """The schema names a method pinsd does not have; the clients must read pinsd's own
        UNIMPLEMENTED (not one they make up from an HTTP 404)."""
        schema = os.path.join(self.server.tmp, "nope.proto")
        with open(schema, "w") as f:
            f.write(self.SCHEMA)
        for protocol, h2 in self.protocols():
            with self.subTest(protocol=protocol, http2=h2):
                err = self.buf(protocol, h2, "/%s/Nope" % MEMORY_PINS, ("--schema", schema))
                self.assertEqual(err, {"code": "unimplemented",
                                       "message": "unknown method /%s/Nope" % MEMORY_PINS})

    def test_request_too_large_to_decode_is_resource_exhausted(self):
        """330,000 numbers: 3.6 MB of protobuf, under MAX_REQUEST_BYTES, but far more once
        decoded: RESOURCE_EXHAUSTED from every protocol, and nothing stored."""
        data = os.path.join(self.server.tmp, "big.json")
        with open(data, "w") as f:
            json.dump({"tenantId": "bufbig", "key": "k", "value": {"a": [0] * 330000}}, f)
        for protocol, h2 in (("connect", False), ("grpcweb", True), ("grpc", True)):
            with self.subTest(protocol=protocol, http2=h2):
                err = self.buf(protocol, h2, "/%s/UpsertPin" % MEMORY_PINS, data="@" + data)
                self.assertEqual(err, {"code": "resource_exhausted",
                                       "message": "request message too large to decode"})
        err = self.buf("grpc", True, "/%s/GetPin" % MEMORY_PINS,
                       data=json.dumps({"tenantId": "bufbig", "key": "k"}))
        self.assertEqual(err["code"], "not_found")


if __name__ == "__main__":
    unittest.main()
