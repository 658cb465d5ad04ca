"""Fuzzing the Python parsers with hypothesis, from the seed corpus.

Contract (the project's rule): a parser handed any bytes either returns a value or
raises MalformedPacket, nothing else; what it returns builds back into bytes that
parse to the same value. The server's whole decision (ServerPolicy.handle) never
raises on any datagram from any source, and never answers with more than one
datagram.

Inputs: arbitrary bytes, and the seeds of tests/fixtures/fuzz-corpus/ (real Miredo
captures and one of every kind of Teredo packet) mutated: bytes flipped, cut,
inserted, length fields nudged, headers stacked.

Short by default (CI). Long runs: XDP_TEREDO_FUZZ_EXAMPLES=200000 (examples per
test; README.md in the corpus says what the last long run found).
"""

import glob
import ipaddress
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdp_teredo.errors import MalformedPacket
from xdp_teredo.teredo import encap, icmpv6
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo.clock import FakeClock
from xdp_teredo.teredo.ratelimit import Limits, RateLimiter
from xdp_teredo.teredo.server_policy import Received, ServerPolicy

CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "fuzz-corpus")
EXAMPLES = int(os.environ.get("XDP_TEREDO_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def corpus():
    """Every seed: (name, payload bytes)."""
    seeds = []
    for path in sorted(glob.glob(os.path.join(CORPUS_DIR, "*.json"))):
        with open(path) as f:
            entry = json.load(f)
        seeds.append((entry["name"], bytes.fromhex(entry["payload_hex"])))
    return seeds


SEEDS = corpus()


@st.composite
def mutated(draw):
    """A seed with a few mutations of the kinds that find parser bugs."""
    data = bytearray(draw(st.sampled_from([payload for _, payload in SEEDS])))
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["flip", "cut", "insert", "length", "stack", "zero"]))
        if what == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif what == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif what == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(max_size=16))
        elif what == "length" and len(data) >= 2:
            # A 16-bit field anywhere, nudged: IPv6 payload length, option lengths...
            at = draw(st.integers(0, len(data) - 2))
            value = struct.unpack_from("!H", data, at)[0] + draw(st.sampled_from([-8, -1, 1, 8, 300]))
            struct.pack_into("!H", data, at, value & 0xFFFF)
        elif what == "stack":
            # Another indicator header in front (§5.1.1: auth, origin, in any order).
            data[0:0] = draw(st.sampled_from([b"\x00\x00" + bytes(6), b"\x00\x01\x00\x00" + bytes(9),
                                              b"\x00\x01\xff\xff"]))
        elif what == "zero" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at:at + draw(st.integers(1, 8))] = bytes(min(8, len(data) - at))
    return bytes(data)


ANY_INPUT = st.one_of(st.binary(max_size=1500), mutated())


def _parses(parse, data):
    """The parser's value, or None after a MalformedPacket; anything else fails."""
    try:
        return parse(data)
    except MalformedPacket:
        return None


def test_the_corpus_is_there_and_parses():
    assert len(SEEDS) >= 10, CORPUS_DIR
    for name, payload in SEEDS:
        assert encap.parse_udp_payload(payload).ipv6.to_bytes() in payload, name


@FUZZ
@given(ANY_INPUT)
def test_teredo_payloads(data):
    parsed = _parses(encap.parse_udp_payload, data)
    if parsed is not None:
        again = encap.parse_udp_payload(parsed.to_bytes())
        assert again == parsed


@FUZZ
@given(ANY_INPUT)
def test_ipv6_packets(data):
    for candidate in (data, _strip_headers(data)):
        parsed = _parses(P.parse_ipv6, candidate)
        if parsed is not None:
            assert P.parse_ipv6(parsed.to_bytes()) == parsed


@FUZZ
@given(ANY_INPUT)
def test_icmpv6_messages(data):
    packet = _parses(P.parse_ipv6, _strip_headers(data))
    if packet is None:
        return
    for parse in (icmpv6.parse_icmpv6, icmpv6.parse_router_advertisement,
                  icmpv6.parse_router_solicitation, icmpv6.parse_echo):
        _parses(parse, packet)
    _parses(icmpv6.parse_nd_options, packet.payload[16:])


@FUZZ
@given(st.binary(max_size=600))
def test_nd_options(data):
    options = _parses(icmpv6.parse_nd_options, data)
    if options is not None:
        assert icmpv6.parse_nd_options(b"".join(o.to_bytes() for o in options)) == options


@FUZZ
@given(ANY_INPUT, st.sampled_from(["203.0.113.5", "198.51.100.1", "10.0.0.1", "192.0.2.1"]),
       st.integers(0, 0xFFFF), st.sampled_from(["192.0.2.1", "192.0.2.2"]))
def test_the_server_takes_anything(data, src_ip, src_port, local):
    policy = ServerPolicy("192.0.2.1", "192.0.2.2", native_ipv6=True,
                          limiter=RateLimiter(Limits(100, 100_000), clock=FakeClock()))
    sends = policy.handle(Received(local=ipaddress.IPv4Address(local),
                                   src_ip=ipaddress.IPv4Address(src_ip), src_port=src_port,
                                   payload=data))
    assert len(sends) <= 1
    counters = policy.counters()
    assert counters["received"] == 1


def _strip_headers(data: bytes) -> bytes:
    """The IPv6 packet inside a Teredo payload, as far as the indicators go."""
    while len(data) >= 2 and data[0] == 0:
        if data[1] == 0:
            data = data[8:]
        elif data[1] == 1 and len(data) >= 4:
            data = data[4 + data[2] + data[3] + 9:]
        else:
            break
    return data


@pytest.mark.parametrize("name,payload", SEEDS, ids=[n for n, _ in SEEDS])
def test_every_seed_survives_every_single_byte_change(name, payload):
    """Exhaustive where it is cheap: each byte of each seed set to 0x00, 0xff, and
    flipped, one at a time, through the payload parser."""
    for at in range(len(payload)):
        for value in (0x00, 0xFF, payload[at] ^ 0xFF):
            data = payload[:at] + bytes((value,)) + payload[at + 1:]
            _parses(encap.parse_udp_payload, data)
