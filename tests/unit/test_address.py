"""Teredo addresses: RFC 4380 §4 layout, RFC 5991 §4 random flags."""

import ipaddress
import random

import pytest
from hypothesis import given, settings, strategies as st

from xdp_teredo.errors import NotTeredoAddress, UsageError
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo.address import TeredoAddress, is_teredo

ipv4s = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)
ports = st.integers(min_value=0, max_value=0xFFFF)
flags = st.integers(min_value=0, max_value=0xFFFF)

GOLDEN = [
    # RFC 4380 §4's example.
    ("2001:0000:4136:e378:8000:63bf:3fff:fdd2", "65.54.227.120", 32768, 40000, "192.0.2.45"),
    # Miredo's own test (libteredo/test/teredo.c).
    ("2001:0:c000:201:8000:cfc6:3fff:fd74", "192.0.2.1", 32768, 12345, "192.0.2.139"),
]


@pytest.mark.parametrize("text,server,flag_value,port,client", GOLDEN)
def test_golden_vectors_decode(text, server, flag_value, port, client):
    address = TeredoAddress.parse(text)
    assert address == TeredoAddress(
        server=ipaddress.IPv4Address(server), flags=flag_value, port=port,
        client=ipaddress.IPv4Address(client),
    )
    assert address.cone


@pytest.mark.parametrize("text,server,flag_value,port,client", GOLDEN)
def test_golden_vectors_encode(text, server, flag_value, port, client):
    address = TeredoAddress(server=server, flags=flag_value, port=port, client=client)
    assert address.ipv6 == ipaddress.IPv6Address(text)
    assert str(address) == ipaddress.IPv6Address(text).compressed


def test_parse_accepts_ipv6address_and_surrounding_space():
    text = GOLDEN[0][0]
    assert TeredoAddress.parse(ipaddress.IPv6Address(text)) == TeredoAddress.parse(f" {text}\n")


@pytest.mark.parametrize("bad,fragment", [
    ("not-an-address", "not an IPv6 address"),
    ("192.0.2.1", "not an IPv6 address"),
    ("", "not an IPv6 address"),
    ("2001:db8::1", "outside 2001::/32"),
    ("2002:c000:201::1", "outside 2001::/32"),
    ("2001:1::1", "outside 2001::/32"),
    ("fe80::ffff:ffff:ffff", "outside 2001::/32"),
])
def test_parse_refuses_with_one_line(bad, fragment):
    with pytest.raises(NotTeredoAddress) as err:
        TeredoAddress.parse(bad)
    message = str(err.value)
    assert fragment in message and "\n" not in message
    # A user's mistake: the CLI maps it to exit 2.
    assert isinstance(err.value, UsageError) and err.value.exit_code == 2


def test_from_ipv6_refuses_non_teredo_and_non_ipv6():
    with pytest.raises(NotTeredoAddress):
        TeredoAddress.from_ipv6(ipaddress.IPv6Address("2001:db8::1"))
    with pytest.raises(NotTeredoAddress):
        TeredoAddress.from_ipv6("2001::1")  # text is parse()'s job


def test_fields_are_validated():
    with pytest.raises(ValueError):
        TeredoAddress(server="192.0.2.1", flags=0x10000, port=1, client="192.0.2.2")
    with pytest.raises(ValueError):
        TeredoAddress(server="192.0.2.1", flags=0, port=-1, client="192.0.2.2")
    with pytest.raises(UsageError):
        TeredoAddress(server="not-ip", flags=0, port=1, client="192.0.2.2")


@settings(max_examples=200)
@given(ipv4s, flags, ports, ipv4s)
def test_round_trip_fields(server, flag_value, port, client):
    address = TeredoAddress(server=server, flags=flag_value, port=port, client=client)
    assert TeredoAddress.from_ipv6(address.ipv6) == address
    assert TeredoAddress.parse(str(address)) == address
    assert address.ipv6 in C.TEREDO_PREFIX


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**96 - 1))
def test_round_trip_any_teredo_ipv6(low_bits):
    ipv6 = ipaddress.IPv6Address((C.TEREDO_PREFIX_HI32 << 96) | low_bits)
    assert TeredoAddress.from_ipv6(ipv6).ipv6 == ipv6


@settings(max_examples=100)
@given(ipv4s, ipv4s, ports, st.booleans(), st.integers(min_value=0, max_value=2**32))
def test_build_sets_only_random_and_cone_bits(server, mapped, port, cone, seed):
    address = TeredoAddress.build(server, mapped, port, cone=cone, rng=random.Random(seed))
    assert address.server == server and address.client == mapped and address.port == port
    assert address.cone is cone
    # RFC 5991 §4: U, G and the reserved bit are zero; nothing outside the mask moves.
    assert address.flags & (C.FLAG_U | C.FLAG_G | C.FLAG_RESERVED) == 0
    assert address.flags & ~(C.FLAG_RANDOM_MASK | C.FLAG_CONE) == 0
    assert address.random_flags == address.flags & 0x3CFF


def test_random_mask_is_the_twelve_rfc5991_bits():
    assert C.FLAG_RANDOM_MASK == 0x3CFF
    assert bin(C.FLAG_RANDOM_MASK).count("1") == 12


def test_build_spreads_the_twelve_bits_over_the_mask():
    # All ones fill the mask exactly; each single bit lands on a distinct mask bit.
    assert TeredoAddress.build("192.0.2.1", "192.0.2.2", 1, rng=lambda: 0xFFF).flags == 0x3CFF
    placed = {TeredoAddress.build("192.0.2.1", "192.0.2.2", 1, rng=lambda b=b: 1 << b).flags
              for b in range(12)}
    assert len(placed) == 12
    assert all(bin(f).count("1") == 1 and f & C.FLAG_RANDOM_MASK for f in placed)
    assert TeredoAddress.build("192.0.2.1", "192.0.2.2", 1, rng=lambda: 0).flags == 0


def test_build_with_same_seed_is_reproducible_and_seeds_differ():
    def make(seed):
        return TeredoAddress.build("192.0.2.1", "198.51.100.9", 5000, rng=random.Random(seed))
    assert make(7) == make(7)
    assert len({make(seed).flags for seed in range(40)}) > 20


def test_build_default_randomness_varies():
    flags_seen = {TeredoAddress.build("192.0.2.1", "198.51.100.9", 5000).flags
                  for _ in range(40)}
    assert len(flags_seen) > 20


@pytest.mark.parametrize("bad", [lambda: 4096, lambda: -1, lambda: "x"])
def test_build_refuses_rng_giving_more_than_twelve_bits(bad):
    with pytest.raises(ValueError):
        TeredoAddress.build("192.0.2.1", "192.0.2.2", 1, rng=bad)


def test_describe_keys_and_values():
    described = TeredoAddress.parse(GOLDEN[0][0]).describe()
    assert list(described)[:6] == ["address", "server", "client", "port", "flags", "cone"]
    assert described == {
        "address": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "server": "65.54.227.120",
        "client": "192.0.2.45",
        "port": 40000,
        "flags": 32768,
        "cone": True,
        "random_flags": 0,
        "client_global": True,
    }


def test_describe_flags_a_non_global_client():
    address = TeredoAddress(server="192.0.2.1", flags=0x1234, port=1, client="10.0.0.1")
    described = address.describe()
    assert described["client_global"] is False
    assert described["cone"] is False
    assert described["random_flags"] == 0x1234 & 0x3CFF


def test_embeds():
    address = TeredoAddress.parse(GOLDEN[0][0])
    assert address.embeds("192.0.2.45", 40000)
    assert address.embeds(ipaddress.IPv4Address("192.0.2.45"), 40000)
    assert not address.embeds("192.0.2.45", 40001)
    assert not address.embeds("192.0.2.46", 40000)


@pytest.mark.parametrize("value,expected", [
    ("2001::1", True),
    ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", True),
    (ipaddress.IPv6Address("2001:0:c000:201::"), True),
    (ipaddress.IPv6Address("2001:0:c000:201::").packed, True),
    ("2001:1::", False),
    ("2001:db8::1", False),
    ("::", False),
    ("192.0.2.1", False),
    ("garbage", False),
    (b"short", False),
])
def test_is_teredo(value, expected):
    assert is_teredo(value) is expected
