"""Feature probes: does this kernel do what the data path asks of it?

Each probe is a tiny program in bpf/probe.c that makes one of the helper
calls bpf/client.c and bpf/relay.c make, with the same flags, and returns the helper's result.
Loading it tells whether the kernel knows the helper; running it with
BPF_PROG_TEST_RUN on a suitable packet tells whether it accepts the flags (the
verifier does not check flag values: an old kernel says -EINVAL only at run time).
Attaching (XDP mode, clsact) is probed by the drivers when they attach.

    results = probe.run()                 # every probe, never raises for a missing feature
    probe.require(["redirect_neigh"])     # RuntimeFailure naming what is missing
    probe.require(names, results)         # the same, on results probed elsewhere

The daemons never run them in their own process (bcc, LLVM): the child that
compiles their data path runs them and sends the results along (isolated.py,
Program.features).
"""

import os
import struct
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional

from ..errors import RuntimeFailure
from . import kheaders, source, testrun

TC_ACT_REDIRECT = 7

# What each probe needs: (program, XDP?, packet kind, expected return, what uses it).
_PROBES = {
    "adjust_room_encap": ("probe_adjust_room_encap", False, "ipv6", 0,
                          "bpf_skb_adjust_room(+28, ENCAP_L3_IPV4|ENCAP_L4_UDP|FIXED_GSO), Linux 5.2: tc egress"),
    "change_head": ("probe_change_head", False, "ipv6", 0,
                    "bpf_skb_change_head, Linux 5.8 for tc: tc egress"),
    "redirect_neigh": ("probe_redirect_neigh", False, "ipv6", TC_ACT_REDIRECT,
                       "bpf_redirect_neigh with 4 arguments, Linux 5.10: tc egress"),
    "adjust_room_decap": ("probe_adjust_room_decap", False, "teredo", 0,
                          "bpf_skb_adjust_room(-28, DECAP_L3_IPV6), Linux 6.3: tc-only receive path"),
    "xdp_adjust_meta": ("probe_xdp_adjust_meta", True, "teredo", 0,
                        "bpf_xdp_adjust_meta, Linux 4.15: XDP receive path"),
}

# Which probes each receive path needs, on top of the transmit path's.
TX_FEATURES = ("adjust_room_encap", "change_head", "redirect_neigh")
RX_FEATURES = {"xdp": ("xdp_adjust_meta",), "tc": ("adjust_room_decap",)}


@dataclass(frozen=True)
class Feature:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def _frame(kind: str) -> bytes:
    """A minimal Ethernet frame: IPv6 bubble, or that bubble in IPv4/UDP (Teredo)."""
    ipv6 = struct.pack("!IHBB16s16s", 6 << 28, 0, 59, 64,
                       bytes.fromhex("20010db8" + "00" * 11 + "01"),
                       bytes.fromhex("20010db8" + "00" * 11 + "02"))
    if kind == "ipv6":
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ipv6
    udp = struct.pack("!HHHH", 3544, 3544, 8 + len(ipv6), 0)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(ipv6), 0, 0, 64, 17, 0,
                               bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])))
    total = sum(struct.unpack("!10H", ip))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(ip) + udp + ipv6


_cache: Optional[List[Feature]] = None


def _compile():
    try:
        from bcc import BPF
    except ImportError as err:
        raise RuntimeFailure(f"bcc is not importable ({err}): install python3-bpfcc") from err
    kheaders.export()
    try:
        return BPF(src_file=os.path.join(source.bpf_dir(), source.PROBE_UNIT).encode(),
                   cflags=[f"-I{source.bpf_dir()}"])
    except Exception as err:  # bcc raises plain Exception
        raise RuntimeFailure(f"cannot compile the feature probes: {err}") from err


def run(refresh: bool = False) -> List[Feature]:
    """Run every probe once per process (cached). Raises only if bcc itself fails."""
    global _cache
    if _cache is not None and not refresh:
        return list(_cache)
    from bcc import BPF  # noqa: F811 (after _compile proved it importable)

    bpf = _compile()
    results = []
    try:
        for name, (func, is_xdp, kind, expected, what) in _PROBES.items():
            results.append(_one(bpf, name, func, is_xdp, kind, expected, what, BPF))
    finally:
        bpf.cleanup()
    _cache = results
    return list(results)


def _one(bpf, name, func, is_xdp, kind, expected, what, BPF) -> Feature:
    try:
        fn = bpf.load_func(func.encode(), BPF.XDP if is_xdp else BPF.SCHED_CLS)
    except Exception as err:
        return Feature(name, False, f"{what}: program does not load ({err})")
    try:
        result = testrun.run(fn.fd, _frame(kind))
    except OSError as err:
        return Feature(name, False, f"{what}: BPF_PROG_TEST_RUN failed ({err})")
    if result.signed != expected:
        shown = os.strerror(-result.signed) if result.signed < 0 else str(result.signed)
        return Feature(name, False, f"{what}: refused ({shown})")
    return Feature(name, True, what)


def by_name(results: Iterable[Feature]) -> Dict[str, Feature]:
    return {f.name: f for f in results}


def require(names: Iterable[str], results: Optional[Iterable[Feature]] = None) -> None:
    """RuntimeFailure naming every missing feature among `names`.

    results: what a run() elsewhere found (the child that compiled a daemon's data
    path, isolated.py); None runs the probes here, which loads bcc.
    """
    found = by_name(run() if results is None else results)
    missing = [found[n] for n in names if not found[n].ok]
    if missing:
        raise RuntimeFailure("this kernel lacks what the data path needs: "
                             + "; ".join(f"{f.name}: {f.detail}" for f in missing))
