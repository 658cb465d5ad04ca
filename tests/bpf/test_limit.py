"""Admission to the slow path (bpf/lib/limit.h) through BPF_PROG_TEST_RUN.

Every receive program (the client's XDP and tc-only ones, the relay's XDP and tc
ones) admits what it leaves to the control plane's socket through a bucket per IPv4
source and kind, then one for everybody; what is refused is dropped and counted as
rx_slow_path_source_limit or rx_slow_path_limit. Rates of one packet per second,
so that nothing refills while a test runs: exactly `burst` packets get through.
"""

import ipaddress

import pytest

from xdp_teredo.datapath import Reason
from xdp_teredo.datapath.limits import SlowPathLimits

from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS
from .test_relay import RELAY_IPV4, RELAY_PORT, SERVER
from .test_relay import relay, relay_ns, relay_program  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
# The reasons these tests produce (test_rx.py checks every reason is produced somewhere).
COVERED = {R.RX_SLOW_PATH_SOURCE_LIMIT, R.RX_SLOW_PATH_LIMIT}
SOURCE_LIMITED = {R.RX_SLOW_PATH_SOURCE_LIMIT.key: 1}
GLOBAL_LIMITED = {R.RX_SLOW_PATH_LIMIT.key: 1}


def _bubble_from(ipv4: str, port: int = P.PEER_PORT, **frame) -> bytes:
    """A bubble from a Teredo address embedding its UDP source: for the control plane."""
    src = P.teredo_address(P.SERVER_IPV4, ipv4, port)
    return P.teredo_frame(P.bubble(src, P.OUR_ADDRESS), src=ipv4, sport=port, **frame)


def _ra_from_server() -> bytes:
    """An authentication header first: a server's RA, the other kind."""
    auth = b"\x00\x01\x00\x00" + bytes(8) + b"\x00"
    return P.teredo_frame(auth + P.bubble("fe80::1", "fe80::2"), src=P.SERVER_IPV4, sport=3544)


def _program(dp, name):
    return dp.xdp if name == "xdp" else dp.tc_rx


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
def test_one_source_gets_its_burst_then_is_dropped(dp, program):
    dp.configure()
    dp.prog.slow_path.write(SlowPathLimits(source_pps=1, source_burst=5, global_pps=0))
    run = _program(dp, program)
    outcomes = [run(_bubble_from("198.51.100.9")) for _ in range(8)]
    assert [o.counted for o in outcomes] == [{"rx_bubble": 1}] * 5 + [SOURCE_LIMITED] * 3
    dropped = XDP_DROP if program == "xdp" else TC_ACT_SHOT
    assert [o.retval for o in outcomes[5:]] == [dropped] * 3
    # Another sender has its own bucket; the same sender's RAs too (the other kind).
    assert run(_bubble_from("198.51.100.10")).counted == {"rx_bubble": 1}
    assert run(_ra_from_server()).counted == {"rx_auth": 1}
    assert dp.prog.slow_path.tracked() == 3


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
def test_everybody_together_gets_the_global_burst(dp, program):
    dp.configure()
    dp.prog.slow_path.write(SlowPathLimits(source_pps=0, global_pps=1, global_burst=10))
    run = _program(dp, program)
    sources = [str(ipaddress.IPv4Address("198.51.100.100") + i) for i in range(14)]
    outcomes = [run(_bubble_from(ip)).counted for ip in sources]
    assert outcomes == [{"rx_bubble": 1}] * 10 + [GLOBAL_LIMITED] * 4
    passed = XDP_PASS if program == "xdp" else TC_ACT_OK
    assert run(P.teredo_frame(b"\x00", src="198.51.100.1", dport=9)).retval == passed, \
        "not ours (rx_not_teredo): never limited"


def test_the_fast_path_is_never_limited(dp):
    dp.configure()
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
    dp.prog.slow_path.write(SlowPathLimits(source_pps=1, source_burst=1, global_pps=1,
                                           global_burst=1))
    data = P.teredo_frame(P.inner_ipv6(P.PEER_ADDRESS, P.OUR_ADDRESS))
    assert [dp.xdp(data).counted for _ in range(5)] == [{"decapsulated": 1}] * 5
    # The same sender's bubbles: the first takes the one token, the rest are dropped.
    bubble = _bubble_from(P.PEER_IPV4)
    assert [dp.xdp(bubble).counted for _ in range(3)] == [{"rx_bubble": 1}] + [SOURCE_LIMITED] * 2


def test_without_limits_written_nothing_is_limited(dp):
    dp.configure()
    assert dp.prog.slow_path.read() is None
    assert all(dp.xdp(_bubble_from("198.51.100.9")).counted == {"rx_bubble": 1}
               for _ in range(300))


def test_limits_read_back_as_written(dp):
    limits = SlowPathLimits(source_pps=100, source_burst=100, global_pps=2000, global_burst=2000)
    dp.prog.slow_path.write(limits)
    assert dp.prog.slow_path.read() == limits


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_the_relay_limits_its_slow_path_too(relay, hook):  # noqa: F811 (fixture)
    relay.prog.slow_path.write(SlowPathLimits(source_pps=1, source_burst=3, global_pps=0))
    run = relay.xdp if hook == "xdp" else relay.tc
    # A bubble from a client the relay does not know: for its control plane (§5.4.2).
    src = P.teredo_address(SERVER, "198.51.100.77", 41000)
    frame = P.teredo_frame(P.bubble(src, "2001:db8:1::2"), src="198.51.100.77", sport=41000,
                           dst=RELAY_IPV4, dport=RELAY_PORT)
    counted = [run(frame).counted for _ in range(5)]
    assert counted == [{"rx_bubble": 1}] * 3 + [SOURCE_LIMITED] * 2
