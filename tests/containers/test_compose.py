"""deploy/compose/compose.yaml for real: the staging stack in containers, on podman.

The host has no Docker daemon and no Docker Hub, only Debian's registry: podman (runc, cgroupfs,
netavark) runs the containers, Debian's docker-compose 1.29 drives them through `podman system
service` on a unix socket in the test's temporary directory, and compose.debian.yaml replaces the
Docker Hub images (PostgreSQL, Redis, Prometheus) with images built from Debian 12 packages on a
debootstrap'd Debian 12 base. Grafana (not packaged in Debian) is left out.

Nothing global is touched: podman reads CONTAINERS_CONF (a containers.conf written from
tests/containers/containers.conf) and CONTAINERS_STORAGE_CONF; its network configuration and
runtime state live in PINS_CONTAINERS_RUN (default /run/pins-containers: a fixed path, since
podman's database remembers the paths it was first used with), its logs and the compose .env in a
temporary directory. The base image and the built images (layer cache)
stay in PINS_CONTAINERS_CACHE (default /var/tmp/pins-containers), so a rerun is fast; a fresh
machine starts empty and builds everything (debootstrap, then the images). A lock file there keeps
two runs from sharing the storage. Every container, volume, network and the podman service are
removed at the end, also on failure.

podman's healthchecks need systemd timers, which this host lacks (no systemd as init): a thread of
the test runs `podman healthcheck run` for the stack's containers every few seconds, which is what
the timers would do, so compose's `condition: service_healthy` works unchanged.

What it asserts, through the published ports (free loopback ports, set by the .env the test
writes with random secrets):
- migrate exited 0 and finished before backend and worker started; backend's /ready is 200 with
  store ok and redis ok (PostgreSQL through PgBouncer, Redis);
- a pin written through backend (REST, X-Machine-Token, 201) is read through worker (200);
- pinsd runs as uid 10001 in its containers, and no service runs as root;
- PgBouncer answers on its port, listens on 6432 inside with pool_mode transaction, and proxies
  nova_aos (system.memory_pins, made by migrate);
- Prometheus behind the guard has both pinsd targets up, and the guard refuses POST /-/reload
  without the token (401) or with a wrong one (403) and accepts the token (200);
- `RBAC_ENFORCE=true docker-compose up -d backend` makes an unauthenticated write to backend 403
  while worker (not recreated) still accepts it;
- `docker-compose restart backend worker` brings both back ready, the pin still there.
Timings (base, images, up, total) are printed to stderr.

Needs root, podman, runc, netavark, aardvark-dns, iptables, debootstrap, docker-compose, psql (tools/deps.sh
installs them) and a reachable Debian mirror on a cold cache.
"""

import atexit
import fcntl
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))

import strict  # noqa: E402,F401  (skips fail under ctest)

ROOT = os.path.abspath(os.environ.get("PINS_ROOT", os.path.join(HERE, "..", "..")))
COMPOSE_DIR = os.path.join(ROOT, "deploy", "compose")
CACHE = os.environ.get("PINS_CONTAINERS_CACHE", "/var/tmp/pins-containers")
STATE = os.environ.get("PINS_CONTAINERS_RUN", "/run/pins-containers")
AARDVARK_DIR = "/run/containers/networks/aardvark-dns"  # netavark's, fixed in podman 4.3
MIRROR = os.environ.get("PINS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SERVICES = ["postgres", "pgbouncer", "redis", "migrate", "backend", "worker", "prometheus",
            "prometheus-guard"]  # every service but grafana
# (image, dockerfile, target); the tags compose.yaml and compose.debian.yaml name.
IMAGES = [
    ("pins-postgres:debian", "deploy/docker/debian-services.Dockerfile", "postgres"),
    ("pins-redis:debian", "deploy/docker/debian-services.Dockerfile", "redis"),
    ("pins-prometheus:debian", "deploy/docker/debian-services.Dockerfile", "prometheus"),
    ("pins-pgbouncer:local", "deploy/docker/ops.Dockerfile", "pgbouncer"),
    ("pins-prometheus-guard:local", "deploy/docker/ops.Dockerfile", "prometheus-guard"),
    ("pinsd:local", "deploy/docker/Dockerfile", None),
]
TOOLS = ["podman", "runc", "debootstrap", "docker-compose", "psql", "/usr/lib/podman/netavark",
         "iptables",
         "/usr/lib/podman/aardvark-dns"]


def missing_tools():
    return [t for t in TOOLS if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print("containers: " + msg, file=sys.stderr, flush=True)


class Env:
    """The podman environment and the stack: set up once per module, torn down at exit."""

    def __init__(self):
        self.tmp = None
        self.lock = None
        self.service = None
        self.hc_stop = threading.Event()
        self.hc_thread = None
        self.project = "pinsct" + secrets.token_hex(4)
        self.timings = {}
        self.up_done = False
        self.closed = False

    # ---- podman ---------------------------------------------------------------------------------
    def setup_podman(self):
        os.makedirs(CACHE, exist_ok=True)
        self.lock = open(os.path.join(CACHE, "lock"), "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(CACHE + " is in use by another run (its lock file is held)")
        self.tmp = tempfile.mkdtemp(prefix="pins-containers-", dir="/tmp")
        for d in ("run", "networks", "tmp"):
            os.makedirs(os.path.join(STATE, d), exist_ok=True)
        with open(os.path.join(HERE, "containers.conf")) as f:
            conf = f.read()
        conf = conf.replace("@STATE@", STATE)
        with open(os.path.join(self.tmp, "containers.conf"), "w") as f:
            f.write(conf)
        with open(os.path.join(self.tmp, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n'
                    % (os.path.join(CACHE, "storage"), os.path.join(STATE, "run")))
        with open(os.path.join(self.tmp, "registries.conf"), "w") as f:
            f.write('unqualified-search-registries = []\nshort-name-mode = "permissive"\n')
        self.sock = os.path.join(self.tmp, "podman.sock")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONTAINERS_", "DOCKER_", "COMPOSE_", "RBAC_"))}
        env.update({
            "CONTAINERS_CONF": os.path.join(self.tmp, "containers.conf"),
            "CONTAINERS_STORAGE_CONF": os.path.join(self.tmp, "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": os.path.join(self.tmp, "registries.conf"),
            "DISABLE_HC_SYSTEMD": "true",  # no systemd timers: the test runs the healthchecks
            "DOCKER_HOST": "unix://" + self.sock,
            "COMPOSE_HTTP_TIMEOUT": "300",
            "TMPDIR": os.path.join(STATE, "tmp"),
        })
        self.env = env
        # Leftovers of a killed run in the cache's storage (it is this test's alone: the lock):
        # its podman service (recorded by PID) and its containers and volumes.
        self.pidfile = os.path.join(CACHE, "service.pid")
        try:
            with open(self.pidfile) as f:
                old = int(f.read().strip() or "0")
            with open("/proc/%d/cmdline" % old, "rb") as f:
                cmdline = f.read().split(b"\0")
            if old > 1 and cmdline[:3] == [b"podman", b"system", b"service"]:
                os.kill(old, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        self.podman("rm", "-af", "-t", "5", check=False, timeout=300)
        self.podman("volume", "prune", "-f", check=False, timeout=120)
        # aardvark-dns serves every network on the same gateway address from its config files
        # there: a killed run's file (its project's name) would answer service names with that
        # run's addresses. No other run of this test is live (the lock).
        for name in glob.glob(os.path.join(AARDVARK_DIR, "pinsct*_default")):
            os.unlink(name)

    def podman(self, *args, check=True, timeout=120, env=None):
        r = subprocess.run(["podman"] + list(args), env=env or self.env, capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError("podman %s failed (%d): %s" % (args[0], r.returncode,
                                                              (r.stderr or r.stdout)[-3000:]))
        return r

    def ensure_base(self):
        t0 = time.monotonic()
        have = self.podman("image", "exists", "debian:12", check=False).returncode == 0
        if not have:
            rootfs = os.path.join(CACHE, "rootfs.tmp")
            if os.path.isdir(rootfs):
                shutil.rmtree(rootfs)
            with open(os.path.join(self.tmp, "debootstrap.log"), "w") as lf:
                r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, MIRROR],
                                   stdout=lf, stderr=subprocess.STDOUT, timeout=1200,
                                   stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                raise RuntimeError("debootstrap failed; see " + lf.name)
            # Like the official images: no apt caches, no service starts during builds.
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            imp = subprocess.run(["podman", "import", "--change", "CMD [\"bash\"]", "-",
                                  "debian:12"], stdin=tar.stdout, env=self.env,
                                 capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait(timeout=60)
            if imp.returncode != 0 or tar.returncode != 0:
                raise RuntimeError("podman import failed: " + imp.stderr[-2000:])
            shutil.rmtree(rootfs)
        # The Dockerfiles' runtime stages use debian:12-slim: the same base here.
        self.podman("tag", "debian:12", "debian:12-slim")
        self.timings["base"] = time.monotonic() - t0

    def build_images(self):
        t0 = time.monotonic()
        for tag, dockerfile, target in IMAGES:
            t1 = time.monotonic()
            args = ["build", "--pull=never", "--network", "host", "-f",
                    os.path.join(ROOT, dockerfile), "-t", tag]
            if target:
                args += ["--target", target]
            r = self.podman(*(args + [ROOT]), check=False, timeout=1800)
            with open(os.path.join(self.tmp, "build-%s.log" % (target or "pinsd")), "w") as f:
                f.write(r.stdout + r.stderr)
            if r.returncode != 0:
                raise RuntimeError("building %s failed: %s" % (tag, (r.stdout + r.stderr)[-3000:]))
            log("built %s in %.0f s" % (tag, time.monotonic() - t1))
        self.timings["images"] = time.monotonic() - t0

    def start_service(self):
        self.service_log = open(os.path.join(self.tmp, "podman-service.log"), "w")
        self.service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", "unix://" + self.sock], env=self.env,
            stdout=self.service_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % self.service.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise RuntimeError("podman system service exited: see " + self.service_log.name)
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(self.sock)
                    s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                    if b"200" in s.recv(64):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError("podman system service did not answer on its socket within 60 s")

    def healthchecks(self):
        """What podman's systemd timers would do: run each container's healthcheck."""
        while not self.hc_stop.wait(3):
            try:
                r = self.podman("ps", "-q", "--filter",
                                "label=com.docker.compose.project=" + self.project,
                                check=False, timeout=60)
                for cid in r.stdout.split():
                    if self.hc_stop.is_set():
                        return
                    self.podman("healthcheck", "run", cid, check=False, timeout=60)
            except (subprocess.TimeoutExpired, OSError):
                pass

    # ---- compose --------------------------------------------------------------------------------
    def write_env(self):
        self.ports = {k: free_port() for k in (
            "BACKEND_HTTP_PORT", "BACKEND_GRPC_PORT", "WORKER_HTTP_PORT", "WORKER_GRPC_PORT",
            "PGBOUNCER_PORT", "PROM_GUARD_PORT", "GRAFANA_PORT")}
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "MACHINE_SECRET_TOKEN": secrets.token_hex(24),
            "JWT_SECRET": secrets.token_hex(32),
            "PROM_RELOAD_TOKEN": secrets.token_hex(24),
            "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
        }
        self.envfile = os.path.join(self.tmp, "stack.env")
        fd = os.open(self.envfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            for k, v in list(self.secrets.items()) + list(self.ports.items()):
                f.write("%s=%s\n" % (k, v))
            f.write("PINS_PUBLISH_ADDR=127.0.0.1\nRBAC_ENFORCE=false\n")

    def compose(self, *args, extra_env=None, timeout=600, check=True):
        env = dict(self.env)
        env.update(extra_env or {})
        cmd = ["docker-compose", "--ansi", "never", "--env-file", self.envfile, "-p", self.project,
               "-f", os.path.join(COMPOSE_DIR, "compose.yaml"),
               "-f", os.path.join(COMPOSE_DIR, "compose.debian.yaml")] + list(args)
        r = subprocess.run(cmd, env=env, cwd=COMPOSE_DIR, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError("docker-compose %s failed (%d): %s\n%s" % (
                " ".join(args), r.returncode, (r.stdout + r.stderr)[-4000:], self.diagnostics()))
        return r

    def container(self, service):
        r = self.podman("ps", "-aq", "--filter", "label=com.docker.compose.project=" + self.project,
                        "--filter", "label=com.docker.compose.service=" + service)
        ids = r.stdout.split()
        if len(ids) != 1:
            raise AssertionError("expected one %s container, found %r" % (service, ids))
        return ids[0]

    def inspect(self, service):
        return json.loads(self.podman("inspect", self.container(service)).stdout)[0]

    def diagnostics(self):
        out = []
        try:
            r = self.podman("ps", "-a", "--format", "{{.Names}} {{.Status}}", check=False)
            out.append(r.stdout)
            for name in r.stdout.split("\n"):
                name = name.split(" ")[0]
                if name:
                    lg = self.podman("logs", "--tail", "15", name, check=False)
                    out.append("--- %s\n%s%s" % (name, lg.stdout[-1500:], lg.stderr[-1500:]))
        except Exception as e:  # noqa: BLE001 - diagnostics only
            out.append("diagnostics failed: %s" % e)
        text = "\n".join(out)
        for v in self.secrets.values() if getattr(self, "secrets", None) else []:
            text = text.replace(v, "***")
        return text

    def up(self):
        t0 = time.monotonic()
        self.start_service()
        self.hc_thread = threading.Thread(target=self.healthchecks, daemon=True)
        self.hc_thread.start()
        self.write_env()
        self.up_done = True
        self.compose("up", "-d", "--no-build", *SERVICES, timeout=900)
        for svc in ("backend", "worker"):
            wait_ready(self.url(svc), 180)
        self.timings["up"] = time.monotonic() - t0

    def url(self, svc):
        port = self.ports["BACKEND_HTTP_PORT" if svc == "backend" else "WORKER_HTTP_PORT"]
        return "http://127.0.0.1:%d" % port

    # ---- teardown -------------------------------------------------------------------------------
    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.up_done and self.service and self.service.poll() is None:
            try:
                self.compose("down", "-v", "--remove-orphans", "-t", "15", timeout=300,
                             check=False)
            except subprocess.TimeoutExpired:
                log("docker-compose down timed out; removing with podman")
        self.hc_stop.set()
        if self.hc_thread:
            self.hc_thread.join(timeout=90)
        if self.tmp:
            label = "label=com.docker.compose.project=" + self.project
            try:
                r = self.podman("ps", "-aq", "--filter", label, check=False)
                if r.stdout.split():
                    self.podman("rm", "-f", "-t", "5", *r.stdout.split(), check=False,
                                timeout=300)
                r = self.podman("volume", "ls", "-q", "--filter", label, check=False)
                if r.stdout.split():
                    self.podman("volume", "rm", "-f", *r.stdout.split(), check=False)
                r = self.podman("network", "ls", "-q", "--filter", label, check=False)
                if r.stdout.split():
                    self.podman("network", "rm", "-f", *r.stdout.split(), check=False)
            except (subprocess.TimeoutExpired, OSError) as e:
                log("cleanup: %s" % e)
        if self.service and self.service.poll() is None:
            os.killpg(self.service.pid, signal.SIGTERM)
            try:
                self.service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.service.pid, signal.SIGKILL)
                self.service.wait(timeout=30)
        if self.service:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
        if self.tmp:
            # conmon runs `podman container cleanup` after its container exited: let them finish.
            deadline = time.monotonic() + 60
            while procs_using(self.project + "_") and time.monotonic() < deadline:
                time.sleep(0.5)
            if os.environ.get("PINS_KEEP_TMP"):
                log("kept " + self.tmp)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        if self.lock:
            self.lock.close()


E = None


def procs_using(text):
    """PIDs whose command line mentions text."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


def request(method, url, body=None, headers=None, timeout=15):
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json"} if data is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(base, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            status, body = request("GET", base + "/ready", timeout=5)
            if status == 200:
                return json.loads(body)
            last = "%d %s" % (status, body[:200])
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(1)
    raise AssertionError("%s/ready not 200 within %d s (last: %s)" % (base, seconds, last))


def parse_time(s):
    # RFC 3339 with nanoseconds: keep microseconds for datetime.
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    if not m:
        raise AssertionError("unparsable time %r" % s)
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat("%s.%s%s" % (m.group(1), frac, tz)).astimezone(timezone.utc)


def setUpModule():
    global E
    miss = missing_tools()
    if os.geteuid() != 0 or miss:
        raise unittest.SkipTest("needs root and %s" % (", ".join(miss) or "root"))
    E = Env()
    atexit.register(E.close)

    def on_term(signum, frame):  # ctest's timeout: stop the tests, then atexit cleans up
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        E.setup_podman()
        E.ensure_base()
        E.build_images()
        E.up()
    except BaseException:
        E.close()
        raise
    E.timings["setup"] = time.monotonic() - t0
    log("base %.0f s, images %.0f s, up %.0f s, setup total %.0f s" % (
        E.timings["base"], E.timings["images"], E.timings["up"], E.timings["setup"]))


def tearDownModule():
    if E:
        t0 = time.monotonic()
        E.close()
        log("teardown %.0f s" % (time.monotonic() - t0))


class ComposeStack(unittest.TestCase):
    maxDiff = None

    def token(self):
        return {"X-Machine-Token": E.secrets["MACHINE_SECRET_TOKEN"]}

    def test_01_migrate_then_backend_ready(self):
        mig = E.inspect("migrate")
        self.assertEqual(mig["State"]["Status"], "exited")
        self.assertEqual(mig["State"]["ExitCode"], 0)
        finished = parse_time(mig["State"]["FinishedAt"])
        for svc in ("backend", "worker"):
            started = parse_time(E.inspect(svc)["State"]["StartedAt"])
            self.assertLessEqual(finished, started, "%s started before migrate finished" % svc)
        ready = wait_ready(E.url("backend"), 60)
        self.assertEqual(ready, {"ready": True, "checks": {"store": "ok", "redis": "ok"}})
        self.assertEqual(wait_ready(E.url("worker"), 60)["checks"]["redis"], "ok")

    def test_02_pin_written_via_backend_read_via_worker(self):
        key = "compose-" + secrets.token_hex(4)
        status, body = request("POST", E.url("backend") + "/api/v1/memory/pins",
                               {"key": key, "tenant_id": "containers", "value": {"via": "backend"}},
                               self.token())
        self.assertEqual(status, 201, body)
        status, body = request("GET", "%s/api/v1/memory/pins/%s?tenant_id=containers"
                               % (E.url("worker"), key), headers=self.token())
        self.assertEqual(status, 200, body)
        pin = json.loads(body)
        self.assertEqual((pin["key"], pin["value"]), (key, {"via": "backend"}))
        ComposeStack.pin_key = key

    def test_03_nothing_runs_as_root(self):
        for svc in SERVICES:
            if svc == "migrate":
                continue
            r = E.podman("exec", E.container(svc), "cat", "/proc/1/status")
            uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", r.stdout, re.M)
            self.assertIsNotNone(uid, r.stdout)
            uids = set(uid.groups())
            if svc in ("backend", "worker"):
                self.assertEqual(uids, {"10001"}, svc)
                self.assertIn("Name:\tpinsd", r.stdout)
            else:
                self.assertNotIn("0", uids, svc)
        self.assertEqual(E.inspect("migrate")["Config"]["User"], "10001:10001")

    def test_04_pgbouncer_transaction_mode_on_6432(self):
        env = dict(E.env, PGPASSWORD=E.secrets["POSTGRES_PASSWORD"], PGCONNECT_TIMEOUT="10")
        base = ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(E.ports["PGBOUNCER_PORT"]),
                "-U", "nova"]
        r = subprocess.run(base + ["-d", "pgbouncer", "-c", "SHOW CONFIG"], env=env,
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        conf = {}
        for line in r.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2:
                conf[parts[0]] = parts[1]
        self.assertEqual(conf.get("listen_port"), "6432")
        self.assertEqual(conf.get("pool_mode"), "transaction")
        r = subprocess.run(base + ["-d", "nova_aos", "-c", "SELECT count(*) >= 0 FROM system.memory_pins"],
                           env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "t"), r.stderr)

    def test_05_prometheus_guard(self):
        guard = "http://127.0.0.1:%d" % E.ports["PROM_GUARD_PORT"]
        deadline = time.monotonic() + 180
        health = {}
        while time.monotonic() < deadline:
            try:
                status, body = request("GET", guard + "/api/v1/targets?state=active", timeout=10)
                if status == 200:
                    health = {t["labels"].get("instance"): t["health"]
                              for t in json.loads(body)["data"]["activeTargets"]
                              if t["labels"].get("job") == "nova-backend"}
                    if sorted(health) == ["backend:8000", "worker:8000"] and \
                            set(health.values()) == {"up"}:
                        break
            except (OSError, ValueError):
                pass
            time.sleep(2)
        self.assertEqual(health, {"backend:8000": "up", "worker:8000": "up"})
        status, _ = request("POST", guard + "/-/reload")
        self.assertEqual(status, 401)
        status, _ = request("POST", guard + "/-/reload",
                            headers={"Authorization": "Bearer x" + E.secrets["PROM_RELOAD_TOKEN"]})
        self.assertEqual(status, 403)  # a wrong token (ops/nginx: 401 is for none at all)
        status, body = request("POST", guard + "/-/reload", headers={
            "Authorization": "Bearer " + E.secrets["PROM_RELOAD_TOKEN"]}, timeout=60)
        self.assertEqual(status, 200, body)

    def test_06_rbac_enforce_flag_flip(self):
        before = E.container("backend")
        E.compose("up", "-d", "--no-build", "backend", extra_env={"RBAC_ENFORCE": "true"},
                  timeout=600)
        self.assertNotEqual(E.container("backend"), before, "backend was not recreated")
        wait_ready(E.url("backend"), 180)
        pin = {"key": "unauth-" + secrets.token_hex(4), "tenant_id": "containers",
               "value": {"n": 1}}
        status, body = request("POST", E.url("backend") + "/api/v1/memory/pins", pin)
        self.assertEqual(status, 403, body)
        self.assertEqual(json.loads(body)["reason"], "no-credentials")
        status, body = request("POST", E.url("backend") + "/api/v1/memory/pins", pin, self.token())
        self.assertEqual(status, 201, body)
        # worker was not recreated: still RBAC_ENFORCE=false, so the same write passes there.
        status, body = request("POST", E.url("worker") + "/api/v1/memory/pins", pin)
        self.assertEqual(status, 201, body)

    def test_07_restart_backend_worker(self):
        started = {s: E.inspect(s)["State"]["StartedAt"] for s in ("backend", "worker")}
        E.compose("restart", "backend", "worker", extra_env={"RBAC_ENFORCE": "true"}, timeout=300)
        for svc in ("backend", "worker"):
            self.assertNotEqual(E.inspect(svc)["State"]["StartedAt"], started[svc], svc)
            ready = wait_ready(E.url(svc), 180)
            self.assertEqual(ready["checks"], {"store": "ok", "redis": "ok"}, svc)
        key = getattr(ComposeStack, "pin_key", None)
        if key:
            status, body = request("GET", "%s/api/v1/memory/pins/%s?tenant_id=containers"
                                   % (E.url("worker"), key), headers=self.token())
            self.assertEqual(status, 200, body)
        status, body = request("POST", E.url("backend") + "/api/v1/memory/pins",
                               {"key": "after-restart", "tenant_id": "containers", "value": {}})
        self.assertEqual(status, 403, body)  # the flag survived the restart


if __name__ == "__main__":
    unittest.main()
