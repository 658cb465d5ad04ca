"""The inbound guard's policy (xdp_teredo/teredo/guard.py), without a kernel, and
the client's slow path through it (fakes from test_client_wiring).

The same rules run in BPF; tests/bpf/test_guard.py holds the C to this module.
"""

import ipaddress

import pytest
from click.testing import CliRunner
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6, IPv6ExtHdrFragment,
                                IPv6ExtHdrRouting)
from scapy.packet import Raw

from xdp_teredo import cli as cli_mod
from xdp_teredo.datapath import layout
from xdp_teredo.errors import UsageError
from xdp_teredo.teredo import guard as G

# The client fixture and its helpers: the orchestrator with fakes around it.
from tests.unit.test_client_wiring import NATIVE, PEER, PEER_MAPPED, RELAY, client, qualify  # noqa: F401

US = "2001:0:c000:201:0:3fff:fffe:ffff"
THEM = "2001:db8::7"
SECOND = 1_000_000_000
STATEFUL = G.Settings()


class Clock:
    def __init__(self, now=1000 * SECOND):
        self.now = now

    def __call__(self):
        return self.now


def guard(settings=STATEFUL, clock=None):
    return G.Guard(settings, now_ns=clock or Clock())


def inbound(l4, **kw) -> bytes:
    return bytes(IPv6(src=THEM, dst=US, **kw) / l4)


def outbound(l4, **kw) -> bytes:
    return bytes(IPv6(src=US, dst=THEM, **kw) / l4)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("text, rule", [
    ("tcp/22", ("tcp", 22, 22)), ("UDP/53", ("udp", 53, 53)), (" tcp/8000-8080 ", ("tcp", 8000, 8080)),
    ("udp/65535", ("udp", 65535, 65535)),
])
def test_allow_rules_parse(text, rule):
    parsed = G.parse_allow(text)
    assert (parsed.protocol, parsed.first, parsed.last) == rule
    assert G.parse_allow(str(parsed)) == parsed


@pytest.mark.parametrize("text, says", [
    ("22", "want PROTO/PORT"), ("icmp/8", "want PROTO/PORT"), ("tcp/", "not a number"),
    ("tcp/ssh", "not a number"), ("tcp/0", "1-65535"), ("tcp/70000", "1-65535"),
    ("tcp/90-80", "1-65535"), ("tcp/1-2-3", "not a number"),
])
def test_bad_allow_rules_are_usage_errors(text, says):
    with pytest.raises(UsageError, match=says):
        G.parse_allow(text)


def test_settings_from_options():
    s = G.Settings.from_options(None, ["tcp/22", "udp/5000-5001"])
    assert s.policy is G.Policy.STATEFUL
    assert s.allowed_pairs() == {(6, 22), (17, 5000), (17, 5001)}
    assert s.describe() == {"policy": "stateful", "allowed": ["tcp/22", "udp/5000-5001"]}
    assert G.Settings.from_options(None, [], default=G.Policy.OPEN).policy is G.Policy.OPEN
    with pytest.raises(UsageError, match="one of stateful, open"):
        G.Settings.from_options("closed", [])
    with pytest.raises(UsageError, match="at most 1024"):
        G.Settings.from_options("stateful", ["tcp/1-2000"])
    with pytest.raises(UsageError, match="positive"):
        G.Timeouts(udp=0)


@pytest.mark.parametrize("args, says", [
    (["attach", "eth0", "--inbound", "closed"], "'closed' is not one of"),
    (["attach", "eth0", "--allow", "tcp/x"], "--allow 'tcp/x'"),
    (["attach", "eth0", "--allow", "sctp/9"], "want PROTO/PORT"),
    (["relay", "--ipv4-iface", "a", "--ipv6-iface", "b", "--allow", "udp/0"], "1-65535"),
])
def test_bad_guard_options_are_one_line_exit_2(args, says):
    res = CliRunner().invoke(cli_mod.cli, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:") and says in lines[0], lines


def test_relay_refuses_an_unknown_policy():
    # The relay command keeps click's own usage message for its choices (exit 2 too).
    res = CliRunner().invoke(cli_mod.cli, ["relay", "--ipv4-iface", "a", "--ipv6-iface", "b",
                                           "--inbound", "x"])
    assert res.exit_code == 2 and "'x' is not one of 'stateful', 'open'" in res.output


def test_defaults_in_help():
    attach = CliRunner().invoke(cli_mod.cli, ["attach", "--help"]).output
    relay_help = CliRunner().invoke(cli_mod.cli, ["relay", "--help"]).output
    assert "[default: stateful]" in attach and "--allow PROTO/PORT" in attach
    assert "[default: open]" in relay_help and "--allow PROTO/PORT" in relay_help


def test_flow_states_are_the_c_contract():
    assert layout.FlowState is G.FlowState
    assert [int(s) for s in G.FlowState] == list(range(1, 9))
    assert set(G.VERDICTS) == {r.key for r in layout.Reason if r.name.startswith("GUARD_")}


# --------------------------------------------------------------------------- classify

def test_classify_keys_flows_as_the_host_sees_them():
    syn_in = G.classify(inbound(TCP(sport=443, dport=40000, flags="S")), inbound=True)
    syn_out = G.classify(outbound(TCP(sport=40000, dport=443, flags="S")), inbound=False)
    assert syn_in.key == syn_out.key == G.FlowKey(ipaddress.IPv6Address(US).packed,
                                                  ipaddress.IPv6Address(THEM).packed, 6, 40000, 443)
    assert syn_in.tcp_flags == G.TCP_SYN
    echo = G.classify(inbound(ICMPv6EchoReply(id=99)), inbound=True)
    assert (echo.key.proto, echo.key.local_port, echo.key.remote_port, echo.icmp_type) == (58, 99, 0, 129)


def test_classify_walks_extension_headers_and_fragments():
    routed = G.classify(inbound(IPv6ExtHdrRouting() / UDP(sport=1, dport=2)), inbound=True)
    assert (routed.key.proto, routed.key.local_port) == (17, 2)
    later = G.classify(inbound(IPv6ExtHdrFragment(nh=17, offset=3, id=77) / Raw(b"x" * 16)), inbound=True)
    assert later.later_fragment and later.fragment == (3, False, 77) and later.key.proto == 17
    first = G.classify(inbound(IPv6ExtHdrFragment(m=1, id=77) / UDP(dport=9)), inbound=True)
    assert not first.later_fragment and first.fragment == (0, True, 77) and first.key.local_port == 9


@pytest.mark.parametrize("packet", [
    b"", b"\x60" + bytes(38),                                   # no full IPv6 header
    bytes(IPv6(src=THEM, dst=US, nh=6) / Raw(b"\0" * 13)),       # TCP header cut short
    bytes(IPv6(src=THEM, dst=US, nh=0) / Raw(b"\x06\x05")),      # hop-by-hop longer than the packet
    bytes(IPv6(src=THEM, dst=US, nh=58) / Raw(b"\x80\0\0\0")),   # ICMPv6 without its 4 bytes
])
def test_what_cannot_be_read_is_unparsed(packet):
    assert G.classify(packet, inbound=True).key is None
    assert guard().inbound(packet) == G.UNPARSED
    assert guard(G.Settings(policy=G.Policy.OPEN)).inbound(packet) is None


# --------------------------------------------------------------------------- decisions

def test_replies_come_in_only_for_flows_we_started():
    clock = Clock()
    g = guard(clock=clock)
    reply = inbound(UDP(sport=53, dport=40000))
    assert g.inbound(reply) == G.UNSOLICITED
    g.outbound(outbound(UDP(sport=40000, dport=53)))
    assert g.inbound(reply) is None
    (flow,) = g.flows.values()
    assert flow.state == G.FlowState.UDP_REPLIED
    # Replied UDP lives 180 s after the last packet, either way.
    clock.now += 179 * SECOND
    assert g.inbound(reply) is None
    clock.now += 181 * SECOND
    assert g.inbound(reply) == G.UNSOLICITED and not g.flows


def test_timeouts_follow_the_tcp_state():
    clock = Clock()
    g = guard(clock=clock)
    ack_in = inbound(TCP(sport=443, dport=40000, flags="A"))
    g.outbound(outbound(TCP(sport=40000, dport=443, flags="S")))
    clock.now += 59 * SECOND
    assert g.inbound(inbound(TCP(sport=443, dport=40000, flags="SA"))) is None
    g.outbound(outbound(TCP(sport=40000, dport=443, flags="A")))
    clock.now += 7000 * SECOND                           # established: 2 h 4 min
    assert g.inbound(ack_in) is None
    g.outbound(outbound(TCP(sport=40000, dport=443, flags="FA")))
    clock.now += 121 * SECOND                            # closing: 120 s
    assert g.inbound(ack_in) == G.UNSOLICITED


def test_allowed_ports_take_new_connections():
    g = guard(G.Settings.from_options("stateful", ["tcp/22"]))
    assert g.inbound(inbound(TCP(dport=22, flags="S"))) is None
    assert g.inbound(inbound(TCP(dport=2222, flags="S"))) == G.UNSOLICITED
    assert g.inbound(inbound(UDP(dport=22))) == G.UNSOLICITED
    assert not g.flows, "an allowed port creates no flow: the host's answer does"


def test_icmpv6_that_ipv6_needs():
    g = guard()
    sent = outbound(UDP(sport=40000, dport=53))
    assert g.inbound(inbound(ICMPv6EchoRequest())) is None
    assert g.inbound(inbound(ICMPv6PacketTooBig(mtu=1280) / Raw(sent))) is None
    assert g.inbound(inbound(ICMPv6DestUnreach() / Raw(sent))) == G.ICMPV6
    # Replies pass without a request seen: the §5.2.9 test's request goes out
    # through the server, and a relay must still let its answer through.
    assert g.inbound(inbound(ICMPv6EchoReply(id=5))) is None
    echo = outbound(ICMPv6EchoRequest(id=5))
    assert g.inbound(inbound(ICMPv6TimeExceeded() / Raw(echo))) == G.ICMPV6
    g.outbound(sent)
    g.outbound(echo)
    assert g.inbound(inbound(ICMPv6DestUnreach() / Raw(sent))) is None
    assert g.inbound(inbound(ICMPv6TimeExceeded() / Raw(echo))) is None, "traceroute"
    # Our own errors and echo replies open nothing.
    before = dict(g.flows)
    g.outbound(outbound(ICMPv6EchoReply(id=6)))
    g.outbound(outbound(ICMPv6DestUnreach() / Raw(b"\0" * 48)))
    assert g.flows == before


def test_later_fragments_follow_their_first():
    clock = Clock()
    g = guard(G.Settings.from_options("stateful", ["udp/5353"]), clock=clock)
    first = inbound(IPv6ExtHdrFragment(m=1, id=9) / UDP(dport=5353) / Raw(b"a" * 8))
    later = inbound(IPv6ExtHdrFragment(nh=17, offset=2, id=9) / Raw(b"b" * 8))
    assert g.inbound(later) == G.FRAGMENT
    assert g.inbound(first) is None
    assert g.inbound(later) is None
    clock.now += 61 * SECOND                             # RFC 8200 §4.5: 60 s
    assert g.inbound(later) == G.FRAGMENT


def test_open_policy_records_nothing():
    g = guard(G.Settings(policy=G.Policy.OPEN))
    g.outbound(outbound(UDP(sport=1, dport=2)))
    assert not g.flows
    assert g.inbound(inbound(TCP(dport=22, flags="S"))) is None


# --------------------------------------------------------------------------- the client's slow path


def _udp(src, dst, sport, dport) -> bytes:
    return bytes(IPv6(src=str(src), dst=str(dst), hlim=64) / UDP(sport=sport, dport=dport) / Raw(b"hi"))


def test_the_slow_path_delivers_through_the_guard(client):  # noqa: F811
    ours = qualify(client)
    client.guard = G.Guard(G.Settings.from_options("stateful", ["udp/7"]))
    unsolicited = _udp(PEER, ours, 9, 40000)
    client.on_datagram(unsolicited, *PEER_MAPPED)
    assert client.tunnel.written == []
    assert client.counters["drop_guard_unsolicited"] == 1
    assert client.status()["inbound"]["slow_path_dropped"] == {"guard_unsolicited": 1}
    allowed = _udp(PEER, ours, 9, 7)
    client.on_datagram(allowed, *PEER_MAPPED)
    assert client.tunnel.written == [allowed]
    # A reply to a flow the host started (recorded, in real life, by tc egress).
    client.guard.outbound(_udp(ours, PEER, 40001, 9))
    reply = _udp(PEER, ours, 9, 40001)
    client.on_datagram(reply, *PEER_MAPPED)
    assert client.tunnel.written == [allowed, reply]
    assert client.status()["inbound"]["policy"] == "stateful"
    assert client.status()["inbound"]["allowed"] == ["udp/7"]


def test_unsolicited_traffic_from_a_native_host_starts_no_echo_test(client):  # noqa: F811
    """§5.2.3 would hold the packet and test the relay it came through (an echo via
    our server): for a packet the guard refuses, nothing is sent on its behalf
    (CVE-2006-6266, the "ping test" abuse) and nobody becomes a peer."""
    ours = qualify(client)
    client.guard = G.Guard(STATEFUL)
    client.on_datagram(_udp(NATIVE, ours, 9, 40000), *RELAY)
    assert client.sock.take() == []
    assert client.counters["drop_guard_unsolicited"] == 1
    assert NATIVE not in client.peers and client.tunnel.written == []


def test_a_held_reply_meets_the_guard_again_when_delivered(client):  # noqa: F811
    """A reply to our flow, through a relay not proven yet, waits for the echo
    test; it is delivered only if its flow is still alive by then."""
    from xdp_teredo.teredo import icmpv6

    ours = qualify(client)
    clock = Clock()
    client.guard = G.Guard(STATEFUL, now_ns=clock)
    for native, late in ((NATIVE, False), (ipaddress.IPv6Address("2001:db8:1::3"), True)):
        client.guard.outbound(_udp(ours, native, 40000, 9))   # the host asked (tc egress)
        reply = _udp(native, ours, 9, 40000)
        client.on_datagram(reply, *RELAY)
        [(payload, _, _)] = client.sock.take()                 # the echo test (§5.2.9)
        if late:
            # Answered (the reply itself refreshed it on arrival): 180 s.
            clock.now += 181 * SECOND
        client.on_datagram(icmpv6.parse_echo(payload).answer().to_bytes(), *RELAY)
        assert client.att.peers.get(native).trusted
        assert (reply in client.tunnel.written) is not late
    assert client.counters["drop_guard_unsolicited"] == 1


# --------------------------------------------------------------------------- the relay's slow path

from tests.unit.test_relay import CLIENT as RCLIENT, HOST as RHOST, MAPPED_IP, MAPPED_PORT  # noqa: E402
from tests.unit.test_relay import relay  # noqa: E402,F401


def test_relay_slow_path_guards_its_clients(relay):  # noqa: F811
    """Native to a client is inbound for the client: refused before the relay
    bubbles for it; a client's packet to native IPv6 opens the way back."""
    from xdp_teredo.datapath import PeerEntry, PeerFlag
    from xdp_teredo.teredo import encap

    relay.guard = G.Guard(G.Settings.from_options("stateful", []))
    relay.att.peers.put(PeerEntry(address=RCLIENT, mapped_ipv4=MAPPED_IP, mapped_port=MAPPED_PORT,
                                  flags=PeerFlag.TRUSTED, last_rx_ns=1))
    unsolicited = _udp(RHOST, RCLIENT, 53, 40000)
    relay.on_tun_packet(unsolicited)
    assert relay.sock.sent == [] and relay.counters["drop_guard_unsolicited"] == 1
    # The client asks (the slow path delivers it into the tun), then the answer comes.
    question = _udp(RCLIENT, RHOST, 40000, 53)
    relay.on_datagram(encap.build_udp_payload(question), MAPPED_IP, MAPPED_PORT)
    assert relay.tunnel.written == [question]
    relay.on_tun_packet(unsolicited)
    assert [p for p, _, _ in relay.sock.sent] == [unsolicited]
    info = relay.inbound_status(relay.config.inbound)   # status()'s "inbound"
    assert info["policy"] == "stateful" and info["slow_path_dropped"] == {"guard_unsolicited": 1}


def test_relay_defaults_to_open():
    from xdp_teredo.relay import RelayConfig

    assert RelayConfig(ipv4_iface="a", ipv6_iface="b").inbound.policy is G.Policy.OPEN
