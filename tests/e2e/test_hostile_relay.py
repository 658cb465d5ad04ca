"""Hostile input against our relay (docs/reliability.md, "Hostile input").

Our server, our relay, our client2 (behind two NATs) pinging the IPv6-only v6host
through the relay at 100 packets per second, and floods of spoofed packets from
"public" (xdp_teredo/lab/flood.py) at the relay's address and port:

- bubbles and Router Solicitations from many spoofed sources: the relay's XDP admits
  a bounded share to its control plane (rx_slow_path_*), whose CPU and memory stay
  bounded;
- data whose Teredo source does not embed its UDP source: refused in XDP, one
  relay_source_mismatch each (RFC 4380 §5.4.2), never seen by Python.

The pings must go on, and the relay must send nothing towards the spoofed sources
(it never sent them anything: §5.4.2 lets it ignore unknown clients).
"""

import json
import sys
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import flood, roles
from xdp_teredo.teredo import constants as C

from tests.e2e import client_support as cs
from tests.e2e import resilience_support as rs

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 4.0
FLOOD_COUNT = 200_000
# Spoofed sources: a /28 of the documentation range that no lab link uses (the
# router inet owns an address of every /28 it serves, and drops packets "from" it).
SOURCES = "203.0.113.64/28"


@pytest.fixture(scope="module")
def teredo(make_module_lab, require_bcc):
    lab = make_module_lab("server", "relay", "client2", "v6host", "public")
    server = roles.start_server(lab, "xdp-teredo")
    relay = roles.start_relay(lab, "xdp-teredo")
    client = roles.start_client(lab, "xdp-teredo", "client2", lab["server"].ipv4[0])
    native = str(lab["v6host"].ipv6[0])
    # The connectivity test (§5.2.9) and the relay's bubbles first: then fast path.
    assert lab.ping("client2", native, count=3, deadline=20).ok
    return SimpleNamespace(lab=lab, server=server, relay=relay, client=client, native=native)


def _flood(lab, kind, *args):
    res = lab.run("public", *flood.argv(kind, "--duration", FLOOD_SECONDS, "--count", FLOOD_COUNT,
                                        *args), timeout=FLOOD_SECONDS + 60)
    return json.loads(res.stdout)


def _stats(lab):
    return json.loads(cs.cli(lab, "relay", "stats", "--json", check=True).stdout)


def test_a_flooded_relay_stays_bounded_and_its_clients_keep_working(teredo):
    lab = teredo.lab
    relay = f"{lab['relay'].ipv4[0]}:{C.TEREDO_PORT}"
    pid = json.loads(cs.cli(lab, "relay", "relay", "--status", check=True).stdout)["pid"]
    usage0 = rs.Usage.of(pid)
    stats0, slow0 = _stats(lab), cs.query(lab, "relay", "counters")["slow_path"]
    pinger = rs.start_pinger(lab, "client2", teredo.native, interval=0.01,
                             seconds=3 * FLOOD_SECONDS + 4, log="pinger-relay.log")
    floods = {
        "bubble": _flood(lab, "bubble", "--to", relay, "--from-net", SOURCES, "--sources", 64,
                         "--target", teredo.native),
        "rs": _flood(lab, "rs", "--to", relay, "--from-net", SOURCES, "--sources", 64),
        # At a rate the lab's veths deliver whole (faster, the backlog of the relay's
        # veth drops some before any hook sees them), so that every one is counted.
        "mismatch": _flood(lab, "mismatch", "--to", relay, "--from-net", SOURCES,
                           "--sources", 64, "--target", teredo.native, "--rate", 20000),
    }
    ping = rs.pinger_result(pinger, timeout=60)
    usage = rs.Usage.of(pid).since(usage0)
    stats = {k: v - stats0[k] for k, v in _stats(lab).items()
             if isinstance(v, int) and v != stats0.get(k)}
    slow = cs.delta(slow0, cs.query(lab, "relay", "counters")["slow_path"])
    figures = {"floods": [{k: f[k] for k in ("kind", "sent", "pps", "seconds")}
                          for f in floods.values()],
               "ping": {k: ping[k] for k in ("sent", "received", "max_rtt_ms")},
               "relay": usage, "xdp": stats, "slow_path": slow}
    print(f"\nrelay flood: {json.dumps(figures)}", file=sys.stderr)

    # §5.4.2 in XDP: every mismatched packet dropped there, none reached Python.
    assert stats.get("relay_source_mismatch", 0) >= floods["mismatch"]["sent"] * 0.99, stats
    assert "drop_relay_source_mismatch" not in slow and "drop_teredo_source_mismatch" not in slow
    # Bubbles and RSs reached the control plane only as far as the buckets let them
    # (64 sources: the global bucket decides).
    limited = stats.get("rx_slow_path_source_limit", 0) + stats.get("rx_slow_path_limit", 0)
    admitted = slow.get("udp_received", 0)
    assert limited > 0, stats
    bound = (C.RELAY_SLOW_PATH_GLOBAL_BURST
             + C.RELAY_SLOW_PATH_GLOBAL_PPS * usage["wall_s"])
    assert admitted <= bound, (admitted, bound)
    assert usage["rss_kb_growth"] < 16 * 1024, usage
    assert usage["cpu_share"] < 1.0, usage
    # Nothing sent to the spoofed sources: unknown clients get no bubbles (§5.4.2).
    assert slow.get("bubble_direct", 0) + slow.get("bubble_indirect", 0) <= 10, slow
    # The client went on reaching v6host through the fast path.
    assert ping["received"] >= 0.99 * ping["sent"], ping
