"""A bounded flood of hostile Teredo packets, for the hostile-input tests
(tests/e2e/test_hostile.py, docs/reliability.md), run inside a lab namespace as

    python -m xdp_teredo.lab.flood KIND --to IP:PORT [--from IP:PORT | --from-net CIDR]
        [--sources N] [--target ADDR6] [--server IP] [--rate PPS] [--count N]
        [--duration S] [--pool N] [--batch N]

KIND, what each datagram carries (RFC 4380 §5.1.1 for the headers):
  rs               a Router Solicitation with a random nonce (qualification, §5.2.1)
  bubble           a bubble (§2.8) from a Teredo address embedding the UDP source, to --target
  indirect-bubble  an origin indication then a bubble: what a server forwards (§5.2.3)
  echo             an ICMPv6 echo request from a Teredo address embedding the UDP
                   source, to --target: a direct connectivity test (§5.2.9)
  data             an echo request to --target from ever new Teredo addresses that all
                   embed the UDP source: what makes a data path learn peers (§5.2.3)
  ra               a Router Advertisement with a random nonce and origin, prefix of --server
  garbage          random bytes, half of them starting like IPv6
  mismatch         data from a Teredo address embedding another UDP source (§5.4.2)

The IPv4 source is spoofed through a raw socket (IP_HDRINCL): one --from address and
port, or --sources random ones inside --from-net. Bounded by --count and --duration
(both: whichever comes first), paced at --rate packets per second (0: as fast as the
loop goes). Payloads are built before the clock starts, --pool of them per source,
so the loop only sends, --batch datagrams per sendmmsg(2) call (1: sendto; the
benchmark's server part sends 64 at a time, where one sendto per datagram made the
generator, not the server, the limit). Prints one JSON object: what was sent, how
fast, and the bytes per source (IP bytes, as counters on the wire count them).

For the lab only: addresses come from the documentation ranges and every packet
stays inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from typing import List, Tuple

from xdp_teredo.teredo import constants, encap, icmpv6
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.packet import build_bubble

KINDS = ("rs", "bubble", "indirect-bubble", "echo", "data", "ra", "garbage", "mismatch")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
Endpoint = Tuple[ipaddress.IPv4Address, int]


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return ipaddress.IPv4Address(host), int(port)


def _teredo(server, ip, port, rng: random.Random) -> ipaddress.IPv6Address:
    return TeredoAddress.build(server, ip, port, rng=rng).ipv6


def payloads(kind: str, source: Endpoint, args, rng: random.Random) -> List[bytes]:
    """--pool UDP payloads of `kind` as `source` would send them."""
    ip, port = source
    server = ipaddress.IPv4Address(args.server) if args.server else args.to[0]
    target = ipaddress.IPv6Address(args.target) if args.target else None
    out = []
    for n in range(args.pool):
        if kind == "rs":
            rs = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED)
            out.append(encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=rng.randbytes(8))))
        elif kind in ("bubble", "indirect-bubble"):
            src = _teredo(server, ip, port, rng)
            origin = None
            if kind == "indirect-bubble":
                # As the server would write it: the (claimed) sender's mapping.
                origin = encap.OriginIndication(port=rng.randrange(1024, 65536),
                                                address=ipaddress.IPv4Address(
                                                    rng.randrange(0x01000000, 0xDF000000)))
            out.append(encap.build_udp_payload(build_bubble(src, target), origin=origin))
        elif kind in ("echo", "data"):
            # "data": a new Teredo source each time (other server and flags fields),
            # still embedding exactly this UDP source.
            other = ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000)) \
                if kind == "data" else server
            src = _teredo(other, ip, port, rng)
            out.append(icmpv6.build_echo_request(src, target, identifier=rng.getrandbits(16),
                                                 sequence=n & 0xFFFF, data=rng.randbytes(8)))
        elif kind == "ra":
            prefix = ipaddress.IPv6Network(((constants.TEREDO_PREFIX_HI32 << 96) | (int(server) << 64), 64))
            ra = icmpv6.build_router_advertisement("fe80::8000:f227:3fff:fdfe",
                                                   constants.LINK_LOCAL_RESTRICTED, prefixes=[prefix],
                                                   mtu=constants.TEREDO_MTU)
            out.append(encap.build_udp_payload(
                ra, auth=encap.AuthHeader(nonce=rng.randbytes(8)),
                origin=encap.OriginIndication(port=rng.randrange(1, 65536), address=ip)))
        elif kind == "garbage":
            body = rng.randbytes(rng.randrange(1, 120))
            out.append(bytes([0x60]) + body if rng.random() < 0.5 else body)
        elif kind == "mismatch":
            src = _teredo(server, ip, port ^ 0x5555, rng)
            out.append(icmpv6.build_echo_request(src, target, identifier=1, sequence=n & 0xFFFF))
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return out


def datagram(source: Endpoint, destination: Endpoint, payload: bytes, ident: int) -> bytes:
    """IPv4 + UDP + payload; the kernel fills in the IPv4 checksum (IP_HDRINCL).
    UDP checksum 0: legal over IPv4 (RFC 768)."""
    udp = _UDP.pack(source[1], destination[1], _UDP.size + len(payload), 0)
    total = 20 + len(udp) + len(payload)
    ip = _IPV4.pack(0x45, 0, total, ident & 0xFFFF, 0, 64, socket.IPPROTO_UDP, 0,
                    source[0].packed, destination[0].packed)
    return ip + udp + payload


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


class MmsgSender:
    """sendmmsg(2) of prebuilt datagrams on a raw IPv4 socket (IP_HDRINCL), in
    the order given, round and round: one system call per batch instead of one
    per datagram (Python's socket module has no sendmmsg)."""

    def __init__(self, sock: socket.socket, frames: List[bytes], destination: ipaddress.IPv4Address):
        self.fd = sock.fileno()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._addr = ctypes.create_string_buffer(
            struct.pack("=HH4s8x", socket.AF_INET, 0, destination.packed), 16)
        self._bufs = [ctypes.create_string_buffer(f, len(f)) for f in frames]
        n = len(frames)
        self._iov = (_Iovec * n)(*[_Iovec(ctypes.cast(b, ctypes.c_void_p), len(f))
                                   for b, f in zip(self._bufs, frames)])
        self._msgs = (_Mmsghdr * n)()
        for i in range(n):
            self._msgs[i].hdr.name = ctypes.cast(self._addr, ctypes.c_void_p)
            self._msgs[i].hdr.namelen = 16
            self._msgs[i].hdr.iov = ctypes.pointer(self._iov[i])
            self._msgs[i].hdr.iovlen = 1
        self.lengths = [len(f) for f in frames]

    def send(self, first: int, count: int) -> int:
        """Datagrams first .. first + count - 1 (no wrap); how many left (>= 0)."""
        ptr = ctypes.byref(self._msgs, first * ctypes.sizeof(_Mmsghdr))
        got = self._libc.sendmmsg(self.fd, ptr, count, 0)
        return max(got, 0)


def sources_from(args, rng: random.Random) -> List[Endpoint]:
    if args.from_ is not None:
        return [args.from_]
    net = ipaddress.IPv4Network(args.from_net)
    hosts = max(1, net.num_addresses - 2)
    return [(net.network_address + 1 + rng.randrange(hosts), rng.randrange(1024, 65536))
            for _ in range(args.sources)]


def run(args) -> dict:
    rng = random.Random(args.seed)
    sources = sources_from(args, rng)
    frames = [[datagram(src, args.to, p, rng.getrandbits(16))
               for p in payloads(args.kind, src, args, rng)] for src in sources]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    destination = (str(args.to[0]), 0)
    if args.batch > 1:
        return _run_batched(args, sock, sources, frames)
    sent = errors = 0
    per_source = [0] * len(sources)
    start = time.monotonic()
    stop = start + args.duration
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    while sent < args.count:
        now = time.monotonic()
        if now >= stop:
            break
        if interval and sent * interval > now - start:
            time.sleep(min(sent * interval - (now - start), 0.01))
            continue
        i = sent % len(sources)
        pool = frames[i]
        frame = pool[(sent // len(sources)) % len(pool)]
        try:
            sock.sendto(frame, destination)
            per_source[i] += len(frame)
        except OSError:
            errors += 1   # buffer full, no route: counted, the flood goes on
        sent += 1
    seconds = time.monotonic() - start
    sock.close()
    return {"kind": args.kind, "sent": sent, "send_errors": errors,
            "bytes": sum(per_source), "seconds": round(seconds, 3),
            "pps": round(sent / seconds) if seconds > 0 else None,
            "sources": len(sources),
            "bytes_by_source": {f"{ip}:{port}": b for (ip, port), b in
                                zip(sources, per_source)} if len(sources) <= 16 else None}


def _run_batched(args, sock: socket.socket, sources: List[Endpoint], frames) -> dict:
    """run() with sendmmsg: the same order (source after source, then the next of
    each pool), --batch at a time, paced per batch."""
    pool = len(frames[0])
    ordered = [frames[i][k] for k in range(pool) for i in range(len(sources))]
    sender = MmsgSender(sock, ordered, args.to[0])
    sent = errors = at = 0
    per_source = [0] * len(sources)
    start = time.monotonic()
    stop = start + args.duration
    while sent < args.count:
        now = time.monotonic()
        if now >= stop:
            break
        n = min(args.batch, args.count - sent, len(ordered) - at)
        if args.rate > 0:
            n = min(n, int(args.rate * (now - start)) - sent)
            if n <= 0:
                time.sleep(min(args.batch / args.rate, 0.01))
                continue
        done = sender.send(at, n)
        if done < n:
            errors += 1   # buffer full: counted, the flood goes on
        for j in range(at, at + done):
            per_source[j % len(sources)] += sender.lengths[j]
        sent += done
        at = (at + max(done, 1)) % len(ordered)
    seconds = time.monotonic() - start
    sock.close()
    return {"kind": args.kind, "sent": sent, "send_errors": errors, "batch": args.batch,
            "bytes": sum(per_source), "seconds": round(seconds, 3),
            "pps": round(sent / seconds) if seconds > 0 else None,
            "sources": len(sources),
            "bytes_by_source": {f"{ip}:{port}": b for (ip, port), b in
                                zip(sources, per_source)} if len(sources) <= 16 else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdp_teredo.lab.flood")
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--to", type=_endpoint, required=True, help="victim IPv4:port")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--from", dest="from_", type=_endpoint, help="one spoofed IPv4:port")
    who.add_argument("--from-net", help="spoof --sources random addresses in this IPv4 net")
    ap.add_argument("--sources", type=int, default=64)
    ap.add_argument("--target", help="IPv6 destination inside the packets (bubble, echo, data)")
    ap.add_argument("--server", help="Teredo server in the addresses (default: --to's IPv4)")
    ap.add_argument("--rate", type=float, default=0.0, help="packets per second (0: flat out)")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--pool", type=int, default=16, help="payloads built per source")
    ap.add_argument("--seed", type=int, default=4380)
    ap.add_argument("--batch", type=int, default=1,
                    help="datagrams per sendmmsg(2) call (1: one sendto each)")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error("--batch must be at least 1")
    if args.kind in ("bubble", "indirect-bubble", "echo", "data", "mismatch") and not args.target:
        ap.error(f"{args.kind} needs --target")
    print(json.dumps(run(args)), flush=True)
    return 0


def argv(*args) -> list:
    """The command line that runs this module with `args` (for Lab.run / Lab.spawn)."""
    return [sys.executable, "-m", "xdp_teredo.lab.flood", *[str(a) for a in args]]


if __name__ == "__main__":
    sys.exit(main())
