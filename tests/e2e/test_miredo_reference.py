"""Miredo as the reference peer: miredo-server on "server", Miredo clients behind
one NAT (client1) and behind two stacked NATs (client2). They qualify, their
addresses say what RFC 4380 §4 says they must, and they reach each other over
Teredo, through the lab's inet, on UDP. This proves the harness and the peer that
our own client and relay are later tested against.
"""

import ipaddress
import re
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.constants import FLAG_G, FLAG_U, TEREDO_PORT, TEREDO_PREFIX

from tests.conftest import require_tool

pytestmark = pytest.mark.e2e

CLIENTS = ("client1", "client2")
NATS = {"client1": "nat1", "client2": "nat2a"}  # the outermost NAT of each client


def _decode(address: ipaddress.IPv6Address):
    """RFC 4380 §4, by hand: prefix(32) | server(32) | flags(16) | ~port(16) | ~client(32)."""
    bits = int(address)
    prefix = bits >> 96
    server = ipaddress.IPv4Address((bits >> 64) & 0xFFFFFFFF)
    flags = (bits >> 48) & 0xFFFF
    port = ((bits >> 32) & 0xFFFF) ^ 0xFFFF
    client = ipaddress.IPv4Address((bits & 0xFFFFFFFF) ^ 0xFFFFFFFF)
    return prefix, server, flags, port, client


@pytest.fixture(scope="module")
def teredo(make_module_lab):
    """The lab, a capture on inet started before anything Teredo happens, the
    server, and the two qualified clients."""
    require_tool("miredo")
    require_tool("miredo-server")
    require_tool("tcpdump")
    require_tool("tshark")
    # v6host (and so the relay host) for the relay test; idle otherwise.
    lab = make_module_lab("server", *CLIENTS, "v6host")
    pcap = lab.workdir / "inet.pcap"
    # -U: write each packet at once; -i any: every link of the router.
    capture = lab.spawn("inet", "tcpdump", "-i", "any", "-n", "-U", "-w", pcap,
                        "udp", log="tcpdump-inet.log")
    capture.wait_for_output("listening on", timeout=10)
    server = miredo.start_server(lab, "server")
    clients = {role: miredo.start_client(lab, role, server.primary) for role in CLIENTS}
    return SimpleNamespace(lab=lab, server=server, clients=clients, capture=capture, pcap=pcap)


def _mapped_port_on_outermost_nat(lab, role: str, server_ip) -> int:
    """The public port the outermost NAT gave `role`'s flow to the server (its
    conntrack entry's reply direction is addressed to that port)."""
    table = lab.run(NATS[role], "conntrack", "-L", "-p", "udp", "--orig-dst", str(server_ip),
                    "--orig-port-dst", str(TEREDO_PORT)).stdout
    ports = {int(m.group(1)) for m in re.finditer(
        rf"src={re.escape(str(server_ip))} dst=\S+ sport={TEREDO_PORT} dport=(\d+)", table)}
    assert len(ports) == 1, table
    return ports.pop()


def test_clients_qualify(teredo):
    assert teredo.server.primary == ipaddress.IPv4Address("192.0.2.1")
    assert teredo.server.secondary == ipaddress.IPv4Address("192.0.2.2")
    for role, client in teredo.clients.items():
        assert client.process.alive(), client.process.output()
        assert client.address in TEREDO_PREFIX
        # The address is on the tunnel, as the hook put it (still there now).
        assert miredo.teredo_address(teredo.lab, role, client.ifname) == client.address
        assert "New Teredo address" in client.process.output()
    assert teredo.clients["client1"].address != teredo.clients["client2"].address


@pytest.mark.parametrize("role", CLIENTS)
def test_address_embeds_server_and_outermost_nat_mapping(teredo, role):
    lab, client = teredo.lab, teredo.clients[role]
    prefix, server, flags, port, mapped = _decode(client.address)
    assert prefix == 0x20010000
    assert server == lab["server"].ipv4[0] == ipaddress.IPv4Address("192.0.2.1")
    # Behind two NATs the server sees the outer one, and so the address says it.
    assert mapped == lab[role].public_ipv4
    assert mapped == ipaddress.IPv4Address({"client1": "198.51.100.1", "client2": "198.51.100.17"}[role])
    assert port == _mapped_port_on_outermost_nat(lab, role, server)
    # RFC 5991 §4: U and G must be zero (the other bits are random).
    assert flags & (FLAG_U | FLAG_G) == 0


def test_clients_ping_each_other_over_teredo(teredo):
    lab = teredo.lab
    c1, c2 = teredo.clients["client1"].address, teredo.clients["client2"].address
    # The first echo waits for the bubbles that open both NATs (RFC 4380 §5.2.6).
    there = lab.ping("client1", c2, count=3, deadline=10)
    assert there.ok and there.replies_from == [str(c2)], there
    back = lab.ping("client2", c1, count=3, deadline=10)
    assert back.ok and back.replies_from == [str(c1)], back


def test_capture_on_inet_sees_teredo_on_udp(teredo):
    lab = teredo.lab
    c1, c2 = teredo.clients["client1"].address, teredo.clients["client2"].address
    assert lab.ping("client1", c2, count=2, deadline=10).ok
    teredo.capture.stop()
    lines = lab.run("inet", "tcpdump", "-r", teredo.pcap, "-n").stdout.splitlines()
    # tcpdump -i any -n lines: "... IP 198.51.100.1.40000 > 192.0.2.1.3544: UDP, length 61".
    # Not ": UDP" itself: tcpdump names some ports' payloads instead (a NAT that
    # picks port 49152 gets "BCM-LI-SHIM: ..."), and the capture holds only UDP.
    flows = set()
    for line in lines:
        m = re.search(r"IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): ", line)
        if m:
            flows.add((m.group(1), int(m.group(2)), m.group(3), int(m.group(4))))
    nat1, nat2 = str(lab["client1"].public_ipv4), str(lab["client2"].public_ipv4)
    server = str(teredo.server.primary)
    _, _, _, port1, _ = _decode(c1)
    _, _, _, port2, _ = _decode(c2)
    # Qualification: each NAT's public mapping to and from the server on 3544.
    for nat, port in ((nat1, port1), (nat2, port2)):
        assert (nat, port, server, TEREDO_PORT) in flows, sorted(flows)
        assert (server, TEREDO_PORT, nat, port) in flows, sorted(flows)
    # Data between the clients went direct, between their mapped addresses,
    # not through the server (it never carries data, RFC 4380 §5.3).
    assert (nat1, port1, nat2, port2) in flows, sorted(flows)
    assert (nat2, port2, nat1, port1) in flows, sorted(flows)
    # No private address ever reached the internet.
    assert not [f for f in flows if f[0].startswith("10.") or f[2].startswith("10.")]
    # And Wireshark's dissector agrees that this is Teredo carrying ICMPv6 echo
    # (it only knows port 3544 by itself: tell it the clients' mapped port).
    out = lab.run("inet", "tshark", "-r", teredo.pcap, "-n", "-d", f"udp.port=={port1},teredo",
                  "-Y", "teredo && icmpv6.type == 128",
                  "-T", "fields", "-e", "ipv6.src", "-e", "ipv6.dst").stdout
    pairs = {tuple(line.split("\t")) for line in out.splitlines() if line}
    assert (str(c1), str(c2)) in pairs, out


def test_miredo_relay_carries_native_ipv6(teredo):
    """A Miredo relay (RFC 4380 §5.4) between the clients and IPv6-only v6host:
    the clients' direct connectivity test goes through the server to native
    IPv6 (§5.2.9), the answers come back through the relay."""
    lab = teredo.lab
    relay = miredo.start_relay(lab, "relay")
    v6host = lab["v6host"].ipv6[0]
    c2 = teredo.clients["client2"].address
    out = lab.ping("client1", v6host, count=3, deadline=10)
    assert out.ok and out.replies_from == [str(v6host)], out
    back = lab.ping("v6host", c2, count=3, deadline=10)
    assert back.ok and back.replies_from == [str(c2)], back
    assert relay.process.alive(), relay.process.output()
