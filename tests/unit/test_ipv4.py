"""ipv4.is_global_unicast: refuse what Miredo refuses, accept what it accepts."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from xdp_teredo.errors import UsageError
from xdp_teredo.teredo.ipv4 import REFUSED_NETWORKS, as_ipv4, is_global_unicast

# Miredo's own test table (libteredo/test/v4global.c): an independent oracle.
MIREDO_TABLE = [
    ("0.1.2.3", False),
    ("10.11.12.133", False),
    ("127.0.0.1", False),
    ("169.254.12.42", False),
    ("172.20.123.45", False),
    ("192.168.234.123", False),
    ("232.11.22.33", False),
    ("255.255.255.255", False),
    ("192.0.2.10", True),
    ("9.8.7.6", True),
    ("11.12.13.14", True),
    ("126.127.128.129", True),
    ("192.167.255.255", True),
    ("223.255.255.254", True),
]


@pytest.mark.parametrize("address,expected", MIREDO_TABLE)
def test_matches_miredo_test_table(address, expected):
    assert is_global_unicast(address) is expected


@pytest.mark.parametrize("address", [
    "0.0.0.0", "0.255.255.255", "10.0.0.0", "10.255.255.255", "127.255.255.255",
    "169.254.0.0", "169.254.255.255", "172.16.0.0", "172.31.255.255",
    "192.168.0.0", "192.168.255.255", "192.88.99.0", "192.88.99.255",
    "224.0.0.0", "224.0.0.253", "239.255.255.255", "240.0.0.1", "254.1.2.3",
])
def test_refused_edges(address):
    assert not is_global_unicast(address)


@pytest.mark.parametrize("address", [
    # Just outside each refused range.
    "1.0.0.0", "9.255.255.255", "11.0.0.0", "126.255.255.255", "128.0.0.0",
    "169.253.255.255", "169.255.0.0", "172.15.255.255", "172.32.0.0",
    "192.167.255.255", "192.169.0.0", "192.88.98.255", "192.88.100.0",
    "223.255.255.255",
    # Documentation ranges: Miredo accepts them and our labs run on them.
    "192.0.2.1", "198.51.100.7", "203.0.113.254",
    # RFC 6598 carrier-grade NAT space: Miredo accepts it (documented in ipv4.py).
    "100.64.0.1", "100.127.255.254",
])
def test_accepted(address):
    assert is_global_unicast(address)


def test_accepts_address_objects_and_ints():
    assert is_global_unicast(ipaddress.IPv4Address("198.51.100.1"))
    assert not is_global_unicast(int(ipaddress.IPv4Address("10.1.2.3")))


@pytest.mark.parametrize("bad", ["", "300.1.1.1", "2001:db8::1", "host.example", None, 1.5, True])
def test_not_an_address_is_a_usage_error(bad):
    with pytest.raises(UsageError) as err:
        as_ipv4(bad)
    assert "\n" not in str(err.value)
    assert "not an IPv4 address" in str(err.value)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_agrees_with_miredo_bitmask_formula(value):
    # Miredo's formula on the host-order integer, transcribed from v4global.c.
    miredo = (
        (value & 0xFF000000) != 0x00000000
        and (value & 0xFF000000) != 0x0A000000
        and (value & 0xFF000000) != 0x7F000000
        and (value & 0xFFFF0000) != 0xA9FE0000
        and (value & 0xFFF00000) != 0xAC100000
        and (value & 0xFFFF0000) != 0xC0A80000
        and (value & 0xFFFFFF00) != 0xC0586200
        and (value & 0xE0000000) != 0xE0000000
    )
    assert is_global_unicast(ipaddress.IPv4Address(value)) is miredo


def test_refused_list_is_what_the_docstring_says():
    assert [str(n) for n in REFUSED_NETWORKS] == [
        "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "192.88.99.0/24", "224.0.0.0/3",
    ]
