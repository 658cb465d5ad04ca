"""`xdp-teredo check`: can `attach` work on this machine?

One Check per requirement, each with what to do when it fails. Nothing here is
left behind: the throwaway namespace used to try veth and clsact is deleted, and
the probe programs are only loaded, never attached.
"""

import ctypes
import os
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, List

from ..datapath import kheaders

# Oldest kernel whose helpers we rely on: bpf_redirect_neigh (5.10) and
# bpf_skb_adjust_room's ENCAP flags (5.2) and DECAP flags (6.3, feature-probed).
MIN_KERNEL = (5, 10)

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_PROBE_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
int probe_xdp(struct xdp_md *ctx) { return XDP_PASS; }
int probe_tc(struct __sk_buff *skb) { return TC_ACT_OK; }
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _kernel() -> Check:
    release = os.uname().release
    try:
        major, minor = (int(x) for x in release.split("-")[0].split(".")[:2])
    except ValueError:
        return Check("kernel", False, f"cannot parse release {release!r}", "use Linux >= 5.10")
    ok = (major, minor) >= MIN_KERNEL
    return Check("kernel", ok, release, "" if ok else f"upgrade to Linux >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]}")


def _capabilities() -> Check:
    with open("/proc/self/status") as f:
        cap_eff = next(int(l.split()[1], 16) for l in f if l.startswith("CapEff:"))
    need = {"CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_SYS_ADMIN": CAP_SYS_ADMIN}
    # CAP_BPF exists from 5.8; CAP_SYS_ADMIN covers it on older kernels.
    missing = [n for n, bit in need.items() if not cap_eff >> bit & 1]
    if missing:
        return Check("capabilities", False, "missing " + ", ".join(missing), "run as root (sudo)")
    have_bpf = bool(cap_eff >> CAP_BPF & 1)
    return Check("capabilities", True, "CAP_NET_ADMIN, CAP_SYS_ADMIN" + (", CAP_BPF" if have_bpf else ""))


def _bpf_syscall() -> Check:
    """Create (and close) a one-entry array map through the raw syscall."""
    libc = ctypes.CDLL(None, use_errno=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY
    nr_bpf = 321 if os.uname().machine == "x86_64" else 280  # x86_64, else asm-generic
    fd = libc.syscall(nr_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Check("bpf syscall", False, os.strerror(err),
                     "run as root; check kernel.unprivileged_bpf_disabled and seccomp/LSM policy")
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


def _tun() -> Check:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as err:
        return Check("tun", False, f"/dev/net/tun: {err.strerror}", "modprobe tun; run as root")
    os.close(fd)
    return Check("tun", True, "/dev/net/tun opens")


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
    _kernel, _capabilities, _bpf_syscall, _jit, _btf, _headers, _bcc, _bpffs, _tun, _veth_and_clsact,
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
