"""The server's data path (bpf/server.c): Router Solicitations answered in XDP.

    prog = ServerDatapath.compile()             # or compile_isolated(): no bcc here
    att = prog.attach(ifindex, xdp_mode="auto", pin_root=..., instance=...)
    att.configure(server_config(policy, ra_limits))   # from the daemon's ServerPolicy
    prog.slow_path.write(SERVER_SLOW_PATH)             # what goes up to the daemon
    att.stats(); att.detach(); prog.close()

One XDP program, xdp_teredo_server, on the device holding both server addresses
(the daemon finds it). It answers an RS with exactly the RA ServerPolicy would send
(the RA's bytes, written here from the policy, are the program's template),
forwards bubbles and echo tests to clients of ours as ServerPolicy would (§5.3.1)
and passes everything else up to the daemon's sockets (docs/server.md). The maps
(registry.py): stats and the slow-path buckets as the other roles have them, plus
server_config and server_ra_global. Everything runs in the caller's network
namespace. What attach did, detach undoes in reverse, also when it fails half-way.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import struct
from typing import Optional

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import layout, registry
from . import stats as _stats
from .hooks import XDP_MODE_FLAGS, Hooks, open_iproute, remove_stale, unpin_stale
from .limits import SlowPathLimits
from .maps import Snapshot
from .program import Program

PROGRAMS = {"xdp": ("xdp_teredo_server", "XDP")}
MAPS = registry.names(registry.SERVER)
PINNED_MAPS = registry.pinned(registry.SERVER)
# What goes up to the daemon (bubbles, echo tests, odd RSs): per IPv4 source as the
# other roles admit theirs; in all, about what one Python process handles.
SERVER_SLOW_PATH = SlowPathLimits(global_pps=constants.SERVER_SLOW_PATH_GLOBAL_PPS,
                                  global_burst=constants.SERVER_SLOW_PATH_GLOBAL_PPS)

_ZERO = (0).to_bytes(4, "little")
_NS = 1_000_000_000
_log = log.get("xdp_teredo.datapath.server")


@dataclasses.dataclass(frozen=True)
class RaLimits:
    """RAs per second to one IPv4 address and in all (0: no limit), with bursts;
    and forwarded packets per second from or to one IPv4 address (§5.3.1)."""

    source_pps: float
    source_burst: int
    global_pps: float = 0.0
    global_burst: int = 1
    forward_pps: float = 0.0
    forward_burst: int = 1


def _gcra(pps: float, burst: int):
    if not pps:
        return 0, 0
    interval = max(1, int(round(_NS / pps)))
    return interval, interval * (max(1, int(burst)) - 1)


def _sum16(data: bytes) -> int:
    """Unfolded one's complement sum of 16-bit words as the BPF code loads them
    (host order, little-endian here): the checksum folds the same either way."""
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"<{len(data) // 2}H", data))


def server_config(policy, ra: RaLimits, *, port: int = constants.TEREDO_PORT,
                  enabled: bool = True) -> layout.ServerConfigValue:
    """The program's config from the daemon's ServerPolicy: the RA it would send
    (destination and checksum zeroed, the rest summed into ra_sum) and the rates."""
    # Any link-local destination: the template does not keep it.
    template = bytearray(policy._router_advertisement(ipaddress.IPv6Address("fe80::1")))
    if len(template) != layout.SERVER_RA_LEN:
        raise RuntimeFailure(f"the server's RA is {len(template)} bytes; the XDP program "
                             f"writes {layout.SERVER_RA_LEN}: run with --xdp-mode off")
    template[24:40] = bytes(16)             # the destination: the RS's source
    template[42:44] = b"\0\0"               # the ICMPv6 checksum
    icmp = bytes(template[40:])
    pseudo = bytes(template[8:24]) + struct.pack("!I3xB", len(icmp), constants.IPPROTO_ICMPV6)
    value = layout.ServerConfigValue(
        primary_ipv4=int.from_bytes(policy.primary.packed, "little"),
        secondary_ipv4=int.from_bytes(policy.secondary.packed, "little"),
        port=int.from_bytes(port.to_bytes(2, "big"), "little"),
        flags=layout.ServerFlag.ENABLED if enabled else 0,
        ra_sum=_sum16(pseudo) + _sum16(icmp))
    value.link_local[:] = list(policy.link_local.packed)
    value.ra[:] = list(template)
    (value.ra_source_interval_ns, value.ra_source_tolerance_ns) = _gcra(ra.source_pps,
                                                                        ra.source_burst)
    (value.ra_global_interval_ns, value.ra_global_tolerance_ns) = _gcra(ra.global_pps,
                                                                        ra.global_burst)
    (value.fwd_interval_ns, value.fwd_tolerance_ns) = _gcra(ra.forward_pps, ra.forward_burst)
    return value


class ServerDatapath(Program):
    """The server's program and maps, compiled and loaded, not attached."""

    ROLE = registry.SERVER
    PROGRAMS = PROGRAMS

    def reset(self) -> None:
        """Zero the config, counters and buckets (tests)."""
        super().reset()
        self.maps["server_config"].update(_ZERO, bytes(ctypes.sizeof(layout.ServerConfigValue)))
        self.maps["server_ra_global"].update(_ZERO, bytes(8))

    def configure(self, value: layout.ServerConfigValue) -> None:
        self.maps["server_config"].update(_ZERO, bytes(value))

    def attach(self, ifindex: int, *, xdp_mode: str = "auto", pin="auto",
               pin_root: str = _stats.DEFAULT_PIN_ROOT,
               instance: Optional[str] = None) -> "ServerAttachment":
        if self.attachment is not None:
            raise RuntimeFailure("this server data path is attached already; detach it first")
        if xdp_mode not in XDP_MODE_FLAGS:
            raise ValueError(f"xdp_mode must be one of {sorted(XDP_MODE_FLAGS)}")
        att = ServerAttachment(self, ifindex, xdp_mode)
        att._attach(pin, pin_root, instance or instance_name(ifindex))
        self.attachment = att
        return att


class ServerAttachment(Hooks):
    """xdp_teredo_server on one device; detach() removes it and the pins."""

    def __init__(self, prog: ServerDatapath, ifindex: int, xdp_mode: str):
        super().__init__()
        self.prog = prog
        self.ifindex = ifindex
        self.xdp_mode = xdp_mode
        self.xdp_attached: Optional[str] = None

    def configure(self, value: layout.ServerConfigValue) -> None:
        self.prog.configure(value)
        _log.info("server_datapath_configured", ifindex=self.ifindex,
                  enabled=bool(value.flags & layout.ServerFlag.ENABLED))

    def stats(self) -> Snapshot:
        return self.prog.statistics.read()

    def _attach(self, pin, pin_root: str, instance: str) -> None:
        with self._all_or_nothing("the server data path", "server_datapath_undo_failed"):
            self.xdp_attached = self._attach_xdp(self.ifindex, self.prog.functions["xdp"],
                                                 self.xdp_mode)
            self._pin(self.prog.maps, PINNED_MAPS, pin, pin_root, instance)
        _log.info("server_datapath_attached", ifindex=self.ifindex, xdp_mode=self.xdp_attached,
                  pin_dir=self.pin_dir)

    detached_event = "server_datapath_detached"

    def _detached_fields(self) -> dict:
        return {"ifindex": self.ifindex}


def instance_name(ifindex: int) -> str:
    """stats.instance_name of the calling thread's network namespace."""
    return f"netns{os.stat('/proc/thread-self/ns/net').st_ino}-if{ifindex}"


def detach_stale(ifindex: int, *, pin_root: str = _stats.DEFAULT_PIN_ROOT,
                 instance: Optional[str] = None):
    """Remove an xdp_teredo_server a server that died left on `ifindex`, and its pins."""
    ipr = open_iproute()
    try:
        removed = remove_stale(ipr, [], [ifindex], [], PROGRAMS["xdp"][0])
    finally:
        ipr.close()
    removed += unpin_stale(os.path.join(pin_root, instance or instance_name(ifindex)),
                           PINNED_MAPS)
    if removed:
        _log.warning("server_stale_removed", removed=removed)
    return removed
