"""`make demo`'s walk-through (tools/demo.py) runs to the end and says what it did."""

import os
import re
import subprocess
import sys

import pytest

from xdp_teredo.lab import netns

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_walks_through_every_role_and_leaves_nothing(require_bcc):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    steps = re.findall(r"^\[(\d+)/(\d+)\]", out, re.M)
    assert steps and steps[-1][0] == steps[-1][1], "every step ran"
    # The client behind two NATs qualified, and its address names the outer NAT.
    assert re.search(r"qualified in [\d.]+ s: 2001:0:c000:201:", out)
    assert re.search(r"^\s+client\s+198\.51\.100\.17$", out, re.M)
    # Both pings answered in full; the relay took tc on its two veths, and said why.
    assert len(re.findall(r"5/5 replies", out)) == 2
    assert re.search(r"hook\s+eth0: tc \(eth0 is a veth", out), out
    assert re.search(r"hook\s+eth1: tc \(eth1 is a veth", out), out
    assert re.search(r"[\d,]+ Mbit/s over Teredo", out)
    # The namespaces it showed are gone (other labs may come and go meanwhile).
    lab_prefixes = set(re.findall(r"ip netns exec (xt-[0-9a-f]{6}-)", out))
    assert lab_prefixes
    for prefix in lab_prefixes:
        assert netns.list_netns(prefix) == []
