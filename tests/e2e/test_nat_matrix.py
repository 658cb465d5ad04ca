"""The NAT interop matrix (issue 11): every NAT kind x every pair of implementations,
ping, TCP and UDP both ways; each cell's outcome goes to docs/interop.json and
docs/interop.md (tools/interop.py) before anything is asserted, so a run that
fails still leaves an honest page.

What is asserted:
- wherever our client is the NAT'd end: ping both ways, through a peer of either
  implementation or through either relay (but a first contact from behind a
  symmetric NAT to a Miredo client, which Miredo cannot take: only "back");
- our client behind two symmetric NATs and our public client: ping and TCP both ways;
- our client behind the UPnP NAT (client1, one NAT: tools/interop.py PLACEMENT):
  ping and TCP both ways with every far end, a Miredo client included;
- a Miredo client behind two remapping ("open") NATs reaches the native host
  through our relay, both ways (the issue's first observation);
- wherever Miredo's own pair (the reference column, or Miredo's relay) works,
  the same cell with ours in Miredo's place at the far end works too; a Miredo
  client that contacts our client works both ways even behind a symmetric NAT,
  where Miredo <-> Miredo does not.

The lab leaves the NICs' offloads as the kernel sets them, and so does our client: on
a veth, what the host left to offload goes round its own checksum veth before it is
encapsulated (net/csum_veth.py).
"""

import ipaddress
import json
import sys

import pytest

from tools import interop
from xdp_teredo.lab import roles
from xdp_teredo.teredo.peer_model import teredo_parts

pytestmark = pytest.mark.e2e

PUBLIC = "public"
TCP_PORT, UDP_PORT = 5301, 5302
ALLOW = ("--allow", f"tcp/{TCP_PORT}", "--allow", f"udp/{UDP_PORT}")

# A one-shot TCP sink that answers with what it received, and its client.
TCP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(1); s.settimeout(25)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(10); data = b""
while len(data) < 100000:
    chunk = c.recv(65536)
    if not chunk: break
    data += chunk
c.sendall(data[:100]); c.close()
"""
TCP_SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(bytes(range(100)) * 1000)
c.settimeout(10); back = c.recv(100)
sys.exit(0 if back == bytes(range(100)) else 1)
"""
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1]))); s.settimeout(25)
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(2000)
    s.sendto(data, peer)
"""
UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(1)
for _ in range(8):
    s.sendto(b"teredo", (sys.argv[1], int(sys.argv[2])))
    try:
        if s.recvfrom(100)[0] == b"teredo": sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"""


@pytest.fixture(scope="module", params=interop.ROWS)
def row_lab(request, make_module_lab, require_bcc):
    kind = request.param
    host, nats = interop.placement(kind)
    lab = make_module_lab("server", "relay", host, PUBLIC, "v6host",
                          nat={nat: kind for nat in nats})
    return kind, lab


def _ping(lab, src, dst) -> bool:
    return lab.ping(src, str(dst), count=3, deadline=12, interval=0.3).ok


def _tcp(lab, src, dst_host, address) -> bool:
    sink = lab.spawn(dst_host, sys.executable, "-c", TCP_SINK, str(TCP_PORT),
                     log=f"tcp-{dst_host}-{len(lab._procs)}.log")
    try:
        sink.wait_for_output("listening", timeout=10)
        res = lab.run(src, sys.executable, "-c", TCP_SOURCE, str(address), str(TCP_PORT),
                      check=False, timeout=40)
        return res.returncode == 0
    finally:
        sink.stop()


def _udp(lab, src, dst_host, address) -> bool:
    echo = lab.spawn(dst_host, sys.executable, "-c", UDP_ECHO, str(UDP_PORT),
                     log=f"udp-{dst_host}-{len(lab._procs)}.log")
    try:
        echo.wait_for_output("listening", timeout=10)
        res = lab.run(src, sys.executable, "-c", UDP_SEND, str(address), str(UDP_PORT),
                      check=False, timeout=30)
        return res.returncode == 0
    finally:
        echo.stop()


def _other_mappings(lab, host: str) -> int:
    """How many peers our daemon in `host` has in its BPF table at a mapping other
    than their address embeds (trusted on proof)."""
    res = roles.cli(lab, host, "peers", "--json")
    rows = json.loads(res.stdout) if res.returncode == 0 else []
    rows = rows.get("peers", []) if isinstance(rows, dict) else rows
    count = 0
    for row in rows:
        parts = teredo_parts(ipaddress.IPv6Address(row["address"]))
        if parts and row.get("in_datapath", True) and row.get("mapped") \
                and row["mapped"] != f"{parts[1]}:{parts[2]}":
            count += 1
    return count


def run_cell(lab, column: str, row: str = "symmetric") -> dict:
    _, nat_impl, other_impl, kind, server_impl, relay_impl = \
        next(c for c in interop.COLUMNS if c[0] == column)
    nat_host, nats = interop.placement(row)
    started = []
    outcome = {check: False for check in interop.CHECKS}
    try:
        started.append(roles.start_server(lab, server_impl))
        server = lab["server"].ipv4[0]
        if relay_impl:
            started.append(roles.start_relay(lab, relay_impl))
        try:
            here = roles.start_client(lab, nat_impl, nat_host, server, *ALLOW)
        except Exception as err:   # no address behind this NAT: every check fails
            print(f"{column}: the NAT'd client did not qualify: {err}")
            return outcome
        started.append(here)
        if kind == "peer":
            there = roles.start_client(lab, other_impl, PUBLIC, server, *ALLOW)
            started.append(there)
            far_host, far = PUBLIC, there.address
        else:
            far_host, far = "v6host", lab["v6host"].ipv6[0]
        outcome["ping_there"] = _ping(lab, nat_host, far)
        outcome["ping_back"] = _ping(lab, far_host, here.address)
        outcome["tcp_there"] = _tcp(lab, nat_host, far_host, far)
        outcome["tcp_back"] = _tcp(lab, far_host, nat_host, here.address)
        outcome["udp_there"] = _udp(lab, nat_host, far_host, far)
        outcome["udp_back"] = _udp(lab, far_host, nat_host, here.address)
        # Not part of the page: which of our daemons needed a proof (asserted below).
        outcome["proven"] = {h: _other_mappings(lab, h) for h, impl in
                             ((PUBLIC, other_impl), ("relay", relay_impl)) if impl == "xdp-teredo"}
        return outcome
    finally:
        for role in reversed(started):
            role.stop()
        for nat in nats:
            lab.conntrack_flush(nat)


@pytest.mark.parametrize("column", interop.COLUMN_IDS)
def test_cell(row_lab, column):
    row, lab = row_lab
    outcome = run_cell(lab, column, row)
    proven = outcome.pop("proven", {})
    table = interop.record(row, column, outcome)
    interop.write_doc()
    nat_impl = column.split("-")[0]
    if nat_impl == "ours":
        assert outcome["ping_back"], outcome
        # Behind a symmetric NAT, a first contact to a Miredo 1.2.6 client cannot
        # work: it trusts only its embedded mapping or answers to its own bubbles,
        # and its answers go to our server-side mapping, which the NAT keeps for
        # the server (docs/interop.md). Any other far end: both ways.
        if not (row == "symmetric" and column == "ours-miredo"):
            assert outcome["ping_there"], outcome
    if row == "symmetric" and column == "ours-ours":
        assert all(outcome[c] for c in ("ping_there", "ping_back", "tcp_there", "tcp_back")), outcome
        # The public client trusted the NAT'd one where it really sends from.
        assert proven[PUBLIC] >= 1, proven
    if row == "upnp" and nat_impl == "ours":
        # RFC 6081 §4.3: our address embeds the UPnP mapping, so even a Miredo
        # client, which fails behind the plain symmetric NAT, works both ways.
        assert all(outcome[c] for c in ("ping_there", "ping_back", "tcp_there", "tcp_back")), outcome
    if row == "open" and column == "miredo-relay-ours":
        assert outcome["ping_there"] and outcome["ping_back"], outcome
        assert proven["relay"] >= 1, proven   # the remapped port, on proof
    if column == "miredo-ours":
        # Even where Miredo <-> Miredo fails (behind a symmetric NAT, first contact
        # from the NAT'd side): ours answers the Miredo client's direct bubble.
        assert outcome["ping_there"] and outcome["ping_back"], outcome
    # Where Miredo's own pair works, ours in its place at the far end works too.
    reference = {"miredo-ours": "miredo-miredo", "miredo-relay-ours": "miredo-relay-miredo"}
    if column in reference and reference[column] in table.get(row, {}):
        ref = table[row][reference[column]]
        assert all(outcome[c] for c in ("ping_there", "ping_back") if ref.get(c)), (outcome, ref)
