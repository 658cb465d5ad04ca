"""The host's own traffic through a NIC our client is attached to (issue 13).

Plain IPv4, no Teredo: what every other program on a host pays because our client
sits on its NIC. client1 (behind nat1) exchanges iperf3 traffic with `public`
through client1's eth0:
  - TCP, one stream, client1 -> public ("send": out through the NIC's transmit
    path) and public -> client1 ("receive", iperf3 -R: in through the receive hook);
  - UDP 1200 B, client1 -> public, 2 streams at unlimited rate.
Variants, interleaved round by round (round r starts with a different one):
  - "not attached": no client on client1;
  - "auto": `xdp-teredo attach eth0` with its defaults (the receive hook
    --xdp-mode auto picks for this device; `status` says which and why);
  - "native": `--xdp-mode native` (XDP on the veth), optional.
Each client is started for its round and stopped after it. The state of the NIC's
transmit offloads is read while each variant runs (whatever the product does to
its NIC is part of what is measured). The report gives the ratio of the medians,
attached / not attached.
"""

from __future__ import annotations

import json
import sys

from xdp_teredo.lab import roles, traffic

from . import lab_offloads
from .fmt import _med, _ratio, _spread, _table

HOST, PEER = "client1", "public"
PAYLOAD = 1200
VARIANTS = {"not attached": None, "auto": (), "native": ("--xdp-mode", "native")}


def _flows(lab, seconds: float, streams: int, daemons: dict) -> dict:
    address = str(lab[PEER].ipv4[0])
    tcp = traffic.iperf3(lab, HOST, PEER, address, seconds=seconds, daemons=daemons)
    rx = traffic.iperf3(lab, HOST, PEER, address, seconds=seconds, daemons=daemons, reverse=True)
    udp = traffic.iperf3(lab, HOST, PEER, address, udp_payload=PAYLOAD, seconds=seconds,
                         streams=streams, daemons=daemons)
    return {"tcp_send_bps": tcp.delivered_bps, "tcp_receive_bps": rx.delivered_bps,
            "udp_pps": udp.delivered_pps, "udp_offered_pps": udp.offered_pps,
            "udp_cpu_ns_per_pkt": udp.cpu_ns_per_packet(),
            "udp_cpu_ns_per_offered": udp.cpu_ns_per_offered()}


def _one(lab, variant: str, args, seconds: float, streams: int) -> dict:
    run = {"variant": variant}
    client = None
    if args is not None:
        client = roles.start_client(lab, "xdp-teredo", HOST, lab["server"].ipv4[0], *args)
    try:
        if client is not None:
            info = json.loads(roles.cli(lab, HOST, "status", "--json").stdout or "{}")
            run["hook"], run["hook_why"] = info.get("decap"), info.get("decap_why")
        run["nic"] = lab_offloads.features(lab, HOST, lab[HOST].uplink)
        daemons = {"client": [client.process.pid]} if client else {}
        run.update(_flows(lab, seconds, streams, daemons))
    finally:
        if client is not None:
            client.stop()
    return run


def measure(lab, *, repeats: int = 3, seconds: float = 3.0, streams: int = 2,
            native: bool = True) -> dict:
    """{"runs": [...], "host": ..., "peer": ...}; the xdp-teredo server runs on
    `server` for the whole part (the client qualifies with it)."""
    variants = [v for v in VARIANTS if native or v != "native"]
    server = roles.start_server(lab, "xdp-teredo")
    runs = []
    try:
        for rnd in range(repeats):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for variant in order:
                print(f"host-traffic {rnd + 1}/{repeats}: {variant}", file=sys.stderr, flush=True)
                runs.append({"round": rnd, **_one(lab, variant, VARIANTS[variant], seconds,
                                                  streams)})
    finally:
        server.stop()
    return {"host": HOST, "peer": PEER, "payload": PAYLOAD, "seconds": seconds,
            "streams": streams, "runs": runs}


# ----------------------------------------------------------------- report (pure)

# The host's own TCP through a NIC we are attached to, attached / not attached.
TARGET = 0.95
METRICS = (("TCP, one stream, send (out through the NIC)", "tcp_send_bps", "bps"),
           ("TCP, one stream, receive (in through the receive hook)", "tcp_receive_bps", "bps"),
           (f"UDP {PAYLOAD} B, delivered pkt/s", "udp_pps", ""),
           (f"UDP {PAYLOAD} B, offered pkt/s", "udp_offered_pps", ""),
           (f"UDP {PAYLOAD} B, machine CPU ns per delivered pkt", "udp_cpu_ns_per_pkt", ""),
           (f"UDP {PAYLOAD} B, machine CPU ns per offered pkt", "udp_cpu_ns_per_offered", ""))


def by_variant(ht: dict) -> dict:
    """variant -> metric -> per-round values; plus "hook"/"why"/"nic" as seen."""
    out: dict = {}
    for run in (ht or {}).get("runs", []):
        cell = out.setdefault(run["variant"], {"hook": set(), "why": set(), "nic": set()})
        for _, key, _ in METRICS:
            cell.setdefault(key, []).append(run.get(key))
        if run.get("hook"):
            cell["hook"].add(run["hook"])
            cell["why"].add(run.get("hook_why") or "")
        nic = run.get("nic") or {}
        cell["nic"].add(", ".join(f"{k} {v}" for k, v in sorted(nic.items())))
    return out


def ratios(ht: dict) -> dict:
    """attached variant -> metric -> ratio of the medians, attached / not attached."""
    cells = by_variant(ht)
    base = cells.get("not attached")
    if not base:
        return {}
    return {v: {key: _ratio(_med(c[key]), _med(base[key])) for _, key, _ in METRICS}
            for v, c in cells.items() if v != "not attached"}


def target_line(ht: dict) -> str:
    what = f"the host's plain TCP through a NIC we are attached to, attached / not >= {TARGET}"
    got = ratios(ht).get("auto")
    if not got:
        return f"- {what}: not measured in this run"
    hook = "/".join(sorted(by_variant(ht)["auto"]["hook"])) or "?"
    send, recv = got.get("tcp_send_bps"), got.get("tcp_receive_bps")
    values = [r for r in (send, recv) if r is not None]
    if not values:
        return f"- {what}: not measured in this run"
    worst = min(values)
    verdict = "**met**" if worst >= TARGET else f"**missed** by {(TARGET - worst) / TARGET:.0%}"
    fmt = lambda r: f"{r:.2f}" if r is not None else "-"  # noqa: E731
    return (f"- {what} (the default receive hook, auto: {hook}): send {fmt(send)}, "
            f"receive {fmt(recv)}, {verdict}.")


def section(ht: dict) -> list:
    cells = by_variant(ht)
    if not cells:
        return []
    variants = [v for v in VARIANTS if v in cells]
    head = {v: (v if v == "not attached" else
                f"attached, {v} ({'/'.join(sorted(cells[v]['hook'])) or '?'})") for v in variants}
    lines = ["### The host's own traffic through our NIC (`host-traffic`)", "",
             f"Plain IPv4 from `{ht['host']}` (behind nat1) to `{ht['peer']}` through "
             f"{ht['host']}'s NIC, with our client attached there or not; "
             f"{len({r['round'] for r in ht['runs']})} rounds of {ht['seconds']:g} s, variants "
             f"interleaved, {ht['streams']} UDP streams. Median (min..max).", ""]
    rows = [[label] + [_spread(cells[v][key], unit) for v in variants] for label, key, unit in METRICS]
    rows.append(["NIC offloads while it ran"] + [_spread(list(cells[v]["nic"]), "text")
                                                 for v in variants])
    lines += _table([""] + [head[v] for v in variants], rows)
    got = ratios(ht)
    if got:
        attached = [v for v in variants if v in got]
        lines += _table(["attached / not attached"] + [head[v] for v in attached],
                        [[label] + [f"{got[v][key]:.2f}x" if got[v][key] else "-" for v in attached]
                         for label, key, _ in METRICS])
    for v in variants:
        for why in sorted(cells[v]["why"]):
            if why:
                lines.append(f"- {head[v]}: the client says: {why}.")
    return lines + [""]
