"""The namespace lab itself: the topology routes and translates as drawn, and
teardown leaves nothing behind, whatever happens inside the with-block."""

import ipaddress
import json
import os
import time

import pytest

from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.lab import netns, probe, topology
from xdp_teredo.lab.topology import Lab

pytestmark = pytest.mark.e2e

ECHO_PORT = 7007


def _json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _udp_echo(lab, role: str, bind, count: int):
    """A one-shot UDP echo server in `role`, returned once it is bound."""
    proc = lab.spawn(role, *probe.argv("udp-echo", "--bind", bind, "--port", ECHO_PORT,
                                       "--count", count, "--timeout", 10))
    proc.wait_for_output(r'"event": "ready"', timeout=5)
    return proc


def _udp_send(lab, role: str, dst, *, check=True, tries=3, timeout=1.0) -> dict:
    res = lab.run(role, *probe.argv("udp-send", dst, ECHO_PORT, "--message", role,
                                    "--tries", tries, "--timeout", timeout), check=check)
    return _json_lines(res.stdout)[-1]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unknown_host_is_a_usage_error():
    with pytest.raises(UsageError):
        Lab({"client1", "moon"})


def test_host_selection_pulls_in_dependencies(make_lab):
    lab = make_lab("client2")
    # The outer NAT comes first: ROLES is in build order.
    assert lab.roles == ["inet", "nat2a", "nat2b", "client2"]
    assert sorted(lab.namespaces()) == sorted(f"{lab.prefix}{r}" for r in lab.roles)
    assert all(ns.startswith(netns.NETNS_PREFIX) for ns in lab.namespaces())
    client2 = lab["client2"]
    assert client2.uplink == "eth0" and lab["nat2b"].lan == "eth1"
    assert client2.ipv4 == [ipaddress.IPv4Address("10.2.1.2")]
    assert client2.public_ipv4 == lab["nat2a"].ipv4[0] == ipaddress.IPv4Address("198.51.100.17")
    # The interface really is there, with the address the Host claims.
    out = lab.run("client2", "ip", "-4", "-o", "addr", "show", "dev", client2.uplink).stdout
    assert "10.2.1.2/24" in out


@pytest.mark.lab_hosts("server", "client1", "client2")
def test_nated_clients_reach_both_server_addresses(lab):
    for client in ("client1", "client2"):
        for addr in lab["server"].ipv4:
            res = lab.ping(client, addr, deadline=3)
            assert res.ok, f"{client} -> {addr}: {res}"
            assert res.replies_from == [str(addr)]


@pytest.mark.lab_hosts("server", "client1", "client2", "public")
def test_server_sees_the_outermost_nat_as_source(lab):
    server = lab["server"]
    echo = _udp_echo(lab, "server", server.ipv4[0], count=3)
    replies = {c: _udp_send(lab, c, server.ipv4[0]) for c in ("client1", "client2", "public")}
    assert echo.wait(timeout=5) == 0
    seen = {d["data"]: d["peer"] for d in _json_lines(echo.output()) if d["event"] == "datagram"}

    for client in ("client1", "client2", "public"):
        # The echo came back from the server's address, to the client's socket.
        assert replies[client]["reply"] == client
        assert replies[client]["peer"] == [str(server.ipv4[0]), ECHO_PORT]
        # The server saw the NAT's public address (for public: its own), never 10/8.
        ip, port = seen[client]
        assert ip == str(lab[client].public_ipv4), (client, seen)
    assert seen["client1"][0] == "198.51.100.1" and seen["client2"][0] == "198.51.100.17"
    assert seen["public"][0] == "203.0.113.10"

    # The translation is nat1's conntrack entry; flushing it forgets the mapping.
    src_port = replies["client1"]["local"][1]
    table = netns.conntrack_list(lab["nat1"].netns)
    assert f"src=10.1.0.2 dst=192.0.2.1 sport={src_port} dport={ECHO_PORT}" in table
    lab.conntrack_flush("nat1")
    assert f"sport={src_port} dport={ECHO_PORT}" not in netns.conntrack_list(lab["nat1"].netns)


@pytest.mark.lab_hosts("client1", "public")
def test_nat_lan_is_not_reachable_from_the_internet(lab):
    # Not routed on inet, as 10/8 is not on the internet.
    assert not lab.ping("public", lab["client1"].ipv4[0], deadline=1).ok
    # And nothing unsolicited comes through the NAT's public address.
    echo = _udp_echo(lab, "client1", "0.0.0.0", count=1)
    res = _udp_send(lab, "public", lab["client1"].public_ipv4, check=False, tries=2, timeout=0.5)
    assert res["reply"] is None
    assert '"event": "datagram"' not in echo.output()


@pytest.mark.lab_hosts("server", "v6host")
def test_ipv6_side_routes_through_the_relay(lab):
    v6host, relay, server = lab["v6host"], lab["relay"], lab["server"]
    assert v6host.ipv4 == [] and v6host.gateway6 == relay.ipv6[1]
    # The server reaches v6host natively (it forwards its clients' direct
    # connectivity tests there, RFC 4380 §5.2.9) ...
    res = lab.ping("server", v6host.ipv6[0], deadline=3)
    assert res.ok and res.replies_from == [str(v6host.ipv6[0])]
    assert lab.ping("v6host", server.ipv6[0], deadline=3).ok
    # ... and v6host sends the Teredo prefix to the relay, as inet does.
    teredo_dst = "2001:0:c000:201:8000:cfc6:3fff:fd74"
    for role in ("v6host", "inet"):
        route = lab.run(role, "ip", "-6", "route", "get", teredo_dst).stdout
        assert f"via {relay.ipv6[1] if role == 'v6host' else relay.ipv6[0]}" in route, route


def test_teardown_after_exception_in_with_block(require_root, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Lab({"client1"}, workdir=tmp_path) as lab:
            made = lab.namespaces()
            proc = lab.spawn("client1", "sleep", "60")
            assert len(made) == 3 and proc.alive()
            raise RuntimeError("boom")
    assert netns.list_netns(lab.prefix) == []
    assert not proc.alive() and not _pid_exists(proc.pid)
    assert lab.prefix in topology.created_prefixes()


def test_teardown_after_failed_build(require_root, tmp_path, monkeypatch):
    def broken_nat(ns, out_if, **kw):
        raise RuntimeFailure("injected: NAT setup failed")

    monkeypatch.setattr(netns, "masquerade", broken_nat)
    lab = Lab({"client1"}, workdir=tmp_path)
    with pytest.raises(RuntimeFailure, match="injected"):
        with lab:
            pytest.fail("the with-block must not run when the build failed")
    # inet was built, nat1 was half-built: both are gone.
    assert netns.list_netns(lab.prefix) == []


@pytest.mark.lab_hosts("public")
def test_stop_kills_a_process_that_ignores_sigterm(lab):
    proc = lab.spawn("public", "sh", "-c", "trap '' TERM; echo armed; sleep 60 & wait")
    proc.wait_for_output("armed", timeout=5)
    start = time.monotonic()
    assert proc.stop(grace=0.5) == -9
    assert time.monotonic() - start < 5
    assert not proc.alive()


@pytest.mark.lab_hosts("public")
def test_run_failure_names_the_command(lab):
    with pytest.raises(RuntimeFailure, match=r"ip -n xt-.*-public link set nosuchif up"):
        netns.link_up(lab["public"].netns, "nosuchif")


# One socket, one datagram to each address; the echo server prints whom it saw
# (its answers may not come back through a symmetric NAT: not waited for).
_FROM_ONE_SOCKET = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(2)
for dst in sys.argv[2:]:
    s.sendto(b"x", (dst, %d))
""" % ECHO_PORT


def _mappings_seen(lab, role: str, local_port: int, dsts) -> list:
    echo = _udp_echo(lab, "server", "0.0.0.0", count=len(dsts))
    lab.run(role, "python3", "-c", _FROM_ONE_SOCKET, local_port, *map(str, dsts))
    assert echo.wait(timeout=5) == 0
    return [tuple(d["peer"]) for d in _json_lines(echo.output()) if d["event"] == "datagram"]


def test_nat_kinds(make_lab):
    """firewalled and open keep the port towards every remote (a cone mapping);
    symmetric (--random-fully) gives each remote another port."""
    lab = make_lab("server", "client1", "client2", nat={"nat1": "symmetric", "nat2a": "open"})
    assert lab.nat_kinds == {"nat1": "symmetric", "nat2a": "open", "nat2b": "firewalled"}
    both = lab["server"].ipv4[:2]
    sym = _mappings_seen(lab, "client1", 40001, both)
    assert len({port for _, port in sym}) == 2, sym
    cone = _mappings_seen(lab, "client2", 40002, both)
    assert {port for _, port in cone} == {40002}, cone
    with pytest.raises(UsageError):
        Lab({"client1"}, nat={"nat1": "full-cone"})
    with pytest.raises(UsageError):
        Lab({"client1"}, nat={"server": "open"})


def test_open_nat_remaps_after_an_unsolicited_packet(make_lab):
    """The issue's observation: a remote's packet to the mapping, accepted by a NAT
    with no firewall, takes the tuple; our next flow to that remote gets another port."""
    lab = make_lab("server", "client1", nat={"nat1": "open"})
    server = lab["server"].ipv4[0]
    first = _mappings_seen(lab, "client1", 40003, [lab["server"].ipv4[1]])
    assert first == [(str(lab["client1"].public_ipv4), 40003)]
    # The server's address sends unsolicited to 198.51.100.1:40003 from the echo port.
    lab.run("server", "python3", "-c",
            "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            f"s.bind(('{server}', {ECHO_PORT})); s.sendto(b'x', (sys.argv[1], 40003))",
            str(lab["client1"].public_ipv4))
    again = _mappings_seen(lab, "client1", 40003, [server])
    assert again[0][1] != 40003, again


def test_two_clients_share_one_lan_behind_one_nat(make_lab):
    lab = make_lab("server", "client3a", "client3b")
    assert lab["client3a"].public_ipv4 == lab["client3b"].public_ipv4
    # Same LAN: each reaches the other directly ...
    assert lab.ping("client3a", str(lab["client3b"].ipv4[0]), deadline=3).ok
    # ... and both go out through nat3.
    seen = _mappings_seen(lab, "client3a", 40004, [lab["server"].ipv4[0]])
    assert seen[0][0] == str(lab["nat3"].ipv4[0])


def test_flood_batches_send_what_they_say(make_lab):
    """lab/flood.py --batch (sendmmsg): every datagram it counts arrives, in order of
    sources, at the paced rate; the server part of make bench relies on it."""
    from xdp_teredo.lab import flood

    lab = make_lab("server", "relay")
    gen = lab["relay"].ipv4[0]
    lab.run("inet", "ip", "route", "add", "198.18.0.0/15", "via", str(gen))

    def rx() -> int:
        return int(lab.run("server", "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)

    for rate, count in ((0, 3000), (20000, 5000)):
        before = rx()
        out = lab.run("relay", *flood.argv("rs", "--to", "192.0.2.1:3544", "--from-net",
                                           "198.18.0.0/15", "--sources", 16, "--pool", 2,
                                           "--rate", rate, "--count", count, "--duration", 10,
                                           "--batch", 64), timeout=30).stdout
        got = json.loads(out.strip().splitlines()[-1])
        time.sleep(0.3)
        assert (got["sent"], got["batch"], got["sources"]) == (count, 64, 16), got
        assert sum(got["bytes_by_source"].values()) == got["bytes"] == count * 89, got
        assert rx() - before >= count, "every datagram counted arrived"
        if rate:
            assert got["seconds"] >= 0.9 * count / rate, got
