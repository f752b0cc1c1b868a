"""pinsctl seed (tools/pinsctl/cmd_seed.c) and its wrapper ops/seed_memory_pins.py against a real
pinsd (SQLite store).

Both M7 file formats and their defaults, the TTL applied, --dry-run writing nothing, --verify,
--sql-verify without DATABASE_URL (skipped), every malformed file refused with exit 2 and nothing
written, RBAC enforced (no credentials; the machine secret given as MACHINE_JWT goes out as
x-machine-token; a real HS256 JWT goes out as a Bearer token and is judged by its roles), retries
through pinsd's rate limit (retry-after), a permanent error sent exactly once (counted in pinsd's
grpc_server_handled_total), --wait for a pinsd that starts later and --wait against nothing, and
the runbook's exact command. Also: a FIFO, directory or device refused, the 8 MiB cap (inclusive),
200k pins in a dry run, an empty tenant written as "global", --base with user information refused
unechoed, credentials with line ends trimmed, and a message over MAX_REQUEST_BYTES
(RESOURCE_EXHAUSTED without retry-after) sent once. No secret ever appears in pinsctl's output.

Run: PINSD_BIN=build/pinsd PINSCTL_BIN=build/pinsctl /usr/bin/python3 -m unittest -v test_pinsctl_seed
"""

import json
import os
import re
import subprocess
import sys
import shutil
import tempfile
import time
import unittest
import urllib.request


import harness
from harness import ServerTestCase, mp
from test_rbac import ENFORCED, JWT_SECRET, MACHINE, jwt

PINSCTL = os.environ.get("PINSCTL_BIN") or os.path.join(
    os.path.dirname(harness.PINSD_BIN), "pinsctl")
SEED_FILE = os.path.join(harness.REPO, "ops", "memory_pins_seed.json")
WRAPPER = os.path.join(harness.REPO, "ops", "seed_memory_pins.py")

# Variables of the caller's environment that would change what pinsctl seed does.
_SEED_VARS = ("MACHINE_JWT", "MACHINE_TOKEN", "MACHINE_SECRET_TOKEN", "PINS_TOKEN", "PINS_ADDR",
              "DATABASE_URL", "SEED_TIMEOUT", "SEED_RETRIES", "SEED_WAIT_TIMEOUT",
              "SEED_BACKOFF_MS", "PINSCTL_BIN")

# The pins of ops/memory_pins_seed.json: M7's seven and global/test-key.
RUNBOOK_PINS = [("global", "system:config:rate_limits"), ("global", "system:config:feature_flags"),
                ("global", "system:metadata:version"), ("global", "docs:index"),
                ("staging", "env:config"), ("staging", "env:endpoints"),
                ("test", "test:ephemeral"), ("global", "test-key")]

ADMIN_JWT = jwt({"sub": "seed-admin", "roles": ["admin"]})
MACHINE_ROLE_JWT = jwt({"sub": "seed-machine", "roles": ["machine"]})
READONLY_JWT = jwt({"sub": "seed-reader", "roles": ["readonly"]})
SECRETS = (MACHINE, JWT_SECRET, ADMIN_JWT, MACHINE_ROLE_JWT, READONLY_JWT)


def seed_env(extra=None):
    e = {k: v for k, v in os.environ.items() if k not in _SEED_VARS}
    e.update(extra or {})
    return e


def need_pinsctl():
    if not os.path.exists(PINSCTL):
        if os.environ.get("PINSCTL_BIN"):
            raise RuntimeError("PINSCTL_BIN=%s does not exist" % PINSCTL)
        raise unittest.SkipTest("pinsctl not found at %s (set PINSCTL_BIN)" % PINSCTL)


def run_seed(args, env=None, timeout=120):
    need_pinsctl()
    return subprocess.run([PINSCTL, "seed"] + list(args), env=seed_env(env),
                          capture_output=True, text=True, timeout=timeout)


def metric(port, name, **labels):
    """The value of one series of pinsd's /metrics (0 when absent)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(r'^(\w+)\{([^}]*)\} (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        have = m.group(2).split(",")
        if all(('%s="%s"' % kv) in have for kv in labels.items()):
            total += float(m.group(3))
    return total


def upserts_handled(port, code):
    return metric(port, "grpc_server_handled_total", grpc_method="UpsertPin", grpc_code=code)


class SeedCase(ServerTestCase):
    """Helpers: files in a temporary directory, the store read back with grpcio."""

    SERVER_ENV = dict(ENFORCED)
    META = [("x-machine-token", MACHINE)]

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="pinsctl-seed-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def base(self, server=None):
        return "http://127.0.0.1:%d" % (server or self.server).port

    def write(self, content, name="seed.json"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def pins_of(self, tenant, server=None):
        c = (server or self.server).client() if server else self.client
        try:
            resp = c.call(mp("ListPins"), {"tenant_id": tenant, "include_expired": True},
                          metadata=self.META)
        finally:
            if server:
                c.close()
        return {p.key: p for p in resp.pins}

    def get(self, tenant, key, server=None):
        c = server.client() if server else self.client
        try:
            return c.call(mp("GetPin"), {"tenant_id": tenant, "key": key},
                          metadata=self.META).pin
        finally:
            if server:
                c.close()

    def assertNoSecret(self, r):
        for s in SECRETS:
            self.assertNotIn(s, r.stdout)
            self.assertNotIn(s, r.stderr)

    def assertSeeded(self, r, n):
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Seed Complete", r.stdout)
        self.assertRegex(r.stdout, r"Success:\s+%d\n" % n)
        self.assertRegex(r.stdout, r"Failed:\s+0\n")
        self.assertIn("All pins seeded and verified successfully!", r.stdout)


class SeedFormats(SeedCase):
    """File formats, defaults, TTL, --dry-run, --verify, malformed files."""

    def test_array_format_defaults_apply(self):
        path = self.write([{"pins": {"fmt-a": {"n": 1}, "fmt-b": {"list": [1, "x", None]}}},
                           {"tenant_id": "seed-arr", "source": "ops", "ttl_seconds": 120,
                            "pins": {"fmt-c": {"nested": {"ok": True}}}}])
        r = run_seed(["--file", path, "--base", self.base()], env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 3)
        self.assertNoSecret(r)
        a = self.get("global", "fmt-a")
        self.assertEqual(a.source, "seed_script")
        self.assertFalse(a.HasField("ttl_seconds"))
        self.assertFalse(a.HasField("expires_at"))
        self.assertEqual(harness.json_format.MessageToDict(a.value), {"n": 1})
        self.assertEqual(harness.json_format.MessageToDict(self.get("global", "fmt-b").value),
                         {"list": [1, "x", None]})
        c = self.get("seed-arr", "fmt-c")
        self.assertEqual(c.source, "ops")
        self.assertEqual(c.ttl_seconds.value, 120)
        self.assertTrue(c.HasField("expires_at"))
        # expires_at is the write's time plus the TTL (generous bounds: a loaded machine).
        left = c.expires_at.seconds - time.time()
        self.assertGreater(left, 60)
        self.assertLessEqual(left, 121)
        self.assertEqual(c.expires_at.seconds - c.updated_at.seconds, 120)

    def test_entries_object_format_with_verify(self):
        path = self.write({"description": "d", "version": "1.0.0", "created": "2025-01-01",
                           "entries": [{"tenant_id": "seed-obj", "ttl_seconds": None,
                                        "pins": {"k1": {"a": 1}, "k2": {"b": "two"}}},
                                       {"tenant_id": "seed-obj", "ttl_seconds": 3600,
                                        "pins": {"k3": {}}}]})
        r = run_seed(["-f", path, "-b", self.base(), "--verify", "--sql-verify"],
                     env={"MACHINE_SECRET_TOKEN": MACHINE})
        self.assertSeeded(r, 3)
        self.assertRegex(r.stdout, r"Verified API:\s+3\n")
        self.assertEqual(r.stdout.count("[VERIFIED] API: seed-obj/"), 3)
        # --sql-verify without DATABASE_URL: said to be skipped, not a failure.
        self.assertIn("DATABASE_URL not set", r.stdout)
        pins = self.pins_of("seed-obj")
        self.assertEqual(sorted(pins), ["k1", "k2", "k3"])
        self.assertFalse(pins["k1"].HasField("expires_at"))
        self.assertEqual(pins["k3"].ttl_seconds.value, 3600)
        self.assertTrue(pins["k3"].HasField("expires_at"))

    def test_verbose_shows_values_and_request_ids(self):
        path = self.write([{"tenant_id": "seed-vfy", "pins": {"v": {"want": 1}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--verify", "-v"],
                     env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 1)
        self.assertIn("[VERIFIED] API: seed-vfy/v", r.stdout)
        self.assertIn('value: {"want":1}', r.stdout)
        self.assertRegex(r.stdout, r"request id [0-9a-f]+")
        self.assertIn("retries 3", r.stdout)

    def test_dry_run_writes_nothing(self):
        before = upserts_handled(self.server.port, "OK")
        path = self.write([{"tenant_id": "seed-dry", "pins": {"d1": {"x": 1}, "d2": {}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--dry-run", "--verify"],
                     env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 2)
        self.assertIn("[DRY-RUN] Would upsert: seed-dry/d1", r.stdout)
        self.assertIn("[DRY-RUN] Would upsert: seed-dry/d2", r.stdout)
        self.assertEqual(self.pins_of("seed-dry"), {})
        self.assertEqual(upserts_handled(self.server.port, "OK"), before)

    def test_malformed_files_write_nothing(self):
        good = '{"tenant_id": "seed-bad", "pins": {"first": {"ok": true}}}'
        cases = {
            "bad JSON": ('[%s, {"pins": {"x": {}}' % good, "invalid JSON"),
            "wrong top level": ('"entries"', "top level"),
            "object without entries": ('{"pins": {"x": {}}}', '"entries" array'),
            "pins not an object": ('[%s, {"pins": ["x"]}]' % good, "entries[1]: pins"),
            "ttl negative": ('[%s, {"ttl_seconds": -5, "pins": {"x": {}}}]' % good,
                             "entries[1]: ttl_seconds"),
            "value not an object": ('[%s, {"pins": {"x": [1]}}]' % good,
                                    'entries[1].pins["x"]'),
            "tenant not a string": ('[%s, {"tenant_id": 1, "pins": {}}]' % good,
                                    "entries[1]: tenant_id"),
        }
        before = upserts_handled(self.server.port, "OK")
        for name, (text, want) in cases.items():
            with self.subTest(name):
                path = self.write(text, name.replace(" ", "_") + ".json")
                r = run_seed(["-f", path, "-b", self.base(), "--verify"],
                             env={"MACHINE_JWT": MACHINE})
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn(want, r.stderr)
                self.assertIn("nothing written", r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
                self.assertNotIn("[OK]", r.stdout)
        r = run_seed(["-f", os.path.join(self.tmp, "missing.json"), "-b", self.base()],
                     env={"MACHINE_JWT": MACHINE})
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing.json", r.stderr)
        self.assertIn("No such file", r.stderr)
        self.assertEqual(self.pins_of("seed-bad"), {})
        self.assertEqual(self.pins_of("global").get("first"), None)
        self.assertEqual(upserts_handled(self.server.port, "OK"), before)

    def test_non_regular_files_are_refused(self):
        # A FIFO without a writer would block a plain open() forever; a directory is no file.
        fifo = os.path.join(self.tmp, "seed.fifo")
        os.mkfifo(fifo)
        for path in (fifo, self.tmp, "/dev/null"):
            with self.subTest(path=path):
                r = run_seed(["-f", path, "-b", self.base()], env={"MACHINE_JWT": MACHINE},
                             timeout=60)
                self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
                self.assertIn("not a regular file", r.stderr)
                self.assertIn("nothing written", r.stderr)

    def test_size_cap_is_8_mib_inclusive(self):
        cap = 8 << 20
        body = '[{"tenant_id": "seed-cap", "pins": {"c": {}}}]'
        exact = self.write(body + " " * (cap - len(body)), "exact.json")
        self.assertEqual(os.path.getsize(exact), cap)
        r = run_seed(["-f", exact, "-b", self.base(), "--dry-run"], env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 1)
        over = self.write(body + " " * (cap + 1 - len(body)), "over.json")
        r = run_seed(["-f", over, "-b", self.base(), "--dry-run"], env={"MACHINE_JWT": MACHINE})
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("larger than 8 MiB", r.stderr)
        self.assertNotIn("Would upsert", r.stdout)

    def test_two_hundred_thousand_pins_dry_run(self):
        # The duplicate check is a hash set: 200k pins take about a second (the pairwise check
        # took minutes at this size); the generous bound only catches a quadratic regression.
        pins = {"k%06d" % i: {"i": i} for i in range(200000)}
        path = self.write([{"tenant_id": "seed-many", "pins": pins},
                           {"tenant_id": "seed-many2", "pins": {"k000000": {}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--dry-run"], env={"MACHINE_JWT": MACHINE},
                     timeout=60)
        self.assertSeeded(r, 200001)
        self.assertIn("[DRY-RUN] Would upsert: seed-many/k199999", r.stdout)
        path = self.write([{"tenant_id": "seed-many", "pins": pins},
                           {"tenant_id": "seed-many", "pins": {"k123456": {}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--dry-run"], env={"MACHINE_JWT": MACHINE},
                     timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn('entries[1].pins["k123456"]', r.stderr)
        self.assertIn("already given in entries[0]", r.stderr)

    def test_empty_tenant_is_global(self):
        path = self.write([{"tenant_id": "", "pins": {"seed-empty-t": {"a": 1}}}])
        r = run_seed(["-f", path, "-b", self.base(), "--verify"], env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 1)
        self.assertIn("[OK] Upserted: global/seed-empty-t", r.stdout)
        self.assertIn("[VERIFIED] API: global/seed-empty-t", r.stdout)
        self.assertIn("seed-empty-t", self.pins_of("global"))
        # The same key given again without a tenant is a duplicate (both are global/...).
        path = self.write([{"tenant_id": "", "pins": {"seed-empty-d": {"a": 1}}},
                           {"pins": {"seed-empty-d": {"a": 2}}}], "dup.json")
        r = run_seed(["-f", path, "-b", self.base()], env={"MACHINE_JWT": MACHINE})
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("tenant global, key seed-empty-d is already given in entries[0]",
                      r.stderr)
        self.assertNotIn("seed-empty-d", self.pins_of("global"))

    def test_base_with_user_information_is_refused_unechoed(self):
        path = self.write([{"tenant_id": "seed-userinfo", "pins": {"k": {}}}])
        for base in ("http://nova:s3cret-pw@127.0.0.1:%d" % self.server.port,
                     "https://s3cret-pw@127.0.0.1:%d/x" % self.server.port):
            r = run_seed(["-f", path, "-b", base], env={"MACHINE_JWT": MACHINE})
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn("user information", r.stderr)
            self.assertNotIn("s3cret-pw", r.stdout + r.stderr)
        self.assertEqual(self.pins_of("seed-userinfo"), {})

    def test_usage_errors(self):
        path = self.write([])
        for args, want in ((["-f", path], "--base"), (["-b", self.base()], "--file"),
                           (["-f", path, "-b", self.base(), "--bogus"], "--bogus"),
                           (["-f", path, "-b", self.base(), "--wait-timeout", "x"],
                            "--wait-timeout")):
            r = run_seed(args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(want, r.stderr)
        r = run_seed(["-f", path, "-b", self.base()], env={"SEED_RETRIES": "many"})
        self.assertEqual(r.returncode, 2)
        self.assertIn("SEED_RETRIES", r.stderr)

    def test_help(self):
        need_pinsctl()
        for args in (["seed", "--help"], ["help", "seed"]):
            r = subprocess.run([PINSCTL] + args, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0)
            for word in ("--file", "--base", "--dry-run", "--verify", "--sql-verify", "--wait",
                         "--wait-timeout", "MACHINE_JWT", "SEED_RETRIES", "SEED_TIMEOUT",
                         "SEED_WAIT_TIMEOUT", "DATABASE_URL"):
                self.assertIn(word, r.stdout)
        r = subprocess.run([PINSCTL, "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("seed --file F --base URL", r.stdout)


class SeedAuth(SeedCase):
    """RBAC enforced: which credential goes out, and what pinsd makes of it."""

    def file(self, tenant):
        return self.write([{"tenant_id": tenant, "pins": {"a1": {"v": 1}, "a2": {"v": 2}}}],
                          tenant + ".json")

    def test_no_credentials_fail_without_retry(self):
        before = upserts_handled(self.server.port, "UNAUTHENTICATED")
        r = run_seed(["-f", self.file("seed-noauth"), "-b", self.base()])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("warning", r.stderr)
        self.assertIn("no MACHINE_JWT", r.stderr)
        self.assertRegex(r.stdout, r"Success:\s+0\n")
        self.assertRegex(r.stdout, r"Failed:\s+2\n")
        self.assertEqual(r.stdout.count("UNAUTHENTICATED"), 2)
        self.assertNotIn("[RETRY]", r.stdout)
        self.assertNotIn("All pins seeded", r.stdout)
        self.assertEqual(upserts_handled(self.server.port, "UNAUTHENTICATED") - before, 2)
        self.assertEqual(self.pins_of("seed-noauth"), {})

    def test_machine_secret_as_machine_jwt_goes_as_machine_token(self):
        r = run_seed(["-f", self.file("seed-mjwt"), "-b", self.base(), "-v"],
                     env={"MACHINE_JWT": MACHINE})
        self.assertSeeded(r, 2)
        self.assertIn("MACHINE_JWT (not a JWT) as x-machine-token", r.stdout)
        self.assertNoSecret(r)
        self.assertEqual(sorted(self.pins_of("seed-mjwt")), ["a1", "a2"])

    def test_machine_token_variables(self):
        for var in ("MACHINE_TOKEN", "MACHINE_SECRET_TOKEN"):
            with self.subTest(var):
                tenant = "seed-" + var.lower().replace("_", "-")
                r = run_seed(["-f", self.file(tenant), "-b", self.base(), "-v"],
                             env={var: MACHINE})
                self.assertSeeded(r, 2)
                self.assertIn(var + " as x-machine-token", r.stdout)
                self.assertNoSecret(r)
        # A wrong secret: refused by pinsd, not retried.
        r = run_seed(["-f", self.file("seed-wrong"), "-b", self.base()],
                     env={"MACHINE_TOKEN": "not-the-secret"})
        self.assertEqual(r.returncode, 1)
        self.assertNotIn("[RETRY]", r.stdout)
        self.assertNotIn("not-the-secret", r.stdout + r.stderr)

    def test_credentials_with_line_ends_are_trimmed(self):
        # An env file written on Windows leaves "\r" at the end: still detected as a JWT.
        r = run_seed(["-f", self.file("seed-crlf"), "-b", self.base(), "-v"],
                     env={"MACHINE_JWT": ADMIN_JWT + "\r\n"})
        self.assertSeeded(r, 2)
        self.assertIn("MACHINE_JWT as authorization: Bearer", r.stdout)
        self.assertNoSecret(r)
        r = run_seed(["-f", self.file("seed-crlf2"), "-b", self.base()],
                     env={"MACHINE_TOKEN": " " + MACHINE + "\r"})
        self.assertSeeded(r, 2)
        r = run_seed(["-f", self.file("seed-ctl"), "-b", self.base()],
                     env={"MACHINE_JWT": ADMIN_JWT[:20] + "\x01" + ADMIN_JWT[20:]})
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("MACHINE_JWT holds a control character", r.stderr)
        self.assertNoSecret(r)
        self.assertNotIn(ADMIN_JWT[:20], r.stdout + r.stderr)
        self.assertEqual(self.pins_of("seed-ctl"), {})

    def test_real_jwt_goes_as_bearer(self):
        for name, token in (("admin", ADMIN_JWT), ("machine", MACHINE_ROLE_JWT)):
            with self.subTest(name):
                r = run_seed(["-f", self.file("seed-jwt-" + name), "-b", self.base(), "-v",
                              "--verify"], env={"MACHINE_JWT": token})
                self.assertSeeded(r, 2)
                self.assertIn("MACHINE_JWT as authorization: Bearer", r.stdout)
                self.assertNoSecret(r)
                self.assertEqual(sorted(self.pins_of("seed-jwt-" + name)), ["a1", "a2"])
        # A JWT whose role may not write: pinsd judged the Bearer token (PERMISSION_DENIED),
        # which is final.
        before = upserts_handled(self.server.port, "PERMISSION_DENIED")
        r = run_seed(["-f", self.file("seed-jwt-ro"), "-b", self.base()],
                     env={"MACHINE_JWT": READONLY_JWT})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(r.stdout.count("PERMISSION_DENIED"), 2)
        self.assertNotIn("[RETRY]", r.stdout)
        self.assertNoSecret(r)
        self.assertEqual(upserts_handled(self.server.port, "PERMISSION_DENIED") - before, 2)

    def test_runbook_command_through_the_wrapper(self):
        """`MACHINE_JWT=$MACHINE_SECRET_TOKEN python3 ops/seed_memory_pins.py --file
        ops/memory_pins_seed.json --base http://localhost:8000` (this pinsd's port)."""
        need_pinsctl()
        srv = self.fresh_server()  # the runbook's tenants, on an empty store
        base = "http://localhost:%d" % srv.port
        env = seed_env({"MACHINE_SECRET_TOKEN": MACHINE, "PINSCTL_BIN": PINSCTL})
        env["MACHINE_JWT"] = env["MACHINE_SECRET_TOKEN"]
        r = subprocess.run([sys.executable, "ops/seed_memory_pins.py", "--file",
                            "ops/memory_pins_seed.json", "--base", base],
                           cwd=harness.REPO, env=env, capture_output=True, text=True, timeout=120)
        self.assertSeeded(r, 8)
        self.assertNoSecret(r)
        for tenant, key in RUNBOOK_PINS:
            self.assertIn("%s/%s" % (tenant, key), r.stdout)
            self.assertEqual(self.get(tenant, key, srv).source, "seed_script")
        eph = self.get("test", "test:ephemeral", srv)
        self.assertEqual(eph.ttl_seconds.value, 3600)
        self.assertTrue(eph.HasField("expires_at"))
        # The runbook's curl: GET /api/v1/memory/pins/test-key?tenant_id=global answers 200.
        req = urllib.request.Request(
            "http://127.0.0.1:%d/api/v1/memory/pins/test-key?tenant_id=global" % srv.port,
            headers={"X-Machine-Token": MACHINE})
        with urllib.request.urlopen(req, timeout=10) as resp:
            self.assertEqual(resp.status, 200)
            self.assertEqual(json.loads(resp.read())["value"], {"foo": "bar"})
        # The wrapper with no pinsctl to find: a clear error.
        r = subprocess.run([sys.executable, WRAPPER, "--help"],
                           env=dict(seed_env(), PINSCTL_BIN="/nonexistent/pinsctl"),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("PINSCTL_BIN", r.stderr)


class SeedRetries(SeedCase):
    """Rate limited to 60 a minute with a burst of 2: seeding gets through on retry-after."""

    SERVER_ENV = dict(ENFORCED, RATE_LIMIT_RPM="60", RATE_LIMIT_BURST="2")

    def test_rate_limited_seed_completes_through_retries(self):
        start = time.monotonic()
        r = run_seed(["-f", SEED_FILE, "-b", self.base(), "--verify"],
                     env={"MACHINE_JWT": MACHINE, "SEED_RETRIES": "6"}, timeout=180)
        took = time.monotonic() - start
        self.assertSeeded(r, 8)
        self.assertRegex(r.stdout, r"Verified API:\s+8\n")
        self.assertIn("[RETRY]", r.stdout)
        self.assertIn("RESOURCE_EXHAUSTED", r.stdout)
        self.assertGreater(upserts_handled(self.server.port, "RESOURCE_EXHAUSTED"), 0)
        self.assertEqual(upserts_handled(self.server.port, "OK"), 8)
        # 16 calls at one a second after a burst of 2: well above 10 s, far below the bound.
        self.assertLess(took, 170)

    def test_permanent_error_is_sent_once(self):
        time.sleep(3)  # the bucket refills (2 tokens) after the previous test
        before_bad = upserts_handled(self.server.port, "INVALID_ARGUMENT")
        path = self.write([{"tenant_id": "seed-perm", "pins": {"bad/key": {"x": 1}}}])
        r = run_seed(["-f", path, "-b", self.base()],
                     env={"MACHINE_JWT": MACHINE, "SEED_RETRIES": "5"})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stdout)
        self.assertIn("(1 attempt)", r.stdout)
        self.assertNotIn("[RETRY]", r.stdout)
        self.assertRegex(r.stdout, r"Failed:\s+1\n")
        self.assertEqual(upserts_handled(self.server.port, "INVALID_ARGUMENT") - before_bad, 1)


class SeedSizeLimit(SeedCase):
    """A pin over MAX_REQUEST_BYTES: RESOURCE_EXHAUSTED without retry-after is final."""

    SERVER_ENV = dict(ENFORCED, MAX_REQUEST_BYTES="2048", MEMORY_MAX_SIZE_BYTES="1024")

    def test_too_large_message_is_sent_once(self):
        path = self.write([{"tenant_id": "seed-big", "pins": {"big": {"x": "y" * 8000}}}])
        r = run_seed(["-f", path, "-b", self.base()],
                     env={"MACHINE_JWT": MACHINE, "SEED_RETRIES": "3",
                          "SEED_BACKOFF_MS": "5000"})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("[FAILED] Upsert seed-big/big: RESOURCE_EXHAUSTED", r.stdout)
        self.assertIn("(1 attempt)", r.stdout)
        self.assertNotIn("[RETRY]", r.stdout)
        self.assertEqual(self.pins_of("seed-big"), {})


class SeedWait(SeedCase):
    """--wait: a pinsd that starts a few seconds later, and nothing at all."""

    def test_wait_for_a_late_pinsd(self):
        need_pinsctl()
        srv = harness.Server(self.SERVER_ENV)  # ports chosen, not started
        self.addCleanup(srv.cleanup)
        path = self.write([{"tenant_id": "seed-wait", "pins": {"w": {"late": True}}}])
        proc = subprocess.Popen([PINSCTL, "seed", "-f", path, "-b", self.base(srv), "--wait",
                                 "--wait-timeout", "60"],
                                env=seed_env({"MACHINE_JWT": MACHINE}), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)
            self.assertIsNone(proc.poll(), "seed did not wait")
            srv.start()
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertIn("Service ready", out)
        self.assertIn("All pins seeded and verified successfully!", out)
        self.assertEqual(sorted(self.pins_of("seed-wait", srv)), ["w"])

    def test_wait_against_nothing_times_out(self):
        port = harness.free_port()
        path = self.write([{"pins": {"never": {}}}])
        start = time.monotonic()
        r = run_seed(["-f", path, "-b", "http://127.0.0.1:%d" % port, "--wait",
                      "--wait-timeout", "2"], env={"MACHINE_JWT": MACHINE}, timeout=60)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("not ready within 2 s", r.stderr)
        self.assertNotIn("[OK]", r.stdout)
        self.assertLess(time.monotonic() - start, 50)
        # SEED_WAIT_TIMEOUT is the default of --wait-timeout.
        r = run_seed(["-f", path, "-b", "http://127.0.0.1:%d" % port, "--wait"],
                     env={"MACHINE_JWT": MACHINE, "SEED_WAIT_TIMEOUT": "1"}, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("not ready within 1 s", r.stderr)

    def test_unreachable_without_wait_fails_after_retries(self):
        port = harness.free_port()
        path = self.write([{"pins": {"nowhere": {}}}])
        r = run_seed(["-f", path, "-b", "http://127.0.0.1:%d" % port],
                     env={"MACHINE_JWT": MACHINE, "SEED_RETRIES": "2", "SEED_BACKOFF_MS": "50"},
                     timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(r.stdout.count("[RETRY]"), 2)
        self.assertIn("(3 attempts)", r.stdout)


if __name__ == "__main__":
    unittest.main()
