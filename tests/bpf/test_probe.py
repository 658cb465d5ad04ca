"""Feature probes: each kernel feature the data path relies on, tried for real."""

import os

import pytest

from xdp_teredo.datapath import probe
from xdp_teredo.errors import RuntimeFailure

pytestmark = [pytest.mark.root, pytest.mark.bpf]


def _kernel():
    return tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])


def test_every_probe_runs_and_this_kernel_has_them(require_bcc):
    results = probe.by_name(probe.run(refresh=True))
    assert set(results) == set(probe.TX_FEATURES) | {f for fs in probe.RX_FEATURES.values() for f in fs}
    for feature in results.values():
        assert feature.detail
    if _kernel() >= (6, 3):  # the newest feature (DECAP_L3_IPV6) arrived in 6.3
        assert all(f.ok for f in results.values()), [f for f in results.values() if not f.ok]
    probe.require(probe.TX_FEATURES + probe.RX_FEATURES["xdp"])


def test_require_names_what_is_missing(require_bcc, monkeypatch):
    found = probe.run()
    broken = [probe.Feature(f.name, False, "refused (Invalid argument)") if f.name == "redirect_neigh" else f
              for f in found]
    monkeypatch.setattr(probe, "_cache", broken)
    with pytest.raises(RuntimeFailure, match="redirect_neigh: refused"):
        probe.require(probe.TX_FEATURES)
    probe.require(probe.RX_FEATURES["tc"])  # does not need it
