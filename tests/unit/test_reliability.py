"""The pure parts of restart safety and fault handling (docs/reliability.md).

- Qualification.resume: carrying on with the mapping a previous instance left, and
  Qualification.refresh_now: asking the server at once when the interface changed;
- Hook.resume: the next run's OLD_* values after a restart;
- net/watch.py: which netlink messages concern our interface;
- datapath/limits.py: slow-path rates <-> GCRA parameters.
"""

import ipaddress
import random
import struct

import pytest

from xdp_teredo.datapath import layout
from xdp_teredo.datapath.limits import SlowPathLimits
from xdp_teredo.client.hook import Hook
from xdp_teredo.net import watch
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.qualification import (AddressChanged, FlushPeers, Mapping, Qualification,
                                             SendRouterSolicitation, State, StateChanged)

IPv4 = ipaddress.IPv4Address
SERVER = IPv4("192.0.2.1")
OTHER_SERVER = IPv4("198.51.100.1")
MAPPED, PORT = IPv4("203.0.113.45"), 40000
ADDRESS = TeredoAddress.build(SERVER, MAPPED, PORT, rng=random.Random(7)).ipv6
RESUMED = Mapping(SERVER, MAPPED, PORT, ADDRESS, 1280)
PREFIX = ipaddress.IPv6Network("2001:0:c000:201::/64")


def machine(servers=(SERVER,)):
    return Qualification(servers, rng=random.Random(1).randbytes, timeout=4, tries=3,
                         refresh_interval=30, restart_delay=100)


def ra(m, now, *, ip=MAPPED, port=PORT, prefix=PREFIX):
    return m.on_router_advertisement(now, nonce=m._nonce, origin_ip=ip, origin_port=port,
                                     prefix=prefix, from_server=True)


def kinds(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def test_resume_then_the_same_binding_keeps_the_address_and_the_peers():
    m = machine()
    first = m.resume(0.0, RESUMED)
    assert m.state is State.QUALIFYING and m.mapping == RESUMED
    assert kinds(first, SendRouterSolicitation) and kinds(first, StateChanged)
    answered = ra(m, 0.5)
    assert m.state is State.QUALIFIED and m.mapping == RESUMED
    assert not kinds(answered, AddressChanged) and not kinds(answered, FlushPeers)


def test_resume_then_another_binding_replaces_the_address_and_flushes():
    m = machine()
    m.resume(0.0, RESUMED)
    answered = ra(m, 0.5, port=PORT + 1)
    [changed] = kinds(answered, AddressChanged)
    assert changed.old == RESUMED and changed.new.mapped_port == PORT + 1
    assert kinds(answered, FlushPeers)


def test_resume_then_silence_withdraws_the_address():
    m = machine()
    m.resume(0.0, RESUMED)
    actions = []
    for t in (4.0, 8.0, 12.0):
        actions += m.on_timer(t)
    [withdrawn] = kinds(actions, AddressChanged)
    assert withdrawn.old == RESUMED and withdrawn.new is None
    assert m.state is State.OFFLINE and m.mapping is None


def test_resume_with_the_server_further_down_the_list_asks_that_server():
    m = machine((OTHER_SERVER, SERVER))
    [rs] = kinds(m.resume(0.0, RESUMED), SendRouterSolicitation)
    assert rs.server == SERVER


def test_resume_only_from_offline():
    m = machine()
    m.start(0.0)
    assert m.resume(1.0, RESUMED) == []


def test_refresh_now_asks_at_once_when_qualified():
    m = machine()
    m.start(0.0)
    ra(m, 0.5)
    assert m.timer_at == pytest.approx(30.5)
    [rs] = kinds(m.refresh_now(3.0), SendRouterSolicitation)
    assert rs.server == SERVER and m.timer_at == pytest.approx(7.0)
    assert not kinds(ra(m, 3.2), AddressChanged)


def test_refresh_now_cuts_the_restart_delay_short():
    m = machine()
    m.start(0.0)
    for t in (4.0, 8.0, 12.0):
        m.on_timer(t)
    assert m.state is State.OFFLINE and m.timer_at == pytest.approx(112.0)
    actions = m.refresh_now(20.0)
    assert m.state is State.QUALIFYING and kinds(actions, SendRouterSolicitation)


def test_refresh_now_before_start_does_nothing():
    assert machine().refresh_now(1.0) == []


def test_hook_resume_makes_the_next_run_see_the_old_values():
    hook = Hook(None, iface="teredo", ifindex=7)
    hook.resume(ADDRESS, "fe80::ffff:ffff:ffff", 1280)
    from xdp_teredo.client.hook import TunnelSettings

    env = hook.environment(TunnelSettings("down"))
    assert env["OLD_STATE"] == "up" and env["OLD_ADDRESS"] == ADDRESS.compressed
    assert env["OLD_MTU"] == "1280"


def _nlmsg(kind: int, body: bytes) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body + bytes(-length % 4)


def test_the_watch_sees_links_and_addresses_of_its_interface_only():
    link = struct.pack("=BxHiII", 0, 1, 5, 0x1043, 0)          # ifinfomsg, index 5
    addr = struct.pack("=BBBBI", 2, 24, 0, 0, 9)                # ifaddrmsg, index 9
    other = struct.pack("=BxHiII", 0, 1, 6, 0, 0)
    data = (_nlmsg(watch.RTM_NEWLINK, link) + _nlmsg(watch.RTM_DELADDR, addr)
            + _nlmsg(watch.RTM_DELLINK, other) + _nlmsg(3, b"garbage!"))
    assert list(watch._indexes(data)) == [5, 9, 6]
    assert list(watch._indexes(data[:20])) == []                # cut short: nothing read
    assert list(watch._indexes(struct.pack("=IHHII", 0, 16, 0, 0, 0))) == []


def test_slow_path_limits_become_gcra_parameters_and_back():
    limits = SlowPathLimits(source_pps=100, source_burst=100, global_pps=2000, global_burst=2000)
    c = limits.to_c()
    assert (c.source_interval_ns, c.source_tolerance_ns) == (10_000_000, 99 * 10_000_000)
    assert (c.global_interval_ns, c.global_tolerance_ns) == (500_000, 1999 * 500_000)
    assert SlowPathLimits.from_c(c) == limits
    off = SlowPathLimits(source_pps=0, global_pps=0).to_c()
    assert bytes(off) == bytes(layout.SlowPathLimits()), "rate 0: no limit (all zeros)"
    with pytest.raises(ValueError):
        SlowPathLimits(source_burst=0)

