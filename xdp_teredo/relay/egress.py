"""Which hook each of the relay's devices gets, and where XDP may redirect to.

XDP redirects into a device only deliver where that device takes XDP frames (a
veth whose peer has an XDP program or GRO on; a NIC with ndo_xdp_xmit), and a
neighbour may change that at any time: datapath/redirect.py asks the kernel, this
module decides at set-up (XDP or tc per device) and asks again every
CHECK_INTERVAL seconds, moving devices in and out of the devmap so that nothing is
ever redirected into a black hole (docs/relay.md).
"""

from __future__ import annotations

from . import plan as rp

# How often the kernel is asked again whether each side takes XDP redirects.
CHECK_INTERVAL = 5.0


class Egress:
    def __init__(self, relay):
        self.relay = relay
        self.hooks: list = []      # redirect.HookChoice, one per device
        self.checks: list = []     # redirect.EgressCheck, one per device

    def _check(self) -> list:
        from ..datapath import redirect

        r = self.relay
        devices = [r.ipv4] if r.ipv4 == r.ipv6 else [r.ipv4, r.ipv6]
        return [redirect.check_egress(d.ifindex, d.name) for d in devices]

    def attach(self, pin_root: str, running=None, *, pin="auto"):
        """Choose the hooks, configure the programs, attach; the attachment.

        running (adopt.RunningRelay): a killed relay's data path, compiled on its
        maps: adopted with the hooks it has, so that not one packet of a known
        client meets an empty hook; a choice that would differ now is logged and
        takes effect at the next start after a SIGTERM."""
        from ..datapath import redirect
        from ..datapath.relay import XdpUnsupported

        r, path = self.relay, self.relay.config.path
        self.checks = self._check()
        by_index = {c.ifindex: c for c in self.checks}
        forwarding4 = rp.sysctl(f"ipv4/conf/{r.ipv4.name}/forwarding") == "1"
        self.hooks = redirect.choose_hooks(by_index[r.ipv4.ifindex], by_index[r.ipv6.ifindex],
                                           ipv4_forwarding=forwarding4, path=path)
        r.configure_datapath()
        r.prog.egress.set(redirect.xdp_targets(self.checks, path))
        # The checksum veth's way back in (net/csum_veth.py) always takes tc.
        back_in = {r.csum_veth[1]: redirect.HOOK_TC} if r.csum_veth else {}
        if running is not None:
            chosen = {h.ifindex: h for h in self.hooks}
            for ifindex, hook in running.hooks.items():
                if chosen[ifindex].hook != hook:
                    r.log.warning("relay_hook_kept", interface=chosen[ifindex].name, hook=hook,
                                  would_choose=chosen[ifindex].hook, why=chosen[ifindex].why)
            self.hooks = [h if h.hook == running.hooks[h.ifindex] else
                          redirect.HookChoice(h.ifindex, h.name, running.hooks[h.ifindex],
                                              "adopted from the relay that ran before")
                          for h in self.hooks]
            att = r.prog.adopt(running, pin=pin, pin_root=pin_root, pin_ifindex=r.ipv4.ifindex)
            for ifindex in back_in:  # a new pair: csum_veth.create replaced the old one
                att.attach_back_in(ifindex)
            for hook in self.hooks:
                r.log.info("relay_hook", interface=hook.name, hook=hook.hook, why=hook.why,
                           adopted=True)
            return att
        try:
            att = r.prog.attach({**{h.ifindex: h.hook for h in self.hooks}, **back_in},
                                pin=pin, pin_root=pin_root, pin_ifindex=r.ipv4.ifindex)
        except XdpUnsupported as err:
            # A driver without native XDP: tc there (generic XDP would gain nothing).
            self.hooks = [h if h.ifindex != err.ifindex else
                          redirect.HookChoice(h.ifindex, h.name, redirect.HOOK_TC,
                                              f"the driver of {h.name} has no native XDP",
                                              fallback=True)
                          for h in self.hooks]
            att = r.prog.attach({**{h.ifindex: h.hook for h in self.hooks}, **back_in},
                                pin=pin, pin_root=pin_root, pin_ifindex=r.ipv4.ifindex)
        for hook in self.hooks:
            # A fallback is worth a warning: it is slower, and the fix is on a
            # device the relay does not own (a veth's tc is a choice, not one).
            (r.log.warning if hook.fallback and path == "auto" else r.log.info)(
                "relay_hook", interface=hook.name, hook=hook.hook, why=hook.why)
        return att

    def refresh(self) -> None:
        """Ask the kernel again; move devices in or out of the devmap if it changed."""
        from ..datapath import redirect

        r = self.relay
        if r.att is None:
            return
        try:
            checks = self._check()
        except OSError as err:
            r.log.warning("egress_check_failed", error=str(err))
            return
        targets = redirect.xdp_targets(checks, r.config.path)
        if sorted(targets) == r.att.xdp_targets():
            self.checks = checks
            return
        r.sync.call("devmap", r.att.set_xdp_targets, targets)
        before = {c.ifindex: c.takes_redirects for c in self.checks}
        for check in checks:
            if before.get(check.ifindex) != check.takes_redirects:
                # XDP stops redirecting into a device the moment it leaves the
                # devmap: its packets take the slow path instead of vanishing.
                (r.log.info if check.takes_redirects else r.log.warning)(
                    "xdp_target_changed", interface=check.name,
                    xdp_target=check.ifindex in targets, why=check.explain())
        self.checks = checks

    def status(self) -> dict:
        targets = set(self.relay.att.xdp_targets()) if self.relay.att else set()
        return {
            "hooks": [h.as_dict() for h in self.hooks],
            "egress": [{"interface": c.name, "ifindex": c.ifindex, "kind": c.kind,
                        "takes_xdp_redirects": c.takes_redirects,
                        "xdp_target": c.ifindex in targets, "why": c.explain()}
                       for c in self.checks],
        }
