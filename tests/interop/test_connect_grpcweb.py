"""Connect and gRPC-Web through the bridge against a real pinsd: buf curl (reflection over the same
protocol) over HTTP/1.1 and HTTP/2, hand-made requests with curl, deadlines, server streams,
gRPC-Web trailer frames, CORS.

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_connect_grpcweb   (from tests/interop)
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness
import grpc
from harness import HEALTH, H2Client, ServerTestCase, message_class, mp, new_request, path_of
from test_rest import CURL, HTTP_VERSIONS, curl

BUF = os.environ.get("BUF_BIN") or os.path.join(harness.REPO, "tools", "node_modules", ".bin", "buf")


def envelopes(data):
    """[(flags, payload)] of a Connect / gRPC-Web body."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            raise ValueError("truncated envelope prefix in %r" % data)
        n = int.from_bytes(data[i + 1:i + 5], "big")
        if len(data) - i - 5 < n:
            raise ValueError("truncated envelope in %r" % data)
        out.append((data[i], data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


def envelope(payload, flags=0):
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def grpcweb_text_decode(text):
    """A grpc-web-text response body decoded as the grpc-web JavaScript client does: the body so
    far cut to a multiple of 4 characters, each 4-character group decoded on its own, so that
    chunks padded one by one decode as well as one padded string."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    if len(text) % 4:
        raise ValueError("grpc-web-text body of %d characters" % len(text))
    return b"".join(base64.b64decode(text[i:i + 4], validate=True)
                    for i in range(0, len(text), 4))


def grpcweb_trailers(payload):
    out = {}
    for line in payload.decode().split("\r\n"):
        if line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return out


@unittest.skipUnless(os.access(BUF, os.X_OK), "buf not installed at %s" % BUF)
class BufCurlBridgeTest(ServerTestCase):
    """buf curl with --protocol connect / grpcweb: reflection and calls through the bridge."""

    def buf(self, protocol, h2, path, data, check=True):
        cmd = [BUF, "curl", "--protocol", protocol]
        if h2:
            cmd.append("--http2-prior-knowledge")
        cmd += ["-d", json.dumps(data), "http://%s%s" % (self.server.target, path)]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60,
                           env=dict(os.environ,
                                    BUF_CACHE_DIR=os.path.join(self.server.tmp, "bufcache")))
        if check:
            self.assertEqual(p.returncode, 0, "%s\nstdout: %s\nstderr: %s"
                             % (" ".join(cmd), p.stdout.decode(), p.stderr.decode()))
        return p

    def test_round_trip_and_not_found(self):
        for protocol in ("connect", "grpcweb"):
            for h2 in (False, True):
                with self.subTest(protocol=protocol, http2=h2):
                    tenant = "buf-%s-%d" % (protocol, h2)
                    value = {"n": 1, "tags": ["a"], "nested": {"ok": True}}
                    p = self.buf(protocol, h2, mp("UpsertPin"),
                                 {"tenantId": tenant, "key": "k", "value": value,
                                  "ttlSeconds": 60})
                    up = json.loads(p.stdout.decode())
                    self.assertIs(up["created"], True)
                    self.assertEqual(up["pin"]["version"], "1")
                    self.assertEqual(up["pin"]["value"], value)
                    p = self.buf(protocol, h2, mp("GetPin"), {"tenant_id": tenant, "key": "k"})
                    self.assertEqual(json.loads(p.stdout.decode())["pin"], up["pin"])
                    p = self.buf(protocol, h2, mp("GetPin"), {"tenant_id": tenant, "key": "nope"},
                                 check=False)
                    self.assertNotEqual(p.returncode, 0)
                    err = json.loads(p.stderr.decode() or p.stdout.decode())
                    self.assertEqual(err["code"], "not_found")
                    self.assertEqual(err["message"], "Pin not found: nope")


@unittest.skipUnless(CURL, "curl not installed")
class ConnectCurlTest(ServerTestCase):

    def post(self, path, version, body, content_type, headers=(), timeout=10):
        return curl(self.server.port, "POST", path, version, body,
                    ("Content-Type: " + content_type,) + tuple(headers), timeout=timeout)

    def upsert(self, tenant, key):
        return self.client.call(mp("UpsertPin"), {"tenant_id": tenant, "key": key,
                                                  "value": {"a": 1}}).pin

    def test_connect_unary_json(self):
        pin = self.upsert("cj", "k")
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.post(mp("GetPin"), v, '{"tenantId":"cj","key":"k"}', "application/json",
                              ("Connect-Protocol-Version: 1",))
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("content-type"), "application/json")
                got = r.json()["pin"]
                self.assertEqual(got["version"], "1")  # canonical proto3 JSON
                self.assertEqual(got["tenantId"], "cj")
                self.assertEqual(got["id"], str(pin.id))
                self.assertNotIn("ttlSeconds", got)
                r = self.post(mp("GetPin"), v, '{"tenant_id":"cj","key":"missing"}',
                              "application/json")
                self.assertEqual(r.status, 404, r)
                self.assertEqual(r.json(), {"code": "not_found",
                                            "message": "Pin not found: missing"})
                r = self.post(mp("GetPin"), v, '{"key":', "application/json")
                self.assertEqual(r.status, 400, r)
                self.assertEqual(r.json()["code"], "invalid_argument")
                r = self.post(mp("UpsertPin"), v, '{"key":"../x","value":{}}', "application/json")
                self.assertEqual(r.status, 400, r)
                self.assertEqual(r.json()["code"], "invalid_argument")

    def test_connect_unary_proto(self):
        pin = self.upsert("cp", "k")
        req = new_request(mp("GetPin"), {"tenant_id": "cp", "key": "k"}).SerializeToString()
        out_cls = message_class("memorypins.v1.GetPinResponse")
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.post(mp("GetPin"), v, req, "application/proto")
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("content-type"), "application/proto")
                self.assertEqual(out_cls.FromString(r.body).pin, pin)

    def test_unsupported_content_type_on_a_method_path_is_415(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.post(mp("GetPin"), v, "x", "text/plain")
                self.assertEqual(r.status, 415, r)
                r = curl(self.server.port, "GET", mp("GetPin"), v)
                self.assertEqual(r.status, 405, r)
                self.assertEqual(r.header("allow"), "POST")

    def test_connect_timeout_ms_is_honoured(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v, what="unary, already expired"):
                r = self.post(mp("GetPin"), v, '{"key":"k"}', "application/json",
                              ("Connect-Timeout-Ms: 0",))
                self.assertEqual(r.status, 504, r)
                self.assertEqual(r.json()["code"], "deadline_exceeded")
            with self.subTest(v, what="malformed"):
                r = self.post(mp("GetPin"), v, '{"key":"k"}', "application/json",
                              ("Connect-Timeout-Ms: soon",))
                self.assertEqual(r.status, 400, r)
            with self.subTest(v, what="server stream"):
                t0 = time.monotonic()
                r = self.post(path_of(HEALTH, "Watch"), v, envelope(b"{}"),
                              "application/connect+json", ("Connect-Timeout-Ms: 300",))
                elapsed = time.monotonic() - t0
                self.assertEqual(r.status, 200, r)
                self.assertGreaterEqual(elapsed, 0.25)
                self.assertLess(elapsed, 5)
                env = envelopes(r.body)
                self.assertEqual(env[0], (0, b'{"status":"SERVING"}'))
                flags, end = env[-1]
                self.assertEqual(flags, 2)
                self.assertEqual(json.loads(end)["error"]["code"], "deadline_exceeded")

    def test_connect_server_stream_ends_with_the_end_stream_envelope(self):
        """Health Watch over Connect streaming: SERVING, then on SIGTERM NOT_SERVING and an
        end-stream envelope without error."""
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                s = self.fresh_server()
                req = new_request(path_of(HEALTH, "Watch"), {}).SerializeToString()
                tmp = tempfile.mkdtemp(prefix="pinsd-watch-", dir="/tmp")
                self.addCleanup(shutil.rmtree, tmp, True)
                with open(os.path.join(tmp, "req"), "wb") as f:
                    f.write(envelope(req))
                p = subprocess.Popen(
                    [CURL, "-sS", "-N", v, "--max-time", "15", "-o", os.path.join(tmp, "out"),
                     "-H", "Content-Type: application/connect+proto", "--data-binary",
                     "@" + os.path.join(tmp, "req"),
                     "http://127.0.0.1:%d%s" % (s.port, path_of(HEALTH, "Watch"))],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    if os.path.exists(os.path.join(tmp, "out")) and \
                            os.path.getsize(os.path.join(tmp, "out")) > 0:
                        break
                    time.sleep(0.05)
                s.signal(signal.SIGTERM)
                p.communicate(timeout=20)
                with open(os.path.join(tmp, "out"), "rb") as f:
                    env = envelopes(f.read())
                resp_cls = message_class("grpc.health.v1.HealthCheckResponse")
                statuses = [resp_cls.FromString(m).status for fl, m in env if fl == 0]
                self.assertEqual(statuses, [1, 2])  # SERVING, NOT_SERVING
                self.assertEqual(env[-1], (2, b"{}"))
                self.assertEqual(s.wait_exit(15), 0)

    def test_grpcweb_frames_and_trailer_frame(self):
        pin = self.upsert("gw", "k")
        req = new_request(mp("GetPin"), {"tenant_id": "gw", "key": "k"}).SerializeToString()
        out_cls = message_class("memorypins.v1.GetPinResponse")
        for v in HTTP_VERSIONS:
            for ct in ("application/grpc-web", "application/grpc-web+proto"):
                with self.subTest(v, content_type=ct):
                    r = self.post(mp("GetPin"), v, envelope(req), ct, ("X-Grpc-Web: 1",))
                    self.assertEqual(r.status, 200, r)
                    self.assertEqual(r.header("content-type"), "application/grpc-web+proto")
                    frames = envelopes(r.body)
                    self.assertEqual(len(frames), 2, frames)
                    self.assertEqual(frames[0][0], 0)
                    self.assertEqual(out_cls.FromString(frames[0][1]).pin, pin)
                    self.assertEqual(frames[1][0], 0x80)
                    self.assertEqual(grpcweb_trailers(frames[1][1]), {"grpc-status": "0"})
            with self.subTest(v, what="error"):
                bad = new_request(mp("GetPin"), {"tenant_id": "gw", "key": "caf\u00e9 50%"})
                r = self.post(mp("GetPin"), v, envelope(bad.SerializeToString()),
                              "application/grpc-web+proto")
                self.assertEqual(r.status, 200, r)
                frames = envelopes(r.body)
                self.assertEqual(len(frames), 1, frames)
                self.assertEqual(frames[0][0], 0x80)
                t = grpcweb_trailers(frames[0][1])
                self.assertEqual(t["grpc-status"], "5")
                self.assertEqual(t["grpc-message"], "Pin not found: caf%C3%A9 50%25")
            with self.subTest(v, what="two messages for a unary method"):
                r = self.post(mp("GetPin"), v, envelope(req) + envelope(req),
                              "application/grpc-web+proto")
                t = grpcweb_trailers(envelopes(r.body)[-1][1])
                self.assertEqual(t["grpc-status"], "3")
            with self.subTest(v, what="grpc-timeout"):
                r = self.post(path_of(HEALTH, "Watch"), v, envelope(b""),
                              "application/grpc-web+proto", ("grpc-timeout: 200m",))
                frames = envelopes(r.body)
                self.assertEqual(frames[-1][0], 0x80)
                self.assertEqual(grpcweb_trailers(frames[-1][1])["grpc-status"], "4")


    def test_grpcweb_text_unary_over_http1_and_http2(self):
        """application/grpc-web-text, as the grpc-web browser client sends it by default."""
        pin = self.upsert("gwt", "k")
        req = new_request(mp("GetPin"), {"tenant_id": "gwt", "key": "k"}).SerializeToString()
        out_cls = message_class("memorypins.v1.GetPinResponse")
        for v in HTTP_VERSIONS:
            for ct in ("application/grpc-web-text", "application/grpc-web-text+proto"):
                with self.subTest(v, content_type=ct):
                    r = self.post(mp("GetPin"), v, base64.b64encode(envelope(req)), ct,
                                  ("X-Grpc-Web: 1", "Accept: application/grpc-web-text"))
                    self.assertEqual(r.status, 200, r)
                    self.assertTrue(r.header("content-type").startswith(
                        "application/grpc-web-text"), r)
                    frames = envelopes(grpcweb_text_decode(r.body))
                    self.assertEqual(len(frames), 2, frames)
                    self.assertEqual(frames[0][0], 0)
                    self.assertEqual(out_cls.FromString(frames[0][1]).pin, pin)
                    self.assertEqual(frames[1][0], 0x80)
                    self.assertEqual(grpcweb_trailers(frames[1][1]), {"grpc-status": "0"})
                    # Each frame is its own padded base64 chunk.
                    self.assertEqual(r.body, base64.b64encode(envelope(frames[0][1])) +
                                     base64.b64encode(envelope(frames[1][1], 0x80)))
            with self.subTest(v, what="error before any message"):
                bad = new_request(mp("GetPin"), {"tenant_id": "gwt", "key": "none"})
                r = self.post(mp("GetPin"), v, base64.b64encode(envelope(bad.SerializeToString())),
                              "application/grpc-web-text")
                self.assertEqual(r.status, 200, r)
                frames = envelopes(grpcweb_text_decode(r.body))
                self.assertEqual([f for f, _ in frames], [0x80])
                t = grpcweb_trailers(frames[0][1])
                self.assertEqual((t["grpc-status"], t["grpc-message"]), ("5", "Pin not found: none"))
            with self.subTest(v, what="a request in two padded chunks"):
                # Two base64 strings, each padded, one after the other (a client that encodes
                # as it writes): the envelope prefix alone, then the message.
                body = base64.b64encode(envelope(req)[:5]) + base64.b64encode(req)
                r = self.post(mp("GetPin"), v, body, "application/grpc-web-text")
                frames = envelopes(grpcweb_text_decode(r.body))
                self.assertEqual(out_cls.FromString(frames[0][1]).pin, pin)
                self.assertEqual(grpcweb_trailers(frames[1][1])["grpc-status"], "0")
            for what, body in (("not base64", b"AAAA*AAA"), ("cut inside a quantum", b"AAAAA"),
                               ("padding inside a quantum", b"A=AA")):
                with self.subTest(v, what=what):
                    r = self.post(mp("GetPin"), v, body, "application/grpc-web-text")
                    self.assertEqual(r.status, 200, r)
                    frames = envelopes(grpcweb_text_decode(r.body))
                    self.assertEqual(frames[-1][0], 0x80)
                    self.assertEqual(grpcweb_trailers(frames[-1][1])["grpc-status"], "3")

    def test_grpcweb_text_server_stream(self):
        """Health/Watch over grpc-web-text: the SERVING message arrives as one padded chunk,
        then the deadline's trailer frame as another."""
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.post(path_of(HEALTH, "Watch"), v, base64.b64encode(envelope(b"")),
                              "application/grpc-web-text", ("grpc-timeout: 300m",))
                self.assertEqual(r.status, 200, r)
                frames = envelopes(grpcweb_text_decode(r.body))
                resp_cls = message_class("grpc.health.v1.HealthCheckResponse")
                self.assertEqual([f for f, _ in frames], [0, 0x80])
                self.assertEqual(resp_cls.FromString(frames[0][1]).status, 1)  # SERVING
                self.assertEqual(grpcweb_trailers(frames[1][1])["grpc-status"], "4")
                self.assertEqual(r.body, base64.b64encode(envelope(frames[0][1])) +
                                 base64.b64encode(envelope(frames[1][1], 0x80)))

    def test_grpcweb_text_request_split_across_http2_data_frames(self):
        """The base64 body in DATA frames of 1 to 7 bytes, cut anywhere inside quanta."""
        pin = self.upsert("gwt2", "k")
        req = new_request(mp("GetPin"), {"tenant_id": "gwt2", "key": "k"}).SerializeToString()
        text = base64.b64encode(envelope(req))
        with H2Client(self.server.port) as h2c:
            headers = h2c.grpc_headers(mp("GetPin"), content_type="application/grpc-web-text",
                                       te=False)
            sid = h2c.start(headers, end_stream=False)
            i, n = 0, 1
            while i < len(text):
                h2c.send_body(sid, text[i:i + n], end_stream=False)
                i += n
                n = n % 7 + 1
            h2c.send_body(sid, b"", end_stream=True)
            st = h2c.wait(sid)
        self.assertEqual(st.status, 200, st)
        frames = envelopes(grpcweb_text_decode(st.data))
        out_cls = message_class("memorypins.v1.GetPinResponse")
        self.assertEqual(out_cls.FromString(frames[0][1]).pin, pin)
        self.assertEqual(grpcweb_trailers(frames[1][1])["grpc-status"], "0")

    # ---- errors in each protocol's shape

    def test_connect_errors_have_the_connect_shape(self):
        for v in HTTP_VERSIONS:
            for ct, body in (("application/json", "{}"), ("application/proto", b"")):
                with self.subTest(v, what="unknown method", content_type=ct):
                    r = self.post("/memorypins.v1.MemoryPins/NoSuchMethod", v, body, ct,
                                  ("Connect-Protocol-Version: 1",))
                    self.assertEqual(r.status, 404, r)
                    self.assertEqual(r.header("content-type"), "application/json")
                    self.assertEqual(r.json(), {
                        "code": "unimplemented",
                        "message": "unknown method /memorypins.v1.MemoryPins/NoSuchMethod"})
            with self.subTest(v, what="unknown service"):
                r = self.post("/no.such.Service/Get", v, "{}", "application/json")
                self.assertEqual(r.status, 404, r)
                self.assertEqual(r.json()["code"], "unimplemented")
            with self.subTest(v, what="not POST"):
                r = curl(self.server.port, "GET", mp("GetPin"), v,
                         headers=("Connect-Protocol-Version: 1",))
                self.assertEqual(r.status, 405, r)
                self.assertEqual(r.header("allow"), "POST")
                self.assertEqual(r.json()["code"], "unimplemented")
                self.assertIn("message", r.json())
            with self.subTest(v, what="unsupported content type"):
                r = self.post(mp("GetPin"), v, "x", "text/plain")
                self.assertEqual(r.status, 415, r)
                self.assertEqual(r.json()["code"], "invalid_argument")
                self.assertIn("text/plain", r.json()["message"])
            with self.subTest(v, what="malformed JSON"):
                r = self.post(mp("GetPin"), v, "{", "application/json")
                self.assertEqual(r.status, 400, r)
                self.assertEqual(r.json()["code"], "invalid_argument")
            with self.subTest(v, what="handler error"):
                r = self.post(mp("GetPin"), v, '{"key":"../x"}', "application/json")
                self.assertEqual(r.status, 400, r)
                self.assertEqual(set(r.json()), {"code", "message"})
                self.assertEqual(r.json()["code"], "invalid_argument")
            with self.subTest(v, what="REST paths keep the REST 404"):
                r = self.post("/api/v1/nothing", v, "{}", "application/json")
                self.assertEqual(r.status, 404, r)
                self.assertEqual(r.json()["code"], 5)

    def test_unknown_method_in_the_streaming_protocols(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v, protocol="connect streaming"):
                r = self.post("/memorypins.v1.MemoryPins/NoSuchStream", v, envelope(b"{}"),
                              "application/connect+json")
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("content-type"), "application/connect+json")
                env = envelopes(r.body)
                self.assertEqual([f for f, _ in env], [2])
                self.assertEqual(json.loads(env[0][1])["error"]["code"], "unimplemented")
            for ct in ("application/grpc-web+proto", "application/grpc-web-text"):
                with self.subTest(v, protocol=ct):
                    body = envelope(b"")
                    if "text" in ct:
                        body = base64.b64encode(body)
                    r = self.post("/memorypins.v1.MemoryPins/NoSuchMethod", v, body, ct)
                    self.assertEqual(r.status, 200, r)
                    data = grpcweb_text_decode(r.body) if "text" in ct else r.body
                    frames = envelopes(data)
                    self.assertEqual([f for f, _ in frames], [0x80])
                    self.assertEqual(grpcweb_trailers(frames[0][1])["grpc-status"], "12")


class GrpcJsonTest(ServerTestCase):
    """application/grpc+json: gRPC framing and HTTP/2 trailers, proto3 JSON messages, through a
    raw HTTP/2 client (python3-h2)."""

    def call(self, h2c, path, body, timeout=None):
        sid = h2c.start(h2c.grpc_headers(path, content_type="application/grpc+json",
                                         timeout=timeout), body)
        return h2c.wait(sid)

    def test_unary_found_and_not_found(self):
        pin = self.client.call(mp("UpsertPin"), {"tenant_id": "gj", "key": "k",
                                                 "value": {"a": [1, "x"]}}).pin
        with H2Client(self.server.port) as h2c:
            st = self.call(h2c, mp("GetPin"), envelope(b'{"tenantId":"gj","key":"k"}'))
            self.assertEqual(st.status, 200, st)
            self.assertEqual(st.header("content-type", "headers"), "application/grpc+json")
            self.assertEqual(st.grpc_status, 0, st)
            msgs = st.messages()
            self.assertEqual(len(msgs), 1)
            got = json.loads(msgs[0])["pin"]
            self.assertEqual(got["version"], "1")
            self.assertEqual(got["id"], str(pin.id))
            self.assertEqual(got["value"], {"a": [1, "x"]})
            st = self.call(h2c, mp("GetPin"), envelope(b'{"tenantId":"gj","key":"none"}'))
            self.assertEqual(st.status, 200, st)
            self.assertEqual((st.grpc_status, st.grpc_message), (5, "Pin not found: none"))
            self.assertEqual(st.messages(), [])
            st = self.call(h2c, mp("GetPin"), envelope(b'{"key":'))
            self.assertEqual(st.grpc_status, 3, st)
            st = self.call(h2c, "/memorypins.v1.MemoryPins/Nope", envelope(b"{}"))
            self.assertEqual(st.grpc_status, 12, st)

    def test_server_stream_ends_with_trailers(self):
        with H2Client(self.server.port) as h2c:
            st = self.call(h2c, path_of(HEALTH, "Watch"), envelope(b"{}"), timeout="300m")
            self.assertEqual(st.status, 200, st)
            self.assertEqual([json.loads(m) for m in st.messages()], [{"status": "SERVING"}])
            self.assertIsNotNone(st.trailers, st)
            self.assertEqual(st.grpc_status, 4, st)


@unittest.skipUnless(CURL, "curl not installed")
class DecodeBudgetTest(ServerTestCase):
    """A request within MAX_REQUEST_BYTES whose decoded form is too large for the call's memory:
    RESOURCE_EXHAUSTED in every protocol (REST 413, in test_rest), never an internal error or
    the server out of memory, and nothing is stored."""

    BIG = 500000   # "0," 500,000 times: a 1 MB JSON body
    BIG_PB = 330000  # as protobuf: 3.6 MB, under the 4 MiB message limit

    def post(self, path, version, body, content_type):
        return curl(self.server.port, "POST", path, version, body,
                    ("Content-Type: " + content_type,), timeout=30)

    def assertNotStored(self, key):
        with self.assertRaises(grpc.RpcError) as cm:
            self.client.call(mp("GetPin"), {"tenant_id": "budget", "key": key})
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_connect_and_grpcweb_json(self):
        body = '{"tenantId":"budget","key":"json","value":{"a":[%s]}}' % ",".join(["0"] * self.BIG)
        for v in HTTP_VERSIONS:
            with self.subTest(v, protocol="connect"):
                r = self.post(mp("UpsertPin"), v, body, "application/json")
                self.assertEqual(r.status, 429, r)  # Connect's status for resource_exhausted
                self.assertEqual(r.json(), {"code": "resource_exhausted",
                                            "message": "request message too large to decode"})
            with self.subTest(v, protocol="grpc-web+json"):
                r = self.post(mp("UpsertPin"), v, envelope(body.encode()),
                              "application/grpc-web+json")
                self.assertEqual(r.status, 200, r)
                frames = envelopes(r.body)
                self.assertEqual([f for f, _ in frames], [0x80])
                t = grpcweb_trailers(frames[0][1])
                self.assertEqual(t["grpc-status"], "8")
                self.assertEqual(t["grpc-message"], "request message too large to decode")
        self.assertNotStored("json")

    def test_protobuf_over_grpc_connect_and_grpcweb(self):
        req = new_request(mp("UpsertPin"), {"tenant_id": "budget", "key": "pb",
                                            "value": {"a": [0] * self.BIG_PB}})
        pb = req.SerializeToString()
        self.assertLess(len(pb), 4 << 20)
        with self.subTest(protocol="grpc"):
            with self.assertRaises(grpc.RpcError) as cm:
                self.client.call(mp("UpsertPin"), req, timeout=30)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(cm.exception.details(), "request message too large to decode")
        for v in HTTP_VERSIONS:
            with self.subTest(v, protocol="connect proto"):
                r = self.post(mp("UpsertPin"), v, pb, "application/proto")
                self.assertEqual(r.status, 429, r)
                self.assertEqual(r.json()["code"], "resource_exhausted")
            with self.subTest(v, protocol="grpc-web"):
                r = self.post(mp("UpsertPin"), v, envelope(pb), "application/grpc-web+proto")
                t = grpcweb_trailers(envelopes(r.body)[-1][1])
                self.assertEqual(t["grpc-status"], "8")
        self.assertNotStored("pb")

    def test_a_smaller_message_of_the_same_shape_is_served(self):
        self.client.call(mp("UpsertPin"), {"tenant_id": "budget", "key": "ok",
                                           "value": {"a": [0] * 100000}}, timeout=30)
        got = self.client.call(mp("GetPin"), {"tenant_id": "budget", "key": "ok"}).pin
        self.assertEqual(len(got.value.fields["a"].list_value.values), 100000)


@unittest.skipUnless(CURL, "curl not installed")
class CorsTest(ServerTestCase):
    SERVER_ENV = {"CORS_ALLOWED_ORIGINS": "https://app.example, https://other.example"}

    def test_preflight_allowed_and_disallowed_origin(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v, origin="allowed"):
                r = curl(self.server.port, "OPTIONS", mp("GetPin"), v, headers=(
                    "Origin: https://app.example", "Access-Control-Request-Method: POST",
                    "Access-Control-Request-Headers: content-type, x-grpc-web"))
                self.assertEqual(r.status, 204, r)
                self.assertEqual(r.header("access-control-allow-origin"), "https://app.example")
                self.assertEqual(r.header("access-control-allow-methods"),
                                 "GET, POST, DELETE, OPTIONS")
                allowed = [h.strip() for h in r.header("access-control-allow-headers").split(",")]
                for h in ("content-type", "authorization", "x-machine-token", "x-grpc-web",
                          "connect-protocol-version", "connect-timeout-ms", "grpc-timeout"):
                    self.assertIn(h, allowed)
                self.assertTrue(int(r.header("access-control-max-age")) > 0)
                self.assertEqual(r.header("vary"), "Origin")
            with self.subTest(v, origin="disallowed"):
                r = curl(self.server.port, "OPTIONS", "/api/v1/memory/pins", v, headers=(
                    "Origin: https://evil.example", "Access-Control-Request-Method: POST"))
                self.assertEqual(r.status, 403, r)
                self.assertIsNone(r.header("access-control-allow-origin"))
            with self.subTest(v, what="actual response"):
                r = curl(self.server.port, "GET", "/api/v1/memory/pins/none", v,
                         headers=("Origin: https://other.example",))
                self.assertEqual(r.status, 404, r)
                self.assertEqual(r.header("access-control-allow-origin"), "https://other.example")
                exposed = r.header("access-control-expose-headers")
                for h in ("grpc-status", "grpc-message", "x-request-id", "retry-after"):
                    self.assertIn(h, exposed)
                r = curl(self.server.port, "GET", "/api/v1/memory/pins/none", v,
                         headers=("Origin: https://evil.example",))
                self.assertIsNone(r.header("access-control-allow-origin"))

    def test_no_cors_headers_without_configuration(self):
        s = self.fresh_server(env={"CORS_ALLOWED_ORIGINS": ""})
        r = curl(s.port, "OPTIONS", "/api/v1/memory/pins", "--http1.1", headers=(
            "Origin: https://app.example", "Access-Control-Request-Method: POST"))
        self.assertEqual(r.status, 403, r)
        r = curl(s.port, "GET", "/health", "--http1.1", headers=("Origin: https://app.example",))
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("access-control-allow-origin"))
        self.assertIsNone(r.header("vary"))


if __name__ == "__main__":
    unittest.main()
