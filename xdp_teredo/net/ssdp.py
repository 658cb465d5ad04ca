"""SSDP discovery of an Internet Gateway Device (UPnP Device Architecture 1.1
§1.3): one M-SEARCH to 239.255.255.250:1900 from the NIC, the unicast answers'
LOCATION headers. Used by client/upnp.py (RFC 6081 §4.3); no per-packet work.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

SSDP_GROUP = ("239.255.255.250", 1900)
# The device types whose WANIPConnection service we can use, newest first.
SEARCH_TARGETS = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                  "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
# MX: the seconds a device may wait before answering (UDA §1.3.2: 1 to 5).
MX = 1
MAX_ANSWER = 2048


@dataclass(frozen=True)
class Answer:
    """One device's answer: where its description is, and what it answered for."""

    location: str
    st: str
    server: str = ""


def build_msearch(st: str, mx: int = MX) -> bytes:
    return ("M-SEARCH * HTTP/1.1\r\n"
            f"HOST: {SSDP_GROUP[0]}:{SSDP_GROUP[1]}\r\n"
            'MAN: "ssdp:discover"\r\n'
            f"MX: {mx}\r\n"
            f"ST: {st}\r\n\r\n").encode("ascii")


def parse_answer(data: bytes) -> Optional[Answer]:
    """An M-SEARCH answer (HTTP/1.1 200, headers in any case), or None for
    anything else: NOTIFYs, errors, an answer without an http LOCATION."""
    try:
        text = data[:MAX_ANSWER].decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    location = headers.get("location", "")
    parts = urlsplit(location)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return Answer(location=location, st=headers.get("st", ""), server=headers.get("server", ""))


def discover(local_ip: str, timeout: float) -> Optional[Answer]:
    """Search from `local_ip` (the NIC's address) and return the first IGD that
    answers within `timeout` seconds, or None. Blocking: run it off the loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((local_ip, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        for st in SEARCH_TARGETS:
            sock.sendto(build_msearch(st), SSDP_GROUP)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(MAX_ANSWER)
            except socket.timeout:
                return None
            answer = parse_answer(data)
            if answer is not None and answer.st in SEARCH_TARGETS:
                return answer
    finally:
        sock.close()
