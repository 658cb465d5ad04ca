"""Two of our clients on one LAN behind one NAT that does not hairpin (RFC 4380 §5.2.8).

lan1 and lan2 sit on a bridge behind nat3 (xdp_teredo/lab/shared_lan.py), a Linux
MASQUERADE with a firewall: both qualify with the same public address, and a packet
to that address from inside never comes back in. Their mapped addresses are useless
to each other; local discovery (224.0.0.253) finds the local ones, and the fast path
carries ping and TCP between them, both ways. Offloads as the kernel sets them.
"""

from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.lab.shared_lan import NAT_ADDRESS, add_shared_lan
from xdp_teredo.teredo.address import TeredoAddress

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

NBYTES = 2_000_000


@pytest.fixture(scope="module")
def lan(make_module_lab):
    for tool in ("miredo-server",):
        require_tool(tool)
    lab = make_module_lab("server")
    add_shared_lan(lab)
    miredo.start_server(lab)
    procs = {role: cs.start_client(lab, role, "--allow", "tcp/5201", wait=False)
             for role in ("lan1", "lan2")}
    addresses = {}
    for role, proc in procs.items():
        cs.wait_ready(proc)   # qualified, and the fast path loaded (client/handover.py)
        addresses[role] = cs.status(lab, role)[1]["address"]
    return SimpleNamespace(lab=lab, procs=procs, address=addresses)


def _peer(lab, role, address):
    rows = {row["address"]: row for row in cs.query(lab, role, "peers")}
    return rows.get(str(address))


def test_both_are_behind_the_same_public_address(lan):
    for role in ("lan1", "lan2"):
        assert str(TeredoAddress.parse(lan.address[role]).client) == NAT_ADDRESS


def test_they_find_each_other_on_the_link(lan):
    lab = lan.lab
    for role, other in (("lan1", "lan2"), ("lan2", "lan1")):
        cs.wait_until(f"{role} trusts {other} at its local address",
                      lambda: (_peer(lab, role, lan.address[other]) or {}).get("trusted"),
                      timeout=15)
        peer = _peer(lab, role, lan.address[other])
        assert peer["mapped"].startswith(f"{lab[other].ipv4[0]}:"), peer
        assert peer["in_datapath"], peer
    slow = [cs.query(lab, r, "counters")["slow_path"] for r in ("lan1", "lan2")]
    assert sum(s.get("discovery_bubble_received", 0) for s in slow) >= 1, slow


def test_ping_both_ways(lan):
    lab = lan.lab
    there = lab.ping("lan1", lan.address["lan2"], count=3, deadline=10)
    assert there.ok and there.replies_from == [lan.address["lan2"]], there
    back = lab.ping("lan2", lan.address["lan1"], count=3, deadline=10)
    assert back.ok and back.replies_from == [lan.address["lan1"]], back


def test_tcp_both_ways_in_the_fast_path(lan):
    lab = lan.lab
    before = cs.nbytes(cs.query(lab, "lan1", "stats"))
    cs.tcp_transfer(lab, "lan1", "lan2", lan.address["lan2"], nbytes=NBYTES)
    cs.tcp_transfer(lab, "lan2", "lan1", lan.address["lan1"], nbytes=NBYTES)
    moved = cs.delta(before, cs.nbytes(cs.query(lab, "lan1", "stats")))
    assert moved.get("encapsulated", 0) >= NBYTES and moved.get("decapsulated", 0) >= NBYTES, moved
