"""The client's plan: everything checked before the machine is touched.

`prepare` turns the command line and a miredo.conf into a Plan: the interface and
the IPv4 address Teredo runs from, the servers (resolved), the user, the timers.
A bad input is a UsageError here, before anything is compiled or created; a name
that cannot resolve *yet* (no DNS at boot) is not a bad input: the client starts
offline and retries it (servers.TemporaryFailure, client/qualify.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import socket
from typing import Optional, Tuple

from ..errors import RuntimeFailure, UsageError
from ..teredo import constants, guard
from . import config as cfg
from .servers import TeredoServer, servers_for

IPv4Address = ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True)
class Timers:
    """The protocol's timers; the defaults are the RFC's and Miredo's. Tests (and the
    hidden --refresh-interval ... options) shorten them so nothing waits 30 s."""

    refresh_interval: float = constants.REFRESH_INTERVAL          # §5.2.7
    qualification_timeout: float = constants.QUALIFICATION_TIMEOUT  # §5.2.1
    qualification_tries: int = constants.QUALIFICATION_TRIES
    restart_delay: float = constants.RESTART_DELAY                # Miredo: 100 s after failing
    restart_delay_max: float = constants.RESTART_DELAY_MAX
    peer_expiry: float = constants.PEER_EXPIRY
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
    peer_max: int = constants.PEER_LIST_MAX
    # The inbound guard (--inbound, --allow; docs/security.md): stateful by default.
    inbound: guard.Settings = guard.Settings()
    # Map our port on a UPnP gateway when one answers (--no-upnp: never search;
    # client/upnp.py, RFC 6081 §4.3).
    upnp: bool = True
    # On a veth NIC, what the host left to offload (checksums, GSO): "finish" sends it
    # round the checksum veth first (net/csum_veth.py), so that a peer that
    # decapsulates in userspace on this host reads it right; "pass" hands it to the
    # veth as it is (GSO kept whole: every such peer must decapsulate in the kernel).
    veth_offloads: str = "finish"
    # Names that did not resolve at start ((name, reason)): retried while offline.
    unresolved: Tuple[Tuple[str, str], ...] = ()


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
    preflight(config)
    nic = find_nic(config.interface, config.bind_address)
    unresolved: list = []
    servers = resolve(config, resolver, unresolved)
    return Plan(config=config, nic=nic, servers=servers, timers=timers,
                unresolved=tuple(unresolved))


def preflight(config: cfg.ClientConfig) -> None:
    """What attach needs of the machine and of IFACE, checked before anything is
    compiled or touched (and before any name is resolved): root, BPF, tun, IFACE up,
    no XDP program of another tool on it (unless --xdp-mode off, which puts none
    there). One line, exit 2 or 1 (daemon/preflight.py); well under a second as a
    user, whose first check fails."""
    from ..daemon import preflight as pf

    checks = [lambda: pf.capabilities(who="xdp-teredo attach"), pf.bpf_syscall, pf.tun,
              lambda: pf.interface(config.interface)]
    if config.xdp_mode != "off":
        checks.append(lambda: pf.foreign_xdp(
            config.interface, avoid="detach it (ip link set dev NAME xdp off), or use "
                                    "--xdp-mode off (decapsulate in tc)"))
    pf.require(checks)


def resolve(config: cfg.ClientConfig, resolver=None, unresolved: Optional[list] = None
            ) -> Tuple[TeredoServer, ...]:
    """servers.servers_for, with every name looked up at once; the names skipped for
    now (a temporary failure, or a built-in name) go on `unresolved` (name, reason).

    The built-in list has a dozen names, most of them gone; with DNS unreachable
    (at boot, in a namespace) each lookup waits for the resolver's timeout, and
    one after the other they would hold the start for most of a minute. In
    parallel the whole list costs one timeout. The threads are joined before
    anything else happens (dropping privileges needs a single thread).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .servers import system_resolver

    lookup = resolver or system_resolver
    names = [n for n in dict.fromkeys((*config.servers, config.server2)) if n]
    names = [n for n in names if not _is_ipv4_literal(n)]
    if len(names) <= 1:
        return servers_for(config, resolver=resolver, unresolved=unresolved)

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

    return servers_for(config, resolver=answered, unresolved=unresolved)


def _is_ipv4_literal(name: str) -> bool:
    try:
        IPv4Address(name)
    except ValueError:
        return False
    return True


def pin_root() -> str:
    """Where a root client pins its maps: $XDP_TEREDO_PIN_ROOT (as `xdp-teredo stats`
    reads it), else the data path's default under /sys/fs/bpf."""
    from ..datapath import stats

    return os.environ.get("XDP_TEREDO_PIN_ROOT") or stats.DEFAULT_PIN_ROOT
