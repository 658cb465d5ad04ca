"""Local discovery (RFC 4380 §5.2.8): the PeerList's part and the discovery socket's
parsing, without a kernel (FakeClock, a stand-in daemon)."""

import ipaddress
import random
from types import SimpleNamespace

from xdp_teredo.client.discovery import ALL_NODES, DISCOVERY_GROUP, LocalDiscovery
from xdp_teredo.daemon.counters import Counters
from xdp_teredo.teredo import encap
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.packet import build_bubble
from xdp_teredo.teredo.peers import (
    Deliver,
    Incoming,
    PeerList,
    PeerTrusted,
    SendDirect,
    SendDirectBubble,
    SendIndirectBubble,
)

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address
SERVER = IPv4("192.0.2.1")
NAT = IPv4("198.51.100.33")
LAN = ipaddress.IPv4Network("10.3.0.0/24")
OURS = TeredoAddress(server=SERVER, flags=0, port=1111, client=NAT).ipv6
PEER = TeredoAddress(server=SERVER, flags=0, port=2222, client=NAT).ipv6
PEER_LOCAL = (IPv4("10.3.0.3"), 40000)
PKT = b"\x60" + b"\x00" * 99


def make():
    clock = FakeClock()
    peers = PeerList(clock, rng=random.Random(1).randbytes)
    peers.local_networks = (LAN,)
    return clock, peers


def incoming(udp=PEER_LOCAL, bubble=True, source=PEER):
    return Incoming(source=source, destination=OURS, udp_ip=udp[0], udp_port=udp[1],
                    packet=b"" if bubble else PKT, bubble=bubble)


def test_a_discovery_bubble_gets_a_direct_bubble_to_the_local_address_not_trust():
    _, peers = make()
    actions = peers.on_local_discovery(PEER, *PEER_LOCAL)
    assert actions == [SendDirectBubble(PEER, *PEER_LOCAL)]
    assert not peers.get(PEER).trusted


def test_a_discovery_bubble_from_outside_our_link_is_dropped():
    _, peers = make()
    assert peers.on_local_discovery(PEER, IPv4("10.9.0.3"), 40000) == []
    assert peers.drops["discovery_not_local"] == 1 and PEER not in peers


def test_the_answer_from_the_local_address_trusts_it_there_and_answers_once():
    _, peers = make()
    peers.on_local_discovery(PEER, *PEER_LOCAL)
    first = peers.on_incoming(incoming())
    assert PeerTrusted(PEER, *PEER_LOCAL) in first
    assert SendDirectBubble(PEER, *PEER_LOCAL) in first
    # Its answer to our bubble finds it trusted: no more bubbles, the exchange ends.
    assert peers.on_incoming(incoming()) == []
    data = peers.on_incoming(incoming(bubble=False))
    assert data == [Deliver(PKT)]


def test_without_local_networks_a_mismatching_source_is_dropped_and_only_challenged():
    _, peers = make()
    peers.local_networks = ()
    actions = peers.on_incoming(incoming())
    # Not delivered, not trusted at its UDP source: a challenge through the server
    # its address names, never to the UDP source (trust on proof, docs/security.md).
    assert [type(a) for a in actions] == [SendIndirectBubble]
    assert (actions[0].peer, actions[0].server) == (PEER, SERVER)
    assert peers.drops["teredo_source_mismatch"] == 1
    assert not peers.get(PEER).trusted


def test_sending_to_a_local_peer_that_went_quiet_bubbles_its_local_address():
    clock, peers = make()
    peers.on_incoming(incoming())
    assert isinstance(peers.on_outgoing(PEER, PKT)[0], SendDirect)
    clock.advance(60)  # no longer recent: bubbles again, directly to where it is
    actions = peers.on_outgoing(PEER, PKT)
    assert SendDirectBubble(PEER, *PEER_LOCAL) in actions
    assert any(isinstance(a, SendIndirectBubble) for a in actions)


class _Daemon(SimpleNamespace):
    def carry_out(self, actions):
        self.done.extend(actions)


def _discovery():
    _, peers = make()
    daemon = _Daemon(address=OURS, peers=peers, counters=Counters(), done=[])
    return daemon, LocalDiscovery(daemon, LAN, sock=None)


def test_the_socket_hands_discovery_bubbles_to_the_peer_list():
    daemon, disc = _discovery()
    disc.on_datagram(encap.build_udp_payload(build_bubble(PEER, ALL_NODES)), *PEER_LOCAL)
    assert daemon.done == [SendDirectBubble(PEER, *PEER_LOCAL)]
    assert daemon.counters["discovery_bubble_received"] == 1


def test_our_own_bubble_looped_back_and_non_bubbles_are_ignored():
    daemon, disc = _discovery()
    disc.on_datagram(encap.build_udp_payload(build_bubble(OURS, ALL_NODES)), IPv4("10.3.0.2"), 1)
    disc.on_datagram(encap.build_udp_payload(build_bubble(PEER, OURS)), *PEER_LOCAL)
    disc.on_datagram(b"junk", *PEER_LOCAL)
    assert daemon.done == []
    assert DISCOVERY_GROUP == IPv4("224.0.0.253")
