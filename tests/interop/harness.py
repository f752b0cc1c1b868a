"""Interop test harness for pinsd.

Starts real pinsd processes on free loopback ports and talks to them with grpcio (generic calls, no
generated _pb2 files: the message classes come from a descriptor set that protoc builds from the
repository's protos at import time) and with a raw HTTP/2 client built on python3-h2 for the checks
that grpcio cannot express (arbitrary headers, compressed flags, resets, trailers-only responses).

Only Debian's /usr/bin/python3 with python3-grpcio, python3-protobuf and python3-h2 is needed.

Every server started here is stopped by PID (SIGTERM, 10 s, then SIGKILL), from the test's cleanup,
and as a last resort from atexit; its temporary directory is removed afterwards.
"""

import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

import strict  # noqa: F401  (before any test class is defined: skips fail under ctest)

# The tests fork servers (subprocess) while grpcio threads run; grpcio's fork handlers can then
# deadlock in fork(). pinsd's tests never use gRPC in a child, so fork support is off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

import h2.config
import h2.connection
import h2.events
import h2.errors
import h2.exceptions
import h2.settings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")
PINSD_BIN = os.environ.get("PINSD_BIN") or os.path.join(REPO, "build", "pinsd")

PROTO_FILES = [
    "memorypins/v1/memory_pins.proto",
    "memorypins/v1/admin.proto",
    "grpc/health/v1/health.proto",
    "grpc/reflection/v1/reflection.proto",
    "grpc/reflection/v1alpha/reflection.proto",
]

MEMORY_PINS = "memorypins.v1.MemoryPins"
ADMIN = "memorypins.v1.Admin"
HEALTH = "grpc.health.v1.Health"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"

# grpc status codes by number (grpc.StatusCode values are (int, str) tuples).
CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}

# Configuration variables that must not leak from the caller's environment into a test server.
_CONFIG_VARS = (
    "DATABASE_URL", "REDIS_URL", "PINS_LISTEN", "PINS_DATA_DIR", "TLS_CERT_FILE", "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE", "MACHINE_SECRET_TOKEN", "JWT_SECRET", "RBAC_ENFORCE", "RBAC_FAIL_OPEN",
    "RBAC_POLICY_FILE", "RBAC_TRUST_X_ROLES", "MEMORY_PINS_ENABLED", "MEMORY_MAX_SIZE_BYTES",
    "MAX_REQUEST_BYTES", "RATE_LIMIT_RPM", "RATE_LIMIT_BURST", "BREAKER_ERRORS_PER_MIN",
    "BREAKER_OPEN_SECONDS", "DB_POOL_SIZE", "LOG_LEVEL", "LOG_FORMAT", "PINS_WORKERS",
    "PINS_DRAIN_SECONDS", "PINS_MAX_CONNECTIONS", "PINS_MAX_CONCURRENT_STREAMS",
    "PINS_IDLE_TIMEOUT_SECONDS", "CORS_ALLOWED_ORIGINS", "CHAOS_ALLOWED",
    "PINS_SWEEP_INTERVAL_SECONDS", "PINS_SWEEP_BATCH",
    "PINS_AUDIT_RETENTION_DAYS", "PINS_AUDIT_DENIAL_ROWS_PER_SECOND", "PINS_AUDIT_READ_ROWS_PER_SECOND",
    "PINS_REQUEST_TIMEOUT_SECONDS", "PINS_CONN_BUFFER_BYTES", "PINS_BUFFER_BYTES",
    "PINS_WATCH_MAX", "PINS_WATCH_MAX_PER_PRINCIPAL", "PINS_WATCH_PENDING_BYTES",
    "PINS_SSE_HEARTBEAT_SECONDS",
)


# ---- descriptors and messages -------------------------------------------------------------------

def _build_pool():
    tmp = tempfile.mkdtemp(prefix="pinsd-desc-", dir="/tmp")
    try:
        out = os.path.join(tmp, "pinsd.desc")
        cmd = ["protoc", "-I" + PROTO_DIR, "-I/usr/include", "--include_imports",
               "--descriptor_set_out=" + out] + PROTO_FILES
        subprocess.run(cmd, cwd=PROTO_DIR, check=True, timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with open(out, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:  # --include_imports lists dependencies first
        pool.Add(fd)
    return pool, fds


POOL, FILE_DESCRIPTOR_SET = _build_pool()
_FACTORY = message_factory.MessageFactory(POOL)
_CLASSES = {}


def message_class(full_name):
    """The Python class of a message type by full name, e.g. 'memorypins.v1.Pin'."""
    cls = _CLASSES.get(full_name)
    if cls is None:
        desc = POOL.FindMessageTypeByName(full_name)
        if hasattr(message_factory, "GetMessageClass"):
            cls = message_factory.GetMessageClass(desc)
        else:
            cls = _FACTORY.GetPrototype(desc)
        _CLASSES[full_name] = cls
    return cls


def method_descriptor(path):
    """'/pkg.Service/Method' -> MethodDescriptor."""
    service, method = path.lstrip("/").split("/", 1)
    return POOL.FindServiceByName(service).FindMethodByName(method)


def new_request(path, fields=None):
    """A request message for method path, filled from a dict (proto3 JSON names or field names)."""
    md = method_descriptor(path)
    msg = message_class(md.input_type.full_name)()
    if fields:
        json_format.ParseDict(fields, msg)
    return msg


def to_dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def path_of(service, method):
    return "/%s/%s" % (service, method)


def mp(method):
    """Path of a MemoryPins method."""
    return path_of(MEMORY_PINS, method)


# ---- generic gRPC client ------------------------------------------------------------------------

class GrpcClient:
    """A grpcio channel to one server with generic unary / streaming calls."""

    def __init__(self, target, options=None):
        self.target = target
        self.channel = grpc.insecure_channel(target, options=options or [])

    def close(self):
        self.channel.close()

    def _unary(self, path, raw_response=False):
        md = method_descriptor(path)
        out_cls = message_class(md.output_type.full_name)
        return self.channel.unary_unary(
            path,
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=(None if raw_response else out_cls.FromString))

    def call(self, path, fields=None, timeout=10, metadata=None, raw_response=False,
             with_call=False):
        """Unary call; fields is a dict, a message, or raw bytes. Returns the response message
        (or (response, call) with with_call). Raises grpc.RpcError on a non-OK status."""
        req = fields if isinstance(fields, (bytes,)) or hasattr(fields, "SerializeToString") \
            else new_request(path, fields)
        stub = self._unary(path, raw_response)
        if with_call:
            return stub.with_call(req, timeout=timeout, metadata=metadata)
        return stub(req, timeout=timeout, metadata=metadata)

    def future(self, path, fields=None, timeout=10, metadata=None):
        req = fields if hasattr(fields, "SerializeToString") else new_request(path, fields)
        return self._unary(path).future(req, timeout=timeout, metadata=metadata)

    def call_raw_path(self, path, body=b"", timeout=10):
        """Unary call to any path (e.g. an unknown method) with a raw bytes body."""
        stub = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return stub(body, timeout=timeout)

    def server_stream(self, path, fields=None, timeout=None, metadata=None):
        md = method_descriptor(path)
        out_cls = message_class(md.output_type.full_name)
        stub = self.channel.unary_stream(
            path, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=out_cls.FromString)
        return stub(new_request(path, fields), timeout=timeout, metadata=metadata)

    def bidi_stream(self, path, requests, timeout=10):
        md = method_descriptor(path)
        out_cls = message_class(md.output_type.full_name)
        stub = self.channel.stream_stream(
            path, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=out_cls.FromString)
        reqs = [r if hasattr(r, "SerializeToString") else new_request(path, r) for r in requests]
        return list(stub(iter(reqs), timeout=timeout))


def rpc_code(exc):
    return exc.code() if isinstance(exc, grpc.RpcError) else None


# ---- raw HTTP/2 client (python3-h2) -------------------------------------------------------------

def grpc_frame(payload, compressed=False):
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def parse_grpc_frames(data):
    """[(compressed_flag, payload)] from a gRPC body; raises ValueError on a truncated frame."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            raise ValueError("truncated gRPC frame prefix")
        flag = data[i]
        n = int.from_bytes(data[i + 1:i + 5], "big")
        if len(data) - i - 5 < n:
            raise ValueError("truncated gRPC frame")
        out.append((flag, data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


class H2Response:
    """What came back on one stream."""

    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.headers = None        # list of (name, value) str pairs of the first HEADERS
        self.headers_ended_stream = False  # the first HEADERS carried END_STREAM (Trailers-Only)
        self.informational = []
        self.data = b""
        self.trailers = None
        self.ended = False
        self.reset_code = None     # RST_STREAM error code from the server
        self.goaway = False

    def header(self, name, where="any"):
        name = name.lower()
        sources = []
        if where in ("any", "headers") and self.headers:
            sources.append(self.headers)
        if where in ("any", "trailers") and self.trailers:
            sources.append(self.trailers)
        for src in sources:
            for k, v in src:
                if k.lower() == name:
                    return v
        return None

    @property
    def status(self):
        v = self.header(":status", "headers")
        return int(v) if v is not None else None

    @property
    def grpc_status(self):
        """grpc-status from the trailers, or from the headers of a Trailers-Only response."""
        v = self.header("grpc-status", "trailers") if self.trailers else None
        if v is None and self.headers_ended_stream:
            v = self.header("grpc-status", "headers")
        return int(v) if v is not None else None

    @property
    def grpc_message_raw(self):
        v = self.header("grpc-message", "trailers") if self.trailers else None
        if v is None and self.headers_ended_stream:
            v = self.header("grpc-message", "headers")
        return v

    @property
    def grpc_message(self):
        raw = self.grpc_message_raw
        return None if raw is None else urllib.parse.unquote(raw, errors="strict")

    def messages(self):
        return [p for _, p in parse_grpc_frames(self.data)]

    def __repr__(self):
        return ("H2Response(stream=%d headers=%r trailers=%r data=%d bytes ended=%r reset=%r "
                "goaway=%r)" % (self.stream_id, self.headers, self.trailers, len(self.data),
                                self.ended, self.reset_code, self.goaway))


class H2Client:
    """A minimal HTTP/2 (h2c, prior knowledge) client over one TCP connection."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False,
                                        validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24,
                                         h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(1 << 24)
        self.streams = {}
        self.closed = False
        self.goaway = None
        self.remote_settings_seen = False
        self._flush()
        deadline = time.monotonic() + timeout
        while not self.remote_settings_seen and not self.closed and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        if not self.remote_settings_seen:
            raise ConnectionError("no SETTINGS from the server within %.1f s" % timeout)

    def close(self):
        try:
            if not self.closed:
                self.conn.close_connection()
                self._flush()
        except Exception:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _pump(self, timeout):
        """Reads once (up to timeout seconds) and processes the events."""
        if self.closed:
            return
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return
        try:
            data = self.sock.recv(1 << 16)
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.closed = True
            for st in self.streams.values():
                if not st.ended and st.reset_code is None:
                    st.goaway = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            raise
        for ev in events:
            self._event(ev)
        self._flush()

    def _event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_settings_seen = True
        elif isinstance(ev, h2.events.InformationalResponseReceived) and st:
            st.informational.append(ev.headers)
        elif isinstance(ev, h2.events.ResponseReceived) and st:
            st.headers = list(ev.headers)
            if ev.stream_ended is not None:
                st.headers_ended_stream = True
        elif isinstance(ev, h2.events.DataReceived):
            if st:
                st.data += ev.data
            if ev.flow_controlled_length:
                try:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    pass
        elif isinstance(ev, h2.events.TrailersReceived) and st:
            st.trailers = list(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded) and st:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st:
            st.reset_code = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
            if int(ev.error_code) == 0:
                # h2 treats any GOAWAY as the end of the connection; a graceful one (NO_ERROR)
                # still lets streams up to last_stream_id finish, so keep processing frames.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            for sid, s in self.streams.items():
                if (ev.last_stream_id is not None and sid > ev.last_stream_id
                        and not s.ended and s.reset_code is None):
                    s.goaway = True

    def pump_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.closed:
            self._pump(end - time.monotonic())

    def start(self, headers, body=None, end_stream=True):
        """Opens a stream with the given headers (list of pairs); returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = H2Response(sid)
        self.conn.send_headers(sid, headers, end_stream=(end_stream and not body))
        self._flush()
        if body:
            self.send_body(sid, body, end_stream=end_stream)
        return sid

    def send_body(self, sid, body, end_stream=True, timeout=10.0):
        """Sends body on stream sid, respecting flow control. Stops early (returns False) when
        the server ends or resets the stream first."""
        st = self.streams[sid]
        deadline = time.monotonic() + timeout
        view = memoryview(body)
        while True:
            if st.reset_code is not None or st.ended or self.closed:
                return False
            try:
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                return False
            if len(view) == 0 or window > 0:
                chunk = view[:window]
                view = view[len(chunk):]
                last = len(view) == 0
                try:
                    self.conn.send_data(sid, chunk.tobytes(), end_stream=(end_stream and last))
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    return False
                self._flush()
                if last:
                    return True
            else:
                if time.monotonic() > deadline:
                    raise TimeoutError("flow-control window stayed closed")
                self._pump(min(0.2, deadline - time.monotonic()))

    def reset(self, sid, code=h2.errors.ErrorCodes.CANCEL):
        self.conn.reset_stream(sid, error_code=code)
        self._flush()

    def wait(self, sid, timeout=10.0):
        """Waits until stream sid ended, was reset, or the connection closed; returns it."""
        st = self.streams[sid]
        deadline = time.monotonic() + timeout
        while not (st.ended or st.reset_code is not None or st.goaway or self.closed):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("stream %d did not finish within %.1f s: %r" % (sid, timeout, st))
            self._pump(left)
        return st

    def wait_all(self, sids, timeout=10.0):
        deadline = time.monotonic() + timeout
        return [self.wait(s, max(0.01, deadline - time.monotonic())) for s in sids]

    # -- conveniences

    def grpc_headers(self, path, extra=None, content_type="application/grpc", te=True,
                     timeout=None):
        h = [(":method", "POST"), (":scheme", "http"), (":path", path),
             (":authority", "%s:%d" % (self.host, self.port))]
        if content_type is not None:
            h.append(("content-type", content_type))
        if te:
            h.append(("te", "trailers"))
        if timeout is not None:
            h.append(("grpc-timeout", timeout))
        h.extend(extra or [])
        return h

    def grpc_call(self, path, payload=b"", extra=None, content_type="application/grpc",
                  te=True, timeout=None, compressed=False, framed=None, wait=10.0):
        """One gRPC unary call; payload is the serialised message (or a message object); framed,
        when given, is the exact body to send instead."""
        if hasattr(payload, "SerializeToString"):
            payload = payload.SerializeToString()
        body = framed if framed is not None else grpc_frame(payload, compressed)
        sid = self.start(self.grpc_headers(path, extra, content_type, te, timeout), body)
        return self.wait(sid, wait)

    def get(self, path, extra=None, wait=10.0):
        h = [(":method", "GET"), (":scheme", "http"), (":path", path),
             (":authority", "%s:%d" % (self.host, self.port))] + list(extra or [])
        return self.wait(self.start(h), wait)


# ---- server processes ---------------------------------------------------------------------------

_SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: |"
                           r"WARNING: ThreadSanitizer")

_LIVE = set()
_LIVE_LOCK = threading.Lock()


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_refuses(port, timeout=1.0):
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except (ConnectionRefusedError, OSError):
        return True
    c.close()
    return False


class Server:
    """One pinsd process on free loopback ports with its own temporary data directory."""

    def __init__(self, env=None, nports=1, data_dir=None, tmp=None, args=()):
        self.tmp = tmp or tempfile.mkdtemp(prefix="pinsd-interop-", dir="/tmp")
        self.own_tmp = tmp is None
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.ports = [free_port() for _ in range(nports)]
        self.extra_env = dict(env or {})
        self.args = list(args)
        self.proc = None
        self.stderr_path = None
        self.returncode = None
        self.starts = 0
        self.sanitizer_findings = []
        self.stderr_paths = []

    @property
    def port(self):
        return self.ports[0]

    @property
    def target(self):
        return "127.0.0.1:%d" % self.port

    def env(self):
        e = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
        e.update({
            "PINS_LISTEN": ",".join("127.0.0.1:%d" % p for p in self.ports),
            "PINS_DATA_DIR": self.data_dir,
            "LOG_FORMAT": "text",
            "RATE_LIMIT_RPM": "0",
            "PINS_WORKERS": "2",
            "PINS_DRAIN_SECONDS": "3",
        })
        e.update({k: str(v) for k, v in self.extra_env.items()})
        return e

    def start(self, ready_timeout=10.0):
        if not os.path.exists(PINSD_BIN):
            if os.environ.get("PINSD_BIN"):  # asked for explicitly (ctest): a missing one fails
                raise RuntimeError("PINSD_BIN=%s does not exist" % PINSD_BIN)
            raise unittest.SkipTest("pinsd binary not found at %s (set PINSD_BIN)" % PINSD_BIN)
        self.starts += 1
        self.stderr_path = os.path.join(self.tmp, "pinsd-%d-%d.stderr" % (self.port, self.starts))
        self.stderr_paths.append(self.stderr_path)
        errf = open(self.stderr_path, "wb")
        try:
            self.proc = subprocess.Popen([PINSD_BIN] + self.args, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=errf, stderr=errf, start_new_session=True)
        finally:
            errf.close()
        self.returncode = None
        with _LIVE_LOCK:
            _LIVE.add(self)
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self._reap(rc)
                raise RuntimeError("pinsd exited with %s before answering health Check\n%s"
                                   % (rc, self.stderr_tail()))
            ch = grpc.insecure_channel(self.target)
            try:
                resp = ch.unary_unary(
                    path_of(HEALTH, "Check"),
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=message_class("grpc.health.v1.HealthCheckResponse")
                    .FromString)(message_class("grpc.health.v1.HealthCheckRequest")(),
                                 timeout=0.5)
                if resp.status == 1:  # SERVING
                    return
                last = "status %d" % resp.status
            except grpc.RpcError as e:
                last = "%s %s" % (e.code(), e.details())
            finally:
                ch.close()
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("pinsd did not answer a SERVING health Check within %.0f s (last: %s)\n%s"
                           % (timeout, last, self.stderr_tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _reap(self, rc):
        self.returncode = rc
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        """Waits up to timeout for the process to exit; returns its code or None."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reap(rc)
        return rc

    def stop(self, grace=10.0):
        """SIGTERM, wait grace seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap(self.proc.wait(timeout=10))
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self._reap(self.proc.wait(timeout=10))
        return self.returncode

    def cleanup(self):
        try:
            self.stop()
        finally:
            self.sanitizer_findings = self.sanitizer_report()
            if self.own_tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def sanitizer_report(self):
        """Lines of AddressSanitizer / UBSan / LeakSanitizer reports in every stderr file of
        this server (all its starts), for builds with PINS_SANITIZE=ON."""
        found = []
        for path in self.stderr_paths:
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            lines = text.splitlines()
            for n, line in enumerate(lines):
                if _SANITIZER_RE.search(line):
                    found.append("\n".join(lines[n:n + 12]))
                    break
        return found

    def stderr_tail(self, n=40):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return "(no stderr captured)"
        with open(self.stderr_path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "---- pinsd stderr (last %d of %d lines, %s) ----\n%s\n----" % (
            min(n, len(lines)), len(lines), self.stderr_path, "\n".join(lines[-n:]))

    def client(self, **kw):
        return GrpcClient(self.target, **kw)

    def h2(self, port=None, timeout=5.0):
        return H2Client(port or self.port, timeout=timeout)


@atexit.register
def _stop_leftovers():
    with _LIVE_LOCK:
        left = list(_LIVE)
    for s in left:
        try:
            s.kill()
        except Exception:
            pass
        if s.own_tmp:
            shutil.rmtree(s.tmp, ignore_errors=True)


def _print_tail_on_failure(testcase, server):
    outcome = getattr(testcase, "_outcome", None)
    if outcome is not None and not getattr(outcome, "success", True) and server is not None:
        sys.stderr.write("\n%s: %s\n" % (testcase.id(), server.stderr_tail()))


class ServerTestCase(unittest.TestCase):
    """One server per test class (SERVER_ENV). Tests that need their own use self.fresh_server()."""

    SERVER_ENV = {}
    server = None
    client = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = Server(cls.SERVER_ENV)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.client is not None:
                cls.client.close()
        finally:
            if cls.server is not None:
                cls.server.cleanup()
        super().tearDownClass()
        if cls.server is not None and cls.server.sanitizer_findings:
            raise AssertionError("sanitizer report from the class server:\n"
                                 + "\n".join(cls.server.sanitizer_findings))

    def setUp(self):
        super().setUp()
        self.addCleanup(_print_tail_on_failure, self, self.server)

    def fresh_server(self, env=None, start=True, **kw):
        merged = dict(self.SERVER_ENV)
        merged.update(env or {})
        s = Server(merged, **kw)
        self.addCleanup(self.assertNoSanitizerReport, s)
        self.addCleanup(s.cleanup)
        self.addCleanup(_print_tail_on_failure, self, s)
        if start:
            s.start()
        return s

    # -- assertions

    def assertNoSanitizerReport(self, server):
        """After server.cleanup(): no ASan/UBSan/LSan report in its stderr."""
        if server.sanitizer_findings:
            self.fail("sanitizer report from pinsd:\n" + "\n".join(server.sanitizer_findings))

    def assertRpcError(self, code, fn, *args, **kw):
        """Runs fn and asserts it raised grpc.RpcError with code; returns the error."""
        try:
            resp = fn(*args, **kw)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), code, "expected %s, got %s: %s" % (code, e.code(), e.details()))
            return e
        self.fail("expected %s, call succeeded with %r" % (code, resp))


def json_body(resp):
    return json.loads(resp.data.decode("utf-8"))
