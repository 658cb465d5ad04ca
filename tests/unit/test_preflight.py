"""daemon/preflight.py's checks as each role's plan uses them: one line, exit 2 for
the user's mistake, 1 for the machine's, before anything is compiled or touched."""

import ctypes
import os
import time

import pytest
from click.testing import CliRunner

from xdp_teredo import cli as cli_mod
from xdp_teredo.client import config as client_cfg
from xdp_teredo.client import plan as client_plan
from xdp_teredo.daemon import preflight as pf
from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.relay import plan as relay_plan
from xdp_teredo.server import plan as server_plan

from tests.conftest import skip_or_fail


def _ok(name):
    return lambda *a, **k: pf.Check(name, True, "fine")


@pytest.fixture
def as_user(monkeypatch):
    """This process as uid 1000 without capabilities, as far as the checks can tell."""
    monkeypatch.setattr(pf, "_effective_capabilities", lambda: 0)
    monkeypatch.setattr(pf.os, "geteuid", lambda: 1000)


def test_a_user_without_capabilities_is_told_to_use_root_exit_2(as_user):
    check = pf.capabilities(who="xdp-teredo attach")
    assert not check.ok and check.blame == pf.USER
    with pytest.raises(UsageError) as caught:
        pf.require([lambda: check])
    assert str(caught.value) == ("xdp-teredo attach needs root (CAP_NET_ADMIN, CAP_BPF or "
                                 "CAP_SYS_ADMIN); this is uid 1000: run it as root (sudo)")


def test_root_without_capabilities_is_the_machine_exit_1(monkeypatch):
    monkeypatch.setattr(pf, "_effective_capabilities", lambda: 1 << pf.CAP_NET_ADMIN)
    monkeypatch.setattr(pf.os, "geteuid", lambda: 0)
    with pytest.raises(RuntimeFailure, match="runs as root without CAP_BPF or CAP_SYS_ADMIN: "
                                             "run it where"):
        pf.require([lambda: pf.capabilities(who="xdp-teredo relay")])


@pytest.mark.parametrize("bits, ok", [
    ((pf.CAP_NET_ADMIN, pf.CAP_BPF), True),          # a hardened unit: no CAP_SYS_ADMIN
    ((pf.CAP_NET_ADMIN, pf.CAP_SYS_ADMIN), True),    # a kernel before CAP_BPF
    ((pf.CAP_BPF, pf.CAP_SYS_ADMIN), False),
    ((pf.CAP_NET_ADMIN,), False),
])
def test_either_cap_bpf_or_cap_sys_admin_loads_programs(monkeypatch, bits, ok):
    monkeypatch.setattr(pf, "_effective_capabilities", lambda: sum(1 << b for b in bits))
    assert pf.capabilities().ok is ok


def test_require_stops_at_the_first_failure():
    ran = []

    def check(name, ok, blame=pf.MACHINE):
        def run():
            ran.append(name)
            return pf.Check(name, ok, f"{name} failed", "fix it", blame=blame)
        return run

    with pytest.raises(UsageError, match="^b failed: fix it$"):
        pf.require([check("a", True), check("b", False, pf.USER), check("c", False)])
    assert ran == ["a", "b"]
    pf.require([check("d", True)])


def test_interface_checks():
    assert pf.interface("lo").ok
    missing = pf.interface("nosuch9")
    assert (missing.ok, missing.blame) == (False, pf.USER)
    assert missing.line() == ("no such interface: nosuch9 (in this network namespace): "
                              "see `ip link`")
    assert pf.interface("nosuch9", "--ipv4-iface").detail.startswith("--ipv4-iface nosuch9: no such")
    assert pf.interface("a-much-too-long-name").detail.endswith("not an interface name")
    assert not pf.interface("../x").ok


def test_an_interface_down_is_the_users_mistake():
    """In a new network namespace, lo is down (a forked child unshares; needs root)."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to make a network namespace (unshare)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET
            check = pf.interface("lo")
            os.write(w, f"{check.ok}|{check.blame}|{check.line()}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert out == "False|user|interface lo is down: ip link set lo up"


def test_no_foreign_xdp_on_lo():
    check = pf.foreign_xdp("lo")
    assert check.ok, check


def test_local_address():
    assert pf.local_address("127.0.0.1").ok
    wrong = pf.local_address("198.51.100.200", "--bind2")
    assert (wrong.ok, wrong.blame) == (False, pf.USER)
    assert wrong.line().startswith("--bind2 198.51.100.200: not an address of this host")


# -- each role's choice ------------------------------------------------------------------

@pytest.fixture
def recorded(monkeypatch):
    """Every check records its call and passes."""
    calls = []

    def fake(name):
        def check(*args, **kwargs):
            calls.append((name, *args))
            return pf.Check(name, True, "fine")
        return check

    for name in ("capabilities", "bpf_syscall", "tun", "interface", "foreign_xdp",
                 "local_address"):
        monkeypatch.setattr(pf, name, fake(name))
    return calls


def test_the_client_checks_root_bpf_tun_iface_and_xdp_unless_xdp_mode_off(recorded):
    config = client_cfg.ClientConfig(servers=(), interface="eth7")
    client_plan.preflight(config)
    assert [c[0] for c in recorded] == ["capabilities", "bpf_syscall", "tun", "interface",
                                        "foreign_xdp"]
    assert recorded[3] == ("interface", "eth7") and recorded[4] == ("foreign_xdp", "eth7")
    recorded.clear()
    client_plan.preflight(client_cfg.ClientConfig(servers=(), interface="eth7", xdp_mode="off"))
    assert "foreign_xdp" not in [c[0] for c in recorded]


def test_the_relay_checks_both_devices_once_each(recorded):
    relay_plan.preflight(relay_plan.RelayConfig("if4", "if6"))
    assert [c[:3] for c in recorded[3:]] == [
        ("interface", "if4", "--ipv4-iface"), ("interface", "if6", "--ipv6-iface"),
        ("foreign_xdp", "if4", "--ipv4-iface"), ("foreign_xdp", "if6", "--ipv6-iface")]
    recorded.clear()
    relay_plan.preflight(relay_plan.RelayConfig("eth0", "eth0", path="tc"))
    assert [c[:3] for c in recorded[3:]] == [("interface", "eth0", "--ipv4-iface")]


def test_the_server_needs_net_raw_only_for_native_ipv6_and_its_addresses(recorded):
    config = server_plan.config_from_options("192.0.2.1")
    server_plan.preflight(config)
    assert [c[0] for c in recorded] == ["capabilities", "local_address", "local_address"]
    recorded.clear()
    server_plan.preflight(server_plan.config_from_options("192.0.2.1", native_ipv6=False))
    assert [c[0] for c in recorded] == ["local_address", "local_address"]


# -- as a user runs them: one line, non-zero, at once -----------------------------------

@pytest.mark.parametrize("argv", [
    ["attach", "lo", "--server", "192.0.2.1"],
    ["relay", "--ipv4-iface", "lo", "--ipv6-iface", "lo"],
    ["server", "--bind", "192.0.2.1"],
])
def test_each_role_as_a_user_is_one_line_exit_2_at_once(as_user, argv):
    started = time.monotonic()
    res = CliRunner().invoke(cli_mod.cli, argv)
    assert time.monotonic() - started < 2
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error: xdp-teredo "), res.output
    assert "needs root" in lines[0] and "Traceback" not in res.output
