"""The Teredo relay daemon (RFC 4380 §5.4): what `xdp-teredo relay` runs.

Wiring only; the decisions live elsewhere:
- the fast path, both directions, in BPF (bpf/relay.c, datapath/relay.py):
  Teredo from a client whose IPv6 source embeds its UDP source is decapsulated and
  forwarded natively (§5.4.2); native IPv6 to a trusted, fresh client is
  encapsulated and forwarded out of the IPv4 side (§5.4.1);
- which hook each device gets, XDP or tc, from what the kernel says about XDP
  redirects into the other side (datapath/redirect.py; relay/egress.py);
- the §5.4.1/§5.4.2 policy for everything the fast path leaves alone, in
  teredo/peers.py (PeerList, relay mode): queue, bubble through the client's server
  and directly, trust on the answer, flush.

The slow path's two doors, as in Miredo's relay (daemon/tunnel.py): a tun device
with the route 2001::/32, into which the kernel forwards native IPv6 to a Teredo
client that the fast path did not take; and a UDP socket on the relay's IPv4
address and port 3544 for the Teredo packets the fast path did not take.
Decapsulated packets of the slow path are written into the tun, where the kernel
forwards them like any packet.

Once a client answers, it is installed in the BPF peer map, and its traffic takes
the fast path. The data path also learns clients by itself (§5.4.2), so the
relay's state is soft: a restarted relay, or another relay taking over, is taught
again by the traffic (docs/scaling.md).
"""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Optional

from ..daemon.base import iso
from ..daemon.control import tunnel_socket
from ..daemon.tunnel import TunnelDaemon
from ..errors import MalformedPacket, RuntimeFailure
from ..teredo import constants, encap, guard
from ..teredo import peers as peerlist
from ..teredo.packet import is_bubble, parse_ipv6
from ..teredo.ratelimit import Limits
from ..net import csum_veth
from . import announce, egress
from . import plan as rp

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

# How often peers the data path learned by itself (not in the PeerList) are
# checked for idleness; they are removed after PEER_EXPIRY without traffic.
SWEEP_INTERVAL = 30.0


class RelayDaemon(TunnelDaemon):
    role = "relay"
    unreachable_limits = Limits(constants.RELAY_ICMPV6_ERRORS_PER_S, 2_000_000.0)
    verbose_peers = False   # thousands of clients: counted, logged at debug level

    def __init__(self, config: rp.RelayConfig, *, clock=None, rng=None):
        super().__init__(clock=clock)
        self.config = config
        self.rng = rng
        self.peers = peerlist.PeerList(self.clock, rng=rng, relay=True,
                                       capacity=config.max_peers, accept_unknown=config.learn)
        self.ipv4 = self.ipv6 = None       # plan.Device
        self.csum_veth = None              # (out, in) ifindexes of net/csum_veth.py
        self.address: Optional[IPv4Address] = None
        self.icmp_address: Optional[IPv6Address] = None
        self.bubble_address = rp.bubble_source(rng)
        self.egress = egress.Egress(self)
        self.announcement: Optional[announce.Announcement] = None   # --announce-table
        self.loop.deadline(self.peers.next_deadline, self.peer_timers)
        self.loop.every(egress.CHECK_INTERVAL, self.egress.refresh)
        self.loop.every(SWEEP_INTERVAL, self._sweep_learned)
        if config.stats_interval > 0:
            self.loop.every(config.stats_interval, self._log_stats)

    # -- set-up -------------------------------------------------------------------------

    def setup(self) -> None:
        from ..datapath import adopt
        from ..datapath import stats as dp_stats
        from ..datapath.relay import RelayDatapath
        from ..net.tunnel import Tunnel
        from ..net.udp import TeredoSocket

        cfg = self.config
        self.ipv4 = rp.device(cfg.ipv4_iface, "--ipv4-iface")
        self.ipv6 = rp.device(cfg.ipv6_iface, "--ipv6-iface")
        self.address = rp.bind_address(cfg, self.ipv4)
        rp.check_ipv6_forwarding(*{self.ipv4, self.ipv6})
        self.icmp_address = rp.first_global_ipv6(self.ipv6, self.ipv4)
        pin_root = cfg.pin_root or dp_stats.DEFAULT_PIN_ROOT

        self.open_control(tunnel_socket(cfg.tunnel),
                          f"a Teredo client or relay with tunnel {cfg.tunnel}",
                          "stop it, or use --tunnel NAME")
        # Crash-only: a killed relay's programs keep forwarding for the clients they
        # know while this one compiles, on their maps, and then adopts them.
        running = self._running_datapath(pin_root)
        self.tunnel = Tunnel.create(cfg.tunnel, mtu=constants.TEREDO_MTU)
        self.teardown.push("tunnel", self.tunnel.close)
        # 2001::/32 into the tun: what the fast path leaves reaches the control plane.
        self.tunnel.add_route(constants.TEREDO_PREFIX)
        self.sock = TeredoSocket(self.address, cfg.port)
        self.teardown.push_always("socket", self.sock.close)
        self.checkpoint()
        maps = adopt.open_maps(running) if running is not None else {}
        try:
            self.prog = RelayDatapath.compile_isolated(peer_max=cfg.max_peers, maps=maps)
        finally:
            for m in maps.values():
                m.close()
        self.teardown.push_always("BPF programs", self.prog.close)
        self.checkpoint()
        # Left in place by a crash (kept with the data path), replaced at the next start.
        self.csum_veth = csum_veth.create(cfg.tunnel, owner="relay", forwarding=True)
        self.teardown.push("checksum veth", lambda: csum_veth.remove(cfg.tunnel))
        # Pins under the bpffs could not be removed once we are not root: a relay
        # that drops root pins nothing (the control socket serves `stats`).
        self.att = self.egress.attach(pin_root, running,
                                      pin="auto" if self._stays_root() else False)
        if not self._stays_root() and cfg.pin_root:
            self.log.warning("maps_not_pinned", pin_root=cfg.pin_root,
                             reason=f"the relay runs as {cfg.user} after set-up: pins need "
                                    "--user root; `xdp-teredo stats` asks the control socket")
        self.teardown.push("data path", self.att.detach, keep=self.att.release)
        self.start_peer_sync(self.att.peers)
        self.listen()
        if cfg.announce_table is not None:
            self.announcement = announce.Announcement.open(cfg.announce_table,
                                                           self.tunnel.ifindex)
            self.teardown.push_always("announcement socket", self.announcement.close)

    # -- privileges and crashes ---------------------------------------------------------

    def _stays_root(self) -> bool:
        return self.config.user == "root" or os.geteuid() != 0

    def privileged_user(self) -> Optional[str]:
        """The relay gives up root like the client (daemon/privileges.py) and keeps
        only CAP_NET_ADMIN (required_capabilities): its teardown detaches the XDP and
        tc programs and deletes the tunnel and its route (netlink). Nothing else
        needs privilege once set up: the UDP socket on port 3544 is bound, the maps
        (peers, devmap, config, guard) are fds opened as root, the slow path reads
        and writes the tun's fd and sends on the socket; no raw socket (its ICMPv6
        errors go into the tun), no file to open."""
        return None if self._stays_root() else self.config.user

    def crashed(self) -> None:
        # Crash-only: the data path keeps carrying the clients it knows; the next
        # relay adopts it (or, once set-up adopted it, it stays as it was found).
        if self.serving_now or (self.att is not None and self.att.adopted):
            self.keep_datapath = True

    def _running_datapath(self, pin_root: str):
        """What a killed relay left on our devices (adopt.RunningRelay), or None;
        anything of ours there that cannot be adopted (half of it, mixed maps) is
        removed: a relay's state is soft, its clients are learned again."""
        from ..datapath import adopt
        from ..datapath.relay import detach_stale

        devices = {self.ipv4.ifindex, self.ipv6.ifindex}
        try:
            running = adopt.find_relay(devices)
        except RuntimeFailure as err:
            self.log.warning("datapath_not_adoptable", error=str(err), action="replaced")
            running = None
        if running is not None:
            self.log.info("relay_datapath_found", **running.describe())
            return running
        detach_stale(devices, pin_root=pin_root, pin_ifindex=self.ipv4.ifindex)
        return None

    def configure_datapath(self) -> None:
        """Configuration, guard and limits, before anything is attached: the
        programs never see a packet without them."""
        from ..datapath.limits import RELAY_LIMITS
        from ..datapath.maps import Config

        cfg = self.config
        self.prog.config.write(Config(
            local_ipv4=self.address, local_port=cfg.port, nic_ifindex=self.ipv4.ifindex,
            tun_ifindex=self.tunnel.ifindex, enabled=True, learn_peers=cfg.learn, relay=True,
            peer_timeout=constants.PEER_RECENT, mtu=constants.TEREDO_MTU, l2_len=14,
            csum_out_ifindex=(self.csum_veth or (0, 0))[0],
            csum_in_ifindex=(self.csum_veth or (0, 0))[1]))
        # The guard too; the slow path decides with the same policy and maps.
        self.prog.guard.configure(cfg.inbound)
        self.guard = guard.Guard(cfg.inbound, self.prog.guard.flows, self.prog.guard.fragments,
                                 self.prog.guard.allowed, now_ns=time.monotonic_ns)
        self.log.info("inbound_guard", **cfg.inbound.describe())
        # What may reach this process from the IPv4 side, in XDP (docs/reliability.md).
        self.prog.slow_path.write(RELAY_LIMITS)

    def serving(self) -> None:
        if self.announcement is not None:
            # Attached and listening: tell the routing daemon (relay/announce.py).
            self.announcement.publish()
            self.teardown.push_always(f"announcement in table {self.announcement.table}",
                                      self.announcement.withdraw)
        status = self.status()
        self.log.info("relay_started", ipv4=status["ipv4"], port=status["port"],
                      ipv4_iface=status["ipv4_iface"], ipv6_iface=status["ipv6_iface"],
                      tunnel=status["tunnel"],
                      hooks={h["interface"]: h["hook"] for h in status["hooks"]},
                      xdp_targets=[e["interface"] for e in status["egress"] if e["xdp_target"]],
                      pin_dir=status["pin_dir"], announce=status["announce"])

    def stopped_fields(self) -> dict:
        if self.att is None:
            return dict(self.counters)
        fast = self.att.stats()
        return {"decapsulated": fast["decapsulated"]["packets"],
                "encapsulated": fast["encapsulated"]["packets"], **self.counters}

    def status_line(self) -> str:
        """systemd's STATUS= (daemon/notify.py). No peer count: counting the BPF
        table walks up to --max-peers keys, and this is read every few seconds."""
        from ..daemon.render import status_summary

        return status_summary({
            "role": "relay", "state": "relaying" if self.att is not None else "starting",
            "ipv4": str(self.address) if self.address else None, "port": self.config.port,
            "ipv4_iface": self.config.ipv4_iface, "ipv6_iface": self.config.ipv6_iface})

    # -- deadlines ---------------------------------------------------------------------

    def peer_timers(self, now: float) -> None:
        # Before on_timer acts, the data path's activity of the peers it would act
        # on (expiry must see fast-path traffic), and of those holding packets (an
        # answer seen on the fast path releases them): one map lookup each, not one
        # per peer of a list that holds up to --max-peers. Other peers' activity
        # could only push their own deadlines later.
        watched = dict.fromkeys(p.address for p in self.peers.due() + self.peers.holding())
        self.carry_out(self.sync.observe_many(watched, self.peers) + self.peers.on_timer())

    def _sweep_learned(self) -> None:
        """Peers the data path learned and nobody used for PEER_EXPIRY go (the LRU
        bounds the table anyway; this keeps `peers` meaningful)."""
        if self.sync is not None:
            self.sync.sync(self.peers, self.clock.monotonic(), constants.PEER_EXPIRY, observe=False)

    def _log_stats(self) -> None:
        fast = self.att.stats()
        self.log.info("relay_stats", decapsulated=fast["decapsulated"]["packets"],
                      encapsulated=fast["encapsulated"]["packets"], peers=len(self.att.peers),
                      **dict(self.counters))

    # -- the slow path: Teredo side ------------------------------------------------------

    def on_teredo(self, teredo: encap.TeredoPayload, ip: IPv4Address, port: int) -> None:
        if teredo.auth is not None:
            # Qualification traffic (§5.1.1): a relay is nobody's server.
            self.counters.drop("authentication_header")
            return
        ipv6 = teredo.ipv6
        origin = (teredo.origin.address, teredo.origin.port) if teredo.origin else None
        incoming = peerlist.Incoming(source=ipv6.src, destination=ipv6.dst, udp_ip=ip,
                                     udp_port=port, packet=ipv6.to_bytes(),
                                     bubble=is_bubble(ipv6), origin=origin)
        self.carry_out(self.sync.observe(ipv6.src, self.peers) + self.peers.on_incoming(incoming))

    # -- the slow path: native side ------------------------------------------------------

    def on_tun_packet(self, packet: bytes) -> None:
        try:
            ipv6 = parse_ipv6(packet)
        except MalformedPacket as err:
            self.counters.drop(f"tun_{err.reason}")
            return
        # Native IPv6 to a client: inbound for that client, as in BPF (lib/guard.h).
        refused = self.guard.inbound(packet) if self.guard is not None else None
        if refused:
            self.counters.drop(refused)
            return
        self.carry_out(self.sync.observe(ipv6.dst, self.peers)
                       + self.peers.on_outgoing(ipv6.dst, packet))

    # -- the relay's part of the peers' actions -----------------------------------------

    def bubble_source(self) -> IPv6Address:
        return self.bubble_address

    def icmp_source(self) -> Optional[IPv6Address]:
        return self.icmp_address

    def is_native_peer(self, address) -> bool:
        return False   # a relay's peers are its Teredo clients

    def deliver_from_peer(self, packet: bytes) -> None:
        """Into the tun: the kernel forwards it natively like any routed packet."""
        if self.guard is not None:
            self.guard.outbound(packet)  # a client's flow: its answers may come back
        self.deliver(packet)

    # -- what the control socket serves -------------------------------------------------

    def observe(self):
        seen = super().observe()
        seen.state = "relaying" if self.att is not None else "starting"
        seen.states = ("starting", "relaying")
        return seen

    def status(self) -> dict:
        return {
            "role": "relay",
            "state": "relaying" if self.att is not None else "starting",
            "ipv4": str(self.address) if self.address else None,
            "port": self.config.port,
            "ipv4_iface": self.config.ipv4_iface,
            "ipv6_iface": self.config.ipv6_iface,
            "tunnel": self.config.tunnel,
            "path": self.config.path,
            **self.egress.status(),
            "bubble_source": str(self.bubble_address),
            "icmp_source": str(self.icmp_address) if self.icmp_address else None,
            "pin_dir": self.att.pin_dir if self.att else None,
            "adopted": bool(self.att is not None and self.att.adopted),
            "user": self.user,
            "peers": len(self.att.peers) if self.att else 0,
            "pending": sum(1 for p in self.peers if not p.trusted),
            "pid": os.getpid(),
            "started": iso(self.started_wall),
            "uptime_s": self.uptime(),
            "inbound": self.inbound_status(self.config.inbound),
            "announce": self.announcement.describe() if self.announcement else None,
        }
