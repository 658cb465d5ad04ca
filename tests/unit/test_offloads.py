"""net/offloads.py without a kernel: which NIC it touches, and the undo."""

from xdp_teredo.net import offloads


def _fake(monkeypatch, state):
    calls = []

    def ethtool(ifname, cmd, data=0):
        calls.append((ifname, cmd, data))
        if cmd == offloads.ETHTOOL_STXCSUM:
            state[ifname] = bool(data)
        return int(state[ifname])

    monkeypatch.setattr(offloads, "_ethtool", ethtool)
    return calls


def test_a_physical_nic_is_never_touched(monkeypatch):
    calls = _fake(monkeypatch, {"eth0": True})
    assert offloads.finish_checksums_on_veth("eth0", None) is None
    assert calls == []


def test_a_veth_loses_its_tx_checksum_offload_until_the_undo(monkeypatch):
    state = {"eth0": True}
    _fake(monkeypatch, state)
    undo = offloads.finish_checksums_on_veth("eth0", "veth")
    assert state["eth0"] is False
    undo()
    assert state["eth0"] is True


def test_an_offload_off_already_is_left_off(monkeypatch):
    state = {"eth0": False}
    calls = _fake(monkeypatch, state)
    assert offloads.finish_checksums_on_veth("eth0", "veth") is None
    assert [c[1] for c in calls] == [offloads.ETHTOOL_GTXCSUM]
