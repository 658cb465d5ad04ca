"""The client's data path (bpf/client.c): compile once, attach to a NIC and a tun.

    prog = ClientDatapath.compile()                # bcc compile + verifier, no device
    prog = ClientDatapath.compile_isolated()       # the same in a child: no bcc here
    with prog.attach(nic_ifindex=2, tun_ifindex=5, xdp_mode="auto") as att:
        att.configure(Config(local_ipv4=..., local_port=..., teredo_address=...))
        att.peers.put(PeerEntry(address=..., mapped_ipv4=..., mapped_port=...))
        print(att.stats())
    prog.close()

What attach does, in this order (and undoes in reverse, also when it fails half-way):
  1. checks the kernel features it relies on (probe.py);
  2. clsact + tc ingress filter on the NIC: tc_teredo_ingress (ingress="xdp") or the
     tc-only decapsulation tc_teredo_rx (ingress="tc");
  3. clsact + tc egress filter on the tun: tc_teredo_tx;
  4. XDP on the NIC (ingress="xdp"), in mode auto|native|generic; last, so that no
     frame is marked before the tc program that takes marked frames is there;
  5. pins the maps under <pin_root>/<instance>/ for other processes (stats.py).
On a veth NIC the daemon adds attach_csum_veth(): tc ingress on the far end of the
client's checksum veth, where pending offloads come back finished (net/csum_veth.py).
bcc's close() detaches nothing: ClientAttachment.detach() (or the with block) does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from . import hooks, libbpf, probe, registry
from . import stats as _stats
from .guard import GuardMaps
from .hooks import TC_EGRESS, TC_INGRESS
from .maps import Config, PeerTable, Snapshot
from .program import Program

# Entry points of bpf/client.c: our name -> (C function, program type name).
PROGRAMS = {
    "xdp_rx": ("xdp_teredo_rx", "XDP"),
    "tc_ingress": ("tc_teredo_ingress", "SCHED_CLS"),
    "tc_rx": ("tc_teredo_rx", "SCHED_CLS"),
    "tc_tx": ("tc_teredo_tx", "SCHED_CLS"),
    # On the checksum veth's far end (net/csum_veth.py; a veth NIC only).
    "tc_tx_back": ("tc_teredo_tx_back", "SCHED_CLS"),
}
# The tc program on the NIC's ingress for each receive path.
RX_PROGRAMS = {"xdp": "tc_ingress", "tc": "tc_rx"}
MAPS = registry.names(registry.CLIENT)
PINNED_MAPS = registry.pinned(registry.CLIENT)

_log = log.get("xdp_teredo.datapath")


class ClientDatapath(Program):
    """The client's programs and maps, compiled and loaded, not attached."""

    ROLE = registry.CLIENT
    PROGRAMS = PROGRAMS

    def attach(self, nic_ifindex: int, tun_ifindex: int, *, ingress: str = "xdp",
               xdp_mode: str = "auto", netns: Optional[str] = None, pin="auto",
               pin_root: str = _stats.DEFAULT_PIN_ROOT,
               instance: Optional[str] = None) -> "ClientAttachment":
        """Attach to a NIC and a tun device (by ifindex, in `netns` or ours).

        ingress: "xdp" (XDP decap + tc redirect) or "tc" (tc-only decap).
        xdp_mode: "auto" (native when the driver has it), "native" or "generic".
        pin: True (must), False (never) or "auto" (when pin_root is on a bpffs).
        """
        if self.attachment is not None:
            raise RuntimeFailure("this data path is attached already; detach it first")
        if ingress not in RX_PROGRAMS:
            raise ValueError(f"ingress must be one of {sorted(RX_PROGRAMS)}")
        if xdp_mode not in hooks.XDP_MODE_FLAGS:
            raise ValueError(f"xdp_mode must be one of {sorted(hooks.XDP_MODE_FLAGS)}")
        att = ClientAttachment(self, nic_ifindex, tun_ifindex, ingress, xdp_mode, netns)
        att._attach(pin, pin_root, instance)
        self.attachment = att
        return att

    def adopt(self, running, *, pin="auto", pin_root: str = _stats.DEFAULT_PIN_ROOT,
              instance: Optional[str] = None, netns: Optional[str] = None) -> "ClientAttachment":
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
        missing = sorted({n[:registry.NAME_LEN] for n in running.map_ids}
                         - {n[:registry.NAME_LEN] for n in self.reused})
        if missing:
            # A replaced program would then use a fresh, empty map: peers and config gone.
            raise RuntimeFailure(f"cannot adopt the running data path: its maps {missing} "
                                 "differ from this build's (layout changed); stop it with "
                                 "SIGTERM or `xdp-teredo detach IFACE` first")
        att = ClientAttachment(self, running.nic_ifindex, running.tun_ifindex, running.ingress,
                               running.xdp_mode or "auto", netns)
        att._adopt(running, pin, pin_root, instance)
        self.attachment = att
        return att


class ClientAttachment(hooks.Hooks):
    """The client's data path attached to one NIC and one tun device."""

    def __init__(self, prog: ClientDatapath, nic_ifindex: int, tun_ifindex: int, ingress: str,
                 xdp_mode: str, netns: Optional[str]):
        super().__init__(netns)
        self.prog = prog
        self.nic_ifindex = nic_ifindex
        self.tun_ifindex = tun_ifindex
        self.ingress = ingress
        self.xdp_mode = xdp_mode
        self.xdp_attached: Optional[str] = None  # "native" / "generic" once attached
        self.adopted = False                     # taken over from a previous instance
        self.replaced: List[str] = []            # adopted hooks that got our programs
        # (out, in) ifindexes from attach_csum_veth, and whether only UDP GSO takes
        # it (Config.offloads_pass); None: not said, the running config's are kept.
        self.csum_veth: Optional[Tuple[int, int]] = None
        self.offloads_pass: Optional[bool] = None

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
            # This attachment's checksum veth when it has one: a config read back
            # from an adopted data path names the pair that was replaced.
            csum_out_ifindex=(config.csum_out_ifindex if self.csum_veth is None
                              else self.csum_veth[0]),
            csum_in_ifindex=(config.csum_in_ifindex if self.csum_veth is None
                             else self.csum_veth[1]),
            offloads_pass=(config.offloads_pass if self.offloads_pass is None
                           else self.offloads_pass),
        )
        self.prog.config.write(config)
        _log.info("datapath_configured", local=f"{config.local_ipv4}:{config.local_port}",
                  teredo_address=str(config.teredo_address), enabled=config.enabled)
        return config

    def stats(self) -> Snapshot:
        return self.prog.statistics.read()

    # -- attach / adopt / release / detach
    def _pin_maps(self, pin, pin_root: str, instance: Optional[str]) -> None:
        name = instance or _stats.instance_name(self.nic_ifindex, self.netns)
        self._pin(self.prog.maps, PINNED_MAPS, pin, pin_root, name)

    def _attach(self, pin, pin_root: str, instance: Optional[str]) -> None:
        with self._all_or_nothing("the data path", "datapath_undo_failed"):
            probe.require(probe.TX_FEATURES + probe.RX_FEATURES[self.ingress],
                          self.prog.features)
            for ifindex, role in ((self.nic_ifindex, "NIC"), (self.tun_ifindex, "tun")):
                if not self._link_exists(ifindex):
                    where = f" in netns {self.netns}" if self.netns else ""
                    raise RuntimeFailure(f"no {role} device with ifindex {ifindex}{where}")
            rx = self.prog.functions[RX_PROGRAMS[self.ingress]]
            stale = "client.detach_stale"
            self._tc_filter(self.nic_ifindex, TC_INGRESS, rx, "NIC ingress", stale)
            self._tc_filter(self.tun_ifindex, TC_EGRESS, self.prog.functions["tc_tx"],
                            "tun egress", stale)
            if self.ingress == "xdp":
                self.xdp_attached = self._attach_xdp(self.nic_ifindex,
                                                     self.prog.functions["xdp_rx"], self.xdp_mode)
            self._pin_maps(pin, pin_root, instance)
        _log.info("datapath_attached", nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex,
                  ingress=self.ingress, xdp=self.xdp_attached, pin_dir=self.pin_dir, netns=self.netns)

    def _adopt(self, running, pin, pin_root: str, instance: Optional[str]) -> None:
        """Own the hooks of `running` (see ClientDatapath.adopt): replace what
        differs, then register the same undo steps attach would have."""
        from pyroute2 import NetlinkError

        try:
            for key, hooked in running.programs.items():
                fn = self.prog.functions[key]
                if libbpf.prog_info_by_fd(fn.fd).tag == hooked.info.tag:
                    continue
                if key == "xdp_rx":
                    self._replace_xdp(self.nic_ifindex, fn, hooked.info.id, running.xdp_mode)
                else:
                    self._replace_filter(hooked.ifindex, TC_EGRESS if key == "tc_tx" else TC_INGRESS, fn)
                self.replaced.append(key)
            self._own_filter(self.nic_ifindex, TC_INGRESS, "NIC ingress")
            self._own_filter(self.tun_ifindex, TC_EGRESS, "tun egress")
            if running.ingress == "xdp":
                self.xdp_attached = running.xdp_mode
                self._own_xdp(self.nic_ifindex, running.xdp_mode)
            self._pin_maps(pin, pin_root, instance)
        except (NetlinkError, OSError) as err:
            # Nothing of the running data path is removed: it still works as it did,
            # and the next attempt (or `detach`) finds it again.
            self._forget()
            raise RuntimeFailure(f"adopting the running data path failed: {err}") from err
        except RuntimeFailure:
            self._forget()
            raise
        self.adopted = True
        _log.info("datapath_adopted", nic_ifindex=self.nic_ifindex, tun_ifindex=self.tun_ifindex,
                  ingress=self.ingress, xdp=self.xdp_attached, replaced=self.replaced or None,
                  maps=running.map_ids, pin_dir=self.pin_dir, netns=self.netns)

    def attach_csum_veth(self, out_ifindex: int, in_ifindex: int, *,
                         offloads_pass: bool = False) -> None:
        """tc_teredo_tx_back on the checksum veth's far end (net/csum_veth.py), after
        attach or adopt: the pair is always new (a killed client's is replaced), so
        its hook is too. An adopted data path's config names the old pair, whose
        ifindexes are gone: rewritten at once, or pending packets would be sent
        nowhere until the next configure()."""
        if in_ifindex:
            self._tc_filter(in_ifindex, TC_INGRESS, self.prog.functions["tc_tx_back"],
                            "checksum veth ingress", "client.detach_stale")
        self.csum_veth = (out_ifindex, in_ifindex)
        self.offloads_pass = offloads_pass
        running = self.prog.config.read()
        if running is not None:
            self.prog.config.write(dataclasses.replace(
                running, csum_out_ifindex=out_ifindex, csum_in_ifindex=in_ifindex,
                offloads_pass=offloads_pass))

    def release(self) -> None:
        """Leave everything attached and pinned, and forget it: the restart-safe stop
        (docs/reliability.md). The kernel keeps running the programs with their maps;
        the next instance adopts them (adopt.find, ClientDatapath.adopt) or `detach`
        removes them."""
        self._forget()
        if self.prog.attachment is self:
            self.prog.attachment = None
        self._close_iproute()
        _log.info("datapath_released", nic_ifindex=self.nic_ifindex,
                  tun_ifindex=self.tun_ifindex, pin_dir=self.pin_dir)

    def _after_undo(self) -> List[str]:
        self.xdp_attached = None
        return []

    def _detached_fields(self) -> dict:
        return {"nic_ifindex": self.nic_ifindex, "tun_ifindex": self.tun_ifindex}


def detach_stale(nic_ifindex: int, tun_ifindex: int, *, netns: Optional[str] = None,
                 pin_root: str = _stats.DEFAULT_PIN_ROOT, instance: Optional[str] = None) -> List[str]:
    """Remove what an instance that died without detaching left on these devices.

    Only what is recognisably ours: tc filters at our priority/handle whose program
    is one of ours, an XDP program named xdp_teredo_rx, and the pins of the
    instance. Returns what was removed (for the log). Other programs stay.
    """
    ipr = hooks.open_iproute(netns)
    try:
        removed = hooks.remove_stale(ipr, ((nic_ifindex, TC_INGRESS), (tun_ifindex, TC_EGRESS)),
                                     (nic_ifindex,), [f for f, _ in PROGRAMS.values()],
                                     PROGRAMS["xdp_rx"][0])
    finally:
        ipr.close()
    path = os.path.join(pin_root, instance or _stats.instance_name(nic_ifindex, netns))
    removed += hooks.unpin_stale(path, PINNED_MAPS)
    if removed:
        _log.warning("datapath_stale_removed", removed=removed)
    return removed

