"""The ICMPv6 messages Teredo itself sends (RFC 4443, RFC 4861).

- Router Solicitation / Advertisement: qualification and maintenance (RFC 4380
  §5.2.1, §5.3.1).
- Echo Request / Reply: the direct connectivity test (RFC 4380 §5.2.9), whose nonce
  travels in the echo data.

Each message is a frozen dataclass with to_bytes() giving the whole IPv6 packet,
checksum included. The parse_* functions follow packet.py's contract: they take a
whole IPv6 packet (bytes, or an Ipv6Packet already parsed), verify the ICMPv6
checksum, and raise only MalformedPacket with a reason from MALFORMED_REASONS.
ICMPv6 must follow the IPv6 header directly: Teredo's control messages never carry
extension headers, and Miredo does not accept any either. The ND hop limit of 255
(RFC 4861 §6.1) is reported in `hop_limit`, not enforced: Miredo does not check it,
and whether to is the qualification's decision, not the parser's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Iterable, Optional, Tuple, Union

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.packet import (
    MALFORMED_REASONS,
    Bytes,
    IPv6Like,
    Ipv6Packet,
    as_ipv6_packet,
    upper_layer_checksum,
)

PacketLike = Union[Ipv6Packet, Bytes]

MALFORMED_REASONS = MALFORMED_REASONS | frozenset({
    "not_icmpv6",         # next header is not 58
    "icmpv6_truncated",   # shorter than the message's fixed part
    "icmpv6_checksum",    # checksum over the pseudo-header does not verify
    "icmpv6_type",        # another ICMPv6 message than the one asked for
    "icmpv6_code",        # code is not 0 (RFC 4443 §4, RFC 4861 §6.1)
    "nd_option_length",   # option length 0, or running past the message
    "nd_prefix_option",   # prefix information shorter than 32 bytes, or prefix > 128
})

_ICMP_HEADER = struct.Struct("!BBH")          # type, code, checksum
_OPTION_HEADER = struct.Struct("!BB")         # ND option type, length in 8-byte units
_RS_FIXED = struct.Struct("!4x")              # reserved
_RA_FIXED = struct.Struct("!BBHII")           # cur hop limit, flags, lifetime, reachable, retrans
_ECHO_FIXED = struct.Struct("!HH")            # identifier, sequence
_PREFIX_INFO = struct.Struct("!BBIII16s")     # prefix len, flags, valid, preferred, reserved2, prefix
_MTU_OPTION = struct.Struct("!2xI")           # reserved, MTU
_PREFIX_INFO_LEN = 32                         # RFC 4861 §4.6.2: length field 4


def _coerce_addresses(message) -> None:
    """__post_init__ of the message classes: accept addresses as text too."""
    object.__setattr__(message, "src", ipaddress.IPv6Address(message.src))
    object.__setattr__(message, "dst", ipaddress.IPv6Address(message.dst))


def _pack(layout: struct.Struct, *values) -> bytes:
    """struct.pack, with a field that does not fit reported as ValueError."""
    try:
        return layout.pack(*values)
    except struct.error as err:
        raise ValueError(f"field out of range: {err}") from None


# -- the ICMPv6 layer -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Icmpv6Message:
    """An ICMPv6 message with a verified checksum; `body` follows the checksum."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    hop_limit: int
    type: int
    code: int
    body: bytes


def build_icmpv6(src: IPv6Like, dst: IPv6Like, icmp_type: int, code: int, body: bytes,
                 *, hop_limit: int) -> bytes:
    """A whole IPv6 packet carrying one ICMPv6 message, checksum computed."""
    src, dst = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    message = _pack(_ICMP_HEADER, icmp_type, code, 0) + bytes(body)
    checksum = upper_layer_checksum(src, dst, constants.IPPROTO_ICMPV6, message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    return Ipv6Packet(src=src, dst=dst, next_header=constants.IPPROTO_ICMPV6,
                      hop_limit=hop_limit, payload=message).to_bytes()


def parse_icmpv6(data: PacketLike) -> Icmpv6Message:
    """The ICMPv6 message of an IPv6 packet, after checking its checksum."""
    packet = as_ipv6_packet(data)
    if packet.next_header != constants.IPPROTO_ICMPV6:
        raise MalformedPacket("not_icmpv6", f"next header {packet.next_header}")
    message = packet.payload
    if len(message) < _ICMP_HEADER.size:
        raise MalformedPacket("icmpv6_truncated", f"{len(message)} bytes")
    if upper_layer_checksum(packet.src, packet.dst, constants.IPPROTO_ICMPV6, message) != 0:
        raise MalformedPacket("icmpv6_checksum")
    icmp_type, code, _ = _ICMP_HEADER.unpack_from(message)
    return Icmpv6Message(src=packet.src, dst=packet.dst, hop_limit=packet.hop_limit,
                         type=icmp_type, code=code, body=message[_ICMP_HEADER.size:])


def _expect(data: PacketLike, icmp_type: int, fixed_len: int) -> Icmpv6Message:
    message = parse_icmpv6(data)
    if message.type != icmp_type:
        raise MalformedPacket("icmpv6_type", f"type {message.type}, wanted {icmp_type}")
    if message.code != 0:
        raise MalformedPacket("icmpv6_code", f"code {message.code}")
    if len(message.body) < fixed_len:
        raise MalformedPacket("icmpv6_truncated",
                              f"type {icmp_type} body of {len(message.body)} bytes")
    return message


# -- Neighbor Discovery options (RFC 4861 §4.6) ----------------------------------------

@dataclasses.dataclass(frozen=True)
class NdOption:
    """One ND option, undecoded: `data` is what follows the type and length bytes."""

    type: int
    data: bytes = b""

    def to_bytes(self) -> bytes:
        # The length counts 8-byte units including the 2-byte header; pad with zeros.
        total = -(-(2 + len(self.data)) // constants.ND_OPT_UNIT) * constants.ND_OPT_UNIT
        units = total // constants.ND_OPT_UNIT
        if units > 0xFF:
            raise ValueError(f"ND option of {len(self.data)} bytes is too long")
        return _pack(_OPTION_HEADER, self.type, units) + self.data.ljust(total - 2, b"\0")


def parse_nd_options(data: bytes) -> Tuple[NdOption, ...]:
    """Split the option area of an ND message (RFC 4861 §4.6, §6.1.1/§6.1.2)."""
    options = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise MalformedPacket("nd_option_length", "option header cut short")
        option_type, units = data[offset], data[offset + 1]
        length = units * constants.ND_OPT_UNIT
        # RFC 4861: a length of zero invalidates the whole message.
        if length == 0 or offset + length > len(data):
            raise MalformedPacket("nd_option_length",
                                  f"type {option_type} length {length} at {offset}")
        options.append(NdOption(option_type, data[offset + 2:offset + length]))
        offset += length
    return tuple(options)


@dataclasses.dataclass(frozen=True)
class PrefixInformation:
    """The prefix information option (RFC 4861 §4.6.2).

    Defaults are what a Teredo server advertises (Miredo's SendRA): the A flag only,
    infinite lifetimes.
    """

    prefix: ipaddress.IPv6Network
    on_link: bool = False
    autonomous: bool = True
    valid_lifetime: int = 0xFFFFFFFF
    preferred_lifetime: int = 0xFFFFFFFF

    def __post_init__(self):
        # RFC 4861 §4.6.2: bits past the prefix length are ignored by the receiver.
        object.__setattr__(self, "prefix", ipaddress.IPv6Network(self.prefix, strict=False))

    def to_option(self) -> NdOption:
        flags = ((constants.ND_PREFIX_FLAG_ON_LINK if self.on_link else 0)
                 | (constants.ND_PREFIX_FLAG_AUTONOMOUS if self.autonomous else 0))
        body = _pack(_PREFIX_INFO, self.prefix.prefixlen, flags, self.valid_lifetime,
                                 self.preferred_lifetime, 0,
                                 self.prefix.network_address.packed)
        return NdOption(constants.ND_OPT_PREFIX_INFORMATION, body)

    @classmethod
    def from_option(cls, option: NdOption) -> "PrefixInformation":
        # Like Miredo, accept a longer option: only the first 32 bytes have meaning.
        if 2 + len(option.data) < _PREFIX_INFO_LEN:
            raise MalformedPacket("nd_prefix_option", f"{2 + len(option.data)} bytes")
        length, flags, valid, preferred, _, prefix = _PREFIX_INFO.unpack_from(option.data)
        if length > 128:
            raise MalformedPacket("nd_prefix_option", f"prefix length {length}")
        return cls(
            prefix=ipaddress.IPv6Network((ipaddress.IPv6Address(prefix), length),
                                         strict=False),
            on_link=bool(flags & constants.ND_PREFIX_FLAG_ON_LINK),
            autonomous=bool(flags & constants.ND_PREFIX_FLAG_AUTONOMOUS),
            valid_lifetime=valid,
            preferred_lifetime=preferred,
        )


def _mtu_option(mtu: int) -> NdOption:
    return NdOption(constants.ND_OPT_MTU, _pack(_MTU_OPTION, mtu))


# -- Router Solicitation (RFC 4861 §4.1) ------------------------------------------

@dataclasses.dataclass(frozen=True)
class RouterSolicitation:
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    hop_limit: int = constants.ND_HOP_LIMIT
    options: Tuple[NdOption, ...] = ()

    __post_init__ = _coerce_addresses

    def to_bytes(self) -> bytes:
        body = _RS_FIXED.pack() + b"".join(o.to_bytes() for o in self.options)
        return build_icmpv6(self.src, self.dst, constants.ICMPV6_ROUTER_SOLICITATION, 0, body,
                            hop_limit=self.hop_limit)


def build_router_solicitation(src: IPv6Like = constants.LINK_LOCAL_RESTRICTED,
                              dst: IPv6Like = constants.ALL_ROUTERS, *,
                              source_link_layer: Optional[bytes] = None) -> bytes:
    """The qualification RS (RFC 4380 §5.2.1): link-local source, to ff02::2, hop 255.

    `source_link_layer`, when given, adds that option; Miredo's client sends 14 zero
    bytes there (copying Windows XP), which servers ignore.
    """
    options = ()
    if source_link_layer is not None:
        options = (NdOption(constants.ND_OPT_SOURCE_LINK_LAYER, bytes(source_link_layer)),)
    return RouterSolicitation(src=ipaddress.IPv6Address(src),
                              dst=ipaddress.IPv6Address(dst),
                              options=options).to_bytes()


def parse_router_solicitation(data: PacketLike) -> RouterSolicitation:
    message = _expect(data, constants.ICMPV6_ROUTER_SOLICITATION, _RS_FIXED.size)
    return RouterSolicitation(src=message.src, dst=message.dst,
                              hop_limit=message.hop_limit,
                              options=parse_nd_options(message.body[_RS_FIXED.size:]))


# -- Router Advertisement (RFC 4861 §4.2) -----------------------------------------

@dataclasses.dataclass(frozen=True)
class RouterAdvertisement:
    """An RA, with the options Teredo uses decoded.

    `prefixes` keeps every prefix information option, in order: RFC 4380 §5.2.1
    wants exactly one, and deciding that is qualification's job, not the parser's.
    `mtu` is the value of the last MTU option (as Miredo reads it), unvalidated.
    `other_options` holds the rest, undecoded.
    """

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    hop_limit: int = constants.ND_HOP_LIMIT
    cur_hop_limit: int = 0
    flags: int = 0
    router_lifetime: int = 0
    reachable_time: int = 0
    retrans_timer: int = 0
    prefixes: Tuple[PrefixInformation, ...] = ()
    mtu: Optional[int] = None
    other_options: Tuple[NdOption, ...] = ()

    __post_init__ = _coerce_addresses

    def to_bytes(self) -> bytes:
        options = [p.to_option() for p in self.prefixes]
        if self.mtu is not None:
            options.append(_mtu_option(self.mtu))
        options.extend(self.other_options)
        body = _pack(_RA_FIXED, self.cur_hop_limit, self.flags, self.router_lifetime,
                              self.reachable_time, self.retrans_timer)
        body += b"".join(o.to_bytes() for o in options)
        return build_icmpv6(self.src, self.dst, constants.ICMPV6_ROUTER_ADVERTISEMENT, 0, body,
                            hop_limit=self.hop_limit)


def build_router_advertisement(src: IPv6Like, dst: IPv6Like, *,
                               prefixes: Iterable[Union[PrefixInformation, str,
                                                        ipaddress.IPv6Network]] = (),
                               mtu: Optional[int] = None,
                               retrans_timer: int = 0) -> bytes:
    """An RA as a Teredo server sends one (RFC 4380 §5.3.1).

    `prefixes` are PrefixInformation or anything IPv6Network accepts (then with the
    server defaults). Miredo's server also sets retrans_timer to 2000 ms.
    """
    infos = tuple(p if isinstance(p, PrefixInformation) else PrefixInformation(p)
                  for p in prefixes)
    return RouterAdvertisement(src=ipaddress.IPv6Address(src),
                               dst=ipaddress.IPv6Address(dst),
                               prefixes=infos, mtu=mtu,
                               retrans_timer=retrans_timer).to_bytes()


def parse_router_advertisement(data: PacketLike) -> RouterAdvertisement:
    message = _expect(data, constants.ICMPV6_ROUTER_ADVERTISEMENT, _RA_FIXED.size)
    cur_hop_limit, flags, lifetime, reachable, retrans = _RA_FIXED.unpack_from(message.body)
    prefixes, others = [], []
    mtu = None
    for option in parse_nd_options(message.body[_RA_FIXED.size:]):
        if option.type == constants.ND_OPT_PREFIX_INFORMATION:
            prefixes.append(PrefixInformation.from_option(option))
        elif option.type == constants.ND_OPT_MTU:
            (mtu,) = _MTU_OPTION.unpack_from(option.data)
        else:
            # RFC 4861 §6.1.2: unknown options are ignored, not an error.
            others.append(option)
    return RouterAdvertisement(
        src=message.src, dst=message.dst, hop_limit=message.hop_limit,
        cur_hop_limit=cur_hop_limit, flags=flags, router_lifetime=lifetime,
        reachable_time=reachable, retrans_timer=retrans,
        prefixes=tuple(prefixes), mtu=mtu, other_options=tuple(others),
    )


# -- Echo Request / Reply (RFC 4443 §4) -------------------------------------------

@dataclasses.dataclass(frozen=True)
class Echo:
    """An echo request (reply=False) or reply. The connectivity test's nonce is `data`."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    identifier: int
    sequence: int
    data: bytes = b""
    reply: bool = False
    hop_limit: int = constants.DEFAULT_HOP_LIMIT

    __post_init__ = _coerce_addresses

    def to_bytes(self) -> bytes:
        icmp_type = constants.ICMPV6_ECHO_REPLY if self.reply else constants.ICMPV6_ECHO_REQUEST
        body = _pack(_ECHO_FIXED, self.identifier, self.sequence) + bytes(self.data)
        return build_icmpv6(self.src, self.dst, icmp_type, 0, body,
                            hop_limit=self.hop_limit)

    def answer(self, *, hop_limit: int = constants.DEFAULT_HOP_LIMIT) -> "Echo":
        """The reply to this request (RFC 4443 §4.2): same identifier, sequence, data."""
        return Echo(src=self.dst, dst=self.src, identifier=self.identifier,
                    sequence=self.sequence, data=self.data, reply=True,
                    hop_limit=hop_limit)


def build_echo_request(src: IPv6Like, dst: IPv6Like, *, identifier: int, sequence: int,
                       data: bytes = b"", hop_limit: int = constants.DEFAULT_HOP_LIMIT) -> bytes:
    return Echo(src=ipaddress.IPv6Address(src), dst=ipaddress.IPv6Address(dst),
                identifier=identifier, sequence=sequence, data=data,
                hop_limit=hop_limit).to_bytes()


def build_echo_reply(src: IPv6Like, dst: IPv6Like, *, identifier: int, sequence: int,
                     data: bytes = b"", hop_limit: int = constants.DEFAULT_HOP_LIMIT) -> bytes:
    return Echo(src=ipaddress.IPv6Address(src), dst=ipaddress.IPv6Address(dst),
                identifier=identifier, sequence=sequence, data=data, reply=True,
                hop_limit=hop_limit).to_bytes()


def parse_echo(data: PacketLike) -> Echo:
    """An echo request or reply; anything else is icmpv6_type."""
    message = parse_icmpv6(data)
    if message.type not in (constants.ICMPV6_ECHO_REQUEST, constants.ICMPV6_ECHO_REPLY):
        raise MalformedPacket("icmpv6_type", f"type {message.type}, wanted an echo")
    if message.code != 0:
        raise MalformedPacket("icmpv6_code", f"code {message.code}")
    if len(message.body) < _ECHO_FIXED.size:
        raise MalformedPacket("icmpv6_truncated", f"echo body of {len(message.body)} bytes")
    identifier, sequence = _ECHO_FIXED.unpack_from(message.body)
    return Echo(src=message.src, dst=message.dst, identifier=identifier,
                sequence=sequence, data=message.body[_ECHO_FIXED.size:],
                reply=message.type == constants.ICMPV6_ECHO_REPLY,
                hop_limit=message.hop_limit)
