"""The IPv6 packet inside Teredo: header build/parse, checksums, bubbles.

Parser contract (the same in icmpv6.py and encap.py): a parser takes any bytes-like
object and returns a frozen dataclass, or raises MalformedPacket(reason) where
reason is one of the module's MALFORMED_REASONS. It never raises anything else on
bad bytes. Builders take typed values and raise ValueError on values that do not
fit their fields: that is a programming error, not a bad packet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Union

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import constants

IPv6Like = Union[ipaddress.IPv6Address, str]
Bytes = Union[bytes, bytearray, memoryview]

# Reasons this module's parsers give (counters and logs use them as is).
MALFORMED_REASONS = frozenset({
    "ipv6_truncated",   # fewer than 40 bytes
    "ipv6_version",     # first nibble is not 6
    "ipv6_length",      # payload length field disagrees with the bytes present
})

# version (4) | traffic class (8) | flow label (20), payload length, next header,
# hop limit, source, destination.
_HEADER = struct.Struct("!IHBB16s16s")


@dataclasses.dataclass(frozen=True)
class Ipv6Packet:
    """One IPv6 packet (RFC 8200 §3). Extension headers, if any, stay in `payload`."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    next_header: int
    hop_limit: int
    payload: bytes = b""
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self):
        # The slow path builds many of these: skip conversions that are no-ops.
        if not isinstance(self.src, ipaddress.IPv6Address):
            object.__setattr__(self, "src", ipaddress.IPv6Address(self.src))
        if not isinstance(self.dst, ipaddress.IPv6Address):
            object.__setattr__(self, "dst", ipaddress.IPv6Address(self.dst))
        if type(self.payload) is not bytes:
            object.__setattr__(self, "payload", bytes(self.payload))
        _check_field("next_header", self.next_header, 8)
        _check_field("hop_limit", self.hop_limit, 8)
        _check_field("traffic_class", self.traffic_class, 8)
        _check_field("flow_label", self.flow_label, 20)
        # Teredo never needs jumbograms (RFC 2675): the tunnel MTU is 1280.
        _check_field("payload length", len(self.payload), 16)

    def to_bytes(self) -> bytes:
        first_word = (
            (constants.IPV6_VERSION << 28) | (self.traffic_class << 20) | self.flow_label
        )
        return _HEADER.pack(
            first_word,
            len(self.payload),
            self.next_header,
            self.hop_limit,
            self.src.packed,
            self.dst.packed,
        ) + self.payload


def parse_ipv6(data: Bytes) -> Ipv6Packet:
    """Parse one whole IPv6 packet: exactly 40 bytes of header plus the payload.

    The payload length must match the bytes present exactly, as Miredo's server
    checks (RFC 4380 §5.3.1 "the IPv6 packet is valid"): inside a UDP datagram there
    is no link-layer padding that could excuse trailing bytes.
    """
    data = bytes(data)
    if len(data) < constants.IPV6_HDR_LEN:
        raise MalformedPacket("ipv6_truncated", f"{len(data)} bytes")
    first_word, payload_length, next_header, hop_limit, src, dst = _HEADER.unpack_from(data)
    if first_word >> 28 != constants.IPV6_VERSION:
        raise MalformedPacket("ipv6_version", f"version {first_word >> 28}")
    if payload_length != len(data) - constants.IPV6_HDR_LEN:
        raise MalformedPacket(
            "ipv6_length",
            f"header says {payload_length}, {len(data) - constants.IPV6_HDR_LEN} present",
        )
    return Ipv6Packet(
        src=ipaddress.IPv6Address(src),
        dst=ipaddress.IPv6Address(dst),
        next_header=next_header,
        hop_limit=hop_limit,
        payload=data[constants.IPV6_HDR_LEN:],
        traffic_class=(first_word >> 20) & 0xFF,
        flow_label=first_word & 0xFFFFF,
    )


def as_ipv6_packet(data: Union[Ipv6Packet, Bytes]) -> Ipv6Packet:
    """An Ipv6Packet as is, or bytes parsed by parse_ipv6."""
    return data if isinstance(data, Ipv6Packet) else parse_ipv6(data)


# -- checksums (RFC 1071; RFC 8200 §8.1 for the pseudo-header) ----------------------

def internet_checksum(data: Bytes) -> int:
    """The ones' complement of the ones' complement sum of 16-bit words (RFC 1071).

    Over a message that already holds its checksum, the result is 0 when valid.
    """
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                  next_header: int, length: int) -> bytes:
    """The IPv6 pseudo-header that upper-layer checksums cover (RFC 8200 §8.1)."""
    return src.packed + dst.packed + struct.pack("!I3xB", length, next_header)


def upper_layer_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address,
                         next_header: int, message: Bytes) -> int:
    """The checksum of `message` (with its checksum field zero, when building)."""
    message = bytes(message)
    return internet_checksum(pseudo_header(src, dst, next_header, len(message)) + message)


# -- bubbles (RFC 4380 §2.8) --------------------------------------------------------

def build_bubble(src: IPv6Like, dst: IPv6Like, *, hop_limit: int = constants.ND_HOP_LIMIT) -> bytes:
    """A bubble: an IPv6 header alone, next header 59 ("no next header").

    Hop limit 255 as Miredo sends them; the value has no meaning for a packet that
    is never forwarded as IPv6.
    """
    return Ipv6Packet(src=src, dst=dst, next_header=constants.IPPROTO_NONE,
                      hop_limit=hop_limit).to_bytes()


def is_bubble(packet: Ipv6Packet) -> bool:
    """RFC 4380 §2.8: next header 59 and payload length 0 (as Miredo's IsBubble)."""
    return packet.next_header == constants.IPPROTO_NONE and not packet.payload


def _check_field(name: str, value: int, bits: int) -> None:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} does not fit in {bits} bits: {value!r}")
