"""The local M7 stack (deploy/local/stack.sh) for the ops tests.

    from stack import Stack
    st = Stack(env={"RATE_LIMIT_RPM": "0"})   # PINS_STACK_PORTS=free, a fresh temporary DIR, up
    st.env                                    # stack.env plus PATH etc., for subprocess(env=st.env)
    st.run("bash", "-c", "curl -sf $PINSD/ready")   # CompletedProcess, stdout+stderr in .stdout
    st.sh("stop redis"); st.sh("restart pinsd", env={"RBAC_ENFORCE": "true"})
    st.down()                                 # stop by PID; also at exit; safe to call twice

One Stack per test module (setUpModule / tearDownModule), never one per test: `up` starts seven
servers. PINSD_BIN, PINSCTL_BIN and PINS_ROOT of the environment (ctest sets them) are passed on
to stack.sh. The temporary DIR is removed by down() unless PINS_KEEP_TMP=1; when `up` fails, its
output and the end of every log are in the RuntimeError raised.
"""

import atexit
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import strict  # noqa: E402,F401  (skips fail under ctest)

ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
SCRIPT = os.path.join(ROOT, "deploy", "local", "stack.sh")
KEEP = os.environ.get("PINS_KEEP_TMP") == "1"

# what stack.sh needs from the Debian packages
TOOLS = ("/usr/lib/postgresql/15/bin/postgres", "/usr/sbin/pgbouncer", "/usr/bin/psql",
         "/usr/bin/redis-server", "/usr/bin/redis-cli", "/usr/bin/prometheus", "/usr/bin/promtool",
         "/usr/sbin/nginx", "/usr/bin/curl", "/usr/bin/openssl")

_live = []


def binaries():
    """(pinsd, pinsctl): PINSD_BIN / PINSCTL_BIN, else what tools/run.sh builds."""
    return (os.environ.get("PINSD_BIN") or os.path.join(ROOT, "build-release", "pinsd"),
            os.environ.get("PINSCTL_BIN") or os.path.join(ROOT, "build-release", "pinsctl"))


def missing():
    """Why a stack cannot run here ('' when it can)."""
    for path in TOOLS + binaries():
        if not os.access(path, os.X_OK):
            return "not found: " + path
    return ""


def _tail(path, n=3000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


SANITIZER = re.compile(r"ERROR: (?:AddressSanitizer|LeakSanitizer)|runtime error: ")


def sanitizer_reports(stack_dir):
    """The pinsd logs of a stack directory that hold a sanitizer report, with the report's start
    (empty when none): a sanitizer build's pinsd reports into its log, which nobody else reads."""
    out = []
    for name in ("pinsd1.log", "pinsd2.log"):
        path = os.path.join(stack_dir, "logs", name)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        m = SANITIZER.search(text)
        if m:
            out.append("%s:\n%s" % (name, text[max(0, m.start() - 200):m.start() + 3000]))
    return out


@atexit.register
def _down_all():
    for st in list(_live):
        st.down()


class Stack:
    """deploy/local/stack.sh up in a fresh temporary directory with free loopback ports."""

    def __init__(self, env=None, up=True, timeout=600):
        pinsd, pinsctl = binaries()
        self.dir = tempfile.mkdtemp(prefix="pins-stack-")
        os.chmod(self.dir, 0o711)  # postgres and the guard's workers go through it
        self.base_env = dict(os.environ, PINS_STACK_PORTS="free", PINS_STACK_DIR=self.dir,
                             PINS_ROOT=ROOT, PINSD_BIN=pinsd, PINSCTL_BIN=pinsctl)
        self.base_env.update(env or {})
        self.env = dict(self.base_env)
        self._down = False
        _live.append(self)
        if up:
            self.up(timeout)

    def up(self, timeout=600):
        r = self.sh("up", timeout=timeout)
        if r.returncode != 0:
            text = "stack.sh up failed (%d):\n%s%s" % (r.returncode, r.stdout, self.logs())
            print(text, file=sys.stderr)
            self.down()
            raise RuntimeError(text)
        self.load_env()
        return r

    def load_env(self):
        """st.env = the environment of up plus DIR/stack.env (sourced by bash)."""
        r = subprocess.run(["bash", "-c", '. "$1" && env -0', "_",
                            os.path.join(self.dir, "stack.env")],
                           env=self.base_env, stdout=subprocess.PIPE, check=True, timeout=30)
        env = {}
        for item in r.stdout.split(b"\0"):
            if b"=" in item:
                k, v = item.split(b"=", 1)
                env[k.decode()] = v.decode("utf-8", "replace")
        self.env = env
        return env

    def run(self, *args, env=None, timeout=300, input=None):
        """args run with st.env (plus env); text, stdout and stderr together in .stdout."""
        e = dict(self.env)
        e.update(env or {})
        return subprocess.run(list(args), env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def sh(self, verb, env=None, timeout=300):
        """deploy/local/stack.sh --dir DIR VERB... (verb: a string split like a shell would)."""
        return self.run(SCRIPT, "--dir", self.dir, *shlex.split(verb), env=env, timeout=timeout)

    def pids(self):
        """{service: PID} of DIR/run/*.pid (services currently recorded)."""
        out = {}
        run = os.path.join(self.dir, "run")
        for name in sorted(os.listdir(run)) if os.path.isdir(run) else ():
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(run, name)) as f:
                        out[name[:-4]] = int(f.read().strip())
                except (OSError, ValueError):
                    pass
        return out

    def log(self, service):
        return _tail(os.path.join(self.dir, "logs", service + ".log"), 1 << 30)

    def logs(self, n=3000):
        """The end of every log (for a failing test to print)."""
        d = os.path.join(self.dir, "logs")
        names = sorted(os.listdir(d)) if os.path.isdir(d) else []
        return "".join("--- %s ---\n%s\n" % (n_, _tail(os.path.join(d, n_), n)) for n_ in names)

    def down(self):
        """stack.sh down (by PID, bounded), then removes DIR; safe to call twice. Raises
        AssertionError when a pinsd of the stack logged a sanitizer report (ASan/UBSan builds)."""
        if self._down:
            return
        self._down = True
        reports = []
        try:
            r = self.sh("down", timeout=300)
            if r.returncode != 0:
                print("stack.sh down failed (%d): %s" % (r.returncode, r.stdout), file=sys.stderr)
            reports = sanitizer_reports(self.dir)
        finally:
            if self in _live:
                _live.remove(self)
            if not KEEP:
                shutil.rmtree(self.dir, ignore_errors=True)
        if reports:
            raise AssertionError("pinsd reported a sanitizer error:\n" + "\n".join(reports))
