#!/usr/bin/python3
"""tools/bench/attacks.py: replays resource-exhaustion attacks against a pinsd binary and prints
what each cost the server: RSS growth, CPU, and how the server behaved.

    tools/bench/attacks.py [--pinsd PATH] [--only NAME[,NAME...]]

Every attack runs against a fresh pinsd (embedded store, two workers, loopback, defaults unless
the attack says otherwise), is bounded in count and time, and stops the server afterwards. Run it
against two builds (say the previous release and this tree) to compare; the figures are RSS in
MiB above the idle server and CPU-seconds of pinsd while the attack held, read from /proc.

Attacks (names for --only):
  unary_body    20 HTTP/2 streams of a 0.6 MB UpsertPin (a list of 300,000 empty Values), no
                END_STREAM, no credentials
  reflection    server reflection on a connection whose peer set SETTINGS_INITIAL_WINDOW_SIZE=0:
                40 file_by_filename requests on each stream it may open (up to 1,000)
  openapi       GET /openapi.json on every stream it may open, window 0
  h2_bodies     60 streams of a 4 MiB gRPC message, all but its last byte
  h1_bodies     5,000 HTTP/1.1 connections each with 60 KB of a 100 KB body pending
  emfile        RLIMIT_NOFILE 64 and 200 connections waiting in the backlog: CPU and log bytes
  big_status    Health/Check with a 70 KB service name: is it answered?
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "interop"))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import h2.settings  # noqa: E402

import harness  # noqa: E402
from harness import HEALTH, REFLECTION_V1, Server, grpc_frame, mp, new_request, path_of  # noqa


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(env=None):
    s = Server(env or {})
    s.start(ready_timeout=30)
    time.sleep(0.3)
    return s


def list_of_empty_values(nvalues):
    """UpsertPinRequest{tenant_id:"t", key:"k", value:{"l": [ {}, {}, ... ]}} on the wire, built by
    hand: 0.6 MB of bytes that unpack into 300,000 Value messages."""
    def ld(field, payload):
        n, out = len(payload), bytearray()
        out.append(field << 3 | 2)
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out) + payload
    # ListValue.values (1) of empty Value messages; Value.list_value (6); Struct.fields (1) entry
    lst = ld(1, b"") * nvalues
    value = ld(6, lst)
    entry = ld(1, b"l") + ld(2, value)
    struct = ld(1, entry)
    return ld(1, b"t") + ld(2, b"k") + ld(3, struct)


def report(name, before_rss, after_rss, cpu, behaviour):
    print("%-12s RSS +%7.1f MiB   CPU %5.2f s   %s" % (name, after_rss - before_rss, cpu, behaviour))
    sys.stdout.flush()


def attack_unary_body(srv):
    body = grpc_frame(list_of_empty_values(300_000))
    c = srv.h2(timeout=10)
    sids = []
    for _ in range(20):
        sid = c.start(c.grpc_headers(mp("UpsertPin")), None, end_stream=False)
        c.send_body(sid, body, end_stream=False)
        sids.append(sid)
    c.pump_for(1.0)
    answered = sum(1 for s in sids if c.streams[s].grpc_status is not None)
    return c, "%d of 20 streams answered before END_STREAM (%s)" % (
        answered, sorted({c.streams[s].grpc_status for s in sids} - {None}))


def window_zero(srv):
    c = srv.h2(timeout=10)
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c._flush()
    c.pump_for(0.2)
    return c


def attack_reflection(srv):
    c = window_zero(srv)
    req = new_request(path_of(REFLECTION_V1, "ServerReflectionInfo"),
                      {"file_by_filename": "memorypins/v1/memory_pins.proto"})
    frame = grpc_frame(req.SerializeToString())
    sent = 0
    for _ in range(1000):
        try:
            sid = c.start(c.grpc_headers(path_of(REFLECTION_V1, "ServerReflectionInfo")), None,
                          end_stream=False)
            c.conn.send_data(sid, frame * 40)
            c._flush()
            sent += 40
        except Exception:  # refused streams, a closed connection
            break
        c.pump_for(0.01)
    c.pump_for(1.0)
    resets = sum(1 for s in c.streams.values() if s.reset_code is not None)
    return c, "%d requests sent, %d streams reset, connection %s" % (
        sent, resets, "closed" if c.closed else "open")


def attack_openapi(srv):
    c = window_zero(srv)
    h = [(":method", "GET"), (":scheme", "http"), (":path", "/openapi.json"), (":authority", "x")]
    n = 0
    for _ in range(1000):
        try:
            c.start(h, None, end_stream=True)
            n += 1
        except Exception:
            break
        if n % 50 == 0:
            c.pump_for(0.01)
    c.pump_for(1.0)
    resets = sum(1 for s in c.streams.values() if s.reset_code is not None)
    return c, "%d GETs sent, %d streams reset" % (n, resets)


def attack_h2_bodies(srv):
    payload = b"\x0a\x01t" + b"\x12" + b"\x80\x80\x80\x02" + b"k" * (4 << 20)  # key of 4 MiB
    body = grpc_frame(payload[: (4 << 20) - 64])[:-1]
    c = srv.h2(timeout=10)
    sids = []
    for _ in range(60):
        try:
            sid = c.start(c.grpc_headers(mp("GetPin")), None, end_stream=False)
        except Exception:
            break
        sids.append(sid)
        try:
            c.send_body(sid, body, end_stream=False, timeout=5)
        except TimeoutError:
            pass
    c.pump_for(1.0)
    refused = sum(1 for s in sids if c.streams[s].grpc_status == 8)
    return c, "%d streams opened, %d refused RESOURCE_EXHAUSTED" % (len(sids), refused)


def attack_h1_bodies(srv):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    socks, refused = [], 0
    head = (b"POST /api/v1/memory/pins HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n")
    chunk = head + b"{\"tenant_id\":\"t\",\"key\":\"k\",\"value\":{\"s\":\"" + b"x" * 60_000
    for _ in range(5000):
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setblocking(False)
            try:
                s.send(chunk)
            except BlockingIOError:
                pass
            socks.append(s)
        except OSError:
            refused += 1
    time.sleep(1.0)
    answered = 0
    for s in socks:
        try:
            if s.recv(16).startswith(b"HTTP/1.1 503"):
                answered += 1
        except (BlockingIOError, OSError):
            pass

    class Closer:
        def close(self):
            for s in socks:
                s.close()
    return Closer(), "%d connections, %d answered 503 at once, %d refused" % (
        len(socks), answered, refused)


def attack_emfile(srv):
    pid = srv.proc.pid
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=64:64"], check=True)
    log0 = os.path.getsize(srv.stderr_path)
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(200)]
    time.sleep(0.5)
    log1 = os.path.getsize(srv.stderr_path)

    class Closer:
        def close(self):
            for s in socks:
                s.close()
    return Closer(), "log +%d bytes in 0.5 s" % (log1 - log0)


def attack_big_status(srv):
    c = srv.h2(timeout=10)
    req = new_request(path_of(HEALTH, "Check"), {"service": "s" * 70_000})
    t0 = time.monotonic()
    try:
        r = c.grpc_call(path_of(HEALTH, "Check"), req, wait=10)
        what = "answered grpc-status %s in %.2f s (message %d bytes)" % (
            r.grpc_status, time.monotonic() - t0, len(r.grpc_message_raw or ""))
    except TimeoutError:
        what = "no answer within 10 s (stream hung)"
    return c, what


ATTACKS = {
    "unary_body": (attack_unary_body, {}),
    "reflection": (attack_reflection, {}),
    "openapi": (attack_openapi, {}),
    "h2_bodies": (attack_h2_bodies, {}),
    "h1_bodies": (attack_h1_bodies, {"PINS_MAX_CONNECTIONS": "10000"}),  # pinsd raises NOFILE
    "emfile": (attack_emfile, {"PINS_IDLE_TIMEOUT_SECONDS": "60"}),
    "big_status": (attack_big_status, {}),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pinsd", default=os.environ.get("PINSD_BIN") or
                    os.path.join(HERE, "..", "..", "build", "pinsd"))
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds each attack is held")
    a = ap.parse_args()
    harness.PINSD_BIN = os.path.abspath(a.pinsd)
    names = [n for n in a.only.split(",") if n] or list(ATTACKS)
    print("pinsd: %s" % harness.PINSD_BIN)
    for name in names:
        fn, env = ATTACKS[name]
        srv = start(env)
        try:
            pid = srv.proc.pid
            r0, c0 = rss_mib(pid), cpu_s(pid)
            held, what = fn(srv)
            time.sleep(a.hold)
            r1, c1 = rss_mib(pid), cpu_s(pid)
            report(name, r0, r1, c1 - c0, what)
            held.close()
        finally:
            srv.cleanup()


if __name__ == "__main__":
    main()
