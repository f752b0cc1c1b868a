"""gRPC interop tests for pinsd against the contract (API.md sections 1, 2, 4, 5, 8, 9).

Run: PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_grpc   (from tests/interop)
"""

import datetime
import gzip
import itertools
import re
import signal
import threading
import time
import unittest
import urllib.parse

import grpc
from google.protobuf import descriptor_pb2, json_format

import harness
from harness import (ADMIN, HEALTH, MEMORY_PINS, REFLECTION_V1, REFLECTION_V1ALPHA, ServerTestCase,
                     grpc_frame, mp, new_request, path_of)

SC = grpc.StatusCode
_uniq = itertools.count(1)

# HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3

# Settings of the shared servers: no rate limiting (tests make many calls) and no background
# sweeper during a run, so that CleanupExpiredPins counts are deterministic.
BASE_ENV = {"RATE_LIMIT_RPM": "0", "PINS_SWEEP_INTERVAL_SECONDS": "3600"}


def now_ns():
    return time.time_ns()


def nested(depth):
    """A JSON object nested depth objects deep, the outermost object counting as 1."""
    d = {"leaf": 1}
    for _ in range(depth - 1):
        d = {"n": d}
    return d


class PinsTestCase(ServerTestCase):
    SERVER_ENV = BASE_ENV

    def setUp(self):
        super().setUp()
        self.tenant = "t%d-%s" % (next(_uniq), self._testMethodName[:60])

    # -- short-hands (each returns the response message) --

    def upsert(self, key, value=None, tenant=None, **kw):
        req = {"tenant_id": self.tenant if tenant is None else tenant, "key": key,
               "value": {"v": 1} if value is None else value}
        req.update(kw)
        return self.client.call(mp("UpsertPin"), req)

    def get(self, key, tenant=None, **kw):
        return self.client.call(mp("GetPin"),
                                {"tenant_id": self.tenant if tenant is None else tenant, "key": key},
                                **kw)

    def list(self, tenant=None, **kw):
        req = {"tenant_id": self.tenant if tenant is None else tenant}
        req.update(kw)
        return self.client.call(mp("ListPins"), req)

    def delete(self, key, tenant=None, **kw):
        req = {"tenant_id": self.tenant if tenant is None else tenant, "key": key}
        req.update(kw)
        return self.client.call(mp("DeletePin"), req)

    def h2(self):
        c = self.server.h2()
        self.addCleanup(c.close)
        return c


# ================================================================================================
class UpsertGetDeleteTest(PinsTestCase):

    def assertFreshTimestamp(self, ts):
        self.assertLess(abs(ts.ToNanoseconds() - now_ns()), 30 * 10**9,
                        "timestamp %s is not close to now" % ts.ToJsonString())

    def test_upsert_creates_with_defaults(self):
        before = now_ns()
        r = self.upsert("alpha", {"a": "b", "n": 2, "l": [1, "x", None, True], "o": {"z": False}})
        p = r.pin
        self.assertTrue(r.created)
        self.assertGreater(p.id, 0)
        self.assertEqual(p.tenant_id, self.tenant)
        self.assertEqual(p.key, "alpha")
        self.assertEqual(json_format.MessageToDict(p.value),
                         {"a": "b", "n": 2.0, "l": [1.0, "x", None, True], "o": {"z": False}})
        self.assertEqual(p.source, "api")
        self.assertEqual(p.version, 1)
        self.assertTrue(p.HasField("created_at"))
        self.assertEqual(p.created_at, p.updated_at)
        self.assertFreshTimestamp(p.created_at)
        self.assertGreaterEqual(p.created_at.ToNanoseconds(), before - 2 * 10**9)
        self.assertFalse(p.HasField("ttl_seconds"))
        self.assertFalse(p.HasField("expires_at"))

    def test_upsert_empty_tenant_means_global(self):
        key = "global-default-%d" % next(_uniq)
        r = self.upsert(key, tenant="")
        self.assertEqual(r.pin.tenant_id, "global")
        self.assertTrue(r.created)
        g = self.get(key, tenant="global")
        self.assertEqual(g.pin, r.pin)
        g2 = self.get(key, tenant="")
        self.assertEqual(g2.pin, r.pin)
        d = self.delete(key, tenant="")
        self.assertTrue(d.deleted)
        self.assertEqual(d.tenant_id, "global")
        self.assertEqual(d.key, key)

    def test_upsert_again_updates_version_and_keeps_created_at(self):
        r1 = self.upsert("beta", {"x": 1})
        time.sleep(0.02)
        r2 = self.upsert("beta", {"x": 2}, source="agent-7")
        self.assertFalse(r2.created)
        self.assertEqual(r2.pin.version, 2)
        self.assertEqual(r2.pin.id, r1.pin.id)
        self.assertEqual(r2.pin.created_at, r1.pin.created_at)
        self.assertGreater(r2.pin.updated_at.ToNanoseconds(), r1.pin.updated_at.ToNanoseconds())
        self.assertEqual(json_format.MessageToDict(r2.pin.value), {"x": 2.0})
        self.assertEqual(r2.pin.source, "agent-7")
        r3 = self.upsert("beta", {"x": 3})
        self.assertEqual(r3.pin.version, 3)
        self.assertEqual(r3.pin.source, "api", "source defaults to api on every upsert")

    def test_get_returns_the_stored_pin(self):
        r = self.upsert("gamma", {"deep": {"list": [1, 2, {"k": "v"}]}}, source="s",
                        ttl_seconds=3600)
        g = self.get("gamma")
        self.assertEqual(g.pin, r.pin)
        self.assertEqual(g.pin.ttl_seconds.value, 3600)

    def test_delete_removes_and_echoes(self):
        self.upsert("delta")
        d = self.delete("delta")
        self.assertTrue(d.deleted)
        self.assertEqual(d.key, "delta")
        self.assertEqual(d.tenant_id, self.tenant)
        e = self.assertRpcError(SC.NOT_FOUND, self.get, "delta")
        self.assertIn("delta", e.details())
        e = self.assertRpcError(SC.NOT_FOUND, self.delete, "delta")
        self.assertIn("delta", e.details())

    def test_recreate_after_delete_starts_at_version_1(self):
        self.upsert("eps")
        self.upsert("eps")
        self.delete("eps")
        r = self.upsert("eps")
        self.assertTrue(r.created)
        self.assertEqual(r.pin.version, 1)

    def test_default_size_limits(self):
        # MEMORY_MAX_SIZE_BYTES default 1048576, MAX_REQUEST_BYTES default 4194304
        self.upsert("k", {"b": "x" * 1000000})
        self.assertRpcError(SC.INVALID_ARGUMENT, self.upsert, "k", {"b": "x" * 1100000})
        self.assertRpcError(SC.RESOURCE_EXHAUSTED, self.upsert, "k", {"b": "x" * 4200000})
        self.assertEqual(self.get("k").pin.version, 1)
        c = self.server.h2()
        self.addCleanup(c.close)
        req = new_request(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "k",
                                            "value": {"b": "x" * 4200000}})
        r = c.grpc_call(mp("UpsertPin"), req, wait=20)
        self.assertEqual(r.grpc_status, 8, r)
        r = c.grpc_call(mp("GetPin"), new_request(mp("GetPin"), {"tenant_id": self.tenant,
                                                                 "key": "k"}))
        self.assertEqual(r.grpc_status, 0, r)

    def test_tenants_are_isolated(self):
        other = self.tenant + "-other"
        self.upsert("shared", {"who": "a"})
        self.upsert("shared", {"who": "b"}, tenant=other)
        self.assertEqual(json_format.MessageToDict(self.get("shared").pin.value), {"who": "a"})
        self.assertEqual(json_format.MessageToDict(self.get("shared", tenant=other).pin.value),
                         {"who": "b"})
        self.assertEqual(self.get("shared", tenant=other).pin.version, 1)

    def test_not_found_message_contains_key(self):
        e = self.assertRpcError(SC.NOT_FOUND, self.get, "missing-key-42")
        self.assertIn("missing-key-42", e.details())
        e = self.assertRpcError(SC.NOT_FOUND, self.delete, "missing-key-43")
        self.assertIn("missing-key-43", e.details())

    def test_key_of_512_multibyte_characters_is_accepted(self):
        key = "\u00e9" * 512  # 512 characters, 1024 bytes
        r = self.upsert(key)
        self.assertEqual(r.pin.key, key)
        self.assertEqual(self.get(key).pin.key, key)

    def test_boundary_values_are_accepted(self):
        for what, kw in [("key512", dict(key="k" * 512)),
                         ("tenant256", dict(key="b1", tenant="t" * 256)),
                         ("source64", dict(key="b2", source="s" * 64)),
                         ("ttl0", dict(key="b3", ttl_seconds=0)),
                         ("ttlmax", dict(key="b4", ttl_seconds=31536000))]:
            with self.subTest(what):
                kw = dict(kw)
                key = kw.pop("key")
                r = self.upsert(key, **kw)
                self.assertEqual(r.pin.version, 1)
        r = self.client.call(mp("GetPin"), {"tenant_id": self.tenant, "key": "b4"})
        self.assertEqual(r.pin.ttl_seconds.value, 31536000)
        self.assertEqual(r.pin.expires_at.ToNanoseconds() - r.pin.updated_at.ToNanoseconds(),
                         31536000 * 10**9)
        r = self.list(limit=1000)
        self.assertEqual(r.limit, 1000)
        self.assertEqual(len(r.pins), r.total)


# ================================================================================================
class ExpectedVersionTest(PinsTestCase):

    def test_create_only_on_existing_is_already_exists(self):
        self.upsert("k")
        self.assertRpcError(SC.ALREADY_EXISTS, self.upsert, "k", {"v": 2}, expected_version=0)
        self.assertEqual(self.get("k").pin.version, 1)

    def test_create_only_on_missing_creates(self):
        r = self.upsert("new", expected_version=0)
        self.assertTrue(r.created)
        self.assertEqual(r.pin.version, 1)

    def test_wrong_version_is_aborted_and_right_version_applies(self):
        self.upsert("k")
        self.upsert("k")
        self.assertRpcError(SC.ABORTED, self.upsert, "k", {"v": 9}, expected_version=1)
        self.assertRpcError(SC.ABORTED, self.upsert, "k", {"v": 9}, expected_version=3)
        g = self.get("k")
        self.assertEqual(g.pin.version, 2)
        self.assertEqual(json_format.MessageToDict(g.pin.value), {"v": 1.0})
        r = self.upsert("k", {"v": 3}, expected_version=2)
        self.assertEqual(r.pin.version, 3)
        self.assertFalse(r.created)

    def test_expected_version_on_missing_pin_is_aborted(self):
        # N on a pin that does not exist: the current version is not N.
        self.assertRpcError(SC.ABORTED, self.upsert, "nope", expected_version=4)
        self.assertRpcError(SC.NOT_FOUND, self.get, "nope")

    def concurrent_upserts(self, key, n, **kw):
        """n concurrent UpsertPin calls over 4 separate connections (so that several workers
        race); returns the list of outcomes (response or StatusCode)."""
        clients = [harness.GrpcClient(self.server.target,
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(4)]
        try:
            futs = []
            for i in range(n):
                req = {"tenant_id": self.tenant, "key": key, "value": {"i": i}}
                req.update(kw)
                futs.append(clients[i % 4].future(mp("UpsertPin"), req, timeout=30))
            out = []
            for f in futs:
                try:
                    out.append(f.result(timeout=30))
                except grpc.RpcError as e:
                    out.append(e.code())
            return out
        finally:
            for c in clients:
                c.close()

    def test_concurrent_unconditional_upserts_get_distinct_versions(self):
        out = self.concurrent_upserts("race", 40)
        oks = [o for o in out if not isinstance(o, SC)]
        self.assertEqual(len(oks), 40, [o for o in out if isinstance(o, SC)])
        self.assertEqual(sorted(o.pin.version for o in oks), list(range(1, 41)))
        self.assertEqual(sum(1 for o in oks if o.created), 1)
        self.assertEqual(len({o.pin.id for o in oks}), 1)
        self.assertEqual(self.get("race").pin.version, 40)

    def test_concurrent_create_only_has_one_winner(self):
        out = self.concurrent_upserts("once", 20, expected_version=0)
        oks = [o for o in out if not isinstance(o, SC)]
        self.assertEqual(len(oks), 1, out)
        self.assertTrue(oks[0].created)
        self.assertEqual(sorted(set(o for o in out if isinstance(o, SC)), key=str),
                         [SC.ALREADY_EXISTS])

    def test_concurrent_compare_and_set_has_one_winner(self):
        self.upsert("cas")
        out = self.concurrent_upserts("cas", 20, expected_version=1)
        oks = [o for o in out if not isinstance(o, SC)]
        self.assertEqual(len(oks), 1, out)
        self.assertEqual(oks[0].pin.version, 2)
        self.assertEqual(sorted(set(o for o in out if isinstance(o, SC)), key=str), [SC.ABORTED])
        self.assertEqual(self.get("cas").pin.version, 2)

    def test_delete_with_wrong_version_is_aborted(self):
        self.upsert("k")
        self.upsert("k")
        self.assertRpcError(SC.ABORTED, self.delete, "k", expected_version=1)
        self.assertEqual(self.get("k").pin.version, 2)
        d = self.delete("k", expected_version=2)
        self.assertTrue(d.deleted)
        self.assertRpcError(SC.NOT_FOUND, self.get, "k")


# ================================================================================================
class ListTest(PinsTestCase):

    def test_order_is_created_at_desc_then_id_desc(self):
        keys = ["o%02d" % i for i in range(8)]
        pins = {}
        for k in keys:
            pins[k] = self.upsert(k).pin
        # Updating the oldest pin must not move it (order is by created_at, not updated_at).
        self.upsert("o00", {"updated": True})
        r = self.list()
        got = [p.key for p in r.pins]
        expected = sorted(keys, key=lambda k: (pins[k].created_at.ToNanoseconds(), pins[k].id),
                          reverse=True)
        self.assertEqual(got, expected)
        self.assertEqual(got[-1], "o00")
        self.assertEqual(r.total, 8)
        self.assertEqual(r.limit, 100, "default limit is 100")
        self.assertEqual(r.offset, 0)
        self.assertEqual(r.pins[-1].version, 2)
        pairs = [(p.created_at.ToNanoseconds(), p.id) for p in r.pins]
        self.assertEqual(pairs, sorted(pairs, reverse=True))

    def test_prefix_is_literal(self):
        for k in ["a%b1", "a_b2", "axb3", "a%%4", "ab5", "A%b6", "b%7"]:
            self.upsert(k)
        r = self.list(prefix="a%")
        self.assertEqual(sorted(p.key for p in r.pins), ["a%%4", "a%b1"])
        self.assertEqual(r.total, 2)
        r = self.list(prefix="a_")
        self.assertEqual([p.key for p in r.pins], ["a_b2"])
        self.assertEqual(r.total, 1)
        r = self.list(prefix="a")
        self.assertEqual(sorted(p.key for p in r.pins), ["a%%4", "a%b1", "a_b2", "ab5", "axb3"])
        r = self.list(prefix="%")
        self.assertEqual(len(r.pins), 0)
        self.assertEqual(r.total, 0)
        r = self.list(prefix="_")
        self.assertEqual(r.total, 0)

    def test_limit_offset_and_total(self):
        keys = ["p%02d" % i for i in range(7)]
        for k in keys:
            self.upsert(k)
        full = [p.key for p in self.list().pins]
        self.assertEqual(len(full), 7)
        r = self.list(limit=2, offset=1)
        self.assertEqual([p.key for p in r.pins], full[1:3])
        self.assertEqual(r.total, 7)
        self.assertEqual(r.limit, 2)
        self.assertEqual(r.offset, 1)
        r = self.list(limit=5, offset=5)
        self.assertEqual([p.key for p in r.pins], full[5:])
        r = self.list(limit=5, offset=50)
        self.assertEqual(len(r.pins), 0)
        self.assertEqual(r.total, 7)
        self.assertEqual(r.next_page_token, "")

    def test_page_token_round_trip_covers_every_pin_once(self):
        keys = {"q%02d" % i for i in range(11)}
        for k in sorted(keys):
            self.upsert(k)
        full = [p.key for p in self.list().pins]
        seen, token, pages = [], "", 0
        for _ in range(10):  # bounded: 11 pins / 3 per page = 4 pages
            r = self.list(limit=3, page_token=token) if token else self.list(limit=3)
            pages += 1
            self.assertLessEqual(len(r.pins), 3)
            seen.extend(p.key for p in r.pins)
            self.assertEqual(r.total, 11)
            token = r.next_page_token
            if not token:
                break
        self.assertEqual(pages, 4, "expected 4 pages of 3,3,3,2")
        self.assertEqual(seen, full, "pages in list order, each pin exactly once")
        self.assertEqual(len(set(seen)), 11)

    def test_list_scoped_by_tenant(self):
        self.upsert("x1")
        self.upsert("x2", tenant=self.tenant + "-b")
        r = self.list()
        self.assertEqual([p.key for p in r.pins], ["x1"])
        self.assertEqual(r.pins[0].tenant_id, self.tenant)


# ================================================================================================
class TtlAndCleanupTest(PinsTestCase):

    def test_ttl_sets_expires_at_and_hides_the_pin(self):
        r = self.upsert("ttl", ttl_seconds=1)
        p = r.pin
        self.assertEqual(p.ttl_seconds.value, 1)
        self.assertTrue(p.HasField("expires_at"))
        self.assertEqual(p.expires_at.ToNanoseconds() - p.updated_at.ToNanoseconds(), 10**9)
        self.upsert("keep")
        self.assertEqual(self.get("ttl").pin.version, 1)
        time.sleep(1.25)
        e = self.assertRpcError(SC.NOT_FOUND, self.get, "ttl")
        self.assertIn("ttl", e.details())
        r = self.list()
        self.assertEqual([x.key for x in r.pins], ["keep"])
        self.assertEqual(r.total, 1)
        r = self.list(include_expired=True)
        self.assertEqual(sorted(x.key for x in r.pins), ["keep", "ttl"])
        self.assertEqual(r.total, 2)
        d = self.delete("ttl")
        self.assertTrue(d.deleted)
        r = self.list(include_expired=True)
        self.assertEqual([x.key for x in r.pins], ["keep"])

    def test_upsert_restarts_the_clock_and_null_ttl_clears_expiry(self):
        self.upsert("k", ttl_seconds=1)
        time.sleep(0.7)
        r = self.upsert("k", ttl_seconds=1)
        self.assertEqual(r.pin.expires_at.ToNanoseconds() - r.pin.updated_at.ToNanoseconds(),
                         10**9)
        time.sleep(0.6)  # 1.3 s after the first write, 0.6 s after the second
        self.assertEqual(self.get("k").pin.version, 2)
        r = self.upsert("k")  # no ttl: clears expiry
        self.assertFalse(r.pin.HasField("ttl_seconds"))
        self.assertFalse(r.pin.HasField("expires_at"))
        time.sleep(0.6)
        g = self.get("k")
        self.assertFalse(g.pin.HasField("expires_at"))
        self.assertEqual(g.pin.version, 3)

    def test_expired_pin_is_recreated_by_upsert(self):
        self.upsert("k", ttl_seconds=1)
        time.sleep(1.2)
        r = self.upsert("k")
        # Whether an expired row counts as existing is a design choice; the pin must be live now.
        self.assertEqual(self.get("k").pin, r.pin)
        self.assertFalse(r.pin.HasField("expires_at"))

    def test_cleanup_expired_for_one_tenant(self):
        other = self.tenant + "-o"
        for k in ("e1", "e2", "e3"):
            self.upsert(k, ttl_seconds=1)
        self.upsert("live", ttl_seconds=3600)
        self.upsert("e4", ttl_seconds=1, tenant=other)
        time.sleep(1.2)
        before = now_ns()
        r = self.client.call(mp("CleanupExpiredPins"), {"tenant_id": self.tenant})
        self.assertEqual(r.deleted_count, 3)
        self.assertTrue(r.HasField("tenant_id"))
        self.assertEqual(r.tenant_id.value, self.tenant)
        self.assertTrue(r.HasField("timestamp"))
        self.assertLess(abs(r.timestamp.ToNanoseconds() - before), 30 * 10**9)
        self.assertEqual([p.key for p in self.list(include_expired=True).pins], ["live"])
        # the other tenant's expired pin is untouched
        self.assertEqual([p.key for p in self.list(tenant=other, include_expired=True).pins],
                         ["e4"])
        r = self.client.call(mp("CleanupExpiredPins"), {"tenant_id": self.tenant})
        self.assertEqual(r.deleted_count, 0)

    def test_cleanup_expired_for_all_tenants(self):
        other = self.tenant + "-o"
        self.upsert("a", ttl_seconds=1)
        self.upsert("b", ttl_seconds=1, tenant=other)
        time.sleep(1.2)
        r = self.client.call(mp("CleanupExpiredPins"), {})
        self.assertFalse(r.HasField("tenant_id"), "tenant_id unset when cleaning all tenants")
        self.assertTrue(r.HasField("timestamp"))
        self.assertGreaterEqual(r.deleted_count, 2)
        self.assertEqual(len(self.list(include_expired=True).pins), 0)
        self.assertEqual(len(self.list(tenant=other, include_expired=True).pins), 0)


# ================================================================================================
class ValidationTest(PinsTestCase):
    """Every rule of API.md section 4 answers INVALID_ARGUMENT and changes nothing."""

    def setUp(self):
        super().setUp()
        self.orig = self.upsert("existing", {"orig": True}, source="orig-src").pin

    def assertUnchanged(self):
        self.assertEqual(self.get("existing").pin, self.orig)

    def check_invalid(self, path, fields):
        e = self.assertRpcError(SC.INVALID_ARGUMENT, self.client.call, path, fields)
        self.assertTrue(e.details(), "INVALID_ARGUMENT needs a message")
        self.assertUnchanged()
        return e

    def test_invalid_keys(self):
        bad = {"empty": "", "513 chars": "k" * 513, "dot-dot": "a..b", "slash": "a/b",
               "backslash": "a\\b", "control \\x01": "a\x01b", "newline": "a\nb",
               "NUL": "a\x00b", "leading ..": "../existing", "tab": "a\tb"}
        for name, key in bad.items():
            with self.subTest(name, rpc="UpsertPin"):
                self.check_invalid(mp("UpsertPin"), {"tenant_id": self.tenant, "key": key,
                                                     "value": {"x": 1}})
            with self.subTest(name, rpc="GetPin"):
                self.check_invalid(mp("GetPin"), {"tenant_id": self.tenant, "key": key})
            with self.subTest(name, rpc="DeletePin"):
                self.check_invalid(mp("DeletePin"), {"tenant_id": self.tenant, "key": key})
        self.assertEqual(self.list(include_expired=True).total, 1)

    def test_key_invalid_utf8(self):
        # UpsertPinRequest: 1 tenant_id, 2 key (bytes 0xff 0xfe are not UTF-8), 3 value {}
        t = self.tenant.encode()
        raw = b"\x0a" + bytes([len(t)]) + t + b"\x12\x03a\xff\xfe" + b"\x1a\x00"
        e = self.assertRpcError(SC.INVALID_ARGUMENT, self.client.call, mp("UpsertPin"), raw)
        self.assertUnchanged()
        self.assertEqual(self.list(include_expired=True).total, 1, e.details())

    def test_invalid_tenants(self):
        for name, tenant in {"257 chars": "t" * 257, "control": "ten\x01ant",
                             "newline": "ten\nant", "NUL": "ten\x00ant"}.items():
            with self.subTest(name):
                self.check_invalid(mp("UpsertPin"), {"tenant_id": tenant, "key": "existing",
                                                     "value": {"x": 1}})
                self.check_invalid(mp("GetPin"), {"tenant_id": tenant, "key": "existing"})
                self.check_invalid(mp("ListPins"), {"tenant_id": tenant})

    def test_invalid_source(self):
        self.check_invalid(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "existing",
                                             "value": {"x": 1}, "source": "s" * 65})

    def test_invalid_ttl(self):
        for ttl in (-1, 31536001, -2147483648, 2147483647):
            with self.subTest(ttl=ttl):
                self.check_invalid(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "existing",
                                                     "value": {"x": 1}, "ttl_seconds": ttl})

    def test_invalid_list_arguments(self):
        for name, kw in {"limit 1001": {"limit": 1001}, "limit -1": {"limit": -1},
                         "offset -1": {"offset": -1},
                         "bad page_token": {"page_token": "not-a-token!"},
                         "garbage base64 page_token": {"page_token": "AAAA"}}.items():
            with self.subTest(name):
                req = {"tenant_id": self.tenant}
                req.update(kw)
                self.check_invalid(mp("ListPins"), req)

    def test_value_nested_65_deep_rejected_64_accepted(self):
        self.check_invalid(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "existing",
                                             "value": nested(65)})
        # 64 deep is valid. The response is not parsed here (the Python protobuf decoder stops
        # at 100 message levels; a 64-deep Struct is about 190).
        raw = self.client.call(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "deep64",
                                                 "value": nested(64)}, raw_response=True)
        self.assertIsInstance(raw, bytes)
        self.assertGreater(len(raw), 0)

    def test_wrong_field_type_is_invalid_argument(self):
        # field 2 (key) sent as a varint: wire type mismatch is malformed input
        raw = b"\x10\x05"
        self.assertRpcError(SC.INVALID_ARGUMENT, self.client.call, mp("GetPin"), raw)


class LimitsTest(PinsTestCase):
    """A server with small MEMORY_MAX_SIZE_BYTES and MAX_REQUEST_BYTES."""

    SERVER_ENV = dict(BASE_ENV, MEMORY_MAX_SIZE_BYTES="1024", MAX_REQUEST_BYTES="65536")

    def test_value_over_memory_max_size_is_invalid_argument(self):
        orig = self.upsert("k", {"small": "x" * 100}).pin
        e = self.assertRpcError(SC.INVALID_ARGUMENT, self.upsert, "k", {"big": "x" * 2000})
        self.assertTrue(e.details())
        self.assertEqual(self.get("k").pin, orig)
        self.assertRpcError(SC.INVALID_ARGUMENT, self.upsert, "new", {"big": "x" * 2000})
        self.assertRpcError(SC.NOT_FOUND, self.get, "new")
        self.assertEqual(self.upsert("k", {"ok": "x" * 500}).pin.version, 2)

    def test_message_over_max_request_bytes_is_resource_exhausted_grpcio(self):
        orig = self.upsert("k").pin
        self.assertRpcError(SC.RESOURCE_EXHAUSTED, self.upsert, "k", {"big": "x" * 100000})
        self.assertEqual(self.get("k").pin, orig)

    def test_message_over_max_request_bytes_keeps_connection_h2(self):
        c = self.h2()
        req = new_request(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "big",
                                            "value": {"big": "x" * 100000}})
        r = c.grpc_call(mp("UpsertPin"), req)
        self.assertEqual(r.grpc_status, 8, r)
        self.assertEqual(r.status, 200)
        # declared length alone over the limit (body never sent in full)
        sid = c.start(c.grpc_headers(mp("GetPin")),
                      b"\0" + (200000).to_bytes(4, "big") + b"\x0a" * 1000, end_stream=False)
        r2 = c.wait(sid, 10)
        self.assertEqual(r2.grpc_status, 8, r2)
        self.assertFalse(c.closed, "connection must survive a per-stream error")
        r3 = c.grpc_call(mp("UpsertPin"), new_request(mp("UpsertPin"), {
            "tenant_id": self.tenant, "key": "after", "value": {"a": 1}}))
        self.assertEqual(r3.grpc_status, 0, r3)
        self.assertRpcError(SC.NOT_FOUND, self.get, "big")


# ================================================================================================
class UnknownMethodTest(PinsTestCase):

    def test_unknown_method_is_unimplemented(self):
        self.assertRpcError(SC.UNIMPLEMENTED, self.client.call_raw_path,
                            "/memorypins.v1.MemoryPins/NoSuchMethod", b"")

    def test_unknown_service_is_unimplemented(self):
        self.assertRpcError(SC.UNIMPLEMENTED, self.client.call_raw_path,
                            "/no.such.v1.Service/Method", b"")

    def test_unknown_method_over_h2_is_trailers_only(self):
        c = self.h2()
        r = c.grpc_call("/no.such.v1.Service/Method", b"")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.grpc_status, 12, r)


# ================================================================================================
class GrpcOverRawHttp2Test(PinsTestCase):
    """gRPC specifics that grpcio cannot express, over python3-h2."""

    def get_req(self, key, tenant=None):
        return new_request(mp("GetPin"), {"tenant_id": tenant or self.tenant, "key": key})

    def decode_get(self, r):
        msgs = r.messages()
        self.assertEqual(len(msgs), 1, r)
        return harness.message_class("memorypins.v1.GetPinResponse").FromString(msgs[0])

    def test_happy_call_has_headers_data_trailers(self):
        pin = self.upsert("k").pin
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"))
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("content-type", "headers").startswith("application/grpc"))
        self.assertFalse(r.headers_ended_stream)
        self.assertIsNotNone(r.trailers, "grpc-status must be in trailers after data")
        self.assertEqual(r.grpc_status, 0)
        self.assertEqual(self.decode_get(r).pin, pin)
        self.assertIsNone(r.header("grpc-status", "headers"))

    def test_application_grpc_proto_content_type_accepted(self):
        pin = self.upsert("k").pin
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), content_type="application/grpc+proto")
        self.assertEqual(r.grpc_status, 0, r)
        self.assertEqual(self.decode_get(r).pin, pin)

    def test_wrong_content_type_is_415(self):
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), content_type="text/plain")
        self.assertEqual(r.status, 415, r)
        self.assertTrue(r.header("x-request-id"), "every response carries x-request-id: %r" % r)
        # the connection survives
        self.upsert("k")
        self.assertEqual(c.grpc_call(mp("GetPin"), self.get_req("k")).grpc_status, 0)

    def test_error_is_trailers_only(self):
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("missing"))
        self.assertTrue(r.headers_ended_stream, "NOT_FOUND must be a Trailers-Only response: %r" % r)
        self.assertIsNone(r.trailers)
        self.assertEqual(r.data, b"")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("content-type").startswith("application/grpc"), r)
        self.assertEqual(r.grpc_status, 5)
        self.assertIn("missing", r.grpc_message)

    def test_grpc_message_is_percent_encoded(self):
        key = "caf\u00e9 50%41 \u6f22"
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req(key))
        self.assertEqual(r.grpc_status, 5, r)
        raw = r.grpc_message_raw
        self.assertIsNotNone(raw)
        self.assertTrue(all(0x20 <= ord(ch) <= 0x7e for ch in raw),
                        "grpc-message must be printable ASCII: %r" % raw)
        self.assertIn("%C3%A9", raw.upper(), raw)
        self.assertIn("%E6%BC%A2", raw.upper(), raw)
        self.assertIn("%2541", raw.upper(), "a literal '%' must be encoded as %25: " + raw)
        self.assertIn(key, urllib.parse.unquote(raw, errors="strict"))
        # grpcio decodes it back too
        e = self.assertRpcError(SC.NOT_FOUND, self.get, key)
        self.assertIn(key, e.details())

    def test_grpc_message_of_validation_errors_is_printable_ascii(self):
        c = self.h2()
        for name, fields in {"newline key": {"key": "a\nb"}, "control key": {"key": "a\x01b"},
                             "CR LF tenant": {"key": "k", "tenant_id": "t\r\nx-evil: 1"},
                             "non-ASCII bad key": {"key": "\u00e9/\u00e9"}}.items():
            with self.subTest(name):
                req = new_request(mp("GetPin"), fields)
                r = c.grpc_call(mp("GetPin"), req)
                self.assertEqual(r.grpc_status, 3, r)
                raw = r.grpc_message_raw
                self.assertTrue(raw, r)
                self.assertTrue(all(0x20 <= ord(ch) <= 0x7e for ch in raw), repr(raw))
                self.assertIsNone(r.header("x-evil"), "header injection through grpc-message")
        self.assertFalse(c.closed)

    def test_long_non_ascii_key_in_not_found_message(self):
        key = "\u00e9" * 512
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req(key))
        self.assertEqual(r.grpc_status, 5, r)
        self.assertIn(key, r.grpc_message)
        e = self.assertRpcError(SC.NOT_FOUND, self.get, key)
        self.assertIn(key, e.details())

    def test_unary_with_zero_or_two_messages_is_an_error_not_a_hang(self):
        self.upsert("k")
        c = self.h2()
        # HEADERS with END_STREAM and no message at all
        sid = c.start(c.grpc_headers(mp("GetPin")), None, end_stream=True)
        r = c.wait(sid, 5)
        self.assertIsNotNone(r.grpc_status, r)
        self.assertNotEqual(r.grpc_status, 0, r)
        # two messages on a unary method
        one = grpc_frame(self.get_req("k").SerializeToString())
        r = c.grpc_call(mp("GetPin"), framed=one + one, wait=5)
        self.assertIsNotNone(r.grpc_status, r)
        self.assertNotEqual(r.grpc_status, 0, r)
        self.assertFalse(c.closed)
        self.assertEqual(c.grpc_call(mp("GetPin"), self.get_req("k")).grpc_status, 0)

    def test_grpc_message_space_encoding_decodes(self):
        key = "two words"
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req(key))
        self.assertEqual(r.grpc_status, 5)
        raw = r.grpc_message_raw
        # Space may be sent raw (the gRPC spec allows 0x20) or as %20; either must decode.
        self.assertTrue("two%20words" in raw or "two words" in raw, raw)
        self.assertIn(key, urllib.parse.unquote(raw))

    def test_grpc_timeout_honoured(self):
        self.upsert("k")
        c = self.h2()
        for t in ("1n", "1u", "0n", "0S"):
            with self.subTest(timeout=t):
                r = c.grpc_call(mp("GetPin"), self.get_req("k"), timeout=t)
                self.assertEqual(r.grpc_status, 4, r)
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), timeout="5S")
        self.assertEqual(r.grpc_status, 0, r)
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), timeout="30000000u")
        self.assertEqual(r.grpc_status, 0, r)

    def test_grpc_timeout_honoured_grpcio(self):
        # grpcio 1.51 rounds a 1 us deadline up to "grpc-timeout: 1m" on the wire, so a server
        # that answers within that millisecond is right to answer OK; the server-side check is
        # test_grpc_timeout_honoured ("1n", "1u"). Here: only OK or DEADLINE_EXCEEDED, no hang,
        # and the channel keeps working.
        self.upsert("k")
        outcomes = set()
        t0 = time.monotonic()
        for _ in range(20):
            try:
                self.get("k", timeout=0.000001)
                outcomes.add("OK")
            except grpc.RpcError as e:
                outcomes.add(e.code())
        self.assertLess(time.monotonic() - t0, 10)
        self.assertTrue(outcomes <= {"OK", SC.DEADLINE_EXCEEDED}, outcomes)
        # a deadline that has passed for certain before the call starts, over grpcio
        self.assertRpcError(SC.DEADLINE_EXCEEDED, self.client.call, mp("GetPin"),
                            {"tenant_id": self.tenant, "key": "k"},
                            metadata=None, timeout=-1)
        self.assertEqual(self.get("k", timeout=5).pin.version, 1)

    def test_compressed_flag_without_encoding_is_error(self):
        self.upsert("k")
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), compressed=True)
        self.assertIn(r.grpc_status, (13, 12), r)
        self.assertEqual(c.grpc_call(mp("GetPin"), self.get_req("k")).grpc_status, 0)

    def test_gzip_either_decoded_or_unimplemented_with_accept_encoding(self):
        pin = self.upsert("k").pin
        c = self.h2()
        payload = gzip.compress(self.get_req("k").SerializeToString())
        r = c.grpc_call(mp("GetPin"), framed=grpc_frame(payload, compressed=True),
                        extra=[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "identity")])
        self.assertIn(r.grpc_status, (0, 12), r)
        if r.grpc_status == 12:
            acc = r.header("grpc-accept-encoding")
            self.assertIsNotNone(acc, "UNIMPLEMENTED compression needs grpc-accept-encoding: %r" % r)
            self.assertNotIn("gzip", [x.strip() for x in acc.split(",")],
                             "server advertises gzip but refused it")
        else:
            flag, body = harness.parse_grpc_frames(r.data)[0]
            if flag:
                enc = r.header("grpc-encoding", "headers")
                self.assertEqual(enc, "gzip", r)
                body = gzip.decompress(body)
            msg = harness.message_class("memorypins.v1.GetPinResponse").FromString(body)
            self.assertEqual(msg.pin, pin)
        # an unknown encoding is always UNIMPLEMENTED
        r = c.grpc_call(mp("GetPin"), framed=grpc_frame(b"xx", compressed=True),
                        extra=[("grpc-encoding", "x-unknown-codec")])
        self.assertEqual(r.grpc_status, 12, r)
        self.assertIsNotNone(r.header("grpc-accept-encoding"), r)

    def test_missing_te_trailers_is_tolerated(self):
        pin = self.upsert("k").pin
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), te=False)
        self.assertEqual(r.grpc_status, 0, r)
        self.assertEqual(self.decode_get(r).pin, pin)

    def test_request_id_echoed_or_generated(self):
        self.upsert("k")
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), self.get_req("k"), extra=[("x-request-id", "interop-abc-123")])
        self.assertEqual(r.grpc_status, 0)
        self.assertEqual(r.header("x-request-id", "headers"), "interop-abc-123")
        r = c.grpc_call(mp("GetPin"), self.get_req("missing"),
                        extra=[("x-request-id", "interop-err-9")])
        self.assertEqual(r.grpc_status, 5)
        self.assertEqual(r.header("x-request-id"), "interop-err-9")
        ids = []
        for key in ("k", "missing"):
            r = c.grpc_call(mp("GetPin"), self.get_req(key))
            rid = r.header("x-request-id")
            self.assertTrue(rid, "x-request-id missing: %r" % r)
            ids.append(rid)
        self.assertNotEqual(ids[0], ids[1], "generated request ids must differ")
        # grpcio sees it as initial metadata
        _, call = self.client.call(mp("GetPin"), {"tenant_id": self.tenant, "key": "k"},
                                   metadata=[("x-request-id", "grpcio-rid-1")], with_call=True)
        md = dict(call.initial_metadata())
        self.assertEqual(md.get("x-request-id"), "grpcio-rid-1")

    def test_malformed_protobuf_is_invalid_argument_and_connection_survives(self):
        self.upsert("k")
        c = self.h2()
        for name, body in {"truncated length": b"\x12\x40ab",
                           "huge length": b"\x12\xff\xff\xff\xff\x0f",
                           "bad wire type": b"\x17\x01",
                           "truncated varint": b"\x08\xff"}.items():
            with self.subTest(name):
                r = c.grpc_call(mp("GetPin"), body)
                self.assertEqual(r.grpc_status, 3, r)
        self.assertFalse(c.closed)
        self.assertEqual(c.grpc_call(mp("GetPin"), self.get_req("k")).grpc_status, 0)

    def test_truncated_grpc_frame_is_an_error_not_a_hang(self):
        self.upsert("k")
        c = self.h2()
        r = c.grpc_call(mp("GetPin"), framed=b"\x00\x00\x00\x00\x10abc")
        self.assertIsNotNone(r.grpc_status, r)
        self.assertNotEqual(r.grpc_status, 0, r)
        self.assertEqual(c.grpc_call(mp("GetPin"), self.get_req("k")).grpc_status, 0)

    def test_client_reset_mid_request_does_not_affect_other_streams(self):
        pin = self.upsert("k").pin
        c = self.h2()
        a = c.start(c.grpc_headers(mp("UpsertPin")), b"\x00\x00\x00\x01\x00" + b"\x0a\x02ab",
                    end_stream=False)
        b = c.start(c.grpc_headers(mp("GetPin")), grpc_frame(self.get_req("k").SerializeToString()))
        c.reset(a)
        rb = c.wait(b)
        self.assertEqual(rb.grpc_status, 0, rb)
        self.assertEqual(self.decode_get(rb).pin, pin)
        # a reset after the request was fully sent too
        d = c.start(c.grpc_headers(mp("GetPin")), grpc_frame(self.get_req("k").SerializeToString()))
        c.reset(d)
        c.pump_for(0.2)
        self.assertFalse(c.closed, "a client RST_STREAM must not close the connection")
        rc = c.grpc_call(mp("GetPin"), self.get_req("k"))
        self.assertEqual(rc.grpc_status, 0, rc)
        self.assertEqual(self.get("k").pin, pin)

    def test_100_concurrent_streams_on_one_connection_h2(self):
        c = self.h2()
        sids = []
        for i in range(100):
            req = new_request(mp("UpsertPin"), {"tenant_id": self.tenant, "key": "c%03d" % i,
                                                "value": {"i": i}})
            sids.append(c.start(c.grpc_headers(mp("UpsertPin")), grpc_frame(req.SerializeToString())))
        rs = c.wait_all(sids, timeout=30)
        bad = [r for r in rs if r.grpc_status != 0]
        self.assertEqual(bad, [], "%d of 100 streams failed" % len(bad))
        out = harness.message_class("memorypins.v1.UpsertPinResponse")
        keys = sorted(out.FromString(r.messages()[0]).pin.key for r in rs)
        self.assertEqual(keys, ["c%03d" % i for i in range(100)])
        self.assertEqual(self.list(limit=1000).total, 100)

    def test_100_concurrent_calls_on_one_grpcio_channel(self):
        for i in range(10):
            self.upsert("g%02d" % i, {"i": i})
        futs = [self.client.future(mp("GetPin"), {"tenant_id": self.tenant, "key": "g%02d" % (i % 10)},
                                   timeout=30) for i in range(100)]
        res = [f.result(timeout=30) for f in futs]
        self.assertEqual([r.pin.key for r in res], ["g%02d" % (i % 10) for i in range(100)])


# ================================================================================================
class HealthTest(PinsTestCase):

    def check(self, service, client=None):
        return (client or self.client).call(path_of(HEALTH, "Check"), {"service": service})

    def test_check_known_services_serving(self):
        for svc in ("", MEMORY_PINS, ADMIN):
            with self.subTest(service=svc):
                self.assertEqual(self.check(svc).status, SERVING)

    def test_check_unknown_service_not_found(self):
        self.assertRpcError(SC.NOT_FOUND, self.check, "no.such.Service")

    def test_every_listener_serves(self):
        s = self.fresh_server(nports=2)
        for port in s.ports:
            with self.subTest(port=port):
                cl = harness.GrpcClient("127.0.0.1:%d" % port)
                self.addCleanup(cl.close)
                self.assertEqual(self.check("", cl).status, SERVING)
                with harness.H2Client(port) as c:
                    self.assertEqual(c.get("/health").status, 200)

    def test_watch_serving_then_not_serving_on_sigterm(self):
        s = self.fresh_server()
        cl = s.client()
        self.addCleanup(cl.close)
        stream = cl.server_stream(path_of(HEALTH, "Watch"), {"service": ""}, timeout=20)
        first = next(stream)
        self.assertEqual(first.status, SERVING)
        seen = []
        err = []

        def reader():
            try:
                for m in stream:
                    seen.append(m.status)
                    if m.status != SERVING:
                        break
            except grpc.RpcError as e:
                err.append(e.code())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(0.2)
        self.assertEqual(seen, [], "no update expected while serving")
        s.signal(signal.SIGTERM)
        t.join(timeout=float(s.env()["PINS_DRAIN_SECONDS"]) + 5)
        self.assertFalse(t.is_alive(), "Watch stream neither reported NOT_SERVING nor ended")
        stream.cancel()
        self.assertTrue(NOT_SERVING in seen or err or seen == [],
                        "expected NOT_SERVING or end of stream, got %r %r" % (seen, err))
        self.assertNotIn(SC.DEADLINE_EXCEEDED, err, "Watch hung until its deadline")
        self.assertEqual(s.wait_exit(10), 0, "exit code after SIGTERM")

    def test_watch_unknown_service_reports_service_unknown(self):
        stream = self.client.server_stream(path_of(HEALTH, "Watch"), {"service": "no.such.Svc"},
                                           timeout=5)
        try:
            first = next(stream)
            self.assertEqual(first.status, SERVICE_UNKNOWN)
        finally:
            stream.cancel()


# ================================================================================================
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError("unparseable metrics line: %r" % line)
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def sample(samples, name, **labels):
    vals = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    return vals


class HttpEndpointsTest(PinsTestCase):

    def test_health(self):
        c = self.h2()
        r = c.get("/health", extra=[("x-request-id", "health-rid-1")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("x-request-id"), "health-rid-1", r)
        self.assertIn("application/json", r.header("content-type") or "")
        body = harness.json_body(r)
        self.assertEqual(body["status"], "healthy")
        self.assertEqual(body["service"], "pinsd")
        self.assertIsInstance(body["version"], str)
        self.assertTrue(body["version"])
        ts = body["timestamp"]
        self.assertRegex(ts, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        t = datetime.datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc)
        self.assertLess(abs(t.timestamp() - time.time()), 30)

    def test_ready(self):
        c = self.h2()
        for path in ("/ready", "/health/ready"):
            with self.subTest(path):
                r = c.get(path)
                self.assertEqual(r.status, 200, r)
                body = harness.json_body(r)
                self.assertIs(body["ready"], True)
                self.assertEqual(body["checks"]["store"], "ok")

    def test_metrics(self):
        s = self.fresh_server()
        cl = s.client()
        self.addCleanup(cl.close)
        t = "metrics"
        cl.call(mp("UpsertPin"), {"tenant_id": t, "key": "m", "value": {"a": 1}})
        for _ in range(3):
            cl.call(mp("GetPin"), {"tenant_id": t, "key": "m"})
        try:
            cl.call(mp("GetPin"), {"tenant_id": t, "key": "absent"})
        except grpc.RpcError:
            pass
        with s.h2() as c:
            text, samples = None, None
            deadline = time.monotonic() + 3
            while True:  # counters may land just after the reply; bounded wait
                r = c.get("/metrics")
                self.assertEqual(r.status, 200, r)
                text = r.data.decode("utf-8")
                samples = parse_metrics(text)
                got = sample(samples, "grpc_server_handled_total", grpc_service=MEMORY_PINS,
                             grpc_method="GetPin", grpc_code="OK")
                if got == [3.0] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertEqual(got, [3.0], "GetPin OK count")
        self.assertEqual(sample(samples, "grpc_server_handled_total", grpc_service=MEMORY_PINS,
                                grpc_method="GetPin", grpc_code="NotFound")
                         or sample(samples, "grpc_server_handled_total", grpc_service=MEMORY_PINS,
                                   grpc_method="GetPin", grpc_code="NOT_FOUND"), [1.0])
        self.assertEqual(sample(samples, "grpc_server_handled_total", grpc_service=MEMORY_PINS,
                                grpc_method="UpsertPin", grpc_code="OK"), [1.0])
        started = sample(samples, "grpc_server_started_total")
        self.assertTrue(started, "grpc_server_started_total missing")
        gp = sample(samples, "grpc_server_started_total", grpc_method="GetPin")
        if gp:
            self.assertEqual(gp, [4.0])
        else:
            self.assertGreaterEqual(sum(started), 5)
        buckets = [(l, v) for n, l, v in samples if n == "grpc_server_handling_seconds_bucket"
                   and l.get("grpc_method") == "GetPin" and l.get("grpc_service") == MEMORY_PINS]
        self.assertTrue(buckets, "grpc_server_handling_seconds_bucket for GetPin missing")
        inf = [v for l, v in buckets if l.get("le") == "+Inf"]
        self.assertEqual(inf, [4.0])
        self.assertEqual(sample(samples, "memory_pins_operations_total", operation="upsert",
                                status="success"), [1.0])
        self.assertEqual(sample(samples, "memory_pins_operations_total", operation="get",
                                status="success"), [3.0])
        self.assertEqual(sample(samples, "memory_pins_operations_total", operation="get",
                                status="not_found"), [1.0])
        lat = [(l, v) for n, l, v in samples if n == "memory_pins_latency_seconds_bucket"
               and l.get("operation") == "upsert"]
        self.assertTrue(lat, "memory_pins_latency_seconds_bucket{operation=upsert} missing")
        les = sorted((float(l["le"]), v) for l, v in lat)
        self.assertEqual(les[0][0], 0.0001, "smallest bucket 0.0001 s")
        self.assertIn(1.0, [le for le, _ in les])
        self.assertEqual([v for _, v in les], sorted(v for _, v in les), "buckets are cumulative")
        self.assertEqual(les[-1], (float("inf"), 1.0))
        self.assertIn("# TYPE memory_pins_latency_seconds histogram", text)
        self.assertIn("# TYPE grpc_server_handled_total counter", text)


# ================================================================================================
class ReflectionTest(PinsTestCase):

    EXPECTED = {MEMORY_PINS, ADMIN, HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA}

    def reflect(self, service, requests):
        return self.client.bidi_stream(path_of(service, "ServerReflectionInfo"), requests,
                                       timeout=10)

    def test_list_services_and_file_containing_symbol(self):
        for svc in (REFLECTION_V1, REFLECTION_V1ALPHA):
            with self.subTest(svc):
                rs = self.reflect(svc, [
                    {"list_services": ""},
                    {"file_containing_symbol": MEMORY_PINS},
                    {"file_by_filename": "memorypins/v1/memory_pins.proto"},
                    {"file_containing_symbol": "no.such.Symbol"},
                ])
                self.assertEqual(len(rs), 4)
                names = {s.name for s in rs[0].list_services_response.service}
                self.assertTrue(self.EXPECTED <= names, "missing %s" % (self.EXPECTED - names))
                for r in rs[1:3]:
                    fds = [descriptor_pb2.FileDescriptorProto.FromString(b)
                           for b in r.file_descriptor_response.file_descriptor_proto]
                    self.assertTrue(fds, r)
                    self.assertEqual(fds[0].name, "memorypins/v1/memory_pins.proto")
                    svcs = {s.name: [m.name for m in s.method] for s in fds[0].service}
                    self.assertEqual(svcs.get("MemoryPins"),
                                     ["UpsertPin", "GetPin", "ListPins", "DeletePin",
                                      "CleanupExpiredPins", "WatchPins"])
                self.assertEqual(rs[3].error_response.error_code, 5, rs[3])

    def test_symbols_and_dependencies_resolve(self):
        rs = self.reflect(REFLECTION_V1, [
            {"file_containing_symbol": "memorypins.v1.MemoryPins.GetPin"},
            {"file_containing_symbol": "memorypins.v1.UpsertPinRequest"},
            {"file_containing_symbol": "memorypins.v1.WatchPinsResponse.EventType"},
            {"file_by_filename": "google/protobuf/struct.proto"},
            {"file_by_filename": "google/protobuf/timestamp.proto"},
            {"file_by_filename": "google/protobuf/wrappers.proto"},
            {"file_by_filename": "no/such/file.proto"},
        ])
        self.assertEqual(len(rs), 7)
        names = []
        for r in rs[:6]:
            fdp = r.file_descriptor_response.file_descriptor_proto
            self.assertTrue(fdp, r)
            names.append(descriptor_pb2.FileDescriptorProto.FromString(fdp[0]).name)
        self.assertEqual(names, ["memorypins/v1/memory_pins.proto"] * 3 + [
            "google/protobuf/struct.proto", "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto"])
        self.assertEqual(rs[6].error_response.error_code, 5, rs[6])
        # the file descriptors returned must build a usable pool (dependencies included)
        from google.protobuf import descriptor_pool
        pool = descriptor_pool.DescriptorPool()
        got = {}
        for r in rs[:6]:
            for b in r.file_descriptor_response.file_descriptor_proto:
                fd = descriptor_pb2.FileDescriptorProto.FromString(b)
                got[fd.name] = fd
        added = set()
        for _ in range(len(got)):  # dependencies first, bounded
            for name, fd in got.items():
                if name not in added and all(d in added for d in fd.dependency):
                    pool.Add(fd)
                    added.add(name)
        self.assertIn("memorypins/v1/memory_pins.proto", added, sorted(got))
        self.assertEqual(pool.FindServiceByName(MEMORY_PINS).FindMethodByName("GetPin")
                         .output_type.full_name, "memorypins.v1.GetPinResponse")

    def test_file_containing_admin_and_health_symbols(self):
        rs = self.reflect(REFLECTION_V1, [{"file_containing_symbol": ADMIN},
                                          {"file_containing_symbol": "grpc.health.v1.Health"},
                                          {"file_containing_symbol": "memorypins.v1.Pin"}])
        names = [descriptor_pb2.FileDescriptorProto.FromString(
            r.file_descriptor_response.file_descriptor_proto[0]).name for r in rs]
        self.assertEqual(names, ["memorypins/v1/admin.proto", "grpc/health/v1/health.proto",
                                 "memorypins/v1/memory_pins.proto"])


# ================================================================================================
class ConfigTest(ServerTestCase):
    """API.md section 8: environment, flags of the same names, bad values stop the start."""

    @classmethod
    def setUpClass(cls):  # no shared server
        pass

    @classmethod
    def tearDownClass(cls):
        pass

    def run_bad(self, env, args=()):
        s = harness.Server(dict(BASE_ENV, **env), args=args)
        self.addCleanup(s.cleanup)
        with self.assertRaises(RuntimeError) as cm:
            s.start(ready_timeout=5)
        self.assertIsNotNone(s.returncode, "pinsd kept running with a bad value: %s" % cm.exception)
        self.assertNotEqual(s.returncode, 0)
        with open(s.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def test_bad_values_stop_the_start_naming_the_variable(self):
        for var, val in [("MAX_REQUEST_BYTES", "lots"), ("MEMORY_MAX_SIZE_BYTES", "-1"),
                         ("RATE_LIMIT_RPM", "ten"), ("PINS_WORKERS", "0"),
                         ("PINS_DRAIN_SECONDS", "x"), ("LOG_FORMAT", "yaml"),
                         ("PINS_LISTEN", "127.0.0.1:notaport")]:
            with self.subTest(var):
                err = self.run_bad({var: val})
                self.assertIn(var, err)

    def test_flag_overrides_environment(self):
        s = self.fresh_server(dict(BASE_ENV, MEMORY_MAX_SIZE_BYTES="1024"),
                              args=["--memory-max-size-bytes", "100000"])
        cl = s.client()
        self.addCleanup(cl.close)
        r = cl.call(mp("UpsertPin"), {"tenant_id": "cfg", "key": "k", "value": {"b": "x" * 5000}})
        self.assertEqual(r.pin.version, 1)
        s2 = self.fresh_server(dict(BASE_ENV, MEMORY_MAX_SIZE_BYTES="100000"),
                               args=["--MEMORY_MAX_SIZE_BYTES=1024"])
        cl2 = s2.client()
        self.addCleanup(cl2.close)
        self.assertRpcError(SC.INVALID_ARGUMENT, cl2.call, mp("UpsertPin"),
                            {"tenant_id": "cfg", "key": "k", "value": {"b": "x" * 5000}})


# ================================================================================================
class LifecycleTest(ServerTestCase):
    """Fresh servers: kill -9 durability and SIGTERM drain."""

    @classmethod
    def setUpClass(cls):  # no shared server
        pass

    @classmethod
    def tearDownClass(cls):
        pass

    def test_acknowledged_upserts_survive_kill_9(self):
        s = self.fresh_server(BASE_ENV)
        cl = s.client()
        acked = {}
        for i in range(200):
            key = "dur-%03d" % i
            r = cl.call(mp("UpsertPin"), {"tenant_id": "durable", "key": key, "value": {"i": i}})
            acked[key] = r.pin.version
            if i % 4 == 0:
                r = cl.call(mp("UpsertPin"), {"tenant_id": "durable", "key": key,
                                              "value": {"i": i, "again": True}})
                acked[key] = r.pin.version
        cl.close()
        s.kill()
        self.assertEqual(s.returncode, -9)
        s2 = harness.Server(BASE_ENV, data_dir=s.data_dir, tmp=s.tmp)
        self.addCleanup(self.assertNoSanitizerReport, s2)
        self.addCleanup(s2.cleanup)
        self.addCleanup(harness._print_tail_on_failure, self, s2)
        s2.start()
        cl2 = s2.client()
        self.addCleanup(cl2.close)
        missing = []
        for key, ver in acked.items():
            try:
                p = cl2.call(mp("GetPin"), {"tenant_id": "durable", "key": key}).pin
                if p.version != ver:
                    missing.append((key, "version %d != %d" % (p.version, ver)))
            except grpc.RpcError as e:
                missing.append((key, e.code()))
        self.assertEqual(missing, [])
        self.assertEqual(cl2.call(mp("ListPins"), {"tenant_id": "durable", "limit": 1000}).total,
                         200)

    def test_sigterm_drains_in_flight_calls_and_exits_0(self):
        drain = 3
        s = self.fresh_server(dict(BASE_ENV, PINS_DRAIN_SECONDS=str(drain)))
        watch_client = s.client()
        self.addCleanup(watch_client.close)
        watch = watch_client.server_stream(path_of(HEALTH, "Watch"), {"service": ""}, timeout=30)
        self.assertEqual(next(watch).status, SERVING)
        watch_seen, watch_err = [], []

        def watch_reader():
            try:
                for m in watch:
                    watch_seen.append(m.status)
            except grpc.RpcError as e:
                watch_err.append(e.code())

        wt = threading.Thread(target=watch_reader, daemon=True)
        wt.start()

        # a request half sent on a raw HTTP/2 connection: in flight when SIGTERM arrives
        h = s.h2()
        self.addCleanup(h.close)
        body = grpc_frame(new_request(mp("UpsertPin"), {"tenant_id": "drain", "key": "half",
                                                        "value": {"h": 1}}).SerializeToString())
        half = h.start(h.grpc_headers(mp("UpsertPin")), body[:7], end_stream=False)

        stop = threading.Event()
        results = []  # (thread, key, outcome)
        lock = threading.Lock()

        def worker(n):
            cl = s.client()
            try:
                for j in range(100000):
                    if stop.is_set():
                        break
                    key = "w%d-%05d" % (n, j)
                    try:
                        cl.call(mp("UpsertPin"), {"tenant_id": "drain", "key": key,
                                                  "value": {"j": j}}, timeout=15)
                        out = "OK"
                    except grpc.RpcError as e:
                        out = e.code()
                    with lock:
                        results.append((n, key, out))
                    if out != "OK":
                        break
            finally:
                cl.close()

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        # finish the half-sent request during the drain window
        time.sleep(0.3)
        h.pump_for(0.1)
        goaway_seen = h.goaway is not None
        try:
            h.send_body(half, body[7:], end_stream=True)
        except OSError:
            pass
        alive_during_drain = s.alive()
        if alive_during_drain:
            probe = harness.GrpcClient(s.target)
            try:
                st = probe.call(path_of(HEALTH, "Check"), {"service": ""}, timeout=1).status
                self.assertNotEqual(st, SERVING, "a new connection during drain got SERVING")
            except grpc.RpcError as e:
                self.assertIn(e.code(), (SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED))
            finally:
                probe.close()
        rc = s.wait_exit(drain + 2 - (time.monotonic() - t0))
        elapsed = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(timeout=20)
        self.assertFalse(any(t.is_alive() for t in threads), "a client call hung")
        wt.join(timeout=5)
        self.assertIsNotNone(rc, "pinsd did not exit within PINS_DRAIN_SECONDS + 2 s")
        self.assertEqual(rc, 0)
        self.assertLessEqual(elapsed, drain + 2)
        self.assertTrue(goaway_seen or h.goaway is not None or h.closed,
                        "no GOAWAY on an open connection after SIGTERM")
        hr = h.wait(half, 5)
        self.assertTrue(hr.grpc_status in (0, 14) or hr.reset_code is not None or hr.goaway,
                        "half-sent call: %r" % hr)
        bad = [(n, k, o) for n, k, o in results if o not in ("OK", SC.UNAVAILABLE)]
        self.assertEqual(bad, [], "calls must succeed or fail with UNAVAILABLE")
        self.assertGreater(sum(1 for r in results if r[2] == "OK"), 10, "no traffic before SIGTERM")
        self.assertFalse(wt.is_alive(), "health Watch did not end after the server exited")
        self.assertTrue(NOT_SERVING in watch_seen or watch_err,
                        "Watch: neither NOT_SERVING nor end of stream: %r" % watch_seen)
        self.assertTrue(harness.port_refuses(s.port), "new connections after exit must be refused")
        # every acknowledged upsert is durable
        s2 = harness.Server(BASE_ENV, data_dir=s.data_dir, tmp=s.tmp)
        self.addCleanup(self.assertNoSanitizerReport, s2)
        self.addCleanup(s2.cleanup)
        s2.start()
        cl2 = s2.client()
        self.addCleanup(cl2.close)
        lost = []
        for n, key, out in results:
            if out == "OK":
                try:
                    cl2.call(mp("GetPin"), {"tenant_id": "drain", "key": key})
                except grpc.RpcError as e:
                    lost.append((key, e.code()))
        self.assertEqual(lost, [], "acknowledged upserts lost across a drain")
        if hr.grpc_status == 0:
            cl2.call(mp("GetPin"), {"tenant_id": "drain", "key": "half"})


if __name__ == "__main__":
    unittest.main()
