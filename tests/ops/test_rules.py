"""The alert rules (ops/prometheus_rules/m7_rbac_memory_alerts.yml), their promtool unit tests and the
runbook they link to.

- `promtool check rules` and `promtool test rules ops/prometheus_rules/tests/*.yml` pass.
- Every alert has labels severity and component, annotations summary, description and a runbook_url
  `ops/RUNBOOK.md#<alert name lower-cased>` whose anchor is a `### AlertName` heading under
  `## Alerts` in ops/RUNBOOK.md (and every such heading is an alert).
- Every alert is covered by the promtool tests (parsed here): an input that fires it, with its
  severity, component and every annotation pinned; an input that never fires it though evaluated
  past its `for:`; and the `for:` honoured: within one input, no alert at some evaluation and the
  alert at a later one less than `for:` after it (the alert was already pending, not yet firing).
- Every metric name the rules use (except `up`) is exported by a real pinsd: one is started on the
  SQLite store on a free loopback port in a temporary directory (as tests/interop/harness.py's
  Server does, without its gRPC dependencies) and its /metrics, scraped right after start-up, is compared family by family (`_bucket`, `_sum`,
  `_count` belong to their histogram).

Needs /usr/bin/promtool (Debian's prometheus package) and python3-yaml (tools/deps.sh installs both).
"""

import atexit
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))

import strict  # noqa: E402,F401  (skips fail under ctest)
from prom import free_port  # noqa: E402

try:
    import yaml
except ImportError:  # pragma: no cover - tools/deps.sh installs python3-yaml
    yaml = None

ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
RULES_DIR = os.path.join(ROOT, "ops", "prometheus_rules")
RULES = os.path.join(RULES_DIR, "m7_rbac_memory_alerts.yml")
TESTS_GLOB = os.path.join(RULES_DIR, "tests", "*.yml")
RUNBOOK = os.path.join(ROOT, "ops", "RUNBOOK.md")
PROMTOOL = "/usr/bin/promtool"
PINSD_BIN = os.environ.get("PINSD_BIN") or os.path.join(ROOT, "build", "pinsd")

GROUPS = {"m7_rbac_alerts", "m7_memory_alerts", "m7_ttl_alerts", "m7_operational_alerts",
          "pinsd_alerts"}
SEVERITIES = {"critical", "warning", "info"}
COMPONENTS = {"rbac", "memory", "store", "ratelimit", "operations"}
ANNOTATIONS = ("summary", "description", "runbook_url")
# Names that are series of Prometheus itself, not of pinsd.
NOT_PINSD = {"up"}

# PromQL words that look like metric names: aggregations, modifiers, set operators, literals.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
}

_DURATION_RE = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_DURATION_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_s(text):
    """Seconds of a Prometheus duration ('90s', '1h30m', '5m'); 0 for None or ''."""
    if text in (None, "", 0):
        return 0.0
    text = str(text).strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError("bad duration %r" % text)
        total += int(m.group(1)) * _DURATION_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError("bad duration %r" % text)
    return total


def metric_names(expr):
    """The metric names a PromQL expression selects (functions, aggregations and keywords left
    out). Strings, label matchers, range and subquery brackets and grouping label lists are removed
    first, so label names and values never count as metrics."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"`[^`]*`", "``", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", s):
        if m.group(2):  # a function or an aggregation
            continue
        if m.group(1).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def exposition_families(text):
    """{family: type} from a Prometheus text exposition (TYPE lines, and sample names without one)."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                families[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            if name and name.group(0) not in families:
                families.setdefault(name.group(0), "untyped")
    return families


def is_exported(name, families):
    if name in families:
        return True
    for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                          ("_count", ("histogram", "summary"))):
        if name.endswith(suffix) and families.get(name[:-len(suffix)]) in kinds:
            return True
    return False


def github_slug(heading):
    """The anchor GitHub gives a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_alerts():
    doc = load_yaml(RULES)
    alerts = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                alerts.append((group["name"], rule))
    return doc, alerts


def runbook_sections():
    """Slugs of the ### headings under ## Alerts in ops/RUNBOOK.md, and the ## headings."""
    with open(RUNBOOK, encoding="utf-8") as f:
        lines = f.read().splitlines()
    top, alert_slugs, in_alerts, fence = [], {}, False, False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        if line.startswith("## "):
            top.append(line[3:].strip())
            in_alerts = line[3:].strip() == "Alerts"
        elif line.startswith("### ") and in_alerts:
            alert_slugs[github_slug(line[4:])] = line[4:].strip()
    return top, alert_slugs


@unittest.skipUnless(yaml is not None, "python3-yaml is not installed (tools/deps.sh)")
class RulesFileTest(unittest.TestCase):
    """The rules file itself: promtool, labels, annotations, the runbook."""

    @classmethod
    def setUpClass(cls):
        cls.doc, cls.alerts = load_alerts()

    @unittest.skipUnless(os.access(PROMTOOL, os.X_OK), "promtool is not installed (prometheus)")
    def test_promtool_check_rules(self):
        r = subprocess.run([PROMTOOL, "check", "rules", RULES], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out)
        nrules = sum(len(g["rules"]) for g in self.doc["groups"])
        self.assertIn("SUCCESS: %d rules found" % nrules, out)

    @unittest.skipUnless(os.access(PROMTOOL, os.X_OK), "promtool is not installed (prometheus)")
    def test_promtool_test_rules(self):
        files = sorted(glob.glob(TESTS_GLOB))
        self.assertTrue(files, "no promtool test files match %s" % TESTS_GLOB)
        r = subprocess.run([PROMTOOL, "test", "rules"] + files, cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out)
        self.assertEqual(out.count("SUCCESS"), len(files), out)

    def test_groups(self):
        names = [g["name"] for g in self.doc["groups"]]
        self.assertEqual(len(names), len(set(names)), names)
        self.assertEqual(set(names), GROUPS)

    def test_alert_names_unique(self):
        names = [r["alert"] for _, r in self.alerts]
        self.assertEqual(len(names), len(set(names)), names)

    def test_labels_and_annotations(self):
        for group, rule in self.alerts:
            name = rule["alert"]
            with self.subTest(alert=name):
                labels = rule.get("labels") or {}
                self.assertIn(labels.get("severity"), SEVERITIES, labels)
                self.assertIn(labels.get("component"), COMPONENTS, labels)
                ann = rule.get("annotations") or {}
                for key in ANNOTATIONS:
                    self.assertTrue(str(ann.get(key, "")).strip(), "%s lacks %s" % (name, key))
                self.assertEqual(ann["runbook_url"], "ops/RUNBOOK.md#" + name.lower())
                self.assertIn("for", rule, "%s has no for: duration" % name)
                duration_s(rule["for"])
                # Nothing that names a tenant, a key or a credential goes into an alert.
                for key, text in ann.items():
                    self.assertNotRegex(str(text), r"\$labels\.(tenant|tenant_id|key|token)\b",
                                        "%s annotation %s" % (name, key))

    def test_runbook_has_every_alert(self):
        top, slugs = runbook_sections()
        self.assertIn("Alerts", top, "ops/RUNBOOK.md has no '## Alerts' section")
        names = {r["alert"] for _, r in self.alerts}
        for _, rule in self.alerts:
            anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
            with self.subTest(alert=rule["alert"]):
                self.assertIn(anchor, slugs, "no '### %s' under '## Alerts' in ops/RUNBOOK.md"
                              % rule["alert"])
                self.assertEqual(slugs[anchor], rule["alert"])
        stale = sorted(set(slugs.values()) - names)
        self.assertEqual(stale, [], "runbook sections for alerts the rules do not have")

    def test_metric_name_extraction(self):
        self.assertEqual(
            metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{operation="get",'
                         'le=~"0.1|x"}[5m]))) > 0.1 and on() sum(rate(a_count[5m])) > 1e3'),
            {"a_bucket", "a_count"})
        self.assertEqual(
            metric_names('count(up{job="x"} == 0) > 0 or on(instance) absent(up{job="x"})'),
            {"up"})
        self.assertEqual(metric_names("max(b) by (name) / ignoring(kind) c offset 5m"), {"b", "c"})


@unittest.skipUnless(yaml is not None, "python3-yaml is not installed (tools/deps.sh)")
class PromtoolCoverageTest(unittest.TestCase):
    """Every alert has promtool tests that fire it, that do not, and that show its for:."""

    @classmethod
    def setUpClass(cls):
        _, alerts = load_alerts()
        cls.rules = {r["alert"]: r for _, r in alerts}
        # One entry per test case (one set of input series): {alert: [(t, [exp_alerts])]}.
        cls.cases = []
        cls.files = sorted(glob.glob(TESTS_GLOB))
        for path in cls.files:
            doc = load_yaml(path)
            rule_files = [os.path.realpath(os.path.join(os.path.dirname(path), p))
                          for p in doc.get("rule_files") or []]
            cls.cases.append(("rule_files", path, rule_files))
            for n, test in enumerate(doc.get("tests") or []):
                checks = {}
                for art in test.get("alert_rule_test") or []:
                    checks.setdefault(art["alertname"], []).append(
                        (duration_s(art["eval_time"]), art.get("exp_alerts") or []))
                cls.cases.append(("case", "%s#%d" % (os.path.basename(path), n), checks))

    def test_test_files_load_the_rules(self):
        self.assertTrue(self.files)
        for kind, path, rule_files in (c for c in self.cases if c[0] == "rule_files"):
            with self.subTest(file=path):
                self.assertEqual(rule_files, [os.path.realpath(RULES)])

    def _checks(self, name):
        for kind, where, checks in self.cases:
            if kind == "case" and name in checks:
                yield where, sorted(checks[name], key=lambda c: c[0])

    def test_every_tested_alert_exists(self):
        for kind, where, checks in self.cases:
            if kind == "case":
                for name in checks:
                    self.assertIn(name, self.rules, "%s tests unknown alert %s" % (where, name))

    def test_every_alert_fires_with_its_labels_and_annotations(self):
        for name, rule in self.rules.items():
            with self.subTest(alert=name):
                fired = [exp for _, checks in self._checks(name) for _, exps in checks
                         for exp in exps]
                self.assertTrue(fired, "no promtool test fires %s" % name)
                for exp in fired:
                    labels = exp.get("exp_labels") or {}
                    self.assertEqual(labels.get("severity"), rule["labels"]["severity"])
                    self.assertEqual(labels.get("component"), rule["labels"]["component"])
                    ann = exp.get("exp_annotations") or {}
                    self.assertEqual(sorted(ann), sorted(rule["annotations"]),
                                     "%s: pin every annotation" % name)
                    self.assertEqual(ann["runbook_url"], rule["annotations"]["runbook_url"])

    def test_every_alert_has_an_input_that_does_not_fire(self):
        for name, rule in self.rules.items():
            hold = duration_s(rule.get("for"))
            with self.subTest(alert=name):
                quiet = [where for where, checks in self._checks(name)
                         if all(not exps for _, exps in checks) and checks[-1][0] > hold]
                self.assertTrue(quiet, "no promtool test keeps %s silent past its for: (%s)"
                                % (name, rule.get("for")))

    def test_every_alert_honours_its_for(self):
        for name, rule in self.rules.items():
            hold = duration_s(rule.get("for"))
            if hold <= 0:
                continue
            with self.subTest(alert=name):
                # Firing at t2 means the alert was active since t2 - for at the latest; a silent
                # check at t1 > t2 - for in the same input was therefore pending, not firing.
                shown = False
                for where, checks in self._checks(name):
                    silent = [t for t, exps in checks if not exps]
                    firing = [t for t, exps in checks if exps]
                    if any(0 < t2 - t1 < hold for t1 in silent for t2 in firing):
                        shown = True
                        break
                self.assertTrue(shown, "no promtool test shows %s silent less than its for: (%s)"
                                " before it fires" % (name, rule.get("for")))


# pinsd's settings that must not leak from the caller's environment into the test server.
_CONFIG_RE = re.compile(r"^(DATABASE_URL|REDIS_URL|TLS_.*|MACHINE_SECRET_TOKEN|JWT_SECRET|RBAC_.*|"
                        r"MEMORY_.*|MAX_REQUEST_BYTES|RATE_LIMIT_.*|BREAKER_.*|DB_POOL_SIZE|LOG_.*|"
                        r"PINS_.*|CORS_.*|CHAOS_ALLOWED)$")
_LIVE = set()


class Pinsd:
    """One pinsd on the SQLite store, 127.0.0.1 on a free port, in its own temporary directory;
    stopped by PID (SIGTERM, 10 s, SIGKILL) from cleanup and, as a last resort, atexit."""

    def __init__(self, env=None):
        self.tmp = tempfile.mkdtemp(prefix="pinsd-rules-", dir="/tmp")
        self.port = free_port()
        self.extra = dict(env or {})
        self.proc = None
        self.log = os.path.join(self.tmp, "pinsd.stderr")

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, timeout=15.0):
        if not os.access(PINSD_BIN, os.X_OK):
            raise unittest.SkipTest("pinsd binary not found at %s (set PINSD_BIN)" % PINSD_BIN)
        env = {k: v for k, v in os.environ.items() if not _CONFIG_RE.match(k)}
        env.update({"PINS_LISTEN": "127.0.0.1:%d" % self.port,
                    "PINS_DATA_DIR": os.path.join(self.tmp, "data"),
                    "LOG_FORMAT": "text", "PINS_WORKERS": "2", "PINS_DRAIN_SECONDS": "3"})
        env.update(self.extra)
        os.makedirs(env["PINS_DATA_DIR"], exist_ok=True)
        with open(self.log, "wb") as errf:
            self.proc = subprocess.Popen([PINSD_BIN], env=env, stdin=subprocess.DEVNULL,
                                         stdout=errf, stderr=errf, start_new_session=True)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pinsd exited with %s at start-up\n%s"
                                   % (self.proc.returncode, self.stderr()))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise RuntimeError("pinsd did not answer /health within %.0f s (%s)\n%s"
                           % (timeout, last, self.stderr()))

    def stderr(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        _LIVE.discard(self)
        shutil.rmtree(self.tmp, ignore_errors=True)


@atexit.register
def _stop_leftovers():
    for server in list(_LIVE):
        server.stop()


@unittest.skipUnless(yaml is not None, "python3-yaml is not installed (tools/deps.sh)")
class MetricsExportedTest(unittest.TestCase):
    """Every metric the rules use is a family a real pinsd exports (SQLite store)."""

    def test_rule_metrics_are_exported(self):
        _, alerts = load_alerts()
        used = {}
        for _, rule in alerts:
            for name in metric_names(rule["expr"]):
                used.setdefault(name, set()).add(rule["alert"])
        for name in NOT_PINSD:
            used.pop(name, None)
        self.assertTrue(used)

        server = Pinsd({"RATE_LIMIT_RPM": "100"})
        self.addCleanup(server.stop)
        server.start()
        # Right after start-up, before any call: every family an alert reads must already exist.
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
            self.assertEqual(resp.status, 200)
            text = resp.read().decode("utf-8")
        families = exposition_families(text)
        missing = {name: sorted(alerts) for name, alerts in sorted(used.items())
                   if not is_exported(name, families)}
        if missing:
            self.fail("metrics the alerts use that pinsd does not export:\n"
                      + "\n".join("  %s (%s)" % (name, ", ".join(alerts))
                                   for name, alerts in missing.items()))
        # MemoryCacheMissRateHigh joins on this series: it must say which store runs.
        self.assertRegex(text, r'(?m)^store_info\{backend="sqlite"\} 1$')


if __name__ == "__main__":
    unittest.main()
