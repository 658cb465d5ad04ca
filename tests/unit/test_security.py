"""Nonces: injected randomness, length floor, constant-time comparison."""

import hmac
import random

import pytest
from hypothesis import given, strategies as st

from xdp_teredo.teredo import security


def test_nonce_is_eight_bytes_from_the_injected_rng():
    rng = random.Random(7).randbytes
    expected = random.Random(7).randbytes(8)
    assert security.generate_nonce(rng) == expected


def test_default_rng_gives_fresh_nonces():
    seen = {security.generate_nonce() for _ in range(64)}
    assert len(seen) == 64
    assert all(len(n) == 8 for n in seen)


def test_longer_nonces_allowed():
    assert len(security.generate_nonce(random.Random(1).randbytes, 16)) == 16


@pytest.mark.parametrize("length", [0, 1, 7])
def test_nonce_shorter_than_64_bits_refused(length):
    with pytest.raises(ValueError):
        security.generate_nonce(random.Random(1).randbytes, length)


@pytest.mark.parametrize("bad", [lambda n: b"\x00" * (n - 1), lambda n: "x" * n, lambda n: None])
def test_rng_returning_wrong_bytes_is_refused(bad):
    with pytest.raises(ValueError):
        security.generate_nonce(bad)


def test_nonces_equal():
    assert security.nonces_equal(b"12345678", b"12345678")
    assert security.nonces_equal(b"12345678", bytearray(b"12345678"))
    assert not security.nonces_equal(b"12345678", b"12345679")
    assert not security.nonces_equal(b"12345678", b"1234567")
    assert not security.nonces_equal(b"12345678", None)
    assert not security.nonces_equal(None, b"12345678")
    assert not security.nonces_equal(None, None)


def test_comparison_is_constant_time(monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert security.nonces_equal(b"abcdefgh", b"abcdefgh")
    assert calls == [(b"abcdefgh", b"abcdefgh")]


@given(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8))
def test_nonces_equal_agrees_with_equality(a, b):
    assert security.nonces_equal(a, b) == (a == b)
