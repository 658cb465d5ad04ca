"""The relay's data path (bpf/relay.c): compile once, attach per device.

    prog = RelayDatapath.compile(peer_max=65536)   # or compile_isolated(): no bcc here
    att = prog.attach({if4: "tc", if6: "xdp"}, pin_root=..., instance=...)
    att.configure(Config(local_ipv4=..., local_port=3544, relay=True, ...))
    att.set_xdp_targets([if4])          # the devices XDP may redirect into, now
    att.peers.put(PeerEntry(...)); att.stats()
    att.detach(); prog.close()

One program per hook, the same for every device: xdp_teredo_relay (XDP, native
mode only: generic XDP would gain nothing over tc) or tc_teredo_relay (clsact
ingress). Each handles both directions (datapath.md, relay.md). The maps (registry.py) are
the client's (same layouts, pinned the same way, so `xdp-teredo stats` reads a
relay as it reads a client) plus two of the relay's own: relay_egress (the devmap
of XDP redirect targets) and relay_slots (ifindex -> devmap slot).

Everything runs in the caller's network namespace: the relay daemon runs inside
the namespace it serves, and devmap entries are resolved there by the kernel.
What attach did, detach undoes in reverse, also when attach fails half-way.
"""

from __future__ import annotations

import os
import struct
from typing import Dict, Iterable, List, Optional

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import libbpf, probe, registry
from . import stats as _stats
from .hooks import TC_INGRESS, Hooks, open_iproute, remove_stale, unpin_stale
from .libbpf import MapFd
from .maps import Config, PeerTable, Snapshot
from .program import Program
from .redirect import HOOK_TC, HOOK_XDP

# Our name -> (C function, bcc program type).
PROGRAMS = {HOOK_XDP: ("xdp_teredo_relay", "XDP"), HOOK_TC: ("tc_teredo_relay", "SCHED_CLS")}
MAPS = registry.names(registry.RELAY)
PINNED_MAPS = registry.pinned(registry.RELAY)
# Default peer table size: 64K entries, 136 bytes each in the kernel (8.5 MiB).
PEER_MAX = constants.RELAY_PEER_MAX
# Devmap slots (TEREDO_RELAY_PORTS): IF4 and IF6, with room to spare.
PORTS = registry.BY_NAME["relay_egress"].capacity[1]
# What the tc hook needs of the kernel (probe.py); XDP needs nothing beyond 4.18.
TC_FEATURES = ("adjust_room_encap", "adjust_room_decap", "redirect_neigh")

_U32 = struct.Struct("=I")
_log = log.get("xdp_teredo.datapath.relay")


class XdpUnsupported(RuntimeFailure):
    """The device's driver has no native XDP: the caller may use tc there instead."""

    def __init__(self, ifindex: int, message: str):
        super().__init__(message)
        self.ifindex = ifindex


class EgressMap:
    """relay_slots + relay_egress: which devices XDP may redirect into."""

    def __init__(self, slots: MapFd, devmap: MapFd):
        self.slots = slots
        self.devmap = devmap

    def members(self) -> Dict[int, int]:
        """ifindex -> slot, as the BPF program sees it now."""
        out = {}
        for key in list(self.slots.keys()):
            raw = self.slots.lookup(key)
            if raw is not None:
                out[_U32.unpack(key)[0]] = _U32.unpack(raw[:4])[0]
        return out

    def set(self, ifindexes: Iterable[int]) -> None:
        """Make exactly these devices redirect targets. A new target gets its devmap
        slot before the program can find it; a leaving one loses its slot entry first,
        so the program never redirects to a half-removed target."""
        wanted = set(ifindexes)
        current = self.members()
        for ifindex, slot in current.items():
            if ifindex not in wanted:
                self.slots.delete(_U32.pack(ifindex))
                self.devmap.delete(_U32.pack(slot))
        used = {slot for ifindex, slot in current.items() if ifindex in wanted}
        for ifindex in sorted(wanted - set(current)):
            slot = next((s for s in range(self.devmap.max_entries) if s not in used), None)
            if slot is None:
                raise RuntimeFailure(f"more than {self.devmap.max_entries} XDP redirect targets")
            try:
                self.devmap.update(_U32.pack(slot), _U32.pack(ifindex))
            except OSError as err:
                raise RuntimeFailure(f"cannot make ifindex {ifindex} an XDP redirect target: "
                                     f"{err}") from err
            self.slots.update(_U32.pack(ifindex), _U32.pack(slot))
            used.add(slot)

    def clear(self) -> None:
        self.set(())


class RelayDatapath(Program):
    """The relay's programs and maps, compiled and loaded, not attached."""

    ROLE = registry.RELAY
    PROGRAMS = PROGRAMS
    PEER_MAX = PEER_MAX

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.egress = EgressMap(self.maps["relay_slots"], self.maps["relay_egress"])

    def reset(self) -> None:
        """Empty the peers, counters, redirect targets; zero the config (tests)."""
        super().reset()
        self.egress.clear()

    def attach(self, hooks: Dict[int, str], *, pin="auto",
               pin_root: str = _stats.DEFAULT_PIN_ROOT, instance: Optional[str] = None,
               pin_ifindex: Optional[int] = None) -> "RelayAttachment":
        """Attach the program of each device's hook ({ifindex: "xdp" | "tc"}).

        pin: True (must), False (never) or "auto" (when pin_root is on a bpffs). The
        pin directory is <pin_root>/<instance>, by default named after the network
        namespace and pin_ifindex (the IPv4 side), as the client's.
        XdpUnsupported when a driver has no native XDP (nothing stays attached).
        """
        if self.attachment is not None:
            raise RuntimeFailure("this relay data path is attached already; detach it first")
        for ifindex, hook in hooks.items():
            if hook not in PROGRAMS:
                raise ValueError(f"hook of ifindex {ifindex} must be one of {sorted(PROGRAMS)}")
        att = RelayAttachment(self, dict(hooks))
        att._attach(pin, pin_root, instance, pin_ifindex or min(hooks))
        self.attachment = att
        return att


    def adopt(self, running, *, pin="auto", pin_root: str = _stats.DEFAULT_PIN_ROOT,
              instance: Optional[str] = None,
              pin_ifindex: Optional[int] = None) -> "RelayAttachment":
        """Take over the data path a killed relay left attached (adopt.find_relay),
        compiled with its maps (compile(maps=adopt.open_maps(running))): its hooks
        as they are, a program whose code differs (an upgrade) swapped atomically,
        as ClientDatapath.adopt. Detaching later removes everything."""
        if self.attachment is not None:
            raise RuntimeFailure("this relay data path is attached already; detach it first")
        missing = sorted({n[:registry.NAME_LEN] for n in running.map_ids}
                         - {n[:registry.NAME_LEN] for n in self.reused})
        if missing:
            raise RuntimeFailure(f"cannot adopt the running relay data path: its maps "
                                 f"{missing} differ from this build's (layout changed)")
        att = RelayAttachment(self, dict(running.hooks))
        att._adopt(running, pin, pin_root, instance, pin_ifindex or min(running.hooks))
        self.attachment = att
        return att


class RelayAttachment(Hooks):
    """The relay's programs on its devices; detach() removes all of it. Everything
    runs in the calling thread's network namespace."""

    def __init__(self, prog: RelayDatapath, hooks: Dict[int, str]):
        super().__init__()
        self.prog = prog
        self.hooks = hooks
        self.adopted = False          # taken over from a killed relay
        self.replaced: List[str] = []  # adopted hooks that got our programs

    @property
    def peers(self) -> PeerTable:
        return self.prog.peers

    def configure(self, config: Config) -> Config:
        self.prog.config.write(config)
        _log.info("relay_datapath_configured", local=f"{config.local_ipv4}:{config.local_port}",
                  ipv4_ifindex=config.nic_ifindex, tun_ifindex=config.tun_ifindex,
                  enabled=config.enabled)
        return config

    def set_xdp_targets(self, ifindexes: Iterable[int]) -> None:
        self.prog.egress.set(ifindexes)

    def xdp_targets(self) -> List[int]:
        return sorted(self.prog.egress.members())

    def stats(self) -> Snapshot:
        return self.prog.statistics.read()

    def _attach(self, pin, pin_root: str, instance: Optional[str], pin_ifindex: int) -> None:
        with self._all_or_nothing("the relay data path", "relay_datapath_undo_failed"):
            if HOOK_TC in self.hooks.values():
                probe.require(TC_FEATURES, self.prog.features)
            # tc first, then XDP: a device that falls back to tc never loses packets
            # to a half-configured XDP path.
            for ifindex, hook in sorted(self.hooks.items(), key=lambda kv: kv[1] != HOOK_TC):
                fn = self.prog.functions[hook]
                if hook == HOOK_TC:
                    self._tc_filter(ifindex, TC_INGRESS, fn, "relay ingress", "relay.detach_stale")
                else:
                    self._attach_xdp(ifindex, fn, "native", unsupported=lambda err, i=ifindex:
                                     XdpUnsupported(i, f"ifindex {i}: the driver has no native XDP"))
            self._pin(self.prog.maps, PINNED_MAPS, pin, pin_root,
                      instance or instance_name(pin_ifindex))
        _log.info("relay_datapath_attached", hooks={str(k): v for k, v in self.hooks.items()},
                  pin_dir=self.pin_dir)

    def _adopt(self, running, pin, pin_root: str, instance: Optional[str],
               pin_ifindex: int) -> None:
        from pyroute2 import NetlinkError

        try:
            for ifindex, hooked in sorted(running.programs.items()):
                fn = self.prog.functions[hooked.program]
                if libbpf.prog_info_by_fd(fn.fd).tag != hooked.info.tag:
                    if hooked.program == HOOK_XDP:
                        self._replace_xdp(ifindex, fn, hooked.info.id, "native")
                    else:
                        self._replace_filter(ifindex, TC_INGRESS, fn)
                    self.replaced.append(f"{hooked.program}@{ifindex}")
                if hooked.program == HOOK_TC:
                    self._own_filter(ifindex, TC_INGRESS, "relay ingress")
                else:
                    self._own_xdp(ifindex, "native")
            self._pin(self.prog.maps, PINNED_MAPS, pin, pin_root,
                      instance or instance_name(pin_ifindex))
        except (NetlinkError, OSError) as err:
            # Nothing of the running data path is removed: it goes on as it was.
            self._forget()
            raise RuntimeFailure(f"adopting the running relay data path failed: {err}") from err
        except RuntimeFailure:
            self._forget()
            raise
        self.adopted = True
        _log.info("relay_datapath_adopted", hooks={str(k): v for k, v in self.hooks.items()},
                  replaced=self.replaced or None, maps=running.map_ids, pin_dir=self.pin_dir)

    def attach_back_in(self, ifindex: int) -> None:
        """The tc program on the checksum veth's way back in (net/csum_veth.py), for
        an adopted data path: the pair is new, so its hook is too."""
        self._tc_filter(ifindex, TC_INGRESS, self.prog.functions[HOOK_TC],
                        "checksum veth ingress", "relay.detach_stale")
        self.hooks[ifindex] = HOOK_TC

    def release(self) -> None:
        """Leave everything attached and pinned (a crash while serving): the next
        relay adopts it (adopt.find_relay) or replaces it (detach_stale)."""
        self._forget()
        if self.prog.attachment is self:
            self.prog.attachment = None
        self._close_iproute()
        _log.info("relay_datapath_released", hooks={str(k): v for k, v in self.hooks.items()})

    detached_event = "relay_datapath_detached"

    def _after_undo(self) -> List[str]:
        try:
            self.prog.egress.clear()
        except (OSError, RuntimeFailure) as err:
            return [f"devmap: {err}"]
        return []

    def _detached_fields(self) -> dict:
        return {"hooks": {str(k): v for k, v in self.hooks.items()}}


def instance_name(ifindex: int) -> str:
    """stats.instance_name of the calling *thread's* network namespace (the same
    as the process's in a daemon; tests enter namespaces per thread)."""
    return f"netns{os.stat('/proc/thread-self/ns/net').st_ino}-if{ifindex}"


def detach_stale(ifindexes: Iterable[int], *, pin_root: str = _stats.DEFAULT_PIN_ROOT,
                 instance: Optional[str] = None, pin_ifindex: Optional[int] = None) -> List[str]:
    """Remove what a relay that died without detaching left on these devices: our
    tc filters (priority, handle and program name), an XDP program named
    xdp_teredo_relay, and the pins. Other programs stay. Returns what was removed."""
    ifindexes = sorted(set(ifindexes))
    ipr = open_iproute()
    try:
        removed = remove_stale(ipr, [(i, TC_INGRESS) for i in ifindexes], ifindexes,
                                     [f for f, _ in PROGRAMS.values()], PROGRAMS[HOOK_XDP][0])
    finally:
        ipr.close()
    if pin_ifindex is not None or instance:
        removed += unpin_stale(os.path.join(pin_root, instance or instance_name(pin_ifindex)),
                                     PINNED_MAPS)
    if removed:
        _log.warning("relay_stale_removed", removed=removed)
    return removed
