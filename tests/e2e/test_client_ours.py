"""Two of our clients, behind one NAT (client1) and two stacked NATs (client2),
qualified with our own server (`xdp-teredo server`). client1 decapsulates in XDP (`--xdp-mode native`),
client2 in tc (`--xdp-mode off`).

client1 starts the conversation: its packet waits in the queue while it bubbles
directly and through the server (RFC 4380 §5.2.6); client2 answers the forwarded
bubble (§5.2.3), which makes client1 trust it and flush the queue; client2's data
path learns client1 from the first data packet, whose source embeds its UDP source.
Then pings both ways and a TCP transfer both ways, which the counters of both data
paths must show in the kernel and not in Python. Last, expiry: a conversation that
only the data path sees (its last_rx/last_tx) keeps the peers; silence removes them.
"""

import sys
from types import SimpleNamespace

import pytest

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

NBYTES = 4_000_000
UDP_GSO_PORT = 5203
CLIENTS = ("client1", "client2")
EXPIRY = 5   # --peer-expiry: idle peers are forgotten after 5 s instead of 300


@pytest.fixture(scope="module")
def teredo(make_module_lab):
    require_tool("ethtool")
    lab = make_module_lab("server", *CLIENTS)
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    # The inbound guard is stateful by default: each opens the port its TCP sink
    # listens on in test_tcp_both_ways_never_touches_python (tcp_transfer).
    allow = {"client1": ["tcp/5202"], "client2": ["tcp/5201", f"udp/{UDP_GSO_PORT}"]}
    features = {role: _features(lab, role) for role in CLIENTS}
    # client1 decapsulates in XDP, client2 in tc (--xdp-mode off): every test
    # below runs across the two receive paths.
    decap = {"client1": list(cs.XDP), "client2": ["--xdp-mode", "off"]}
    procs = {role: cs.start_client(lab, role, "--peer-expiry", str(EXPIRY),
                                   *[a for port in allow[role] for a in ("--allow", port)],
                                   *decap[role], wait=False)
             for role in CLIENTS}
    for proc in procs.values():
        cs.wait_ready(proc)
    addresses = {role: cs.status(lab, role)[1]["address"] for role in CLIENTS}
    return SimpleNamespace(lab=lab, server=server, procs=procs, addresses=addresses,
                           features=features)


def _features(lab, role, dev="eth0"):
    """`ethtool -k`: every offload feature of the device, as the kernel reports it."""
    out = lab.run(role, "ethtool", "-k", dev).stdout
    return dict(line.split(":", 1) for line in out.splitlines()[1:] if ":" in line)


def _peers(lab, role):
    return {row["address"]: row for row in cs.query(lab, role, "peers")}


def test_both_qualify_with_our_server(teredo):
    lab = teredo.lab
    for role in CLIENTS:
        code, info = cs.status(lab, role)
        assert code == 0 and info["server"] == cs.SERVER
        assert info["mapped"].startswith(f"{lab[role].public_ipv4}:")
    assert teredo.addresses["client1"] != teredo.addresses["client2"]


def test_xdp_mode_off_decapsulates_in_tc_and_attaches_no_xdp(teredo):
    lab = teredo.lab
    one, two = cs.status(lab, "client1")[1], cs.status(lab, "client2")[1]
    assert one["decap"] == "xdp" and one["xdp"] in ("native", "generic"), one
    assert two["decap"] == "tc" and two["xdp"] is None, two
    assert "prog/xdp" not in lab.run("client2", "ip", "-d", "link", "show", "eth0").stdout
    assert "prog/xdp" in lab.run("client1", "ip", "-d", "link", "show", "eth0").stdout
    # XDP on a veth: the client says what would cost less; in tc mode it has nothing to say.
    [hint] = cs.events(teredo.procs["client1"], "decap_hint")
    assert hint["kind"] == "veth" and "--xdp-mode off" in hint["hint"], hint
    assert cs.events(teredo.procs["client2"], "decap_hint") == []


def test_the_first_packet_waits_for_the_bubbles_then_both_ways_work(teredo):
    lab, a1, a2 = teredo.lab, teredo.addresses["client1"], teredo.addresses["client2"]
    slow0 = cs.query(lab, "client1", "counters")["slow_path"]
    there = lab.ping("client1", a2, count=3, deadline=10)
    assert there.ok and there.replies_from == [a2], there
    slow1 = cs.query(lab, "client1", "counters")["slow_path"]
    moved = cs.delta(slow0, slow1)
    # §5.2.6: one direct and one indirect bubble, then the queued echo request was
    # sent by the control plane once client2 answered; the rest took the fast path.
    assert moved.get("bubble_direct", 0) >= 1 and moved.get("bubble_indirect", 0) >= 1, moved
    assert moved.get("sent_direct", 0) >= 1, moved
    assert moved.get("tun_read", 0) <= 3, moved
    back = lab.ping("client2", a1, count=3, deadline=10)
    assert back.ok and back.replies_from == [a1], back
    # client1 installed client2 itself; client2's data path learned client1 (§5.2.3).
    one, two = _peers(lab, "client1")[a2], _peers(lab, "client2")[a1]
    assert one["trusted"] and not one["learned"]
    assert two["trusted"] and two["learned"]
    assert one["mapped"].startswith(f"{lab['client2'].public_ipv4}:")
    assert two["mapped"].startswith(f"{lab['client1'].public_ipv4}:")
    assert one["rx_packets"] >= 5 and one["tx_packets"] >= 5


def _takes_offloads(teredo):
    """Each client's entry for the other, once both say it takes offloads."""
    a1, a2 = teredo.addresses["client1"], teredo.addresses["client2"]
    rows = (_peers(teredo.lab, "client1").get(a2), _peers(teredo.lab, "client2").get(a1))
    return rows if all(r and r["takes_offloads"] for r in rows) else None


def test_each_asks_the_other_and_both_take_offloads(teredo):
    """The offload probe (client/csum_detour.py): each client sends the other an
    echo request whose checksum is left to offload; the other's kernel
    decapsulates and takes it as it is, answers, and the entry says so. From
    then on nothing to that peer takes the checksum veth."""
    lab = teredo.lab
    cs.wait_until("both peers take offloads", lambda: _takes_offloads(teredo), timeout=10)
    for role in CLIENTS:
        slow = cs.query(lab, role, "counters")["slow_path"]
        assert slow.get("offload_probe_answered", 0) == 1, slow
        assert slow.get("offload_probe_sent", 0) >= 1, slow
        [told] = cs.events(teredo.procs[role], "peer_takes_offloads")
        other = teredo.addresses["client2" if role == "client1" else "client1"]
        assert told["peer"] == other, told


def test_tcp_both_ways_never_touches_python(teredo):
    lab, a1, a2 = teredo.lab, teredo.addresses["client1"], teredo.addresses["client2"]
    cs.wait_until("both peers take offloads", lambda: _takes_offloads(teredo), timeout=10)
    before = {role: (cs.query(lab, role, "stats"), cs.query(lab, role, "counters")["slow_path"])
              for role in CLIENTS}
    there = cs.tcp_transfer(lab, "client1", "client2", a2, nbytes=NBYTES)
    back = cs.tcp_transfer(lab, "client2", "client1", a1, nbytes=NBYTES, port=5202)
    assert there["from"] == a1 and back["from"] == a2
    for role in CLIENTS:
        stats0, slow0 = before[role]
        stats1 = cs.query(lab, role, "stats")
        slow = cs.delta(slow0, cs.query(lab, role, "counters")["slow_path"])
        fast = cs.delta(cs.packets(stats0), cs.packets(stats1))
        fast_bytes = cs.delta(cs.nbytes(stats0), cs.nbytes(stats1))
        print(f"\n{role}: fast path packets {fast}\n{role}: fast path bytes {fast_bytes}"
              f"\n{role}: slow path {slow}", file=sys.stderr)
        assert fast_bytes.get("encapsulated", 0) >= NBYTES, fast_bytes
        assert fast_bytes.get("decapsulated", 0) >= NBYTES, fast_bytes
        # A veth NIC, but a peer that takes offloads: the host's TCP GSO packets
        # left whole, no checksum veth (docs/client.md): on average well over one
        # 1280-byte segment per encapsulated packet.
        assert fast_bytes.get("tx_csum_detour", 0) == 0, fast_bytes
        assert fast.get("encapsulated", 0) < NBYTES // 1220 // 2, fast
        python = slow.get("tun_read", 0) + slow.get("udp_received", 0)
        assert python < 50, slow
        assert slow.get("sent_direct", 0) + slow.get("delivered", 0) == 0, slow


def test_the_nics_keep_their_offloads_while_we_run(teredo):
    """Issue 13: every feature `ethtool -k eth0` lists is what it was before we
    attached (TSO and tx checksumming on); only our checksum veth's sending end has
    its tx checksumming off."""
    lab = teredo.lab
    for role in CLIENTS:
        now = _features(lab, role)
        assert now == teredo.features[role], role
        assert now["tcp-segmentation-offload"].split()[0] == "on"
        assert _features(lab, role, "teredo-ck0")["tx-checksumming"].split()[0] == "off"


# A UDP_SEGMENT sender (one sendmsg, many datagrams: a UDP GSO packet on the tun's
# egress) and a receiver that counts intact datagrams.
UDP_GSO_SOURCE = """
import socket, sys, time
address, port, segment, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, segment)  # UDP_SEGMENT
for i in range(count):
    s.sendto(b"".join(bytes([(i * 8 + k) & 0xFF]) * segment for k in range(8)), (address, port))
    time.sleep(0.01)  # measured is correctness, not rate: no socket-buffer overruns
"""
UDP_GSO_SINK = """
import socket, sys, time
address, port, segment = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for the bursts
s.bind((address, port)); s.settimeout(3)
print("listening", flush=True)
good = bad = 0
try:
    while True:
        data = s.recv(65535)
        if len(data) == segment and data == data[:1] * segment:
            good += 1
        else:
            bad += 1
except socket.timeout:
    pass
print(f"good={good} bad={bad}", flush=True)
"""


def test_a_udp_gso_sender_reaches_our_peer_in_finished_datagrams(teredo):
    """One sendmsg with UDP_SEGMENT is one GSO packet on the tun's egress. Even to
    a peer that takes offloads it goes round the checksum veth, which cuts it
    into datagrams with finished checksums, each encapsulated on its way back in
    (encapsulated whole, the kernel could not cut it: bpf/client.c
    tx_needs_detour). The receiver's kernel checks every checksum: what arrives
    intact was finished right."""
    lab, a2 = teredo.lab, teredo.addresses["client2"]
    segment, sends = 1000, 50
    stats0 = cs.query(lab, "client1", "stats")
    sink = lab.spawn("client2", sys.executable, "-c", UDP_GSO_SINK, a2, str(UDP_GSO_PORT),
                     str(segment), log="udp-gso-sink.log")
    sink.wait_for_output("listening", timeout=10)
    res = lab.run("client1", sys.executable, "-c", UDP_GSO_SOURCE, a2, str(UDP_GSO_PORT),
                  str(segment), str(sends), check=False)
    assert res.returncode == 0, res.stderr
    sink.wait_for_output(r"good=\d+", timeout=15)
    counts = dict(kv.split("=") for kv in sink.output().split()[-2:])
    good, bad = int(counts["good"]), int(counts["bad"])
    moved = cs.delta(cs.packets(stats0), cs.packets(cs.query(lab, "client1", "stats")))
    print(f"\nudp gso: good={good} bad={bad} client1 fast path {moved}", file=sys.stderr)
    assert bad == 0
    assert good >= 0.9 * sends * 8, (good, moved)   # a lab veth may drop a few
    assert _takes_offloads(teredo)
    assert moved.get("tx_csum_detour", 0) >= sends // 2, moved
    assert moved.get("encapsulated", 0) >= good, moved


def test_peers_busy_on_the_fast_path_stay_and_idle_ones_expire(teredo):
    lab, a1, a2 = teredo.lab, teredo.addresses["client1"], teredo.addresses["client2"]
    # Twice the expiry of traffic that Python never sees: only the BPF timestamps
    # (merged every --sync-interval) keep the peers alive.
    slow0 = cs.query(lab, "client1", "counters")["slow_path"]
    busy = lab.ping("client1", a2, count=2 * EXPIRY + 1, interval=1.0, deadline=2 * EXPIRY + 5)
    assert busy.ok, busy
    slow = cs.delta(slow0, cs.query(lab, "client1", "counters")["slow_path"])
    # (The kernel's own multicast, MLD reports, is all the tun gives Python.)
    assert slow.get("tun_read", 0) == slow.get("drop_tx_multicast", 0), slow
    assert not {"sent_direct", "bubble_direct", "bubble_indirect", "delivered"} & set(slow), slow
    assert not cs.events(teredo.procs["client1"], "peer_expired")
    assert a2 in _peers(lab, "client1") and a1 in _peers(lab, "client2")
    # Then silence: both sides forget (client2's entry was learned by its data path).
    for role, other in (("client1", a2), ("client2", a1)):
        cs.wait_until(f"{role} forgets its peer", lambda: other not in _peers(lab, role),
                      timeout=EXPIRY + 5, proc=teredo.procs[role])
        assert [e["peer"] for e in cs.events(teredo.procs[role], "peer_expired")] == [other]
    # And they find each other again.
    again = lab.ping("client2", a1, count=2, deadline=10)
    assert again.ok, again
