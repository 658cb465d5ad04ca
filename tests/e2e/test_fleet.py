"""`make fleet-demo` (tools/fleet_demo.py): a relay fleet behind BGP (BIRD) and ECMP
survives the SIGKILL of its busiest relay within 5 s, with traffic on >= 2 relays."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import require_tool
from xdp_teredo.lab import netns

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fleet_demo(*args) -> str:
    for tool in ("bird", "birdc", "ethtool"):
        require_tool(tool)
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "fleet_demo.py"),
                          "--max-failover", "5", *args],
                         capture_output=True, text=True, timeout=420, cwd=ROOT)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-4000:]
    steps = re.findall(r"^\[(\d+)/(\d+)\]", out, re.M)
    assert steps and steps[-1][0] == steps[-1][1], "every step ran"
    # core learnt 2001::/32 from the three relays over BGP and installed ECMP.
    assert len(re.findall(r"relay\d\s+BGP\s+---\s+up\s+\S+\s+Established", out)) == 3
    before, after = out.split("SIGKILL", 1)
    assert len(re.findall(r"nexthop via 2001:db8:3:\d::1 dev to-relay\d", before)) == 3
    assert len(re.findall(r"nexthop via 2001:db8:3:\d::1 dev to-relay\d", after)) == 2
    # The relay announces through its table while it serves; its crash took the route.
    assert "2001::/32 dev teredo proto 144" in before
    assert re.search(r"table 100 .*removed by the kernel\)\n\s+\(empty\)", after)
    # Traffic on at least two relays, and the must-show figure.
    spread = re.search(r"traffic seen on (\d) of 3 relays", out)
    assert spread and int(spread.group(1)) >= 2
    took = re.search(r"^failover: ([\d.]+) s$", out, re.M)
    assert took and float(took.group(1)) <= 5.0
    # Nothing of the lab is left.
    prefixes = set(re.findall(r"(xt-[0-9a-f]{6}-)", out))
    assert prefixes
    for prefix in prefixes:
        assert netns.list_netns(prefix) == []
    return out


def test_fleet_demo_fails_over_within_5_s_with_traffic_on_two_relays(require_bcc):
    """What `make fleet-demo` runs."""
    out = _fleet_demo()
    assert re.search(r"client1 \(xdp-teredo\): 2001:0:", out)


def test_fleet_demo_with_a_miredo_client(require_bcc):
    """Miredo's client behind one NAT, ours behind two: the same fleet serves both."""
    require_tool("miredo")
    out = _fleet_demo("--client1", "miredo")
    assert re.search(r"client1 \(miredo\): 2001:0:", out)
    assert re.search(r"client2 \(xdp-teredo\): 2001:0:", out)


def _announced(lab) -> str:
    """Table 100 of the relay host ("" also when the kernel has no such table yet)."""
    return lab.run("relay", "ip", "-6", "route", "show", "table", "100", "proto", "144",
                   check=False).stdout


@pytest.mark.lab_hosts("relay", "v6host")
def test_the_announcement_lives_exactly_as_long_as_the_relay(lab, require_bcc):
    """--announce-table: the route is there while the relay serves; a clean stop
    removes it; a SIGKILL removes it too (the kernel, with the tun: docs/scaling.md)."""
    import json
    import signal

    from xdp_teredo.lab import roles

    assert _announced(lab) == ""
    relay = roles.start_relay(lab, "xdp-teredo", "relay", "--announce-table", "100")
    assert _announced(lab).startswith("2001::/32 dev teredo ")
    status = json.loads(roles.cli(lab, "relay", "relay", "--status").stdout)
    assert status["announce"] == {"table": 100, "prefix": "2001::/32", "proto": 144,
                                  "published": True}
    assert relay.process.stop() == 0            # SIGTERM: the teardown withdraws
    assert _announced(lab) == ""
    assert '"announcement in table 100"' not in relay.process.output()   # no cleanup_failed

    relay = roles.start_relay(lab, "xdp-teredo", "relay", "--announce-table", "100")
    assert _announced(lab).startswith("2001::/32 dev teredo ")
    os.kill(relay.process.pid, signal.SIGKILL)
    relay.process.wait(timeout=10)
    assert _announced(lab) == ""
