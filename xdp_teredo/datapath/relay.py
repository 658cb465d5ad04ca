"""The relay's data path (bpf/teredo_relay.c): compile once, attach per device.

    prog = RelayDatapath.compile(peer_max=65536)   # or compile_isolated(): no bcc here
    att = prog.attach({if4: "tc", if6: "xdp"}, pin_root=..., instance=...)
    att.configure(Config(local_ipv4=..., local_port=3544, relay=True, ...))
    att.set_xdp_targets([if4])          # the devices XDP may redirect into, now
    att.peers.put(PeerEntry(...)); att.stats()
    att.detach(); prog.close()

One program per hook, the same for every device: xdp_teredo_relay (XDP, native
mode only: generic XDP would gain nothing over tc) or tc_teredo_relay (clsact
ingress). Each handles both directions (datapath.md, relay.md). The maps are the
client's (peers, config, stats: same layouts, same pins, so `xdp-teredo stats`
reads a relay as it reads a client) plus two of the relay's own: relay_egress (the
devmap of XDP redirect targets) and relay_slots (ifindex -> devmap slot).

Everything runs in the caller's network namespace: the relay daemon runs inside
the namespace it serves, and devmap entries are resolved there by the kernel.
What attach did, detach undoes in reverse, also when attach fails half-way.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import isolated, kheaders, libbpf, loader, probe
from . import stats as _stats
from .isolated import ProgramFd
from .libbpf import MapFd
from .guard import MAPS as GUARD_MAPS
from .guard import GuardMaps
from .limits import MAPS as SLOW_PATH_MAPS
from .limits import SlowPathMaps
from .maps import Config, ConfigMap, PeerTable, Snapshot, StatsTable
from .redirect import HOOK_TC, HOOK_XDP

SOURCE = "teredo_relay.c"
# Our name -> (C function, bcc program type).
PROGRAMS = {HOOK_XDP: ("xdp_teredo_relay", "XDP"), HOOK_TC: ("tc_teredo_relay", "SCHED_CLS")}
# Pinned like the client's (stats.PinnedMaps opens these three).
PINNED_MAPS = ("peers", "config", "stats")
# Every map of the program: the client's, the devmap's two, the guard's, the limits'.
MAPS = PINNED_MAPS + ("relay_slots", "relay_egress") + GUARD_MAPS + SLOW_PATH_MAPS
# Default peer table size: 64K entries, 136 bytes each in the kernel (8.5 MiB).
PEER_MAX = constants.RELAY_PEER_MAX
# Devmap slots (TEREDO_RELAY_PORTS in the C): IF4 and IF6, with room to spare.
PORTS = 8
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


class RelayDatapath:
    """The relay's programs and maps, compiled and loaded, not attached.

    Built on file descriptors, as loader.Datapath: compile() with bcc here, or
    compile_isolated() in a child that hands them over (isolated.py).
    """

    def __init__(self, functions: Dict[str, ProgramFd], maps: Dict[str, MapFd],
                 cflags: List[str], *, bpf=None, features: Optional[List[probe.Feature]] = None):
        # bcc's object when compiled here: it owns the descriptors (cleanup()).
        self.bpf = bpf
        self.functions = functions
        self.cflags = cflags
        # The kernel's features as the compiling child probed them (None: probe here).
        self.features = features
        self._maps = maps
        self.peers = PeerTable(self._maps["peers"])
        self.config = ConfigMap(self._maps["config"])
        self.statistics = StatsTable(self._maps["stats"])
        self.egress = EgressMap(self._maps["relay_slots"], self._maps["relay_egress"])
        # The inbound guard, for the clients the relay serves (--inbound, --allow).
        self.guard = GuardMaps.of(self._maps)
        # Admission to the slow path (limits.py); no limit until written.
        self.slow_path = SlowPathMaps.of(self._maps)
        self.attachment: Optional["RelayAttachment"] = None

    @classmethod
    def compile(cls, *, peer_max: int = PEER_MAX, ttl: int = 64, cflags: Tuple[str, ...] = (),
                source_dir: Optional[str] = None) -> "RelayDatapath":
        """Compile bpf/teredo_relay.c with bcc and load both programs (verifier), in
        this process (which keeps bcc and LLVM loaded: see compile_isolated)."""
        try:
            from bcc import BPF
        except ImportError as err:
            raise RuntimeFailure(f"bcc is not importable ({err}): install python3-bpfcc "
                                 "(run `make setup`)") from err
        headers = kheaders.export()
        if headers is None and not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
            raise RuntimeFailure("no kernel headers for bcc: run `make setup` "
                                 "(tools/kernel-headers.sh)")
        source_dir = source_dir or loader.bpf_dir()
        flags = [f"-I{source_dir}", f"-DTEREDO_PEER_MAX={int(peer_max)}",
                 f"-DTEREDO_TTL={int(ttl)}", f"-DTEREDO_RELAY_PORTS={PORTS}",
                 f"-DTEREDO_FLOW_MAX={constants.GUARD_FLOW_MAX}",
                 f"-DTEREDO_FRAGMENT_MAX={constants.GUARD_FRAGMENT_MAX}",
                 f"-DTEREDO_ALLOW_MAX={constants.GUARD_ALLOW_MAX}", *cflags]
        src = os.path.join(source_dir, SOURCE)
        try:
            bpf = BPF(src_file=src.encode(), cflags=flags)
        except Exception as err:  # bcc raises plain Exception; clang's errors went to stderr
            raise RuntimeFailure(f"cannot compile {src}: {err}") from err
        functions = {}
        try:
            for hook, (func, kind) in PROGRAMS.items():
                try:
                    fn = bpf.load_func(func.encode(), getattr(BPF, kind))
                except Exception as err:
                    raise RuntimeFailure(f"the verifier rejected {func}: {err}") from err
                functions[hook] = ProgramFd(fn.fd, func, owned=False)
            prog = cls(functions, {name: MapFd(bpf[name.encode()].map_fd) for name in MAPS},
                       flags, bpf=bpf)
        except BaseException:
            bpf.cleanup()
            raise
        _log.info("relay_datapath_compiled", source=src, cflags=flags)
        return prog

    @classmethod
    def compile_isolated(cls, *, peer_max: int = PEER_MAX, ttl: int = 64,
                         cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                         timeout: float = isolated.TIMEOUT) -> "RelayDatapath":
        """compile() in a short-lived child process (isolated.py), which also probes
        the kernel's features: this process never imports bcc. What the relay
        daemon uses."""
        options = {"peer_max": int(peer_max), "ttl": int(ttl), "cflags": list(cflags),
                   "source_dir": source_dir}
        return isolated.build(
            "relay", options,
            lambda got: cls(got.programs, got.maps, got.cflags, features=got.features),
            timeout=timeout)

    def fd(self, hook: str) -> int:
        """File descriptor of the program for a hook ("xdp", "tc"), for test runs."""
        return self.functions[hook].fd

    def stats(self) -> Snapshot:
        return self.statistics.read()

    def reset(self) -> None:
        """Empty the peers, counters, redirect targets; zero the config (tests)."""
        self.peers.clear()
        self.statistics.clear()
        self.config.clear()
        self.egress.clear()
        self.guard.clear()
        self.slow_path.clear()

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

    def close(self) -> None:
        """Detach if attached, then free the programs and maps, each descriptor once."""
        if self.attachment is not None:
            self.attachment.detach()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        for fn in self.functions.values():
            fn.close()
        for m in self._maps.values():
            m.close()

    def __enter__(self) -> "RelayDatapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RelayAttachment:
    """The relay's programs on its devices; detach() removes all of it."""

    def __init__(self, prog: RelayDatapath, hooks: Dict[int, str]):
        self.prog = prog
        self.hooks = hooks
        self.pin_dir: Optional[str] = None
        self._undo: List[Tuple[str, Callable[[], None]]] = []
        self._ipr = None

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

    # -- attach / detach
    def _iproute(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def _attach(self, pin, pin_root: str, instance: Optional[str], pin_ifindex: int) -> None:
        try:
            if HOOK_TC in self.hooks.values():
                probe.require(TC_FEATURES, self.prog.features)
            # tc first, then XDP: a device that falls back to tc never loses packets
            # to a half-configured XDP path.
            for ifindex, hook in sorted(self.hooks.items(), key=lambda kv: kv[1] != HOOK_TC):
                if hook == HOOK_TC:
                    self._tc(ifindex)
                else:
                    self._xdp(ifindex)
            self._pin(pin, pin_root, instance, pin_ifindex)
        except Exception as err:
            failures = self._undo_all()
            if failures:
                _log.error("relay_datapath_undo_failed", failures=failures)
            if isinstance(err, RuntimeFailure):
                raise
            raise RuntimeFailure(f"attaching the relay data path failed: {err}") from err
        _log.info("relay_datapath_attached", hooks={str(k): v for k, v in self.hooks.items()},
                  pin_dir=self.pin_dir)

    def _tc(self, ifindex: int) -> None:
        from pyroute2 import NetlinkError

        ipr = self._iproute()
        fn = self.prog.functions[HOOK_TC]
        try:
            ipr.tc("add", "clsact", ifindex)
            self._undo.append((f"clsact on {ifindex}", lambda: self._del_clsact(ifindex)))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise RuntimeFailure(f"cannot add clsact on ifindex {ifindex}: {err}") from err
        try:
            ipr.tc("add-filter", "bpf", ifindex, loader.TC_HANDLE, fd=fn.fd, name=fn.name,
                   parent=loader.TC_INGRESS, classid=1, direct_action=True, prio=loader.TC_PRIO)
        except NetlinkError as err:
            hint = " (a filter of ours is there already: stale? see relay.detach_stale)" \
                if err.code == errno.EEXIST else ""
            raise RuntimeFailure(f"cannot add the tc filter on ifindex {ifindex}: {err}{hint}") from err
        self._undo.append((f"tc filter on {ifindex}", lambda: self._iproute().tc(
            "del-filter", "bpf", ifindex, loader.TC_HANDLE, parent=loader.TC_INGRESS,
            prio=loader.TC_PRIO)))

    def _del_clsact(self, ifindex: int) -> None:
        """Remove the clsact we added, unless someone else's filters live there now."""
        ipr = self._iproute()
        for parent in (loader.TC_INGRESS, loader.TC_EGRESS):
            if any(f.get_attr("TCA_OPTIONS") for f in ipr.get_filters(ifindex, parent=parent)):
                return
        ipr.tc("del", "clsact", ifindex)

    def _xdp(self, ifindex: int) -> None:
        from pyroute2 import NetlinkError

        fn = self.prog.functions[HOOK_XDP]
        flags = loader.XDP_FLAGS_UPDATE_IF_NOEXIST | loader.XDP_FLAGS_DRV_MODE
        try:
            self._iproute().link("set", index=ifindex,
                                 xdp={"attrs": [("IFLA_XDP_FD", fn.fd), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as err:
            if err.code == errno.EOPNOTSUPP:
                raise XdpUnsupported(ifindex, f"ifindex {ifindex}: the driver has no native XDP") from err
            why = {errno.EBUSY: "another XDP program is attached",
                   errno.EEXIST: "another XDP program is attached"}.get(err.code, str(err))
            raise RuntimeFailure(f"cannot attach XDP to ifindex {ifindex}: {why}") from err
        self._undo.append((f"XDP on {ifindex}", lambda: self._iproute().link(
            "set", index=ifindex,
            xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", loader.XDP_FLAGS_DRV_MODE)]})))

    def _pin(self, pin, pin_root: str, instance: Optional[str], pin_ifindex: int) -> None:
        if pin is False:
            return
        if not _stats.is_bpffs(pin_root):
            if pin is True:
                raise RuntimeFailure(f"cannot pin maps: no bpffs mounted at or above {pin_root} "
                                     "(mount -t bpf bpf /sys/fs/bpf)")
            _log.warning("maps_not_pinned", pin_root=pin_root, reason="no bpffs mounted there")
            return
        path = os.path.join(pin_root, instance or instance_name(pin_ifindex))
        os.makedirs(path, exist_ok=True)
        self._undo.append(("pin dir", lambda: _rmdir_quiet(path)))
        for name in PINNED_MAPS:
            target = os.path.join(path, name)
            if os.path.exists(target):
                os.unlink(target)  # left by an instance that died without detaching
            libbpf.obj_pin(self.prog._maps[name].fd, target)
            self._undo.append((f"pin {name}", lambda t=target: os.unlink(t)))
        self.pin_dir = path

    def _undo_all(self) -> List[str]:
        failures = []
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as err:
                code = getattr(err, "code", None) or getattr(err, "errno", None)
                if code in (errno.ENODEV, errno.ENOENT):
                    continue  # the device is gone, and with it what we attached
                failures.append(f"{what}: {err}")
        return failures

    def detach(self) -> None:
        """Undo everything attach did, in reverse order. Idempotent."""
        failures = self._undo_all()
        self.pin_dir = None
        try:
            self.prog.egress.clear()
        except (OSError, RuntimeFailure) as err:
            failures.append(f"devmap: {err}")
        if self.prog.attachment is self:
            self.prog.attachment = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if failures:
            raise RuntimeFailure("detaching left things behind: " + "; ".join(failures))
        _log.info("relay_datapath_detached", hooks={str(k): v for k, v in self.hooks.items()})

    def __enter__(self) -> "RelayAttachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def instance_name(ifindex: int) -> str:
    """stats.instance_name of the calling *thread's* network namespace (the same
    as the process's in a daemon; tests enter namespaces per thread)."""
    return f"netns{os.stat('/proc/thread-self/ns/net').st_ino}-if{ifindex}"


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def detach_stale(ifindexes: Iterable[int], *, pin_root: str = _stats.DEFAULT_PIN_ROOT,
                 instance: Optional[str] = None, pin_ifindex: Optional[int] = None) -> List[str]:
    """Remove what a relay that died without detaching left on these devices: our
    tc filters (priority, handle and program name), an XDP program named
    xdp_teredo_relay, and the pins. Other programs stay. Returns what was removed."""
    from pyroute2 import IPRoute, NetlinkError

    ours = {func[:15] for func, _ in PROGRAMS.values()}  # the kernel keeps 15 chars
    removed: List[str] = []
    ifindexes = sorted(set(ifindexes))
    with IPRoute() as ipr:
        for ifindex in ifindexes:
            try:
                filters = ipr.get_filters(ifindex, parent=loader.TC_INGRESS)
            except NetlinkError:
                filters = []  # no clsact, or no device
            for f in filters:
                opts = f.get_attr("TCA_OPTIONS")
                name = opts.get_attr("TCA_BPF_NAME") if opts else None
                if name and name[:15] in ours and f["info"] >> 16 == loader.TC_PRIO:
                    try:
                        ipr.tc("del-filter", "bpf", ifindex, loader.TC_HANDLE,
                               parent=loader.TC_INGRESS, prio=loader.TC_PRIO)
                    except NetlinkError as err:
                        raise RuntimeFailure(f"removing a stale tc filter failed: {err}") from err
                    removed.append(f"tc filter {name} on ifindex {ifindex}")
            try:
                links = ipr.get_links(ifindex)
            except NetlinkError:
                continue
            xdp = links[0].get_attr("IFLA_XDP") if links else None
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
            if prog_id and libbpf.prog_name(prog_id) == PROGRAMS[HOOK_XDP][0][:15]:
                mode = loader.XDP_FLAGS_SKB_MODE if xdp.get_attr("IFLA_XDP_ATTACHED") == "xdpgeneric" \
                    else loader.XDP_FLAGS_DRV_MODE
                ipr.link("set", index=ifindex,
                         xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", mode)]})
                removed.append(f"XDP {PROGRAMS[HOOK_XDP][0]} on ifindex {ifindex}")
    if pin_ifindex is not None or instance:
        path = os.path.join(pin_root, instance or instance_name(pin_ifindex))
        for name in PINNED_MAPS:
            target = os.path.join(path, name)
            if os.path.exists(target):
                os.unlink(target)
                removed.append(f"pin {target}")
        if os.path.isdir(path):
            _rmdir_quiet(path)
    if removed:
        _log.warning("relay_stale_removed", removed=removed)
    return removed
