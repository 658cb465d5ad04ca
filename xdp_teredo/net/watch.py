"""Netlink notifications about one interface: its link going down or up, its IPv4
addresses coming and going.

The client runs over one NIC and binds its socket, and tells the XDP program, one
IPv4 address of it: when the NIC goes down and comes back, or DHCP (or a move to
another network) changes that address, the client must notice at once rather than
at the next refresh, 30 s later (docs/reliability.md). This module only says
"something about interface N changed"; the client then looks at the interface
again and decides (client/interface.py, `interface_changed`).

A raw NETLINK_ROUTE socket subscribed to RTMGRP_LINK and RTMGRP_IPV4_IFADDR,
non-blocking, for the client's selector. Messages are not decoded beyond the
interface index (the first field after the header in both ifinfomsg and
ifaddrmsg, rtnetlink(7)); an overrun (ENOBUFS: messages were lost) counts as a
change, since the lost ones may have been about our interface.
"""

from __future__ import annotations

import errno
import socket
import struct

from xdp_teredo.errors import RuntimeFailure

# uapi/linux/rtnetlink.h
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
_NLMSG_HDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")             # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")              # family, prefixlen, flags, scope, index
# Room for a burst of notifications (an interface going down sends a dozen).
_RCVBUF = 1 << 20


class InterfaceWatch:
    """Tells whether anything happened to interface `ifindex` since the last look."""

    def __init__(self, ifindex: int):
        self.ifindex = ifindex
        self.overruns = 0
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))
        except OSError as err:
            sock.close()
            raise RuntimeFailure(f"cannot watch the interface (netlink): {err}") from err
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def changed(self) -> bool:
        """Read every waiting notification; True if one concerned our interface."""
        ours = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return ours
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.overruns += 1
                    ours = True
                    continue
                raise RuntimeFailure(f"interface watch failed: {err}") from err
            ours = ours or any(index == self.ifindex for index in _indexes(data))

    def close(self) -> None:
        self._sock.close()


def _indexes(data: bytes):
    """The interface index of every link or IPv4 address message in one datagram."""
    at = 0
    while at + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, at)
        if length < _NLMSG_HDR.size:
            return
        body = at + _NLMSG_HDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFO.size <= len(data):
            yield _IFINFO.unpack_from(data, body)[2]
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and body + _IFADDR.size <= len(data):
            yield _IFADDR.unpack_from(data, body)[4]
        at += (length + 3) & ~3
