"""Miredo (Debian's miredo / miredo-server 1.2.6) as the reference peer in a Lab.

Each daemon runs in the foreground (`-f -c CONF -p PIDFILE`) as a process of
the lab, so the lab stops it on teardown; its stderr is its log (there is no
syslog in the namespaces). Config files are written into the lab's workdir,
never taken from /etc/miredo: Debian's miredo.conf names a public server.

What was checked on this machine:
- Both daemons drop to the `miredo` user that Debian's package creates (built
  with --enable-miredo-user); no `-u` is needed as long as that user exists.
- The client applies its address through /usr/libexec/miredo/miredo-privproc,
  which runs the fixed hook /etc/miredo/client-hook (Debian's): it adds
  ADDRESS/32 and a default route with metric 1029 on the tunnel.
- miredo-server binds UDP 3544 on ServerBindAddress and on that address + 1.
- Miredo refuses server and peer addresses in private ranges; the lab's
  documentation-range addresses are accepted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import dataclass
from typing import Optional

from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.lab.netns import BackgroundProcess
from xdp_teredo.teredo.constants import TEREDO_PORT, TEREDO_PREFIX

# Miredo's compiled-in hook (miredo-privproc runs it on every state change).
CLIENT_HOOK = "/etc/miredo/client-hook"
DEFAULT_IFNAME = "teredo"
# RFC 4380 §5.2.1: an RS every 4 s, so a qualification that works is done in
# well under this; a second try would only hide a broken setup.
QUALIFY_TIMEOUT = 15.0
_POLL = 0.1


@dataclass
class MiredoServer:
    """A running miredo-server: `primary` is the address clients are given."""

    role: str
    primary: ipaddress.IPv4Address
    secondary: ipaddress.IPv4Address
    process: BackgroundProcess

    def stop(self) -> None:
        self.process.stop()


@dataclass
class MiredoClient:
    """A qualified Miredo client: `address` is its Teredo address on `ifname`."""

    role: str
    ifname: str
    server: ipaddress.IPv4Address
    address: ipaddress.IPv6Address
    process: BackgroundProcess

    def stop(self) -> None:
        self.process.stop()


@dataclass
class MiredoRelay:
    """A Miredo relay (RelayType cone): routes 2001::/32 into `ifname`."""

    role: str
    ifname: str
    process: BackgroundProcess

    def stop(self) -> None:
        self.process.stop()


def _write_conf(lab, name: str, lines: list) -> str:
    path = lab.workdir / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def _ipv4_literal(value, what: str) -> ipaddress.IPv4Address:
    """A numeric IPv4 address, never a host name: Miredo must not resolve (and
    so never reach) a public Teredo server from the lab."""
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise UsageError(f"{what} must be a numeric IPv4 address, got {value!r}") from None


def _wait(what: str, proc: BackgroundProcess, timeout: float, probe):
    """Poll `probe()` until it returns something truthy; fail early if the daemon dies."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if not proc.alive():
            raise RuntimeFailure(f"{what}: {proc.cmd[0]} exited {proc.stop()}; log:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"{what}: nothing after {timeout:g} s; log:\n{proc.output()}")
        time.sleep(_POLL)


def _bound_udp(lab, role: str, addr, port: int) -> bool:
    out = lab.run(role, "ss", "-H", "-u", "-l", "-n").stdout
    return f"{addr}:{port} " in out


def start_server(lab, role: str = "server", *, timeout: float = 5.0) -> MiredoServer:
    """Start miredo-server on the host's first two IPv4 addresses (they must be
    consecutive: RFC 4380 §5.3 gives a server two, and miredo-server takes the
    second as the first + 1). Returns once both UDP 3544 sockets are bound."""
    host = lab[role]
    if len(host.ipv4) < 2 or int(host.ipv4[1]) != int(host.ipv4[0]) + 1:
        raise UsageError(f"{role} needs two consecutive IPv4 addresses, has {host.ipv4}")
    primary, secondary = host.ipv4[0], host.ipv4[1]
    conf = _write_conf(lab, f"miredo-server-{role}.conf", [
        f"ServerBindAddress {primary}",
        f"ServerBindAddress2 {secondary}",
    ])
    pidfile = str(lab.workdir / f"miredo-server-{role}.pid")
    proc = lab.spawn(role, "miredo-server", "-f", "-c", conf, "-p", pidfile,
                     log=f"miredo-server-{role}.log")
    _wait(f"miredo-server on {role}", proc, timeout,
          lambda: _bound_udp(lab, role, primary, TEREDO_PORT)
          and _bound_udp(lab, role, secondary, TEREDO_PORT))
    return MiredoServer(role=role, primary=primary, secondary=secondary, process=proc)


def teredo_address(lab, role: str, ifname: str = DEFAULT_IFNAME) -> Optional[ipaddress.IPv6Address]:
    """The 2001::/32 address on `ifname` in host `role` now, or None."""
    res = lab.run(role, "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "global",
                  check=False)
    for m in re.finditer(r"inet6 ([0-9a-f:]+)/\d+", res.stdout):
        addr = ipaddress.IPv6Address(m.group(1))
        if addr in TEREDO_PREFIX:
            return addr
    return None


def start_client(lab, role: str, server, *, ifname: str = DEFAULT_IFNAME,
                 bind_port: Optional[int] = None, timeout: float = QUALIFY_TIMEOUT) -> MiredoClient:
    """Start a Miredo client in host `role` against Teredo server `server` (a
    MiredoServer, or a numeric IPv4 such as lab["server"].ipv4[0]) and wait
    until it qualified, i.e. its Teredo address is on `ifname`."""
    if isinstance(server, MiredoServer):
        server = server.primary
    server = _ipv4_literal(server, "Teredo server address")
    if not os.access(CLIENT_HOOK, os.X_OK):
        # Without the hook Miredo qualifies but never puts the address on the tunnel.
        raise RuntimeFailure(f"{CLIENT_HOOK} missing or not executable (Debian package miredo)")
    lines = ["RelayType client", f"InterfaceName {ifname}",
             # ServerAddress2 defaults to ServerAddress + 1; say it anyway so that
             # nothing is ever derived from /etc/miredo/miredo.conf.
             f"ServerAddress {server}", f"ServerAddress2 {server + 1}"]
    if bind_port is not None:
        lines.append(f"BindPort {bind_port}")
    conf = _write_conf(lab, f"miredo-{role}.conf", lines)
    pidfile = str(lab.workdir / f"miredo-{role}.pid")
    proc = lab.spawn(role, "miredo", "-f", "-c", conf, "-p", pidfile, log=f"miredo-{role}.log")
    address = _wait(f"Miredo client on {role} qualifying with {server}", proc, timeout,
                    lambda: teredo_address(lab, role, ifname))
    return MiredoClient(role=role, ifname=ifname, server=server, address=address, process=proc)


def _routes_teredo_prefix(lab, role: str, ifname: str) -> bool:
    res = lab.run(role, "ip", "-6", "route", "show", "dev", ifname, check=False)
    return res.returncode == 0 and str(TEREDO_PREFIX) in res.stdout


def start_relay(lab, role: str = "relay", *, ifname: str = DEFAULT_IFNAME,
                bind_port: Optional[int] = None, timeout: float = 5.0) -> MiredoRelay:
    """Start a Miredo relay (RelayType cone, RFC 4380 §5.4) in host `role`; returns
    once 2001::/32 is routed into its tunnel. The host must forward IPv6."""
    lines = ["RelayType cone", f"InterfaceName {ifname}"]
    if bind_port is not None:
        lines.append(f"BindPort {bind_port}")
    conf = _write_conf(lab, f"miredo-relay-{role}.conf", lines)
    pidfile = str(lab.workdir / f"miredo-relay-{role}.pid")
    proc = lab.spawn(role, "miredo", "-f", "-c", conf, "-p", pidfile, log=f"miredo-relay-{role}.log")
    _wait(f"Miredo relay on {role}", proc, timeout,
          lambda: _routes_teredo_prefix(lab, role, ifname))
    return MiredoRelay(role=role, ifname=ifname, process=proc)
