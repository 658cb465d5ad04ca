"""systemd/*.service: `systemd-analyze verify` accepts every unit (it works offline,
without systemd as PID 1), and each has what docs/operations.md promises."""

import configparser
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT_DIR = os.path.join(ROOT, "systemd")
UNITS = sorted(n for n in os.listdir(UNIT_DIR) if n.endswith(".service"))
INSTALLED = "/usr/local/bin/xdp-teredo"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#",), delimiters=("=",))
    parser.optionxform = str
    with open(os.path.join(UNIT_DIR, name)) as f:
        parser.read_string(f.read())
    return parser


def test_the_three_roles_have_a_unit():
    assert UNITS == ["xdp-teredo-relay.service", "xdp-teredo-server.service",
                     "xdp-teredo@.service"]


@pytest.mark.parametrize("name", UNITS)
def test_notify_watchdog_restart_hardening(name):
    service = _unit(name)["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes" and service["ProtectHome"] == "yes"
    families = set(service["RestrictAddressFamilies"].split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "User" not in service, "the roles drop root themselves (daemon/privileges.py)"


@pytest.mark.parametrize("name, needed", [
    ("xdp-teredo@.service", {"CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN", "CAP_SETUID",
                             "CAP_SETGID", "CAP_SETPCAP"}),
    ("xdp-teredo-relay.service", {"CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN", "CAP_SETUID",
                                  "CAP_SETGID", "CAP_SETPCAP"}),
    ("xdp-teredo-server.service", {"CAP_NET_RAW"}),
])
def test_capabilities_are_what_the_role_needs(name, needed):
    assert set(_unit(name)["Service"]["CapabilityBoundingSet"].split()) == needed


def test_the_tunnel_roles_keep_what_bcc_and_tun_need():
    """ProtectKernelModules hides /lib/modules (bcc's kernel headers), PrivateDevices
    /dev/net/tun, ProtectKernelTunables makes /sys (the bpffs pins) read-only."""
    for name in ("xdp-teredo@.service", "xdp-teredo-relay.service"):
        service = _unit(name)["Service"]
        for option in ("ProtectKernelModules", "PrivateDevices", "ProtectKernelTunables",
                       "MemoryDenyWriteExecute", "ProtectClock"):
            assert service.get(option, "no") == "no", (name, option)


def test_the_default_files_name_what_the_units_read():
    for role, keys in (("relay", ("IPV4_IFACE", "IPV6_IFACE", "RELAY_OPTS")),
                       ("server", ("SERVER_BIND", "SERVER_OPTS"))):
        text = open(os.path.join(UNIT_DIR, f"xdp-teredo-{role}.default")).read()
        exec_start = _unit(f"xdp-teredo-{role}.service")["Service"]["ExecStart"]
        for key in keys:
            assert f"\n{key}=" in "\n" + text and key in exec_start


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze") or (
        "/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze") else None)
    if analyze is None:
        pytest.skip("systemd-analyze is absent on this machine (package systemd): "
                    "the units were not verified")
    # verify wants ExecStart= to exist: the venv's entry point stands in for the
    # installed one; the template is checked as an instance.
    entry = os.path.join(os.path.dirname(sys.executable), "xdp-teredo")
    assert os.path.exists(entry), entry
    paths = []
    for name in UNITS:
        text = open(os.path.join(UNIT_DIR, name)).read()
        assert INSTALLED in text, name
        target = tmp_path / name.replace("@.service", "@lo.service")
        target.write_text(text.replace(INSTALLED, entry))
        paths.append(str(target))
    # The man pages of Documentation= are looked up: ours, from docs/man.
    env = {**os.environ, "MANPATH": os.path.join(ROOT, "docs", "man") + ":",
           "SYSTEMD_LOG_COLOR": "0"}
    res = subprocess.run([analyze, "verify", *paths], capture_output=True, text=True,
                         timeout=120, env=env, cwd=str(tmp_path))
    ours = [line for line in (res.stdout + res.stderr).splitlines()
            if "xdp-teredo" in line]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr
