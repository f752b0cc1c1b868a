"""deploy/: the systemd units, the container images, the compose stack and the Kubernetes
manifests, checked offline with the real tools.

- systemd (deploy/systemd): `systemd-analyze verify` accepts pinsd.service and pinsd-migrate.service
  with no warning (a temporary copy whose ExecStart points at the built binaries, since verify
  refuses a missing executable); a deliberately broken unit does produce warnings, so an empty
  output means something. Type=notify, the hardening the units promise, TimeoutStopSec above
  PINS_DRAIN_SECONDS, the migration ordered before pinsd, and `systemd-analyze security --offline`
  rating pinsd.service's exposure at most 2.0 ("OK").
- Docker (deploy/docker): the Dockerfile's final stage runs as a non-root USER, exposes 8000 and
  50051, has a HEALTHCHECK; its build stage installs tools/deps.sh's build set; the helper images'
  entrypoints pass shellcheck, and the guard's renders a configuration `nginx -t` accepts.
- Compose (deploy/compose): `docker-compose config` (Debian's docker-compose) accepts compose.yaml
  with .env.example and names backend, worker, migrate, postgres, pgbouncer (6432), redis,
  prometheus, prometheus-guard and grafana; RBAC_ENFORCE from the caller's environment reaches both
  replicas; the replicas wait for the migration to complete; pgbouncer.ini pools transactions; the
  compose Prometheus scrapes both replicas as job nova-backend; Grafana gets both dashboards.
- Kubernetes (deploy/k8s): every manifest parses; kustomization.yaml lists exactly them; every
  object validates against the Kubernetes API schemas (tests/ops/k8s/validate.mjs: the JSON schemas
  of kubernetes-models and the TypeScript types of kubernetes-types, installed with `npm ci` from
  tests/ops/k8s/package-lock.json when node_modules is missing); deliberately broken objects (a port
  as a string, an unknown field, a missing required field, an unknown kind) fail it; namespace
  aos-staging everywhere; probes /health and /ready on the named port; the migration Job and the
  Deployment use the same image; the security context, grace period and Service ports.

Needs systemd (systemd-analyze), docker-compose, shellcheck, nginx, openssl, node and npm, and
python3-yaml.
"""

import configparser
import copy
import glob
import json
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

try:
    import yaml
except ImportError:  # pragma: no cover - tools/deps.sh installs python3-yaml
    yaml = None

ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
SYSTEMD = os.path.join(DEPLOY, "systemd")
DOCKER = os.path.join(DEPLOY, "docker")
COMPOSE = os.path.join(DEPLOY, "compose")
K8S = os.path.join(DEPLOY, "k8s")
VALIDATOR = os.path.join(HERE, "k8s")
NAMESPACE = "aos-staging"


def binary(name):
    """PINSD_BIN / PINSCTL_BIN, else the release build tools/run.sh makes."""
    path = os.environ.get(name.upper() + "_BIN") or os.path.join(ROOT, "build-release", name)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def unit_settings(path):
    """{(section, key): [values]} of a systemd unit file (repeated keys keep every value)."""
    out = {}
    section = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, _, value = line.partition("=")
            out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def env_file(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
    return out


# ---- systemd ------------------------------------------------------------------------------------

@unittest.skipUnless(shutil.which("systemd-analyze"), "systemd-analyze not installed (systemd)")
class SystemdUnitsTest(unittest.TestCase):
    UNITS = ("pinsd.service", "pinsd-migrate.service")

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pins-deploy-systemd-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def copy_units(self):
        pinsd, pinsctl = binary("pinsd"), binary("pinsctl")
        if pinsd is None or pinsctl is None:
            self.skipTest("pinsd/pinsctl not built (set PINSD_BIN and PINSCTL_BIN)")
        paths = []
        for unit in self.UNITS:
            with open(os.path.join(SYSTEMD, unit)) as f:
                text = f.read()
            self.assertIn("/usr/local/bin/", text)
            text = text.replace("/usr/local/bin/pinsd", pinsd).replace("/usr/local/bin/pinsctl",
                                                                        pinsctl)
            path = os.path.join(self.tmp, unit)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        return paths

    def test_verify_accepts_both_units_without_a_warning(self):
        paths = self.copy_units()
        r = run(["systemd-analyze", "verify"] + paths, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(r.stdout.strip(), "", "systemd-analyze verify warned:\n" + r.stdout)

    def test_verify_reports_a_broken_unit(self):
        # The check above relies on verify printing what it dislikes: prove it does.
        path = os.path.join(self.tmp, "broken.service")
        with open(path, "w") as f:
            f.write("[Service]\nExecStart=/bin/true\nProtectSysten=strict\nTimeoutStopSec=soon\n")
        r = run(["systemd-analyze", "verify", path], cwd=self.tmp)
        self.assertIn("ProtectSysten", r.stdout)
        self.assertIn("soon", r.stdout)

    def test_security_exposure_is_low(self):
        paths = self.copy_units()
        for path in paths:
            r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", path],
                    cwd=self.tmp)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
            self.assertIsNotNone(m, r.stdout[-2000:])
            print("systemd-analyze security %s: %s" % (os.path.basename(path), m.group(1)),
                  file=sys.stderr)
            self.assertLessEqual(float(m.group(1)), 2.0, r.stdout[-4000:])

    def test_pinsd_service_settings(self):
        s = unit_settings(os.path.join(SYSTEMD, "pinsd.service"))
        one = {k: v[-1] for k, v in s.items()}
        self.assertEqual(one[("Service", "Type")], "notify")
        self.assertEqual(one[("Service", "User")], "pinsd")
        self.assertEqual(one[("Service", "EnvironmentFile")], "/etc/pinsd/pinsd.env")
        self.assertEqual(one[("Service", "StateDirectory")], "pinsd")
        self.assertIn("PINS_DATA_DIR=/var/lib/pinsd", s[("Service", "Environment")])
        self.assertEqual(one[("Service", "Restart")], "on-failure")
        self.assertIn(("Service", "RestartSec"), one)
        self.assertIn(("Unit", "StartLimitBurst"), one)
        self.assertIn(("Service", "LimitNOFILE"), one)
        self.assertEqual(one[("Service", "CapabilityBoundingSet")], "")
        for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                           ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                           ("ProtectKernelLogs", "yes"), ("ProtectControlGroups", "yes"),
                           ("RestrictNamespaces", "yes"), ("LockPersonality", "yes"),
                           ("MemoryDenyWriteExecute", "yes"),
                           ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX")]:
            self.assertEqual(one[("Service", key)], value, key)
        self.assertIn("@system-service", s[("Service", "SystemCallFilter")])
        with open(os.path.join(SYSTEMD, "pinsd.service")) as f:
            self.assertRegex(f.read(), r"#\s+AmbientCapabilities=CAP_NET_BIND_SERVICE")
        # The stop timeout outlasts the drain.
        stop = int(one[("Service", "TimeoutStopSec")].rstrip("s"))
        drain = int(env_file(os.path.join(SYSTEMD, "pinsd.env.example"))["PINS_DRAIN_SECONDS"])
        self.assertGreater(stop, drain + 5)
        # The migration runs first on every start.
        self.assertIn("pinsd-migrate.service", one[("Unit", "Wants")].split())
        self.assertIn("pinsd-migrate.service", one[("Unit", "After")].split())

    def test_migrate_unit(self):
        s = {k: v[-1] for k, v in unit_settings(os.path.join(SYSTEMD,
                                                              "pinsd-migrate.service")).items()}
        self.assertEqual(s[("Service", "Type")], "oneshot")
        self.assertEqual(s[("Unit", "Before")], "pinsd.service")
        self.assertIn("pinsctl migrate upgrade head", s[("Service", "ExecStart")])
        self.assertEqual(s[("Service", "EnvironmentFile")], "/etc/pinsd/pinsd.env")

    def migrate_script(self):
        pinsctl = binary("pinsctl")
        if pinsctl is None:
            self.skipTest("pinsctl not built (set PINSCTL_BIN)")
        s = unit_settings(os.path.join(SYSTEMD, "pinsd-migrate.service"))
        m = re.fullmatch(r"/bin/sh -c '(.*)'", s[("Service", "ExecStart")][-1])
        self.assertIsNotNone(m)
        # systemd turns $$ into $ before the shell sees the line.
        return m.group(1).replace("$$", "$").replace("/usr/local/bin/pinsctl", pinsctl)

    def test_migrate_command_without_a_database_is_a_no_op(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "DATABASE_DIRECT_URL")}
        r = run(["/bin/sh", "-c", self.migrate_script()], env=env)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("nothing to migrate", r.stdout)

    def test_migrate_command_prefers_the_direct_url_and_hides_it(self):
        # Nothing listens on ports 1 and 2: pinsctl's error names the port it tried, which must be
        # the direct URL's.
        env = dict(os.environ, DATABASE_DIRECT_URL="postgresql://nova:s3cretpw@127.0.0.1:1/nova_aos",
                   DATABASE_URL="postgresql://nova:s3cretpw@127.0.0.1:2/nova_aos")
        r = run(["/bin/sh", "-c", self.migrate_script()], env=env, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("port 1 failed", r.stdout)
        self.assertNotIn("port 2", r.stdout)
        self.assertNotIn("s3cretpw", r.stdout)
        # Without the direct URL, DATABASE_URL.
        env.pop("DATABASE_DIRECT_URL")
        r = run(["/bin/sh", "-c", self.migrate_script()], env=env, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("port 2 failed", r.stdout)

    def test_sysusers_snippet(self):
        with open(os.path.join(SYSTEMD, "pinsd.sysusers.conf")) as f:
            lines = [l.split() for l in f if l.strip() and not l.startswith("#")]
        self.assertEqual(lines[0][:2], ["u", "pinsd"])


# ---- Docker -------------------------------------------------------------------------------------

def dockerfile_stages(path):
    """[(FROM line, [(instruction, arguments)])] with continuation lines joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append((rest, []))
        elif stages:
            stages[-1][1].append((word, rest.strip()))
    return stages


class DockerfileTest(unittest.TestCase):
    def test_final_stage_is_slim_and_non_root(self):
        stages = dockerfile_stages(os.path.join(DOCKER, "Dockerfile"))
        self.assertGreaterEqual(len(stages), 2, "multi-stage")
        self.assertRegex(stages[0][0], r"^debian:\$\{DEBIAN_RELEASE\} AS build$")
        final_from, final = stages[-1]
        self.assertIn("-slim", final_from)
        users = [a for i, a in final if i == "USER"]
        self.assertTrue(users, "the final stage sets no USER")
        user = users[-1].split(":")[0]
        self.assertNotIn(user, ("root", "0"))
        exposed = " ".join(a for i, a in final if i == "EXPOSE").split()
        self.assertEqual(sorted(exposed), ["50051", "8000"])
        self.assertTrue(any(i == "HEALTHCHECK" for i, _ in final))
        self.assertTrue(any(i == "VOLUME" and "/var/lib/pinsd" in a for i, a in final))
        # Only the two binaries come from the build stage.
        copies = [a for i, a in final if i == "COPY" and "--from=build" in a]
        self.assertTrue(any("pinsd" in c and "pinsctl" in c for c in copies), copies)

    def test_build_stage_installs_the_deps_sh_build_set(self):
        _, build = dockerfile_stages(os.path.join(DOCKER, "Dockerfile"))[0]
        runs = " ".join(a for i, a in build if i == "RUN")
        self.assertIn("tools/deps.sh --list", runs)
        self.assertIn("cmake --install", runs)
        self.assertIn("-DCMAKE_BUILD_TYPE=Release", runs)

    def test_helper_images_run_as_non_root(self):
        for from_line, body in dockerfile_stages(os.path.join(DOCKER, "ops.Dockerfile")):
            users = [a for i, a in body if i == "USER"]
            self.assertTrue(users and users[-1] not in ("root", "0"), from_line)

    def test_dockerignore_keeps_builds_out(self):
        with open(os.path.join(ROOT, ".dockerignore")) as f:
            lines = f.read().split()
        for pattern in (".git", "build-*", "**/node_modules"):
            self.assertIn(pattern, lines)

    @unittest.skipUnless(shutil.which("shellcheck"), "shellcheck not installed")
    def test_entrypoints_pass_shellcheck(self):
        scripts = sorted(glob.glob(os.path.join(DOCKER, "*.sh")))
        self.assertEqual([os.path.basename(p) for p in scripts],
                         ["guard-entrypoint.sh", "pgbouncer-entrypoint.sh",
                          "postgres-entrypoint.sh", "redis-entrypoint.sh"])
        r = run(["shellcheck"] + scripts)
        self.assertEqual(r.returncode, 0, r.stdout)

    @unittest.skipUnless(shutil.which("nginx") and shutil.which("openssl"), "nginx/openssl missing")
    def test_guard_entrypoint_renders_a_valid_configuration(self):
        tmp = tempfile.mkdtemp(prefix="pins-deploy-guard-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tmp, True)
        token = "t" * 8 + "0123456789abcdefXYZ._~"
        env = dict(os.environ, PROM_RELOAD_TOKEN=token, GUARD_DIR=os.path.join(ROOT, "ops", "nginx"),
                   GUARD_PREFIX=os.path.join(tmp, "guard"), GUARD_LISTEN="127.0.0.1:9",
                   GUARD_UPSTREAM="127.0.0.1:9")
        r = run([os.path.join(DOCKER, "guard-entrypoint.sh"), "--check"], env=env)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertNotIn(token, r.stdout)
        with open(os.path.join(tmp, "guard", "nginx.conf")) as f:
            self.assertNotIn(token, f.read())
        env.pop("PROM_RELOAD_TOKEN")
        r = run([os.path.join(DOCKER, "guard-entrypoint.sh"), "--check"], env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("PROM_RELOAD_TOKEN", r.stdout)


# ---- compose ------------------------------------------------------------------------------------

def compose_cmd():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@unittest.skipUnless(yaml is not None, "python3-yaml not installed")
@unittest.skipUnless(compose_cmd(), "docker-compose not installed (Debian package docker-compose)")
class ComposeTest(unittest.TestCase):
    SERVICES = {"backend", "worker", "migrate", "postgres", "pgbouncer", "redis", "prometheus",
                "prometheus-guard", "grafana"}

    def config(self, **env):
        e = {k: v for k, v in os.environ.items() if k not in ("RBAC_ENFORCE", "COMPOSE_FILE")}
        e.update(env)
        r = run(compose_cmd() + ["--env-file", os.path.join(COMPOSE, ".env.example"), "-f",
                                 os.path.join(COMPOSE, "compose.yaml"), "config"], env=e, cwd=COMPOSE)
        self.assertEqual(r.returncode, 0, r.stdout)
        return yaml.safe_load(r.stdout)

    def test_config_names_every_service(self):
        cfg = self.config()
        self.assertEqual(set(cfg["services"]), self.SERVICES)
        svc = cfg["services"]
        for name, s in svc.items():
            if name != "migrate":
                self.assertIn(s.get("restart"), ("unless-stopped", "always"), name)
                self.assertIn("healthcheck", s, name)
        self.assertIn(svc["migrate"].get("restart"), (None, "no"))
        ports = json.dumps(svc["pgbouncer"]["ports"])
        self.assertIn("6432", ports)
        self.assertNotIn("ports", svc["prometheus"])  # behind the guard only
        self.assertIn("9090", json.dumps(svc["prometheus-guard"]["ports"]))
        self.assertIn("--web.enable-lifecycle", svc["prometheus"]["command"])
        self.assertEqual(svc["postgres"]["image"], "postgres:15")
        self.assertEqual(svc["postgres"]["environment"]["POSTGRES_DB"], "nova_aos")
        self.assertEqual(svc["postgres"]["environment"]["POSTGRES_USER"], "nova")
        self.assertEqual(svc["migrate"]["command"], ["migrate", "upgrade", "head"])
        self.assertIn("@postgres:5432/", svc["migrate"]["environment"]["DATABASE_URL"])
        for name in ("backend", "worker"):
            s = svc[name]
            self.assertEqual(s["depends_on"]["migrate"]["condition"],
                             "service_completed_successfully")
            self.assertIn("@pgbouncer:6432/", s["environment"]["DATABASE_URL"])
            self.assertEqual(s["environment"]["RBAC_ENFORCE"], "false")
            self.assertEqual(s["image"], svc["migrate"]["image"])
        self.assertTrue(set(cfg["volumes"]) >= {"postgres-data", "grafana-data", "prometheus-data"})

    def test_rbac_enforce_comes_from_the_callers_environment(self):
        svc = self.config(RBAC_ENFORCE="true")["services"]
        self.assertEqual(svc["backend"]["environment"]["RBAC_ENFORCE"], "true")
        self.assertEqual(svc["worker"]["environment"]["RBAC_ENFORCE"], "true")

    def test_missing_secret_is_refused(self):
        # An empty env file (not deploy/compose/.env, which an operator may have created).
        env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
        tmp = tempfile.mkdtemp(prefix="pins-deploy-compose-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tmp, True)
        empty = os.path.join(tmp, "empty.env")
        open(empty, "w").close()
        r = run(compose_cmd() + ["--env-file", empty, "-f",
                                 os.path.join(COMPOSE, "compose.yaml"), "config"], env=env,
                cwd=COMPOSE)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("POSTGRES_PASSWORD", r.stdout)

    def test_grafana_gets_both_dashboards(self):
        g = self.config()["services"]["grafana"]
        vols = json.dumps(g["volumes"])
        self.assertIn("observability/grafana", vols)
        self.assertIn("provisioning/dashboards/pinsd.yml", vols)
        self.assertEqual(g["environment"]["PINS_ROOT"], "/pins")
        dashboards = glob.glob(os.path.join(ROOT, "observability", "grafana", "*.json"))
        self.assertEqual(sorted(os.path.basename(d) for d in dashboards),
                         ["m7_memory_pins.json", "m7_rbac_dashboard.json"])
        with open(os.path.join(COMPOSE, "grafana", "datasources.yml")) as f:
            ds = yaml.safe_load(f)["datasources"][0]
        self.assertEqual(ds["uid"], "pinsd-prometheus")
        self.assertEqual(ds["url"], "http://prometheus:9091")

    def test_pgbouncer_pools_transactions(self):
        ini = configparser.ConfigParser()
        ini.read(os.path.join(COMPOSE, "pgbouncer.ini"))
        self.assertEqual(ini["pgbouncer"]["pool_mode"], "transaction")
        self.assertEqual(ini["pgbouncer"]["listen_port"], "6432")
        self.assertIn("dbname=nova_aos", ini["databases"]["nova_aos"])

    def test_prometheus_scrapes_both_replicas(self):
        with open(os.path.join(COMPOSE, "prometheus.yml")) as f:
            cfg = yaml.safe_load(f)
        jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
        targets = jobs["nova-backend"]["static_configs"][0]["targets"]
        self.assertEqual(sorted(targets), ["backend:8000", "worker:8000"])
        promtool = shutil.which("promtool")
        if promtool:
            r = run([promtool, "check", "config", "--syntax-only",
                     os.path.join(COMPOSE, "prometheus.yml")])
            self.assertEqual(r.returncode, 0, r.stdout)


# ---- Kubernetes ---------------------------------------------------------------------------------

def k8s_objects():
    """[(file name, object)] of every deploy/k8s manifest except kustomization.yaml."""
    out = []
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        name = os.path.basename(path)
        if name == "kustomization.yaml":
            continue
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    out.append((name, doc))
    return out


_VALIDATOR_READY = []


def validate(objs):
    """Runs validate.mjs on objs: (exit status, [result per object])."""
    if not _VALIDATOR_READY:
        if not shutil.which("node") or not shutil.which("npm"):
            raise unittest.SkipTest("node/npm not installed")
        if not os.path.isdir(os.path.join(VALIDATOR, "node_modules", "kubernetes-models")):
            r = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=VALIDATOR, timeout=600)
            if r.returncode != 0:
                raise AssertionError("npm ci in tests/ops/k8s failed:\n" + r.stdout[-3000:])
        _VALIDATOR_READY.append(True)
    r = subprocess.run(["node", os.path.join(VALIDATOR, "validate.mjs")], input=json.dumps(objs),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    results = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    if r.returncode == 2 or len(results) != len(objs):
        raise AssertionError("validate.mjs failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr))
    return r.returncode, results


@unittest.skipUnless(yaml is not None, "python3-yaml not installed")
class KubernetesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objs = k8s_objects()
        cls.by_kind = {}
        for _, o in cls.objs:
            cls.by_kind.setdefault(o["kind"], []).append(o)

    def one(self, kind):
        self.assertEqual(len(self.by_kind.get(kind, [])), 1, kind)
        return self.by_kind[kind][0]

    def test_every_object_validates_against_the_api_schema(self):
        rc, results = validate([o for _, o in self.objs])
        bad = ["%s %s (%s): %s" % (self.objs[r["index"]][1]["kind"],
                                   self.objs[r["index"]][1]["metadata"]["name"],
                                   self.objs[r["index"]][0], r["errors"])
               for r in results if not r["ok"]]
        self.assertEqual(bad, [])
        self.assertEqual(rc, 0)
        kinds = sorted({o["kind"] for _, o in self.objs})
        self.assertEqual(kinds, ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job",
                                 "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Secret",
                                 "Service"])

    def test_broken_objects_fail_validation(self):
        dep = self.one("Deployment")
        c = lambda d: d["spec"]["template"]["spec"]["containers"][0]  # noqa: E731
        port_string = copy.deepcopy(dep)
        c(port_string)["ports"][0]["containerPort"] = "8000"
        unknown_field = copy.deepcopy(dep)
        c(unknown_field)["livenesProbe"] = c(unknown_field)["livenessProbe"]
        nested_unknown = copy.deepcopy(self.one("Service"))
        nested_unknown["spec"]["ports"][0]["targetPorts"] = "http"
        no_name = copy.deepcopy(dep)
        del c(no_name)["name"]
        bad_enum = copy.deepcopy(self.one("HorizontalPodAutoscaler"))
        bad_enum["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "70%"
        broken = [port_string, unknown_field, nested_unknown, no_name, bad_enum]
        rc, results = validate(broken)
        self.assertEqual(rc, 1)
        for r in results:
            self.assertFalse(r["ok"], "object %d passed: %s" % (r["index"], broken[r["index"]]))
        self.assertTrue(any("livenesProbe" in e for e in results[1]["errors"]), results[1])
        self.assertTrue(any("targetPorts" in e for e in results[2]["errors"]), results[2])
        # A kind the API does not have.
        wrong_kind = copy.deepcopy(dep)
        wrong_kind["kind"] = "Deploymnet"
        rc, results = validate([wrong_kind])
        self.assertEqual(rc, 1)
        self.assertFalse(results[0]["ok"])

    def test_namespace_everywhere(self):
        for name, o in self.objs:
            if o["kind"] == "Namespace":
                self.assertEqual(o["metadata"]["name"], NAMESPACE)
            else:
                self.assertEqual(o["metadata"].get("namespace"), NAMESPACE,
                                 "%s in %s" % (o["kind"], name))
        with open(os.path.join(K8S, "kustomization.yaml")) as f:
            kust = yaml.safe_load(f)
        self.assertEqual(kust["namespace"], NAMESPACE)
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))
                       if not p.endswith("kustomization.yaml") and
                       not p.endswith("secret.example.yaml"))
        # Every manifest but the example Secret: an apply must never replace the cluster's real
        # pinsd-secrets with the example's placeholders.
        self.assertEqual(sorted(kust["resources"]), files)
        self.assertNotIn("secret.example.yaml", kust["resources"])

    def test_deployment(self):
        dep = self.one("Deployment")
        spec = dep["spec"]
        self.assertEqual(spec["replicas"], 2)
        pod = spec["template"]["spec"]
        self.assertEqual(len(pod["containers"]), 1)
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        self.assertEqual(ports, {"http": 8000, "grpc": 50051})
        self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/health", "port": "http"})
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/ready", "port": "http"})
        self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/health")
        self.assertEqual(c["startupProbe"]["httpGet"]["port"], "http")
        for k in ("requests", "limits"):
            self.assertTrue({"cpu", "memory"} <= set(c["resources"][k]), k)
        sc = c["securityContext"]
        self.assertIs(sc["runAsNonRoot"], True)
        self.assertIs(sc["readOnlyRootFilesystem"], True)
        self.assertIs(sc["allowPrivilegeEscalation"], False)
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertEqual(sc["seccompProfile"]["type"], "RuntimeDefault")
        self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        refs = {(k, v["name"]) for e in c["envFrom"] for k, v in e.items()}
        self.assertEqual(refs, {("configMapRef", self.one("ConfigMap")["metadata"]["name"]),
                                ("secretRef", self.one("Secret")["metadata"]["name"])})
        drain = int(self.one("ConfigMap")["data"]["PINS_DRAIN_SECONDS"])
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        sleep = int(pre_stop[-1]) if pre_stop[0] == "sleep" else 0
        self.assertGreater(pod["terminationGracePeriodSeconds"], drain + sleep)
        self.assertTrue(pod["topologySpreadConstraints"])
        sel = spec["selector"]["matchLabels"]
        self.assertTrue(set(sel.items()) <= set(spec["template"]["metadata"]["labels"].items()))

    def test_migrate_job_uses_the_deployment_image(self):
        job = self.one("Job")
        dep = self.one("Deployment")
        jc = job["spec"]["template"]["spec"]["containers"][0]
        dc = dep["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(jc["image"], dc["image"])
        self.assertEqual(jc["command"], ["pinsctl", "migrate", "upgrade", "head"])
        self.assertEqual(job["spec"]["template"]["spec"]["restartPolicy"], "Never")
        env = {e["name"]: e for e in jc["env"]}
        self.assertEqual(env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"],
                         "DATABASE_DIRECT_URL")
        self.assertIn("DATABASE_DIRECT_URL", self.one("Secret")["stringData"])

    def test_service_pdb_hpa(self):
        svc = self.one("Service")
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        self.assertEqual(ports["http"]["port"], 8000)
        self.assertEqual(ports["grpc"]["port"], 50051)
        self.assertTrue(ports["grpc"].get("appProtocol"))
        self.assertTrue(ports["http"].get("appProtocol"))
        labels = self.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(set(svc["spec"]["selector"].items()) <= set(labels.items()))
        pdb = self.one("PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["minAvailable"], 1)
        hpa = self.one("HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"],
                         self.one("Deployment")["metadata"]["name"])
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")

    def test_network_policy(self):
        pols = {p["metadata"]["name"]: p for p in self.by_kind["NetworkPolicy"]}
        pol = pols["pinsd"]
        self.assertEqual(sorted(pol["spec"]["policyTypes"]), ["Egress", "Ingress"])
        ports = sorted(p["port"] for r in pol["spec"]["ingress"] for p in r["ports"])
        self.assertEqual(ports, [8000, 50051])
        egress = sorted({p["port"] for r in pol["spec"]["egress"] for p in r["ports"]})
        self.assertEqual(egress, [53, 5432, 6379, 6432])

    def test_secret_is_an_example(self):
        sec = self.one("Secret")
        self.assertEqual(set(sec["stringData"]), {"DATABASE_URL", "DATABASE_DIRECT_URL",
                                                  "DATABASE_LISTEN_URL", "REDIS_URL",
                                                  "MACHINE_SECRET_TOKEN", "JWT_SECRET"})
        for k in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DATABASE_LISTEN_URL",
                  "MACHINE_SECRET_TOKEN", "JWT_SECRET"):
            self.assertIn("CHANGE_ME", sec["stringData"][k], k)

if __name__ == "__main__":
    unittest.main()
