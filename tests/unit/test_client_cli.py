"""The client's commands (cli.py: attach, status, peers, detach): exit statuses, one-line
errors, output. A ControlServer with canned answers stands in for a running client."""

import json
import secrets

import pytest
from click.testing import CliRunner

from xdp_teredo import cli as cli_mod

from .control_support import Served

STATUS = {"state": "qualified", "address": "2001:0:c000:201:1c9f:38f5:39cc:9bfe",
          "server": "192.0.2.1", "mapped": "198.51.100.1:50954", "nat": True,
          "since": "2026-11-26T23:06:16+00:00", "tunnel": "x", "interface": "eth0",
          "local": "10.1.0.2:50954", "xdp": "native", "peers": 1, "pid": 1, "user": "nobody"}
PEERS = [{"address": "2001:0:c000:201:38f0:51ec:39cc:9bee", "mapped": "198.51.100.17:44563",
          "trusted": True, "learned": True, "relay": False, "last_rx_s": 0.5, "last_tx_s": None,
          "rx_packets": 6, "tx_packets": 5}]


@pytest.fixture
def running():
    """A fake client: its tunnel name, and a dict whose "status" it answers."""
    answers = {}
    served = Served({k: (lambda k=k: answers[k]) for k in ("status", "peers")})
    answers.update({"status": dict(STATUS, tunnel=served.tunnel), "peers": PEERS})
    yield served.tunnel, answers
    served.close()


def invoke(*args):
    return CliRunner().invoke(cli_mod.cli, list(args))


def test_status_json_and_exit_0_when_qualified(running):
    tunnel, _ = running
    res = invoke("status", "--json", "--tunnel", tunnel)
    assert res.exit_code == 0
    info = json.loads(res.output)
    for key in ("state", "address", "server", "mapped", "nat", "since"):
        assert key in info
    res = invoke("status", "--tunnel", tunnel)
    assert res.exit_code == 0 and "mapped     198.51.100.1:50954" in res.output


@pytest.mark.parametrize("state", ["offline", "qualifying"])
def test_status_exit_3_when_running_but_not_qualified(running, state):
    tunnel, answers = running
    answers["status"]["state"] = state
    res = invoke("status", "--json", "--tunnel", tunnel)
    assert res.exit_code == 3 and json.loads(res.output)["state"] == state


def test_status_and_peers_without_a_client_are_one_line_exit_1():
    tunnel = "ut" + secrets.token_hex(4)
    for command in ("status", "peers"):
        res = invoke(command, "--tunnel", tunnel)
        assert res.exit_code == 1
        lines = [l for l in res.output.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error: no xdp-teredo client")


def test_peers_table_and_json(running):
    tunnel, _ = running
    res = invoke("peers", "--tunnel", tunnel)
    assert res.exit_code == 0
    [header, row] = res.output.splitlines()
    assert header.split()[:2] == ["address", "mapped"]
    assert row.split()[:3] == [PEERS[0]["address"], "198.51.100.17:44563", "learned"]
    assert json.loads(invoke("peers", "--json", "--tunnel", tunnel).output) == PEERS


@pytest.mark.parametrize("args, says", [
    (["attach"], "Missing argument 'IFACE'"),
    (["attach", "eth0", "--bogus"], "No such option '--bogus'"),
    (["attach", "eth0", "--xdp-mode", "turbo"], "'turbo' is not one of"),
    (["attach", "eth0", "--bind-port", "x"], "'x' is not a valid integer"),
    (["detach"], "Missing argument 'IFACE'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, says):
    res = invoke(*args)
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:") and says in lines[0]


def test_detach_refuses_while_a_client_runs(running):
    tunnel, _ = running
    res = invoke("detach", "ut-nic0", "--tunnel", tunnel)
    assert res.exit_code == 1 and "a client is running here" in res.output


def test_timers_are_hidden_from_help():
    res = invoke("attach", "--help")
    assert res.exit_code == 0 and "--server" in res.output
    assert "--refresh-interval" not in res.output
