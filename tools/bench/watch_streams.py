#!/usr/bin/python3
"""Open many gRPC WatchPins streams over raw HTTP/2 (h2c, prior knowledge) and count their events.

    watch_streams.py --addr 127.0.0.1:50051 -n 10000 [-s 100] [--tenants 100]
                     [--tenant-prefix bench-t] [--prefix P] [--timeout 60] [--hold 300]

Opens ceil(N/S) connections with S WatchPins streams each (the last one takes the rest), stream i
watching tenant <tenant-prefix>(i mod T) with key prefix P ("" for all keys): one POST to
/memorypins.v1.MemoryPins/WatchPins per stream whose body is a single gRPC frame holding the
WatchPinsRequest, encoded here by hand. pinsd sends the response HEADERS once a stream is
subscribed; when every stream has them, or was refused, or --timeout passed, one line goes to
stdout:

    ready streams=N open=M refused=K conns=C

open: streams that got HEADERS; refused: streams reset, answered with trailers only (e.g.
RESOURCE_EXHAUSTED past PINS_WATCH_MAX) or beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS;
the rest timed out. The first refusal's status goes to stderr. Afterwards every DATA frame is
acknowledged (flow control, so no stream stalls) and parsed into gRPC messages, counted per
stream. Each line "count" on stdin waits until no DATA came for --quiet seconds (at most 60 s),
then prints

    events total=X min_per_stream=Y max_per_stream=Z ended=E

over the open streams (E: open streams the server ended or reset since). The streams are held
until stdin reaches EOF, SIGTERM or SIGINT arrives, or --hold seconds pass; the last line is
"done open=M ended=E". Needs python3-h2 (Debian). Bounded: at most 20000 streams, at most
600 s, loopback only. Exit status: 0 every stream opened, 1 some did not, 2 bad arguments.
"""
import argparse
import os
import selectors
import signal
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from idle_conns import parse_addr  # the same loopback-only HOST:PORT check

PATH = b"/memorypins.v1.MemoryPins/WatchPins"
MAX_STREAMS = 20000
MAX_HOLD = 600
MAX_COUNT_WAIT = 60
WINDOW = 1 << 20  # the client's receive window per stream and the connection's extra window


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_string(field, text):
    data = text.encode()
    return bytes([(field << 3) | 2]) + varint(len(data)) + data if data else b""


def watch_request(tenant, prefix):
    """A WatchPinsRequest {1: tenant_id, 2: prefix} in one uncompressed gRPC frame."""
    msg = pb_string(1, tenant) + pb_string(2, prefix)
    return b"\x00" + struct.pack(">I", len(msg)) + msg


class Stream:
    __slots__ = ("tenant", "headers", "refused", "ended", "buf", "messages")

    def __init__(self, tenant):
        self.tenant = tenant
        self.headers = False
        self.refused = False
        self.ended = False
        self.buf = b""
        self.messages = 0

    def on_data(self, data):
        """Counts the complete gRPC messages in data, keeping a partial one for later."""
        buf = self.buf + data if self.buf else data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            length = struct.unpack_from(">I", buf, pos + 1)[0]
            if n - pos - 5 < length:
                break
            pos += 5 + length
            self.messages += 1
        self.buf = buf[pos:]


class Conn:
    def __init__(self, sock, authority, wanted, first, tenants, tenant_prefix, prefix, report):
        self.sock = sock
        self.authority = authority
        self.wanted = wanted  # streams to open on this connection
        self.first = first  # global index of its first stream
        self.tenants = tenants
        self.tenant_prefix = tenant_prefix
        self.prefix = prefix
        self.report = report  # called once with the first refusal's text
        self.streams = {}
        self.started = False
        self.closed = False
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW)
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.lost()

    def lost(self):
        self.closed = True
        for st in self.streams.values():
            if st.headers:
                st.ended = True
            else:
                st.refused = True

    def open_streams(self):
        """Opens this connection's streams once the server's SETTINGS arrived."""
        self.started = True
        limit = self.h2.remote_settings.max_concurrent_streams
        for i in range(self.wanted):
            g = self.first + i
            st = Stream(f"{self.tenant_prefix}{g % self.tenants}")
            if i >= limit:
                st.refused = True
                self.streams[-1 - i] = st
                self.report(f"the server allows {limit} streams per connection (-s is {self.wanted})")
                continue
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH),
                (b":authority", self.authority), (b"content-type", b"application/grpc"),
                (b"te", b"trailers")])
            self.h2.send_data(sid, watch_request(st.tenant, self.prefix), end_stream=True)
            self.streams[sid] = st
        self.flush()

    def on_readable(self):
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self.lost()
            return False
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.report(f"HTTP/2 protocol error: {e}")
            self.lost()
            return False
        got_data = False
        for ev in events:
            if isinstance(ev, h2.events.RemoteSettingsChanged) and not self.started:
                self.open_streams()
            elif isinstance(ev, h2.events.ResponseReceived):
                st = self.streams.get(ev.stream_id)
                h = dict(ev.headers)
                if st and (h.get(b":status") != b"200" or b"grpc-status" in h):
                    st.refused = True  # trailers only: refused before subscribing
                    self.report(status_text(h))
                elif st:
                    st.headers = True
            elif isinstance(ev, h2.events.DataReceived):
                got_data = True
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                st = self.streams.get(ev.stream_id)
                if st:
                    st.on_data(ev.data)
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st and st.headers:
                    st.ended = True
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st and st.headers:
                    st.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                st = self.streams.get(ev.stream_id)
                if st and st.headers:
                    st.ended = True
                elif st:
                    st.refused = True
                    self.report(f"stream reset, HTTP/2 error {ev.error_code!r}")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.report(f"GOAWAY, HTTP/2 error {ev.error_code!r}")
        self.flush()
        return got_data


def status_text(h):
    return (f"refused: HTTP {h.get(b':status', b'?').decode()}, grpc-status {h.get(b'grpc-status', b'?').decode()}: "
            f"{h.get(b'grpc-message', b'').decode(errors='replace')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT (loopback only)")
    ap.add_argument("-n", type=int, default=10000, help=f"streams in all (1..{MAX_STREAMS}) [10000]")
    ap.add_argument("-s", type=int, default=100, help="streams per connection [100]")
    ap.add_argument("--tenants", type=int, default=100, help="tenants the streams are spread over [100]")
    ap.add_argument("--tenant-prefix", default="bench-t", help="tenant i is PREFIX<i> [bench-t]")
    ap.add_argument("--prefix", default="", help="key prefix each stream watches [\"\": all keys]")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for every stream's HEADERS [60]")
    ap.add_argument("--quiet", type=float, default=1, help="\"count\" waits until no DATA came for this long [1]")
    ap.add_argument("--hold", type=float, default=300, help=f"seconds to hold the streams at most (<= {MAX_HOLD}) [300]")
    args = ap.parse_args()
    try:
        host, port = parse_addr(args.addr)
    except ValueError as e:
        print(f"watch_streams: {e}", file=sys.stderr)
        return 2
    if (not 1 <= args.n <= MAX_STREAMS or not 1 <= args.s <= args.n or args.tenants < 1
            or not 0 < args.hold <= MAX_HOLD or not 0 < args.timeout <= MAX_HOLD
            or not 0 < args.quiet <= 10):
        print(f"watch_streams: need 1 <= -s <= -n <= {MAX_STREAMS}, --tenants >= 1, "
              f"0 < --timeout, --hold <= {MAX_HOLD}, 0 < --quiet <= 10", file=sys.stderr)
        return 2
    start = time.monotonic()
    hold_end = start + args.hold

    stop = False

    def on_signal(signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    reported = False

    def report(text):
        nonlocal reported
        if not reported:
            reported = True
            print(f"watch_streams: {text}", file=sys.stderr, flush=True)

    sel = selectors.DefaultSelector()
    conns = []
    failed = None
    authority = args.addr.encode()
    for first in range(0, args.n, args.s):
        if stop:
            break
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            failed = f"could not open connection {len(conns) + 1}: {e}"
            break
        c = Conn(s, authority, min(args.s, args.n - first), first, args.tenants,
                 args.tenant_prefix, args.prefix, report)
        s.setblocking(False)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    if failed:
        print(f"watch_streams: {failed}", file=sys.stderr)

    last_data = time.monotonic()

    def pump(timeout):
        nonlocal last_data, stop
        for key, _ in sel.select(timeout):
            c = key.data
            if c is None:  # stdin
                return True
            if c.on_readable():
                last_data = time.monotonic()
            if c.closed:
                sel.unregister(c.sock)
                c.sock.close()
        return False

    def streams():
        for c in conns:
            yield from c.streams.values()

    deadline = min(start + args.timeout, hold_end)
    while not stop and time.monotonic() < deadline:
        if all(c.closed or (c.started and all(st.headers or st.refused for st in c.streams.values()))
               for c in conns):
            break
        pump(0.1)
    opened = sum(st.headers for st in streams())
    refused = sum(st.refused for st in streams())
    print(f"ready streams={args.n} open={opened} refused={refused} conns={len(conns)}", flush=True)

    stdin_open = True
    try:
        sel.register(sys.stdin, selectors.EVENT_READ, None)
    except (ValueError, OSError):
        stdin_open = False  # stdin is /dev/null or a file: hold until --hold or a signal
    pending = b""
    while not stop and time.monotonic() < hold_end:
        if not pump(0.5):
            continue
        data = os.read(sys.stdin.fileno(), 4096) if stdin_open else b""
        if not data:
            break
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip() != b"count":
                continue
            wait_end = min(time.monotonic() + MAX_COUNT_WAIT, hold_end)
            sel.unregister(sys.stdin)  # the next command waits for this one
            while not stop and time.monotonic() < wait_end:
                if time.monotonic() - last_data >= args.quiet:
                    break
                for key, _ in sel.select(0.05):
                    c = key.data
                    if c.on_readable():
                        last_data = time.monotonic()
                    if c.closed:
                        sel.unregister(c.sock)
                        c.sock.close()
            sel.register(sys.stdin, selectors.EVENT_READ, None)
            counts = [st.messages for st in streams() if st.headers]
            ended = sum(st.ended for st in streams())
            print(f"events total={sum(counts)} min_per_stream={min(counts, default=0)} "
                  f"max_per_stream={max(counts, default=0)} ended={ended}", flush=True)
    ended = sum(st.ended for st in streams())
    for c in conns:
        if not c.closed:
            c.sock.close()
    print(f"done open={opened} ended={ended}", flush=True)
    return 0 if opened == args.n and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
