"""A checksum veth: where packets whose checksum or segmentation a local sender left
to the device get finished by the kernel, so that tc can go on with them in the fast
path. Used by the relay and by the client.

No BPF helper finishes a CHECKSUM_PARTIAL checksum for good or changes the skb's
offload state (docs/kernel-notes.md). So tc sends such a packet out of one end of a
veth pair whose transmit path has no checksum offload: the kernel finishes the
checksum there and segments a GSO packet in software (validate_xmit_skb), and the
skbs leave CHECKSUM_NONE. They come back in at the other end, where tc takes them
like any finished packet:

- the relay (bpf/relay.c, `tc_csum_detour`): a Teredo client on the relay's own host
  (Miredo in a container next to it) sends through a veth, which passes its UDP
  checksum on unfinished; stripping the outer headers in tc would leave csum_start
  pointing into the moved MAC header. Decapsulated when it comes back in. XDP does
  not need it: a redirected XDP frame carries no offload state.
- the client (bpf/client.c, `tx_csum_detour`): on a veth NIC, the host's TCP (GSO,
  CHECKSUM_PARTIAL) would leave encapsulated but unfinished, and a Teredo peer on
  this host that decapsulates in userspace (Miredo) would read it so; on any NIC,
  UDP GSO (UDP_SEGMENT), which the kernel cannot cut once encapsulated.
  Encapsulated when it comes back in (tc_teredo_tx_back), so the NIC's own offloads
  stay as the kernel set them (docs/client.md, "Checksums over a veth").

The pair belongs to its daemon, named after its tunnel ("<tunnel>-ck0" sends,
"-ck1" takes back), and removed at exit; one that a killed daemon left is replaced
(its tc filter goes with it).
"""

from __future__ import annotations

from typing import Tuple

from .. import log
from ..errors import RuntimeFailure
from . import offloads

_log = log.get("xdp_teredo.net")


def names(tunnel: str) -> Tuple[str, str]:
    base = tunnel[:11]
    return f"{base}-ck0", f"{base}-ck1"


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)


def create(tunnel: str, *, owner: str, forwarding: bool = False,
           silent: bool = False) -> Tuple[int, int]:
    """Make the pair, up, offload off on the sending end; (out, in) ifindexes.

    owner: who it is for ("relay", "client"), for the messages. forwarding: turn
    IPv6 forwarding on at the end where packets come back in (the relay's fib
    lookup checks forwarding on the device a packet arrived on). silent: IPv6 off on
    both ends, so that the pair sends nothing of its own (DAD, router
    solicitations) for tc to take for a detoured packet; tc sees the detoured
    packets before any protocol does, so they still come back in.
    """
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
            raise RuntimeFailure(f"cannot create the {owner}'s checksum veth {out_name}: "
                                 f"{err}") from err
    try:
        offloads.set_tx_checksum(out_name, False)
        if forwarding:
            _sysctl(f"ipv6/conf/{in_name}/forwarding", "1")
        if silent:
            for name in (out_name, in_name):
                _sysctl(f"ipv6/conf/{name}/disable_ipv6", "1")
    except (OSError, RuntimeFailure) as err:
        remove(tunnel)
        raise RuntimeFailure(f"cannot set up the {owner}'s checksum veth {out_name}: "
                             f"{err}") from err
    _log.info("checksum_veth", owner=owner, out=out_name, back_in=in_name)
    return out_index, in_index


def remove(tunnel: str) -> bool:
    """Delete the pair (both ends go with one); whether there was one."""
    from pyroute2 import IPRoute

    out_name, _ = names(tunnel)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=out_name)
        for index in found:
            ipr.link("del", index=index)
    return bool(found)
