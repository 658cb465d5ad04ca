"""Teredo addresses (RFC 4380 §4, RFC 5991 §4).

    | 2001:0000 (32) | server IPv4 (32) | flags (16) | ~port (16) | ~client IPv4 (32) |

The port and client fields are the client's mapped address (what its NAT shows the
server), each bit inverted so that NATs rewriting addresses in payloads leave them
alone. TeredoAddress holds the de-obfuscated values; the inversion happens only when
converting to and from the IPv6 address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import secrets
from typing import Callable, Optional, Union

from xdp_teredo.errors import NotTeredoAddress
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.ipv4 import IPv4Like, as_ipv4, is_global_unicast

IPv6Like = Union[ipaddress.IPv6Address, str]
# Either a random.Random-like object (anything with getrandbits) or a callable that
# returns the 12 random flag bits as an int in [0, 4096).
FlagRandomness = Union[random.Random, Callable[[], int]]

# What an error message echoes of a bad input, at most: a pasted log line or a
# megabyte of garbage is named, not printed back whole.
SHOWN_INPUT = 64

# IPv4 addresses that no Teredo server or NAT mapping can be (RFC 1122 §3.2.1.3,
# RFC 5771, RFC 1112 §4): "this network" (so 2001:: decodes to server 0.0.0.0),
# loopback, multicast, and class E with the limited broadcast. Private and
# documentation ranges stay usable: labs and tests use them.
UNUSABLE_IPV4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"))

_RANDOM_BITS = 12
_PORT_MASK = 0xFFFF
_IPV4_MASK = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class TeredoAddress:
    """A Teredo IPv6 address, decoded: server, flags, mapped port and mapped IPv4."""

    server: ipaddress.IPv4Address
    flags: int
    port: int
    client: ipaddress.IPv4Address

    def __post_init__(self):
        # Accept dotted strings for the IPv4 fields; the stored value is normalised.
        object.__setattr__(self, "server", as_ipv4(self.server))
        object.__setattr__(self, "client", as_ipv4(self.client))
        if not 0 <= self.flags <= 0xFFFF:
            raise ValueError(f"flags out of 16-bit range: {self.flags}")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port out of 16-bit range: {self.port}")

    # -- decoding -----------------------------------------------------------------

    @classmethod
    def from_ipv6(cls, address: ipaddress.IPv6Address) -> "TeredoAddress":
        """Decode an IPv6 address; NotTeredoAddress if it is outside 2001::/32."""
        if not isinstance(address, ipaddress.IPv6Address):
            raise NotTeredoAddress(f"not an IPv6 address: {shown(address)}")
        if address not in constants.TEREDO_PREFIX:
            raise NotTeredoAddress(
                f"not a Teredo address (outside {constants.TEREDO_PREFIX}): {address}"
            )
        value = int(address)
        return cls(
            server=ipaddress.IPv4Address((value >> 64) & _IPV4_MASK),
            flags=(value >> 48) & 0xFFFF,
            port=((value >> 32) & _PORT_MASK) ^ _PORT_MASK,
            client=ipaddress.IPv4Address((value & _IPV4_MASK) ^ _IPV4_MASK),
        )

    @classmethod
    def parse(cls, address: IPv6Like) -> "TeredoAddress":
        """Decode an IPv6 address given as text or IPv6Address.

        Raises NotTeredoAddress (a UsageError, one line) for text that is not an
        IPv6 address, and for addresses outside 2001::/32.
        """
        if isinstance(address, str):
            try:
                address = ipaddress.IPv6Address(address.strip())
            except ValueError:
                raise NotTeredoAddress(f"not an IPv6 address: {shown(address)}") from None
        return cls.from_ipv6(address)

    @classmethod
    def parse_usable(cls, address: IPv6Like) -> "TeredoAddress":
        """parse(), and NotTeredoAddress unless both the server and the client are
        unicast IPv4 addresses someone could have (`decode 2001::` is no address)."""
        decoded = cls.parse(address)
        for field in ("server", "client"):
            ip = getattr(decoded, field)
            if any(ip in net for net in UNUSABLE_IPV4):
                raise NotTeredoAddress(
                    f"not a usable Teredo address (its {field} {ip} is not a unicast "
                    f"IPv4 address): {decoded}")
        return decoded

    # -- encoding -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        server: IPv4Like,
        mapped_ip: IPv4Like,
        mapped_port: int,
        *,
        cone: bool = False,
        rng: Optional[FlagRandomness] = None,
    ) -> "TeredoAddress":
        """The address a qualified client takes (RFC 4380 §5.2.1, RFC 5991 §4).

        The flags get 12 random bits (RFC 5991 §4: so that the address cannot be
        guessed from the mapping) in FLAG_RANDOM_MASK; U, G and the reserved bit stay
        zero; the cone bit is set only if asked (RFC 5991 §3 deprecates it). `rng` is
        injected for tests: a random.Random (getrandbits is used) or a callable giving
        the 12 bits; by default the bits come from the OS's CSPRNG.
        """
        bits = _random_flag_bits(rng)
        flags = _spread_random_bits(bits) | (constants.FLAG_CONE if cone else 0)
        return cls(server=server, flags=flags, port=mapped_port, client=mapped_ip)

    @property
    def ipv6(self) -> ipaddress.IPv6Address:
        value = (
            (constants.TEREDO_PREFIX_HI32 << 96)
            | (int(self.server) << 64)
            | (self.flags << 48)
            | ((self.port ^ _PORT_MASK) << 32)
            | (int(self.client) ^ _IPV4_MASK)
        )
        return ipaddress.IPv6Address(value)

    def __str__(self) -> str:
        return self.ipv6.compressed

    # -- facts ----------------------------------------------------------------------

    @property
    def cone(self) -> bool:
        """The cone flag (RFC 4380 §4): the client claimed to be behind a cone NAT."""
        return bool(self.flags & constants.FLAG_CONE)

    @property
    def random_flags(self) -> int:
        """The RFC 5991 random bits, still in place within the flags field."""
        return self.flags & constants.FLAG_RANDOM_MASK

    def embeds(self, ipv4: IPv4Like, port: int) -> bool:
        """True if this address carries exactly this mapped IPv4 and port.

        RFC 4380 §5.2.3/§5.4.2: a packet whose IPv6 source embeds its UDP source can
        be trusted as coming from that Teredo client.
        """
        return self.client == as_ipv4(ipv4) and self.port == port

    def describe(self) -> dict:
        """A JSON-friendly view, fixed keys first (used by the CLI's `decode`)."""
        return {
            "address": self.ipv6.compressed,
            "server": str(self.server),
            "client": str(self.client),
            "port": self.port,
            "flags": self.flags,
            "cone": self.cone,
            "random_flags": self.random_flags,
            "client_global": is_global_unicast(self.client),
        }


def shown(text: str, limit: int = SHOWN_INPUT) -> str:
    """`text` as an error message quotes it: repr, cut to `limit` characters."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[:limit - 3] + "..."


def is_teredo(address: Union[IPv6Like, bytes]) -> bool:
    """True if `address` (IPv6Address, text, or 16 packed bytes) is in 2001::/32.

    Anything that is not an IPv6 address at all is simply not Teredo.
    """
    try:
        ip = ipaddress.IPv6Address(address)
    except (ValueError, TypeError):
        return False
    return ip in constants.TEREDO_PREFIX


def _random_flag_bits(rng: Optional[FlagRandomness]) -> int:
    if rng is None:
        bits = secrets.randbits(_RANDOM_BITS)
    elif hasattr(rng, "getrandbits"):
        bits = rng.getrandbits(_RANDOM_BITS)
    elif callable(rng):
        bits = rng()
    else:
        raise TypeError(f"rng must have getrandbits() or be callable, not {rng!r}")
    if not isinstance(bits, int) or not 0 <= bits < (1 << _RANDOM_BITS):
        raise ValueError(f"rng gave {bits!r}, not {_RANDOM_BITS} random bits")
    return bits


def _spread_random_bits(bits: int) -> int:
    """Place 12 bits into FLAG_RANDOM_MASK, low bits first, in mask order."""
    flags = 0
    position = 0
    for bit in range(16):
        if constants.FLAG_RANDOM_MASK & (1 << bit):
            if bits & (1 << position):
                flags |= 1 << bit
            position += 1
    return flags
