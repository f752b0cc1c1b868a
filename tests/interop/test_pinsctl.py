"""pinsctl as the operator's client (tools/pinsctl, tools/README.md), against a real pinsd.

Every command runs as a real pinsctl process. Its --json output is read back into the protobuf
message and compared with what grpcio reads from the same server (and, where the REST API has
the route, with the REST answer byte for byte after parsing); the table output, every exit status
(0, 1 NOT_FOUND and version conflicts, 2 bad arguments and bad JSON, 3 no listener and a listener
that never answers), tokens from the environment with RBAC enforced, TLS and mutual TLS, watch
while grpcio writes, --help of every command, and a deadline on a watch.

The command classes are mixins: tests/integration/test_pg_pinsctl.py runs them on PostgreSQL.

Run: PINSD_BIN=build/pinsd PINSCTL_BIN=build/pinsctl /usr/bin/python3 -m unittest -v test_pinsctl
"""

import fcntl
import json
import os
import pty
import select
import shutil
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
import unittest
import urllib.error
import urllib.request

import grpc
from google.protobuf import json_format

import harness
from harness import ADMIN, HEALTH, ServerTestCase, mp, path_of
from test_rbac import ENFORCED, MACHINE, jwt
import test_tls

PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(
    os.path.dirname(harness.PINSD_BIN), "pinsctl")

# Variables of the caller's environment that would change what pinsctl does.
_CTL_VARS = ("MACHINE_SECRET_TOKEN", "PINS_TOKEN", "PINS_ADDR", "DATABASE_URL", "COLUMNS")

COMMANDS = {
    "get": [],
    "put": ["--ttl", "--source", "--expected-version"],
    "list": ["--prefix", "--limit", "--offset", "--page-token", "--include-expired", "--all"],
    "delete": ["--expected-version"],
    "cleanup": [],
    "watch": ["--prefix", "--count"],
    "health": ["--watch", "--count"],
    "ready": [],
    "status": [],
    "rbac info": [],
    "rbac matrix": [],
    "rbac reload": [],
    "rbac audit": ["--resource", "--action", "--allowed", "--subject", "--tenant-id", "--since",
                   "--limit", "--offset"],
    "rbac audit-cleanup": ["--retention-days"],
    "memory-audit": ["--tenant-id", "--pin-key", "--operation", "--limit", "--offset"],
}
GLOBAL_OPTIONS = ["--addr", "--tls", "--ca", "--cert", "--key", "--server-name", "--insecure",
                  "--timeout", "--json", "--help", "--version"]


def ctl_env(extra=None):
    e = {k: v for k, v in os.environ.items() if k not in _CTL_VARS}
    e.update(extra or {})
    return e


def run_ctl(args, env=None, input=None, timeout=60):
    if not os.path.exists(PINSCTL):
        if os.environ.get("PINSCTL_BIN"):
            raise RuntimeError("PINSCTL_BIN=%s does not exist" % PINSCTL)
        raise unittest.SkipTest("pinsctl not found at %s (set PINSCTL_BIN)" % PINSCTL)
    return subprocess.run([PINSCTL] + list(args), env=ctl_env(env), input=input,
                          capture_output=True, text=True, timeout=timeout)


def as_message(full_name, doc):
    """pinsctl's JSON read back into the message it claims to be (unknown fields refused)."""
    msg = harness.message_class(full_name)()
    json_format.ParseDict(doc, msg)
    return msg


def one_json(testcase, r):
    testcase.assertEqual(r.returncode, 0, r.stderr)
    lines = r.stdout.splitlines()
    testcase.assertEqual(len(lines), 1, "one JSON document on one line: %r" % r.stdout)
    return json.loads(lines[0])


def wait_for(pred, what, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting for " + what)


class CommandsMixin:
    """pinsctl's commands against self.server, compared with grpcio's self.client.

    Subclasses set up server and client; addr_args() and http_get() speak their transport."""

    TENANT_PREFIX = "ctl"

    def addr_args(self):
        return ["--addr", self.server.target]

    def url_base(self):
        return "http://127.0.0.1:%d" % self.server.port

    def ssl_context(self):
        return None

    def ctl(self, *args, env=None, input=None, timeout=60):
        return run_ctl(self.addr_args() + list(args), env=env, input=input, timeout=timeout)

    def http_get(self, path, timeout=10):
        try:
            with urllib.request.urlopen(self.url_base() + path, timeout=timeout,
                                        context=self.ssl_context()) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def tenant(self):
        return "%s-%s" % (self.TENANT_PREFIX, self.id().rsplit(".", 1)[-1][5:30])

    def grpc(self, path, fields, **kw):
        return self.client.call(path, fields, **kw)

    def watch_streams(self):
        _, text = self.http_get("/metrics")
        for line in text.splitlines():
            if line.startswith("watch_streams_active "):
                return float(line.split()[1])
        return 0.0

    # ---- get / put ---------------------------------------------------------------------------

    def test_put_and_get_json_match_grpc_and_rest(self):
        t = self.tenant()
        value = {"a": 1, "b": [True, None, "x"], "c": {"d": 1.5}}
        put = one_json(self, self.ctl("--json", "put", t, "k1", json.dumps(value), "--ttl",
                                      "3600", "--source", "ops"))
        # The REST shape: proto names, int64 as numbers, every field present.
        self.assertEqual(put["version"], 1)
        self.assertIsInstance(put["id"], int)
        self.assertEqual(put["source"], "ops")
        self.assertEqual(put["ttl_seconds"], 3600)
        self.assertEqual(put["value"], value)
        self.assertEqual(set(put), {"id", "tenant_id", "key", "value", "source", "created_at",
                                    "updated_at", "ttl_seconds", "expires_at", "version", "revision"})
        got = self.grpc(mp("GetPin"), {"tenant_id": t, "key": "k1"})
        self.assertEqual(as_message("memorypins.v1.Pin", put), got.pin)
        doc = one_json(self, self.ctl("get", t, "k1", "--json"))  # --json after the command
        self.assertEqual(as_message("memorypins.v1.Pin", doc), got.pin)
        status, body = self.http_get("/api/v1/memory/pins/k1?tenant_id=" + t)
        self.assertEqual(status, 200, body)
        self.assertEqual(doc, json.loads(body))

    def test_put_reads_the_value_from_stdin(self):
        t = self.tenant()
        r = self.ctl("put", t, "k", "-", input='{"from": "stdin", "n": [1, 2]}')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], "created")
        got = self.grpc(mp("GetPin"), {"tenant_id": t, "key": "k"})
        self.assertEqual(harness.to_dict(got.pin)["value"], {"from": "stdin", "n": [1, 2]})
        r = self.ctl("put", t, "k", "-", input='{"v": 2}')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.splitlines()[0], "updated")

    def test_put_of_a_value_larger_than_the_send_buffer_completes(self):
        """A ~900 KB body spans many DATA frames and several fills of the client's send buffer;
        each call must finish long before its deadline, however the socket drains."""
        t = self.tenant()
        value = json.dumps({"blob": "x" * 900000})
        for i in range(5):
            r = self.ctl("--timeout", "20s", "put", t, "big%d" % i, "-", input=value)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = self.grpc(mp("GetPin"), {"tenant_id": t, "key": "big%d" % i})
            self.assertEqual(len(harness.to_dict(got.pin)["value"]["blob"]), 900000)

    def test_get_prints_a_readable_pin(self):
        t = self.tenant()
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "k", "value": {"a": 1}})
        r = self.ctl("get", t, "k")
        self.assertEqual(r.returncode, 0, r.stderr)
        fields = dict(line.split(":", 1) for line in r.stdout.splitlines())
        fields = {k: v.strip() for k, v in fields.items()}
        self.assertEqual(fields["key"], "k")
        self.assertEqual(fields["tenant"], t)
        self.assertEqual(fields["version"], "1")
        self.assertEqual(fields["expires_at"], "never")
        self.assertEqual(json.loads(fields["value"]), {"a": 1})
        self.assertRegex(fields["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")

    def test_not_found_and_version_conflicts_exit_1(self):
        t = self.tenant()
        r = self.ctl("get", t, "absent")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertRegex(r.stderr, r"^pinsctl: get: NOT_FOUND: .*\(request id [^)]+\)\n$")
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "k", "value": {"a": 1}})
        with self.assertRaises(grpc.RpcError) as cm:
            self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "k", "value": {"a": 2},
                                        "expected_version": 5})
        code = cm.exception.code().name
        r = self.ctl("put", t, "k", '{"a": 3}', "--expected-version", "5")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: put: %s: " % code), r.stderr)
        self.assertIn("request id", r.stderr)
        r = self.ctl("delete", t, "k", "--expected-version", "7")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: delete: "), r.stderr)
        # The pin is untouched by both refusals.
        got = self.grpc(mp("GetPin"), {"tenant_id": t, "key": "k"})
        self.assertEqual(got.pin.version, 1)
        r = self.ctl("put", t, "k", '{"a": 4}', "--expected-version", "1")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_delete_json_and_table(self):
        t = self.tenant()
        for k in ("a", "b"):
            self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": k, "value": {"k": k}})
        doc = one_json(self, self.ctl("--json", "delete", t, "a", "--expected-version", "1"))
        self.assertEqual(doc, {"deleted": True, "key": "a", "tenant_id": t})
        r = self.ctl("delete", t, "b")
        self.assertEqual((r.returncode, r.stdout), (0, "deleted %s/b\n" % t), r.stderr)
        r = self.ctl("get", t, "a")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)

    # ---- list --------------------------------------------------------------------------------

    def test_list_json_table_and_pages(self):
        t = self.tenant()
        long_value = {"text": "x" * 300}
        for i in range(5):
            self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "p%d" % i,
                                        "value": long_value if i == 4 else {"i": i}})
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "other", "value": {}})
        doc = one_json(self, self.ctl("--json", "list", t, "--prefix", "p"))
        want = self.grpc(mp("ListPins"), {"tenant_id": t, "prefix": "p"})
        self.assertEqual(as_message("memorypins.v1.ListPinsResponse", doc), want)
        self.assertEqual(doc["total"], 5)
        status, body = self.http_get("/api/v1/memory/pins?tenant_id=%s&prefix=p" % t)
        self.assertEqual(status, 200, body)
        self.assertEqual(doc, json.loads(body))

        # One page of two, its token, then the rest, in the server's order.
        order = [p.key for p in want.pins]
        r = self.ctl("list", t, "--prefix", "p", "--limit", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["KEY", "VERSION", "UPDATED", "EXPIRES", "VALUE"])
        self.assertEqual([ln.split()[0] for ln in lines[1:3]], order[:2])
        row = [ln for ln in lines[1:3] if not ln.startswith("p4 ")][0]
        self.assertEqual(row.split()[1], "1")
        self.assertEqual(row.split()[3], "never")
        self.assertRegex(row.split()[2], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(row.split()[4], r'^\{"i":\d\}$')
        self.assertEqual(lines[3], "(2 of 5 pins)")
        self.assertTrue(lines[4].startswith("next page: --page-token "), lines)
        token = lines[4].split()[-1]
        nxt = one_json(self, self.ctl("--json", "list", t, "--prefix", "p", "--limit", "2",
                                      "--page-token", token))
        self.assertEqual([p["key"] for p in nxt["pins"]], order[2:4])

        # --all follows the tokens to the end: one document with every pin.
        every = one_json(self, self.ctl("--json", "list", t, "--prefix", "p", "--limit", "2",
                                        "--all"))
        self.assertEqual([p["key"] for p in every["pins"]], order)
        self.assertEqual(every["next_page_token"], "")
        self.assertEqual(every["pins"], doc["pins"])
        r = self.ctl("list", t, "--limit", "2", "--all")
        self.assertEqual(r.returncode, 0, r.stderr)
        keys = [ln.split()[0] for ln in r.stdout.splitlines()[1:-1]]
        self.assertEqual(sorted(keys), ["other", "p0", "p1", "p2", "p3", "p4"])
        self.assertEqual(r.stdout.splitlines()[-1], "(6 of 6 pins)")
        # Standard output is a pipe here: the long value is printed whole.
        self.assertIn(json.dumps(long_value, separators=(",", ":")), r.stdout)

    def test_list_cuts_values_to_the_terminal_width(self):
        t = self.tenant()
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "wide", "value": {"t": "y" * 500}})
        master, slave = pty.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 70, 0, 0))
            p = subprocess.Popen([PINSCTL] + self.addr_args() + ["list", t], env=ctl_env(),
                                 stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
            os.close(slave)
            slave = -1
            out = b""
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    out += chunk
                elif p.poll() is not None:
                    break
            self.assertEqual(p.wait(timeout=20), 0, p.stderr.read())
            p.stderr.close()
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        lines = out.decode().replace("\r\n", "\n").splitlines()
        row = [ln for ln in lines if ln.startswith("wide")][0]
        self.assertEqual(len(row), 70, row)
        self.assertTrue(row.endswith("..."), row)
        self.assertNotIn("y" * 100, out.decode())

    # ---- cleanup -----------------------------------------------------------------------------

    def test_cleanup_deletes_expired_pins(self):
        t = self.tenant()
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "short", "value": {},
                                    "ttl_seconds": 1})
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "long", "value": {}})
        time.sleep(2.2)
        doc = one_json(self, self.ctl("--json", "cleanup", t))
        msg = as_message("memorypins.v1.CleanupExpiredPinsResponse", doc)
        self.assertEqual(doc["deleted_count"], 1)
        self.assertEqual(doc["tenant_id"], t)
        self.assertTrue(msg.HasField("timestamp"))
        with self.assertRaises(grpc.RpcError) as cm:
            self.grpc(mp("GetPin"), {"tenant_id": t, "key": "short"})
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.grpc(mp("GetPin"), {"tenant_id": t, "key": "long"})
        r = self.ctl("cleanup", t)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^deleted 0 expired pins of tenant %s at \S+Z\n$" % t)
        doc = one_json(self, self.ctl("--json", "cleanup"))  # every tenant
        self.assertIsNone(doc["tenant_id"])

    # ---- watch -------------------------------------------------------------------------------

    def start_watch(self, *args):
        base = self.watch_streams()
        p = subprocess.Popen([PINSCTL] + self.addr_args() + list(args), env=ctl_env(),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        try:
            wait_for(lambda: self.watch_streams() >= base + 1 or p.poll() is not None,
                     "the watch stream to open")
        except AssertionError:
            p.kill()
            raise
        if p.poll() is not None:
            self.fail("pinsctl watch ended early: %s" % (p.communicate(timeout=10)[1],))
        return p

    def test_watch_prints_one_line_per_event(self):
        t = self.tenant()
        p = self.start_watch("--json", "watch", t, "--count", "3")
        written = []
        for i in range(3):
            written.append(self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "w%d" % i,
                                                       "value": {"i": i}}).pin)
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        for line, pin in zip(lines, written):
            ev = as_message("memorypins.v1.WatchPinsResponse", json.loads(line))
            self.assertEqual(json.loads(line)["type"], "EVENT_TYPE_PUT")
            self.assertEqual(ev.pin, pin)

    def test_watch_table_with_prefix_put_and_delete(self):
        t = self.tenant()
        p = self.start_watch("watch", t, "--prefix", "in-", "--count", "2")
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "out", "value": {}})
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "in-1", "value": {"a": 1}})
        self.grpc(mp("DeletePin"), {"tenant_id": t, "key": "in-1"})
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertEqual(lines[0].split()[1:4], ["PUT", "in-1", "version=1"])
        self.assertEqual(lines[0].split()[4], "revision=2")  # "out" took revision 1
        self.assertEqual(lines[0].split()[5], '{"a":1}')
        self.assertEqual(lines[1].split()[1:5], ["DELETE", "in-1", "version=1", "revision=3"])
        # resuming after revision 1 replays the same two events from the history
        p = self.start_watch("watch", t, "--since-revision", "1", "--count", "3")
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "live", "value": {}})
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual([ln.split()[1:3] + ln.split()[4:5] for ln in out.splitlines()],
                         [["PUT", "in-1", "revision=2"], ["DELETE", "in-1", "revision=3"],
                          ["PUT", "live", "revision=4"]])

    def test_watch_ends_at_its_deadline(self):
        t = self.tenant()
        start = time.monotonic()
        r = self.ctl("watch", t, "--timeout", "2s", timeout=30)
        took = time.monotonic() - start
        # Documented: a watch that reached the deadline --timeout asked for exits 0 and says so.
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertIn("pinsctl: watch: DEADLINE_EXCEEDED", r.stderr)
        self.assertGreaterEqual(took, 1.9)
        self.assertLess(took, 10)

    # ---- health, ready, status ---------------------------------------------------------------

    def test_health_check_and_watch(self):
        r = self.ctl("health")
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)
        self.assertEqual(one_json(self, self.ctl("health", "--json")), {"status": "SERVING"})
        self.assertEqual(one_json(self, self.ctl("health", "memorypins.v1.MemoryPins",
                                                 "--json")), {"status": "SERVING"})
        with self.assertRaises(grpc.RpcError) as cm:
            self.grpc(path_of(HEALTH, "Check"), {"service": "no.such.Service"})
        r = self.ctl("health", "no.such.Service")
        self.assertEqual(r.returncode, 1)
        self.assertTrue(r.stderr.startswith("pinsctl: health: %s:" % cm.exception.code().name),
                        r.stderr)
        r = self.ctl("health", "--watch", "--count", "1")
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)

    def test_ready_prints_the_checks(self):
        r = self.ctl("ready")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ready: true", r.stdout)
        self.assertRegex(r.stdout, r"\n  store: \S+")
        doc = one_json(self, self.ctl("ready", "--json"))
        status, body = self.http_get("/ready")
        self.assertEqual(status, 200)
        self.assertEqual(doc, json.loads(body))

    def test_status_matches_grpc(self):
        doc = one_json(self, self.ctl("--json", "status"))
        want = self.grpc(path_of(ADMIN, "GetStatus"), {})
        got = as_message("memorypins.v1.GetStatusResponse", doc)
        self.assertEqual(got.version, want.version)
        self.assertEqual(set(doc), {"version", "uptime", "store", "redis", "flags", "breaker",
                                    "limiter"})
        self.assertEqual(got.flags, want.flags)
        self.assertEqual(set(doc["store"]), set(harness.to_dict(want).get("store", {})))
        r = self.ctl("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("version:  %s\n" % want.version, r.stdout)
        self.assertRegex(r.stdout, r"uptime:\s+\d+\.\ds\n")

    # ---- admin -------------------------------------------------------------------------------

    def test_rbac_and_audit_commands_match_grpc(self):
        t = self.tenant()
        info = one_json(self, self.ctl("--json", "rbac", "info"))
        self.assertEqual(as_message("memorypins.v1.GetRbacInfoResponse", info),
                         self.grpc(path_of(ADMIN, "GetRbacInfo"), {}))
        matrix = one_json(self, self.ctl("rbac", "matrix", "--json"))
        self.assertEqual(as_message("memorypins.v1.GetRbacMatrixResponse", matrix),
                         self.grpc(path_of(ADMIN, "GetRbacMatrix"), {}))
        r = self.ctl("rbac", "matrix")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ROLE", r.stdout.splitlines()[2])
        for role in matrix["matrix"]:
            self.assertRegex(r.stdout, r"\n%s\s" % role)
        r = self.ctl("rbac", "info")
        self.assertIn("hash:         %s\n" % info["hash"], r.stdout)

        want = self.grpc(path_of(ADMIN, "ReloadRbacPolicy"), {})
        r = self.ctl("--json", "rbac", "reload")
        self.assertEqual(r.returncode, 0 if want.success else 1, r.stderr)
        self.assertEqual(json.loads(r.stdout.splitlines()[0])["success"], want.success)

        cleaned = one_json(self, self.ctl("--json", "rbac", "audit-cleanup",
                                          "--retention-days", "30"))
        self.assertEqual(cleaned["retention_days"], 30)
        self.assertIsInstance(cleaned["deleted_count"], int)

        flt = {"tenant_id": t, "limit": 5}
        # Each listing is itself an RBAC decision (a shadow denial without a token), audited
        # asynchronously with the tenant it filters on, so grpcio's later listing may hold rows
        # that arrived after pinsctl's: every row pinsctl printed must be in it, in order, and
        # the rest must be exactly the newcomers its total counts.
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "shadow", "value": {"a": 1}})
        rflt = dict(flt, limit=100, allowed=True, since="2020-01-01T00:00:00Z")
        audit = one_json(self, self.ctl("--json", "rbac", "audit", "--tenant-id", t,
                                        "--limit", "100", "--allowed", "true", "--since",
                                        "2020-01-01T00:00:00Z"))
        got = as_message("memorypins.v1.ListRbacAuditResponse", audit)
        want = self.grpc(path_of(ADMIN, "ListRbacAudit"), rflt)
        ids = {e.id for e in got.entries}
        self.assertEqual([e for e in want.entries if e.id in ids], list(got.entries))
        self.assertEqual(want.total - got.total, len(want.entries) - len(got.entries))
        self.assertEqual((got.limit, got.offset), (want.limit, want.offset))
        self.assertTrue(all(e.tenant_id == t and e.allowed for e in got.entries))

        # The operations log of a tenant nobody else writes: wait until the put is in it.
        self.grpc(mp("UpsertPin"), {"tenant_id": t, "key": "audited", "value": {"a": 1}})
        args = ["--json", "memory-audit", "--tenant-id", t, "--limit", "5", "--pin-key",
                "audited"]
        doc = wait_for(lambda: (lambda d: d if d["entries"] else None)(
            one_json(self, self.ctl(*args))), "the memory audit row", timeout=15, step=0.3)
        self.assertEqual(as_message("memorypins.v1.ListMemoryAuditResponse", doc),
                         self.grpc(path_of(ADMIN, "ListMemoryAudit"), dict(flt, key="audited")))
        self.assertEqual(doc["entries"][0]["key"], "audited")
        r = self.ctl("memory-audit", "--tenant-id", t)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split()[:9], ["ID", "TIME", "OPERATION", "TENANT", "KEY",
                                                "SUCCESS", "CACHE", "LATENCY_MS", "ERROR"])
        self.assertIn(" audited ", r.stdout)


class PinsctlTest(CommandsMixin, ServerTestCase):
    """Every command on the embedded store over h2c."""

    SERVER_ENV = {"PINS_SWEEP_INTERVAL_SECONDS": "3600"}


class PinsctlUsageTest(unittest.TestCase):
    """Help, usage errors (exit 2) and servers that cannot answer (exit 3); no pinsd needed."""

    def test_help_lists_every_command_option_and_exit_status(self):
        r = run_ctl(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        for cmd, opts in COMMANDS.items():
            self.assertIn("  " + cmd + " ", r.stdout)
            for o in opts:
                self.assertIn(o, r.stdout)
        for cmd in ("migrate", "bench"):
            self.assertIn("  %s ..." % cmd, r.stdout)
        for o in GLOBAL_OPTIONS:
            self.assertIn(o, r.stdout)
        for var in ("MACHINE_SECRET_TOKEN", "PINS_TOKEN", "PINS_ADDR"):
            self.assertIn(var, r.stdout)
        for code in range(4):
            self.assertRegex(r.stdout, r"\n  %d  \S" % code)

    def test_help_of_every_command(self):
        for cmd, opts in COMMANDS.items():
            r = run_ctl(cmd.split() + ["--help"])
            self.assertEqual(r.returncode, 0, (cmd, r.stderr))
            self.assertTrue(r.stdout.startswith("usage: pinsctl [GLOBAL OPTIONS] %s" % cmd),
                            r.stdout)
            for o in opts + ["--addr", "--timeout", "--json"]:
                self.assertIn(o, r.stdout, cmd)
        for args in (["rbac", "--help"], ["migrate", "--help"], ["bench", "--help"],
                     ["--version"], ["help", "watch"]):
            r = run_ctl(args)
            self.assertEqual(r.returncode, 0, (args, r.stderr))
            self.assertNotEqual(r.stdout, "")

    def dead_addr(self):
        return "127.0.0.1:%d" % harness.free_port()

    def test_usage_errors_exit_2(self):
        addr = ["--addr", self.dead_addr()]  # a call that got out would exit 3
        cases = [
            [], ["frobnicate"], ["get", "t"], ["get", "t", "k", "extra"], ["--frob", "status"],
            ["get", "t", "k", "--prefix", "p"], ["get", "t", "k", "--timeout", "soon"],
            ["put", "t", "k", "{}", "--ttl", "x"], ["put", "t", "k", "{}", "--ttl"],
            ["list", "t", "--limit", "-1"], ["watch", "t", "--count", "0"],
            ["rbac"], ["rbac", "nope"], ["rbac", "audit", "--allowed", "maybe"],
            ["rbac", "audit", "--since", "yesterday"], ["memory-audit", "--limit", "x"],
            ["get", "t", "k", "--token", "secret"],
            ["--tls", "--ca", "/nonexistent/ca.pem", "health"],
            ["--tls", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/c.key", "health"],
        ]
        for args in cases:
            r = run_ctl(addr + args)
            self.assertEqual(r.returncode, 2, (args, r.stdout, r.stderr))
            self.assertTrue(r.stderr.startswith("pinsctl: "), (args, r.stderr))
            self.assertEqual(r.stdout, "", args)

    def test_tls_options_on_a_plaintext_address_exit_2(self):
        # Tokens never go out in clear text when TLS was asked for: with an http:// address the
        # TLS options are refused, not ignored.
        plain = ["--addr", "http://" + self.dead_addr()]
        for opts in (["--ca", "/nonexistent/ca.pem"], ["--cert", "c.pem", "--key", "c.key"],
                     ["--server-name", "pins.example"], ["--insecure"], ["--tls"]):
            r = run_ctl(plain + opts + ["health"], env={"MACHINE_SECRET_TOKEN": "s3cret"})
            self.assertEqual(r.returncode, 2, (opts, r.stderr))
            self.assertIn("TLS settings given for a plaintext connection", r.stderr)
            self.assertNotIn("s3cret", r.stderr + r.stdout)

    def test_a_token_with_a_control_character_exits_2(self):
        for var in ("MACHINE_SECRET_TOKEN", "PINS_TOKEN"):
            r = run_ctl(["--addr", self.dead_addr(), "health"], env={var: "s3cret\x01x"})
            self.assertEqual(r.returncode, 2, (var, r.stderr))
            self.assertIn("control character", r.stderr)
            self.assertNotIn("s3cret", r.stderr + r.stdout)

    def test_help_of_a_subcommand_and_options_before_it(self):
        r = run_ctl(["help", "rbac", "audit"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("usage: pinsctl [GLOBAL OPTIONS] rbac audit"),
                        r.stdout)
        r = run_ctl(["help", "nope"])
        self.assertEqual(r.returncode, 2, r.stderr)
        # Global options may stand between rbac and its subcommand: this one gets as far as
        # the call (nobody listens: 3), not a usage error.
        r = run_ctl(["rbac", "--json", "--addr", self.dead_addr(), "info"])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: rbac info: UNAVAILABLE"), r.stderr)

    def test_bad_json_values_exit_2(self):
        addr = ["--addr", self.dead_addr()]
        for bad in ("{", '{"a":}', "[1]", '"text"', "42", "{'a': 1}", '{"a": 1} x', ""):
            r = run_ctl(addr + ["put", "t", "k", bad])
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
            self.assertRegex(r.stderr, r"^pinsctl: put: value (is not valid json|is not a json "
                             r"object) \(see pinsctl put --help\)\n$")
        r = run_ctl(addr + ["put", "t", "k", "-"], input="[1, 2]")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_nobody_listening_exits_3(self):
        start = time.monotonic()
        r = run_ctl(["--addr", self.dead_addr(), "get", "t", "k"])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: get: UNAVAILABLE"), r.stderr)
        self.assertLess(time.monotonic() - start, 10)
        for args in (["ready"], ["health"], ["status"], ["list", "t"], ["watch", "t"],
                     ["put", "t", "k", "{}"]):
            r = run_ctl(["--addr", self.dead_addr()] + args)
            self.assertEqual(r.returncode, 3, (args, r.stderr))

    def test_a_listener_that_never_answers_exits_3_at_the_deadline(self):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        held = []
        stop = threading.Event()

        def accept():
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(srv.accept()[0])
                except OSError:
                    continue

        th = threading.Thread(target=accept, daemon=True)
        th.start()
        try:
            addr = "127.0.0.1:%d" % srv.getsockname()[1]
            for args in (["get", "t", "k"], ["watch", "t"], ["ready"]):
                start = time.monotonic()
                r = run_ctl(["--addr", addr, "--timeout", "1s"] + args, timeout=30)
                took = time.monotonic() - start
                self.assertEqual(r.returncode, 3, (args, r.stderr))
                self.assertIn("DEADLINE_EXCEEDED", r.stderr)
                self.assertLess(took, 8, args)
            # Without a deadline a watch waits for events for ever, but the health Check before
            # it has its own (10 s): a silent server still ends it with 3.
            for args in (["watch", "t"], ["health", "--watch"]):
                r = run_ctl(["--addr", addr, "--timeout", "0"] + args, timeout=60)
                self.assertEqual(r.returncode, 3, (args, r.stderr))
                self.assertIn("DEADLINE_EXCEEDED", r.stderr)
        finally:
            stop.set()
            th.join(timeout=5)
            for c in held:
                c.close()
            srv.close()


class PinsctlRbacTest(ServerTestCase):
    """RBAC enforced: tokens come from MACHINE_SECRET_TOKEN and PINS_TOKEN and are never printed."""

    SERVER_ENV = ENFORCED

    def ctl(self, *args, env=None, **kw):
        return run_ctl(["--addr", self.server.target] + list(args), env=env, **kw)

    def assert_secret_free(self, r, *secrets):
        for s in secrets:
            self.assertNotIn(s, r.stdout)
            self.assertNotIn(s, r.stderr)

    def test_calls_without_a_token_are_refused_with_exit_1(self):
        for args in (["get", "rb", "k"], ["put", "rb", "k", "{}"], ["list", "rb"], ["status"],
                     ["rbac", "info"]):
            r = self.ctl(*args)
            self.assertEqual(r.returncode, 1, (args, r.stderr))
            self.assertRegex(r.stderr, r"^pinsctl: [a-z ]+: (UNAUTHENTICATED|PERMISSION_DENIED)")

    def test_machine_token_from_the_environment(self):
        env = {"MACHINE_SECRET_TOKEN": MACHINE}
        r = self.ctl("put", "rb-m", "k", '{"a": 1}', env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = one_json(self, self.ctl("--json", "get", "rb-m", "k", env=env))
        self.assertEqual(doc["value"], {"a": 1})
        self.assert_secret_free(r, MACHINE)
        wrong = "not-the-machine-secret"
        r = self.ctl("get", "rb-m", "k", env={"MACHINE_SECRET_TOKEN": wrong})
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        self.assert_secret_free(r, wrong, MACHINE)

    def test_bearer_token_from_the_environment_reaches_admin(self):
        admin = jwt({"sub": "ops", "roles": ["admin"]})
        env = {"PINS_TOKEN": admin}
        info = one_json(self, self.ctl("--json", "rbac", "info", env=env))
        self.assertTrue(info["enforce_mode"])
        md = [("authorization", "Bearer " + admin)]
        self.assertEqual(as_message("memorypins.v1.GetRbacInfoResponse", info),
                         self.client.call(path_of(ADMIN, "GetRbacInfo"), {}, metadata=md))
        r = self.ctl("status", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_secret_free(r, admin)
        # A reader may read but not write: the server's no is exit 1.
        reader = {"PINS_TOKEN": jwt({"sub": "r", "roles": ["readonly"]})}
        r = self.ctl("put", "rb-b", "k", "{}", env=reader)
        self.assertEqual(r.returncode, 1)
        self.assertIn("PERMISSION_DENIED", r.stderr)
        # The denials are in the RBAC audit, listed with filters by an admin.
        args = ["--json", "rbac", "audit", "--allowed", "false", "--subject", "r", "--limit", "5"]
        doc = wait_for(lambda: (lambda d: d if d["entries"] else None)(
            one_json(self, self.ctl(*args, env=env))), "the denial in the audit", timeout=15,
            step=0.3)
        want = self.client.call(path_of(ADMIN, "ListRbacAudit"),
                                {"allowed": False, "subject": "r", "limit": 5}, metadata=md)
        self.assertEqual(as_message("memorypins.v1.ListRbacAuditResponse", doc), want)
        self.assertFalse(doc["entries"][0]["allowed"])


class _TlsClient(harness.GrpcClient):
    def __init__(self, channel):
        self.target = None
        self.channel = channel


class PinsctlTlsTest(CommandsMixin, unittest.TestCase):
    """The commands over TLS (--addr https://, --ca), and what happens without the CA."""

    TENANT_PREFIX = "tls"
    MUTUAL = False

    @classmethod
    def setUpClass(cls):
        cls.server = None
        tmp = harness.tempfile.mkdtemp(prefix="pinsctl-tls-", dir="/tmp")
        cls.tmp = tmp
        test_tls.make_ca(tmp, "ca")
        test_tls.make_ca(tmp, "other")
        test_tls.make_leaf(tmp, "ca", "server", san="IP:127.0.0.1,DNS:localhost")
        test_tls.make_leaf(tmp, "ca", "client")
        test_tls.make_leaf(tmp, "other", "stranger")
        cls.ca = os.path.join(tmp, "ca.pem")
        env = {"TLS_CERT_FILE": os.path.join(tmp, "server.pem"),
               "TLS_KEY_FILE": os.path.join(tmp, "server.key"),
               "PINS_SWEEP_INTERVAL_SECONDS": "3600"}
        env.update(cls.store_env())
        kw = {}
        if cls.MUTUAL:
            env["TLS_CLIENT_CA_FILE"] = cls.ca
            kw = {"client_cert": cls.file("client.pem"), "client_key": cls.file("client.key")}
        cls.server = test_tls.TlsServer(env, cls.ca, tmp=tmp, **kw)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise
        cls.client = _TlsClient(cls.server.channel())

    @classmethod
    def store_env(cls):
        """More server environment (the PostgreSQL variant sets DATABASE_URL)."""
        return {}

    @classmethod
    def tearDownClass(cls):
        try:
            if getattr(cls, "client", None) is not None:
                cls.client.close()
            if cls.server is not None:
                cls.server.cleanup()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)  # given to the server: not its own

    @classmethod
    def file(cls, name):
        return os.path.join(cls.tmp, name)

    def cert_args(self):
        return ["--cert", self.file("client.pem"), "--key", self.file("client.key")] \
            if self.MUTUAL else []

    def addr_args(self):
        return ["--addr", "https://127.0.0.1:%d" % self.server.port, "--ca", self.ca] \
            + self.cert_args()

    def url_base(self):
        return "https://127.0.0.1:%d" % self.server.port

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.MUTUAL:
            ctx.load_cert_chain(self.file("client.pem"), self.file("client.key"))
        return ctx

    def test_tls_flag_on_a_bare_address_and_server_name(self):
        r = run_ctl(["--tls", "--addr", "127.0.0.1:%d" % self.server.port, "--ca", self.ca,
                     "--server-name", "localhost"] + self.cert_args() + ["health"])
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)

    def test_without_the_ca_the_server_is_not_trusted(self):
        base = ["--addr", "https://127.0.0.1:%d" % self.server.port] + self.cert_args()
        r = run_ctl(base + ["get", "t", "k"])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: get: "), r.stderr)
        r = run_ctl(base + ["--ca", self.file("other.pem"), "health"])
        self.assertEqual(r.returncode, 3, r.stderr)
        r = run_ctl(base + ["--insecure", "health"])
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)
        # A name the certificate does not carry.
        r = run_ctl(base + ["--ca", self.ca, "--server-name", "elsewhere", "health"])
        self.assertEqual(r.returncode, 3, r.stderr)

    def test_tls_options_imply_tls_on_a_bare_address(self):
        r = run_ctl(["--addr", "127.0.0.1:%d" % self.server.port, "--ca", self.ca]
                    + self.cert_args() + ["health"])
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)

    def test_plaintext_to_a_tls_listener_gets_no_answer(self):
        r = run_ctl(["--addr", "127.0.0.1:%d" % self.server.port, "--timeout", "3s", "health"])
        self.assertEqual(r.returncode, 3, r.stderr)


class PinsctlMutualTlsTest(PinsctlTlsTest):
    """TLS_CLIENT_CA_FILE: pinsctl presents --cert/--key; without them, or with a certificate of
    another CA, the server refuses the connection (no answer: exit 3)."""

    TENANT_PREFIX = "mtls"
    MUTUAL = True

    def test_client_certificate_is_required(self):
        base = ["--addr", "https://127.0.0.1:%d" % self.server.port, "--ca", self.ca]
        r = run_ctl(base + ["health"])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertTrue(r.stderr.startswith("pinsctl: health: "), r.stderr)
        r = run_ctl(base + ["--cert", self.file("stranger.pem"), "--key",
                            self.file("stranger.key"), "health"])
        self.assertEqual(r.returncode, 3, r.stderr)
        r = run_ctl(base + ["--cert", self.file("client.pem"), "--key", self.file("client.key"),
                            "health"])
        self.assertEqual((r.returncode, r.stdout), (0, "SERVING\n"), r.stderr)
        # A certificate without its key is a usage error found before any connection.
        r = run_ctl(base + ["--cert", self.file("client.pem"), "health"])
        self.assertEqual(r.returncode, 2, r.stderr)


if __name__ == "__main__":
    unittest.main()
