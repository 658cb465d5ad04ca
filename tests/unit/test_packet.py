"""The Teredo packet layer: IPv6, ICMPv6 (RS, RA, echo), bubbles, encapsulation.

Golden vectors come from the RFCs, from Miredo's source (precomputed checksums) and
from real Miredo 1.2.6 traffic captured in namespaces (tests/fixtures/).
"""

import ipaddress
import json
import pathlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, icmpv6, packet
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.encap import AuthHeader, OriginIndication, TeredoPayload
from xdp_teredo.teredo.icmpv6 import NdOption, PrefixInformation, RouterAdvertisement
from xdp_teredo.teredo.packet import Ipv6Packet

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
CAPTURES = {c["name"]: c for c in json.loads(
    (FIXTURES / "miredo_captures.json").read_text())["captures"]}

SERVER_LL = ipaddress.IPv6Address("fe80::8000:f227:3fff:fdfe")
RESTRICTED = ipaddress.IPv6Address(C.LINK_LOCAL_RESTRICTED)
A = ipaddress.IPv6Address("2001:0:c000:201:0:63bf:3fff:fd9b")
B = ipaddress.IPv6Address("2001:db8::1")

ipv6_addresses = st.integers(min_value=0, max_value=2**128 - 1).map(ipaddress.IPv6Address)
ipv4_addresses = st.integers(min_value=0, max_value=2**32 - 1).map(ipaddress.IPv4Address)
u8 = st.integers(min_value=0, max_value=0xFF)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def reason_of(call, *args):
    with pytest.raises(MalformedPacket) as err:
        call(*args)
    return err.value.reason


# -- IPv6 header -------------------------------------------------------------------

@settings(max_examples=150)
@given(ipv6_addresses, ipv6_addresses, u8, u8, st.binary(max_size=300), u8,
       st.integers(min_value=0, max_value=0xFFFFF))
def test_ipv6_round_trip(src, dst, next_header, hop_limit, payload, tc, flow):
    built = Ipv6Packet(src=src, dst=dst, next_header=next_header, hop_limit=hop_limit,
                       payload=payload, traffic_class=tc, flow_label=flow)
    wire = built.to_bytes()
    assert len(wire) == 40 + len(payload)
    assert wire[0] >> 4 == 6
    assert struct.unpack("!H", wire[4:6])[0] == len(payload)
    assert packet.parse_ipv6(wire) == built
    assert packet.parse_ipv6(bytearray(wire)) == built
    assert packet.parse_ipv6(memoryview(wire)) == built


def test_ipv6_header_layout():
    wire = Ipv6Packet(src="2001:db8::1", dst="2001:db8::2", next_header=58, hop_limit=64,
                      payload=b"ab", traffic_class=0xA5, flow_label=0x12345).to_bytes()
    assert wire[:8] == bytes.fromhex("6a512345" "0002" "3a" "40")
    assert wire[8:24] == ipaddress.IPv6Address("2001:db8::1").packed
    assert wire[24:40] == ipaddress.IPv6Address("2001:db8::2").packed
    assert wire[40:] == b"ab"


def test_ipv6_parse_errors():
    good = packet.build_bubble(A, B) + b""
    assert reason_of(packet.parse_ipv6, good[:39]) == "ipv6_truncated"
    assert reason_of(packet.parse_ipv6, b"") == "ipv6_truncated"
    assert reason_of(packet.parse_ipv6, b"\x40" + good[1:]) == "ipv6_version"
    # Payload length disagreeing with the bytes present, both ways.
    assert reason_of(packet.parse_ipv6, good + b"\0") == "ipv6_length"
    longer = Ipv6Packet(src=A, dst=B, next_header=59, hop_limit=1, payload=b"xyz").to_bytes()
    assert reason_of(packet.parse_ipv6, longer[:-1]) == "ipv6_length"


@pytest.mark.parametrize("field,value", [
    ("next_header", 256), ("hop_limit", -1), ("traffic_class", 256), ("flow_label", 1 << 20),
])
def test_ipv6_builder_refuses_out_of_range_fields(field, value):
    kwargs = dict(src=A, dst=B, next_header=59, hop_limit=1)
    kwargs[field] = value
    with pytest.raises(ValueError):
        Ipv6Packet(**kwargs)


def test_ipv6_builder_refuses_jumbo_payload():
    with pytest.raises(ValueError):
        Ipv6Packet(src=A, dst=B, next_header=59, hop_limit=1, payload=bytes(0x10000))


# -- checksums ---------------------------------------------------------------------

def test_internet_checksum_rfc1071_example():
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (after the carry).
    assert packet.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_internet_checksum_pads_odd_length_and_verifies_to_zero():
    assert packet.internet_checksum(b"\x01") == packet.internet_checksum(b"\x01\x00")
    data = bytes(range(1, 30))
    checksum = packet.internet_checksum(data + b"\0")
    assert packet.internet_checksum(data + b"\0" + struct.pack("!H", checksum)) == 0


@pytest.mark.parametrize("src,expected", [
    # Miredo's pre-computed RS checksums (libteredo/packets.c before 1.1): an RS from
    # its old restricted/cone link-local with a 14-byte zero source link-layer option.
    ("fe80::5445:5245:444f", 0x914B),
    ("fe80::8000:5445:5245:444f", 0x114B),
])
def test_rs_checksum_matches_miredo_precomputed(src, expected):
    wire = icmpv6.build_router_solicitation(src, source_link_layer=bytes(14))
    assert struct.unpack("!H", wire[42:44])[0] == expected
    assert len(wire) == 40 + 8 + 16


# -- Router Solicitation -----------------------------------------------------------

def test_rs_is_byte_identical_to_miredo_126():
    capture = CAPTURES["miredo_client_rs"]
    payload = encap.parse_udp_payload(bytes.fromhex(capture["payload_hex"]))
    expect = capture["expect"]
    assert payload.auth.nonce.hex() == expect["auth_nonce_hex"]
    assert payload.origin is None
    # Our default RS is exactly what Miredo sends; the whole datagram too.
    assert payload.ipv6.to_bytes() == icmpv6.build_router_solicitation()
    assert encap.build_udp_payload(icmpv6.build_router_solicitation(),
                                   auth=AuthHeader(nonce=payload.auth.nonce)
                                   ) == bytes.fromhex(capture["payload_hex"])
    rs = icmpv6.parse_router_solicitation(payload.ipv6)
    assert str(rs.src) == expect["ipv6_src"] and str(rs.dst) == expect["ipv6_dst"]
    assert rs.hop_limit == expect["hop_limit"] and rs.options == ()


def test_rs_defaults_and_options_round_trip():
    wire = icmpv6.build_router_solicitation(C.LINK_LOCAL_CONE, source_link_layer=bytes(14))
    rs = icmpv6.parse_router_solicitation(wire)
    assert rs.src == ipaddress.IPv6Address(C.LINK_LOCAL_CONE)
    assert rs.dst == ipaddress.IPv6Address("ff02::2")
    assert rs.hop_limit == 255
    assert rs.options == (NdOption(C.ND_OPT_SOURCE_LINK_LAYER, bytes(14)),)
    assert rs.to_bytes() == wire


def test_icmpv6_errors():
    rs = bytearray(icmpv6.build_router_solicitation())
    bad_sum = bytes(rs[:42]) + bytes([rs[42] ^ 1]) + bytes(rs[43:])
    assert reason_of(icmpv6.parse_router_solicitation, bad_sum) == "icmpv6_checksum"
    # Changing an address breaks the pseudo-header part of the checksum.
    moved = bytes(rs[:8]) + ipaddress.IPv6Address(C.LINK_LOCAL_CONE).packed + bytes(rs[24:])
    assert reason_of(icmpv6.parse_icmpv6, moved) == "icmpv6_checksum"
    assert reason_of(icmpv6.parse_icmpv6, packet.build_bubble(A, B)) == "not_icmpv6"
    short = Ipv6Packet(src=A, dst=B, next_header=58, hop_limit=1, payload=b"\x80\0\0").to_bytes()
    assert reason_of(icmpv6.parse_icmpv6, short) == "icmpv6_truncated"
    echo = icmpv6.build_echo_request(A, B, identifier=1, sequence=2)
    assert reason_of(icmpv6.parse_router_solicitation, echo) == "icmpv6_type"
    assert reason_of(icmpv6.parse_router_advertisement, echo) == "icmpv6_type"
    coded = icmpv6.build_icmpv6(A, B, C.ICMPV6_ROUTER_SOLICITATION, 1, bytes(4), hop_limit=255)
    assert reason_of(icmpv6.parse_router_solicitation, coded) == "icmpv6_code"
    rs_short = icmpv6.build_icmpv6(A, B, C.ICMPV6_ROUTER_SOLICITATION, 0, b"\0", hop_limit=255)
    assert reason_of(icmpv6.parse_router_solicitation, rs_short) == "icmpv6_truncated"


# -- Router Advertisement ----------------------------------------------------------

def test_ra_from_miredo_server_parses():
    capture = CAPTURES["miredo_server_ra"]
    expect = capture["expect"]
    payload = encap.parse_udp_payload(bytes.fromhex(capture["payload_hex"]))
    assert payload.auth.nonce.hex() == expect["auth_nonce_hex"]
    assert payload.origin == OriginIndication(expect["origin_port"], expect["origin_address"])
    ra = icmpv6.parse_router_advertisement(payload.ipv6)
    assert str(ra.src) == expect["ipv6_src"] and str(ra.dst) == expect["ipv6_dst"]
    assert [str(p.prefix) for p in ra.prefixes] == [expect["prefix"]]
    assert ra.mtu == expect["mtu"] and ra.retrans_timer == expect["retrans_timer"]
    assert ra.prefixes[0].autonomous and not ra.prefixes[0].on_link
    # What qualification does with it: prefix + origin make the address.
    prefix_server = ipaddress.IPv4Address(ra.prefixes[0].prefix.network_address.packed[4:8])
    built = TeredoAddress(server=prefix_server, flags=0, port=payload.origin.port,
                          client=payload.origin.address)
    assert str(built) == expect["teredo_address"]


def test_ra_is_byte_identical_to_miredo_server():
    capture = CAPTURES["miredo_server_ra"]
    ra = icmpv6.build_router_advertisement(SERVER_LL, RESTRICTED,
                                           prefixes=["2001:0:c000:201::/64"],
                                           mtu=1280, retrans_timer=2000)
    wire = encap.build_udp_payload(ra, auth=AuthHeader(nonce=bytes.fromhex("0102030405060708")),
                                   origin=OriginIndication(40000, "192.0.2.100"))
    assert wire == bytes.fromhex(capture["payload_hex"])


prefix_infos = st.builds(
    PrefixInformation,
    prefix=st.tuples(ipv6_addresses, st.integers(min_value=0, max_value=128)).map(
        lambda t: ipaddress.IPv6Network(t, strict=False)),
    on_link=st.booleans(), autonomous=st.booleans(),
    valid_lifetime=u32, preferred_lifetime=u32,
)
other_options = st.builds(
    NdOption, type=st.sampled_from([1, 2, 4, 24, 25, 200]),
    data=st.integers(min_value=0, max_value=5).map(lambda n: bytes(range(6 + 8 * n))),
)


@settings(max_examples=100)
@given(prefixes=st.lists(prefix_infos, max_size=3), mtu=st.none() | u32,
       others=st.lists(other_options, max_size=2), cur=u8, flags=u8, lifetime=u16,
       reachable=u32, retrans=u32)
def test_ra_round_trip(prefixes, mtu, others, cur, flags, lifetime, reachable, retrans):
    ra = RouterAdvertisement(src=SERVER_LL, dst=RESTRICTED, cur_hop_limit=cur, flags=flags,
                             router_lifetime=lifetime, reachable_time=reachable,
                             retrans_timer=retrans, prefixes=tuple(prefixes), mtu=mtu,
                             other_options=tuple(others))
    assert icmpv6.parse_router_advertisement(ra.to_bytes()) == ra


def test_prefix_information_ignores_bits_past_the_length():
    # RFC 4861 §4.6.2: the receiver ignores them; the builder writes them as zero.
    info = PrefixInformation("2001:0:c000:201:dead::/64")
    assert info.prefix == ipaddress.IPv6Network("2001:0:c000:201::/64")
    option = NdOption(C.ND_OPT_PREFIX_INFORMATION,
                      info.to_option().data[:14] + ipaddress.IPv6Address(
                          "2001:0:c000:201:dead::").packed)
    assert PrefixInformation.from_option(option).prefix == info.prefix


def test_ra_keeps_every_prefix_and_last_mtu():
    body = struct.pack("!BBHII", 0, 0, 0, 0, 0) + b"".join([
        PrefixInformation("2001:0:c000:201::/64").to_option().to_bytes(),
        NdOption(C.ND_OPT_MTU, struct.pack("!2xI", 1400)).to_bytes(),
        PrefixInformation("2001:0:c000:202::/64").to_option().to_bytes(),
        NdOption(C.ND_OPT_MTU, struct.pack("!2xI", 1280)).to_bytes(),
    ])
    wire = icmpv6.build_icmpv6(SERVER_LL, RESTRICTED, C.ICMPV6_ROUTER_ADVERTISEMENT, 0, body,
                               hop_limit=255)
    ra = icmpv6.parse_router_advertisement(wire)
    assert [str(p.prefix) for p in ra.prefixes] == ["2001:0:c000:201::/64", "2001:0:c000:202::/64"]
    assert ra.mtu == 1280


def _ra_with_options(options: bytes) -> bytes:
    body = struct.pack("!BBHII", 0, 0, 0, 0, 0) + options
    return icmpv6.build_icmpv6(SERVER_LL, RESTRICTED, C.ICMPV6_ROUTER_ADVERTISEMENT, 0, body,
                               hop_limit=255)


@pytest.mark.parametrize("options,reason", [
    (b"\x05\x00" + bytes(6), "nd_option_length"),                 # length 0
    (b"\x05\x02" + bytes(6), "nd_option_length"),                 # runs past the end
    (b"\x05", "nd_option_length"),                                # header cut short
    (b"\x03\x01" + bytes(6), "nd_prefix_option"),                 # 8 bytes, needs 32
    (b"\x03\x04\x81" + bytes(29), "nd_prefix_option"),            # prefix length 129
])
def test_ra_option_errors(options, reason):
    assert reason_of(icmpv6.parse_router_advertisement, _ra_with_options(options)) == reason


def test_ra_truncated_fixed_part():
    wire = icmpv6.build_icmpv6(SERVER_LL, RESTRICTED, C.ICMPV6_ROUTER_ADVERTISEMENT, 0,
                               bytes(11), hop_limit=255)
    assert reason_of(icmpv6.parse_router_advertisement, wire) == "icmpv6_truncated"


def test_ra_builder_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError):
        icmpv6.build_router_advertisement(SERVER_LL, RESTRICTED, mtu=1 << 32)
    with pytest.raises(ValueError):
        NdOption(1, bytes(2100)).to_bytes()


# -- Echo (direct connectivity test, RFC 4380 §5.2.9) ---------------------------------

@settings(max_examples=100)
@given(ipv6_addresses, ipv6_addresses, u16, u16, st.binary(max_size=64), st.booleans(), u8)
def test_echo_round_trip(src, dst, identifier, sequence, data, reply, hop_limit):
    build = icmpv6.build_echo_reply if reply else icmpv6.build_echo_request
    wire = build(src, dst, identifier=identifier, sequence=sequence, data=data,
                 hop_limit=hop_limit)
    echo = icmpv6.parse_echo(wire)
    assert (echo.src, echo.dst, echo.identifier, echo.sequence, echo.data, echo.reply,
            echo.hop_limit) == (src, dst, identifier, sequence, data, reply, hop_limit)
    assert echo.to_bytes() == wire


def test_echo_answer_carries_the_nonce_back():
    nonce = bytes.fromhex("0011223344556677")
    request = icmpv6.parse_echo(icmpv6.build_echo_request(A, B, identifier=7, sequence=9,
                                                          data=nonce))
    assert not request.reply
    reply = icmpv6.parse_echo(request.answer().to_bytes())
    assert reply.reply and reply.src == B and reply.dst == A
    assert (reply.identifier, reply.sequence, reply.data) == (7, 9, nonce)


def test_echo_errors():
    assert reason_of(icmpv6.parse_echo, icmpv6.build_router_solicitation()) == "icmpv6_type"
    short = icmpv6.build_icmpv6(A, B, C.ICMPV6_ECHO_REPLY, 0, b"\0\1\2", hop_limit=64)
    assert reason_of(icmpv6.parse_echo, short) == "icmpv6_truncated"
    coded = icmpv6.build_icmpv6(A, B, C.ICMPV6_ECHO_REPLY, 3, bytes(4), hop_limit=64)
    assert reason_of(icmpv6.parse_echo, coded) == "icmpv6_code"
    with pytest.raises(ValueError):
        icmpv6.build_echo_request(A, B, identifier=0x10000, sequence=0)


# -- Bubbles (RFC 4380 §2.8) -------------------------------------------------------

def test_bubble():
    wire = packet.build_bubble(A, B)
    assert len(wire) == 40
    assert wire[4:8] == bytes.fromhex("00003bff")  # payload length 0, next header 59, hop 255
    parsed = packet.parse_ipv6(wire)
    assert packet.is_bubble(parsed)
    assert (parsed.src, parsed.dst) == (A, B)


def test_not_bubbles():
    with_payload = Ipv6Packet(src=A, dst=B, next_header=59, hop_limit=255, payload=b"x")
    assert not packet.is_bubble(packet.parse_ipv6(with_payload.to_bytes()))
    assert not packet.is_bubble(packet.parse_ipv6(icmpv6.build_router_solicitation()))
    empty_icmp = Ipv6Packet(src=A, dst=B, next_header=58, hop_limit=255)
    assert not packet.is_bubble(empty_icmp)


# -- Encapsulation (RFC 4380 §5.1.1) -------------------------------------------------

def test_origin_indication_rfc_example():
    # RFC 4380 §5.1.1: port 337 and 1.2.3.4 are sent as 0000FEAEFEFDFCFB.
    assert encap.build_origin_indication(337, "1.2.3.4") == bytes.fromhex("0000FEAEFEFDFCFB")
    payload = encap.parse_udp_payload(bytes.fromhex("0000FEAEFEFDFCFB")
                                      + packet.build_bubble(A, B))
    assert payload.origin == OriginIndication(337, ipaddress.IPv4Address("1.2.3.4"))
    assert payload.auth is None


def test_auth_header_layout():
    header = AuthHeader(nonce=bytes(range(8)), confirmation=1, client_id=b"id",
                        auth_value=b"sig")
    assert header.to_bytes() == (bytes.fromhex("0001" "02" "03") + b"id" + b"sig"
                                 + bytes(range(8)) + b"\x01")


def test_plain_payload_has_no_headers():
    payload = encap.parse_udp_payload(packet.build_bubble(A, B))
    assert payload == TeredoPayload(ipv6=packet.parse_ipv6(packet.build_bubble(A, B)))


auth_headers = st.builds(AuthHeader, nonce=st.binary(min_size=8, max_size=8),
                         confirmation=u8, client_id=st.binary(max_size=20),
                         auth_value=st.binary(max_size=20))
origins = st.builds(OriginIndication, port=u16, address=ipv4_addresses)
ipv6_packets = st.builds(Ipv6Packet, src=ipv6_addresses, dst=ipv6_addresses,
                         next_header=u8, hop_limit=u8, payload=st.binary(max_size=80))


@settings(max_examples=150)
@given(ipv6_packets, st.none() | auth_headers, st.none() | origins)
def test_udp_payload_round_trip(ipv6, auth, origin):
    built = TeredoPayload(ipv6=ipv6, auth=auth, origin=origin)
    wire = built.to_bytes()
    assert encap.parse_udp_payload(wire) == built
    # RFC order: authentication, then origin indication, then IPv6.
    expected = ((auth.to_bytes() if auth else b"") + (origin.to_bytes() if origin else b"")
                + ipv6.to_bytes())
    assert wire == expected


def test_udp_payload_errors():
    bubble = packet.build_bubble(A, B)
    auth = AuthHeader(nonce=bytes(8)).to_bytes()
    origin = OriginIndication(1, "192.0.2.1").to_bytes()
    # Wrong order and repeated headers.
    assert reason_of(encap.parse_udp_payload, origin + auth + bubble) == "teredo_indicator"
    assert reason_of(encap.parse_udp_payload, auth + auth + bubble) == "teredo_indicator"
    assert reason_of(encap.parse_udp_payload, origin + origin + bubble) == "teredo_indicator"
    assert reason_of(encap.parse_udp_payload, b"\x00\x02" + bubble) == "teredo_indicator"
    # Truncations inside each header.
    assert reason_of(encap.parse_udp_payload, auth[:12]) == "auth_truncated"
    assert reason_of(encap.parse_udp_payload, b"\x00\x01\x00") == "auth_truncated"
    long_id = AuthHeader(nonce=bytes(8), client_id=bytes(200)).to_bytes()
    assert reason_of(encap.parse_udp_payload, long_id[:100]) == "auth_truncated"
    assert reason_of(encap.parse_udp_payload, origin[:7]) == "origin_truncated"
    assert reason_of(encap.parse_udp_payload, auth + origin[:5]) == "origin_truncated"
    # Headers followed by nothing or garbage.
    assert reason_of(encap.parse_udp_payload, auth + origin) == "ipv6_truncated"
    assert reason_of(encap.parse_udp_payload, b"") == "ipv6_truncated"
    assert reason_of(encap.parse_udp_payload, origin + b"\x45" + bytes(39)) == "ipv6_version"


@pytest.mark.parametrize("kwargs", [
    dict(nonce=bytes(7)), dict(nonce=bytes(9)), dict(nonce=bytes(8), confirmation=256),
    dict(nonce=bytes(8), client_id=bytes(256)),
])
def test_auth_builder_refuses_bad_fields(kwargs):
    with pytest.raises(ValueError):
        AuthHeader(**kwargs)


def test_origin_builder_refuses_bad_port():
    with pytest.raises(ValueError):
        OriginIndication(0x10000, "192.0.2.1")


# -- Robustness: nothing but MalformedPacket escapes a parser -------------------------

PARSERS = [
    (packet.parse_ipv6, packet.MALFORMED_REASONS),
    (icmpv6.parse_icmpv6, icmpv6.MALFORMED_REASONS),
    (icmpv6.parse_router_solicitation, icmpv6.MALFORMED_REASONS),
    (icmpv6.parse_router_advertisement, icmpv6.MALFORMED_REASONS),
    (icmpv6.parse_echo, icmpv6.MALFORMED_REASONS),
    (encap.parse_udp_payload, encap.MALFORMED_REASONS),
]

VALID_SEEDS = [
    packet.build_bubble(A, B),
    icmpv6.build_router_solicitation(),
    icmpv6.build_router_solicitation(source_link_layer=bytes(14)),
    icmpv6.build_router_advertisement(SERVER_LL, RESTRICTED, prefixes=["2001:0:c000:201::/64"],
                                      mtu=1280),
    icmpv6.build_echo_request(A, B, identifier=1, sequence=2, data=bytes(8)),
    icmpv6.build_echo_reply(B, A, identifier=1, sequence=2, data=bytes(8)),
    bytes.fromhex(CAPTURES["miredo_client_rs"]["payload_hex"]),
    bytes.fromhex(CAPTURES["miredo_server_ra"]["payload_hex"]),
]


def parse_or_malformed(parser, reasons, data):
    try:
        parser(data)
    except MalformedPacket as err:
        assert err.reason in reasons, err.reason


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_malformed(data):
    for parser, reasons in PARSERS:
        parse_or_malformed(parser, reasons, data)


@st.composite
def mutated_packets(draw):
    data = bytearray(draw(st.sampled_from(VALID_SEEDS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "append"]))
        at = draw(st.integers(min_value=0, max_value=len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(u8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(min_value=1, max_value=8))]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_packets())
def test_mutated_packets_raise_only_malformed(data):
    for parser, reasons in PARSERS:
        parse_or_malformed(parser, reasons, data)


@st.composite
def nd_options(draw):
    """One ND option, usually with a length byte that matches its data."""
    option_type = draw(st.sampled_from([3, 3, 5, 1, 7]))
    units = draw(st.integers(min_value=0, max_value=5))
    if units and draw(st.booleans()):
        data = draw(st.binary(min_size=units * 8 - 2, max_size=units * 8 - 2))
    else:
        data = draw(st.binary(max_size=40))
    return bytes((option_type, units)) + data


@st.composite
def checksummed_icmpv6(draw):
    """Valid IPv6 + correct checksum around random ICMPv6 bodies, to reach the
    option parsers that random bytes never get to."""
    icmp_type = draw(st.sampled_from([134, 134, 134, 133, 133, 128, 129]) | u8)
    code = draw(st.sampled_from([0, 0, 0, 1]))
    # Mostly the right fixed part for the type (RS 4, RA 12 bytes), so options align.
    fixed_len = draw(st.sampled_from([{133: 4, 134: 12}.get(icmp_type, 4)] * 3
                                     + [0, 3, 11, 13]))
    fixed = draw(st.binary(min_size=fixed_len, max_size=fixed_len))
    body = fixed + b"".join(draw(st.lists(nd_options(), max_size=4)))
    return icmpv6.build_icmpv6(SERVER_LL, RESTRICTED, icmp_type, code, body, hop_limit=255)


@settings(max_examples=400)
@given(checksummed_icmpv6())
def test_checksummed_random_icmpv6_raise_only_malformed(data):
    for parser, reasons in PARSERS:
        parse_or_malformed(parser, reasons, data)
