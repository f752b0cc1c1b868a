"""Real Prometheus and nginx servers for the ops tests.

Prometheus runs /usr/bin/prometheus (Debian 12's 2.42) with its TSDB, its configuration (when given
as text) and its log in a temporary directory, listening on 127.0.0.1 and a free port; Nginx runs
/usr/sbin/nginx (Debian 12's 1.22) with a prefix in a temporary directory that holds its
configuration, pid file, logs and temp paths, so nothing is read from or written to /etc/nginx or
/var/lib/nginx. Both are children of the test, waited for with a bound, stopped by PID from stop(),
from the test's cleanup and, as a last resort, from atexit. Prometheus does not refuse root, so it
runs as the test's user; nginx's master does too, and when that is root its workers run as
nobody:nogroup (the prefix is made traversable for them).

    with Prometheus(config_text=CONF, lifecycle=True) as prom:
        prom.query("up")                  # data.result of /api/v1/query
        prom.api("/api/v1/rules")         # decoded JSON
        prom.wait_for(lambda: prom.query("up"), timeout=30)

    with Nginx.guard(prom, token) as guard:   # ops/nginx/render_guard.sh in front of prom
        status, headers, body = http("POST", guard.url + "/-/reload")

A server's temporary directory is removed by destroy() (and at exit) unless PINS_KEEP_TMP=1; its log
is printed to stderr when it fails to start, and log() returns it for a failing test to print.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import strict  # noqa: E402,F401  (skips fail under ctest)

PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
KEEP = os.environ.get("PINS_KEEP_TMP") == "1"

_live = []


def prometheus_available():
    return os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)


def nginx_available():
    return os.access(NGINX, os.X_OK)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, headers=None, data=None, timeout=10):
    """One HTTP request; returns (status, headers dict with lower-case names, body bytes).
    HTTP error statuses are returned, not raised."""
    if isinstance(data, str):
        data = data.encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}, body


def _wait_port(port, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (what, proc.returncode))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on 127.0.0.1:%d within %ds" % (what, port, timeout))


def _stop_pid(proc, timeout=15, group=False):
    """SIGTERM to the PID, then SIGKILL (to its process group when group: nginx's workers), bounded."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(10)


@atexit.register
def _stop_all():
    for srv in list(_live):
        srv.destroy()


def _tail(path, n=4000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


class _Server:
    proc = None
    dir = None
    logfile = None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def log(self):
        """The server's whole log (for a failing test to print)."""
        return _tail(self.logfile, n=1 << 30)

    def tail_log(self, n=4000):
        return _tail(self.logfile, n)

    def _fail(self, msg):
        text = "%s\n--- %s ---\n%s" % (msg, self.logfile, self.tail_log())
        print(text, file=sys.stderr)
        self.stop()
        raise RuntimeError(text)

    def destroy(self):
        self.stop()
        if self in _live:
            _live.remove(self)
        if self.dir and not KEEP:
            shutil.rmtree(self.dir, ignore_errors=True)


class Prometheus(_Server):
    """/usr/bin/prometheus on 127.0.0.1:<free port>, TSDB and log in a temporary directory.

    config: path of a configuration file (its relative rule_files resolve against its directory);
    config_text: configuration written to <dir>/prometheus.yml instead (files it names relative
    to itself can be written with write_file()). lifecycle adds --web.enable-lifecycle; args are
    appended to the command line."""

    def __init__(self, config=None, config_text=None, lifecycle=False, args=(), port=None,
                 ready_timeout=60):
        if (config is None) == (config_text is None):
            raise ValueError("give exactly one of config and config_text")
        self.dir = tempfile.mkdtemp(prefix="pins-prom-")
        self.port = port or free_port()
        self.config = config
        if config_text is not None:
            self.config = self.write_file("prometheus.yml", config_text)
        self.lifecycle = lifecycle
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.logfile = os.path.join(self.dir, "prometheus.log")
        _live.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def write_file(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self):
        cmd = [PROMETHEUS, "--config.file=" + self.config,
               "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
               "--web.listen-address=127.0.0.1:%d" % self.port,
               "--log.level=info"]
        if self.lifecycle:
            cmd.append("--web.enable-lifecycle")
        cmd += self.args
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail("prometheus exited with %s" % self.proc.returncode)
            try:
                status, _, _ = http("GET", self.url + "/-/ready", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self._fail("prometheus not ready within %ds" % self.ready_timeout)

    def stop(self):
        _stop_pid(self.proc)

    def api(self, path, params=None, method="GET", timeout=10):
        """Decoded JSON of GET <url><path>?<params> (also when the HTTP status is an error)."""
        url = self.url + path
        data = None
        if params:
            enc = urllib.parse.urlencode(params, doseq=True)
            if method == "GET":
                url += "?" + enc
            else:
                data = enc.encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else {}
        status, _, body = http(method, url, headers=headers, data=data, timeout=timeout)
        try:
            return json.loads(body)
        except ValueError:
            raise RuntimeError("%s %s: HTTP %d, not JSON: %r" % (method, path, status, body[:500]))

    def query(self, expr, time=None):
        """data.result of /api/v1/query (an instant query); raises unless status is success."""
        params = {"query": expr}
        if time is not None:
            params["time"] = str(time)
        doc = self.api("/api/v1/query", params)
        if doc.get("status") != "success":
            raise RuntimeError("query %r: %s: %s" % (expr, doc.get("errorType"), doc.get("error")))
        return doc["data"]["result"]

    def wait_for(self, pred, timeout=60, interval=0.5):
        """pred()'s first truthy value, polled every interval for at most timeout seconds;
        exceptions from pred count as not yet. Raises TimeoutError with the last value or error."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                value = pred()
                if value:
                    return value
                last = value
            except Exception as e:  # noqa: BLE001  (not yet; reported on timeout)
                last = e
            if time.monotonic() >= deadline:
                raise TimeoutError("condition not met within %ss; last: %r" % (timeout, last))
            time.sleep(interval)


class Nginx(_Server):
    """/usr/sbin/nginx with its prefix (configuration, pid file, logs, temp paths) in a temporary
    directory, on 127.0.0.1:<port> (a free port unless given).

    The configuration must set pid, the log paths and the http temp paths inside the prefix (see
    http_paths()); as root it should carry user_directive(). Nginx.guard() renders the reload guard
    of ops/nginx with ops/nginx/render_guard.sh."""

    def __init__(self, conf_text=None, port=None, start_timeout=15):
        self.dir = tempfile.mkdtemp(prefix="pins-nginx-")
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o711)  # the workers (nobody) reach their temp paths
        self.port = port or free_port()
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.logfile = os.path.join(self.dir, "logs", "error.log")
        self.access_log = os.path.join(self.dir, "logs", "access.log")
        os.makedirs(os.path.join(self.dir, "logs"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        os.chmod(os.path.join(self.dir, "tmp"), 0o711)
        self.start_timeout = start_timeout
        if conf_text is not None:
            self.write_conf(conf_text)
        _live.append(self)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @staticmethod
    def user_directive():
        """`user nobody nogroup;` when running as root (nginx's workers drop to it), else ''."""
        return "user nobody nogroup;" if os.geteuid() == 0 else ""

    def http_paths(self):
        """http-level directives keeping the temp paths and the access log inside the prefix."""
        t = os.path.join(self.dir, "tmp")
        return "\n".join(
            ["%s %s/%s;" % (d, t, d.split("_")[0]) for d in
             ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
              "uwsgi_temp_path", "scgi_temp_path")]
            + ["access_log %s;" % self.access_log])

    def write_conf(self, text):
        with open(self.conf, "w") as f:
            f.write(text)
        os.chmod(self.conf, 0o600)
        return self.conf

    @classmethod
    def guard(cls, upstream, token, root=None, port=None, extra_args=()):
        """The reload guard (ops/nginx) in front of upstream (a Prometheus, or "host:port"),
        rendered by ops/nginx/render_guard.sh with PROM_RELOAD_TOKEN=token in its environment."""
        self = cls(port=port)
        if isinstance(upstream, Prometheus):
            upstream = "127.0.0.1:%d" % upstream.port
        script = os.path.join(root or ROOT, "ops", "nginx", "render_guard.sh")
        cmd = [script, "--listen", "127.0.0.1:%d" % self.port, "--upstream", upstream,
               "--prefix", self.dir, "--out", self.conf]
        if os.geteuid() == 0:
            cmd += ["--user", "nobody:nogroup"]
        cmd += list(extra_args)
        env = dict(os.environ, PROM_RELOAD_TOKEN=token)
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=30)
        if r.returncode != 0:
            self.destroy()
            raise RuntimeError("render_guard.sh failed (%d): %s%s" % (r.returncode, r.stdout,
                                                                       r.stderr))
        self.access_log = os.path.join(self.dir, "logs", "access.log")
        return self

    def start(self):
        pid = os.path.join(self.dir, "nginx.pid")
        with open(self.conf) as f:
            has_pid = any(line.strip().startswith("pid ") for line in f)
        glob = "daemon off;" + ("" if has_pid else " pid %s;" % pid)
        cmd = [NGINX, "-p", self.dir + "/", "-c", self.conf, "-e", self.logfile, "-g", glob]
        test = subprocess.run(cmd[:-2] + ["-g", glob, "-t", "-q"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=30)
        if test.returncode != 0:
            self._fail("nginx -t failed: " + test.stdout)
        out = open(os.path.join(self.dir, "logs", "stderr.log"), "ab")
        # its own session: a last-resort SIGKILL reaches the workers too (killpg of our child's id)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        try:
            _wait_port(self.port, self.proc, self.start_timeout, "nginx")
        except RuntimeError as e:
            self._fail(str(e))
        return self

    def stop(self):
        _stop_pid(self.proc, group=True)

    def logs(self):
        """Everything nginx wrote: error log, access log and its stderr."""
        return "".join(_tail(os.path.join(self.dir, "logs", n), 1 << 30)
                       for n in sorted(os.listdir(os.path.join(self.dir, "logs"))))
