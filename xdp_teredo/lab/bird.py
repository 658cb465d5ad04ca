"""BIRD 2 (Debian's bird2) as the routing daemon of the fleet lab (lab/fleet.py).

Started and stopped by the lab, as lab/miredo.py does for Miredo: in the
foreground (`bird -f`), as a lab process, with a config file and a control socket
of its own in the lab's workdir, never /etc/bird or /run/bird (Debian's
bird.service is never started: tools/lib.sh apt_ensure). `birdc -s SOCKET` talks
to one instance.

Two configurations, both written here so that what runs is what docs/scaling.md
shows:
- relay_config: on each relay host. The kernel protocol reads the relay's
  announcement table (`xdp-teredo relay --announce-table N`, relay/announce.py)
  with `learn`, takes only routes of proto 144, and BGP announces 2001::/32 to the
  router while that route exists, with the relay's own address as next hop.
- router_config: on the IPv6 router. One BGP session per relay; the kernel
  protocol installs 2001::/32 with every relay as a next hop (`merge paths`: ECMP).

Timers: keepalive 1 s, hold 3 s (BIRD's minimum), so a relay host that dies
without a word is dropped in at most 3 s. A relay *process* that dies is faster:
its route goes with its tun, BIRD sees the netlink deletion and withdraws at once.
BFD is not used: the hold timer alone meets the lab's 5 s budget and is what any
BGP speaker has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from xdp_teredo.errors import RuntimeFailure
from xdp_teredo.lab.netns import BackgroundProcess
from xdp_teredo.relay.announce import ANNOUNCE_PROTO
from xdp_teredo.teredo.constants import TEREDO_PREFIX

HOLD_TIME = 3          # BIRD's minimum; keepalive a third of it
KEEPALIVE_TIME = 1
# Documentation AS numbers (RFC 5398): the native network and the relay fleet.
ROUTER_AS = 64500
RELAY_AS = 64510

# Applied to every BGP session: come up fast in the lab, notice a dead peer in 3 s.
_SESSION = f"""\
    hold time {HOLD_TIME};
    keepalive time {KEEPALIVE_TIME};
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 5;"""


@dataclass
class Bird:
    """A running BIRD: `socket` is its control socket (birdc -s)."""

    role: str
    config: Path
    socket: Path
    process: BackgroundProcess

    def stop(self) -> None:
        self.process.stop()


def relay_config(router_id: str, local: str, neighbor: str, table: int) -> str:
    """BIRD on a relay host: announce 2001::/32 while the relay's route is in `table`."""
    return f"""\
# Written by xdp_teredo/lab/bird.py: a relay host of the fleet (docs/scaling.md).
router id {router_id};
protocol device {{ }}
# The relay's health: 2001::/32 in kernel table {table} while `xdp-teredo relay
# --announce-table {table}` serves. learn: take routes other programs put there.
protocol kernel relay_health {{
    kernel table {table};
    learn;
    scan time 1;
    ipv6 {{ import where krt_source = {ANNOUNCE_PROTO} && net = {TEREDO_PREFIX}; export none; }};
}}
protocol bgp core {{
    local {local} as {RELAY_AS};
    neighbor {neighbor} as {ROUTER_AS};
{_SESSION}
    ipv6 {{ import none; export where proto = "relay_health"; next hop self; }};
}}
"""


def router_config(router_id: str, relays: list) -> str:
    """BIRD on the IPv6 router: 2001::/32 from each relay, ECMP into the kernel.

    relays: (name, local address, relay's address) per BGP session.
    """
    sessions = "".join(f"""\
protocol bgp {name} {{
    local {local} as {ROUTER_AS};
    neighbor {neighbor} as {RELAY_AS};
{_SESSION}
    ipv6 {{ import where net = {TEREDO_PREFIX}; export none; }};
}}
""" for name, local, neighbor in relays)
    return f"""\
# Written by xdp_teredo/lab/bird.py: the router in front of the relay fleet.
router id {router_id};
protocol device {{ }}
# Every relay that announces 2001::/32 becomes a next hop of one kernel route.
protocol kernel {{
    merge paths on;
    ipv6 {{ import none; export all; }};
}}
{sessions}"""


def start(lab, role: str, config: str, *, timeout: float = 10.0) -> Bird:
    """Write `config`, check it, start BIRD in host `role`; returns once it answers."""
    conf = lab.workdir / f"bird-{role}.conf"
    conf.write_text(config)
    sock = lab.workdir / f"bird-{role}.ctl"
    checked = lab.run(role, "bird", "-p", "-c", conf, check=False)
    if checked.returncode != 0:
        raise RuntimeFailure(f"BIRD config for {role} ({conf}): "
                             f"{(checked.stderr or checked.stdout).strip()}")
    proc = lab.spawn(role, "bird", "-f", "-c", conf, "-s", sock,
                     "-P", lab.workdir / f"bird-{role}.pid", log=f"bird-{role}.log")
    bird = Bird(role=role, config=conf, socket=sock, process=proc)
    deadline = time.monotonic() + timeout
    while "Daemon is up and running" not in birdc(lab, bird, "show", "status", check=False):
        if not proc.alive():
            raise RuntimeFailure(f"BIRD in {role} exited {proc.stop()}; log:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"BIRD in {role}: no answer on {sock} within {timeout:g} s")
        time.sleep(0.1)
    return bird


def birdc(lab, bird: Bird, *args: str, check: bool = True) -> str:
    """`birdc -s SOCKET ARGS` in the BIRD's host: its output."""
    res = lab.run(bird.role, "birdc", "-s", bird.socket, *args, check=False)
    if check and res.returncode != 0:
        raise RuntimeFailure(f"birdc {' '.join(args)} in {bird.role}: "
                             f"{(res.stderr or res.stdout).strip()}")
    return res.stdout


def established(lab, bird: Bird) -> list:
    """Names of this BIRD's BGP sessions that are Established."""
    out = birdc(lab, bird, "show", "protocols", check=False)
    return [line.split()[0] for line in out.splitlines()
            if " BGP " in line and "Established" in line]
