"""RFC 6081 §4.3 in the lab: our client behind a NAT of kind "upnp" (symmetric,
miniupnpd on its LAN side, lab/upnp.py) maps a port on the gateway, moves its
Teredo socket onto it so that its address embeds the mapping, shows it in
`status`, removes it at exit, and replaces what a SIGKILLed client left. A
Miredo client on the public host reaches it and is reached by it, ping and TCP
both ways: the cell that fails behind the plain symmetric NAT (docs/interop.md).
With --no-upnp nothing is mapped.
"""

import json
import os
import signal
import time

import pytest

from tests.e2e import test_nat_matrix as matrix
from xdp_teredo.lab import roles

pytestmark = pytest.mark.e2e

HOST, NAT, PUBLIC = "client1", "nat1", "public"


@pytest.fixture(scope="module")
def upnp_lab(make_module_lab, require_bcc):
    lab = make_module_lab("server", HOST, PUBLIC, nat={NAT: "upnp"})
    server = roles.start_server(lab, "xdp-teredo")
    yield lab
    server.stop()


def _status(lab) -> dict:
    return json.loads(roles.cli(lab, HOST, "status", "--json").stdout)


def _moved(lab, igd, timeout=20.0) -> dict:
    """The status once the address embeds the UPnP mapping and the socket is the
    mapped one (client/mapped_port.py), else the last status seen."""
    deadline = time.monotonic() + timeout
    while True:
        info = _status(lab)
        mapped = (info.get("upnp") or "").replace("mapped ", "")
        rules = [f"{igd.external}:{ext}" for ext, addr, port in igd.udp_mappings()
                 if f"{addr}:{port}" == info.get("local")]
        if mapped and info.get("state") == "qualified" and info.get("mapped") == mapped \
                and rules == [mapped]:
            return info
        if time.monotonic() > deadline:
            return info
        time.sleep(0.2)


def _start(lab, *args):
    return roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0], *args)


def test_address_embeds_the_mapping_and_exit_removes_it(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    client = _start(lab)
    try:
        info = _moved(lab, igd)
        assert info.get("mapped") and info["upnp"] == f"mapped {info['mapped']}", (
            info, igd.udp_mappings())
        assert info["nat_detail"] is None or info["nat_detail"]["upnp"] in (True, None)
        log = client.process.output()
        for event in ("upnp_mapped", "upnp_introduced", "upnp_moved"):
            assert f'"event": "{event}"' in log, event
    finally:
        client.stop()   # SIGTERM: the teardown removes the mapping
    assert igd.udp_mappings() == [], "the mapping outlived the client"
    assert '"event": "upnp_removed"' in client.process.output()


def test_miredo_client_both_ways(upnp_lab):
    """ours (behind the UPnP NAT) <-> Miredo (public): ping and TCP, there first."""
    lab = upnp_lab
    igd = lab.igds[NAT]
    here = _start(lab, *matrix.ALLOW)
    there = None
    try:
        info = _moved(lab, igd)
        assert info["mapped"] == (info["upnp"] or "").replace("mapped ", ""), info
        there = roles.start_client(lab, "miredo", PUBLIC, lab["server"].ipv4[0])
        from ipaddress import IPv6Address
        address = IPv6Address(info["address"])
        seen = {"ping_there": matrix._ping(lab, HOST, there.address),
                "ping_back": matrix._ping(lab, PUBLIC, address),
                "tcp_there": matrix._tcp(lab, HOST, PUBLIC, there.address),
                "tcp_back": matrix._tcp(lab, PUBLIC, HOST, address)}
        print("miredo cell behind the upnp NAT:", seen)
        assert all(seen.values()), seen
    finally:
        if there is not None:
            there.stop()
        here.stop()
        lab.conntrack_flush(NAT)


def test_sigkilled_client_mapping_replaced(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    first = _start(lab)
    old = _moved(lab, igd)
    assert old.get("upnp"), old
    os.killpg(first.process.pid, signal.SIGKILL)   # its own session: only it
    first.stop()
    roles.cli(lab, HOST, "detach", lab[HOST].uplink)   # what the kill left locally
    left = igd.udp_mappings()
    assert len(left) == 1, left      # a SIGKILL runs no teardown
    second = _start(lab)
    try:
        new = _moved(lab, igd)
        assert new.get("upnp"), new
        mine = [m for m in igd.udp_mappings() if m[1] == str(lab[HOST].ipv4[0])]
        assert len(mine) == 1 and f"{mine[0][1]}:{mine[0][2]}" == new["local"], (mine, new)
        assert left[0] not in mine or left[0][2] == mine[0][2]
    finally:
        second.stop()
        lab.conntrack_flush(NAT)
    assert igd.udp_mappings() == []


def test_no_upnp_maps_nothing(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    client = _start(lab, "--no-upnp")
    try:
        time.sleep(3)   # longer than a search (client/upnp.py SEARCH_TIMEOUT)
        assert igd.udp_mappings() == []
        assert _status(lab)["upnp"] is None
    finally:
        client.stop()
