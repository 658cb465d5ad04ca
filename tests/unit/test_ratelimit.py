"""Token buckets per source: burst, refill, bytes, all-or-nothing, bounded table."""

import pytest

from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter, TokenBucket


def _limiter(pps=10.0, bps=10_000.0, burst_s=2.0, min_byte_burst=100, **kwargs):
    clock = FakeClock(100.0)
    limits = Limits(pps, bps, burst_s=burst_s, min_byte_burst=min_byte_burst)
    return RateLimiter(limits, clock=clock, **kwargs), clock


def _allowed(limiter, key, n, nbytes=10):
    return sum(limiter.allow([key], nbytes) for _ in range(n))


def test_a_new_source_gets_a_full_burst_then_nothing():
    limiter, _ = _limiter(pps=10, burst_s=2)  # 20 packets of burst
    assert _allowed(limiter, "a", 50) == 20
    assert not limiter.allow(["a"], 10)


def test_refill_follows_the_clock_and_stops_at_the_burst():
    limiter, clock = _limiter(pps=10, burst_s=2)
    _allowed(limiter, "a", 20)
    clock.advance(0.5)                       # 5 packets' worth
    assert _allowed(limiter, "a", 50) == 5
    clock.advance(3600)                      # long idle: back to the burst, no more
    assert _allowed(limiter, "a", 100) == 20


def test_bytes_limit_binds_before_packets_for_big_datagrams():
    # 1000 B/s over 2 s = 2000 bytes of burst; plenty of packets.
    limiter, clock = _limiter(pps=1000, bps=1000, burst_s=2)
    assert _allowed(limiter, "a", 100, nbytes=117) == 2000 // 117
    clock.advance(0.117)                     # exactly one more datagram's bytes
    assert _allowed(limiter, "a", 100, nbytes=117) == 1


def test_min_byte_burst_lets_one_large_datagram_through():
    limits = Limits(1.0, 10.0, burst_s=1.0, min_byte_burst=1500)
    assert limits.byte_burst == 1500 and limits.packet_burst == 1.0
    limiter = RateLimiter(limits, clock=FakeClock())
    assert limiter.allow(["a"], 1400)
    assert not limiter.allow(["a"], 1)


def test_sources_are_independent():
    limiter, _ = _limiter(pps=10, burst_s=1)
    assert _allowed(limiter, "a", 30) == 10
    assert _allowed(limiter, "b", 30) == 10


def test_all_keys_must_have_tokens_and_a_refusal_takes_none():
    limiter, _ = _limiter(pps=10, burst_s=1)
    _allowed(limiter, "victim", 10)          # the receiving address is exhausted
    assert not limiter.allow(["sender", "victim"], 10)
    # The refused sends took nothing from the sender's bucket.
    assert _allowed(limiter, "sender", 30) == 10


def test_a_key_named_twice_is_charged_once():
    limiter, _ = _limiter(pps=10, burst_s=1)
    assert sum(limiter.allow(["a", "a"], 10) for _ in range(30)) == 10


def test_overall_bucket_caps_the_sum_of_all_sources():
    clock = FakeClock()
    limiter = RateLimiter(Limits(100, 1e6, burst_s=1), overall=Limits(5, 1e6, burst_s=1),
                          clock=clock)
    assert sum(limiter.allow([f"s{i}"], 10) for i in range(50)) == 5
    clock.advance(1.0)
    assert sum(limiter.allow([f"t{i}"], 10) for i in range(50)) == 5


def test_table_is_bounded_and_evicts_the_least_recently_used():
    limiter, _ = _limiter(max_sources=3)
    for key in ("a", "b", "c"):
        limiter.allow([key], 10)
    limiter.allow(["a"], 10)                 # a is now the most recent
    limiter.allow(["d"], 10)                 # evicts b, the least recent
    assert len(limiter) == 3
    assert "b" not in limiter and all(key in limiter for key in "acd")
    assert limiter.evictions == 1
    for i in range(1000):
        limiter.allow([i], 10)
    assert len(limiter) == 3 and limiter.evictions == 1001


def test_an_evicted_source_comes_back_full():
    limiter, _ = _limiter(pps=10, burst_s=1, max_sources=1)
    assert _allowed(limiter, "a", 30) == 10
    limiter.allow(["b"], 10)                 # evicts a
    assert _allowed(limiter, "a", 30) == 10


@pytest.mark.parametrize("kwargs", [
    {"packets_per_s": 0, "bytes_per_s": 1},
    {"packets_per_s": 1, "bytes_per_s": -1},
    {"packets_per_s": 1, "bytes_per_s": 1, "burst_s": 0},
])
def test_limits_must_be_positive(kwargs):
    with pytest.raises(ValueError):
        Limits(**kwargs)


def test_max_sources_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(Limits(1, 1), max_sources=0)


def test_bucket_never_refills_backwards_in_time():
    bucket = TokenBucket(Limits(10, 1000, burst_s=1, min_byte_burst=1), now=5.0)
    bucket.take(10)
    bucket.refill(4.0)                       # an earlier stamp changes nothing
    assert bucket.packets == 9.0 and bucket.bytes == 990.0


def test_status_reports_table_and_limits():
    limiter, _ = _limiter(max_sources=2)
    limiter.allow(["a"], 10)
    status = limiter.status()
    assert status["sources"] == 1 and status["max_sources"] == 2
    assert status["per_source"]["packets_per_s"] == 10.0
    assert status["overall"] is None
