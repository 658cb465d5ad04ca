"""The server's fast path, the pure pieces: the config the XDP program gets from
ServerPolicy (its RA, the checksum sum, the rates), the daemon's options, and the
bench's summary. The program itself runs in tests/bpf/test_server.py."""

import ipaddress
import struct

import pytest

from xdp_teredo.datapath import layout
from xdp_teredo.datapath.server import RaLimits, server_config
from xdp_teredo.errors import UsageError
from xdp_teredo.server import config_from_options
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import ServerPolicy


def _policy(primary="192.0.2.1", secondary="192.0.2.2"):
    return ServerPolicy(primary, secondary, limiter=RateLimiter(Limits(20, 2048)))


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("dst", ["fe80::ffff:ffff:ffff", "fe80::8000:5445:5245:444f", "fe80::1"])
def test_ra_sum_plus_destination_is_the_policys_checksum(dst):
    """What bpf/lib/server.h computes (little-endian words, as loaded), folded."""
    policy = _policy()
    value = server_config(policy, RaLimits(0, 1))
    want = policy._router_advertisement(ipaddress.IPv6Address(dst))
    words = struct.unpack("<8H", ipaddress.IPv6Address(dst).packed)
    got = struct.pack("<H", ~_fold(value.ra_sum + sum(words)) & 0xFFFF)
    assert got == want[42:44]
    template = bytes(value.ra)
    assert template[:24] + template[40:42] + template[44:] == want[:24] + want[40:42] + want[44:]


def test_addresses_and_flags_as_the_program_reads_them():
    value = server_config(_policy(), RaLimits(17.5, 70, 1000, 1000), port=3544)
    raw = bytes(value)
    assert raw[0:4] == ipaddress.IPv4Address("192.0.2.1").packed
    assert raw[4:8] == ipaddress.IPv4Address("192.0.2.2").packed
    assert raw[8:10] == struct.pack("!H", 3544)
    assert value.flags == layout.ServerFlag.ENABLED
    assert bytes(value.link_local) == ipaddress.IPv6Address("fe80::8000:f227:3fff:fdfe").packed
    assert value.ra_source_interval_ns == round(1e9 / 17.5)
    assert value.ra_source_tolerance_ns == 69 * value.ra_source_interval_ns
    assert (value.ra_global_interval_ns, value.ra_global_tolerance_ns) == (1_000_000, 999_000_000)
    assert server_config(_policy(), RaLimits(0, 1), enabled=False).flags == 0


def test_xdp_options():
    config = config_from_options("192.0.2.1")
    assert (config.xdp_mode, config.xdp_ra_pps) == ("auto", 1_000_000.0)
    assert config_from_options("192.0.2.1", xdp_mode="off").xdp_mode == "off"
    with pytest.raises(UsageError, match="--xdp-mode"):
        config_from_options("192.0.2.1", xdp_mode="fast")
    with pytest.raises(UsageError, match="--xdp-ra-pps"):
        config_from_options("192.0.2.1", xdp_ra_pps=-1)


def test_forwarding_rate_as_the_program_reads_it():
    value = server_config(_policy(), RaLimits(0, 1, forward_pps=20, forward_burst=80))
    assert value.fwd_interval_ns == 50_000_000
    assert value.fwd_tolerance_ns == 79 * 50_000_000
    assert (server_config(_policy(), RaLimits(0, 1)).fwd_interval_ns) == 0, "0: no limit"


def test_the_programs_verdicts_count_under_the_policys_names():
    """ServerDaemon.counters_all: what XDP decided, added to ServerPolicy's counters."""
    from types import SimpleNamespace

    from xdp_teredo.server import ServerConfig
    from xdp_teredo.server.daemon import ServerDaemon

    daemon = ServerDaemon(ServerConfig(ipaddress.IPv4Address("192.0.2.1"),
                                       ipaddress.IPv4Address("192.0.2.2"), xdp_mode="off"))
    fast = {r.key: {"packets": 0, "bytes": 0} for r in layout.Reason}
    for key, n in (("server_ra", 5), ("server_forwarded_bubble", 7), ("server_forwarded_echo", 1),
                   ("server_source_mismatch", 2), ("server_not_ours", 3),
                   ("server_forward_malformed", 1), ("server_forward_destination_limit", 4),
                   ("server_not_rs", 100)):
        fast[key]["packets"] = n
    daemon.xdp = SimpleNamespace(stats=lambda: fast)
    counters = daemon.counters_all()
    assert (counters["rs_answered"], counters["forwarded_bubble"], counters["forwarded_echo"]) == (5, 7, 1)
    assert counters["rate_limited"] == 4
    assert counters["dropped"]["source_mismatch"] == 2 and counters["dropped"]["not_ours"] == 3
    assert counters["dropped"]["malformed"] == 1 and counters["dropped_total"] == 6
    # What the program passed up is counted by the policy when it reads it, not here.
    assert counters["received"] == 5 + 7 + 1 + 4 + 6


def test_ipv4_forwarding_turned_on_and_back(tmp_path, monkeypatch):
    from xdp_teredo.server import forwarding

    monkeypatch.setattr(forwarding, "_path", lambda device: str(tmp_path / device))
    (tmp_path / "eth0").write_text("0\n")
    undo = forwarding.enable_ipv4_forwarding("eth0")
    assert (tmp_path / "eth0").read_text() == "1"
    undo()
    assert (tmp_path / "eth0").read_text() == "0"
    (tmp_path / "eth1").write_text("1\n")
    assert forwarding.enable_ipv4_forwarding("eth1") is None, "on already: not ours to undo"
    assert forwarding.enable_ipv4_forwarding("gone") is None
    assert forwarding.ipv4_forwarding("gone") is None
