"""A closed-loop Router Solicitation generator for the server benchmark
(tools/bench/server_bench.py), for the lab only.

bpf/rsloop.c sits on the generator host's uplink (generic XDP) and turns every
Router Advertisement a Teredo server sends back into the next Router
Solicitation to that server (XDP_TX). `seed(K)` puts K solicitations in flight
from K spoofed sources (lab/flood.py's raw-socket datagrams); from then on the
loop runs in softirq by itself, with no system call per packet, and the rate at
which it turns RAs around is the rate at which the server answers. A sendmmsg
sender pays for the whole path of its datagrams in its own system calls; the loop
pays only for its share of the softirq work, the same for every server measured.

The solicitation (RFC 4861 §4.1, in RFC 4380 §5.1.1's authentication header with
a nonce) is built here, by the same code as the client's and flood.py's, and
written into the program's map: the program keeps the RA's nonce and rewrites the
outer headers only.

Attaching, seeding and detaching happen inside the generator's network namespace
(a thread that entered it: setns(2) moves only the calling thread); the counters
are read through the map's descriptor from anywhere.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import threading
import time
from typing import List, Optional

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.lab.traffic import in_netns
from xdp_teredo.teredo import constants, encap, icmpv6

UNIT = "rsloop.c"
NONCE_OFFSET = 4                 # RFC 4380 §5.1.1: indicator, id_len, au_len, then the nonce
XDP_FLAGS_SKB_MODE = 1 << 1      # generic XDP: XDP_TX through the stack's transmit path
XDP_FLAGS_DRV_MODE = 1 << 2      # native XDP: into the veth peer's ring, where it is lost (kernel-notes)
MODES = {"generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}
COUNTERS = ("turned", "passed", "stopped", "tail_refused")   # rsloop.c's enum, in order


def template(nonce: bytes = bytes(constants.AUTH_NONCE_LEN)) -> bytes:
    """The RS's UDP payload as a qualifying client sends it (no options, from the
    restricted link-local address: the server answers from the address the RS came
    to, §5.3.1), with `nonce`."""
    rs = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED)
    return encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=nonce))


def cflags(payload: bytes) -> List[str]:
    return [f"-DRSLOOP_PAYLOAD_LEN={len(payload)}",
            f"-DRSLOOP_SERVER_PORT={constants.TEREDO_PORT}",
            f"-DRSLOOP_NONCE_OFFSET={NONCE_OFFSET}"]


def compile_loop():
    """bcc's BPF object of bpf/rsloop.c, template written, loop running."""
    from bcc import BPF

    from xdp_teredo.datapath import kheaders, source

    payload = template()
    kheaders.export()
    try:
        bpf = BPF(src_file=os.path.join(source.bpf_dir(), UNIT).encode(),
                  cflags=[f"-I{source.bpf_dir()}", *cflags(payload)])
    except Exception as err:  # bcc raises plain Exception; clang's errors went to stderr
        raise RuntimeFailure(f"cannot compile {UNIT}: {err}") from err
    table = bpf[b"rsloop_template"]
    value = table.Leaf()
    ctypes.memmove(ctypes.addressof(value), payload, len(payload))
    value.running = 1
    table[table.Key(0)] = value
    return bpf


def sources(net: str, k: int, first_port: int = 40000) -> list:
    """K distinct (IPv4, port) sources inside `net`, in order."""
    network = ipaddress.IPv4Network(net)
    if k > network.num_addresses - 2:
        raise ValueError(f"{net} has fewer than {k} host addresses")
    return [(network.network_address + 1 + i, first_port + (i % 20000)) for i in range(k)]


class RsLoop:
    """The loop on DEV of namespace NETNS, aimed at whichever server is seeded."""

    def __init__(self, netns: str, dev: str = "eth0", mode: str = "generic"):
        self.netns, self.dev, self.flags = netns, dev, MODES[mode]
        self.bpf = compile_loop()
        self._attached = False
        self._sock: Optional[socket.socket] = None
        try:
            fn = self.bpf.load_func(b"rsloop_xdp", self.bpf.XDP)

            def attach():
                self.bpf.attach_xdp(dev.encode(), fn, self.flags)
                return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

            self._sock = in_netns(netns, attach)
            self._attached = True
        except BaseException:
            self.close()
            raise

    def running(self, on: bool) -> None:
        """Off: the program drops the RAs instead, and the loop ends."""
        table = self.bpf[b"rsloop_template"]
        value = table[table.Key(0)]
        value.running = 1 if on else 0
        table[table.Key(0)] = value

    def counts(self) -> dict:
        table = self.bpf[b"rsloop_counts"]
        return {name: int(sum(table[table.Key(i)])) for i, name in enumerate(COUNTERS)}

    def seed(self, server: str, k: int, net: str, port: int = constants.TEREDO_PORT) -> None:
        """K RSs from K sources of `net` (routed back to this host) to server:port,
        sent from every CPU in turn. On a veth, a frame is received on the CPU
        that sent it, and a loop that never leaves softirq stays there: seeded
        from one thread, the loop would run on whichever CPUs that thread
        happened to be on. Spread evenly, it runs on all of them, as a multi-queue
        NIC spreads its clients over its queues (docs/benchmarks.md)."""
        from xdp_teredo.lab.flood import datagram

        dst = (ipaddress.IPv4Address(server), port)
        # A nonce of its own for each (RFC 4380 §5.2.1); the program keeps it round after round.
        frames = [datagram(src, dst, template(os.urandom(constants.AUTH_NONCE_LEN)), n)
                  for n, src in enumerate(sources(net, k))]
        cpus = sorted(os.sched_getaffinity(0))

        def send(cpu: int) -> None:
            os.sched_setaffinity(0, {cpu})   # this thread only
            for frame in frames[cpus.index(cpu)::len(cpus)]:
                self._sock.sendto(frame, (server, 0))

        for cpu in cpus:
            thread = threading.Thread(target=send, args=(cpu,))
            thread.start()
            thread.join()

    def rate(self, server: str, k: int, net: str, seconds: float, *, settle: float = 0.3,
             windows: int = 4) -> dict:
        """Seed K, let it settle, count RAs turned around over `seconds` (in
        `windows` equal parts, to show whether the loop kept its K), stop."""
        self.running(True)
        self.seed(server, k, net)
        time.sleep(settle)
        parts = []
        start = time.monotonic()
        last = self.counts()["turned"]
        for w in range(windows):
            time.sleep(max(0.0, start + seconds * (w + 1) / windows - time.monotonic()))
            now = self.counts()["turned"]
            parts.append(now - last)
            last = now
        took = time.monotonic() - start
        self.running(False)
        time.sleep(0.1)   # the last RAs dropped: nothing in flight for the next seed
        total = sum(parts)
        window = seconds / windows
        return {"k": k, "seconds": round(took, 3), "turned": total,
                "pps": round(total / took),
                "window_pps": [round(p / window) for p in parts]}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._attached:
            in_netns(self.netns, lambda: self.bpf.remove_xdp(self.dev.encode(), self.flags))
            self._attached = False
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "RsLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
