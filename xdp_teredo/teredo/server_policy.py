"""What a Teredo server does with one received datagram (RFC 4380 §5.3.1).

Pure: the daemon (xdp_teredo/server/daemon.py) hands `ServerPolicy.handle` what it
received (the server address it arrived on, the UDP source, the payload) and sends
what comes back: nothing, a `SendUdp` (from the primary or secondary address), or a
`SendIpv6` for the raw IPv6 socket. Every datagram ends in exactly one outcome, and
every outcome has a counter: the RS answered, a bubble or echo forwarded, rate
limited, or dropped for one named reason (DROP_REASONS).

The checks, in the order applied (§5.3.1 numbers its accept rules; the order here
puts the cheapest first, which changes only which counter a doubly-bad packet hits):

1. The datagram is not oversized, its IPv4 source is global unicast (§5.3.1; the
   same list as Miredo's is_ipv4_global_unicast), and not one of our own addresses
   (Miredo's guard against a server forwarding to itself in a loop).
2. The payload is a well-formed Teredo packet: optional authentication and origin
   headers, then a valid IPv6 packet (§5.1.1, §5.3.1 "MUST be silently discarded").
3. It is a bubble or an ICMPv6 message; anything else "SHOULD be discarded" (§5.3.1):
   a server never carries data.
4. A Router Solicitation from a link-local source to ff02::2 (or to the server's own
   link-local address, which Miredo also answers) gets a Router Advertisement.
5. Otherwise the packet is a candidate for forwarding, accepted (§5.3.1) when
   - its IPv6 source is a Teredo address embedding exactly the UDP source, or
   - its IPv6 source is not a Teredo address and its destination is a Teredo address
     of this server (a relay's indirect bubble, §5.4.1; Miredo's clients and relays
     send bubbles from their link-local address).
6. Forwarding: to a Teredo address of this server's primary IPv4: over UDP from the
   primary address to the mapped address embedded in it, with an origin indication
   of the sender (§5.3.1: how indirect bubbles and connectivity tests reach
   clients behind NATs). To a native global IPv6 address: only the echo request of
   a direct connectivity test (§5.2.9) of one of our clients, through the raw IPv6
   socket, hop limit decremented. Only bubbles and small echoes are forwarded at all
   (SERVER_FORWARD_MAX_PAYLOAD, Miredo's bound): nothing that could carry data.
7. Every send passes the rate limiter (ratelimit.py) first, charged to the IPv4
   address that asked and to the address that would receive it.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
from typing import List, Optional, Tuple, Union

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.encap import (
    AuthHeader,
    OriginIndication,
    build_udp_payload,
    parse_udp_payload,
)
from xdp_teredo.teredo.icmpv6 import (
    PrefixInformation,
    build_router_advertisement,
    parse_echo,
    parse_router_solicitation,
)
from xdp_teredo.teredo.ipv4 import IPv4Like, as_ipv4, is_global_unicast
from xdp_teredo.teredo.packet import Ipv6Packet, is_bubble
from xdp_teredo.teredo.ratelimit import RateLimiter

# The largest datagram looked at: a whole tunnel-MTU IPv6 packet behind the longest
# headers allowed (authentication with a 255-byte client id and auth value: 523
# bytes; origin indication: 8). Everything a server handles is far smaller.
MAX_DATAGRAM = constants.TEREDO_MTU + 4 + 255 + 255 + constants.AUTH_NONCE_LEN + 1 + constants.ORIGIN_INDICATION_LEN

# Outcomes that are not drops.
RS_ANSWERED = "rs_answered"
FORWARDED_BUBBLE = "forwarded_bubble"
FORWARDED_ECHO = "forwarded_echo"
FORWARDED_NATIVE_ECHO = "forwarded_native_echo"
RATE_LIMITED = "rate_limited"
SENT_OUTCOMES = (RS_ANSWERED, FORWARDED_BUBBLE, FORWARDED_ECHO, FORWARDED_NATIVE_ECHO)

# Why a datagram was dropped; each is a counter.
DROP_REASONS = {
    "oversize": "longer than MAX_DATAGRAM",
    "source_not_global": "IPv4 source is not global unicast (§5.3.1)",
    "loop": "IPv4 source is one of this server's own addresses",
    "malformed": "not a valid Teredo packet: headers, IPv6 or ICMPv6 (§5.3.1)",
    "data": "neither a bubble nor ICMPv6: a server carries no data (§5.3.1)",
    "not_solicitation": "addressed to the server (ff02::2 or its link-local) but not an RS",
    "rs_not_link_local": "Router Solicitation from a non-link-local source (§5.3.1)",
    "rs_destination": "Router Solicitation to neither ff02::2 nor the server's link-local",
    "source_mismatch": "Teredo IPv6 source does not embed the UDP source (§5.3.1)",
    "not_ours": "non-Teredo source and destination not a client of this server (§5.3.1)",
    "destination_other_server": "Teredo destination whose server is not this one",
    "destination_not_global": "destination (mapped IPv4 or native IPv6) is not global",
    "icmpv6_not_echo": "ICMPv6 other than an echo: never forwarded",
    "echo_too_big": "echo longer than SERVER_FORWARD_MAX_PAYLOAD: could carry data",
    "native_not_echo_request": "only echo requests are forwarded to native IPv6 (§5.2.9)",
    "source_other_server": "native forwarding asked by a client of another server",
    "native_disabled": "native IPv6 forwarding is off on this server",
    "hop_limit_exceeded": "native forwarding would take the hop limit to 0",
}


@dataclasses.dataclass(frozen=True)
class Received:
    """One datagram as the server socket saw it."""

    local: ipaddress.IPv4Address     # the server address it arrived on
    src_ip: ipaddress.IPv4Address    # UDP source as seen (the client's mapping)
    src_port: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class SendUdp:
    """A datagram to send from the socket bound to `via` (primary or secondary)."""

    via: ipaddress.IPv4Address
    dst_ip: ipaddress.IPv4Address
    dst_port: int
    payload: bytes


@dataclasses.dataclass(frozen=True)
class SendIpv6:
    """A whole IPv6 packet for the raw IPv6 socket (native forwarding)."""

    dst: ipaddress.IPv6Address
    packet: bytes


Send = Union[SendUdp, SendIpv6]
_Decision = Tuple[str, Optional[Send]]

_ALL_ROUTERS = ipaddress.IPv6Address(constants.ALL_ROUTERS)
# The rate limiter key prefix of the RAs an address is sent (see _solicitation).
_RA_BUCKET = "ra"
_PORT_OBFUSCATED = constants.TEREDO_PORT ^ 0xFFFF


def server_link_local(primary: IPv4Like) -> ipaddress.IPv6Address:
    """The link-local source of the server's RAs: fe80::8000:f227:<~primary>.

    The interface identifier is laid out like a Teredo address's (RFC 4380 §4):
    cone flag, obfuscated port 3544, obfuscated primary IPv4. Miredo 1.2.6's
    miredo-server sends exactly this (fe80::8000:f227:3fff:fdfe for 192.0.2.1,
    captured in our lab), as did Microsoft's servers. Clients do not check it.
    """
    ip = int(as_ipv4(primary))
    return ipaddress.IPv6Address((0xFE80 << 112) | (constants.FLAG_CONE << 48)
                                 | (_PORT_OBFUSCATED << 32) | (ip ^ 0xFFFFFFFF))


def teredo_prefix_of(server: IPv4Like) -> ipaddress.IPv6Network:
    """2001:0:<server IPv4>::/64, the prefix a server advertises (§5.2.1, §5.3.1)."""
    return ipaddress.IPv6Network(((constants.TEREDO_PREFIX_HI32 << 96) | (int(as_ipv4(server)) << 64), 64))


def _is_global_ipv6(address: ipaddress.IPv6Address) -> bool:
    # RFC 4291 §2.4, as Miredo's server checks before forwarding anywhere.
    return not (address.is_unspecified or address.is_loopback
                or address.is_link_local or address.is_multicast)


def _asks_cone_test(link_local: ipaddress.IPv6Address) -> bool:
    """The cone bit in the RS's link-local source (RFC 4380 §5.2.1: fe80::8000:...)."""
    return bool((int(link_local) >> 48) & constants.FLAG_CONE)


class ServerPolicy:
    """The decisions of a Teredo server bound to `primary` and `secondary`.

    `limiter` bounds what any one IPv4 address can make us send. `native_ipv6`:
    whether echo requests may be forwarded to native IPv6 (the host must have it).
    `mtu`: the MTU option of our RAs (Miredo's server sends 1280).
    """

    def __init__(self, primary: IPv4Like, secondary: IPv4Like, *, limiter: RateLimiter,
                 native_ipv6: bool = False, mtu: int = constants.TEREDO_MTU):
        self.primary = as_ipv4(primary)
        self.secondary = as_ipv4(secondary)
        if self.primary == self.secondary:
            raise ValueError("a Teredo server needs two different addresses")
        if not constants.TEREDO_MTU <= mtu <= constants.RA_MTU_MAX:
            raise ValueError(f"RA MTU {mtu} outside {constants.TEREDO_MTU}..{constants.RA_MTU_MAX}")
        self.limiter = limiter
        self.native_ipv6 = native_ipv6
        self.mtu = mtu
        self.link_local = server_link_local(self.primary)
        self.prefix = teredo_prefix_of(self.primary)
        self._outcomes: "collections.Counter[str]" = collections.Counter()
        # The RA only depends on its destination (the client's link-local: Miredo
        # uses one of two), so its bytes are built once per destination.
        self._ra_cache: dict = {}

    # -- the one entry point ---------------------------------------------------------

    def handle(self, datagram: Received) -> List[Send]:
        """The datagrams to send in answer to `datagram` (zero or one)."""
        outcome, send = self._decide(datagram)
        self._outcomes["received"] += 1
        self._outcomes[outcome] += 1
        return [send] if send is not None else []

    def counters(self) -> dict:
        """Every counter, zeros included, as a JSON-friendly dict."""
        o = self._outcomes
        dropped = {reason: o[reason] for reason in DROP_REASONS}
        return {
            "received": o["received"],
            **{name: o[name] for name in SENT_OUTCOMES},
            RATE_LIMITED: o[RATE_LIMITED],
            "dropped_total": sum(dropped.values()),
            "dropped": dropped,
        }

    # -- decisions -------------------------------------------------------------------

    def _decide(self, d: Received) -> _Decision:
        if len(d.payload) > MAX_DATAGRAM:
            return "oversize", None
        if not is_global_unicast(d.src_ip):
            return "source_not_global", None
        if d.src_ip == self.primary or d.src_ip == self.secondary:
            return "loop", None
        try:
            teredo = parse_udp_payload(d.payload)
        except MalformedPacket:
            return "malformed", None
        ipv6 = teredo.ipv6
        bubble = is_bubble(ipv6)
        if not bubble and ipv6.next_header != constants.IPPROTO_ICMPV6:
            return "data", None
        is_rs = (not bubble and ipv6.payload[:1] == bytes((constants.ICMPV6_ROUTER_SOLICITATION,)))
        if is_rs or ipv6.dst == _ALL_ROUTERS or ipv6.dst == self.link_local:
            return self._solicitation(d, ipv6, teredo.auth, is_rs)
        return self._forward(d, ipv6, bubble)

    def _solicitation(self, d: Received, ipv6: Ipv6Packet, auth: Optional[AuthHeader],
                      is_rs: bool) -> _Decision:
        """§5.3.1: answer an RS with an RA carrying the origin indication and our prefix."""
        if not is_rs:
            return "not_solicitation", None
        if not ipv6.src.is_link_local:
            return "rs_not_link_local", None
        if ipv6.dst != _ALL_ROUTERS and ipv6.dst != self.link_local:
            return "rs_destination", None
        try:
            parse_router_solicitation(ipv6)
        except MalformedPacket:
            return "malformed", None
        # §5.3.1: the RA leaves from the address the RS arrived on, unless the client
        # asks for the cone test (cone bit in its link-local), when it leaves from the
        # other one, so that only a cone NAT lets it in. Miredo does the same.
        via = d.local
        if _asks_cone_test(ipv6.src):
            via = self.secondary if d.local == self.primary else self.primary
        payload = build_udp_payload(
            self._router_advertisement(ipv6.src),
            # Echo the client's nonce (§5.1.1): Miredo only accepts an RA that does.
            # Only the nonce: we do not implement secure qualification, so there is no
            # client id or auth value to answer with, and the confirmation byte is 0.
            auth=AuthHeader(nonce=auth.nonce) if auth is not None else None,
            origin=OriginIndication(port=d.src_port, address=d.src_ip),
        )
        # An RA is ~2x an RS: charged to the address it goes to (the RS's source), in
        # a bucket of its own: forwarded bubbles aimed at a client (charged to its
        # address, below) must not use up what its refreshes need (§5.2.7); else a
        # flood of spoofed bubbles towards it would cost it its qualification.
        if not self.limiter.allow(((_RA_BUCKET, d.src_ip),), len(payload)):
            return RATE_LIMITED, None
        return RS_ANSWERED, SendUdp(via=via, dst_ip=d.src_ip, dst_port=d.src_port,
                                    payload=payload)

    def _router_advertisement(self, dst: ipaddress.IPv6Address) -> bytes:
        ra = self._ra_cache.get(dst)
        if ra is None:
            if len(self._ra_cache) >= 16:  # bounded; only a handful ever occur
                self._ra_cache.clear()
            ra = self._ra_cache[dst] = build_router_advertisement(
                self.link_local, dst,
                # RFC 4861 §4.6.2 fields as Miredo sends them: A flag, infinite lifetimes.
                prefixes=[PrefixInformation(self.prefix)],
                mtu=self.mtu, retrans_timer=constants.RA_RETRANS_TIMER_MS)
        return ra

    def _forward(self, d: Received, ipv6: Ipv6Packet, bubble: bool) -> _Decision:
        src, dst = ipv6.src, ipv6.dst
        sender: Optional[TeredoAddress] = None
        # A non-Teredo source may be anything, link-local included: Miredo's clients
        # and relays send their indirect bubbles from fe80::ffff:ffff:ffff (or the
        # cone link-local), and §5.3.1 accepts any non-Teredo source towards our clients.
        if src in constants.TEREDO_PREFIX:
            sender = TeredoAddress.from_ipv6(src)
            if not sender.embeds(d.src_ip, d.src_port):
                return "source_mismatch", None
        if dst in constants.TEREDO_PREFIX:
            return self._forward_teredo(d, ipv6, bubble, TeredoAddress.from_ipv6(dst))
        if sender is None:
            # §5.3.1: a non-Teredo source is accepted only towards our own clients.
            return "not_ours", None
        return self._forward_native(d, ipv6, bubble, sender)

    def _forward_teredo(self, d: Received, ipv6: Ipv6Packet, bubble: bool,
                        target: TeredoAddress) -> _Decision:
        """§5.3.1: to a client of ours, over UDP, with the sender's origin indication."""
        if target.server != self.primary:
            return "destination_other_server", None
        if not is_global_unicast(target.client):
            return "destination_not_global", None
        if not bubble:
            refused = self._echo_refusal(ipv6)
            if refused:
                return refused, None
        # Only the IPv6 packet travels on: headers the sender put in front are ours to
        # write, not theirs (the origin is what we saw, not what they claim).
        payload = build_udp_payload(ipv6, origin=OriginIndication(port=d.src_port,
                                                                  address=d.src_ip))
        if not self.limiter.allow((d.src_ip, target.client), len(payload)):
            return RATE_LIMITED, None
        # From the primary address: the one the client's NAT has a mapping for, as
        # the client refreshes it with its RS every 30 s (§5.2.7).
        send = SendUdp(via=self.primary, dst_ip=target.client, dst_port=target.port,
                       payload=payload)
        return (FORWARDED_BUBBLE if bubble else FORWARDED_ECHO), send

    def _forward_native(self, d: Received, ipv6: Ipv6Packet, bubble: bool,
                        sender: TeredoAddress) -> _Decision:
        """§5.2.9/§5.3.1: a client's direct connectivity test to a native IPv6 host."""
        if not _is_global_ipv6(ipv6.dst):
            return "destination_not_global", None
        if bubble or ipv6.payload[:1] != bytes((constants.ICMPV6_ECHO_REQUEST,)):
            return "native_not_echo_request", None
        refused = self._echo_refusal(ipv6)
        if refused:
            return refused, None
        if sender.server != self.primary:
            # The test goes through the client's own server (§5.2.9): not through us.
            return "source_other_server", None
        if not self.native_ipv6:
            return "native_disabled", None
        # We route it, so we count a hop (RFC 8200 §3); not part of any checksum.
        if ipv6.hop_limit <= 1:
            return "hop_limit_exceeded", None
        packet = dataclasses.replace(ipv6, hop_limit=ipv6.hop_limit - 1).to_bytes()
        if not self.limiter.allow((d.src_ip, ipv6.dst), len(packet)):
            return RATE_LIMITED, None
        return FORWARDED_NATIVE_ECHO, SendIpv6(dst=ipv6.dst, packet=packet)

    @staticmethod
    def _echo_refusal(ipv6: Ipv6Packet) -> Optional[str]:
        """None for a small, valid ICMPv6 echo; otherwise the drop reason."""
        if ipv6.payload[:1] not in (bytes((constants.ICMPV6_ECHO_REQUEST,)),
                                    bytes((constants.ICMPV6_ECHO_REPLY,))):
            return "icmpv6_not_echo" if ipv6.payload else "malformed"
        if len(ipv6.payload) > constants.SERVER_FORWARD_MAX_PAYLOAD:
            return "echo_too_big"
        try:
            parse_echo(ipv6)
        except MalformedPacket:
            return "malformed"
        return None
