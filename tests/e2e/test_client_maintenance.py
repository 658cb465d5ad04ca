"""Maintenance (RFC 4380 §5.2.7) with short timers: one client lives through it all.

client1 (behind nat1) is given two servers: 192.0.2.99, where nothing answers, then
miredo-server's 192.0.2.1. In order, in this module (the tests are its chapters):
- it fails over to the second server (no reply after 3 tries of 1 s);
- a conntrack flush on the NAT keeps the mapping (MASQUERADE keeps the port): the
  address stays, the hook is not run;
- the NAT's public address changes: the next refresh sees a new mapping, the
  address is replaced, the hook runs with OLD_ADDRESS, the peers are flushed;
- the server stops: every server fails, the client goes offline, the address and
  routes go, the hook runs "down";
- the server comes back: qualified again, without a restart.
"""

import ipaddress
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.address import TeredoAddress

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

DEAD_SERVER = "192.0.2.99"   # routed nowhere: RSs get no answer
NEW_PUBLIC = "198.51.100.2"  # nat1's second address, on the same link to inet


@pytest.fixture(scope="module")
def hooks():
    d = cs.WorldReadableDir()
    yield d
    d.close()


@pytest.fixture(scope="module")
def teredo(make_module_lab, hooks):
    require_tool("miredo-server")
    lab = make_module_lab("server", "client1")
    server = miredo.start_server(lab)
    hook = hooks.script("env-hook", cs.ENV_HOOK)
    client = cs.start_client(lab, "client1", "--server", DEAD_SERVER, "--server", cs.SERVER,
                             "--hook", hook, server=None)
    return SimpleNamespace(lab=lab, server=server, client=client, first=None)


def _status(teredo):
    return cs.status(teredo.lab, "client1")[1]


def test_several_servers_are_tried_in_order(teredo):
    info = _status(teredo)
    assert info["state"] == "qualified" and info["server"] == cs.SERVER
    assert info["servers"] == [DEAD_SERVER, cs.SERVER]
    [lost] = cs.events(teredo.client, "no_reply_from_server")
    assert lost["server"] == DEAD_SERVER and lost["tries"] == 3
    [failover] = cs.events(teredo.client, "server_failover")
    assert (failover["old"], failover["new"]) == (DEAD_SERVER, cs.SERVER)
    teredo.first = info["address"]


def test_a_conntrack_flush_that_keeps_the_mapping_changes_nothing(teredo):
    lab = teredo.lab
    counters0 = cs.query(lab, "client1", "counters")["slow_path"]
    lab.conntrack_flush("nat1")
    cs.wait_until("two more refreshes answered",
                  lambda: cs.query(lab, "client1", "counters")["slow_path"]["ra_received"]
                  >= counters0["ra_received"] + 2, timeout=10, proc=teredo.client)
    assert _status(teredo)["address"] == teredo.first
    assert len(cs.hook_runs(teredo.client)) == 1


def test_a_new_public_address_gives_a_new_teredo_address(teredo):
    lab = teredo.lab
    # A ping first, so that there is a peer to flush.
    lab.ping("client1", "2001:0:c000:201:0:f227:3fff:fffe", count=1, deadline=1)
    assert cs.query(lab, "client1", "peers")
    lab.run("nat1", "ip", "addr", "add", f"{NEW_PUBLIC}/28", "dev", "eth0")
    lab.run("nat1", "iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-o", "eth0",
            "-j", "SNAT", "--to-source", NEW_PUBLIC)
    lab.conntrack_flush("nat1")
    info = cs.wait_until("a new address", lambda: (lambda s: s if s["address"] not in
                         (None, teredo.first) else None)(_status(teredo)),
                         timeout=10, proc=teredo.client)
    assert info["state"] == "qualified"
    address = TeredoAddress.parse(info["address"])
    assert address.client == ipaddress.IPv4Address(NEW_PUBLIC)
    assert info["mapped"].startswith(f"{NEW_PUBLIC}:")
    # The tunnel carries the new address only.
    shown = lab.run("client1", "ip", "-6", "-o", "addr", "show", "dev", "teredo",
                    "scope", "global").stdout
    assert info["address"] in shown and teredo.first not in shown
    # Miredo's hook contract: "up" again, with the previous values as OLD_*.
    runs = cs.hook_runs(teredo.client)
    assert [r["STATE"] for r in runs] == ["up", "up"]
    assert runs[1]["ADDRESS"] == info["address"]
    assert (runs[1]["OLD_STATE"], runs[1]["OLD_ADDRESS"]) == ("up", teredo.first)
    [changed] = [e for e in cs.events(teredo.client, "address_changed")
                 if e["old"] == teredo.first]
    assert changed["new"] == info["address"]
    # §5.2.7: trust built on the old address is gone.
    assert cs.query(lab, "client1", "peers") == []
    teredo.second = info["address"]


def test_the_server_stops_and_the_client_goes_offline(teredo):
    lab = teredo.lab
    teredo.server.stop()
    # A refresh (2 s) unanswered 3 times (1 s), then the other server 3 times.
    info = cs.wait_until("offline", lambda: (lambda s: s if s["state"] == "offline" else None)(
        _status(teredo)), timeout=15, proc=teredo.client)
    assert info["address"] is None and info["mapped"] is None
    code, _ = cs.status(lab, "client1")
    assert code == 3
    assert lab.run("client1", "ip", "-6", "-o", "addr", "show", "dev", "teredo",
                   "scope", "global").stdout == ""
    assert lab.run("client1", "ip", "-6", "route", "show", "default").stdout == ""
    assert cs.hook_runs(teredo.client)[-1]["STATE"] == "down"
    assert cs.events(teredo.client, "lost_connectivity")
    [hint] = cs.events(teredo.client, "no_server_answered")
    assert "xdp-teredo server" in hint["hint"]


def test_the_server_comes_back_and_so_does_the_address(teredo):
    lab = teredo.lab
    teredo.server = miredo.start_server(lab)
    info = cs.wait_until("qualified again", lambda: (
        lambda s: s if s["state"] == "qualified" else None)(_status(teredo)),
        timeout=15, proc=teredo.client)
    assert info["server"] == cs.SERVER
    assert info["mapped"].startswith(f"{NEW_PUBLIC}:")
    assert cs.hook_runs(teredo.client)[-1]["STATE"] == "up"
    assert teredo.client.alive()
    assert lab.ping("client1", info["address"], count=1, deadline=3).ok

