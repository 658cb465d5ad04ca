"""Nonces: generation from an injected source of randomness, constant-time checks.

Two nonces protect the client (cf. Miredo's libteredo/security.c):
- the authentication nonce of every Router Solicitation (RFC 4380 §5.1.1, §5.2.1):
  an RA is accepted only if it echoes it, so an off-path host cannot forge our
  qualification;
- the echo nonce of the direct connectivity test (§5.2.9): at least 64 bits, so
  that a forged echo reply cannot make us trust the wrong relay.

A third one proves a peer's mapping when it differs from the one its Teredo
address embeds (a NAT that remapped the port, a symmetric NAT): our bubbles to
that peer come from a link-local source whose interface identifier is a keyed
hash of the peer's address (`bubble_challenge`); a peer answers a bubble with
source and destination swapped (Miredo's teredo_reply_bubble), so an answer
addressed to that source proves it received our bubble. Miredo's relay does the
same (CheckBubble); the key never leaves the process, so the answer cannot be
forged off-path.

Randomness is a callable like os.urandom (n -> n bytes), passed in so tests are
deterministic (e.g. random.Random(seed).randbytes).
"""

import hashlib
import hmac
import ipaddress
import os
from typing import Callable, Optional

from xdp_teredo.teredo.constants import AUTH_NONCE_LEN, ECHO_NONCE_MIN_LEN

Rng = Callable[[int], bytes]

# Neither nonce may be shorter than 64 bits (§5.2.9 says so for the echo test; the
# RS nonce is exactly 8 bytes on the wire).
MIN_NONCE_LEN = max(AUTH_NONCE_LEN, ECHO_NONCE_MIN_LEN)


def generate_nonce(rng: Optional[Rng] = None, length: int = AUTH_NONCE_LEN) -> bytes:
    """`length` fresh random bytes from `rng` (os.urandom when None).

    Refuses lengths under 64 bits, and an rng that returns the wrong number of
    bytes: a short nonce would silently weaken the check it protects.
    """
    if length < MIN_NONCE_LEN:
        raise ValueError(f"nonce of {length} bytes is shorter than {MIN_NONCE_LEN}")
    value = (rng or os.urandom)(length)
    if not isinstance(value, (bytes, bytearray)) or len(value) != length:
        raise ValueError(f"rng returned {value!r}, not {length} bytes")
    return bytes(value)


def nonces_equal(expected: Optional[bytes], received: Optional[bytes]) -> bool:
    """True when both nonces are present and equal, compared in constant time.

    Constant time so that the comparison leaks no prefix length to an attacker
    who can time our answers. A missing nonce never matches.
    """
    if expected is None or received is None:
        return False
    return hmac.compare_digest(bytes(expected), bytes(received))


# 128 bits of key: what HMAC-SHA-256 keys below its block size are worth.
CHALLENGE_KEY_LEN = 16


def bubble_challenge(key: bytes, peer: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """fe80::/64 with 64 bits of HMAC-SHA-256(key, peer address) as interface
    identifier, the universal/local and group bits clear (RFC 4291 §2.5.1), as
    Miredo's bubble sources: the source of our bubbles to `peer`, and what the
    destination of its answer must be."""
    iid = bytearray(hmac.new(key, ipaddress.IPv6Address(peer).packed, hashlib.sha256).digest()[:8])
    iid[0] &= 0xFC
    return ipaddress.IPv6Address(bytes.fromhex("fe80000000000000") + bytes(iid))
