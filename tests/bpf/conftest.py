"""tests/bpf: the data path through BPF_PROG_TEST_RUN (root + bcc).

The programs are compiled once per session (tests/conftest.py: datapath_program);
`dp` resets their maps around each test and runs packets through them, returning
what the program returned, the packet afterwards, and which counters moved.
"""

import dataclasses
import ipaddress
import struct
import time
from dataclasses import dataclass
from typing import Dict, Optional

import pytest

from xdp_teredo.datapath import Config, PeerEntry, PeerFlag, now_ns, testrun
from xdp_teredo.datapath.maps import delta

from . import packets as P

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
NIC_IFINDEX, TUN_IFINDEX = 2, 3  # any non-zero: test runs redirect nowhere
CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; the time module has no name for it


def stamp_floor_ns() -> int:
    """The earliest time the data path may stamp from now on: it reads CLOCK_MONOTONIC
    as of the last tick (bpf/lib/clock.h), up to a tick behind now_ns()."""
    return time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)


@dataclass
class Outcome:
    retval: int
    data: bytes          # the packet afterwards (XDP: metadata included)
    frame: bytes         # without XDP metadata
    meta: bytes
    counted: Dict[str, int]  # stats delta: reason key -> packets


class Harness:
    def __init__(self, prog):
        self.prog = prog
        self.config: Optional[Config] = None

    # -- setup
    def configure(self, **changes) -> Config:
        base = Config(local_ipv4=P.LOCAL_IPV4, local_port=P.LOCAL_PORT, teredo_address=P.OUR_ADDRESS,
                      nic_ifindex=NIC_IFINDEX, tun_ifindex=TUN_IFINDEX, l2_len=14)
        self.config = dataclasses.replace(base, **changes)
        self.prog.config.write(self.config)
        return self.config

    def add_peer(self, address, ipv4, port, flags=PeerFlag.TRUSTED, last_rx_ns=None, **kw) -> PeerEntry:
        entry = PeerEntry(address=ipaddress.IPv6Address(address), mapped_ipv4=ipv4, mapped_port=port,
                          flags=flags, last_rx_ns=now_ns() if last_rx_ns is None else last_rx_ns, **kw)
        self.prog.peers.put(entry)
        return entry

    def peers(self) -> Dict[ipaddress.IPv6Address, PeerEntry]:
        return {e.address: e for e in self.prog.peers}

    # -- runs
    def _run(self, program: str, frame: bytes, xdp: bool, gso_size: int = 0,
             gso_segs: int = 0) -> Outcome:
        before = self.prog.stats()
        fd = self.prog.fd(program)
        if xdp:
            result = testrun.run_xdp(fd, frame)
        elif gso_size:
            # struct __sk_buff (uapi/linux/bpf.h, 192 bytes): wire_len @160,
            # gso_segs @164, gso_size @176; what a test run may set of a GSO skb.
            skb = bytearray(192)
            struct.pack_into("=II", skb, 160, len(frame), gso_segs)
            struct.pack_into("=I", skb, 176, gso_size)
            result = testrun.run(fd, frame, ctx_in=bytes(skb), ctx_out_size=192)
        else:
            result = testrun.run(fd, frame)
        counted = delta(before, self.prog.stats())
        return Outcome(result.retval, result.data, result.frame, result.meta, counted)

    def xdp(self, frame: bytes) -> Outcome:
        return self._run("xdp_rx", frame, True)

    def tc_rx(self, frame: bytes, **gso) -> Outcome:
        return self._run("tc_rx", frame, False, **gso)

    def tc_ingress(self, frame: bytes) -> Outcome:
        return self._run("tc_ingress", frame, False)

    def tc_tx(self, frame: bytes, **gso) -> Outcome:
        return self._run("tc_tx", frame, False, **gso)

    def tc_tx_back(self, frame: bytes) -> Outcome:
        return self._run("tc_tx_back", frame, False)


@pytest.fixture
def dp(datapath_program):
    datapath_program.reset()
    harness = Harness(datapath_program)
    yield harness
    datapath_program.reset()
