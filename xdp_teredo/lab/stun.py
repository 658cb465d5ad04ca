"""A minimal STUN Binding responder (RFC 5389 §7.3, §15.2), for the lab only.

miniupnpd (lab/upnp.py) refuses port mappings while its WAN address lies in a
reserved range, and every public address of the lab is a documentation one
(RFC 5737). With `ext_perform_stun` it asks a STUN server instead: an address
the server sees unchanged, on every port, is public and unfiltered. This is
that server, on the lab's "public" host: it answers each Binding request with
XOR-MAPPED-ADDRESS from the socket it arrived on and ignores CHANGE-REQUEST, as
many public STUN servers do.

    python -m xdp_teredo.lab.stun ADDRESS PORT
"""

from __future__ import annotations

import socket
import struct
import sys

MAGIC = 0x2112A442
BINDING_REQUEST, BINDING_RESPONSE = 0x0001, 0x0101
XOR_MAPPED_ADDRESS = 0x0020


def answer(request: bytes, source: tuple) -> bytes | None:
    """The Binding success response to `request` from `source`, or None."""
    if len(request) < 20:
        return None
    kind, _length, _cookie = struct.unpack("!HHI", request[:8])
    if kind != BINDING_REQUEST:
        return None
    addr = struct.unpack("!I", socket.inet_aton(source[0]))[0]
    value = struct.pack("!BBHI", 0, 1, source[1] ^ (MAGIC >> 16), addr ^ MAGIC)
    attr = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return struct.pack("!HHI", BINDING_RESPONSE, len(attr), MAGIC) + request[8:20] + attr


def main(argv: list) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((argv[0], int(argv[1])))
    print("listening", flush=True)
    while True:
        data, source = sock.recvfrom(2048)
        reply = answer(data, source)
        if reply is not None:
            sock.sendto(reply, source)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
