"""Dropping root (xdp_teredo/privileges.py), proven on a child process.

The drop is irreversible, so it happens in a child: this file run as a script
(`--child KEEP`) inside a throwaway network namespace. The child sets up as root
(a tun device, a BPF map), drops to "nobody", then tries what the client must
still do and what it must no longer be able to do, and prints what happened as
one JSON object. The test checks it, and checks with `ip -n NS` that the tunnel
the unprivileged child closed is really gone.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from xdp_teredo.daemon import privileges as priv
from xdp_teredo.errors import UsageError

ADDRESS = "2001:0:c000:201:0:cfc6:3fff:fd74"
ADDRESS2 = "2001:0:c000:201:0:cfc6:3fff:fd00"
USER = "nobody"

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 280)
_BPF_MAP_CREATE, _BPF_MAP_UPDATE_ELEM, _BPF_MAP_LOOKUP_ELEM = 0, 2, 1
_BPF_MAP_TYPE_ARRAY = 2


# -- the child ----------------------------------------------------------------------------

def _bpf(libc, cmd: int, attr) -> int:
    result = libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return result if result >= 0 else -ctypes.get_errno()


def _child(keep_arg: str) -> None:
    """Set up as root, drop, then report what still works."""
    # Everything is imported before the drop: afterwards the modules might not be
    # readable, and the client has the same constraint.
    import socket

    from xdp_teredo.errors import TeredoError
    from xdp_teredo.net.tunnel import Tunnel

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = (ctypes.c_uint32 * 32)(_BPF_MAP_TYPE_ARRAY, 4, 8, 4)   # type, key, value, entries
    map_fd = _bpf(libc, _BPF_MAP_CREATE, attr)
    tunnel = Tunnel.create("teredo")

    keep = None if keep_arg == "default" else tuple(int(c) for c in keep_arg.split(",") if c)
    dropped = priv.drop_privileges(USER, keep)
    report = {"kept": list(dropped.kept), "uid": dropped.uid,
              "resuid": list(os.getresuid()), "resgid": list(os.getresgid()),
              "groups": os.getgroups()}
    caps = priv.Capabilities.of()
    report["caps"] = {"effective": caps.effective, "permitted": caps.permitted,
                      "inheritable": caps.inheritable, "ambient": caps.ambient,
                      "bounding": caps.bounding}

    def attempt(name, action):
        try:
            value = action()
            report[name] = {"ok": True, "value": value}
        except (OSError, TeredoError) as err:
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                            "errno": getattr(err, "errno", None)}

    attempt("read_shadow", lambda: len(open("/etc/shadow").read()))
    attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                socket.IPPROTO_ICMP).close())
    attempt("setuid_root", lambda: os.setuid(0))
    attempt("set_address", lambda: tunnel.set_address(ADDRESS))
    if report["set_address"]["ok"]:
        attempt("replace_address", lambda: tunnel.replace_address(ADDRESS, ADDRESS2))
    # What a hook does: an exec'd `ip` still has CAP_NET_ADMIN (ambient).
    hook = subprocess.run(
        ["sh", "-c", "grep CapEff /proc/self/status; "
                     "ip -6 addr add 2001:db8::1/128 dev teredo"],
        capture_output=True, text=True)
    report["hook"] = {"returncode": hook.returncode, "stdout": hook.stdout,
                      "stderr": hook.stderr}

    key, value = ctypes.c_uint32(1), ctypes.c_uint64(0x7E7E)
    update = (ctypes.c_uint64 * 16)()
    update[0] = map_fd                     # map_fd (u32) + pad
    update[1] = ctypes.addressof(key)
    update[2] = ctypes.addressof(value)
    report["bpf_map_update"] = _bpf(libc, _BPF_MAP_UPDATE_ELEM, update) if map_fd >= 0 \
        else f"map create failed: {-map_fd}"
    readback = ctypes.c_uint64(0)
    update[2] = ctypes.addressof(readback)
    _bpf(libc, _BPF_MAP_LOOKUP_ELEM, update)
    report["bpf_map_value"] = readback.value
    attempt("close", tunnel.close)
    print(json.dumps(report), flush=True)


# -- the test side ---------------------------------------------------------------------------

@pytest.fixture
def netns(require_root):
    from tests.conftest import require_tool, skip_or_fail  # not at the top: a child runs this file

    require_tool("ip")
    try:
        import pwd
        pwd.getpwnam(USER)
    except KeyError:
        skip_or_fail(f"no user {USER!r} on this machine")
    name = f"xt-priv-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def run_child(ns: str, keep: str) -> dict:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--child", keep],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def tunnel_links(ns: str) -> list:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return [link["ifname"] for link in json.loads(out) if link["ifname"] != "lo"]


@pytest.mark.root
@pytest.mark.e2e
def test_dropped_child_keeps_only_net_admin(netns):
    import pwd
    entry = pwd.getpwnam(USER)
    report = run_child(netns, "default")
    net_admin = 1 << priv.CAP_NET_ADMIN

    # Who it is now: nobody, with no way back.
    assert report["resuid"] == [entry.pw_uid] * 3
    assert report["resgid"] == [entry.pw_gid] * 3
    assert report["groups"] in ([], [entry.pw_gid])
    assert not report["setuid_root"]["ok"]
    # Which capabilities: exactly the retained ones, everywhere they could hide.
    kept_mask = sum(1 << cap for cap in report["kept"])
    assert priv.CAP_NET_ADMIN in report["kept"]
    caps = report["caps"]
    assert caps["effective"] == caps["permitted"] == caps["inheritable"] == kept_mask
    assert caps["ambient"] == kept_mask
    assert caps["bounding"] == kept_mask
    # What it can no longer do.
    assert not report["read_shadow"]["ok"]
    assert report["read_shadow"]["errno"] == 13          # EACCES
    assert not report["raw_socket"]["ok"]                # CAP_NET_RAW is gone
    # What it still must do: change the tunnel's address, and run a hook's `ip`.
    assert report["set_address"] == {"ok": True, "value": None}
    assert report["replace_address"] == {"ok": True, "value": None}
    assert report["hook"]["returncode"] == 0, report["hook"]["stderr"]
    assert int(report["hook"]["stdout"].split()[1], 16) == kept_mask
    # A BPF map opened as root is still updated through its fd.
    assert report["bpf_map_update"] == 0
    assert report["bpf_map_value"] == 0x7E7E
    # And the clean-up at exit works unprivileged, leaving nothing.
    assert report["close"] == {"ok": True, "value": None}
    assert tunnel_links(netns) == []
    assert net_admin & kept_mask


@pytest.mark.root
@pytest.mark.e2e
def test_without_net_admin_the_address_change_fails(netns):
    """The control: it is the retained capability that allows the address change."""
    report = run_child(netns, "")
    assert report["kept"] == []
    assert report["caps"]["effective"] == 0
    assert not report["set_address"]["ok"]
    assert "RuntimeFailure" in report["set_address"]["error"]
    assert "Operation not permitted" in report["set_address"]["error"]
    assert report["hook"]["returncode"] != 0
    # Closing the fd needs no privilege: the kernel deletes the device with it.
    assert report["close"] == {"ok": True, "value": None}
    assert tunnel_links(netns) == []


@pytest.mark.root
def test_drop_refuses_with_several_threads(require_root):
    """Capabilities are per thread: a drop with a second thread running must refuse,
    before changing anything (checked in a child, which stays root)."""
    code = (
        "import os, threading\n"
        "from xdp_teredo.daemon import privileges as p\n"
        "from xdp_teredo.errors import RuntimeFailure\n"
        "stop = threading.Event(); t = threading.Thread(target=stop.wait); t.start()\n"
        "try:\n"
        "    p.drop_privileges('nobody')\n"
        "    print('dropped')\n"
        "except RuntimeFailure as err:\n"
        "    print('refused', os.getuid(), err)\n"
        "stop.set(); t.join()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.stdout.startswith("refused 0 cannot drop privileges with 2 threads"), \
        result.stdout + result.stderr


def test_an_unknown_user_is_a_usage_error():
    # Checked before anything changes, so it is safe to run here.
    with pytest.raises(UsageError, match="no such user: 'no-such-user-xt'"):
        priv.drop_privileges("no-such-user-xt")


# -- what is retained, per kernel (pure) ---------------------------------------------------------

@pytest.mark.parametrize("kernel, sysctl, expected", [
    ((6, 18), 2, (priv.CAP_NET_ADMIN,)),            # fd-based map access is unprivileged
    ((5, 19), 1, (priv.CAP_NET_ADMIN,)),
    ((5, 15), 2, (priv.CAP_NET_ADMIN, priv.CAP_BPF)),
    ((5, 15), 0, (priv.CAP_NET_ADMIN,)),            # unprivileged bpf() allowed anyway
    ((5, 4), 1, (priv.CAP_NET_ADMIN, priv.CAP_SYS_ADMIN)),   # before CAP_BPF existed
])
def test_required_capabilities(kernel, sysctl, expected):
    assert priv.required_capabilities(kernel=kernel, unprivileged_bpf_disabled=sysctl) == \
        expected


def test_required_capabilities_on_this_machine_include_net_admin():
    assert priv.CAP_NET_ADMIN in priv.required_capabilities()


def test_capabilities_of_this_process_parse():
    caps = priv.Capabilities.of()
    assert caps.effective & ~caps.permitted == 0       # effective is within permitted
    if os.geteuid() == 0:
        assert caps.effective >> priv.CAP_NET_ADMIN & 1


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    _child(sys.argv[2])
