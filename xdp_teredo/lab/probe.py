"""Tiny traffic probes, run inside lab namespaces as
`python -m xdp_teredo.lab.probe COMMAND ...`.

Why our own and not ping/nc: the machine's minimal Debian has no iputils-ping
and no netcat, and a probe that prints one JSON object is easier to assert on
than another tool's text output. Each command prints one JSON line per event
and exits 0 on success, 1 on failure (e.g. too few replies).

  ping DST [--count N] [--interval S] [--deadline S] [--size B] [--source A]
      ICMP / ICMPv6 echo (raw socket, needs root) until N replies or the
      deadline; prints {"sent", "received", "rtts_ms", "replies_from"}.
  steady DST [DST ...] --duration S [--interval S] [--linger S]
      ICMP / ICMPv6 echo to every DST every interval for `duration` seconds, then
      waits `linger` for late replies; prints {"flows": [{"dst", "sent": [[seq,
      wall time]], "replies": [[seq, wall time, from]]}]}: a steady ping to measure
      an outage with (lab/fleet.py). Wall-clock times: one clock for every namespace.
  udp-echo --port P [--bind A] [--count N] [--timeout S]
      prints {"event": "ready"} once bound, then for each datagram
      {"event": "datagram", "peer": [ip, port], "data": ...} and echoes it back.
  udp-send DST PORT [--message M] [--timeout S] [--bind-port P] [--tries N]
      sends M, waits for a reply; prints {"reply": ..., "peer": [ip, port], "local": [...]}.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time

from xdp_teredo.teredo.constants import ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST
from xdp_teredo.teredo.packet import internet_checksum

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def argv(*args) -> list:
    """The command line that runs this module with `args` (for Lab.run/spawn).

    The same interpreter as the caller's, so the venv (and this package) is used.
    """
    return [sys.executable, "-m", "xdp_teredo.lab.probe", *[str(a) for a in args]]


def _emit(obj) -> None:
    print(json.dumps(obj), flush=True)


def _echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    kind = ICMPV6_ECHO_REQUEST if v6 else ICMP_ECHO_REQUEST
    hdr = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return hdr + payload  # the kernel fills in the ICMPv6 checksum on raw sockets
    csum = internet_checksum(hdr + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def _parse_reply(v6: bool, data: bytes):
    """(ident, seq) of an echo reply, else None. IPv4 raw sockets include the IP header."""
    if not v6:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, _code, _csum, ident, seq = struct.unpack("!BBHHH", data[:8])
    if kind != (ICMPV6_ECHO_REPLY if v6 else ICMP_ECHO_REPLY):
        return None
    return ident, seq


def cmd_ping(args) -> int:
    dst = ipaddress.ip_address(args.dst)
    v6 = dst.version == 6
    fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    sock = socket.socket(fam, socket.SOCK_RAW, proto)
    if args.source:
        sock.bind((args.source, 0))
    ident = os.getpid() & 0xFFFF
    payload = bytes(range(256)) * (args.size // 256 + 1)
    payload = payload[:args.size]
    sent, rtts, peers, sent_at = 0, [], set(), {}
    deadline = time.monotonic() + args.deadline
    next_send = time.monotonic()
    while len(rtts) < args.count and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_send:
            seq = sent & 0xFFFF
            sock.sendto(_echo_request(v6, ident, seq, payload), (str(dst), 0))
            sent_at[seq] = now
            sent += 1
            next_send = now + args.interval
        timeout = max(0.0, min(next_send, deadline) - time.monotonic())
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            continue
        data, peer = sock.recvfrom(65535)
        got = _parse_reply(v6, data)
        if got and got[0] == ident and got[1] in sent_at:
            rtts.append(round((time.monotonic() - sent_at.pop(got[1])) * 1000, 3))
            peers.add(peer[0])
    _emit({"dst": str(dst), "sent": sent, "received": len(rtts), "rtts_ms": rtts,
           "replies_from": sorted(peers)})
    return 0 if len(rtts) >= args.count else 1


def cmd_steady(args) -> int:
    dsts = [ipaddress.ip_address(d) for d in args.dst]
    if len({d.version for d in dsts}) != 1:
        print("steady: one address family at a time", file=sys.stderr)
        return 2
    v6 = dsts[0].version == 6
    fam, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    sock = socket.socket(fam, socket.SOCK_RAW, proto)
    # One echo identifier per destination: a flow is (this host, DST, ident).
    base = os.getpid() & 0xFFFF
    flows = {(base + i) & 0xFFFF: {"dst": str(d), "sent": [], "replies": []}
             for i, d in enumerate(dsts)}
    idents = list(flows)
    payload = bytes(56)
    start = time.monotonic()
    stop_sending, end = start + args.duration, start + args.duration + args.linger
    next_send, seq = start, 0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send and now < stop_sending:
            for ident, d in zip(idents, dsts):
                sock.sendto(_echo_request(v6, ident, seq, payload), (str(d), 0))
                flows[ident]["sent"].append([seq, time.time()])
            seq = (seq + 1) & 0xFFFF
            next_send += args.interval
        wait_until = min(next_send, end) if now < stop_sending else end
        ready, _, _ = select.select([sock], [], [], max(0.0, wait_until - time.monotonic()))
        if not ready:
            continue
        data, peer = sock.recvfrom(65535)
        got = _parse_reply(v6, data)
        if got and got[0] in flows:
            flows[got[0]]["replies"].append([got[1], time.time(), peer[0]])
    _emit({"flows": list(flows.values())})
    return 0


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def cmd_udp_echo(args) -> int:
    sock = socket.socket(_family(args.bind), socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    _emit({"event": "ready", "local": list(sock.getsockname()[:2])})
    sock.settimeout(args.timeout)
    for _ in range(args.count):
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            _emit({"event": "timeout"})
            return 1
        _emit({"event": "datagram", "peer": list(peer[:2]),
               "data": data.decode(errors="replace")})
        sock.sendto(data, peer)
    return 0


def cmd_udp_send(args) -> int:
    sock = socket.socket(_family(args.dst), socket.SOCK_DGRAM)
    sock.bind(("::" if ":" in args.dst else "0.0.0.0", args.bind_port))
    sock.settimeout(args.timeout)
    for _ in range(args.tries):
        sock.sendto(args.message.encode(), (args.dst, args.port))
        try:
            data, peer = sock.recvfrom(65535)
        except socket.timeout:
            continue
        _emit({"reply": data.decode(errors="replace"), "peer": list(peer[:2]),
               "local": list(sock.getsockname()[:2])})
        return 0
    _emit({"reply": None, "local": list(sock.getsockname()[:2])})
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdp_teredo.lab.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=1, help="replies wanted")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--deadline", type=float, default=5.0)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--source")
    p.set_defaults(fn=cmd_ping)
    p = sub.add_parser("steady")
    p.add_argument("dst", nargs="+")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--linger", type=float, default=1.0)
    p.set_defaults(fn=cmd_steady)
    p = sub.add_parser("udp-echo")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(fn=cmd_udp_echo)
    p = sub.add_parser("udp-send")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--message", default="probe")
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--bind-port", type=int, default=0)
    p.set_defaults(fn=cmd_udp_send)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
