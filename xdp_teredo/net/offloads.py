"""A veth NIC's transmit checksum offload, turned off while our client runs on it.

Why (docs/client.md, "Checksums over a veth"): TCP and UDP leave the stack with their
checksum left to the device (CHECKSUM_PARTIAL), and TCP as GSO super-packets; the
kernel finishes both in validate_xmit_skb, after the tun's tc egress program has
encapsulated the packet. A real NIC (or the kernel, for a NIC without the offload)
finishes them there. A veth claims the offloads and hands the packet on unfinished:
a Teredo peer that decapsulates in userspace on the same host (Miredo, in a
container or namespace next to us) reads an IPv6 packet with a wrong checksum.
No BPF helper can finish such a checksum for good: the skb keeps its offload state,
and any device further on that does finish it would overwrite what we wrote.

With the veth's tx checksum offload off, validate_xmit_skb on the veth finishes the
checksum and segments GSO packets in software, for every packet, before they leave:
what a NIC without offloads gets. The kernel drops the dependent TSO features with
it, and brings them back when the offload is turned on again. Only where our NIC is
a veth: a real NIC keeps its offloads (and GSO) as they are.

The legacy ethtool ioctl (ETHTOOL_GTXCSUM / ETHTOOL_STXCSUM), which every kernel
maps onto the "tx-checksumming" feature group; no ethtool binary is needed.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import Callable, Optional

from .. import log
from ..errors import RuntimeFailure

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
IFNAMSIZ = 16

_log = log.get("xdp_teredo.net")


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


def finish_checksums_on_veth(ifname: str, kind: Optional[str]) -> Optional[Callable[[], None]]:
    """Have a veth NIC finish checksums and segmentation itself while we run.

    Returns the undo (turns the offload back on), or None when there is nothing to
    undo: not a veth, or its offload was off already (someone else's choice, kept).
    """
    if kind != "veth":
        return None
    if not tx_checksum(ifname):
        _log.info("nic_offloads_kept", interface=ifname, tx_checksum="off")
        return None
    set_tx_checksum(ifname, False)
    _log.info("nic_offloads_off", interface=ifname, kind=kind,
              why="a veth passes checksums left to offload on unfinished; a userspace "
                  "Teredo peer on this host would read them so")

    def restore() -> None:
        set_tx_checksum(ifname, True)
        _log.info("nic_offloads_restored", interface=ifname)

    return restore
