"""net/offloads.py and net/csum_veth.py without a kernel: the ioctl's arguments, and
the client's daemon no longer touching its NIC's offloads."""

import inspect

from xdp_teredo.client import daemon
from xdp_teredo.net import csum_veth, offloads


def _fake(monkeypatch, state):
    calls = []

    def ethtool(ifname, cmd, data=0):
        calls.append((ifname, cmd, data))
        if cmd == offloads.ETHTOOL_STXCSUM:
            state[ifname] = bool(data)
        return int(state[ifname])

    monkeypatch.setattr(offloads, "_ethtool", ethtool)
    return calls


def test_set_and_read_the_tx_checksum_offload(monkeypatch):
    state = {"t-ck0": True}
    calls = _fake(monkeypatch, state)
    offloads.set_tx_checksum("t-ck0", False)
    assert offloads.tx_checksum("t-ck0") is False
    assert calls == [("t-ck0", offloads.ETHTOOL_STXCSUM, 0), ("t-ck0", offloads.ETHTOOL_GTXCSUM, 0)]


def test_the_checksum_veth_names_fit_an_interface_name():
    out_name, in_name = csum_veth.names("a-very-long-tunnel-name")
    assert (out_name, in_name) == ("a-very-long-ck0", "a-very-long-ck1")
    assert max(len(out_name), len(in_name)) < offloads.IFNAMSIZ


def test_the_client_sets_no_offload_of_its_nic():
    # Issue 13: the NIC keeps the offloads the kernel gave it; only the checksum
    # veth's sending end has its own turned off (net/csum_veth.py).
    assert "set_tx_checksum" not in inspect.getsource(daemon)
    assert "import offloads" not in inspect.getsource(daemon)
