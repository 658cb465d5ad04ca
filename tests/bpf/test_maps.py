"""Typed map access: domain objects <-> the structs the BPF programs read.

The first tests are pure (no root): conversions and byte order. The others use the
compiled program's real maps, and pinned maps read from another process.
"""

import ctypes
import json
import os
import subprocess
import sys
import uuid

import pytest

from xdp_teredo.datapath import Config, ConfigFlag, PeerEntry, PeerFlag, Reason, layout, libbpf, stats

from tests.conftest import skip_or_fail

from . import packets as P

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- pure


def test_peer_entry_round_trip_and_byte_order():
    entry = PeerEntry(address=P.PEER_ADDRESS, mapped_ipv4="198.51.100.7", mapped_port=50000,
                      flags=PeerFlag.TRUSTED | PeerFlag.LEARNED, last_rx_ns=1, last_tx_ns=2, rx_packets=3,
                      rx_bytes=4, tx_packets=5, tx_bytes=6)
    raw = bytes(entry.to_c())
    assert len(raw) == ctypes.sizeof(layout.PeerValue)
    # Network byte order, as the BPF code compares with packet bytes.
    assert raw[0:4] == bytes([198, 51, 100, 7])
    assert raw[4:6] == (50000).to_bytes(2, "big")
    assert int.from_bytes(raw[6:8], "little") == 0x3
    back = PeerEntry.from_c(P.PEER_ADDRESS, layout.PeerValue.from_buffer_copy(raw))
    assert back == entry
    assert back.trusted


def test_config_round_trip_and_byte_order():
    cfg = Config(local_ipv4="192.0.2.10", local_port=40001, teredo_address=P.OUR_ADDRESS, nic_ifindex=2,
                 tun_ifindex=3, relay=True, learn_peers=False, peer_timeout=12.5, mtu=1400, l2_len=14)
    raw = bytes(cfg.to_c())
    assert raw[0:4] == bytes([192, 0, 2, 10])
    assert raw[4:6] == (40001).to_bytes(2, "big")
    assert raw[8:24] == P.OUR_ADDRESS.packed
    assert cfg.flags == ConfigFlag.ENABLED | ConfigFlag.RELAY
    assert Config.from_c(layout.ConfigValue.from_buffer_copy(raw)) == cfg


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        PeerEntry(address=P.PEER_ADDRESS, mapped_ipv4="198.51.100.7", mapped_port=70000)
    with pytest.raises(ValueError):
        PeerEntry(address="198.51.100.7", mapped_ipv4="198.51.100.7", mapped_port=1)
    with pytest.raises(ValueError):
        Config(local_ipv4="192.0.2.1", local_port=1, l2_len=4)


# --------------------------------------------------------------------------- real maps


@pytest.mark.root
@pytest.mark.bpf
def test_peer_table_operations(dp):
    table = dp.prog.peers
    a = PeerEntry(address=P.PEER_ADDRESS, mapped_ipv4=P.PEER_IPV4, mapped_port=P.PEER_PORT)
    b = PeerEntry(address=P.NATIVE_ADDRESS, mapped_ipv4=P.RELAY_IPV4, mapped_port=P.RELAY_PORT,
                  flags=PeerFlag.TRUSTED | PeerFlag.RELAY)
    assert len(table) == 0 and table.get(P.PEER_ADDRESS) is None
    table.put(a)
    table.put(b, only="new")
    with pytest.raises(KeyError):
        table.put(a, only="new")
    with pytest.raises(KeyError):
        table.put(PeerEntry(address="2001:db8::77", mapped_ipv4="198.51.100.1", mapped_port=1), only="existing")
    assert table.get(P.PEER_ADDRESS) == a and P.NATIVE_ADDRESS in table
    assert sorted(e.address for e in table) == sorted([a.address, b.address])
    updated = table.update(P.PEER_ADDRESS, flags=PeerFlag(0))
    assert not table.get(P.PEER_ADDRESS).trusted and updated.mapped_port == P.PEER_PORT
    with pytest.raises(KeyError):
        table.update("2001:db8::77", flags=PeerFlag(0))
    assert table.delete(P.PEER_ADDRESS) and not table.delete(P.PEER_ADDRESS)
    table.clear()
    assert len(table) == 0


@pytest.mark.root
@pytest.mark.bpf
def test_reading_a_big_table_in_batches_gives_every_entry_once(dp):
    """PeerTable iterates with BPF_MAP_LOOKUP_BATCH: across several batches, the
    same entries as one lookup per key, each once, values included."""
    table, raw = dp.prog.peers, dp.prog.peers.map
    # Half the table's capacity: an LRU map may evict before it is quite full.
    count = raw.max_entries // 2
    written = {}
    for i in range(count):
        entry = PeerEntry(address=f"2001:db8:0:1::{i + 1:x}", mapped_ipv4="198.51.100.9",
                          mapped_port=1024 + i, last_rx_ns=i, rx_packets=2 * i)
        table.put(entry)
        written[entry.address] = entry
    batched = list(raw.items(batch=64))
    assert len(batched) == len({key for key, _ in batched}) == count
    assert dict(batched) == dict(raw._items_one_by_one())
    assert {e.address: e for e in table} == written
    # A batch bigger than the table, and an empty table.
    assert len(list(raw.items(batch=8192))) == count
    table.clear()
    assert list(raw.items()) == [] and list(table) == []


@pytest.mark.root
@pytest.mark.bpf
def test_per_cpu_maps_read_in_batches_give_every_cpu_its_value(dp):
    """The statistics array is per CPU: a batch carries each CPU's slot."""
    stats_map = dp.prog.statistics.map
    batched = dict(stats_map.items(batch=7))
    assert len(batched) == stats_map.max_entries
    assert batched == dict(stats_map._items_one_by_one())
    assert all(len(v) == stats_map.slot_size * stats_map.ncpus for v in batched.values())


@pytest.mark.root
@pytest.mark.bpf
def test_config_map(dp):
    assert dp.prog.config.read() is None
    written = dp.configure(relay=True)
    assert dp.prog.config.read() == written


@pytest.mark.root
@pytest.mark.bpf
def test_stats_sum_over_cpus_and_clear(dp):
    dp.configure()
    frame = P.teredo_frame(P.bubble(P.PEER_ADDRESS, P.OUR_ADDRESS))
    for _ in range(3):
        dp.xdp(frame)
    snap = dp.prog.stats()
    assert set(snap) == {r.key for r in Reason}
    assert snap["rx_bubble"] == {"packets": 3, "bytes": 3 * len(frame)}
    assert stats.read(dp.prog) == snap
    dp.prog.statistics.clear()
    assert all(v == {"packets": 0, "bytes": 0} for v in dp.prog.stats().values())


@pytest.mark.root
@pytest.mark.bpf
def test_pinned_maps_are_read_by_another_process(dp):
    if not stats.is_bpffs("/sys/fs/bpf"):
        skip_or_fail("no bpffs on /sys/fs/bpf (make setup mounts it)")
    root = f"/sys/fs/bpf/xdp-teredo-test-{uuid.uuid4().hex[:8]}"
    instance = "netns-test-if0"
    pin_dir = os.path.join(root, instance)
    os.makedirs(pin_dir)
    try:
        for name in ("peers", "config", "stats"):
            libbpf.obj_pin(dp.prog.maps[name].fd, os.path.join(pin_dir, name))
        dp.configure()
        dp.add_peer(P.PEER_ADDRESS, P.PEER_IPV4, P.PEER_PORT)
        dp.xdp(P.teredo_frame(P.bubble(P.PEER_ADDRESS, P.OUR_ADDRESS)))
        code = ("import json; from xdp_teredo.datapath import stats;"
                f"pm = stats.PinnedMaps({pin_dir!r});"
                "print(json.dumps({'stats': stats.read(pin_root=%r, instance=%r),"
                " 'peers': [str(e.address) for e in pm.peers], 'port': pm.config.read().local_port}))"
                % (root, instance))
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout
        got = json.loads(out)
        assert got["stats"] == dp.prog.stats()
        assert got["stats"]["rx_bubble"]["packets"] == 1
        assert got["peers"] == [str(P.PEER_ADDRESS)]
        assert got["port"] == P.LOCAL_PORT
    finally:
        for name in ("peers", "config", "stats"):
            if os.path.exists(os.path.join(pin_dir, name)):
                os.unlink(os.path.join(pin_dir, name))
        os.rmdir(pin_dir)
        os.rmdir(root)


@pytest.mark.root
def test_reading_stats_with_nothing_pinned_says_so(tmp_path):
    from xdp_teredo.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="no data path pinned"):
        stats.read(pin_root=str(tmp_path), instance="nope")
    with pytest.raises(RuntimeFailure, match="no bpffs"):
        stats.read(pin_root=str(tmp_path))
