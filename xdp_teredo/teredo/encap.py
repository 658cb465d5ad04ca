"""Teredo encapsulation: what a UDP payload on port 3544 holds (RFC 4380 §5.1.1).

    [authentication header] [origin indication] IPv6 packet

Both headers start with a zero byte, which an IPv6 packet never does (its first
nibble is 6); the second byte tells them apart (1: authentication, 0: origin). When
both are present, authentication comes first. parse_udp_payload follows packet.py's
parser contract; its reasons are in MALFORMED_REASONS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from typing import Optional, Tuple, Union

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.ipv4 import IPv4Like, as_ipv4
from xdp_teredo.teredo.packet import MALFORMED_REASONS, Bytes, Ipv6Packet, parse_ipv6

MALFORMED_REASONS = MALFORMED_REASONS | frozenset({
    "auth_truncated",     # authentication header longer than the datagram
    "origin_truncated",   # origin indication shorter than 8 bytes
    "teredo_indicator",   # a zero first byte not starting a header allowed here
})

_INDICATOR = struct.Struct("!H")
_ORIGIN = struct.Struct("!HHI")       # indicator, ~port, ~IPv4
_AUTH_FIXED = struct.Struct("!HBB")   # indicator, client id length, auth value length
_CONFIRMATION_LEN = 1


@dataclasses.dataclass(frozen=True)
class OriginIndication:
    """Where the server saw the packet come from (RFC 4380 §5.1.1), de-obfuscated."""

    port: int
    address: ipaddress.IPv4Address

    def __post_init__(self):
        object.__setattr__(self, "address", as_ipv4(self.address))
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of 16-bit range: {self.port}")

    def to_bytes(self) -> bytes:
        # Obfuscated like the address fields, so that NATs leave them alone.
        return _ORIGIN.pack(constants.INDICATOR_ORIGIN, self.port ^ 0xFFFF,
                            int(self.address) ^ 0xFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class AuthHeader:
    """The authentication header (RFC 4380 §5.1.1).

    Miredo (and our client) send it with empty client id and auth value, for the
    nonce alone: the server echoes the nonce in its RA, which proves the RA answers
    our RS. The confirmation byte is non-zero when the server says the client's
    secret must be renewed.
    """

    nonce: bytes
    confirmation: int = 0
    client_id: bytes = b""
    auth_value: bytes = b""

    def __post_init__(self):
        for name in ("nonce", "client_id", "auth_value"):
            object.__setattr__(self, name, bytes(getattr(self, name)))
        if len(self.nonce) != constants.AUTH_NONCE_LEN:
            raise ValueError(f"nonce must be {constants.AUTH_NONCE_LEN} bytes, not {len(self.nonce)}")
        if not 0 <= self.confirmation <= 0xFF:
            raise ValueError(f"confirmation byte out of range: {self.confirmation}")
        if len(self.client_id) > 0xFF or len(self.auth_value) > 0xFF:
            raise ValueError("client id and auth value are at most 255 bytes each")

    def to_bytes(self) -> bytes:
        return (_AUTH_FIXED.pack(constants.INDICATOR_AUTH, len(self.client_id), len(self.auth_value))
                + self.client_id + self.auth_value + self.nonce
                + bytes((self.confirmation,)))


@dataclasses.dataclass(frozen=True)
class TeredoPayload:
    """A whole Teredo UDP payload: optional headers, then a valid IPv6 packet."""

    ipv6: Ipv6Packet
    auth: Optional[AuthHeader] = None
    origin: Optional[OriginIndication] = None

    def to_bytes(self) -> bytes:
        return build_udp_payload(self.ipv6, auth=self.auth, origin=self.origin)


def build_udp_payload(ipv6: Union[Ipv6Packet, bytes], *,
                      auth: Optional[AuthHeader] = None,
                      origin: Optional[OriginIndication] = None) -> bytes:
    """Headers in the RFC's order (authentication, origin indication), then IPv6."""
    ipv6_bytes = ipv6.to_bytes() if isinstance(ipv6, Ipv6Packet) else bytes(ipv6)
    return ((auth.to_bytes() if auth else b"")
            + (origin.to_bytes() if origin else b"")
            + ipv6_bytes)


def build_origin_indication(port: int, address: IPv4Like) -> bytes:
    """The 8 bytes of an origin indication for this mapped port and address."""
    return OriginIndication(port=port, address=address).to_bytes()


def parse_udp_payload(data: Bytes) -> TeredoPayload:
    """Split a Teredo UDP payload and parse its IPv6 packet (RFC 4380 §5.1.1).

    An origin indication before an authentication header, a repeated header, or an
    unknown indicator is teredo_indicator: the RFC allows only the one order.
    """
    data = bytes(data)
    offset = 0
    auth = origin = None
    if _indicator_at(data, offset) == constants.INDICATOR_AUTH:
        auth, offset = _parse_auth(data, offset)
    if _indicator_at(data, offset) == constants.INDICATOR_ORIGIN:
        origin, offset = _parse_origin(data, offset)
    if _indicator_at(data, offset) is not None:
        raise MalformedPacket("teredo_indicator",
                              f"0x{_indicator_at(data, offset):04x} at offset {offset}")
    return TeredoPayload(ipv6=parse_ipv6(data[offset:]), auth=auth, origin=origin)


def _indicator_at(data: bytes, offset: int) -> Optional[int]:
    """The 16-bit indicator at offset if a header starts there (zero first byte)."""
    if len(data) - offset < 2 or data[offset] != 0:
        return None
    return _INDICATOR.unpack_from(data, offset)[0]


def _parse_auth(data: bytes, offset: int) -> Tuple[AuthHeader, int]:
    if len(data) - offset < _AUTH_FIXED.size:
        raise MalformedPacket("auth_truncated", "fixed part cut short")
    _, id_len, au_len = _AUTH_FIXED.unpack_from(data, offset)
    start = offset + _AUTH_FIXED.size
    end = start + id_len + au_len + constants.AUTH_NONCE_LEN + _CONFIRMATION_LEN
    if end > len(data):
        raise MalformedPacket("auth_truncated",
                              f"needs {end - offset} bytes, {len(data) - offset} present")
    nonce_at = start + id_len + au_len
    header = AuthHeader(
        client_id=data[start:start + id_len],
        auth_value=data[start + id_len:nonce_at],
        nonce=data[nonce_at:nonce_at + constants.AUTH_NONCE_LEN],
        confirmation=data[end - 1],
    )
    return header, end


def _parse_origin(data: bytes, offset: int) -> Tuple[OriginIndication, int]:
    if len(data) - offset < constants.ORIGIN_INDICATION_LEN:
        raise MalformedPacket("origin_truncated", f"{len(data) - offset} bytes")
    _, port, address = _ORIGIN.unpack_from(data, offset)
    origin = OriginIndication(port=port ^ 0xFFFF,
                              address=ipaddress.IPv4Address(address ^ 0xFFFFFFFF))
    return origin, offset + constants.ORIGIN_INDICATION_LEN
