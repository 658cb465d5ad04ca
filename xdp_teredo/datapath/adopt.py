"""Finding the data path a previous control plane left running, to adopt it.

A client or relay (crash-only, docs/reliability.md) leaves its programs attached
when it dies (SIGKILL, a crash) or hands over (the client's SIGHUP with --restart-safe):
the kernel keeps running them, they keep their maps alive, and a trusted peer's
packets go on flowing with no process around. The next instance finds them here:

- the programs, from the hooks themselves: XDP on the NIC (IFLA_XDP_PROG_ID), our
  tc filters (priority 3544, handle 1: hooks.TC_PRIO) on the NIC's ingress and the
  tun's egress (TCA_BPF_ID), recognised by their names;
- their maps, from the programs (bpf_prog_info.map_ids), opened by id.

Why not pinned maps: the next instance would have to see the bpffs the last one
pinned on, and `ip netns exec` gives every command a fresh /sys, while a bpffs
mounted by a command anywhere else is a new, empty instance private to it
(docs/datapath.md, "the rendezvous"). The attached programs, on the other hand, are
there exactly when there is something to adopt, whatever the mount namespace.
Opening maps by id needs CAP_SYS_ADMIN, which set-up has (it runs as root).

    running = adopt.find(nic_ifindex, tun_ifindex)       # None: nothing of ours
    prog = ClientDatapath.compile(maps=adopt.open_maps(running))
    att = prog.adopt(running)                            # client.py

The relay's the same way (find_relay: one program per device, XDP or tc ingress;
RelayDatapath.adopt): its peer table outlives a killed relay, so the clients it
knew keep their fast path instead of being learned again.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from typing import Dict, Optional

from ..errors import RuntimeFailure
from . import libbpf
from .libbpf import MapFd
from .client import PROGRAMS, RX_PROGRAMS
from .hooks import TC_EGRESS, TC_INGRESS, TC_PRIO

# uapi/linux/pkt_cls.h: the attached program's id in a cls_bpf filter dump.
# pyroute2 0.9 does not decode it, so it is read from the raw attributes.
_TCA_BPF_ID = 11
_NLA_TYPE_MASK = 0x3FFF
# IFLA_XDP_ATTACHED as pyroute2 names it -> our mode name (hooks.XDP_ATTACHED).
_XDP_MODES = {"xdp": "native", "xdpgeneric": "generic"}
# The kernel keeps 15 characters of a program's name.
_NAMES = {func[:15]: key for key, (func, _) in PROGRAMS.items()}


@dataclasses.dataclass(frozen=True)
class Hooked:
    """One of our programs where a previous instance attached it."""

    program: str                 # our name for it: a key of client.PROGRAMS
    ifindex: int
    info: libbpf.ProgInfo


@dataclasses.dataclass(frozen=True)
class Running:
    """A complete data path of ours, attached to one NIC and one tun."""

    nic_ifindex: int
    tun_ifindex: int
    ingress: str                 # "xdp" (XDP + tc ingress) or "tc" (tc only)
    xdp_mode: Optional[str]      # "native" / "generic" with ingress "xdp"
    programs: Dict[str, Hooked]  # client.PROGRAMS key -> where it is
    map_ids: Dict[str, int]      # map name (15 characters, as the kernel keeps it) -> id

    def describe(self) -> dict:
        return {"ingress": self.ingress, "xdp": self.xdp_mode,
                "programs": {k: h.info.id for k, h in self.programs.items()},
                "maps": dict(self.map_ids)}


def find(nic_ifindex: int, tun_ifindex: int, *, netns: Optional[str] = None) -> Optional[Running]:
    """The data path attached to these devices, None if nothing of ours is there.

    RuntimeFailure when only part of one is there (someone removed a hook), or the
    hooks hold programs of two different data paths (different maps): adopting
    either would be wrong; `xdp-teredo detach IFACE` removes them.
    """
    from pyroute2 import IPRoute, NetlinkError

    try:
        ipr = IPRoute(netns=netns) if netns else IPRoute()
    except Exception as err:
        raise RuntimeFailure(f"cannot open netlink (netns {netns}): {err}") from err
    found: Dict[str, Hooked] = {}
    xdp_mode = None
    try:
        for ifindex, parent in ((nic_ifindex, TC_INGRESS), (tun_ifindex, TC_EGRESS)):
            for key, prog_id in _our_filters(ipr, ifindex, parent):
                found[key] = Hooked(key, ifindex, libbpf.prog_info(prog_id))
        try:
            link = ipr.get_links(nic_ifindex)[0]
        except (NetlinkError, IndexError):
            link = None
        xdp = link.get_attr("IFLA_XDP") if link is not None else None
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
        if prog_id:
            info = libbpf.prog_info(prog_id)
            if _NAMES.get(info.name) == "xdp_rx":
                found["xdp_rx"] = Hooked("xdp_rx", nic_ifindex, info)
                xdp_mode = _XDP_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED"))
    except (NetlinkError, OSError) as err:
        raise RuntimeFailure(f"cannot look at the hooks of ifindex {nic_ifindex}/{tun_ifindex}: "
                             f"{err}") from err
    finally:
        ipr.close()
    if not found:
        return None
    return _complete(nic_ifindex, tun_ifindex, found, xdp_mode)


def _complete(nic_ifindex: int, tun_ifindex: int, found: Dict[str, Hooked],
              xdp_mode: Optional[str]) -> Running:
    """The Running these hooks make up, or RuntimeFailure saying what is off."""
    for ingress, rx in RX_PROGRAMS.items():
        want = {"tc_tx", rx} | ({"xdp_rx"} if ingress == "xdp" else set())
        if set(found) == want:
            break
    else:
        where = ", ".join(f"{h.info.name} (id {h.info.id}) on ifindex {h.ifindex}"
                          for h in found.values())
        raise RuntimeFailure(f"only part of a data path is attached ({where}): nothing to "
                             "adopt; remove it with `xdp-teredo detach IFACE`")
    if ingress == "xdp" and xdp_mode is None:
        raise RuntimeFailure("the XDP program of the data path is attached in a mode we "
                             "do not use (offload?): remove it with `xdp-teredo detach IFACE`")
    map_ids: Dict[str, int] = {}
    for hooked in found.values():
        for map_id in hooked.info.map_ids:
            with _map_by_id(map_id) as m:
                if map_ids.setdefault(m.name, map_id) != map_id:
                    raise RuntimeFailure(
                        f"the programs attached to ifindex {nic_ifindex}/{tun_ifindex} do not "
                        f"share their map {m.name!r}: two data paths are mixed up; remove them "
                        "with `xdp-teredo detach IFACE`")
    return Running(nic_ifindex, tun_ifindex, ingress, xdp_mode if ingress == "xdp" else None,
                   found, map_ids)


def open_maps(running) -> Dict[str, MapFd]:
    """Every map of a running data path (Running, RunningRelay) by name, opened (the
    caller closes them)."""
    opened: Dict[str, MapFd] = {}
    try:
        for name, map_id in running.map_ids.items():
            opened[name] = MapFd(libbpf.map_fd_by_id(map_id), owned=True)
    except OSError as err:
        for m in opened.values():
            m.close()
        raise RuntimeFailure(f"cannot open the maps of the running data path: {err}") from err
    return opened


# -- the relay ----------------------------------------------------------------------------

# The relay's programs (relay.PROGRAMS: "xdp" / "tc" -> function), by kernel name.
_RELAY_NAMES = {"xdp_teredo_relay"[:15]: "xdp", "tc_teredo_relay"[:15]: "tc"}


@dataclasses.dataclass(frozen=True)
class RunningRelay:
    """A relay's data path left attached: one program per device, one set of maps."""

    hooks: Dict[int, str]          # ifindex -> "xdp" | "tc"
    programs: Dict[int, Hooked]    # ifindex -> the program there
    map_ids: Dict[str, int]

    def describe(self) -> dict:
        return {"hooks": {str(i): h for i, h in self.hooks.items()},
                "programs": {str(i): h.info.id for i, h in self.programs.items()},
                "maps": dict(self.map_ids)}


def find_relay(ifindexes) -> Optional[RunningRelay]:
    """The relay data path attached to these devices (its IF4 and IF6), None if
    nothing of ours is there.

    RuntimeFailure when it is not whole (a device without our program, or with both
    an XDP and a tc one) or its programs do not share their maps: the caller
    replaces it then (relay.detach_stale), as a relay's state is soft.
    """
    from pyroute2 import IPRoute, NetlinkError

    ifindexes = sorted(set(ifindexes))
    found: Dict[int, list] = {i: [] for i in ifindexes}
    try:
        ipr = IPRoute()
    except Exception as err:
        raise RuntimeFailure(f"cannot open netlink: {err}") from err
    try:
        for ifindex in ifindexes:
            for key, prog_id in _our_filters(ipr, ifindex, TC_INGRESS, _RELAY_NAMES):
                found[ifindex].append(Hooked(key, ifindex, libbpf.prog_info(prog_id)))
            try:
                link = ipr.get_links(ifindex)[0]
            except (NetlinkError, IndexError):
                continue
            xdp = link.get_attr("IFLA_XDP")
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
            if prog_id:
                info = libbpf.prog_info(prog_id)
                if _RELAY_NAMES.get(info.name) == "xdp" \
                        and xdp.get_attr("IFLA_XDP_ATTACHED") == "xdp":   # native only
                    found[ifindex].append(Hooked("xdp", ifindex, info))
    except (NetlinkError, OSError) as err:
        raise RuntimeFailure(f"cannot look at the hooks of ifindex {ifindexes}: {err}") from err
    finally:
        ipr.close()
    if not any(found.values()):
        return None
    if any(len(hooked) != 1 for hooked in found.values()):
        where = {i: [h.program for h in hs] for i, hs in found.items()}
        raise RuntimeFailure(f"the relay's data path is not whole ({where}): nothing to adopt")
    programs = {i: hs[0] for i, hs in found.items()}
    map_ids: Dict[str, int] = {}
    for hooked in programs.values():
        for map_id in hooked.info.map_ids:
            with _map_by_id(map_id) as m:
                if map_ids.setdefault(m.name, map_id) != map_id:
                    raise RuntimeFailure(f"the relay programs on {ifindexes} do not share their "
                                         f"map {m.name!r}: two data paths are mixed up")
    return RunningRelay({i: h.program for i, h in programs.items()}, programs, map_ids)


# -- netlink and bpf details -------------------------------------------------------------


def _our_filters(ipr, ifindex: int, parent: str, names: Dict[str, str] = _NAMES):
    """(our program name, program id) of our tc filters on one hook."""
    from pyroute2 import NetlinkError

    try:
        filters = ipr.get_filters(ifindex, parent=parent)
    except NetlinkError as err:
        if err.code in (errno.EINVAL, errno.ENODEV, errno.ENOENT):
            return  # no clsact there, or no device
        raise
    for f in filters:
        opts = f.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts else None
        key = names.get(name[:15]) if name else None
        if key is None or key in ("xdp_rx", "xdp") or f["info"] >> 16 != TC_PRIO:
            continue
        prog_id = _tca_bpf_id(opts)
        if prog_id:
            yield key, prog_id


def _tca_bpf_id(opts) -> Optional[int]:
    """TCA_BPF_ID from the raw nested attributes of a cls_bpf TCA_OPTIONS."""
    raw = bytes(opts.data[opts.offset:opts.offset + opts.length])
    at = 4  # past TCA_OPTIONS' own header
    while at + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, at)
        if length < 4:
            break
        if kind & _NLA_TYPE_MASK == _TCA_BPF_ID and length >= 8:
            return struct.unpack_from("=I", raw, at + 4)[0]
        at += (length + 3) & ~3
    return None


class _map_by_id:
    """A map opened by id for a look at its name, closed after the with block."""

    def __init__(self, map_id: int):
        self.fd = libbpf.map_fd_by_id(map_id)

    def __enter__(self) -> MapFd:
        try:
            return MapFd(self.fd)
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
