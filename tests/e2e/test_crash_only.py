"""Crash-only, every role (docs/reliability.md, "Crash-only"): SIGKILL under traffic,
then the same command again, with no manual step in between.

One lab: our server, our relay between the IPv4 internet and the IPv6-only v6host,
two of our clients (client1 behind one NAT, client2 behind two). Each test kills one
role while a pinger sends an echo every 10 ms across it, starts the very same command
again, and measures the echoes lost and how long until the role serves again:

- the client (client1 -> client2, both ours, trusting each other): the fast path
  keeps carrying every echo while no control plane runs; the next start adopts the
  programs, maps and persistent tunnel and resumes the same address;
- the relay (client2 -> v6host through it): its programs and peer table outlive it;
  the next start adopts them (no relearning), so the known client's echoes go on;
- the server (client1 -> client2 direct, and client1's refreshes): a server holds no
  state worth keeping; the next start binds the same port at once and answers the
  clients' next refresh.
"""

import json
import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import roles

from tests.conftest import require_tool
from tests.e2e import client_support as cs
from tests.e2e import resilience_support as rs

pytestmark = pytest.mark.e2e

INTERVAL = 0.01          # 100 echo requests per second
# Working again within this many seconds of the kill (issue 12).
WITHIN_S = 5.0


@pytest.fixture(scope="module")
def teredo(make_module_lab, require_bcc):
    require_tool("ethtool")
    lab = make_module_lab("server", "relay", "client1", "client2", "v6host")
    server = roles.start_server(lab, "xdp-teredo")
    relay = roles.start_relay(lab, "xdp-teredo")
    one = cs.start_client(lab, "client1", *cs.XDP, log="client1-0.log", wait=False)
    two = cs.start_client(lab, "client2", log="client2-0.log", wait=False)
    for proc in (one, two):
        cs.wait_ready(proc)
    addresses = {role: cs.status(lab, role)[1]["address"] for role in ("client1", "client2")}
    native = str(lab["v6host"].ipv6[0])
    # Trust first (bubbles §5.2.6, the relay's §5.4.1 dance): then the fast path.
    assert lab.ping("client1", addresses["client2"], count=3, deadline=15).ok
    assert lab.ping("client2", native, count=3, deadline=20).ok
    return SimpleNamespace(lab=lab, procs={"server": server.process, "relay": relay.process,
                                           "client1": one, "client2": two},
                           addresses=addresses, native=native)


def _report(what: str, result: dict, **figures) -> None:
    extra = ", ".join(f"{k} {v}" for k, v in figures.items())
    print(f"\n{what}: {result['sent']} sent, {result['received']} answered, lost at "
          f"{result['lost_at_s']}, max RTT {result['max_rtt_ms']} ms; {extra}", file=sys.stderr)


def _kill(proc) -> float:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    return time.monotonic()


def test_a_killed_client_is_adopted_by_the_same_command_and_loses_nothing(teredo):
    lab, address = teredo.lab, teredo.addresses["client1"]
    seconds = 20.0
    pinger = rs.start_pinger(lab, "client1", teredo.addresses["client2"], interval=INTERVAL,
                             seconds=seconds, log="pinger-client.log")
    time.sleep(1.0)
    killed = _kill(teredo.procs["client1"])
    left = cs.leftovers(lab, "client1")
    assert left["tunnel"] and left["xdp"] and not left["control_socket"], left
    again = cs.start_client(lab, "client1", log="client1-1.log", wait=False)
    again.wait_for_output(r'"event": "datapath_adopted"', timeout=cs.QUALIFY_TIMEOUT)
    adopted_after = time.monotonic() - killed
    cs.wait_ready(again)
    qualified_after = time.monotonic() - killed
    teredo.procs["client1"] = again
    [adopted] = cs.events(again, "datapath_adopted")
    assert adopted["replaced"] is None, adopted
    [qualified] = cs.events(again, "qualified")
    assert qualified["resumed"] is True and qualified["address"] == address, qualified
    assert not cs.events(again, "address_changed")
    result = rs.pinger_result(pinger, timeout=seconds + 30)
    _report("client SIGKILL + same command", result,
            adopted_after_s=round(adopted_after, 1), qualified_after_s=round(qualified_after, 1))
    assert result["sent"] >= seconds / INTERVAL * 0.8, result
    assert result["lost_at_s"] == [] and result["received"] == result["sent"], result
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["adopted"] and info["address"] == address, info


def test_the_adopted_client_replaced_its_checksum_veth_and_asks_its_peers_again(teredo):
    """client1's NIC is a veth: the killed client left its checksum veth (with the
    fast path); the next start replaced it. Its offload probe runs too: the
    native host behind our relay answers an echo left unfinished (the relay
    forwards it in the kernel), so TCP to it leaves in GSO super-packets, no
    detour, and gets there."""
    lab = teredo.lab
    links = lab.run("client1", "ip", "-o", "link", "show").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    assert names.count("teredo-ck0") == 1 and names.count("teredo-ck1") == 1, links
    # The relay path first (the echo test, §5.2.9), then TCP over it.
    assert lab.ping("client1", teredo.native, count=3, deadline=20).ok
    cs.wait_until("the native host takes offloads", lambda: any(
        row["address"] == str(teredo.native) and row["takes_offloads"]
        for row in cs.query(lab, "client1", "peers")), timeout=10)
    stats0 = cs.query(lab, "client1", "stats")
    sent = cs.tcp_transfer(lab, "client1", "v6host", teredo.native, nbytes=1_000_000)
    assert sent["from"] == teredo.addresses["client1"]
    moved = cs.delta(cs.nbytes(stats0), cs.nbytes(cs.query(lab, "client1", "stats")))
    assert moved.get("encapsulated", 0) >= 1_000_000, moved
    assert moved.get("tx_csum_detour", 0) == 0, moved


def test_a_killed_relay_is_adopted_and_its_known_client_keeps_its_path(teredo):
    lab = teredo.lab
    seconds = 25.0
    status0 = json.loads(cs.cli(lab, "relay", "relay", "--status", check=True).stdout)
    assert status0["peers"] >= 1, status0
    pinger = rs.start_pinger(lab, "client2", teredo.native, interval=INTERVAL,
                             seconds=seconds, log="pinger-relay.log")
    time.sleep(1.0)
    killed = _kill(teredo.procs["relay"])
    h = lab["relay"]
    again = lab.spawn("relay", *roles.CLI, "--log-format", "json", "relay", "--ipv4-iface",
                      h.uplink, "--ipv6-iface", h.lan, log="relay-1.log")
    again.wait_for_output(r'"event": "relay_started"', timeout=roles.START_TIMEOUT)
    started_after = time.monotonic() - killed
    teredo.procs["relay"] = again
    [adopted] = cs.events(again, "relay_datapath_adopted")
    assert adopted["replaced"] is None, adopted
    status = json.loads(cs.cli(lab, "relay", "relay", "--status", check=True).stdout)
    assert status["adopted"] and status["peers"] >= 1, status
    result = rs.pinger_result(pinger, timeout=seconds + 30)
    _report("relay SIGKILL + same command", result, started_after_s=round(started_after, 1))
    assert result["sent"] >= seconds / INTERVAL * 0.8, result
    # Nothing lost, or whatever was lost within WITHIN_S of the kill.
    late = [t for t in result["lost_at_s"] if t > 1.0 + WITHIN_S]
    assert not late, result
    assert result["received"] >= result["sent"] - WITHIN_S / INTERVAL, result
    # And a new conversation through it works too (the slow path is back).
    assert lab.ping("client2", teredo.native, count=3, deadline=10).ok
    # It gave up root like the client; SIGTERM still removes everything.
    assert status["user"] == "nobody", status
    assert again.stop() == 0, again.output()[-2000:]
    links = lab.run("relay", "ip", "-d", "link", "show").stdout
    assert "prog/xdp" not in links and " teredo:" not in links, links
    for dev in (h.uplink, h.lan):
        shown = lab.run("relay", "tc", "filter", "show", "dev", dev, "ingress", check=False)
        assert not shown.stdout.strip(), shown.stdout


def test_a_killed_server_answers_again_at_once(teredo):
    lab = teredo.lab
    seconds = 12.0
    pinger = rs.start_pinger(lab, "client1", teredo.addresses["client2"], interval=INTERVAL,
                             seconds=seconds, log="pinger-server.log")
    time.sleep(1.0)
    before = cs.query(lab, "client1", "counters")["slow_path"]
    killed = _kill(teredo.procs["server"])
    server = roles.start_server(lab, "xdp-teredo")
    started_after = time.monotonic() - killed
    teredo.procs["server"] = server.process

    def answered():
        counters = cs.query(lab, "client1", "counters")["slow_path"]
        return counters.get("ra_received", 0) > before.get("ra_received", 0) and counters

    # The client's next refresh (every 2 s here) is answered by the new server.
    cs.wait_until("an RA from the restarted server", answered, timeout=WITHIN_S)
    answered_after = time.monotonic() - killed
    result = rs.pinger_result(pinger, timeout=seconds + 30)
    _report("server SIGKILL + same command", result, started_after_s=round(started_after, 1),
            refresh_answered_after_s=round(answered_after, 1))
    assert result["lost_at_s"] == [] and result["received"] == result["sent"], result
    for role in ("client1", "client2"):
        code, info = cs.status(lab, role)
        assert code == 0 and info["state"] == "qualified", info
