"""Give up root after setup, keeping only the capabilities the running client (and
relay: relay/daemon.py says why the same set suffices there) needs.

Miredo runs as root only to create the tunnel, then drops to an unprivileged user
(default "nobody") and leaves address changes to a small privileged helper process
that keeps CAP_NET_ADMIN (src/privproc.c). We keep the capability instead of a
helper, which is the simpler sound design here: a helper would need its own
protocol, validation and lifetime, while the only privileged operations left after
setup are netlink requests on our own tunnel and NIC, which is what CAP_NET_ADMIN
grants and nothing more (no file access, no other uid, no module loading).

What is retained, and why (`required_capabilities`):
- CAP_NET_ADMIN: a requalification puts a new address on the tunnel; the exit
  removes addresses, routes, the tunnel and the XDP and tc programs (all netlink);
  and the hook script's `ip` commands (Debian's client-hook) need it.
- Nothing for BPF maps: the peer table and the counters are updated and read
  through map fds opened while root, and since Linux 5.19 (commit c8644cd0efe7,
  "bpf: refine kernel.unprivileged_bpf_disabled behaviour") the bpf() map commands
  on an fd need no capability, even with kernel.unprivileged_bpf_disabled set.
  Before 5.19, with that sysctl set, every bpf() call needs CAP_BPF (5.8 and later)
  or CAP_SYS_ADMIN (older), so it is retained there.
- Not CAP_NET_RAW (Miredo keeps it for a raw ICMPv6 socket; our ICMPv6 goes into
  the tunnel) nor CAP_NET_BIND_SERVICE: the UDP socket is bound before the drop.

How (`drop_privileges`), in this order because each step needs the one before:
PR_SET_KEEPCAPS so that setuid() keeps the permitted set; drop every other
capability from the bounding set (needs CAP_SETPCAP, which we lose next);
setgroups([]), setgid, setuid to the user; capset: effective = permitted =
inheritable = the retained set; raise them as ambient capabilities so that the hook
script, which we execve, still has them; PR_SET_NO_NEW_PRIVS so that no setuid
program run by the hook can become root again. Then it checks the result and
that setuid(0) now fails.

Capabilities are per thread: the drop must happen while the process has one thread
(RuntimeFailure otherwise). After setuid the kernel also marks the process
non-dumpable, so other processes of the same user cannot ptrace it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import pwd
from typing import Iterable, Optional, Tuple

from xdp_teredo.errors import RuntimeFailure, UsageError

# linux/capability.h
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_BPF = 39
CAPABILITY_NAMES = {
    CAP_SETPCAP: "CAP_SETPCAP", CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_BPF: "CAP_BPF",
}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# linux/prctl.h
_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2

# The kernels where bpf() on an fd stopped needing a capability, and where CAP_BPF
# appeared (see the module docstring).
_BPF_FD_UNPRIVILEGED = (5, 19)
_CAP_BPF_SINCE = (5, 8)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """A process's capability sets, as bit masks (from /proc/PID/status)."""

    effective: int
    permitted: int
    inheritable: int
    ambient: int
    bounding: int

    @classmethod
    def of(cls, pid: str = "self") -> "Capabilities":
        fields = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
                    fields[key] = int(value.strip(), 16)
        return cls(effective=fields["CapEff"], permitted=fields["CapPrm"],
                   inheritable=fields["CapInh"], ambient=fields["CapAmb"],
                   bounding=fields["CapBnd"])


@dataclasses.dataclass(frozen=True)
class Dropped:
    """What drop_privileges left: the user, uid, gid and retained capabilities."""

    user: str
    uid: int
    gid: int
    kept: Tuple[int, ...]

    @property
    def kept_names(self) -> Tuple[str, ...]:
        return tuple(CAPABILITY_NAMES.get(cap, f"cap_{cap}") for cap in self.kept)


def required_capabilities(*, kernel: Optional[Tuple[int, int]] = None,
                          unprivileged_bpf_disabled: Optional[int] = None) -> Tuple[int, ...]:
    """The capabilities the client keeps after setup on this kernel (docstring above).

    kernel (major, minor) and the sysctl value are read from the machine unless given.
    """
    kernel = kernel or _kernel_version()
    if unprivileged_bpf_disabled is None:
        unprivileged_bpf_disabled = _read_int("/proc/sys/kernel/unprivileged_bpf_disabled", 0)
    caps = [CAP_NET_ADMIN]
    if kernel < _BPF_FD_UNPRIVILEGED and unprivileged_bpf_disabled:
        caps.append(CAP_BPF if kernel >= _CAP_BPF_SINCE else CAP_SYS_ADMIN)
    return tuple(caps)


def drop_privileges(user: str = "nobody", keep: Optional[Iterable[int]] = None, *,
                    no_new_privs: bool = True) -> Dropped:
    """Become `user` (its primary group, no supplementary groups) keeping only `keep`
    (default: required_capabilities()). Irreversible.

    UsageError if the user does not exist; RuntimeFailure if not root, if the process
    has more than one thread, or if any step fails (the process should then exit:
    it may be half-dropped).
    """
    keep = tuple(sorted(set(required_capabilities() if keep is None else keep)))
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"no such user: {user!r} (--user)") from None
    if os.geteuid() != 0:
        raise RuntimeFailure("dropping privileges needs root")
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise RuntimeFailure(f"cannot drop privileges with {threads} threads running: "
                             "capabilities are per thread")
    mask = 0
    for cap in keep:
        mask |= 1 << cap

    libc = ctypes.CDLL(None, use_errno=True)

    def prctl(option: int, arg: int, what: str) -> None:
        if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            err = ctypes.get_errno()
            raise RuntimeFailure(f"cannot drop privileges: {what}: {os.strerror(err)}")

    prctl(_PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    for cap in range(_read_int("/proc/sys/kernel/cap_last_cap", 40) + 1):
        if cap not in keep:
            prctl(_PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except OSError as err:
        raise RuntimeFailure(f"cannot become {user}: {err.strerror}") from err
    _capset(libc, mask)
    for cap in keep:
        if libc.prctl(_PR_CAP_AMBIENT, ctypes.c_ulong(_PR_CAP_AMBIENT_RAISE),
                      ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            err = ctypes.get_errno()
            raise RuntimeFailure(f"cannot keep capability {cap} for the hook "
                                 f"(ambient): {os.strerror(err)}")
    prctl(_PR_SET_KEEPCAPS, 0, "clearing PR_SET_KEEPCAPS")
    if no_new_privs:
        prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _verify(entry, mask)
    return Dropped(user=user, uid=entry.pw_uid, gid=entry.pw_gid, kept=keep)


def _capset(libc, mask: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in range(2):   # version 3: two 32-bit words
        word = (mask >> (32 * index)) & 0xFFFFFFFF
        data[index].effective = data[index].permitted = data[index].inheritable = word
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"cannot set capabilities: capset: {os.strerror(err)}")


def _verify(entry: pwd.struct_passwd, mask: int) -> None:
    """Check what the kernel says we now are; a half-drop must not go unnoticed."""
    caps = Capabilities.of()
    ids = (os.getuid(), os.geteuid(), os.getresuid()[2], os.getgid(), os.getegid())
    wanted = (entry.pw_uid,) * 3 + (entry.pw_gid,) * 2
    if ids != wanted or os.getgroups() not in ([], [entry.pw_gid]):
        raise RuntimeFailure(f"privilege drop incomplete: ids {ids}, groups {os.getgroups()}")
    if caps.effective != mask or caps.permitted != mask:
        raise RuntimeFailure(f"privilege drop incomplete: capabilities "
                             f"{caps.effective:#x}, wanted {mask:#x}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise RuntimeFailure("privilege drop failed: setuid(0) still works")


def _kernel_version() -> Tuple[int, int]:
    release = os.uname().release
    try:
        major, minor = (int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        raise RuntimeFailure(f"cannot parse the kernel release {release!r}") from None
    return major, minor


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as stream:
            return int(stream.read().strip())
    except (OSError, ValueError):
        return default


__all__ = [
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_SYS_ADMIN", "Capabilities", "Dropped",
    "drop_privileges", "required_capabilities",
]
