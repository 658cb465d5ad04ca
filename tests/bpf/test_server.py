"""The server's fast path (bpf/server.c) through BPF_PROG_TEST_RUN.

The reference is the daemon's own policy: for every RS the program answers, the
RA it writes (UDP payload byte for byte, and the IPv4/UDP addresses and ports) is
what ServerPolicy.handle returns for the same datagram (teredo/server_policy.py).
What the program leaves to the daemon is passed unchanged; every verdict is
counted under its reason; malformed input never crashes anything.
"""

import ipaddress
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdp_teredo.datapath import Reason, testrun
from xdp_teredo.datapath.limits import SlowPathLimits
from xdp_teredo.datapath.maps import delta
from xdp_teredo.datapath.server import RaLimits, ServerDatapath, server_config
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import Received, SendUdp, ServerPolicy

from . import packets as P

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
PRIMARY, SECONDARY = "192.0.2.1", "192.0.2.2"
CLIENT_IPV4, CLIENT_PORT = "198.51.100.9", 40000
RESTRICTED_LL = "fe80::ffff:ffff:ffff"          # Miredo's (RFC 4380 §5.2.1 restricted)
CONE_LL = "fe80::8000:5445:5245:444f"           # Miredo's cone link-local ("TEREDO")
NONCE = bytes(range(1, 9))
MAC_CLIENT, MAC_SERVER = "02:00:00:00:00:31", "02:00:00:00:00:32"
NO_LIMIT = RaLimits(source_pps=0, source_burst=1)


def _policy():
    return ServerPolicy(PRIMARY, SECONDARY, limiter=RateLimiter(Limits(1e9, 1e12)))


@pytest.fixture(scope="module")
def server_program(require_bcc):
    prog = ServerDatapath.compile()
    yield prog
    prog.close()


@pytest.fixture
def srv(server_program):
    server_program.reset()
    server_program.configure(server_config(_policy(), NO_LIMIT))
    yield server_program
    server_program.reset()


def run(prog, frame: bytes):
    before = prog.stats()
    result = testrun.run_xdp(prog.fd("xdp"), frame)
    counted = delta(before, prog.stats())
    return result, counted


def rs_payload(src=RESTRICTED_LL, dst="ff02::2", *, auth=True, option=True, nonce=NONCE,
               code=0) -> bytes:
    """What Miredo's client sends (auth header with a nonce; RS with a 16-byte
    source link-layer option of zeros); option=False is ours."""
    icmp = ICMPv6ND_RS(code=code)
    if option:
        icmp = icmp / ICMPv6NDOptSrcLLAddr(lladdr="00:00:00:00:00:00")
    rs = bytes(IPv6(src=src, dst=dst, hlim=255) / icmp)
    if option:
        # Miredo's option: 14 zero bytes (copying Windows XP), length 2 units.
        rs = bytearray(rs)
        rs[4:6] = struct.pack("!H", 24)
        rs = bytes(IPv6(rs[:40])) and bytes(rs[:48]) + b"\x01\x02" + bytes(14)
        rs = _fix_icmp(rs)
    head = (b"\x00\x01\x00\x00" + nonce + b"\x00") if auth else b""
    return head + rs


def _fix_icmp(packet: bytes) -> bytes:
    """Set the IPv6 payload length and the ICMPv6 checksum (RFC 8200 §8.1)."""
    packet = bytearray(packet)
    plen = len(packet) - 40
    packet[4:6] = struct.pack("!H", plen)
    packet[42:44] = b"\0\0"
    pseudo = packet[8:40] + struct.pack("!I3xB", plen, 58)
    data = bytes(pseudo + packet[40:])
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    packet[42:44] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(packet)


def frame(payload: bytes, *, src=CLIENT_IPV4, sport=CLIENT_PORT, dst=PRIMARY, dport=3544,
          ip_kwargs=None) -> bytes:
    ip = IP(src=src, dst=dst, ttl=60, id=7, **(ip_kwargs or {}))
    return bytes(Ether(src=MAC_CLIENT, dst=MAC_SERVER) / ip / UDP(sport=sport, dport=dport)
                 / Raw(payload))


def expected(payload: bytes, *, local=PRIMARY, src=CLIENT_IPV4, sport=CLIENT_PORT) -> SendUdp:
    sends = _policy().handle(Received(local=ipaddress.IPv4Address(local),
                                      src_ip=ipaddress.IPv4Address(src), src_port=sport,
                                      payload=payload))
    assert len(sends) == 1 and isinstance(sends[0], SendUdp)
    return sends[0]


def check_ra(out: bytes, want: SendUdp, macs=(MAC_SERVER, MAC_CLIENT)):
    eth = Ether(out)
    assert (eth.src, eth.dst) == macs, "back where it came from"
    ip, udp = eth[IP], eth[UDP]
    assert P.ipv4_checksum_ok(bytes(ip)[:20])
    assert (ip.src, ip.dst) == (str(want.via), str(want.dst_ip))
    assert (udp.sport, udp.dport) == (3544, want.dst_port)
    assert ip.len == 28 + len(want.payload) and udp.len == 8 + len(want.payload)
    assert udp.chksum == 0, "legal over IPv4 (RFC 768)"
    assert bytes(out[42:]) == want.payload, "byte for byte what ServerPolicy sends"


CASES = [
    # (id, payload kwargs, arrived on, RA expected from)
    ("miredo", dict(), PRIMARY, PRIMARY),
    ("ours_no_option", dict(option=False), PRIMARY, PRIMARY),
    ("no_auth", dict(auth=False), PRIMARY, PRIMARY),
    ("to_secondary", dict(), SECONDARY, SECONDARY),
    ("cone_test", dict(src=CONE_LL), PRIMARY, SECONDARY),
    ("cone_test_on_secondary", dict(src=CONE_LL, option=False), SECONDARY, PRIMARY),
    ("to_server_link_local", dict(dst="fe80::8000:f227:3fff:fdfe"), PRIMARY, PRIMARY),
    ("other_link_local", dict(src="fe80::1234:5678:9abc:def0"), PRIMARY, PRIMARY),
]


@pytest.mark.parametrize("kwargs,local,via", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rs_gets_exactly_the_policys_ra(srv, kwargs, local, via):
    payload = rs_payload(**kwargs)
    want = expected(payload, local=local)
    assert str(want.via) == via
    result, counted = run(srv, frame(payload, dst=local))
    assert result.retval == XDP_TX
    assert counted == {R.SERVER_RA.key: 1}
    check_ra(result.frame, want)


def test_many_nonces_sources_and_ports(srv):
    rng = random.Random(4380)
    for _ in range(50):
        nonce = bytes(rng.getrandbits(8) for _ in range(8))
        src = str(ipaddress.IPv4Address(rng.randrange(0x01000000, 0xDF000000)))
        if not __import__("xdp_teredo.teredo.ipv4", fromlist=["x"]).is_global_unicast(src):
            continue
        ll = str(ipaddress.IPv6Address((0xFE80 << 112) | rng.getrandbits(64)))
        sport = rng.randrange(1, 65536)
        payload = rs_payload(src=ll, nonce=nonce, option=rng.random() < 0.5)
        result, counted = run(srv, frame(payload, src=src, sport=sport))
        assert counted == {R.SERVER_RA.key: 1}
        check_ra(result.frame, expected(payload, src=src, sport=sport))


# -- what goes to the daemon, unchanged ------------------------------------------------

def _bubble_payload():
    src = P.teredo_address(PRIMARY, CLIENT_IPV4, CLIENT_PORT)
    dst = P.teredo_address(PRIMARY, "203.0.113.7", 50000)
    return P.bubble(src, dst)


def _echo_payload():
    src = P.teredo_address(PRIMARY, CLIENT_IPV4, CLIENT_PORT)
    return bytes(IPv6(src=str(src), dst="2001:db8::1") / ICMPv6EchoRequest(id=1, seq=1, data=NONCE))


PASSED = [
    # A bubble to a client of ours is forwarded in XDP (test_server_forward.py) when
    # the fib gives a next hop on the device; these runs have no device: the daemon's.
    ("bubble", _bubble_payload(), R.SERVER_FORWARD_NO_ROUTE),
    ("echo_test", _echo_payload(), R.SERVER_NOT_RS),
    ("origin_indication", b"\x00\x00" + bytes(6) + rs_payload(auth=False), R.SERVER_RS_SLOW_PATH),
    ("client_id", b"\x00\x01\x04\x00abcd" + NONCE + b"\x00" + rs_payload(auth=False),
     R.SERVER_RS_SLOW_PATH),
    ("two_options", b"\x00\x01\x00\x00" + NONCE + b"\x00"
     + _fix_icmp(rs_payload(auth=False, option=False) + b"\x01\x01" + bytes(6) + b"\x01\x01" + bytes(6)),
     R.SERVER_RS_SLOW_PATH),
    ("global_source", rs_payload(src="2001:db8::5"), R.SERVER_RS_SLOW_PATH),
    ("unicast_destination", rs_payload(dst="fe80::99"), R.SERVER_RS_SLOW_PATH),
    ("not_ipv6", b"\x45" + bytes(60), R.SERVER_NOT_RS),
]


@pytest.mark.parametrize("payload,reason", [c[1:] for c in PASSED], ids=[c[0] for c in PASSED])
def test_the_rest_goes_to_the_daemon_unchanged(srv, payload, reason):
    f = frame(payload)
    result, counted = run(srv, f)
    assert (result.retval, counted) == (XDP_PASS, {reason.key: 1})
    assert result.frame == f


def test_not_ours_and_disabled(srv):
    assert run(srv, frame(rs_payload(), dst="192.0.2.3"))[1] == {R.RX_NOT_TEREDO.key: 1}
    assert run(srv, frame(rs_payload(), dport=3545))[1] == {R.RX_NOT_TEREDO.key: 1}
    srv.configure(server_config(_policy(), NO_LIMIT, enabled=False))
    result, counted = run(srv, frame(rs_payload()))
    assert (result.retval, counted) == (XDP_PASS, {R.RX_DISABLED.key: 1})


# -- dropped, counted --------------------------------------------------------------------

def _bad_checksum():
    p = bytearray(rs_payload())
    p[13 + 42] ^= 0xFF
    return bytes(p)


def _bad_length():
    p = bytearray(rs_payload())
    p[13 + 4:13 + 6] = struct.pack("!H", 16)
    return bytes(p)


DROPPED = [
    ("source_not_global", frame(rs_payload(), src="10.1.2.3"), R.SERVER_SOURCE_NOT_GLOBAL),
    ("source_multicast", frame(rs_payload(), src="224.0.0.9"), R.SERVER_SOURCE_NOT_GLOBAL),
    ("loop", frame(rs_payload(), src=SECONDARY), R.SERVER_LOOP),
    ("icmpv6_checksum", frame(_bad_checksum()), R.SERVER_RS_MALFORMED),
    ("code", frame(rs_payload(code=1)), R.SERVER_RS_MALFORMED),
    ("ipv6_length", frame(_bad_length()), R.SERVER_RS_MALFORMED),
]


@pytest.mark.parametrize("f,reason", [c[1:] for c in DROPPED], ids=[c[0] for c in DROPPED])
def test_dropped_and_counted(srv, f, reason):
    payload = f[42:]
    src = IP(f[14:]).src
    if reason != R.SERVER_LOOP:
        assert _policy().handle(Received(ipaddress.IPv4Address(PRIMARY), ipaddress.IPv4Address(src),
                                         CLIENT_PORT, payload)) == [], "the policy drops it too"
    result, counted = run(srv, f)
    assert (result.retval, counted) == (XDP_DROP, {reason.key: 1})


def test_bad_outer_headers_are_dropped(srv):
    f = bytearray(frame(rs_payload()))
    f[24] ^= 0xFF  # IPv4 checksum
    assert run(srv, bytes(f))[1] == {R.RX_IPV4_CHECKSUM.key: 1}
    f = bytearray(frame(rs_payload()))
    f[38:40] = struct.pack("!H", 30)  # UDP length
    assert run(srv, bytes(f))[1] == {R.RX_UDP_LENGTH.key: 1}


def test_truncated_and_random_frames_never_crash(srv):
    rng = random.Random(5991)
    good = frame(rs_payload())
    for cut in range(14, len(good)):  # XDP test runs need an Ethernet header
        result, counted = run(srv, good[:cut])
        assert result.retval in (XDP_PASS, XDP_DROP) and sum(counted.values()) == 1
    for _ in range(300):
        f = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            f[rng.randrange(len(f))] = rng.getrandbits(8)
        result, counted = run(srv, bytes(f))
        assert result.retval in (XDP_PASS, XDP_DROP, XDP_TX) and sum(counted.values()) == 1
        if result.retval == XDP_TX:
            # Whatever got through must be what the policy answers.
            ip, eth = IP(bytes(f)[14:]), Ether(bytes(f))
            check_ra(result.frame, expected(bytes(f)[42:], local=ip.dst, src=ip.src,
                                            sport=ip[UDP].sport), macs=(eth.dst, eth.src))


# -- limits -------------------------------------------------------------------------------

def test_ra_rate_per_address(srv):
    srv.configure(server_config(_policy(), RaLimits(source_pps=1, source_burst=3)))
    counted = [run(srv, frame(rs_payload()))[1] for _ in range(5)]
    assert counted == [{R.SERVER_RA.key: 1}] * 3 + [{R.SERVER_RA_SOURCE_LIMIT.key: 1}] * 2
    # Another address has its own bucket.
    assert run(srv, frame(rs_payload(), src="203.0.113.77"))[1] == {R.SERVER_RA.key: 1}


def test_ra_rate_in_all(srv):
    srv.configure(server_config(_policy(), RaLimits(source_pps=0, source_burst=1,
                                                    global_pps=1, global_burst=2)))
    counted = [run(srv, frame(rs_payload(), src=f"203.0.113.{i}"))[1] for i in range(1, 5)]
    assert counted == [{R.SERVER_RA.key: 1}] * 2 + [{R.SERVER_RA_LIMIT.key: 1}] * 2


def test_what_goes_up_is_admitted_per_source(srv):
    srv.slow_path.write(SlowPathLimits(source_pps=1, source_burst=2, global_pps=0))
    counted = [run(srv, frame(_echo_payload()))[1] for _ in range(3)]
    assert counted == [{R.SERVER_NOT_RS.key: 1}] * 2 + [{R.RX_SLOW_PATH_SOURCE_LIMIT.key: 1}]
    # RSs are not charged to that bucket.
    assert run(srv, frame(rs_payload()))[1] == {R.SERVER_RA.key: 1}


def test_every_server_reason_is_covered():
    from .test_server_forward import FORWARD_REASONS

    covered = {c[2] for c in PASSED} | {c[2] for c in DROPPED} | {
        R.SERVER_RA, R.SERVER_RA_SOURCE_LIMIT, R.SERVER_RA_LIMIT} | FORWARD_REASONS
    assert {r for r in Reason if r.name.startswith("SERVER_")} <= covered


def test_bpf_cost_per_rs(srv):
    """Not a benchmark (make bench has that): the kernel's own timing, for the log."""
    result = testrun.run_xdp(srv.fd("xdp"), frame(rs_payload()), repeat=1)
    assert result.retval == XDP_TX
