"""Our client and Miredo's, each behind its NAT(s), and a native IPv6 host.

client1 runs `xdp-teredo attach` behind nat1; client2 runs Miredo behind two stacked
NATs (nat2b inside nat2a); both qualify with Debian's miredo-server. They reach each
other both ways (RFC 4380 §5.2.6: bubbles direct and indirect, §5.2.3: trust), a TCP
transfer runs both ways, and the data path's counters prove that the bulk never
touched Python. Then the IPv6-only v6host behind a Miredo relay: the direct
connectivity test (§5.2.9) goes through the server, the relay's answer becomes the
peer's mapping, and the traffic moves to the fast path too.
"""

from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.address import TeredoAddress

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

NBYTES = 4_000_000


@pytest.fixture(scope="module")
def teredo(make_module_lab):
    for tool in ("miredo", "miredo-server", "ethtool"):
        require_tool(tool)
    lab = make_module_lab("server", "client1", "client2", "v6host")
    server = miredo.start_server(lab)
    features = _features(lab, "client1")
    # The inbound guard is stateful by default: open the port Miredo's side
    # connects to in test_a_tcp_transfer_both_ways_takes_the_fast_path.
    ours = cs.start_client(lab, "client1", "--allow", "tcp/5202", *cs.XDP, wait=False)
    theirs = miredo.start_client(lab, "client2", server.primary)
    cs.wait_ready(ours)
    _, info = cs.status(lab, "client1")
    return SimpleNamespace(lab=lab, ours=ours, theirs=theirs, address=info["address"],
                           features=features)


def _features(lab, role, dev="eth0"):
    """`ethtool -k`: every offload feature of the device, as the kernel reports it."""
    out = lab.run(role, "ethtool", "-k", dev).stdout
    return dict(line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)


def _links(lab, role):
    return lab.run(role, "ip", "-o", "link", "show").stdout


def _snapshot(lab):
    return (cs.packets(cs.query(lab, "client1", "stats")),
            cs.query(lab, "client1", "counters")["slow_path"])


def _peer(lab, address):
    rows = {row["address"]: row for row in cs.query(lab, "client1", "peers")}
    return rows.get(str(address))


def test_miredo_reaches_us_first_and_the_data_path_learns_it(teredo):
    lab, theirs = teredo.lab, teredo.theirs
    stats0, slow0 = _snapshot(lab)
    back = lab.ping("client2", teredo.address, count=3, deadline=10)
    assert back.ok and back.replies_from == [teredo.address], back
    stats1, slow1 = _snapshot(lab)
    # Its indirect bubble came through the server to our slow path and we answered
    # it with a direct bubble, which opened nat1 for it (§5.2.3).
    assert cs.delta(slow0, slow1).get("bubble_direct", 0) >= 1, cs.delta(slow0, slow1)
    # Its echo requests embed their UDP source: the XDP program learned the peer and
    # the requests never reached Python; our replies went out through tc.
    peer = _peer(lab, theirs.address)
    decoded = TeredoAddress.parse(str(theirs.address))
    assert peer is not None and peer["trusted"]
    assert peer["mapped"] == f"{decoded.client}:{decoded.port}"
    assert decoded.client == lab["client2"].public_ipv4   # the outer NAT, nat2a
    moved = cs.delta(stats0, stats1)
    assert moved.get("decapsulated", 0) >= 3 and moved.get("encapsulated", 0) >= 3, moved
    assert cs.delta(slow0, slow1).get("delivered", 0) == 0


def test_we_reach_miredo(teredo):
    there = teredo.lab.ping("client1", teredo.theirs.address, count=3, deadline=10)
    assert there.ok and there.replies_from == [str(teredo.theirs.address)], there


def test_our_nic_keeps_its_offloads_and_our_checksum_veth_finishes_checksums(teredo):
    """Nobody in the lab touched an offload (docs/client.md, "Checksums over a
    veth"), and our client does not touch its NIC's either (issue 13): every feature
    `ethtool -k eth0` lists is what it was before we attached (TSO on). What is left
    to offload takes the client's own checksum veth, whose sending end alone has
    tx checksumming off."""
    lab = teredo.lab
    now = _features(lab, "client1")
    assert now == teredo.features
    assert now["tx-checksumming"].split()[0] == "on"
    assert now["tcp-segmentation-offload"].split()[0] == "on"
    assert _features(lab, "client2")["tx-checksumming"].split()[0] == "on"
    assert "teredo-ck0" in _links(lab, "client1") and "teredo-ck1" in _links(lab, "client1")
    assert _features(lab, "client1", "teredo-ck0")["tx-checksumming"].split()[0] == "off"
    assert '"event": "nic_offloads_off"' not in teredo.ours.output()


def test_a_tcp_transfer_both_ways_takes_the_fast_path(teredo):
    lab = teredo.lab
    raw0 = cs.query(lab, "client1", "stats")
    slow0 = cs.query(lab, "client1", "counters")["slow_path"]
    there = cs.tcp_transfer(lab, "client1", "client2", teredo.theirs.address, nbytes=NBYTES)
    back = cs.tcp_transfer(lab, "client2", "client1", teredo.address, nbytes=NBYTES,
                           port=5202)
    assert there["from"] == teredo.address and back["from"] == str(teredo.theirs.address)
    raw1 = cs.query(lab, "client1", "stats")
    slow1 = cs.query(lab, "client1", "counters")["slow_path"]
    fast = cs.delta(cs.packets(raw0), cs.packets(raw1))
    fast_bytes = cs.delta(cs.nbytes(raw0), cs.nbytes(raw1))
    slow = cs.delta(slow0, slow1)
    print(f"\nfast path packets: {fast}\nfast path bytes: {fast_bytes}"
          f"\nslow path (control plane): {slow}")
    # Both transfers' data went through the kernel: out through tc, in through XDP
    # (per wire packet). On our veth NIC the host's TCP left its checksums (and
    # segmentation) to offload: round the checksum veth, encapsulated per finished
    # packet when it came back, which Miredo's userspace decapsulation accepted.
    assert fast_bytes.get("encapsulated", 0) >= NBYTES, fast_bytes
    assert fast_bytes.get("tx_csum_detour", 0) >= NBYTES, fast_bytes
    assert fast_bytes.get("decapsulated", 0) >= NBYTES, fast_bytes
    assert fast.get("decapsulated", 0) >= NBYTES // 1220, fast
    assert fast.get("rx_redirected", 0) == fast.get("decapsulated", 0)
    # What Python saw meanwhile: refreshes every 2 s and little else.
    python = slow.get("tun_read", 0) + slow.get("udp_received", 0)
    assert python < 50, slow
    assert slow.get("sent_direct", 0) + slow.get("delivered", 0) == 0, slow


def test_miredo_is_asked_and_keeps_the_checksum_veth(teredo):
    """The offload probe (client/csum_detour.py): our echo request with its
    checksum left to offload reaches Miredo as it left, unfinished; Miredo
    writes it to its tun, whose kernel drops it for its checksum, so no reply
    comes. After every try the peer still takes the checksum veth: the TCP
    transfer above needed it."""
    lab = teredo.lab
    cs.wait_until("three offload probes", lambda: cs.query(lab, "client1", "counters")[
        "slow_path"].get("offload_probe_sent", 0) >= 3, timeout=15)
    slow = cs.query(lab, "client1", "counters")["slow_path"]
    assert slow.get("offload_probe_answered", 0) == 0, slow
    peer = _peer(lab, teredo.theirs.address)
    assert peer is not None and peer["trusted"] and not peer["takes_offloads"], peer
    assert cs.events(teredo.ours, "peer_takes_offloads") == []


def test_a_native_ipv6_host_through_the_echo_test_and_a_relay(teredo):
    lab = teredo.lab
    miredo.start_relay(lab, "relay")
    v6host = lab["v6host"].ipv6[0]
    stats0, slow0 = _snapshot(lab)
    out = lab.ping("client1", v6host, count=3, deadline=10)
    assert out.ok and out.replies_from == [str(v6host)], out
    _, slow1 = _snapshot(lab)
    # §5.2.9: an echo with our nonce through our server to native IPv6; the answer
    # came back through the relay, whose address became the peer's mapping.
    assert cs.delta(slow0, slow1).get("echo_sent", 0) >= 1
    peer = _peer(lab, v6host)
    assert peer is not None and peer["trusted"] and peer["relay"], peer
    assert peer["mapped"].startswith(f"{lab['relay'].ipv4[0]}:")
    # From then on the host's packets move in the kernel.
    more = lab.ping("client1", v6host, count=5, deadline=10, interval=0.05)
    assert more.ok
    stats2, _ = _snapshot(lab)
    moved = cs.delta(stats0, stats2)
    assert moved.get("encapsulated", 0) >= 5 and moved.get("decapsulated", 0) >= 5, moved
    # And the host can start a conversation too (the relay knows us now).
    back = lab.ping("v6host", teredo.address, count=3, deadline=10)
    assert back.ok, back


def test_peers_command_lists_them(teredo):
    res = cs.cli(teredo.lab, "client1", "peers")
    assert res.returncode == 0
    assert str(teredo.theirs.address) in res.stdout
    assert str(teredo.lab["v6host"].ipv6[0]) in res.stdout


def test_our_exit_leaves_the_nic_as_it_was_and_removes_the_checksum_veth(teredo):
    """Last in the module: it stops our client."""
    teredo.ours.stop()
    assert teredo.ours.returncode == 0, teredo.ours.output()[-2000:]
    assert _features(teredo.lab, "client1") == teredo.features
    assert "teredo-ck" not in _links(teredo.lab, "client1")
