"""The Teredo tunnel interface: a tun device, its addresses and its routes.

What a qualified client's interface looks like is Miredo's, as Debian's client-hook
(/etc/miredo/client-hook) builds it, so that users and scripts see what they know:

    teredo: <POINTOPOINT,NOARP,UP> mtu 1280
        inet6 2001:0:c000:201:...:fd74/32    the Teredo address
        inet6 fe80::ffff:ffff:ffff/64        Miredo's link-local (cone: fe80::8000:5445:5245:444f)
    2001::/32 dev teredo metric 1029
    default dev teredo metric 1029           1029 > 1024: native IPv6 always wins

Choices made deliberately:
- The Teredo address is a /32, as Debian's hook adds it (`ip addr` looks the same to
  someone migrating), but with IFA_F_NOPREFIXROUTE: the 2001::/32 route is one we add
  and remove ourselves. So the route does not flap when a requalification replaces
  the address, close() removes exactly what we added, and a relay (no address of its
  own) can use the same route. Its metric is also 1029, so a second Teredo interface
  on the host (Miredo's kernel prefix route has metric 256) keeps precedence.
- addr_gen_mode none: the kernel would otherwise put a random link-local of its own
  on the device; Miredo's hook flushes it, we never let it appear.
- No DAD (IFA_F_NODAD): the tun is NOARP, the kernel skips DAD there anyway; saying
  so keeps the address usable at once if the device type ever changes.
- The device is not persistent by default: the kernel deletes it, with its
  addresses and routes, when the last fd closes, so even SIGKILL leaves no tunnel
  behind unless another process holds the fd (the fd is O_CLOEXEC so that hooks do
  not); the relay's is such. The client (crash-only, docs/reliability.md) makes its
  own persistent (TUNSETPERSIST) so that it outlives a killed process, and the next
  instance takes it over with `Tunnel.adopt`; close() deletes it explicitly either way.

The fd stays the control plane's: the tc program leaves slow-path packets in the
tunnel, which read() returns, and write() injects IPv6 packets as if they arrived
on the interface. The fd is non-blocking: read() returns None when nothing waits.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from typing import Optional, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.net.names import DEFAULT_TUNNEL, check_interface_name
from xdp_teredo.teredo import constants
from xdp_teredo.teredo.address import TeredoAddress

IPv6Like = Union[ipaddress.IPv6Address, str]

TUN_DEVICE = "/dev/net/tun"
# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_TUNSETPERSIST = 0x400454CB
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000      # no 4-byte packet information header: reads are bare IPv6
_IFREQ = struct.Struct("16sH22x")
# linux/if_addr.h
_IFA_F_NODAD = 0x02
_IFA_F_NOPREFIXROUTE = 0x200
# linux/if_link.h: IN6_ADDR_GEN_MODE_NONE
_ADDR_GEN_MODE_NONE = 1
# Largest IPv6 packet a tun read can return; reads never truncate below this.
_READ_SIZE = 65536

LINK_LOCAL_PREFIXLEN = 64     # as Debian's hook: "${LLADDRESS}/64"
TEREDO_PREFIXLEN = constants.TEREDO_PREFIX.prefixlen
ROUTE_METRIC = constants.DEFAULT_ROUTE_METRIC
DEFAULT_ROUTE = ipaddress.IPv6Network("::/0")


def link_local_for(address: IPv6Like) -> ipaddress.IPv6Address:
    """Miredo's link-local for this Teredo address (its privproc's LLADDRESS): the
    cone one if the address has the cone flag, else the restricted one."""
    teredo = TeredoAddress.parse(address) if not isinstance(address, TeredoAddress) else address
    return ipaddress.IPv6Address(constants.LINK_LOCAL_CONE if teredo.cone else constants.LINK_LOCAL_RESTRICTED)


class Tunnel:
    """A Teredo tunnel device. Make one with Tunnel.create(); close() undoes it all.

    Attributes: name, ifindex, mtu, address (the Teredo address, or None while not
    qualified), link_local (None while not qualified).
    """

    def __init__(self, name: str, fd: int, ifindex: int, ipr: IPRoute, mtu: int):
        # Use Tunnel.create(); this only records what create() made.
        self.name = name
        self.ifindex = ifindex
        self.mtu = mtu
        self.address: Optional[ipaddress.IPv6Address] = None
        self.link_local: Optional[ipaddress.IPv6Address] = None
        self.persistent = False
        self._fd = fd
        self._ipr = ipr
        self._routes = []   # (network, metric) that we added

    # -- creation ------------------------------------------------------------------

    @classmethod
    def create(cls, name: str = DEFAULT_TUNNEL, *, mtu: int = constants.TEREDO_MTU,
               persistent: bool = False) -> "Tunnel":
        """Create the tun device `name`, set its MTU and bring it up (no address yet).

        persistent: the device outlives our fd (the client, crash-only; see adopt).
        RuntimeFailure (cause chained) if the device cannot be made: no /dev/net/tun,
        no CAP_NET_ADMIN, or `name` taken (by a running client: see find_tun_holders;
        by something that is not a tun).
        """
        check_interface_name(name, "tunnel name")
        fd = _open_tun(name)
        ipr = None
        try:
            ipr = IPRoute()
            ifindex = ipr.link_lookup(ifname=name)[0]
            tunnel = cls(name, fd, ifindex, ipr, mtu)
        except (NetlinkError, OSError, IndexError) as err:
            if ipr is not None:
                ipr.close()
            os.close(fd)
            raise RuntimeFailure(f"tunnel {name}: created but not found by netlink: {err}") from err
        try:
            tunnel._netlink("turn off link-local generation on", ipr.link, "set", index=ifindex,
                            IFLA_AF_SPEC={"attrs": [("AF_INET6", {"attrs": [
                                ("IFLA_INET6_ADDR_GEN_MODE", _ADDR_GEN_MODE_NONE)]})]})
            tunnel._netlink(f"set MTU {mtu} on", ipr.link, "set", index=ifindex, mtu=mtu)
            tunnel._netlink("bring up", ipr.link, "set", index=ifindex, state="up")
            if persistent:
                tunnel.set_persistent(True)
        except RuntimeFailure:
            tunnel.close()
            raise
        return tunnel

    @classmethod
    def adopt(cls, name: str = DEFAULT_TUNNEL) -> "Tunnel":
        """Take over the persistent tun `name` that a previous instance left, as it
        is: its MTU, its Teredo address and link-local, and the routes we add
        (2001::/32 and ::/0, metric ROUTE_METRIC), which close() will then remove.

        RuntimeFailure if there is no such tun, or a live process holds it.
        """
        check_interface_name(name, "tunnel name")
        ipr = IPRoute()
        try:
            ifindex = ipr.link_lookup(ifname=name)
            link = _tun_link(ipr, name, ifindex[0]) if ifindex else None
            if link is None:
                raise RuntimeFailure(f"no tun device {name} to take over")
            ifindex = ifindex[0]
            holders = find_tun_holders(name)
            if holders:
                raise RuntimeFailure(f"tunnel {name} is in use by pid "
                                     f"{', '.join(map(str, holders))}: nothing to take over")
            fd = _open_tun(name)
        except BaseException:
            ipr.close()
            raise
        tunnel = cls(name, fd, ifindex, ipr, link.get("IFLA_MTU"))
        tunnel.persistent = True  # it outlived the last fd: it is
        try:
            for msg in ipr.get_addr(family=socket.AF_INET6, index=ifindex):
                address = ipaddress.IPv6Address(msg.get_attr("IFA_ADDRESS"))
                if address.is_link_local and msg["prefixlen"] == LINK_LOCAL_PREFIXLEN:
                    tunnel.link_local = address
                elif address in constants.TEREDO_PREFIX and msg["prefixlen"] == TEREDO_PREFIXLEN:
                    tunnel.address = address
            for network in (constants.TEREDO_PREFIX, DEFAULT_ROUTE):
                if _has_route(ipr, ifindex, network, ROUTE_METRIC):
                    tunnel._routes.append((network, ROUTE_METRIC))
        except (NetlinkError, OSError) as err:
            tunnel.release()
            raise RuntimeFailure(f"tunnel {name}: cannot read its addresses and routes: "
                                 f"{err}") from err
        return tunnel

    def set_persistent(self, persistent: bool) -> None:
        """Whether the device outlives our fd (TUNSETPERSIST)."""
        try:
            fcntl.ioctl(self.fileno(), _TUNSETPERSIST, int(persistent))
        except OSError as err:
            raise RuntimeFailure(f"tunnel {self.name}: cannot make it "
                                 f"{'' if persistent else 'non-'}persistent: "
                                 f"{err.strerror}") from err
        self.persistent = persistent

    # -- the fd ----------------------------------------------------------------------

    def fileno(self) -> int:
        if self._fd < 0:
            raise RuntimeFailure(f"tunnel {self.name} is closed")
        return self._fd

    def read(self) -> Optional[bytes]:
        """One IPv6 packet that the kernel routed into the tunnel, or None if none waits."""
        try:
            return os.read(self.fileno(), _READ_SIZE)
        except BlockingIOError:
            return None
        except OSError as err:
            # EBADFD: the device was deleted under us (e.g. `ip link del`).
            raise RuntimeFailure(f"tunnel {self.name}: read failed: {err.strerror}") from err

    def write(self, packet: bytes) -> int:
        """Inject one IPv6 packet, as if received on the tunnel; returns its length."""
        try:
            return os.write(self.fileno(), packet)
        except OSError as err:
            # EINVAL: not an IP packet (IFF_NO_PI makes the tun read the version
            # nibble); EBADFD: the device is gone.
            raise RuntimeFailure(f"tunnel {self.name}: write of {len(packet)} bytes failed: "
                                 f"{err.strerror}") from err

    # -- configuration ---------------------------------------------------------------

    def set_mtu(self, mtu: int) -> None:
        """Change the MTU (an RA's MTU option, RFC 4380 §5.2.1)."""
        if not constants.TEREDO_MTU <= mtu <= constants.RA_MTU_MAX:
            raise ValueError(f"MTU {mtu} outside {constants.TEREDO_MTU}..{constants.RA_MTU_MAX}")
        self._netlink(f"set MTU {mtu} on", self._ipr.link, "set", index=self.ifindex, mtu=mtu)
        self.mtu = mtu

    def set_address(self, address: IPv6Like) -> None:
        """Qualified: put the Teredo address, its link-local and both routes on the tunnel.

        If an address is already set, this replaces it (see replace_address).
        """
        new = ipaddress.IPv6Address(address)
        if self.address is not None:
            self.replace_address(self.address, new)
            return
        link_local = link_local_for(new)
        self._add_address(link_local, LINK_LOCAL_PREFIXLEN)
        self.link_local = link_local
        self._add_address(new, TEREDO_PREFIXLEN)
        self.address = new
        self._add_route(constants.TEREDO_PREFIX)
        self._add_route(DEFAULT_ROUTE)

    def replace_address(self, old: IPv6Like, new: IPv6Like) -> None:
        """A requalification gave a new mapping: swap the Teredo address.

        The new address goes on before the old one comes off, so the host is never
        without one; the routes are the device's and stay. `old` must be the current
        address (a mismatch is a bug in the caller: ValueError).
        """
        old, new = ipaddress.IPv6Address(old), ipaddress.IPv6Address(new)
        if self.address != old:
            raise ValueError(f"tunnel {self.name}: {old} is not the current address "
                             f"({self.address})")
        if new == old:
            return
        self._add_address(new, TEREDO_PREFIXLEN)
        self.address = new
        self._del_address(old, TEREDO_PREFIXLEN)
        link_local = link_local_for(new)
        if link_local != self.link_local:
            self._add_address(link_local, LINK_LOCAL_PREFIXLEN)
            previous, self.link_local = self.link_local, link_local
            if previous is not None:
                self._del_address(previous, LINK_LOCAL_PREFIXLEN)

    def add_route(self, network: ipaddress.IPv6Network, metric: int = ROUTE_METRIC) -> None:
        """A route into the tunnel (the relay's 2001::/32) that clear_address() and
        close() remove with the rest."""
        self._add_route(ipaddress.IPv6Network(network), metric)

    def gone(self) -> bool:
        """Whether the device was deleted under us (a failed read asks)."""
        try:
            return not any(link["index"] == self.ifindex for link in self._ipr.get_links())
        except (NetlinkError, OSError):
            return False

    def clear_address(self) -> None:
        """Offline: remove the routes and addresses set_address added (the device stays)."""
        errors = []
        for network, metric in reversed(self._routes):
            errors += self._try(self._del_route, network, metric)
        if self.address is not None:
            errors += self._try(self._del_address, self.address, TEREDO_PREFIXLEN)
            self.address = None
        if self.link_local is not None:
            errors += self._try(self._del_address, self.link_local, LINK_LOCAL_PREFIXLEN)
            self.link_local = None
        if errors:
            raise errors[0]

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Remove the routes, the addresses and the device. Idempotent.

        Every step is tried even if one fails; the first failure is raised at the end.
        """
        if self._fd < 0:
            return
        errors = self._try(self.clear_address)
        os.close(self._fd)
        self._fd = -1
        # Closing the last fd deletes a non-persistent tun. If another process still
        # holds one (a forked child), delete the device explicitly.
        try:
            if _tun_link(self._ipr, self.name, self.ifindex) is not None:
                self._ipr.link("del", index=self.ifindex)
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                errors.append(RuntimeFailure(f"tunnel {self.name}: cannot delete device: "
                                             f"{err}"))
        self._ipr.close()
        if errors:
            raise errors[0]

    def release(self) -> None:
        """Close our fd and leave the device as it is, addresses and routes included
        (a crash or a hand-over: a persistent tun stays for the next instance)."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        self._ipr.close()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> "Tunnel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"ifindex {self.ifindex}, address {self.address}"
        return f"<Tunnel {self.name}: {state}>"

    # -- netlink, with our errors --------------------------------------------------------

    def _netlink(self, doing: str, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except (NetlinkError, OSError) as err:
            raise RuntimeFailure(f"tunnel {self.name}: cannot {doing} the device: {err}") from err

    def _add_address(self, address: ipaddress.IPv6Address, prefixlen: int) -> None:
        flags = _IFA_F_NODAD | (_IFA_F_NOPREFIXROUTE if prefixlen == TEREDO_PREFIXLEN else 0)
        try:
            self._ipr.addr("add", index=self.ifindex, address=str(address),
                           prefixlen=prefixlen, IFA_FLAGS=flags)
        except NetlinkError as err:
            raise RuntimeFailure(f"tunnel {self.name}: cannot add address "
                                 f"{address}/{prefixlen}: {err}") from err

    def _del_address(self, address: ipaddress.IPv6Address, prefixlen: int) -> None:
        try:
            self._ipr.addr("del", index=self.ifindex, address=str(address), prefixlen=prefixlen)
        except NetlinkError as err:
            # Gone already (or the device is): what we wanted.
            if err.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise RuntimeFailure(f"tunnel {self.name}: cannot remove address "
                                     f"{address}/{prefixlen}: {err}") from err

    def _add_route(self, network: ipaddress.IPv6Network, metric: int = ROUTE_METRIC) -> None:
        try:
            self._ipr.route("add", dst=str(network), oif=self.ifindex, priority=metric,
                            family=socket.AF_INET6)
        except NetlinkError as err:
            raise RuntimeFailure(f"tunnel {self.name}: cannot add route {network} "
                                 f"metric {metric}: {err}") from err
        self._routes.append((network, metric))

    def _del_route(self, network: ipaddress.IPv6Network, metric: int) -> None:
        try:
            self._ipr.route("del", dst=str(network), oif=self.ifindex, priority=metric,
                            family=socket.AF_INET6)
        except NetlinkError as err:
            if err.code not in (errno.ESRCH, errno.ENODEV):
                raise RuntimeFailure(f"tunnel {self.name}: cannot remove route {network} "
                                     f"metric {metric}: {err}") from err
        self._routes.remove((network, metric))

    @staticmethod
    def _try(step, *args) -> list:
        try:
            step(*args)
        except RuntimeFailure as err:
            return [err]
        return []


# -- a tunnel left behind --------------------------------------------------------------

def find_tun_holders(name: str) -> list:
    """PIDs of processes in our network namespace holding a tun fd attached to `name`.

    /proc/PID/fdinfo of a tun fd has an "iff:" line naming its device. It does not
    say which namespace the device is in, so holders are matched by their own
    network namespace: a process elsewhere with a same-named tun is not ours.
    """
    own_netns = _netns_inode("self")
    holders = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid() or _netns_inode(entry) != own_netns:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue   # gone, or not ours to read
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    if f"iff:\t{name}\n" in info.read():
                        holders.append(pid)
                        break
            except OSError:
                continue
    return holders


def remove_stale_tunnel(name: str = DEFAULT_TUNNEL) -> bool:
    """Delete the tun device `name` left behind by a killed instance (for `detach`).

    True if one was deleted, False if there was none. Refuses (RuntimeFailure) to
    touch an interface that is not a tun, and a tun that a live process still holds:
    that is a running client (ours or Miredo), which SIGTERM stops properly.
    """
    check_interface_name(name, "tunnel name")
    ipr = IPRoute()
    try:
        links = ipr.link_lookup(ifname=name)
        if not links:
            return False
        ifindex = links[0]
        if _tun_link(ipr, name, ifindex) is None:
            raise RuntimeFailure(f"{name} is not a tun device; not removing it")
        holders = find_tun_holders(name)
        if holders:
            pids = ", ".join(str(pid) for pid in holders)
            raise RuntimeFailure(f"tunnel {name} is in use by pid {pids}; stop that "
                                 "process (SIGTERM) instead")
        try:
            ipr.link("del", index=ifindex)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return False
            raise RuntimeFailure(f"cannot delete stale tunnel {name}: {err}") from err
        return True
    finally:
        ipr.close()


def _tun_link(ipr: IPRoute, name: str, ifindex: int):
    """The link message if ifindex is still a tun device called `name`, else None."""
    try:
        link = ipr.link("get", index=ifindex)[0]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise
    info = link.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info is not None else None
    if link.get("IFLA_IFNAME") != name or kind != "tun":
        return None
    return link


def _open_tun(name: str) -> int:
    """An fd attached to the tun `name`, made if it does not exist (TUNSETIFF)."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        hint = " (load the tun module: modprobe tun)" if err.errno == errno.ENOENT else ""
        raise RuntimeFailure(f"cannot open {TUN_DEVICE}: {err.strerror}{hint}") from err
    try:
        fcntl.ioctl(fd, _TUNSETIFF, _IFREQ.pack(name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError as err:
        os.close(fd)
        raise RuntimeFailure(_tunsetiff_error(name, err)) from err
    return fd


def _has_route(ipr: IPRoute, ifindex: int, network: ipaddress.IPv6Network, metric: int) -> bool:
    for route in ipr.get_routes(family=socket.AF_INET6, oif=ifindex):
        dst = route.get_attr("RTA_DST") or "::"
        if (ipaddress.IPv6Network(f"{dst}/{route['dst_len']}") == network
                and route.get_attr("RTA_PRIORITY") == metric):
            return True
    return False


def _netns_inode(pid: str) -> Optional[int]:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _tunsetiff_error(name: str, err: OSError) -> str:
    if err.errno == errno.EBUSY:
        holders = find_tun_holders(name)
        who = f" by pid {', '.join(map(str, holders))}" if holders else ""
        return (f"tunnel {name} already exists and is in use{who}: another Teredo client "
                "runs here (use --tunnel NAME, or stop it)")
    if err.errno == errno.EINVAL:
        return f"cannot create tunnel {name}: an interface of another type has that name"
    if err.errno == errno.EPERM:
        return f"cannot create tunnel {name}: permission denied (needs CAP_NET_ADMIN)"
    return f"cannot create tunnel {name}: {err.strerror}"
