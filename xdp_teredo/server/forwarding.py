"""IPv4 forwarding on the server's device, for the XDP fast path's forwarding.

The program forwards bubbles and echo tests (RFC 4380 §5.3.1) to the next hop
bpf_fib_lookup gives, and the kernel answers an IPv4 lookup only for a device
with net.ipv4.conf.<dev>.forwarding=1 (net/core/filter.c, bpf_ipv4_fib_lookup:
BPF_FIB_LKUP_RET_FWD_DISABLED otherwise; docs/kernel-notes.md). So the daemon
turns it on for that one device while the program is attached and puts back what
it found at exit; with it off the program hands every such packet to the daemon
(server_forward_no_route), which sends it from Python as before.

What else it changes (docs/security.md): the kernel then also routes packets that
arrive on that device for an address that is not the host's. A server's uplink
only gets its own traffic from its gateway; --xdp-mode off leaves the setting alone.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..errors import RuntimeFailure


def _path(device: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{device}/forwarding"


def ipv4_forwarding(device: str) -> Optional[bool]:
    """Whether `device` forwards IPv4 (None: no such setting, e.g. the device is gone)."""
    try:
        with open(_path(device)) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def enable_ipv4_forwarding(device: str) -> Optional[Callable[[], None]]:
    """Turn IPv4 forwarding on for `device`; the undo, or None when it was on already.
    RuntimeFailure when the kernel refuses (not root, read-only /proc/sys)."""
    if ipv4_forwarding(device) is not False:
        return None
    try:
        with open(_path(device), "w") as f:
            f.write("1")
    except OSError as err:
        raise RuntimeFailure(f"cannot turn on net.ipv4.conf.{device}.forwarding for the XDP "
                             f"forwarding: {err.strerror or err}") from err

    def undo() -> None:
        try:
            with open(_path(device), "w") as f:
                f.write("0")
        except OSError:
            pass  # the device is gone, and its setting with it
    return undo
