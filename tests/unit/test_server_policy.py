"""The Teredo server's decisions (RFC 4380 §5.3.1), datagram in, datagrams out.

Every answer is read back with our own parsers (encap, icmpv6, packet); the RA is
also compared byte for byte with what Miredo's miredo-server 1.2.6 sent in our lab.
"""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, icmpv6, packet
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import (DROP_REASONS, MAX_DATAGRAM, Received, SendIpv6,
                                             SendUdp, ServerPolicy, server_link_local,
                                             teredo_prefix_of)

IP = ipaddress.IPv4Address
PRIMARY, SECONDARY = IP("192.0.2.1"), IP("192.0.2.2")
NAT1, NAT1_PORT = IP("198.51.100.1"), 42530
NAT2, NAT2_PORT = IP("198.51.100.17"), 61000
RELAY, RELAY_PORT = IP("192.0.2.20"), C.TEREDO_PORT
V6HOST = ipaddress.IPv6Address("2001:db8:1::2")
NONCE = bytes.fromhex("df2d2c439af87c23")

# Captured on the lab's server host (tcpdump -X): Miredo 1.2.6's client RS from
# 198.51.100.1:42530 (through nat1) and miredo-server's answer from 192.0.2.1:3544.
MIREDO_RS = bytes.fromhex(
    "00010000" "df2d2c439af87c23" "00"                        # authentication, nonce
    "6000000000083aff"                                        # IPv6: 8 bytes of ICMPv6
    "fe80000000000000" "0000ffffffffffff"                     # fe80::ffff:ffff:ffff
    "ff02000000000000" "0000000000000002"                     # ff02::2
    "85007d3700000000")                                       # RS
MIREDO_RA = bytes.fromhex(
    "00010000" "df2d2c439af87c23" "00"                        # authentication, same nonce
    "000059dd39cc9bfe"                                        # origin 198.51.100.1:42530
    "6000000000383aff"                                        # IPv6: 56 bytes of ICMPv6
    "fe80000000000000" "8000f2273ffffdfe"                     # fe80::8000:f227:3fff:fdfe
    "fe80000000000000" "0000ffffffffffff"                     # fe80::ffff:ffff:ffff
    "8600954c" "00000000" "00000000" "000007d0"               # RA, retrans timer 2000 ms
    "03044040" "ffffffff" "ffffffff" "00000000"               # prefix information, A flag
    "20010000c0000201" "0000000000000000"                     # 2001:0:c000:201::/64
    "0501000000000500")                                       # MTU 1280


def _teredo(client_ip, port, server=PRIMARY):
    return TeredoAddress(server=server, flags=0, port=port, client=client_ip).ipv6


CLIENT1 = _teredo(NAT1, NAT1_PORT)
CLIENT2 = _teredo(NAT2, NAT2_PORT)


def _policy(*, pps=1000.0, bps=1e6, native_ipv6=True, clock=None, min_byte_burst=1500):
    limits = Limits(pps, bps, burst_s=1.0, min_byte_burst=min_byte_burst)
    limiter = RateLimiter(limits, clock=clock or FakeClock())
    return ServerPolicy(PRIMARY, SECONDARY, limiter=limiter, native_ipv6=native_ipv6)


def _rx(payload, src=NAT1, port=NAT1_PORT, local=PRIMARY):
    return Received(local=local, src_ip=src, src_port=port, payload=bytes(payload))


def _rs(src=C.LINK_LOCAL_RESTRICTED, dst=C.ALL_ROUTERS, nonce=NONCE):
    auth = encap.AuthHeader(nonce=nonce) if nonce is not None else None
    return encap.build_udp_payload(icmpv6.build_router_solicitation(src, dst), auth=auth)


def _echo(src, dst, data=b"n" * 16, reply=False, hop_limit=21):
    build = icmpv6.build_echo_reply if reply else icmpv6.build_echo_request
    return build(src, dst, identifier=7, sequence=1, data=data, hop_limit=hop_limit)


def _dropped(policy, datagram, reason):
    assert reason in DROP_REASONS
    before = policy.counters()["dropped"][reason]
    assert policy.handle(datagram) == []
    assert policy.counters()["dropped"][reason] == before + 1, policy.counters()


# -- Router Solicitation -> Router Advertisement ---------------------------------------

def test_ra_is_byte_for_byte_what_miredo_server_sends():
    assert len(MIREDO_RS) == 61 and len(MIREDO_RA) == 117
    [send] = _policy().handle(_rx(MIREDO_RS))
    assert send == SendUdp(via=PRIMARY, dst_ip=NAT1, dst_port=NAT1_PORT, payload=MIREDO_RA)


def test_ra_fields_read_back_with_our_parsers():
    policy = _policy()
    [send] = policy.handle(_rx(_rs(nonce=b"\x01\x02\x03\x04\x05\x06\x07\x08")))
    assert (send.via, send.dst_ip, send.dst_port) == (PRIMARY, NAT1, NAT1_PORT)
    teredo = encap.parse_udp_payload(send.payload)
    # §5.1.1: authentication first, echoing the nonce; confirmation 0.
    assert teredo.auth.nonce == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert teredo.auth.confirmation == 0 and teredo.auth.client_id == b""
    # The origin indication is the mapping the server saw.
    assert (teredo.origin.address, teredo.origin.port) == (NAT1, NAT1_PORT)
    ra = icmpv6.parse_router_advertisement(teredo.ipv6)
    assert ra.src == server_link_local(PRIMARY) == ipaddress.IPv6Address("fe80::8000:f227:3fff:fdfe")
    assert ra.dst == ipaddress.IPv6Address(C.LINK_LOCAL_RESTRICTED)
    assert ra.hop_limit == C.ND_HOP_LIMIT
    assert [p.prefix for p in ra.prefixes] == [ipaddress.IPv6Network("2001:0:c000:201::/64")]
    assert ra.prefixes[0].autonomous and not ra.prefixes[0].on_link
    assert ra.mtu == C.TEREDO_MTU
    assert ra.retrans_timer == C.RA_RETRANS_TIMER_MS and ra.router_lifetime == 0
    # A client builds its address from this RA as §5.2.1 says.
    address = TeredoAddress.from_ipv6(ra.prefixes[0].prefix.network_address)
    assert address.server == PRIMARY
    assert policy.counters()["rs_answered"] == 1


def test_rs_without_authentication_gets_an_ra_without_it():
    [send] = _policy().handle(_rx(_rs(nonce=None)))
    teredo = encap.parse_udp_payload(send.payload)
    assert teredo.auth is None
    assert (teredo.origin.address, teredo.origin.port) == (NAT1, NAT1_PORT)
    icmpv6.parse_router_advertisement(teredo.ipv6)


def test_rs_to_the_servers_link_local_is_answered_too():
    [send] = _policy().handle(_rx(_rs(dst=server_link_local(PRIMARY))))
    assert send.dst_ip == NAT1


@pytest.mark.parametrize("local, source, via", [
    # §5.3.1: the RA leaves from the address the RS reached ...
    (PRIMARY, C.LINK_LOCAL_RESTRICTED, PRIMARY),
    (SECONDARY, C.LINK_LOCAL_RESTRICTED, SECONDARY),
    # ... or from the other one when the client asks for the cone test.
    (PRIMARY, C.LINK_LOCAL_CONE, SECONDARY),
    (SECONDARY, C.LINK_LOCAL_CONE, PRIMARY),
])
def test_ra_source_address(local, source, via):
    [send] = _policy().handle(_rx(_rs(src=source), local=local))
    assert send.via == via
    ra = icmpv6.parse_router_advertisement(encap.parse_udp_payload(send.payload).ipv6)
    assert ra.dst == ipaddress.IPv6Address(source)
    # The prefix names the primary address whatever address answered.
    assert [p.prefix for p in ra.prefixes] == [teredo_prefix_of(PRIMARY)]


@pytest.mark.parametrize("source", [str(CLIENT1), "2001:db8::1", "::"])
def test_rs_from_a_non_link_local_source_is_dropped(source):
    _dropped(_policy(), _rx(_rs(src=source)), "rs_not_link_local")


def test_rs_to_another_destination_is_dropped():
    _dropped(_policy(), _rx(_rs(dst="fe80::1")), "rs_destination")


def test_rs_with_a_bad_checksum_is_malformed():
    corrupted = bytearray(_rs())
    corrupted[-5] ^= 0xFF   # inside the ICMPv6 checksum
    _dropped(_policy(), _rx(corrupted), "malformed")


def test_other_icmpv6_to_the_server_is_not_a_solicitation():
    ping = _echo(C.LINK_LOCAL_RESTRICTED, C.ALL_ROUTERS)
    _dropped(_policy(), _rx(ping), "not_solicitation")


# -- checks on every packet ----------------------------------------------------------

@pytest.mark.parametrize("source", ["10.1.0.2", "192.168.1.1", "127.0.0.1", "172.16.5.5",
                                    "169.254.1.1", "224.0.0.253", "255.255.255.255",
                                    "0.1.2.3", "192.88.99.1"])
def test_non_global_ipv4_source_is_dropped(source):
    _dropped(_policy(), _rx(_rs(), src=IP(source)), "source_not_global")


@pytest.mark.parametrize("source", ["203.0.113.5", "100.64.0.1", "8.8.8.8"])
def test_global_and_documentation_sources_are_answered(source):
    assert len(_policy().handle(_rx(_rs(), src=IP(source)))) == 1


@pytest.mark.parametrize("source", [PRIMARY, SECONDARY])
def test_datagrams_from_our_own_addresses_are_dropped(source):
    _dropped(_policy(), _rx(_rs(), src=source, port=C.TEREDO_PORT), "loop")


@pytest.mark.parametrize("payload", [b"", b"\x00", b"hello", b"\x60" + b"\x00" * 38,
                                     b"\x00\x01\x00\x00" + b"\x00" * 5,   # auth cut short
                                     b"\x00\x00\x12\x34",                  # origin cut short
                                     MIREDO_RS[:-1]])                      # length mismatch
def test_malformed_payloads_are_dropped(payload):
    _dropped(_policy(), _rx(payload), "malformed")


def test_oversized_datagram_is_dropped_before_parsing():
    _dropped(_policy(), _rx(b"\x60" + b"\x00" * MAX_DATAGRAM), "oversize")


def test_data_is_never_forwarded():
    udp = packet.Ipv6Packet(src=CLIENT1, dst=CLIENT2, next_header=C.IPPROTO_UDP,
                            hop_limit=64, payload=b"\x00" * 16).to_bytes()
    _dropped(_policy(), _rx(udp), "data")
    # Nor a "bubble" with a payload: next header 59 but bytes follow.
    fat = packet.Ipv6Packet(src=CLIENT1, dst=CLIENT2, next_header=C.IPPROTO_NONE,
                            hop_limit=255, payload=b"x" * 8).to_bytes()
    _dropped(_policy(), _rx(fat), "data")


# -- forwarding to clients of ours -------------------------------------------------------

def test_indirect_bubble_to_a_client_of_ours_is_forwarded_with_origin_indication():
    policy = _policy()
    bubble = packet.build_bubble(CLIENT1, CLIENT2)
    # Whatever headers the sender put in front are not passed on.
    incoming = encap.build_udp_payload(bubble, auth=encap.AuthHeader(nonce=NONCE))
    [send] = policy.handle(_rx(incoming))
    assert send == SendUdp(via=PRIMARY, dst_ip=NAT2, dst_port=NAT2_PORT,
                           payload=encap.build_origin_indication(NAT1_PORT, NAT1) + bubble)
    teredo = encap.parse_udp_payload(send.payload)
    assert teredo.auth is None
    assert (teredo.origin.address, teredo.origin.port) == (NAT1, NAT1_PORT)
    assert packet.is_bubble(teredo.ipv6) and teredo.ipv6.src == CLIENT1
    assert policy.counters()["forwarded_bubble"] == 1


def test_relays_indirect_bubble_from_a_native_source_is_forwarded():
    # RFC 4380 §5.4.1: a relay bubbles the client through its server, the IPv6 source
    # being the native host; the origin is the relay's mapping.
    bubble = packet.build_bubble(V6HOST, CLIENT2)
    [send] = _policy().handle(_rx(bubble, src=RELAY, port=RELAY_PORT))
    teredo = encap.parse_udp_payload(send.payload)
    assert (send.dst_ip, send.dst_port) == (NAT2, NAT2_PORT)
    assert (teredo.origin.address, teredo.origin.port) == (RELAY, RELAY_PORT)


@pytest.mark.parametrize("reply", [False, True])
def test_small_echo_to_a_client_of_ours_is_forwarded(reply):
    policy = _policy()
    echo = _echo(CLIENT1, CLIENT2, reply=reply)
    [send] = policy.handle(_rx(echo))
    assert send.payload == encap.build_origin_indication(NAT1_PORT, NAT1) + echo
    assert policy.counters()["forwarded_echo"] == 1


def test_big_echo_is_not_forwarded():
    data = b"x" * (C.SERVER_FORWARD_MAX_PAYLOAD - 8 + 1)   # one byte over, with the 8-byte header
    _dropped(_policy(), _rx(_echo(CLIENT1, CLIENT2, data=data)), "echo_too_big")
    assert _policy().handle(_rx(_echo(CLIENT1, CLIENT2, data=data[:-1])))


def test_icmpv6_other_than_echo_is_not_forwarded():
    unreachable = icmpv6.build_icmpv6(CLIENT1, CLIENT2, 1, 0, b"\x00" * 4, hop_limit=64)
    _dropped(_policy(), _rx(unreachable), "icmpv6_not_echo")


def test_echo_with_a_bad_checksum_is_malformed():
    echo = bytearray(_echo(CLIENT1, CLIENT2))
    echo[-1] ^= 0x01
    _dropped(_policy(), _rx(echo), "malformed")


def test_teredo_source_must_embed_the_udp_source():
    bubble = packet.build_bubble(CLIENT1, CLIENT2)
    _dropped(_policy(), _rx(bubble, port=NAT1_PORT + 1), "source_mismatch")
    _dropped(_policy(), _rx(bubble, src=IP("203.0.113.9")), "source_mismatch")


def test_non_teredo_source_only_towards_our_clients():
    _dropped(_policy(), _rx(packet.build_bubble(V6HOST, "2001:db8:5::1"), src=RELAY),
             "not_ours")


def test_miredo_bubble_from_a_link_local_source_is_forwarded():
    # Miredo's clients and relays send indirect bubbles from their link-local
    # address (libteredo/packets.c, SendBubbleFromDst); §5.3.1 accepts them.
    bubble = packet.build_bubble(C.LINK_LOCAL_RESTRICTED, CLIENT2)
    [send] = _policy().handle(_rx(bubble))
    assert send.payload == encap.build_origin_indication(NAT1_PORT, NAT1) + bubble
    assert (send.dst_ip, send.dst_port) == (NAT2, NAT2_PORT)


def test_client_of_another_server_is_not_forwarded_to():
    other = _teredo(NAT2, NAT2_PORT, server=IP("203.0.113.1"))
    _dropped(_policy(), _rx(packet.build_bubble(CLIENT1, other)), "destination_other_server")


def test_destination_mapped_to_a_private_address_is_not_forwarded_to():
    private = _teredo(IP("10.0.0.1"), 4000)
    _dropped(_policy(), _rx(packet.build_bubble(CLIENT1, private)), "destination_not_global")


# -- forwarding to native IPv6 (the direct connectivity test, §5.2.9) -----------------------

def test_echo_request_to_native_ipv6_goes_out_raw_with_one_hop_less():
    policy = _policy()
    echo = _echo(CLIENT1, V6HOST, hop_limit=21)
    [send] = policy.handle(_rx(echo))
    assert isinstance(send, SendIpv6) and send.dst == V6HOST
    sent = icmpv6.parse_echo(send.packet)   # checksum still valid: hop limit is not in it
    assert sent.hop_limit == 20
    assert (sent.src, sent.dst, sent.data) == (CLIENT1, V6HOST, b"n" * 16)
    assert send.packet[8:] == echo[8:] and send.packet[:7] == echo[:7]
    assert policy.counters()["forwarded_native_echo"] == 1


def test_native_forwarding_can_be_off():
    _dropped(_policy(native_ipv6=False), _rx(_echo(CLIENT1, V6HOST)), "native_disabled")


@pytest.mark.parametrize("make", [
    lambda: packet.build_bubble(CLIENT1, V6HOST),
    lambda: _echo(CLIENT1, V6HOST, reply=True),
])
def test_only_echo_requests_go_to_native_ipv6(make):
    _dropped(_policy(), _rx(make()), "native_not_echo_request")


@pytest.mark.parametrize("dst", ["fe80::1", "ff02::1", "::1", "::"])
def test_native_destination_must_be_global(dst):
    _dropped(_policy(), _rx(_echo(CLIENT1, dst)), "destination_not_global")


def test_native_forwarding_only_for_our_own_clients():
    stranger = _teredo(NAT1, NAT1_PORT, server=IP("203.0.113.1"))
    _dropped(_policy(), _rx(_echo(stranger, V6HOST)), "source_other_server")


def test_native_forwarding_respects_the_hop_limit():
    _dropped(_policy(), _rx(_echo(CLIENT1, V6HOST, hop_limit=1)), "hop_limit_exceeded")


# -- rate limiting -------------------------------------------------------------------

def test_rs_flood_from_one_source_is_rate_limited_and_others_unaffected():
    clock = FakeClock()
    policy = _policy(pps=5, clock=clock)       # burst of 5 (burst_s=1)
    answered = sum(len(policy.handle(_rx(_rs()))) for _ in range(50))
    assert answered == 5
    assert policy.counters()["rate_limited"] == 45
    assert len(policy.handle(_rx(_rs(), src=IP("203.0.113.5")))) == 1
    clock.advance(1.0)
    assert sum(len(policy.handle(_rx(_rs()))) for _ in range(50)) == 5


def test_ra_bytes_are_charged_to_the_address_they_go_to():
    # 117-byte RAs against a 1000-byte burst: 8 fit, whatever the packet rate.
    policy = _policy(pps=1000, bps=1000, min_byte_burst=1)
    answered = sum(len(policy.handle(_rx(MIREDO_RS))) for _ in range(20))
    assert answered == 1000 // 117


def test_forwarding_is_charged_to_the_receiver_too():
    # Many senders aiming at one client: the client's bucket stops it (reflection).
    policy = _policy(pps=5)
    forwarded = 0
    for i in range(40):
        sender_ip = IP(f"203.0.113.{i + 1}")
        bubble = packet.build_bubble(_teredo(sender_ip, 5000), CLIENT2)
        forwarded += len(policy.handle(_rx(bubble, src=sender_ip, port=5000)))
    assert forwarded == 5


def test_bubbles_aimed_at_a_client_leave_its_router_advertisements_alone():
    # A flood of spoofed bubbles towards CLIENT2 empties its bucket; its own RS
    # still gets its RA (a bucket apart), so its qualification survives (§5.2.7).
    policy = _policy(pps=5)
    for i in range(40):
        sender_ip = IP(f"203.0.113.{i + 1}")
        policy.handle(_rx(packet.build_bubble(_teredo(sender_ip, 5000), CLIENT2),
                          src=sender_ip, port=5000))
    client2 = TeredoAddress.from_ipv6(CLIENT2)
    [ra] = policy.handle(_rx(_rs(), src=client2.client, port=client2.port))
    assert ra.dst_ip == client2.client


def test_rate_limited_datagrams_are_not_drops():
    policy = _policy(pps=1)
    policy.handle(_rx(_rs()))
    policy.handle(_rx(_rs()))
    counters = policy.counters()
    assert counters["rate_limited"] == 1 and counters["dropped_total"] == 0


# -- counters and robustness ------------------------------------------------------------

def test_every_datagram_has_exactly_one_outcome():
    policy = _policy(pps=2)
    datagrams = [_rx(_rs())] * 3 + [_rx(b"junk"), _rx(_rs(), src=IP("10.0.0.1")),
                                    _rx(packet.build_bubble(CLIENT1, CLIENT2))]
    for d in datagrams:
        policy.handle(d)
    c = policy.counters()
    assert c["received"] == 6
    outcomes = (c["rs_answered"] + c["forwarded_bubble"] + c["forwarded_echo"]
                + c["forwarded_native_echo"] + c["rate_limited"] + c["dropped_total"])
    assert outcomes == c["received"]
    assert set(c["dropped"]) == set(DROP_REASONS)


def test_policy_needs_two_addresses():
    with pytest.raises(ValueError):
        ServerPolicy(PRIMARY, PRIMARY, limiter=RateLimiter(Limits(1, 1)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([PRIMARY, SECONDARY]))
def test_any_bytes_give_at_most_one_bounded_answer(payload, local):
    policy = _policy()
    sends = policy.handle(_rx(payload, local=local))
    assert len(sends) <= 1
    for send in sends:
        # Amplification bound: an RA (117 bytes at most with the auth header), or the
        # received packet plus the 8-byte origin indication.
        assert len(send.payload) <= max(117, len(payload) + C.ORIGIN_INDICATION_LEN)
    assert policy.counters()["received"] == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(MIREDO_RS) - 1), st.integers(1, 255))
def test_corrupting_any_byte_of_a_valid_rs_never_raises(index, flip):
    corrupted = bytearray(MIREDO_RS)
    corrupted[index] ^= flip
    sends = _policy().handle(_rx(corrupted))
    assert len(sends) <= 1
