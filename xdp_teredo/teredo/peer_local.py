"""Local discovery (RFC 4380 §5.2.8, as Miredo 1.3 has it): peers behind the same
NAT as ours, on our own link, are reached at their local address, since a NAT
that does not hairpin would never bring a packet to their mapped one. A mixin of
PeerList (peers.py), which holds the state (`local_networks`, `_local`).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Dict, Tuple

from xdp_teredo.teredo.peer_model import (
    Deliver,
    Incoming,
    SendDirectBubble,
    _ipv4,
    _ipv6,
    teredo_parts,
)


class LocalPeers:
    """Mixed into PeerList: where the peers of our own link are (`_local`)."""

    def is_local(self, ip) -> bool:
        """Whether an IPv4 address is on one of our own link's networks."""
        ip = _ipv4(ip)
        return any(ip in net for net in self.local_networks)

    def on_local_discovery(self, address, ip, port: int) -> list:
        """A discovery bubble (to 224.0.0.253) from `address`, sent from ip:port on
        our link: note where it is and send it a direct bubble there. It is trusted
        once it answers from there (_incoming_local), not on the multicast alone."""
        src, udp = _ipv6(address), (_ipv4(ip), int(port))
        if teredo_parts(src) is None or not self.is_local(udp[0]):
            return self._drop("discovery_not_local")
        now = self._clock.monotonic()
        try:
            peer, actions = self._lookup_or_create(src, now)
            self._local[src] = udp
            if peer.trusted and peer.mapping == udp:
                return actions
            peer.last_tx = now
            return actions + [SendDirectBubble(src, udp[0], udp[1])]
        finally:
            self._refile_address(src)

    def _incoming_local(self, pkt: Incoming, src: IPv6Address, udp, now: float) -> list:
        """A Teredo source whose mapping is not the UDP source, from an address of
        our own link: a peer behind the same NAT, talking to us directly (§5.2.8).
        Trusted at its local address, as Miredo 1.3 does for discovered networks:
        the link is where the NAT's protection ends anyway. The first time, a direct
        bubble back, so that it trusts us too (its answer to ours finds us trusted
        and asks for nothing more: the exchange ends)."""
        peer, actions = self._lookup_or_create(src, now)
        known = peer.trusted and peer.mapping == udp
        self._local[src] = udp
        actions += self._trust(peer, udp, now)
        if not known:
            peer.last_tx = now
            actions.append(SendDirectBubble(src, udp[0], udp[1]))
        return actions + ([] if pkt.bubble else [Deliver(pkt.packet)])

    def local_peers(self) -> Dict[IPv6Address, Tuple[IPv4Address, int]]:
        return dict(self._local)

