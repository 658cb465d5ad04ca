"""The Teredo relay (RFC 4380 §5.4): `xdp-teredo relay --ipv4-iface IF4 --ipv6-iface IF6`.

Wiring only; the decisions live elsewhere:
- the fast path, both directions, in BPF (bpf/teredo_relay.c, datapath/relay.py):
  Teredo from a client whose IPv6 source embeds its UDP source is decapsulated and
  forwarded natively (§5.4.2); native IPv6 to a trusted, fresh client is
  encapsulated and forwarded out of the IPv4 side (§5.4.1);
- which hook each device gets, XDP or tc, from what the kernel says about XDP
  redirects into the other side (datapath/redirect.py);
- the §5.4.1/§5.4.2 policy for everything the fast path leaves alone, in
  teredo/peers.py (PeerList, relay mode): queue, bubble through the client's server
  and directly, trust on the answer, flush.

The slow path's two doors, as in Miredo's relay:
- a tun device with the route 2001::/32: native IPv6 to a Teredo client that the
  fast path did not take is forwarded into it by the kernel, and read here;
- a UDP socket on the relay's IPv4 address and port 3544: Teredo packets the fast
  path did not take (bubbles, unknown states) arrive there.
Decapsulated packets of the slow path are written into the tun, where the kernel
forwards them like any packet: neighbour resolution, hop limit, ICMPv6 errors.

Once a client answers, it is installed in the BPF peer map (trusted, fresh), and its
traffic takes the fast path. The data path also learns clients by itself (§5.4.2),
so the relay's state is soft: a restarted relay, or another relay taking over, is
taught again by the traffic (docs/scaling.md).

Control socket: the one a client would have (xdp_teredo/control.py, one Teredo tunnel
per network namespace), answering "status", "peers", "stats", "counters"; so
`xdp-teredo peers` and `status` work on a relay host too. The maps are pinned like
the client's, so `xdp-teredo stats` reads them (with a bpffs at the pin root).
"""

from __future__ import annotations

import collections
import datetime
import errno
import ipaddress
import os
import selectors
import signal
import socket
import time
from dataclasses import dataclass
from typing import List, Optional

from xdp_teredo import log
from xdp_teredo.errors import MalformedPacket, RuntimeFailure, UsageError
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, guard, icmpv6
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo import peers as peerlist
from xdp_teredo.teredo.clock import Clock, SystemClock
from xdp_teredo.teredo.ipv4 import as_ipv4, is_global_unicast
from xdp_teredo.teredo.ratelimit import Limits, TokenBucket

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

_log = log.get("xdp_teredo.relay")

DEFAULT_TUNNEL = "teredo"          # Miredo's InterfaceName default, relay or client
# How often the kernel is asked again whether each side takes XDP redirects: a
# neighbour may switch GRO or XDP off on its end of a veth at any time.
EGRESS_CHECK_INTERVAL = 5.0
# How often peers the data path learned by itself (not in the PeerList) are
# checked for idleness; they are removed after PEER_EXPIRY without traffic.
SWEEP_INTERVAL = 30.0
# Datagrams / tun packets handled per wake-up before looking at the rest.
_BATCH = 64
_TUN_ROUTE_METRIC = C.DEFAULT_ROUTE_METRIC


@dataclass(frozen=True)
class RelayConfig:
    """What the command line says."""

    ipv4_iface: str
    ipv6_iface: str
    bind: Optional[IPv4Address] = None     # default: IF4's first global unicast IPv4
    port: int = C.TEREDO_PORT
    tunnel: str = DEFAULT_TUNNEL
    path: str = "auto"                     # auto | xdp | tc (datapath/redirect.py)
    max_peers: int = C.RELAY_PEER_MAX
    learn: bool = True                     # the data path learns §5.4.2 clients itself
    pin_root: Optional[str] = None         # default: datapath.stats.DEFAULT_PIN_ROOT
    stats_interval: float = 0.0
    # The inbound guard for the clients it serves (docs/security.md): open by
    # default, a relay carries whatever its clients asked for and more.
    inbound: guard.Settings = guard.Settings(policy=guard.Policy.OPEN)


@dataclass(frozen=True)
class Device:
    name: str
    ifindex: int


# --------------------------------------------------------------------------- set-up help


def _device(name: str, option: str) -> Device:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    if not found:
        raise UsageError(f"{option} {name}: no such interface in this network namespace")
    return Device(name, found[0])


def _addresses(ifindex: int, family: int) -> List[ipaddress._BaseAddress]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                for a in ipr.get_addr(family=family, index=ifindex)]


def _bind_address(config: RelayConfig, ipv4: Device) -> IPv4Address:
    """The relay's IPv4 address: given, or the first global unicast one on IF4.
    Clients are told it in every packet the relay sends; it must be public."""
    if config.bind is not None:
        address = as_ipv4(config.bind)
        if not is_global_unicast(address):
            raise UsageError(f"--bind {address}: not a global unicast IPv4 address "
                             "(Teredo clients refuse to send to private ones)")
        return address
    for address in _addresses(ipv4.ifindex, socket.AF_INET):
        if is_global_unicast(address):
            return address
    raise UsageError(f"--ipv4-iface {ipv4.name} has no global unicast IPv4 address; "
                     "give one with --bind")


def _sysctl(path: str) -> Optional[str]:
    try:
        with open(f"/proc/sys/net/{path}") as f:
            return f.read().strip()
    except OSError:
        return None


def _check_ipv6_forwarding(*devices: Device) -> None:
    """A relay is an IPv6 router: the kernel forwards the slow path's packets, and
    bpf_fib_lookup refuses IPv6 lookups on a device without forwarding."""
    off = [d.name for d in devices if _sysctl(f"ipv6/conf/{d.name}/forwarding") != "1"]
    if off:
        raise RuntimeFailure(
            f"IPv6 forwarding is off on {', '.join(off)}: a relay forwards IPv6 "
            "(sysctl -w net.ipv6.conf.all.forwarding=1)")


def _first_global_ipv6(*devices: Device) -> Optional[IPv6Address]:
    """The source of the relay's own ICMPv6 errors (RFC 4443 §2.2: an address of ours)."""
    for device in devices:
        for address in _addresses(device.ifindex, socket.AF_INET6):
            if not (address.is_link_local or address.is_multicast or address.is_loopback
                    or address.is_unspecified or address in C.TEREDO_PREFIX):
                return address
    return None


def bubble_source(rng=None) -> IPv6Address:
    """A link-local source for the relay's bubbles, as Miredo's relay uses (fe80::/64,
    64 random bits, universal/local bit clear as RFC 4291 §2.5.1 wants for them)."""
    iid = bytearray((rng or os.urandom)(8))
    iid[0] &= 0xFC
    return IPv6Address(bytes.fromhex("fe80000000000000") + bytes(iid))


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(timespec="seconds")


def _age(now_ns: int, then_ns: int) -> Optional[float]:
    return round((now_ns - then_ns) / 1e9, 3) if then_ns else None


# --------------------------------------------------------------------------- the relay


class Relay:
    """Owns the tun, the socket, the data path and the control socket.

    Relay(config).setup() makes everything (undoing it all if a step fails);
    serve() runs until stop(); shutdown() removes everything, in reverse.
    """

    def __init__(self, config: RelayConfig, *, clock: Optional[Clock] = None, rng=None):
        self.config = config
        self.clock = clock or SystemClock()
        self.rng = rng
        self.peers = peerlist.PeerList(self.clock, rng=rng, relay=True, capacity=config.max_peers,
                                       accept_unknown=config.learn)
        self.counters: collections.Counter = collections.Counter()
        self.ipv4 = self.ipv6 = None       # Device
        self.address: Optional[IPv4Address] = None
        self.icmp_source: Optional[IPv6Address] = None
        self.bubble_source = bubble_source(rng)
        self.hooks: list = []              # redirect.HookChoice
        self.egress: list = []             # redirect.EgressCheck
        self.tunnel = self.sock = self.prog = self.att = self.control = None
        # The guard's policy over the data path's maps, for the slow path.
        self.guard: Optional[guard.Guard] = None
        self._route = False
        self._icmp_bucket = TokenBucket(Limits(C.RELAY_ICMPV6_ERRORS_PER_S, 2_000_000.0),
                                        self.clock.monotonic())
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._stopping = False
        self._closed = False
        now = self.clock.monotonic()
        self._next_egress = now + EGRESS_CHECK_INTERVAL
        self._next_sweep = now + SWEEP_INTERVAL
        self._next_stats = now + config.stats_interval if config.stats_interval > 0 else None
        self.started_wall = time.time()
        self.started = now

    # -- set-up -------------------------------------------------------------------------

    def setup(self) -> "Relay":
        try:
            self._setup()
        except BaseException:
            failures = self.shutdown()
            if failures:
                _log.error("relay_setup_undo_failed", failures=failures)
            raise
        return self

    def _setup(self) -> None:
        from xdp_teredo import control
        from xdp_teredo.datapath import stats as dp_stats
        from xdp_teredo.datapath import relay as dp_relay
        from xdp_teredo.net.tunnel import Tunnel
        from xdp_teredo.net.udp import TeredoSocket

        cfg = self.config
        self.ipv4 = _device(cfg.ipv4_iface, "--ipv4-iface")
        self.ipv6 = _device(cfg.ipv6_iface, "--ipv6-iface")
        self.address = _bind_address(cfg, self.ipv4)
        _check_ipv6_forwarding(*{self.ipv4, self.ipv6})
        self.icmp_source = _first_global_ipv6(self.ipv6, self.ipv4)
        pin_root = cfg.pin_root or dp_stats.DEFAULT_PIN_ROOT

        # First: binding the control socket is the lock against a second instance.
        self.control = control.ControlServer(cfg.tunnel, {
            "status": self.status, "peers": self.peer_table,
            "stats": self.stats, "counters": self.counter_table}).open()
        dp_relay.detach_stale({self.ipv4.ifindex, self.ipv6.ifindex}, pin_root=pin_root,
                              pin_ifindex=self.ipv4.ifindex)
        self.tunnel = Tunnel.create(cfg.tunnel, mtu=C.TEREDO_MTU)
        self._add_route()
        self.sock = TeredoSocket(self.address, cfg.port)
        self.prog = dp_relay.RelayDatapath.compile_isolated(peer_max=cfg.max_peers)
        self._attach(pin_root)

        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, "udp")
        self._selector.register(self.tunnel, selectors.EVENT_READ, "tun")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.control.register(self._selector)

    def _add_route(self) -> None:
        """2001::/32 into the tun: what the fast path leaves reaches the control plane."""
        from pyroute2 import IPRoute, NetlinkError

        with IPRoute() as ipr:
            try:
                ipr.route("add", dst=str(C.TEREDO_PREFIX), oif=self.tunnel.ifindex,
                          priority=_TUN_ROUTE_METRIC, family=socket.AF_INET6)
            except NetlinkError as err:
                raise RuntimeFailure(f"cannot route {C.TEREDO_PREFIX} into {self.tunnel.name}: "
                                     f"{err}") from err
        self._route = True

    def _del_route(self) -> None:
        from pyroute2 import IPRoute, NetlinkError

        if not self._route:
            return
        self._route = False
        with IPRoute() as ipr:
            try:
                ipr.route("del", dst=str(C.TEREDO_PREFIX), oif=self.tunnel.ifindex,
                          priority=_TUN_ROUTE_METRIC, family=socket.AF_INET6)
            except NetlinkError as err:
                if err.code not in (errno.ESRCH, errno.ENODEV):
                    raise RuntimeFailure(f"cannot remove the {C.TEREDO_PREFIX} route: {err}") from err

    def _check_egress(self) -> list:
        from xdp_teredo.datapath import redirect

        devices = [self.ipv4] if self.ipv4 == self.ipv6 else [self.ipv4, self.ipv6]
        return [redirect.check_egress(d.ifindex, d.name) for d in devices]

    def _attach(self, pin_root: str) -> None:
        from xdp_teredo.datapath import Config, redirect
        from xdp_teredo.datapath.relay import XdpUnsupported

        cfg = self.config
        self.egress = self._check_egress()
        by_index = {c.ifindex: c for c in self.egress}
        forwarding4 = _sysctl(f"ipv4/conf/{self.ipv4.name}/forwarding") == "1"
        self.hooks = redirect.choose_hooks(by_index[self.ipv4.ifindex], by_index[self.ipv6.ifindex],
                                           ipv4_forwarding=forwarding4, path=cfg.path)
        # Configured before attached: the programs never see a packet without it.
        self.prog.config.write(Config(
            local_ipv4=self.address, local_port=cfg.port, nic_ifindex=self.ipv4.ifindex,
            tun_ifindex=self.tunnel.ifindex, enabled=True, learn_peers=cfg.learn, relay=True,
            peer_timeout=C.PEER_RECENT, mtu=C.TEREDO_MTU, l2_len=14))
        self.prog.egress.set(redirect.xdp_targets(self.egress, cfg.path))
        # The guard too; the slow path decides with the same policy and maps.
        self.prog.guard.configure(cfg.inbound)
        self.guard = guard.Guard(cfg.inbound, self.prog.guard.flows, self.prog.guard.fragments,
                                 self.prog.guard.allowed, now_ns=time.monotonic_ns)
        _log.info("inbound_guard", **cfg.inbound.describe())
        # What may reach this process from the IPv4 side, in XDP (docs/reliability.md).
        from xdp_teredo.datapath.limits import RELAY_LIMITS

        self.prog.slow_path.write(RELAY_LIMITS)
        try:
            self.att = self.prog.attach({h.ifindex: h.hook for h in self.hooks},
                                        pin_root=pin_root, pin_ifindex=self.ipv4.ifindex)
        except XdpUnsupported as err:
            # A driver without native XDP: tc there (generic XDP would gain nothing).
            self.hooks = [h if h.ifindex != err.ifindex else
                          redirect.HookChoice(h.ifindex, h.name, redirect.HOOK_TC,
                                              f"the driver of {h.name} has no native XDP")
                          for h in self.hooks]
            self.att = self.prog.attach({h.ifindex: h.hook for h in self.hooks},
                                        pin_root=pin_root, pin_ifindex=self.ipv4.ifindex)
        for hook in self.hooks:
            fallback = hook.hook == redirect.HOOK_TC and cfg.path == "auto"
            # A fallback is worth a warning: it is slower, and the fix is on a
            # device the relay does not own.
            (_log.warning if fallback else _log.info)(
                "relay_hook", interface=hook.name, hook=hook.hook, why=hook.why)

    # -- the loop --------------------------------------------------------------------------

    def serve(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(self._timeout()):
                if key.data == "udp":
                    self._read_udp()
                elif key.data == "tun":
                    self._read_tun()
                elif key.data == "wake":
                    self._drain_wake()
                elif self.control.owns(key):
                    self.control.handle(key)
            self._tick()

    def stop(self) -> None:
        """Ask serve() to return; safe from a signal handler."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    @property
    def wakeup_fd(self) -> int:
        return self._wake_w.fileno()

    def _timeout(self) -> float:
        deadlines = [self._next_egress, self._next_sweep, self.peers.next_deadline(),
                     self.control.next_deadline(), self._next_stats]
        soonest = min(d for d in deadlines if d is not None)
        return max(0.0, soonest - self.clock.monotonic())

    def _tick(self) -> None:
        now = self.clock.monotonic()
        self._peer_timers(now)
        if now >= self._next_egress:
            self._next_egress = now + EGRESS_CHECK_INTERVAL
            self._refresh_egress()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep_learned(now)
        if self._next_stats is not None and now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval
            fast = self.att.stats()
            _log.info("relay_stats", decapsulated=fast["decapsulated"]["packets"],
                      encapsulated=fast["encapsulated"]["packets"], peers=len(self.att.peers),
                      **{k: v for k, v in self.counters.items()})
        self.control.expire()

    def _peer_timers(self, now: float) -> None:
        deadline = self.peers.next_deadline()
        if deadline is None or now < deadline:
            return
        # Before on_timer acts, the data path's activity of the peers it would act
        # on (expiry must see fast-path traffic), and of those holding packets (an
        # answer seen on the fast path releases them): one map lookup each, not one
        # per peer of a list that holds up to --max-peers. Other peers' activity
        # could only push their own deadlines later.
        watched = dict.fromkeys(p.address for p in self.peers.due() + self.peers.holding())
        actions = []
        for address in watched:
            actions += self._observe(address)
        self._peer_actions(actions + self.peers.on_timer())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- the slow path: Teredo side ---------------------------------------------------------

    def _read_udp(self) -> None:
        for _ in range(_BATCH):
            got = self.sock.recvfrom()
            if got is None:
                return
            self._datagram(*got)

    def _datagram(self, payload: bytes, ip: IPv4Address, port: int) -> None:
        try:
            teredo = encap.parse_udp_payload(payload)
        except MalformedPacket as err:
            self._drop(f"malformed_{err.reason}")
            return
        if teredo.auth is not None:
            # Qualification traffic (§5.1.1): a relay is nobody's server.
            self._drop("authentication_header")
            return
        ipv6 = teredo.ipv6
        self.counters["udp_received"] += 1
        origin = (teredo.origin.address, teredo.origin.port) if teredo.origin else None
        incoming = peerlist.Incoming(source=ipv6.src, destination=ipv6.dst, udp_ip=ip, udp_port=port,
                                     packet=ipv6.to_bytes(), bubble=P.is_bubble(ipv6), origin=origin)
        self._peer_actions(self._observe(ipv6.src) + self.peers.on_incoming(incoming))

    # -- the slow path: native side --------------------------------------------------------

    def _read_tun(self) -> None:
        for _ in range(_BATCH):
            try:
                packet = self.tunnel.read()
            except RuntimeFailure as err:
                _log.error("tunnel_failed", error=str(err))
                self.stop()
                return
            if packet is None:
                return
            self._outgoing(packet)

    def _outgoing(self, packet: bytes) -> None:
        try:
            ipv6 = P.parse_ipv6(packet)
        except MalformedPacket as err:
            self._drop(f"tun_{err.reason}")
            return
        self.counters["tun_received"] += 1
        # Native IPv6 to a client: inbound for that client, as in BPF (teredo_guard.h).
        refused = self.guard.inbound(packet) if self.guard is not None else None
        if refused:
            self._drop(refused)
            return
        self._peer_actions(self._observe(ipv6.dst) + self.peers.on_outgoing(ipv6.dst, packet))

    # -- carrying out the policy's actions ----------------------------------------------

    def _peer_actions(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, peerlist.SendDirect):
                self._send(action.packet, action.ip, action.port, "slow_path_sent")
            elif isinstance(action, peerlist.SendDirectBubble):
                self._send(P.build_bubble(self.bubble_source, action.peer), action.ip, action.port,
                           "bubble_direct")
            elif isinstance(action, peerlist.SendIndirectBubble):
                # §5.4.1: through the client's server, which adds our origin
                # indication; the client answers with a bubble to us.
                self._send(P.build_bubble(self.bubble_source, action.peer), action.server,
                           C.TEREDO_PORT, "bubble_indirect")
            elif isinstance(action, peerlist.Deliver):
                self._deliver(action.packet)
            elif isinstance(action, peerlist.Unreachable):
                self._unreachable(action.packet)
            elif isinstance(action, peerlist.PeerTrusted):
                self._install(action.peer, action.ip, action.port)
            elif isinstance(action, peerlist.PeerRemoved):
                self._map("delete", self.att.peers.delete, action.peer)
            else:  # SendEcho: a relay never tests connectivity (no native peers)
                self._drop(f"unexpected_{type(action).__name__}")

    def _install(self, address: IPv6Address, ip: IPv4Address, port: int) -> None:
        """The client answered: the fast path may carry its traffic from now on."""
        from xdp_teredo.datapath import PeerEntry, PeerFlag, now_ns

        entry = self._map("get", self.att.peers.get, address)
        if entry is not None and (entry.mapped_ipv4, entry.mapped_port) == (ip, port):
            self._map("update", self.att.peers.update, address,
                      flags=entry.flags | PeerFlag.TRUSTED, last_rx_ns=now_ns())
        else:
            self._map("put", self.att.peers.put, PeerEntry(
                address=address, mapped_ipv4=ip, mapped_port=port, flags=PeerFlag.TRUSTED,
                last_rx_ns=now_ns()))
        self.counters["peer_trusted"] += 1
        _log.debug("peer_trusted", peer=str(address), mapped=f"{ip}:{port}")

    def _observe(self, address: IPv6Address) -> list:
        """Merge the data path's activity into the PeerList before it decides."""
        if address not in self.peers:
            return []
        entry = self._map("get", self.att.peers.get, address)
        if entry is None:
            return []
        return self.peers.observe(address, last_rx=entry.last_rx_ns / 1e9 if entry.last_rx_ns else None,
                                  last_tx=entry.last_tx_ns / 1e9 if entry.last_tx_ns else None)

    def _sweep_learned(self, now: float) -> None:
        """Peers the data path learned and nobody used for PEER_EXPIRY go (the LRU
        bounds the table anyway; this keeps `peers` meaningful)."""
        entries = self._map("iterate", lambda: list(self.att.peers)) or []
        for entry in entries:
            if entry.address in self.peers:
                continue  # the PeerList expires its own
            last = max(entry.last_rx_ns, entry.last_tx_ns) / 1e9
            if now - last >= C.PEER_EXPIRY:
                self._map("delete", self.att.peers.delete, entry.address)
                self.counters["peer_expired"] += 1

    def _refresh_egress(self) -> None:
        from xdp_teredo.datapath import redirect

        try:
            checks = self._check_egress()
        except OSError as err:
            _log.warning("egress_check_failed", error=str(err))
            return
        targets = redirect.xdp_targets(checks, self.config.path)
        if sorted(targets) == self.att.xdp_targets():
            self.egress = checks
            return
        self._map("devmap", self.att.set_xdp_targets, targets)
        before = {c.ifindex: c.takes_redirects for c in self.egress}
        for check in checks:
            if before.get(check.ifindex) != check.takes_redirects:
                # XDP stops redirecting into a device the moment it leaves the
                # devmap: its packets take the slow path instead of vanishing.
                (_log.info if check.takes_redirects else _log.warning)(
                    "xdp_target_changed", interface=check.name,
                    xdp_target=check.ifindex in targets, why=check.explain())
        self.egress = checks

    # -- sending -------------------------------------------------------------------------------

    def _send(self, payload: bytes, ip, port: int, counter: str) -> None:
        if self.sock.sendto(payload, ip, port):
            self.counters[counter] += 1
        else:
            self._drop(f"{counter}_refused")

    def _deliver(self, packet: bytes) -> None:
        """Into the tun: the kernel forwards it natively like any routed packet."""
        if self.guard is not None:
            self.guard.outbound(packet)  # a client's flow: its answers may come back
        try:
            self.tunnel.write(packet)
            self.counters["delivered"] += 1
        except RuntimeFailure:
            self._drop("deliver_failed")

    def _unreachable(self, packet: bytes) -> None:
        """ICMPv6 address unreachable to the native sender (Miredo's relay does the
        same when bubbles get no answer), rate limited."""
        try:
            original = P.parse_ipv6(packet)
        except MalformedPacket:
            self._drop("unreachable_malformed")
            return
        if (self.icmp_source is None or original.src.is_multicast or original.src.is_unspecified
                or (original.next_header == C.IPPROTO_ICMPV6 and original.payload
                    and original.payload[0] < C.ICMPV6_INFORMATIONAL_MIN)):
            self._drop("unreachable_not_answered")
            return
        self._icmp_bucket.refill(self.clock.monotonic())
        if not self._icmp_bucket.has(0):
            self._drop("unreachable_rate_limited")
            return
        self._icmp_bucket.take(0)
        room = C.TEREDO_MTU - C.IPV6_HDR_LEN - 8
        error = icmpv6.build_icmpv6(self.icmp_source, original.src, C.ICMPV6_DESTINATION_UNREACHABLE,
                                    C.ICMPV6_CODE_ADDRESS_UNREACHABLE, b"\0" * 4 + packet[:room],
                                    hop_limit=C.DEFAULT_HOP_LIMIT)
        try:
            self.tunnel.write(error)
            self.counters["unreachable_sent"] += 1
        except RuntimeFailure:
            self._drop("unreachable_failed")

    def _map(self, what: str, fn, *args, **kwargs):
        """A map operation; a failure is counted and logged, never fatal (the slow
        path works without the entry)."""
        try:
            return fn(*args, **kwargs)
        except (RuntimeFailure, OSError, KeyError) as err:
            self.counters[f"map_{what}_failed"] += 1
            _log.warning("peer_map_failed", operation=what, error=str(err))
            return None

    def _drop(self, reason: str) -> None:
        self.counters[f"drop_{reason}"] += 1

    # -- what the control socket serves -----------------------------------------------

    def status(self) -> dict:
        targets = set(self.att.xdp_targets()) if self.att else set()
        return {
            "role": "relay",
            "state": "relaying" if self.att is not None else "starting",
            "ipv4": str(self.address) if self.address else None,
            "port": self.config.port,
            "ipv4_iface": self.config.ipv4_iface,
            "ipv6_iface": self.config.ipv6_iface,
            "tunnel": self.config.tunnel,
            "path": self.config.path,
            "hooks": [h.as_dict() for h in self.hooks],
            "egress": [{"interface": c.name, "ifindex": c.ifindex, "kind": c.kind,
                        "takes_xdp_redirects": c.takes_redirects, "xdp_target": c.ifindex in targets,
                        "why": c.explain()} for c in self.egress],
            "bubble_source": str(self.bubble_source),
            "icmp_source": str(self.icmp_source) if self.icmp_source else None,
            "pin_dir": self.att.pin_dir if self.att else None,
            "peers": len(self.att.peers) if self.att else 0,
            "pending": sum(1 for p in self.peers if not p.trusted),
            "pid": os.getpid(),
            "started": _iso(self.started_wall),
            "uptime_s": round(self.clock.monotonic() - self.started, 3),
            "inbound": self._inbound_status(),
        }

    def _inbound_status(self) -> dict:
        info = (self.guard.settings if self.guard is not None else self.config.inbound).describe()
        if self.prog is not None:
            try:
                info.update(self.prog.guard.summary())
            except (RuntimeFailure, OSError) as err:
                info["error"] = str(err)
        info["slow_path_dropped"] = {v: self.counters[f"drop_{v}"] for v in guard.VERDICTS
                                     if self.counters[f"drop_{v}"]}
        return info

    def peer_table(self) -> list:
        """`xdp-teredo peers --json`: the BPF peer table, then the clients the slow
        path is still bubbling (the same rows as a client's)."""
        from xdp_teredo.datapath import PeerFlag, now_ns

        now = now_ns()
        rows, seen = [], set()
        for entry in self.att.peers:
            seen.add(entry.address)
            rows.append({
                "address": str(entry.address),
                "mapped": f"{entry.mapped_ipv4}:{entry.mapped_port}",
                "trusted": entry.trusted,
                "learned": bool(entry.flags & PeerFlag.LEARNED),
                "relay": False,
                "last_rx_s": _age(now, entry.last_rx_ns),
                "last_tx_s": _age(now, entry.last_tx_ns),
                "rx_packets": entry.rx_packets, "tx_packets": entry.tx_packets,
                "rx_bytes": entry.rx_bytes, "tx_bytes": entry.tx_bytes,
                "in_datapath": True,
            })
        mono = self.clock.monotonic()
        for peer in self.peers:
            if peer.address in seen:
                continue
            rows.append({
                "address": str(peer.address),
                "mapped": f"{peer.mapped_ip}:{peer.mapped_port}" if peer.mapping else None,
                "trusted": peer.trusted, "learned": False, "relay": False,
                "last_rx_s": round(mono - peer.last_rx, 3) if peer.last_rx is not None else None,
                "last_tx_s": round(mono - peer.last_tx, 3) if peer.last_tx is not None else None,
                "rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "tx_bytes": 0,
                "in_datapath": False, "queued": len(peer.queue), "bubbles": peer.bubble_count,
            })
        return rows

    def stats(self) -> dict:
        """The data path's counters, shaped as datapath.stats.read() returns them."""
        return self.att.stats()

    def counter_table(self) -> dict:
        return {
            "slow_path": dict(self.counters),
            "peer_drops": dict(self.peers.drops),
            "socket_refusals": dict(self.sock.refusals) if self.sock else {},
            "control": {"served": self.control.served, "refused": self.control.refused},
        }

    # -- shutting down ---------------------------------------------------------------------

    def shutdown(self) -> List[str]:
        """Remove everything set-up added, in reverse; every step is tried. Idempotent."""
        if self._closed:
            return []
        self._closed = True
        failures: List[str] = []

        def step(what: str, fn) -> None:
            try:
                fn()
            except Exception as err:  # keep going: whatever can be removed must be
                failures.append(f"{what}: {err}")
                _log.error("cleanup_failed", step=what, error=str(err))

        if self.control is not None:
            step("control socket", self.control.close)
        if self.att is not None:
            step("data path", self.att.detach)
        if self.tunnel is not None:
            step("route", self._del_route)
            step("tunnel", self.tunnel.close)
        if self.sock is not None:
            step("socket", self.sock.close)
        if self.prog is not None:
            step("BPF programs", self.prog.close)
        if self._selector is not None:
            step("selector", self._selector.close)
        for end in (self._wake_r, self._wake_w):
            end.close()
        return failures


# --------------------------------------------------------------------------- the command


def run(config: RelayConfig) -> int:
    """Set up, relay until SIGINT/SIGTERM, remove everything. 0 after a clean stop,
    1 if the clean-up left something behind. Set-up errors propagate after their undo."""
    relay = Relay(config).setup()
    previous, old_wakeup, stopped_by = {}, None, []
    try:
        def on_signal(signum, _frame):
            stopped_by.append(signal.Signals(signum).name)  # no logging in a handler
            relay.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        old_wakeup = signal.set_wakeup_fd(relay.wakeup_fd)
        status = relay.status()
        _log.info("relay_started", ipv4=status["ipv4"], port=status["port"],
                  ipv4_iface=status["ipv4_iface"], ipv6_iface=status["ipv6_iface"],
                  tunnel=status["tunnel"], hooks={h["interface"]: h["hook"] for h in status["hooks"]},
                  xdp_targets=[e["interface"] for e in status["egress"] if e["xdp_target"]],
                  pin_dir=status["pin_dir"])
        relay.serve()
        fast = relay.stats()
        _log.info("relay_stopped", signal=stopped_by[0] if stopped_by else None,
                  decapsulated=fast["decapsulated"]["packets"],
                  encapsulated=fast["encapsulated"]["packets"], **dict(relay.counters))
    finally:
        if old_wakeup is not None:
            signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        failures = relay.shutdown()
    return 1 if failures else 0


def query(request: str, tunnel: str = DEFAULT_TUNNEL):
    """Ask the relay (or client) of this network namespace: "status", "peers", ..."""
    from xdp_teredo import control

    return control.query(request, tunnel)
