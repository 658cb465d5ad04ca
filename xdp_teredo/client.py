"""The Teredo client (RFC 4380 §5.2): `xdp-teredo attach IFACE`.

The orchestrator: it wires the pieces and holds no protocol logic of its own.

    Qualification (teredo/qualification.py)   PeerList (teredo/peers.py)
            |  actions                               |  actions
            v                                        v
    +------------------------- Client (this module) ---------------------+
    | selector over: tun fd (slow-path packets the tc egress program left |
    |   in the tunnel), the UDP socket (what the XDP program left to it), |
    |   the control socket (status/peers/stats), a signal wake-up         |
    | carries out the actions: sends (socket), delivers (tun write),      |
    |   installs trusted peers in the BPF map, addresses (tunnel), hook   |
    +---------------------------------------------------------------------+
            |  BPF maps (datapath/)                 |  netlink (net/tunnel.py)
            v                                       v
      XDP + tc on the NIC, tc on the tun      the tun device "teredo"

Set-up (`Client.setup`, as root, in this order; a failure undoes what was done):
the control socket (also the lock against a second client with the same tunnel),
the BPF programs (compiled, not attached), the tunnel, the UDP socket bound to
the NIC's address, the data path attached (XDP + tc ingress on the NIC, tc egress
on the tun) and configured disabled until qualified. Then `run` drops root
(privileges.py: the user keeps CAP_NET_ADMIN only, which every later netlink step
and the clean-up need; map fds need no capability on this kernel) and serves.

Events and what they become:
- UDP datagram: a Router Advertisement goes to the Qualification (§5.2.1: nonce,
  origin indication, prefix checked there); anything else, once qualified, to
  PeerList.on_incoming (§5.2.3).
- Packet read from the tun: PeerList.on_outgoing (§5.2.4).
- Timers: the Qualification's one timer, PeerList's deadlines (echo retries,
  expiry), and a periodic read of the BPF peer table whose last_rx/last_tx
  (written by the data path, CLOCK_MONOTONIC like time.monotonic) are merged into
  the PeerList (`observe`) so that peers busy on the fast path do not expire.
- Netlink (net/watch.py): the NIC went down or up, or its IPv4 address changed: an
  RS at once, on a new socket if the address changed (docs/reliability.md).
- SIGINT/SIGTERM: stop, then remove everything: the data path, the address, the
  hook's down/destroy, the tunnel.
- Restart-safe mode (`--restart-safe`, docs/reliability.md): the tun is persistent;
  SIGHUP, or a crash, stops the process and leaves the fast path running (programs,
  maps, tunnel, address, routes); the next `attach --restart-safe` on the same
  interface and tunnel adopts all of it (datapath/adopt.py) and resumes the
  qualification with the same address, so established traffic never stops.

Logs: one event per state change, never per packet: client_started, qualified,
address_changed / state_changed / no_reply_from_server / lost_connectivity /
offline (from qualification.py), no_server_answered, peer_trusted, peer_expired,
client_stopped.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pwd
import selectors
import signal
import socket
import threading
import time
from collections import Counter
from typing import List, Optional, Tuple

from xdp_teredo import config as cfg
from xdp_teredo import control, log
from xdp_teredo.errors import MalformedPacket, RuntimeFailure, UsageError
from xdp_teredo.servers import TeredoServer, servers_for
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import encap, guard, icmpv6
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo import peers as peerlist
from xdp_teredo.teredo import qualification as Q
from xdp_teredo.teredo.clock import Clock, SystemClock

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

_log = log.get("xdp_teredo.client")

# Datagrams / packets handled from one fd before looking at the others: fairness,
# and a bound on the time between two timer checks.
_BATCH = 64
# The echo request of the direct connectivity test (§5.2.9): the nonce is the data;
# identifier and sequence only have to be what the reply echoes.
_ECHO_IDENTIFIER = 0x7E3E
# ICMPv6 errors we send into the tunnel: at most one per 100 ms (Miredo's rate).
_UNREACHABLE_INTERVAL = 0.1
# linux/if.h: administratively up, and running (carrier).
_IFF_UP = 0x1
_IFF_RUNNING = 0x40
_HINT = ("no Teredo server answered: most public Teredo servers are gone; run "
         "`xdp-teredo server --bind ADDR` on any host with two consecutive public IPv4 "
         "addresses and use --server ADDR")


@dataclasses.dataclass(frozen=True)
class Timers:
    """The protocol's timers; the defaults are the RFC's and Miredo's. Tests (and the
    hidden --refresh-interval ... options) shorten them so nothing waits 30 s."""

    refresh_interval: float = C.REFRESH_INTERVAL          # §5.2.7
    qualification_timeout: float = C.QUALIFICATION_TIMEOUT  # §5.2.1
    qualification_tries: int = C.QUALIFICATION_TRIES
    restart_delay: float = C.RESTART_DELAY                # Miredo: 100 s after failing
    restart_delay_max: float = C.RESTART_DELAY_MAX
    peer_expiry: float = C.PEER_EXPIRY
    # How often the BPF peer table's activity is read into the PeerList. Far below
    # PEER_RECENT (30 s), so that fast-path receives keep a peer "recent" (§5.2.4).
    sync_interval: float = 5.0

    def __post_init__(self):
        for name in ("refresh_interval", "qualification_timeout", "peer_expiry",
                     "sync_interval"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name.replace('_', '-')} must be positive")
        if self.restart_delay < 0 or self.qualification_tries < 1:
            raise UsageError("restart-delay must be >= 0 and qualification-tries >= 1")


@dataclasses.dataclass(frozen=True)
class Nic:
    """The interface Teredo runs over: its name, index and the IPv4 address we use."""

    name: str
    ifindex: int
    ipv4: IPv4Address
    kind: Optional[str] = None  # rtnetlink's IFLA_INFO_KIND ("veth", ...); None for hardware


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything checked before the machine is touched."""

    config: cfg.ClientConfig
    nic: Nic
    servers: Tuple[TeredoServer, ...]
    timers: Timers = Timers()
    # Leave the fast path running on SIGHUP or a crash, adopt a running one at start.
    restart_safe: bool = False
    # Capacity of the BPF peer table (the hidden --peer-max: tests fill it).
    peer_max: int = C.PEER_LIST_MAX
    # The inbound guard (--inbound, --allow; docs/security.md): stateful by default.
    inbound: guard.Settings = guard.Settings()


# -- before anything is touched ----------------------------------------------------------

def find_nic(name: str, bind_address: IPv4Address = cfg.DEFAULT_BIND_ADDRESS) -> Nic:
    """The interface `name` of this network namespace and the IPv4 address to use.

    UsageError for a missing interface, or a BindAddress it does not have;
    RuntimeFailure for an interface without IPv4 (Teredo runs over IPv4).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    cfg.check_interface_name(name, "interface")
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise UsageError(f"no such interface: {name} (in this network namespace)")
            ifindex = found[0]
            addresses = [IPv4Address(a.get_attr("IFA_ADDRESS"))
                         for a in ipr.get_addr(family=socket.AF_INET, index=ifindex)]
            info = ipr.get_links(ifindex)[0].get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    except (NetlinkError, OSError) as err:
        raise RuntimeFailure(f"cannot look at interface {name}: {err}") from err
    if bind_address != cfg.DEFAULT_BIND_ADDRESS:
        if bind_address not in addresses:
            raise UsageError(f"BindAddress {bind_address} is not an address of {name} "
                             f"({', '.join(map(str, addresses)) or 'none'})")
        return Nic(name, ifindex, bind_address, kind)
    if not addresses:
        raise RuntimeFailure(f"{name} has no IPv4 address: Teredo runs over IPv4")
    return Nic(name, ifindex, addresses[0], kind)


def prepare(settings: cfg.Settings, config_path: Optional[str] = None,
            timers: Timers = Timers(), *, resolver=None,
            default_path: str = cfg.DEFAULT_CONFIG_PATH) -> Plan:
    """The command line + config file, checked: the interface, the servers (a named
    one that does not resolve, or is not global unicast, is an error), the user."""
    config = cfg.load_client_config(settings, config_path,
                                    default_path=default_path).require_client()
    if not config.interface:
        raise UsageError("no interface given (xdp-teredo attach IFACE)")
    if config.tunnel == config.interface:
        raise UsageError(f"the tunnel cannot be called like the interface ({config.tunnel})")
    if config.user != "root":
        try:
            pwd.getpwnam(config.user)
        except KeyError:
            raise UsageError(f"no such user: {config.user!r} (--user)") from None
    nic = find_nic(config.interface, config.bind_address)
    servers = resolve(config, resolver)
    return Plan(config=config, nic=nic, servers=servers, timers=timers)


def resolve(config: cfg.ClientConfig, resolver=None) -> Tuple[TeredoServer, ...]:
    """servers.servers_for, with every name looked up at once.

    The built-in list has a dozen names, most of them gone; with DNS unreachable
    (at boot, in a namespace) each lookup waits for the resolver's timeout, and
    one after the other they would hold the start for most of a minute. In
    parallel the whole list costs one timeout. The threads are joined before
    anything else happens (dropping privileges needs a single thread).
    """
    from concurrent.futures import ThreadPoolExecutor

    from xdp_teredo.servers import system_resolver

    lookup = resolver or system_resolver
    names = [n for n in dict.fromkeys((*config.servers, config.server2)) if n]
    names = [n for n in names if not _is_ipv4_literal(n)]
    if len(names) <= 1:
        return servers_for(config, resolver=resolver)

    def one(name):
        try:
            return list(lookup(name))
        except (OSError, UnicodeError) as err:
            return err

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        answers = dict(zip(names, pool.map(one, names)))

    def answered(name):
        answer = answers[name] if name in answers else one(name)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return servers_for(config, resolver=answered)


def _is_ipv4_literal(name: str) -> bool:
    try:
        IPv4Address(name)
    except ValueError:
        return False
    return True


# -- the running client ---------------------------------------------------------------------

class Client:
    """One Teredo client: set up (root), serve (the loop), shut down (always)."""

    def __init__(self, plan: Plan, *, clock: Optional[Clock] = None, rng=None):
        self.plan = plan
        self.config = plan.config
        self.timers = plan.timers
        self.clock = clock or SystemClock()
        self._rng = rng
        self.counters: Counter = Counter()
        self.servers = plan.servers
        self.qual: Optional[Q.Qualification] = None
        self.peers = peerlist.PeerList(self.clock, rng=rng, expiry=self.timers.peer_expiry)
        self.control: Optional[control.ControlServer] = None
        self.prog = None
        self.att = None
        self.tunnel = None
        self.sock = None
        self.hook = None
        self.user = "root"
        self.local: Optional[Tuple[IPv4Address, int]] = None
        self.started_wall = time.time()
        self.since_wall = self.started_wall
        self.since = self.clock.monotonic()
        self.failed: Optional[str] = None
        self._stopping = False
        self._stopped_by: Optional[str] = None
        self._selector: Optional[selectors.BaseSelector] = None
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
            os.set_inheritable(end.fileno(), False)
        self._next_sync = 0.0
        self._resolve_at: Optional[float] = None
        self._resolving: Optional[threading.Thread] = None
        self._resolved: Optional[tuple] = None   # set by the resolving thread
        self._echo_sequence = 0
        self._last_unreachable = float("-inf")
        self._closed = False
        # The inbound guard's policy over the data path's maps, for what the slow
        # path delivers (set up with the data path).
        self.guard: Optional[guard.Guard] = None
        # Restart safety: the mapping a previous instance left installed (resumed
        # when serving starts), and whether this stop leaves the fast path running.
        self._resume: Optional[Q.Mapping] = None
        self.adopted = False
        self.serving = False
        self.keep_datapath = False
        # The NIC as last seen (net/watch.py tells when to look again).
        self.watch = None
        self.interface_up = True
        self._address_lost = False

    # -- set-up, as root ---------------------------------------------------------------

    def setup(self) -> "Client":
        """Everything that needs root; on failure, undo it all and raise."""
        from xdp_teredo.datapath import Config, Datapath, adopt
        from xdp_teredo.datapath.limits import SlowPathLimits
        from xdp_teredo.hook import Hook
        from xdp_teredo.net.tunnel import Tunnel
        from xdp_teredo.net.udp import TeredoSocket
        from xdp_teredo.net.watch import InterfaceWatch

        config, nic = self.config, self.plan.nic
        try:
            self.control = control.ControlServer(config.tunnel, {
                "status": self.status, "peers": self.peer_table,
                "stats": self.stats, "counters": self.counter_table}).open()
            # Only a restart-safe client adopts: a plain one refuses what a previous
            # instance left, before it touches anything (`detach` removes it).
            running = self._running_datapath()
            if running is not None and not self.plan.restart_safe:
                raise RuntimeFailure(
                    f"a data path left running by a restart-safe client is attached to "
                    f"{nic.name} and {config.tunnel}: adopt it with `xdp-teredo attach "
                    f"{nic.name} --restart-safe`, or remove it with `xdp-teredo detach "
                    f"{nic.name}`")
            maps = adopt.open_maps(running) if running is not None else {}
            try:
                self.prog = Datapath.compile_isolated(peer_max=self.plan.peer_max, maps=maps)
            finally:
                for m in maps.values():
                    m.close()
            if running is not None:
                self.tunnel = Tunnel.adopt(config.tunnel)
            else:
                self.tunnel = Tunnel.create(config.tunnel, mtu=config.mtu,
                                            persistent=self.plan.restart_safe)
            previous = self.prog.config.read() if running is not None else None
            # Bound to the NIC's address (not 0.0.0.0) and device: the XDP program
            # recognises our traffic by exactly this address and port, and the NAT
            # must see one source for the socket and the tc program alike. After a
            # restart, the same port: the NAT mapping, and so the address, stay.
            port = config.bind_port
            if previous is not None and previous.local_ipv4 == nic.ipv4 \
                    and port in (0, previous.local_port):
                port = previous.local_port
            self.sock = TeredoSocket(nic.ipv4, port, device=nic.name)
            self.local = self.sock.local_address
            # Pins under /sys/fs/bpf could not be removed once we are not root; the
            # control socket serves the statistics either way.
            pin = "auto" if self._stays_root() else False
            if running is not None:
                self.att = self.prog.adopt(running, pin=pin, pin_root=pin_root())
                self.adopted = True
                self._resume = self._resumable(previous)
            else:
                try:
                    off = config.xdp_mode == "off"
                    self.att = self.prog.attach(
                        nic.ifindex, self.tunnel.ifindex, ingress="tc" if off else "xdp",
                        xdp_mode="auto" if off else config.xdp_mode,
                        pin=pin, pin_root=pin_root())
                except RuntimeFailure as err:
                    if "another XDP program" not in str(err) and "already" not in str(err):
                        raise
                    raise RuntimeFailure(f"{err} (if a killed client left it: "
                                         f"`xdp-teredo detach {nic.name}`)") from err
            if self._resume is None:
                if self.adopted:
                    # Nothing to carry on with (another address or port now, or it
                    # was not qualified): the same devices, a clean slate.
                    self.tunnel.clear_address()
                    self.att.peers.clear()
                self.att.configure(Config(local_ipv4=self.local[0], local_port=self.local[1],
                                          enabled=False, mtu=self.tunnel.mtu))
            # The guard's policy is in place before the data path is enabled, and
            # the slow path decides with the same policy over the same maps.
            self.att.guard.configure(self.plan.inbound)
            self.guard = guard.Guard(self.plan.inbound, self.att.guard.flows,
                                     self.att.guard.fragments, self.att.guard.allowed,
                                     now_ns=time.monotonic_ns)
            _log.info("inbound_guard", **self.plan.inbound.describe())
            if nic.kind == "veth" and self.att.ingress == "xdp":
                # XDP on a veth copies each frame a local sender built before it
                # runs (docs/client.md, "XDP or tc"): say what costs less here.
                _log.info("decap_hint", interface=nic.name, kind=nic.kind,
                          hint="on a veth, --xdp-mode off (decapsulation in tc) costs less CPU "
                               "per packet than XDP")
            # What may reach this process from the NIC, in XDP (docs/reliability.md).
            self.prog.slow_path.write(SlowPathLimits())
            self.hook = Hook(config.hook, iface=self.tunnel.name, ifindex=self.tunnel.ifindex)
            if self._resume is not None:
                self.hook.resume(self._resume.address, self.tunnel.link_local,
                                 self._resume.mtu)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._selector.register(self.tunnel, selectors.EVENT_READ, "tun")
            self._selector.register(self.sock, selectors.EVENT_READ, "udp")
            self.watch = InterfaceWatch(nic.ifindex)
            self._selector.register(self.watch, selectors.EVENT_READ, "nic")
            self.control.register(self._selector)
        except BaseException:
            self.shutdown()
            raise
        return self

    def _running_datapath(self):
        """The data path a previous restart-safe instance left on our NIC and tunnel
        (adopt.Running), or None: no tunnel, or nothing of ours attached."""
        from pyroute2 import IPRoute

        from xdp_teredo.datapath import adopt

        with IPRoute() as ipr:
            tun = ipr.link_lookup(ifname=self.config.tunnel)
        if not tun:
            return None
        return adopt.find(self.plan.nic.ifindex, tun[0])

    def _resumable(self, previous) -> Optional[Q.Mapping]:
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
        return Q.Mapping(server, mapped_ip, mapped_port, previous.teredo_address,
                         self.tunnel.mtu)

    def _stays_root(self) -> bool:
        return self.config.user == "root" or os.geteuid() != 0

    def drop_privileges(self) -> None:
        """Become --user keeping CAP_NET_ADMIN (privileges.py); no-op for root."""
        from xdp_teredo import privileges

        if self._stays_root():
            self.user = pwd.getpwuid(os.geteuid()).pw_name
            return
        dropped = privileges.drop_privileges(self.config.user)
        self.user = dropped.user
        _log.info("privileges_dropped", user=dropped.user, kept=list(dropped.kept_names))

    # -- the loop ------------------------------------------------------------------------

    def serve(self) -> None:
        """Run until stop(). Starts qualifying first."""
        nic = self.plan.nic
        for note in self.config.notes:
            _log.info("config_note", note=note)
        _log.info("client_started", interface=nic.name, tunnel=self.tunnel.name,
                  local=f"{self.local[0]}:{self.local[1]}", xdp=self.att.xdp_attached,
                  servers=[str(s) for s in self.servers], user=self.user,
                  control_socket=control.display_name(self.control.name),
                  restart_safe=self.plan.restart_safe, adopted=self.adopted,
                  replaced=self.att.replaced or None)
        self.serving = True
        self._start_qualification()
        while not self._stopping:
            for key, _ in self._selector.select(self._timeout()):
                if key.data == "wake":
                    self._drain_wake()
                elif key.data == "tun":
                    self._read_tun()
                elif key.data == "udp":
                    self._read_udp()
                elif key.data == "nic":
                    self._interface_changed()
                elif self.control.owns(key):
                    self.control.handle(key)
                if self._stopping:
                    break
            self._tick()

    def stop(self, reason: Optional[str] = None) -> None:
        """Ask serve() to return; safe from a signal handler."""
        self._stopping = True
        if reason and self._stopped_by is None:
            self._stopped_by = reason
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full or closed: the loop is waking up or gone

    @property
    def wakeup_fd(self) -> int:
        return self._wake_w.fileno()

    def _timeout(self) -> Optional[float]:
        now = self.clock.monotonic()
        deadlines = [self._next_sync]
        if self.qual is not None and self.qual.timer_at is not None:
            deadlines.append(self.qual.timer_at)
        if self._resolve_at is not None:
            deadlines.append(self._resolve_at)
        peer_deadline = self.peers.next_deadline()
        if peer_deadline is not None:
            deadlines.append(peer_deadline)
        control_deadline = self.control.next_deadline()
        if control_deadline is not None:
            deadlines.append(control_deadline)
        return max(0.0, min(deadlines) - now)

    def _tick(self) -> None:
        now = self.clock.monotonic()
        if self.qual is not None and self.qual.timer_at is not None and now >= self.qual.timer_at:
            self._qualification(self.qual.on_timer(now))
        if self._resolve_at is not None and now >= self._resolve_at:
            self._resolve_again(now)
        if self._resolved is not None:
            self._resolution_done()
        if now >= self._next_sync:
            self._next_sync = now + self.timers.sync_interval
            self._sync_from_datapath()
        deadline = self.peers.next_deadline()
        if deadline is not None and now >= deadline:
            self._peer_actions(self.peers.on_timer())
        self.control.expire()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- qualification -----------------------------------------------------------------

    def _start_qualification(self) -> None:
        now = self.clock.monotonic()
        resume, self._resume = self._resume, None
        if not self.servers:
            if resume is not None:
                self._address_changed(resume, None)  # nobody to confirm it with
            # The built-in list did not resolve at all (no DNS yet?): stay offline
            # and try the names again later.
            self._resolve_at = now + max(self.timers.restart_delay, 1.0)
            _log.warning("no_server_answered", servers=list(self.config.servers),
                         reason="none of the servers resolved", hint=_HINT,
                         retry_in_s=round(self._resolve_at - now, 1))
            return
        self.qual = Q.Qualification(
            [s.primary for s in self.servers], rng=self._rng,
            timeout=self.timers.qualification_timeout, tries=self.timers.qualification_tries,
            refresh_interval=self.timers.refresh_interval,
            restart_delay=self.timers.restart_delay,
            restart_delay_max=self.timers.restart_delay_max)
        if resume is not None:
            self._qualification(self.qual.resume(now, resume))
        else:
            self._qualification(self.qual.start(now))

    def _resolve_again(self, now: float) -> None:
        """Look the names up again, in a thread: with DNS down each lookup waits for
        the resolver's timeout, and the loop must keep answering `status` meanwhile.
        (Threads are fine here: privileges were dropped before the loop started.)"""
        self._resolve_at = None
        if self._resolving is not None:
            return

        def work():
            try:
                found = resolve(self.config)
            except UsageError:
                found = ()
            self._resolved = found
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

        self._resolving = threading.Thread(target=work, name="resolve-servers", daemon=True)
        self._resolving.start()

    def _resolution_done(self) -> None:
        found, self._resolved = self._resolved, None
        self._resolving = None
        self.servers = found
        self._start_qualification()

    def _qualification(self, actions: list) -> None:
        """Carry out what the Qualification asked, in order."""
        if any(isinstance(a, Q.StateChanged) and a.new is Q.State.QUALIFIED for a in actions) \
                and not any(isinstance(a, Q.AddressChanged) for a in actions):
            # Qualified with the mapping we resumed (a restart): the address stayed.
            mapping = self.qual.mapping
            _log.info("qualified", address=str(mapping.address), server=str(mapping.server),
                      mapped=f"{mapping.mapped_ip}:{mapping.mapped_port}", nat=self._nat(mapping),
                      mtu=mapping.mtu, tunnel=self.tunnel.name, resumed=True)
        for action in actions:
            if isinstance(action, Q.SendRouterSolicitation):
                # §5.2.1: from the restricted link-local to all-routers, with an
                # authentication header that carries only the nonce (as Miredo).
                rs = icmpv6.build_router_solicitation(
                    C.LINK_LOCAL_CONE if action.cone else C.LINK_LOCAL_RESTRICTED)
                payload = encap.build_udp_payload(rs, auth=encap.AuthHeader(nonce=action.nonce))
                self._send(payload, action.server, C.TEREDO_PORT, "rs_sent")
            elif isinstance(action, Q.StateChanged):
                self.since = self.clock.monotonic()
                self.since_wall = time.time()
            elif isinstance(action, Q.AddressChanged):
                self._address_changed(action.old, action.new)
            elif isinstance(action, Q.MtuChanged):
                self._mtu_changed(action)
            elif isinstance(action, Q.FlushPeers):
                self._peer_actions(self.peers.flush())
                # Entries the data path learned by itself are not in the PeerList:
                # they were trusted on the old address as much as the others.
                self._map_call("clear", self.att.peers.clear)
            elif isinstance(action, Q.Offline):
                _log.warning("no_server_answered", servers=[str(s) for s in self.servers],
                             next_server=str(action.next_server), hint=_HINT,
                             retry_in_s=round(action.retry_at - self.clock.monotonic(), 1))
            # SetTimer: the loop reads qual.timer_at. ServerLost: qualification.py
            # logged it (no_reply_from_server / lost_connectivity).

    def _address_changed(self, old: Optional[Q.Mapping], new: Optional[Q.Mapping]) -> None:
        try:
            if new is None:
                self.tunnel.clear_address()
                self._configure_datapath()
                self.hook.down()
                return
            if self.tunnel.address is None:
                self.tunnel.set_address(new.address)
            else:
                self.tunnel.replace_address(self.tunnel.address, new.address)
            if new.mtu != self.tunnel.mtu:
                self.tunnel.set_mtu(new.mtu)
            self._configure_datapath()
            self.hook.up(new.address, self.tunnel.link_local, new.mtu)
        except RuntimeFailure as err:
            # Netlink refused (someone removed the tunnel?): say so; the next
            # refresh or requalification tries again.
            self.counters["address_apply_failed"] += 1
            _log.error("address_apply_failed", error=str(err))
            return
        if old is None:
            _log.info("qualified", address=str(new.address), server=str(new.server),
                      mapped=f"{new.mapped_ip}:{new.mapped_port}", nat=self._nat(new),
                      mtu=new.mtu, tunnel=self.tunnel.name)

    def _mtu_changed(self, action: Q.MtuChanged) -> None:
        try:
            self.tunnel.set_mtu(action.new)
            self._configure_datapath()
            self.hook.up(action.mapping.address, self.tunnel.link_local, action.new)
        except (RuntimeFailure, ValueError) as err:
            self.counters["address_apply_failed"] += 1
            _log.error("mtu_apply_failed", error=str(err), mtu=action.new)

    def _configure_datapath(self) -> None:
        from xdp_teredo.datapath import Config

        mapping = self.qual.mapping if self.qual is not None else None
        self.att.configure(Config(
            local_ipv4=self.local[0], local_port=self.local[1],
            teredo_address=mapping.address if mapping else IPv6Address("::"),
            # Until qualified every Teredo packet goes to the slow path (rx/tx_disabled).
            enabled=mapping is not None, learn_peers=True,
            peer_timeout=C.PEER_RECENT, mtu=self.tunnel.mtu))

    def _nat(self, mapping: Q.Mapping) -> bool:
        """Whether a NAT sits between us and the server: it saw another address/port."""
        return (mapping.mapped_ip, mapping.mapped_port) != tuple(self.local)

    @property
    def address(self) -> Optional[IPv6Address]:
        mapping = self.qual.mapping if self.qual is not None else None
        return mapping.address if mapping else None

    # -- the interface (net/watch.py) --------------------------------------------------------

    def _interface_changed(self) -> None:
        """Something happened to the NIC: look at it again and follow (docs/reliability.md).

        Down: said, nothing else (the next RS failing decides, as for any lost
        server). Up again, or its address back: a refresh at once, not at the next
        interval. Another IPv4 address: a new socket on it (same port if free), the
        data path told (XDP knows our traffic by it), and a refresh at once, whose
        RA brings the new mapping and so the new Teredo address (§5.2.7). No IPv4
        address at all: said; the refreshes then fail and the client goes offline.
        """
        from pyroute2.netlink.exceptions import NetlinkError

        if not self.watch.changed():
            return
        nic = self.plan.nic
        try:
            up, ipv4 = self._look_at_interface()
        except (NetlinkError, OSError, IndexError) as err:
            _log.warning("interface_unreadable", interface=nic.name, error=str(err))
            return
        refresh = False
        if up != self.interface_up:
            self.interface_up = up
            _log.info("interface_up" if up else "interface_down", interface=nic.name)
            refresh = up
        if ipv4 is None:
            if not self._address_lost:
                self._address_lost = True
                _log.warning("interface_address_lost", interface=nic.name,
                             address=str(self.local[0]))
        elif ipv4 != self.local[0]:
            refresh = self._rebind(ipv4) or refresh
        elif self._address_lost:
            self._address_lost = False
            _log.info("interface_address_back", interface=nic.name, address=str(ipv4))
            refresh = True
        if refresh and up and self.qual is not None:
            self.counters["interface_refresh"] += 1
            self._qualification(self.qual.refresh_now(self.clock.monotonic()))

    def _look_at_interface(self) -> Tuple[bool, Optional[IPv4Address]]:
        """(link up with carrier, the IPv4 address to use or None), as prepare picks
        it: the configured BindAddress, else ours while the NIC keeps it, else its
        first one."""
        from pyroute2 import IPRoute

        nic = self.plan.nic
        with IPRoute() as ipr:
            flags = ipr.get_links(nic.ifindex)[0]["flags"]
            addresses = [IPv4Address(a.get_attr("IFA_ADDRESS"))
                         for a in ipr.get_addr(family=socket.AF_INET, index=nic.ifindex)]
        up = bool(flags & _IFF_UP) and bool(flags & _IFF_RUNNING)
        if self.config.bind_address != cfg.DEFAULT_BIND_ADDRESS:
            return up, self.config.bind_address if self.config.bind_address in addresses else None
        if self.local[0] in addresses:
            return up, self.local[0]
        return up, addresses[0] if addresses else None

    def _rebind(self, ipv4: IPv4Address) -> bool:
        """Move the Teredo socket to `ipv4`, keeping the port when it is free there."""
        from xdp_teredo.net.udp import TeredoSocket

        nic, old = self.plan.nic, self.sock
        try:
            try:
                new = TeredoSocket(ipv4, self.local[1], device=nic.name)
            except RuntimeFailure:
                new = TeredoSocket(ipv4, 0, device=nic.name)
        except RuntimeFailure as err:
            self.counters["rebind_failed"] += 1
            _log.error("interface_rebind_failed", interface=nic.name, address=str(ipv4),
                       error=str(err))
            return False
        new.refusals.update(old.refusals)
        self._selector.unregister(old)
        old.close()
        self._selector.register(new, selectors.EVENT_READ, "udp")
        self.sock, previous = new, self.local
        self.local = new.local_address
        self._address_lost = False
        self._configure_datapath()
        _log.info("interface_address_changed", interface=nic.name,
                  old=f"{previous[0]}:{previous[1]}", new=f"{self.local[0]}:{self.local[1]}")
        return True

    # -- the UDP socket (what the XDP program left to the slow path) -----------------------

    def _read_udp(self) -> None:
        for _ in range(_BATCH):
            got = self.sock.recvfrom()
            if got is None:
                return
            payload, ip, port = got
            self.counters["udp_received"] += 1
            self._datagram(payload, ip, port)

    def _datagram(self, payload: bytes, ip: IPv4Address, port: int) -> None:
        try:
            teredo = encap.parse_udp_payload(payload)
        except MalformedPacket as err:
            self._drop(f"malformed_{err.reason}")
            return
        ipv6 = teredo.ipv6
        from_server = (self.qual is not None and ip == self.qual.server
                       and port == C.TEREDO_PORT)
        icmp_type = ipv6.payload[0] if ipv6.next_header == C.IPPROTO_ICMPV6 and ipv6.payload else None
        if icmp_type == C.ICMPV6_ROUTER_ADVERTISEMENT:
            self._router_advertisement(teredo, from_server)
            return
        if self.address is None:
            self._drop("rx_not_qualified")
            return
        if ipv6.dst != self.address and not ipv6.dst.is_multicast:
            # Another node's traffic (an old address of ours after a mapping
            # change, or garbage): the kernel would not take it either.
            self._drop("rx_not_our_address")
            return
        echo_nonce = None
        if icmp_type == C.ICMPV6_ECHO_REPLY:
            try:
                echo_nonce = icmpv6.parse_echo(ipv6).data
            except MalformedPacket as err:
                self._drop(f"malformed_{err.reason}")
                return
        origin = (teredo.origin.address, teredo.origin.port) if teredo.origin else None
        incoming = peerlist.Incoming(
            source=ipv6.src, destination=ipv6.dst, udp_ip=ip, udp_port=port,
            packet=ipv6.to_bytes(), bubble=P.is_bubble(ipv6), echo_nonce=echo_nonce,
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
                self._drop(refused)
                return
        self._peer_actions(self.peers.on_incoming(incoming))
        self._refresh_peer_entry(ipv6.src)

    def _router_advertisement(self, teredo: encap.TeredoPayload, from_server: bool) -> None:
        self.counters["ra_received"] += 1
        if self.qual is None:
            return
        try:
            ra = icmpv6.parse_router_advertisement(teredo.ipv6)
        except MalformedPacket as err:
            self._drop(f"malformed_{err.reason}")
            return
        # §5.2.1: exactly one prefix option; with none or several the RA is refused
        # (the Qualification counts it as no_prefix).
        prefix = ra.prefixes[0].prefix if len(ra.prefixes) == 1 else None
        self._qualification(self.qual.on_router_advertisement(
            self.clock.monotonic(),
            nonce=teredo.auth.nonce if teredo.auth else None,
            origin_ip=teredo.origin.address if teredo.origin else None,
            origin_port=teredo.origin.port if teredo.origin else None,
            prefix=prefix, mtu=ra.mtu, from_server=from_server))

    # -- the tunnel (what the tc egress program left to the slow path) ---------------------

    def _read_tun(self) -> None:
        for _ in range(_BATCH):
            try:
                packet = self.tunnel.read()
            except RuntimeFailure as err:
                # The device is gone (deleted under us): nothing works any more. We do
                # not make another: whoever deleted it wanted Teredo off; we stop and
                # remove the rest (XDP and tc on the NIC, the hook's down/destroy), and
                # exit 1, which a service manager may restart (docs/reliability.md).
                if self._tunnel_gone():
                    self.failed = (f"tunnel {self.tunnel.name} was deleted while the client ran; "
                                   "stopped and removed the rest")
                    _log.error("tunnel_deleted", tunnel=self.tunnel.name, error=str(err))
                else:
                    self.failed = str(err)
                    _log.error("tunnel_failed", error=str(err))
                self.stop("tunnel_failed")
                return
            if packet is None:
                return
            self.counters["tun_read"] += 1
            self._outgoing(packet)

    def _tunnel_gone(self) -> bool:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                return not any(link["index"] == self.tunnel.ifindex
                               for link in ipr.get_links())
        except OSError:
            return False

    def _outgoing(self, packet: bytes) -> None:
        try:
            ipv6 = P.parse_ipv6(packet)
        except MalformedPacket as err:
            self._drop(f"tx_malformed_{err.reason}")
            return
        if self.address is None:
            self._drop("tx_not_qualified")
            return
        if ipv6.dst.is_multicast:
            # The kernel's MLD and router solicitations on the tunnel: Teredo has no
            # multicast (§5.2.4 drops it); not worth a look at the peer list.
            self._drop("tx_multicast")
            return
        if ipv6.src != self.address:
            # A peer only trusts what comes from our Teredo address (§5.2.3).
            self._drop("tx_source_not_ours")
            return
        self._peer_actions(self.peers.on_outgoing(ipv6.dst, packet))

    # -- peers ---------------------------------------------------------------------------

    def _peer_actions(self, actions: list) -> None:
        from xdp_teredo.datapath import PeerEntry, PeerFlag, now_ns

        for action in actions:
            if isinstance(action, peerlist.SendDirect):
                self._send(action.packet, action.ip, action.port, "sent_direct")
            elif isinstance(action, peerlist.SendDirectBubble):
                self._send_bubble(action.peer, action.ip, action.port, "bubble_direct")
            elif isinstance(action, peerlist.SendIndirectBubble):
                # §5.2.6: through the peer's own server, which relays it with our
                # origin indication.
                self._send_bubble(action.peer, action.server, C.TEREDO_PORT, "bubble_indirect")
            elif isinstance(action, peerlist.SendEcho):
                self._send_echo(action.peer, action.nonce)
            elif isinstance(action, peerlist.Deliver):
                # What the peer list delivers arrived over Teredo: the inbound guard
                # decides here what XDP decides on the fast path (docs/security.md).
                refused = self.guard.inbound(action.packet) if self.guard is not None else None
                if refused:
                    self._drop(refused)
                    continue
                self._deliver(action.packet)
            elif isinstance(action, peerlist.Unreachable):
                self._unreachable(action.packet)
            elif isinstance(action, peerlist.PeerTrusted):
                flags = PeerFlag.TRUSTED
                if not peerlist.teredo_parts(action.peer):
                    flags |= PeerFlag.RELAY  # a native host behind this relay (§5.2.9)
                entry = PeerEntry(address=action.peer, mapped_ipv4=action.ip,
                                  mapped_port=action.port, flags=flags, last_rx_ns=now_ns())
                self._map_call("put", self.att.peers.put, entry)
                _log.info("peer_trusted", peer=str(action.peer),
                          mapped=f"{action.ip}:{action.port}", relay=bool(flags & PeerFlag.RELAY))
            elif isinstance(action, peerlist.PeerRemoved):
                self._map_call("delete", self.att.peers.delete, action.peer)
                if action.reason == "expired":
                    _log.info("peer_expired", peer=str(action.peer))

    def _refresh_peer_entry(self, address: IPv6Address) -> None:
        """A trusted peer answered on the slow path (a bubble after its entry went
        stale, §5.2.4): tell the data path, so the next packets take the fast path."""
        from xdp_teredo.datapath import PeerEntry, PeerFlag, now_ns

        peer = self.peers.get(address)
        if peer is None or not peer.trusted or peer.mapping is None:
            return
        entry = self._map_call("get", self.att.peers.get, address)
        if entry is not None and (entry.mapped_ipv4, entry.mapped_port) == peer.mapping \
                and entry.trusted and now_ns() - entry.last_rx_ns < 1e9:
            return  # the data path is up to date
        flags = PeerFlag.TRUSTED
        if not peerlist.teredo_parts(address):
            flags |= PeerFlag.RELAY
        if entry is not None and (entry.mapped_ipv4, entry.mapped_port) == peer.mapping:
            self._map_call("update", self.att.peers.update, address,
                           flags=entry.flags | flags, last_rx_ns=now_ns())
        else:
            self._map_call("put", self.att.peers.put, PeerEntry(
                address=address, mapped_ipv4=peer.mapped_ip, mapped_port=peer.mapped_port,
                flags=flags, last_rx_ns=now_ns()))

    def _sync_from_datapath(self) -> None:
        """Merge the data path's last_rx/last_tx into the PeerList, expire idle entries
        that the data path learned by itself (the PeerList does not know them)."""
        if self.att is None:
            return
        now = self.clock.monotonic()
        actions = []
        entries = self._map_call("iterate", lambda: list(self.att.peers)) or []
        for entry in entries:
            last_rx = entry.last_rx_ns / 1e9 if entry.last_rx_ns else None
            last_tx = entry.last_tx_ns / 1e9 if entry.last_tx_ns else None
            if entry.address in self.peers:
                actions += self.peers.observe(entry.address, last_rx=last_rx, last_tx=last_tx)
                continue
            last = max(t for t in (last_rx, last_tx, 0.0) if t is not None)
            if now - last >= self.timers.peer_expiry:
                self._map_call("delete", self.att.peers.delete, entry.address)
                _log.info("peer_expired", peer=str(entry.address), learned=True)
        self._peer_actions(actions)

    def _map_call(self, what: str, fn, *args, **kwargs):
        """A map operation; a failure is counted and logged, never fatal (the slow
        path still works without the entry)."""
        try:
            return fn(*args, **kwargs)
        except (RuntimeFailure, OSError, KeyError) as err:
            self.counters[f"map_{what}_failed"] += 1
            _log.warning("peer_map_failed", operation=what, error=str(err))
            return None

    # -- sending and delivering ---------------------------------------------------------------

    def _send(self, payload: bytes, ip, port: int, counter: str) -> None:
        if self.sock.sendto(payload, ip, port):
            self.counters[counter] += 1
        else:
            self._drop(f"{counter}_refused")

    def _send_bubble(self, peer: IPv6Address, ip, port: int, counter: str) -> None:
        if self.address is None:
            self._drop("tx_not_qualified")
            return
        self._send(P.build_bubble(self.address, peer), ip, port, counter)

    def _send_echo(self, peer: IPv6Address, nonce: bytes) -> None:
        """§5.2.9: an echo request with the nonce, from our address, through our server."""
        if self.address is None or self.qual is None:
            self._drop("tx_not_qualified")
            return
        self._echo_sequence = (self._echo_sequence + 1) & 0xFFFF
        echo = icmpv6.build_echo_request(self.address, peer, identifier=_ECHO_IDENTIFIER,
                                         sequence=self._echo_sequence, data=nonce)
        self._send(echo, self.qual.server, C.TEREDO_PORT, "echo_sent")

    def _deliver(self, packet: bytes) -> None:
        try:
            self.tunnel.write(packet)
            self.counters["delivered"] += 1
        except RuntimeFailure:
            self._drop("deliver_failed")

    def _unreachable(self, packet: bytes) -> None:
        """The peer cannot be reached (bubbles unanswered, §5.2.6, or the connectivity
        test failed, §5.2.9): like Miredo, tell the local sender at once with an ICMPv6
        address unreachable (RFC 4443 §3.1) from the tunnel's link-local, rather than
        let it time out. Never about an ICMPv6 error (§2.4 e); rate limited."""
        self.counters["unreachable"] += 1
        try:
            original = P.parse_ipv6(packet)
        except MalformedPacket:
            return
        if (self.tunnel.link_local is None or original.src.is_multicast
                or original.src.is_unspecified
                or (original.next_header == C.IPPROTO_ICMPV6 and original.payload
                    and original.payload[0] < C.ICMPV6_INFORMATIONAL_MIN)):
            return
        now = self.clock.monotonic()
        if now - self._last_unreachable < _UNREACHABLE_INTERVAL:
            self._drop("unreachable_rate_limited")
            return
        self._last_unreachable = now
        # The error, with as much of the packet as fits in the minimum MTU.
        room = C.TEREDO_MTU - C.IPV6_HDR_LEN - 8
        error = icmpv6.build_icmpv6(self.tunnel.link_local, original.src,
                                    C.ICMPV6_DESTINATION_UNREACHABLE,
                                    C.ICMPV6_CODE_ADDRESS_UNREACHABLE,
                                    bytes(4) + packet[:room], hop_limit=C.DEFAULT_HOP_LIMIT)
        self._deliver(error)

    def _drop(self, reason: str) -> None:
        self.counters[f"drop_{reason}"] += 1

    # -- what the control socket serves -------------------------------------------------------

    def status(self) -> dict:
        """`xdp-teredo status --json`: state, address, server, mapped, nat, since, ..."""
        mapping = self.qual.mapping if self.qual is not None else None
        state = self.qual.state.value if self.qual is not None else Q.State.OFFLINE.value
        return {
            "state": state,
            "address": str(mapping.address) if mapping else None,
            "server": str(self.qual.server) if self.qual is not None else None,
            "mapped": f"{mapping.mapped_ip}:{mapping.mapped_port}" if mapping else None,
            "nat": self._nat(mapping) if mapping else None,
            "since": _iso(self.since_wall),
            "since_s": round(self.clock.monotonic() - self.since, 3),
            "mtu": self.tunnel.mtu if self.tunnel else None,
            "link_local": str(self.tunnel.link_local) if self.tunnel and self.tunnel.link_local else None,
            "tunnel": self.config.tunnel,
            "ifindex": self.tunnel.ifindex if self.tunnel else None,
            "interface": self.plan.nic.name,
            "local": f"{self.local[0]}:{self.local[1]}" if self.local else None,
            "servers": [str(s) for s in self.servers],
            "xdp": self.att.xdp_attached if self.att else None,
            # Where incoming Teredo is decapsulated: "xdp" or "tc" (--xdp-mode off).
            "decap": self.att.ingress if self.att else None,
            "pid": os.getpid(),
            "user": self.user,
            "started": _iso(self.started_wall),
            "peers": len(self.peers),
            "restart_safe": self.plan.restart_safe,
            "inbound": self._inbound_status(),
            "adopted": self.adopted,
            "interface_up": self.interface_up,
        }

    def _inbound_status(self) -> dict:
        """The guard: policy, allowed ports, live flows, and what the slow path refused
        (the fast path's refusals are `stats`' guard_* reasons)."""
        info = (self.guard.settings if self.guard is not None else self.plan.inbound).describe()
        maps = getattr(self.att, "guard", None)
        if maps is not None:
            try:
                info.update(maps.summary())
            except (RuntimeFailure, OSError) as err:
                info["error"] = str(err)
        info["slow_path_dropped"] = {v: self.counters[f"drop_{v}"] for v in guard.VERDICTS
                                     if self.counters[f"drop_{v}"]}
        return info

    def peer_table(self) -> list:
        """`xdp-teredo peers --json`: the BPF peer table, plus the peers the control
        plane is still resolving (bubbles sent or a connectivity test running)."""
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
                "relay": bool(entry.flags & PeerFlag.RELAY),
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
                "trusted": peer.trusted, "learned": False,
                "relay": not peerlist.teredo_parts(peer.address),
                "last_rx_s": round(mono - peer.last_rx, 3) if peer.last_rx is not None else None,
                "last_tx_s": round(mono - peer.last_tx, 3) if peer.last_tx is not None else None,
                "rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "tx_bytes": 0,
                "in_datapath": False,
                "queued": len(peer.queue), "bubbles": peer.bubble_count,
                "testing": peer.nonce is not None, "unreachable": peer.echo_failed,
            })
        return rows

    def stats(self) -> dict:
        """The data path's counters, shaped as datapath.stats.read() returns them."""
        return self.att.stats()

    def counter_table(self) -> dict:
        """The control plane's own counters (the slow path), the policies' drops."""
        return {
            "slow_path": dict(self.counters),
            "peer_drops": dict(self.peers.drops),
            "ra_ignored": dict(self.qual.ignored) if self.qual is not None else {},
            "socket_refusals": dict(self.sock.refusals) if self.sock else {},
            "control": {"served": self.control.served, "refused": self.control.refused},
        }

    # -- shutting down ------------------------------------------------------------------------

    def shutdown(self, *, keep_datapath: bool = False) -> List[str]:
        """Remove everything set-up added, in reverse; every step is tried. Returns
        the failures (each also logged). Idempotent.

        keep_datapath (restart-safe stop): leave the programs, maps, tunnel, address
        and routes as they are for the next instance; only our fds close.
        """
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
        if keep_datapath:
            for what, obj, release in (("data path", self.att, "release"),
                                       ("tunnel", self.tunnel, "release"),
                                       ("socket", self.sock, "close"),
                                       ("interface watch", self.watch, "close"),
                                       ("BPF programs", self.prog, "close"),
                                       ("selector", self._selector, "close")):
                if obj is not None:
                    step(what, getattr(obj, release))
            for end in (self._wake_r, self._wake_w):
                end.close()
            return failures
        if self.att is not None:
            # First, so that no packet takes the fast path with an address that is
            # about to go away.
            step("data path", self.att.detach)
        if self.tunnel is not None:
            step("addresses", self.tunnel.clear_address)
        if self.hook is not None:
            # Miredo's last two runs: "down", then "destroy".
            step("hook", self.hook.destroy)
        if self.tunnel is not None:
            step("tunnel", self.tunnel.close)
        if self.sock is not None:
            step("socket", self.sock.close)
        if self.watch is not None:
            step("interface watch", self.watch.close)
        if self.prog is not None:
            step("BPF programs", self.prog.close)
        if self._selector is not None:
            step("selector", self._selector.close)
        for end in (self._wake_r, self._wake_w):
            end.close()
        return failures


def pin_root() -> str:
    """Where a root client pins its maps: $XDP_TEREDO_PIN_ROOT (as `xdp-teredo stats`
    reads it), else the data path's default under /sys/fs/bpf."""
    from xdp_teredo.datapath import stats

    return os.environ.get("XDP_TEREDO_PIN_ROOT") or stats.DEFAULT_PIN_ROOT


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat(
        timespec="seconds")


def _age(now_ns: int, then_ns: int) -> Optional[float]:
    return round((now_ns - then_ns) / 1e9, 3) if then_ns else None


# -- the command ---------------------------------------------------------------------------------

def run(plan: Plan) -> int:
    """Set up, drop privileges, serve until SIGINT/SIGTERM, remove everything.

    0 after a clean stop; 1 when the clean-up left something behind or the tunnel
    failed. Set-up errors propagate (RuntimeFailure) after their own undo.
    """
    client = Client(plan)
    previous = {}
    old_wakeup = None

    def on_signal(signum, _frame):
        # No logging here: the handler may interrupt a log call in progress.
        if signum == signal.SIGHUP and plan.restart_safe:
            client.keep_datapath = True   # the restart: leave the fast path running
        client.stop(signal.Signals(signum).name)

    # Installed before the (long) set-up so that a SIGTERM during it still ends in
    # the clean-up below rather than in a dead process with XDP attached.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, on_signal)
    old_wakeup = signal.set_wakeup_fd(client.wakeup_fd)
    failures: List[str] = []
    try:
        client.setup()
        client.drop_privileges()
        if not client._stopping:
            client.serve()
    except Exception:
        if plan.restart_safe and client.serving:
            # A crash of the control plane must not take established traffic with
            # it: the next instance adopts the fast path.
            client.keep_datapath = True
        raise
    finally:
        signal.set_wakeup_fd(old_wakeup)
        failures = client.shutdown(keep_datapath=client.keep_datapath)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _log.info("client_stopped", signal=client._stopped_by, failures=failures or None,
              kept_datapath=client.keep_datapath or None,
              **{k: v for k, v in client.counters.items() if not k.startswith("drop_")})
    if client.failed:
        raise RuntimeFailure(client.failed)
    if failures:
        raise RuntimeFailure("clean-up left things behind: " + "; ".join(failures))
    return 0


def attach(settings: cfg.Settings, config_path: Optional[str] = None,
           timers: Timers = Timers(), *, restart_safe: bool = False,
           peer_max: int = C.PEER_LIST_MAX, inbound: Optional[guard.Settings] = None) -> int:
    """`xdp-teredo attach`: prepare (nothing touched on a bad input), then run."""
    if peer_max < 1:
        raise UsageError(f"--peer-max {peer_max}: must be at least 1")
    plan = prepare(settings, config_path, timers)
    if inbound is not None:
        plan = dataclasses.replace(plan, inbound=inbound)
    return run(dataclasses.replace(plan, restart_safe=restart_safe, peer_max=peer_max))


def detach(interface: str, tunnel: str = cfg.DEFAULT_TUNNEL) -> List[str]:
    """`xdp-teredo detach IFACE`: remove what a killed client left (XDP and tc
    programs, pins, a tunnel nobody holds). Refuses while a client runs here."""
    from pyroute2 import IPRoute

    from xdp_teredo.datapath import loader
    from xdp_teredo.net.tunnel import remove_stale_tunnel

    cfg.check_interface_name(interface, "interface")
    cfg.check_interface_name(tunnel, "--tunnel name")
    status = control.running(tunnel)
    if status is not None:
        raise RuntimeFailure(
            f"a client is running here (pid {status.get('pid')}, tunnel {tunnel} over "
            f"{status.get('interface')}): stop it with SIGTERM, it removes everything itself")
    with IPRoute() as ipr:
        nic = ipr.link_lookup(ifname=interface)
        tun = ipr.link_lookup(ifname=tunnel)
    if not nic:
        raise UsageError(f"no such interface: {interface} (in this network namespace)")
    removed = loader.detach_stale(nic[0], tun[0] if tun else 0, pin_root=pin_root())
    if remove_stale_tunnel(tunnel):
        removed.append(f"tunnel {tunnel}")
    return removed


def query_status(tunnel: str = cfg.DEFAULT_TUNNEL) -> dict:
    return control.query("status", tunnel)


# A relay's table holds up to 131,072 peers: building and sending that many rows
# takes the daemon about a second, longer on a busy machine.
PEERS_TIMEOUT = 30.0


def query_peers(tunnel: str = cfg.DEFAULT_TUNNEL) -> list:
    return control.query("peers", tunnel, timeout=PEERS_TIMEOUT)
