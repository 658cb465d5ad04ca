"""Trust on proof (RFC 4380 §5.2.3, §5.4.2; Miredo's relay): a peer whose UDP source
is not the mapping its Teredo address embeds (a NAT that remapped its port, a
symmetric NAT) is trusted at its real mapping only when it answers a bubble of
ours whose source is a keyed hash of its address (security.bubble_challenge): a
secret it can learn only by receiving our bubble, sent through the server its
address names, never to the UDP source (docs/security.md, "Peers at another
mapping"). A mixin of PeerList (peers.py), which holds the state.
"""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Optional

from xdp_teredo.teredo import security
from xdp_teredo.teredo.ipv4 import is_global_unicast
from xdp_teredo.teredo.peer_model import (
    Peer,
    SendDirectBubble,
    SendIndirectBubble,
    _ipv6,
)


class ProvingMappings:
    """Mixed into PeerList: challenges and what their answers prove."""

    def challenge(self, address) -> IPv6Address:
        """The source of our challenging bubbles to `address`; its answer's destination."""
        return security.bubble_challenge(self._challenge_key, _ipv6(address))

    def _answered_challenge(self, src: IPv6Address, parts, udp, now: float) -> list:
        """A bubble answering our challenge: `src` owns its address, `udp` is its mapping."""
        peer = self.peers.get(src)
        if peer is None and self.relay and not self.accept_unknown:
            return self._drop("relay_unknown_peer")
        if not is_global_unicast(udp[0]):
            return self._drop("peer_mapping_not_global")
        peer, actions = self._lookup_or_create(src, now)
        if udp != parts[1:]:
            self.proven += 1
        actions += self._trust(peer, udp, now)
        if not self.relay:
            # The peer may be waiting for us (it sent first and we challenged it):
            # a bubble from our address, at its proven mapping, makes us trusted.
            actions.append(SendDirectBubble(src, udp[0], udp[1]))
        return actions

    def _challenge_mismatch(self, peer: Optional[Peer], src: IPv6Address, parts,
                            now: float) -> list:
        """A Teredo source not embedding the UDP source: dropped; and challenged
        through its server, so that an answer may prove its mapping."""
        self.drops["teredo_source_mismatch"] += 1
        if peer is None and self.relay and not self.accept_unknown:
            return []
        server, ip, port = parts
        if not is_global_unicast(server) or not is_global_unicast(ip):
            return []
        peer, actions = self._lookup_or_create(src, now)
        if peer.mapped_ip is None:
            peer.mapped_ip, peer.mapped_port = ip, port
        if self._bubble_verdict(peer, now) != "send":
            return actions
        peer.bubbles.append(now)
        peer.last_tx = now
        return actions + [SendIndirectBubble(src, server, source=self.challenge(src))]

