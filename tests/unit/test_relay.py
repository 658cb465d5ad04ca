"""The relay without a kernel: which hook each device gets, the peer list in relay
mode, and the orchestrator's slow path wired to fakes (FakeClock, no sockets).

The data path itself is tested through BPF_PROG_TEST_RUN (tests/bpf/test_relay.py)
and the whole relay in the lab (tests/e2e/test_relay.py).
"""

import ipaddress
import random
import struct

import pytest

from xdp_teredo.datapath import PeerEntry, PeerFlag
from xdp_teredo.datapath.redirect import (
    XDP_ACT_BASIC,
    XDP_ACT_NDO_XMIT,
    XDP_ACT_REDIRECT,
    EgressCheck,
    HookChoice,
    _attr,
    _attrs,
    choose_hooks,
    xdp_targets,
)
from xdp_teredo.relay import RelayConfig
from xdp_teredo.relay.daemon import RelayDaemon
from xdp_teredo.relay.plan import bubble_source
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, icmpv6
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.peers import (Deliver, Incoming, PeerList, PeerTrusted,
                                     SendIndirectBubble)

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address

TAKES = XDP_ACT_BASIC | XDP_ACT_REDIRECT | XDP_ACT_NDO_XMIT
REFUSES = XDP_ACT_BASIC | XDP_ACT_REDIRECT


def device(ifindex, name, features, kind=None):
    return EgressCheck(ifindex=ifindex, name=name, kind=kind, features=features)


# --------------------------------------------------------------------- hook choice


@pytest.mark.parametrize("if4,if6,forwarding,expect", [
    # Both ends take redirects, forwarding on: XDP both ways.
    (TAKES, TAKES, True, {"eth0": "xdp", "eth1": "xdp"}),
    # The lab as built: neither veth peer has XDP or GRO: tc both ways.
    (REFUSES, REFUSES, True, {"eth0": "tc", "eth1": "tc"}),
    # Decapsulated packets leave by eth1: only eth1 matters for eth0's hook.
    (REFUSES, TAKES, True, {"eth0": "xdp", "eth1": "tc"}),
    (TAKES, REFUSES, True, {"eth0": "tc", "eth1": "xdp"}),
    # XDP encapsulation needs the IPv4 fib lookup, which needs forwarding on eth0.
    (TAKES, TAKES, False, {"eth0": "xdp", "eth1": "tc"}),
    # A kernel that cannot tell (before 6.3): tc, the safe choice.
    (None, None, True, {"eth0": "tc", "eth1": "tc"}),
])
def test_xdp_only_where_the_other_side_takes_redirected_frames(if4, if6, forwarding, expect):
    choices = choose_hooks(device(2, "eth0", if4), device(3, "eth1", if6), ipv4_forwarding=forwarding)
    assert {c.name: c.hook for c in choices} == expect
    assert all(isinstance(c, HookChoice) and c.why for c in choices)


def test_the_reasons_say_what_to_do_about_it():
    eth0, eth1 = device(2, "eth0", REFUSES), device(3, "eth1", REFUSES, kind="veth")
    why = {c.name: c.why for c in choose_hooks(eth0, eth1, ipv4_forwarding=True)}
    assert "eth1 is a veth" in why["eth0"] and "gro on" in why["eth0"]
    assert "eth1 is a veth: XDP there" in why["eth1"] and "--path xdp" in why["eth1"]
    nic = device(2, "eth0", REFUSES, kind=None)
    assert "driver of eth0 cannot transmit" in nic.explain()
    assert "forwarding=0" in choose_hooks(device(2, "eth0", TAKES), device(3, "eth1", TAKES),
                                          ipv4_forwarding=False)[1].why


@pytest.mark.parametrize("if4,if6", [(TAKES, TAKES), (REFUSES, TAKES), (None, None)])
def test_on_a_veth_auto_takes_tc_even_where_xdp_could_redirect(if4, if6):
    """XDP on a veth costs its peer GSO; tc measured faster across the relay."""
    choices = choose_hooks(device(2, "eth0", if4, kind="veth"), device(3, "eth1", if6, kind="veth"),
                           ipv4_forwarding=True)
    assert {c.name: c.hook for c in choices} == {"eth0": "tc", "eth1": "tc"}
    assert all("is a veth: XDP there" in c.why for c in choices)
    mixed = choose_hooks(device(2, "eth0", TAKES), device(3, "eth1", TAKES, kind="veth"),
                         ipv4_forwarding=True)
    assert {c.name: c.hook for c in mixed} == {"eth0": "xdp", "eth1": "tc"}
    one = device(2, "eth0", TAKES, kind="veth")
    assert [c.hook for c in choose_hooks(one, one, ipv4_forwarding=True)] == ["tc"]
    forced = choose_hooks(device(2, "eth0", TAKES, kind="veth"), device(3, "eth1", TAKES, kind="veth"),
                          ipv4_forwarding=True, path="xdp")
    assert {c.hook for c in forced} == {"xdp"}


def test_one_device_for_both_sides():
    both = device(2, "eth0", TAKES, kind=None)
    assert [(c.name, c.hook) for c in choose_hooks(both, both, ipv4_forwarding=True)] == [("eth0", "xdp")]
    assert [(c.name, c.hook) for c in choose_hooks(both, both, ipv4_forwarding=False)] == [("eth0", "tc")]
    refusing = device(2, "eth0", REFUSES, kind=None)
    assert [c.hook for c in choose_hooks(refusing, refusing, ipv4_forwarding=True)] == ["tc"]


@pytest.mark.parametrize("path", ["xdp", "tc"])
def test_a_forced_path_applies_everywhere(path):
    choices = choose_hooks(device(2, "eth0", REFUSES), device(3, "eth1", TAKES), ipv4_forwarding=False,
                           path=path)
    assert [c.hook for c in choices] == [path, path]
    assert all(c.why == f"--path {path}" for c in choices)


def test_the_devmap_holds_only_devices_that_take_redirects():
    checks = [device(2, "eth0", TAKES), device(3, "eth1", REFUSES), device(4, "eth2", None)]
    assert xdp_targets(checks) == [2]
    # Forced XDP trusts the user about devices the kernel cannot tell about, never
    # about those it says refuse.
    assert xdp_targets(checks, "xdp") == [2, 4]


def test_netlink_attributes_round_trip():
    raw = _attr(1, struct.pack("=I", 7)) + _attr(3, struct.pack("=Q", TAKES)) + _attr(2, b"netdev\0")
    parsed = _attrs(raw)
    assert struct.unpack("=I", parsed[1])[0] == 7
    assert struct.unpack("=Q", parsed[3])[0] == TAKES
    assert parsed[2] == b"netdev\0"
    assert len(_attr(2, b"abc")) % 4 == 0, "padded to 4 bytes"


# --------------------------------------------------------------------- the peer list, relay mode

SERVER = IPv4("192.0.2.1")
MAPPED_IP, MAPPED_PORT = IPv4("198.51.100.1"), 40000
CLIENT = TeredoAddress(server=SERVER, flags=0, port=MAPPED_PORT, client=MAPPED_IP).ipv6
HOST = IPv6("2001:db8:1::2")


def data_from_client(source=CLIENT, port=MAPPED_PORT):
    packet = icmpv6.build_echo_request(source, HOST, identifier=1, sequence=1, data=b"x")
    return Incoming(source=source, destination=HOST, udp_ip=MAPPED_IP, udp_port=port, packet=packet)


def test_relay_accepts_unlisted_clients_that_embed_their_udp_source_when_asked():
    """§5.4.2 allows it; a relay whose data path learns such clients needs it."""
    strict = PeerList(FakeClock(), relay=True)
    assert strict.on_incoming(data_from_client()) == []
    assert strict.drops["relay_unknown_peer"] == 1
    learning = PeerList(FakeClock(), relay=True, accept_unknown=True)
    incoming = data_from_client()
    assert learning.on_incoming(incoming) == [PeerTrusted(CLIENT, MAPPED_IP, MAPPED_PORT),
                                              Deliver(incoming.packet)]
    # The rest of §5.4.2 still holds: the source must embed exactly the UDP source,
    # and be a Teredo address at all.
    # (dropped; a challenge through its server may prove the other mapping)
    assert [type(a) for a in learning.on_incoming(data_from_client(port=MAPPED_PORT + 1))] \
        == [SendIndirectBubble]
    assert learning.drops["teredo_source_mismatch"] == 1
    assert learning.on_incoming(data_from_client(source=IPv6("2001:db8:9::1"))) == []
    assert learning.drops["relay_non_teredo_source"] == 1


# --------------------------------------------------------------------- the orchestrator, with fakes


class FakeSocket:
    def __init__(self):
        self.sent = []
        self.refusals = {}

    def sendto(self, payload, ip, port):
        self.sent.append((payload, IPv4(ip), port))
        return True


class FakeTunnel:
    def __init__(self):
        self.written = []

    def write(self, packet):
        self.written.append(packet)
        return len(packet)


class FakePeers:
    """The BPF peer table's interface (maps.PeerTable), in a dict."""

    def __init__(self):
        self.entries = {}

    def get(self, address):
        return self.entries.get(IPv6(address))

    def put(self, entry, only="any"):
        self.entries[entry.address] = entry

    def update(self, address, **changes):
        import dataclasses

        self.entries[IPv6(address)] = dataclasses.replace(self.entries[IPv6(address)], **changes)

    def delete(self, address):
        return self.entries.pop(IPv6(address), None) is not None

    def __iter__(self):
        return iter(list(self.entries.values()))

    def __len__(self):
        return len(self.entries)


class FakeAttachment:
    def __init__(self):
        self.peers = FakePeers()
        self.adopted = False


@pytest.fixture
def relay():
    clock = FakeClock(1000.0)
    r = RelayDaemon(RelayConfig(ipv4_iface="eth0", ipv6_iface="eth1"), clock=clock,
                    rng=random.Random(5).randbytes)
    r.sock, r.tunnel, r.att = FakeSocket(), FakeTunnel(), FakeAttachment()
    r.start_peer_sync(r.att.peers)
    r.address, r.icmp_address = IPv4("192.0.2.20"), IPv6("2001:db8:1::1")
    yield r
    assert r.shutdown() == []   # set-up made nothing here: nothing to remove


def test_bubble_source_is_link_local_and_random():
    first, second = bubble_source(random.Random(1).randbytes), bubble_source(random.Random(2).randbytes)
    assert first.is_link_local and second.is_link_local and first != second
    assert first.packed[8] & 0x02 == 0, "universal/local bit clear (RFC 4291 §2.5.1)"


def test_native_packet_to_an_unknown_client_takes_the_5_4_1_way(relay):
    """Queue it; a bubble through the client's server and one to its mapping; on the
    client's answer: trusted in the BPF map, the queue sent."""
    packet = icmpv6.build_echo_request(HOST, CLIENT, identifier=9, sequence=1, data=b"hello")
    relay.on_tun_packet(packet)
    sent = {(ip, port): P.parse_ipv6(payload) for payload, ip, port in relay.sock.sent}
    assert set(sent) == {(MAPPED_IP, MAPPED_PORT), (SERVER, C.TEREDO_PORT)}
    challenge = relay.peers.challenge(CLIENT)
    for bubble in sent.values():
        assert P.is_bubble(bubble)
        assert bubble.src == challenge and bubble.dst == CLIENT
    assert relay.att.peers.get(CLIENT) is None, "not trusted before it answers"

    relay.sock.sent.clear()
    answer = encap.build_udp_payload(P.build_bubble(CLIENT, challenge))
    relay.on_datagram(answer, MAPPED_IP, MAPPED_PORT)
    entry = relay.att.peers.get(CLIENT)
    assert entry.trusted and (entry.mapped_ipv4, entry.mapped_port) == (MAPPED_IP, MAPPED_PORT)
    assert entry.last_rx_ns > 0
    assert relay.sock.sent == [(packet, MAPPED_IP, MAPPED_PORT)], "the queued packet, as it was"
    assert relay.counters["peer_trusted"] == 1


def test_packets_the_fast_path_punted_from_a_learned_client_are_forwarded(relay):
    """E.g. XDP found no neighbour yet: the slow path delivers into the tun, where
    the kernel resolves and forwards."""
    relay.att.peers.put(PeerEntry(address=CLIENT, mapped_ipv4=MAPPED_IP, mapped_port=MAPPED_PORT,
                                  flags=PeerFlag.TRUSTED | PeerFlag.LEARNED, last_rx_ns=1))
    incoming = data_from_client()
    relay.on_datagram(encap.build_udp_payload(incoming.packet), MAPPED_IP, MAPPED_PORT)
    assert relay.tunnel.written == [incoming.packet]
    assert relay.att.peers.get(CLIENT).flags & PeerFlag.LEARNED, "the data path's entry is kept"


def test_a_server_s_traffic_is_not_for_a_relay(relay):
    rs = encap.build_udp_payload(icmpv6.build_router_solicitation(),
                                 auth=encap.AuthHeader(nonce=bytes(8)))
    relay.on_datagram(rs, MAPPED_IP, MAPPED_PORT)
    relay.on_datagram(b"\x00\x07junk", MAPPED_IP, MAPPED_PORT)
    assert relay.tunnel.written == [] and relay.sock.sent == []
    assert relay.counters["drop_authentication_header"] == 1
    assert relay.counters["drop_malformed_teredo_indicator"] == 1


def test_unreachable_destinations_get_a_rate_limited_icmpv6_error(relay):
    """A non-Teredo destination routed into the tun is a routing mistake (Miredo:
    address unreachable); the errors are rate limited, and none about errors."""
    for n in range(int(C.RELAY_ICMPV6_ERRORS_PER_S * 4) + 20):
        packet = icmpv6.build_echo_request(HOST, "2001:db8:7::1", identifier=1, sequence=n, data=b"z")
        relay.on_tun_packet(packet)
    errors = [icmpv6.parse_icmpv6(w) for w in relay.tunnel.written]
    assert errors, "answered"
    assert len(errors) < int(C.RELAY_ICMPV6_ERRORS_PER_S * 4) + 20, "rate limited"
    first = errors[0]
    assert (first.type, first.code) == (C.ICMPV6_DESTINATION_UNREACHABLE, C.ICMPV6_CODE_ADDRESS_UNREACHABLE)
    assert first.src == relay.icmp_address and first.dst == HOST
    assert relay.counters["drop_unreachable_rate_limited"] > 0
    relay.tunnel.written.clear()
    error = icmpv6.build_icmpv6(HOST, "2001:db8:7::1", 1, 0, b"\0" * 4 + b"x" * 40, hop_limit=64)
    relay.clock.advance(10)
    relay.on_tun_packet(error)
    assert relay.tunnel.written == [], "RFC 4443 §2.4 (e)"


def test_peer_table_rows_match_the_client_s(relay):
    relay.att.peers.put(PeerEntry(address=CLIENT, mapped_ipv4=MAPPED_IP, mapped_port=MAPPED_PORT,
                                  flags=PeerFlag.TRUSTED | PeerFlag.LEARNED, last_rx_ns=1, rx_packets=3))
    relay.on_tun_packet(icmpv6.build_echo_request(HOST, TeredoAddress(server=SERVER, flags=0, port=2,
                                                                  client=IPv4("198.51.100.2")).ipv6,
                                              identifier=1, sequence=1, data=b"q"))
    rows = relay.peer_table()
    assert [r["in_datapath"] for r in rows] == [True, False]
    assert rows[0]["mapped"] == "198.51.100.1:40000" and rows[0]["learned"] and rows[0]["rx_packets"] == 3
    assert rows[1]["trusted"] is False and rows[1]["queued"] == 1 and rows[1]["bubbles"] == 1
    for row in rows:
        assert {"address", "mapped", "trusted", "learned", "last_rx_s", "last_tx_s", "rx_packets",
                "tx_packets"} <= set(row)


def test_expiry_reads_the_data_path_only_for_the_peers_it_acts_on(relay):
    """A peer the fast path keeps busy is not expired; an idle one is; and only the
    peers whose deadline came are looked up in the BPF table, not every peer."""
    clients = []
    for i in range(20):
        ip, port = IPv4(f"198.51.100.{i + 10}"), 41000 + i
        client = TeredoAddress(server=SERVER, flags=0, port=port, client=ip).ipv6
        relay.on_tun_packet(icmpv6.build_echo_request(HOST, client, identifier=1, sequence=1, data=b"x"))
        relay.on_datagram(encap.build_udp_payload(P.build_bubble(client, relay.bubble_address)), ip, port)
        clients.append(client)
    assert all(relay.att.peers.get(c).trusted for c in clients)
    # The data path's times on the test's clock (the relay wrote the kernel's).
    for client in clients:
        relay.att.peers.update(client, last_rx_ns=int(relay.clock.monotonic() * 1e9))
    busy, idle = clients[0], clients[1]
    # The others' deadlines come later: they were heard from later.
    relay.clock.advance(C.PEER_EXPIRY / 2)
    for client in clients[2:]:
        relay.peers.observe(client, last_rx=relay.clock.monotonic())
    relay.clock.advance(C.PEER_EXPIRY / 2 - 1)
    # Meanwhile the fast path carried the busy client's traffic: only the BPF entry knows.
    relay.att.peers.update(busy, last_rx_ns=int(relay.clock.monotonic() * 1e9))
    relay.clock.advance(2)

    looked_up = []
    get = relay.att.peers.get
    relay.att.peers.get = lambda address: looked_up.append(IPv6(address)) or get(address)
    relay.peer_timers(relay.clock.monotonic())
    assert idle not in relay.peers and relay.att.peers.get(idle) is None
    assert busy in relay.peers
    assert all(c in relay.peers for c in clients[2:])
    assert set(looked_up) <= {busy, idle}, "only the peers whose deadline came"


# -- crash-only and privileges (issue 12) -------------------------------------------------

def test_the_relay_gives_up_root_unless_told_to_stay(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    plain = RelayDaemon(RelayConfig(ipv4_iface="eth0", ipv6_iface="eth1"))
    assert plain.privileged_user() == "nobody"
    root = RelayDaemon(RelayConfig(ipv4_iface="eth0", ipv6_iface="eth1", user="root"))
    assert root.privileged_user() is None
    for r in (plain, root):
        r.loop.close()


def test_a_crash_while_relaying_leaves_the_data_path_for_the_next_relay(relay):
    relay.crashed()
    assert not relay.keep_datapath, "a crash during set-up removes what set-up made"
    relay.serving_now = True
    relay.crashed()
    assert relay.keep_datapath
