#!/usr/bin/env python3
"""Write the fuzzing seed corpus: tests/fixtures/fuzz-corpus/*.json.

One file per seed: a Teredo UDP datagram as it travels (the UDP endpoints and the
payload in hex), with a line saying what it is. The fuzz tests start from these and
mutate them: the Python parsers (tests/unit/test_fuzz_parsers.py, hypothesis) and
the BPF programs (tests/bpf/test_fuzz_corpus.py, BPF_PROG_TEST_RUN).

Seeds: Miredo's own packets (tests/fixtures/miredo_captures.json, real captures),
then one of every kind of packet a Teredo node sends or receives (RFC 4380 §5.1.1
headers, §5.2 qualification, §2.8 bubbles, §5.2.9 connectivity tests, data), made
with our builders on documentation addresses. Inputs a fuzz run found worth keeping
are added by hand as `found-*.json` (README.md says how).

    python tools/gen_fuzz_corpus.py            # rewrite the generated seeds
    python tools/gen_fuzz_corpus.py --check    # exit 1 if they differ from the files
"""

import argparse
import ipaddress
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from xdp_teredo.teredo import (  # noqa: E402
    constants,  # noqa: E402
    encap,
    icmpv6,
)
from xdp_teredo.teredo.address import TeredoAddress  # noqa: E402
from xdp_teredo.teredo.packet import Ipv6Packet, build_bubble, upper_layer_checksum

CORPUS = os.path.join(ROOT, "tests", "fixtures", "fuzz-corpus")
CAPTURES = os.path.join(ROOT, "tests", "fixtures", "miredo_captures.json")

SERVER = ipaddress.IPv4Address("192.0.2.1")
CLIENT = ("198.51.100.1", 40000)      # a client's mapping (behind a NAT)
PEER = ("198.51.100.17", 50000)       # another client's
RELAY = ("192.0.2.20", 3544)
OUR = TeredoAddress(server=SERVER, flags=0x8000, port=CLIENT[1],
                    client=ipaddress.IPv4Address(CLIENT[0])).ipv6
THEIRS = TeredoAddress(server=SERVER, flags=0, port=PEER[1],
                       client=ipaddress.IPv4Address(PEER[0])).ipv6
NATIVE = ipaddress.IPv6Address("2001:db8:1::2")
NONCE = bytes.fromhex("0123456789abcdef")


def _tcp_syn(src, dst) -> bytes:
    """A TCP SYN to port 22 (no options), checksum filled in (RFC 9293 §3.1)."""
    import struct

    header = struct.pack("!HHIIBBHHH", 40001, 22, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    checksum = upper_layer_checksum(src, dst, 6, header)
    header = header[:16] + struct.pack("!H", checksum) + header[18:]
    return Ipv6Packet(src=src, dst=dst, next_header=6, hop_limit=64, payload=header).to_bytes()


def seeds():
    """(name, about, udp_src, udp_dst, payload) for every generated seed."""
    rs = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED)
    ra = icmpv6.build_router_advertisement(
        "fe80::8000:f227:3fff:fdfe", constants.LINK_LOCAL_RESTRICTED,
        prefixes=["2001:0:c000:201::/64"], mtu=1400, retrans_timer=2000)
    echo = icmpv6.build_echo_request(OUR, NATIVE, identifier=0x7E3E, sequence=1, data=NONCE)
    reply = icmpv6.build_echo_reply(NATIVE, OUR, identifier=0x7E3E, sequence=1, data=NONCE)
    origin_peer = encap.OriginIndication(port=PEER[1], address=PEER[0])
    origin_us = encap.OriginIndication(port=CLIENT[1], address=CLIENT[0])
    server = (str(SERVER), constants.TEREDO_PORT)
    yield ("rs-cone", "an RS from the cone link-local, with a nonce (§5.2.1)", CLIENT, server,
           encap.build_udp_payload(icmpv6.build_router_solicitation(constants.LINK_LOCAL_CONE),
                                   auth=encap.AuthHeader(nonce=NONCE)))
    yield ("rs-plain", "an RS without any header", CLIENT, server, rs)
    yield ("ra-with-mtu", "an RA: auth, origin, prefix and MTU options (§5.2.1)", server, CLIENT,
           encap.build_udp_payload(ra, auth=encap.AuthHeader(nonce=NONCE), origin=origin_us))
    yield ("ra-auth-id", "an RA whose auth header has a client id and auth value", server,
           CLIENT, encap.build_udp_payload(ra, auth=encap.AuthHeader(
               nonce=NONCE, confirmation=1, client_id=b"client", auth_value=b"\x11" * 20),
               origin=origin_us))
    yield ("bubble-direct", "a direct bubble from a peer (§2.8, §5.2.6)", PEER, CLIENT,
           build_bubble(THEIRS, OUR))
    yield ("bubble-indirect", "a bubble forwarded by the server: origin indication first",
           server, CLIENT, encap.build_udp_payload(build_bubble(THEIRS, OUR),
                                                   origin=origin_peer))
    yield ("echo-test", "a direct connectivity test through the server (§5.2.9)", CLIENT,
           server, echo)
    yield ("echo-test-reply", "its answer, from the relay near the native host", RELAY, CLIENT,
           reply)
    yield ("data-echo", "data from a trusted peer: an ICMPv6 echo request", PEER, CLIENT,
           icmpv6.build_echo_request(THEIRS, OUR, identifier=7, sequence=1, data=b"x" * 56))
    yield ("data-tcp-syn", "data: a TCP SYN from a peer (what the inbound guard looks at)",
           PEER, CLIENT, _tcp_syn(THEIRS, OUR))
    yield ("data-native-via-relay", "data from a native host, through a relay", RELAY, CLIENT,
           icmpv6.build_echo_reply(NATIVE, OUR, identifier=9, sequence=2, data=b"y" * 32))
    yield ("relay-from-client", "what a relay decapsulates: a client to a native host "
           "(§5.4.2)", CLIENT, RELAY,
           icmpv6.build_echo_request(OUR, NATIVE, identifier=5, sequence=5, data=b"z" * 24))


def entries():
    with open(CAPTURES) as f:
        for capture in json.load(f)["captures"]:
            yield {"name": capture["name"], "about": "Miredo 1.2.6, captured: " + capture["how"],
                   "udp_src": capture["udp_src"], "udp_dst": capture["udp_dst"],
                   "payload_hex": capture["payload_hex"]}
    for name, about, src, dst, payload in seeds():
        yield {"name": name, "about": about, "udp_src": [str(src[0]), src[1]],
               "udp_dst": [str(dst[0]), dst[1]], "payload_hex": payload.hex()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for entry in entries():
        path = os.path.join(CORPUS, entry["name"] + ".json")
        text = json.dumps(entry, indent=1) + "\n"
        if args.check:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(path)
            continue
        os.makedirs(CORPUS, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
