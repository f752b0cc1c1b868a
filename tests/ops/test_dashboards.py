"""pinsd's Grafana dashboards and their provisioning, checked without a Grafana.

- the JSON models: uid, title, schemaVersion, refresh, time range, the `datasource` template
  variable, every panel and target on ${datasource}, unique panel ids, gridPos inside 24 columns
  without overlaps, every target with refId and expr, no Grafana macros or template variables in an
  expr, a unit on every panel, M7's thresholds, M7's panels (minus drift) and pinsd's rows present;
- every expr parses as PromQL: promtool check rules on a throw-away rules file with one recording
  rule per expr (promtool parses every expression);
- the provisioning files parse, the dashboard provider's path is this tree's dashboards folder and
  the datasource is a Prometheus one with a uid;
- every metric a panel reads is a family a real pinsd exports: pinsd on the SQLite store on a free
  loopback port in a temporary directory, its /metrics scraped and compared.

Run: PINS_ROOT=$PWD PINSD_BIN=build/pinsd /usr/bin/python3 -m unittest -v test_dashboards
(from tests/ops). Needs promtool (Debian prometheus) and python3-yaml.
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import strict  # noqa: E402,F401  (before any test class is defined: skips fail under ctest)

import dashboards  # noqa: E402
from dashboards import DASHBOARD_DIR, DASHBOARD_FILES, ROOT  # noqa: E402

try:
    import yaml
except ImportError:  # python3-yaml missing: the provisioning test fails under ctest
    yaml = None

PROMTOOL = shutil.which("promtool")
PINSD_BIN = os.environ.get("PINSD_BIN") or os.path.join(ROOT, "build", "pinsd")
DS = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONING = os.path.join(DASHBOARD_DIR, "provisioning")

# uid and title of each dashboard (stable: links and the README name them).
EXPECTED = {
    DASHBOARD_DIR + "/m7_memory_pins.json": ("pinsd-memory-pins", "pinsd - Memory Pins"),
    DASHBOARD_DIR + "/m7_rbac_dashboard.json": ("pinsd-rbac-memory",
                                                 "pinsd - RBAC & Memory Integration"),
}

# M7's panels (../shared/M7_REFERENCE.md section 6) each dashboard keeps, with M7's threshold steps
# (None: M7 had none, or the panel is not a stat). The drift panels are dropped (no drift detector).
M7_PANELS = {
    DASHBOARD_DIR + "/m7_memory_pins.json": {
        "Memory Ops (5m)": [100, 1000],
        "RBAC Denials (5m)": [10, 50],
        "Cache Hit Rate": None,
        "Memory Latency (p95)": None,
        "Memory Pins Operations/s": None,
        "Cache Hits vs Misses": None,
        "RBAC Decisions by Resource": None,
        "RBAC Latency": None,
        "Denial Reasons (1h)": None,
        "Policy Load Failures (1h)": [1, 5],
        "Policy Version": None,
    },
    DASHBOARD_DIR + "/m7_rbac_dashboard.json": {
        "RBAC Denials (5m)": [1, 5],
        "RBAC Allowed (5m)": None,
        "RBAC Enforcement Status": None,
        "RBAC p95 Latency": [10, 50],
        "RBAC Decisions by Resource/Action": None,
        "RBAC Denials by Reason": None,
        "Memory Pin Writes (5m)": None,
        "Memory Pin Reads (5m)": None,
        "Memory Pin Errors (5m)": [1, 5],
        "Memory Pin p95 Latency": [50, 100],
        "Memory Pin Operations": None,
        "Memory Cache Hit Rate": None,
        "TTL Cleanup": None,
        "RBAC Audit Writes": None,
    },
}

# pinsd's own rows (title -> at least these families read by the row's panels).
PINSD_ROWS = {
    DASHBOARD_DIR + "/m7_memory_pins.json": {
        "Transports": {"rpc_requests_total", "rpc_request_duration_seconds_bucket",
                       "http_requests_total", "grpc_server_handled_total"},
        "Store & Circuit Breaker": {"store_pool_connections", "store_errors_total", "store_info",
                                    "store_schema_behind", "circuit_breaker_state"},
        "Sweeper (TTL expiry)": {"memory_pins_expired_reclaimed_total",
                                 "memory_pins_sweep_batches_total", "memory_pins_sweep_lag_seconds"},
        "Watch Streams & Values": {"watch_streams_active", "watch_events_sent_total",
                                   "watch_streams_refused_total", "memory_value_size_bytes_bucket"},
        "Process": {"process_cpu_seconds_total", "process_resident_memory_bytes",
                    "process_open_fds"},
    },
    DASHBOARD_DIR + "/m7_rbac_dashboard.json": {
        "Rate Limiter": {"rate_limit_decisions_total", "rate_limit_throttled_tenants",
                         "rate_limit_redis_configured", "rate_limit_redis_up"},
        "Audit Writes": {"memory_audit_writes_total", "rbac_audit_writes_total"},
    },
}

UNITS = {"ms", "s", "percentunit", "reqps", "ops", "bytes", "short", "none"}

# Names a query may use that Prometheus itself makes, not pinsd.
PROMETHEUS_SIDE = re.compile(r"^(up|scrape_.*|ALERTS|ALERTS_FOR_STATE|prometheus_.*)$")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows_of(dashboard):
    """{row title: [panels under it]} for a dashboard laid out with expanded rows."""
    out, current = {}, None
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            current = p.get("title", "")
            out[current] = list(p.get("panels", []))
        elif current is not None:
            out[current].append(p)
    return out


class DashboardModelTest(unittest.TestCase):
    """The Grafana JSON models."""

    def each(self):
        for rel in DASHBOARD_FILES:
            with self.subTest(dashboard=rel):
                yield rel, dashboards.load(rel)

    def test_files_exist_and_parse(self):
        for rel in DASHBOARD_FILES:
            with open(dashboards.path(rel), encoding="utf-8") as f:
                doc = json.load(f)  # raises on invalid JSON
            self.assertIsInstance(doc, dict, rel)

    def test_identity_and_time(self):
        uids = set()
        for rel, d in self.each():
            uid, title = EXPECTED[rel]
            self.assertEqual(d.get("uid"), uid)
            self.assertEqual(d.get("title"), title)
            uids.add(d.get("uid"))
            self.assertIsInstance(d.get("schemaVersion"), int)
            self.assertGreaterEqual(d["schemaVersion"], 36, "Grafana 10 model")
            self.assertEqual(d.get("refresh"), "30s")
            self.assertEqual(d.get("time"), {"from": "now-1h", "to": "now"})
            self.assertIs(d.get("editable"), True)
            self.assertIsNone(d.get("id"), "an exported model has no database id")
            self.assertRegex(d.get("description", ""), r"(?i)drift",
                             "the description says why the drift panels are gone")
        self.assertEqual(len(uids), len(DASHBOARD_FILES))

    def test_datasource_variable(self):
        for rel, d in self.each():
            variables = d.get("templating", {}).get("list", [])
            ds = [v for v in variables if v.get("name") == "datasource"]
            self.assertEqual(len(ds), 1, "one `datasource` template variable")
            self.assertEqual(ds[0].get("type"), "datasource")
            self.assertEqual(ds[0].get("query"), "prometheus")

    def test_every_panel_and_target_on_the_variable(self):
        for rel, d in self.each():
            for p in dashboards.panels(d):
                if p.get("type") == "row":
                    self.assertFalse(p.get("targets"), "row %r has no queries" % p.get("title"))
                    continue
                self.assertEqual(p.get("datasource"), DS, "panel %r" % p.get("title"))
                self.assertTrue(p.get("targets"), "panel %r has queries" % p.get("title"))
                for t in p["targets"]:
                    self.assertEqual(t.get("datasource"), DS,
                                     "panel %r target %r" % (p.get("title"), t.get("refId")))

    def test_targets(self):
        for rel, d in self.each():
            for p in dashboards.panels(d):
                refs = [t.get("refId") for t in p.get("targets", [])]
                self.assertEqual(len(refs), len(set(refs)), "refIds unique in %r" % p.get("title"))
                for t in p.get("targets", []):
                    where = "%r %s" % (p.get("title"), t.get("refId"))
                    self.assertRegex(t.get("refId") or "", r"^[A-Z]+$", where)
                    expr = t.get("expr") or ""
                    self.assertTrue(expr.strip(), "expr of " + where)
                    self.assertNotIn("$", expr, "no Grafana macro or variable in " + where)
                    for sel in re.findall(r"\[[^\]]*\]", expr):
                        self.assertRegex(sel, r"^\[\d+[smh]\]$",
                                         "plain range selector (no subquery) in " + where)

    def test_panel_ids_and_titles(self):
        for rel, d in self.each():
            ps = dashboards.panels(d)
            ids = [p.get("id") for p in ps]
            self.assertTrue(all(isinstance(i, int) for i in ids), ids)
            self.assertEqual(len(ids), len(set(ids)), "panel ids unique")
            for p in ps:
                self.assertTrue((p.get("title") or "").strip(), "panel %s has a title" % p.get("id"))

    def test_grid_layout(self):
        for rel, d in self.each():
            boxes = []
            for p in dashboards.panels(d):
                g = p.get("gridPos") or {}
                name = p.get("title")
                for k in ("x", "y", "w", "h"):
                    self.assertIsInstance(g.get(k), int, "%r gridPos.%s" % (name, k))
                self.assertGreaterEqual(g["x"], 0, name)
                self.assertGreaterEqual(g["y"], 0, name)
                self.assertGreaterEqual(g["w"], 1, name)
                self.assertGreaterEqual(g["h"], 1, name)
                self.assertLessEqual(g["x"] + g["w"], 24, "%r inside 24 columns" % name)
                if p.get("type") == "row":
                    self.assertEqual((g["x"], g["w"], g["h"]), (0, 24, 1), "row %r" % name)
                boxes.append((name, g))
            for i, (a, ga) in enumerate(boxes):
                for b, gb in boxes[i + 1:]:
                    overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                               and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
                    self.assertFalse(overlap, "%r %s overlaps %r %s" % (a, ga, b, gb))

    def test_units(self):
        for rel, d in self.each():
            for p in dashboards.panels(d):
                if p.get("type") == "row":
                    continue
                unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
                self.assertIn(unit, UNITS, "unit of %r" % p.get("title"))
                exprs = " ".join(t["expr"] for t in p["targets"])
                if "* 1000" in exprs and "_seconds_bucket" in exprs:
                    self.assertEqual(unit, "ms", "seconds * 1000 is ms in %r" % p.get("title"))

    def test_m7_panels_and_thresholds(self):
        for rel, d in self.each():
            by_title = {p.get("title"): p for p in dashboards.panels(d)}
            for title, steps in M7_PANELS[rel].items():
                self.assertIn(title, by_title, "M7 panel %r kept" % title)
                if steps is None:
                    continue
                got = [s.get("value") for s in by_title[title]["fieldConfig"]["defaults"]
                       ["thresholds"]["steps"]]
                self.assertEqual(got, [None] + steps, "M7 thresholds of %r" % title)
            for p in dashboards.panels(d):
                self.assertNotRegex(p.get("title", ""), r"(?i)drift", "no drift panel is left")
                for t in p.get("targets", []):
                    self.assertNotRegex(t["expr"], r"drift_|memory_context_injection",
                                        "no drift metric in %r" % p.get("title"))

    def test_policy_version_shows_the_label(self):
        for rel, d in self.each():
            pv = [p for p in dashboards.panels(d) if p.get("title") == "Policy Version"]
            for p in pv:
                t = p["targets"][0]
                self.assertIn("rbac_policy_version_info", t["expr"])
                self.assertEqual(t.get("legendFormat"), "{{version}}")
                self.assertEqual(p["options"].get("textMode"), "name")

    def test_pinsd_rows(self):
        for rel, d in self.each():
            rows = rows_of(d)
            for title, families in PINSD_ROWS[rel].items():
                self.assertIn(title, rows, "row %r" % title)
                read = set()
                for p in rows[title]:
                    for t in p.get("targets", []):
                        read |= dashboards.metric_names(t["expr"])
                self.assertLessEqual(families, read, "row %r reads %s" % (title, sorted(families - read)))

    def test_queries_listing(self):
        qs = dashboards.queries()
        self.assertGreater(len(qs), 40)
        self.assertEqual({q.file for q in qs}, set(DASHBOARD_FILES))
        for q in qs:
            self.assertEqual(len(q), 4)
            self.assertTrue(q.title and q.ref_id and q.expr, q)
        self.assertEqual(dashboards.metric_names(
            'sum by (le) (rate(a_seconds_bucket{x="y"}[5m])) / clamp_min(sum(b_total), 1e-9) '
            'or on() vector(0) and max(c:d offset 5m)'),
            {"a_seconds_bucket", "b_total", "c:d"})


@unittest.skipUnless(PROMTOOL, "promtool not installed (Debian package prometheus)")
class PromQLTest(unittest.TestCase):
    """Every expr parses as PromQL, by promtool."""

    def check_rules(self, exprs):
        tmp = tempfile.mkdtemp(prefix="pins-dash-promql-")
        self.addCleanup(shutil.rmtree, tmp, True)
        rules = [{"record": "pinsd_dashboard:query_%d" % i, "expr": e} for i, e in enumerate(exprs)]
        path = os.path.join(tmp, "dashboard_queries.yml")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"groups": [{"name": "pinsd_dashboard_queries", "rules": rules}]}, f, indent=1)
        return subprocess.run([PROMTOOL, "check", "rules", path], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=60, text=True)

    def test_promtool_catches_a_broken_expr(self):
        r = self.check_rules(["sum(rate(memory_pins_operations_total[5m])"])
        self.assertNotEqual(r.returncode, 0, r.stdout)

    def test_every_expr_parses(self):
        qs = dashboards.queries()
        r = self.check_rules([q.expr for q in qs])
        if r.returncode != 0:
            # name the panels: promtool reports rules by their index in the group
            bad = []
            for m in re.finditer(r"pinsd_dashboard:query_(\d+)", r.stdout):
                q = qs[int(m.group(1))]
                bad.append("%s %r %s: %s" % (q.file, q.title, q.ref_id, q.expr))
            self.fail("promtool check rules failed:\n%s\n%s" % (r.stdout, "\n".join(bad)))
        self.assertIn("SUCCESS: %d rules found" % len(qs), r.stdout)


def panel_expr(rel, title, ref_id="A"):
    """The expr of one target of one panel."""
    for q in dashboards.queries():
        if q.file == rel and q.title == title and q.ref_id == ref_id:
            return q.expr
    raise AssertionError("no panel %r target %s in %s" % (title, ref_id, rel))


MEMORY = DASHBOARD_DIR + "/m7_memory_pins.json"
RBAC = DASHBOARD_DIR + "/m7_rbac_dashboard.json"
PINSD = 'job="nova-backend"'
PROM = 'job="prometheus"'


class ProcessJobFilterTest(unittest.TestCase):
    """Prometheus scrapes itself (job prometheus) and exports process_* too: every process_*
    selector of a panel is filtered on pinsd's job."""

    def test_process_selectors_have_the_job(self):
        seen = 0
        for q in dashboards.queries():
            for m in re.finditer(r"\b(process_[a-z_]+)\s*(\{[^}]*\})?", q.expr):
                seen += 1
                self.assertIn('job="nova-backend"', m.group(2) or "",
                              "%s %r %s: %s" % (q.file, q.title, q.ref_id, m.group(1)))
        self.assertGreaterEqual(seen, 6)


@unittest.skipUnless(PROMTOOL, "promtool not installed (Debian package prometheus)")
@unittest.skipUnless(yaml, "python3-yaml not installed")
class PanelSemanticsTest(unittest.TestCase):
    """The panels' own exprs, evaluated by promtool (promql_expr_test) on series that tell the
    right answer from the wrong one. OLD holds what the panels read before, and each case also
    checks that the old expr gave the wrong value on that input."""

    OLD = {
        "cpu": "sum(rate(process_cpu_seconds_total[5m]))",
        "rss": "sum(process_resident_memory_bytes)",
        "fds": "max(process_open_fds) / max(process_max_fds)",
        "uptime": "time() - max(process_start_time_seconds)",
        "redis": "max(rate_limit_redis_configured) + max(rate_limit_redis_up)",
    }

    def run_promtool(self, tests):
        tmp = tempfile.mkdtemp(prefix="pins-dash-semantics-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "panels_test.yml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}, f,
                           sort_keys=False)
        r = subprocess.run([PROMTOOL, "test", "rules", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60, text=True)
        return r.returncode, r.stdout

    def check(self, series, cases):
        """cases: [(expr, expected value or None for no sample)] at 10m."""
        tests = [{"interval": "1m",
                  "input_series": [{"series": k, "values": v} for k, v in series],
                  "promql_expr_test": [
                      {"expr": e, "eval_time": "10m",
                       "exp_samples": [] if want is None else [{"labels": "{}", "value": want}]}
                      for e, want in cases]}]
        code, out = self.run_promtool(tests)
        self.assertEqual(code, 0, out)

    def differs(self, series, expr, value):
        """The old expr does not give value on these series (the panel was wrong)."""
        tests = [{"interval": "1m",
                  "input_series": [{"series": k, "values": v} for k, v in series],
                  "promql_expr_test": [{"expr": expr, "eval_time": "10m",
                                        "exp_samples": [{"labels": "{}", "value": value}]}]}]
        code, out = self.run_promtool(tests)
        self.assertNotEqual(code, 0, "old %s gave %s too" % (expr, value))

    def test_process_panels_read_pinsd_only(self):
        # Two pinsd replicas next to a busy Prometheus whose own process_* series share the names.
        a = '{instance="pinsd-a:8000",%s}' % PINSD
        b = '{instance="pinsd-b:8000",%s}' % PINSD
        pr = '{instance="localhost:9090",%s}' % PROM
        series = [
            ("process_cpu_seconds_total" + a, "0+30x10"),   # 0.5 core
            ("process_cpu_seconds_total" + b, "0+15x10"),   # 0.25 core
            ("process_cpu_seconds_total" + pr, "0+120x10"),  # 2 cores
            ("process_resident_memory_bytes" + a, "1000x10"),
            ("process_resident_memory_bytes" + b, "3000x10"),
            ("process_resident_memory_bytes" + pr, "900000x10"),
            # a: 900 of 1000 (90%); b: 1000 of 100000 (1%); Prometheus: 100 of 200.
            ("process_open_fds" + a, "900x10"),
            ("process_max_fds" + a, "1000x10"),
            ("process_open_fds" + b, "1000x10"),
            ("process_max_fds" + b, "100000x10"),
            ("process_open_fds" + pr, "100x10"),
            ("process_max_fds" + pr, "200x10"),
            ("process_start_time_seconds" + a, "60x10"),
            ("process_start_time_seconds" + b, "120x10"),
            ("process_start_time_seconds" + pr, "300x10"),
        ]
        cases = [
            (panel_expr(MEMORY, "CPU"), 0.75),
            (panel_expr(MEMORY, "Resident Memory"), 4000),
            (panel_expr(MEMORY, "File Descriptors", "A"), 1900),
            (panel_expr(MEMORY, "File Descriptors", "B"), 101000),
            (panel_expr(MEMORY, "Open FDs"), 0.9),
            (panel_expr(MEMORY, "Uptime"), 480),
        ]
        self.check(series, cases)
        # Before: Prometheus's process counted in, and the FD ratio of two different replicas
        # (max open 1000 over max limit 100000 = 1%, while replica a is at 90%).
        self.differs(series, self.OLD["cpu"], 0.75)
        self.differs(series, self.OLD["rss"], 4000)
        self.differs(series, self.OLD["fds"], 0.9)
        self.differs(series, self.OLD["uptime"], 480)

    def redis_series(self, states):
        """states: [(configured, up)] per replica."""
        out = []
        for i, (configured, up) in enumerate(states):
            lab = '{instance="pinsd-%d:8000",%s}' % (i, PINSD)
            out.append(("rate_limit_redis_configured" + lab, "%dx10" % configured))
            out.append(("rate_limit_redis_up" + lab, "%dx10" % up))
        return out

    def test_redis_stat(self):
        expr = panel_expr(RBAC, "Redis (limiter backend)")
        for states, want, old_wrong in (
            ([(0, 0), (0, 0)], 0, False),          # no REDIS_URL anywhere
            ([(1, 1), (1, 1)], 2, False),          # every replica reaches Redis
            ([(1, 1), (1, 0)], 1, True),           # one replica fails open: was shown as up (2)
            ([(1, 0), (1, 0)], 1, False),          # Redis down for all
            ([(1, 1), (0, 0)], 2, False),          # a replica without REDIS_URL is not "down"
            ([(1, 0), (0, 0)], 1, False),
        ):
            with self.subTest(states=states):
                series = self.redis_series(states)
                self.check(series, [(expr, want)])
                if old_wrong:
                    self.differs(series, self.OLD["redis"], want)
        # No pinsd series at all (nothing scraped yet): still a value, 0.
        self.check([('up{instance="localhost:9090",%s}' % PROM, "1x10")], [(expr, 0)])


@unittest.skipUnless(yaml, "python3-yaml not installed")
class ProvisioningTest(unittest.TestCase):
    """Grafana's provisioning files beside the dashboards."""

    def load(self, rel):
        with open(dashboards.path(os.path.join(PROVISIONING, rel)), encoding="utf-8") as f:
            return yaml.safe_load(f)

    def test_dashboard_provider(self):
        doc = self.load("dashboards/pinsd.yml")
        self.assertEqual(doc.get("apiVersion"), 1)
        providers = doc.get("providers")
        self.assertEqual(len(providers), 1)
        p = providers[0]
        self.assertEqual(p.get("type"), "file")
        self.assertTrue(p.get("name"))
        opts = p.get("options") or {}
        self.assertIs(opts.get("foldersFromFilesStructure"), False)
        raw = opts.get("path") or ""
        # Grafana expands $VAR / ${VAR} in provisioning files; PINS_ROOT is the tree.
        expanded = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda m: {"PINS_ROOT": ROOT}.get(m.group(1) or m.group(2), m.group(0)),
                          raw)
        self.assertNotIn("$", expanded, "only ${PINS_ROOT} is used in %r" % raw)
        self.assertEqual(os.path.realpath(expanded), os.path.realpath(dashboards.path(DASHBOARD_DIR)))
        found = sorted(n for n in os.listdir(expanded) if n.endswith(".json"))
        self.assertEqual(found, sorted(os.path.basename(f) for f in DASHBOARD_FILES))

    def test_prometheus_datasource(self):
        doc = self.load("datasources/prometheus.yml")
        self.assertEqual(doc.get("apiVersion"), 1)
        sources = doc.get("datasources")
        self.assertEqual(len(sources), 1)
        ds = sources[0]
        self.assertEqual(ds.get("type"), "prometheus")
        self.assertRegex(ds.get("uid") or "", r"^[A-Za-z0-9_-]{1,40}$")
        self.assertEqual(ds.get("url"), "http://localhost:9090")
        self.assertEqual(ds.get("access"), "proxy")
        self.assertTrue(ds.get("name"))


# ---- pinsd's /metrics ---------------------------------------------------------------------------

_LIVE = set()


def _stop(proc):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _LIVE.discard(proc)


@atexit.register
def _stop_all():
    for proc in list(_LIVE):
        _stop(proc)


# pinsd configuration variables that must not leak from the caller into the test server.
_CONFIG_PREFIXES = ("PINS_", "RBAC_", "RATE_LIMIT_", "BREAKER_", "TLS_", "MEMORY_", "DB_", "LOG_",
                    "CORS_", "CHAOS_")
_CONFIG_NAMES = ("DATABASE_URL", "REDIS_URL", "MACHINE_SECRET_TOKEN", "JWT_SECRET",
                 "MAX_REQUEST_BYTES")


def scrape_pinsd_metrics():
    """Starts pinsd (SQLite store) on a free loopback port in a temporary directory, returns the
    text of its /metrics, stops it by PID."""
    if not os.path.exists(PINSD_BIN):
        if os.environ.get("PINSD_BIN"):
            raise RuntimeError("PINSD_BIN=%s does not exist" % PINSD_BIN)
        raise unittest.SkipTest("pinsd binary not found at %s (set PINSD_BIN)" % PINSD_BIN)
    tmp = tempfile.mkdtemp(prefix="pins-dash-pinsd-")
    try:
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(_CONFIG_PREFIXES) and k not in _CONFIG_NAMES}
        env.update({"PINS_LISTEN": "127.0.0.1:%d" % port, "PINS_DATA_DIR": os.path.join(tmp, "data"),
                    "PINS_WORKERS": "1", "PINS_DRAIN_SECONDS": "1", "LOG_FORMAT": "text"})
        os.makedirs(env["PINS_DATA_DIR"])
        log_path = os.path.join(tmp, "pinsd.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([PINSD_BIN], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True)
        _LIVE.add(proc)
        try:
            url = "http://127.0.0.1:%d/metrics" % port
            deadline = time.monotonic() + 20
            last = None
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            return r.read().decode("utf-8")
                        last = r.status
                except OSError as e:
                    last = e
                time.sleep(0.1)
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            raise AssertionError("no /metrics from pinsd (exit %s, last %s)\n%s"
                                 % (proc.poll(), last, tail))
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def exported_names(text):
    """{sample name} a /metrics text can produce: every family of a TYPE line (with _bucket, _sum
    and _count for histograms, _sum and _count for summaries) and every sample's name."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"#\s*TYPE\s+([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\w+)", line)
        if m:
            fam, kind = m.groups()
            names.add(fam)
            if kind == "histogram":
                names |= {fam + "_bucket", fam + "_sum", fam + "_count"}
            elif kind == "summary":
                names |= {fam + "_sum", fam + "_count"}
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", line)
        if m and not line.startswith("#"):
            names.add(m.group(1))
    return names


class MetricFamiliesTest(unittest.TestCase):
    """Every metric a panel reads is exported by a real pinsd (SQLite store)."""

    @classmethod
    def setUpClass(cls):
        cls.metrics_text = scrape_pinsd_metrics()
        cls.exported = exported_names(cls.metrics_text)

    def test_scrape_is_pinsd(self):
        self.assertIn("memory_pins_operations_total", self.exported)
        self.assertIn("process_cpu_seconds_total", self.exported)

    def test_every_panel_metric_is_exported(self):
        missing = {}
        for q in dashboards.queries():
            for name in dashboards.metric_names(q.expr):
                if PROMETHEUS_SIDE.match(name) or name in self.exported:
                    continue
                missing.setdefault(name, []).append("%s %r %s" % (os.path.basename(q.file),
                                                                   q.title, q.ref_id))
        if missing:
            self.fail("%d metric(s) read by panels but not in pinsd's /metrics:\n%s" % (
                len(missing), "\n".join("  %s  <- %s" % (n, "; ".join(w))
                                        for n, w in sorted(missing.items()))))


if __name__ == "__main__":
    unittest.main()
