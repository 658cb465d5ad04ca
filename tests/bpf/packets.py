"""Packets and addresses for the data path tests, built with scapy.

Deliberately independent of xdp_teredo.teredo (the code under test elsewhere):
the Teredo address layout is written out again here, from RFC 4380 §4.
"""

import ipaddress
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

MAC_NIC = "02:00:00:00:00:0a"
MAC_GW = "02:00:00:00:00:01"

# Us: a Teredo client behind a NAT. The socket is bound to LOCAL_IPV4:LOCAL_PORT,
# the NAT maps it to OUR_MAPPED_IPV4:OUR_MAPPED_PORT, server SERVER_IPV4.
LOCAL_IPV4 = "192.0.2.10"
LOCAL_PORT = 40001
SERVER_IPV4 = "192.0.2.1"
OUR_MAPPED_IPV4 = "203.0.113.5"
OUR_MAPPED_PORT = 40000


def teredo_address(server: str, mapped_ipv4: str, mapped_port: int, flags: int = 0) -> ipaddress.IPv6Address:
    """RFC 4380 §4: prefix | server | flags | ~port | ~client IPv4."""
    raw = (struct.pack("!I", 0x20010000) + ipaddress.IPv4Address(server).packed
           + struct.pack("!HH", flags, mapped_port ^ 0xFFFF)
           + bytes(b ^ 0xFF for b in ipaddress.IPv4Address(mapped_ipv4).packed))
    return ipaddress.IPv6Address(raw)


OUR_ADDRESS = teredo_address(SERVER_IPV4, OUR_MAPPED_IPV4, OUR_MAPPED_PORT, 0x8000)

# A Teredo peer (trusted by the control plane) and a native host behind a relay.
PEER_IPV4, PEER_PORT = "198.51.100.7", 50000
PEER_ADDRESS = teredo_address(SERVER_IPV4, PEER_IPV4, PEER_PORT)
RELAY_IPV4, RELAY_PORT = "198.51.100.20", 3544
NATIVE_ADDRESS = ipaddress.IPv6Address("2001:db8::1")


def inner_ipv6(src, dst, payload: bytes = b"ping" * 8, hlim: int = 64) -> bytes:
    """An ICMPv6 echo request, with a valid checksum."""
    return bytes(IPv6(src=str(src), dst=str(dst), hlim=hlim) / ICMPv6EchoRequest(id=7, seq=1, data=payload))


def bubble(src, dst) -> bytes:
    """RFC 4380 §2.8: IPv6 header, next header 59, payload length 0."""
    return bytes(IPv6(src=str(src), dst=str(dst), nh=59, plen=0))


def origin_indication(mapped_ipv4: str, mapped_port: int) -> bytes:
    """RFC 4380 §5.1.1: 0x0000, obfuscated port, obfuscated IPv4."""
    return (b"\x00\x00" + struct.pack("!H", mapped_port ^ 0xFFFF)
            + bytes(b ^ 0xFF for b in ipaddress.IPv4Address(mapped_ipv4).packed))


def teredo_frame(payload: bytes, *, src=PEER_IPV4, dst=LOCAL_IPV4, sport=PEER_PORT, dport=LOCAL_PORT,
                 ip_kwargs=None, udp_kwargs=None) -> bytes:
    """Ethernet | IPv4 | UDP | payload, checksums and lengths filled unless overridden."""
    ip = IP(src=str(src), dst=str(dst), ttl=55, id=0x1234, **(ip_kwargs or {}))
    udp = UDP(sport=sport, dport=dport, **(udp_kwargs or {}))
    return bytes(Ether(src=MAC_GW, dst=MAC_NIC) / ip / udp / Raw(payload))


def ipv6_frame(packet: bytes) -> bytes:
    """What a SCHED_CLS test run needs in front of an L3 packet: an Ethernet header."""
    return bytes(Ether(src=MAC_NIC, dst=MAC_GW, type=0x86DD)) + packet


def ipv4_checksum_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def fix_ipv4_checksum(frame: bytearray, l2: int = 14) -> None:
    """Recompute the IPv4 header checksum in place (after a deliberate edit)."""
    ihl = (frame[l2] & 0x0F) * 4
    frame[l2 + 10:l2 + 12] = b"\0\0"
    header = bytes(frame[l2:l2 + ihl])
    if len(header) < ihl or ihl < 20:
        return
    total = sum(struct.unpack(f"!{ihl // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    frame[l2 + 10:l2 + 12] = struct.pack("!H", ~total & 0xFFFF)
