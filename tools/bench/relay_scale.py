"""The relay with 100,000 peers in its table versus 10, in the lab.

The issue's target: no loss of throughput from 10 to 100,000 peers. The relay is
xdp-teredo's, on the relay path (client1 behind its NAT -> relay -> v6host), started
with --max-peers 131072 (its default, 65,536, holds fewer than 100,000). One relay
process serves both sizes: between measurements its BPF peer map is filled with
synthetic trusted clients (synthetic.py), or emptied again, through the map API
(the map is opened by id, found in the fdinfo of the relay's descriptors), so
nothing but the table's size changes. Rounds alternate which size goes first.

Per size: delivered UDP packets/s at 1200 bytes and one TCP stream, as in the
comparison; the relay programs' own nanoseconds per run in this live traffic
(kernel run-time statistics, enabled for these flows only); the relay daemon's CPU.
Then, with the full table and no traffic, the relay's CPU over one period of its
sweep of idle learned peers (which walks the whole table in Python); and memory:
the relay's resident set idle, with the full table, and after `xdp-teredo peers
--json` listed it (how long that took, or how it failed).
"""

from __future__ import annotations

import json
import sys
import time

from xdp_teredo.lab import roles, traffic

from . import memory, setups
from .synthetic import SyntheticPeers

SIZES = (10, 100_000)
MAX_PEERS = 131072
PAYLOAD = 1200


def _peer_map(pid: int):
    objects = traffic.bpf_objects([pid])
    for map_id, name in traffic.map_names(objects).items():
        if name == "peers":
            return traffic.open_map(map_id)
    raise RuntimeError(f"no map named peers among the relay's (pid {pid})")


def _prog_delta(before: dict, after: dict) -> dict:
    out = {}
    for name, (cnt, ns) in after.items():
        c0, n0 = before.get(name, (0, 0))
        if cnt - c0 > 0:
            out[name] = {"runs": cnt - c0, "ns_per_run": (ns - n0) / (cnt - c0)}
    return out


def _hold(pid: int, entries: int) -> dict:
    """The relay's CPU while it holds the full table and carries no traffic, over
    one period of its sweep of idle learned peers (relay.SWEEP_INTERVAL), which
    reads every entry of the table in Python. Sampled twice a second, so that the
    sweep shows as one burst; a burst still running at the end is waited for."""
    from xdp_teredo.relay.daemon import SWEEP_INTERVAL

    samples = []
    last = traffic.tree_cpu_seconds([pid])
    start = time.monotonic()
    while True:
        time.sleep(0.5)
        now = traffic.tree_cpu_seconds([pid])
        samples.append(now - last)
        last = now
        elapsed = time.monotonic() - start
        if elapsed >= SWEEP_INTERVAL + 1 and (samples[-1] < 0.1 or elapsed > SWEEP_INTERVAL + 15):
            break
    bursts, busy = [], 0
    for used in samples + [0.0]:
        if used >= 0.25:                          # over half a core in that half second
            busy += 1
        elif busy:
            bursts.append(busy * 0.5)
            busy = 0
    return {"entries": entries, "seconds": time.monotonic() - start, "cpu_s": sum(samples),
            "bursts": len(bursts), "longest_burst_s": max(bursts, default=0.0),
            "sweep_interval": SWEEP_INTERVAL}


def measure(lab, *, repeats: int, seconds: float, streams: int, sizes=SIZES) -> dict:
    ep = setups.xdp_teredo_impl(lab, "relay", relay_args=("--max-peers", str(MAX_PEERS)))
    relay_pid = ep.daemons["xdp-teredo@relay"][0]
    out = {"max_peers": MAX_PEERS, "sizes": list(sizes), "payload": PAYLOAD,
           "runs": [], "memory": {}}
    peers_map = _peer_map(relay_pid)
    table = SyntheticPeers(peers_map)
    try:
        out["memory"]["idle"] = memory.snapshot([relay_pid])
        for rnd in range(repeats):
            order = list(sizes) if rnd % 2 == 0 else list(reversed(sizes))
            for size in order:
                t0 = time.monotonic()
                entries = table.resize(size)
                fill_s = time.monotonic() - t0
                # The relay's own CPU over the whole block at this size, flows and
                # pauses: its periodic work over the table (the sweep of idle
                # learned peers every 30 s) shows here, not per packet.
                cpu0, wall0 = traffic.tree_cpu_seconds([relay_pid]), time.monotonic()
                print(f"relay table: round {rnd + 1}/{repeats}, {entries} entries "
                      f"(resized in {fill_s:.1f} s)", file=sys.stderr, flush=True)
                with traffic.BpfRunStats():
                    progs0 = traffic.prog_runs([relay_pid])
                    udp = traffic.iperf3(lab, ep.src, ep.dst, ep.address, udp_payload=PAYLOAD,
                                         seconds=seconds, streams=streams, daemons=ep.daemons)
                    progs1 = traffic.prog_runs([relay_pid])
                    tcp = traffic.iperf3(lab, ep.src, ep.dst, ep.address, seconds=seconds,
                                         daemons=ep.daemons)
                out["runs"].append({
                    "round": rnd, "size": size, "entries": entries,
                    "entries_after": table.entries(),
                    "udp_pps": udp.delivered_pps, "udp_offered_pps": udp.offered_pps,
                    "udp_loss": udp.loss, "cpu_ns_per_pkt": udp.cpu_ns_per_packet(),
                    "relay_cpu_ns_per_pkt": udp.cpu_ns_per_packet("xdp-teredo@relay"),
                    "tcp_bps": tcp.delivered_bps,
                    "relay_programs": _prog_delta(progs0, progs1),
                    "relay_cpu_share": (traffic.tree_cpu_seconds([relay_pid]) - cpu0)
                                       / (time.monotonic() - wall0),
                })
        table.resize(max(sizes))
        out["idle_hold"] = _hold(relay_pid, table.entries())
        out["memory"]["full"] = memory.snapshot([relay_pid])
        out["memory"]["full"]["entries"] = table.entries()
        # An operator listing the table: the control socket builds every row in
        # the relay's Python process.
        t0 = time.monotonic()
        res = roles.cli(lab, "relay", "peers", "--json", timeout=300)
        listed = {"seconds": time.monotonic() - t0, "ok": res.returncode == 0,
                  "error": None if res.returncode == 0 else (res.stderr or res.stdout).strip()[-300:]}
        if res.returncode == 0:
            try:
                listed["rows"] = len(json.loads(res.stdout))
            except ValueError:
                listed["rows"] = None
        out["memory"]["listed"] = {**memory.snapshot([relay_pid]), "peers_listing": listed}
    finally:
        table.clear()
        peers_map.close()
        ep.teardown()
    return out


# ----------------------------------------------------------------- report (pure)

# "No loss of throughput" from 10 to 100,000 peers: the 100,000-peer median at
# least this share of the 10-peer one. The tolerance is for noise, and is below
# the run-to-run spread of one size on the 2-core VM these were developed on.
TABLE_TOLERANCE = 0.95


def by_size(scale: dict) -> dict:
    """table size -> metric -> per-round values, from this part's results."""
    by_size: dict = {}
    for run in scale["runs"]:
        cell = by_size.setdefault(int(run["size"]), {"udp_pps": [], "tcp_bps": [], "prog_ns": [],
                                                     "relay_cpu": [], "cpu": [], "entries": [],
                                                     "loss": [], "relay_share": []})
        cell["udp_pps"].append(run["udp_pps"])
        cell["tcp_bps"].append(run["tcp_bps"])
        cell["relay_cpu"].append(run["relay_cpu_ns_per_pkt"])
        cell["cpu"].append(run["cpu_ns_per_pkt"])
        cell["entries"].append(run["entries"])
        cell["loss"].append(run["udp_loss"])
        cell["relay_share"].append(run.get("relay_cpu_share"))
        progs = [v for k, v in run["relay_programs"].items() if k.startswith(("xdp_teredo_rel", "tc_teredo_rela"))]
        total = sum(v["runs"] for v in progs)
        cell["prog_ns"].append(sum(v["runs"] * v["ns_per_run"] for v in progs) / total if total else None)
    return by_size
