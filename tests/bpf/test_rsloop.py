"""The server benchmark's closed loop (bpf/rsloop.c, xdp_teredo/lab/rsloop.py)
through BPF_PROG_TEST_RUN.

The RA comes from the server's own XDP program answering an RS; the loop must
turn it into an RS that is, byte for byte, what scapy builds independently
(checksums its own), and that the server answers again. What is not an RA from
a server goes to the stack, counted.
"""

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_RS, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdp_teredo.datapath import testrun
from xdp_teredo.datapath.server import ServerDatapath, server_config
from xdp_teredo.lab import rsloop

from .test_server import MAC_CLIENT, MAC_SERVER, NO_LIMIT, PRIMARY, _policy

pytestmark = [pytest.mark.root, pytest.mark.bpf]

XDP_PASS, XDP_TX = 2, 3
SOURCE, SPORT = "198.18.3.7", 40123
NONCE = bytes.fromhex("0123456789abcdef")


@pytest.fixture(scope="module")
def loop(require_bcc):
    bpf = rsloop.compile_loop()
    fn = bpf.load_func(b"rsloop_xdp", bpf.XDP)
    yield bpf, fn.fd
    bpf.cleanup()


@pytest.fixture(scope="module")
def server(require_bcc):
    prog = ServerDatapath.compile()
    prog.configure(server_config(_policy(), NO_LIMIT))
    yield prog
    prog.close()


def counts(bpf) -> dict:
    table = bpf[b"rsloop_counts"]
    return {name: int(sum(table[table.Key(i)])) for i, name in enumerate(rsloop.COUNTERS)}


def golden_rs(ip_id: int) -> bytes:
    """The RS as scapy builds it: an independent encoding, checksums computed by scapy
    (ICMPv6 over the pseudo-header, IPv4 header), UDP checksum 0."""
    rs = IPv6(src="fe80::ffff:ffff:ffff", dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    auth = b"\x00\x01\x00\x00" + NONCE + b"\x00"
    return bytes(Ether(src=MAC_CLIENT, dst=MAC_SERVER)
                 / IP(src=SOURCE, dst=PRIMARY, ttl=64, id=ip_id, flags=0)
                 / UDP(sport=SPORT, dport=3544, chksum=0) / Raw(auth + bytes(rs)))


def test_the_template_is_a_qualifying_clients_rs():
    payload = rsloop.template(NONCE)
    assert payload[rsloop.NONCE_OFFSET:rsloop.NONCE_OFFSET + 8] == NONCE
    assert payload == golden_rs(0)[42:], "the same bytes as scapy's RS"


def test_an_ra_from_our_server_becomes_the_rs_it_answered(loop, server):
    bpf, fd = loop
    first = golden_rs(7)
    ra = testrun.run_xdp(server.fd("xdp"), first)
    assert ra.retval == XDP_TX, "the server answered in XDP"
    assert len(ra.frame) > len(first), "an RA is longer than the RS"
    before = counts(bpf)
    out = testrun.run_xdp(fd, ra.frame)
    assert out.retval == XDP_TX
    assert counts(bpf)["turned"] - before["turned"] == 1
    got = out.frame
    ip_id = int.from_bytes(got[18:20], "big")
    assert got == golden_rs(ip_id), "byte for byte the RS scapy builds"
    # Checksums as a receiver checks them (scapy recomputes them from nothing).
    ip = Ether(got)[IP]
    check = ip.chksum
    del ip.chksum
    assert IP(bytes(ip)).chksum == check
    rs = IPv6(got[42 + 13:])             # past the authentication header
    check = rs[ICMPv6ND_RS].cksum
    del rs[ICMPv6ND_RS].cksum
    assert IPv6(bytes(rs))[ICMPv6ND_RS].cksum == check
    # And the server takes it for what it is: the loop goes round.
    again = testrun.run_xdp(server.fd("xdp"), got)
    assert again.retval == XDP_TX
    assert again.frame[42 + rsloop.NONCE_OFFSET:42 + rsloop.NONCE_OFFSET + 8] == NONCE


@pytest.mark.parametrize("what", ["rs", "other_port", "not_ra"])
def test_what_is_not_a_servers_ra_goes_to_the_stack(loop, server, what):
    bpf, fd = loop
    frame = golden_rs(1)
    if what == "other_port":
        frame = testrun.run_xdp(server.fd("xdp"), frame).frame
        frame = frame[:34] + b"\x0d\xe9" + frame[36:]   # source port 3561
    elif what == "not_ra":
        frame = bytearray(testrun.run_xdp(server.fd("xdp"), frame).frame)
        frame[42 + 13 + 8 + 40] = 136                   # a neighbour advertisement
        frame = bytes(frame)
    before = counts(bpf)
    out = testrun.run_xdp(fd, frame)
    assert out.retval == XDP_PASS
    assert out.frame == frame, "untouched"
    assert counts(bpf)["passed"] - before["passed"] == 1


def test_a_stopped_loop_drops_the_ra(loop, server):
    bpf, fd = loop
    ra = testrun.run_xdp(server.fd("xdp"), golden_rs(1)).frame
    table = bpf[b"rsloop_template"]
    value = table[table.Key(0)]
    value.running = 0
    table[table.Key(0)] = value
    try:
        before = counts(bpf)
        assert testrun.run_xdp(fd, ra).retval == 1   # XDP_DROP
        assert counts(bpf)["stopped"] - before["stopped"] == 1
    finally:
        value.running = 1
        table[table.Key(0)] = value


def test_sources_are_distinct_and_inside_the_net():
    got = rsloop.sources("198.18.0.0/15", 1024)
    assert len({ip for ip, _ in got}) == 1024
    assert all(str(ip).startswith("198.1") for ip, _ in got)
    with pytest.raises(ValueError):
        rsloop.sources("198.18.0.0/30", 3)
