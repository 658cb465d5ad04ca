"""What kind of NAT the client is behind, as Windows' `netsh interface teredo show
state` reports it (RFC 4380 §5.2.1, RFC 6081 §2). Pure: no I/O, time passed in.

After qualification the client knows its local address and the mapping the
server's primary address saw. One more Router Solicitation, to the server's
secondary address (RFC 4380 §5.2.1's third test, which detects a symmetric NAT),
tells whether the NAT keeps that mapping for another remote:

- not behind a NAT: the mapping is the local address and port ("none");
- the same mapping: an endpoint-independent mapping, "restricted" (RFC 5991
  dropped the cone test; Teredo treats address- and port-restricted NATs alike,
  so they are not told apart);
- another mapping: "symmetric"; with RFC 6081's sub-cases: `sequential` when the
  second port is the first plus a small step (§4.4's sequential-port NAT), and
  `port_preserving` when the mapped port is the local one (§4.3);
- no answer from the secondary address: "unknown".

The probe is one RS with a fresh nonce, `timeout` seconds, no retry; it runs
once per new mapping. UPnP (RFC 6081 §4.2) is reported as None until the client
maps ports with it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

from xdp_teredo.teredo import security

IPv4Address = ipaddress.IPv4Address

PROBE_TIMEOUT = 4.0          # §5.2.1's RS timeout
SEQUENTIAL_STEP_MAX = 16     # a second port this close above the first: sequential

TYPES = ("none", "restricted", "symmetric", "unknown", "probing")


@dataclass(frozen=True)
class NatType:
    type: str
    port_preserving: Optional[bool] = None
    sequential: Optional[bool] = None
    secondary_mapped: Optional[Tuple[IPv4Address, int]] = None
    upnp: Optional[bool] = None

    def describe(self) -> dict:
        return {"type": self.type, "port_preserving": self.port_preserving,
                "sequential": self.sequential, "upnp": self.upnp,
                "secondary_mapped": (f"{self.secondary_mapped[0]}:{self.secondary_mapped[1]}"
                                     if self.secondary_mapped else None)}

    def text(self) -> str:
        """One line for `status`: "symmetric (port-preserving)", "restricted", ..."""
        notes = []
        if self.port_preserving:
            notes.append("port-preserving")
        if self.sequential:
            notes.append("sequential ports")
        if self.upnp is not None:
            notes.append(f"UPnP {'yes' if self.upnp else 'no'}")
        return self.type + (f" ({', '.join(notes)})" if notes else "")


def classify(local: Tuple[IPv4Address, int], mapped: Tuple[IPv4Address, int],
             secondary: Optional[Tuple[IPv4Address, int]]) -> NatType:
    """The verdict from the local address, the primary's and the secondary's view."""
    local = (IPv4Address(local[0]), int(local[1]))
    mapped = (IPv4Address(mapped[0]), int(mapped[1]))
    preserving = mapped[1] == local[1]
    if mapped == local and (secondary is None or secondary == mapped):
        return NatType("none", port_preserving=True, secondary_mapped=secondary)
    if secondary is None:
        return NatType("unknown", port_preserving=preserving)
    secondary = (IPv4Address(secondary[0]), int(secondary[1]))
    if secondary == mapped:
        return NatType("restricted", port_preserving=preserving, sequential=False,
                       secondary_mapped=secondary)
    step = secondary[1] - mapped[1]
    sequential = secondary[0] == mapped[0] and 0 < step <= SEQUENTIAL_STEP_MAX
    return NatType("symmetric", port_preserving=preserving, sequential=sequential,
                   secondary_mapped=secondary)


class NatProbe:
    """One probe of one mapping. `start` says what to send; `on_answer` takes an
    RA's nonce and origin; `result(now)` is the verdict (type "probing" until the
    answer or the timeout)."""

    def __init__(self, local, mapped, secondary_server: IPv4Address, now: float, *,
                 primary_server: Optional[IPv4Address] = None,
                 rng: Optional[security.Rng] = None, timeout: float = PROBE_TIMEOUT):
        self.local, self.mapped = local, mapped
        self.server = IPv4Address(secondary_server)
        self.primary = primary_server   # the server whose view `mapped` is
        self.nonce = security.generate_nonce(rng)
        self.deadline = now + timeout
        self.secondary: Optional[Tuple[IPv4Address, int]] = None
        self.done = False

    def owns(self, nonce: Optional[bytes]) -> bool:
        return not self.done and security.nonces_equal(self.nonce, nonce)

    def on_answer(self, nonce: Optional[bytes], origin_ip, origin_port) -> bool:
        """True when the RA was this probe's answer (then it is consumed)."""
        if not self.owns(nonce) or origin_ip is None or origin_port is None:
            return False
        self.secondary = (IPv4Address(origin_ip), int(origin_port))
        self.done = True
        return True

    def result(self, now: float) -> NatType:
        if not self.done and now < self.deadline:
            return NatType("probing", port_preserving=self.mapped[1] == self.local[1])
        return classify(self.local, self.mapped, self.secondary)
