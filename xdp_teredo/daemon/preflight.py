"""`xdp-teredo check`, and the preflight of every role: can this work here?

One Check per requirement, each with what to do when it fails, and whose fault it
is: the user's (a bad interface name, an interface down, not root: exit 2) or the
machine's (no BPF, no tun, root without the capabilities: exit 1). `check` runs
them all and prints each; a role's plan (client/, relay/, server/plan.py) picks the
ones it needs and `require`s them before anything is compiled or touched, cheapest
first, so that a non-root user hears the one line at once (the capability check
reads /proc/self/status; nothing imports bcc).

Nothing here is left behind: the throwaway namespace used to try veth and clsact is
deleted, and the probe programs are only loaded, never attached.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional

from ..errors import RuntimeFailure, UsageError

from ..datapath import kheaders

# Oldest kernel whose helpers we rely on: bpf_redirect_neigh (5.10) and
# bpf_skb_adjust_room's ENCAP flags (5.2) and DECAP flags (6.3, feature-probed).
MIN_KERNEL = (5, 10)

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_PROBE_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
int probe_xdp(struct xdp_md *ctx) { return XDP_PASS; }
int probe_tc(struct __sk_buff *skb) { return TC_ACT_OK; }
"""


USER = "user"        # the user's mistake: exit 2
MACHINE = "machine"  # the machine cannot: exit 1

# What the tunnel roles (client, relay) need to set up: netlink, tc and XDP, and
# loading BPF programs, for which CAP_BPF (Linux >= 5.8) or CAP_SYS_ADMIN (before)
# will do: a unit whose CapabilityBoundingSet leaves CAP_SYS_ADMIN out still works.
# A value is one capability, or a tuple of which any one is enough.
TUNNEL_CAPABILITIES = {"CAP_NET_ADMIN": CAP_NET_ADMIN,
                       "CAP_BPF or CAP_SYS_ADMIN": (CAP_BPF, CAP_SYS_ADMIN)}

# Our XDP programs (bpf/teredo_encap.c, bpf/teredo_relay.c), as the kernel names them
# (15 characters): xdp_teredo_rx, xdp_teredo_rela(y).
OUR_XDP_PREFIX = "xdp_teredo"

_IFF_UP = 0x1
_SIOCGIFFLAGS = 0x8913


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    blame: str = MACHINE

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "blame"}

    def line(self) -> str:
        """The one line a role fails with."""
        return f"{self.detail}: {self.fix}" if self.fix else self.detail

    def error(self):
        return (UsageError if self.blame == USER else RuntimeFailure)(self.line())


def require(checks: Iterable[Callable[[], Check]]) -> None:
    """Run `checks` in order; the first that fails is raised (UsageError, exit 2, for
    the user's mistake; RuntimeFailure, exit 1, for the machine's). The rest do not
    run: they are ordered cheapest and most basic first."""
    for check in checks:
        result = check()
        if not result.ok:
            raise result.error()


def _kernel() -> Check:
    release = os.uname().release
    try:
        major, minor = (int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return Check("kernel", False, f"cannot parse release {release!r}", "use Linux >= 5.10")
    ok = (major, minor) >= MIN_KERNEL
    return Check("kernel", ok, release, "" if ok else f"upgrade to Linux >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]}")


def _effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))


def capabilities(need: Optional[Dict[str, object]] = None, *, who: str = "attach",
                 fix: str = "run it as root (sudo)") -> Check:
    """The effective capabilities `need` (default: the tunnel roles'). Missing them as
    a user is the user's mistake (exit 2); as root, the machine's (a container
    without privileges, a bounding set: exit 1)."""
    need = TUNNEL_CAPABILITIES if need is None else need
    cap_eff = _effective_capabilities()
    missing = [n for n, bits in need.items()
               if not any(cap_eff >> bit & 1 for bit in (bits if isinstance(bits, tuple)
                                                         else (bits,)))]
    if missing:
        if os.geteuid() != 0:
            return Check("capabilities", False,
                         f"{who} needs root ({', '.join(need)}); this is uid {os.geteuid()}",
                         fix, blame=USER)
        return Check("capabilities", False,
                     f"{who} runs as root without {', '.join(missing)}",
                     "run it where root has them (a privileged container, no "
                     "CapabilityBoundingSet without them)")
    have = [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW),
                             ("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_BPF", CAP_BPF))
            if cap_eff >> bit & 1]
    return Check("capabilities", True, ", ".join(have))


def _capabilities() -> Check:
    return capabilities(who="xdp-teredo attach")


def bpf_syscall() -> Check:
    """Create (and close) a one-entry array map through the raw syscall."""
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY
    nr_bpf = 321 if os.uname().machine == "x86_64" else 280  # x86_64, else asm-generic
    fd = libc.syscall(nr_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EPERM and os.geteuid() != 0:
            return Check("bpf syscall", False, f"the bpf() system call fails: {os.strerror(err)}",
                         "run it as root (sudo)", blame=USER)
        return Check("bpf syscall", False, f"the bpf() system call fails: {os.strerror(err)}",
                     "this kernel, or a seccomp/LSM policy, refuses BPF (check "
                     "kernel.unprivileged_bpf_disabled, the container's seccomp profile)")
    os.close(fd)
    return Check("bpf syscall", True, "map create works")


def _jit() -> Check:
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            value = f.read().strip()
    except OSError:
        return Check("jit", False, "no /proc/sys/net/core/bpf_jit_enable", "kernel built without BPF JIT")
    ok = value in ("1", "2")
    return Check("jit", ok, f"bpf_jit_enable={value}",
                 "" if ok else "sysctl -w net.core.bpf_jit_enable=1 (interpreted BPF is slow)")


def _btf() -> Check:
    # bcc compiles against kernel headers, not BTF: BTF is reported, never required.
    present = os.path.exists("/sys/kernel/btf/vmlinux")
    return Check("btf", True, "/sys/kernel/btf/vmlinux" if present
                 else "absent (informational: bcc uses kernel headers)")


def _headers() -> Check:
    found = kheaders.find()
    if not found:
        return Check("kernel headers", False, "none found for bcc", "run `make setup` (tools/kernel-headers.sh)")
    how = {"env": "$BCC_KERNEL_SOURCE", "modules": "matching package",
           "merged": "merged generic headers"}[found.how]
    return Check("kernel headers", True, f"{found.path} ({how})")


def _bcc() -> Check:
    try:
        from bcc import BPF
    except ImportError as err:
        return Check("bcc", False, f"not importable: {err}",
                     "apt-get install python3-bpfcc, and use the venv from `make setup`")
    kheaders.export()
    try:
        bpf = BPF(text=_PROBE_PROGRAM)
        try:
            bpf.load_func("probe_xdp", BPF.XDP)
            bpf.load_func("probe_tc", BPF.SCHED_CLS)
        finally:
            bpf.cleanup()
    except Exception as err:  # bcc raises bare Exception on compile/load errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return Check("bcc", False, f"cannot compile/load a tiny XDP+tc program: {first}",
                     "run `make setup` (kernel headers for bcc)")
    return Check("bcc", True, "compiled and loaded XDP and tc probes")


def _bpffs() -> Check:
    with open("/proc/mounts") as f:
        ok = any(l.split()[1:3] == ["/sys/fs/bpf", "bpf"] for l in f)
    return Check("bpffs", ok, "/sys/fs/bpf" if ok else "not mounted",
                 "" if ok else "mount -t bpf bpf /sys/fs/bpf (make setup does this)")


def tun() -> Check:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return Check("tun", False, f"cannot open /dev/net/tun: {err.strerror}",
                     "modprobe tun (a container needs the device: --device /dev/net/tun)")
    os.close(fd)
    return Check("tun", True, "/dev/net/tun opens")


def interface(name: str, option: str = "interface") -> Check:
    """`name` exists in this network namespace and is up (SIOCGIFFLAGS: asked of the
    process's own network namespace, unlike /sys/class/net, which is the one /sys was
    mounted in)."""
    what = f"{option} {name}"
    if not name or len(name.encode()) > 15 or "/" in name or name in (".", ".."):
        return Check("interface", False, f"{what}: not an interface name", blame=USER)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        raw = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH14x", name.encode(), 0))
    except OSError as err:
        if err.errno == errno.ENODEV:
            missing = (f"no such interface: {name} (in this network namespace)"
                       if option == "interface"
                       else f"{what}: no such interface in this network namespace")
            return Check("interface", False, missing, "see `ip link`", blame=USER)
        return Check("interface", False, f"{what}: {err.strerror}")
    finally:
        sock.close()
    flags = struct.unpack("16sH", raw[:18])[1]
    if not flags & _IFF_UP:
        return Check("interface", False, f"{what} is down", f"ip link set {name} up", blame=USER)
    return Check("interface", True, f"{name} is up")


def foreign_xdp(name: str, option: str = "interface", *,
                avoid: str = "detach it (ip link set dev NAME xdp off)") -> Check:
    """No XDP program but ours on `name` (ours: a previous instance's, which the role
    adopts or replaces). Someone else's would be replaced by ours, or refuse ours:
    the user chose an interface another tool owns (exit 2)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            links = ipr.get_links(found[0]) if found else []
    except (NetlinkError, OSError) as err:
        return Check("xdp", False, f"cannot look at {name}: {err}")
    xdp = links[0].get_attr("IFLA_XDP") if links else None
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
    if not prog_id:
        return Check("xdp", True, f"no XDP program on {name}")
    try:
        from ..datapath import libbpf

        prog = libbpf.prog_name(prog_id)
    except Exception as err:  # noqa: BLE001 (gone meanwhile, or not ours to read)
        prog = f"? ({err})"
    if prog.startswith(OUR_XDP_PREFIX):
        return Check("xdp", True, f"{name} runs {prog} (ours: adopted or replaced)")
    return Check("xdp", False,
                 f"{option} {name} already runs another XDP program ({prog}, id {prog_id})",
                 avoid.replace("NAME", name), blame=USER)


def local_address(address, option: str = "--bind") -> Check:
    """`address` is an IPv4 address of an interface of this network namespace, and
    that interface is up (a server binds it; a typo would be an EADDRNOTAVAIL later)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            owners = [a["index"] for a in ipr.get_addr(family=socket.AF_INET)
                      if a.get_attr("IFA_ADDRESS") == str(address)]
            names = [ipr.get_links(i)[0].get_attr("IFLA_IFNAME") for i in owners[:1]]
    except (NetlinkError, OSError) as err:
        return Check("address", False, f"cannot list the addresses here: {err}")
    if not names:
        return Check("address", False,
                     f"{option} {address}: not an address of this host (this network namespace)",
                     "see `ip -4 addr`", blame=USER)
    up = interface(names[0], "the interface")
    if not up.ok:
        return Check("address", False, f"{option} {address} is on {names[0]}, which is down",
                     f"ip link set {names[0]} up", blame=USER)
    return Check("address", True, f"{address} on {names[0]}")


def _veth_and_clsact() -> List[Check]:
    """Try veth and clsact in a throwaway namespace, so the host is untouched."""
    # iproute2 is in /sbin on Debian: found even with a PATH without it (cron, CI).
    sbin = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    ip, tc = shutil.which("ip", path=sbin), shutil.which("tc", path=sbin)
    if not ip or not tc:
        fail = Check("iproute2", False, "ip/tc not found", "apt-get install iproute2")
        return [fail]
    ns = f"xt-check-{uuid.uuid4().hex[:8]}"

    def run(*cmd) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True)

    made = run(ip, "netns", "add", ns)
    if made.returncode:
        return [Check("netns", False, made.stderr.strip(), "run as root")]
    try:
        veth = run(ip, "-n", ns, "link", "add", "xtc0", "type", "veth", "peer", "name", "xtc1")
        checks = [Check("veth", not veth.returncode, veth.stderr.strip() or "veth pair created",
                        "kernel needs CONFIG_VETH" if veth.returncode else "")]
        if veth.returncode:
            return checks
        cls = run(tc, "-n", ns, "qdisc", "add", "dev", "xtc0", "clsact")
        checks.append(Check("clsact", not cls.returncode, cls.stderr.strip() or "clsact qdisc added",
                            "kernel needs CONFIG_NET_SCH_INGRESS" if cls.returncode else ""))
        return checks
    finally:
        run(ip, "netns", "del", ns)


CHECKS: List[Callable[[], object]] = [
    _kernel, _capabilities, bpf_syscall, _jit, _btf, _headers, _bcc, _bpffs, tun, _veth_and_clsact,
]


def run_all() -> List[Check]:
    results: List[Check] = []
    for check in CHECKS:
        try:
            out = check()
        except Exception as err:  # a check must report, never crash the command
            out = Check(check.__name__.strip("_"), False, f"check crashed: {err}")
        results.extend(out if isinstance(out, list) else [out])
    return results
