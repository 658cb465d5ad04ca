"""The relay's programs on real devices, in a throwaway namespace: attach puts XDP or
tc where asked and pins the maps; detach leaves nothing; a relay that died without
detaching is cleaned up by the next one (detach_stale); a driver without native XDP
is reported as such (the orchestrator then uses tc there); and the kernel's
xdp-features say what the relay's hook choice needs.

Everything runs in a thread that entered the namespace (test_relay.in_netns): the
driver works in its caller's network namespace, as the relay daemon does.
"""

import os
import subprocess
import uuid

import pytest

from xdp_teredo.datapath import relay, stats
from xdp_teredo.datapath.redirect import check_egress
from xdp_teredo.errors import RuntimeFailure

from tests.conftest import skip_or_fail

from .test_relay import in_netns, relay_program, sh  # noqa: F401 (relay_program: a fixture)

pytestmark = [pytest.mark.root, pytest.mark.bpf]


@pytest.fixture
def net(require_root):
    tag = uuid.uuid4().hex[:6]
    r, p = f"xt-ratt-{tag}", f"xt-ratt-{tag}-p"
    sh("ip", "netns", "add", r)
    sh("ip", "netns", "add", p)
    try:
        for name in ("up0", "lan0"):
            sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p", "netns", p, ns=r)
            sh("ip", "link", "set", name, "up", ns=r)
            sh("ip", "link", "set", name + "p", "up", ns=p)
        index = {name: int(sh("cat", f"/sys/class/net/{name}/ifindex", ns=r).stdout)
                 for name in ("up0", "lan0", "lo")}
        yield {"ns": r, "peer": p, **index}
    finally:
        subprocess.run(["ip", "netns", "del", r])
        subprocess.run(["ip", "netns", "del", p])


@pytest.fixture
def pin_root():
    if not stats.is_bpffs("/sys/fs/bpf"):
        skip_or_fail("no bpffs on /sys/fs/bpf")
    root = f"/sys/fs/bpf/xdp-teredo-relay-test-{uuid.uuid4().hex[:8]}"
    yield root
    if os.path.isdir(root):
        left = os.listdir(root)
        for d in left:
            os.rmdir(os.path.join(root, d))
        os.rmdir(root)
        assert not left, f"detach left {left}"


def what_is_attached(net) -> dict:
    out = {}
    for dev in ("up0", "lan0"):
        link = sh("ip", "-d", "link", "show", dev, ns=net["ns"]).stdout
        filters = sh("tc", "filter", "show", "dev", dev, "ingress", ns=net["ns"]).stdout
        out[dev] = ("xdp" if "prog/xdp" in link else "") + ("tc" if "tc_teredo_relay" in filters else "")
    return out


@pytest.mark.parametrize("hooks", [("tc", "tc"), ("xdp", "xdp"), ("tc", "xdp")])
def test_attach_then_detach_leaves_nothing(relay_program, net, pin_root, hooks):
    wanted = {net["up0"]: hooks[0], net["lan0"]: hooks[1]}

    def attach():
        return relay_program.attach(wanted, pin=True, pin_root=pin_root, pin_ifindex=net["up0"])

    att = in_netns(net["ns"], attach)
    try:
        assert what_is_attached(net) == {"up0": hooks[0], "lan0": hooks[1]}
        assert sorted(os.listdir(att.pin_dir)) == sorted(relay.PINNED_MAPS)  # as the client: every map
        # Named as the client's instances: `xdp-teredo stats` finds it the same way.
        inode = os.stat(f"/run/netns/{net['ns']}").st_ino
        assert os.path.basename(att.pin_dir) == f"netns{inode}-if{net['up0']}"
        with pytest.raises(RuntimeFailure, match="attached already"):
            in_netns(net["ns"], attach)
    finally:
        in_netns(net["ns"], att.detach)
    assert what_is_attached(net) == {"up0": "", "lan0": ""}
    assert relay_program.attachment is None


def test_a_dead_relay_is_cleaned_up_by_the_next(relay_program, net, pin_root):
    from xdp_teredo.datapath.relay import detach_stale

    wanted = {net["up0"]: "xdp", net["lan0"]: "tc"}
    att = in_netns(net["ns"], lambda: relay_program.attach(wanted, pin=True, pin_root=pin_root,
                                                           pin_ifindex=net["up0"]))
    pin_dir = att.pin_dir
    att._undo.clear()                 # the process "dies": nothing undone
    relay_program.attachment = None
    removed = in_netns(net["ns"], lambda: detach_stale([net["up0"], net["lan0"]], pin_root=pin_root,
                                                        pin_ifindex=net["up0"]))
    assert len(removed) == 1 + 1 + len(relay.PINNED_MAPS), removed   # XDP, one tc filter, every pin
    assert what_is_attached(net) == {"up0": "", "lan0": ""}
    assert not os.path.exists(pin_dir)
    assert in_netns(net["ns"], lambda: detach_stale([net["up0"], net["lan0"]], pin_root=pin_root,
                                                     pin_ifindex=net["up0"])) == []


def test_a_device_without_native_xdp_is_reported_and_nothing_stays(relay_program, net):
    from xdp_teredo.datapath.relay import XdpUnsupported

    wanted = {net["up0"]: "tc", net["lo"]: "xdp"}
    with pytest.raises(XdpUnsupported) as err:
        in_netns(net["ns"], lambda: relay_program.attach(wanted, pin=False))
    assert err.value.ifindex == net["lo"]
    assert what_is_attached(net)["up0"] == "", "the tc filter attached first was removed again"
    assert relay_program.attachment is None


def test_xdp_features_follow_the_veth_peer(net):
    """What redirect.choose_hooks relies on: ndo-xmit on a veth appears and goes
    with GRO (or an XDP program) at its other end, in another namespace."""
    def check():
        return check_egress(net["lan0"], "lan0")

    before = in_netns(net["ns"], check)
    assert before.kind == "veth" and before.takes_redirects is False
    sh("ethtool", "-K", "lan0p", "gro", "on", ns=net["peer"])
    assert in_netns(net["ns"], check).takes_redirects is True
    sh("ethtool", "-K", "lan0p", "gro", "off", ns=net["peer"])
    assert in_netns(net["ns"], check).takes_redirects is False
