"""The relay's checksum veth: where a same-host client's pending UDP checksums get
finished, so that tc can decapsulate those packets in the fast path too.

A Teredo client on the relay's own host (Miredo in a container next to it) sends
through a veth, which passes its UDP checksum on unfinished (CHECKSUM_PARTIAL).
Stripping the outer headers in tc would leave csum_start pointing into the moved
MAC header, and any device further on that finishes checksums would write into the
Ethernet type; no BPF helper can change that state. So tc sends such a packet out of
one end of this veth pair, whose transmit path has no checksum offload: the kernel
finishes the checksum there (validate_xmit_skb) and the skb leaves CHECKSUM_NONE. It
comes back in at the other end, where the relay's tc program decapsulates it like
any packet from another machine (bpf/relay.c, `relay_csum_detour`). XDP does not
need it: a redirected XDP frame carries no offload state.

The pair is the relay's own, named after its tunnel ("<tunnel>-ck0" / "-ck1"), and
removed at exit; one that a killed relay left is replaced.
"""

from __future__ import annotations

from typing import Tuple

from .. import log
from ..errors import RuntimeFailure
from ..net import offloads

_log = log.get("xdp_teredo.relay")


def names(tunnel: str) -> Tuple[str, str]:
    base = tunnel[:11]
    return f"{base}-ck0", f"{base}-ck1"


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)


def create(tunnel: str) -> Tuple[int, int]:
    """Make the pair, up, offload off on the sending end; (out, in) ifindexes."""
    from pyroute2 import IPRoute, NetlinkError

    out_name, in_name = names(tunnel)
    with IPRoute() as ipr:
        try:
            for stale in ipr.link_lookup(ifname=out_name):
                ipr.link("del", index=stale)
            ipr.link("add", ifname=out_name, kind="veth", peer=in_name)
            out_index = ipr.link_lookup(ifname=out_name)[0]
            in_index = ipr.link_lookup(ifname=in_name)[0]
            for index in (out_index, in_index):
                ipr.link("set", index=index, state="up")
        except (NetlinkError, IndexError) as err:
            raise RuntimeFailure(f"cannot create the relay's checksum veth {out_name}: "
                                 f"{err}") from err
    try:
        offloads.set_tx_checksum(out_name, False)
        # What comes back in is decapsulated and forwarded from there (the fib
        # lookup checks forwarding on the device a packet arrived on).
        _sysctl(f"ipv6/conf/{in_name}/forwarding", "1")
    except (OSError, RuntimeFailure) as err:
        remove(tunnel)
        raise RuntimeFailure(f"cannot set up the relay's checksum veth {out_name}: {err}") from err
    _log.info("checksum_veth", out=out_name, back_in=in_name)
    return out_index, in_index


def remove(tunnel: str) -> None:
    from pyroute2 import IPRoute

    out_name, _ = names(tunnel)
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=out_name):
            ipr.link("del", index=index)
