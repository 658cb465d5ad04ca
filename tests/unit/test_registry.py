"""datapath/registry.py: each map once, and the C and Python sides both made from it."""

import os
import re

from xdp_teredo.datapath import client, guard, limits, registry, relay, source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_each_role_declares_each_of_its_maps_once():
    for role in registry.ROLES:
        text = registry.render_c(role)
        declared = re.findall(r"^BPF_\w+\((?:\"\w+\", [^,]+, [^,]+, )?(\w+)", text, re.M)
        assert declared == list(registry.names(role)), role


def test_the_roles_differ_only_by_the_relays_devmap():
    assert set(registry.names("relay")) - set(registry.names("client")) == {"relay_slots", "relay_egress"}
    assert set(registry.names("client")) <= set(registry.names("relay"))


def test_names_fit_the_kernel_and_are_unique():
    short = [m.name[:registry.NAME_LEN] for m in registry.MAPS]
    assert len(set(short)) == len(short)


def test_the_drivers_take_their_maps_from_the_registry():
    assert client.MAPS == registry.names("client") and relay.MAPS == registry.names("relay")
    # Pinned the same way: what `xdp-teredo stats` reads is there for both.
    assert {"peers", "config", "stats"} <= set(client.PINNED_MAPS) <= set(relay.PINNED_MAPS)
    assert guard.MAPS == ("guard_config", "guard_flows", "guard_fragments", "guard_allow")
    assert limits.MAPS == ("slow_path_limits", "slow_path_sources", "slow_path_global")


def test_capacities_become_cflags():
    flags = registry.cflags("relay", {"TEREDO_PEER_MAX": 65536})
    assert "-DTEREDO_PEER_MAX=65536" in flags and "-DTEREDO_RELAY_PORTS=8" in flags
    assert not any("RELAY_PORTS" in f for f in registry.cflags("client"))


def test_the_units_get_their_block_and_the_headers_call_no_map():
    for role in registry.ROLES:
        text = source.text(role)
        assert source.MAPS_LINE not in text and registry.render_c(role) in text
    lib = os.path.join(ROOT, "bpf", "lib")
    for name in os.listdir(lib):
        with open(os.path.join(lib, name)) as f:
            body = f.read()
        # bcc rewrites map calls only in the unit's text: a header must not make one.
        assert not re.search(r"\b\w+\.(lookup|update|delete|insert|redirect_map)\(", body), name
