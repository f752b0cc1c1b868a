"""libpins-client as a user gets it: `cmake --install` into a temporary prefix, then only that prefix
and pkg-config (issue 13).

InstalledClientTest installs PINS_BUILD_DIR into a temporary prefix and, with PKG_CONFIG_PATH
pointing into it and nothing else of the source tree (the examples are copied out; no -I or -L to
the tree), compiles client/examples/pins_example.c against the shared library and against
libpins-client.a, and pins_watch_async.c against the shared library and libevent. It runs them
against a real pinsd and checks their output and exit status, and checks with grpcio that they
really stored and read the pins. It checks pins-client.pc (version, flags), that every installed
header compiles alone under -std=c11 -pedantic -Werror, the soname, and that the shared library
exports exactly the API of pins/client.h and the generated message symbols its headers declare,
each versioned PINS_CLIENT_0, and nothing of pinsd's common/ code.

ProtoStubsTest runs protoc on the installed .proto files (share/pins/proto) for Python and C++,
compiles the C++ and calls pinsd with the generated Python classes, and checks the per-language
options against buf's conventions: stubs in other languages come from the files unedited.

A build with PINS_SANITIZE=ON installs an instrumented library; the examples are then compiled
with the same -fsanitize flags (a program linking ASan-instrumented code must itself).

Run: PINS_BUILD_DIR=/tmp/b PINSD_BIN=/tmp/b/pinsd /usr/bin/python3 -m unittest -v test_client_install
"""

import glob
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import uuid

import grpc

from harness import Server, free_port, mp, to_dict
from test_rbac import JWT_SECRET, MACHINE, jwt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("PINS_ROOT") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("PINS_BUILD_DIR")
EXAMPLES = os.path.join(ROOT, "client", "examples")
CC = shutil.which("cc") or shutil.which("gcc")
CXX = shutil.which("c++") or shutil.which("g++")

# The generated headers pins/client.h uses, installed beside it at their relative paths.
GEN_HEADERS = [
    "memorypins/v1/memory_pins.pb-c.h",
    "memorypins/v1/admin.pb-c.h",
    "grpc/health/v1/health.pb-c.h",
    "google/protobuf/struct.pb-c.h",
    "google/protobuf/timestamp.pb-c.h",
    "google/protobuf/wrappers.pb-c.h",
]
# The .proto files installed in share/pins/proto: the services a client calls.
PROTOS = [
    "memorypins/v1/memory_pins.proto",
    "memorypins/v1/admin.proto",
    "grpc/health/v1/health.proto",
]
GEN_PREFIXES = ("memorypins__", "grpc__health__", "google__protobuf__")
C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def run(cmd, env=None, cwd=None, timeout=120, check=True):
    p = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\n--- stdout\n%s\n--- stderr\n%s"
                             % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def strip_c_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def sanitizer_flags():
    """-fsanitize flags of the installed build (PINS_SANITIZE=ON in its CMakeCache.txt)."""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            cache = f.read()
    except OSError:
        return []
    if re.search(r"^PINS_SANITIZE:BOOL=(ON|1|TRUE|YES)$", cache, re.M | re.I):
        return ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    return []


class Installed:
    """One `cmake --install` into a temporary prefix, shared by the test classes."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        if not BUILD or not os.path.isdir(BUILD):
            raise unittest.SkipTest("PINS_BUILD_DIR (a configured and built tree) is not set")
        self.tmp = tempfile.mkdtemp(prefix="pins-install-", dir="/tmp")
        self.prefix = os.path.join(self.tmp, "prefix")
        run(["cmake", "--install", BUILD, "--prefix", self.prefix], timeout=300)
        pcs = glob.glob(os.path.join(self.prefix, "lib*", "**", "pins-client.pc"), recursive=True)
        if len(pcs) != 1:
            raise AssertionError("expected one installed pins-client.pc, found %r" % pcs)
        self.pcdir = os.path.dirname(pcs[0])
        self.libdir = os.path.dirname(self.pcdir)
        self.includedir = os.path.join(self.prefix, "include")
        # The environment of every compiler and pkg-config run: the installed prefix, the
        # system, nothing of the source or build tree.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PKG_CONFIG_PATH": self.pcdir,
                    "LC_ALL": "C", "HOME": self.tmp}
        self.san = sanitizer_flags()

    def pkg_config(self, *args):
        return run(["pkg-config"] + list(args), env=self.env).stdout.split()

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def tearDownModule():
    if Installed._instance is not None:
        Installed._instance.cleanup()


class InstalledClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if CC is None:
            raise unittest.SkipTest("no C compiler (cc)")
        cls.inst = inst = Installed.get()
        cls.work = tempfile.mkdtemp(prefix="src-", dir=inst.tmp)
        for name in ("pins_example.c", "pins_watch_async.c"):
            shutil.copy(os.path.join(EXAMPLES, name), cls.work)
        cflags = inst.pkg_config("--cflags", "pins-client")
        # Shared: exactly the documented line, cc FILE $(pkg-config --cflags --libs pins-client).
        cls.example = cls.compile("pins_example.c", "pins_example",
                                  inst.pkg_config("--cflags", "--libs", "pins-client"))
        # Static: libpins-client.a by name, then everything pkg-config --static lists.
        static_libs = inst.pkg_config("--static", "--libs", "pins-client")
        static_libs = ["-l:libpins-client.a" if a == "-lpins-client" else a for a in static_libs]
        cls.example_static = cls.compile("pins_example.c", "pins_example_static",
                                         cflags + static_libs)
        cls.async_example = cls.compile(
            "pins_watch_async.c", "pins_watch_async",
            inst.pkg_config("--cflags", "--libs", "pins-client", "libevent"))
        cls.run_env = {"PATH": inst.env["PATH"], "LC_ALL": "C", "LD_LIBRARY_PATH": inst.libdir}
        if inst.san:
            cls.run_env["ASAN_OPTIONS"] = "detect_leaks=1"
        cls.server = Server({"MACHINE_SECRET_TOKEN": MACHINE})
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise
        cls.grpc = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        try:
            if getattr(cls, "grpc", None) is not None:
                cls.grpc.close()
        finally:
            if getattr(cls, "server", None) is not None:
                cls.server.cleanup()
        super().tearDownClass()
        if getattr(cls, "server", None) is not None and cls.server.sanitizer_findings:
            raise AssertionError("sanitizer report from pinsd:\n"
                                 + "\n".join(cls.server.sanitizer_findings))

    @classmethod
    def compile(cls, src, out, flags):
        exe = os.path.join(cls.work, out)
        run([CC] + C_FLAGS + cls.inst.san + [src, "-o", exe] + flags, env=cls.inst.env,
            cwd=cls.work)
        return exe

    def run_example(self, exe, args=(), addr=None, env=None, timeout=60):
        e = dict(self.run_env)
        e["PINS_ADDR"] = addr or self.server.target
        e.update(env or {})
        return run([exe] + list(args), env=e, cwd=self.work, timeout=timeout, check=False)

    def tenant(self):
        return "inst-" + uuid.uuid4().hex[:10]

    def get_pin(self, tenant, key):
        return self.grpc.call(mp("GetPin"), {"tenant_id": tenant, "key": key}).pin

    def header_version(self):
        with open(os.path.join(self.inst.includedir, "pins", "client.h")) as f:
            m = re.search(r'#define PINS_CLIENT_VERSION_STRING "([0-9.]+)"', f.read())
        self.assertIsNotNone(m, "no PINS_CLIENT_VERSION_STRING in the installed header")
        return m.group(1)

    # ---- the installed tree

    def test_install_puts_everything_in_its_place(self):
        p = self.inst.prefix
        for exe in ("pinsd", "pinsctl"):
            self.assertTrue(os.access(os.path.join(p, "bin", exe), os.X_OK), exe)
        ver = self.header_version()
        major = ver.split(".")[0]
        lib = self.inst.libdir
        self.assertTrue(os.path.isfile(os.path.join(lib, "libpins-client.so." + ver)))
        self.assertEqual(os.readlink(os.path.join(lib, "libpins-client.so." + major)),
                         "libpins-client.so." + ver)
        self.assertEqual(os.readlink(os.path.join(lib, "libpins-client.so")),
                         "libpins-client.so." + major)
        self.assertTrue(os.path.isfile(os.path.join(lib, "libpins-client.a")))
        inc = os.path.join(self.inst.includedir, "pins")
        for h in ["client.h"] + GEN_HEADERS:
            self.assertTrue(os.path.isfile(os.path.join(inc, h)), h)
        for proto in PROTOS:
            self.assertTrue(os.path.isfile(os.path.join(p, "share", "pins", "proto", proto)), proto)

    def test_pkg_config_describes_the_installed_library(self):
        self.assertEqual(self.inst.pkg_config("--modversion", "pins-client"),
                         [self.header_version()])
        inc = self.inst.includedir
        cflags = self.inst.pkg_config("--cflags", "pins-client")
        self.assertIn("-I" + inc, cflags)
        self.assertIn("-I" + os.path.join(inc, "pins"), cflags)
        libs = self.inst.pkg_config("--libs", "pins-client")
        self.assertIn("-L" + self.inst.libdir, libs)
        self.assertIn("-lpins-client", libs)
        self.assertIn("-lprotobuf-c", libs)  # Requires: the public headers include protobuf-c
        self.assertNotIn("-lnghttp2", libs)  # private to the shared library
        static = self.inst.pkg_config("--static", "--libs", "pins-client")
        for lib in ("-lpins-client", "-lprotobuf-c", "-lnghttp2", "-levent", "-lssl", "-lcrypto",
                    "-lpthread", "-lm"):
            self.assertIn(lib, static)
        for flag in cflags + libs + static:
            self.assertNotIn(ROOT, flag, "pins-client.pc points into the source tree")
            self.assertNotIn(BUILD, flag, "pins-client.pc points into the build tree")

    def test_every_installed_header_compiles_alone(self):
        cflags = self.inst.pkg_config("--cflags", "pins-client")
        for h in ["pins/client.h"] + GEN_HEADERS:
            src = os.path.join(self.work, "one_header.c")
            with open(src, "w") as f:
                f.write("#include <%s>\n" % h)
            run([CC] + C_FLAGS + ["-fsyntax-only", src] + cflags, env=self.inst.env,
                cwd=self.work)
        if CXX is not None:  # the header is usable from C++ too (extern "C")
            src = os.path.join(self.work, "one_header.cc")
            with open(src, "w") as f:
                f.write("#include <pins/client.h>\nint main() { return pins_code_name(0)[0] != 'O'; }\n")
            run([CXX, "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only",
                 src] + cflags, env=self.inst.env, cwd=self.work)

    def test_runtime_version_is_the_header_version(self):
        src = os.path.join(self.work, "version.c")
        with open(src, "w") as f:
            f.write("#include <pins/client.h>\n#include <stdio.h>\n#include <string.h>\n"
                    "int main(void)\n{\n    printf(\"%s\\n\", pins_client_version());\n"
                    "    return strcmp(pins_client_version(), PINS_CLIENT_VERSION_STRING) != 0;\n}\n")
        exe = self.compile("version.c", "version",
                           self.inst.pkg_config("--cflags", "--libs", "pins-client"))
        p = run([exe], env=self.run_env, check=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip(), self.header_version())

    def test_shared_library_soname(self):
        ver = self.header_version()
        so = os.path.join(self.inst.libdir, "libpins-client.so." + ver)
        dyn = run(["readelf", "-d", so]).stdout
        m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", dyn)
        self.assertIsNotNone(m, dyn)
        self.assertEqual(m.group(1), "libpins-client.so." + ver.split(".")[0])
        # The shared example loads it by that name.
        needed = run(["readelf", "-d", self.example]).stdout
        self.assertIn("[libpins-client.so.%s]" % ver.split(".")[0], needed)

    def test_exports_exactly_the_public_api_versioned(self):
        inc = os.path.join(self.inst.includedir, "pins")
        with open(os.path.join(inc, "client.h")) as f:
            api = set(re.findall(r"\b(pins_[a-z0-9_]+)\s*\(", strip_c_comments(f.read())))
        self.assertGreater(len(api), 30, "the API parse of pins/client.h found too little")
        declared = set()
        for h in GEN_HEADERS:
            with open(os.path.join(inc, h)) as f:
                text = strip_c_comments(f.read())
            declared |= {n for n in re.findall(r"\b(\w+)\s*\(", text) if n.startswith(GEN_PREFIXES)}
            declared |= set(re.findall(r"extern\s+const\s+\w+\s+(\w+)\s*;", text))
        so = os.path.join(self.inst.libdir, "libpins-client.so")
        out = run(["nm", "-D", "--defined-only", so]).stdout
        exported = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            name, _, version = parts[2].partition("@")
            if parts[1] == "A" and name == "PINS_CLIENT_0":
                continue  # the version node itself
            exported[name] = version.lstrip("@")
        unversioned = sorted(n for n, v in exported.items() if v != "PINS_CLIENT_0")
        self.assertEqual(unversioned, [], "exported without version PINS_CLIENT_0")
        pins = {n for n in exported if not n.startswith(GEN_PREFIXES)}
        self.assertEqual(sorted(pins - api), [], "exported but not in pins/client.h")
        self.assertEqual(sorted(api - pins), [], "declared in pins/client.h but not exported")
        self.assertEqual(sorted(declared - set(exported)), [],
                         "declared by an installed generated header but not exported")
        for name in exported:  # nothing of common/ or of the library's internals
            self.assertFalse(re.match(r"(pins_(arena|buf|json|utf8|base64|percent|error|grpc)_|"
                                      r"pbstruct_|pbwire_|client__)", name), name)
        # The library is self-contained: no symbol of pinsd's tree is left for the program.
        undef = run(["nm", "-D", "--undefined-only", so]).stdout
        self.assertFalse(re.search(r"\b(pins_|pbstruct_|client__)", undef), undef)
        # The installed libpins-client.a defines the same global names, no more.
        out = run(["nm", "--defined-only", "--extern-only", "--format=posix",
                   os.path.join(self.inst.libdir, "libpins-client.a")]).stdout
        static = {line.split()[0] for line in out.splitlines()
                  if len(line.split()) >= 2 and not line.endswith(":")}
        self.assertEqual(sorted(static - set(exported)), [],
                         "global in libpins-client.a but not exported by the .so")
        self.assertEqual(sorted(set(exported) - static), [],
                         "exported by the .so but not defined by libpins-client.a")

    # ---- the examples against pinsd

    def check_example_run(self, exe):
        tenant = self.tenant()
        # Another pin of the tenant, written by grpcio: the example's ListPins must show it.
        self.grpc.call(mp("UpsertPin"), {"tenant_id": tenant, "key": "other", "value": {"x": 1}})
        value = {"text": "hello \"quoted\"", "n": 1, "list": [1, 2, {"deep": True}]}
        p = self.run_example(exe, ["--keep", tenant, "k1", json.dumps(value)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = p.stdout.splitlines()
        self.assertIn("upsert: %s/k1 version 1 created" % tenant, lines)
        self.assertIn("get: %s/k1 version 1" % tenant, lines)
        listed = [l for l in lines if l.startswith("list: ")]
        self.assertEqual(len(listed), 1, p.stdout)
        self.assertEqual(listed[0], "list: %s has 2 pin(s): k1 other" % tenant)
        printed = [l for l in lines if l.startswith("pin: ")]
        self.assertEqual(len(printed), 1, p.stdout)
        pin = json.loads(printed[0][len("pin: "):])
        self.assertEqual(pin, {"tenant_id": tenant, "key": "k1", "version": 1, "value": value})
        self.assertFalse([l for l in lines if l.startswith("delete: ")], "--keep deleted")
        # grpcio reads what the example stored.
        stored = to_dict(self.get_pin(tenant, "k1"))
        self.assertEqual(stored["value"], value)
        self.assertEqual(int(stored["version"]), 1)

        # Again without --keep: it replaces the pin (version 2), reads it and deletes it.
        p = self.run_example(exe, [tenant, "k1", '{"second":true}'])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = p.stdout.splitlines()
        self.assertIn("upsert: %s/k1 version 2 replaced" % tenant, lines)
        self.assertIn("get: %s/k1 version 2" % tenant, lines)
        self.assertIn('pin: {"tenant_id":"%s","key":"k1","version":2,"value":{"second":true}}'
                      % tenant, lines)
        self.assertIn("delete: %s/k1 deleted" % tenant, lines)
        with self.assertRaises(grpc.RpcError) as cm:
            self.get_pin(tenant, "k1")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(to_dict(self.get_pin(tenant, "other"))["value"], {"x": 1})

    def test_example_shared_stores_reads_lists_and_deletes(self):
        self.check_example_run(self.example)

    def test_example_static_stores_reads_lists_and_deletes(self):
        needed = run(["readelf", "-d", self.example_static]).stdout
        self.assertNotIn("libpins-client", needed, "the static example loads the shared library")
        self.check_example_run(self.example_static)

    def test_example_exit_status_and_errors(self):
        # Nothing listens: the client decides UNAVAILABLE, exit status 1.
        port = free_port()
        p = self.run_example(self.example, addr="127.0.0.1:%d" % port)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("UpsertPin failed: UNAVAILABLE (14)", p.stderr)
        self.assertIn("from the client", p.stderr)
        # The server says no: an invalid key (pinsd validates keys) is INVALID_ARGUMENT.
        p = self.run_example(self.example, [self.tenant(), "", "{}"])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("UpsertPin failed: INVALID_ARGUMENT (3)", p.stderr)
        self.assertIn("from the server", p.stderr)
        # A value that is not a JSON object never reaches the server: usage, 2.
        p = self.run_example(self.example, [self.tenant(), "k", "[1,2]"])
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("pins_value_from_json failed: INVALID_ARGUMENT", p.stderr)
        p = self.run_example(self.example, ["only-one-argument"])
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("usage:", p.stderr)

    def test_example_sends_the_tokens_from_the_environment(self):
        srv = Server({"RBAC_ENFORCE": "true", "MACHINE_SECRET_TOKEN": MACHINE,
                      "JWT_SECRET": JWT_SECRET})
        self.addCleanup(srv.cleanup)
        srv.start()
        tenant = self.tenant()
        args = [tenant, "k", '{"a":1}']
        # No credentials: pinsd refuses the first call.
        p = self.run_example(self.example, args, addr=srv.target)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stderr, r"UpsertPin failed: (UNAUTHENTICATED|PERMISSION_DENIED)")
        self.assertIn("from the server", p.stderr)
        # MACHINE_SECRET_TOKEN (role machine): writes and reads, but may not delete.
        p = self.run_example(self.example, args, addr=srv.target,
                             env={"MACHINE_SECRET_TOKEN": MACHINE})
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("get: %s/k version 1" % tenant, p.stdout.splitlines())
        self.assertIn("DeletePin failed: PERMISSION_DENIED (7)", p.stderr)
        # PINS_TOKEN, a bearer JWT of role admin: everything.
        p = self.run_example(self.example, args, addr=srv.target,
                             env={"PINS_TOKEN": jwt({"sub": "install-test", "roles": ["admin"]})})
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("upsert: %s/k version 2 replaced" % tenant, p.stdout.splitlines())
        self.assertIn("delete: %s/k deleted" % tenant, p.stdout.splitlines())

    def test_async_example_watches_concurrent_upserts(self):
        tenant = self.tenant()
        count = 5
        p = self.run_example(self.async_example, [tenant, str(count)])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "watch: %s" % tenant)
        self.assertIn("started: %d upserts on one connection, %d calls pending"
                      % (count, count + 1), lines)
        for i in range(count):
            self.assertIn("upsert: async-%d version 1" % i, lines)
            self.assertIn('event: PUT %s/async-%d version 1 {"n":%d}' % (tenant, i, i), lines)
        self.assertEqual(lines[-1], "done: %d upserts, %d events" % (count, count))
        # grpcio sees the pins the example wrote.
        listed = self.grpc.call(mp("ListPins"), {"tenant_id": tenant, "limit": 100})
        got = {pin.key: to_dict(pin)["value"] for pin in listed.pins}
        self.assertEqual(got, {"async-%d" % i: {"n": i} for i in range(count)})


class ClientDocsTest(unittest.TestCase):
    def test_readme_example_is_pins_example_c(self):
        # client/README.md shows the complete example inline: it must be the file that is built
        # and run above, character for character.
        with open(os.path.join(ROOT, "client", "README.md")) as f:
            blocks = re.findall(r"^```c\n(.*?)^```$", f.read(), re.M | re.S)
        with open(os.path.join(EXAMPLES, "pins_example.c")) as f:
            example = f.read()
        self.assertIn(example, blocks, "client/README.md does not show examples/pins_example.c")


class ProtoStubsTest(unittest.TestCase):
    """Other languages generate stubs from the installed .proto files without editing them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if shutil.which("protoc") is None:
            raise unittest.SkipTest("protoc not installed")
        cls.inst = Installed.get()
        cls.proto_dir = os.path.join(cls.inst.prefix, "share", "pins", "proto")
        cls.out = tempfile.mkdtemp(prefix="stubs-", dir=cls.inst.tmp)
        for lang in ("python", "cpp", "java", "csharp"):
            os.makedirs(os.path.join(cls.out, lang))
        # The well-known types come from protoc's own include directory, as for any user.
        run(["protoc", "-I" + cls.proto_dir, "-I/usr/include",
             "--python_out=" + os.path.join(cls.out, "python"),
             "--cpp_out=" + os.path.join(cls.out, "cpp"),
             "--java_out=" + os.path.join(cls.out, "java"),
             "--csharp_out=" + os.path.join(cls.out, "csharp")] + PROTOS,
            cwd=cls.proto_dir, env=cls.inst.env)

    def load_python(self):
        """The generated memorypins.v1 Python modules, imported from the generated tree."""
        sys.path.insert(0, os.path.join(self.out, "python"))
        try:
            mods = {}
            for name in ("memory_pins", "admin"):
                modname = "memorypins.v1.%s_pb2" % name
                mods[name] = importlib.import_module(modname)
            return mods
        finally:
            sys.path.pop(0)

    def test_options_follow_buf_conventions(self):
        from google.protobuf import descriptor_pb2
        fds = os.path.join(self.out, "set.pb")
        run(["protoc", "-I" + self.proto_dir, "-I/usr/include", "--descriptor_set_out=" + fds]
            + PROTOS, cwd=self.proto_dir, env=self.inst.env)
        with open(fds, "rb") as f:
            files = {fd.name: fd for fd in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file}
        own = [files["memorypins/v1/memory_pins.proto"], files["memorypins/v1/admin.proto"]]
        for fd in own:
            o = fd.options
            self.assertEqual(fd.package, "memorypins.v1")
            # go: import path ending in the package's directory; package name = the last two
            # package components joined (buf's convention, e.g. acme.weather.v1 -> weatherv1).
            path, _, name = o.go_package.partition(";")
            self.assertTrue(path.endswith("/memorypins/v1"), o.go_package)
            self.assertEqual(name, "memorypinsv1")
            # java: one class per message, the package ending in the proto package, the outer
            # class the file name in PascalCase + "Proto".
            self.assertTrue(o.java_multiple_files)
            self.assertTrue(o.java_package.endswith(".memorypins.v1") or
                            o.java_package == "memorypins.v1", o.java_package)
            stem = os.path.splitext(os.path.basename(fd.name))[0]
            self.assertEqual(o.java_outer_classname,
                             "".join(w.capitalize() for w in stem.split("_")) + "Proto")
            self.assertEqual(o.csharp_namespace, "Memorypins.V1")
            self.assertEqual(o.php_namespace, "Memorypins\\V1")
            self.assertEqual(o.ruby_package, "Memorypins::V1")
            self.assertRegex(o.objc_class_prefix, r"^[A-Z]{3,5}$")
        # buf lint's PACKAGE_SAME_* rules: one value per package for every option but the
        # outer class name.
        for field in ("go_package", "java_package", "java_multiple_files", "csharp_namespace",
                      "php_namespace", "ruby_package", "objc_class_prefix", "swift_prefix"):
            self.assertEqual(len({getattr(fd.options, field) for fd in own}), 1, field)
        health = files["grpc/health/v1/health.proto"].options
        self.assertEqual(health.go_package, "google.golang.org/grpc/health/grpc_health_v1")
        self.assertEqual(health.java_package, "io.grpc.health.v1")

    def test_generated_java_and_csharp_land_in_their_namespaces(self):
        java = os.path.join(self.out, "java", "com", "memorypins", "v1")
        for cls in ("MemoryPinsProto.java", "AdminProto.java", "Pin.java", "UpsertPinRequest.java"):
            self.assertTrue(os.path.isfile(os.path.join(java, cls)), cls)
        with open(os.path.join(self.out, "csharp", "MemoryPins.cs")) as f:
            self.assertIn("namespace Memorypins.V1 {", f.read())

    def test_generated_cpp_compiles(self):
        if CXX is None or not os.path.exists("/usr/include/google/protobuf/message.h"):
            raise unittest.SkipTest("no C++ compiler or protobuf C++ headers (libprotobuf-dev)")
        cpp = os.path.join(self.out, "cpp")
        srcs = [os.path.join(cpp, p.replace(".proto", ".pb.cc")) for p in PROTOS]
        run([CXX, "-std=c++17", "-fsyntax-only", "-I" + cpp] + srcs, env=self.inst.env,
            timeout=300)

    def test_generated_python_calls_pinsd(self):
        mods = self.load_python()
        mp_pb2 = mods["memory_pins"]
        srv = Server()
        self.addCleanup(srv.cleanup)
        srv.start()
        ch = grpc.insecure_channel(srv.target)
        self.addCleanup(ch.close)
        upsert = ch.unary_unary(mp("UpsertPin"),
                                request_serializer=mp_pb2.UpsertPinRequest.SerializeToString,
                                response_deserializer=mp_pb2.UpsertPinResponse.FromString)
        get = ch.unary_unary(mp("GetPin"),
                             request_serializer=mp_pb2.GetPinRequest.SerializeToString,
                             response_deserializer=mp_pb2.GetPinResponse.FromString)
        req = mp_pb2.UpsertPinRequest(tenant_id="stubs", key="k")
        req.value.update({"from": "generated python"})
        resp = upsert(req, timeout=10)
        self.assertTrue(resp.created)
        got = get(mp_pb2.GetPinRequest(tenant_id="stubs", key="k"), timeout=10)
        self.assertEqual(dict(got.pin.value), {"from": "generated python"})
        self.assertEqual(got.pin.version, 1)


if __name__ == "__main__":
    unittest.main()
