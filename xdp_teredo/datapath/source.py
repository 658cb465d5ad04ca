"""Where the BPF C lives, and the text bcc compiles for a role.

A unit (bpf/client.c, bpf/relay.c) says `#include "lib/maps.h"` where its maps
belong; that header only stops a direct compile (#error). The text handed to bcc
has the line replaced by the role's generated block (registry.render_c), because
bcc rewrites map calls only in the text it compiles (docs/kernel-notes.md).
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import RuntimeFailure
from . import registry

MAPS_LINE = '#include "lib/maps.h"'
UNITS = {registry.CLIENT: "client.c", registry.RELAY: "relay.c", registry.SERVER: "server.c"}
PROBE_UNIT = "probe.c"


def bpf_dir() -> str:
    """$XDP_TEREDO_BPF_DIR, else bpf/ next to the package."""
    env = os.environ.get("XDP_TEREDO_BPF_DIR")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "bpf")


def unit_path(role: str, source_dir: Optional[str] = None) -> str:
    return os.path.join(source_dir or bpf_dir(), UNITS[role])


def text(role: str, source_dir: Optional[str] = None) -> str:
    """The unit of `role` with its map block in place."""
    path = unit_path(role, source_dir)
    try:
        with open(path) as f:
            unit = f.read()
    except OSError as err:
        raise RuntimeFailure(f"cannot compile {path}: {err}") from err
    if unit.count(MAPS_LINE + "\n") != 1:
        raise RuntimeFailure(f"{path} must say `{MAPS_LINE}` once, on a line of its own")
    return unit.replace(MAPS_LINE + "\n", registry.render_c(role), 1)
