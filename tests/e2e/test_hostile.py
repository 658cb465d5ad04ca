"""Hostile input against a client and the server (docs/reliability.md, "Hostile input").

Our server; client1 (behind nat1) and client2 (behind two NATs), which trust each
other; "public", from where bounded floods of spoofed packets come
(xdp_teredo/lab/flood.py, a raw socket: any IPv4 source). While client2 pings
client1 at 100 packets per second over the fast path:

- client1 gets forged indirect bubbles, Router Solicitations and echo tests, spoofed
  from the server's address and port (the only source its NAT lets in unasked): its
  XDP program admits a bounded share to the control plane (rx_slow_path_*), whose
  CPU and memory stay bounded, and the pings go on;
- the server gets Router Solicitations, bubbles towards client1 and echo tests from
  spoofed sources: it never sends a source more bytes than it received from it
  (measured with iptables counters per address), its CPU and memory stay bounded,
  and both clients stay qualified (their refreshes go on) and reach each other.

Each flood against the client: as fast as the generator goes (~100,000 packets/s
here), at most FLOOD_SECONDS and FLOOD_COUNT. Against the server, SERVER_FLOOD_PPS:
the server has no XDP in front of it, and one Python process reads about 20,000
datagrams/s; beyond that the kernel drops what its socket cannot hold, legitimate
RSs with the rest (docs/reliability.md says what that means for clients). The
figures are printed for docs/reliability.md.
"""

import ipaddress
import json
import sys
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import flood
from xdp_teredo.teredo import constants as C

from tests.conftest import require_tool
from tests.e2e import client_support as cs
from tests.e2e import resilience_support as rs

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 4.0
FLOOD_COUNT = 200_000
PING_INTERVAL = 0.01
SERVER_FLOOD_PPS = 10_000
# The lab's short timers (client_support.FAST) but RFC 4380's RS timeout (§5.2.1: 4 s,
# 3 tries): the floods share the lab's two CPUs and its router with the clients'
# refreshes, and a client that loses three RSs in 1-s windows goes offline, as it
# should; what is measured here is the data path's protection, not that.
CLIENT_ARGS = ("--qualification-timeout", "4")
# What a client logs when its qualification state moves: said when a ping fails.
STATE_EVENTS = {"qualified", "no_reply_from_server", "lost_connectivity", "offline",
                "address_changed", "state_changed", "no_server_answered", "interface_down"}
# Spoofed sources for the server: a /28 of the documentation range that no lab link
# uses (inet owns an address in every /28 it serves and drops packets "from" it);
# inet has no route back there, so the server's answers hit nobody.
VICTIMS = "203.0.113.64/28"


@pytest.fixture(scope="module")
def teredo(make_module_lab):
    require_tool("ethtool")
    require_tool("iptables")
    lab = make_module_lab("server", "client1", "client2", "public")
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    procs = {role: cs.start_client(lab, role, *CLIENT_ARGS, wait=False)
             for role in ("client1", "client2")}
    for proc in procs.values():
        cs.wait_ready(proc)
    status = {role: cs.status(lab, role)[1] for role in procs}
    assert lab.ping("client2", status["client1"]["address"], count=3, deadline=10).ok
    return SimpleNamespace(lab=lab, server=server, procs=procs, status=status)


def _ping_ok(teredo, ping) -> None:
    """Every echo of the pinger (client2 -> client1) came back, or say what the
    clients went through meanwhile."""
    if ping["received"] >= 0.99 * ping["sent"]:
        return
    states = {role: [(e["timestamp"], e["event"]) for e in cs.events(proc)
                     if e.get("event") in STATE_EVENTS]
              for role, proc in teredo.procs.items()}
    raise AssertionError(f"pings lost: {ping}; client state changes: {states}")


def _flood(lab, kind, *args):
    res = lab.run("public", *flood.argv(kind, "--duration", FLOOD_SECONDS, "--count", FLOOD_COUNT,
                                        *args), timeout=FLOOD_SECONDS + 60)
    return json.loads(res.stdout)


def test_a_flooded_client_stays_bounded_and_its_peers_keep_working(teredo):
    lab, status = teredo.lab, teredo.status
    one = status["client1"]
    mapping = one["mapped"]
    stats0 = cs.packets(cs.query(lab, "client1", "stats"))
    slow0 = cs.query(lab, "client1", "counters")["slow_path"]
    usage0 = rs.Usage.of(one["pid"])
    pinger = rs.start_pinger(lab, "client2", one["address"], interval=PING_INTERVAL,
                             seconds=3 * FLOOD_SECONDS + 4, log="pinger-client.log")
    server = f"{cs.SERVER}:{C.TEREDO_PORT}"
    floods = [
        _flood(lab, "indirect-bubble", "--to", mapping, "--from", server,
               "--target", one["address"], "--pool", 64),
        _flood(lab, "rs", "--to", mapping, "--from", server),
        _flood(lab, "echo", "--to", mapping, "--from", server, "--target", one["address"]),
    ]
    ping = rs.pinger_result(pinger, timeout=60)
    usage = rs.Usage.of(one["pid"]).since(usage0)
    stats = cs.delta(stats0, cs.packets(cs.query(lab, "client1", "stats")))
    slow = cs.delta(slow0, cs.query(lab, "client1", "counters")["slow_path"])
    sent = sum(f["sent"] for f in floods)
    figures = {"floods": [{k: f[k] for k in ("kind", "sent", "pps", "seconds")} for f in floods],
               "ping": {k: ping[k] for k in ("sent", "received", "max_rtt_ms")},
               "client1": usage, "xdp": stats, "slow_path": slow}
    print(f"\nclient flood: {json.dumps(figures)}", file=sys.stderr)

    # What reached Python is bounded by the per-source buckets (every packet came
    # "from the server"; two kinds: RAs apart), whatever the flood's size.
    admitted = slow.get("udp_received", 0)
    bound = 2 * (C.SLOW_PATH_SOURCE_BURST + C.SLOW_PATH_SOURCE_PPS * usage["wall_s"]) + 50
    assert admitted <= bound, (admitted, bound)
    limited = stats.get("rx_slow_path_source_limit", 0) + stats.get("rx_slow_path_limit", 0)
    assert limited >= sent // 4, (limited, sent)
    # Each answered forged bubble is one direct bubble at most: no amplification.
    assert slow.get("bubble_direct", 0) <= admitted
    assert usage["cpu_share"] < 0.5, usage
    assert usage["rss_kb_growth"] < 8 * 1024, usage
    # The peer never noticed: every echo through the fast path came back.
    _ping_ok(teredo, ping)
    assert cs.status(lab, "client1")[0] == 0


def _accounting(lab, action: str) -> None:
    """iptables counters in the server, per address of VICTIMS, both ways."""
    for host in ipaddress.IPv4Network(VICTIMS).hosts():
        lab.run("server", "iptables", "-w", action, "INPUT", "-s", str(host), "-p", "udp",
                "--dport", str(C.TEREDO_PORT))
        lab.run("server", "iptables", "-w", action, "OUTPUT", "-d", str(host), "-p", "udp",
                "--sport", str(C.TEREDO_PORT))


def _counted(lab) -> dict:
    """{address: [bytes received from it, bytes sent to it]} (IP bytes)."""
    out = {}
    for chain, index in (("INPUT", 0), ("OUTPUT", 1)):
        table = lab.run("server", "iptables", "-w", "-L", chain, "-v", "-x", "-n").stdout
        for line in table.splitlines()[2:]:
            # pkts bytes (no target) prot opt in out source destination ...
            f = line.split()
            if len(f) >= 8 and f[2] in ("udp", "17"):
                address = f[6] if chain == "INPUT" else f[7]
                out.setdefault(address, [0, 0])[index] += int(f[1])
    return out


def test_a_flooded_server_amplifies_nothing_and_stays_bounded(teredo):
    lab, status = teredo.lab, teredo.status
    server_pid = json.loads(cs.cli(lab, "server", "server", "--status", check=True).stdout)["pid"]
    _accounting(lab, "-A")
    usage0 = rs.Usage.of(server_pid)
    counters0 = json.loads(cs.cli(lab, "server", "server", "--status").stdout)["counters"]
    to = f"{cs.SERVER}:{C.TEREDO_PORT}"
    pinger = rs.start_pinger(lab, "client2", status["client1"]["address"], interval=PING_INTERVAL,
                             seconds=3 * FLOOD_SECONDS + 4, log="pinger-server.log")
    rate = ("--rate", SERVER_FLOOD_PPS, "--sources", 8)
    floods = [
        _flood(lab, "rs", "--to", to, "--from-net", VICTIMS, *rate),
        _flood(lab, "bubble", "--to", to, "--from-net", VICTIMS, *rate,
               "--target", status["client1"]["address"]),
        _flood(lab, "echo", "--to", to, "--from-net", VICTIMS, *rate,
               "--target", "2001:db8:1::2"),
    ]
    ping = rs.pinger_result(pinger, timeout=60)
    usage = rs.Usage.of(server_pid).since(usage0)
    counters = json.loads(cs.cli(lab, "server", "server", "--status").stdout)["counters"]
    counted = _counted(lab)
    flows = {a: v for a, v in counted.items() if v[0]}
    received = sum(v[0] for v in flows.values())
    answered = sum(v[1] for v in flows.values())
    figures = {"floods": [{k: f[k] for k in ("kind", "sent", "pps", "seconds")} for f in floods],
               "ping": {k: ping[k] for k in ("sent", "received", "max_rtt_ms")},
               "server": usage, "bytes_in": received, "bytes_out": answered,
               "worst_ratio": max(v[1] / v[0] for v in flows.values()),
               # How much of the flood the one Python process read (the rest the
               # kernel dropped, socket full): a capacity figure, load-dependent.
               "read_share": round((counters["received"] - counters0["received"])
                                   / sum(f["sent"] for f in floods), 3),
               "counters": {k: counters[k] - counters0.get(k, 0) for k in counters
                            if isinstance(counters[k], int)}}
    print(f"\nserver flood: {json.dumps(figures)}", file=sys.stderr)

    assert flows, counted
    # Not one source got back more bytes than it sent (RFC 4380 §7, RFC 5991 §2).
    for address, (got, gave) in flows.items():
        assert gave <= got, (address, got, gave)
    assert usage["rss_kb_growth"] < 16 * 1024, usage
    assert usage["cpu_share"] < 1.0, usage
    # Both clients kept their qualification through the flood (their RAs have a
    # bucket of their own at the server) and reached each other all along.
    _ping_ok(teredo, ping)
    for role, proc in teredo.procs.items():
        assert not cs.events(proc, "lost_connectivity"), role
        assert cs.status(lab, role)[1]["address"] == status[role]["address"]
