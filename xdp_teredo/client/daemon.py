"""The Teredo client daemon (RFC 4380 §5.2): what `xdp-teredo attach IFACE` runs.

    Qualification (teredo/qualification.py)   PeerList (teredo/peers.py)
            |  actions                               |  actions
            v                                        v
    +----------------------- ClientDaemon (client/) ------------------------+
    | qualify.py: RS, address, MTU, hook     daemon/tunnel.py: peers' actions |
    | interface.py: following the NIC        this file: set-up, what arrives  |
    +------------------------------------------------------------------------+
            |  BPF maps (datapath/)                 |  netlink (net/tunnel.py)
            v                                       v
      XDP + tc on the NIC, tc on the tun      the tun device "teredo"

Set-up (as root, in this order; daemon/base.py undoes what was made if a step
fails): the control socket (the lock against a second client with the same
tunnel), the compile of the BPF programs started in a child (not waited for),
on a veth NIC the checksum veth (client/csum_detour.py), the tunnel, the UDP socket
bound to the NIC's address, the inbound guard, the hook, the NIC watch,
local discovery (client/discovery.py, §5.2.8), the offload probe. Then the skeleton drops root
(--user keeps CAP_NET_ADMIN only) and serves: qualification starts at once on the
slow path (the tun and the socket, as Miredo), and when the programs arrive
handover.py attaches them and hands the trusted peers to the fast path. Adopting a
running data path compiles during set-up instead (its programs carry the traffic).

Events: a UDP datagram is a Router Advertisement for the Qualification, or, once
qualified, goes to PeerList.on_incoming (§5.2.3); a packet read from the tun to
PeerList.on_outgoing (§5.2.4); the Qualification's timer, the PeerList's
deadlines, and every --sync-interval a read of the BPF peer table whose activity
keeps busy peers from expiring (datapath/peersync.py).

Crash-only (docs/reliability.md): a death that runs no teardown (SIGKILL, the
OOM killer) or a crash while serving leaves the fast path running (programs,
maps, the persistent tunnel with its address and routes), and the next `attach`
with the same interface and tunnel adopts all of it (datapath/adopt.py): no
manual step, no packet of a trusted peer lost. SIGTERM and SIGINT remove
everything. `--restart-safe` adds SIGHUP as a hand-over: leave the fast path for
the next instance (an upgrade) and exit 0.

Logs: one event per state change, never per packet: client_started, qualified,
address_changed / state_changed / no_reply_from_server / lost_connectivity /
offline (qualification.py), no_server_answered, peer_trusted, peer_expired,
client_stopped.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from typing import Optional

from ..daemon.base import iso
from ..daemon.control import tunnel_socket
from ..daemon.tunnel import TunnelDaemon
from ..datapath.layout import PeerFlag
from ..errors import MalformedPacket, RuntimeFailure
from ..teredo import constants, encap, guard, icmpv6
from ..teredo import peers as peerlist
from ..teredo.packet import is_bubble, parse_ipv6
from ..teredo.qualification import Mapping, Qualification, State
from ..teredo.ratelimit import Limits
from . import discovery
from .handover import HandingOver
from .mapped_port import UpnpMapping
from .interface import FollowingTheNic
from .csum_detour import ChecksumDetour
from .plan import Plan, pin_root
from .qualify import Qualifying

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

# The echo request of the direct connectivity test (§5.2.9): the nonce is the data;
# identifier and sequence only have to be what the reply echoes.
_ECHO_IDENTIFIER = 0x7E3E


class ClientDaemon(ChecksumDetour, UpnpMapping, Qualifying, HandingOver, FollowingTheNic, TunnelDaemon):
    role = "client"
    extra_signals = (signal.SIGHUP,)
    # Miredo's rate for the ICMPv6 errors we send into the tunnel: one per 100 ms.
    unreachable_limits = Limits(10.0, 2_000_000.0, burst_s=0.1)

    def __init__(self, plan: Plan, *, clock=None, rng=None):
        super().__init__(clock=clock)
        self.plan = plan
        self.config = plan.config
        self.timers = plan.timers
        self.servers = plan.servers
        self._rng = rng
        self.qual: Optional[Qualification] = None
        self.peers = peerlist.PeerList(self.clock, rng=rng, expiry=self.timers.peer_expiry)
        self.hook = None
        self.watch = None
        self.local = None                       # (IPv4Address, port) of the socket
        self.since_wall = self.started_wall
        self.since = self.started
        self._resolve_at: Optional[float] = None
        self._resolving = None
        self._resolved: Optional[tuple] = None  # set by the resolving thread
        # While no server name resolves: which failed and why, how often we tried,
        # when we last said so (qualify.py); why `status` says offline.
        self.unresolved = plan.unresolved
        self.resolve_tries = 0
        self._resolve_logged_at: Optional[float] = None
        self.offline_reason: Optional[str] = None
        self._echo_sequence = 0
        # Restart safety: the mapping a previous instance left installed (resumed
        # when serving starts).
        self._resume: Optional[Mapping] = None
        self.adopted = False
        # The NIC as last seen (net/watch.py tells when to look again).
        self.interface_up = True
        self._address_lost = False
        # The receive hook on the NIC and why (datapath/rxhook.py), chosen at set-up.
        self.receive = None
        # (out, in) ifindexes of the checksum veth on a veth NIC (net/csum_veth.py).
        self.csum_veth = None
        # The loop's deadlines, in this order on every turn.
        self.loop.deadline(self.qualification_due, self.on_qualification_timer)
        self.loop.deadline(self.resolve_due, self.on_resolve_due)
        self.loop.every(self.timers.sync_interval, self.sync_from_datapath, first=0.0)
        self.loop.deadline(self.peers.next_deadline,
                           lambda now: self.carry_out(self.peers.on_timer()))

    # -- set-up, as root ---------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        self.open_control(tunnel_socket(config.tunnel),
                          f"a Teredo client or relay with tunnel {config.tunnel}",
                          "stop it, or use --tunnel NAME")
        # Crash-only: what a previous instance left (killed, crashed, or handed
        # over with SIGHUP) is adopted, whatever the options; half a data path is
        # refused with a line naming `detach` (adopt.find).
        running = self._running_datapath()
        self.own_csum_veth()
        if running is None:
            self._setup_slow_path_first()
        else:
            self._setup_adopting(running)
        self.own_hook()
        self._watch_nic()
        discovery.start(self)
        self.start_offload_probe()
        self.listen()

    def _setup_slow_path_first(self) -> None:
        """A fresh start: the compile runs in its child while we qualify (handover.py)."""
        from ..datapath import rxhook
        from ..net.tunnel import Tunnel

        config, nic = self.config, self.plan.nic
        self.receive = rxhook.for_device(nic.ifindex, nic.name, nic.kind, config.xdp_mode)
        self.start_compile()
        # Persistent: a killed instance's tunnel, address and routes stay for the
        # next one (the fast path redirects into it meanwhile); SIGTERM's teardown
        # deletes it (Tunnel.close).
        self.own_tunnel(Tunnel.create(config.tunnel, mtu=config.mtu, persistent=True))
        self.own_socket(self._bind(None))
        self.start_peer_sync(None)   # no table yet: the PeerList alone decides
        self.slow_path_guard()
        self.log.info("inbound_guard", **self.plan.inbound.describe())

    def _setup_adopting(self, running) -> None:
        from ..datapath import adopt, rxhook
        from ..datapath.client import ClientDatapath
        from ..net.tunnel import Tunnel

        config = self.config
        maps = adopt.open_maps(running)
        try:
            self.prog = ClientDatapath.compile_isolated(peer_max=self.plan.peer_max, maps=maps)
        finally:
            for m in maps.values():
                m.close()
        self.teardown.push_always("BPF programs", self.prog.close)
        self.checkpoint()
        self.receive = rxhook.ReceiveHook(running.ingress, running.xdp_mode,
                                          "adopted from the running data path")
        self.own_tunnel(Tunnel.adopt(config.tunnel))
        previous = self.prog.config.read()
        self.own_socket(self._bind(previous))
        self.own_datapath(self._attach(running))
        self.start_peer_sync(self.att.peers)
        self._resume = self._resumable(previous)
        if self._resume is None:
            # Nothing to carry on with (another address or port now, or it was
            # not qualified): the same devices, a clean slate.
            self.tunnel.clear_address()
            self.att.peers.clear()
            self.configure_datapath_disabled()
        self._guard_and_limits()
        self.fast_path_at = self.clock.monotonic()

    def own_tunnel(self, tunnel) -> None:
        """The tunnel, and what goes on it (addresses, the hook's runs), for the teardown:
        the hook's down/destroy after the addresses are gone, the device last."""
        self.tunnel = tunnel
        self.teardown.push("tunnel", lambda: self.tunnel.close(),
                           keep=lambda: self.tunnel.release())
        self.teardown.push("hook", lambda: self.hook is not None and self.hook.destroy())
        self.teardown.push("addresses", lambda: self.tunnel.clear_address())

    def own_socket(self, sock) -> None:
        self.sock = sock
        self.local = sock.local_address
        self.teardown.push_always("socket", lambda: self.sock.close())

    def own_datapath(self, att) -> None:
        # Removed first, so that no packet takes the fast path with an address
        # that is about to go away.
        self.att = att
        self.teardown.push("data path", att.detach, keep=att.release)
        if self.csum_veth is not None:
            att.attach_csum_veth(*self.csum_veth, offloads_pass=self.offloads_pass)

    def own_hook(self) -> None:
        from .hook import Hook

        self.hook = Hook(self.config.hook, iface=self.tunnel.name, ifindex=self.tunnel.ifindex)
        if self._resume is not None:
            self.hook.resume(self._resume.address, self.tunnel.link_local, self._resume.mtu)

    def _bind(self, previous):
        """Bound to the NIC's address (not 0.0.0.0) and device: the XDP program
        recognises our traffic by exactly this address and port, and the NAT must see
        one source for the socket and the tc program alike. After a restart, the
        same port: the NAT mapping, and so the address, stay."""
        from ..net.udp import TeredoSocket

        nic, port = self.plan.nic, self.config.bind_port
        if previous is not None and previous.local_ipv4 == nic.ipv4 \
                and port in (0, previous.local_port):
            port = previous.local_port
        return TeredoSocket(nic.ipv4, port, device=nic.name)

    def _attach(self, running):
        nic = self.plan.nic
        # Pins under /sys/fs/bpf could not be removed once we are not root; the
        # control socket serves the statistics either way.
        pin = "auto" if self._stays_root() else False
        if running is not None:
            self.adopted = True
            return self.prog.adopt(running, pin=pin, pin_root=pin_root())
        receive = self.receive
        try:
            return self.prog.attach(nic.ifindex, self.tunnel.ifindex, ingress=receive.hook,
                                    xdp_mode=receive.xdp_mode or "auto",
                                    pin=pin, pin_root=pin_root())
        except RuntimeFailure as err:
            if "another XDP program" not in str(err) and "already" not in str(err):
                raise
            raise RuntimeFailure(f"{err} (if a killed client left it: "
                                 f"`xdp-teredo detach {nic.name}`)") from err

    def configure_datapath_disabled(self) -> None:
        from ..datapath.maps import Config

        self.att.configure(Config(local_ipv4=self.local[0], local_port=self.local[1],
                                  enabled=False, mtu=self.tunnel.mtu))

    def _guard_and_limits(self) -> None:
        from ..datapath.limits import SlowPathLimits

        nic, inbound = self.plan.nic, self.plan.inbound
        # The guard's policy is in place before the data path is enabled, and the
        # slow path decides with the same policy over the same maps.
        self.att.guard.configure(inbound)
        self.guard = guard.Guard(inbound, self.att.guard.flows, self.att.guard.fragments,
                                 self.att.guard.allowed, now_ns=time.monotonic_ns)
        self.log.info("inbound_guard", **inbound.describe())
        if nic.kind == "veth" and self.att.ingress == "xdp" and not self.adopted:
            # Forced (--xdp-mode native/generic): XDP on a veth copies each frame a
            # local sender built before it runs (datapath/rxhook.py): say what costs less.
            self.log.info("decap_hint", interface=nic.name, kind=nic.kind,
                          hint="on a veth, --xdp-mode off (decapsulation in tc, what auto "
                               "picks there) costs less CPU per packet than XDP")
        # What may reach this process from the NIC, in XDP (docs/reliability.md).
        self.prog.slow_path.write(SlowPathLimits())

    def _watch_nic(self) -> None:
        from ..net.watch import InterfaceWatch

        self.watch = InterfaceWatch(self.plan.nic.ifindex)
        self.teardown.push_always("interface watch", self.watch.close)
        self.loop.add_reader(self.watch, self.interface_changed)

    def _running_datapath(self):
        """The data path a previous instance left on our NIC and tunnel
        (adopt.Running), or None: no tunnel, or nothing of ours attached."""
        from pyroute2 import IPRoute

        from ..datapath import adopt

        from ..datapath.client import detach_stale

        with IPRoute() as ipr:
            tun = ipr.link_lookup(ifname=self.config.tunnel)
        from ..net.tunnel import find_tun_holders

        if not tun:
            return None
        nic = self.plan.nic.ifindex
        try:
            return adopt.find(nic, tun[0])
        except RuntimeFailure as err:
            if find_tun_holders(self.config.tunnel):
                raise   # a live process owns it: not ours to replace
            # Half a data path (an instance killed half-way through its set-up or
            # teardown), or two mixed: nothing to carry on with; replace it rather
            # than ask for a manual `detach` (crash-only).
            self.log.warning("datapath_not_adoptable", error=str(err), action="replaced")
        detach_stale(nic, tun[0], pin_root=pin_root())
        return None

    def _resumable(self, previous) -> Optional[Mapping]:
        """The mapping the previous instance was qualified with, if we can carry on
        with it: it was enabled, with the same local address and port as ours now,
        and its address is still on the tunnel."""
        if previous is None or not previous.enabled:
            return None
        if (previous.local_ipv4, previous.local_port) != tuple(self.local):
            return None
        if self.tunnel.address is None or self.tunnel.address != previous.teredo_address:
            return None
        parts = peerlist.teredo_parts(previous.teredo_address)
        if parts is None:
            return None
        server, mapped_ip, mapped_port = parts
        return Mapping(server, mapped_ip, mapped_port, previous.teredo_address,
                         self.tunnel.mtu)

    def _stays_root(self) -> bool:
        return self.config.user == "root" or os.geteuid() != 0

    # -- the skeleton's hooks ----------------------------------------------------------

    def privileged_user(self) -> Optional[str]:
        return None if self._stays_root() else self.config.user

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.plan.restart_safe:
            self.keep_datapath = True   # the restart: leave the fast path running
        super().on_signal(signum)

    def crashed(self) -> None:
        # After adopting, a failed set-up leaves what it found running as it was.
        if self.serving_now or self.adopted:
            # A crash of the control plane must not take established traffic with
            # it: the next instance adopts the fast path.
            self.keep_datapath = True

    def serving(self) -> None:
        nic = self.plan.nic
        for note in self.config.notes:
            self.log.info("config_note", note=note)
        self.log.info("client_started", interface=nic.name, tunnel=self.tunnel.name,
                      local=f"{self.local[0]}:{self.local[1]}",
                      xdp=self.att.xdp_attached if self.att else None,
                      decap=self.receive.hook, decap_why=self.receive.why,
                      fast_path=self.fast_path,
                      servers=[str(s) for s in self.servers], user=self.user,
                      control_socket=self.control_socket,
                      restart_safe=self.plan.restart_safe, adopted=self.adopted,
                      replaced=(self.att.replaced or None) if self.att else None)
        if self.att is not None:
            # Adopted: the running programs never stopped carrying the traffic.
            self.log.info("fast_path_ready", seconds=round(self.fast_path_at - self.started, 3),
                          decap=self.att.ingress, decap_why=self.receive.why,
                          xdp=self.att.xdp_attached, adopted=True)
        self.start_qualification()
        self.start_upnp()

    def stopped_fields(self) -> dict:
        return {"kept_datapath": self.keep_datapath or None, **self.counters.activity()}

    # -- what arrives on the socket (what the XDP program left to the slow path) -------

    def on_teredo(self, teredo: encap.TeredoPayload, ip: IPv4Address, port: int) -> None:
        ipv6 = teredo.ipv6
        from_server = (self.qual is not None and ip == self.qual.server
                       and port == constants.TEREDO_PORT)
        icmp_type = ipv6.payload[0] if ipv6.next_header == constants.IPPROTO_ICMPV6 and ipv6.payload else None
        if icmp_type == constants.ICMPV6_ROUTER_ADVERTISEMENT:
            self._router_advertisement(teredo, from_server)
            return
        if self.address is None:
            self.counters.drop("rx_not_qualified")
            return
        if ipv6.dst != self.address and not ipv6.dst.is_multicast \
                and not (ipv6.dst.is_link_local and is_bubble(ipv6)):
            # Another node's traffic (an old address of ours after a mapping
            # change, or garbage): the kernel would not take it either. A bubble
            # to a link-local address may answer our challenge (peers.py).
            self.counters.drop("rx_not_our_address")
            return
        echo_nonce = None
        if icmp_type == constants.ICMPV6_ECHO_REPLY:
            try:
                echo_nonce = icmpv6.parse_echo(ipv6).data
            except MalformedPacket as err:
                self.counters.drop(f"malformed_{err.reason}")
                return
        origin = (teredo.origin.address, teredo.origin.port) if teredo.origin else None
        incoming = peerlist.Incoming(
            source=ipv6.src, destination=ipv6.dst, udp_ip=ip, udp_port=port,
            packet=ipv6.to_bytes(), bubble=is_bubble(ipv6), echo_nonce=echo_nonce,
            from_server=from_server, origin=origin)
        if self.guard is not None and not incoming.bubble and echo_nonce is None \
                and not from_server:
            # Decided before the peer list sees it, as XDP decides before learning:
            # a packet nobody asked for neither makes its sender a trusted peer nor
            # starts a connectivity test through our server on its behalf (the
            # "ping test" abuse, CVE-2006-6266). Bubbles and echo replies (maybe
            # our test's answer) go on; what the peer list delivers is checked again.
            refused = self.guard.inbound(incoming.packet)
            if refused:
                self.counters.drop(refused)
                return
        self.carry_out(self.peers.on_incoming(incoming))
        self._refresh_peer_entry(ipv6.src)

    def _router_advertisement(self, teredo: encap.TeredoPayload, from_server: bool) -> None:
        nonce = teredo.auth.nonce if teredo.auth else None
        probe = self.nat_probe
        if probe is not None and probe.owns(nonce):
            # The secondary address's view of our mapping (teredo/nat_type.py).
            if probe.on_answer(nonce, teredo.origin.address if teredo.origin else None,
                               teredo.origin.port if teredo.origin else None):
                verdict = probe.result(self.clock.monotonic())
                self.log.info("nat_type", **verdict.describe())
                self.counters["nat_probe_answered"] += 1
            return
        self.counters["ra_received"] += 1
        if self.qual is None:
            return
        try:
            ra = icmpv6.parse_router_advertisement(teredo.ipv6)
        except MalformedPacket as err:
            self.counters.drop(f"malformed_{err.reason}")
            return
        # §5.2.1: exactly one prefix option; with none or several the RA is refused
        # (the Qualification counts it as no_prefix).
        prefix = ra.prefixes[0].prefix if len(ra.prefixes) == 1 else None
        self.qualification(self.qual.on_router_advertisement(
            self.clock.monotonic(),
            nonce=teredo.auth.nonce if teredo.auth else None,
            origin_ip=teredo.origin.address if teredo.origin else None,
            origin_port=teredo.origin.port if teredo.origin else None,
            prefix=prefix, mtu=ra.mtu, from_server=from_server))

    # -- what the tun gives (what the tc egress program left to the slow path) ---------

    def on_tun_packet(self, packet: bytes) -> None:
        try:
            ipv6 = parse_ipv6(packet)
        except MalformedPacket as err:
            self.counters.drop(f"tx_malformed_{err.reason}")
            return
        if self.address is None:
            self.counters.drop("tx_not_qualified")
            return
        if ipv6.dst.is_multicast:
            # The kernel's MLD and router solicitations on the tunnel: Teredo has no
            # multicast (§5.2.4 drops it); not worth a look at the peer list.
            self.counters.drop("tx_multicast")
            return
        if ipv6.src != self.address:
            # A peer only trusts what comes from our Teredo address (§5.2.3).
            self.counters.drop("tx_source_not_ours")
            return
        if self.att is None and self.guard is not None:
            # No tc program on the tun yet to record the flow (guard_outbound):
            # the slow path does, so that the answer is let in.
            self.guard.outbound(packet)
        self.carry_out(self.peers.on_outgoing(ipv6.dst, packet))

    # -- the client's part of the peers' actions ----------------------------------------

    def bubble_source(self) -> Optional[IPv6Address]:
        return self.address

    def icmp_source(self) -> Optional[IPv6Address]:
        return self.tunnel.link_local

    def trust_flags(self, address: IPv6Address) -> PeerFlag:
        if not peerlist.teredo_parts(address):
            return PeerFlag.TRUSTED | PeerFlag.RELAY   # a native host behind this relay (§5.2.9)
        return PeerFlag.TRUSTED

    def send_echo(self, peer: IPv6Address, nonce: bytes) -> None:
        """§5.2.9: an echo request with the nonce, from our address, through our server."""
        if self.address is None or self.qual is None:
            self.counters.drop("tx_not_qualified")
            return
        self._echo_sequence = (self._echo_sequence + 1) & 0xFFFF
        echo = icmpv6.build_echo_request(self.address, peer, identifier=_ECHO_IDENTIFIER,
                                         sequence=self._echo_sequence, data=nonce)
        self.send(echo, self.qual.server, constants.TEREDO_PORT, "echo_sent")

    def deliver_from_peer(self, packet: bytes) -> None:
        # What the peer list delivers arrived over Teredo: the inbound guard decides
        # here what XDP decides on the fast path (docs/security.md).
        refused = self.guard.inbound(packet) if self.guard is not None else None
        if refused:
            self.counters.drop(refused)
            return
        self.deliver(packet)

    def _refresh_peer_entry(self, address: IPv6Address) -> None:
        """A trusted peer answered on the slow path (a bubble after its entry went
        stale, §5.2.4): tell the data path, so the next packets take the fast path."""
        peer = self.peers.get(address)
        if peer is None or not peer.trusted or peer.mapping is None:
            return
        self.sync.refresh(address, peer.mapping, self.trust_flags(address))

    def sync_from_datapath(self) -> None:
        """Merge the data path's last_rx/last_tx into the PeerList; expire idle entries
        that the data path learned by itself (the PeerList does not know them)."""
        if self.att is None:
            return
        self.carry_out(self.sync.sync(self.peers, self.clock.monotonic(),
                                      self.timers.peer_expiry))

    # -- what the control socket serves -------------------------------------------------

    def status(self) -> dict:
        """`xdp-teredo status --json`: state, address, server, mapped, nat, since, ..."""
        mapping = self.qual.mapping if self.qual is not None else None
        state = self.qual.state.value if self.qual is not None else State.OFFLINE.value
        tunnel = self.tunnel
        nat_type = self.nat_type() if mapping else None
        return {
            "state": state,
            # Why offline: no server name resolved yet, or no server answered.
            "reason": self.offline_reason if state == State.OFFLINE.value else None,
            "address": str(mapping.address) if mapping else None,
            "server": str(self.qual.server) if self.qual is not None else None,
            "mapped": f"{mapping.mapped_ip}:{mapping.mapped_port}" if mapping else None,
            "nat": self.behind_nat(mapping) if mapping else None,
            # As Windows' `netsh interface teredo show state` (teredo/nat_type.py).
            "nat_type": nat_type.type if nat_type else None,
            "nat_detail": self._nat_detail(nat_type),
            # "mapped A:P" while a UPnP gateway maps our port (client/upnp.py).
            "upnp": self.upnp.describe() if self.upnp else None,
            "since": iso(self.since_wall),
            "since_s": round(self.clock.monotonic() - self.since, 3),
            "mtu": tunnel.mtu if tunnel else None,
            "link_local": str(tunnel.link_local) if tunnel and tunnel.link_local else None,
            "tunnel": self.config.tunnel,
            "ifindex": tunnel.ifindex if tunnel else None,
            "interface": self.plan.nic.name,
            "local": f"{self.local[0]}:{self.local[1]}" if self.local else None,
            "servers": [str(s) for s in self.servers],
            "resolve_tries": self.resolve_tries,
            "xdp": self.att.xdp_attached if self.att else None,
            # Where incoming Teredo is decapsulated: "xdp" or "tc", and why
            # (datapath/rxhook.py: per device under --xdp-mode auto).
            "decap": self.receive.hook if self.receive else None,
            "decap_why": self.receive.why if self.receive else None,
            "checksum_detour": self.detour_status(),   # client/csum_detour.py
            # "compiling": the slow path carries everything until the programs
            # are loaded (handover.py); "on": the fast path carries trusted peers.
            "fast_path": self.fast_path,
            "fast_path_s": round(self.fast_path_at - self.started, 3)
            if self.fast_path_at is not None else None,
            "pid": os.getpid(),
            "user": self.user,
            "started": iso(self.started_wall),
            "peers": len(self.peers),
            "restart_safe": self.plan.restart_safe,
            "inbound": self.inbound_status(self.plan.inbound),
            "adopted": self.adopted,
            "interface_up": self.interface_up,
        }

    def observe(self):
        seen = super().observe()
        seen.state = self.qual.state.value if self.qual is not None else State.OFFLINE.value
        seen.states = tuple(s.value for s in State)
        seen.state_since = self.since_wall
        return seen

    def counter_table(self) -> dict:
        table = super().counter_table()
        table["ra_ignored"] = dict(self.qual.ignored) if self.qual is not None else {}
        return table
