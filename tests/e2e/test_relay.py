"""Our relay (`xdp-teredo relay`, RFC 4380 §5.4) in the lab, with Miredo as the clients.

miredo-server on "server"; Miredo clients behind one NAT (client1) and behind two
stacked NATs (client2); our relay on "relay" between the IPv4 internet (eth0) and
the IPv6-only v6host's network (eth1). Each client pings v6host and v6host pings
each client, which exercises the whole §5.4.1 dance: the relay bubbles the client
through its server, trusts the answer, flushes its queue and installs the client in
the BPF map. A TCP transfer from v6host to a client then shows the fast path (the
BPF counters) carrying the bulk, with almost nothing through the control plane.

Twice, because the lab's links are veths:
- as built (the veth peers of the relay's devices have no XDP program and GRO off):
  XDP-redirected frames would vanish there, so the relay must choose tc, and say so;
- with GRO on at those peers (`ethtool -K` in inet and v6host) and IPv4 forwarding
  on the relay's eth0 (the kernel's IPv4 fib lookup wants it): XDP both ways. Then
  GRO goes off again at v6host while traffic flows: the relay notices, stops
  redirecting into eth1, and the packets take the slow path instead of vanishing.

Checksum offload: a sender on this host hands its veth TCP/UDP checksums (and TSO
segments) to finish later, and over veths nobody ever does. The Miredo clients keep
their offloads as the kernel sets them: their UDP checksums arrive pending, and tc
sends those packets round the relay's checksum veth, which finishes them, and
decapsulates them on the way back (`relay_csum_detour`, relay.md). Native traffic
normally comes from other machines, complete; so the tc phase first runs with TX
offload off at v6host, as a remote host would look, then turns it on: its checksums
and TSO go round the checksum veth too, while the XDP phase runs with it on: XDP
completes the checksums itself (relay.md).

The relay pins its maps under a bpffs mounted outside /sys (`ip netns exec` hides
/sys/fs/bpf), so `xdp-teredo stats --json` reads them as it reads a client's.
"""

import json
import os
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.address import TeredoAddress

from tests.conftest import require_tool

pytestmark = pytest.mark.e2e

CLIENTS = ("client1", "client2")
XDP_TEREDO = os.path.join(os.path.dirname(sys.executable), "xdp-teredo")
TRANSFER_BYTES = 2_000_000

# Receives on [ADDRESS]:PORT until EOF and prints the byte count.
SINK = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(20)
print("listening", flush=True)
conn, _ = srv.accept()
conn.settimeout(20)
total = 0
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    total += len(chunk)
print("received", total, flush=True)
"""

# One 1440-byte ICMPv6 echo request to ADDRESS (the kernel fills in the checksum).
BIG_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.sendto(bytes([128, 0, 0, 0, 0, 1, 0, 1]) + b"m" * 1392, (sys.argv[1], 0))
"""

# Connects to [ADDRESS]:PORT and sends N bytes.
SOURCE = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(b"t" * int(sys.argv[3]))
s.close()
"""


@pytest.fixture(scope="module")
def pin_root(require_root):
    """A bpffs outside /sys, visible in every `ip netns exec` (mounts propagate in)."""
    path = f"/run/xt-relay-pins-{uuid.uuid4().hex[:8]}"
    os.makedirs(path)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    yield path
    subprocess.run(["umount", path], check=False)
    os.rmdir(path)


@pytest.fixture(scope="module")
def teredo(make_module_lab, pin_root):
    require_tool("miredo")
    require_tool("miredo-server")
    require_tool("ethtool")
    lab = make_module_lab("server", *CLIENTS, "v6host")
    _tx_offload(lab, "off", "v6host")
    server = miredo.start_server(lab, "server")
    clients = {role: miredo.start_client(lab, role, server.primary) for role in CLIENTS}
    return SimpleNamespace(lab=lab, server=server, clients=clients, pin_root=pin_root,
                           v6host=str(lab["v6host"].ipv6[0]))


SENDERS = ("client1", "client2", "v6host")


def _tx_offload(lab, state: str, *roles):
    """Checksum (and so TSO) offload on the uplink of these hosts."""
    for role in roles:
        lab.run(role, "ethtool", "-K", "eth0", "tx", state)


def _start_relay(t, log: str, *extra: str):
    proc = t.lab.spawn("relay", XDP_TEREDO, "--log-format", "json", "relay", "--ipv4-iface", "eth0",
                       "--ipv6-iface", "eth1", "--pin-root", t.pin_root, *extra,
                       # Pins are what this module reads; a relay that drops root has none.
                       "--user", "root", log=log)
    proc.wait_for_output(r'"event": "relay_started"', timeout=30)
    return proc


def _cli(t, *args) -> subprocess.CompletedProcess:
    return t.lab.run("relay", XDP_TEREDO, *args)


def _status(t) -> dict:
    return json.loads(_cli(t, "relay", "--status").stdout)


def _fast(t) -> dict:
    """The relay's BPF counters, as `xdp-teredo stats --json` reads them from the pins."""
    return json.loads(_cli(t, "stats", "--json", "--pin-root", t.pin_root).stdout)


def _slow(t) -> dict:
    """The control plane's own counters (control socket)."""
    out = t.lab.run("relay", sys.executable, "-c",
                    "import json; from xdp_teredo import client; print(json.dumps(client.query('counters')))")
    return json.loads(out.stdout)["slow_path"]


def _pings_both_ways(t):
    lab = t.lab
    for role, client in t.clients.items():
        there = lab.ping(role, t.v6host, count=3, deadline=10)
        assert there.ok and there.replies_from == [t.v6host], (role, there)
        back = lab.ping("v6host", str(client.address), count=3, deadline=10)
        assert back.ok and back.replies_from == [str(client.address)], (role, back)


def _transfer(t, role: str, port: int, size: int = TRANSFER_BYTES) -> int:
    """TCP from v6host to the client's Teredo address; the bytes that arrived."""
    lab, address = t.lab, str(t.clients[role].address)
    sink = lab.spawn(role, sys.executable, "-c", SINK, address, str(port), log=f"sink-{role}-{port}.log")
    sink.wait_for_output("listening", timeout=10)
    lab.run("v6host", sys.executable, "-c", SOURCE, address, str(port), str(size), timeout=60)
    return int(sink.wait_for_output(r"received (\d+)", timeout=30).group(1))


def _check_fast_path_carried_the_transfer(t, role: str, port: int):
    fast_before, slow_before = _fast(t), _slow(t)
    assert _transfer(t, role, port) == TRANSFER_BYTES
    fast_after, slow_after = _fast(t), _slow(t)

    def grew(before, after, key):
        return after.get(key, 0) - before.get(key, 0)

    encap_bytes = fast_after["bytes"]["encapsulated"] - fast_before["bytes"]["encapsulated"]
    decap = grew(fast_before, fast_after, "decapsulated")
    slow = grew(slow_before, slow_after, "tun_received") + grew(slow_before, slow_after, "udp_received")
    # Every byte of the transfer left the relay encapsulated by BPF (GRO may merge
    # segments, so bytes, not packets, are what adds up), the ACKs came back
    # decapsulated by BPF, and the control plane saw (nearly) none of it.
    assert encap_bytes >= TRANSFER_BYTES, (encap_bytes, fast_after)
    assert decap >= 50, (decap, fast_after)
    assert slow <= 3, (slow, slow_after)
    peer = next(p for p in json.loads(_cli(t, "peers", "--json").stdout)
                if p["address"] == str(t.clients[role].address))
    assert peer["in_datapath"] and peer["trusted"] and peer["tx_bytes"] >= TRANSFER_BYTES


# --------------------------------------------------------------------- as built: tc


@pytest.fixture(scope="module")
def tc_relay(teredo):
    proc = _start_relay(teredo, "relay-tc.log")
    yield proc
    proc.stop()
    assert proc.returncode == 0, proc.output()[-2000:]


def test_veths_get_tc(teredo, tc_relay):
    """Under auto a veth gets tc (XDP there would cost its peer GSO), and where XDP
    could not redirect anyway the egress says why (GRO at the peer)."""
    status = _status(teredo)
    assert {h["interface"]: h["hook"] for h in status["hooks"]} == {"eth0": "tc", "eth1": "tc"}
    for hook in status["hooks"]:
        assert f"{hook['interface']} is a veth: XDP there" in hook["why"], hook
    assert [e["xdp_target"] for e in status["egress"]] == [False, False]
    assert all("GRO" in e["why"] for e in status["egress"]), status["egress"]
    # ... and the log says so, once per device: a choice, not a fallback.
    said = [json.loads(line) for line in tc_relay.output().splitlines()
            if '"event": "relay_hook"' in line]
    assert {(w["interface"], w["hook"], w["level"]) for w in said} == \
        {("eth0", "tc", "info"), ("eth1", "tc", "info")}
    # Nothing of XDP on the devices, our tc filter on both.
    links = teredo.lab.run("relay", "ip", "-d", "link", "show").stdout
    assert "xdp" not in links
    for dev in ("eth0", "eth1"):
        filters = teredo.lab.run("relay", "tc", "filter", "show", "dev", dev, "ingress").stdout
        assert "tc_teredo_relay" in filters, filters


def test_clients_and_v6host_reach_each_other_through_tc(teredo, tc_relay):
    before = _fast(teredo)
    _pings_both_ways(teredo)
    after = _fast(teredo)
    # 2 clients x 3 echoes each way: at least the echo requests/replies of the
    # steady state went through BPF (the very first may wait for the bubbles).
    assert after["decapsulated"] - before["decapsulated"] >= 8, after
    assert after["encapsulated"] - before["encapsulated"] >= 8, after
    # The Miredo clients' UDP checksums arrive pending (offloads as the kernel set
    # them): round the checksum veth, then decapsulated; none left to the stack.
    assert after["relay_csum_detour"] - before["relay_csum_detour"] >= 8, after
    assert after["relay_offload_pending"] == before["relay_offload_pending"], after
    # The first packet to each client took the §5.4.1 way: bubbles, then trust.
    slow = _slow(teredo)
    assert slow["bubble_indirect"] >= 2 and slow["peer_trusted"] >= 2, slow
    # `stats --json` reads the same counters from the relay's control socket (no
    # --pin-root) as from its pinned maps.
    by_socket = json.loads(_cli(teredo, "stats", "--json").stdout)
    by_pins = _fast(teredo)
    assert (by_socket["decapsulated"], by_socket["encapsulated"]) == \
        (by_pins["decapsulated"], by_pins["encapsulated"]), (by_socket, by_pins)
    rows = {p["address"]: p for p in json.loads(_cli(teredo, "peers", "--json").stdout)}
    for role, client in teredo.clients.items():
        decoded = TeredoAddress.from_ipv6(client.address)
        row = rows[str(client.address)]
        # The mapping is the outermost NAT's, as the address embeds (§5.4.2).
        assert row["mapped"] == f"{teredo.lab[role].public_ipv4}:{decoded.port}", row
        assert row["trusted"] and row["in_datapath"]


def test_packets_above_the_teredo_mtu_get_packet_too_big(teredo, tc_relay):
    """RFC 4380 §5.1.2: clients have a 1280-byte MTU. A bigger native packet is left
    to the stack (tx_too_big), which forwards it into the tun (MTU 1280) and so
    answers Packet Too Big: the sender learns the MTU, nothing vanishes."""
    lab, client = teredo.lab, str(teredo.clients["client2"].address)
    assert "mtu 1280" not in lab.run("v6host", "ip", "-6", "route", "get", client).stdout
    before = _fast(teredo)
    lab.run("v6host", sys.executable, "-c", BIG_ECHO, client)
    deadline = time.monotonic() + 5
    while "mtu 1280" not in lab.run("v6host", "ip", "-6", "route", "get", client).stdout:
        assert time.monotonic() < deadline, "no Packet Too Big reached v6host"
        time.sleep(0.1)
    assert _fast(teredo)["tx_too_big"] - before["tx_too_big"] == 1


def test_tcp_transfer_takes_the_tc_fast_path(teredo, tc_relay):
    _check_fast_path_carried_the_transfer(teredo, "client1", 5001)


def test_tc_sends_offloads_of_local_senders_round_the_checksum_veth(teredo, tc_relay):
    """Checksums and TSO left to offload by senders on this host: tc cannot finish
    them for good (the skb keeps its offload state), so they go out of the relay's
    checksum veth, which finishes and segments them, and tc takes them when they
    come back in; the transfer arrives intact, and nothing is left to the stack."""
    _tx_offload(teredo.lab, "on", *SENDERS)
    before = _fast(teredo)
    size = 300_000
    assert _transfer(teredo, "client1", 5003, size) == size
    after = _fast(teredo)
    # v6host's segments (GSO units) and the Miredo client's ACKs (pending UDP
    # checksums) alike.
    assert after["relay_csum_detour"] - before["relay_csum_detour"] >= 50, after
    assert after["relay_offload_pending"] == before["relay_offload_pending"], after
    assert after["encapsulated"] - before["encapsulated"] >= size // 1220, after


# --------------------------------------------------------------------- with GRO: XDP


@pytest.fixture(scope="module")
def xdp_relay(teredo, tc_relay):
    lab = teredo.lab
    tc_relay.stop()
    _tx_offload(lab, "on", *SENDERS)  # as a local sender's packets come: XDP copes
    # The other ends of the relay's veths: inet's to-relay and v6host's eth0.
    lab.run("inet", "ethtool", "-K", "to-relay", "gro", "on")
    lab.run("v6host", "ethtool", "-K", "eth0", "gro", "on")
    lab.run("relay", "sysctl", "-q", "-w", "net.ipv4.conf.eth0.forwarding=1")
    # Its devices are veths, where auto takes tc (datapath/redirect.py): forced.
    proc = _start_relay(teredo, "relay-xdp.log", "--path", "xdp")
    yield proc
    proc.stop()
    assert proc.returncode == 0, proc.output()[-2000:]


def test_gro_at_the_peers_lets_xdp_redirect(teredo, xdp_relay):
    status = _status(teredo)
    assert {h["interface"]: h["hook"] for h in status["hooks"]} == {"eth0": "xdp", "eth1": "xdp"}
    assert all(e["takes_xdp_redirects"] and e["xdp_target"] for e in status["egress"]), status
    links = teredo.lab.run("relay", "ip", "-d", "link", "show").stdout
    assert links.count("prog/xdp") == 2, links


def test_clients_and_v6host_reach_each_other_through_xdp(teredo, xdp_relay):
    before = _fast(teredo)
    _pings_both_ways(teredo)
    after = _fast(teredo)
    assert after["decapsulated"] - before["decapsulated"] >= 8, after
    assert after["encapsulated"] - before["encapsulated"] >= 8, after


def test_tcp_transfer_takes_the_xdp_fast_path(teredo, xdp_relay):
    """With TX offload on at v6host: XDP completes the checksums it was left."""
    _check_fast_path_carried_the_transfer(teredo, "client2", 5002)


def test_gro_switched_off_under_it_is_never_a_black_hole(teredo, xdp_relay):
    lab = teredo.lab
    lab.run("v6host", "ethtool", "-K", "eth0", "gro", "off")
    deadline = time.monotonic() + 15
    while True:
        egress = {e["interface"]: e for e in _status(teredo)["egress"]}
        if not egress["eth1"]["xdp_target"]:
            break
        assert time.monotonic() < deadline, egress
        time.sleep(0.5)
    assert egress["eth1"]["takes_xdp_redirects"] is False and egress["eth0"]["xdp_target"]
    assert '"event": "xdp_target_changed"' in xdp_relay.output()
    before = _fast(teredo)
    there = lab.ping("client1", teredo.v6host, count=3, deadline=10)
    assert there.ok, there
    after = _fast(teredo)
    # XDP still runs on eth0, but leaves packets for eth1 to the stack, which
    # delivers them; v6host's answers still leave by XDP through eth0.
    assert after["relay_egress_not_xdp"] - before["relay_egress_not_xdp"] >= 3, after
    assert after["encapsulated"] - before["encapsulated"] >= 3, after
