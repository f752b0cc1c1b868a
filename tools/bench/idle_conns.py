#!/usr/bin/python3
"""Open N idle HTTP/2 (h2c, prior knowledge) connections to a loopback server and hold them.

    idle_conns.py --addr 127.0.0.1:50051 -n 1000 [--hold 120] [--timeout 10]

Each connection sends the client preface and an empty SETTINGS frame, acknowledges the server's
SETTINGS and answers PINGs, and otherwise sends nothing. When every connection is open and has
seen the server's SETTINGS (or --timeout passed), one line goes to stdout:

    ready opened=N settings=M closed=K

Then the connections are held until stdin reaches EOF, SIGTERM or SIGINT arrives, or --hold
seconds pass; the last line is "done opened=N closed=K" (K: closed by the server meanwhile).
Bounded: at most 20000 connections, at most 600 s, loopback only.
Exit status: 0 all connections opened, 1 some could not be opened, 2 bad arguments.
"""
import argparse
import os
import selectors
import signal
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_SETTINGS = 0x4
FRAME_PING = 0x6
FRAME_GOAWAY = 0x7
FLAG_ACK = 0x1
MAX_CONNS = 20000
MAX_HOLD = 600


def frame(ftype, flags, payload=b"", stream=0):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


class Conn:
    __slots__ = ("sock", "buf", "got_settings", "closed", "goaway")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.got_settings = False
        self.closed = False
        self.goaway = False

    def on_readable(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        self.buf += data
        while len(self.buf) >= 9:
            hi, lo, ftype, flags, _ = struct.unpack(">BHBBI", self.buf[:9])
            length = (hi << 16) | lo
            if len(self.buf) < 9 + length:
                break
            payload = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            if ftype == FRAME_SETTINGS and not flags & FLAG_ACK:
                self.got_settings = True
                self.send(frame(FRAME_SETTINGS, FLAG_ACK))
            elif ftype == FRAME_PING and not flags & FLAG_ACK:
                self.send(frame(FRAME_PING, FLAG_ACK, payload))
            elif ftype == FRAME_GOAWAY:
                self.goaway = True

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True


def parse_addr(text):
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address '{text}' (want HOST:PORT)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError(f"refusing non-loopback address '{text}'")
    return host, int(port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", default="127.0.0.1:50051", help="server HOST:PORT (loopback only)")
    ap.add_argument("-n", type=int, default=1000, help=f"connections (1..{MAX_CONNS}) [1000]")
    ap.add_argument("--hold", type=float, default=120, help=f"seconds to hold them at most (<= {MAX_HOLD}) [120]")
    ap.add_argument("--timeout", type=float, default=10, help="seconds to wait for the server's SETTINGS [10]")
    args = ap.parse_args()
    try:
        host, port = parse_addr(args.addr)
    except ValueError as e:
        print(f"idle_conns: {e}", file=sys.stderr)
        return 2
    if not 1 <= args.n <= MAX_CONNS or not 0 < args.hold <= MAX_HOLD or args.timeout <= 0:
        print(f"idle_conns: need 1 <= -n <= {MAX_CONNS} and 0 < --hold <= {MAX_HOLD}", file=sys.stderr)
        return 2

    stop = False

    def on_signal(signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sel = selectors.DefaultSelector()
    conns = []
    failed = None
    hello = PREFACE + frame(FRAME_SETTINGS, 0)
    for i in range(args.n):
        if stop:
            break
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(hello)
            s.setblocking(False)
        except OSError as e:
            failed = f"connection {i + 1} of {args.n}: {e}"
            break
        c = Conn(s)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)

    def pump(timeout):
        for key, _ in sel.select(timeout):
            c = key.data
            c.on_readable()
            if c.closed:
                sel.unregister(c.sock)
                c.sock.close()

    deadline = time.monotonic() + args.timeout
    while not stop and time.monotonic() < deadline:
        if all(c.got_settings or c.closed for c in conns):
            break
        pump(0.1)
    settings = sum(c.got_settings for c in conns)
    closed = sum(c.closed for c in conns)
    print(f"ready opened={len(conns)} settings={settings} closed={closed}", flush=True)
    if failed:
        print(f"idle_conns: could not open {failed}", file=sys.stderr)

    end = time.monotonic() + args.hold
    stdin_open = not failed
    if stdin_open:
        try:
            sel.register(sys.stdin, selectors.EVENT_READ, None)
        except (ValueError, OSError):
            stdin_open = False  # stdin is /dev/null or a file: hold until --hold or a signal
    while not stop and time.monotonic() < end and not failed:
        for key, _ in sel.select(0.5):
            if key.data is None:
                if not os.read(sys.stdin.fileno(), 4096):
                    stop = True
                continue
            c = key.data
            c.on_readable()
            if c.closed:
                sel.unregister(c.sock)
                c.sock.close()
    closed = sum(c.closed for c in conns)
    for c in conns:
        if not c.closed:
            c.sock.close()
    print(f"done opened={len(conns)} closed={closed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
