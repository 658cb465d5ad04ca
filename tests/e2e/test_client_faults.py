"""Faults under a running client, each with a defined outcome (docs/reliability.md).

Our server, client1 (behind nat1; restart-safe, keeps root, a peer table of 8, and
a pin root that is no bpffs) and client2 (behind two NATs), and the "public" host,
from where spoofed packets come (xdp_teredo/lab/flood.py). In order:

- no bpffs where the maps would be pinned: said once, nothing pinned, counters
  still served over the control socket;
- the NIC goes down and comes back: noticed, and the client asks its server at once;
- the NIC's IPv4 address changes: a new socket on the new address, the data path
  told, a new mapping, peers reachable again;
- the peer map is full (learned peers flood it): the LRU evicts, the evicted peer
  comes back through the slow path, nothing crashes;
- the "server" answers with garbage (spoofed from its address): counted, ignored,
  the next valid RA keeps the client qualified;
- someone deletes the tunnel: the client stops with a clear error and removes the rest;
- after a restart-safe stop (SIGHUP), `detach` removes what was kept (tunnel
  included); any next `attach` would adopt it instead (test_crash_only.py).
"""

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

from xdp_teredo.datapath.layout import Kind, Reason
from xdp_teredo.lab import flood

from tests.conftest import require_tool
from tests.e2e import client_support as cs
from tests.e2e import resilience_support as rs

pytestmark = pytest.mark.e2e

PEER_MAX = 8


@pytest.fixture(scope="module")
def teredo(make_module_lab, tmp_path_factory):
    require_tool("ethtool")
    lab = make_module_lab("server", "client1", "client2", "public")
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    not_bpffs = tmp_path_factory.mktemp("pins")   # a plain directory
    one = rs.start_client(lab, "client1", "--restart-safe", "--user", "root", *cs.XDP,
                          "--peer-max", str(PEER_MAX), log="client1.log",
                          env={"XDP_TEREDO_PIN_ROOT": not_bpffs})
    two = cs.start_client(lab, "client2", wait=False)
    for proc in (one, two):
        cs.wait_ready(proc)
    t = SimpleNamespace(lab=lab, procs={"client1": one, "client2": two}, pin_root=str(not_bpffs))
    t.address = lambda role: cs.status(lab, role)[1]["address"]
    assert lab.ping("client1", t.address("client2"), count=3, deadline=10).ok
    return t


def _counters(lab, role="client1"):
    return cs.query(lab, role, "counters")


def _flood(lab, kind, *args, cpu=None):
    """flood.py in "public"; on `cpu` if given (taskset)."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    res = lab.run("public", *pin, *flood.argv(kind, *args), timeout=60)
    return json.loads(res.stdout)


def _mapping(lab, role="client1"):
    host, port = cs.status(lab, role)[1]["mapped"].split(":")
    return f"{host}:{port}"


def test_no_bpffs_nothing_is_pinned_and_the_counters_are_still_served(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    # Under `ip netns exec` /sys is a fresh sysfs: no bpffs at /sys/fs/bpf either.
    assert lab.run("client1", "stat", "-f", "-c", "%T", "/sys/fs/bpf").stdout.strip() != "bpf_fs"
    [warning] = cs.events(proc, "maps_not_pinned")
    assert warning["pin_root"] == teredo.pin_root and "no bpffs" in warning["reason"]
    assert os.listdir(teredo.pin_root) == []
    res = cs.cli(lab, "client1", "stats", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["encapsulated"] > 0


def test_the_nic_going_down_and_up_makes_the_client_ask_its_server_at_once(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    before = _counters(lab)["slow_path"]
    lab.run("client1", "ip", "link", "set", "eth0", "down")
    cs.wait_until("interface_down logged", lambda: cs.events(proc, "interface_down"),
                  timeout=5, proc=proc)
    lab.run("client1", "ip", "link", "set", "eth0", "up")
    # Taking a link down flushes its routes; DHCP or ifupdown would put it back.
    lab.run("client1", "ip", "route", "replace", "default", "via", str(lab["client1"].gateway))
    up_at = time.monotonic()
    cs.wait_until("interface_up logged", lambda: cs.events(proc, "interface_up"),
                  timeout=5, proc=proc)
    after = cs.wait_until(
        "an RA answered the RS sent on interface_up",
        lambda: (lambda c: c if c.get("ra_received", 0) > before.get("ra_received", 0)
                 and c.get("interface_refresh", 0) > before.get("interface_refresh", 0)
                 else None)(_counters(lab)["slow_path"]), timeout=10, proc=proc)
    assert after["rs_sent"] > before["rs_sent"]
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["interface_up"], info
    assert lab.ping("client1", teredo.address("client2"), count=3, deadline=10).ok
    print(f"\nNIC down/up: qualified and pinging {time.monotonic() - up_at:.2f} s after up")


def test_a_new_ipv4_address_moves_the_socket_and_the_data_path(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    old_local = cs.status(lab, "client1")[1]["local"]
    lab.run("client1", "ip", "addr", "flush", "dev", "eth0")
    lab.run("client1", "ip", "addr", "add", "10.1.0.3/24", "dev", "eth0")
    lab.run("client1", "ip", "route", "replace", "default", "via", str(lab["client1"].gateway))
    [moved] = cs.wait_until("interface_address_changed logged",
                            lambda: cs.events(proc, "interface_address_changed"),
                            timeout=5, proc=proc)
    assert moved["old"] == old_local and moved["new"].startswith("10.1.0.3:"), moved
    info = cs.wait_until(
        "qualified from the new address",
        lambda: (lambda s: s if s[1] and s[1]["state"] == "qualified"
                 and s[1]["local"].startswith("10.1.0.3:") else None)(cs.status(lab, "client1")),
        timeout=15, proc=proc)[1]
    # The data path recognises our traffic by the new address (else nothing would
    # be decapsulated below).
    before = cs.packets(cs.query(lab, "client1", "stats"))
    ping = lab.ping("client1", teredo.address("client2"), count=3, deadline=15)
    assert ping.ok, (ping, info)
    after = cs.packets(cs.query(lab, "client1", "stats"))
    assert after["decapsulated"] > before["decapsulated"]


def test_a_full_peer_map_evicts_and_the_evicted_peer_comes_back(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    peer = teredo.address("client2")
    assert peer in {row["address"] for row in cs.query(lab, "client1", "peers")
                    if row["in_datapath"]}
    # Echo requests from hundreds of Teredo addresses that all embed the server's
    # address and port, spoofed: the only source nat1 lets in unasked. Each is a
    # peer the data path learns (§5.2.3), in a table of 8. The kernel's LRU spares
    # entries used lately (client2's was), so it may take more than one round. And
    # it evicts per CPU: an entry stays on the list of the CPU that inserted it
    # until that CPU inserts again (kernel/bpf/bpf_lru_list.c), and a veth delivers
    # on the sender's CPU; so the rounds take each CPU in turn.
    cpus = sorted(os.sched_getaffinity(0))
    for round_ in range(4 * len(cpus)):
        sent = _flood(lab, "data", "--to", _mapping(lab), "--from", f"{cs.SERVER}:3544",
                      "--target", teredo.address("client1"), "--pool", "500", "--count", "500",
                      "--rate", "5000", cpu=cpus[round_ % len(cpus)])
        assert sent["sent"] == 500
        in_map = [row for row in cs.query(lab, "client1", "peers") if row["in_datapath"]]
        assert len(in_map) <= PEER_MAX, in_map
        if peer not in {row["address"] for row in in_map}:
            print(f"\nclient2's entry evicted in round {round_ + 1} (CPU {cpus[round_ % len(cpus)]})")
            break
    else:
        raise AssertionError(f"{peer} never evicted by {500 * 4 * len(cpus)} learned peers: "
                             f"{in_map}")
    ping = lab.ping("client1", peer, count=3, deadline=15)
    assert ping.ok, ping
    back = {row["address"]: row for row in cs.query(lab, "client1", "peers")}
    assert back[peer]["in_datapath"] and back[peer]["trusted"], back.get(peer)
    assert proc.alive()


def test_garbage_from_the_server_is_counted_and_ignored(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    address = teredo.address("client1")
    before = _counters(lab)
    stats0 = cs.packets(cs.query(lab, "client1", "stats"))
    ras = _flood(lab, "ra", "--to", _mapping(lab), "--from", f"{cs.SERVER}:3544",
                 "--count", "300", "--rate", "300", "--duration", "3")
    junk = _flood(lab, "garbage", "--to", _mapping(lab), "--from", f"{cs.SERVER}:3544",
                  "--count", "300", "--rate", "300", "--duration", "3")
    after = _counters(lab)
    stats1 = cs.packets(cs.query(lab, "client1", "stats"))
    ignored = sum(after["ra_ignored"].values()) - sum(before["ra_ignored"].values())
    limited = sum(stats1.get(k, 0) - stats0.get(k, 0) for k in stats1 if "limit" in k)
    malformed = sum(v for k, v in after["slow_path"].items() if k.startswith("drop_malformed")) \
        - sum(v for k, v in before["slow_path"].items() if k.startswith("drop_malformed"))
    dropped_in_xdp = sum(stats1[r.key] - stats0.get(r.key, 0) for r in Reason
                         if r.kind == Kind.DROP)
    print("\nforged RAs and garbage from the server's address:",
          {"xdp": cs.delta(stats0, stats1), "slow_path": cs.delta(before["slow_path"],
                                                                  after["slow_path"]),
           "ra_ignored": cs.delta(before["ra_ignored"], after["ra_ignored"])})
    # Every forged RA is ignored by the qualification or never reaches it; every
    # piece of garbage is dropped, in XDP or as malformed.
    assert ignored + limited >= ras["sent"] * 0.95, (ignored, limited, ras)
    assert malformed + dropped_in_xdp + limited >= junk["sent"] * 0.95, \
        (malformed, dropped_in_xdp, limited, junk)
    # And the real RAs kept coming and being taken (the forged ones stopped with the
    # flood, so any RA from now on is the server's): same address, still qualified.
    cs.wait_until("a real RA after the garbage",
                  lambda: _counters(lab)["slow_path"]["ra_received"]
                  > after["slow_path"]["ra_received"], timeout=5, proc=proc)
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["address"] == address, info
    assert not cs.events(proc, "lost_connectivity")


def test_deleting_the_tunnel_stops_the_client_cleanly(teredo):
    lab, proc = teredo.lab, teredo.procs["client2"]
    lab.run("client2", "ip", "link", "del", "teredo")
    assert proc.wait(timeout=15) == 1, proc.output()[-2000:]
    [event] = cs.events(proc, "tunnel_deleted")
    assert event["tunnel"] == "teredo"
    assert "xdp-teredo: error: tunnel teredo was deleted" in proc.output()
    assert cs.leftovers(lab, "client2") == cs.NOTHING_LEFT


def test_detach_removes_what_a_restart_safe_stop_kept(teredo):
    lab, proc = teredo.lab, teredo.procs["client1"]
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=15) == 0, proc.output()[-2000:]
    kept = cs.leftovers(lab, "client1")
    assert kept["tunnel"] and kept["xdp"], kept
    # (Any next `attach` would adopt it: tests/e2e/test_crash_only.py.)
    res = cs.cli(lab, "client1", "detach", "eth0")
    assert res.returncode == 0, res.stderr
    assert "removed tunnel teredo" in res.stdout, res.stdout
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
