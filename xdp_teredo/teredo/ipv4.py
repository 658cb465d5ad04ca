"""Which IPv4 addresses a Teredo node may send to.

RFC 4380 §5.2.3/§5.4.1 (and Miredo before every send) refuse to use a mapped address
that is not global unicast: a Teredo address embedding 10.0.0.1 must not make us
spray UDP into our own LAN. We refuse exactly what Miredo's libteredo/v4global.c
refuses, no more, because interoperating with it is the point:

- 0.0.0.0/8, 10.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16;
- 192.88.99.0/24 (6to4 relay anycast, RFC 3068);
- 224.0.0.0/3: multicast (224/4) and class E (240/4), which also covers
  255.255.255.255, the limited broadcast that RFC 4380 names.

Deliberately accepted, unlike `ipaddress.IPv4Address.is_global`:
- the documentation ranges 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24: Miredo
  accepts them (its own test checks 192.0.2.10) and our test labs are built on them;
- 100.64.0.0/10 (RFC 6598 shared address space, carrier-grade NAT): Miredo accepts
  it, and it is a legitimate mapped address when the Teredo server sits inside the
  carrier's NAT, which is where a self-hosted server on a CGNAT network ends up.
"""

from __future__ import annotations

import ipaddress
from typing import Union

from xdp_teredo.errors import UsageError

IPv4Like = Union[ipaddress.IPv4Address, str, int]

# Miredo's refusals, in its order (libteredo/v4global.c).
REFUSED_NETWORKS = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",        # "this network" (RFC 1122)
        "10.0.0.0/8",       # private (RFC 1918)
        "127.0.0.0/8",      # loopback
        "169.254.0.0/16",   # link-local (RFC 3927)
        "172.16.0.0/12",    # private (RFC 1918)
        "192.168.0.0/16",   # private (RFC 1918)
        "192.88.99.0/24",   # 6to4 relay anycast (RFC 3068)
        "224.0.0.0/3",      # multicast, class E and the limited broadcast
    )
)


def as_ipv4(value: IPv4Like) -> ipaddress.IPv4Address:
    """An IPv4Address from an address, a dotted string or an integer.

    Raises UsageError (one line, naming the value) for anything else, since such
    values come from configuration or the command line.
    """
    if isinstance(value, ipaddress.IPv4Address):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"not an IPv4 address: {value!r}")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise UsageError(f"not an IPv4 address: {value!r}") from None


def is_global_unicast(address: IPv4Like) -> bool:
    """True if Teredo may send to `address` (see the module docstring for the list)."""
    ip = as_ipv4(address)
    return not any(ip in net for net in REFUSED_NETWORKS)
