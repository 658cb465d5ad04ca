"""The BPF programs fed mutated captures, through BPF_PROG_TEST_RUN.

Where test_fuzz.py makes packets up, this starts from the seed corpus
(tests/fixtures/fuzz-corpus/: real Miredo captures and one of every kind of Teredo
packet): each seed, wrapped in Ethernet/IPv4/UDP towards our address and port, and
mutated (its payload, then the frame: bytes, lengths, truncation, fragments).

- client receive programs (XDP, tc-only): the one reason counted must be the
  reference model's (model.py), a packet changes only when decapsulated and then
  exactly as the model says, and what the program learns is what the model learns;
- the client's transmit program: the same, for the seeds' IPv6 packets leaving;
- the relay's programs: they never fail, return only the actions they may, and
  count exactly one reason per packet.

Seeded, so a failure reproduces (XDP_TEREDO_FUZZ_SEED). Short by default; long
runs: XDP_TEREDO_FUZZ_ITERATIONS=100000 (per program; the corpus README says what
the last long run found).
"""

import glob
import ipaddress
import json
import os
import random
from collections import Counter

import pytest

from xdp_teredo.datapath import PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import Kind
from xdp_teredo.teredo.address import TeredoAddress

from . import model
from . import packets as P
from .conftest import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS
from .test_fuzz import _mutate
from .test_relay import RELAY_IPV4, RELAY_PORT, XDP_REDIRECT
from .test_relay import relay, relay_ns, relay_program  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.bpf]

R = Reason
CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "fuzz-corpus")
SEED = int(os.environ.get("XDP_TEREDO_FUZZ_SEED", "4380"))
ITERATIONS = int(os.environ.get("XDP_TEREDO_FUZZ_ITERATIONS", "1000"))

# The addresses the corpus is made with (tools/gen_fuzz_corpus.py): our Teredo
# address there, and a peer that becomes trusted, so that seeds reach every verdict.
CORPUS_OURS = TeredoAddress(server=ipaddress.IPv4Address("192.0.2.1"), flags=0x8000, port=40000,
                            client=ipaddress.IPv4Address("198.51.100.1")).ipv6
CORPUS_PEER = ("198.51.100.17", 50000)
CORPUS_PEER_ADDRESS = TeredoAddress(server=ipaddress.IPv4Address("192.0.2.1"), flags=0,
                                    port=CORPUS_PEER[1],
                                    client=ipaddress.IPv4Address(CORPUS_PEER[0])).ipv6


def corpus():
    seeds = []
    for path in sorted(glob.glob(os.path.join(CORPUS_DIR, "*.json"))):
        with open(path) as f:
            entry = json.load(f)
        seeds.append((entry["name"], tuple(entry["udp_src"]), bytes.fromhex(entry["payload_hex"])))
    return seeds


SEEDS = corpus()


def _mutate_payload(rng: random.Random, payload: bytes) -> bytes:
    out = bytearray(payload)
    for _ in range(rng.randrange(0, 3)):
        what = rng.random()
        if what < 0.4 and out:
            out[rng.randrange(len(out))] = rng.getrandbits(8)
        elif what < 0.6:
            out = out[:rng.randrange(len(out) + 1)]
        elif what < 0.8:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randrange(1, 12))
        elif out:
            # An indicator header stacked in front (§5.1.1).
            out[0:0] = rng.choice([b"\x00\x00" + rng.randbytes(6), b"\x00\x01\x00\x00" + bytes(9)])
    return bytes(out)


def frames(rng: random.Random, n: int, *, dst: str, dport: int):
    """`n` frames from the corpus: half as captured, half mutated at both levels."""
    for i in range(n):
        _, (src, sport), payload = SEEDS[i % len(SEEDS)]
        if rng.random() < 0.5:
            payload = _mutate_payload(rng, payload)
        frame = P.teredo_frame(payload, src=src, sport=sport, dst=dst, dport=dport)
        yield _mutate(rng, frame) if rng.random() < 0.5 else frame


def test_the_corpus_covers_every_kind_of_seed():
    names = {name for name, _, _ in SEEDS}
    assert {"miredo_client_rs", "miredo_server_ra", "bubble-indirect", "data-echo"} <= names


@pytest.mark.parametrize("program", ["xdp", "tc_rx"])
def test_mutated_captures_through_the_receive_programs(dp, program):
    rng = random.Random(f"{SEED}-corpus-{program}")
    dp.configure(teredo_address=CORPUS_OURS)
    dp.add_peer(CORPUS_PEER_ADDRESS, *CORPUS_PEER)
    dp.add_peer(ipaddress.IPv6Address("2001:db8:1::2"), "192.0.2.20", 3544,
                flags=PeerFlag.TRUSTED | PeerFlag.RELAY)
    state = dp.peers()
    seen = Counter()
    for frame in frames(rng, ITERATIONS, dst=P.LOCAL_IPV4, dport=P.LOCAL_PORT):
        expected = model.rx(frame, dp.config, state)
        try:
            out = dp.xdp(frame) if program == "xdp" else dp.tc_rx(frame)
        except OSError:
            # SCHED_CLS test runs refuse frames too short for an IPv4 header.
            assert program == "tc_rx" and len(frame) < 34, frame.hex()
            continue
        context = f"{program} frame={frame.hex()}"
        assert out.counted == {expected.reason.key: 1}, context
        seen[expected.reason] += 1
        if program == "xdp":
            assert out.retval == (XDP_DROP if expected.reason.kind == Kind.DROP else XDP_PASS), context
        else:
            assert out.retval in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT), context
        if expected.reason == R.DECAPSULATED:
            assert out.frame == model.decapsulated_xdp(frame), context
            if expected.learn is not None:
                state[expected.learn.address] = expected.learn
        else:
            assert out.frame == frame, context
    assert set(dp.peers()) == set(state)
    # The seeds reach the verdicts that matter, not only "not Teredo".
    assert {R.DECAPSULATED, R.RX_AUTH, R.RX_ORIGIN, R.RX_BUBBLE} <= set(seen), seen
    print(f"\n{program}: {ITERATIONS} frames from {len(SEEDS)} seeds: "
          f"{dict(sorted((r.key, n) for r, n in seen.items()))}")


def test_the_seeds_ipv6_packets_through_the_transmit_program(dp):
    rng = random.Random(f"{SEED}-corpus-tx")
    dp.configure(teredo_address=CORPUS_OURS)
    dp.add_peer(CORPUS_PEER_ADDRESS, *CORPUS_PEER)
    packets = [p[p.find(b"\x60"):] if p[:1] == b"\x00" else p for _, _, p in SEEDS]
    seen = Counter()
    for i in range(ITERATIONS // 2):
        packet = bytearray(_mutate_payload(rng, packets[i % len(packets)]))
        if len(packet) >= 40 and rng.random() < 0.5:
            packet[24:40] = CORPUS_PEER_ADDRESS.packed  # to the trusted peer
        frame = P.ipv6_frame(bytes(packet))
        peers = dp.peers()
        expected = model.tx(frame, dp.config, peers, now_ns())
        try:
            out = dp.tc_tx(frame)
        except OSError:
            # SCHED_CLS test runs refuse IPv6 frames shorter than an IPv6 header.
            assert len(frame) < 14 + 40, frame.hex()
            continue
        assert out.counted == {expected.key: 1}, frame.hex()
        seen[expected] += 1
        if expected != R.ENCAPSULATED:
            assert out.frame == frame and out.retval in (TC_ACT_OK, TC_ACT_SHOT), frame.hex()
    assert R.ENCAPSULATED in seen, seen


@pytest.mark.parametrize("hook", ["xdp", "tc"])
def test_mutated_captures_through_the_relay(relay, hook):  # noqa: F811 (fixture)
    rng = random.Random(f"{SEED}-corpus-relay-{hook}")
    run = relay.xdp if hook == "xdp" else relay.tc
    allowed = {XDP_PASS, XDP_DROP, XDP_REDIRECT} if hook == "xdp" else \
        {TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT}
    seen = Counter()
    for frame in frames(rng, ITERATIONS // 2, dst=RELAY_IPV4, dport=RELAY_PORT):
        try:
            out = run(frame)
        except OSError:
            assert hook == "tc" and len(frame) < 34, frame.hex()
            continue
        assert sum(out.counted.values()) == 1, (out.counted, frame.hex())
        assert out.retval in allowed, frame.hex()
        seen.update(out.counted)
    assert seen["relay_source_mismatch"] or seen["decapsulated"], seen
