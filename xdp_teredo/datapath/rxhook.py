"""Which hook decapsulates the Teredo a client receives on its NIC: XDP or tc.

Both work on any device (bpf/client.c has xdp_teredo_rx + tc_teredo_ingress, and
the tc-only tc_teredo_rx); what differs is the cost, and it depends on the device
(docs/kernel-notes.md, "Helpers and hooks"):

- a driver with native XDP (a physical NIC, virtio_net): XDP runs on the driver's
  buffer before any skb exists: the cheapest place;
- a veth: native XDP makes veth copy every frame a local sender built into a page
  before the program runs (and linearises GSO super-packets), for all the host's
  traffic on that device, Teredo or not: tc sees the skb as it is, whole;
- a driver without native XDP: generic XDP runs on the skb, after the work XDP
  exists to avoid, and costs a copy more than tc: tc.

`--xdp-mode auto` (the default) takes what this module says; `native` and
`generic` force XDP, `off` forces tc. The choice and its reason are in `status`
("decap", "decap_why").

    choose("eth0", kind="veth", features=0x3f, mode="auto")
      -> ReceiveHook(hook="tc", xdp_mode=None, why="eth0 is a veth: ...")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .redirect import HOOK_TC, HOOK_XDP, XDP_ACT_BASIC, xdp_features

MODES = ("auto", "native", "generic", "off")


@dataclass(frozen=True)
class ReceiveHook:
    hook: str                 # HOOK_XDP or HOOK_TC
    xdp_mode: Optional[str]   # how XDP is attached ("auto", "native", "generic"); None for tc
    why: str


def choose(name: str, *, kind: Optional[str], features: Optional[int],
           mode: str = "auto") -> ReceiveHook:
    """The receive hook for device `name` (its IFLA_INFO_KIND, its NETDEV_XDP_ACT_*
    bits or None when the kernel cannot tell) under --xdp-mode `mode`. Pure."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "off":
        return ReceiveHook(HOOK_TC, None, "--xdp-mode off")
    if mode != "auto":
        return ReceiveHook(HOOK_XDP, mode, f"--xdp-mode {mode}")
    if kind == "veth":
        return ReceiveHook(HOOK_TC, None,
                           f"{name} is a veth: native XDP would copy each frame before the "
                           "program runs; tc keeps GSO packets whole")
    if features is None:
        # Linux before 6.3 does not publish xdp-features: keep what always worked.
        return ReceiveHook(HOOK_XDP, "auto",
                           f"the kernel does not say whether {name}'s driver has native XDP "
                           "(no xdp-features before Linux 6.3): XDP, native if it has")
    if features & XDP_ACT_BASIC:
        return ReceiveHook(HOOK_XDP, "native",
                           f"{name}'s driver has native XDP (xdp-features: basic): XDP runs "
                           "before an skb is built")
    return ReceiveHook(HOOK_TC, None,
                       f"{name}'s driver has no native XDP: generic XDP would run on the skb, "
                       "after the work XDP saves; tc costs less")


def for_device(ifindex: int, name: str, kind: Optional[str], mode: str = "auto") -> ReceiveHook:
    """choose() with the device's xdp-features read from the kernel (only for auto)."""
    features = None
    if mode == "auto" and kind != "veth":
        try:
            features = xdp_features(ifindex)
        except OSError:
            features = None
    return choose(name, kind=kind, features=features, mode=mode)
