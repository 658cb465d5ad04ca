"""The server's plan: its two addresses and its rate limits, from the command line.

A Teredo server (RFC 4380 §5.3) needs two public IPv4 addresses, consecutive for
Miredo's clients (ServerAddress2 = primary + 1) and Windows; the rate limits bound
what any one source can make it send (docs/server.md, "Sizing").
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Optional

from .. import log
from ..errors import UsageError
from ..teredo import constants
from ..teredo.ipv4 import as_ipv4, is_global_unicast
from ..teredo.ratelimit import Limits

# Defaults of the rate limits (docs/server.md, "Sizing"): a client needs one RA per
# 30 s (117 bytes) plus a few bubbles, so 20 packets/s and 2 KiB/s per IPv4 address
# leave room for several hundred clients behind one NAT, while a spoofed source can
# aim at most 2 KiB/s (after an 8 KiB burst) at any one victim. The overall bucket
# caps the total the server can emit, whatever the number of sources.
DEFAULT_SOURCE_PPS = 20.0
DEFAULT_SOURCE_BPS = 2048.0
DEFAULT_GLOBAL_PPS = 20000.0
DEFAULT_GLOBAL_BPS = 4_000_000.0
DEFAULT_MAX_SOURCES = 65536
# The XDP fast path (bpf/server.c): RAs per second in all. The overall bucket above
# bounds what Python sends; this one what the program sends (a reflector's output,
# RFC 4380 §7: an RA is about twice its RS), far above what Python could answer.
DEFAULT_XDP_RA_PPS = 1_000_000.0
XDP_MODES = ("auto", "native", "generic", "off")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    primary: ipaddress.IPv4Address
    secondary: ipaddress.IPv4Address
    port: int = constants.TEREDO_PORT
    native_ipv6: bool = True
    per_source: Limits = Limits(DEFAULT_SOURCE_PPS, DEFAULT_SOURCE_BPS)
    overall: Optional[Limits] = Limits(DEFAULT_GLOBAL_PPS, DEFAULT_GLOBAL_BPS)
    max_sources: int = DEFAULT_MAX_SOURCES
    stats_interval: float = 0.0
    # auto: native XDP, or generic where native XDP_TX would be lost (a veth whose
    # peer has neither XDP nor GRO), or none when the kernel refuses: the daemon
    # answers everything then, as with "off".
    xdp_mode: str = "auto"
    xdp_ra_pps: float = DEFAULT_XDP_RA_PPS
    pin_root: Optional[str] = None


def preflight(config: ServerConfig) -> None:
    """What the server needs, checked before any socket is opened: CAP_NET_RAW for
    the raw IPv6 socket of --native-ipv6 (the default), and both addresses on an
    interface of this host that is up. One line, exit 2 or 1 (daemon/preflight.py).
    Without --native-ipv6 a server needs no privilege (UDP 3544 is not a
    privileged port)."""
    from ..daemon import preflight as pf

    checks = []
    if config.native_ipv6:
        checks.append(lambda: pf.capabilities(
            {"CAP_NET_RAW": pf.CAP_NET_RAW}, who="xdp-teredo server --native-ipv6",
            fix="run it as root (sudo), or with --no-native-ipv6"))
    checks += [lambda: pf.local_address(config.primary, "--bind"),
               lambda: pf.local_address(config.secondary, "--bind2")]
    pf.require(checks)


def server_addresses(bind: str, bind2: Optional[str] = None):
    """(primary, secondary) from the command line, or UsageError naming the problem.

    Both must be global unicast IPv4 (ipv4.is_global_unicast: what Miredo's clients
    accept; the documentation ranges are). The secondary defaults to primary + 1:
    Miredo's clients (ServerAddress2) and Windows assume that.
    """
    primary = _global_address("--bind", bind)
    if bind2 is None:
        if int(primary) == 0xFFFFFFFF:
            raise UsageError(f"--bind {primary}: no primary + 1 address; give --bind2")
        secondary = _global_address("--bind2 (default: --bind + 1)", str(primary + 1))
    else:
        secondary = _global_address("--bind2", bind2)
    if secondary == primary:
        raise UsageError(f"--bind2 {secondary}: must differ from --bind")
    return primary, secondary


def _global_address(option: str, value: str) -> ipaddress.IPv4Address:
    try:
        address = as_ipv4(value.strip() if isinstance(value, str) else value)
    except UsageError as err:
        raise UsageError(f"{option}: {err}") from None
    if not is_global_unicast(address):
        raise UsageError(f"{option} {address}: not a global unicast IPv4 address "
                         "(a Teredo server needs public addresses, RFC 4380 §5.3)")
    return address


def config_from_options(bind: str, bind2: Optional[str] = None, *, native_ipv6: bool = True,
                        source_pps: float = DEFAULT_SOURCE_PPS,
                        source_bps: float = DEFAULT_SOURCE_BPS,
                        global_pps: float = DEFAULT_GLOBAL_PPS,
                        global_bps: float = DEFAULT_GLOBAL_BPS,
                        max_sources: int = DEFAULT_MAX_SOURCES,
                        stats_interval: float = 0.0, xdp_mode: str = "auto",
                        xdp_ra_pps: float = DEFAULT_XDP_RA_PPS) -> ServerConfig:
    """A ServerConfig from the command line's values; UsageError on bad ones.

    global_pps or global_bps of 0 turns the overall bucket off.
    """
    primary, secondary = server_addresses(bind, bind2)
    if secondary != primary + 1:
        log.get("xdp_teredo.server").warning(
            "secondary_not_consecutive", primary=str(primary), secondary=str(secondary),
            hint="Miredo clients assume primary + 1 unless ServerAddress2 says otherwise")
    try:
        per_source = Limits(source_pps, source_bps)
        overall = Limits(global_pps, global_bps) if global_pps and global_bps else None
    except ValueError as err:
        raise UsageError(f"rate limit: {err}") from None
    if stats_interval < 0:
        raise UsageError(f"--stats-interval {stats_interval}: must be 0 (off) or positive")
    if xdp_mode not in XDP_MODES:
        raise UsageError(f"--xdp-mode must be one of {', '.join(XDP_MODES)}, not {xdp_mode!r}")
    if xdp_ra_pps < 0:
        raise UsageError(f"--xdp-ra-pps {xdp_ra_pps}: must be 0 (no limit) or positive")
    return ServerConfig(primary=primary, secondary=secondary, native_ipv6=native_ipv6,
                        per_source=per_source, overall=overall, max_sources=max_sources,
                        stats_interval=stats_interval, xdp_mode=xdp_mode,
                        xdp_ra_pps=xdp_ra_pps)
