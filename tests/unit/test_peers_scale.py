"""The peer list's indexes against the scans they replaced, and what they cost.

PeerList keeps lazy heaps so that eviction, next_deadline and expiry no longer scan
every peer (teredo/peers.py, "Data structures"). ScanningPeerList below is the
reference: the same policy with the selection written the old way, a scan over
all peers for every choice. Random operation sequences must get the same actions,
evictions, deadlines and expiries from both; a counting test shows that the work
per admission no longer grows with the list (counts, never elapsed time).
"""

import ipaddress
import logging
import os
import random
import time

import pytest
import structlog
from hypothesis import event, example, given, settings, strategies as st

from xdp_teredo import log
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.peers import Incoming, Peer, PeerList, PeerRemoved, SendEcho, _LazyHeap

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address

OUR_ADDRESS = TeredoAddress(server=IPv4("192.0.2.1"), flags=0, port=1111,
                            client=IPv4("203.0.113.1")).ipv6
PEER_SERVER = IPv4("192.0.2.10")
RELAYS = [(IPv4("198.51.100.7"), 3544), (IPv4("198.51.100.8"), 3544)]


def teredo_peer(n):
    """(address, mapped ip, mapped port) of the n-th Teredo peer."""
    ip, port = IPv4(int(IPv4("203.0.113.128")) + n % 128), 1024 + n // 128
    return TeredoAddress(server=PEER_SERVER, flags=0, port=port, client=ip).ipv6, ip, port


NATIVES = [IPv6("2001:db8::1"), IPv6("2001:db8::2")]


class ScanningPeerList(PeerList):
    """The reference: eviction, deadlines, expiry and observe as they were before
    the indexes, each a scan over every peer in the list's order."""

    def _refile(self, peer):
        pass  # no indexes to keep

    def _lookup_or_create(self, address, now):
        peer = self.peers.get(address)
        if peer is not None:
            return peer, []
        actions = []
        if len(self.peers) >= self.capacity:
            untrusted = [p for p in self.peers.values() if not p.trusted]
            victim = min(untrusted or self.peers.values(), key=Peer.last_activity)
            actions = self._remove(victim, "evicted")
        peer = Peer(address, created=now)
        self.peers[address] = peer
        return peer, actions

    def on_timer(self):
        now = self._clock.monotonic()
        actions = []
        for peer in list(self.peers.values()):
            if peer.echo_deadline is None or now < peer.echo_deadline:
                continue
            if peer.echo_tries < self.echo_tries:
                peer.echo_tries += 1
                peer.echo_deadline = now + self.echo_timeout
                peer.last_tx = now
                actions.append(SendEcho(peer.address, peer.nonce))
            else:
                actions += self._echo_failed(peer)
        return actions + self.expire()

    def next_deadline(self):
        times = []
        for peer in self.peers.values():
            if peer.echo_deadline is not None:
                times.append(peer.echo_deadline)
            else:
                times.append(self._expires_at(peer))
        return min(times, default=None)

    def expire(self):
        now = self._clock.monotonic()
        actions = []
        for peer in list(self.peers.values()):
            if peer.echo_deadline is None and now >= self._expires_at(peer):
                actions += self._remove(peer, "expired")
        return actions

    def observe(self, address, last_rx=None, last_tx=None):
        peer = self.get(address)
        if peer is None:
            return []
        if last_tx is not None and (peer.last_tx is None or last_tx > peer.last_tx):
            peer.last_tx = float(last_tx)
        if last_rx is not None and (peer.last_rx is None or last_rx > peer.last_rx):
            if peer.trusted:
                return self._received(peer, float(last_rx))
            peer.last_rx = float(last_rx)
        return []


def pair(**kw):
    """The list under test and the reference, on one clock, with the same nonces."""
    clock = FakeClock()
    fast = PeerList(clock, rng=random.Random(7).randbytes, **kw)
    slow = ScanningPeerList(clock, rng=random.Random(7).randbytes, **kw)
    return clock, fast, slow


def heap_entries(heap: _LazyHeap):
    return {address: heap.key(address) for address in heap._live}


def assert_indexes_match(peers: PeerList):
    """Every peer filed once, under the keys its state gives now, in the heap of
    its trust; nothing else filed; stale entries bounded."""
    untrusted, trusted = (heap_entries(peers._by_activity[t]) for t in (False, True))
    deadlines = heap_entries(peers._deadlines)
    assert set(untrusted) | set(trusted) == set(peers.peers) == set(deadlines)
    assert set(peers._holding) == {a for a, p in peers.peers.items() if p.queue}
    assert not set(untrusted) & set(trusted)
    for address, peer in peers.peers.items():
        filed = trusted if peer.trusted else untrusted
        assert filed[address] == (peer.last_activity(), peers._order[address])
        due = peer.echo_deadline if peer.echo_deadline is not None else peers._expires_at(peer)
        assert deadlines[address] == (due,)
    for heap in (*peers._by_activity.values(), peers._deadlines):
        assert len(heap._heap) <= 2 * len(heap) + heap._SLACK + 1


def scan_due(peers: PeerList):
    now = peers._clock.monotonic()
    return [p for p in peers.peers.values()
            if (p.echo_deadline if p.echo_deadline is not None else peers._expires_at(p)) <= now]


def assert_same(fast: PeerList, slow: PeerList):
    assert list(fast.peers) == list(slow.peers)     # same members, same order
    assert fast.peers == slow.peers                 # every field of every Peer
    assert fast.drops == slow.drops
    assert fast.next_deadline() == slow.next_deadline()
    assert fast.due() == scan_due(slow)
    assert fast.holding() == [p for p in slow.peers.values() if p.queue]


# --- differential: random operation sequences ------------------------------------------

N_TEREDO = 4
WAITS = st.one_of(st.sampled_from([0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 2.0, 5.0, 10.0, 30.0, 300.0,
                                   310.0]),
                  st.floats(min_value=0, max_value=400, allow_nan=False))
OFFSETS = st.one_of(st.none(), st.sampled_from([0.0, -1.0, 1.0, -300.0]),
                    st.floats(min_value=-400, max_value=50, allow_nan=False))
_WAIT = st.tuples(st.just("wait"), WAITS)
_SEND = st.tuples(st.just("send"), st.integers(0, N_TEREDO - 1), st.integers(1, 700))
_RECV = st.tuples(st.just("recv"), st.integers(0, N_TEREDO - 1), st.booleans(), st.booleans())
_OBSERVE = st.tuples(st.just("observe"), st.integers(0, N_TEREDO - 1), OFFSETS, OFFSETS)
_TIMER = st.tuples(st.just("timer"))
# one_of picks its branches uniformly: repeats weigh them. Flush is rare, as it
# empties the list that the other operations fill.
OPS = st.one_of(
    *[_WAIT] * 4, *[_SEND] * 4, *[_RECV] * 3, *[_OBSERVE] * 2, *[_TIMER] * 3,
    st.tuples(st.just("send_native"), st.integers(0, len(NATIVES) - 1)),
    st.tuples(st.just("recv_native"), st.integers(0, len(NATIVES) - 1),
              st.integers(0, len(RELAYS) - 1)),
    st.tuples(st.just("echo_reply"), st.integers(0, len(NATIVES) - 1),
              st.integers(0, len(RELAYS) - 1), st.booleans()),
    st.tuples(st.just("expire")),
    st.tuples(st.just("idle"), st.sampled_from([1.5, 11.0, 301.0, 360.0])),
    st.tuples(st.just("flush")),
)


def prepare(op, clock, reference: PeerList):
    """`op` as a call to make on either list, its inputs built before either runs
    (an echo reply carries the nonce the reference holds now)."""
    kind, args = op[0], op[1:]
    now = clock.monotonic()
    if kind == "send":
        n, size = args
        return lambda peers: peers.on_outgoing(teredo_peer(n)[0], bytes([n]) * size)
    if kind == "send_native":
        return lambda peers: peers.on_outgoing(NATIVES[args[0]], b"to-native")
    if kind == "recv":
        n, bubble, from_mapping = args
        address, ip, port = teredo_peer(n)
        pkt = Incoming(source=address, destination=OUR_ADDRESS, udp_ip=ip,
                       udp_port=port if from_mapping else port + 1, packet=b"data",
                       bubble=bubble)
        return lambda peers: peers.on_incoming(pkt)
    if kind == "recv_native":
        j, k = args
        pkt = Incoming(source=NATIVES[j], destination=OUR_ADDRESS, udp_ip=RELAYS[k][0],
                       udp_port=RELAYS[k][1], packet=b"held")
        return lambda peers: peers.on_incoming(pkt)
    if kind == "echo_reply":
        j, k, right = args
        ref = reference.get(NATIVES[j])
        nonce = ref.nonce if right and ref is not None and ref.nonce else bytes(8)
        pkt = Incoming(source=NATIVES[j], destination=OUR_ADDRESS, udp_ip=RELAYS[k][0],
                       udp_port=RELAYS[k][1], packet=b"reply", echo_nonce=nonce)
        return lambda peers: peers.on_incoming(pkt)
    if kind == "observe":
        n, rx, tx = args
        last_rx = None if rx is None else now + rx
        last_tx = None if tx is None else now + tx
        return lambda peers: peers.observe(teredo_peer(n)[0], last_rx=last_rx, last_tx=last_tx)
    if kind == "timer":
        return lambda peers: peers.on_timer()
    if kind == "expire":
        return lambda peers: peers.expire()
    if kind == "idle":   # a quiet spell, then the timer (the clock moves once, for both)
        clock.advance(args[0])
        return lambda peers: peers.on_timer()
    if kind == "flush":
        return lambda peers: peers.flush()
    raise AssertionError(kind)


def run_both(ops, **kw):
    clock, fast, slow = pair(**kw)
    for op in ops:
        if op[0] == "wait":
            clock.advance(op[1])
            assert_same(fast, slow)
            continue
        call = prepare(op, clock, slow)
        expected = call(slow)
        assert call(fast) == expected, op
        for action in expected:   # what the run exercised (--hypothesis-show-statistics)
            if isinstance(action, (PeerRemoved, SendEcho)):
                event(f"{type(action).__name__} {getattr(action, 'reason', '')}".strip())
        assert_same(fast, slow)
        assert_indexes_match(fast)
    # Then idle until everyone left: every run ends with expiries (and the echo
    # retries and failures that come before them), compared at each step.
    for _ in range(5):
        clock.advance(1000)
        expected = slow.on_timer()
        assert fast.on_timer() == expected
        assert_same(fast, slow)
        for action in expected:
            if isinstance(action, PeerRemoved):
                event("PeerRemoved expired (idle at the end)")
    assert len(fast) == 0 and fast.next_deadline() is None
    return fast, slow


_TIES = [("send", n, 10) for n in range(4)] + [("recv", 1, True, True), ("send", 0, 10)]
_FUTURE_TX = [("recv", 0, True, True), ("recv", 1, True, True), ("observe", 0, None, 40.0),
              ("wait", 10.0), ("send", 0, 5), ("send", 2, 5), ("send", 3, 5)]
_ECHO_FAILS_THEN_EXPIRES = [("send_native", 0), ("recv_native", 1, 0)] + [
    ("wait", 2.0), ("timer",)] * 3


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(OPS, min_size=10, max_size=120),
       capacity=st.sampled_from([1, 2, 3, 5]),
       expiry=st.sampled_from([1.0, 10.0, 300.0]),
       mode=st.sampled_from(["client", "relay", "learning relay"]))
@example(ops=_TIES, capacity=3, expiry=300.0, mode="client")
@example(ops=_FUTURE_TX, capacity=2, expiry=300.0, mode="client")
@example(ops=_ECHO_FAILS_THEN_EXPIRES, capacity=3, expiry=1.0, mode="client")
def test_same_decisions_as_the_scanning_reference(ops, capacity, expiry, mode):
    run_both(ops, capacity=capacity, expiry=expiry, relay=mode != "client",
             accept_unknown=mode == "learning relay")


def test_ties_evict_the_oldest_entry_and_untrusted_first():
    # Created at the same instant: the scan's min() took the first in list order.
    clock, fast, slow = pair(capacity=3)
    for peers in (fast, slow):
        for n in range(3):
            peers.on_outgoing(teredo_peer(n)[0], b"x")
    for peers in (fast, slow):
        assert peers.on_outgoing(teredo_peer(3)[0], b"x")[0].peer == teredo_peer(0)[0]
    assert_same(fast, slow)


def test_a_last_tx_that_goes_back_moves_the_peer_back():
    # observe() may report a last_tx later than the `now` of a send that follows,
    # which sets last_tx to that `now`: activity goes back, and the order with it.
    clock, fast, slow = pair(capacity=2)
    a, b, c = (teredo_peer(n)[0] for n in range(3))
    for peers in (fast, slow):
        peers.on_outgoing(a, b"x")
        peers.on_outgoing(b, b"x")
        peers.observe(a, last_tx=50.0)
        peers.observe(b, last_tx=30.0)          # a looks busier than b
    clock.advance(10)
    for peers in (fast, slow):
        assert len(peers.on_outgoing(a, b"x")) == 2     # a bubble: a's last_tx = 10
    clock.advance(1)
    evicted = [peers.on_outgoing(c, b"x")[0].peer for peers in (fast, slow)]
    assert evicted == [a, a]                    # 10 < 30: a is now the least active
    assert_same(fast, slow)
    assert_indexes_match(fast)


def test_echo_retries_and_expiry_come_in_list_order():
    clock, fast, slow = pair(expiry=1.0)
    for peers in (fast, slow):
        peers.on_incoming(Incoming(source=NATIVES[1], destination=OUR_ADDRESS,
                                   udp_ip=RELAYS[0][0], udp_port=3544, packet=b"p"))
        peers.on_outgoing(NATIVES[0], b"q")
    actions = []
    while clock.monotonic() < 10:
        clock.advance(0.5)
        step = fast.on_timer()
        assert step == slow.on_timer()
        actions += step
        assert_same(fast, slow)
    # Retries name NATIVES[1] first (created first); expiry removes both in order.
    assert [a.peer for a in actions if isinstance(a, SendEcho)] == [NATIVES[1], NATIVES[0]] * 2
    assert [a.peer for a in actions if isinstance(a, PeerRemoved)] == [NATIVES[1], NATIVES[0]]
    assert len(fast) == 0 and fast.next_deadline() is None


# --- scale: the work per admission no longer grows with the list -----------------------


def admission_packets(first, count):
    packets = []
    for n in range(first, first + count):
        address, ip, port = teredo_peer(n)
        packets.append(Incoming(source=address, destination=OUR_ADDRESS, udp_ip=ip,
                                udp_port=port, bubble=True))
    return packets


def admit(clock, peers, packets):
    """One turn of a client's loop per new peer: the bubble that admits it (§5.2.3)
    evicting the least recently active, then next_deadline twice and on_timer when
    due (client.py _timeout and _tick). Returns every action."""
    actions = []
    for pkt in packets:
        actions += peers.on_incoming(pkt)
        peers.next_deadline()                   # _timeout()
        deadline = peers.next_deadline()        # _tick()
        if deadline is not None and clock.monotonic() >= deadline:
            actions += peers.on_timer()
        clock.advance(0.001)
    return actions


CAPACITY = 1024


@pytest.fixture
def touches(monkeypatch):
    """How often a peer's activity or expiry is computed: what a scan does per peer."""
    counts = {"activity": 0, "expiry": 0}
    activity, expires_at = Peer.last_activity, PeerList._expires_at

    def counted_activity(peer):
        counts["activity"] += 1
        return activity(peer)

    def counted_expires_at(self, peer):
        counts["expiry"] += 1
        return expires_at(self, peer)

    monkeypatch.setattr(Peer, "last_activity", counted_activity)
    monkeypatch.setattr(PeerList, "_expires_at", counted_expires_at)
    return counts


def test_admission_into_a_full_list_touches_a_constant_number_of_peers(touches):
    clock = FakeClock()
    fast = PeerList(clock, rng=random.Random(7).randbytes)
    assert fast.capacity == CAPACITY
    admit(clock, fast, admission_packets(0, CAPACITY))
    touches.update(activity=0, expiry=0)
    count = 3000
    actions = admit(clock, fast, admission_packets(CAPACITY, count))
    assert len(fast) == CAPACITY
    assert sum(isinstance(a, PeerRemoved) for a in actions) == count
    # One re-filing per admission: its activity, and its expiry (which reads the
    # activity again). A scan would be thousands per admission.
    assert touches["activity"] <= 2 * count and touches["expiry"] <= count
    assert_indexes_match(fast)

    # The counter does measure scans: the reference touches every peer, each time.
    slow = ScanningPeerList(clock, rng=random.Random(7).randbytes)
    admit(clock, slow, admission_packets(0, CAPACITY))
    touches.update(activity=0, expiry=0)
    admit(clock, slow, admission_packets(CAPACITY, 20))
    assert touches["activity"] >= 20 * 3 * CAPACITY


def test_heaps_stay_bounded_under_constant_activity():
    # Every observe re-files a peer; stale entries must not pile up.
    clock = FakeClock()
    peers = PeerList(clock, capacity=64)
    packets = admission_packets(0, 64)
    admit(clock, peers, packets)
    for _ in range(200):
        clock.advance(1)
        for pkt in packets:
            peers.observe(pkt.source, last_rx=clock.monotonic(), last_tx=clock.monotonic())
        assert peers.next_deadline() == clock.monotonic() + peers.expiry
        assert_indexes_match(peers)


def test_mass_expiry_removes_in_list_order():
    clock, fast, slow = pair()
    packets = admission_packets(0, CAPACITY)
    for peers in (fast, slow):
        admit(clock, peers, packets)
    clock.advance(fast.expiry + 10)
    removed = fast.on_timer()
    assert removed == slow.on_timer()
    assert [a.peer for a in removed] == [p.source for p in packets]
    assert len(fast) == 0 and fast.next_deadline() is None


@pytest.fixture
def daemon_logging():
    """Logging as the daemon sets it up (info level: debug events go nowhere),
    restored afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(os.devnull, "w") as devnull:
        log.configure("json", 0, stream=devnull)
        try:
            yield
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)


def test_admission_micro_benchmark(daemon_logging):
    """Printed with -s; no timing is asserted. PEERS_BENCH_N sets the number of
    admissions into a full list (default 5,000; the reference gets a tenth)."""
    count = int(os.environ.get("PEERS_BENCH_N", "5000"))
    results = {}
    for name, cls, n in (("indexed", PeerList, count), ("scanning", ScanningPeerList, max(1, count // 10))):
        clock = FakeClock()
        peers = cls(clock, rng=random.Random(7).randbytes)
        admit(clock, peers, admission_packets(0, CAPACITY))
        packets = admission_packets(CAPACITY, n)
        start = time.perf_counter()
        actions = admit(clock, peers, packets)
        elapsed = time.perf_counter() - start
        results[name] = actions
        print(f"\n{name}: {n} admissions into a full list of {CAPACITY}: {elapsed:.2f} s, "
              f"{n / elapsed:,.0f}/s, {1e6 * elapsed / n:.1f} us each")
    # Same decisions over the part both ran.
    shared = len(results["scanning"])
    assert results["indexed"][:shared] == results["scanning"]


def test_due_names_the_peers_on_timer_would_act_on_and_nothing_else():
    # What a relay needs to observe (merge BPF activity) before on_timer: only
    # these, not every peer.
    clock = FakeClock()
    peers = PeerList(clock, expiry=60)
    packets = admission_packets(0, 3)
    for pkt in packets:
        peers.on_incoming(pkt)                  # trusted, last_rx = created
        clock.advance(10)
    assert peers.due() == []
    clock.set(65)                               # the first one is 65 s idle
    assert [p.address for p in peers.due()] == [packets[0].source]
    peers.observe(packets[0].source, last_rx=64.0)   # the data path saw it
    assert peers.due() == [] and peers.on_timer() == []
    clock.set(75)                               # the second one's turn
    assert [p.address for p in peers.due()] == [packets[1].source]
    assert [a.peer for a in peers.on_timer()] == [packets[1].source]
    clock.set(124)                              # the first (64 + 60) and third (20 + 60)
    assert [p.address for p in peers.due()] == [packets[0].source, packets[2].source]
    assert [a.peer for a in peers.on_timer()] == [packets[0].source, packets[2].source]
