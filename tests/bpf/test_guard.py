"""The inbound guard (bpf/lib/guard.h) through BPF_PROG_TEST_RUN.

A fixture table: each case sets the policy, lets the host send what it sends
(through tc_teredo_tx, which records flows) and then receives one packet from a
Teredo peer through XDP and through the tc-only program. The packet must be
counted once, under the one reason the case names, with the matching action; and
the policy module (xdp_teredo/teredo/guard.py), run on the same state, must reach
the same verdict. Then the flow table's states, the allowed-port counters, and a
seeded random run of thousands of packets both ways, C against Python.
"""

import dataclasses
import errno
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest,
                                ICMPv6ND_NS, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop)
from scapy.packet import Raw

from xdp_teredo.datapath import PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import Kind
from xdp_teredo.teredo import guard

from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
US, PEER = str(P.OUR_ADDRESS), str(P.PEER_ADDRESS)
OTHER_PEER = str(P.teredo_address(P.SERVER_IPV4, "198.51.100.9", 50009))
SECOND = 1_000_000_000
STATEFUL = guard.Settings(policy=guard.Policy.STATEFUL)


def allow(*rules: str) -> guard.Settings:
    return guard.Settings(policy=guard.Policy.STATEFUL, allowed=tuple(guard.parse_allow(r) for r in rules))


# -- packets: `inbound` from the peer to us, `outbound` from us to the peer

def tcp_in(sport=443, dport=40000, flags="S", src=PEER) -> bytes:
    return bytes(IPv6(src=src, dst=US) / TCP(sport=sport, dport=dport, flags=flags))


def tcp_out(sport=40000, dport=443, flags="S") -> bytes:
    return bytes(IPv6(src=US, dst=PEER) / TCP(sport=sport, dport=dport, flags=flags))


def udp_in(sport=53, dport=40000, payload=b"answer") -> bytes:
    return bytes(IPv6(src=PEER, dst=US) / UDP(sport=sport, dport=dport) / Raw(payload))


def udp_out(sport=40000, dport=53, payload=b"question") -> bytes:
    return bytes(IPv6(src=US, dst=PEER) / UDP(sport=sport, dport=dport) / Raw(payload))


def echo_request_in(ident=7) -> bytes:
    return bytes(IPv6(src=PEER, dst=US) / ICMPv6EchoRequest(id=ident, seq=1, data=b"ping"))


def echo_reply_in(ident=7) -> bytes:
    return bytes(IPv6(src=PEER, dst=US) / ICMPv6EchoReply(id=ident, seq=1, data=b"pong"))


def echo_request_out(ident=7) -> bytes:
    return bytes(IPv6(src=US, dst=PEER) / ICMPv6EchoRequest(id=ident, seq=1, data=b"ping"))


def error_in(error, about: bytes, src=None) -> bytes:
    """An ICMPv6 error from a router on the way (or the peer), quoting `about`."""
    router = src or "2001:db8:99::1"
    return bytes(IPv6(src=router, dst=US) / error / Raw(about))


def fragments_in(dport: int, ident: int = 0x1234) -> tuple:
    """A UDP datagram to us in two fragments (RFC 8200 §4.5)."""
    udp = bytes(UDP(sport=5353, dport=dport) / Raw(b"y" * 64))
    first = bytes(IPv6(src=PEER, dst=US, nh=44) / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=ident)
                  / Raw(udp[:32]))
    later = bytes(IPv6(src=PEER, dst=US, nh=44) / IPv6ExtHdrFragment(nh=17, offset=4, m=0, id=ident)
                  / Raw(udp[32:]))
    return first, later


def gre_in() -> bytes:
    return bytes(IPv6(src=PEER, dst=US, nh=47) / Raw(b"\x00\x00\x86\xdd" + b"g" * 20))


def gre_out() -> bytes:
    return bytes(IPv6(src=US, dst=PEER, nh=47) / Raw(b"\x00\x00\x86\xdd" + b"g" * 20))


def with_dest_options(n: int, inner) -> bytes:
    pkt = IPv6(src=PEER, dst=US)
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return bytes(pkt / inner)


# -- the harness

def set_guard(dp, settings: guard.Settings) -> None:
    dp.prog.guard.configure(settings)


def send(dp, packet: bytes):
    """The host sends `packet`: through tc egress, which records its flow."""
    out = dp.tc_tx(P.ipv6_frame(packet))
    assert sum(out.counted.values()) == 1, out.counted
    return out


def udp_source(dp, packet: bytes):
    """Where the packet comes from over IPv4: a Teredo source from the mapping it
    embeds (RFC 4380 §4, accepted by §5.2.3), a native one (a router answering
    with an error) from the relay the client trusts for it."""
    src = ipaddress.IPv6Address(packet[8:24])
    if src.packed[:4] == b"\x20\x01\x00\x00":
        raw = src.packed
        port = int.from_bytes(raw[10:12], "big") ^ 0xFFFF
        return str(ipaddress.IPv4Address(bytes(b ^ 0xFF for b in raw[12:16]))), port
    if dp.prog.peers.get(src) is None:
        dp.add_peer(src, P.RELAY_IPV4, P.RELAY_PORT, flags=PeerFlag.TRUSTED | PeerFlag.RELAY)
    return P.RELAY_IPV4, P.RELAY_PORT


def receive(dp, packet: bytes, program: str = "xdp"):
    src, sport = udp_source(dp, packet)
    frame = P.teredo_frame(packet, src=src, sport=sport)
    return dp.xdp(frame) if program == "xdp" else dp.tc_rx(frame)


def snapshot(dp):
    """The guard's state, copied out of the maps, for the Python policy."""
    g = dp.prog.guard
    return dict(g.flows.items()), dict(g.fragments.items()), set(g.allowed.hits())


def expected(dp, settings: guard.Settings, packet: bytes) -> Optional[str]:
    flows, fragments, allowed = snapshot(dp)
    return guard.inbound(guard.classify(packet, inbound=True), settings, flows, fragments, allowed,
                         now_ns())


@dataclass
class Case:
    id: str
    packet: Callable[[], bytes]
    reason: Reason
    settings: guard.Settings = STATEFUL
    sent: Callable[[], list] = list    # what the host sent first (through tc egress)
    before: Optional[Callable] = None  # anything else to do first (receive a first fragment...)
    config: Dict = field(default_factory=dict)


def _first_fragment_in(dp):
    first, _ = fragments_in(5353)
    assert receive(dp, first).counted == {"decapsulated": 1}


CASES = [
    # -- open: the guard lets everything through, records nothing
    Case("open: unsolicited SYN", tcp_in, R.DECAPSULATED, guard.Settings(policy=guard.Policy.OPEN)),
    Case("open: an NS from afar", lambda: bytes(IPv6(src=PEER, dst=US, hlim=255) / ICMPv6ND_NS(tgt=US)),
         R.DECAPSULATED, guard.Settings(policy=guard.Policy.OPEN)),
    Case("never configured (all zeros): open", tcp_in, R.DECAPSULATED, None),
    # -- TCP
    Case("unsolicited SYN", lambda: tcp_in(dport=22), R.GUARD_UNSOLICITED),
    Case("SYN to an allowed port", lambda: tcp_in(dport=22), R.DECAPSULATED, allow("tcp/22")),
    Case("SYN to a port in an allowed range", lambda: tcp_in(dport=8080), R.DECAPSULATED,
         allow("tcp/8000-8100")),
    Case("SYN next to an allowed port", lambda: tcp_in(dport=23), R.GUARD_UNSOLICITED, allow("tcp/22")),
    Case("TCP to a port allowed for UDP only", lambda: tcp_in(dport=53), R.GUARD_UNSOLICITED,
         allow("udp/53")),
    Case("SYN-ACK answering our SYN", lambda: tcp_in(flags="SA"), R.DECAPSULATED,
         sent=lambda: [tcp_out(flags="S")]),
    Case("data on a connection we opened", lambda: tcp_in(flags="PA"), R.DECAPSULATED,
         sent=lambda: [tcp_out(flags="S"), tcp_out(flags="A")]),
    Case("SYN-ACK from another port of the same peer", lambda: tcp_in(sport=444, flags="SA"),
         R.GUARD_UNSOLICITED, sent=lambda: [tcp_out(flags="S")]),
    Case("SYN-ACK from another peer, same ports", lambda: tcp_in(flags="SA", src=OTHER_PEER),
         R.GUARD_UNSOLICITED, sent=lambda: [tcp_out(flags="S")]),
    Case("a bare RST of ours opens nothing", lambda: tcp_in(flags="A"), R.GUARD_UNSOLICITED,
         sent=lambda: [tcp_out(flags="R")]),
    Case("ACK after our FIN (closing)", lambda: tcp_in(flags="FA"), R.DECAPSULATED,
         sent=lambda: [tcp_out(flags="S"), tcp_out(flags="A"), tcp_out(flags="FA")]),
    Case("hop-by-hop options, then a SYN to an allowed port",
         lambda: bytes(IPv6(src=PEER, dst=US) / IPv6ExtHdrHopByHop() / TCP(sport=1, dport=22, flags="S")),
         R.DECAPSULATED, allow("tcp/22")),
    # -- UDP
    Case("unsolicited UDP", udp_in, R.GUARD_UNSOLICITED),
    Case("UDP answer to our question", udp_in, R.DECAPSULATED, sent=lambda: [udp_out()]),
    Case("UDP to an allowed port", lambda: udp_in(dport=5353), R.DECAPSULATED, allow("udp/5353")),
    # -- other transports: a flow without ports
    Case("unsolicited GRE", gre_in, R.GUARD_UNSOLICITED),
    Case("GRE after ours", gre_in, R.DECAPSULATED, sent=lambda: [gre_out()]),
    # -- ICMPv6 (RFC 4890 §4.3.1)
    Case("echo request (ping keeps working)", echo_request_in, R.DECAPSULATED),
    Case("echo reply to our request", echo_reply_in, R.DECAPSULATED, sent=lambda: [echo_request_out()]),
    Case("echo reply to a request that went out elsewhere (§5.2.9 test)", echo_reply_in, R.DECAPSULATED),
    Case("Packet Too Big about nothing we know", lambda: error_in(ICMPv6PacketTooBig(mtu=1280),
                                                                  tcp_out(flags="A")), R.DECAPSULATED),
    Case("Destination Unreachable about our UDP flow",
         lambda: error_in(ICMPv6DestUnreach(code=4), udp_out(), src=PEER), R.DECAPSULATED,
         sent=lambda: [udp_out()]),
    Case("Destination Unreachable about no flow of ours",
         lambda: error_in(ICMPv6DestUnreach(code=4), udp_out(dport=54), src=PEER), R.GUARD_ICMPV6,
         sent=lambda: [udp_out()]),
    Case("Time Exceeded about our TCP flow",
         lambda: error_in(ICMPv6TimeExceeded(), tcp_out(flags="S")), R.DECAPSULATED,
         sent=lambda: [tcp_out(flags="S")]),
    Case("Time Exceeded about our echo request",
         lambda: error_in(ICMPv6TimeExceeded(), echo_request_out()), R.DECAPSULATED,
         sent=lambda: [echo_request_out()]),
    Case("error quoting too little to tell", lambda: error_in(ICMPv6DestUnreach(), tcp_out()[:44]),
         R.GUARD_ICMPV6, sent=lambda: [tcp_out()]),
    Case("Neighbor Solicitation from afar", lambda: bytes(IPv6(src=PEER, dst=US, hlim=255)
                                                          / ICMPv6ND_NS(tgt=US)), R.GUARD_ICMPV6),
    # -- fragments (RFC 8200 §4.5)
    Case("first fragment, unsolicited", lambda: fragments_in(5353)[0], R.GUARD_UNSOLICITED),
    Case("later fragment, first one never let in", lambda: fragments_in(5353)[1], R.GUARD_FRAGMENT),
    Case("later fragment after its first", lambda: fragments_in(5353)[1], R.DECAPSULATED,
         allow("udp/5353"), before=_first_fragment_in),
    Case("later fragment of another packet", lambda: fragments_in(5353, ident=0x9999)[1],
         R.GUARD_FRAGMENT, allow("udp/5353"), before=_first_fragment_in),
    # -- what the guard cannot read, it does not take
    Case("five extension headers", lambda: with_dest_options(5, TCP(dport=22, flags="S")),
         R.GUARD_UNPARSED, allow("tcp/22")),
    Case("four extension headers are fine", lambda: with_dest_options(4, TCP(dport=22, flags="S")),
         R.DECAPSULATED, allow("tcp/22")),
    Case("TCP header cut short", lambda: bytes(IPv6(src=PEER, dst=US, nh=6) / Raw(b"\x01\xbb\x00\x16" * 3)),
         R.GUARD_UNPARSED, allow("tcp/22")),
    # -- Teredo's own traffic and the slow path never reach the guard
    Case("bubble (§2.8): for the control plane", lambda: P.bubble(PEER, US), R.RX_BUBBLE),
    Case("untrusted peer: the control plane decides", tcp_in, R.RX_UNTRUSTED_PEER,
         before=lambda dp: dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT, flags=0)),
]

# Reasons test_rx.py's coverage test takes from this table.
COVERED = {c.reason for c in CASES}


def _prepare(dp, case: Case) -> None:
    dp.configure(**case.config)
    if case.settings is not None:
        set_guard(dp, case.settings)
    for packet in case.sent():
        send(dp, packet)
    if case.before:
        case.before(dp)


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_inbound(dp, case, program):
    _prepare(dp, case)
    packet = case.packet()
    # Where the guard decides, the policy module must decide alike on the same state.
    if case.settings is not None and (case.reason == R.DECAPSULATED or case.reason.name.startswith("GUARD_")):
        want = None if case.reason == R.DECAPSULATED else case.reason.key
        assert expected(dp, case.settings, packet) == want, "the policy module disagrees"
    udp_source(dp, packet)
    peers_before = set(dp.peers())
    out = receive(dp, packet, program)
    assert out.counted == {case.reason.key: 1}, "counted once, under its reason"
    if case.reason == R.DECAPSULATED:
        assert out.retval == (XDP_PASS if program == "xdp" else TC_ACT_REDIRECT)
        assert out.frame[14:14 + len(packet)] == packet
    elif case.reason.kind == Kind.DROP:
        assert out.retval == (XDP_DROP if program == "xdp" else TC_ACT_SHOT)
        # A dropped packet teaches the peer table nothing (no learning).
        assert set(dp.peers()) == peers_before
    else:
        assert out.retval == (XDP_PASS if program == "xdp" else TC_ACT_OK)


def test_transmit_records_whichever_path_sends(dp):
    """No peer entry (the control plane will send it) or a trusted one (the fast
    path): either way the packet leaves and its flow is recorded; one reason each."""
    dp.configure()
    set_guard(dp, STATEFUL)
    assert send(dp, udp_out(sport=40000)).counted == {"tx_no_peer": 1}
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
    assert send(dp, udp_out(sport=40001)).counted == {"encapsulated": 1}
    flows = dp.prog.guard.flows
    ours = {(k.local_port, k.remote_port, k.proto): v.state for k, v in flows.items()}
    assert ours == {(40000, 53, 17): guard.FlowState.UDP, (40001, 53, 17): guard.FlowState.UDP}
    key = next(iter(flows))
    assert (key.local, key.remote) == (P.OUR_ADDRESS.packed, P.PEER_ADDRESS.packed)


def test_open_records_nothing(dp):
    dp.configure()
    set_guard(dp, guard.Settings(policy=guard.Policy.OPEN))
    for packet in (tcp_out(), udp_out(), echo_request_out(), gre_out()):
        send(dp, packet)
    assert len(dp.prog.guard.flows) == 0


def _state(dp, sport=40000, dport=443, proto=6):
    key = guard.FlowKey(P.OUR_ADDRESS.packed, P.PEER_ADDRESS.packed, proto, sport, dport)
    flow = dp.prog.guard.flows.get(key)
    return None if flow is None else guard.FlowState(flow.state)


def test_tcp_flow_states_follow_the_connection(dp):
    dp.configure()
    set_guard(dp, STATEFUL)
    F = guard.FlowState
    steps = [
        (send, tcp_out(flags="S"), F.TCP_HANDSHAKE),
        (receive, tcp_in(flags="SA"), F.TCP_HANDSHAKE),
        (send, tcp_out(flags="A"), F.TCP_ESTABLISHED),
        (receive, tcp_in(flags="PA"), F.TCP_ESTABLISHED),
        (receive, tcp_in(flags="FA"), F.TCP_CLOSING),
        (send, tcp_out(flags="A"), F.TCP_CLOSING),       # the last ACKs do not reopen it
        (receive, tcp_in(flags="R"), F.TCP_CLOSED),
        (send, tcp_out(flags="S"), F.TCP_HANDSHAKE),     # a new connection on the same ports
    ]
    for i, (do, packet, state) in enumerate(steps):
        out = do(dp, packet)
        assert sum(out.counted.values()) == 1
        assert "guard_unsolicited" not in out.counted, i
        assert _state(dp) == state, i


def test_udp_flow_is_replied_after_an_answer(dp):
    dp.configure()
    set_guard(dp, STATEFUL)
    send(dp, udp_out())
    assert _state(dp, 40000, 53, 17) == guard.FlowState.UDP
    assert receive(dp, udp_in()).counted == {"decapsulated": 1}
    assert _state(dp, 40000, 53, 17) == guard.FlowState.UDP_REPLIED
    send(dp, udp_out())
    assert _state(dp, 40000, 53, 17) == guard.FlowState.UDP_REPLIED, "our next datagram keeps it"


def test_an_idle_flow_expires_and_is_removed(dp):
    """Timeouts come from the guard map: a flow last seen longer ago than its
    state's timeout lets nothing in, and the receive path deletes it."""
    dp.configure()
    settings = dataclasses.replace(STATEFUL, timeouts=guard.Timeouts(udp=5.0))
    set_guard(dp, settings)
    send(dp, udp_out())
    flows = dp.prog.guard.flows
    (key,) = flows.keys()
    flows[key] = guard.Flow(now_ns() - 4 * SECOND, guard.FlowState.UDP)
    assert receive(dp, udp_in()).counted == {"decapsulated": 1}, "4 s idle: alive"
    flows[key] = guard.Flow(now_ns() - 6 * SECOND, guard.FlowState.UDP)
    assert receive(dp, udp_in()).counted == {"guard_unsolicited": 1}, "6 s idle: gone"
    assert key not in flows
    # A flow refreshed a moment ago on another CPU (seen_ns ahead of now) is alive.
    flows[key] = guard.Flow(now_ns() + SECOND, guard.FlowState.UDP)
    assert receive(dp, udp_in()).counted == {"decapsulated": 1}


def test_allowed_ports_count_what_they_let_in(dp):
    dp.configure()
    set_guard(dp, allow("tcp/22", "udp/5000-5002"))
    for port in (22, 22, 23):
        receive(dp, tcp_in(dport=port))
    receive(dp, udp_in(dport=5001))
    hits = dp.prog.guard.allowed.hits()
    assert hits[(6, 22)] == 2 and hits[(17, 5001)] == 1 and hits[(17, 5000)] == 0
    assert len(hits) == 4
    summary = dp.prog.guard.summary()
    assert summary["allowed_hits"]["tcp/22"] == 2
    # Reconfiguring keeps the counters of the ports that stay, drops the others.
    set_guard(dp, allow("tcp/22"))
    assert dp.prog.guard.allowed.hits() == {(6, 22): 2}


def test_counters_match_what_was_sent(dp):
    """A mixed burst: every packet counted once, the drops under their reasons."""
    dp.configure()
    set_guard(dp, allow("tcp/22"))
    send(dp, udp_out())
    before = dp.prog.stats()
    nd = bytes(IPv6(src=PEER, dst=US, hlim=255) / ICMPv6ND_NS(tgt=US))
    burst = ([tcp_in(dport=22)] * 3 + [tcp_in(dport=80)] * 5 + [udp_in()] * 4 + [udp_in(sport=54)] * 2
             + [nd] * 6 + [echo_request_in()] * 2)
    for packet in burst:
        receive(dp, packet)
    after = dp.prog.stats()
    moved = {k: after[k]["packets"] - before[k]["packets"] for k in after
             if after[k]["packets"] != before[k]["packets"]}
    assert moved == {"decapsulated": 3 + 4 + 2, "guard_unsolicited": 5 + 2, "guard_icmpv6": 6}


# --------------------------------------------------------------------------- random


def _random_packet(rng: random.Random, inbound: bool) -> bytes:
    a, b = (PEER, US) if inbound else (US, PEER)
    if rng.random() < 0.15:
        a = OTHER_PEER if inbound else a
        b = b if inbound else OTHER_PEER
    ports = (rng.choice([53, 443, 22, 5353]), rng.choice([40000, 40001]))
    sport, dport = ports if inbound else ports[::-1]
    kind = rng.random()
    if kind < 0.35:
        l4 = TCP(sport=sport, dport=dport, flags=rng.choice(["S", "SA", "A", "PA", "FA", "R", "RA"]))
    elif kind < 0.6:
        l4 = UDP(sport=sport, dport=dport) / Raw(rng.randbytes(rng.randrange(0, 40)))
    elif kind < 0.8:
        cls = rng.choice([ICMPv6EchoRequest, ICMPv6EchoReply])
        l4 = cls(id=rng.choice([7, 8]), seq=1)
    elif kind < 0.9:
        about = bytes(IPv6(src=b, dst=a) / UDP(sport=dport, dport=sport))
        l4 = rng.choice([ICMPv6DestUnreach(), ICMPv6TimeExceeded(), ICMPv6PacketTooBig()]) / Raw(about)
    else:
        l4 = Raw(rng.randbytes(rng.randrange(0, 30)))
        pkt = IPv6(src=a, dst=b, nh=rng.choice([6, 17, 58, 47, 0, 44, 60])) / l4
        return bytes(pkt)
    pkt = IPv6(src=a, dst=b)
    if rng.random() < 0.1:
        pkt = pkt / IPv6ExtHdrHopByHop()
    if rng.random() < 0.1:
        pkt = pkt / IPv6ExtHdrFragment(offset=rng.choice([0, 0, 8]), m=rng.choice([0, 1]),
                                       id=rng.choice([1, 2]))
    return bytes(pkt / l4)


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
def test_random_traffic_c_and_python_agree(dp, program):
    """Both ways, interleaved: the BPF programs and guard.py on a copy of the same
    state must decide alike, packet for packet, and end with the same flows."""
    rng = random.Random(f"4380-guard-{program}")
    dp.configure()
    settings = allow("tcp/22", "udp/5353")
    set_guard(dp, settings)
    flows, fragments = guard.empty_tables()
    allowed = settings.allowed_pairs()
    seen = {}
    for i in range(1500):
        inbound = rng.random() < 0.6
        packet = _random_packet(rng, inbound)
        view = guard.classify(packet, inbound=inbound)
        if inbound:
            want = guard.inbound(view, settings, flows, fragments, allowed, now_ns())
            try:
                out = receive(dp, packet, program)
            except OSError as err:  # a test run refuses nothing of this size
                raise AssertionError(f"{err.errno}: {packet.hex()}") from err
            reason = next(iter(out.counted))
            assert out.counted == {reason: 1}
            got = None if reason == "decapsulated" else reason
            assert got == want, f"#{i} {packet.hex()}"
            seen[want] = seen.get(want, 0) + 1
        else:
            guard.outbound(view, settings, flows, now_ns())
            send(dp, packet)
        assert dict(dp.prog.guard.flows.items()).keys() == flows.keys(), f"#{i} {packet.hex()}"
    assert seen.get(None, 0) > 100 and seen.get(guard.UNSOLICITED, 0) > 30, seen
    assert {guard.ICMPV6, guard.UNPARSED, guard.FRAGMENT} <= set(seen), seen
    for key, flow in flows.items():
        assert dp.prog.guard.flows[key].state == flow.state, key


def test_short_skb_is_refused_not_misread(dp):
    """What the kernel refuses before the program runs stays refused (EINVAL),
    stateful or not: the guard adds no new way to fail."""
    dp.configure()
    set_guard(dp, STATEFUL)
    with pytest.raises(OSError) as refused:
        dp.tc_rx(P.teredo_frame(tcp_in())[:14 + 12])
    assert refused.value.errno == errno.EINVAL


def test_verdict_names_are_reasons():
    assert set(guard.VERDICTS) == {r.key for r in R if r.name.startswith("GUARD_")}
    assert all(R[v.upper()].kind == Kind.DROP for v in guard.VERDICTS)


# --------------------------------------------------------------------------- the relay
# The same rules in bpf/relay.c, for the clients a relay serves: native IPv6
# to a client is inbound for it; what a client sends natively is its outbound.

from .test_relay import (CLIENT, CLIENT_IPV4, CLIENT_PORT, HOST, HOST_MAC, LAN0_MAC,  # noqa: E402
                         XDP_REDIRECT, from_client, relay, relay_ns, relay_program)  # noqa: F401,E402


def _native_to_client(l4) -> bytes:
    from scapy.layers.l2 import Ether

    return bytes(Ether(src=HOST_MAC, dst=LAN0_MAC) / IPv6(src=HOST, dst=str(CLIENT)) / l4)


def _client_to_native(l4) -> bytes:
    return from_client(bytes(IPv6(src=str(CLIENT), dst=HOST) / l4))


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_relay_guards_the_clients_it_serves(relay, hook):  # noqa: F811
    run = relay.xdp if hook == "xdp" else relay.tc
    drop, sent = (XDP_DROP, XDP_REDIRECT) if hook == "xdp" else (TC_ACT_SHOT, TC_ACT_REDIRECT)
    relay.add_peer(CLIENT, CLIENT_IPV4, CLIENT_PORT)
    relay.prog.guard.configure(allow("tcp/22"))

    unsolicited = run(_native_to_client(TCP(sport=443, dport=40000, flags="SA")))
    assert (unsolicited.retval, unsolicited.counted) == (drop, {"guard_unsolicited": 1})
    allowed = run(_native_to_client(TCP(sport=5000, dport=22, flags="S")))
    assert (allowed.retval, allowed.counted) == (sent, {"encapsulated": 1})
    ping = run(_native_to_client(ICMPv6EchoRequest(id=1)))
    assert ping.counted == {"encapsulated": 1}

    # The client opens a connection to the host: decapsulated, and its flow recorded...
    out = run(_client_to_native(TCP(sport=40000, dport=443, flags="S")))
    assert out.counted == {"decapsulated": 1}
    key = guard.FlowKey(CLIENT.packed, ipaddress.IPv6Address(HOST).packed, 6, 40000, 443)
    assert relay.prog.guard.flows[key].state == guard.FlowState.TCP_HANDSHAKE
    # ... so the host's answer reaches the client.
    answer = run(_native_to_client(TCP(sport=443, dport=40000, flags="SA")))
    assert (answer.retval, answer.counted) == (sent, {"encapsulated": 1})


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_relay_guard_is_off_by_default(relay, hook):  # noqa: F811
    run = relay.xdp if hook == "xdp" else relay.tc
    relay.add_peer(CLIENT, CLIENT_IPV4, CLIENT_PORT)
    assert run(_native_to_client(TCP(sport=443, dport=40000, flags="S"))).counted == {"encapsulated": 1}
    assert run(_client_to_native(UDP(sport=40000, dport=53))).counted == {"decapsulated": 1}
    assert len(relay.prog.guard.flows) == 0, "open: nothing recorded"
