"""--xdp-mode auto's choice of the receive hook, per device (datapath/rxhook.py)."""

import pytest

from xdp_teredo.datapath import rxhook
from xdp_teredo.datapath.redirect import XDP_ACT_BASIC, XDP_ACT_NDO_XMIT, XDP_ACT_REDIRECT

NATIVE = XDP_ACT_BASIC | XDP_ACT_REDIRECT | XDP_ACT_NDO_XMIT


def test_a_veth_takes_tc_whatever_its_features():
    got = rxhook.choose("eth0", kind="veth", features=NATIVE)
    assert (got.hook, got.xdp_mode) == ("tc", None)
    assert got.why.startswith("eth0 is a veth: native XDP would copy each frame")


def test_a_driver_with_native_xdp_takes_native_xdp():
    got = rxhook.choose("enp1s0", kind=None, features=NATIVE)
    assert (got.hook, got.xdp_mode) == ("xdp", "native") and "native XDP" in got.why


def test_a_driver_without_native_xdp_takes_tc():
    got = rxhook.choose("wlan0", kind=None, features=0)
    assert got.hook == "tc" and "no native XDP" in got.why


def test_a_kernel_that_cannot_tell_keeps_xdp_as_before():
    got = rxhook.choose("eth0", kind=None, features=None)
    assert (got.hook, got.xdp_mode) == ("xdp", "auto") and "6.3" in got.why


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_native_and_generic_force_xdp(mode):
    got = rxhook.choose("eth0", kind="veth", features=NATIVE, mode=mode)
    assert (got.hook, got.xdp_mode, got.why) == ("xdp", mode, f"--xdp-mode {mode}")


def test_off_forces_tc():
    got = rxhook.choose("eth0", kind=None, features=NATIVE, mode="off")
    assert (got.hook, got.xdp_mode, got.why) == ("tc", None, "--xdp-mode off")


def test_unknown_mode():
    with pytest.raises(ValueError):
        rxhook.choose("eth0", kind=None, features=None, mode="turbo")
