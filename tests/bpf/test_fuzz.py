"""Thousands of random and mutated packets through every program, seeded.

For each packet the BPF program and the reference model (model.py) must agree on
the one reason it is counted under; the program must never return an error or an
unexpected action; a packet is changed only when it is decapsulated or
encapsulated, and then exactly as the rules say. Seeds are fixed, so a failure
reproduces; set XDP_TEREDO_FUZZ_SEED to explore others.
"""

import dataclasses
import errno
import ipaddress
import os
import random
import struct
from collections import Counter

import pytest

from xdp_teredo.datapath import PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import Kind

from . import model
from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS
from .test_tx import assert_encapsulated

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
SEED = int(os.environ.get("XDP_TEREDO_FUZZ_SEED", "4380"))

UNTRUSTED_ADDRESS = P.teredo_address(P.SERVER_IPV4, "198.51.100.30", 30000)
MISMAPPED_NATIVE = ipaddress.IPv6Address("2001:db8::2")
STALE_ADDRESS = P.teredo_address(P.SERVER_IPV4, "198.51.100.40", 40000)


def setup_peers(dp):
    """Every kind of entry the control plane may have written."""
    dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
    dp.add_peer(P.NATIVE_ADDRESS, P.RELAY_IPV4, P.RELAY_PORT, flags=PeerFlag.TRUSTED | PeerFlag.RELAY)
    dp.add_peer(UNTRUSTED_ADDRESS, "198.51.100.30", 30000, flags=0)
    dp.add_peer(MISMAPPED_NATIVE, P.RELAY_IPV4, P.RELAY_PORT + 1)
    # Heard from at boot: stale (PEER_RECENT is 30 s) on any machine up for longer,
    # where now - 120 s would be negative on one that booted a minute ago.
    dp.add_peer(STALE_ADDRESS, "198.51.100.40", 40000, last_rx_ns=1)


# --------------------------------------------------------------------------- receive


def _source(rng: random.Random, udp_src, udp_sport):
    return rng.choice([
        P.PEER_ADDRESS, P.NATIVE_ADDRESS, UNTRUSTED_ADDRESS, MISMAPPED_NATIVE, STALE_ADDRESS,
        P.teredo_address(P.SERVER_IPV4, udp_src, udp_sport, rng.getrandbits(16)),  # embeds
        P.teredo_address(P.SERVER_IPV4, udp_src, udp_sport ^ 1),                   # almost
        ipaddress.IPv6Address("fe80::1"),
        ipaddress.IPv6Address(rng.getrandbits(128)),
    ])


def _destination(rng: random.Random):
    return rng.choice([P.OUR_ADDRESS] * 4 + [
        ipaddress.IPv6Address("ff02::1"), ipaddress.IPv6Address("2001:db8:ffff::99"),
        ipaddress.IPv6Address(rng.getrandbits(128)),
    ])


def _payload(rng: random.Random, src, dst) -> bytes:
    kind = rng.random()
    if kind < 0.7:
        return P.inner_ipv6(src, dst, rng.randbytes(rng.randrange(0, 300)))
    if kind < 0.8:
        return P.bubble(src, dst)
    if kind < 0.9:
        return P.origin_indication("203.0.113.5", 40000) + P.bubble(src, dst)
    return rng.randbytes(rng.randrange(0, 80))


def _well_formed(rng: random.Random) -> bytes:
    udp_src, udp_sport = rng.choice([(P.PEER_IPV4, P.PEER_PORT), (P.RELAY_IPV4, P.RELAY_PORT),
                                     ("198.51.100.30", 30000), ("203.0.113.77", rng.randrange(1, 65536))])
    if rng.random() < 0.5:  # a coherent sender: what the fast path is for
        src, udp_src, udp_sport = rng.choice([
            (P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT), (P.NATIVE_ADDRESS, P.RELAY_IPV4, P.RELAY_PORT),
            (P.teredo_address(P.SERVER_IPV4, udp_src, udp_sport), udp_src, udp_sport)])
    else:
        src = _source(rng, udp_src, udp_sport)
    dst = _destination(rng)
    return P.teredo_frame(_payload(rng, src, dst), src=udp_src, sport=udp_sport,
                          dst=rng.choice([P.LOCAL_IPV4] * 9 + ["192.0.2.11"]),
                          dport=rng.choice([P.LOCAL_PORT] * 9 + [3544]))


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    out = bytearray(frame)
    for _ in range(rng.randrange(1, 4)):
        what = rng.random()
        if what < 0.35 and len(out) > 14:        # one header byte, anywhere up to the IPv6 addresses
            out[rng.randrange(12, min(len(out), 82))] = rng.getrandbits(8)
        elif what < 0.5:                          # truncate
            out = out[:rng.randrange(14, len(out) + 1)]
        elif what < 0.6:                          # trailing garbage
            out += rng.randbytes(rng.randrange(1, 20))
        elif what < 0.85 and len(out) >= 42:      # a length field off by a little
            off = rng.choice([16, 38, 46])        # IPv4 total, UDP, IPv6 payload length
            if off + 2 <= len(out):
                value = struct.unpack("!H", out[off:off + 2])[0] + rng.choice([-2, -1, 1, 2, 40])
                out[off:off + 2] = struct.pack("!H", value & 0xFFFF)
        elif len(out) >= 21:                      # IPv4 flags / fragment offset
            out[20] = rng.choice([0x20, 0x40, 0x00, 0x01])
    if rng.random() < 0.7 and len(out) >= 34:
        P.fix_ipv4_checksum(out)                  # else the checksum check catches most
    return bytes(out)


def rx_frames(rng: random.Random, n: int):
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            yield _well_formed(rng)
        elif r < 0.95:
            yield _mutate(rng, _well_formed(rng))
        else:
            frame = bytearray(rng.randbytes(rng.randrange(14, 120)))
            frame[12:14] = b"\x08\x00"
            yield bytes(frame)


def _rx_configs():
    return [{}, {"learn_peers": False}, {"relay": True}, {"enabled": False}]


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
def test_random_receive(dp, program):
    rng = random.Random(f"{SEED}-{program}")
    seen = Counter()
    refused = 0
    for cfg_changes in _rx_configs():
        dp.prog.reset()
        dp.configure(**cfg_changes)
        setup_peers(dp)
        state = dp.peers()
        for frame in rx_frames(rng, 600):
            expected = model.rx(frame, dp.config, state)
            try:
                out = dp.xdp(frame) if program == "xdp" else dp.tc_rx(frame)
            except OSError as err:
                # The kernel refuses some frames for SCHED_CLS test runs before the
                # program runs (EtherType IPv4 but no room for an IPv4 header).
                assert program == "tc_rx" and err.errno == errno.EINVAL and len(frame) < 34, frame.hex()
                refused += 1
                continue
            context = f"{program} {cfg_changes} frame={frame.hex()}"
            assert out.counted == {expected.reason.key: 1}, context
            seen[expected.reason] += 1
            if program == "xdp":
                assert out.retval in (XDP_PASS, XDP_DROP), context
                assert out.retval == (XDP_DROP if expected.reason.kind == Kind.DROP else XDP_PASS), context
            else:
                assert out.retval in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT), context
            if expected.reason == R.DECAPSULATED:
                assert out.frame == model.decapsulated_xdp(frame), context
                if expected.learn is not None:
                    state[expected.learn.address] = expected.learn
            else:
                assert out.frame == frame, context
        # What the data path learned is exactly what the model learned.
        assert set(dp.peers()) == set(state), cfg_changes
    assert refused < 200, refused  # only the short frames the mutator makes
    # The generator must reach the interesting verdicts, not just "not Teredo".
    assert seen[R.DECAPSULATED] >= 100, seen
    missing = {R.RX_NOT_TEREDO, R.RX_DISABLED, R.RX_ORIGIN, R.RX_BUBBLE, R.RX_LINK_LOCAL_SOURCE,
               R.RX_MULTICAST_DESTINATION, R.RX_NOT_OUR_ADDRESS, R.RX_UNKNOWN_PEER, R.RX_UNTRUSTED_PEER,
               R.RX_MAPPING_MISMATCH, R.RX_IPV4_CHECKSUM, R.RX_IPV4_LENGTH, R.RX_UDP_LENGTH, R.RX_NOT_IPV6,
               R.RX_IPV6_LENGTH, R.RX_FRAGMENT} - set(seen)
    assert not missing, missing


# --------------------------------------------------------------------------- transmit


def tx_frames(rng: random.Random, n: int):
    destinations = [P.PEER_ADDRESS, P.NATIVE_ADDRESS, UNTRUSTED_ADDRESS, STALE_ADDRESS,
                    P.teredo_address(P.SERVER_IPV4, "203.0.113.77", 1)]
    for _ in range(n):
        size = rng.choice([rng.randrange(48, 400), rng.randrange(1200, 1500)])
        frame = bytearray(P.ipv6_frame(P.inner_ipv6(P.OUR_ADDRESS, rng.choice(destinations),
                                                    rng.randbytes(size - 48))))
        r = rng.random()
        if r < 0.1:
            frame[14] = rng.getrandbits(8)                           # version nibble
        elif r < 0.15:
            frame[12:14] = rng.choice([b"\x08\x00", b"\x08\x06"])   # not IPv6
        elif r < 0.25:
            frame[38:54] = rng.randbytes(16)                        # random destination
        yield bytes(frame)


def test_random_transmit(dp):
    rng = random.Random(f"{SEED}-tx")
    seen = Counter()
    for cfg_changes in [{}, {"mtu": 1400}, {"enabled": False}]:
        dp.prog.reset()
        dp.configure(**cfg_changes)
        setup_peers(dp)
        state = dp.peers()
        for frame in tx_frames(rng, 500):
            expected = model.tx(frame, dp.config, state, now_ns())
            out = dp.tc_tx(frame)
            context = f"{cfg_changes} frame={frame.hex()}"
            assert out.counted == {expected.key: 1}, context
            seen[expected] += 1
            if expected == R.ENCAPSULATED:
                assert out.retval == TC_ACT_REDIRECT, context
                peer = state[ipaddress.IPv6Address(frame[38:54])]
                assert_encapsulated(frame, out.frame, str(peer.mapped_ipv4), peer.mapped_port,
                                    ip_id=peer.tx_packets & 0xFFFF)
                state[peer.address] = dataclasses.replace(peer, tx_packets=peer.tx_packets + 1)
            else:
                assert out.retval == (TC_ACT_SHOT if expected.kind == Kind.DROP else TC_ACT_OK), context
                assert out.frame == frame, context
    assert seen[R.ENCAPSULATED] >= 100, seen
    missing = {R.TX_DISABLED, R.TX_NOT_IPV6, R.TX_MALFORMED, R.TX_TOO_BIG, R.TX_NO_PEER,
               R.TX_UNTRUSTED_PEER, R.TX_STALE_PEER} - set(seen)
    assert not missing, missing


def test_round_trip_many(dp):
    """Encapsulate random IPv6 packets as one client, decapsulate them as the peer."""
    from .test_roundtrip import as_the_peer, as_us, through_nat

    rng = random.Random(f"{SEED}-roundtrip")
    for _ in range(200):
        inner = P.inner_ipv6(P.OUR_ADDRESS, P.PEER_ADDRESS, rng.randbytes(rng.randrange(0, 1200)),
                             hlim=rng.randrange(1, 256))
        as_us(dp)
        wire = dp.tc_tx(P.ipv6_frame(inner))
        assert wire.counted == {"encapsulated": 1}
        as_the_peer(dp)
        back = dp.xdp(through_nat(wire.frame))
        assert back.counted == {"decapsulated": 1}
        assert back.frame[14:] == inner
