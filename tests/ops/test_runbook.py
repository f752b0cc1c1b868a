"""ops/RUNBOOK.md, carried out: every ```bash block, top to bottom, against a fresh local stack.

RunbookTest runs the runbook as an operator would, from the repository root: its first block
starts deploy/local/stack.sh (here on free ports in a temporary directory, PINS_STACK_PORTS=free
and PINS_STACK_DIR), its last one stops it. Each `# Expected: TEXT` line must find TEXT in the
output of the commands above it (status codes, counts, PASS lines), and every command must exit 0
(tests/ops/runbook.py). The test's own cleanup stops the stack by PID whatever happened.

RunnerTest proves the runner fails when it should (a failing command, a missing expected text,
an untagged block), so a runbook command that does not work cannot pass unnoticed.
The full transcript goes to $PINS_RUNBOOK_LOG when set (else a temporary file named on failure).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import strict  # noqa: E402,F401  (skips fail under ctest)
import runbook  # noqa: E402
import stack  # noqa: E402

ROOT = os.path.abspath(os.environ.get("PINS_ROOT") or os.path.join(HERE, "..", ".."))
RUNBOOK = os.path.join(ROOT, "ops", "RUNBOOK.md")
STACK = os.path.join(ROOT, "deploy", "local", "stack.sh")
PHASES = ("Setup", "Preflight", "Cancellation criteria", "Blast-radius controls",
          "Phase 1: Memory integration", "Phase 2: Seed memory pins",
          "Phase 3: Prometheus lifecycle", "Phase 4: RBAC enforcement",
          "Phase 5: Chaos experiments", "Phase 6: Dashboards", "Rollback", "Success criteria",
          "Postmortems", "Alerts", "Stopping the local stack")


def binaries():
    return os.environ.get("PINSD_BIN"), os.environ.get("PINSCTL_BIN")


def section_of(path):
    """{line number: the ## heading it is under}."""
    out, cur = {}, ""
    fence = False
    with open(path, encoding="utf-8") as f:
        for n, ln in enumerate(f, 1):
            if ln.startswith("```"):
                fence = not fence
            elif not fence and ln.startswith("## "):
                cur = ln[3:].strip()
            out[n] = cur
    return out


class RunnerTest(unittest.TestCase):
    """The runner itself: state carried between steps, and every way a step fails."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pins-runbook-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def md(self, text):
        p = os.path.join(self.dir, "r.md")
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        return p

    def run_all(self, path):
        r = runbook.Runner(os.environ, self.dir, default_timeout=30)
        self.addCleanup(r.close)
        for b in runbook.blocks(path):
            if b.tag in runbook.RUN_TAGS:
                for cmds, expects in b.steps():
                    r.run_step("line %d" % b.line, cmds, expects)
        return r

    def test_state_and_expectations(self):
        r = self.run_all(self.md(
            "```bash\nX='a b'\nexport Y=exported\nf() { echo \"f:$1\"; }\n```\n"
            "```text\nfalse\n```\n"
            "```bash\necho \"$X/$Y\"\n# Expected: a b/exported\nf 1\n# Expected: f:1\n```\n"))
        self.assertEqual((r.steps_run, r.expectations_met), (3, 2))

    def test_failing_command_fails(self):
        with self.assertRaisesRegex(runbook.StepFailed, "exit status 1"):
            self.run_all(self.md("```bash\nfalse\necho never\n```\n"))

    def test_failing_pipeline_fails(self):
        with self.assertRaisesRegex(runbook.StepFailed, "exit status"):
            self.run_all(self.md("```bash\nfalse | cat\n```\n"))

    def test_unset_variable_fails(self):
        with self.assertRaisesRegex(runbook.StepFailed, "exit status"):
            self.run_all(self.md("```bash\necho \"$PINS_NO_SUCH_VARIABLE\"\n```\n"))

    def test_missing_expectation_fails(self):
        with self.assertRaisesRegex(runbook.StepFailed, "expects '201'"):
            self.run_all(self.md("```bash\necho 403\n# Expected: 201\n```\n"))

    def test_untagged_block_is_refused(self):
        with self.assertRaisesRegex(ValueError, "must be ```bash"):
            runbook.blocks(self.md("```\necho hi\n```\n"))

    def test_unclosed_block_is_refused(self):
        with self.assertRaisesRegex(ValueError, "not closed"):
            runbook.blocks(self.md("```bash\necho hi\n"))

    def test_failing_and_list_at_the_end_fails(self):
        with self.assertRaisesRegex(runbook.StepFailed, "exit status 1"):
            self.run_all(self.md("```bash\necho start\nfalse && echo never\n```\n"))

    def test_number_must_be_a_whole_line(self):
        """`0` is not found in `127.0.0.1:9090`, nor 201 in 2010."""
        with self.assertRaisesRegex(runbook.StepFailed, "expects '0'"):
            self.run_all(self.md("```bash\necho 127.0.0.1:9090\necho 3\n# Expected: 0\n```\n"))
        with self.assertRaisesRegex(runbook.StepFailed, "expects '201'"):
            self.run_all(self.md("```bash\necho 2010\n# Expected: 201\n```\n"))
        r = self.run_all(self.md("```bash\necho '[x]'; echo ' 0 '\n# Expected: 0\n```\n"))
        self.assertEqual(r.expectations_met, 1)

    def test_a_blank_line_ends_a_step(self):
        """An expectation applies to the paragraph right above it, not to earlier ones."""
        with self.assertRaisesRegex(runbook.StepFailed, "expects 'second'"):
            self.run_all(self.md("```bash\necho second\n\necho third\n# Expected: second\n```\n"))
        b = runbook.blocks(self.md("```bash\n# a comment\na=1 \\\n  b=2\n\n# only a comment\n"
                                   "\necho x\n# Expected: x\n```\n"))[0]
        self.assertEqual(b.steps(), [("# a comment\na=1 \\\n  b=2", []), ("echo x", ["x"])])

    def test_close_removes_the_saved_state(self):
        r = runbook.Runner(os.environ, self.dir, default_timeout=30)
        r.run_step("s", "SECRET_X=abc", [])
        self.assertTrue(os.path.exists(r.state))
        r.close()
        self.assertFalse(os.path.exists(r.dir))

    def test_time_bound(self):
        r = runbook.Runner(os.environ, self.dir, default_timeout=30)
        self.addCleanup(r.close)
        with self.assertRaisesRegex(runbook.StepFailed, "within 1 s"):
            r.run_step("slow", "sleep 20", [], timeout=1)


class RunbookStructureTest(unittest.TestCase):
    """The runbook's shape: the M7 phases in order, each with commands and stated outputs."""

    @classmethod
    def setUpClass(cls):
        cls.blocks = runbook.blocks(RUNBOOK)
        cls.sections = section_of(RUNBOOK)

    def test_every_block_is_tagged(self):
        self.assertTrue(self.blocks)
        for b in self.blocks:
            self.assertIn(b.tag, runbook.RUN_TAGS + runbook.TEXT_TAGS)

    def test_phases_in_order(self):
        with open(RUNBOOK, encoding="utf-8") as f:
            heads = [ln[3:].strip() for ln in f if ln.startswith("## ")]
        self.assertEqual([h for h in heads if h in PHASES], list(PHASES))

    def test_every_phase_states_outputs(self):
        checked = {}
        for b in self.blocks:
            if b.tag in runbook.RUN_TAGS:
                sec = self.sections[b.line]
                checked[sec] = checked.get(sec, 0) + sum(len(e) for _, e in b.steps())
        for phase in PHASES:
            if phase in ("Postmortems", "Alerts", "Success criteria"):
                continue
            with self.subTest(phase=phase):
                self.assertGreater(checked.get(phase, 0), 0, "no `# Expected:` in " + phase)

    def test_no_alembic_no_docker(self):
        """alembic steps became pinsctl migrate; docker compose only in the mapping table."""
        for b in self.blocks:
            if b.tag in runbook.RUN_TAGS:
                self.assertNotIn("alembic", b.text, "line %d" % b.line)
                self.assertNotRegex(b.text, r"\bdocker\b", "line %d" % b.line)

    def test_every_m7_check_is_kept(self):
        text = "\n".join(b.text for b in self.blocks)
        for needle in ("ops/preflight.sh", "pg_restore", "/health", "/ready", "/api/v1/targets",
                       "\\d system.memory_pins", "ops/seed_memory_pins.py",
                       "ops/memory_pins_seed.json", "test-key?tenant_id=global",
                       "promtool check rules ops/prometheus_rules/*.yml", "/-/reload",
                       "/api/v1/rules", "RBAC_ENFORCE=false", "RBAC_ENFORCE=true",
                       "scripts/chaos/redis_disconnect.sh", "scripts/chaos/db_exhaustion.sh",
                       "scripts/chaos/pin_storm.sh", "scripts/chaos/pg_restart.sh",
                       "migrate downgrade base", "\\dt system.memory_pins"):
            self.assertTrue(needle in text, "the runbook's commands lack " + needle)


@unittest.skipUnless(os.path.exists(STACK), "deploy/local/stack.sh is missing")
class RunbookTest(unittest.TestCase):
    """Every command of ops/RUNBOOK.md against a fresh local stack, in order."""

    def setUp(self):
        pinsd, pinsctl = binaries()
        if not (pinsd and pinsctl):
            self.skipTest("PINSD_BIN and PINSCTL_BIN are not set (ctest sets them)")
        self.dir = tempfile.mkdtemp(prefix="pins-runbook-stack-")
        os.chmod(self.dir, 0o755)
        self.env = dict(os.environ, PINS_STACK_DIR=self.dir, PINS_STACK_PORTS="free",
                        PINS_ROOT=ROOT, PINSD_BIN=pinsd, PINSCTL_BIN=pinsctl)
        for k in ("DATABASE_URL", "REDIS_URL", "MACHINE_SECRET_TOKEN", "JWT_SECRET",
                  "RBAC_ENFORCE", "CHAOS_ALLOWED", "PROM_RELOAD_TOKEN", "PINS_ADDR"):
            self.env.pop(k, None)
        self.addCleanup(self.stop_stack)

    def stop_stack(self):
        subprocess.run([STACK, "--dir", self.dir, "down"], env=self.env, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reports = stack.sanitizer_reports(self.dir)
        if os.environ.get("PINS_KEEP_TMP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
        if reports:
            self.fail("pinsd reported a sanitizer error:\n" + "\n".join(reports))

    def test_runbook(self):
        log_path = os.environ.get("PINS_RUNBOOK_LOG")
        if not log_path:
            fd, log_path = tempfile.mkstemp(prefix="pins-runbook-", suffix=".log")
            os.close(fd)
        sections = section_of(RUNBOOK)
        ran = {}
        with open(log_path, "w", encoding="utf-8") as log:
            r = runbook.Runner(self.env, ROOT, log=log, default_timeout=300)
            self.addCleanup(r.close)
            try:
                for b in runbook.blocks(RUNBOOK):
                    if b.tag not in runbook.RUN_TAGS:
                        continue
                    for i, (cmds, expects) in enumerate(b.steps()):
                        where = "ops/RUNBOOK.md:%d (%s, step %d)" % (b.line, sections[b.line], i + 1)
                        r.run_step(where, cmds, expects, timeout=600 if "chaos" in cmds else None)
                        ran[sections[b.line]] = ran.get(sections[b.line], 0) + 1
            except runbook.StepFailed as e:
                logs = tempfile.mkdtemp(prefix="pins-runbook-logs-")
                shutil.copytree(os.path.join(self.dir, "logs"), logs, dirs_exist_ok=True)
                self.fail("%s\n(full transcript: %s; the stack's logs: %s)" % (e, log_path, logs))
        for phase in PHASES:
            if phase != "Postmortems":  # prose only
                self.assertIn(phase, ran, "no command of %s ran" % phase)
        self.assertGreaterEqual(r.expectations_met, 40)
        # The last block stopped the stack: nothing of it is left running.
        pids = os.path.join(self.dir, "run")
        for name in (os.listdir(pids) if os.path.isdir(pids) else []):
            with open(os.path.join(pids, name)) as f:
                txt = f.read().strip()
            if re.fullmatch(r"\d+", txt):
                self.assertFalse(os.path.exists("/proc/" + txt) and
                                 not open("/proc/%s/stat" % txt).read().split()[2] == "Z",
                                 "%s (pid %s) still runs after the runbook's last block" % (name, txt))
        if not os.environ.get("PINS_RUNBOOK_LOG"):
            os.unlink(log_path)


if __name__ == "__main__":
    unittest.main()
