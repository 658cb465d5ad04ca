"""`xdp-teredo attach eth0` behind a NAT, against Debian's miredo-server.

One client, started once for the module (client1, behind nat1), with a hook that
prints its environment: it qualifies (RFC 4380 §5.2.1), its address decodes to the
server and to the NAT's mapping, the tunnel looks like Miredo's, the data path is
attached, it refreshes (§5.2.7), runs as nobody with CAP_NET_ADMIN only, and logs
one event per state change, never per packet. `status` and `peers` answer from
another process of the namespace (`ip netns exec`). Then, with their own labs:
SIGTERM leaves nothing behind, `detach` cleans up after SIGKILL (crash-only: what a
killed client keeps, the next start adopts), and each bad input
is one line, a non-zero exit, and nothing attached.
"""

import errno
import ipaddress
import json
import os
import re
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.constants import TEREDO_PORT

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

NOBODY = 65534
CAP_NET_ADMIN = 1 << 12


@pytest.fixture(scope="module")
def hooks():
    d = cs.WorldReadableDir()
    yield d
    d.close()


@pytest.fixture(scope="module")
def teredo(make_module_lab, hooks):
    require_tool("miredo-server")
    lab = make_module_lab("server", "client1", "public")
    server = miredo.start_server(lab)
    hook = hooks.script("env-hook", cs.ENV_HOOK)
    client = cs.start_client(lab, "client1", "--hook", hook)
    return SimpleNamespace(lab=lab, server=server, client=client)


def _mapped_port_on_nat(lab, nat: str = "nat1") -> int:
    table = lab.run(nat, "conntrack", "-L", "-p", "udp", "--orig-dst", cs.SERVER,
                    "--orig-port-dst", str(TEREDO_PORT)).stdout
    ports = {int(m.group(1)) for m in re.finditer(
        rf"src={re.escape(cs.SERVER)} dst=\S+ sport={TEREDO_PORT} dport=(\d+)", table)}
    assert len(ports) == 1, table
    return ports.pop()


def test_qualifies_behind_a_nat_and_status_says_so(teredo):
    lab = teredo.lab
    code, info = cs.status(lab, "client1")
    assert code == 0, info
    assert info["state"] == "qualified"
    assert info["server"] == cs.SERVER
    address = TeredoAddress.parse(info["address"])
    public = lab["client1"].public_ipv4
    port = _mapped_port_on_nat(lab)
    # RFC 4380 §4: the address names the server and the NAT's mapping of our socket.
    assert address.server == ipaddress.IPv4Address(cs.SERVER)
    assert (address.client, address.port) == (public, port)
    assert info["mapped"] == f"{public}:{port}"
    assert info["nat"] is True
    assert info["local"].startswith(f"{lab['client1'].ipv4[0]}:")
    # RFC 5991: no cone bit, U and G zero.
    assert not address.cone and address.flags & 0x0300 == 0
    assert info["tunnel"] == "teredo" and info["interface"] == "eth0"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", info["since"])


def test_the_tunnel_looks_like_miredos(teredo):
    lab = teredo.lab
    _, info = cs.status(lab, "client1")
    link = lab.run("client1", "ip", "-o", "link", "show", "dev", "teredo").stdout
    assert "mtu 1280" in link and ",UP" in link
    addresses = lab.run("client1", "ip", "-6", "-o", "addr", "show", "dev", "teredo").stdout
    found = sorted(re.findall(r"inet6 (\S+)", addresses))
    assert found == sorted([f"{info['address']}/32", "fe80::ffff:ffff:ffff/64"])
    routes = lab.run("client1", "ip", "-6", "route", "show", "dev", "teredo").stdout
    assert re.search(r"^2001::/32 .*metric 1029", routes, re.M), routes
    # Metric 1029: a native default route (metric 1024) always wins.
    assert re.search(r"^default .*metric 1029", routes, re.M), routes


def test_the_data_path_is_attached_and_sees_the_server_traffic(teredo):
    """--xdp-mode auto (the default) on the lab's veth: tc, and `status` says why
    (native XDP on a veth copies every frame: datapath/rxhook.py)."""
    lab = teredo.lab
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["decap"] == "tc" and info["xdp"] is None, info
    assert "eth0 is a veth" in info["decap_why"], info
    assert info["fast_path"] == "on" and info["fast_path_s"] > 0, info
    assert "prog/xdp" not in lab.run("client1", "ip", "link", "show", "dev", "eth0").stdout
    ingress = lab.run("client1", "tc", "filter", "show", "dev", "eth0", "ingress").stdout
    egress = lab.run("client1", "tc", "filter", "show", "dev", "teredo", "egress").stdout
    assert "tc_teredo_rx" in ingress and "tc_teredo_tx" in egress
    [started] = cs.events(teredo.client, "client_started")
    assert started["fast_path"] == "compiling" and started["decap"] == "tc", started
    before = cs.packets(cs.query(lab, "client1", "stats"))
    # Refresh RAs carry an authentication header: the fast path leaves them to the socket.
    cs.wait_until("a refresh RA counted as rx_auth",
                  lambda: cs.packets(cs.query(lab, "client1", "stats"))["rx_auth"]
                  > before["rx_auth"], timeout=10)


def test_stats_command_reads_the_unprivileged_client_under_ip_netns_exec(teredo):
    """`ip netns exec NS xdp-teredo stats` finds the client through its control
    socket: it pins nothing once it runs as nobody, and /sys/fs/bpf is hidden."""
    lab = teredo.lab

    def stats_json():
        res = cs.cli(lab, "client1", "stats", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    out = stats_json()
    assert isinstance(out["decapsulated"], int) and isinstance(out["encapsulated"], int)
    # Refresh RAs (every 2 s here) are counted as left to the socket: the command
    # reads live counters, not a copy.
    cs.wait_until("stats showing a new refresh RA",
                  lambda: stats_json()["rx_auth"] > out["rx_auth"], timeout=10)
    assert set(out["bytes"]) >= {"decapsulated", "encapsulated", "rx_auth"}
    table = cs.cli(lab, "client1", "stats")
    assert table.returncode == 0 and "fast path" in table.stdout and "rx_auth" in table.stdout
    # No client on another tunnel name, no pins: one line, exit 1.
    res = cs.cli(lab, "client1", "stats", "--tunnel", "nosuch")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_it_refreshes_every_interval_and_keeps_its_address(teredo):
    lab = teredo.lab
    _, first = cs.status(lab, "client1")
    before = cs.query(lab, "client1", "counters")["slow_path"]
    time.sleep(4.5)   # --refresh-interval 2
    after = cs.query(lab, "client1", "counters")["slow_path"]
    assert after["rs_sent"] - before["rs_sent"] >= 2
    assert after["ra_received"] - before["ra_received"] >= 2
    _, now = cs.status(lab, "client1")
    assert (now["state"], now["address"]) == ("qualified", first["address"])


def test_it_runs_as_nobody_with_only_cap_net_admin(teredo):
    _, info = cs.status(teredo.lab, "client1")
    assert info["user"] == "nobody"
    with open(f"/proc/{info['pid']}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    assert fields["Uid"].split() == [str(NOBODY)] * 4
    assert int(fields["CapEff"], 16) == CAP_NET_ADMIN
    assert int(fields["CapPrm"], 16) == CAP_NET_ADMIN


def test_the_hook_ran_with_miredos_environment(teredo):
    _, info = cs.status(teredo.lab, "client1")
    runs = cs.hook_runs(teredo.client)
    assert runs, teredo.client.output()
    up = runs[0]
    assert up["STATE"] == "up" and up["OLD_STATE"] == "down"
    assert up["ADDRESS"] == info["address"]
    assert up["LLADDRESS"] == "fe80::ffff:ffff:ffff" and up["MTU"] == "1280"
    assert up["IFACE"] == "teredo" and up["IFINDEX"] == str(info["ifindex"])
    assert up["OLD_ADDRESS"] == ""
    assert up["UID"] == str(NOBODY)   # the hook runs unprivileged too
    assert len(runs) == 1   # refreshes with the same mapping change nothing


def test_one_log_event_per_state_change_and_none_per_packet(teredo):
    lab, proc = teredo.lab, teredo.client
    assert len(cs.events(proc, "client_started")) == 1
    [qualified] = cs.events(proc, "qualified")
    _, info = cs.status(lab, "client1")
    assert qualified["address"] == info["address"] and qualified["mapped"] == info["mapped"]
    assert qualified["nat"] is True
    changes = [(e["old"], e["new"]) for e in cs.events(proc, "state_changed")]
    assert changes == [("offline", "qualifying"), ("qualifying", "qualified")]
    lines = len(proc.output().splitlines())
    time.sleep(2.5)   # a refresh, and pings that go nowhere
    lab.ping("client1", "2001:0:c000:201::1", count=2, deadline=1)
    assert len(proc.output().splitlines()) == lines, proc.output().splitlines()[lines:]


# Sends one UDP datagram to ADDRESS and waits for an answer or an error (RECVERR, so
# that a non-fatal ICMPv6 error such as "address unreachable" is reported too).
UNREACHABLE_PROBE = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 25, 1)   # IPV6_RECVERR
s.connect((sys.argv[1], 9))
s.send(b"anyone?")
s.settimeout(15)
started = time.monotonic()
try:
    s.recv(100)
    print(json.dumps({"answer": True}))
except socket.timeout:
    print(json.dumps({"timeout": True}))
except OSError as err:
    print(json.dumps({"errno": err.errno, "after": time.monotonic() - started}))
"""


def test_a_destination_nobody_serves_is_reported_unreachable(teredo):
    """§5.2.9: no relay answers the connectivity test (3 tries, 2 s apart): the
    queued packet's sender gets ICMPv6 address unreachable, as Miredo does."""
    lab = teredo.lab
    res = lab.run("client1", sys.executable, "-c", UNREACHABLE_PROBE, "2001:db8:ffff::1",
                  timeout=30)
    got = json.loads(res.stdout)
    assert got.get("errno") == errno.EHOSTUNREACH, got
    assert 5 <= got["after"] <= 9
    counters = cs.query(lab, "client1", "counters")["slow_path"]
    assert counters["echo_sent"] >= 3 and counters["unreachable"] >= 1


def test_status_and_peers_from_another_command(teredo):
    lab = teredo.lab
    res = cs.cli(lab, "client1", "status")
    assert res.returncode == 0 and re.search(r"^state\s+qualified$", res.stdout, re.M)
    res = cs.cli(lab, "client1", "peers", "--json")
    assert res.returncode == 0
    assert isinstance(json.loads(res.stdout), list)
    # Another tunnel name: no such client here.
    res = cs.cli(lab, "client1", "status", "--json", "--tunnel", "teredo9")
    assert res.returncode == 1 and "no xdp-teredo client with tunnel teredo9" in res.stderr


def test_a_second_client_or_detach_is_refused_while_it_runs(teredo):
    lab = teredo.lab
    res = cs.cli(lab, "client1", "detach", "eth0")
    assert res.returncode == 1 and "a client is running here" in _one_line_error(res)
    res = cs.cli(lab, "client1", "attach", "eth0", "--server", cs.SERVER, timeout=60)
    assert res.returncode == 1
    assert "already running" in _one_line_error(res)
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["pid"] == teredo.client.pid


def test_no_client_here_is_one_line_and_exit_1(teredo):
    for command in ("status", "peers"):
        res = cs.cli(teredo.lab, "public", command, "--json")
        assert res.returncode == 1
        assert "no xdp-teredo client" in _one_line_error(res)


# -- stopping ----------------------------------------------------------------------------

def test_sigterm_leaves_nothing_and_detach_cleans_up_after_sigkill(make_lab, hooks):
    require_tool("miredo-server")
    lab = make_lab("server", "client1")
    miredo.start_server(lab)
    hook = hooks.script("env-hook-stop", cs.ENV_HOOK)

    client = cs.start_client(lab, "client1", "--hook", hook, *cs.XDP, log="term.log")
    assert cs.leftovers(lab, "client1")["xdp"]
    assert client.stop() == 0
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
    [stopped] = cs.events(client, "client_stopped")
    assert stopped["signal"] == "SIGTERM" and stopped["failures"] is None
    states = [run["STATE"] for run in cs.hook_runs(client)]
    assert states == ["up", "down", "destroy"]   # Miredo's last two runs at exit
    assert lab.run("client1", "ip", "-6", "route", "show", "default").stdout == ""

    client = cs.start_client(lab, "client1", *cs.XDP, log="kill.log")
    os.kill(client.pid, signal.SIGKILL)
    client.wait(timeout=10)
    left = cs.leftovers(lab, "client1")
    # Crash-only: the fast path and the persistent tun stay for the next start, which
    # adopts them (tests/e2e/test_crash_only.py); `detach` removes them instead.
    assert left["xdp"] and left["filters"] and left["tunnel"] and left["csum_veth"], left
    res = cs.cli(lab, "client1", "detach", "eth0")
    assert res.returncode == 0, res.stderr
    assert "XDP xdp_teredo_rx" in res.stdout and "tc filter" in res.stdout
    assert "removed tunnel teredo" in res.stdout, res.stdout
    assert "checksum veth teredo-ck0" in res.stdout, res.stdout
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
    res = cs.cli(lab, "client1", "detach", "eth0")
    assert (res.returncode, res.stdout.strip()) == (0, "nothing to remove")


# -- bad inputs ---------------------------------------------------------------------------

def _one_line_error(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


@pytest.fixture(scope="module")
def bare(make_module_lab):
    """A host on the IPv4 internet (public, 203.0.113.10), no client running."""
    return make_module_lab("public")


BAD_CONFIG = "RelayType client\nServerAddress 192.0.2.1\nBindPort 3544x\n"
RELAY_CONFIG = "RelayType cone\n"


@pytest.mark.parametrize("args, says", [
    (["--server", "no-such-host.invalid"], 'cannot resolve Teredo server address "no-such-host.invalid"'),
    (["--server", "10.0.0.1"], "non global IPv4 address"),
    (["--server", "192.168.1.1"], "non global IPv4 address"),
    (["--server", "224.0.0.253"], "non global IPv4 address"),
    (["--server", cs.SERVER, "--server", "127.0.0.1"], "non global IPv4 address: 127.0.0.1"),
    (["--server", cs.SERVER, "--bogus"], "No such option"),
    (["--server", cs.SERVER, "--bind-port", "70000"], "--bind-port must be between 0 and 65535"),
    (["--server", cs.SERVER, "--xdp-mode", "turbo"], "'turbo' is not one of"),
    (["--server", cs.SERVER, "--user", "no-such-user"], "no such user"),
    (["--server", cs.SERVER, "--hook", "/no/such/hook"], "is not an executable file"),
    (["--server", cs.SERVER, "--tunnel", "a-much-too-long-name"], "invalid --tunnel name"),
    (["--server", cs.SERVER, "--config", "/no/such.conf"], "cannot read config file /no/such.conf"),
    (["--config", "{bad_config}"], "bad.conf:3: BindPort must be a decimal number"),
    (["--config", "{relay_config}"], "RelayType cone is a relay mode"),
    ("eth9", "no such interface: eth9"),
    ("missing", "Missing argument 'IFACE'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_attached(bare, args, says):
    lab = bare
    workdir = lab.workdir
    (workdir / "bad.conf").write_text(BAD_CONFIG)
    (workdir / "relay.conf").write_text(RELAY_CONFIG)
    if args == "eth9":
        argv = ["attach", "eth9", "--server", cs.SERVER]
    elif args == "missing":
        argv = ["attach"]
    else:
        argv = ["attach", "eth0"] + [a.format(bad_config=workdir / "bad.conf",
                                              relay_config=workdir / "relay.conf") for a in args]
    started = time.monotonic()
    res = cs.cli(lab, "public", *argv, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert says in _one_line_error(res)
    # Refused before anything was compiled or attached.
    assert time.monotonic() - started < 5
    assert cs.leftovers(lab, "public") == cs.NOTHING_LEFT
