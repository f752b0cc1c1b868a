"""Real PostgreSQL 15 and PgBouncer servers for the integration tests.

PgServer runs initdb and postgres (fsync on, loopback only, a free port, its unix socket in its
temporary directory); PgBouncer runs pgbouncer in transaction pooling mode in front of one. Both
run as the `postgres` user when the tests run as root (CI), through subprocess's user= (a direct
setuid, so the PID we hold is the server's own and stopping by PID is exact). Every server is
stopped by PID from stop(), from the test's cleanup and, as a last resort, from atexit; its
temporary directory is removed afterwards.
"""

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
import strict  # noqa: E402,F401  (skips fail under ctest)

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PGBOUNCER = os.environ.get("PGBOUNCER_BIN", "/usr/sbin/pgbouncer")
PSQL = os.environ.get("PSQL_BIN", "/usr/bin/psql")

_live = []


def available():
    return os.path.exists(os.path.join(PG_BIN, "postgres")) and os.path.exists(PSQL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres():
    """subprocess keyword arguments that drop root to the postgres user (no-op otherwise)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _chown(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _stop_pid(proc, sig=signal.SIGINT, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@atexit.register
def _stop_all():
    for srv in list(_live):
        srv.stop()


class PgServer:
    """A PostgreSQL 15 cluster in a temporary directory, database `pins`, user `postgres`."""

    def __init__(self, max_connections=100, extra_conf=None):
        self.dir = tempfile.mkdtemp(prefix="pins-pg-")
        os.chmod(self.dir, 0o755)
        _chown(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.proc = None
        self.max_connections = max_connections
        self.extra_conf = extra_conf or {}
        self.log = os.path.join(self.dir, "postgres.log")
        subprocess.run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       **_as_postgres())
        # -N only skips initdb's own final sync: the server runs with fsync on.
        _live.append(self)

    @property
    def url(self):
        return "postgresql://postgres@127.0.0.1:%d/pins" % self.port

    def start(self, create_db=True):
        args = [os.path.join(PG_BIN, "postgres"), "-D", self.data, "-p", str(self.port),
                "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
                "-c", "max_connections=%d" % self.max_connections]
        for k, v in self.extra_conf.items():
            args += ["-c", "%s=%s" % (k, v)]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT,
                                     **_as_postgres())
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: " + self.tail_log())
            r = subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                                "-d", "postgres", "-Atc", "SELECT 1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("postgres did not start: " + self.tail_log())
        if create_db and not self.query("SELECT 1 FROM pg_database WHERE datname = 'pins'",
                                        db="postgres"):
            self.query("CREATE DATABASE pins", db="postgres")
        return self

    def stop(self, sig=signal.SIGINT):
        _stop_pid(self.proc, sig)
        self.proc = None

    def destroy(self):
        self.stop()
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql, db="pins", port=None, check=True):
        """Runs sql with psql; returns the CompletedProcess (stdout, stderr as text)."""
        return subprocess.run([PSQL, "-h", "127.0.0.1", "-p", str(port or self.port), "-U",
                               "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              check=check)

    def query(self, sql, db="pins"):
        """Rows of sql as lists of strings (unaligned, '|' separated)."""
        out = self.psql(sql, db=db).stdout
        return [line.split("|") for line in out.splitlines() if line != ""]

    def tail_log(self, n=2000):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


class PgBouncer:
    """pgbouncer in transaction pooling mode in front of a PgServer's database `pins`."""

    def __init__(self, pg, pool_size=20):
        self.pg = pg
        self.dir = tempfile.mkdtemp(prefix="pins-pgb-")
        os.chmod(self.dir, 0o755)
        _chown(self.dir)
        self.port = free_port()
        self.proc = None
        ini = os.path.join(self.dir, "pgbouncer.ini")
        users = os.path.join(self.dir, "userlist.txt")
        with open(users, "w") as f:
            f.write('"postgres" ""\n')
        with open(ini, "w") as f:
            f.write("[databases]\n")
            f.write("pins = host=127.0.0.1 port=%d dbname=pins user=postgres\n" % pg.port)
            f.write("[pgbouncer]\n")
            f.write("listen_addr = 127.0.0.1\nlisten_port = %d\n" % self.port)
            f.write("unix_socket_dir =\nauth_type = trust\nauth_file = %s\n" % users)
            f.write("pool_mode = transaction\nmax_client_conn = 500\n")
            f.write("default_pool_size = %d\n" % pool_size)
            f.write("logfile = %s\n" % os.path.join(self.dir, "pgbouncer.log"))
        for p in (ini, users):
            _chown(p)
        self.ini = ini
        _live.append(self)

    @property
    def url(self):
        return "postgresql://postgres@127.0.0.1:%d/pins" % self.port

    def start(self):
        self.proc = subprocess.Popen([PGBOUNCER, self.ini], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, **_as_postgres())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pgbouncer exited")
            r = self.pg.psql("SELECT 1", port=self.port, check=False)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start")

    def stop(self):
        _stop_pid(self.proc, signal.SIGTERM)
        self.proc = None

    def destroy(self):
        self.stop()
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)
