"""Network-namespace primitives for the lab: thin, explicit wrappers over `ip`,
`sysctl`, `iptables` and `conntrack`.

Why subprocesses and not pyroute2 here: the lab is test plumbing, and a failing
step is easiest to diagnose when the error names the exact shell command that a
human can paste and re-run. Every failure becomes a RuntimeFailure carrying the
command and its stderr.

Nothing in this module touches the host's own network namespace except to
create, list and delete named namespaces: links are created directly inside
their namespaces (`ip link add ... netns NS`), so names never clash with the
host's interfaces or with a parallel lab.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from xdp_teredo.errors import RuntimeFailure, UsageError

# Every namespace the lab creates starts with this, so leftovers are recognisable
# (`ip netns list | grep ^xt-`). Other tools of the project use their own
# "xt-<word>-" names, so never delete by this prefix alone: use a lab's own prefix.
NETNS_PREFIX = "xt-"

# Generous but finite: a hung `ip` must not hang the test suite.
DEFAULT_TIMEOUT = 30.0

# Where Debian keeps ip, tc, sysctl, iptables, conntrack, ss and miredo. A PATH
# without them (CI runners, `su` without -l, cron) must not break the lab: every
# command, and what `ip netns exec` runs, gets them appended.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def tool_path(path: Optional[str] = None) -> str:
    """PATH (default: ours) with the sbin directories it lacks appended."""
    dirs = [d for d in (os.environ.get("PATH", os.defpath) if path is None else path).split(":")
            if d]
    return ":".join(dirs + [d for d in SBIN_DIRS if d not in dirs])


def tool_env() -> dict:
    """The environment the lab's commands run with (ours, with tool_path())."""
    return {**os.environ, "PATH": tool_path()}


def _fmt(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
        input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a command in the caller's namespace; text output captured.

    With check=True a non-zero exit, a timeout or a missing program raises
    RuntimeFailure whose message holds the command line and its stderr.
    """
    cmd = [str(c) for c in cmd]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                             env=tool_env())
    except FileNotFoundError as err:
        raise RuntimeFailure(f"`{_fmt(cmd)}`: program not found") from err
    except subprocess.TimeoutExpired as err:
        raise RuntimeFailure(f"`{_fmt(cmd)}`: timed out after {timeout:g} s") from err
    if check and res.returncode != 0:
        raise RuntimeFailure(
            f"`{_fmt(cmd)}` exited {res.returncode}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def ns_cmd(ns: str, cmd: Sequence[str]) -> list:
    """The argv that runs `cmd` inside namespace `ns`.

    `ip netns exec` also gives the command a private mount namespace with this
    network namespace's /sys, which `ip`, `sysctl` and bcc expect.
    """
    return ["ip", "netns", "exec", ns, *[str(c) for c in cmd]]


def ns_run(ns: str, *cmd, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
           input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run `cmd` inside namespace `ns` and wait for it."""
    return run(ns_cmd(ns, cmd), check=check, timeout=timeout, input=input)


# --- namespaces ------------------------------------------------------------

def add_netns(name: str) -> None:
    """Create a namespace and bring its loopback up (sockets on 127.0.0.1 and
    ::1 inside it need lo)."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def del_netns(name: str) -> None:
    """Delete a namespace; absent already is not an error (teardown is idempotent)."""
    if name in list_netns():
        run(["ip", "netns", "del", name])


def list_netns(prefix: str = "") -> list:
    """Names of the named namespaces (those in /run/netns) starting with `prefix`."""
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


# --- links, addresses, routes ---------------------------------------------

def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair with end `if_a` in `ns_a` and end `if_b` in `ns_b`, both up.

    The kernel creates each end directly in its namespace, so the names only
    have to be unique inside that namespace (IFNAMSIZ: at most 15 characters).
    """
    for name in (if_a, if_b):
        if len(name) > 15:
            raise RuntimeFailure(f"interface name {name!r} longer than 15 characters")
    run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth",
         "peer", "name", if_b, "netns", ns_b])
    link_up(ns_a, if_a)
    link_up(ns_b, if_b)


def add_bridge(ns: str, ifname: str) -> None:
    """A bridge in `ns`, up: one LAN that several hosts' veths join."""
    run(["ip", "-n", ns, "link", "add", ifname, "type", "bridge"])
    link_up(ns, ifname)


def enslave(ns: str, ifname: str, bridge: str) -> None:
    run(["ip", "-n", ns, "link", "set", ifname, "master", bridge])


def link_up(ns: str, ifname: str) -> None:
    run(["ip", "-n", ns, "link", "set", ifname, "up"])


def add_address(ns: str, ifname: str, cidr: str) -> None:
    """Add an IPv4 or IPv6 address ("192.0.2.1/28", "2001:db8:1::1/64").

    IPv6 addresses get `nodad`: the lab's links are point-to-point veths with
    no duplicates, and duplicate address detection would leave the address
    "tentative" (unusable as a source) for about a second after each start.
    """
    cmd = ["ip", "-n", ns, "addr", "add", cidr, "dev", ifname]
    if ":" in cidr:
        cmd.append("nodad")
    run(cmd)


def add_route(ns: str, dest: str, *, via: Optional[str] = None,
              dev: Optional[str] = None, metric: Optional[int] = None) -> None:
    """Add a route ("default", "2001::/32", "10.1.0.0/24") inside `ns`."""
    family = "-6" if ":" in dest or (via and ":" in via) else "-4"
    cmd = ["ip", family, "-n", ns, "route", "add", dest]
    if via:
        cmd += ["via", via]
    if dev:
        cmd += ["dev", dev]
    if metric is not None:
        cmd += ["metric", str(metric)]
    run(cmd)


# --- sysctl ----------------------------------------------------------------

def set_sysctl(ns: str, key: str, value) -> None:
    """Set one sysctl inside `ns` (net.* sysctls are per network namespace)."""
    ns_run(ns, "sysctl", "-q", "-w", f"{key}={value}")


def get_sysctl(ns: str, key: str) -> str:
    return ns_run(ns, "sysctl", "-n", key).stdout.strip()


def enable_forwarding(ns: str, *, ipv4: bool = True, ipv6: bool = False) -> None:
    """Turn the namespace into a router for the given families."""
    if ipv4:
        set_sysctl(ns, "net.ipv4.ip_forward", 1)
    if ipv6:
        set_sysctl(ns, "net.ipv6.conf.all.forwarding", 1)


def disable_dad(ns: str) -> None:
    """accept_dad=0 for interfaces created later in `ns` (and those there now).

    Set right after the namespace is created, before any link: a veth end
    created in a namespace takes that namespace's `default` settings.
    """
    set_sysctl(ns, "net.ipv6.conf.all.accept_dad", 0)
    set_sysctl(ns, "net.ipv6.conf.default.accept_dad", 0)


# --- NAT and conntrack -----------------------------------------------------

# NAT behaviours the lab offers (RFC 4380 §5.2.1 / RFC 6081 §2 names), each one
# way a real NAT box behaves; none exists to make any Teredo implementation work.
# - "firewalled": MASQUERADE and a firewall dropping unsolicited inbound UDP (a
#   home router): port-restricted cone, the source port kept when free.
# - "open": MASQUERADE, nothing dropped (a router without a firewall): an
#   unsolicited packet from a remote is accepted into conntrack, and the next
#   flow of ours to that remote gets ANOTHER port (the tuple is taken).
# - "symmetric": MASQUERADE --random-fully, nothing dropped: a random port for
#   every new flow (every remote address and port): RFC 6081's symmetric NAT.
# - "upnp": "symmetric", and the box runs a UPnP IGD (miniupnpd, lab/upnp.py) on
#   its LAN side: RFC 6081 §4.3's UPnP-enabled NAT. Hosts inside may ask it for a
#   port mapping; without one it is a symmetric NAT like any other.
NAT_KINDS = ("firewalled", "open", "symmetric", "upnp")


def masquerade(ns: str, out_if: str, *, kind: str = "firewalled") -> None:
    """IPv4 source NAT (MASQUERADE) for everything leaving `ns` through `out_if`.

    Linux MASQUERADE keeps the source port when it is free and filters by the
    full (address, port) of the remote: a port-restricted cone NAT in RFC 4380
    terms, the kind Teredo is made for (§5.2.1). `kind` (NAT_KINDS) says what
    else the box does.

    "firewalled" drops new inbound UDP on `out_if`, as home NAT routers do.
    Without it ("open"), Linux is a poor restricted NAT: a peer's direct bubble
    that arrives before we sent anything to that peer is accepted into conntrack
    (as a flow to the NAT itself), and our own bubble to the peer, sent a moment
    later, then clashes with that entry and gets a NEW source port, so the peer
    sees a mapping other than the one in our Teredo address. A packet dropped in
    the filter table never has its conntrack entry confirmed, so no clash.
    """
    if kind not in NAT_KINDS:
        raise UsageError(f"unknown NAT kind {kind!r}; one of {', '.join(NAT_KINDS)}")
    rule = ["-o", out_if, "-j", "MASQUERADE"]
    if kind in ("symmetric", "upnp"):
        rule.append("--random-fully")
    if kind == "upnp":
        # The box's own traffic (miniupnpd's STUN test) leaves from its own address
        # and port, as a home router's does: only what it forwards is translated.
        ns_run(ns, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", out_if,
               "-m", "addrtype", "--src-type", "LOCAL", "-j", "RETURN")
    ns_run(ns, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", *rule)
    if kind == "firewalled":
        ns_run(ns, "iptables", "-w", "-A", "INPUT", "-i", out_if, "-p", "udp",
               "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")


def conntrack_flush(ns: str) -> None:
    """Forget every connection-tracking entry (and so every NAT mapping) in `ns`.

    `conntrack -F` prints a summary on stderr and exits 0 even on an empty table.
    """
    ns_run(ns, "conntrack", "-F")


def conntrack_list(ns: str, *, proto: str = "udp") -> str:
    """The conntrack table of `ns` as `conntrack -L` prints it."""
    return ns_run(ns, "conntrack", "-L", "-p", proto).stdout


# --- background processes --------------------------------------------------

class BackgroundProcess:
    """A process started in a namespace, with stdout+stderr going to a log file.

    It runs in its own session (process group), so `stop()` also reaches the
    children it forked (Miredo forks privileged helpers, `ip netns exec`
    execs in place). Stopping is by this group's id, never by program name.
    """

    def __init__(self, ns: str, cmd: Sequence[str], log_path: Path):
        self.ns = ns
        self.cmd = [str(c) for c in cmd]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        try:
            self._popen = subprocess.Popen(
                ns_cmd(ns, self.cmd), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                env=tool_env())
        except OSError as err:
            self._log.close()
            raise RuntimeFailure(f"cannot start `{_fmt(self.cmd)}` in {ns}: {err}") from err
        self.returncode: Optional[int] = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far (stdout and stderr, merged).

        The child writes to the file through its own descriptor: nothing to flush here.
        """
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Poll the log until regex `pattern` matches; the match is returned.

        Raises RuntimeFailure, with the log's tail, on timeout or when the
        process exits first.
        """
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.MULTILINE)
        while True:
            m = rx.search(self.output())
            if m:
                return m
            if not self.alive():
                raise RuntimeFailure(
                    f"`{_fmt(self.cmd)}` in {self.ns} exited {self._popen.returncode} "
                    f"before printing /{pattern}/; log:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"`{_fmt(self.cmd)}` in {self.ns}: no /{pattern}/ within "
                    f"{timeout:g} s; log:\n{self._tail()}")
            time.sleep(0.05)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the process to exit on its own; its exit status."""
        try:
            self.returncode = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeFailure(
                f"`{_fmt(self.cmd)}` in {self.ns} still running after {timeout:g} s") from err
        self._log.close()
        return self.returncode

    def stop(self, grace: float = 3.0) -> Optional[int]:
        """SIGTERM the process group, SIGKILL it after `grace` seconds.

        Idempotent. Returns the exit status (negative: killed by that signal).
        """
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(timeout=grace)
        # Children that outlived the leader still hold the group id.
        self._signal_group(signal.SIGKILL)
        self.returncode = self._popen.returncode
        if not self._log.closed:
            self._log.close()
        return self.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._popen.pid, sig)
        except ProcessLookupError:
            pass

    def _tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self._popen.returncode}"
        return f"<BackgroundProcess {self.ns}: {_fmt(self.cmd)} ({state})>"


def spawn(ns: str, cmd: Sequence[str], log_path: Path) -> BackgroundProcess:
    """Start `cmd` in the background inside `ns`; output goes to `log_path`."""
    return BackgroundProcess(ns, cmd, log_path)
