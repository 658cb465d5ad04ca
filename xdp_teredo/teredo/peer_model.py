"""What the peer list (peers.py) takes and gives: the packets it is handed
(`Incoming`), its entries (`Peer`), and the actions it returns for the daemon to
carry out (RFC 4380 §5.2.3-§5.2.9, §5.4.1). Pure data, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Tuple, Union

from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.constants import PEER_RECENT, TEREDO_PREFIX

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address


# IPv6Address(an IPv6Address) formats it and parses the text again: per packet,
# that was a good part of the slow path's time. These skip it when the type is right.
def _ipv6(address) -> IPv6Address:
    return address if isinstance(address, IPv6Address) else IPv6Address(address)


def _ipv4(address) -> IPv4Address:
    return address if isinstance(address, IPv4Address) else IPv4Address(address)


def teredo_parts(address: IPv6Address) -> Optional[Tuple[IPv4Address, IPv4Address, int]]:
    """(server, mapped IPv4, mapped port) embedded in a Teredo address (§4), else None."""
    address = _ipv6(address)
    if address not in TEREDO_PREFIX:  # is_teredo(), without parsing the address again
        return None
    decoded = TeredoAddress.from_ipv6(address)
    return decoded.server, decoded.client, decoded.port


# --- actions --------------------------------------------------------------------


@dataclass(frozen=True)
class _AtMapping:
    """An action about `peer` at its mapping ip:port."""

    peer: IPv6Address
    ip: IPv4Address
    port: int


@dataclass(frozen=True)
class SendDirect(_AtMapping):
    """Encapsulate `packet` to ip:port (the peer's mapping)."""

    packet: bytes


@dataclass(frozen=True)
class SendDirectBubble(_AtMapping):
    """A bubble (§2.8) to `peer`, sent to ip:port.

    source: its IPv6 source; None: the daemon's (a client: its Teredo address).
    A challenge (security.bubble_challenge) when an answer must prove the mapping.
    """

    source: Optional[IPv6Address] = field(default=None, compare=False)


@dataclass(frozen=True)
class SendIndirectBubble:
    """A bubble to `peer`, sent to its Teredo server (`server`:3544) to relay (§5.2.6);
    `source` as for SendDirectBubble."""

    peer: IPv6Address
    server: IPv4Address
    source: Optional[IPv6Address] = field(default=None, compare=False)


@dataclass(frozen=True)
class SendEcho:
    """An ICMPv6 echo request to `peer` carrying `nonce`, through our server (§5.2.9)."""

    peer: IPv6Address
    nonce: bytes


@dataclass(frozen=True)
class Deliver:
    """Hand the decapsulated IPv6 `packet` to the tunnel interface."""

    packet: bytes


@dataclass(frozen=True)
class Unreachable:
    """`packet` to `peer` cannot be sent; the orchestrator may answer with an
    ICMPv6 destination unreachable (Miredo: code 3, address unreachable)."""

    peer: IPv6Address
    packet: bytes


@dataclass(frozen=True)
class PeerTrusted(_AtMapping):
    """`peer` is trusted with mapping ip:port: the fast path may take over."""


@dataclass(frozen=True)
class PeerRemoved:
    """`peer` left the list (reason: expired, evicted, flushed): forget it in BPF too."""

    peer: IPv6Address
    reason: str


Action = Union[SendDirect, SendDirectBubble, SendIndirectBubble, SendEcho, Deliver,
               Unreachable, PeerTrusted, PeerRemoved]


# --- inputs and entries ---------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A packet the fast path punted, already parsed by the caller.

    source/destination: the IPv6 header's addresses; udp_ip/udp_port: the outer
    source; packet: the IPv6 packet (what Deliver hands on); bubble: next header
    59 and no payload (§2.8); echo_nonce: for an ICMPv6 echo reply, the nonce it
    carries (None otherwise); from_server: the outer source is our server:3544;
    origin: the origin indication (ip, port), de-obfuscated, if any.
    """

    source: IPv6Address
    destination: IPv6Address
    udp_ip: IPv4Address
    udp_port: int
    packet: bytes = b""
    bubble: bool = False
    echo_nonce: Optional[bytes] = None
    from_server: bool = False
    origin: Optional[Tuple[IPv4Address, int]] = None


@dataclass
class QueuedPacket:
    """A packet held until its peer is trusted (§5.2.4: sent, or delivered, then)."""

    packet: bytes
    incoming: bool
    # For held incoming packets: the relay they came through (Miredo delivers
    # them only if the test's answer comes from the same one).
    udp_ip: Optional[IPv4Address] = None
    udp_port: Optional[int] = None


@dataclass
class Peer:
    """One entry of the list (§5.2.4): its mapping and trust, when it was last heard
    from and sent to, the bubbles and the connectivity test under way, the queue."""

    address: IPv6Address
    created: float
    mapped_ip: Optional[IPv4Address] = None
    mapped_port: Optional[int] = None
    trusted: bool = False
    last_rx: Optional[float] = None
    last_tx: Optional[float] = None  # data, bubbles and echo requests alike
    # Send times of the bubbles not answered yet (§5.2.6); cleared by any receive.
    bubbles: List[float] = field(default_factory=list)
    # Direct connectivity test (§5.2.9): the outstanding nonce, tries sent, when the
    # next try is due; `echo_failed` once all tries went unanswered.
    nonce: Optional[bytes] = None
    echo_tries: int = 0
    echo_deadline: Optional[float] = None
    echo_failed: bool = False
    queue: Deque[QueuedPacket] = field(default_factory=deque)
    queue_bytes: int = 0

    @property
    def mapping(self) -> Optional[Tuple[IPv4Address, int]]:
        if self.mapped_ip is None:
            return None
        return self.mapped_ip, self.mapped_port

    @property
    def bubble_count(self) -> int:
        return len(self.bubbles)

    def last_activity(self) -> float:
        return max(t for t in (self.created, self.last_rx, self.last_tx) if t is not None)

    def is_recent(self, now: float) -> bool:
        """§5.2.3/§5.2.4: received from in the last PEER_RECENT seconds."""
        return self.last_rx is not None and now - self.last_rx <= PEER_RECENT
