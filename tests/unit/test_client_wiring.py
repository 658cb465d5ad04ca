"""The client daemon's wiring (client/daemon.py and the skeleton under it), without root: fakes stand in for the socket, the tunnel,
the data path and the hook; the protocol core (Qualification, PeerList) is real.

The point is what the orchestrator does with each action: which datagram goes
where, what reaches the tunnel, what is written to the BPF peer table, what the
hook hears, and in which order the shutdown removes things. Time is a FakeClock.
"""

from __future__ import annotations

import ipaddress
import random
from types import SimpleNamespace

import pytest

from xdp_teredo.client import config as cfg
from xdp_teredo.client import plan as C
from xdp_teredo.client.daemon import ClientDaemon
from xdp_teredo.client.servers import TeredoServer
from xdp_teredo.datapath import PeerEntry, PeerFlag
from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.teredo import constants as K
from xdp_teredo.teredo import encap, icmpv6
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address
SERVER = IPv4("192.0.2.1")
LOCAL = (IPv4("10.1.0.2"), 40000)
MAPPED = (IPv4("198.51.100.1"), 50000)
PEER_SERVER = IPv4("192.0.2.10")
PEER_MAPPED = (IPv4("203.0.113.20"), 60000)
PEER = TeredoAddress(server=PEER_SERVER, flags=0, port=PEER_MAPPED[1], client=PEER_MAPPED[0]).ipv6
NATIVE = IPv6("2001:db8:1::2")
RELAY = (IPv4("192.0.2.20"), 3544)


# -- fakes ----------------------------------------------------------------------------------

class FakeSocket:
    local_address = LOCAL

    def __init__(self):
        self.sent = []          # (payload, ip, port)
        self.refusals = {}

    def sendto(self, payload, ip, port):
        self.sent.append((bytes(payload), IPv4(ip), port))
        return True

    def take(self):
        sent, self.sent = self.sent, []
        return sent

    def close(self):
        self.closed = True


class FakeTunnel:
    def __init__(self, journal):
        self.name, self.ifindex, self.mtu = "teredo", 7, K.TEREDO_MTU
        self.address = self.link_local = None
        self.written = []
        self.journal = journal

    def set_address(self, address):
        self.journal.append(("set_address", IPv6(address)))
        self.address, self.link_local = IPv6(address), IPv6(K.LINK_LOCAL_RESTRICTED)

    def replace_address(self, old, new):
        assert IPv6(old) == self.address
        self.journal.append(("replace_address", IPv6(old), IPv6(new)))
        self.address = IPv6(new)

    def clear_address(self):
        self.journal.append(("clear_address",))
        self.address = self.link_local = None

    def set_mtu(self, mtu):
        self.mtu = mtu

    def write(self, packet):
        self.written.append(bytes(packet))
        return len(packet)

    def close(self):
        self.journal.append(("tunnel_close",))

    def release(self):
        self.journal.append(("tunnel_release",))


class FakePeers:
    def __init__(self):
        self.entries = {}
        self.cleared = 0

    def put(self, entry, only="any"):
        self.entries[entry.address] = entry

    def get(self, address):
        return self.entries.get(IPv6(address))

    def update(self, address, **changes):
        entry = self.entries[IPv6(address)]
        for key, value in changes.items():
            setattr(entry, key, value)
        return entry

    def delete(self, address):
        return self.entries.pop(IPv6(address), None) is not None

    def clear(self):
        self.cleared += 1
        self.entries.clear()

    def __iter__(self):
        return iter(list(self.entries.values()))


class FakeAttachment:
    def __init__(self, journal):
        self.peers = FakePeers()
        self.configs = []
        self.xdp_attached = "native"
        self.ingress = "xdp"
        self.journal = journal

    def configure(self, config):
        self.configs.append(config)
        return config

    def stats(self):
        return {"decapsulated": {"packets": 0, "bytes": 0}}

    def detach(self):
        self.journal.append(("detach",))

    def release(self):
        self.journal.append(("release",))


class FakeHook:
    def __init__(self, journal):
        self.runs = []
        self.journal = journal

    def up(self, address, link_local, mtu):
        self.runs.append(("up", IPv6(address), IPv6(link_local), mtu))

    def down(self):
        self.runs.append(("down",))

    def destroy(self):
        self.journal.append(("hook_destroy",))


@pytest.fixture
def client():
    journal = []
    config = cfg.ClientConfig(servers=(str(SERVER),), server_source=cfg.SOURCE_COMMAND_LINE,
                              interface="eth0")
    plan = C.Plan(config=config, nic=C.Nic("eth0", 2, LOCAL[0]),
                  servers=(TeredoServer(str(SERVER), SERVER, SERVER + 1),),
                  timers=C.Timers(refresh_interval=30, restart_delay=10, sync_interval=1))
    clock = FakeClock(1000.0)
    c = ClientDaemon(plan, clock=clock, rng=random.Random(4380).randbytes)
    # What set-up hands over, fakes in place of the real things, in set-up's order.
    c.own_tunnel(FakeTunnel(journal))
    c.own_socket(FakeSocket())
    c.own_datapath(FakeAttachment(journal))
    c.start_peer_sync(c.att.peers)
    c.hook = FakeHook(journal)
    c.control = SimpleNamespace(close=lambda: journal.append(("control_close",)),
                                served=0, refused=0)
    c.journal, c.fake_clock = journal, clock
    yield c
    c.loop.close()


# -- helpers ------------------------------------------------------------------------------------

def _rs_nonce(sent) -> bytes:
    [(payload, ip, port)] = sent
    assert (ip, port) == (SERVER, K.TEREDO_PORT)
    teredo = encap.parse_udp_payload(payload)
    rs = icmpv6.parse_router_solicitation(teredo.ipv6)
    assert rs.src == IPv6(K.LINK_LOCAL_RESTRICTED) and rs.dst == IPv6(K.ALL_ROUTERS)
    assert teredo.auth is not None and teredo.origin is None
    return teredo.auth.nonce


def _ra(nonce, mapped=MAPPED, server=SERVER, prefixes=None):
    prefix = f"2001:0:{int(server) >> 16:x}:{int(server) & 0xFFFF:x}::/64"
    ra = icmpv6.build_router_advertisement("fe80::8000:f227:bec8:6bd6", K.LINK_LOCAL_RESTRICTED,
                                           prefixes=prefixes or [prefix])
    return encap.build_udp_payload(ra, auth=encap.AuthHeader(nonce=nonce),
                                   origin=encap.OriginIndication(port=mapped[1], address=mapped[0]))


def qualify(c, mapped=MAPPED):
    c.start_qualification()
    nonce = _rs_nonce(c.sock.take())
    c.on_datagram(_ra(nonce, mapped), SERVER, K.TEREDO_PORT)
    _take_nat_probe(c)
    return c.address


def _take_nat_probe(c) -> bytes:
    """The one RS to the server's secondary address that qualification is followed
    by (teredo/nat_type.py): taken off the socket, its nonce returned."""
    sent = c.sock.take()
    probes = [p for p in sent if p[1:] == (c.nat_probe.server, K.TEREDO_PORT)]
    assert len(probes) == 1, sent
    for other in sent:
        if other not in probes:
            c.sock.sent.append(other)
    return encap.parse_udp_payload(probes[0][0]).auth.nonce


def test_the_nat_type_comes_from_the_secondary_address_s_view(client):
    client.start_qualification()
    nonce = _rs_nonce(client.sock.take())
    client.on_datagram(_ra(nonce), SERVER, K.TEREDO_PORT)
    assert client.nat_probe.server == IPv4("192.0.2.2")          # the primary plus one
    assert client.status()["nat_type"] == "probing"
    probe_nonce = _take_nat_probe(client)
    # Another mapping for the secondary address: a symmetric NAT. Not an RA for the
    # qualification (which would have refused its nonce).
    client.on_datagram(_ra(probe_nonce, (MAPPED[0], MAPPED[1] + 3), server=SERVER),
                       IPv4("192.0.2.2"), K.TEREDO_PORT)
    status = client.status()
    assert status["nat_type"] == "symmetric" and status["nat_detail"]["sequential"]
    assert status["mapped"] == f"{MAPPED[0]}:{MAPPED[1]}" and not client.qual.ignored
    # Once per mapping: a refresh with the same mapping sends no new probe.
    client.qualification(client.qual.refresh_now(client.clock.monotonic()))
    assert all(ip == SERVER for _, ip, _ in client.sock.take())


def _ipv6(src, dst, payload=b"data", next_header=17):
    return P.Ipv6Packet(src=src, dst=dst, next_header=next_header, hop_limit=64,
                        payload=payload).to_bytes()


# -- qualification --------------------------------------------------------------------------------

def test_qualifies_only_on_an_ra_that_echoes_the_nonce(client):
    client.start_qualification()
    nonce = _rs_nonce(client.sock.take())
    wrong = bytes(8) if nonce != bytes(8) else b"\1" * 8
    client.on_datagram(_ra(wrong), SERVER, K.TEREDO_PORT)
    client.on_datagram(_ra(nonce), IPv4("192.0.2.66"), K.TEREDO_PORT)   # not from the server
    assert client.address is None and client.tunnel.address is None
    assert client.qual.ignored == {"nonce_mismatch": 1, "not_from_server": 1}
    client.on_datagram(_ra(nonce), SERVER, K.TEREDO_PORT)
    address = TeredoAddress.from_ipv6(client.address)
    assert (address.server, address.client, address.port) == (SERVER, *MAPPED)
    assert client.tunnel.address == client.address
    config = client.att.configs[-1]
    assert config.enabled and config.teredo_address == client.address
    assert (config.local_ipv4, config.local_port) == LOCAL
    assert client.hook.runs == [("up", client.address, IPv6(K.LINK_LOCAL_RESTRICTED), 1280)]
    status = client.status()
    assert status["state"] == "qualified" and status["mapped"] == "198.51.100.1:50000"
    assert status["nat"] is True and status["server"] == str(SERVER)


def test_an_ra_with_two_prefixes_is_refused(client):
    client.start_qualification()
    nonce = _rs_nonce(client.sock.take())
    client.on_datagram(_ra(nonce, prefixes=["2001:0:c000:201::/64", "2001:0:c000:202::/64"]),
                     SERVER, K.TEREDO_PORT)
    assert client.address is None and client.qual.ignored["no_prefix"] == 1


def test_no_nat_when_the_server_sees_our_own_socket(client):
    qualify(client, mapped=LOCAL)
    assert client.status()["nat"] is False


def test_a_new_mapping_replaces_the_address_tells_the_hook_and_flushes_peers(client):
    first = qualify(client)
    client.on_tun_packet(_ipv6(first, PEER))             # a peer, being resolved
    client.sock.take()
    client.fake_clock.advance(30)
    # One the data path learned by itself, busy (so not expired by the sync).
    client.att.peers.put(PeerEntry(address=NATIVE, mapped_ipv4=RELAY[0], mapped_port=RELAY[1],
                                   flags=PeerFlag.TRUSTED | PeerFlag.LEARNED,
                                   last_rx_ns=int(client.fake_clock.monotonic() * 1e9)))
    client.loop.tick()                                     # refresh RS
    nonce = _rs_nonce(client.sock.take())
    client.on_datagram(_ra(nonce, (IPv4("198.51.100.2"), 50000)), SERVER, K.TEREDO_PORT)
    second = client.address
    assert second != first and TeredoAddress.from_ipv6(second).client == IPv4("198.51.100.2")
    assert ("replace_address", first, second) in client.journal
    assert [r[0] for r in client.hook.runs] == ["up", "up"] and client.hook.runs[1][1] == second
    assert len(client.peers) == 0 and client.att.peers.entries == {}
    assert client.att.peers.cleared == 2   # once at qualification, once now
    assert client.att.configs[-1].teredo_address == second


def test_losing_the_server_withdraws_the_address_and_runs_the_hook_down(client):
    qualify(client)
    client.fake_clock.advance(30)
    client.loop.tick()
    for _ in range(K.QUALIFICATION_TRIES):
        assert client.sock.take()                     # an RS, unanswered
        client.fake_clock.advance(K.QUALIFICATION_TIMEOUT)
        client.loop.tick()
    assert client.status()["state"] == "offline"
    assert client.tunnel.address is None and ("clear_address",) in client.journal
    assert client.hook.runs[-1] == ("down",)
    assert not client.att.configs[-1].enabled


# -- peers ------------------------------------------------------------------------------------------

def test_a_teredo_peer_is_bubbled_then_trusted_installed_and_flushed(client):
    ours = qualify(client)
    data = _ipv6(ours, PEER)
    client.on_tun_packet(data)
    sent = client.sock.take()
    # §5.2.6: a direct bubble to its mapping, an indirect one through its server.
    assert [(ip, port) for _, ip, port in sent] == [PEER_MAPPED, (PEER_SERVER, K.TEREDO_PORT)]
    # The direct one from our address; the indirect one from our challenge.
    for (payload, _, _), source in zip(sent, (ours, client.peers.challenge(PEER))):
        bubble = P.parse_ipv6(payload)
        assert P.is_bubble(bubble) and (bubble.src, bubble.dst) == (source, PEER)
    # The peer answers with a bubble from its mapping: trusted, installed, flushed.
    client.on_datagram(P.build_bubble(PEER, ours), *PEER_MAPPED)
    entry = client.att.peers.get(PEER)
    assert entry is not None and entry.flags == PeerFlag.TRUSTED
    assert (entry.mapped_ipv4, entry.mapped_port) == PEER_MAPPED and entry.last_rx_ns > 0
    assert client.sock.take() == [(data, *PEER_MAPPED)]
    assert client.tunnel.written == []                 # a bubble is not delivered


def test_an_indirect_bubble_from_our_server_is_answered_directly(client):
    ours = qualify(client)
    forwarded = encap.build_udp_payload(P.build_bubble(PEER, ours),
                                        origin=encap.OriginIndication(port=PEER_MAPPED[1],
                                                                      address=PEER_MAPPED[0]))
    client.on_datagram(forwarded, SERVER, K.TEREDO_PORT)
    [(payload, ip, port)] = client.sock.take()
    assert (ip, port) == PEER_MAPPED and P.is_bubble(P.parse_ipv6(payload))
    assert client.tunnel.written == []


def test_data_from_a_teredo_source_embedding_its_mapping_is_delivered(client):
    ours = qualify(client)
    data = _ipv6(PEER, ours)
    client.on_datagram(data, *PEER_MAPPED)
    assert client.tunnel.written == [data]
    assert client.att.peers.get(PEER).trusted


def test_a_native_destination_runs_the_echo_test_through_our_server(client):
    ours = qualify(client)
    data = _ipv6(ours, NATIVE)
    client.on_tun_packet(data)
    [(payload, ip, port)] = client.sock.take()
    assert (ip, port) == (SERVER, K.TEREDO_PORT)
    echo = icmpv6.parse_echo(payload)
    assert (echo.src, echo.dst, echo.reply) == (ours, NATIVE, False)
    assert len(echo.data) >= K.ECHO_NONCE_MIN_LEN
    # The relay nearest the host answers; its address becomes the mapping (§5.2.9).
    reply = echo.answer().to_bytes()
    client.on_datagram(reply, *RELAY)
    entry = client.att.peers.get(NATIVE)
    assert entry.flags == PeerFlag.TRUSTED | PeerFlag.RELAY
    assert (entry.mapped_ipv4, entry.mapped_port) == RELAY
    assert client.sock.take() == [(data, *RELAY)]
    assert client.tunnel.written == []                  # our own test's answer


def test_a_peer_that_never_answers_gets_the_sender_an_icmpv6_error(client):
    ours = qualify(client)
    data = _ipv6(ours, PEER)
    for _ in range(K.BUBBLE_MAX_UNANSWERED):
        client.on_tun_packet(data)
        client.fake_clock.advance(K.BUBBLE_MIN_INTERVAL)
    assert client.tunnel.written == []
    client.on_tun_packet(data)                  # §5.2.6: no more bubbles allowed
    [error] = client.tunnel.written
    message = icmpv6.parse_icmpv6(error)
    assert (message.type, message.code) == (K.ICMPV6_DESTINATION_UNREACHABLE,
                                            K.ICMPV6_CODE_ADDRESS_UNREACHABLE)
    assert (message.src, message.dst) == (IPv6(K.LINK_LOCAL_RESTRICTED), ours)
    assert message.body[4:] == data
    client.on_tun_packet(data)                  # rate limited: 100 ms have not passed
    assert len(client.tunnel.written) == 1
    assert client.counters["unreachable"] == 2


def test_what_is_not_ours_is_dropped_and_counted(client):
    ours = qualify(client)
    client.on_datagram(_ipv6(PEER, IPv6("2001:0:c000:201::99")), *PEER_MAPPED)
    client.on_tun_packet(_ipv6(IPv6("2001:db8::7"), PEER))
    client.on_tun_packet(_ipv6(ours, IPv6("ff02::16")))
    client.on_datagram(b"\x45" + bytes(60), *PEER_MAPPED)
    assert client.tunnel.written == [] and client.sock.take() == []
    drops = {k: v for k, v in client.counters.items() if k.startswith("drop_")}
    assert drops == {"drop_rx_not_our_address": 1, "drop_tx_source_not_ours": 1,
                     "drop_tx_multicast": 1, "drop_malformed_ipv6_version": 1}


def test_nothing_moves_before_qualification(client):
    client.start_qualification()
    client.sock.take()
    client.on_tun_packet(_ipv6(IPv6("2001:0:c000:201::1"), PEER))
    client.on_datagram(_ipv6(PEER, IPv6("2001:0:c000:201::1")), *PEER_MAPPED)
    assert client.sock.take() == [] and client.tunnel.written == []
    assert client.counters["drop_tx_not_qualified"] == client.counters["drop_rx_not_qualified"] == 1


def test_the_data_paths_activity_keeps_peers_and_idle_learned_ones_expire(client):
    ours = qualify(client)
    client.on_datagram(_ipv6(PEER, ours), *PEER_MAPPED)        # trusted via the slow path
    learned = IPv6("2001:0:c000:201:0:f227:3fff:fffd")
    client.att.peers.put(PeerEntry(address=learned, mapped_ipv4="198.51.100.9", mapped_port=7,
                                   flags=PeerFlag.TRUSTED | PeerFlag.LEARNED,
                                   last_rx_ns=1, last_tx_ns=1))
    # The data path saw PEER just now (monotonic clock in ns, the FakeClock's base).
    now_ns = int(client.fake_clock.monotonic() * 1e9)
    client.att.peers.update(PEER, last_rx_ns=now_ns, last_tx_ns=now_ns)
    client.sync_from_datapath()
    assert learned not in client.att.peers.entries          # idle far beyond expiry
    assert client.peers.get(PEER).last_rx == pytest.approx(client.fake_clock.monotonic())
    assert PEER in client.att.peers.entries


def test_the_peer_table_lists_map_entries_and_pending_peers(client):
    ours = qualify(client)
    client.on_datagram(_ipv6(PEER, ours), *PEER_MAPPED)
    client.on_tun_packet(_ipv6(ours, IPv6("2001:0:c000:20a:0:f227:3fff:fff0")))
    rows = {row["address"]: row for row in client.peer_table()}
    assert rows[str(PEER)]["trusted"] and rows[str(PEER)]["in_datapath"]
    pending = rows["2001:0:c000:20a:0:f227:3fff:fff0"]
    assert not pending["trusted"] and pending["queued"] == 1 and pending["bubbles"] == 1


# -- shutdown --------------------------------------------------------------------------------

def test_shutdown_removes_in_order_and_tries_every_step(client):
    qualify(client)
    client.tunnel.close = lambda: (_ for _ in ()).throw(RuntimeFailure("busy"))
    failures = client.shutdown()
    assert failures == ["tunnel: busy"]
    assert [j[0] for j in client.journal[-4:]] == ["control_close", "detach", "clear_address",
                                                   "hook_destroy"]
    assert client.shutdown() == []                    # idempotent


# -- the pure helpers ---------------------------------------------------------------------------

def test_timers_must_make_sense():
    with pytest.raises(UsageError, match="refresh-interval"):
        C.Timers(refresh_interval=0)
    with pytest.raises(UsageError):
        C.Timers(qualification_tries=0)
    assert C.Timers().refresh_interval == K.REFRESH_INTERVAL == 30


def test_resolve_looks_names_up_at_once_and_keeps_the_order():
    calls = []

    def resolver(name):
        calls.append(name)
        if name == "gone.example":
            raise OSError(-2, "Name or service not known")
        return {"a.example": ["192.0.2.1"], "b.example": ["198.51.100.7"]}[name]

    builtin = cfg.ClientConfig(servers=("gone.example", "a.example", "b.example"))
    servers = C.resolve(builtin, resolver)
    assert [str(s.primary) for s in servers] == ["192.0.2.1", "198.51.100.7"]
    assert sorted(calls) == ["a.example", "b.example", "gone.example"]   # each once
    explicit = cfg.ClientConfig(servers=("a.example", "gone.example"),
                                server_source=cfg.SOURCE_COMMAND_LINE)
    with pytest.raises(UsageError, match='cannot resolve Teredo server address "gone.example"'):
        C.resolve(explicit, resolver)
    with pytest.raises(UsageError, match="non global"):
        C.resolve(cfg.ClientConfig(servers=("10.0.0.1",),
                                   server_source=cfg.SOURCE_COMMAND_LINE), resolver)


def test_prepare_refuses_a_relay_config_and_an_unknown_user(tmp_path):
    conf = tmp_path / "miredo.conf"
    conf.write_text("RelayType cone\n")
    with pytest.raises(UsageError, match="relay mode"):
        C.prepare(cfg.command_line(interface="eth0", servers=["192.0.2.1"]), str(conf))
    with pytest.raises(UsageError, match="no such user"):
        C.prepare(cfg.command_line(interface="eth0", servers=["192.0.2.1"],
                                   user="no-such-user-here"), default_path="")
    with pytest.raises(UsageError, match="cannot be called like the interface"):
        C.prepare(cfg.command_line(interface="teredo", servers=["192.0.2.1"]), default_path="")


def test_status_before_anything_resolved(client):
    client.servers = ()
    client.qual = None
    status = client.status()
    assert status["state"] == "offline" and status["server"] is None
    assert SimpleNamespace(**status).address is None


# -- qualify first, fast path later (client/handover.py) ----------------------------------------

@pytest.fixture
def slow_client():
    """A client as a fresh set-up leaves it while the programs compile: no data path."""
    from xdp_teredo.datapath.rxhook import ReceiveHook

    journal = []
    config = cfg.ClientConfig(servers=(str(SERVER),), server_source=cfg.SOURCE_COMMAND_LINE,
                              interface="eth0")
    plan = C.Plan(config=config, nic=C.Nic("eth0", 2, LOCAL[0], "veth"),
                  servers=(TeredoServer(str(SERVER), SERVER, SERVER + 1),),
                  timers=C.Timers(refresh_interval=30, restart_delay=10, sync_interval=1))
    clock = FakeClock(1000.0)
    c = ClientDaemon(plan, clock=clock, rng=random.Random(4380).randbytes)
    c.receive = ReceiveHook("tc", None, "eth0 is a veth")
    c.own_tunnel(FakeTunnel(journal))
    c.own_socket(FakeSocket())
    c.start_peer_sync(None)
    c.slow_path_guard()
    c.hook = FakeHook(journal)
    c.control = SimpleNamespace(close=lambda: journal.append(("control_close",)),
                                served=0, refused=0)
    c.journal, c.fake_clock = journal, clock
    yield c
    c.loop.close()


def _udp(src, dst, sport, dport):
    import struct
    return _ipv6(src, dst, struct.pack("!HHHH", sport, dport, 12, 0) + b"data")


def test_it_qualifies_and_carries_a_peer_before_the_programs_are_loaded(slow_client):
    c = slow_client
    ours = qualify(c)
    assert c.tunnel.address == ours                      # the address does not wait
    status = c.status()
    assert status["fast_path"] == "off" and status["decap"] == "tc", status
    # A peer trusted and carried on the slow path alone (as Miredo).
    data = _udp(ours, PEER, 5000, 6000)
    c.on_tun_packet(data)
    c.sock.take()
    c.on_datagram(P.build_bubble(PEER, ours), *PEER_MAPPED)
    assert c.sock.take() == [(data, *PEER_MAPPED)]
    # Its answer comes in through the guard, which saw our packet leave.
    c.on_datagram(_udp(PEER, ours, 6000, 5000), *PEER_MAPPED)
    assert c.tunnel.written == [_udp(PEER, ours, 6000, 5000)]
    c.on_datagram(_udp(PEER, ours, 6000, 5001), *PEER_MAPPED)   # nobody asked for it
    assert len(c.tunnel.written) == 1
    assert c.peer_table() and c.peer_table()[0]["address"] == str(PEER)
    c.loop.tick()                                       # the sync has no table: nothing happens


def test_the_hand_over_installs_the_trusted_peers_flows_and_the_mapping(slow_client):
    c = slow_client
    ours = qualify(c)
    c.on_tun_packet(_udp(ours, PEER, 5000, 6000))
    c.on_datagram(P.build_bubble(PEER, ours), *PEER_MAPPED)
    flows = dict(c.guard.flows)
    assert flows, "the slow path recorded our flow"
    att = FakeAttachment(c.journal)
    att.guard = SimpleNamespace(configure=lambda settings: None, flows={}, fragments={},
                                allowed=set())
    c.prog = SimpleNamespace(slow_path=SimpleNamespace(write=lambda limits: None), guard=None)
    c._attach = lambda running: att
    c.hand_over()
    assert c.att is att and c.sync.table is att.peers
    entry = att.peers.get(PEER)
    assert entry is not None and (entry.mapped_ipv4, entry.mapped_port) == PEER_MAPPED
    assert att.guard.flows == flows and c.guard.flows is att.guard.flows
    config = att.configs[-1]
    assert config.enabled and config.teredo_address == ours
    assert c.status()["fast_path"] == "on"
    # From here the tc program records the flows: the slow path does not again.
    c.on_tun_packet(_udp(ours, NATIVE, 5000, 6000))
    assert att.guard.flows == flows


def test_a_compile_that_fails_after_qualifying_stops_the_client(slow_client):
    c = slow_client
    qualify(c)

    class Failed:
        timeout = 1.0

        def fileno(self):
            return -1

        def result(self):
            raise RuntimeFailure("cannot compile bpf/client.c: boom")

        def cancel(self):
            pass

    c.compiling = Failed()
    c.on_compiled()
    assert c.failed == "cannot compile bpf/client.c: boom" and c.loop.stopping
    assert c.att is None and c.compiling is None
