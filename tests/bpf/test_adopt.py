"""Adopting a running data path (datapath/adopt.py, ClientDatapath.adopt), on real devices.

A first ClientDatapath attaches and is released (what a restart-safe client does when it
stops for a restart: everything stays attached). A second compile finds it through
the hooks, takes its maps (same peers, same config, same counters), and either
leaves the programs as they are (same code) or swaps its own in (an upgrade, here a
build with another outer TTL), atomically; a packet through the real devices checks
that the adopted hooks work with the adopted maps. Half a data path, or nothing, is
refused or reported as such.

Namespaces and devices: test_attach.py's `lab` fixture.
"""

import sys

import pytest

from xdp_teredo.datapath import Config, ClientDatapath, PeerEntry, adopt, libbpf
from xdp_teredo.errors import RuntimeFailure

from tests.e2e.resilience_support import another_build

from . import packets as P
from .test_attach import (LOCAL_PORT, NIC_IP, NOTHING, PEER_ADDRESS, PEER_IP, PEER_ROUND_TRIP,
                          PEER_UDP_PORT, lab, ours_attached, sh)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def _left_running(lab, **attach):
    """The session's data path attached, configured, given a peer, then released."""
    prog = lab["prog"]
    att = prog.attach(lab["nic"], lab["tun"], netns=lab["a"], pin=False, **attach)
    att.configure(Config(local_ipv4=NIC_IP, local_port=LOCAL_PORT, teredo_address=P.OUR_ADDRESS))
    att.peers.put(PeerEntry(address=PEER_ADDRESS, mapped_ipv4=PEER_IP, mapped_port=PEER_UDP_PORT))
    att.release()
    assert prog.attachment is None
    return att


def _round_trip(lab, att) -> dict:
    """An echo request in over UDP, the kernel's reply back out: both through the
    hooks as they are now. The counters that moved, from `att`'s maps."""
    before = {k: v["packets"] for k, v in att.stats().items()}
    request = P.inner_ipv6(PEER_ADDRESS, P.OUR_ADDRESS, b"adopted")
    out = sh(sys.executable, "-c", PEER_ROUND_TRIP, PEER_IP, str(PEER_UDP_PORT), NIC_IP,
             str(LOCAL_PORT), request.hex(), ns=lab["b"], check=False)
    after = {k: v["packets"] for k, v in att.stats().items()}
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert out.returncode == 0, (out.stderr, moved)
    return moved


def test_nothing_attached_is_nothing_to_adopt(lab):
    assert adopt.find(lab["nic"], lab["tun"], netns=lab["a"]) is None


def test_same_code_is_adopted_as_it_runs(lab):
    old = _left_running(lab, xdp_mode="generic")
    running = adopt.find(lab["nic"], lab["tun"], netns=lab["a"])
    assert running is not None and (running.ingress, running.xdp_mode) == ("xdp", "generic")
    assert set(running.programs) == {"xdp_rx", "tc_ingress", "tc_tx"}
    assert set(running.map_ids) >= {"peers", "config", "stats"}
    ids = {k: h.info.id for k, h in running.programs.items()}
    maps = adopt.open_maps(running)
    try:
        new = ClientDatapath.compile(maps=maps)
    finally:
        for m in maps.values():
            m.close()
    try:
        # (The kernel keeps 15 characters of a map's name.)
        assert {n[:15] for n in new.reused} == set(running.map_ids)
        # The running data path's state, seen through the new build's maps.
        assert new.peers.get(PEER_ADDRESS).mapped_port == PEER_UDP_PORT
        assert new.config.read().teredo_address == P.OUR_ADDRESS
        att = new.adopt(running, pin=False, netns=lab["a"])
        assert att.adopted and att.replaced == [] and att.xdp_attached == "generic"
        assert {k: h.info.id for k, h in adopt.find(lab["nic"], lab["tun"],
                                                    netns=lab["a"]).programs.items()} == ids
        moved = _round_trip(lab, att)
        assert moved.get("decapsulated") == 1 and moved.get("encapsulated") == 1, moved
        # One map, two views: what the running programs count, the old object reads.
        assert old.prog.peers.get(PEER_ADDRESS).tx_packets == 1
        att.detach()
        assert ours_attached(lab) == NOTHING
    finally:
        new.close()


def test_an_upgrade_swaps_the_programs_and_keeps_the_maps(lab, tmp_path):
    _left_running(lab, xdp_mode="native")
    running = adopt.find(lab["nic"], lab["tun"], netns=lab["a"])
    maps = adopt.open_maps(running)
    try:
        # "The next version": every program's code, and so its tag, differs.
        new = ClientDatapath.compile(maps=maps, source_dir=another_build(tmp_path / "bpf"))
    finally:
        for m in maps.values():
            m.close()
    try:
        att = new.adopt(running, pin=False, netns=lab["a"])
        assert sorted(att.replaced) == ["tc_ingress", "tc_tx", "xdp_rx"]
        now = adopt.find(lab["nic"], lab["tun"], netns=lab["a"])
        assert now.map_ids == running.map_ids, "the same maps"
        for key, hooked in now.programs.items():
            assert hooked.info.id == libbpf.prog_info_by_fd(new.functions[key].fd).id, key
            assert hooked.info.id != running.programs[key].info.id, key
        assert now.xdp_mode == "native"
        moved = _round_trip(lab, att)
        assert moved.get("decapsulated") == 1 and moved.get("encapsulated") == 1, moved
        # The peer's counters went on from where the old programs left them.
        assert att.peers.get(PEER_ADDRESS).rx_packets == 1
        att.detach()
        assert ours_attached(lab) == NOTHING
    finally:
        new.close()


def test_only_what_changed_is_replaced(lab):
    """Another outer TTL changes the encapsulating program only."""
    _left_running(lab, xdp_mode="generic")
    running = adopt.find(lab["nic"], lab["tun"], netns=lab["a"])
    maps = adopt.open_maps(running)
    try:
        new = ClientDatapath.compile(ttl=63, maps=maps)
    finally:
        for m in maps.values():
            m.close()
    try:
        att = new.adopt(running, pin=False, netns=lab["a"])
        assert att.replaced == ["tc_tx"]
        now = adopt.find(lab["nic"], lab["tun"], netns=lab["a"]).programs
        assert now["xdp_rx"].info.id == running.programs["xdp_rx"].info.id
        assert now["tc_tx"].info.id != running.programs["tc_tx"].info.id
        att.detach()
    finally:
        new.close()


def test_half_a_data_path_is_refused(lab):
    from pyroute2 import IPRoute

    _left_running(lab, ingress="tc")
    with IPRoute(netns=lab["a"]) as ipr:
        ipr.tc("del-filter", "bpf", lab["tun"], ":1", parent="ffff:fff3", prio=3544)
    with pytest.raises(RuntimeFailure, match="only part of a data path"):
        adopt.find(lab["nic"], lab["tun"], netns=lab["a"])


def test_maps_the_build_did_not_take_make_adoption_fail(lab):
    """A build that could not take every running map (a layout changed; here: not
    offered) would give replaced programs fresh, empty maps: refused, and the
    running data path is untouched."""
    _left_running(lab, xdp_mode="generic")
    running = adopt.find(lab["nic"], lab["tun"], netns=lab["a"])
    maps = adopt.open_maps(running)
    try:
        new = ClientDatapath.compile(maps={"peers": maps["peers"]})
    finally:
        for m in maps.values():
            m.close()
    try:
        assert new.reused == ("peers",)
        with pytest.raises(RuntimeFailure, match="differ from this build"):
            new.adopt(running, pin=False, netns=lab["a"])
        assert ours_attached(lab)["filters"]["tun egress"] == ["tc_teredo_tx"]
    finally:
        new.close()
