"""What `status`, `peers`, `stats` and `counters` show: the daemons' answers (dicts
and rows, served as JSON by the control socket) and the CLI's text for them.

Both tunnel roles (client and relay) answer `peers` with the same rows: the BPF
peer table first (the fast path's view, with its counters), then the peers the
control plane is still resolving (bubbles sent, a connectivity test running).
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional

from ..errors import TeredoError
from ..teredo import guard
from ..teredo.peers import teredo_parts


def _age(now_ns: int, then_ns: int) -> Optional[float]:
    return round((now_ns - then_ns) / 1e9, 3) if then_ns else None


def peer_rows(entries: Iterable, pending: Iterable, *, now_ns: int, now: float,
              is_relay_peer: Callable[[object], bool]) -> List[dict]:
    """`xdp-teredo peers --json`: the BPF entries, then the PeerList's peers that
    are not in the table. is_relay_peer(address): the peer is a native host behind
    a relay (a client's view; a relay's peers are all Teredo clients)."""
    from ..datapath.layout import PeerFlag

    rows, seen = [], set()
    for entry in entries:
        seen.add(entry.address)
        rows.append({
            "address": str(entry.address),
            "mapped": f"{entry.mapped_ipv4}:{entry.mapped_port}",
            "trusted": entry.trusted,
            "learned": bool(entry.flags & PeerFlag.LEARNED),
            "relay": bool(entry.flags & PeerFlag.RELAY),
            # Sent to as the offloads left it, no checksum detour (client/csum_detour.py).
            "takes_offloads": bool(entry.flags & PeerFlag.TAKES_OFFLOADS),
            "last_rx_s": _age(now_ns, entry.last_rx_ns),
            "last_tx_s": _age(now_ns, entry.last_tx_ns),
            "rx_packets": entry.rx_packets, "tx_packets": entry.tx_packets,
            "rx_bytes": entry.rx_bytes, "tx_bytes": entry.tx_bytes,
            "in_datapath": True,
        })
    for peer in pending:
        if peer.address in seen:
            continue
        rows.append({
            "address": str(peer.address),
            "mapped": f"{peer.mapped_ip}:{peer.mapped_port}" if peer.mapping else None,
            "trusted": peer.trusted, "learned": False,
            "relay": is_relay_peer(peer.address),
            "last_rx_s": round(now - peer.last_rx, 3) if peer.last_rx is not None else None,
            "last_tx_s": round(now - peer.last_tx, 3) if peer.last_tx is not None else None,
            "rx_packets": 0, "tx_packets": 0, "rx_bytes": 0, "tx_bytes": 0,
            "in_datapath": False,
            "queued": len(peer.queue), "bubbles": peer.bubble_count,
            "testing": peer.nonce is not None, "unreachable": peer.echo_failed,
        })
    return rows


def native_peer(address) -> bool:
    """A client's peer that is not a Teredo address: a host behind a relay (§5.2.9)."""
    return not teredo_parts(address)


def inbound(settings: guard.Settings, maps, counters) -> dict:
    """The guard in `status`: policy, allowed ports, live flows, and what the slow
    path refused (the fast path's refusals are `stats`' guard_* reasons)."""
    info = settings.describe()
    if maps is not None:
        try:
            info.update(maps.summary())
        except (TeredoError, OSError) as err:
            info["error"] = str(err)
    info["slow_path_dropped"] = {v: counters[f"drop_{v}"] for v in guard.VERDICTS
                                 if counters[f"drop_{v}"]}
    return info


# -- the CLI's text ------------------------------------------------------------------------

_CLIENT_KEYS = ("state", "address", "server", "mapped", "nat", "nat_type", "upnp", "since",
                "tunnel",
                "interface", "local", "xdp", "decap", "peers", "pid", "user")
_RELAY_KEYS = ("role", "state", "ipv4", "port", "ipv4_iface", "ipv6_iface", "tunnel",
               "peers", "pending", "pid", "started")


def status_summary(info: dict) -> str:
    """One line of a role's status, for systemd's STATUS= (daemon/notify.py)."""
    role = info.get("role", "client")
    if role == "server":
        return (f"serving: {info.get('primary')} and {info.get('secondary')}, "
                f"UDP port {info.get('port')}, prefix {info.get('prefix')}")
    if role == "relay":
        line = (f"{info.get('state', 'relaying')}: {info.get('ipv4')}:{info.get('port')} on "
                f"{info.get('ipv4_iface')}, 2001::/32 to {info.get('ipv6_iface')}")
        return line + (f"; {info['peers']} peers" if info.get("peers") is not None else "")
    state, iface = info.get("state") or "offline", info.get("interface")
    if state == "qualified":
        return (f"qualified: {info.get('address')} via server {info.get('server')} on "
                f"{iface} (mapped {info.get('mapped')})")
    if state == "qualifying":
        return f"qualifying: with server {info.get('server')} on {iface}"
    why = info.get("offline_reason") or info.get("reason") or (
        "no Teredo server name resolved yet, retrying" if info.get("server") is None
        else f"no server answered, retrying (next: {info.get('server')})")
    return f"{state}: {why} on {iface}"


# `status` on a terminal: the state in colour, as `systemctl status` does: there,
# working; on the way; not working.
STATE_COLOURS = {"qualified": "green", "relaying": "green", "qualifying": "yellow",
                 "starting": "yellow", "offline": "red"}


def colour_wanted(stream, environ) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to anything
    (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _state(value, colour: bool) -> str:
    text = "-" if value is None else str(value)
    if not colour:
        return text
    import click

    return click.style(text, fg=STATE_COLOURS.get(text, "red"), bold=True)


def _value(info: dict, key: str):
    if key == "nat_type" and info.get("nat_detail"):
        # "symmetric (port-preserving, sequential ports)", as Windows words it.
        detail = info["nat_detail"]
        notes = [n for n, on in (("port-preserving", detail.get("port_preserving")),
                                 ("sequential ports", detail.get("sequential"))) if on]
        if detail.get("upnp") is not None:
            notes.append(f"UPnP {'yes' if detail['upnp'] else 'no'}")
        return info[key] + (f" ({', '.join(notes)})" if notes else "")
    return info[key]


def status_lines(info: dict, colour: bool = False) -> List[str]:
    """`xdp-teredo status` for a client or a relay; the state in colour if asked."""
    relay = info.get("role") == "relay"
    lines = [f"{key:<10} "
             + (_state(info.get(key), colour) if key == "state" else
                ('-' if info.get(key) is None else str(_value(info, key))))
             for key in (_RELAY_KEYS if relay else _CLIENT_KEYS)]
    if info.get("reason"):
        lines.insert(1, f"{'reason':<10} {info['reason']}")   # why offline
    if relay:
        lines += [f"{'hook':<10} {h['interface']}: {h['hook']} ({h['why']})"
                  for h in info.get("hooks", [])]
    elif info.get("decap"):
        # The receive hook and why (--xdp-mode auto chooses per device), and whether
        # the fast path carries the traffic yet (client/handover.py).
        at = next(i for i, line in enumerate(lines) if line.startswith("decap "))
        if info.get("decap_why"):
            lines[at] += f" ({info['decap_why']})"
        fast = info.get("fast_path")
        if fast:
            after = info.get("fast_path_s")
            lines.insert(at + 1, f"{'fast path':<10} {fast}"
                         + (f" ({after:g} s after the start)" if after is not None else ""))
        if info.get("checksum_detour"):
            lines.append(f"{'detour':<10} {info['checksum_detour']}")
    inbound_info = info.get("inbound")
    if inbound_info:
        allowed = ", ".join(inbound_info.get("allowed") or []) or "nothing"
        line = inbound_info.get("policy", "-")
        if line == "stateful":
            line += f" (allowed: {allowed}; {inbound_info.get('flows', 0)} flows open)"
        lines.append(f"{'inbound':<10} {line}")
    return lines


def peer_lines(rows: List[dict]) -> List[str]:
    """`xdp-teredo peers`: one line per peer."""
    lines = [f"{'address':<40} {'mapped':<22} {'trust':<9} {'rx age':>8} {'tx age':>8} "
             f"{'rx pkts':>9} {'tx pkts':>9}"]
    for row in rows:
        trust = "learned" if row.get("learned") else "trusted" if row["trusted"] else "pending"
        ages = [("-" if row[k] is None else f"{row[k]:.1f}s") for k in ("last_rx_s", "last_tx_s")]
        lines.append(f"{row['address']:<40} {row['mapped'] or '-':<22} {trust:<9} "
                     f"{ages[0]:>8} {ages[1]:>8} {row['rx_packets']:>9} {row['tx_packets']:>9}")
    return lines


def stats_lines(snapshot: dict, source: str, show_all: bool = False) -> List[str]:
    """`xdp-teredo stats`: the data path's counters by kind, one line per reason."""
    from ..datapath.layout import Kind, Reason

    titles = {Kind.OK: "fast path", Kind.PASS: "slow path (left to the stack / control plane)",
              Kind.DROP: "dropped"}
    width = max(len(r.key) for r in Reason)
    lines, hidden = [f"instance {source}"], 0
    for kind, title in titles.items():
        rows = [r for r in Reason if r.kind == kind]
        shown = [r for r in rows if show_all or snapshot[r.key]["packets"]
                 or r in (Reason.DECAPSULATED, Reason.ENCAPSULATED)]
        hidden += len(rows) - len(shown)
        lines.append(f"{title}\n  {'reason':<{width}}  {'packets':>12}  {'bytes':>14}")
        lines += [f"  {r.key:<{width}}  {snapshot[r.key]['packets']:>12}  "
                  f"{snapshot[r.key]['bytes']:>14}" for r in shown]
        if not shown:
            lines.append("  (none)")
    if hidden:
        lines.append(f"({hidden} more reasons at 0: --all lists them)")
    return lines


def stats_json(snapshot: dict, source: str) -> dict:
    """`xdp-teredo stats --json`: reason -> packets at the top level (plain integers,
    as scripts compare them), bytes apart."""
    from ..datapath.layout import Reason

    out = {"instance": source}
    out.update({r.key: snapshot[r.key]["packets"] for r in Reason})
    out["bytes"] = {r.key: snapshot[r.key]["bytes"] for r in Reason}
    return out
