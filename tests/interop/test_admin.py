"""The Admin audits and status against a running pinsd (API.md sections 3, 6, 9): ListRbacAudit,
CleanupRbacAudit, ListMemoryAudit and GetStatus over gRPC (grpcio) and REST (curl).

Audit rows are written off the request path, every 200 ms: the tests poll the listing until the
rows they caused appear.

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_admin   (from tests/interop)
"""

import json
import os
import sqlite3
import time
import unittest
import urllib.parse

import grpc

from harness import ADMIN, ServerTestCase, mp, path_of
from test_rbac import JWT_SECRET, MACHINE, RestMixin, bearer, jwt, metric_value, metrics_text

SC = grpc.StatusCode
ADMIN_JWT = {"sub": "ops-admin", "roles": ["admin"]}


def admin(method):
    return path_of(ADMIN, method)


class AdminAuditTest(ServerTestCase, RestMixin):
    SERVER_ENV = {"RBAC_ENFORCE": "true", "MACHINE_SECRET_TOKEN": MACHINE,
                  "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_RPM": "0"}

    def admin_headers(self):
        return [("Authorization", "Bearer " + jwt(ADMIN_JWT))]

    def get_json(self, path, headers=None):
        code, text = self.rest(self.server, "GET", path, headers=headers or self.admin_headers())
        self.assertEqual(code, 200, text)
        return json.loads(text)

    def poll(self, path, want, timeout=5.0):
        """GETs path until want(body) holds; returns the last body."""
        deadline = time.time() + timeout
        while True:
            body = self.get_json(path)
            if want(body) or time.time() > deadline:
                return body
            time.sleep(0.1)

    def test_denied_calls_are_listed_over_rest_and_grpc(self):
        # Refused on their headers (no credentials under RBAC_ENFORCE=true): the body that names
        # the tenant is never read, so the rows carry no tenant_id. Request ids find them.
        pin = {"tenant_id": "audit-denied", "key": "k", "value": {}}
        self.assertRpcError(SC.UNAUTHENTICATED, self.client.call, mp("UpsertPin"), pin,
                            metadata=[("x-request-id", "grpc-denied-1")])
        code, _ = self.rest(self.server, "POST", "/api/v1/memory/pins", body=pin,
                            headers=[("X-Request-Id", "rest-denied-1")])
        self.assertEqual(code, 403)
        ids = ["rest-denied-1", "grpc-denied-1"]
        q = "/api/v1/rbac/audit?allowed=false&resource=memory_pin&action=write&subject=anonymous"
        body = self.poll(q, lambda b: set(ids) <= {e["request_id"] for e in b["entries"]})
        self.assertEqual(body["limit"], 100)
        self.assertEqual(body["offset"], 0)
        rows = [e for e in body["entries"] if e["request_id"] in ids]
        # newest first: the REST call came second
        self.assertEqual([e["request_id"] for e in rows], ids, body)
        self.assertEqual(rows[0]["path"], "/api/v1/memory/pins")
        self.assertEqual(rows[0]["method"], "POST")
        self.assertEqual(rows[1]["path"], "/memorypins.v1.MemoryPins/UpsertPin")
        for e in rows:
            self.assertFalse(e["allowed"])
            self.assertEqual(e["subject"], "anonymous")
            self.assertEqual(e["reason"], "no-credentials")
            self.assertFalse(e.get("tenant_id"), e)
            self.assertTrue(e["ts"].endswith("Z"))
        # gRPC with filters, paging and the machine credential (rbac:read)
        want = {"allowed": False, "resource": "memory_pin", "action": "write",
                "subject": "anonymous"}
        resp = self.client.call(admin("ListRbacAudit"), dict(want, limit=1, offset=1),
                                metadata=[("x-machine-token", MACHINE)])
        self.assertEqual(resp.total, body["total"])
        self.assertEqual(len(resp.entries), 1)
        self.assertEqual(resp.entries[0].id, body["entries"][1]["id"])
        self.assertEqual(resp.limit, 1)
        self.assertEqual(resp.offset, 1)
        none = self.client.call(admin("ListRbacAudit"), dict(want, subject="nobody"),
                                metadata=[("x-machine-token", MACHINE)])
        self.assertEqual(none.total, 0)

    def test_bad_credentials_never_leave_the_token_in_the_audit(self):
        token = jwt({"sub": "mallory", "roles": ["admin"]}, secret="wrong-secret")
        code, _ = self.rest(self.server, "GET", "/api/v1/memory/pins/k?tenant_id=audit-secret",
                            headers=[("Authorization", "Bearer " + token),
                                     ("X-Request-Id", "bad-token-1")])
        self.assertEqual(code, 403)
        body = self.poll("/api/v1/rbac/audit?allowed=false&resource=memory_pin&action=read",
                         lambda b: any(e["request_id"] == "bad-token-1" for e in b["entries"]))
        row = [e for e in body["entries"] if e["request_id"] == "bad-token-1"]
        self.assertEqual(len(row), 1, body)
        self.assertEqual(row[0]["reason"], "invalid-token")
        text = json.dumps(body)
        self.assertNotIn(token, text)
        self.assertNotIn(token.split(".")[2], text)

    def test_audit_listings_validate_limit(self):
        code, _ = self.rest(self.server, "GET", "/api/v1/rbac/audit?limit=1001",
                            headers=self.admin_headers())
        self.assertEqual(code, 422)
        self.assertRpcError(SC.INVALID_ARGUMENT, self.client.call, admin("ListMemoryAudit"),
                            {"limit": -1}, metadata=bearer(ADMIN_JWT))

    def test_cleanup_deletes_rows_older_than_retention(self):
        tenant = "audit-cleanup"
        # Two distinct denials (identical ones would share a row), decided once the request's
        # tenant is known: a token bound to another tenant.
        elsewhere = bearer({"sub": "elsewhere", "roles": ["admin"], "tenants": ["elsewhere"]})
        for method in ("GetPin", "DeletePin"):
            self.assertRpcError(SC.PERMISSION_DENIED, self.client.call, mp(method),
                                {"tenant_id": tenant, "key": "k"}, metadata=elsewhere)
        body = self.poll("/api/v1/rbac/audit?tenant_id=" + tenant, lambda b: b["total"] >= 2)
        self.assertEqual(body["total"], 2)
        oldest = min(e["id"] for e in body["entries"])
        db = sqlite3.connect(os.path.join(self.server.data_dir, "pins.db"), timeout=10)
        with db:
            db.execute("UPDATE rbac_audit SET ts = ts - 3 * 86400 * 1000000 WHERE id = ?",
                       (oldest,))
        db.close()
        code, text = self.rest(self.server, "POST", "/api/v1/rbac/audit/cleanup?retention_days=1",
                               headers=self.admin_headers())
        self.assertEqual(code, 200, text)
        out = json.loads(text)
        self.assertEqual(sorted(out), ["deleted_count", "retention_days", "timestamp"])
        self.assertEqual(out["deleted_count"], 1)
        self.assertEqual(out["retention_days"], 1)
        self.assertTrue(out["timestamp"].endswith("Z"))
        left = self.get_json("/api/v1/rbac/audit?tenant_id=" + tenant)
        self.assertEqual([e["id"] for e in left["entries"]],
                         [e["id"] for e in body["entries"] if e["id"] != oldest])
        resp = self.client.call(admin("CleanupRbacAudit"), {}, metadata=bearer(ADMIN_JWT))
        self.assertEqual(resp.retention_days, 90)
        self.assertEqual(resp.deleted_count, 0)
        code, _ = self.rest(self.server, "POST", "/api/v1/rbac/audit/cleanup?retention_days=-1",
                            headers=self.admin_headers())
        self.assertEqual(code, 422)
        # machine may read the audit but not clean it up (rbac:reload)
        code, _ = self.rest(self.server, "POST", "/api/v1/rbac/audit/cleanup?retention_days=1",
                            headers=[("X-Machine-Token", MACHINE)])
        self.assertEqual(code, 403)

    def test_memory_audit_lists_writes_and_reads_by_operation(self):
        tenant = "audit-memory"
        hdrs = self.admin_headers() + [("X-Agent-Id", "agent-7")]
        code, text = self.rest(self.server, "POST", "/api/v1/memory/pins",
                               body={"tenant_id": tenant, "key": "k1", "value": {"a": 1}},
                               headers=hdrs)
        self.assertEqual(code, 201, text)
        # Identical reads within one audit window become one row: the two reads come from two
        # agents so that each keeps its own row.
        for agent in ("agent-7", "agent-8"):
            code, _ = self.rest(self.server, "GET", "/api/v1/memory/pins/k1?tenant_id=" + tenant,
                                headers=self.admin_headers() + [("X-Agent-Id", agent)])
            self.assertEqual(code, 200)
        code, _ = self.rest(self.server, "GET",
                            "/api/v1/memory/pins?prefix=k&tenant_id=" + tenant, headers=hdrs)
        self.assertEqual(code, 200)
        code, _ = self.rest(self.server, "DELETE", "/api/v1/memory/pins/k1?tenant_id=" + tenant,
                            headers=hdrs)
        self.assertEqual(code, 200)
        code, _ = self.rest(self.server, "GET", "/api/v1/memory/pins/k1?tenant_id=" + tenant,
                            headers=hdrs)
        self.assertEqual(code, 404)
        base = "/api/v1/memory/audit?tenant_id=" + tenant
        body = self.poll(base, lambda b: b["total"] >= 6)
        self.assertEqual(body["total"], 6, body)
        ops = sorted(e["operation"] for e in body["entries"])
        self.assertEqual(ops, ["delete", "get", "get", "get", "list", "upsert"])
        gets = self.get_json(base + "&operation=get")
        self.assertEqual(gets["total"], 3)
        self.assertEqual([e["success"] for e in gets["entries"]], [False, True, True])
        self.assertEqual(sorted(e["agent_id"] for e in gets["entries"]),
                         ["agent-7", "agent-7", "agent-8"])
        for e in gets["entries"]:
            self.assertEqual(e["key"], "k1")
            self.assertGreaterEqual(e["latency_ms"], 0)
        # the second get of a freshly written pin is answered from the SQLite cache
        self.assertTrue(any(e["cache_hit"] for e in gets["entries"]))
        lists = self.get_json(base + "&operation=list")
        self.assertEqual([e["key"] for e in lists["entries"]], ["k"])
        deletes = self.get_json(base + "&operation=delete&key=k1")
        self.assertEqual(deletes["total"], 1)
        resp = self.client.call(admin("ListMemoryAudit"),
                                {"tenant_id": tenant, "operation": "upsert"},
                                metadata=bearer(ADMIN_JWT))
        self.assertEqual(resp.total, 1)
        self.assertEqual(resp.entries[0].key, "k1")
        self.assertEqual(len(resp.entries[0].new_value_hash), 16)
        text = metrics_text(self.server)
        self.assertGreaterEqual(
            metric_value(text, 'memory_audit_writes_total{status="success"}') or 0, 4)
        self.assertGreaterEqual(
            metric_value(text, 'rbac_audit_writes_total{status="success"}') or 0, 0)

    def test_reads_over_the_budget_are_listed_through_their_summaries(self):
        # Without read rows to spend (PINS_AUDIT_READ_ROWS_PER_SECOND=0) every read over REST
        # and gRPC is counted in its tenant's summary row (key "*"), which lists each key. One
        # worker: each worker keeps summaries of its own.
        srv = self.fresh_server(dict(self.SERVER_ENV, PINS_AUDIT_READ_ROWS_PER_SECOND="0",
                                     PINS_WORKERS="1"))
        tenant = "audit-summary"
        hdrs = self.admin_headers()
        for key in ("s1", "s2"):
            code, text = self.rest(srv, "POST", "/api/v1/memory/pins",
                                   body={"tenant_id": tenant, "key": key, "value": {"k": key}},
                                   headers=hdrs)
            self.assertEqual(code, 201, text)
        for key in ("s1", "s1", "s2", "absent"):
            code, _ = self.rest(srv, "GET", "/api/v1/memory/pins/%s?tenant_id=%s" % (key, tenant),
                                headers=hdrs)
            self.assertEqual(code, 404 if key == "absent" else 200)
        srv.client().call(mp("GetPin"), {"tenant_id": tenant, "key": "s2"},
                          metadata=bearer(ADMIN_JWT))
        base = "/api/v1/memory/audit?operation=get&tenant_id=" + tenant
        deadline = time.time() + 10
        while True:
            code, text = self.rest(srv, "GET", base, headers=hdrs)
            self.assertEqual(code, 200, text)
            body = json.loads(text)
            if body["total"] >= 2 or time.time() > deadline:
                break
            time.sleep(0.1)
        # One summary of the successful reads, one of the failed one; no row of its own.
        self.assertEqual(body["total"], 2, body)
        self.assertEqual(sorted(e["key"] for e in body["entries"]), ["*", "*"])
        self.assertEqual(sorted(e["success"] for e in body["entries"]), [False, True])
        for key, total in (("s1", 1), ("s2", 1), ("absent", 1), ("s3", 0)):
            code, text = self.rest(srv, "GET", base + "&key=" + key, headers=hdrs)
            self.assertEqual(code, 200, text)
            self.assertEqual(json.loads(text)["total"], total, key)
        db = sqlite3.connect(os.path.join(srv.data_dir, "pins.db"), timeout=10)
        try:
            extras = [json.loads(r[0]) for r in db.execute(
                "SELECT extra FROM memory_audit WHERE tenant_id = ? AND operation = 'get'"
                " ORDER BY success DESC", (tenant,))]
        finally:
            db.close()
        self.assertEqual(extras, [{"reads": 4, "keys": {"s1": 2, "s2": 2}},
                                  {"reads": 1, "keys": {"absent": 1}}])
        self.assertEqual(metric_value(metrics_text(srv), "memory_audit_reads_folded_total"), 5)

    def test_status_reports_every_section(self):
        code, text = self.rest(self.server, "GET", "/api/v1/admin/status",
                               headers=[("X-Machine-Token", MACHINE)])
        self.assertEqual(code, 200, text)
        st = json.loads(text)
        self.assertEqual(sorted(st), ["breaker", "flags", "limiter", "redis", "store", "uptime",
                                      "version"])
        self.assertRegex(st["version"], r"^\d+\.\d+\.\d+")
        self.assertGreater(st["uptime"], 0)
        self.assertEqual(st["store"], {"backend": "sqlite", "state": "ok"})
        self.assertEqual(st["redis"], {"state": "disabled"})
        self.assertEqual(st["flags"], {"memory_pins_enabled": True, "rbac_enforce": True,
                                       "rbac_fail_open": False, "rbac_trust_x_roles": False,
                                       "chaos_allowed": False})
        self.assertEqual(st["breaker"], {"state": "closed", "errors_last_minute": 0})
        self.assertEqual(st["limiter"], {"rpm": 0, "burst": 0, "backend": "disabled"})
        resp = self.client.call(admin("GetStatus"), {}, metadata=[("x-machine-token", MACHINE)])
        self.assertEqual(resp.store["backend"], "sqlite")
        self.assertEqual(resp.breaker["state"], "closed")
        self.assertRpcError(SC.UNAUTHENTICATED, self.client.call, admin("GetStatus"), {})


class StatusLimiterTest(ServerTestCase, RestMixin):
    SERVER_ENV = {"RATE_LIMIT_RPM": "120", "RATE_LIMIT_BURST": "30", "CHAOS_ALLOWED": "true"}

    def test_status_shows_the_local_limiter_and_flags(self):
        code, text = self.rest(self.server, "GET", "/api/v1/admin/status")
        self.assertEqual(code, 200, text)
        st = json.loads(text)
        self.assertEqual(st["limiter"], {"rpm": 120, "burst": 30, "backend": "local"})
        self.assertTrue(st["flags"]["chaos_allowed"])
        self.assertFalse(st["flags"]["rbac_enforce"])


if __name__ == "__main__":
    unittest.main()
