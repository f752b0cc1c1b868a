"""The runbook's Phase 3 (Prometheus lifecycle) against the reload guard, and ops/prom_reload.sh.

A real Prometheus (Debian's 2.42, --web.enable-lifecycle, 127.0.0.1 only) runs the repository's
observability/prometheus/prometheus.yml, copied with a live rules directory beside it (its
rule_files is rules/*.yml, relative to the file), and a real nginx runs the guard rendered by
ops/nginx/render_guard.sh in front of it; both on free loopback ports, stopped by PID (prom.py).

- the runbook's Phase 3 commands, verbatim but for host and port, through bash with
  PROM_RELOAD_TOKEN in the environment: promtool check rules, the reload (401 without the token,
  403 with a wrong one, 200 with it), the group count through jq; and Preflight step 5's target count;
- read-only proxying: queries work (GET and POST), /-/quit and the admin API are refused, other
  methods are 405;
- ops/prom_reload.sh: a good change loads the new groups and waits for their first evaluation; a
  broken rules file, a wrong token, a reload Prometheus rejects, a reload that does not load the
  new groups, a rule that promtool accepts but Prometheus fails to evaluate and a rule not
  evaluated within --eval-wait all exit non-zero and leave the old groups loaded and the old files
  live; after a failed reload the last-known-good copy is kept (not replaced by the live rules),
  so a rollback repairs Prometheus; a restore that fails exits 2 and says so;
- the token appears in no log of nginx or Prometheus, nor in the rendered configuration.
"""

import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prom  # noqa: E402  (imports ../interop/strict.py)

ROOT = prom.ROOT
RULES_DIR = os.path.join(ROOT, "ops", "prometheus_rules")
PROM_RELOAD = os.path.join(ROOT, "ops", "prom_reload.sh")
CONFIG = os.path.join(ROOT, "observability", "prometheus", "prometheus.yml")

GOOD_V1 = """groups:
  - name: guard_test_v1
    rules:
      - record: guard_test:up:sum
        expr: sum(up)
"""
GOOD_V2 = """groups:
  - name: guard_test_v2
    rules:
      - record: guard_test:up:count
        expr: count(up)
      - alert: GuardTestNeverFires
        expr: vector(1) == 2
        labels: {severity: info, component: operations}
        annotations: {summary: s, description: d, runbook_url: ops/RUNBOOK.md#x}
"""
# promtool parses it; Prometheus fails it at every evaluation: on() matches all of the right side,
# which has two series ({x="a"}, {x="b"}) for the one on the left: many-to-many matching.
EVAL_ERROR = """groups:
  - name: guard_test_v2
    interval: 2s
    rules:
      - record: guard_test:fine
        expr: vector(1)
      - record: guard_test:many_to_many
        expr: >-
          vector(1) / on()
          (label_replace(vector(1), "x", "a", "", "") or label_replace(vector(2), "x", "b", "", ""))
"""
# Evaluated once a day, at a slot derived from the group's hash: not within seconds of the reload.
DAILY = """groups:
  - name: guard_test_v2
    interval: 1d
    rules:
      - record: guard_test:daily
        expr: vector(1)
"""
BROKEN = """groups:
  - name: guard_test_broken
    rules:
      - record: guard_test:broken
        expr: sum(rate(up[5m])
"""


def repo_rule_files():
    return sorted(glob.glob(os.path.join(RULES_DIR, "*.yml")))


def group_names(paths):
    names = []
    for p in paths:
        with open(p) as f:
            doc = yaml.safe_load(f) or {}
        names += [g["name"] for g in doc.get("groups") or []]
    return names


def bash(script, env_extra=None, cwd=None, timeout=60):
    env = dict(os.environ)
    env.pop("PROM_RELOAD_TOKEN", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", "-c", script], cwd=cwd or ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


@unittest.skipUnless(prom.prometheus_available() and prom.nginx_available(),
                     "prometheus, promtool and nginx are needed (tools/deps.sh)")
@unittest.skipUnless(shutil.which("curl") and shutil.which("jq"),
                     "curl and jq are needed (the runbook's commands)")
class ReloadGuardTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.token = secrets.token_urlsafe(32)
        cls.dir = tempfile.mkdtemp(prefix="pins-promreload-")
        cls.conf_dir = os.path.join(cls.dir, "prometheus")
        cls.live = os.path.join(cls.conf_dir, "rules")
        cls.src = os.path.join(cls.dir, "src")
        os.makedirs(cls.live)
        os.makedirs(cls.src)
        cls.config = os.path.join(cls.conf_dir, "prometheus.yml")
        shutil.copy(CONFIG, cls.config)
        for f in repo_rule_files():
            shutil.copy(f, cls.live)
        cls.prom = prom.Prometheus(config=cls.config, lifecycle=True).start()
        try:
            cls.guard = prom.Nginx.guard(cls.prom, cls.token).start()
        except Exception:
            cls.prom.destroy()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.guard.destroy()
        cls.prom.destroy()
        if not prom.KEEP:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def tearDown(self):
        # Print the servers' logs when the test failed (unittest's _Outcome.success, 3.4+).
        if not getattr(getattr(self, "_outcome", None), "success", True):
            print("--- nginx ---\n" + self.guard.logs()[-4000:], file=sys.stderr)
            print("--- prometheus ---\n" + self.prom.tail_log(), file=sys.stderr)

    # helpers

    def set_live(self, files):
        """The live rules directory holds exactly files {name: text} plus the repository's rules,
        loaded by a reload straight to Prometheus (not through the guard)."""
        for p in glob.glob(os.path.join(self.live, "*")):
            os.remove(p)
        for f in repo_rule_files():
            shutil.copy(f, self.live)
        for name, text in files.items():
            with open(os.path.join(self.live, name), "w") as f:
                f.write(text)
        status, _, body = prom.http("POST", self.prom.url + "/-/reload", timeout=30)
        self.assertEqual(status, 200, body)

    def loaded_groups(self):
        doc = self.prom.api("/api/v1/rules")
        self.assertEqual(doc["status"], "success", doc)
        return sorted(g["name"] for g in doc["data"]["groups"])

    def write_src(self, name, text):
        path = os.path.join(self.src, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def prom_reload(self, files, token=None, extra=()):
        env = dict(os.environ, PROM_RELOAD_TOKEN=self.token if token is None else token)
        r = subprocess.run([PROM_RELOAD, "--live-dir", self.live, "--url", self.guard.url]
                           + list(extra) + list(files), env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
        return r

    def lkg(self):
        return self.live + ".last-known-good"

    def make_lkg(self, files, links=()):
        """The last-known-good copy an earlier run kept: the repository's rules plus files
        {name: text}, and symbolic links {name: target}."""
        shutil.rmtree(self.lkg(), ignore_errors=True)
        os.makedirs(self.lkg())
        for f in repo_rule_files():
            shutil.copy(f, self.lkg())
        for name, text in files.items():
            with open(os.path.join(self.lkg(), name), "w") as f:
                f.write(text)
        for name, target in dict(links).items():
            os.symlink(target, os.path.join(self.lkg(), name))

    def break_last_reload(self):
        """An operator's broken edit of the live rules and a reload Prometheus rejected: it still
        runs the groups it had, and runtimeinfo says its last reload failed."""
        with open(os.path.join(self.live, "guard_test.yml"), "w") as f:
            f.write(BROKEN)
        status, _, body = prom.http("POST", self.prom.url + "/-/reload", timeout=30)
        self.assertEqual(status, 500, body)
        info = self.prom.api("/api/v1/status/runtimeinfo")["data"]
        self.assertFalse(info["reloadConfigSuccess"], info)

    def runtime_ok(self):
        return self.prom.api("/api/v1/status/runtimeinfo")["data"]["reloadConfigSuccess"]

    def live_text(self, name):
        with open(os.path.join(self.live, name)) as f:
            return f.read()

    def runbook_reload(self, token, extra=""):
        env = {} if token is None else {"PROM_RELOAD_TOKEN": token}
        return bash('curl -X POST %s/-/reload \\\n  -H "Authorization: Bearer $PROM_RELOAD_TOKEN"%s'
                    % (self.guard.url, extra), env)

    # the runbook's Phase 3 and Preflight step 5

    def test_phase3_runbook_commands(self):
        self.set_live({})
        # 1. Validate rules
        r = bash("promtool check rules ops/prometheus_rules/*.yml")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCESS", r.stdout + r.stderr)

        # 2. Test reload (requires proxy token): verbatim, then with -s -o /dev/null -w for the code
        code = " -s -o /dev/null -w '%{http_code}'"
        for token, want, marker in ((None, "401", "401 Authorization Required"),
                                    ("wrong-" + secrets.token_urlsafe(24), "403", "403 Forbidden"),
                                    (self.token, "200", None)):
            r = self.runbook_reload(token)
            self.assertEqual(r.returncode, 0, r.stderr)
            if marker:
                self.assertIn(marker, r.stdout)
            else:
                self.assertEqual(r.stdout, "")  # Prometheus answers an empty 200
            r = self.runbook_reload(token, code)
            self.assertEqual(r.stdout, want, "token %s" % ("unset" if token is None else
                                                           "right" if token == self.token
                                                           else "wrong"))
        # no Authorization header at all: 401 with a Bearer challenge
        status, headers, _ = prom.http("POST", self.guard.url + "/-/reload")
        self.assertEqual(status, 401)
        self.assertTrue(headers.get("www-authenticate", "").startswith("Bearer"), headers)

        # 3. Verify rule loaded
        r = bash("curl -s %s/api/v1/rules | jq '.data.groups | length'" % self.guard.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        want = len(group_names(repo_rule_files()))
        self.assertGreater(want, 0)
        self.assertEqual(int(r.stdout.strip()), want)
        self.assertEqual(self.loaded_groups(), sorted(group_names(repo_rule_files())))

        # Preflight step 5: Prometheus is scraping (nova-backend and itself)
        # (target discovery runs a few seconds after a start or a reload: bounded retries)
        def targets():
            r = bash("curl -s %s/api/v1/targets | jq '.data.activeTargets | length'"
                     % self.guard.url)
            self.assertEqual(r.returncode, 0, r.stderr)
            return int(r.stdout.strip()) == 2
        self.prom.wait_for(targets, timeout=30)
        jobs = {t["labels"]["job"] for t in self.prom.api("/api/v1/targets")["data"]["activeTargets"]}
        self.assertEqual(jobs, {"nova-backend", "prometheus"})

    def test_reload_status_codes(self):
        url = self.guard.url + "/-/reload"
        cases = [
            ({}, 401), ({"Authorization": ""}, 401), ({"Authorization": "Bearer"}, 401),
            ({"Authorization": "Bearer wrong"}, 403),
            ({"Authorization": "Basic " + self.token}, 403),
            ({"Authorization": "Bearer " + self.token + "x"}, 403),
            ({"Authorization": "Bearer " + self.token[:-1]}, 403),
            ({"Authorization": "Bearer " + self.token}, 200),
            ({"Authorization": "bearer " + self.token}, 200),
        ]
        for headers, want in cases:
            status, _, body = prom.http("POST", url, headers=headers, timeout=30)
            self.assertEqual(status, want, (headers.get("Authorization", "-")[:8], body[:200]))
        for method in ("GET", "PUT", "DELETE"):
            status, headers, _ = prom.http(method, url,
                                           headers={"Authorization": "Bearer " + self.token})
            self.assertEqual(status, 405, method)
            self.assertEqual(headers.get("allow"), "POST")

    # read-only proxying

    def test_read_only_proxy(self):
        g = self.guard.url
        status, _, body = prom.http("GET", g + "/api/v1/query?query=up")
        self.assertEqual(status, 200, body)
        self.assertIn(b'"status":"success"', body)
        status, _, body = prom.http("POST", g + "/api/v1/query", data="query=vector(1)",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200, body)
        for path in ("/api/v1/query_range", "/api/v1/series", "/api/v1/labels"):
            status, _, body = prom.http(
                "POST", g + path, data="query=up&match[]=up&start=0&end=60&step=15",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.assertEqual(status, 200, (path, body))
        for path in ("/api/v1/rules", "/api/v1/alerts", "/api/v1/targets", "/api/v1/status/config",
                     "/api/v1/label/__name__/values", "/-/ready", "/-/healthy", "/metrics"):
            status, _, body = prom.http("GET", g + path)
            self.assertEqual(status, 200, (path, body[:200]))

        refused = [("POST", "/-/quit"), ("PUT", "/-/quit"), ("GET", "/-/quit"),
                   ("POST", "/api/v1/admin/tsdb/snapshot"),
                   ("POST", "/api/v1/admin/tsdb/delete_series?match[]=up"),
                   ("PUT", "/api/v1/admin/tsdb/clean_tombstones"),
                   ("POST", "/api/v1/%61dmin/tsdb/snapshot"),
                   ("POST", "/api/v1//admin/tsdb/snapshot"),
                   ("POST", "/api/v1/query/../admin/tsdb/snapshot")]
        for method, path in refused:
            status, _, _ = self.raw(method, path)
            self.assertIn(status, (403, 405), (method, path))
        for method, path in [("PUT", "/api/v1/query"), ("DELETE", "/api/v1/series"),
                             ("PATCH", "/api/v1/rules"), ("POST", "/api/v1/status/config"),
                             ("POST", "/api/v1/rules"), ("POST", "/api/v1/write"),
                             ("POST", "/-/ready"), ("OPTIONS", "/api/v1/query")]:
            status, headers, _ = prom.http(method, g + path)
            self.assertEqual(status, 405, (method, path))
            self.assertIn("GET", headers.get("allow", ""))
        # Prometheus is still up after all of that
        status, _, _ = prom.http("GET", self.prom.url + "/-/ready")
        self.assertEqual(status, 200)

    def raw(self, method, path, extra_lines=()):
        """A request sent as written (no client-side path normalisation); (status, head, body)."""
        with socket.create_connection(("127.0.0.1", self.guard.port), timeout=10) as s:
            req = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n" % (method, path)
            req += "".join(line + "\r\n" for line in extra_lines) + "Connection: close\r\n\r\n"
            s.sendall(req.encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head, body

    # ops/prom_reload.sh

    def test_prom_reload_good_change(self):
        self.set_live({"guard_test.yml": GOOD_V1})
        self.assertIn("guard_test_v1", self.loaded_groups())
        new = self.write_src("guard_test.yml", GOOD_V2)
        r = self.prom_reload(repo_rule_files() + [new])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("OK:", r.stderr.strip().splitlines()[-1])
        self.assertIn("evaluated healthy", r.stderr.strip().splitlines()[-1])
        # it said what it waited for, with the default bound: 2 x the longest interval + 5 s
        longest = max(g["interval"] for g in self.prom.api("/api/v1/rules")["data"]["groups"])
        self.assertIn("waiting up to %ds for Prometheus to evaluate" % (2 * longest + 5), r.stderr)
        for g in self.prom.api("/api/v1/rules")["data"]["groups"]:
            if g["name"] == "guard_test_v2":
                self.assertTrue(all(rule["health"] == "ok" for rule in g["rules"]), g)
        groups = self.loaded_groups()
        self.assertIn("guard_test_v2", groups)
        self.assertNotIn("guard_test_v1", groups)
        self.assertEqual(groups, sorted(group_names(repo_rule_files()) + ["guard_test_v2"]))
        self.assertEqual(self.live_text("guard_test.yml"), GOOD_V2)
        with open(os.path.join(self.live + ".last-known-good", "guard_test.yml")) as f:
            self.assertEqual(f.read(), GOOD_V1)  # what ran before, kept
        rules = {g["name"]: g for g in self.prom.api("/api/v1/rules")["data"]["groups"]}
        self.assertEqual(len(rules["guard_test_v2"]["rules"]), 2)
        # the default rules argument (ops/prometheus_rules/*.yml) works too
        env = dict(os.environ, PROM_RELOAD_TOKEN=self.token)
        r = subprocess.run([PROM_RELOAD, "--live-dir", self.live, "--url", self.guard.url],
                           env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)

    def assert_rolled_back(self, r, reason):
        self.assertNotEqual(r.returncode, 0, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertTrue(lines, "no message")
        self.assertIn("FAILED:", lines[-1])
        self.assertIn(reason, lines[-1])
        groups = self.loaded_groups()
        self.assertIn("guard_test_v1", groups)
        self.assertNotIn("guard_test_v2", groups)
        self.assertEqual(groups, sorted(group_names(repo_rule_files()) + ["guard_test_v1"]))
        self.assertEqual(self.live_text("guard_test.yml"), GOOD_V1)
        return lines[-1]

    def test_prom_reload_broken_rules(self):
        self.set_live({"guard_test.yml": GOOD_V1})
        broken = self.write_src("guard_test.yml", BROKEN)
        r = self.prom_reload(repo_rule_files() + [broken])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assert_rolled_back(r, "promtool check rules rejected")

    def test_prom_reload_wrong_token(self):
        self.set_live({"guard_test.yml": GOOD_V1})
        new = self.write_src("guard_test.yml", GOOD_V2)
        r = self.prom_reload([new], token="wrong-" + secrets.token_urlsafe(24))
        self.assertEqual(r.returncode, 1, r.stderr)
        line = self.assert_rolled_back(r, "403")
        self.assertIn("restored the last-known-good", line)
        r = self.prom_reload([new], token="")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assert_rolled_back(r, "PROM_RELOAD_TOKEN is empty")

    def test_prom_reload_rejected_by_prometheus(self):
        # promtool accepts the new rules, Prometheus's reload fails (here: its configuration file
        # was broken since it started, as an operator's half-finished edit would): HTTP 500, the
        # files are put back, and Prometheus keeps running the old groups.
        self.set_live({"guard_test.yml": GOOD_V1})
        with open(self.config) as f:
            good_config = f.read()
        new = self.write_src("guard_test.yml", GOOD_V2)
        try:
            with open(self.config, "a") as f:
                f.write("\nscrape_configs: [\n")
            r = self.prom_reload([new])
        finally:
            with open(self.config, "w") as f:
                f.write(good_config)
        self.assertEqual(r.returncode, 2, r.stderr)  # the rollback reload is rejected as well
        line = self.assert_rolled_back(r, "HTTP 500")
        self.assertIn("rollback reload failed", line)
        status, _, _ = prom.http("POST", self.prom.url + "/-/reload", timeout=30)
        self.assertEqual(status, 200)
        self.assertIn("guard_test_v1", self.loaded_groups())

    def test_prom_reload_not_loaded(self):
        # The reload succeeds but the new groups are not what Prometheus loaded: a .yaml file its
        # rules/*.yml does not match, then a live directory it does not read at all.
        self.set_live({"guard_test.yml": GOOD_V1})
        new = self.write_src("guard_test.yaml", GOOD_V2)
        r = self.prom_reload([new])
        self.assertEqual(r.returncode, 1, r.stderr)
        line = self.assert_rolled_back(r, "not loaded as written")
        self.assertIn("reloaded", line)
        self.assertFalse(os.path.exists(os.path.join(self.live, "guard_test.yaml")))

        other = os.path.join(self.dir, "not-loaded")
        os.makedirs(other, exist_ok=True)
        with open(os.path.join(other, "guard_test.yml"), "w") as f:
            f.write(GOOD_V1)
        new = self.write_src("guard_test.yml", GOOD_V2)
        env = dict(os.environ, PROM_RELOAD_TOKEN=self.token)
        r = subprocess.run([PROM_RELOAD, "--live-dir", other, "--url", self.guard.url, new],
                           env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=180)
        # nothing from that directory is loaded, the restored rules neither: exit 2, with a hint
        self.assertEqual(r.returncode, 2, r.stderr)
        line = r.stderr.strip().splitlines()[-1]
        self.assertIn("not loaded as written", line)
        self.assertIn("is it the directory its rule_files names?", line)
        with open(os.path.join(other, "guard_test.yml")) as f:
            self.assertEqual(f.read(), GOOD_V1)

    def test_prom_reload_evaluation_error(self):
        # promtool accepts the rule, the reload loads it, and every evaluation fails: the script
        # waits for the first evaluation, sees health "err" and rolls back.
        self.set_live({"guard_test.yml": GOOD_V1})
        new = self.write_src("guard_test.yml", EVAL_ERROR)
        c = subprocess.run([prom.PROMTOOL, "check", "rules", new], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(c.returncode, 0, c.stdout)
        r = self.prom_reload([new])
        self.assertEqual(r.returncode, 1, r.stderr)
        # the group's interval is 2 s: the default bound is 2 x 2 + 5
        self.assertIn("waiting up to 9s for Prometheus to evaluate each of the 2 rule(s) of the 1 "
                      "new group(s)", r.stderr)
        line = self.assert_rolled_back(r, "rule evaluation failed")
        self.assertIn("guard_test.yml/guard_test_v2/guard_test:many_to_many is err", line)
        self.assertIn("many-to-many matching not allowed", line)
        self.assertNotIn("guard_test:fine", line)
        self.assertIn("(reloaded)", line)

    def test_prom_reload_evaluation_wait_bounded(self):
        # A group not evaluated within --eval-wait: not known to work, rolled back.
        self.set_live({"guard_test.yml": GOOD_V1})
        new = self.write_src("guard_test.yml", DAILY)
        r = self.prom_reload([new], extra=["--eval-wait", "3"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("waiting up to 3s", r.stderr)
        line = self.assert_rolled_back(r, "waited 3s: 1 rule(s) not evaluated since the reload")
        self.assertIn("guard_test.yml/guard_test_v2/guard_test:daily", line)
        r = self.prom_reload([new], extra=["--eval-wait", "soon"])
        self.assertEqual(r.returncode, 64, r.stderr)

    def test_prom_reload_keeps_lkg_after_failed_reload(self):
        # Prometheus's last reload failed (a broken live file it rejected): the live rules are not
        # known to be good, so the last-known-good copy an earlier run kept stays as it is. A
        # rollback restores that copy, and its reload repairs Prometheus; replacing the copy with
        # the live rules would have restored the broken file and failed the rollback reload.
        self.set_live({"guard_test.yml": GOOD_V1})
        self.make_lkg({"guard_test.yml": GOOD_V1})
        self.break_last_reload()
        self.assertIn("guard_test_v1", self.loaded_groups())
        new = self.write_src("guard_test_extra.yml", GOOD_V2)
        r = self.prom_reload([new])  # the reload fails: the broken live file is still there
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("keeping the last-known-good copy in %s" % self.lkg(), r.stderr)
        line = self.assert_rolled_back(r, "HTTP 500")
        self.assertIn("(reloaded)", line)
        self.assertFalse(os.path.exists(os.path.join(self.live, "guard_test_extra.yml")))
        self.assertTrue(self.runtime_ok())
        with open(os.path.join(self.lkg(), "guard_test.yml")) as f:
            self.assertEqual(f.read(), GOOD_V1)

        # a change that succeeds while the last reload had failed keeps the copy unchanged too
        self.break_last_reload()
        new = self.write_src("guard_test.yml", GOOD_V2)
        r = self.prom_reload([new])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kept unchanged", r.stderr.strip().splitlines()[-1])
        self.assertIn("guard_test_v2", self.loaded_groups())
        with open(os.path.join(self.lkg(), "guard_test.yml")) as f:
            self.assertEqual(f.read(), GOOD_V1)

    def test_prom_reload_restore_fails(self):
        # The kept last-known-good copy is damaged (one of its files is gone): putting it back
        # fails. Exit 2 with one line that says the live directory may be inconsistent and where
        # the copy is; Prometheus is not reloaded again (it keeps the groups it had).
        self.set_live({"guard_test.yml": GOOD_V1})
        self.make_lkg({"guard_test.yml": GOOD_V1},
                      links={"gone.yml": os.path.join(self.dir, "no-such-file.yml")})
        self.addCleanup(shutil.rmtree, self.lkg(), True)
        self.break_last_reload()
        new = self.write_src("guard_test_extra.yml", GOOD_V2)
        r = self.prom_reload([new])
        self.assertEqual(r.returncode, 2, r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertTrue(lines, "no message")
        line = lines[-1]
        self.assertIn("FAILED: the reload answered HTTP 500", line)
        self.assertIn("restoring the last-known-good rules failed too", line)
        self.assertIn("cannot put gone.yml back", line)
        self.assertIn("the live rules directory %s may be inconsistent" % self.live, line)
        self.assertIn("the last-known-good copy is in %s" % self.lkg(), line)
        self.assertIn("guard_test_v1", self.loaded_groups())
        self.assertNotIn("guard_test_v2", self.loaded_groups())
        self.assertFalse(self.runtime_ok())  # not reloaded again since the failed reload

    def test_prom_reload_usage(self):
        r = subprocess.run([PROM_RELOAD, "--help"], text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 0)
        self.assertIn("PROM_RELOAD_TOKEN", r.stdout)
        for option in ("--live-dir", "--url", "--backup-dir", "--promtool", "--timeout",
                       "--eval-wait"):
            self.assertIn(option, r.stdout)
        r = subprocess.run([PROM_RELOAD, "--no-such-option"], text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 64)
        # the live directory itself as the source: refused before anything is touched
        self.set_live({"guard_test.yml": GOOD_V1})
        r = self.prom_reload([os.path.join(self.live, "guard_test.yml")])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("nothing installed", r.stderr)
        # shellcheck is in tools/deps.sh's test set: a missing one fails here.
        self.assertIsNotNone(shutil.which("shellcheck"), "shellcheck is not installed")
        for script in (PROM_RELOAD, os.path.join(ROOT, "ops", "nginx", "render_guard.sh")):
            r = subprocess.run(["shellcheck", script], text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout)

    def test_render_guard_refuses_bad_tokens(self):
        script = os.path.join(ROOT, "ops", "nginx", "render_guard.sh")
        out = os.path.join(self.dir, "render-check")
        for token, msg in (("", "empty"), ("short", "too short"),
                           ("a" * 30 + " b", "characters")):
            env = dict(os.environ, PROM_RELOAD_TOKEN=token)
            r = subprocess.run([script, "--prefix", out], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(msg, r.stderr)
            self.assertFalse(os.path.exists(os.path.join(out, "nginx.conf")))

    # logs (runs last: unittest orders methods by name; it also makes its own token requests)

    def test_zz_no_token_in_logs_or_config(self):
        url = self.guard.url + "/-/reload"
        prom.http("POST", url, headers={"Authorization": "Bearer " + self.token}, timeout=30)
        prom.http("POST", url, headers={"Authorization": "Bearer " + self.token + "x"})
        prom.http("GET", self.guard.url + "/api/v1/query?query=up",
                  headers={"Authorization": "Bearer " + self.token})
        # a malformed header line carrying the token (nginx logs those verbatim at info level)
        self.raw("POST", "/-/reload", ["Bad Header: " + self.token,
                                       "Authorization: Bearer " + self.token])
        self.raw("GET", "/-/ready", ["Authorization: Bearer " + self.token + "\x01"])
        logs = self.guard.logs()
        self.assertIn("POST /-/reload", logs)  # the access log is written
        self.assertNotIn(self.token, logs)
        self.assertNotIn(self.token, self.prom.log())
        with open(self.guard.conf) as f:
            conf = f.read()
        self.assertNotIn(self.token, conf)
        self.assertIn("secure_link_md5", conf)
        self.assertEqual(os.stat(self.guard.conf).st_mode & 0o077, 0)


if __name__ == "__main__":
    unittest.main()
