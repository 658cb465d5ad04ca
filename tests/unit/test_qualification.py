"""Qualification state machine: the timers of teredo-facts.md, driven by FakeClock."""

import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st
from structlog.testing import capture_logs

from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.constants import (
    FLAG_RANDOM_MASK,
    QUALIFICATION_TIMEOUT,
    QUALIFICATION_TRIES,
    REFRESH_INTERVAL,
    RESTART_DELAY,
    TEREDO_MTU,
)
from xdp_teredo.teredo.qualification import (
    TRANSITIONS,
    AddressChanged,
    FlushPeers,
    IllegalTransition,
    MtuChanged,
    Offline,
    Qualification,
    SendRouterSolicitation,
    ServerLost,
    SetTimer,
    State,
    StateChanged,
)

IPv4 = ipaddress.IPv4Address
SERVER_A = IPv4("192.0.2.1")
SERVER_B = IPv4("198.51.100.1")
SERVER_C = IPv4("203.0.113.1")
MAPPED = IPv4("203.0.113.45")
PORT = 40000


def prefix_of(server, hi="2001:0"):
    s = int(server)
    return ipaddress.IPv6Network(f"{hi}:{s >> 16:x}:{s & 0xFFFF:x}::/64")


class Driver:
    """Feeds a Qualification from a FakeClock and records (time, action)."""

    def __init__(self, servers=(SERVER_A,), seed=1, **kw):
        self.clock = FakeClock()
        self.m = Qualification(servers, rng=random.Random(seed).randbytes, **kw)
        self.log = []

    @property
    def now(self):
        return self.clock.monotonic()

    def record(self, actions):
        self.log += [(self.now, a) for a in actions]
        return actions

    def start(self):
        return self.record(self.m.start(self.now))

    def run_until(self, t):
        """Fire every timer due up to t, at its exact time; return their actions."""
        out = []
        while self.m.timer_at is not None and self.m.timer_at <= t:
            self.clock.set(max(self.now, self.m.timer_at))
            out += self.record(self.m.on_timer(self.now))
        self.clock.set(t)
        return out

    def solicitations(self, since=float("-inf")):
        return [(t, a) for t, a in self.log
                if isinstance(a, SendRouterSolicitation) and t >= since]

    def last_nonce(self):
        return self.solicitations()[-1][1].nonce

    def ra(self, **kw):
        args = dict(nonce=self.last_nonce(), origin_ip=MAPPED, origin_port=PORT,
                    prefix=prefix_of(self.m.server), mtu=None, from_server=True)
        args.update(kw)
        return self.record(self.m.on_router_advertisement(self.now, **args))

    def qualify(self, **kw):
        self.start()
        self.clock.advance(0.5)
        return self.ra(**kw)


def of_type(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


# --- qualification ----------------------------------------------------------------


def test_rs_retried_every_4s_three_times_then_offline():
    d = Driver()
    d.start()
    assert d.m.state is State.QUALIFYING
    d.run_until(QUALIFICATION_TIMEOUT * QUALIFICATION_TRIES - 0.01)
    rs = d.solicitations()
    assert [t for t, _ in rs] == [0.0, 4.0, 8.0]
    assert all(a.server == SERVER_A and not a.cone for _, a in rs)
    assert d.m.state is State.QUALIFYING

    actions = d.run_until(12.0)
    assert actions == [
        ServerLost(SERVER_A, qualified=False),
        StateChanged(State.QUALIFYING, State.OFFLINE),
        Offline(retry_at=12.0 + RESTART_DELAY, next_server=SERVER_A),
        SetTimer(12.0 + RESTART_DELAY),
    ]
    assert d.m.state is State.OFFLINE and d.m.since == 12.0
    assert len(d.solicitations()) == 3  # nothing more until the restart delay


def test_every_rs_carries_a_fresh_8_byte_nonce():
    d = Driver()
    d.start()
    d.run_until(500)
    nonces = [a.nonce for _, a in d.solicitations()]
    assert len(nonces) >= 9
    assert all(len(n) == 8 for n in nonces)
    assert len(set(nonces)) == len(nonces)


def test_valid_ra_qualifies():
    d = Driver()
    d.start()
    d.clock.advance(1.0)
    actions = d.ra(mtu=1400)
    mapping = d.m.mapping
    assert actions == [
        StateChanged(State.QUALIFYING, State.QUALIFIED),
        AddressChanged(None, mapping),
        FlushPeers(),
        SetTimer(1.0 + REFRESH_INTERVAL),
    ]
    assert d.m.state is State.QUALIFIED and d.m.since == 1.0
    assert (mapping.server, mapping.mapped_ip, mapping.mapped_port, mapping.mtu) == (
        SERVER_A, MAPPED, PORT, 1400)
    assert d.m.mtu == 1400
    # The address embeds what the RA said (§4), with RFC 5991 flags.
    value = int(mapping.address)
    assert value >> 96 == 0x20010000
    assert (value >> 64) & 0xFFFFFFFF == int(SERVER_A)
    assert ((value >> 32) & 0xFFFF) ^ 0xFFFF == PORT
    assert (value & 0xFFFFFFFF) ^ 0xFFFFFFFF == int(MAPPED)
    assert ((value >> 48) & 0xFFFF) & ~FLAG_RANDOM_MASK == 0


def test_address_factory_is_used():
    def factory(server, ip, port):
        return TeredoAddress(server=server, flags=0x8000, port=port, client=ip).ipv6

    d = Driver(address_factory=factory)
    d.qualify()
    assert d.m.mapping.address == factory(SERVER_A, MAPPED, PORT)


def test_default_address_flags_come_from_the_injected_rng():
    first, again, other = Driver(seed=5), Driver(seed=5), Driver(seed=6)
    for d in (first, again, other):
        d.qualify()
    assert first.m.mapping.address == again.m.mapping.address
    assert first.m.mapping.address != other.m.mapping.address


def test_ra_with_wrong_nonce_ignored_then_right_one_accepted():
    d = Driver()
    d.start()
    assert d.ra(nonce=b"\x00" * 8) == []
    assert d.ra(nonce=None) == []
    assert d.m.ignored["nonce_mismatch"] == 2
    assert d.m.state is State.QUALIFYING
    assert of_type(d.ra(), StateChanged) == [StateChanged(State.QUALIFYING, State.QUALIFIED)]


def test_ra_echoing_an_earlier_try_is_ignored():
    d = Driver()
    d.start()
    first = d.last_nonce()
    d.run_until(4.0)
    assert d.last_nonce() != first
    assert d.ra(nonce=first) == []
    assert d.m.ignored["nonce_mismatch"] == 1


@pytest.mark.parametrize("override, reason", [
    (dict(prefix=ipaddress.IPv6Network("2002:c000:201::/64")), "prefix_not_teredo"),
    (dict(prefix=prefix_of(SERVER_A, hi="2001:db8")), "prefix_not_teredo"),
    (dict(prefix=prefix_of(SERVER_B)), "prefix_server_mismatch"),
    (dict(prefix=ipaddress.IPv6Network("2001:0:c000:200::/56")), "prefix_length"),
    (dict(prefix=None), "no_prefix"),
    (dict(from_server=False), "not_from_server"),
    (dict(origin_ip=None), "no_origin_indication"),
    (dict(origin_port=None), "no_origin_indication"),
    (dict(origin_port=0), "bad_origin_port"),
])
def test_invalid_ra_ignored_and_counted(override, reason):
    d = Driver()
    d.start()
    assert d.ra(**override) == []
    assert d.m.ignored[reason] == 1
    assert d.m.state is State.QUALIFYING and d.m.mapping is None
    assert d.m.awaiting_advertisement  # still waiting for the real one


def test_prefix_may_be_given_as_an_address():
    d = Driver()
    d.start()
    d.ra(prefix=prefix_of(SERVER_A).network_address)
    assert d.m.state is State.QUALIFIED


def test_unsolicited_ra_ignored():
    d = Driver()
    d.m.on_router_advertisement(0.0, nonce=b"12345678", origin_ip=MAPPED, origin_port=PORT,
                                prefix=prefix_of(SERVER_A), from_server=True)
    assert d.m.ignored["unsolicited"] == 1 and d.m.state is State.OFFLINE
    d.qualify()
    # Between refreshes no RS is outstanding: a replay of the last RA is unsolicited.
    assert d.ra() == []
    assert d.m.ignored["unsolicited"] == 2


@pytest.mark.parametrize("mtu, honoured", [
    (None, TEREDO_MTU), (1280, 1280), (1500, 1500), (65535, 65535), (1279, TEREDO_MTU),
    (65536, TEREDO_MTU), (0, TEREDO_MTU),
])
def test_mtu_honoured_only_between_1280_and_65535(mtu, honoured):
    d = Driver()
    d.qualify(mtu=mtu)
    assert d.m.state is State.QUALIFIED
    assert d.m.mtu == honoured
    assert d.m.ignored["mtu_out_of_range"] == (0 if mtu is None or mtu == honoured else 1)


def test_refresh_every_30s_keeps_address():
    d = Driver()
    d.qualify()
    address = d.m.mapping.address
    for n in range(1, 5):
        due = 0.5 + n * REFRESH_INTERVAL
        d.run_until(due - 0.01)
        assert len(d.solicitations()) == n  # the initial RS plus n-1 refreshes
        d.run_until(due)
        assert d.solicitations()[-1][0] == due
        d.clock.advance(0.0)
        actions = d.ra()
        assert actions == [SetTimer(due + REFRESH_INTERVAL)]
    assert d.m.mapping.address == address
    assert d.m.state is State.QUALIFIED and d.m.since == 0.5


def test_refresh_with_new_mtu_reports_it():
    d = Driver()
    d.qualify()
    old = d.m.mapping
    d.run_until(d.m.timer_at)
    actions = d.ra(mtu=1400)
    assert of_type(actions, AddressChanged) == []
    assert of_type(actions, MtuChanged) == [MtuChanged(1280, 1400, d.m.mapping)]
    assert d.m.mapping.address == old.address


def test_mapping_change_yields_address_changed_and_flush():
    d = Driver()
    d.qualify()
    old = d.m.mapping
    d.run_until(d.m.timer_at)
    new_ip = IPv4("203.0.113.99")
    actions = d.ra(origin_ip=new_ip, origin_port=50000)
    new = d.m.mapping
    assert actions == [AddressChanged(old, new), FlushPeers(), SetTimer(d.now + REFRESH_INTERVAL)]
    assert (new.mapped_ip, new.mapped_port) == (new_ip, 50000)
    assert new.address != old.address
    assert d.m.state is State.QUALIFIED  # no state change, only a new address


def test_refresh_retries_then_connectivity_lost():
    d = Driver(restart_delay=10)
    d.qualify()
    refresh = d.m.timer_at
    old = d.m.mapping
    actions = d.run_until(refresh + 3 * QUALIFICATION_TIMEOUT)
    assert [t for t, _ in d.solicitations(since=refresh)] == [refresh, refresh + 4, refresh + 8]
    lost_at = refresh + 12
    assert actions[-6:] == [
        ServerLost(SERVER_A, qualified=True),
        StateChanged(State.QUALIFIED, State.OFFLINE),
        AddressChanged(old, None),
        FlushPeers(),
        Offline(lost_at + 10, SERVER_A),
        SetTimer(lost_at + 10),
    ]
    assert d.m.mapping is None and d.m.mtu == TEREDO_MTU


def test_recovery_after_offline_with_backoff():
    d = Driver(restart_delay=5, restart_delay_max=12)
    d.start()
    d.run_until(12)                      # first round fails: wait 5
    assert d.m.timer_at == 17
    d.run_until(17)
    assert d.m.state is State.QUALIFYING
    assert d.solicitations()[-1] == (17, d.solicitations()[-1][1])
    d.run_until(29)                      # second round fails: wait 10
    assert d.m.state is State.OFFLINE and d.m.timer_at == 39
    d.run_until(39 + 12)                 # third round fails: capped at 12
    assert d.m.timer_at == 51 + 12
    d.run_until(63)
    d.ra()                               # success resets the back-off
    assert d.m.state is State.QUALIFIED
    d.run_until(d.m.timer_at + 12)       # refresh fails: back to 5
    assert d.m.state is State.OFFLINE
    assert d.m.timer_at == d.now + 5


def test_server_failover_in_order_with_wrap_around():
    d = Driver(servers=(SERVER_A, SERVER_B, SERVER_C), restart_delay=50)
    d.start()
    d.run_until(12)
    lost = [a for _, a in d.log if isinstance(a, ServerLost)]
    assert lost == [ServerLost(SERVER_A, False)]
    # Straight to the next server, no waiting, no state change.
    assert d.m.state is State.QUALIFYING and d.m.server == SERVER_B
    assert d.solicitations()[-1][0] == 12 and d.solicitations()[-1][1].server == SERVER_B
    d.run_until(36)
    assert [a.server for _, a in d.log if isinstance(a, ServerLost)] == [SERVER_A, SERVER_B,
                                                                           SERVER_C]
    assert [a.server for _, a in d.solicitations()] == [SERVER_A] * 3 + [SERVER_B] * 3 + [
        SERVER_C] * 3
    # All three failed: offline, then start over with the first (wrap around).
    assert d.m.state is State.OFFLINE
    assert of_type([a for _, a in d.log], Offline) == [Offline(86, SERVER_A)]
    d.run_until(86)
    assert d.m.state is State.QUALIFYING and d.solicitations()[-1][1].server == SERVER_A


def test_failover_from_qualified_server_to_the_next():
    d = Driver(servers=(SERVER_A, SERVER_B))
    d.qualify()
    old = d.m.mapping
    actions = d.run_until(d.m.timer_at + 12)
    assert actions[-6:] == [
        ServerLost(SERVER_A, qualified=True),
        StateChanged(State.QUALIFIED, State.QUALIFYING),
        AddressChanged(old, None),
        FlushPeers(),
        SendRouterSolicitation(SERVER_B, d.last_nonce()),
        SetTimer(d.now + QUALIFICATION_TIMEOUT),
    ]
    # The RA must now carry server B's prefix; A's is refused.
    assert d.ra(prefix=prefix_of(SERVER_A)) == []
    actions = d.ra()
    assert d.m.state is State.QUALIFIED and d.m.mapping.server == SERVER_B
    assert of_type(actions, AddressChanged) == [AddressChanged(None, d.m.mapping)]


def test_failover_after_success_restarts_the_round():
    # A success resets the count: B failing later moves to A without going offline.
    d = Driver(servers=(SERVER_A, SERVER_B))
    d.start()
    d.run_until(12)                # A fails -> B
    d.ra()                         # B answers
    d.run_until(d.m.timer_at + 12)  # B fails -> A, still online-ish
    assert d.m.state is State.QUALIFYING and d.m.server == SERVER_A


def test_stop_withdraws_and_disarms():
    d = Driver()
    d.qualify()
    old = d.m.mapping
    actions = d.record(d.m.stop(d.now))
    assert actions == [StateChanged(State.QUALIFIED, State.OFFLINE), AddressChanged(old, None),
                       FlushPeers(), SetTimer(None)]
    assert d.m.on_timer(10_000) == []
    assert d.m.stop(d.now) == [SetTimer(None)]
    d.start()
    assert d.m.state is State.QUALIFYING


def test_start_is_idempotent_and_timer_calls_early_do_nothing():
    d = Driver()
    d.start()
    assert d.m.start(1.0) == []
    assert d.m.on_timer(3.99) == []
    assert len(of_type(d.m.on_timer(4.0), SendRouterSolicitation)) == 1


def test_start_while_waiting_to_restart_starts_now():
    d = Driver()
    d.start()
    d.run_until(12)
    d.clock.advance(1)
    d.start()
    assert d.m.state is State.QUALIFYING and d.solicitations()[-1][0] == 13


def test_every_state_change_is_logged():
    d = Driver()
    with capture_logs() as logs:
        d.qualify()
    changes = [e for e in logs if e["event"] == "state_changed"]
    assert [(e["old"], e["new"]) for e in changes] == [("offline", "qualifying"),
                                                       ("qualifying", "qualified")]


def test_illegal_transition_raises():
    m = Qualification([SERVER_A])
    with pytest.raises(IllegalTransition):
        m._transition(State.QUALIFIED, 0.0)
    assert m.state is State.OFFLINE
    assert all(old not in news for old, news in TRANSITIONS.items())


def test_configuration_checked():
    with pytest.raises(ValueError):
        Qualification([])
    with pytest.raises(ValueError):
        Qualification([SERVER_A], tries=0)


# --- property: random event sequences ----------------------------------------------

RA_KINDS = ["good", "good", "good_new_mapping", "bad_nonce", "not_server", "bad_prefix",
            "other_server"]
# Weighted by repetition (one_of picks a branch uniformly): rare stops, or runs
# would seldom get as far as losing a server they qualified with.
_ADVANCE = st.tuples(st.just("advance"),
                     st.one_of(st.sampled_from([0.5, 4.0, 12.0, 30.0, 45.0]),
                               st.floats(min_value=0, max_value=60)))
_FIRE = st.tuples(st.just("fire"), st.just(None))
_RA = st.tuples(st.just("ra"), st.sampled_from(RA_KINDS))
EVENTS = st.one_of(
    _ADVANCE, _ADVANCE, _FIRE, _FIRE, _RA, _RA,
    st.tuples(st.just("start"), st.just(None)),
    st.tuples(st.just("stop"), st.just(None)),
)


@settings(max_examples=300, deadline=None)
@given(servers=st.integers(1, 3), seed=st.integers(0, 2**16),
       delay=st.sampled_from([0.0, 3.0, RESTART_DELAY]),
       events=st.lists(EVENTS, max_size=60))
def test_random_event_sequences_keep_the_invariants(servers, seed, delay, events):
    d = Driver(servers=(SERVER_A, SERVER_B, SERVER_C)[:servers], seed=seed,
               restart_delay=delay)
    m = d.m
    unanswered = 0
    for kind, arg in [("start", None)] + events:
        before = len(d.log)
        if kind == "advance":
            d.run_until(d.now + arg)   # timers fire at their own times on the way
        elif kind == "fire" and m.timer_at is not None:
            d.run_until(max(d.now, m.timer_at))
        elif kind == "ra" and d.solicitations():
            kw = {}
            if arg == "good_new_mapping":
                kw = dict(origin_ip=IPv4("203.0.113.%d" % (len(d.log) % 250 + 1)))
            elif arg == "bad_nonce":
                kw = dict(nonce=bytes(8))
            elif arg == "not_server":
                kw = dict(from_server=False)
            elif arg == "bad_prefix":
                kw = dict(prefix=ipaddress.IPv6Network("2002::/64"))
            elif arg == "other_server":
                kw = dict(prefix=prefix_of(IPv4("192.0.2.200")))
            d.ra(**kw)
            if arg not in ("good", "good_new_mapping"):
                assert len(d.log) == before  # invalid RAs never act
        elif kind == "start":
            if d.start():
                d.log.insert(before, (d.now, "start"))
                before += 1
        elif kind == "stop":
            d.record(m.stop(d.now))
        new = [a for _, a in d.log[before:] if a != "start"]

        # At most `tries` RS without an answer before the server is declared lost.
        if kind in ("start", "stop") or (kind == "ra" and new):
            unanswered = 0
        for a in new:
            if isinstance(a, SendRouterSolicitation):
                unanswered += 1
                assert unanswered <= QUALIFICATION_TRIES
            elif isinstance(a, ServerLost):
                unanswered = 0
            if isinstance(a, StateChanged):
                assert a.new in TRANSITIONS[a.old]
        timers = of_type(new, SetTimer)
        if timers:
            assert timers[-1].at == m.timer_at
        for i, a in enumerate(new):
            if isinstance(a, AddressChanged):
                assert isinstance(new[i + 1], FlushPeers)
        assert (m.state is State.QUALIFIED) == (m.mapping is not None)
        if m.state is State.QUALIFYING:
            assert m.awaiting_advertisement and m.timer_at is not None
        if m.timer_at is not None:
            assert m.timer_at >= d.now
        if m.mapping is not None:
            assert m.mapping.server == m.server
            assert (int(m.mapping.address) >> 64) & 0xFFFFFFFF == int(m.server)

    nonces = [a.nonce for _, a in d.solicitations()]
    assert len(set(nonces)) == len(nonces)
    # Two RS to the same server are at least a timeout apart, unless a start()
    # came in between (the only event that solicits without waiting).
    last = {}
    for t, a in d.log:
        if a == "start":
            last.clear()
        elif isinstance(a, SendRouterSolicitation):
            if a.server in last:
                assert t - last[a.server] >= QUALIFICATION_TIMEOUT - 1e-9  # float sums
            last[a.server] = t
