"""Cross-checks against decoders we did not write: scapy and tshark's Teredo dissector.

If our builders, checksums or address decoding were wrong in the same way as our
parsers, the round trips in test_packet.py would not notice; these would.
"""

import ipaddress
import random
import subprocess

from hypothesis import given, settings, strategies as st

from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, icmpv6, packet
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.encap import AuthHeader, OriginIndication
from xdp_teredo.teredo.icmpv6 import PrefixInformation

from tests.conftest import require_module  # noqa: E402

scapy_inet6 = require_module("scapy.layers.inet6")
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    IPv6, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
)
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from tests.conftest import require_tool  # noqa: E402

SERVER_LL = "fe80::8000:f227:3fff:fdfe"
ipv6_addresses = st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def scapy_rebuilt(wire: bytes) -> bytes:
    """Let scapy decode `wire`, forget the checksum and length, and encode it again."""
    parsed = IPv6(wire)
    parsed.plen = None
    for layer in parsed.iterpayloads():
        if hasattr(layer, "cksum"):
            layer.cksum = None
    return bytes(parsed)


# -- scapy: the same bytes from both builders, and the same checksums ----------------

def test_rs_matches_scapy():
    ours = icmpv6.build_router_solicitation()
    theirs = IPv6(src=C.LINK_LOCAL_RESTRICTED, dst=C.ALL_ROUTERS, hlim=255) / ICMPv6ND_RS()
    assert ours == bytes(theirs)
    decoded = IPv6(ours)
    assert decoded.haslayer(ICMPv6ND_RS) and decoded.hlim == 255
    assert scapy_rebuilt(ours) == ours


@settings(max_examples=25, deadline=None)
@given(prefix=ipv6_addresses, prefix_len=st.integers(min_value=0, max_value=128),
       on_link=st.booleans(), autonomous=st.booleans(), valid=u32, preferred=u32,
       mtu=u32, retrans=u32, lifetime=u16)
def test_ra_matches_scapy(prefix, prefix_len, on_link, autonomous, valid, preferred, mtu,
                          retrans, lifetime):
    network = ipaddress.IPv6Network((prefix, prefix_len), strict=False)
    ra = icmpv6.RouterAdvertisement(
        src=SERVER_LL, dst=C.LINK_LOCAL_RESTRICTED, router_lifetime=lifetime,
        retrans_timer=retrans, mtu=mtu,
        prefixes=(PrefixInformation(network, on_link=on_link, autonomous=autonomous,
                                    valid_lifetime=valid, preferred_lifetime=preferred),))
    ours = ra.to_bytes()
    theirs = (
        IPv6(src=SERVER_LL, dst=C.LINK_LOCAL_RESTRICTED, hlim=255)
        / ICMPv6ND_RA(chlim=0, M=0, O=0, H=0, prf=0, P=0, res=0, routerlifetime=lifetime,
                      reachabletime=0, retranstimer=retrans)
        / ICMPv6NDOptPrefixInfo(prefixlen=prefix_len, L=int(on_link), A=int(autonomous),
                                validlifetime=valid, preferredlifetime=preferred,
                                prefix=str(network.network_address))
        / ICMPv6NDOptMTU(mtu=mtu)
    )
    assert ours == bytes(theirs)
    # And scapy reads our bytes as we meant them.
    decoded = IPv6(ours)
    assert ipaddress.IPv6Address(decoded[ICMPv6NDOptPrefixInfo].prefix) == network.network_address
    assert decoded[ICMPv6NDOptPrefixInfo].prefixlen == prefix_len
    assert decoded[ICMPv6NDOptMTU].mtu == mtu
    assert decoded[ICMPv6ND_RA].retranstimer == retrans


@settings(max_examples=25, deadline=None)
@given(src=ipv6_addresses, dst=ipv6_addresses, identifier=u16, sequence=u16,
       data=st.binary(max_size=40), reply=st.booleans())
def test_echo_matches_scapy(src, dst, identifier, sequence, data, reply):
    build = icmpv6.build_echo_reply if reply else icmpv6.build_echo_request
    ours = build(src, dst, identifier=identifier, sequence=sequence, data=data)
    layer = ICMPv6EchoReply if reply else ICMPv6EchoRequest
    theirs = IPv6(src=str(src), dst=str(dst), hlim=C.DEFAULT_HOP_LIMIT) / layer(
        id=identifier, seq=sequence, data=data)
    assert ours == bytes(theirs)
    # scapy's checksum of a packet it decoded agrees with the one we wrote.
    assert scapy_rebuilt(ours) == ours


def test_bubble_matches_scapy():
    src, dst = "2001:0:c000:201:0:63bf:3fff:fd9b", "2001:0:c000:201:8000:cfc6:3fff:fd74"
    ours = packet.build_bubble(src, dst)
    assert ours == bytes(IPv6(src=src, dst=dst, nh=59, hlim=255))


def test_scapy_built_ra_parses_with_ours():
    theirs = bytes(
        IPv6(src=SERVER_LL, dst=C.LINK_LOCAL_RESTRICTED, hlim=255)
        / ICMPv6ND_RA(routerlifetime=0, prf=0, retranstimer=2000)
        / ICMPv6NDOptPrefixInfo(prefixlen=64, L=0, A=1, prefix="2001:0:c000:201::")
        / ICMPv6NDOptMTU(mtu=1280)
    )
    ra = icmpv6.parse_router_advertisement(theirs)
    assert [str(p.prefix) for p in ra.prefixes] == ["2001:0:c000:201::/64"]
    assert ra.mtu == 1280 and ra.retrans_timer == 2000


# -- tshark's Teredo dissector -------------------------------------------------------

TSHARK_FIELDS = [
    "teredo.auth.nonce", "teredo.auth.conf", "teredo.auth.idlen", "teredo.auth.aulen",
    "teredo.orig.port", "teredo.orig.addr",
    "ipv6.src", "ipv6.dst", "ipv6.plen", "ipv6.nxt", "ipv6.hlim",
    "ipv6.src_ts_ipv4", "ipv6.src_tc_port", "ipv6.src_tc_ipv4",
    "ipv6.dst_ts_ipv4", "ipv6.dst_tc_port", "ipv6.dst_tc_ipv4",
    "icmpv6.type", "icmpv6.checksum.status", "icmpv6.opt.prefix", "icmpv6.opt.prefix.length",
    "icmpv6.opt.mtu", "icmpv6.nd.ra.retrans_timer", "icmpv6.echo.identifier",
    "icmpv6.echo.sequence_number",
]


# Wireshark's proto_checksum_enum_e values as -T fields prints them.
CHECKSUM_BAD, CHECKSUM_GOOD = "0", "1"


def random_teredo_address(rng: random.Random) -> TeredoAddress:
    return TeredoAddress(server=ipaddress.IPv4Address(rng.getrandbits(32)),
                         flags=rng.getrandbits(16), port=rng.getrandbits(16),
                         client=ipaddress.IPv4Address(rng.getrandbits(32)))


def run_tshark(tmp_path, payloads):
    """Write each UDP payload as IPv4/UDP to port 3544, decode all with tshark."""
    tshark = require_tool("tshark")
    frames = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.100") / UDP(sport=3544, dport=3544)
              / Raw(p) for p in payloads]
    pcap = tmp_path / "teredo.pcap"
    wrpcap(str(pcap), frames)
    args = [tshark, "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f"]
    for field in TSHARK_FIELDS:
        args += ["-e", field]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [dict(zip(TSHARK_FIELDS, line.split("\t")))
            for line in result.stdout.splitlines()]
    assert len(rows) == len(payloads)
    return rows


def hex_of(value: str) -> str:
    return value.replace(":", "").lower()


def test_tshark_reads_our_qualification_exchange(tmp_path):
    nonce = bytes.fromhex("c19d3a2020fc8669")
    rs = encap.build_udp_payload(icmpv6.build_router_solicitation(),
                                 auth=AuthHeader(nonce=nonce))
    ra = encap.build_udp_payload(
        icmpv6.build_router_advertisement(SERVER_LL, C.LINK_LOCAL_RESTRICTED,
                                          prefixes=["2001:0:c000:201::/64"], mtu=1280,
                                          retrans_timer=2000),
        auth=AuthHeader(nonce=nonce, confirmation=1, client_id=b"ab", auth_value=b"xyz"),
        origin=OriginIndication(40000, "192.0.2.45"))
    rs_row, ra_row = run_tshark(tmp_path, [rs, ra])

    assert hex_of(rs_row["teredo.auth.nonce"]) == nonce.hex()
    assert rs_row["teredo.orig.port"] == ""
    assert rs_row["ipv6.src"] == C.LINK_LOCAL_RESTRICTED
    assert rs_row["ipv6.dst"] == C.ALL_ROUTERS
    assert rs_row["ipv6.hlim"] == "255"
    assert rs_row["icmpv6.type"] == "133"
    assert rs_row["icmpv6.checksum.status"] == CHECKSUM_GOOD

    assert hex_of(ra_row["teredo.auth.nonce"]) == nonce.hex()
    assert hex_of(ra_row["teredo.auth.conf"]) == "01"
    assert (ra_row["teredo.auth.idlen"], ra_row["teredo.auth.aulen"]) == ("2", "3")
    assert ra_row["teredo.orig.port"] == "40000"
    assert ra_row["teredo.orig.addr"] == "192.0.2.45"
    assert ra_row["icmpv6.type"] == "134"
    assert ra_row["icmpv6.checksum.status"] == CHECKSUM_GOOD
    assert ra_row["icmpv6.opt.prefix"] == "2001:0:c000:201::"
    assert ra_row["icmpv6.opt.prefix.length"] == "64"
    assert ra_row["icmpv6.opt.mtu"] == "1280"
    assert ra_row["icmpv6.nd.ra.retrans_timer"] == "2000"


def test_tshark_checksum_verdict_is_real(tmp_path):
    # Negative control: tshark does verify, so CHECKSUM_GOOD above means something.
    wire = bytearray(icmpv6.build_router_solicitation())
    wire[43] ^= 0x01
    (row,) = run_tshark(tmp_path, [bytes(wire)])
    assert row["icmpv6.checksum.status"] == CHECKSUM_BAD


def test_tshark_decodes_teredo_addresses_and_origins_like_we_do(tmp_path):
    rng = random.Random(4380)
    cases = []
    for _ in range(64):
        src, dst = random_teredo_address(rng), random_teredo_address(rng)
        origin = OriginIndication(rng.getrandbits(16), ipaddress.IPv4Address(rng.getrandbits(32)))
        if rng.random() < 0.5:
            inner = packet.build_bubble(src.ipv6, dst.ipv6)
        else:
            inner = icmpv6.build_echo_request(src.ipv6, dst.ipv6,
                                              identifier=rng.getrandbits(16),
                                              sequence=rng.getrandbits(16),
                                              data=rng.getrandbits(64).to_bytes(8, "big"))
        cases.append((src, dst, origin, inner))
    rows = run_tshark(tmp_path, [encap.build_udp_payload(inner, origin=origin)
                                 for _, _, origin, inner in cases])

    for (src, dst, origin, inner), row in zip(cases, rows):
        # tshark's decoding of the addresses we built ...
        assert ipaddress.IPv6Address(row["ipv6.src"]) == src.ipv6
        assert ipaddress.IPv6Address(row["ipv6.dst"]) == dst.ipv6
        assert row["ipv6.src_ts_ipv4"] == str(src.server)
        assert int(row["ipv6.src_tc_port"]) == src.port
        assert row["ipv6.src_tc_ipv4"] == str(src.client)
        assert row["ipv6.dst_ts_ipv4"] == str(dst.server)
        assert int(row["ipv6.dst_tc_port"]) == dst.port
        assert row["ipv6.dst_tc_ipv4"] == str(dst.client)
        # ... equals our own decoding of the bytes tshark saw.
        seen = TeredoAddress.parse(row["ipv6.src"])
        assert seen.describe()["server"] == row["ipv6.src_ts_ipv4"]
        assert seen.describe()["port"] == int(row["ipv6.src_tc_port"])
        assert seen.describe()["client"] == row["ipv6.src_tc_ipv4"]
        assert int(row["teredo.orig.port"]) == origin.port
        assert row["teredo.orig.addr"] == str(origin.address)
        parsed = packet.parse_ipv6(inner)
        if packet.is_bubble(parsed):
            assert (row["ipv6.nxt"], row["ipv6.plen"]) == ("59", "0")
        else:
            echo = icmpv6.parse_echo(parsed)
            assert row["icmpv6.type"] == "128"
            assert row["icmpv6.checksum.status"] == CHECKSUM_GOOD
            assert int(row["icmpv6.echo.identifier"], 0) == echo.identifier
            assert int(row["icmpv6.echo.sequence_number"], 0) == echo.sequence


def test_tshark_reads_the_golden_addresses(tmp_path):
    golden = [TeredoAddress.parse("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
              TeredoAddress.parse("2001:0:c000:201:8000:cfc6:3fff:fd74")]
    (row,) = run_tshark(tmp_path, [packet.build_bubble(golden[0].ipv6, golden[1].ipv6)])
    assert (row["ipv6.src_ts_ipv4"], row["ipv6.src_tc_port"], row["ipv6.src_tc_ipv4"]) == (
        "65.54.227.120", "40000", "192.0.2.45")
    assert (row["ipv6.dst_ts_ipv4"], row["ipv6.dst_tc_port"], row["ipv6.dst_tc_ipv4"]) == (
        "192.0.2.1", "12345", "192.0.2.139")
