"""The server's forwarding in XDP (bpf/server.c, lib/server_fwd.h; RFC 4380 §5.3.1).

The reference is the daemon's policy: a bubble or echo test the program forwards
leaves as exactly the datagram ServerPolicy.handle returns for it (addresses,
ports, payload byte for byte), and what the program drops the policy drops under
the counter of the same name. The next hop comes from bpf_fib_lookup, which
answers from the calling thread's network namespace, so every run happens in a
throwaway namespace "S" (tests/bpf/test_relay.py's in_netns):

    up0   192.0.2.1/24 and 192.0.2.2/24 (the server's addresses), MAC UP0_MAC;
          default route via 192.0.2.30 (MAC GW_MAC, a permanent neighbour);
          192.0.2.25 on the link without a neighbour entry
"""

import ipaddress
import subprocess
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdp_teredo.datapath import Reason, testrun
from xdp_teredo.datapath.maps import delta
from xdp_teredo.datapath.server import RaLimits, ServerDatapath, server_config
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import Received, SendUdp, ServerPolicy

from . import packets as P
from .test_relay import ifindex, in_netns, sh

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
PRIMARY, SECONDARY = "192.0.2.1", "192.0.2.2"
UP0_MAC, GW, GW_MAC = "02:00:00:00:00:41", "192.0.2.30", "02:00:00:00:00:42"
A_IPV4, A_PORT = "198.51.100.9", 40000          # the sender, behind its NAT
B_IPV4, B_PORT = "203.0.113.7", 50000           # the target, a client of ours
NEAR_IPV4 = "192.0.2.25"                        # on up0's link, no neighbour entry
A = P.teredo_address(PRIMARY, A_IPV4, A_PORT)
B = P.teredo_address(PRIMARY, B_IPV4, B_PORT, 0x8000)
MIREDO_LL = "fe80::ffff:ffff:ffff"              # Miredo's indirect bubbles' source
NO_LIMIT = RaLimits(source_pps=0, source_burst=1)


def _policy():
    return ServerPolicy(PRIMARY, SECONDARY, limiter=RateLimiter(Limits(1e9, 1e12)))


@pytest.fixture(scope="module")
def server_ns(require_root):
    s = f"xt-sbpf-{uuid.uuid4().hex[:6]}"
    p = s + "-p"
    sh("ip", "netns", "add", s)
    sh("ip", "netns", "add", p)
    try:
        sh("ip", "link", "add", "up0", "address", UP0_MAC, "type", "veth", "peer", "name", "up0p",
           "netns", p, ns=s)
        sh("ip", "link", "set", "up0p", "up", ns=p)
        sh("ip", "link", "set", "up0", "up", ns=s)
        for cmd in (["ip", "addr", "add", PRIMARY + "/24", "dev", "up0"],
                    ["ip", "addr", "add", SECONDARY + "/24", "dev", "up0"],
                    ["ip", "route", "add", "default", "via", GW],
                    ["ip", "neigh", "add", GW, "lladdr", GW_MAC, "dev", "up0", "nud", "permanent"]):
            sh(*cmd, ns=s)
        yield {"ns": s, "up0": ifindex(s, "up0")}
    finally:
        subprocess.run(["ip", "netns", "del", s])
        subprocess.run(["ip", "netns", "del", p])


@pytest.fixture(scope="module")
def server_program(require_bcc):
    prog = ServerDatapath.compile()
    yield prog
    prog.close()


@pytest.fixture
def srv(server_program, server_ns):
    server_program.reset()
    server_program.configure(server_config(_policy(), NO_LIMIT))
    sh("sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=1", ns=server_ns["ns"])
    yield server_program
    server_program.reset()


def run(prog, net, f: bytes, repeat: int = 1):
    before = prog.stats()
    result = in_netns(net["ns"], lambda: testrun.run_xdp(prog.fd("xdp"), f, repeat=repeat,
                                                         ingress_ifindex=net["up0"]))
    return result, delta(before, prog.stats())


def frame(payload: bytes, *, src=A_IPV4, sport=A_PORT, dst=PRIMARY) -> bytes:
    return bytes(Ether(src=GW_MAC, dst=UP0_MAC) / IP(src=src, dst=dst, ttl=60, id=9)
                 / UDP(sport=sport, dport=3544) / Raw(payload))


def policy_says(payload: bytes, *, src=A_IPV4, sport=A_PORT, local=PRIMARY):
    policy = _policy()
    sends = policy.handle(Received(local=ipaddress.IPv4Address(local),
                                   src_ip=ipaddress.IPv4Address(src), src_port=sport,
                                   payload=payload))
    counters = policy.counters()
    outcome = [k for k, v in {**counters, **counters["dropped"]}.items()
               if v and k not in ("received", "dropped_total", "dropped")]
    return sends, outcome


def echo(src, dst, *, reply=False, data=b"teredo-test", fix=None) -> bytes:
    icmp = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=7, seq=3, data=data)
    packet = bytearray(bytes(IPv6(src=str(src), dst=str(dst), hlim=64) / icmp))
    if fix:
        fix(packet)
    return bytes(packet)


def check_forwarded(out: bytes, want: SendUdp):
    eth = Ether(out)
    assert (eth.src, eth.dst) == (UP0_MAC, GW_MAC), "to the fib's next hop"
    ip, udp = eth[IP], eth[UDP]
    assert P.ipv4_checksum_ok(bytes(ip)[:20])
    assert (ip.src, ip.dst) == (str(want.via), str(want.dst_ip))
    assert (udp.sport, udp.dport) == (3544, want.dst_port)
    assert ip.len == 28 + len(want.payload) and udp.len == 8 + len(want.payload)
    assert len(out) == 14 + ip.len, "no padding forwarded"
    assert bytes(out[42:]) == want.payload, "byte for byte what ServerPolicy sends"


FORWARDED = [
    ("bubble_teredo_source", P.bubble(A, B), R.SERVER_FORWARDED_BUBBLE),
    ("bubble_miredo_link_local", P.bubble(MIREDO_LL, B), R.SERVER_FORWARDED_BUBBLE),
    ("bubble_native_source", P.bubble("2001:db8::5", B), R.SERVER_FORWARDED_BUBBLE),
    ("echo_request", echo(A, B), R.SERVER_FORWARDED_ECHO),
    ("echo_reply", echo(A, B, reply=True), R.SERVER_FORWARDED_ECHO),
    ("echo_odd_length", echo(A, B, data=b"odd"), R.SERVER_FORWARDED_ECHO),
    ("echo_longest", echo(A, B, data=bytes(range(80))), R.SERVER_FORWARDED_ECHO),
]


@pytest.mark.parametrize("payload,reason", [c[1:] for c in FORWARDED], ids=[c[0] for c in FORWARDED])
def test_forwarded_exactly_as_the_policy(srv, server_ns, payload, reason):
    sends, _ = policy_says(payload)
    assert len(sends) == 1
    result, counted = run(srv, server_ns, frame(payload))
    assert (result.retval, counted) == (XDP_TX, {reason.key: 1})
    check_forwarded(result.frame, sends[0])


def test_padding_is_not_forwarded(srv, server_ns):
    payload = P.bubble(A, B)
    result, counted = run(srv, server_ns, frame(payload) + bytes(6))
    assert counted == {R.SERVER_FORWARDED_BUBBLE.key: 1}
    check_forwarded(result.frame, policy_says(payload)[0][0])


def _bad_echo_checksum(p):
    p[42] ^= 0x55


def _echo_code(p):
    p[41] = 1


DROPPED = [
    ("source_mismatch", P.bubble(A, B), dict(sport=A_PORT + 1), R.SERVER_SOURCE_MISMATCH,
     "source_mismatch"),
    ("not_ours", P.bubble(MIREDO_LL, "2001:db8::1"), {}, R.SERVER_NOT_OURS, "not_ours"),
    ("destination_other_server", P.bubble(A, P.teredo_address("192.0.2.99", B_IPV4, B_PORT)), {},
     R.SERVER_DESTINATION_OTHER_SERVER, "destination_other_server"),
    ("destination_not_global", P.bubble(A, P.teredo_address(PRIMARY, "10.1.2.3", B_PORT)), {},
     R.SERVER_DESTINATION_NOT_GLOBAL, "destination_not_global"),
    ("echo_too_big", echo(A, B, data=bytes(81)), {}, R.SERVER_ECHO_TOO_BIG, "echo_too_big"),
    ("echo_checksum", echo(A, B, fix=_bad_echo_checksum), {}, R.SERVER_FORWARD_MALFORMED,
     "malformed"),
    ("echo_code", echo(A, B, fix=_echo_code), {}, R.SERVER_FORWARD_MALFORMED, "malformed"),
]


@pytest.mark.parametrize("payload,kw,reason,policy_reason", [c[1:] for c in DROPPED],
                         ids=[c[0] for c in DROPPED])
def test_dropped_as_the_policy_drops(srv, server_ns, payload, kw, reason, policy_reason):
    sends, outcome = policy_says(payload, **kw)
    assert (sends, outcome) == ([], [policy_reason])
    result, counted = run(srv, server_ns, frame(payload, **kw))
    assert (result.retval, counted) == (XDP_DROP, {reason.key: 1})


PASSED = [
    ("native_echo_test", echo(A, "2001:db8::1"), R.SERVER_NOT_RS),
    ("auth_header_bubble", b"\x00\x01\x00\x00" + bytes(8) + b"\x00" + P.bubble(A, B), R.SERVER_NOT_RS),
    ("origin_then_bubble", b"\x00\x00" + bytes(6) + P.bubble(A, B), R.SERVER_RS_SLOW_PATH),
    ("not_echo", bytes(IPv6(src=str(A), dst=str(B)) / ICMPv6EchoRequest(type=1)), R.SERVER_NOT_RS),
    ("data", bytes(IPv6(src=str(A), dst=str(B), nh=17) / Raw(bytes(8))), R.SERVER_NOT_RS),
    ("to_all_routers", P.bubble(A, "ff02::2"), R.SERVER_NOT_RS),
]


@pytest.mark.parametrize("payload,reason", [c[1:] for c in PASSED], ids=[c[0] for c in PASSED])
def test_the_rest_goes_to_the_daemon_unchanged(srv, server_ns, payload, reason):
    f = frame(payload)
    result, counted = run(srv, server_ns, f)
    assert (result.retval, counted, result.frame) == (XDP_PASS, {reason.key: 1}, f)


def test_no_next_hop_on_this_device_goes_to_the_daemon(srv, server_ns):
    # A target on the link whose MAC nobody knows yet: the stack resolves it.
    near = P.bubble(A, P.teredo_address(PRIMARY, NEAR_IPV4, B_PORT))
    for f in (frame(near),):
        result, counted = run(srv, server_ns, f)
        assert (result.retval, counted, result.frame) == (
            XDP_PASS, {R.SERVER_FORWARD_NO_ROUTE.key: 1}, f)
    # bpf_fib_lookup refuses IPv4 lookups while the device does not forward.
    sh("sysctl", "-q", "-w", "net.ipv4.conf.up0.forwarding=0", ns=server_ns["ns"])
    f = frame(P.bubble(A, B))
    result, counted = run(srv, server_ns, f)
    assert (result.retval, counted) == (XDP_PASS, {R.SERVER_FORWARD_NO_ROUTE.key: 1})


def test_forward_rate_per_sender_and_per_target(srv, server_ns):
    srv.configure(server_config(_policy(), RaLimits(source_pps=0, source_burst=1,
                                                    forward_pps=1, forward_burst=2)))
    counted = [run(srv, server_ns, frame(P.bubble(A, B)))[1] for _ in range(3)]
    assert counted == [{R.SERVER_FORWARDED_BUBBLE.key: 1}] * 2 + [
        {R.SERVER_FORWARD_SOURCE_LIMIT.key: 1}]
    # Another sender towards the same target: the target's bucket is empty too.
    other = P.teredo_address(PRIMARY, "198.51.100.77", A_PORT)
    assert run(srv, server_ns, frame(P.bubble(other, B), src="198.51.100.77"))[1] == {
        R.SERVER_FORWARD_DESTINATION_LIMIT.key: 1}
    # RAs have buckets of their own (§5.2.7: a bubble flood must not cost the
    # target its qualification): covered in test_server.py's RA limits.


FORWARD_REASONS = ({c[2] for c in FORWARDED} | {c[3] for c in DROPPED} | {c[2] for c in PASSED}
                   | {R.SERVER_FORWARD_NO_ROUTE, R.SERVER_FORWARD_SOURCE_LIMIT,
                      R.SERVER_FORWARD_DESTINATION_LIMIT})


def test_bpf_cost_per_forwarded_bubble(srv, server_ns):
    """Not a benchmark (make bench has that): the kernel's own timing, for the log."""
    # One run each: a repeated run would feed the program its own output.
    durations = sorted(run(srv, server_ns, frame(P.bubble(A, B)))[0].duration_ns
                       for _ in range(200))
    print(f"bpf ns per forwarded bubble (median of 200 single runs): {durations[100]}")
