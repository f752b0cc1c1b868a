"""deploy/local/stack.sh: the M7 staging topology on loopback (tests/ops/stack.py).

One stack for the whole module (PINS_STACK_PORTS=free, a temporary DIR): every service up, both
replicas ready on PostgreSQL through PgBouncer (transaction mode) and the stack's Redis, a pin
written through one replica read through the other, Prometheus scraping both replicas with the
rules loaded behind the reload guard, stop/start of one service, a rolling pinsd restart that
turns RBAC on and keeps it, `up` refused on a running DIR. Separate short-lived stacks check that
`up` fails cleanly on an occupied port (before and after starting services) and that `down`
stops every recorded PID and can run twice. TestDirSafety (no stack): a DIR, DIR/run or sourced
file owned by another user or writable by others is refused by every command, nothing in it sourced
and no PID in it killed; `up` refuses a non-empty unmarked DIR and leaves its mode alone; `down
--purge` refuses a marked DIR with foreign content; the default DIR is per user and private.
"""

import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import stack
from stack import Stack

try:
    import yaml
except ImportError:  # pragma: no cover  (Debian's python3 has it)
    yaml = None

SERVICES = ["postgres", "pgbouncer", "redis", "prometheus", "guard", "pinsd1", "pinsd2"]
ST = None


def setUpModule():
    global ST
    why = stack.missing()
    if why:
        raise unittest.SkipTest(why)
    ST = Stack()


def tearDownModule():
    if ST is not None:
        ST.down()


def http(method, url, headers=None, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    h = dict(headers or {})
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(pred, timeout, interval=0.5):
    """pred()'s first truthy value within timeout seconds, else the last value (falsy)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except Exception:  # noqa: BLE001  (not yet)
            last = None
        if last or time.monotonic() >= deadline:
            return last
        time.sleep(interval)


def status_lines(st):
    r = st.sh("status", timeout=60)
    rows = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in SERVICES:
            rows[parts[0]] = parts
    return r.returncode, rows, r.stdout


def alive(pid):
    """True while pid is a live process (a zombie has exited)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pids, timeout=30):
    return wait_for(lambda: not [p for p in pids if alive(p)], timeout, 0.2)


def started_pids(st):
    """Every PID stack.sh started in st.dir (DIR/logs/stack.log)."""
    out = []
    try:
        with open(os.path.join(st.dir, "logs", "stack.log")) as f:
            for line in f:
                m = re.search(r" started (\S+) PID (\d+)$", line.strip())
                if m:
                    out.append((m.group(1), int(m.group(2))))
    except OSError:
        pass
    return out


def psql(st, port, db, sql):
    env = {"PGPASSWORD": "novapass", "PGCONNECT_TIMEOUT": "5"}
    return st.run("psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "nova", "-d", db,
                  "-Atc", sql, env=env, timeout=60)


class TestStack(unittest.TestCase):
    """The module's stack; tests that change it put it back."""

    def env(self, k):
        return ST.env[k]

    def assertAllUp(self):
        rc, rows, out = status_lines(ST)
        self.assertEqual(rc, 0, out + ST.logs())
        self.assertEqual(sorted(rows), sorted(SERVICES), out)
        for name, row in rows.items():
            self.assertEqual(row[3], "up", out)
            self.assertTrue(row[1].isdigit() and row[2].isdigit(), out)

    def test_01_status_all_up(self):
        self.assertAllUp()
        rc, rows, _ = status_lines(ST)
        pids = ST.pids()
        for name in SERVICES:
            self.assertEqual(int(rows[name][1]), pids[name])
        self.assertEqual(rows["pinsd1"][2], self.env("PINSD").rsplit(":", 1)[1])
        self.assertEqual(rows["guard"][2], self.env("PROM").rsplit(":", 1)[1])
        self.assertEqual(rows["postgres"][2], self.env("PG_PORT"))
        self.assertEqual(rows["pgbouncer"][2], self.env("PGBOUNCER_PORT"))
        self.assertEqual(rows["redis"][2], self.env("REDIS_PORT"))

    def test_02_stack_env(self):
        path = os.path.join(ST.dir, "stack.env")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        e = ST.env
        for k in ("PINS_STACK_DIR", "PINS_ROOT", "PINSD_BIN", "PINSCTL_BIN", "PINSD", "PINSD_URL",
                  "PINSD2_URL", "PINS_ADDR", "PG_HOST", "PG_PORT", "PGBOUNCER_PORT",
                  "DATABASE_URL", "DATABASE_DIRECT_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_URL",
                  "PROM", "PROM_URL", "PROM_DIRECT_URL", "PROM_RULES_DIR", "PROMTOOL",
                  "MACHINE_SECRET_TOKEN", "JWT_SECRET", "ADMIN_JWT", "PROM_RELOAD_TOKEN"):
            self.assertTrue(e.get(k), k)
        self.assertEqual(e["PINSD_URL"], e["PINSD"])
        self.assertEqual(e["PINS_ADDR"], e["PINSD"])
        self.assertEqual(e["DATABASE_URL"],
                         "postgresql://nova:novapass@127.0.0.1:%s/nova_aos" % e["PGBOUNCER_PORT"])
        self.assertEqual(e["DATABASE_DIRECT_URL"],
                         "postgresql://nova:novapass@127.0.0.1:%s/nova_aos" % e["PG_PORT"])
        self.assertEqual(e["REDIS_URL"], "redis://127.0.0.1:%s/0" % e["REDIS_PORT"])
        self.assertEqual(e["PROM_RULES_DIR"], os.path.join(ST.dir, "prometheus", "rules"))
        r = ST.sh("env")
        self.assertEqual(r.returncode, 0)
        with open(path) as f:
            self.assertEqual(r.stdout, f.read())
        # the secrets are in no log and on no command line
        secrets = [e[k] for k in ("MACHINE_SECRET_TOKEN", "JWT_SECRET", "PROM_RELOAD_TOKEN",
                                  "ADMIN_JWT")]
        for logf in glob.glob(os.path.join(ST.dir, "logs", "*")) + \
                glob.glob(os.path.join(ST.dir, "guard", "logs", "*")):
            with open(logf, errors="replace") as f:
                text = f.read()
            for s in secrets:
                self.assertNotIn(s, text, logf)
        for pid in ST.pids().values():
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read().decode(errors="replace")
            for s in secrets + ["novapass"]:
                self.assertNotIn(s, cmdline)

    def test_03_ready_both_replicas(self):
        for url in (self.env("PINSD"), self.env("PINSD2_URL")):
            status, body = http("GET", url + "/ready")
            self.assertEqual(status, 200, body)
            doc = json.loads(body)
            self.assertEqual(doc["checks"], {"store": "ok", "redis": "ok"}, doc)

    def test_04_admin_status(self):
        for url in (self.env("PINSD"), self.env("PINSD2_URL")):
            status, body = http("GET", url + "/api/v1/admin/status",
                                {"Authorization": "Bearer " + self.env("ADMIN_JWT")})
            self.assertEqual(status, 200, body)
            doc = json.loads(body)
            self.assertEqual(doc["store"]["backend"], "postgres", doc)
            self.assertEqual(doc["limiter"]["backend"], "redis", doc)
            self.assertTrue(doc["flags"]["chaos_allowed"], doc)

    def test_05_pin_across_replicas(self):
        tok = {"X-Machine-Token": self.env("MACHINE_SECRET_TOKEN")}
        status, body = http("POST", self.env("PINSD") + "/api/v1/memory/pins", tok,
                            {"tenant_id": "stack-test", "key": "across", "value": {"n": 42}})
        self.assertEqual(status, 201, body)
        status, body = http("GET", self.env("PINSD2_URL")
                            + "/api/v1/memory/pins/across?tenant_id=stack-test", tok)
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["value"], {"n": 42})
        # and the row is in PostgreSQL, read directly
        r = psql(ST, self.env("PG_PORT"), "nova_aos",
                 "SELECT value::text FROM system.memory_pins WHERE tenant_id = 'stack-test' "
                 "AND key = 'across'")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(json.loads(r.stdout.strip()), {"n": 42})

    def test_06_pgbouncer_transaction_mode(self):
        port = self.env("PGBOUNCER_PORT")
        r = psql(ST, port, "pgbouncer", "SHOW CONFIG")
        self.assertEqual(r.returncode, 0, r.stdout)
        conf = {line.split("|")[0]: line.split("|")[1] for line in r.stdout.splitlines()
                if "|" in line}
        self.assertEqual(conf.get("pool_mode"), "transaction", r.stdout)
        r = psql(ST, port, "pgbouncer", "SHOW DATABASES")
        self.assertRegex(r.stdout, r"(?m)^nova_aos\|127\.0\.0\.1\|%s\|" % self.env("PG_PORT"))
        # traffic through both replicas, then: each pinsd holds connections to PgBouncer's port
        # and one to PostgreSQL's (its change feed, DATABASE_LISTEN_URL)
        tok = {"X-Machine-Token": self.env("MACHINE_SECRET_TOKEN")}
        for url in (self.env("PINSD"), self.env("PINSD2_URL")):
            status, body = http("GET", url + "/api/v1/memory/pins?tenant_id=stack-test", tok)
            self.assertEqual(status, 200, body)
        pids = ST.pids()

        def conns():
            out = subprocess.run(["ss", "-tnpH", "state", "established"], stdout=subprocess.PIPE,
                                 text=True, timeout=30).stdout
            found = {}
            for line in out.splitlines():
                cols = line.split()
                if len(cols) < 4:
                    continue
                peer = cols[3]
                for m in re.finditer(r"pid=(\d+)", line):
                    found.setdefault(int(m.group(1)), []).append(peer)
            return found

        found = conns()
        for name in ("pinsd1", "pinsd2"):
            peers = found.get(pids[name], [])
            self.assertIn("127.0.0.1:%s" % port, peers, (name, peers))
            # calls go through PgBouncer; only the change feed's LISTEN connection is direct
            self.assertEqual(peers.count("127.0.0.1:%s" % self.env("PG_PORT")), 1, (name, peers))
        r = psql(ST, self.env("PG_PORT"), "nova_aos", "SELECT count(*) FROM pg_stat_activity"
                 " WHERE application_name = 'pinsd-feed'")
        self.assertEqual(r.stdout.strip(), "2", "one change feed per replica: %s" % r.stdout)
        r = psql(ST, port, "pgbouncer", "SHOW CLIENTS")
        self.assertGreaterEqual(len([ln for ln in r.stdout.splitlines()
                                     if ln.startswith("C|nova|nova_aos|")]), 2, r.stdout)

    def test_07_prometheus_through_guard(self):
        prom = self.env("PROM")

        def targets_up():
            status, body = http("GET", prom + "/api/v1/targets")
            if status != 200:
                return None
            ts = [t for t in json.loads(body)["data"]["activeTargets"]
                  if t["labels"].get("job") == "nova-backend"]
            if len(ts) == 2 and all(t["health"] == "up" for t in ts):
                return ts
            return None

        ts = wait_for(targets_up, 90)
        self.assertTrue(ts, "nova-backend targets not both up within 90s")
        want = {self.env("PINSD").split("//")[1], self.env("PINSD2_URL").split("//")[1]}
        self.assertEqual({t["labels"]["instance"] for t in ts}, want)
        status, body = http("GET", prom + "/api/v1/rules")
        self.assertEqual(status, 200)
        groups = {g["name"] for g in json.loads(body)["data"]["groups"]}
        expect = set()
        if yaml is not None:
            for path in glob.glob(os.path.join(stack.ROOT, "ops", "prometheus_rules", "*.yml")):
                with open(path) as f:
                    expect |= {g["name"] for g in (yaml.safe_load(f) or {}).get("groups", [])}
        self.assertTrue(groups, "no rule groups loaded")
        self.assertEqual(groups, expect or groups)
        rules_dir = self.env("PROM_RULES_DIR")
        self.assertEqual(sorted(os.listdir(rules_dir)),
                         sorted(os.path.basename(p) for p in glob.glob(
                             os.path.join(stack.ROOT, "ops", "prometheus_rules", "*.yml"))))

    def test_08_guard_reload_token(self):
        url = self.env("PROM") + "/-/reload"
        self.assertEqual(http("POST", url)[0], 401)
        self.assertEqual(http("POST", url, {"Authorization": "Bearer " + "x" * 40})[0], 403)
        status, body = http("POST", url,
                            {"Authorization": "Bearer " + self.env("PROM_RELOAD_TOKEN")}, timeout=60)
        self.assertEqual(status, 200, body)

    def test_09_stop_start_redis(self):
        r = ST.sh("stop redis")
        self.assertEqual(r.returncode, 0, r.stdout)
        try:
            rc, rows, out = status_lines(ST)
            self.assertEqual(rc, 3, out)
            self.assertEqual(rows["redis"][3], "down", out)
            self.assertEqual(rows["redis"][1], "-", out)
            for name in SERVICES:
                if name != "redis":
                    self.assertEqual(rows[name][3], "up", out)
        finally:
            r = ST.sh("start redis")
        self.assertEqual(r.returncode, 0, r.stdout)
        rc, rows, out = status_lines(ST)
        self.assertEqual(rc, 0, out)
        self.assertEqual(rows["redis"][3], "up", out)
        # pinsd finds Redis again by itself
        ok = wait_for(lambda: json.loads(http("GET", self.env("PINSD") + "/ready")[1])
                      ["checks"]["redis"] == "ok", 60)
        self.assertTrue(ok)

    def test_10_rbac_rolling_restart(self):
        url = self.env("PINSD") + "/api/v1/memory/pins"
        pin = {"tenant_id": "t1", "key": "k", "value": {}}
        tok = {"X-Machine-Token": self.env("MACHINE_SECRET_TOKEN")}
        before = ST.pids()
        r = ST.sh("restart pinsd", env={"RBAC_ENFORCE": "true"})
        self.assertEqual(r.returncode, 0, r.stdout)
        try:
            after = ST.pids()
            self.assertNotEqual(before["pinsd1"], after["pinsd1"])
            self.assertNotEqual(before["pinsd2"], after["pinsd2"])
            self.assertEqual(before["postgres"], after["postgres"])
            for u in (url, self.env("PINSD2_URL") + "/api/v1/memory/pins"):
                self.assertEqual(http("POST", u, body=pin)[0], 403)
                self.assertEqual(http("POST", u, tok, pin)[0], 201)
            # RBAC_ENFORCE=true was written to pinsd.env: a plain restart keeps it
            env = {k: v for k, v in ST.env.items() if k != "RBAC_ENFORCE"}
            r = subprocess.run([stack.SCRIPT, "--dir", ST.dir, "restart", "pinsd"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout)
            self.assertEqual(http("POST", url, body=pin)[0], 403)
            self.assertEqual(http("POST", url, tok, pin)[0], 201)
            with open(os.path.join(ST.dir, "pinsd.env")) as f:
                self.assertIn("RBAC_ENFORCE=true\n", f.read())
        finally:
            r = ST.sh("restart pinsd", env={"RBAC_ENFORCE": "false"})
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(http("POST", url, body=pin)[0], 201)
        self.assertAllUp()

    def test_11_up_refused_when_running(self):
        pids = ST.pids()
        r = ST.sh("up")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("already has a running stack", r.stdout)
        self.assertEqual(ST.pids(), pids)
        self.assertAllUp()

    def test_12_usage_errors(self):
        for verb in ("bogus", "stop", "stop nosuch", "status extra", "down --nope"):
            r = ST.sh(verb)
            self.assertEqual(r.returncode, 2, (verb, r.stdout))
        r = ST.run(stack.SCRIPT, "--help")
        self.assertEqual(r.returncode, 0)
        for word in ("up", "down", "--purge", "status", "stop", "start", "restart", "env",
                     "PINS_STACK_DIR", "PINS_STACK_PORTS", "PINSD_BIN", "PINSCTL_BIN",
                     "PINS_STACK_PG_MAX_CONNECTIONS", "PINS_STACK_PGB_POOL_SIZE", "RBAC_ENFORCE",
                     "PINS_SWEEP_INTERVAL_SECONDS", "8000", "50051", "8001", "50052", "5433",
                     "6432", "6379", "9091", "9090"):
            self.assertIn(word, r.stdout)
        self.assertAllUp()


class TestLifecycle(unittest.TestCase):
    """Short-lived stacks of their own (after the module's stack, which they leave alone)."""

    def test_down_stops_every_pid_and_twice(self):
        st = Stack()
        try:
            pids = st.pids()
            self.assertEqual(sorted(pids), sorted(SERVICES))
            for p in pids.values():
                self.assertTrue(alive(p))
            r = st.sh("down")
            self.assertEqual(r.returncode, 0, r.stdout)
            # down waits for each process itself: nothing may be left right after it returns
            self.assertEqual([p for p in pids.values() if alive(p)], [])
            started = [p for _, p in started_pids(st)]
            self.assertTrue(set(pids.values()) <= set(started))
            self.assertEqual([p for p in started if alive(p)], [])
            r = st.sh("down")
            self.assertEqual(r.returncode, 0, r.stdout)
            rc, rows, out = status_lines(st)
            self.assertEqual(rc, 3, out)
            self.assertTrue(all(row[3] == "down" for row in rows.values()), out)
            r = st.sh("down --purge")
            self.assertEqual(r.returncode, 0, r.stdout)
            self.assertFalse(os.path.exists(st.dir))
        finally:
            st.down()

    def _occupied(self, listen, override):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        if listen:
            s.listen(1)
        port = s.getsockname()[1]
        try:
            st = Stack(env={override: str(port)}, up=False)
            try:
                r = st.sh("up", timeout=600)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn(str(port), r.stdout + st.logs())
                started = started_pids(st)
                self.assertTrue(wait_dead([p for _, p in started]),
                                "left running: %r\n%s" % (started, r.stdout))
                rc, rows, out = status_lines(st)
                self.assertEqual(rc, 3, out)
                self.assertTrue(all(row[3] == "down" and row[1] == "-" for row in rows.values()),
                                out)
                self.assertEqual(st.pids(), {})
                return r, started
            finally:
                st.down()
        finally:
            s.close()

    def test_up_occupied_port_refused(self):
        # a listening socket on pinsd2's port: refused before anything starts
        r, started = self._occupied(True, "PINS_STACK_PORT_PINSD2")
        self.assertIn("already in use", r.stdout)
        self.assertEqual(started, [])

    def test_up_fails_late_and_stops_what_it_started(self):
        # a socket bound (not listening) on Prometheus's port: the check before starting passes,
        # Prometheus cannot bind, and up stops the five services it had started
        r, started = self._occupied(False, "PINS_STACK_PORT_PROMETHEUS")
        names = [n for n, _ in started]
        for name in ("postgres", "pgbouncer", "redis", "pinsd1", "pinsd2", "prometheus"):
            self.assertIn(name, names, r.stdout)
        self.assertIn("up failed: stopping what it started", r.stdout)


def proc_start(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[19]


class TestDirSafety(unittest.TestCase):
    """The stack directory must be the caller's own: nothing in an unsafe DIR is sourced, no PID
    in it is killed; up adopts only an empty or marked DIR and never chmods one; down --purge
    removes only what stack.sh made. No stack is started."""

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="pins-stack-safety-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.marker = os.path.join(self.base, "SOURCED")
        pinsd, pinsctl = stack.binaries()
        self.env = dict(os.environ, PINS_ROOT=stack.ROOT, PINSD_BIN=pinsd, PINSCTL_BIN=pinsctl,
                        PINS_STACK_PORTS="free")
        self.env.pop("PINS_STACK_DIR", None)

    def sh(self, d, verb, env=None, timeout=120):
        e = dict(self.env, **(env or {}))
        args = [stack.SCRIPT] + (["--dir", d] if d else []) + verb.split()
        return subprocess.run(args, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def plant(self, d, victim):
        """Files that create the marker when sourced, and a PID file naming victim."""
        for name in ("ports.env", "stack.env", "pinsd.env"):
            with open(os.path.join(d, name), "w") as f:
                f.write("touch %s\n" % self.marker)
        os.makedirs(os.path.join(d, "run"), exist_ok=True)
        for name in ("redis", "pinsd1"):
            with open(os.path.join(d, "run", name + ".pid"), "w") as f:
                f.write("%d\n" % victim.pid)
            with open(os.path.join(d, "run", name + ".start"), "w") as f:
                f.write(proc_start(victim.pid) + "\n")

    def test_unsafe_dir_refused_by_every_command(self):
        victim = subprocess.Popen(["sleep", "300"])
        self.addCleanup(victim.wait, 30)
        self.addCleanup(victim.kill)
        root = os.geteuid() == 0
        nobody = pwd.getpwnam("nobody").pw_uid if root else None
        cases = [("dir mode 0777", "dir", 0o777, None)]
        if root:
            cases += [("dir owned by nobody", "dir", 0o755, nobody),
                      ("run owned by nobody", "run", 0o755, nobody),
                      ("run mode 0777", "run", 0o777, None)]
        for i, (what, target, mode, owner) in enumerate(cases):
            d = os.path.join(self.base, "s%d" % i)
            os.mkdir(d, 0o700)
            self.plant(d, victim)
            open(os.path.join(d, ".pins-stack"), "w").close()
            t = d if target == "dir" else os.path.join(d, target)
            if owner is not None:
                os.chown(t, owner, -1)
            os.chmod(t, mode)
            for verb in ("status", "env", "down", "down --purge", "up", "stop redis",
                         "start redis", "restart pinsd"):
                with self.subTest(case=what, verb=verb):
                    r = self.sh(d, verb)
                    self.assertEqual(r.returncode, 1, r.stdout)
                    self.assertIn("refusing", r.stdout)
                    self.assertFalse(os.path.exists(self.marker), r.stdout)
                    self.assertIsNone(victim.poll(), "the planted PID was killed: " + r.stdout)
                    self.assertEqual(os.stat(t).st_mode & 0o7777, mode)
                    self.assertTrue(os.path.isdir(d))
        # chaos scripts and RUNBOOK's `. <(stack.sh env)` go through env: refused above
        self.assertIsNone(victim.poll())
        if not root:
            return
        # a safe DIR whose files to source belong to someone else (no PID files this time)
        d = os.path.join(self.base, "files")
        os.mkdir(d, 0o700)
        for name in ("ports.env", "stack.env", "pinsd.env"):
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write("touch %s\n" % self.marker)
            os.chown(path, nobody, -1)
        for verb in ("status", "env", "stop redis", "start redis", "restart pinsd"):
            with self.subTest(case="files owned by nobody", verb=verb):
                r = self.sh(d, verb)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertIn("refusing file", r.stdout)
                self.assertFalse(os.path.exists(self.marker), r.stdout)

    def test_up_refuses_non_empty_unmarked_dir(self):
        d = os.path.join(self.base, "project")
        os.makedirs(os.path.join(d, "notes"))
        with open(os.path.join(d, "notes", "notes.txt"), "w") as f:
            f.write("precious\n")
        os.chmod(d, 0o775)   # group-writable: refused as such
        r = self.sh(d, "up")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("mode 775 is group/other-writable", r.stdout)
        self.assertEqual(os.stat(d).st_mode & 0o7777, 0o775)
        os.chmod(d, 0o755)
        r = self.sh(d, "up")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("is not empty and is not a stack directory", r.stdout)
        self.assertEqual(os.stat(d).st_mode & 0o7777, 0o755)
        self.assertEqual(sorted(os.listdir(d)), ["notes"])
        r = self.sh(d, "down --purge")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("no .pins-stack", r.stdout)
        self.assertTrue(os.path.exists(os.path.join(d, "notes", "notes.txt")))
        self.assertEqual(os.stat(d).st_mode & 0o7777, 0o755)

    def test_purge_refuses_foreign_content(self):
        d = os.path.join(self.base, "marked")
        os.mkdir(d, 0o700)
        for name in (".pins-stack", "ports.env"):
            open(os.path.join(d, name), "w").close()
        os.mkdir(os.path.join(d, "logs"))
        with open(os.path.join(d, "notes.txt"), "w") as f:
            f.write("precious\n")
        r = self.sh(d, "down --purge")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("holds what stack.sh did not create ( notes.txt )", r.stdout)
        self.assertTrue(os.path.exists(os.path.join(d, "notes.txt")))
        os.unlink(os.path.join(d, "notes.txt"))
        r = self.sh(d, "down --purge")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertFalse(os.path.exists(d))

    def test_default_dir_is_private_and_created(self):
        run = os.path.join(self.base, "xdg")
        os.mkdir(run, 0o700)
        want = os.path.join(run, "pins-stack-%d" % os.getuid())
        env = {"XDG_RUNTIME_DIR": run}
        r = self.sh(None, "env", env=env)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("no stack in %s " % want, r.stdout)
        self.assertFalse(os.path.exists(want))
        # up creates it (private, marked), then stops at an occupied port before any service
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        self.addCleanup(s.close)
        env["PINS_STACK_PORT_PINSD2"] = str(s.getsockname()[1])
        r = self.sh(None, "up", env=env)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("already in use", r.stdout)
        mode = os.stat(want).st_mode & 0o7777
        self.assertEqual(mode, 0o711 if os.geteuid() == 0 else 0o700)
        self.assertTrue(os.path.exists(os.path.join(want, ".pins-stack")))
        r = self.sh(None, "down --purge", env=env)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertFalse(os.path.exists(want))

    def test_bad_postgres_settings_refused(self):
        for k in ("PINS_STACK_PG_MAX_CONNECTIONS", "PINS_STACK_PGB_POOL_SIZE"):
            for v in ("abc", "0", "-5", "100000", ""):
                with self.subTest(k=k, v=v):
                    d = os.path.join(self.base, "never")
                    r = self.sh(d, "up", env={k: v})
                    self.assertEqual(r.returncode, 2, r.stdout)
                    self.assertIn(k + " must be a whole number", r.stdout)
                    self.assertFalse(os.path.exists(d))


if __name__ == "__main__":
    unittest.main()
