"""The REST/JSON bridge (API.md sections 3, 4, 5) against a real pinsd, with curl over HTTP/1.1
(--http1.1) and HTTP/2 (--http2-prior-knowledge), plus the runbook's curl commands verbatim.

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_rest   (from tests/interop)
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import harness
from harness import ServerTestCase, mp

CURL = shutil.which("curl")
HTTP_VERSIONS = ("--http1.1", "--http2-prior-knowledge")
TS_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
PIN_FIELDS = ["id", "tenant_id", "key", "value", "source", "created_at", "updated_at",
              "ttl_seconds", "expires_at", "version", "revision"]


class CurlResult:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # [(lower-case name, value)] of the final response
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "CurlResult(%r, %r, %r)" % (self.status, self.headers, self.body[:400])


def curl(port, method, path, version, body=None, headers=(), timeout=10):
    """One request with the curl binary; returns a CurlResult of the final response."""
    tmp = tempfile.mkdtemp(prefix="pinsd-curl-", dir="/tmp")
    try:
        hdr, out = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        cmd = [CURL, "-sS", "--path-as-is", version, "-X", method, "-D", hdr, "-o", out,
               "--max-time", str(timeout)]
        for h in headers:
            cmd += ["-H", h]
        if body is not None:
            bf = os.path.join(tmp, "req")
            with open(bf, "wb") as f:
                f.write(body if isinstance(body, bytes) else body.encode("utf-8"))
            cmd += ["--data-binary", "@" + bf]
        cmd.append("http://127.0.0.1:%d%s" % (port, path))
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout + 10)
        if p.returncode != 0:
            raise AssertionError("curl failed (%d): %s\n%s" % (p.returncode, " ".join(cmd),
                                                                p.stderr.decode()))
        with open(hdr, "rb") as f:
            blocks = [b for b in f.read().decode("latin-1").split("\r\n\r\n") if b.strip()]
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split()[1])
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        with open(out, "rb") as f:
            data = f.read()
        return CurlResult(status, headers, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ts_micros(ts):
    """A protobuf Timestamp as the REST string."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts.seconds)) + \
        ".%06dZ" % (ts.nanos // 1000)


@unittest.skipUnless(CURL, "curl not installed")
class RestTest(ServerTestCase):
    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}

    def req(self, method, path, version, body=None, headers=(), **kw):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = ("Content-Type: application/json",) + tuple(headers)
        return curl(self.server.port, method, path, version, body, headers, **kw)

    def upsert(self, version, tenant, key, value=None, **fields):
        body = dict(tenant_id=tenant, key=key, value=value if value is not None else {"v": 1})
        body.update(fields)
        r = self.req("POST", "/api/v1/memory/pins", version, body)
        self.assertEqual(r.status, 201, r)
        return r.json()

    def assertPinShape(self, pin):
        self.assertEqual(list(pin.keys()), PIN_FIELDS)
        self.assertIsInstance(pin["id"], int)
        self.assertIsInstance(pin["version"], int)
        self.assertIsInstance(pin["revision"], int)
        self.assertGreater(pin["revision"], 0)
        self.assertRegex(pin["created_at"], TS_RE)
        self.assertRegex(pin["updated_at"], TS_RE)

    def assertError(self, r, status, code):
        self.assertEqual(r.status, status, r)
        self.assertTrue(r.header("content-type").startswith("application/json"), r)
        body = r.json()
        self.assertEqual(body["code"], code, body)
        self.assertIn("message", body)
        return body

    # ---- success paths

    def test_upsert_is_201_on_create_and_on_update(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                key = "up-%s" % v[2:8]
                pin = self.upsert(v, "rest-up", key, {"a": [1, 2], "b": {"c": None}},
                                  source="tests")
                self.assertPinShape(pin)
                self.assertEqual(pin["version"], 1)
                self.assertEqual(pin["value"], {"a": [1, 2], "b": {"c": None}})
                self.assertEqual(pin["source"], "tests")
                self.assertIsNone(pin["ttl_seconds"])
                self.assertIsNone(pin["expires_at"])
                again = self.upsert(v, "rest-up", key, {"a": 2}, ttl_seconds=600)
                self.assertEqual(again["version"], 2)
                self.assertEqual(again["id"], pin["id"])
                self.assertEqual(again["created_at"], pin["created_at"])
                self.assertEqual(again["ttl_seconds"], 600)
                self.assertRegex(again["expires_at"], TS_RE)

    def test_upsert_accepts_camel_case_and_ignores_unknown_fields(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.req("POST", "/api/v1/memory/pins", v,
                             {"tenantId": "rest-camel", "key": "c-" + v[2:8], "value": {},
                              "ttlSeconds": 60, "whatever": [1]})
                self.assertEqual(r.status, 201, r)
                pin = r.json()
                self.assertEqual(pin["tenant_id"], "rest-camel")
                self.assertEqual(pin["ttl_seconds"], 60)

    def test_get_returns_the_pin_with_every_field(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                up = self.upsert(v, "rest-get", "g-" + v[2:8], {"x": 42, "s": "caf\u00e9"})
                r = self.req("GET", "/api/v1/memory/pins/g-%s?tenant_id=rest-get" % v[2:8], v)
                self.assertEqual(r.status, 200, r)
                self.assertTrue(r.header("x-request-id"))
                self.assertEqual(r.header("content-type"), "application/json")
                pin = r.json()
                self.assertPinShape(pin)
                self.assertEqual(pin, up)
                self.assertIn(b'"ttl_seconds":null', r.body)
                self.assertIn(b'"expires_at":null', r.body)
                self.assertRegex(r.body.decode(), r'"version":1[,}]')

    def test_get_defaults_to_tenant_global_and_decodes_the_key(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                self.upsert(v, "", "a b:c\u00e9")
                r = self.req("GET", "/api/v1/memory/pins/a%20b%3Ac%C3%A9", v)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["tenant_id"], "global")
                self.assertEqual(r.json()["key"], "a b:c\u00e9")

    def test_list_shape_order_and_pagination(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                tenant = "rest-list-" + v[2:8]
                keys = ["p:%d" % i for i in range(5)]
                for k in keys:
                    self.upsert(v, tenant, k)
                self.upsert(v, tenant, "other")
                r = self.req("GET", "/api/v1/memory/pins?tenant_id=%s&prefix=p%%3A&limit=2" % tenant,
                             v)
                self.assertEqual(r.status, 200, r)
                page = r.json()
                self.assertEqual(list(page.keys()),
                                 ["pins", "total", "limit", "offset", "next_page_token",
                                  "revision"])
                self.assertEqual(page["total"], 5)
                self.assertEqual(page["limit"], 2)
                self.assertEqual(page["offset"], 0)
                seen = [p["key"] for p in page["pins"]]
                for p in page["pins"]:
                    self.assertPinShape(p)
                token = page["next_page_token"]
                while token:
                    r = self.req("GET", "/api/v1/memory/pins?tenant_id=%s&prefix=p:&limit=2"
                                 "&page_token=%s" % (tenant, token), v)
                    self.assertEqual(r.status, 200, r)
                    page = r.json()
                    seen += [p["key"] for p in page["pins"]]
                    token = page["next_page_token"]
                self.assertEqual(seen, list(reversed(keys)))  # created_at DESC
                r = self.req("GET", "/api/v1/memory/pins?tenant_id=%s&offset=4&limit=100" % tenant,
                             v)
                self.assertEqual(r.json()["offset"], 4)
                self.assertEqual(len(r.json()["pins"]), 2)

    def test_delete_is_200_then_404(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                self.upsert(v, "rest-del", "d")
                r = self.req("DELETE", "/api/v1/memory/pins/d?tenant_id=rest-del", v)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json(), {"deleted": True, "key": "d", "tenant_id": "rest-del"})
                r = self.req("GET", "/api/v1/memory/pins/d?tenant_id=rest-del", v)
                self.assertError(r, 404, 5)

    def test_cleanup_is_200_with_count_tenant_and_timestamp(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                tenant = "rest-clean-" + v[2:8]
                self.upsert(v, tenant, "short", ttl_seconds=1)
                self.upsert(v, tenant, "long")
                time.sleep(1.2)
                r = self.req("POST", "/api/v1/memory/pins/cleanup?tenant_id=%s" % tenant, v)
                self.assertEqual(r.status, 200, r)
                body = r.json()
                self.assertEqual(list(body.keys()), ["deleted_count", "tenant_id", "timestamp"])
                self.assertEqual(body["deleted_count"], 1)
                self.assertEqual(body["tenant_id"], tenant)
                self.assertRegex(body["timestamp"], TS_RE)
                r = self.req("POST", "/api/v1/memory/pins/cleanup", v)
                self.assertEqual(r.status, 200, r)
                self.assertIsNone(r.json()["tenant_id"])

    def test_openapi_json_is_served(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.req("GET", "/openapi.json", v)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.header("content-type"), "application/json")
                doc = r.json()
                self.assertEqual(doc["openapi"], "3.1.0")
                self.assertIn("post", doc["paths"]["/api/v1/memory/pins"])
                self.assertIn("delete", doc["paths"]["/api/v1/memory/pins/{key}"])

    def test_watch_streams_server_sent_events(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                tenant = "rest-watch-" + v[2:8]
                # curl's --max-time ends the stream (exit 28): read its raw output.
                p = subprocess.Popen([CURL, "-sS", "-N", v, "--max-time", "3", "-i",
                                      "http://127.0.0.1:%d/api/v1/memory/watch?tenant_id=%s"
                                      % (self.server.port, tenant)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                time.sleep(0.5)
                self.upsert(v, tenant, "w1", {"n": 1})
                r = self.req("DELETE", "/api/v1/memory/pins/w1?tenant_id=%s" % tenant, v)
                self.assertEqual(r.status, 200)
                stdout, _ = p.communicate(timeout=10)
                text = stdout.decode()
                self.assertRegex(text.split("\r\n")[0], r"^HTTP/\S+ 200")
                self.assertIn("content-type: text/event-stream", text.lower())
                events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)
                self.assertEqual([e for e, _ in events], ["put", "delete"], text)
                put = json.loads(events[0][1])
                self.assertEqual(put["type"], "EVENT_TYPE_PUT")
                self.assertPinShape(put["pin"])
                self.assertEqual(put["pin"]["value"], {"n": 1})

    # ---- errors

    def test_missing_pin_is_404_with_the_m7_detail(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.req("GET", "/api/v1/memory/pins/nope-404?tenant_id=x", v)
                body = self.assertError(r, 404, 5)
                self.assertEqual(body["detail"], "Pin not found: nope-404")

    def test_validation_errors_are_422_with_a_detail_list(self):
        cases = [
            ({"tenant_id": "t", "key": "../x", "value": {}}, ["body", "key"]),
            ({"tenant_id": "t", "key": "", "value": {}}, ["body", "key"]),
            ({"tenant_id": "t", "key": "k", "value": {}, "ttl_seconds": -1},
             ["body", "ttl_seconds"]),
            ({"tenant_id": "t", "key": "k", "value": {}, "ttl_seconds": 31536001},
             ["body", "ttl_seconds"]),
            ({"tenant_id": "t", "key": "k"}, ["body", "value"]),
        ]
        for v in HTTP_VERSIONS:
            for body, loc in cases:
                with self.subTest(v, body=body):
                    r = self.req("POST", "/api/v1/memory/pins", v, body)
                    err = self.assertError(r, 422, 3)
                    self.assertEqual(len(err["detail"]), 1)
                    d = err["detail"][0]
                    self.assertEqual(d["loc"], loc)
                    self.assertTrue(d["msg"])
                    self.assertTrue(d["type"])
            with self.subTest(v, what="control character in the path"):
                r = self.req("GET", "/api/v1/memory/pins/a%01b", v)
                err = self.assertError(r, 422, 3)
                self.assertEqual(err["detail"][0]["loc"], ["path", "key"])
            with self.subTest(v, what="limit=abc"):
                r = self.req("GET", "/api/v1/memory/pins?limit=abc", v)
                err = self.assertError(r, 422, 3)
                self.assertEqual(err["detail"][0]["loc"], ["query", "limit"])
                self.assertEqual(err["detail"][0]["type"], "type_error.integer")
            with self.subTest(v, what="limit out of range"):
                r = self.req("GET", "/api/v1/memory/pins?limit=1001", v)
                err = self.assertError(r, 422, 3)
                self.assertEqual(err["detail"][0]["loc"], ["query", "limit"])
            with self.subTest(v, what="missing body"):
                r = self.req("POST", "/api/v1/memory/pins", v, "",
                             headers=("Content-Type: application/json",))
                err = self.assertError(r, 422, 3)
                self.assertEqual(err["detail"][0]["loc"], ["body"])
                self.assertEqual(err["detail"][0]["msg"], "field required")

    def test_malformed_json_and_wrong_types_are_400(self):
        for v in HTTP_VERSIONS:
            for body in ('{"key":', '{"key": "k", "value": {}} trailing', '[1, 2]',
                         '{"key": 5, "value": {}}', '{"key": "k", "value": [}'):
                with self.subTest(v, body=body):
                    r = self.req("POST", "/api/v1/memory/pins", v, body,
                                 headers=("Content-Type: application/json",))
                    err = self.assertError(r, 400, 3)
                    self.assertIsInstance(err["detail"], str)
            with self.subTest(v, what="bad percent-encoding"):
                r = self.req("GET", "/api/v1/memory/pins/a%zzb", v)
                self.assertError(r, 400, 3)

    def test_value_that_is_not_an_object_is_422(self):
        """API.md section 4: an array, a scalar or null as the pin value is a validation error
        (M7's pydantic answered 422 "value is not a valid dict"), and nothing is stored."""
        for v in HTTP_VERSIONS:
            for value in ([], [1, {"a": 2}], "text", 5, 1.5, True, None):
                with self.subTest(v, value=value):
                    key = "not-object-%s-%s" % (v[2:8], type(value).__name__)
                    r = self.req("POST", "/api/v1/memory/pins", v,
                                 {"tenant_id": "rest-422v", "key": key, "value": value})
                    err = self.assertError(r, 422, 3)
                    self.assertEqual(len(err["detail"]), 1, err)
                    d = err["detail"][0]
                    self.assertEqual(d["loc"], ["body", "value"])
                    self.assertIn("object", d["msg"])
                    if value is not None:
                        self.assertEqual(d["type"], "type_error.dict")
                    r = self.req("GET", "/api/v1/memory/pins/%s?tenant_id=rest-422v" % key, v)
                    self.assertEqual(r.status, 404, r)

    def test_limit_zero_is_422_and_absent_limit_is_100(self):
        """API.md section 4: limit is 1..1000; REST tells an explicit limit=0 from an absent one."""
        for v in HTTP_VERSIONS:
            for path in ("/api/v1/memory/pins?limit=0", "/api/v1/memory/pins?tenant_id=x&limit=0",
                         "/api/v1/memory/pins?limit=0&offset=1",
                         "/api/v1/memory/audit?limit=0", "/api/v1/rbac/audit?limit=0"):
                with self.subTest(v, path=path):
                    r = self.req("GET", path, v)
                    err = self.assertError(r, 422, 3)
                    self.assertEqual(err["detail"][0]["loc"], ["query", "limit"])
                    self.assertEqual(err["detail"][0]["msg"], "limit: must be between 1 and 1000")
            with self.subTest(v, what="absent and in range"):
                r = self.req("GET", "/api/v1/memory/pins?tenant_id=rest-limit", v)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["limit"], 100)
                r = self.req("GET", "/api/v1/memory/pins?tenant_id=rest-limit&limit=1", v)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["limit"], 1)

    def test_wrong_verb_is_405_with_allow(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.req("PUT", "/api/v1/memory/pins/k", v, "{}")
                self.assertEqual(r.status, 405, r)
                self.assertEqual(r.header("allow"), "GET, DELETE")
                r = self.req("DELETE", "/api/v1/memory/pins", v)
                self.assertEqual(r.status, 405, r)
                self.assertEqual(r.header("allow"), "POST, GET")

    def test_unknown_path_is_404_json(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = self.req("GET", "/api/v1/memory/nothing-here", v)
                self.assertError(r, 404, 5)

    def test_version_conflicts_are_409(self):
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                tenant = "rest-409-" + v[2:8]
                self.upsert(v, tenant, "k")
                r = self.req("POST", "/api/v1/memory/pins", v,
                             {"tenant_id": tenant, "key": "k", "value": {}, "expected_version": 0})
                self.assertError(r, 409, 6)
                r = self.req("POST", "/api/v1/memory/pins", v,
                             {"tenant_id": tenant, "key": "k", "value": {}, "expected_version": 7})
                self.assertError(r, 409, 10)
                r = self.req("DELETE", "/api/v1/memory/pins/k?tenant_id=%s&expected_version=3"
                             % tenant, v)
                self.assertError(r, 409, 10)
                ok = self.req("POST", "/api/v1/memory/pins", v,
                              {"tenant_id": tenant, "key": "k", "value": {}, "expected_version": 1})
                self.assertEqual(ok.status, 201, ok)
                self.assertEqual(ok.json()["version"], 2)

    def test_metrics_count_bridge_responses_by_route_template(self):
        v = HTTP_VERSIONS[0]
        self.req("GET", "/api/v1/memory/pins/metric-key-xyz?tenant_id=m", v)
        r = self.req("GET", "/metrics", v)
        text = r.body.decode()
        self.assertRegex(text, r'http_requests_total\{route="/api/v1/memory/pins/\{key\}",'
                               r'method="GET",status="404"\} \d+')
        self.assertIn('http_request_duration_seconds_bucket{route="/api/v1/memory/pins/{key}"',
                      text)
        self.assertNotIn("metric-key-xyz", text)

    # ---- REST <-> gRPC consistency

    def test_rest_and_grpc_see_the_same_pin(self):
        cls = harness.message_class("memorypins.v1.GetPinRequest")
        for v in HTTP_VERSIONS:
            with self.subTest(v, direction="gRPC write, REST read"):
                resp = self.client.call(mp("UpsertPin"), {
                    "tenant_id": "consist", "key": "g2r-" + v[2:8],
                    "value": {"s": "x", "n": 1.5, "l": [True, None]}, "ttl_seconds": 3600})
                g = resp.pin
                r = self.req("GET", "/api/v1/memory/pins/g2r-%s?tenant_id=consist" % v[2:8], v)
                self.assertEqual(r.status, 200, r)
                self.assertRestEqualsGrpc(r.json(), g)
            with self.subTest(v, direction="REST write, gRPC read"):
                rest = self.upsert(v, "consist", "r2g-" + v[2:8], {"deep": {"a": [1, "b"]}})
                got = self.client.call(mp("GetPin"), cls(tenant_id="consist",
                                                         key="r2g-" + v[2:8])).pin
                self.assertRestEqualsGrpc(rest, got)

    def assertRestEqualsGrpc(self, rest, g):
        self.assertEqual(rest["id"], g.id)
        self.assertEqual(rest["version"], g.version)
        self.assertEqual(rest["tenant_id"], g.tenant_id)
        self.assertEqual(rest["key"], g.key)
        self.assertEqual(rest["source"], g.source)
        self.assertEqual(rest["value"], harness.to_dict(g)["value"])
        self.assertEqual(rest["created_at"], ts_micros(g.created_at))
        self.assertEqual(rest["updated_at"], ts_micros(g.updated_at))
        if g.HasField("ttl_seconds"):
            self.assertEqual(rest["ttl_seconds"], g.ttl_seconds.value)
            self.assertEqual(rest["expires_at"], ts_micros(g.expires_at))
        else:
            self.assertIsNone(rest["ttl_seconds"])
            self.assertIsNone(rest["expires_at"])


@unittest.skipUnless(CURL, "curl not installed")
class RestLimitsTest(ServerTestCase):
    """Servers with non-default settings."""

    SERVER_ENV = {"MAX_REQUEST_BYTES": "4096", "MEMORY_MAX_SIZE_BYTES": "2048"}

    def test_oversized_body_is_413(self):
        body = json.dumps({"key": "big", "value": {"x": "y" * 8000}})
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = curl(self.server.port, "POST", "/api/v1/memory/pins", v, body,
                         ("Content-Type: application/json",))
                self.assertEqual(r.status, 413, r)
                self.assertEqual(r.json()["code"], 8)

    def test_body_whose_decoded_form_is_too_large_is_413_and_stores_nothing(self):
        """A 1 MB JSON body of small numbers is within MAX_REQUEST_BYTES but decodes to far more
        than that; it is answered 413 (RESOURCE_EXHAUSTED), never 503 "out of memory"."""
        s = self.fresh_server(env={"MAX_REQUEST_BYTES": "4194304",
                                   "MEMORY_MAX_SIZE_BYTES": "1048576"})
        body = '{"tenant_id":"big","key":"numbers","value":{"a":[%s]}}' % ",".join(["0"] * 500000)
        self.assertLess(len(body), 4 << 20)
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                r = curl(s.port, "POST", "/api/v1/memory/pins", v, body,
                         ("Content-Type: application/json",), timeout=30)
                self.assertEqual(r.status, 413, r)
                self.assertEqual(r.json()["code"], 8)
                self.assertEqual(r.json()["detail"], "request body too large to decode")
                r = curl(s.port, "GET", "/api/v1/memory/pins/numbers?tenant_id=big", v)
                self.assertEqual(r.status, 404, r)
        with self.subTest(what="a smaller one of the same shape is stored"):
            small = '{"tenant_id":"big","key":"some","value":{"a":[%s]}}' % ",".join(["0"] * 50000)
            r = curl(s.port, "POST", "/api/v1/memory/pins", "--http1.1", small,
                     ("Content-Type: application/json",), timeout=30)
            self.assertEqual(r.status, 201, r)
            self.assertEqual(len(r.json()["value"]["a"]), 50000)

    def test_feature_flag_off_is_503_with_the_m7_detail(self):
        s = self.fresh_server(env={"MEMORY_PINS_ENABLED": "false"})
        for v in HTTP_VERSIONS:
            with self.subTest(v):
                for method, path, body in (
                        ("POST", "/api/v1/memory/pins", '{"key":"k","value":{}}'),
                        ("GET", "/api/v1/memory/pins/k", None),
                        ("GET", "/api/v1/memory/pins", None)):
                    r = curl(s.port, method, path, v, body, ("Content-Type: application/json",))
                    self.assertEqual(r.status, 503, r)
                    body_json = r.json()
                    self.assertEqual(body_json["detail"], "Memory pins feature is disabled")
                    self.assertEqual(body_json["code"], 14)
                r = curl(s.port, "GET", "/health", v)
                self.assertEqual(r.status, 200)


@unittest.skipUnless(CURL, "curl not installed")
class RunbookTest(ServerTestCase):
    """The runbook's curl commands, verbatim except for host:port, with its environment."""

    TOKEN = "runbook-machine-secret"
    SERVER_ENV = {"MACHINE_SECRET_TOKEN": TOKEN, "RBAC_ENFORCE": "false"}

    PHASE1_STEP4 = """curl -X POST http://localhost:8000/api/v1/memory/pins \\
  -H "Content-Type: application/json" \\
  -H "X-Machine-Token: $MACHINE_SECRET_TOKEN" \\
  -d '{"tenant_id":"test","key":"test-key","value":{"foo":"bar"}}'"""
    PHASE2_VERIFY = "curl http://localhost:8000/api/v1/memory/pins/test-key?tenant_id=global"
    PHASE4_STEP2 = """curl -X POST http://localhost:8000/api/v1/memory/pins \\
  -H "Content-Type: application/json" \\
  -d '{"tenant_id":"t1","key":"k","value":{}}'"""
    PHASE4_STEP5 = """curl -X POST http://localhost:8000/api/v1/memory/pins \\
  -H "Content-Type: application/json" \\
  -H "X-Machine-Token: $MACHINE_SECRET_TOKEN" \\
  -d '{"tenant_id":"t1","key":"k","value":{}}'"""
    RBAC_ROLLBACK_VERIFY = PHASE4_STEP2

    def run_runbook(self, command, server=None):
        """Runs command with bash, localhost:8000 replaced by the server's address; a ~/.curlrc
        (the command itself stays verbatim) appends the status code. Returns (status, body)."""
        server = server or self.server
        home = tempfile.mkdtemp(prefix="pinsd-runbook-", dir="/tmp")
        self.addCleanup(shutil.rmtree, home, True)
        with open(os.path.join(home, ".curlrc"), "w") as f:
            f.write('silent\nwrite-out = "\\n%{http_code}"\n')
        cmd = command.replace("localhost:8000", server.target)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
               "MACHINE_SECRET_TOKEN": self.TOKEN}
        p = subprocess.run(["bash", "-c", cmd], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        body, _, status = p.stdout.decode().rpartition("\n")
        return int(status), body

    def test_phase1_step4_post_is_201(self):
        status, body = self.run_runbook(self.PHASE1_STEP4)
        self.assertEqual(status, 201, body)
        pin = json.loads(body)
        self.assertEqual((pin["tenant_id"], pin["key"], pin["value"]),
                         ("test", "test-key", {"foo": "bar"}))

    def test_phase2_verify_get_is_200(self):
        r = curl(self.server.port, "POST", "/api/v1/memory/pins", "--http1.1",
                 '{"key":"test-key","value":{"seeded":true}}', ("Content-Type: application/json",))
        self.assertEqual(r.status, 201, r)
        status, body = self.run_runbook(self.PHASE2_VERIFY)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["tenant_id"], "global")
        self.assertEqual(json.loads(body)["value"], {"seeded": True})

    def test_phase4_steps_1_2_rbac_off_post_without_token_is_201(self):
        status, body = self.run_runbook(self.PHASE4_STEP2)
        self.assertEqual(status, 201, body)
        self.assertEqual(json.loads(body)["key"], "k")

    def test_rbac_rollback_check_is_201(self):
        status, body = self.run_runbook(self.RBAC_ROLLBACK_VERIFY)
        self.assertEqual(status, 201, body)

    def test_phase4_steps_3_5_rbac_on_blocks_without_token_and_allows_with_it(self):
        s = self.fresh_server(env={"RBAC_ENFORCE": "true"})
        status, body = self.run_runbook(self.PHASE4_STEP2, s)
        self.assertEqual(status, 403, body)
        err = json.loads(body)
        self.assertEqual((err["error"], err["reason"], err["resource"], err["action"],
                          err["code"]), ("forbidden", "no-credentials", "memory_pin", "write", 16))
        status, body = self.run_runbook(self.PHASE4_STEP5, s)
        self.assertEqual(status, 201, body)


if __name__ == "__main__":
    unittest.main()
