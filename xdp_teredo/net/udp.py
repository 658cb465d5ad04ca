"""The control plane's UDP/IPv4 socket: the Teredo client's one port.

Qualification, bubbles and everything the XDP program leaves to the slow path go
out and come in through this socket. Its bound port is the one our NAT maps, so
the data path must use the same one (`local_address`).

Options as Miredo's teredo_socket (libteredo/teredo.c): non-blocking; DF cleared
(IP_PMTUDISC_DONT) so that a 1280-byte IPv6 packet plus 28 bytes of headers can be
fragmented on a smaller IPv4 path rather than dropped; multicast TTL 1 for local
discovery (RFC 4380 §2.17, the group is link-local).

Sending never raises for what the network decides: a destination that is not
global unicast IPv4 (RFC 4380 §5.2.3; Miredo refuses these before every send) is
refused and counted, and a transient send error is counted; both return False.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import socket
from typing import Optional, Tuple

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.teredo.ipv4 import IPv4Like, as_ipv4, is_global_unicast

# Named refusal reasons (the keys of TeredoSocket.refusals).
REFUSED_NOT_GLOBAL = "not_global_unicast"   # RFC 4380 §5.2.3 / Miredo's v4global check
REFUSED_SEND_ERROR = "send_error"           # ENETUNREACH, ENOBUFS, a firewall's EPERM...

# The largest UDP/IPv4 payload (65535 - 20 - 8); a datagram is never cut short.
_MAX_DATAGRAM = 65507
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)

Endpoint = Tuple[ipaddress.IPv4Address, int]


class TeredoSocket:
    """A bound, non-blocking UDP/IPv4 socket with counted refusals.

    TeredoSocket(bind_address="0.0.0.0", bind_port=0, device=None): port 0 lets the
    kernel pick (Miredo's BindPort default); device binds to one NIC (SO_BINDTODEVICE,
    needs CAP_NET_RAW, so do it before dropping privileges).
    """

    def __init__(self, bind_address: IPv4Like = "0.0.0.0", bind_port: int = 0, *,
                 device: Optional[str] = None):
        address = as_ipv4(bind_address)
        if not 0 <= bind_port <= 0xFFFF:
            raise ValueError(f"port out of range: {bind_port}")
        self.refusals: collections.Counter = collections.Counter()
        # Non-global IPv4 networks we may send to all the same: our own link's, and
        # the local discovery group, when client/discovery.py runs (RFC 4380 §5.2.8).
        self.also_allowed: tuple = ()
        self.sent = 0
        self.received = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            self._sock.setblocking(False)
            if device:
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE,
                                      device.encode() + b"\0")
            self._sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            self._sock.bind((str(address), bind_port))
        except OSError as err:
            self._sock.close()
            where = f"{address}:{bind_port}" + (f" on {device}" if device else "")
            raise RuntimeFailure(f"cannot bind the Teredo UDP socket to {where}: "
                                 f"{err.strerror or err}") from err

    # -- what others need to know ---------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def local_address(self) -> Endpoint:
        """The bound (IPv4, port); the port is the kernel's pick when bound to 0."""
        host, port = self._sock.getsockname()
        return ipaddress.IPv4Address(host), port

    @property
    def closed(self) -> bool:
        return self._sock.fileno() == -1

    # -- I/O ----------------------------------------------------------------------

    def sendto(self, payload: bytes, address: IPv4Like, port: int) -> bool:
        """Send one datagram; False (and a counted refusal) if it was not sent."""
        destination = as_ipv4(address)
        if not is_global_unicast(destination) and \
                not any(destination in net for net in self.also_allowed):
            self.refusals[REFUSED_NOT_GLOBAL] += 1
            return False
        try:
            self._sock.sendto(payload, (str(destination), port))
        except OSError as err:
            if err.errno == errno.EBADF:
                raise RuntimeFailure("Teredo UDP socket used after close") from err
            # Transient by nature (route gone, buffer full, firewall): the protocol's
            # timers retry; the loop must not die on them.
            self.refusals[REFUSED_SEND_ERROR] += 1
            return False
        self.sent += 1
        return True

    def recvfrom(self) -> Optional[Tuple[bytes, ipaddress.IPv4Address, int]]:
        """One waiting datagram as (payload, source IPv4, source port), or None."""
        try:
            payload, (host, port) = self._sock.recvfrom(_MAX_DATAGRAM)
        except BlockingIOError:
            return None
        except OSError as err:
            # An unconnected UDP socket without IP_RECVERR gets no ICMP errors, so
            # anything here is the socket itself failing.
            raise RuntimeFailure(f"Teredo UDP socket receive failed: "
                                 f"{err.strerror or err}") from err
        self.received += 1
        return payload, ipaddress.IPv4Address(host), port

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "TeredoSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<TeredoSocket closed>"
        host, port = self.local_address
        return f"<TeredoSocket {host}:{port}>"
