"""A device's transmit checksum offload, read and set by the legacy ethtool ioctl.

Used for the sending end of a checksum veth (net/csum_veth.py): with its tx checksum
offload off, validate_xmit_skb finishes checksums and segments GSO packets in
software for what is sent out of it (the kernel drops the dependent TSO features
with it). The client no longer touches its NIC's offloads (docs/client.md,
"Checksums over a veth").

ETHTOOL_GTXCSUM / ETHTOOL_STXCSUM, which every kernel maps onto the
"tx-checksumming" feature group; no ethtool binary is needed.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from ..errors import RuntimeFailure

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
IFNAMSIZ = 16


class _EthtoolValue(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32)]


def _ethtool(ifname: str, cmd: int, data: int = 0) -> int:
    value = _EthtoolValue(cmd, data)
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode()[:IFNAMSIZ - 1],
                        ctypes.addressof(value))
    ifreq += b"\0" * (40 - len(ifreq))  # sizeof(struct ifreq)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return value.data


def tx_checksum(ifname: str) -> bool:
    """Whether `ifname` leaves transmit checksums to the device."""
    try:
        return bool(_ethtool(ifname, ETHTOOL_GTXCSUM))
    except OSError as err:
        raise RuntimeFailure(f"reading the tx checksum offload of {ifname}: {err}") from err


def set_tx_checksum(ifname: str, on: bool) -> None:
    try:
        _ethtool(ifname, ETHTOOL_STXCSUM, int(on))
    except OSError as err:
        raise RuntimeFailure(f"turning the tx checksum offload of {ifname} "
                             f"{'on' if on else 'off'}: {err}") from err
