"""Compile the data path once; attach it to devices; detach everything it attached.

    prog = Datapath.compile()                      # bcc compile + verifier, no device
    prog = Datapath.compile_isolated()             # the same in a child: no bcc here
    with prog.attach(nic_ifindex=2, tun_ifindex=5, xdp_mode="auto") as att:
        att.configure(Config(local_ipv4=..., local_port=..., teredo_address=...))
        att.peers.put(PeerEntry(address=..., mapped_ipv4=..., mapped_port=...))
        print(att.stats())
    prog.close()

Compiling is apart from attaching, so tests compile once and run the programs
through BPF_PROG_TEST_RUN, and the client reuses the same object to attach.

What attach does, in this order (and undoes in reverse, also when it fails half-way):
  1. checks the kernel features it relies on (probe.py);
  2. clsact + tc ingress filter on the NIC: tc_teredo_ingress (ingress="xdp") or the
     tc-only decapsulation tc_teredo_rx (ingress="tc");
  3. clsact + tc egress filter on the tun: tc_teredo_tx;
  4. XDP on the NIC (ingress="xdp"), in mode auto|native|generic; last, so that no
     frame is marked before the tc program that takes marked frames is there;
  5. pins the maps under <pin_root>/<instance>/ for other processes (stats.py).
bcc's close() detaches nothing: Attachment.detach() (or the with block) does.
"""

import dataclasses
import errno
import os
from typing import Callable, Dict, List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import isolated, kheaders, libbpf, probe
from . import stats as _stats
from .guard import MAPS as GUARD_MAPS
from .guard import GuardMaps
from .limits import MAPS as SLOW_PATH_MAPS
from .limits import SlowPathMaps
from .maps import Config, ConfigMap, PeerTable, Snapshot, StatsTable
from .isolated import ProgramFd
from .libbpf import MapFd

# Entry points of bpf/teredo_encap.c: our name -> (C function, program type name).
PROGRAMS = {
    "xdp_rx": ("xdp_teredo_rx", "XDP"),
    "tc_ingress": ("tc_teredo_ingress", "SCHED_CLS"),
    "tc_rx": ("tc_teredo_rx", "SCHED_CLS"),
    "tc_tx": ("tc_teredo_tx", "SCHED_CLS"),
}
# The guard's maps (datapath/guard.py) are pinned and adopted like the others.
MAPS = ("peers", "config", "stats", *GUARD_MAPS, *SLOW_PATH_MAPS)

# Our tc filters are found again by this priority and handle ("prio 3544", the
# Teredo port, is easy to spot in `tc filter show`).
TC_PRIO = constants.TEREDO_PORT
TC_HANDLE = ":1"
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"

# IFLA_XDP_FLAGS (uapi/linux/if_link.h).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
_XDP_MODE_FLAGS = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED as pyroute2 names it -> our mode name.
_XDP_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}

_log = log.get("xdp_teredo.datapath")


def bpf_dir() -> str:
    """Where the BPF C lives: $XDP_TEREDO_BPF_DIR, else bpf/ next to the package."""
    env = os.environ.get("XDP_TEREDO_BPF_DIR")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf")


class Datapath:
    """The compiled and loaded (not attached) programs and their maps.

    Built on file descriptors, whoever loaded them: compile() here, with bcc (tests,
    tools), or compile_isolated() in a child process that hands them over
    (isolated.py: the daemons, which so never load bcc and LLVM).
    """

    def __init__(self, functions: Dict[str, ProgramFd], maps: Dict[str, MapFd],
                 cflags: List[str], reused: Tuple[str, ...] = (), *, bpf=None,
                 features: Optional[List[probe.Feature]] = None):
        # bcc's object when compiled here: it owns the descriptors (cleanup()).
        # Without one, functions and maps own theirs (ProgramFd, MapFd owned=True).
        self.bpf = bpf
        self.functions = functions
        self.cflags = cflags
        # Maps that are a running data path's, not fresh ones (compile(maps=...)).
        self.reused = reused
        # This kernel's features as the compiling child probed them; None: attach
        # probes them in this process (probe.run, with bcc).
        self.features = features
        self._maps = maps
        self.peers = PeerTable(self._maps["peers"])
        self.config = ConfigMap(self._maps["config"])
        self.statistics = StatsTable(self._maps["stats"])
        self.guard = GuardMaps.of(self._maps)
        # Admission to the slow path (limits.py); no limit until written.
        self.slow_path = SlowPathMaps.of(self._maps)
        self.attachment: Optional["Attachment"] = None

    @classmethod
    def compile(cls, *, peer_max: int = constants.PEER_LIST_MAX, ttl: int = 64,
                cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                debug: int = 0, maps: Optional[Dict[str, MapFd]] = None) -> "Datapath":
        """Compile bpf/teredo_encap.c with bcc and load every program (verifier),
        in this process (which keeps bcc and LLVM loaded: see compile_isolated).

        Compile-time options become -D flags: peer_max (peer table capacity) and
        ttl (outer IPv4 TTL); cflags are passed as they are. maps: a running data
        path's maps by name (adopt.open_maps): the programs use those instead of
        fresh ones wherever the layout is the same (`_reuse_maps`); the caller
        still closes what it passed.
        """
        try:
            from bcc import BPF
        except ImportError as err:
            raise RuntimeFailure(f"bcc is not importable ({err}): install python3-bpfcc "
                                 "(run `make setup`)") from err
        headers = kheaders.export()
        if headers is None and not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
            raise RuntimeFailure("no kernel headers for bcc: run `make setup` "
                                 "(tools/kernel-headers.sh)")
        source_dir = source_dir or bpf_dir()
        flags = [f"-I{source_dir}", f"-DTEREDO_PEER_MAX={int(peer_max)}",
                 f"-DTEREDO_TTL={int(ttl)}",
                 f"-DTEREDO_FLOW_MAX={constants.GUARD_FLOW_MAX}",
                 f"-DTEREDO_FRAGMENT_MAX={constants.GUARD_FRAGMENT_MAX}",
                 f"-DTEREDO_ALLOW_MAX={constants.GUARD_ALLOW_MAX}", *cflags]
        src = os.path.join(source_dir, "teredo_encap.c")
        try:
            bpf = BPF(src_file=src.encode(), cflags=flags, debug=debug)
        except Exception as err:  # bcc raises plain Exception; clang's errors went to stderr
            raise RuntimeFailure(f"cannot compile {src}: {err}") from err
        functions = {}
        try:
            reused = _reuse_maps(bpf, maps or {})
            for name, (func, kind) in PROGRAMS.items():
                try:
                    fn = bpf.load_func(func.encode(), getattr(BPF, kind))
                except Exception as err:
                    raise RuntimeFailure(f"the verifier rejected {func}: {err}") from err
                functions[name] = ProgramFd(fn.fd, func, owned=False)
            prog = cls(functions, {name: MapFd(bpf[name.encode()].map_fd) for name in MAPS},
                       flags, tuple(reused), bpf=bpf)
        except BaseException:
            bpf.cleanup()
            raise
        _log.info("datapath_compiled", source=src, cflags=flags,
                  kernel_headers=headers.path if headers else None, reused_maps=reused or None)
        return prog

    @classmethod
    def compile_isolated(cls, *, peer_max: int = constants.PEER_LIST_MAX, ttl: int = 64,
                         cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                         debug: int = 0, maps: Optional[Dict[str, MapFd]] = None,
                         timeout: float = isolated.TIMEOUT) -> "Datapath":
        """compile() in a short-lived child process (isolated.py), which also probes
        the kernel's features: this process never imports bcc. The same options and
        the same RuntimeFailure messages; `maps` are passed to the child (the
        caller still closes its own). What the daemons use."""
        options = {"peer_max": int(peer_max), "ttl": int(ttl), "cflags": list(cflags),
                   "source_dir": source_dir, "debug": int(debug)}
        return isolated.build(
            "client", options,
            lambda got: cls(got.programs, got.maps, got.cflags, got.reused, features=got.features),
            maps=maps, timeout=timeout)

    def fd(self, program: str) -> int:
        """File descriptor of a program by our name (PROGRAMS), for test runs."""
        return self.functions[program].fd

    def stats(self) -> Snapshot:
        return self.statistics.read()

    def reset(self) -> None:
        """Empty the peer table and the counters, zero the config (tests)."""
        self.peers.clear()
        self.statistics.clear()
        self.config.clear()
        self.guard.clear()
        self.slow_path.clear()

    def attach(self, nic_ifindex: int, tun_ifindex: int, *, ingress: str = "xdp",
               xdp_mode: str = "auto", netns: Optional[str] = None, pin="auto",
               pin_root: str = _stats.DEFAULT_PIN_ROOT,
               instance: Optional[str] = None) -> "Attachment":
        """Attach to a NIC and a tun device (by ifindex, in `netns` or ours).

        ingress: "xdp" (XDP decap + tc redirect) or "tc" (tc-only decap).
        xdp_mode: "auto" (native when the driver has it), "native" or "generic".
        pin: True (must), False (never) or "auto" (when pin_root is on a bpffs).
        """
        if self.attachment is not None:
            raise RuntimeFailure("this data path is attached already; detach it first")
        if ingress not in RX_PROGRAMS:
            raise ValueError(f"ingress must be one of {sorted(RX_PROGRAMS)}")
        if xdp_mode not in _XDP_MODE_FLAGS:
            raise ValueError(f"xdp_mode must be one of {sorted(_XDP_MODE_FLAGS)}")
        att = Attachment(self, nic_ifindex, tun_ifindex, ingress, xdp_mode, netns)
        att._attach(pin, pin_root, instance)
        self.attachment = att
        return att

    def adopt(self, running, *, pin="auto", pin_root: str = _stats.DEFAULT_PIN_ROOT,
              instance: Optional[str] = None, netns: Optional[str] = None) -> "Attachment":
        """Take over the data path a previous instance left attached (adopt.find),
        compiled with its maps (compile(maps=adopt.open_maps(running))).

        A hook whose program is ours already (same code: same kernel tag) is left
        alone; one whose program differs (an upgrade) gets ours in its place,
        atomically (tc filter replace, XDP replace with the expected program), so no
        packet ever meets an empty hook. Detaching later removes everything, as
        after attach.
        """
        if self.attachment is not None:
            raise RuntimeFailure("this data path is attached already; detach it first")
        missing = sorted({n[:_NAME_LEN] for n in running.map_ids}
                         - {n[:_NAME_LEN] for n in self.reused})
        if missing:
            # A replaced program would then use a fresh, empty map: peers and config gone.
            raise RuntimeFailure(f"cannot adopt the running data path: its maps {missing} "
                                 "differ from this build's (layout changed); stop it with "
                                 "SIGTERM or `xdp-teredo detach IFACE` first")
        att = Attachment(self, running.nic_ifindex, running.tun_ifindex, running.ingress,
                         running.xdp_mode or "auto", netns)
        att._adopt(running, pin, pin_root, instance)
        self.attachment = att
        return att

    def close(self) -> None:
        """Detach if attached, then free the programs and maps (each descriptor
        once: bcc's by bcc, received ones by their owners here)."""
        if self.attachment is not None:
            self.attachment.detach()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        for fn in self.functions.values():
            fn.close()
        for m in self._maps.values():
            m.close()

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


RX_PROGRAMS = {"xdp": "tc_ingress", "tc": "tc_rx"}


class Attachment:
    """The data path attached to one NIC and one tun device."""

    def __init__(self, prog: Datapath, nic_ifindex: int, tun_ifindex: int, ingress: str,
                 xdp_mode: str, netns: Optional[str]):
        self.prog = prog
        self.nic_ifindex = nic_ifindex
        self.tun_ifindex = tun_ifindex
        self.ingress = ingress
        self.xdp_mode = xdp_mode
        self.netns = netns
        self.xdp_attached: Optional[str] = None  # "native" / "generic" once attached
        self.pin_dir: Optional[str] = None
        self.adopted = False                     # taken over from a previous instance
        self.replaced: List[str] = []            # adopted hooks that got our programs
        self._undo: List[Tuple[str, Callable[[], None]]] = []
        self._ipr = None

    # -- the maps, for the control plane
    @property
    def peers(self) -> PeerTable:
        return self.prog.peers

    @property
    def guard(self) -> GuardMaps:
        return self.prog.guard

    def configure(self, config: Config) -> Config:
        """Write the config; zero ifindexes are filled in from this attachment."""
        config = dataclasses.replace(
            config,
            nic_ifindex=config.nic_ifindex or self.nic_ifindex,
            tun_ifindex=config.tun_ifindex or self.tun_ifindex,
        )
        self.prog.config.write(config)
        _log.info("datapath_configured", local=f"{config.local_ipv4}:{config.local_port}",
                  teredo_address=str(config.teredo_address), enabled=config.enabled)
        return config

    def stats(self) -> Snapshot:
        return self.prog.statistics.read()

    # -- attach / detach
    def _iproute(self):
        if self._ipr is None:
            try:
                from pyroute2 import IPRoute

                self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
            except Exception as err:
                raise RuntimeFailure(f"cannot open netlink (netns {self.netns}): {err}") from err
        return self._ipr

    def _attach(self, pin, pin_root: str, instance: Optional[str]) -> None:
        try:
            probe.require(probe.TX_FEATURES + probe.RX_FEATURES[self.ingress],
                          self.prog.features)
            for ifindex, role in ((self.nic_ifindex, "NIC"), (self.tun_ifindex, "tun")):
                if not self._link_exists(ifindex):
                    where = f" in netns {self.netns}" if self.netns else ""
                    raise RuntimeFailure(f"no {role} device with ifindex {ifindex}{where}")
            rx = self.prog.functions[RX_PROGRAMS[self.ingress]]
            self._tc_filter(self.nic_ifindex, TC_INGRESS, rx, "NIC ingress")
            self._tc_filter(self.tun_ifindex, TC_EGRESS, self.prog.functions["tc_tx"], "tun egress")
            if self.ingress == "xdp":
                self._xdp()
            self._pin(pin, pin_root, instance)
        except Exception as err:
            failures = self._undo_all()
            if failures:
                _log.error("datapath_undo_failed", failures=failures)
            if isinstance(err, RuntimeFailure):
                raise
            raise RuntimeFailure(f"attaching the data path failed: {err}") from err
        _log.info("datapath_attached", nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex,
                  ingress=self.ingress, xdp=self.xdp_attached, pin_dir=self.pin_dir, netns=self.netns)

    def _adopt(self, running, pin, pin_root: str, instance: Optional[str]) -> None:
        """Own the hooks of `running` (see Datapath.adopt): replace what differs, then
        register the same undo steps attach would have."""
        from pyroute2 import NetlinkError

        try:
            for key, hooked in running.programs.items():
                fn = self.prog.functions[key]
                if libbpf.prog_info_by_fd(fn.fd).tag == hooked.info.tag:
                    continue
                if key == "xdp_rx":
                    self._replace_xdp(fn, hooked.info.id, running.xdp_mode)
                else:
                    parent = TC_EGRESS if key == "tc_tx" else TC_INGRESS
                    self._iproute().tc("replace-filter", "bpf", hooked.ifindex, TC_HANDLE,
                                       fd=fn.fd, name=fn.name, parent=parent, classid=1,
                                       direct_action=True, prio=TC_PRIO)
                self.replaced.append(key)
            for ifindex, parent, where in ((self.nic_ifindex, TC_INGRESS, "NIC ingress"),
                                           (self.tun_ifindex, TC_EGRESS, "tun egress")):
                self._undo.append((f"clsact on {ifindex}",
                                   lambda i=ifindex: self._del_clsact(i)))
                self._undo.append((f"tc filter {where}",
                                   lambda i=ifindex, p=parent: self._del_filter(i, p)))
            if running.ingress == "xdp":
                self.xdp_attached = running.xdp_mode
                mode_flag = XDP_FLAGS_SKB_MODE if running.xdp_mode == "generic" else XDP_FLAGS_DRV_MODE
                self._undo.append(("XDP", lambda: self._del_xdp(mode_flag)))
            self._pin(pin, pin_root, instance)
        except (NetlinkError, OSError) as err:
            # Nothing of the running data path is removed: it still works as it did,
            # and the next attempt (or `detach`) finds it again.
            self._undo.clear()
            raise RuntimeFailure(f"adopting the running data path failed: {err}") from err
        except RuntimeFailure:
            self._undo.clear()
            raise
        self.adopted = True
        _log.info("datapath_adopted", nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex,
                  ingress=self.ingress, xdp=self.xdp_attached, replaced=self.replaced or None,
                  maps=running.map_ids, pin_dir=self.pin_dir, netns=self.netns)

    def _replace_xdp(self, fn, old_id: int, mode: str) -> None:
        """Our XDP program in place of the running one, in one netlink request: the
        kernel swaps them only if `old_id` is still the one attached (XDP_FLAGS_REPLACE)."""
        mode_flag = XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE
        old_fd = libbpf.prog_fd_by_id(old_id)
        try:
            self._iproute().link("set", index=self.nic_ifindex, xdp={"attrs": [
                ("IFLA_XDP_FD", fn.fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_REPLACE | mode_flag),
                ("IFLA_XDP_EXPECTED_FD", old_fd)]})
        finally:
            os.close(old_fd)

    def release(self) -> None:
        """Leave everything attached and pinned, and forget it: the restart-safe stop
        (docs/reliability.md). The kernel keeps running the programs with their maps;
        the next instance adopts them (adopt.find, Datapath.adopt) or `detach` removes
        them."""
        self._undo.clear()
        if self.prog.attachment is self:
            self.prog.attachment = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        _log.info("datapath_released", nic_ifindex=self.nic_ifindex,
                  tun_ifindex=self.tun_ifindex, pin_dir=self.pin_dir)

    def _link_exists(self, ifindex: int) -> bool:
        from pyroute2 import NetlinkError

        try:
            return bool(self._iproute().get_links(ifindex))
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return False
            raise

    def _tc_filter(self, ifindex: int, parent: str, fn, where: str) -> None:
        from pyroute2 import NetlinkError

        ipr = self._iproute()
        try:
            ipr.tc("add", "clsact", ifindex)
            self._undo.append((f"clsact on {ifindex}", lambda: self._del_clsact(ifindex)))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise RuntimeFailure(f"cannot add clsact on ifindex {ifindex} ({where}): {err}") from err
        try:
            ipr.tc("add-filter", "bpf", ifindex, TC_HANDLE, fd=fn.fd, name=fn.name, parent=parent,
                   classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as err:
            hint = " (a filter of ours is there already: stale? see loader.detach_stale)" \
                if err.code == errno.EEXIST else ""
            raise RuntimeFailure(f"cannot add the tc filter on ifindex {ifindex} ({where}): "
                                 f"{err}{hint}") from err
        self._undo.append((f"tc filter {where}", lambda: self._del_filter(ifindex, parent)))

    def _del_filter(self, ifindex: int, parent: str) -> None:
        self._iproute().tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=parent, prio=TC_PRIO)

    def _del_clsact(self, ifindex: int) -> None:
        """Remove the clsact we added, unless someone else's filters live there now."""
        ipr = self._iproute()
        for parent in (TC_INGRESS, TC_EGRESS):
            if any(f.get_attr("TCA_OPTIONS") for f in ipr.get_filters(ifindex, parent=parent)):
                return
        ipr.tc("del", "clsact", ifindex)

    def _xdp(self) -> None:
        from pyroute2 import NetlinkError

        ipr = self._iproute()
        fn = self.prog.functions["xdp_rx"]
        flags = XDP_FLAGS_UPDATE_IF_NOEXIST | _XDP_MODE_FLAGS[self.xdp_mode]
        try:
            ipr.link("set", index=self.nic_ifindex,
                     xdp={"attrs": [("IFLA_XDP_FD", fn.fd), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as err:
            why = {errno.EBUSY: "another XDP program is attached",
                   errno.EEXIST: "another XDP program is attached",
                   errno.EOPNOTSUPP: f"the driver has no {self.xdp_mode} XDP mode"}.get(err.code, str(err))
            raise RuntimeFailure(f"cannot attach XDP ({self.xdp_mode}) to ifindex "
                                 f"{self.nic_ifindex}: {why}") from err
        attached = ipr.get_links(self.nic_ifindex)[0].get_attr("IFLA_XDP")
        kind = attached.get_attr("IFLA_XDP_ATTACHED") if attached else None
        self.xdp_attached = _XDP_ATTACHED.get(kind, str(kind))
        mode_flag = XDP_FLAGS_SKB_MODE if self.xdp_attached == "generic" else XDP_FLAGS_DRV_MODE
        self._undo.append(("XDP", lambda: self._del_xdp(mode_flag)))

    def _del_xdp(self, mode_flag: int) -> None:
        self._iproute().link("set", index=self.nic_ifindex,
                             xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", mode_flag)]})

    def _pin(self, pin, pin_root: str, instance: Optional[str]) -> None:
        if pin is False:
            return
        if not _stats.is_bpffs(pin_root):
            if pin is True:
                raise RuntimeFailure(f"cannot pin maps: no bpffs mounted at or above {pin_root} "
                                     "(mount -t bpf bpf /sys/fs/bpf)")
            _log.warning("maps_not_pinned", pin_root=pin_root, reason="no bpffs mounted there")
            return
        name = instance or _stats.instance_name(self.nic_ifindex, self.netns)
        path = os.path.join(pin_root, name)
        os.makedirs(path, exist_ok=True)
        self._undo.append(("pin dir", lambda: _rmdir_quiet(path)))
        for map_name in MAPS:
            target = os.path.join(path, map_name)
            if os.path.exists(target):
                # A pin left by an instance that died without detaching: it holds
                # an old map alive and nothing else; ours replaces it.
                os.unlink(target)
            libbpf.obj_pin(self.prog._maps[map_name].fd, target)
            self._undo.append((f"pin {map_name}", lambda t=target: os.unlink(t)))
        self.pin_dir = path

    def _undo_all(self) -> List[str]:
        failures = []
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as err:
                if isinstance(err, OSError) and err.errno == errno.ENODEV:
                    continue  # the device is gone, and with it what we attached
                code = getattr(err, "code", None)
                if code in (errno.ENODEV, errno.ENOENT):
                    continue
                failures.append(f"{what}: {err}")
        return failures

    def detach(self) -> None:
        """Undo everything attach did, in reverse order. Idempotent."""
        failures = self._undo_all()
        self.xdp_attached = None
        self.pin_dir = None
        if self.prog.attachment is self:
            self.prog.attachment = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if failures:
            raise RuntimeFailure("detaching left things behind: " + "; ".join(failures))
        _log.info("datapath_detached", nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex)

    def __enter__(self) -> "Attachment":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


# The kernel keeps 15 characters of a map's or program's name (BPF_OBJ_NAME_LEN).
_NAME_LEN = 15


def _reuse_maps(bpf, maps: Dict[str, MapFd]) -> List[str]:
    """Make the programs about to be loaded use `maps` instead of bcc's fresh ones.

    bcc creates every map while it compiles and writes the map's fd *number* into
    the instructions; the kernel turns that number into a map when the program is
    loaded (load_func). Putting another map on the same number in between (dup2)
    makes the programs, and bcc's table objects, use it. Only a map with the same
    type, key and value size is taken (its capacity may differ: a running table
    keeps its own); the others stay fresh, and are logged.
    """
    reused = []
    # By our names; the running maps may be named as the kernel keeps them.
    given = {name[:_NAME_LEN]: old for name, old in maps.items()}
    for name in MAPS:
        old = given.pop(name[:_NAME_LEN], None)
        if old is None:
            continue
        fd = bpf[name.encode()].map_fd
        fresh = MapFd(fd)
        if (fresh.map_type, fresh.key_size, fresh.value_size) != \
                (old.map_type, old.key_size, old.value_size):
            _log.warning("map_not_reused", map=name, reason="layout changed",
                         running=[old.map_type, old.key_size, old.value_size],
                         ours=[fresh.map_type, fresh.key_size, fresh.value_size])
            continue
        os.dup2(old.fd, fd, inheritable=False)
        reused.append(name)
    for name in sorted(given):
        _log.warning("map_not_reused", map=name, reason="this build has no such map")
    return reused


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def detach_stale(nic_ifindex: int, tun_ifindex: int, *, netns: Optional[str] = None,
                 pin_root: str = _stats.DEFAULT_PIN_ROOT, instance: Optional[str] = None) -> List[str]:
    """Remove what an instance that died without detaching left on these devices.

    Only what is recognisably ours: tc filters at our priority/handle whose program
    is one of ours, an XDP program named xdp_teredo_rx, and the pins of the
    instance. Returns what was removed (for the log). Other programs stay.
    """
    from pyroute2 import IPRoute, NetlinkError

    ours = {func[:15] for func, _ in PROGRAMS.values()}  # the kernel keeps 15 chars
    removed: List[str] = []
    try:
        ipr = IPRoute(netns=netns) if netns else IPRoute()
    except Exception as err:
        raise RuntimeFailure(f"cannot open netlink (netns {netns}): {err}") from err
    try:
        for ifindex, parent in ((nic_ifindex, TC_INGRESS), (tun_ifindex, TC_EGRESS)):
            try:
                filters = ipr.get_filters(ifindex, parent=parent)
            except NetlinkError:
                continue  # no clsact, or no device
            for f in filters:
                opts = f.get_attr("TCA_OPTIONS")
                name = opts.get_attr("TCA_BPF_NAME") if opts else None
                if name and name[:15] in ours and f["info"] >> 16 == TC_PRIO:
                    ipr.tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=parent, prio=TC_PRIO)
                    removed.append(f"tc filter {name} on ifindex {ifindex}")
        try:
            links = ipr.get_links(nic_ifindex)
        except NetlinkError:
            links = []
        xdp = links[0].get_attr("IFLA_XDP") if links else None
        if xdp and xdp.get_attr("IFLA_XDP_PROG_ID"):
            name = libbpf.prog_name(xdp.get_attr("IFLA_XDP_PROG_ID"))
            if name == PROGRAMS["xdp_rx"][0][:15]:
                mode = XDP_FLAGS_SKB_MODE if xdp.get_attr("IFLA_XDP_ATTACHED") == "xdpgeneric" \
                    else XDP_FLAGS_DRV_MODE
                ipr.link("set", index=nic_ifindex, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", mode)]})
                removed.append(f"XDP {name} on ifindex {nic_ifindex}")
    except NetlinkError as err:
        raise RuntimeFailure(f"removing stale programs failed: {err}") from err
    finally:
        ipr.close()
    path = os.path.join(pin_root, instance or _stats.instance_name(nic_ifindex, netns))
    for map_name in MAPS:
        target = os.path.join(path, map_name)
        if os.path.exists(target):
            os.unlink(target)
            removed.append(f"pin {target}")
    if os.path.isdir(path):
        _rmdir_quiet(path)
    if removed:
        _log.warning("datapath_stale_removed", removed=removed)
    return removed
