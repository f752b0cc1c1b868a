"""The shell blocks of a Markdown runbook, and a runner that carries out every one in order.

Blocks: every fenced block of the file. ```bash and ```sh blocks are commands; ```text blocks are
sample output or excerpts and are not run; any other fence (untagged included) is an error, so a
command can never slip out of the test by losing its tag.

Steps: a blank line or an expectation line ends a step; the commands of a paragraph (a command
continued with `\` included) are one step.

Expectations: a comment line `# Expected: TEXT` right after a step says that the step's output
(stdout and stderr) holds TEXT: a line equal to TEXT when TEXT is a number (so `0` is not found in
`127.0.0.1:9090`), else TEXT anywhere in it. Several expectation lines may follow one step.

Runner: each step runs in its own `bash` with `set -euo pipefail`, from the repository root, after
restoring the shell state (variables, exported or not, and functions) the previous step left, so
the runbook reads like one shell session: `. stack.env` in one block serves the next. A step fails
the run when a command fails (`set -e`), when its last command exits non-zero (`a && b` too), when
it runs past its time bound or misses an expected text; the error names the block's line.
Runner.close() removes the runner's directory (the saved state holds the stack's secrets).
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

FENCE = re.compile(r"^```(.*)$")
EXPECT = re.compile(r"^\s*#\s*Expected:\s?(.*)$")
NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
RUN_TAGS = ("bash", "sh")
TEXT_TAGS = ("text",)

# Shell variables bash owns or that describe one process: never carried from step to step.
_SKIP_VARS = re.compile(
    r"^declare -[-a-zA-Z]* (BASH[A-Z_]*|SHELLOPTS|EUID|PPID|UID|GROUPS|FUNCNAME|DIRSTACK|"
    r"PIPESTATUS|HISTCMD|LINENO|RANDOM|SRANDOM|SECONDS|EPOCHREALTIME|EPOCHSECONDS|OPTIND|OPTARG|"
    r"PWD|OLDPWD|SHLVL|COLUMNS|LINES|__pins_step_rc|_)(=|$)")


class Block:
    def __init__(self, line, tag, text):
        self.line = line          # line number of the opening fence (1-based)
        self.tag = tag
        self.text = text

    def steps(self):
        """[(commands, [expected texts])] in order."""
        out, cmds, expects = [], [], []
        for ln in self.text.splitlines():
            m = EXPECT.match(ln)
            if m:
                expects.append(m.group(1).strip())
                continue
            if expects or (not ln.strip() and any(c.strip() for c in cmds)):
                out.append(("\n".join(cmds), expects))
                cmds, expects = [], []
            if ln.strip():
                cmds.append(ln)
        if cmds or expects:
            out.append(("\n".join(cmds), expects))
        # a step of comments only runs nothing: keep it only when it carries expectations
        return [(c, e) for c, e in out if e or any(x.strip() and not x.lstrip().startswith("#")
                                                   for x in c.splitlines())]


def blocks(path):
    """Every fenced block of a Markdown file; raises ValueError on an untagged or unknown fence
    or an unclosed block."""
    out, cur, start, tag = [], None, 0, None
    with open(path, encoding="utf-8") as f:
        for n, ln in enumerate(f, 1):
            m = FENCE.match(ln.rstrip("\n"))
            if not m:
                if cur is not None:
                    cur.append(ln)
                continue
            if cur is None:
                tag = m.group(1).strip()
                if tag not in RUN_TAGS + TEXT_TAGS:
                    raise ValueError("%s:%d: a fenced block must be ```bash (run by the test) or "
                                     "```text (not run), not ```%s" % (path, n, tag))
                cur, start = [], n
            else:
                out.append(Block(start, tag, "".join(cur)))
                cur = None
    if cur is not None:
        raise ValueError("%s:%d: block not closed" % (path, start))
    return out


class StepFailed(AssertionError):
    pass


class Runner:
    """Runs steps in order in one shell state. env: the starting environment; cwd: where every
    step starts; log: a file object that gets every step and its output (or None)."""

    def __init__(self, env, cwd, log=None, default_timeout=300):
        self.env = dict(env)
        self.cwd = cwd
        self.log = log
        self.default_timeout = default_timeout
        self.dir = tempfile.mkdtemp(prefix="pins-runbook-")
        self.state = os.path.join(self.dir, "state.sh")
        open(self.state, "w").close()
        self.steps_run = 0
        self.expectations_met = 0

    def run_step(self, where, cmds, expects, timeout=None):
        """Runs one step; returns its output; raises StepFailed."""
        script = os.path.join(self.dir, "step.sh")
        with open(script, "w", encoding="utf-8") as f:
            f.write('. "%s"\nset -euo pipefail\ncd "%s"\n' % (self.state, self.cwd))
            f.write(cmds + "\n")
            # The last command's status is the step's (set -e ignores `a && b`); the state is
            # saved for the next step only when the commands got this far.
            f.write('__pins_step_rc=$?\n')
            f.write('{ declare -p; declare -f; } > "%s.new" 2>/dev/null\n' % self.state)
            f.write('exit "$__pins_step_rc"\n')
        t0 = time.monotonic()
        proc = subprocess.Popen(["bash", script], cwd=self.cwd, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout or self.default_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            self._log(where, cmds, out, "timed out")
            raise StepFailed("%s: did not finish within %d s:\n%s\n--- output:\n%s" % (
                where, timeout or self.default_timeout, cmds, out.decode(errors="replace")[-4000:]))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = out.decode(errors="replace")
        self._log(where, cmds, out, "exit %d, %.1f s" % (proc.returncode, time.monotonic() - t0))
        if proc.returncode != 0:
            raise StepFailed("%s: exit status %d:\n%s\n--- output:\n%s" % (
                where, proc.returncode, cmds, text[-4000:]))
        self._save_state()
        lines = [ln.strip() for ln in text.splitlines()]
        for e in expects:
            found = e in lines if NUMBER.match(e) else e in text
            if not found:
                raise StepFailed("%s: the runbook expects %r in the output of:\n%s\n--- output:\n%s"
                                 % (where, e, cmds, text[-4000:]))
            self.expectations_met += 1
        self.steps_run += 1
        return text

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _save_state(self):
        new = self.state + ".new"
        with open(new, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines(True)
        keep = []
        skipping = False
        for ln in lines:
            # declare -p prints one variable per line except for values with newlines; those
            # continue until the next "declare " line or the functions.
            if re.match(r"^[A-Za-z_][\w:.-]* \(\) $", ln):
                skipping = False          # a function definition (declare -f)
            elif ln.startswith("declare "):
                skipping = bool(_SKIP_VARS.match(ln)) or ln.startswith("declare -r") or \
                    re.match(r"^declare -[a-zA-Z]*r", ln) is not None
            if not skipping:
                keep.append(ln)
        with open(self.state, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.unlink(new)

    def _log(self, where, cmds, out, what):
        if self.log is None:
            return
        self.log.write("==== %s (%s)\n%s\n---- output\n%s\n" % (
            where, what, cmds, out.decode(errors="replace")))
        self.log.flush()
