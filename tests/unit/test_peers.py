"""Peer-list policy: bubbles, echo tests, queues, expiry, capacity (FakeClock, no sleeping)."""

import ipaddress
import random

import pytest
from hypothesis import example, given, settings, strategies as st

from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.constants import (
    BUBBLE_MAX_UNANSWERED,
    BUBBLE_MIN_INTERVAL,
    BUBBLE_WINDOW,
    ECHO_TIMEOUT,
    PEER_EXPIRY,
    PEER_QUEUE_BYTES,
    PEER_RECENT,
)
from xdp_teredo.teredo.peers import (
    Deliver,
    Incoming,
    PeerList,
    PeerRemoved,
    PeerTrusted,
    SendDirect,
    SendDirectBubble,
    SendEcho,
    SendIndirectBubble,
    Unreachable,
    teredo_parts,
)

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def compose_address(server, flags, ip, port):
    return TeredoAddress(server=server, flags=flags, port=port, client=ip).ipv6


OUR_ADDRESS = compose_address(IPv4("192.0.2.1"), 0, IPv4("203.0.113.1"), 1111)
PEER_SERVER = IPv4("192.0.2.10")
PEER_IP, PEER_PORT = IPv4("203.0.113.20"), 50000
PEER = compose_address(PEER_SERVER, 0, PEER_IP, PEER_PORT)
NATIVE = IPv6("2001:db8::1")          # 2001:0db8 is not inside 2001:0000::/32
RELAY_IP, RELAY_PORT = IPv4("198.51.100.7"), 3544
PKT = b"\x60" + b"\x00" * 99          # 100 bytes standing for an IPv6 packet


def make(**kw):
    clock = FakeClock()
    return clock, PeerList(clock, rng=random.Random(3).randbytes, **kw)


def of_type(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def peer_address(n):
    return compose_address(PEER_SERVER, 0, IPv4(int(PEER_IP) + n), 40000 + n)


def from_peer(address=PEER, ip=None, port=None, **kw):
    parts = teredo_parts(address)
    ip = parts[1] if ip is None and parts else ip
    port = parts[2] if port is None and parts else port
    return Incoming(source=address, destination=OUR_ADDRESS, udp_ip=ip, udp_port=port,
                    packet=kw.pop("packet", PKT), **kw)


def trust(peers, address=PEER):
    return peers.on_incoming(from_peer(address, bubble=True))


# --- helpers ----------------------------------------------------------------------


def test_fake_clock_moves_only_forward_and_only_when_told():
    clock = FakeClock(5.0)
    assert clock.monotonic() == 5.0 == clock.monotonic()
    assert clock.advance(2.5) == 7.5 and clock.set(10) == 10.0
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(9.9)
    assert clock.monotonic() == 10.0


def test_teredo_parts():
    assert teredo_parts(PEER) == (PEER_SERVER, PEER_IP, PEER_PORT)
    assert teredo_parts(NATIVE) is None


# --- sending to Teredo peers (§5.2.4, §5.2.6) -----------------------------------------


def test_unknown_teredo_destination_queues_and_sends_both_bubbles():
    _, peers = make()
    actions = peers.on_outgoing(PEER, PKT)
    assert actions == [SendDirectBubble(PEER, PEER_IP, PEER_PORT),
                       SendIndirectBubble(PEER, PEER_SERVER)]
    peer = peers.get(PEER)
    assert not peer.trusted and peer.queue_bytes == len(PKT) and peer.bubble_count == 1
    assert peer.mapping == (PEER_IP, PEER_PORT)


def test_trusted_recent_peer_gets_packets_directly():
    clock, peers = make()
    assert trust(peers) == [PeerTrusted(PEER, PEER_IP, PEER_PORT)]
    clock.advance(PEER_RECENT)
    assert peers.on_outgoing(PEER, PKT) == [SendDirect(PEER, PEER_IP, PEER_PORT, PKT)]
    assert peers.get(PEER).last_tx == PEER_RECENT


def test_stale_trusted_peer_needs_bubbles_again_and_observe_flushes():
    clock, peers = make()
    trust(peers)
    clock.advance(PEER_RECENT + 1)
    actions = peers.on_outgoing(PEER, PKT)
    assert of_type(actions, SendDirect) == []
    assert len(of_type(actions, SendDirectBubble)) == 1
    # The fast path saw the answer (trusted mapping) and reports it.
    flushed = peers.observe(PEER, last_rx=clock.advance(0.5))
    assert flushed == [SendDirect(PEER, PEER_IP, PEER_PORT, PKT)]
    assert peers.get(PEER).bubble_count == 0
    assert peers.on_outgoing(PEER, PKT) == [SendDirect(PEER, PEER_IP, PEER_PORT, PKT)]


def test_bubbles_at_least_2s_apart():
    clock, peers = make()
    peers.on_outgoing(PEER, PKT)
    clock.advance(BUBBLE_MIN_INTERVAL - 0.1)
    assert peers.on_outgoing(PEER, b"x") == []          # queued, no bubble yet
    clock.advance(0.1)
    assert len(of_type(peers.on_outgoing(PEER, b"y"), SendDirectBubble)) == 1
    assert [q.packet for q in peers.get(PEER).queue] == [PKT, b"x", b"y"]


def test_at_most_4_bubbles_in_300s_without_reply():
    clock, peers = make()
    times = []
    for _ in range(6):
        if of_type(peers.on_outgoing(PEER, b"p"), SendDirectBubble):
            times.append(clock.monotonic())
        clock.advance(BUBBLE_MIN_INTERVAL)
    assert times == [0, 2, 4, 6]
    assert peers.drops["bubble_limit"] == 2
    clock.set(BUBBLE_WINDOW)          # the bubble at 0 is still in [0, 300]
    assert peers.on_outgoing(PEER, b"p") == [Unreachable(PEER, b"p")]
    clock.set(BUBBLE_WINDOW + 0.5)    # now only 2, 4, 6 are: one more allowed
    assert len(of_type(peers.on_outgoing(PEER, b"p"), SendIndirectBubble)) == 1
    clock.set(BUBBLE_WINDOW + 2)      # [2, 302] holds 2, 4, 6 and 300.5: full again
    assert of_type(peers.on_outgoing(PEER, b"p"), Unreachable)
    clock.set(BUBBLE_WINDOW + 2.5)    # the one at 2 left: sliding window
    assert of_type(peers.on_outgoing(PEER, b"p"), SendDirectBubble)


def test_reply_resets_bubble_limit_and_flushes_queue_in_order():
    clock, peers = make()
    for n in range(4):
        peers.on_outgoing(PEER, bytes([n]) * 10)
        clock.advance(BUBBLE_MIN_INTERVAL)
    assert of_type(peers.on_outgoing(PEER, b"late"), Unreachable)
    actions = peers.on_incoming(from_peer(bubble=True))
    assert actions == [PeerTrusted(PEER, PEER_IP, PEER_PORT)] + [
        SendDirect(PEER, PEER_IP, PEER_PORT, bytes([n]) * 10) for n in range(4)]
    peer = peers.get(PEER)
    assert peer.bubble_count == 0 and peer.queue_bytes == 0 and not peer.queue
    # Limits are reset: after trust goes stale, bubbles flow again.
    clock.advance(PEER_RECENT + 1)
    assert of_type(peers.on_outgoing(PEER, b"again"), SendDirectBubble)


def test_data_from_the_mapped_address_trusts_and_is_delivered():
    _, peers = make()
    peers.on_outgoing(PEER, b"queued")
    actions = peers.on_incoming(from_peer(packet=b"data"))
    assert actions == [PeerTrusted(PEER, PEER_IP, PEER_PORT),
                       SendDirect(PEER, PEER_IP, PEER_PORT, b"queued"),
                       Deliver(b"data")]


def test_queue_byte_cap_refuses_new_packets():
    _, peers = make()
    peers.on_outgoing(PEER, b"a" * 600)
    peers.on_outgoing(PEER, b"b" * 600)
    peers.on_outgoing(PEER, b"c" * 100)      # 1300 > 1280: refused
    peers.on_outgoing(PEER, b"d" * 80)       # exactly 1280: fits
    peers.on_outgoing(PEER, b"e")            # full
    peer = peers.get(PEER)
    assert peer.queue_bytes == PEER_QUEUE_BYTES
    assert [q.packet[:1] for q in peer.queue] == [b"a", b"b", b"d"]
    assert peers.drops["queue_full"] == 2


def test_teredo_destination_with_bad_server_or_mapping_dropped():
    _, peers = make()
    bad_server = compose_address(IPv4("10.0.0.1"), 0, PEER_IP, PEER_PORT)
    bad_mapping = compose_address(PEER_SERVER, 0, IPv4("192.168.0.1"), PEER_PORT)
    assert peers.on_outgoing(bad_server, PKT) == []
    assert peers.on_outgoing(bad_mapping, PKT) == []
    assert len(peers) == 0
    assert peers.drops["peer_server_not_global"] == 1
    assert peers.drops["peer_mapping_not_global"] == 1


def test_multicast_destinations_dropped():
    _, peers = make()
    assert peers.on_outgoing(IPv6("ff02::1"), PKT) == []
    incoming = Incoming(source=PEER, destination=IPv6("ff02::1"), udp_ip=PEER_IP,
                        udp_port=PEER_PORT, packet=PKT)
    assert peers.on_incoming(incoming) == []
    assert peers.drops["multicast_destination"] == 2 and len(peers) == 0


# --- direct connectivity test (§5.2.9) ------------------------------------------------


def test_native_destination_runs_echo_test_2s_3_tries():
    clock, peers = make()
    actions = peers.on_outgoing(NATIVE, PKT)
    (echo,) = of_type(actions, SendEcho)
    assert echo.peer == NATIVE and len(echo.nonce) >= 8
    assert peers.on_outgoing(NATIVE, b"second") == []  # test running: just queued
    assert peers.next_deadline() == ECHO_TIMEOUT
    clock.advance(ECHO_TIMEOUT - 0.1)
    assert peers.on_timer() == []
    sent = [0.0]
    for _ in range(2):
        clock.set(peers.next_deadline())
        assert peers.on_timer() == [SendEcho(NATIVE, echo.nonce)]  # same nonce
        sent.append(clock.monotonic())
    assert sent == [0.0, 2.0, 4.0]
    clock.set(peers.next_deadline())
    assert clock.monotonic() == 6.0
    assert peers.on_timer() == [Unreachable(NATIVE, PKT), Unreachable(NATIVE, b"second")]
    # Failed: further packets are refused at once, no new test.
    assert peers.on_outgoing(NATIVE, b"third") == [Unreachable(NATIVE, b"third")]
    assert peers.get(NATIVE).queue_bytes == 0


def test_echo_reply_with_nonce_trusts_the_relay_and_flushes():
    clock, peers = make()
    (echo,) = of_type(peers.on_outgoing(NATIVE, PKT), SendEcho)
    clock.advance(2.5)
    peers.on_timer()                     # second try, same nonce
    reply = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                     udp_port=RELAY_PORT, packet=b"echo-reply", echo_nonce=echo.nonce)
    actions = peers.on_incoming(reply)
    assert actions == [PeerTrusted(NATIVE, RELAY_IP, RELAY_PORT),
                       SendDirect(NATIVE, RELAY_IP, RELAY_PORT, PKT)]
    assert of_type(actions, Deliver) == []          # our own reply is not delivered
    peer = peers.get(NATIVE)
    assert peer.nonce is None and peer.echo_deadline is None
    assert peers.on_timer() == []                   # no more tries
    assert peers.on_outgoing(NATIVE, b"x") == [SendDirect(NATIVE, RELAY_IP, RELAY_PORT, b"x")]


def test_echo_reply_with_wrong_nonce_does_not_trust():
    _, peers = make()
    (echo,) = of_type(peers.on_outgoing(NATIVE, PKT), SendEcho)
    forged = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                      udp_port=RELAY_PORT, packet=b"forged", echo_nonce=bytes(8))
    actions = peers.on_incoming(forged)
    assert of_type(actions, PeerTrusted) == [] and of_type(actions, Deliver) == []
    assert not peers.get(NATIVE).trusted
    assert peers.drops["echo_nonce_mismatch"] == 1


def test_native_source_from_unknown_relay_held_until_test_succeeds():
    _, peers = make()
    first = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                     udp_port=RELAY_PORT, packet=b"held")
    (echo,) = of_type(peers.on_incoming(first), SendEcho)
    other_relay = Incoming(source=NATIVE, destination=OUR_ADDRESS,
                           udp_ip=IPv4("198.51.100.99"), udp_port=3544, packet=b"other")
    assert peers.on_incoming(other_relay) == []     # held too, test already running
    reply = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                     udp_port=RELAY_PORT, echo_nonce=echo.nonce)
    actions = peers.on_incoming(reply)
    # Only what came through the proven relay is delivered.
    assert actions == [PeerTrusted(NATIVE, RELAY_IP, RELAY_PORT), Deliver(b"held")]
    assert peers.drops["held_source_mismatch"] == 1
    # Later data through that relay goes straight through.
    data = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                    udp_port=RELAY_PORT, packet=b"data")
    assert peers.on_incoming(data) == [Deliver(b"data")]


def test_held_packets_dropped_when_test_fails():
    clock, peers = make()
    held = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=RELAY_IP,
                    udp_port=RELAY_PORT, packet=b"held")
    peers.on_incoming(held)
    for _ in range(3):
        clock.set(peers.next_deadline())
        peers.on_timer()
    assert peers.get(NATIVE).echo_failed
    assert peers.drops["connectivity_test_failed"] == 1
    assert peers.on_incoming(held) == []
    assert peers.drops["connectivity_test_failed"] == 2


# --- receiving (§5.2.3) ----------------------------------------------------------------


def test_teredo_source_matching_udp_source_trusted_and_delivered():
    _, peers = make()
    assert peers.on_incoming(from_peer(packet=b"hello")) == [
        PeerTrusted(PEER, PEER_IP, PEER_PORT), Deliver(b"hello")]
    assert peers.get(PEER).trusted
    # A bubble from the same peer is not delivered.
    assert peers.on_incoming(from_peer(bubble=True)) == []


def test_teredo_source_not_matching_udp_source_dropped_and_challenged():
    """Not delivered; a challenge goes through the peer's server (never to the UDP
    source), rate-limited as bubbles (§5.2.6)."""
    _, peers = make()
    first = peers.on_incoming(from_peer(port=PEER_PORT + 1))
    assert first == [SendIndirectBubble(PEER, PEER_SERVER)]
    assert first[0].source == peers.challenge(PEER) and first[0].source.is_link_local
    assert peers.on_incoming(from_peer(ip=IPv4("203.0.113.21"))) == []   # 2 s apart
    assert peers.drops["teredo_source_mismatch"] == 2
    assert not peers.get(PEER).trusted


def test_trusted_peer_from_another_address_not_delivered():
    _, peers = make()
    trust(peers)
    assert peers.on_incoming(from_peer(port=1)) == [SendIndirectBubble(PEER, PEER_SERVER)]
    assert peers.get(PEER).mapping == (PEER_IP, PEER_PORT)


def test_a_peer_answering_our_challenge_is_trusted_at_its_other_mapping():
    """RFC 6081 §4.3's case (Miredo's CheckBubble): a bubble addressed to our
    challenge proves the sender got our bubble; trusted where it sends from, and a
    bubble of ours goes there so that it trusts us back."""
    clock, peers = make()
    other = (IPv4("198.51.100.99"), 61000)
    answer = Incoming(source=PEER, destination=peers.challenge(PEER), udp_ip=other[0],
                      udp_port=other[1], packet=b"", bubble=True)
    assert peers.on_incoming(answer) == [PeerTrusted(PEER, *other), SendDirectBubble(PEER, *other)]
    assert peers.get(PEER).mapping == other and peers.proven == 1
    # From there on its data is delivered; from the embedded mapping it is not.
    assert peers.on_incoming(from_peer(ip=other[0], port=other[1], packet=b"hi")) == [Deliver(b"hi")]
    # A wrong challenge proves nothing.
    _, fresh = make()
    forged = Incoming(source=PEER, destination=IPv6("fe80::1"), udp_ip=other[0],
                      udp_port=other[1], packet=b"", bubble=True)
    assert fresh.on_incoming(forged) == [SendIndirectBubble(PEER, PEER_SERVER)]
    assert not fresh.get(PEER).trusted


def test_relay_takes_proof_only_from_clients_it_bubbled():
    peers = PeerList(FakeClock(), relay=True)
    other = (IPv4("198.51.100.99"), 61000)
    answer = Incoming(source=PEER, destination=peers.challenge(PEER), udp_ip=other[0],
                      udp_port=other[1], packet=b"", bubble=True)
    assert peers.on_incoming(answer) == [] and peers.drops["relay_unknown_peer"] == 1
    sent = peers.on_outgoing(PEER, b"data")
    assert all(a.source == peers.challenge(PEER) for a in sent)
    assert peers.on_incoming(answer) == [PeerTrusted(PEER, *other), SendDirect(PEER, *other, b"data")]


def test_link_local_source_dropped():
    _, peers = make()
    incoming = Incoming(source=IPv6("fe80::1"), destination=OUR_ADDRESS, udp_ip=PEER_IP,
                        udp_port=PEER_PORT, packet=PKT)
    assert peers.on_incoming(incoming) == []
    assert peers.drops["link_local_source"] == 1


def test_indirect_bubble_answered_with_direct_bubble_to_origin():
    _, peers = make()
    origin = (IPv4("203.0.113.77"), 61000)
    bubble = Incoming(source=PEER, destination=OUR_ADDRESS, udp_ip=IPv4("192.0.2.1"),
                      udp_port=3544, bubble=True, from_server=True, origin=origin)
    assert peers.on_incoming(bubble) == [SendDirectBubble(PEER, *origin)]
    # Without an origin indication, a Teredo source tells the mapping (Miredo).
    no_origin = Incoming(source=PEER, destination=OUR_ADDRESS, udp_ip=IPv4("192.0.2.1"),
                         udp_port=3544, bubble=True, from_server=True)
    assert peers.on_incoming(no_origin) == [SendDirectBubble(PEER, PEER_IP, PEER_PORT)]
    bad = Incoming(source=PEER, destination=OUR_ADDRESS, udp_ip=IPv4("192.0.2.1"),
                   udp_port=3544, bubble=True, from_server=True, origin=(IPv4("10.1.1.1"), 1))
    assert peers.on_incoming(bad) == []
    assert peers.drops["origin_not_global"] == 1
    assert len(peers) == 0   # answering creates no entry


# --- expiry, observe, capacity, flush -------------------------------------------------


def test_idle_peer_expires():
    clock, peers = make(expiry=60)
    trust(peers)
    clock.advance(59)
    assert peers.expire() == []
    clock.advance(1)
    assert peers.expire() == [PeerRemoved(PEER, "expired")]
    assert PEER not in peers


def test_observe_keeps_peer_alive_and_takes_max():
    clock, peers = make(expiry=60)
    trust(peers)
    clock.advance(50)
    peers.observe(PEER, last_tx=45.0)
    peers.observe(PEER, last_rx=40.0)
    peers.observe(PEER, last_tx=10.0)            # older: ignored
    assert peers.get(PEER).last_tx == 45.0 and peers.get(PEER).last_rx == 40.0
    assert peers.next_deadline() == 105.0
    clock.set(104.9)
    assert peers.on_timer() == []
    clock.set(105.0)
    assert peers.on_timer() == [PeerRemoved(PEER, "expired")]
    assert peers.observe(PEER, last_rx=1.0) == []  # unknown peer: nothing


def test_bubble_history_outlives_a_short_expiry():
    # With an expiry shorter than the window, forgetting the peer would reset the
    # limit: the entry is kept until its last bubble leaves the window.
    clock, peers = make(expiry=10)
    for _ in range(4):
        peers.on_outgoing(PEER, b"p")
        clock.advance(BUBBLE_MIN_INTERVAL)
    clock.set(200)
    assert peers.expire() == []
    assert of_type(peers.on_outgoing(PEER, b"p"), Unreachable)
    clock.set(6 + BUBBLE_WINDOW)
    assert peers.expire() == [PeerRemoved(PEER, "expired")]


def test_capacity_evicts_the_oldest_idle_untrusted_first():
    clock, peers = make(capacity=3)
    trust(peers, peer_address(0))               # oldest, but trusted
    clock.advance(1)
    peers.on_outgoing(peer_address(1), PKT)
    clock.advance(1)
    peers.on_outgoing(peer_address(2), PKT)
    clock.advance(1)
    actions = peers.on_outgoing(peer_address(3), PKT)
    assert actions[0] == PeerRemoved(peer_address(1), "evicted")
    assert len(peers) == 3 and peer_address(0) in peers
    assert peers.drops["queued_evicted"] == 1


def test_capacity_evicts_oldest_trusted_when_all_trusted():
    clock, peers = make(capacity=2)
    for n in range(2):
        trust(peers, peer_address(n))
        clock.advance(1)
    peers.observe(peer_address(0), last_rx=clock.monotonic())   # 0 is now the most recent
    actions = trust(peers, peer_address(2))
    assert actions[0] == PeerRemoved(peer_address(1), "evicted")


def test_flood_never_exceeds_capacity():
    clock, peers = make(capacity=16)
    for n in range(200):
        peers.on_outgoing(peer_address(n), PKT)
        clock.advance(0.01)
    assert len(peers) == 16


def test_flush_forgets_everyone():
    _, peers = make()
    trust(peers)
    peers.on_outgoing(NATIVE, PKT)
    removed = peers.flush()
    assert sorted(a.peer for a in removed) == sorted([PEER, NATIVE])
    assert all(a.reason == "flushed" for a in removed) and len(peers) == 0
    assert peers.next_deadline() is None


def test_default_expiry_covers_the_bubble_window():
    assert PEER_EXPIRY >= BUBBLE_WINDOW


# --- relay mode (§5.4) -----------------------------------------------------------------


def test_relay_refuses_native_traffic_and_unknown_teredo_sources():
    _, relay = make(relay=True)
    assert relay.on_outgoing(NATIVE, PKT) == [Unreachable(NATIVE, PKT)]
    native_in = Incoming(source=NATIVE, destination=PEER, udp_ip=RELAY_IP,
                         udp_port=RELAY_PORT, packet=PKT)
    assert relay.on_incoming(native_in) == []
    assert relay.on_incoming(from_peer()) == []
    assert relay.drops["relay_non_teredo_source"] == 1
    assert relay.drops["relay_unknown_peer"] == 1
    # Once the relay has sent to the client, the client's answer is trusted.
    relay.on_outgoing(PEER, b"to-client")
    assert relay.on_incoming(from_peer(bubble=True)) == [
        PeerTrusted(PEER, PEER_IP, PEER_PORT), SendDirect(PEER, PEER_IP, PEER_PORT, b"to-client")]


# --- properties ---------------------------------------------------------------------

N_PEERS = 2
# Each step: wait, then act. Waits cluster around the limits (2 s spacing, the
# 300 s window, a 10 s expiry); sends dominate (one_of picks branches uniformly).
STEPS = st.tuples(
    st.one_of(st.sampled_from([0.0, 1.0, 2.0, 2.0, 2.5, 11.0, 100.0, 290.0, 300.0]),
              st.floats(min_value=0, max_value=320)),
    st.one_of(*[st.tuples(st.just("send"), st.integers(0, N_PEERS - 1))] * 4,
              st.tuples(st.just("reply"), st.integers(0, N_PEERS - 1)),
              st.tuples(st.just("timer"), st.just(0))),
)
_EVERY_2S = [(2.0, ("send", 0))] * 6
_EXPIRE_THEN_RESEND = _EVERY_2S[:4] + [(20.0, ("timer", 0))] + _EVERY_2S


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, max_size=60), st.sampled_from([PEER_EXPIRY, 10.0]))
@example(_EVERY_2S, PEER_EXPIRY)
@example(_EXPIRE_THEN_RESEND, 10.0)
@example([(2.0, ("send", 0))] * 4 + [(290.0, ("send", 0))] + [(2.0, ("send", 0))] * 3,
         PEER_EXPIRY)
def test_never_more_than_4_bubbles_in_any_300s_window(steps, expiry):
    clock, peers = make(expiry=expiry)
    # Per peer: bubble send times, split into segments at each reply.
    segments = {n: [[]] for n in range(N_PEERS)}
    for wait, (op, n) in steps:
        clock.advance(wait)
        if op == "send":
            for a in peers.on_outgoing(peer_address(n), b"x" * 100):
                if isinstance(a, SendDirectBubble):
                    segments[n][-1].append(clock.monotonic())
        elif op == "reply":
            peers.on_incoming(from_peer(peer_address(n), bubble=True))
            segments[n].append([])
        else:
            peers.on_timer()
        for peer in peers:
            assert peer.queue_bytes <= PEER_QUEUE_BYTES
            assert peer.queue_bytes == sum(len(q.packet) for q in peer.queue)

    for n, segs in segments.items():
        for times in segs:
            for a, b in zip(times, times[1:]):
                assert b - a >= BUBBLE_MIN_INTERVAL
            for i, start in enumerate(times):
                in_window = [t for t in times[i:] if t - start <= BUBBLE_WINDOW]
                assert len(in_window) <= BUBBLE_MAX_UNANSWERED


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=5), st.booleans()), max_size=60))
def test_echo_test_never_more_than_3_requests_per_nonce(steps):
    clock, peers = make()
    sent = {}
    for dt, send in steps:
        clock.advance(dt)
        actions = peers.on_outgoing(NATIVE, b"p") if send else peers.on_timer()
        for a in of_type(actions, SendEcho):
            sent[a.nonce] = sent.get(a.nonce, []) + [clock.monotonic()]
    for times in sent.values():
        assert len(times) <= 3
        for a, b in zip(times, times[1:]):
            assert b - a >= ECHO_TIMEOUT - 1e-9  # the code compares now >= a + 2.0
    assert len(sent) <= 1    # a failed test is never restarted while the entry lives


def test_a_direct_bubble_from_a_link_local_source_is_answered_where_it_came_from():
    """Miredo's bubbles (and a relay's) come from a keyed link-local address; a client
    answers with source and destination swapped, to the UDP source: the only way a
    peer behind a symmetric NAT learns we exist at the mapping its bubble opened."""
    _, peers = make()
    challenge = IPv6("fe80::1234:5678:9abc:def0")
    udp = (IPv4("198.51.100.99"), 61000)
    bubble = Incoming(source=challenge, destination=OUR_ADDRESS, udp_ip=udp[0], udp_port=udp[1],
                      packet=b"", bubble=True)
    assert peers.on_incoming(bubble) == [SendDirectBubble(challenge, *udp)]
    assert len(peers) == 0
    # Data from a link-local source is still dropped; a relay answers nothing.
    data = Incoming(source=challenge, destination=OUR_ADDRESS, udp_ip=udp[0], udp_port=udp[1],
                    packet=b"x")
    assert peers.on_incoming(data) == [] and peers.drops["link_local_source"] == 1
    assert PeerList(FakeClock(), relay=True).on_incoming(bubble) == []


# --- behind a UPnP mapping (RFC 6081 §4.3, client/mapped_port.py) -----------------------


def test_inbound_open_bubbles_only_through_the_server():
    _, peers = make()
    peers.inbound_open = True
    assert peers.on_outgoing(PEER, PKT) == [SendIndirectBubble(PEER, PEER_SERVER)]


def test_inbound_open_leaves_indirect_bubbles_unanswered():
    _, peers = make()
    peers.inbound_open = True
    bubble = Incoming(source=PEER, destination=OUR_ADDRESS, udp_ip=IPv4("192.0.2.1"),
                      udp_port=3544, bubble=True, from_server=True,
                      origin=(IPv4("203.0.113.77"), 61000))
    assert peers.on_incoming(bubble) == []
    # A relay never bubbles directly: its indirect bubble is answered as usual.
    relayed = Incoming(source=NATIVE, destination=OUR_ADDRESS, udp_ip=IPv4("192.0.2.1"),
                       udp_port=3544, bubble=True, from_server=True,
                       origin=(RELAY_IP, RELAY_PORT))
    assert peers.on_incoming(relayed) == [SendDirectBubble(NATIVE, RELAY_IP, RELAY_PORT)]


def test_inbound_open_answers_a_new_peers_direct_bubble_once():
    _, peers = make()
    peers.inbound_open = True
    queued = peers.on_outgoing(PEER, PKT)            # ping there: held
    assert of_type(queued, SendIndirectBubble)
    actions = trust(peers)                           # its direct bubble through the mapping
    assert [a.packet for a in of_type(actions, SendDirect)] == [PKT]   # the held packet
    assert of_type(actions, SendDirectBubble) == [SendDirectBubble(PEER, PEER_IP, PEER_PORT)]
    # Trusted now: its next bubble is no news (no bubble ping-pong between two of us).
    assert of_type(trust(peers), SendDirectBubble) == []
