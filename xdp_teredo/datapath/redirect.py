"""Can a device take XDP-redirected frames? And so: XDP or tc for the relay.

An XDP program can only redirect a frame into a device whose driver transmits
XDP frames (ndo_xdp_xmit). A veth does that only while its PEER has an XDP program
or GRO enabled; otherwise veth_xdp_xmit drops the frames without a trace
(docs/kernel-notes.md). Containers and our lab are made of veths whose other end the
relay does not control, so it must know before it redirects.

The kernel says so itself: since Linux 6.3 every device publishes its XDP
features over the "netdev" generic netlink family, and NETDEV_XDP_ACT_NDO_XMIT is
set exactly when redirecting into it works. For a veth the kernel recomputes the
bit whenever its peer gains or loses an XDP program or GRO (veth_set_xdp_features),
even when that peer lives in another network namespace. So:

    check_egress(ifindex)  -> EgressCheck: takes_redirects True / False / None (cannot tell)
    choose_hooks(...)      -> per ingress device: "xdp" or "tc", and why (pure)

Raw generic netlink here (a dozen lines of struct) rather than a pyroute2 class:
pyroute2 has no "netdev" family, and this runs once per device every few seconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional

# uapi/linux/netlink.h, genetlink.h
_NETLINK_GENERIC = 16
_NLM_F_REQUEST = 0x1
_NLMSG_ERROR = 2
_GENL_ID_CTRL = 0x10
_CTRL_CMD_GETFAMILY = 3
_CTRL_ATTR_FAMILY_ID = 1
_CTRL_ATTR_FAMILY_NAME = 2
_NLMSGHDR = struct.Struct("=IHHII")
_GENLMSGHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
# uapi/linux/netdev.h
_NETDEV_FAMILY = b"netdev\0"
_NETDEV_CMD_DEV_GET = 1
_NETDEV_A_DEV_IFINDEX = 1
_NETDEV_A_DEV_XDP_FEATURES = 3

# enum netdev_xdp_act
XDP_ACT_BASIC = 1 << 0
XDP_ACT_REDIRECT = 1 << 1
XDP_ACT_NDO_XMIT = 1 << 2       # the device transmits XDP-redirected frames
XDP_ACT_XSK_ZEROCOPY = 1 << 3
XDP_ACT_HW_OFFLOAD = 1 << 4
XDP_ACT_RX_SG = 1 << 5
XDP_ACT_NDO_XMIT_SG = 1 << 6

HOOK_XDP = "xdp"
HOOK_TC = "tc"
PATHS = ("auto", HOOK_XDP, HOOK_TC)


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> Dict[int, bytes]:
    out = {}
    while len(data) >= _NLATTR.size:
        length, kind = _NLATTR.unpack_from(data)
        if length < _NLATTR.size:
            break
        out[kind & 0x3FFF] = data[_NLATTR.size:length]  # without NLA_F_NESTED / BYTEORDER
        data = data[(length + 3) & ~3:]
    return out


def _request(sock: socket.socket, family: int, command: int, attrs: bytes) -> Dict[int, bytes]:
    body = _GENLMSGHDR.pack(command, 1, 0) + attrs
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), family, _NLM_F_REQUEST, 1, 0) + body)
    data = sock.recv(65536)
    length, kind, _, _, _ = _NLMSGHDR.unpack_from(data)
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, _NLMSGHDR.size)[0]
        raise OSError(code, os.strerror(code))
    return _attrs(data[_NLMSGHDR.size + _GENLMSGHDR.size:length])


def xdp_features(ifindex: int) -> Optional[int]:
    """The device's NETDEV_XDP_ACT_* bits, or None when the kernel cannot tell
    (no "netdev" generic netlink family: Linux before 6.3). OSError (ENODEV) for a
    device that does not exist."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_GENERIC)
    try:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        try:
            family = _request(sock, _GENL_ID_CTRL, _CTRL_CMD_GETFAMILY,
                              _attr(_CTRL_ATTR_FAMILY_NAME, _NETDEV_FAMILY))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        family_id = struct.unpack("=H", family[_CTRL_ATTR_FAMILY_ID][:2])[0]
        reply = _request(sock, family_id, _NETDEV_CMD_DEV_GET,
                         _attr(_NETDEV_A_DEV_IFINDEX, struct.pack("=I", ifindex)))
        raw = reply.get(_NETDEV_A_DEV_XDP_FEATURES)
        return struct.unpack("=Q", raw[:8])[0] if raw else None
    finally:
        sock.close()


@dataclass(frozen=True)
class EgressCheck:
    """What is known about one device as a target of XDP redirects."""

    ifindex: int
    name: str
    kind: Optional[str]          # link kind ("veth", "bond", ...), None for a plain NIC
    features: Optional[int]      # NETDEV_XDP_ACT_* bits, None: the kernel cannot tell

    @property
    def takes_redirects(self) -> Optional[bool]:
        """True/False as the kernel says; None when it cannot say."""
        if self.features is None:
            return None
        return bool(self.features & XDP_ACT_NDO_XMIT)

    def explain(self) -> str:
        """Why it does or does not take XDP-redirected frames, for logs and status."""
        if self.takes_redirects:
            return f"{self.name} takes XDP-redirected frames (xdp-features: ndo-xmit)"
        if self.takes_redirects is None:
            return (f"the kernel does not say whether {self.name} takes XDP-redirected frames "
                    "(no xdp-features before Linux 6.3)")
        if self.kind == "veth":
            return (f"{self.name} is a veth whose peer has neither an XDP program nor GRO on: "
                    "XDP-redirected frames would be dropped there (`ethtool -K PEER gro on` "
                    "on the other end enables them)")
        return f"the driver of {self.name} cannot transmit XDP-redirected frames"


def link_kind(ifindex: int) -> Optional[str]:
    """IFLA_INFO_KIND of a device (veth, bond, ...), None for a physical NIC."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = ipr.get_links(ifindex)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def check_egress(ifindex: int, name: str) -> EgressCheck:
    """Ask the kernel about one device of this network namespace."""
    return EgressCheck(ifindex=ifindex, name=name, kind=link_kind(ifindex),
                       features=xdp_features(ifindex))


@dataclass(frozen=True)
class HookChoice:
    """Which program serves packets arriving on one device, and why."""

    ifindex: int
    name: str
    hook: str       # HOOK_XDP or HOOK_TC
    why: str
    # tc because XDP would be unsafe there (a warning: the fix is on a device the
    # relay does not own), not because tc is the better hook (a veth).
    fallback: bool = False

    def as_dict(self) -> dict:
        return {"interface": self.name, "ifindex": self.ifindex, "hook": self.hook, "why": self.why}


def choose_hooks(ipv4: EgressCheck, ipv6: EgressCheck, *, ipv4_forwarding: bool,
                 path: str = "auto") -> List[HookChoice]:
    """The relay's hook on each of its devices (one entry per distinct device).

    Packets arriving on the IPv4 side leave, decapsulated, through the IPv6 side;
    packets arriving on the IPv6 side leave, encapsulated, through the IPv4 side.
    So XDP on a device is safe when the device its fast path sends to takes
    XDP-redirected frames, and worth it when the device is not a veth; otherwise tc (bpf_redirect_neigh into the stack's
    transmit path, which works on any device). XDP encapsulation also needs the
    kernel's IPv4 fib lookup, which refuses to work unless IPv4 forwarding is on
    for the IPv4 side (net.ipv4.conf.IF4.forwarding). `path` "xdp" or "tc" forces
    one hook everywhere (the devmap still keeps XDP from redirecting into a device
    that cannot take it: such packets take the slow path).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}")
    if path != "auto":
        why = f"--path {path}"
        if ipv4.ifindex == ipv6.ifindex:
            return [HookChoice(ipv4.ifindex, ipv4.name, path, why)]
        return [HookChoice(ipv4.ifindex, ipv4.name, path, why),
                HookChoice(ipv6.ifindex, ipv6.name, path, why)]

    def decap_ok():   # arriving on IF4, leaving by IF6
        if ipv6.takes_redirects:
            return True, f"decapsulated packets leave by {ipv6.name}: {ipv6.explain()}"
        return False, f"decapsulated packets leave by {ipv6.name}: {ipv6.explain()}"

    def encap_ok():   # arriving on IF6, leaving by IF4
        if not ipv4.takes_redirects:
            return False, f"encapsulated packets leave by {ipv4.name}: {ipv4.explain()}"
        if not ipv4_forwarding:
            return False, (f"bpf_fib_lookup refuses IPv4 lookups while "
                           f"net.ipv4.conf.{ipv4.name}.forwarding=0 (set it to 1 for XDP "
                           "encapsulation)")
        return True, f"encapsulated packets leave by {ipv4.name}: {ipv4.explain()}"

    def on_veth(device):   # the device the hook itself sits on
        # As the client's receive hook (datapath/rxhook.py): XDP on a veth makes its
        # peer give up GSO (every super-packet is segmented before it crosses) and
        # copies each frame a local sender built; tc takes the skb whole. Measured
        # across the relay: tc faster for TCP (4x) and for 1200-byte UDP (docs/relay.md).
        return (f"{device.name} is a veth: XDP there would make its peer segment every GSO "
                "packet and copy each frame; tc keeps them whole (--path xdp forces XDP)")

    if ipv4.ifindex == ipv6.ifindex:
        if ipv4.kind == "veth":
            return [HookChoice(ipv4.ifindex, ipv4.name, HOOK_TC, on_veth(ipv4))]
        (d_ok, d_why), (e_ok, e_why) = decap_ok(), encap_ok()
        if d_ok and e_ok:
            return [HookChoice(ipv4.ifindex, ipv4.name, HOOK_XDP, d_why)]
        return [HookChoice(ipv4.ifindex, ipv4.name, HOOK_TC, e_why if d_ok else d_why,
                           fallback=True)]
    choices = []
    for device, (ok, why) in ((ipv4, decap_ok()), (ipv6, encap_ok())):
        if device.kind == "veth":
            choices.append(HookChoice(device.ifindex, device.name, HOOK_TC, on_veth(device)))
            continue
        choices.append(HookChoice(device.ifindex, device.name, HOOK_XDP if ok else HOOK_TC, why,
                                  fallback=not ok))
    return choices


def xdp_targets(checks: List[EgressCheck], path: str = "auto") -> List[int]:
    """The devices that belong in the devmap: those that take redirects now (with
    --path xdp also those the kernel cannot tell about: the user said so)."""
    return [c.ifindex for c in checks
            if c.takes_redirects or (path == HOOK_XDP and c.takes_redirects is None)]
