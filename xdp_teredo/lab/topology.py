"""The lab: a small internet of network namespaces, with NATs, a Teredo server
host, a relay host and an IPv6-only host.

                                        +----- server   192.0.2.1 + .2, 2001:db8:2::1
                                        |
    client1 -- nat1 --------------------+----- public   203.0.113.10
    10.1.0.2   198.51.100.1             |
                                      inet --- relay    192.0.2.20,     2001:db8:3::1
    client2 -- nat2b -- nat2a ----------+         |     2001:db8:1::1 (eth1)
    10.2.1.2   10.2.0.2  198.51.100.17            |
                                                v6host  2001:db8:1::2 (IPv6 only)

    client3a --+
    10.3.0.2   +-- nat3 (a bridge on its LAN) -- inet
    client3b --+   198.51.100.33
    10.3.0.3

client3a and client3b share one LAN (a bridge in nat3) behind one NAT: two
hosts at home behind the same router. Linux does not hairpin: what one sends to
nat3's public address does not come back to the other.

Every NAT has a kind (netns.NAT_KINDS): "firewalled" (a home router; the
default), "open" (no firewall: the port is remapped when a remote's unsolicited
packet took the tuple), "symmetric" (a random port per flow) or "upnp" (symmetric,
with a UPnP IGD, miniupnpd, on its LAN side: lab/upnp.py). Lab(nat={"nat1":
"symmetric"}) picks them per NAT host.

Every host-to-host link is its own veth pair with its own small subnet, and
"inet" routes between them: no host is a layer-2 neighbour of another, so
everything a test sends crosses the router and, for NATed clients, the NAT(s).
The private LANs behind NATs are not routed on inet, as on the real internet.

inet is dual-stack for the two hosts that need native IPv6: the Teredo server
forwards its clients' direct connectivity tests (ICMPv6 echo, RFC 4380 §5.2.9,
§5.3.1) to native IPv6, and the relay reaches v6host's network. inet routes
2001:db8:1::/64 and the Teredo prefix 2001::/32 to the relay, as the real
internet routes 2001::/32 to the nearest relay (RFC 4380 §2.6).

Addresses come from the documentation ranges (RFC 5737, RFC 3849); nothing is
routed to the machine's real interfaces. Miredo refuses Teredo servers and peers
in private ranges, so the "public" side is never 10/8.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.lab import netns, probe

# Name of the uplink interface in every host, and of the downstream (LAN) side
# of NATs and the relay: the same in every namespace, so tests and BPF attach
# code can rely on it. On inet, the link to host X is named "to-X".
UPLINK = "eth0"
LAN = "eth1"

# What a Teredo relay serves (RFC 4380 §2.6).
TEREDO_PREFIX = "2001::/32"


@dataclass(frozen=True)
class _Link:
    """One point-to-point link of one family, seen from the downstream host."""

    subnet: str
    addrs: tuple      # the downstream host's addresses on it, primary first
    gateway: str      # the upstream end's address


@dataclass(frozen=True)
class _Spec:
    """What a role is, before it exists."""

    upstream: Optional[str]           # role it hangs off (None: inet itself)
    link4: Optional[_Link] = None     # its IPv4 uplink to `upstream`
    link6: Optional[_Link] = None     # its native IPv6 uplink to `upstream`
    nat: bool = False                 # MASQUERADEs its LAN behind its uplink address
    router4: bool = False             # forwards IPv4
    router6: bool = False             # forwards IPv6
    routed6: tuple = ()               # IPv6 prefixes `upstream` routes to it
    bridge_lan: bool = False          # its LAN is a bridge that several hosts join


# The plan. The /28 subnets keep each public link separate while still using the
# addresses the tests and the Miredo articles use (192.0.2.1/2, 198.51.100.1 ...).
_SPECS = {
    "inet": _Spec(None, router4=True, router6=True),
    "server": _Spec("inet",
                    _Link("192.0.2.0/28", ("192.0.2.1", "192.0.2.2"), "192.0.2.14"),
                    _Link("2001:db8:2::/64", ("2001:db8:2::1",), "2001:db8:2::ff")),
    "relay": _Spec("inet",
                   _Link("192.0.2.16/28", ("192.0.2.20",), "192.0.2.30"),
                   _Link("2001:db8:3::/64", ("2001:db8:3::1",), "2001:db8:3::ff"),
                   router6=True, routed6=("2001:db8:1::/64", TEREDO_PREFIX)),
    "public": _Spec("inet", _Link("203.0.113.0/28", ("203.0.113.10",), "203.0.113.14")),
    "nat1": _Spec("inet", _Link("198.51.100.0/28", ("198.51.100.1",), "198.51.100.14"),
                  nat=True, router4=True),
    "client1": _Spec("nat1", _Link("10.1.0.0/24", ("10.1.0.2",), "10.1.0.1")),
    # Two stacked NATs (the seed article's case): nat2a is the outer one, on inet.
    "nat2a": _Spec("inet", _Link("198.51.100.16/28", ("198.51.100.17",), "198.51.100.30"),
                   nat=True, router4=True),
    "nat2b": _Spec("nat2a", _Link("10.2.0.0/24", ("10.2.0.2",), "10.2.0.1"),
                   nat=True, router4=True),
    "client2": _Spec("nat2b", _Link("10.2.1.0/24", ("10.2.1.2",), "10.2.1.1")),
    # One LAN, two clients, one NAT (RFC 4380 §5.2.8 local discovery; RFC 6081 §4.5).
    "nat3": _Spec("inet", _Link("198.51.100.32/28", ("198.51.100.33",), "198.51.100.46"),
                  nat=True, router4=True, bridge_lan=True),
    "client3a": _Spec("nat3", _Link("10.3.0.0/24", ("10.3.0.2",), "10.3.0.1")),
    "client3b": _Spec("nat3", _Link("10.3.0.0/24", ("10.3.0.3",), "10.3.0.1")),
    # IPv6 only; its default route (2001::/32 included) points at the relay.
    "v6host": _Spec("relay", link6=_Link("2001:db8:1::/64", ("2001:db8:1::2",), "2001:db8:1::1")),
}

ROLES = tuple(_SPECS)

# Every Lab made in this process, for the test suite's leak check.
_CREATED_PREFIXES: list = []


def created_prefixes() -> list:
    """Namespace-name prefixes of every Lab made in this process."""
    return list(_CREATED_PREFIXES)


@dataclass(frozen=True)
class PingResult:
    """What Lab.ping saw. ok: at least `wanted` replies came back."""

    sent: int
    received: int
    rtts_ms: list
    replies_from: list
    wanted: int

    @property
    def ok(self) -> bool:
        return self.received >= self.wanted


@dataclass
class Host:
    """One namespace of the lab, as tests see it.

    role:        "server", "client1", ... (the key in Lab.hosts)
    netns:       the namespace name, e.g. "xt-3fa9c1-client1"
    uplink:      its upstream interface ("eth0"); None for inet
    lan:         its downstream interface for NATs and the relay ("eth1"), else None
    ipv4:        its IPv4 addresses on the uplink (IPv4Address), primary first
    gateway:     the IPv4 gateway on the uplink, None if none
    public_ipv4: the address the internet sees as its source: its own for hosts
                 on inet, the outermost NAT's uplink address for NATed clients
    ipv6:        its native IPv6 addresses (IPv6Address): uplink first, then LAN
    gateway6:    the IPv6 gateway on the uplink, None if none
    """

    role: str
    netns: str
    uplink: Optional[str] = None
    lan: Optional[str] = None
    ipv4: list = field(default_factory=list)
    gateway: Optional[ipaddress.IPv4Address] = None
    public_ipv4: Optional[ipaddress.IPv4Address] = None
    ipv6: list = field(default_factory=list)
    gateway6: Optional[ipaddress.IPv6Address] = None

    @property
    def address(self) -> ipaddress._BaseAddress:
        """The primary address: first IPv4, or first IPv6 for an IPv6-only host."""
        return self.ipv4[0] if self.ipv4 else self.ipv6[0]


def closure(roles: Iterable[str]) -> list:
    """The roles plus everything they depend on, in build order (upstream first)."""
    wanted = set()
    for role in roles:
        if role not in _SPECS:
            raise UsageError(f"unknown lab host {role!r}; known: {', '.join(ROLES)}")
        while role is not None and role not in wanted:
            wanted.add(role)
            role = _SPECS[role].upstream
    return [r for r in ROLES if r in wanted]  # ROLES lists upstreams first


class Lab:
    """Builds the topology in __enter__ (or build()) and always tears it down.

    Lab(hosts={"server", "client1"}) builds those hosts and their dependencies
    (here inet and nat1); Lab() builds everything. If building fails half-way,
    whatever was made is removed before the error propagates; __exit__ tears
    down on exceptions too. Teardown stops every process spawned through the lab,
    deletes every namespace and raises RuntimeFailure if any is left.

    nat: {NAT host: kind} (netns.NAT_KINDS); a NAT host not named is "firewalled".

    workdir: where logs and config files go. Default: a fresh temp dir that is
    removed on close unless keep_workdir is set; a given workdir is never removed.
    """

    def __init__(self, hosts: Optional[Iterable[str]] = None, *,
                 workdir: Optional[Path] = None, keep_workdir: bool = False,
                 nat: Optional[dict] = None):
        if isinstance(hosts, str):  # Lab("client1"), not an iterable of letters
            hosts = [hosts]
        self.roles = closure(hosts if hosts is not None else ROLES)
        self.nat_kinds = {r: "firewalled" for r in self.roles if _SPECS[r].nat}
        for role, kind in (nat or {}).items():
            if role not in _SPECS or not _SPECS[role].nat:
                raise UsageError(f"{role!r} is not a NAT host of the lab")
            if kind not in netns.NAT_KINDS:
                raise UsageError(f"unknown NAT kind {kind!r}; one of {', '.join(netns.NAT_KINDS)}")
            if role in self.nat_kinds:
                self.nat_kinds[role] = kind
        # 6 hex digits: parallel runs (and other engineers' runs) never clash.
        self.id = secrets.token_hex(3)
        self.prefix = f"{netns.NETNS_PREFIX}{self.id}-"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=self.prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._keep_workdir = keep_workdir
        self.hosts: dict = {}
        self._made: list = []       # namespaces created, in order
        self._procs: list = []      # BackgroundProcess, in start order
        self.igds: dict = {}        # NAT host -> lab.upnp.Igd, for "upnp" NATs
        self._built = False
        self._closed = False

    # --- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Lab":
        self.build()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except RuntimeFailure:
            # Never hide the with-block's own exception behind a teardown one.
            if exc_type is None:
                raise

    def build(self) -> "Lab":
        if self._built:
            return self
        _CREATED_PREFIXES.append(self.prefix)
        try:
            for role in self.roles:
                self._build_host(role)
            self._build_more()
            self._start_igds()
        except BaseException:
            try:
                self.close()
            except RuntimeFailure:
                pass  # the build error is the one to report; the suite's leak check still runs
            raise
        self._built = True
        return self

    def close(self) -> None:
        """Stop processes, delete namespaces, check none remains. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for proc in reversed(self._procs):
            try:
                proc.stop()
            except Exception as err:  # keep tearing down: namespaces must go
                errors.append(f"stop {proc!r}: {err}")
        for name in reversed(self._made):
            try:
                netns.del_netns(name)
            except RuntimeFailure as err:
                errors.append(str(err))
        left = netns.list_netns(self.prefix)
        if left:
            errors.append(f"namespaces left behind: {', '.join(left)}")
        if self._own_workdir and not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise RuntimeFailure("lab teardown: " + "; ".join(errors))

    # --- what tests use ----------------------------------------------------

    def __getitem__(self, role: str) -> Host:
        try:
            return self.hosts[role]
        except KeyError:
            raise UsageError(f"host {role!r} is not in this lab ({', '.join(self.hosts)})") from None

    def __contains__(self, role: str) -> bool:
        return role in self.hosts

    def run(self, role: str, *cmd, check: bool = True, timeout: float = netns.DEFAULT_TIMEOUT,
            input: Optional[str] = None):
        """Run `cmd` in host `role` and wait: a subprocess.CompletedProcess (text)."""
        return netns.ns_run(self[role].netns, *cmd, check=check, timeout=timeout, input=input)

    def spawn(self, role: str, *cmd, log: Optional[str] = None) -> netns.BackgroundProcess:
        """Start `cmd` in the background in host `role`; the lab stops it on close.

        log: file name (relative to workdir) or path for its stdout+stderr;
        default "<role>-<program>-<n>.log" in workdir.
        """
        if self._closed:
            raise RuntimeFailure("lab is closed")
        if log is None:
            log = f"{role}-{Path(str(cmd[0])).name}-{len(self._procs)}.log"
        proc = netns.spawn(self[role].netns, cmd, self.workdir / log)
        self._procs.append(proc)
        return proc

    def ping(self, role: str, dst, *, count: int = 1, deadline: float = 5.0,
             interval: float = 0.2, size: int = 56, source=None) -> "PingResult":
        """ICMP/ICMPv6 echo from host `role` to `dst` until `count` replies arrive
        or `deadline` seconds pass. Never raises on loss: look at .ok/.received.
        """
        args = ["ping", dst, "--count", count, "--deadline", deadline,
                "--interval", interval, "--size", size]
        if source is not None:
            args += ["--source", source]
        res = self.run(role, *probe.argv(*args), check=False, timeout=deadline + 10)
        try:
            data = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as err:
            raise RuntimeFailure(f"ping probe in {role} failed: {res.stderr.strip()}") from err
        return PingResult(sent=data["sent"], received=data["received"],
                          rtts_ms=data["rtts_ms"], replies_from=data["replies_from"],
                          wanted=count)

    def conntrack_flush(self, role: str) -> None:
        """Forget the NAT mappings of a NAT host (or the conntrack state of any host)."""
        netns.conntrack_flush(self[role].netns)

    def namespaces(self) -> list:
        """Names of this lab's namespaces that exist now."""
        return netns.list_netns(self.prefix)

    # --- building ----------------------------------------------------------

    def _new_ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        netns.add_netns(name)
        self._made.append(name)
        # Before any link exists, so that every veth end inherits it.
        netns.disable_dad(name)
        return name

    def _build_host(self, role: str) -> None:
        spec = _SPECS[role]
        ns = self._new_ns(role)
        host = Host(role=role, netns=ns)
        self.hosts[role] = host
        if spec.router4 or spec.router6:
            netns.enable_forwarding(ns, ipv4=spec.router4, ipv6=spec.router6)
        if spec.bridge_lan:
            netns.add_bridge(ns, LAN)
            host.lan = LAN
        if spec.upstream is None:  # inet: it only gets links from downstream hosts
            return
        up = self.hosts[spec.upstream]
        # The upstream end: on inet it is named after the host, elsewhere it
        # is the upstream's LAN side (a NAT's inside, the relay's IPv6 side).
        bridged = _SPECS[up.role].bridge_lan
        up_if = f"to-{role}" if up.role == "inet" else (f"lan-{role}"[:15] if bridged else LAN)
        netns.add_veth(ns, UPLINK, up.netns, up_if)
        host.uplink = UPLINK
        if bridged:
            netns.enslave(up.netns, up_if, LAN)
            up_if = LAN   # the gateway address lives on the bridge
        if up.role != "inet":
            up.lan = up_if
        if spec.link4:
            host.ipv4 = self._address_link(ns, up, up_if, spec.link4, gateway_there=bridged)
            host.gateway = ipaddress.IPv4Address(spec.link4.gateway)
            # Behind a NAT the internet sees the outermost NAT; on inet, oneself.
            host.public_ipv4 = up.public_ipv4 if up.role != "inet" else host.ipv4[0]
        if spec.link6:
            host.ipv6 = self._address_link(ns, up, up_if, spec.link6)
            host.gateway6 = ipaddress.IPv6Address(spec.link6.gateway)
            if up.role != "inet":
                up.ipv6.append(host.gateway6)
            for prefix in spec.routed6:
                netns.add_route(up.netns, prefix, via=str(host.ipv6[0]))
        if spec.nat:
            netns.masquerade(ns, UPLINK, kind=self.nat_kinds[role])

    def _start_igds(self) -> None:
        """A UPnP IGD on every NAT of kind "upnp" whose LAN exists (lab/upnp.py)."""
        from xdp_teredo.lab import upnp

        for role, kind in self.nat_kinds.items():
            if kind == "upnp" and self.hosts[role].lan is not None:
                self.igds[role] = upnp.start_igd(self, role, uplink=UPLINK, lan=LAN)

    def _build_more(self) -> None:
        """Hosts beyond _SPECS, made by a subclass (lab/fleet.py) with _new_ns, so
        that teardown and the leak check cover them too. Nothing here."""

    def _address_link(self, ns: str, up: Host, up_if: str, link: _Link, *,
                      gateway_there: bool = False) -> list:
        """Addresses on both ends of one family's uplink, default route via it.
        gateway_there: a shared LAN (a bridge): the first host's link gave the
        upstream its gateway address already."""
        prefixlen = ipaddress.ip_network(link.subnet).prefixlen
        have = netns.ns_run(up.netns, "ip", "-o", "addr", "show", "dev", up_if).stdout \
            if gateway_there else ""
        if f" {link.gateway}/" not in have:
            netns.add_address(up.netns, up_if, f"{link.gateway}/{prefixlen}")
        for addr in link.addrs:
            netns.add_address(ns, UPLINK, f"{addr}/{prefixlen}")
        netns.add_route(ns, "default", via=link.gateway)
        return [ipaddress.ip_address(a) for a in link.addrs]

    def __repr__(self) -> str:
        return f"<Lab {self.prefix}* hosts={','.join(self.roles)}>"
