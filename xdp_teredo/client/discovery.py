"""Local client discovery (RFC 4380 §5.2.8, as Miredo 1.3 has it).

Two Teredo clients behind the same NAT reach each other through their mapped
addresses only if the NAT hairpins, which Linux's does not (nor do many home
routers): their bubbles and packets to the NAT's public address never come back in.
So each client, once qualified and every 200-300 s after, multicasts a discovery
bubble (IPv6 source: its Teredo address, destination ff02::1, next header 59) to
224.0.0.253:3544 on its own link, from its Teredo socket: the UDP source tells its
local address and port. A client that hears it answers with a direct bubble to that
local address; the two then trust each other there (teredo/peers.py,
`on_local_discovery`, `_incoming_local`) and the fast path carries their traffic
between local addresses, the NAT never involved.

Only where the NIC's address is not global (a client with a public address has no
NAT to get around: Miredo 1.3 skips those interfaces too). This module owns the
multicast socket and its timer; the daemon calls `start(daemon)` once in set-up.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from typing import Optional

from ..errors import MalformedPacket
from ..teredo import constants, encap
from ..teredo.ipv4 import is_global_unicast
from ..teredo.packet import build_bubble, is_bubble

DISCOVERY_GROUP = ipaddress.IPv4Address(constants.TEREDO_DISCOVERY_GROUP)
ALL_NODES = ipaddress.IPv6Address("ff02::1")
_BATCH = 32


def nic_network(ifindex: int, address) -> Optional[ipaddress.IPv4Network]:
    """The IPv4 network `address` has on interface `ifindex` (netlink), or None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET, index=ifindex):
            if msg.get_attr("IFA_ADDRESS") == str(address):
                return ipaddress.IPv4Interface(f"{address}/{msg['prefixlen']}").network
    return None


class LocalDiscovery:
    """The discovery socket, its timer, and what they tell the daemon's PeerList."""

    def __init__(self, daemon, network: ipaddress.IPv4Network, sock: socket.socket, *,
                 uniform=random.uniform):
        self.daemon = daemon
        self.uniform = uniform          # the interval's jitter (§5.2.8: 200-300 s)
        self.network = network
        self.sock = sock
        self.sent_for = None            # the Teredo address the last bubble announced
        self.next_at: Optional[float] = None
        self.received = 0

    # -- the loop's callbacks --

    def due(self) -> Optional[float]:
        address = self.daemon.address
        if address is None:
            return None
        if address != self.sent_for:
            return 0.0   # a new address: say so at once (due whenever the loop looks)
        return self.next_at

    def send(self, now: float) -> None:
        address = self.daemon.address
        self.sent_for = address
        self.next_at = now + self.uniform(constants.DISCOVERY_INTERVAL_MIN,
                                 constants.DISCOVERY_INTERVAL_MAX)
        if address is not None:
            self.daemon.send(build_bubble(address, ALL_NODES), DISCOVERY_GROUP,
                             constants.TEREDO_PORT, "discovery_bubble_sent")

    def readable(self) -> None:
        for _ in range(_BATCH):
            try:
                payload, (host, port) = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                return
            self.on_datagram(payload, ipaddress.IPv4Address(host), port)

    def on_datagram(self, payload: bytes, ip, port: int) -> None:
        counters = self.daemon.counters
        try:
            teredo = encap.parse_udp_payload(payload)
        except MalformedPacket:
            counters.drop("discovery_malformed")
            return
        ipv6 = teredo.ipv6
        if not is_bubble(ipv6) or ipv6.dst != ALL_NODES:
            counters.drop("discovery_not_a_bubble")
            return
        if ipv6.src == self.daemon.address:
            return  # our own, looped back
        if self.daemon.address is None:
            counters.drop("discovery_not_qualified")
            return
        counters["discovery_bubble_received"] += 1
        self.daemon.carry_out(self.daemon.peers.on_local_discovery(ipv6.src, ip, port))

    def close(self) -> None:
        self.sock.close()


def _open_socket(nic) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound to the group: only discovery bubbles arrive here, never the
        # unicast traffic of a Teredo server or relay on this host's port 3544.
        sock.bind((str(DISCOVERY_GROUP), constants.TEREDO_PORT))
        mreqn = struct.pack("4s4si", DISCOVERY_GROUP.packed, nic.ipv4.packed, nic.ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    except OSError:
        sock.close()
        raise
    return sock


def start(daemon) -> Optional[LocalDiscovery]:
    """Discovery on the daemon's NIC, its undo pushed on the teardown; None (and a
    log line saying why) where it does not apply or cannot run."""
    nic = daemon.plan.nic
    if is_global_unicast(nic.ipv4):
        daemon.log.info("local_discovery_off", reason="the NIC's address is global: no NAT")
        return None
    try:
        network = nic_network(nic.ifindex, nic.ipv4)
        if network is None:
            raise OSError(f"{nic.ipv4} is not on {nic.name}")
        sock = _open_socket(nic)
    except OSError as err:
        daemon.log.warning("local_discovery_off", reason=str(err))
        return None
    disc = LocalDiscovery(daemon, network, sock)
    daemon.teardown.push_always("discovery socket", disc.close)
    # Our link's network becomes sendable, and its peers trusted at their local
    # addresses (teredo/peers.py); the group too, from the Teredo socket.
    daemon.peers.local_networks = (network,)
    daemon.sock.also_allowed = (network, ipaddress.IPv4Network(f"{DISCOVERY_GROUP}/32"))
    daemon.loop.add_reader(sock, disc.readable)
    daemon.loop.deadline(disc.due, disc.send)
    daemon.log.info("local_discovery", network=str(network), group=str(DISCOVERY_GROUP))
    return disc
