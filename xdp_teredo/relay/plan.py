"""The relay's plan: what the command line says, and the checks on the devices it names.

A relay (RFC 4380 §5.4) serves 2001::/32 to a native IPv6 network: it needs its
two sides (IF4 toward the Teredo clients, IF6 toward native IPv6; one device may
be both), a public IPv4 address the clients are told, and IPv6 forwarding.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import List, Optional

from ..errors import RuntimeFailure, UsageError
from ..net.names import DEFAULT_TUNNEL
from ..teredo import constants, guard
from ..teredo.ipv4 import as_ipv4, is_global_unicast

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address



@dataclass(frozen=True)
class RelayConfig:
    """What the command line says."""

    ipv4_iface: str
    ipv6_iface: str
    bind: Optional[IPv4Address] = None     # default: IF4's first global unicast IPv4
    port: int = constants.TEREDO_PORT
    tunnel: str = DEFAULT_TUNNEL
    path: str = "auto"                     # auto | xdp | tc (datapath/redirect.py)
    max_peers: int = constants.RELAY_PEER_MAX
    learn: bool = True                     # the data path learns §5.4.2 clients itself
    pin_root: Optional[str] = None         # default: datapath.stats.DEFAULT_PIN_ROOT
    stats_interval: float = 0.0
    announce_table: Optional[int] = None   # relay/announce.py: 2001::/32 there while serving
    # The inbound guard for the clients it serves (docs/security.md): open by
    # default, a relay carries whatever its clients asked for and more.
    inbound: guard.Settings = guard.Settings(policy=guard.Policy.OPEN)
    # Who the relay becomes after set-up (daemon/privileges.py); "root": stay.
    user: str = "nobody"


@dataclass(frozen=True)
class Device:
    name: str
    ifindex: int


# --------------------------------------------------------------------------- preflight

def preflight(config: RelayConfig) -> None:
    """What the relay needs of the machine and of IF4/IF6, checked before anything is
    compiled or touched: root, BPF, tun, both devices up, no XDP program of another
    tool on them (unless --path tc). One line, exit 2 or 1 (daemon/preflight.py)."""
    from ..daemon import preflight as pf

    devices = {config.ipv4_iface: "--ipv4-iface"}
    devices.setdefault(config.ipv6_iface, "--ipv6-iface")  # one device may be both sides
    checks = [lambda: pf.capabilities(who="xdp-teredo relay"), pf.bpf_syscall, pf.tun]
    checks += [lambda n=name, o=option: pf.interface(n, o)
               for name, option in devices.items()]
    if config.path != "tc":
        checks += [lambda n=name, o=option: pf.foreign_xdp(
            n, o, avoid="detach it (ip link set dev NAME xdp off), or use --path tc")
            for name, option in devices.items()]
    pf.require(checks)


# --------------------------------------------------------------------------- set-up help


def device(name: str, option: str) -> Device:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise UsageError(f"{option} {name}: no such interface in this network namespace")
    return Device(name, found[0])


def addresses(ifindex: int, family: int) -> List[ipaddress._BaseAddress]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                for a in ipr.get_addr(family=family, index=ifindex)]


def bind_address(config: RelayConfig, ipv4: Device) -> IPv4Address:
    """The relay's IPv4 address: given, or the first global unicast one on IF4.
    Clients are told it in every packet the relay sends; it must be public."""
    if config.bind is not None:
        address = as_ipv4(config.bind)
        if not is_global_unicast(address):
            raise UsageError(f"--bind {address}: not a global unicast IPv4 address "
                             "(Teredo clients refuse to send to private ones)")
        return address
    for address in addresses(ipv4.ifindex, socket.AF_INET):
        if is_global_unicast(address):
            return address
    raise UsageError(f"--ipv4-iface {ipv4.name} has no global unicast IPv4 address; "
                     "give one with --bind")


def sysctl(path: str) -> Optional[str]:
    try:
        with open(f"/proc/sys/net/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def check_ipv6_forwarding(*devices: Device) -> None:
    """A relay is an IPv6 router: the kernel forwards the slow path's packets, and
    bpf_fib_lookup refuses IPv6 lookups on a device without forwarding."""
    off = [d.name for d in devices if sysctl(f"ipv6/conf/{d.name}/forwarding") != "1"]
    if off:
        raise RuntimeFailure(
            f"IPv6 forwarding is off on {', '.join(off)}: a relay forwards IPv6 "
            "(sysctl -w net.ipv6.conf.all.forwarding=1)")


def first_global_ipv6(*devices: Device) -> Optional[IPv6Address]:
    """The source of the relay's own ICMPv6 errors (RFC 4443 §2.2: an address of ours)."""
    for device in devices:
        for address in addresses(device.ifindex, socket.AF_INET6):
            if not (address.is_link_local or address.is_multicast or address.is_loopback
                    or address.is_unspecified or address in constants.TEREDO_PREFIX):
                return address
    return None


def bubble_source(rng=None) -> IPv6Address:
    """A link-local source for the relay's bubbles, as Miredo's relay uses (fe80::/64,
    64 random bits, universal/local bit clear as RFC 4291 §2.5.1 wants for them)."""
    iid = bytearray((rng or os.urandom)(8))
    iid[0] &= 0xFC
    return IPv6Address(bytes.fromhex("fe80000000000000") + bytes(iid))
