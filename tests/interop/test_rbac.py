"""Authentication and RBAC against a running pinsd (API.md sections 5, 6, 9; M7_RUNBOOK.md Phase 4).

gRPC through grpcio, REST through curl. JWTs are minted here with hmac/hashlib/base64 (no PyJWT).

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_rbac   (from tests/interop)
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import unittest

import grpc

import harness
from harness import ADMIN, ServerTestCase, mp, path_of

SC = grpc.StatusCode
MACHINE = "interop-machine-secret"
JWT_SECRET = "interop-jwt-secret"
ENFORCED = {"RBAC_ENFORCE": "true", "MACHINE_SECRET_TOKEN": MACHINE, "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT_RPM": "0"}
CURL = shutil.which("curl")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt(claims, secret=JWT_SECRET, alg="HS256", sign=True, exp=True):
    """A compact JWS; exp defaults to an hour from now (none at all with exp=False)."""
    claims = dict(claims)
    if exp:
        claims.setdefault("exp", int(time.time()) + 3600)
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    msg = ("%s.%s" % (head, body)).encode()
    sig = b64url(hmac.new(secret.encode(), msg, hashlib.sha256).digest()) if sign else ""
    return "%s.%s.%s" % (head, body, sig)


def bearer(claims, **kw):
    return [("authorization", "Bearer " + jwt(claims, **kw))]


def machine():
    return [("x-machine-token", MACHINE)]


def admin_path(method):
    return path_of(ADMIN, method)


def metrics_text(server):
    c = server.h2()
    try:
        resp = c.get("/metrics")
        return resp.data.decode("utf-8")
    finally:
        c.close()


def metric_value(text, series):
    """The value of one exposition line 'series value', or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


class RestMixin:
    """REST through curl (HTTP/1.1)."""

    def rest(self, server, method, path, body=None, headers=()):
        if CURL is None:
            self.skipTest("curl not installed")
        cmd = [CURL, "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--max-time", "10",
               "http://127.0.0.1:%d%s" % (server.port, path)]
        for k, v in headers:
            cmd += ["-H", "%s: %s" % (k, v)]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                             check=False).stdout.decode("utf-8", "replace")
        text, _, code = out.rpartition("\n")
        code = int(code or 0)
        return code, text


class RunbookPhase4Test(ServerTestCase, RestMixin):
    """M7_RUNBOOK.md Phase 4 steps 1-5 (and the RBAC rollback): one data directory, redeployed
    with RBAC_ENFORCE switched."""

    SERVER_ENV = {"RBAC_ENFORCE": "false", "MACHINE_SECRET_TOKEN": MACHINE,
                  "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_RPM": "0"}
    PIN = {"tenant_id": "t1", "key": "k", "value": {}}

    def deploy(self, enforce, data_dir=None):
        """A server with RBAC_ENFORCE=enforce on data_dir (a new one when None)."""
        return self.fresh_server({"RBAC_ENFORCE": enforce}, data_dir=data_dir)

    def client_of(self, s):
        c = s.client()
        self.addCleanup(c.close)
        return c

    def test_phase4_over_grpc(self):
        # 1-2: flag off, no token: works, and the would-be denial is counted as shadow.
        off = self.deploy("false")
        self.client_of(off).call(mp("UpsertPin"), self.PIN)
        text = metrics_text(off)
        self.assertGreaterEqual(
            metric_value(text, 'rbac_shadow_denials_total{reason="no-credentials"}') or 0, 1)
        self.assertGreaterEqual(metric_value(
            text, 'rbac_engine_decisions_total{resource="memory_pin",action="write",'
                  'decision="allowed",reason="rbac-disabled"}') or 0, 1)
        off.stop()
        # 3: enforce (redeploy on the same data).
        on = self.deploy("true", off.data_dir)
        c = self.client_of(on)
        # 4: blocked without a token.
        e = self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("UpsertPin"), self.PIN)
        self.assertIn("no-credentials", e.details())
        # 5: allowed with the machine token.
        resp = c.call(mp("UpsertPin"), self.PIN, metadata=machine())
        self.assertEqual(resp.pin.key, "k")
        self.assertEqual(resp.pin.version, 2)
        on.stop()
        # Rollback: flag off again, no token works.
        back = self.deploy("false", off.data_dir)
        self.assertEqual(self.client_of(back).call(mp("UpsertPin"), self.PIN).pin.version, 3)

    def test_phase4_over_rest(self):
        off = self.deploy("false")
        code, _ = self.rest(off, "POST", "/api/v1/memory/pins", self.PIN)
        self.assertEqual(code, 201)
        off.stop()
        on = self.deploy("true", off.data_dir)
        code, text = self.rest(on, "POST", "/api/v1/memory/pins", self.PIN)
        self.assertEqual(code, 403)
        body = json.loads(text)
        self.assertEqual(body["error"], "forbidden")
        self.assertEqual(body["reason"], "no-credentials")
        self.assertEqual(body["resource"], "memory_pin")
        self.assertEqual(body["action"], "write")
        self.assertEqual(body["code"], 16)
        code, _ = self.rest(on, "POST", "/api/v1/memory/pins", self.PIN,
                            headers=[("X-Machine-Token", MACHINE)])
        self.assertEqual(code, 201)
        code, text = self.rest(on, "POST", "/api/v1/memory/pins", self.PIN,
                               headers=[("Authorization", "Bearer " + jwt({"roles": ["dev"]}))])
        self.assertEqual(code, 403)
        self.assertEqual(json.loads(text)["reason"], "insufficient-permissions")
        self.assertEqual(json.loads(text)["code"], 7)
        code, text = self.rest(on, "GET", "/api/v1/rbac/info",
                               headers=[("X-Machine-Token", MACHINE)])
        self.assertEqual(code, 200)
        self.assertIs(json.loads(text)["enforce_mode"], True)


class EnforcedTest(ServerTestCase, RestMixin):
    SERVER_ENV = ENFORCED

    def test_roles_follow_the_default_matrix(self):
        c = self.client
        pin = {"tenant_id": "roles", "key": "k", "value": {"a": 1}}
        c.call(mp("UpsertPin"), pin, metadata=bearer({"roles": ["machine"]}))
        c.call(mp("GetPin"), {"tenant_id": "roles", "key": "k"}, metadata=bearer({"roles": "dev"}))
        self.assertRpcError(SC.PERMISSION_DENIED, c.call, mp("UpsertPin"), pin,
                            metadata=bearer({"roles": ["readonly"]}))
        self.assertRpcError(SC.PERMISSION_DENIED, c.call, mp("DeletePin"),
                            {"tenant_id": "roles", "key": "k"}, metadata=machine())
        self.assertRpcError(SC.PERMISSION_DENIED, c.call, mp("CleanupExpiredPins"), {},
                            metadata=bearer({"roles": ["dev"]}))
        c.call(mp("CleanupExpiredPins"), {}, metadata=bearer({"roles": ["infra"]}))
        resp = c.call(mp("DeletePin"), {"tenant_id": "roles", "key": "k"},
                      metadata=bearer({"roles": ["admin"]}))
        self.assertTrue(resp.deleted)

    def test_bad_credentials_are_unauthenticated(self):
        c = self.client
        req = {"tenant_id": "bad", "key": "k"}
        cases = {
            "alg none": bearer({"roles": ["admin"]}, alg="none", sign=False),
            "HS512 label": bearer({"roles": ["admin"]}, alg="HS512"),
            "wrong secret": bearer({"roles": ["admin"]}, secret="guess"),
            "expired": bearer({"roles": ["admin"], "exp": int(time.time()) - 3600}),
            "not yet valid": bearer({"roles": ["admin"], "nbf": int(time.time()) + 3600}),
            "no exp": bearer({"roles": ["admin"]}, exp=False),
            "wrong machine token": [("x-machine-token", MACHINE + "x")],
            "garbage": [("authorization", "Bearer a.b.c")],
        }
        for name, md in cases.items():
            with self.subTest(name):
                e = self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("GetPin"), req, metadata=md)
                self.assertIn("invalid-token", e.details())
                self.assertNotIn(MACHINE, e.details())
        # X-Roles is not trusted by default: that is no credential at all.
        e = self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("GetPin"), req,
                                metadata=[("x-roles", "admin")])
        self.assertIn("no-credentials", e.details())

    def test_expired_token_is_refused_right_after_it_was_accepted(self):
        # Workers cache verified tokens; the expiry must still be checked at every use. pinsd
        # accepts exp + 30 s of leeway, so this token has about three seconds left.
        c = self.client
        req = {"tenant_id": "expiring", "key": "k"}
        exp = int(time.time()) - 30 + 3
        md = bearer({"roles": ["admin"], "exp": exp})
        for _ in range(8):  # several calls, so that the workers that serve them cache the token
            try:
                c.call(mp("GetPin"), req, metadata=md)
            except grpc.RpcError as e:
                self.assertEqual(e.code(), SC.NOT_FOUND, e.details())
        while time.time() < exp + 30 + 1:
            time.sleep(0.2)
        for _ in range(8):
            e = self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("GetPin"), req, metadata=md)
            self.assertIn("invalid-token", e.details())

    def test_tenant_restricted_token_cannot_cross_tenants(self):
        c = self.client
        t1 = bearer({"sub": "agent-t1", "roles": ["admin"], "tenants": ["ten-a"]})
        c.call(mp("UpsertPin"), {"tenant_id": "ten-a", "key": "k", "value": {}}, metadata=t1)
        c.call(mp("UpsertPin"), {"tenant_id": "ten-b", "key": "k", "value": {}},
               metadata=machine())
        calls = [
            (mp("UpsertPin"), {"tenant_id": "ten-b", "key": "k", "value": {"x": 1}}),
            (mp("GetPin"), {"tenant_id": "ten-b", "key": "k"}),
            (mp("ListPins"), {"tenant_id": "ten-b"}),
            (mp("DeletePin"), {"tenant_id": "ten-b", "key": "k"}),
            (mp("GetPin"), {"key": "k"}),  # empty tenant is "global"
            (mp("CleanupExpiredPins"), {}),  # every tenant
        ]
        for path, req in calls:
            with self.subTest(path=path, req=req):
                e = self.assertRpcError(SC.PERMISSION_DENIED, c.call, path, req, metadata=t1)
                self.assertIn("tenant-not-allowed", e.details())
        # ten-b is untouched, ten-a is served.
        got = c.call(mp("GetPin"), {"tenant_id": "ten-b", "key": "k"}, metadata=machine())
        self.assertEqual(got.pin.version, 1)
        self.assertEqual(c.call(mp("ListPins"), {"tenant_id": "ten-a"}, metadata=t1).total, 1)
        c.call(mp("CleanupExpiredPins"), {"tenant_id": "ten-a"}, metadata=t1)
        single = bearer({"roles": "machine", "tenant_id": "ten-a"})
        self.assertRpcError(SC.PERMISSION_DENIED, c.call, mp("GetPin"),
                            {"tenant_id": "ten-b", "key": "k"}, metadata=single)

    def test_tenant_restricted_token_is_refused_all_tenant_operations(self):
        # Reloading the policy and deleting the RBAC audit act on every tenant.
        c = self.client
        t1 = bearer({"sub": "admin-a", "roles": ["admin"], "tenants": ["ten-a"]})
        admin = bearer({"sub": "admin-all", "roles": ["admin"]})
        calls = [(admin_path("ReloadRbacPolicy"), {}),
                 (admin_path("CleanupRbacAudit"), {"retention_days": 1}),
                 (admin_path("ListRbacAudit"), {})]
        for path, req in calls:
            with self.subTest(path=path):
                e = self.assertRpcError(SC.PERMISSION_DENIED, c.call, path, req, metadata=t1)
                self.assertIn("tenant-not-allowed", e.details())
                c.call(path, req, metadata=admin)
        c.call(admin_path("ListRbacAudit"), {"tenant_id": "ten-a"}, metadata=t1)
        c.call(admin_path("GetRbacInfo"), {}, metadata=t1)  # the policy's summary: no tenant data
        token = t1[0][1]
        for route in ("/api/v1/rbac/reload", "/api/v1/rbac/audit/cleanup?retention_days=1"):
            with self.subTest(route=route):
                code, text = self.rest(self.server, "POST", route,
                                       headers=[("Authorization", token)])
                self.assertEqual(code, 403, text)
                body = json.loads(text)
                self.assertEqual(body["reason"], "tenant-not-allowed")
                self.assertEqual(body["code"], 7)
                code, _ = self.rest(self.server, "POST", route,
                                    headers=[("Authorization", admin[0][1])])
                self.assertEqual(code, 200)

    def test_repeated_credential_headers_are_refused(self):
        # Whichever copy a proxy in front checked, pinsd must not read another one.
        c = self.client
        req = {"tenant_id": "dup", "key": "k"}
        admin = "Bearer " + jwt({"roles": ["admin"]})
        dev = "Bearer " + jwt({"roles": ["dev"]})
        cases = {
            "two bearer tokens": [("authorization", dev), ("authorization", admin)],
            "one token twice": [("authorization", admin), ("authorization", admin)],
            "two machine tokens": [("x-machine-token", MACHINE), ("x-machine-token", "other")],
            "machine token twice": [("x-machine-token", MACHINE), ("x-machine-token", MACHINE)],
        }
        for name, md in cases.items():
            with self.subTest(name, transport="grpc"):
                e = self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("GetPin"), req, metadata=md)
                self.assertIn("invalid-token", e.details())
            with self.subTest(name, transport="rest"):
                code, text = self.rest(self.server, "GET", "/api/v1/memory/pins/k?tenant_id=dup",
                                       headers=md)
                self.assertEqual(code, 403, text)
                self.assertEqual(json.loads(text)["reason"], "invalid-token")
                self.assertNotIn(MACHINE, text)
        # Each alone is served (404: no such pin).
        self.assertRpcError(SC.NOT_FOUND, c.call, mp("GetPin"), req,
                            metadata=[("authorization", admin)])
        code, _ = self.rest(self.server, "GET", "/api/v1/memory/pins/k?tenant_id=dup",
                            headers=[("X-Machine-Token", MACHINE)])
        self.assertEqual(code, 404)

    def test_health_reflection_and_probes_are_unguarded(self):
        c = self.client
        resp = c.call(path_of(harness.HEALTH, "Check"), {})
        self.assertEqual(resp.status, 1)
        out = c.bidi_stream(path_of(harness.REFLECTION_V1, "ServerReflectionInfo"),
                            [{"list_services": ""}])
        names = [svc.name for svc in out[0].list_services_response.service]
        self.assertIn("memorypins.v1.Admin", names)
        h2 = self.server.h2()
        self.addCleanup(h2.close)
        for path in ("/health", "/metrics"):
            self.assertEqual(h2.get(path).status, 200, path)

    def test_admin_rbac_info_and_matrix(self):
        c = self.client
        info = c.call(admin_path("GetRbacInfo"), {}, metadata=machine())
        self.assertEqual(info.version, "default")
        self.assertRegex(info.hash, r"^[0-9a-f]{16}$")
        self.assertEqual(sorted(info.roles), ["admin", "dev", "infra", "machine", "readonly"])
        self.assertEqual(list(info.resources), ["memory_pin", "prometheus", "rbac"])
        self.assertTrue(info.enforce_mode)
        self.assertFalse(info.fail_open)
        self.assertGreater(info.loaded_at.seconds, 1600000000)
        m = harness.to_dict(c.call(admin_path("GetRbacMatrix"), {},
                                   metadata=bearer({"roles": ["readonly"]})))
        self.assertEqual(m["hash"], info.hash)
        self.assertEqual(m["matrix"]["machine"]["memory_pin"], ["read", "write"])
        self.assertEqual(m["matrix"]["dev"]["prometheus"], ["query"])
        self.assertRpcError(SC.PERMISSION_DENIED, c.call, admin_path("ReloadRbacPolicy"), {},
                            metadata=machine())
        self.assertRpcError(SC.UNAUTHENTICATED, c.call, admin_path("GetRbacInfo"), {})

    def test_rbac_metrics_are_exported_in_both_families(self):
        self.assertRpcError(SC.UNAUTHENTICATED, self.client.call, mp("GetPin"),
                            {"tenant_id": "m", "key": "k"})
        text = metrics_text(self.server)
        for family in ("rbac_decisions_total", "rbac_engine_decisions_total"):
            v = metric_value(text, '%s{resource="memory_pin",action="read",decision="denied",'
                                   'reason="no-credentials"}' % family)
            self.assertGreaterEqual(v or 0, 1, family)
        for name in ("rbac_latency_seconds_count", "rbac_engine_latency_seconds_count"):
            self.assertGreaterEqual(metric_value(text, name) or 0, 1, name)
        self.assertEqual(metric_value(text, 'rbac_policy_loads_total{status="success"}'), 1)
        self.assertEqual(metric_value(text, 'rbac_policy_loads_total{status="parse_error"}'), 0)
        self.assertRegex(text, r'rbac_policy_version_info\{version="default",hash="[0-9a-f]{16}"\} 1')
        self.assertNotIn(MACHINE, text)
        self.assertNotIn(JWT_SECRET, text)


POLICY_V1 = {"version": "v1", "matrix": {
    "machine": {"memory_pin": ["read", "write"]},
    "admin": {"rbac": ["read", "reload"]},
    "dev": {"memory_pin": ["read"]}}, "audit": {"log_allowed": False}}
POLICY_V2 = {"version": "v2", "matrix": {
    "machine": {"memory_pin": ["read", "write"]},
    "admin": {"rbac": ["read", "reload"]},
    "dev": {"memory_pin": ["read", "write"]}}, "audit": {"log_allowed": True}}


def audit_db(server):
    """A read-only connection to the server's embedded store."""
    path = os.path.join(server.data_dir, "pins.db")
    return contextlib.closing(sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10))


class AuditBoundsTest(ServerTestCase):
    """The RBAC audit under anonymous traffic: identical denials aggregated, distinct ones bounded
    by PINS_AUDIT_DENIAL_ROWS_PER_SECOND, shadow-mode would-be denials audited, and old rows
    deleted by PINS_AUDIT_RETENTION_DAYS. Loads are bounded in count and time, on loopback."""

    SERVER_ENV = dict(ENFORCED)

    def test_anonymous_denials_are_aggregated_and_bounded(self):
        s = self.fresh_server({"PINS_AUDIT_DENIAL_ROWS_PER_SECOND": "5"})
        c = s.client()
        # Half anonymous and identical; half from a token bound to ten-a, each for another
        # tenant: distinct rows, what plain aggregation cannot bound.
        bound = bearer({"sub": "agent-a", "roles": ["admin"], "tenants": ["ten-a"]})
        sent = 0
        deadline = time.monotonic() + 20
        for i in range(3000):
            if time.monotonic() > deadline:
                break
            if i % 2:
                self.assertRpcError(SC.PERMISSION_DENIED, c.call, mp("GetPin"),
                                    {"tenant_id": "t%d" % i, "key": "k"}, metadata=bound)
            else:
                self.assertRpcError(SC.UNAUTHENTICATED, c.call, mp("GetPin"),
                                    {"tenant_id": "same", "key": "k"})
            sent += 1
        c.close()
        s.stop()  # drains: every queued row and the summary rows are written
        with audit_db(s) as db:
            rows, denials = db.execute(
                "SELECT count(*), sum(coalesce(json_extract(extra, '$.count'), 1))"
                " FROM rbac_audit WHERE allowed = 0").fetchone()
            summary = db.execute("SELECT count(*) FROM rbac_audit WHERE tenant_id = '*'"
                                 " AND subject = 'agent-a' AND reason = 'tenant-not-allowed'"
                                 " AND request_id IS NULL").fetchone()[0]
            shape = db.execute("SELECT subject, reason, tenant_id, request_id IS NULL, extra"
                               " FROM rbac_audit ORDER BY id LIMIT 40").fetchall()
        self.assertGreaterEqual(sent, 1000)
        self.assertEqual(denials, sent)  # every denial is a row or counted in one
        self.assertLessEqual(rows, sent // 10, "%d rows for %d denials" % (rows, sent))
        self.assertGreaterEqual(summary, 1, shape)

    def test_shadow_mode_audits_would_be_denials(self):
        s = self.fresh_server({"RBAC_ENFORCE": "false"})
        c = s.client()
        self.addCleanup(c.close)
        for _ in range(3):
            self.assertRpcError(SC.NOT_FOUND, c.call, mp("GetPin"), {"tenant_id": "sh", "key": "k"})
        c.call(mp("UpsertPin"), {"tenant_id": "sh", "key": "k", "value": {}}, metadata=machine())
        entries = []
        deadline = time.monotonic() + 10
        while not entries and time.monotonic() < deadline:
            time.sleep(0.1)
            resp = c.call(admin_path("ListRbacAudit"), {"tenant_id": "sh"}, metadata=machine())
            entries = list(resp.entries)
        self.assertGreaterEqual(len(entries), 1)
        for e in entries:  # the anonymous reads only: the machine token was allowed
            self.assertEqual(e.subject, "anonymous")
            self.assertEqual(e.reason, "shadow-no-credentials")
            self.assertTrue(e.allowed)  # the call went through
            self.assertEqual(e.path, mp("GetPin"))

    def test_retention_deletes_old_audit_rows(self):
        first = self.fresh_server()
        first.stop()  # the schema exists now
        day_us = 86400 * 1000000
        now_us = int(time.time() * 1000000)
        with contextlib.closing(sqlite3.connect(os.path.join(first.data_dir, "pins.db"),
                                                timeout=10)) as db, db:
            db.executemany(
                "INSERT INTO rbac_audit (ts, subject, resource, action, allowed, reason)"
                " VALUES (?, ?, 'memory_pin', 'read', 0, 'no-credentials')",
                [(now_us - 3 * day_us + i, "old") for i in range(1200)] + [(now_us, "recent")])
            db.executemany(
                "INSERT INTO memory_audit (ts, operation, tenant_id, key) VALUES (?, 'get', 'r', ?)",
                [(now_us - 3 * day_us, "old"), (now_us, "recent")])
        s = self.fresh_server({"PINS_AUDIT_RETENTION_DAYS": "1", "PINS_SWEEP_INTERVAL_SECONDS": "1",
                               "PINS_SWEEP_BATCH": "100"}, data_dir=first.data_dir)
        left = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with audit_db(s) as ro:
                left = (ro.execute("SELECT count(*) FROM rbac_audit WHERE subject = 'old'").fetchone()[0],
                        ro.execute("SELECT count(*) FROM memory_audit WHERE key = 'old'").fetchone()[0])
            if left == (0, 0):
                break
            time.sleep(0.2)
        self.assertEqual(left, (0, 0))
        with audit_db(s) as ro:
            self.assertEqual(ro.execute(
                "SELECT count(*) FROM rbac_audit WHERE subject = 'recent'").fetchone()[0], 1)
            self.assertEqual(ro.execute(
                "SELECT count(*) FROM memory_audit WHERE key = 'recent'").fetchone()[0], 1)
        text = metrics_text(s)
        self.assertEqual(metric_value(text, 'audit_retention_deleted_total{table="rbac"}'), 1200)


class ReloadTest(ServerTestCase):
    """Policy reload by SIGHUP and by ReloadRbacPolicy while a bounded load loop runs."""

    SERVER_ENV = ENFORCED

    def write_policy(self, path, doc):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
        os.replace(tmp, path)

    def dev_can_write(self, c):
        try:
            c.call(mp("UpsertPin"), {"tenant_id": "reload", "key": "dev", "value": {}},
                   metadata=bearer({"roles": ["dev"]}))
            return True
        except grpc.RpcError as e:
            self.assertEqual(e.code(), SC.PERMISSION_DENIED)
            return False

    def wait_for(self, pred, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        self.fail("timed out waiting for " + what)

    def test_reload_changes_decisions_under_load(self):
        tmp = self.server.tmp
        policy = os.path.join(tmp, "rbac_policies.json")
        self.write_policy(policy, POLICY_V1)
        s = self.fresh_server({"RBAC_POLICY_FILE": policy})
        c = s.client()
        self.addCleanup(c.close)
        c.call(mp("UpsertPin"), {"tenant_id": "reload", "key": "load", "value": {}},
               metadata=machine())
        self.assertEqual(c.call(admin_path("GetRbacInfo"), {}, metadata=bearer(
            {"roles": "admin"})).version, "v1")
        self.assertFalse(self.dev_can_write(c))

        # The load loop: machine reads that every policy allows; none may fail.
        stop = threading.Event()
        stats = {"ok": 0, "failed": []}

        def load():
            lc = s.client()
            try:
                for _ in range(20000):  # bounded even if stop is never set
                    if stop.is_set():
                        break
                    try:
                        lc.call(mp("GetPin"), {"tenant_id": "reload", "key": "load"},
                                metadata=machine(), timeout=5)
                        stats["ok"] += 1
                    except grpc.RpcError as e:
                        stats["failed"].append("%s %s" % (e.code(), e.details()))
            finally:
                lc.close()

        t = threading.Thread(target=load, daemon=True)
        t.start()
        try:
            # SIGHUP picks up v2: dev may write.
            self.write_policy(policy, POLICY_V2)
            s.signal(signal.SIGHUP)
            self.wait_for(lambda: self.dev_can_write(c), "SIGHUP to load v2")
            admin = bearer({"roles": "admin"})
            info = c.call(admin_path("GetRbacInfo"), {}, metadata=admin)
            self.assertEqual(info.version, "v2")
            v2_hash = info.hash

            # ReloadRbacPolicy brings v1 back: dev may not write any more.
            self.write_policy(policy, POLICY_V1)
            r = c.call(admin_path("ReloadRbacPolicy"), {}, metadata=admin)
            self.assertTrue(r.success, r.message)
            self.assertEqual(r.previous_hash, v2_hash)
            self.assertNotEqual(r.new_hash, v2_hash)
            self.assertFalse(self.dev_can_write(c))
            v1_hash = r.new_hash

            # A broken file is refused by both paths and v1 stays.
            self.write_policy(policy, '{"version": "v3", "matrix": {"dev": ')
            r = c.call(admin_path("ReloadRbacPolicy"), {}, metadata=admin)
            self.assertFalse(r.success)
            self.assertIn("not valid JSON", r.message)
            self.assertEqual(r.previous_hash, v1_hash)
            self.assertEqual(r.new_hash, v1_hash)
            s.signal(signal.SIGHUP)
            self.wait_for(lambda: (metric_value(metrics_text(s),
                                                'rbac_policy_loads_total{status="parse_error"}')
                                   or 0) >= 2, "the SIGHUP reload to fail")
            info = c.call(admin_path("GetRbacInfo"), {}, metadata=admin)
            self.assertEqual((info.version, info.hash), ("v1", v1_hash))
            self.assertFalse(self.dev_can_write(c))
            time.sleep(0.3)  # a little more load after the last swap
        finally:
            stop.set()
            t.join(30)
        self.assertFalse(t.is_alive())
        self.assertEqual(stats["failed"], [])
        self.assertGreater(stats["ok"], 10)
        text = metrics_text(s)
        self.assertEqual(metric_value(text, 'rbac_policy_loads_total{status="success"}'), 3)
        self.assertRegex(text, r'rbac_policy_version_info\{version="v1",hash="%s"\} 1' % v1_hash)
        self.assertRegex(text, r'rbac_policy_version_info\{version="v2",hash="%s"\} 0' % v2_hash)

    def test_bad_policy_file_stops_the_start(self):
        policy = os.path.join(self.server.tmp, "bad_policy.json")
        self.write_policy(policy, '{"version": "x", "matrix": []}')
        s = self.fresh_server({"RBAC_POLICY_FILE": policy}, start=False)
        with self.assertRaises(RuntimeError):
            s.start(ready_timeout=5)
        self.assertEqual(s.returncode, 2)
        with open(s.stderr_path) as f:
            err = f.read()
        self.assertIn("RBAC_POLICY_FILE", err)
        self.assertIn("matrix", err)


if __name__ == "__main__":
    unittest.main()
