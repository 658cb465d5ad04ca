"""The CLI's contract: one-line errors, exit statuses, JSON keys."""

import json

import pytest
from click.testing import CliRunner

from xdp_teredo import cli as cli_mod
from xdp_teredo.daemon import preflight


@pytest.fixture
def runner():
    return CliRunner()


def test_decode_json_rfc_vector(runner):
    res = runner.invoke(cli_mod.cli, ["decode", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["server"] == "65.54.227.120"
    assert info["client"] == "192.0.2.45"
    assert info["port"] == 40000
    assert info["flags"] == 32768
    assert info["cone"] is True


def test_decode_text_output(runner):
    res = runner.invoke(cli_mod.cli, ["decode", "2001:0:c000:201:8000:cfc6:3fff:fd74"])
    assert res.exit_code == 0
    assert "192.0.2.139" in res.output and "12345" in res.output


@pytest.mark.parametrize("bad", ["2001:db8::1", "not-an-address", "192.0.2.1", "", "2002::1"])
def test_decode_rejects_non_teredo_with_one_line(runner, bad):
    res = runner.invoke(cli_mod.cli, ["decode", bad])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:")
    assert "Traceback" not in res.output


def test_check_reports_failures_with_a_fix_and_exit_1(runner, monkeypatch):
    monkeypatch.setattr(preflight, "CHECKS", [
        lambda: preflight.Check("kernel", True, "6.18"),
        lambda: preflight.Check("bpffs", False, "not mounted", "mount -t bpf bpf /sys/fs/bpf"),
    ])
    res = runner.invoke(cli_mod.cli, ["check"])
    assert res.exit_code == 1
    assert "[FAIL] bpffs" in res.output and "mount -t bpf" in res.output
    res = runner.invoke(cli_mod.cli, ["check", "--json"])
    data = json.loads(res.output)
    assert data["ok"] is False and [c["ok"] for c in data["checks"]] == [True, False]


def test_check_crashing_probe_is_a_failed_check(runner, monkeypatch):
    def boom():
        raise OSError("no such thing")
    boom.__name__ = "_boom"
    monkeypatch.setattr(preflight, "CHECKS", [boom])
    res = runner.invoke(cli_mod.cli, ["check"])
    assert res.exit_code == 1 and "check crashed" in res.output


def test_unknown_option_is_usage_error(runner):
    res = runner.invoke(cli_mod.cli, ["decode", "--bogus", "x"])
    assert res.exit_code == 2


@pytest.mark.parametrize("address, field, ip", [
    ("2001::", "server", "0.0.0.0"),
    ("2001:0:0:0:8000:cfc6:3fff:fd74", "server", "0.0.0.0"),
    ("2001:0:7f00:1:8000:cfc6:3fff:fd74", "server", "127.0.0.1"),
    ("2001:0:e000:1:8000:cfc6:3fff:fd74", "server", "224.0.0.1"),
    ("2001:0:c000:201:8000:cfc6:ffff:ffff", "client", "0.0.0.0"),
    ("2001:0:c000:201:8000:cfc6::", "client", "255.255.255.255"),
])
def test_decode_refuses_an_address_nobody_could_have(runner, address, field, ip):
    res = runner.invoke(cli_mod.cli, ["decode", address])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error: not a usable Teredo")
    assert f"its {field} {ip} is not a unicast IPv4 address" in lines[0]


def test_decode_keeps_private_and_documentation_mappings(runner):
    # A client behind no NAT in a lab: server and client in documentation ranges.
    res = runner.invoke(cli_mod.cli, ["decode", "2001:0:c000:201:0:f227:3f57:fef5"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("bad", ["x" * 10_000, "2001:" * 5000, "2001::1\n" + "y" * 500])
def test_decode_cuts_a_long_input_in_its_error(runner, bad):
    res = runner.invoke(cli_mod.cli, ["decode", bad])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].endswith("...")
    assert len(lines[0]) < 120, lines[0]
