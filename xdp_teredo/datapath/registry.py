"""Every BPF map of the data path, once: the source of both the C and the Python side.

bcc 0.26 turns `map.lookup(...)` into a map reference only in the text it compiles,
never in an included header nor inside a macro (docs/kernel-notes.md). So each
map's declaration and the few operations the programs make on it are generated
here, per role, into the unit's text (source.py puts them where the unit says
`#include "lib/maps.h"`); the headers in bpf/lib/ are map-free and call these
accessors. The drivers take their map lists, pins and capacities from here too.

    registry.names("relay")          # every map of the relay, in declaration order
    registry.pinned("client")        # what attach pins (stats.PinnedMaps reads them)
    registry.cflags({"TEREDO_PEER_MAX": 65536})
    registry.render_c("client")      # the C block
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from ..teredo import constants

CLIENT, RELAY, SERVER = "client", "relay", "server"
ROLES = (CLIENT, RELAY, SERVER)


@dataclasses.dataclass(frozen=True)
class MapSpec:
    name: str                 # as in C and as pinned (the kernel keeps 15 characters)
    kind: str                 # lru_hash, hash, array, percpu_array, devmap
    key: str                  # C key type
    value: str                # C value type
    capacity: Tuple[Optional[str], int]  # (-D symbol or None, default)
    roles: Tuple[str, ...]
    group: str                # which typed wrapper reads it: core, guard, slow_path, relay
    ops: Tuple[str, ...]      # accessors the programs need: get, lookup, update, ...
    doc: str                  # one line: what it holds, and why this kind
    pinned: bool = True


_BOTH = (CLIENT, RELAY)
_ALL = (CLIENT, RELAY, SERVER)
MAPS: Tuple[MapSpec, ...] = (
    MapSpec("peers", "lru_hash", "struct teredo_peer_key", "struct teredo_peer",
            ("TEREDO_PEER_MAX", constants.PEER_LIST_MAX), _BOTH, "core", ("lookup", "insert"),
            "Peers by IPv6 address (RFC 4380 §5.2.4, §5.4.1); LRU so learning stays bounded."),
    MapSpec("config", "array", "int", "struct teredo_config", (None, 1), _BOTH, "core", ("get",),
            "The control plane's configuration: one entry, index 0."),
    MapSpec("stats", "percpu_array", "int", "struct teredo_stat", (None, "TEREDO_R_MAX"), _ALL,
            "core", ("lookup",), "One counter pair per verdict reason, per CPU."),
    MapSpec("relay_slots", "hash", "__u32", "__u32", ("TEREDO_RELAY_PORTS", 8), (RELAY,), "relay",
            ("lookup",), "ifindex -> slot in relay_egress: devices that take XDP-redirected "
            "frames now."),
    MapSpec("relay_egress", "devmap", "int", "int", ("TEREDO_RELAY_PORTS", 8), (RELAY,), "relay",
            ("redirect",), "XDP redirect targets, by slot."),
    MapSpec("guard_config", "array", "int", "struct teredo_guard_config", (None, 1), _BOTH,
            "guard", ("get",), "The guard's policy and timeouts: one entry; all zeros = open."),
    MapSpec("guard_flows", "lru_hash", "struct teredo_flow_key", "struct teredo_flow",
            ("TEREDO_FLOW_MAX", constants.GUARD_FLOW_MAX), _BOTH, "guard",
            ("lookup", "update", "delete"),
            "Flows the protected host started; LRU: when full, the idlest goes."),
    MapSpec("guard_fragments", "lru_hash", "struct teredo_fragment_key", "__u64",
            ("TEREDO_FRAGMENT_MAX", constants.GUARD_FRAGMENT_MAX), _BOTH, "guard",
            ("lookup", "update"), "Fragmented packets whose first fragment came in -> when "
            "(RFC 8200 §4.5)."),
    MapSpec("guard_allow", "hash", "struct teredo_allow_key", "struct teredo_allow",
            ("TEREDO_ALLOW_MAX", constants.GUARD_ALLOW_MAX), _BOTH, "guard", ("lookup",),
            "(protocol, port) -> hits: what --allow opened."),
    MapSpec("slow_path_limits", "array", "int", "struct teredo_slow_path_limits", (None, 1), _ALL,
            "slow_path", ("get",), "The slow-path rates (datapath/limits.py)."),
    MapSpec("slow_path_sources", "lru_hash", "struct teredo_slow_path_key", "__u64",
            ("TEREDO_SLOW_PATH_SOURCES", 4096), _ALL, "slow_path", ("lookup_or_init",),
            "One GCRA bucket per (IPv4 source, kind); LRU: a spoofer's sources push out "
            "one another."),
    MapSpec("slow_path_global", "array", "int", "__u64", (None, 1), _ALL, "slow_path", ("get",),
            "The one bucket for every sender together."),
)
# The server's fast path (bpf/server.c): its RA limits' buckets are slow_path_sources
# entries of their own kind (TEREDO_SLOW_PATH_RA), so one LRU bounds every sender.
MAPS += (
    MapSpec("server_config", "array", "int", "struct teredo_server_config", (None, 1),
            (SERVER,), "server", ("get",),
            "The server's addresses, its RA and the RA rates: one entry, written by the daemon."),
    MapSpec("server_ra_global", "array", "int", "__u64", (None, 1), (SERVER,), "server",
            ("get",), "The one GCRA bucket of every RA the program sends."),
)
BY_NAME: Dict[str, MapSpec] = {m.name: m for m in MAPS}
# The kernel keeps 15 characters of a map's or program's name (BPF_OBJ_NAME_LEN - 1).
NAME_LEN = 15


def specs(role: str) -> Tuple[MapSpec, ...]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    return tuple(m for m in MAPS if role in m.roles)


def names(role: str) -> Tuple[str, ...]:
    return tuple(m.name for m in specs(role))


def pinned(role: str) -> Tuple[str, ...]:
    return tuple(m.name for m in specs(role) if m.pinned)


def group(name: str) -> Tuple[str, ...]:
    """The maps one typed wrapper reads (guard.GuardMaps, limits.SlowPathMaps), in order."""
    return tuple(m.name for m in MAPS if m.group == name)


def cflags(role: str, capacities: Optional[Dict[str, int]] = None) -> list:
    """-D flags for every capacity symbol of the role: the default unless given."""
    given = dict(capacities or {})
    out = {}
    for m in specs(role):
        symbol, default = m.capacity
        if symbol and symbol not in out:
            out[symbol] = int(given.pop(symbol, default))
    if given:
        raise ValueError(f"no map of the {role} has the capacity {sorted(given)}")
    return [f"-D{symbol}={value}" for symbol, value in out.items()]


# -- C -----------------------------------------------------------------------------

_DECLARE = {
    "lru_hash": 'BPF_TABLE("lru_hash", {key}, {value}, {name}, {size});',
    "hash": "BPF_HASH({name}, {key}, {value}, {size});",
    "array": "BPF_ARRAY({name}, {value}, {size});",
    "percpu_array": "BPF_PERCPU_ARRAY({name}, {value}, {size});",
    "devmap": "BPF_DEVMAP({name}, {size});",
}

_OPS = {
    "get": ("static __always_inline {value} *{name}_get(void)\n"
            "{{\n\tint zero = 0;\n\n\treturn {name}.lookup(&zero);\n}}"),
    "lookup": ("static __always_inline {value} *{name}_lookup({key} *key)\n"
               "{{\n\treturn {name}.lookup(key);\n}}"),
    "update": ("static __always_inline void {name}_update({key} *key, {value} *value)\n"
               "{{\n\t{name}.update(key, value);\n}}"),
    "delete": ("static __always_inline void {name}_delete({key} *key)\n"
               "{{\n\t{name}.delete(key);\n}}"),
    # NOEXIST: never overwrites what the control plane wrote meanwhile.
    "insert": ("static __always_inline void {name}_insert(const {key} *key, {value} *value)\n"
               "{{\n\t{name}.insert(({key} *)key, value);\n}}"),
    "lookup_or_init": ("static __always_inline {value} *{name}_lookup_or_init({key} *key)\n"
                       "{{\n\t{value} fresh;\n\n\t__builtin_memset(&fresh, 0, sizeof(fresh));\n"
                       "\treturn {name}.lookup_or_try_init(key, &fresh);\n}}"),
    "redirect": ("static __always_inline int {name}_redirect(__u32 slot, __u64 flags)\n"
                 "{{\n\treturn {name}.redirect_map(slot, flags);\n}}"),
}


def render_c(role: str) -> str:
    """The role's map declarations and accessors, as C for the unit's text."""
    lines = [f"/* The {role}'s maps and their accessors: GENERATED by "
             "xdp_teredo/datapath/registry.py. */"]
    for m in specs(role):
        symbol, default = m.capacity
        if symbol:
            lines += [f"#ifndef {symbol}", f"#define {symbol} {default}", "#endif"]
        size = symbol or default
        lines.append(f"/* {m.doc} */")
        lines.append(_DECLARE[m.kind].format(name=m.name, key=m.key, value=m.value, size=size))
    for m in specs(role):
        for op in m.ops:
            lines.append(_OPS[op].format(name=m.name, key=m.key, value=m.value))
    return "\n".join(lines) + "\n"

