"""RFC 6081 §4.3 in the lab: our client behind a NAT of kind "upnp" (symmetric,
miniupnpd on its LAN side, lab/upnp.py) maps its Teredo port on the gateway,
shows it in `status`, removes it at exit, and replaces what a SIGKILLed client
left. Also: with --no-upnp nothing is mapped, and without a gateway the client
qualifies as before (the search runs beside qualification).
"""

import json
import os
import signal
import time

import pytest

from xdp_teredo.lab import roles

pytestmark = pytest.mark.e2e

HOST, NAT = "client1", "nat1"


@pytest.fixture(scope="module")
def upnp_lab(make_module_lab, require_bcc):
    lab = make_module_lab("server", HOST, nat={NAT: "upnp"})
    server = roles.start_server(lab, "xdp-teredo")
    yield lab
    server.stop()


def _status(lab) -> dict:
    res = roles.cli(lab, HOST, "status", "--json")
    return json.loads(res.stdout)


def _wait_mapping(lab, igd, port, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in igd.udp_mappings() if m[1:] == (str(lab[HOST].ipv4[0]), port)]
        if found:
            return found
        time.sleep(0.2)
    return []


def _local_port(info) -> int:
    return int(info["local"].rsplit(":", 1)[1])


def test_maps_shows_and_removes(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    client = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0])
    try:
        info = _status(lab)
        port = _local_port(info)
        found = _wait_mapping(lab, igd, port)
        assert found, igd.udp_mappings()
        external = found[0][0]
        deadline = time.monotonic() + 10
        while _status(lab).get("upnp") is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _status(lab)["upnp"] == f"mapped {igd.external}:{external}"
        assert client.process.wait_for_output(r'"event": "upnp_mapped"', timeout=5)
    finally:
        client.stop()   # SIGTERM: the teardown removes the mapping
    assert igd.udp_mappings() == [], "the mapping outlived the client"
    assert '"event": "upnp_removed"' in client.process.output()


def test_sigkilled_client_mapping_replaced(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    first = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0])
    old_port = _local_port(_status(lab))
    assert _wait_mapping(lab, igd, old_port)
    os.killpg(first.process.pid, signal.SIGKILL)   # its own session: only it
    first.stop()
    roles.cli(lab, HOST, "detach", lab[HOST].uplink)   # what the kill left locally
    assert _wait_mapping(lab, igd, old_port, timeout=1), "SIGKILL removed it?"
    second = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0])
    try:
        new_port = _local_port(_status(lab))
        assert _wait_mapping(lab, igd, new_port)
        mine = [m for m in igd.udp_mappings() if m[1] == str(lab[HOST].ipv4[0])]
        assert len(mine) == 1 and mine[0][2] == new_port, mine
    finally:
        second.stop()
    assert igd.udp_mappings() == []


def test_no_upnp_maps_nothing(upnp_lab):
    lab = upnp_lab
    igd = lab.igds[NAT]
    client = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0], "--no-upnp")
    try:
        time.sleep(3)   # longer than a search (client/upnp.py SEARCH_TIMEOUT)
        assert igd.udp_mappings() == []
        assert _status(lab)["upnp"] is None
    finally:
        client.stop()
