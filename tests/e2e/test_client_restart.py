"""Restarts without loss (`attach --restart-safe`, docs/reliability.md).

Two of our clients with our server: client1 restart-safe, client2 plain. Once they
trust each other, client1 pings client2 at 100 packets per second while client1's
control plane is replaced twice:

1. an upgrade: SIGHUP (the old process leaves the fast path running and exits 0),
   then `attach --restart-safe` of "the next version" (a build whose every program
   differs, tests/e2e/resilience_support.py): it adopts the maps and swaps its
   programs in atomically;
2. a crash: SIGKILL, then a plain `attach` of the same build: crash-only, it adopts
   the programs as they run.

Not one echo may be lost, and each new instance must resume the same Teredo
address (no requalification from scratch, no peer flushed). Last, SIGTERM on the
restart-safe client still leaves nothing behind, its persistent tunnel included.
"""

import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import require_tool
from tests.e2e import client_support as cs
from tests.e2e import resilience_support as rs
from tests.e2e.resilience_support import another_build

pytestmark = pytest.mark.e2e

INTERVAL = 0.01          # 100 echo requests per second
# Long enough for two restarts: each new instance compiles (~8 s on 2 busy cores)
# before it adopts anything; the fast path must carry the pings all along.
PING_SECONDS = 36.0



@pytest.fixture(scope="module")
def teredo(make_module_lab):
    require_tool("ethtool")
    lab = make_module_lab("server", "client1", "client2")
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    one = cs.start_client(lab, "client1", "--restart-safe", *cs.XDP, log="client1-first.log",
                          wait=False)
    two = cs.start_client(lab, "client2", wait=False)
    for proc in (one, two):
        cs.wait_ready(proc)
    addresses = {role: cs.status(lab, role)[1]["address"] for role in ("client1", "client2")}
    return SimpleNamespace(lab=lab, procs={"client1": one, "client2": two}, addresses=addresses)


def _start_again(lab, log: str, bpf_dir=None, *args):
    """`attach ARGS` in client1 again (from `bpf_dir`'s build if given)."""
    env = {"XDP_TEREDO_BPF_DIR": bpf_dir} if bpf_dir else None
    return rs.start_client(lab, "client1", *args, log=log, env=env)


def test_restarts_and_an_upgrade_lose_no_packet(teredo, tmp_path):
    lab, procs = teredo.lab, teredo.procs
    address = teredo.addresses["client1"]
    # Trust first (bubbles, §5.2.6): from here on both directions are fast path.
    warm = lab.ping("client1", teredo.addresses["client2"], count=3, deadline=10)
    assert warm.ok, warm
    upgrade = another_build(tmp_path / "bpf-next")
    pinger = rs.start_pinger(lab, "client1", teredo.addresses["client2"], interval=INTERVAL,
                             seconds=PING_SECONDS, log="pinger.log")
    time.sleep(1.0)

    # 1. The upgrade: SIGHUP, then the next version adopts.
    first = procs["client1"]
    os.kill(first.pid, signal.SIGHUP)
    assert first.wait(timeout=15) == 0, first.output()[-2000:]
    [stopped] = cs.events(first, "client_stopped")
    assert stopped["kept_datapath"] is True and stopped["signal"] == "SIGHUP"
    kept = cs.leftovers(lab, "client1")
    assert kept["tunnel"] and kept["xdp"] and not kept["control_socket"], kept
    second = _start_again(lab, "client1-second.log", upgrade, "--restart-safe")
    cs.wait_ready(second)
    [adopted] = cs.events(second, "datapath_adopted")
    assert sorted(adopted["replaced"]) == ["tc_ingress", "tc_tx", "xdp_rx"], adopted
    [qualified] = cs.events(second, "qualified")
    assert qualified["resumed"] is True and qualified["address"] == address
    assert not cs.events(second, "address_changed"), "the address never changed"
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["adopted"] and info["address"] == address, info

    # 2. The crash: SIGKILL, then the same build adopts the programs as they run
    #    (crash-only: a plain `attach` adopts; --restart-safe only adds SIGHUP's
    #    hand-over, so the last SIGTERM below is tested on a plain client).
    os.kill(second.pid, signal.SIGKILL)
    second.wait(timeout=10)
    third = _start_again(lab, "client1-third.log", upgrade)
    cs.wait_ready(third)
    [adopted] = cs.events(third, "datapath_adopted")
    assert adopted["replaced"] is None, adopted
    assert cs.events(third, "qualified")[0]["address"] == address
    procs["client1"] = third

    result = rs.pinger_result(pinger, timeout=PING_SECONDS + 30)
    print(f"\n100/s ping across an upgrade (SIGHUP) and a crash (SIGKILL): {result['sent']} "
          f"sent, {result['received']} answered, max RTT {result['max_rtt_ms']} ms",
          file=sys.stderr)
    assert result["sent"] >= PING_SECONDS / INTERVAL * 0.8, result
    assert result["lost_at_s"] == [] and result["received"] == result["sent"], result
    # client2 never noticed: its peer entry for client1 is the same one, still trusted.
    peers = {row["address"]: row for row in cs.query(lab, "client2", "peers")}
    assert peers[address]["trusted"], peers


def test_sigterm_still_removes_everything_the_persistent_tunnel_included(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    assert "persist on" in lab.run("client1", "ip", "-d", "link", "show", "dev", "teredo").stdout
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.output()[-2000:]
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
