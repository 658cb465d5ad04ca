"""The client's side of qualification (RFC 4380 §5.2.1, §5.2.5, §5.2.7): carrying
out what teredo/qualification.py decides.

The Qualification state machine says "send this RS", "the address changed", "the
MTU changed", "flush the peers", "offline"; this mixin of ClientDaemon does it:
the RS on the socket, the address on the tunnel and in the data path's config,
the hook, the peer table. When no server name resolves (no DNS yet, at boot; a
--server name that failed temporarily included: servers.TemporaryFailure), it
stays offline and looks the names up again in a thread, so that the loop keeps
answering `status`: after 1 s, then twice as long each time up to
RESOLVE_RETRY_MAX (or --restart-delay if shorter), logging one line a minute at
most, as wg-quick retries its endpoints' names.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Optional

from ..errors import RuntimeFailure, UsageError
from ..teredo import constants, encap, icmpv6
from ..teredo.nat_type import NatProbe
from ..teredo.qualification import (
    AddressChanged,
    FlushPeers,
    Mapping,
    MtuChanged,
    Offline,
    Qualification,
    SendRouterSolicitation,
    State,
    StateChanged,
)

IPv6Address = ipaddress.IPv6Address

# Back-off of the name lookups while no server name resolves: 1 s, doubling to this.
RESOLVE_RETRY_MAX = 30.0
# At most one log line per this many seconds while the names keep failing.
RESOLVE_LOG_EVERY = 60.0
# Why `status` says offline.
NO_NAME_RESOLVED = "no server name resolved yet (retrying)"
NO_SERVER_ANSWERED = "no server answered"

HINT = ("no Teredo server answered: most public Teredo servers are gone; run "
        "`xdp-teredo server --bind ADDR` on any host with two consecutive public IPv4 "
        "addresses and use --server ADDR")


class Qualifying:
    """Mixed into ClientDaemon: the state lives there (qual, servers, tunnel, att...)."""

    nat_probe = None   # the NatProbe of the current mapping (teredo/nat_type.py)

    @property
    def address(self) -> Optional[IPv6Address]:
        mapping = self.qual.mapping if self.qual is not None else None
        return mapping.address if mapping else None

    def qualification_due(self) -> Optional[float]:
        return self.qual.timer_at if self.qual is not None else None

    def on_qualification_timer(self, now: float) -> None:
        self.qualification(self.qual.on_timer(now))

    def start_qualification(self) -> None:
        now = self.clock.monotonic()
        resume, self._resume = self._resume, None
        if not self.servers:
            if resume is not None:
                self.address_changed(resume, None)  # nobody to confirm it with
            # No name resolved (no DNS yet?): stay offline and try again later.
            self._names_unresolved(now)
            return
        self.resolve_tries = 0
        self.qual = Qualification(
            [s.primary for s in self.servers], rng=self._rng,
            timeout=self.timers.qualification_timeout, tries=self.timers.qualification_tries,
            refresh_interval=self.timers.refresh_interval,
            restart_delay=self.timers.restart_delay,
            restart_delay_max=self.timers.restart_delay_max)
        if resume is not None:
            self.qualification(self.qual.resume(now, resume))
        else:
            self.qualification(self.qual.start(now))

    def status_line(self) -> str:
        """systemd's STATUS= (daemon/notify.py), from the qualification alone: it is
        read at every change and every few seconds, and status() also walks the
        guard's flow map."""
        from ..daemon.render import status_summary

        qual = self.qual
        mapping = qual.mapping if qual is not None else None
        return status_summary({
            "state": qual.state.value if qual is not None else State.OFFLINE.value,
            "address": str(mapping.address) if mapping else None,
            "server": str(qual.server) if qual is not None else None,
            "mapped": f"{mapping.mapped_ip}:{mapping.mapped_port}" if mapping else None,
            "interface": self.plan.nic.name})

    # -- resolving the names again, off the loop's thread --

    def _names_unresolved(self, now: float) -> None:
        """Offline for want of a server address: why (status), when to try again
        (back-off), and a log line if the last is a minute old."""
        unresolved = self.unresolved or tuple((n, f"{n}: no address") for n in self.config.servers)
        self.offline_reason = f"{NO_NAME_RESOLVED}: " + "; ".join(
            reason for _, reason in unresolved[:3]) + (
            f"; and {len(unresolved) - 3} more" if len(unresolved) > 3 else "")
        cap = min(RESOLVE_RETRY_MAX, max(self.timers.restart_delay, 1.0))
        delay = min(cap, 2.0 ** self.resolve_tries)
        self.resolve_tries += 1
        self._resolve_at = now + delay
        if self._resolve_logged_at is not None \
                and now - self._resolve_logged_at < RESOLVE_LOG_EVERY:
            return
        self._resolve_logged_at = now
        self.log.warning("no_server_answered", servers=list(self.config.servers),
                         reason="none of the servers resolved", offline=self.offline_reason,
                         tries=self.resolve_tries, hint=HINT,
                         retry_in_s=round(delay, 1))

    def resolve_due(self) -> Optional[float]:
        if self._resolved is not None:
            return 0.0   # the thread is done: take its answer now
        return self._resolve_at

    def on_resolve_due(self, now: float) -> None:
        if self._resolved is not None:
            (found, unresolved), self._resolved = self._resolved, None
            self._resolving = None
            self.servers, self.unresolved = found, unresolved
            if found:
                self.offline_reason = None
                self.log.info("servers_resolved", servers=[str(s) for s in found],
                              tries=self.resolve_tries)
            self.start_qualification()
            return
        self._resolve_at = None
        if self._resolving is not None:
            return
        from .plan import resolve

        def work():
            # Threads are fine here: privileges were dropped before the loop started.
            unresolved: list = []
            try:
                found = resolve(self.config, unresolved=unresolved)
            except UsageError as err:   # a permanent failure now: still offline
                found, unresolved = (), [("", str(err))]
            self._resolved = (found, tuple(unresolved))
            self.loop.wake()

        self._resolving = threading.Thread(target=work, name="resolve-servers", daemon=True)
        self._resolving.start()

    # -- the Qualification's actions --

    def qualification(self, actions: list) -> None:
        """Carry out what the Qualification asked, in order."""
        if any(isinstance(a, StateChanged) and a.new is State.QUALIFIED for a in actions) \
                and not any(isinstance(a, AddressChanged) for a in actions):
            # Qualified with the mapping we resumed (a restart): the address stayed.
            mapping = self.qual.mapping
            self.log.info("qualified", address=str(mapping.address), server=str(mapping.server),
                          mapped=f"{mapping.mapped_ip}:{mapping.mapped_port}",
                          nat=self.behind_nat(mapping), mtu=mapping.mtu,
                          tunnel=self.tunnel.name, resumed=True)
        for action in actions:
            if isinstance(action, SendRouterSolicitation):
                # §5.2.1: from the restricted link-local to all-routers, with an
                # authentication header that carries only the nonce (as Miredo).
                rs = icmpv6.build_router_solicitation(
                    constants.LINK_LOCAL_CONE if action.cone else constants.LINK_LOCAL_RESTRICTED)
                payload = encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=action.nonce))
                self.send(payload, action.server, constants.TEREDO_PORT, "rs_sent")
            elif isinstance(action, StateChanged):
                self.since = self.clock.monotonic()
                self.since_wall = time.time()
            elif isinstance(action, AddressChanged):
                self.address_changed(action.old, action.new)
            elif isinstance(action, MtuChanged):
                self.mtu_changed(action)
            elif isinstance(action, FlushPeers):
                self.carry_out(self.peers.flush())
                # Entries the data path learned by itself are not in the PeerList:
                # they were trusted on the old address as much as the others.
                self.sync.clear()
            elif isinstance(action, Offline):
                self.offline_reason = (f"{NO_SERVER_ANSWERED} (tried "
                                       f"{', '.join(str(s) for s in self.servers)}; retrying)")
                self.log.warning("no_server_answered", servers=[str(s) for s in self.servers],
                                 next_server=str(action.next_server), hint=HINT,
                                 retry_in_s=round(action.retry_at - self.clock.monotonic(), 1))
            # SetTimer: the loop reads qual.timer_at. ServerLost: qualification.py
            # logged it (no_reply_from_server / lost_connectivity).
        self._probe_nat()
        self.publish_status()   # systemd's STATUS= (daemon/notify.py), if it changed

    def _probe_nat(self) -> None:
        """Once per mapping: one RS to the server's secondary address, whose answer
        says what kind of NAT we are behind (teredo/nat_type.py)."""
        mapping = self.qual.mapping if self.qual is not None else None
        if mapping is None or self.qual.state is not State.QUALIFIED or self.local is None:
            return
        mapped = (mapping.mapped_ip, mapping.mapped_port)
        probe = self.nat_probe
        if probe is not None and (probe.mapped, probe.primary) == (mapped, mapping.server):
            return
        secondary = next((s.secondary for s in self.servers if s.primary == mapping.server), None)
        if secondary is None:
            return
        probe = NatProbe(tuple(self.local), mapped, secondary, self.clock.monotonic(),
                         primary_server=mapping.server, rng=self._rng)
        self.nat_probe = probe
        rs = icmpv6.build_router_solicitation(constants.LINK_LOCAL_RESTRICTED)
        payload = encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=probe.nonce))
        self.send(payload, secondary, constants.TEREDO_PORT, "nat_probe_sent")

    def nat_type(self):
        """What the probe found (a NatType), or None before the first mapping."""
        if self.nat_probe is None:
            return None
        return self.nat_probe.result(self.clock.monotonic())

    def address_changed(self, old: Optional[Mapping], new: Optional[Mapping]) -> None:
        try:
            if new is None:
                self.tunnel.clear_address()
                self.configure_datapath()
                self.hook.down()
                return
            if self.tunnel.address is None:
                self.tunnel.set_address(new.address)
            else:
                self.tunnel.replace_address(self.tunnel.address, new.address)
            if new.mtu != self.tunnel.mtu:
                self.tunnel.set_mtu(new.mtu)
            self.configure_datapath()
            self.hook.up(new.address, self.tunnel.link_local, new.mtu)
        except RuntimeFailure as err:
            # Netlink refused (someone removed the tunnel?): say so; the next
            # refresh or requalification tries again.
            self.counters["address_apply_failed"] += 1
            self.log.error("address_apply_failed", error=str(err))
            return
        if old is None:
            self.log.info("qualified", address=str(new.address), server=str(new.server),
                          mapped=f"{new.mapped_ip}:{new.mapped_port}", nat=self.behind_nat(new),
                          mtu=new.mtu, tunnel=self.tunnel.name)

    def mtu_changed(self, action: MtuChanged) -> None:
        try:
            self.tunnel.set_mtu(action.new)
            self.configure_datapath()
            self.hook.up(action.mapping.address, self.tunnel.link_local, action.new)
        except (RuntimeFailure, ValueError) as err:
            self.counters["address_apply_failed"] += 1
            self.log.error("mtu_apply_failed", error=str(err), mtu=action.new)

    def configure_datapath(self) -> None:
        from ..datapath.maps import Config

        if self.att is None:
            return   # no data path yet: handover.py writes the config when it attaches
        mapping = self.qual.mapping if self.qual is not None else None
        self.att.configure(Config(
            local_ipv4=self.local[0], local_port=self.local[1],
            teredo_address=mapping.address if mapping else IPv6Address("::"),
            # Until qualified every Teredo packet goes to the slow path (rx/tx_disabled).
            enabled=mapping is not None, learn_peers=True,
            peer_timeout=constants.PEER_RECENT, mtu=self.tunnel.mtu))

    def behind_nat(self, mapping: Mapping) -> bool:
        """Whether a NAT sits between us and the server: it saw another address/port."""
        return (mapping.mapped_ip, mapping.mapped_port) != tuple(self.local)
