"""This run against "today": the BPF ns per packet and the offloads-off ratios.

"Today" is an earlier run (`--baseline results.json`) or, by default,
baseline.json: the tables of the last complete `make bench` published in
docs/benchmarks.md (commit c5cb06e), read back into numbers, with the machine and
the offload setting they were taken with. Pure functions on the results dict and
that baseline: the report and its unit tests call them.
"""

from __future__ import annotations

from .fmt import _fmt, _med, _ratio, _table

# A program row may be this much slower than today before it counts as worse:
# run-to-run variation of BPF_PROG_TEST_RUN timings on a shared VM is larger than
# the spread within one run (docs/benchmarks.md).
DATAPATH_TOLERANCE = 1.10
# "No regression with offloads off": the ratio to plain may lose this share for noise.
RATIO_TOLERANCE = 0.95


def _key(row: dict, role: str) -> tuple:
    return (role, row["program"], row.get("method", "looped"), row.get("table"))


def datapath_rows(now: dict, then: dict) -> list:
    """[(role, program, method, table, ns now, ns then, now/then)] for the rows both have."""
    old = {_key(r, role): r["ns"] for role in ("client", "relay")
           for r in ((then or {}).get(role) or {}).get("rows", [])}
    out = []
    for role in ("client", "relay"):
        for r in ((now or {}).get(role) or {}).get("rows", []):
            k = _key(r, role)
            if k in old:
                out.append((*k, r["ns"], old[k], _ratio(r["ns"], old[k])))
    return out


def _floors(rows: list) -> dict:
    """method -> how far the trivial programs timed that way moved, now / today:
    the machine (and the test run's own set-up), not our code."""
    out = {}
    for method in {r[2] for r in rows}:
        out[method] = _med([r[6] for r in rows if r[1].startswith("trivial") and r[2] == method])
    return out


def same_machine(cpu: str, baseline: dict) -> bool:
    return bool(cpu) and str((baseline or {}).get("machine", "")).startswith(cpu)


def datapath_target(now: dict, baseline: dict, cpu: str = "") -> str:
    """The target line: no program slower than today (the trivial floors left out).
    On another machine (`cpu` is this run's) each ratio is first divided by how far
    the trivial programs moved, and the line says so."""
    what = "BPF ns per packet no worse than today"
    if not now:
        return f"- {what}: not measured in this run"
    if not baseline or not baseline.get("datapath"):
        return f"- {what}: no earlier figures to compare with (this run's are in the BPF table)"
    every = datapath_rows(now, baseline["datapath"])
    rows = [r for r in every if not r[1].startswith("trivial")]
    if not rows:
        return f"- {what}: no program in common with today's figures"
    floors = {} if same_machine(cpu, baseline) else _floors(every)

    def scaled(r):
        return r[6] / (floors.get(r[2]) or 1.0)
    worst = max(rows, key=scaled)
    ratio = scaled(worst)
    floor = floors.get(worst[2])
    verdict = ("**met**" if ratio <= DATAPATH_TOLERANCE else
               f"**missed** by {ratio / DATAPATH_TOLERANCE - 1:.0%}")
    table = f", {worst[3]:,} peers" if worst[3] is not None else ""
    how = ("" if not floor else
           f", on another machine than today's: each ratio divided by how far the trivial "
           f"programs timed the same way moved, {floor:.2f}x for this one")
    return (f"- {what} (each program <= {DATAPATH_TOLERANCE:.2f}x today's, for noise{how}): "
            f"worst {worst[1]} ({worst[2]}{table}) {ratio:.2f}x ({_fmt(worst[4])} ns against "
            f"{_fmt(worst[5])}), {verdict}. Today: {baseline.get('source', '?')}, on "
            f"{str(baseline.get('machine', '?')).rstrip('.')}.")


def datapath_section(now: dict, baseline: dict) -> list:
    rows = datapath_rows(now, (baseline or {}).get("datapath"))
    if not rows:
        return []
    floors = _floors(rows)
    return ([f"BPF ns per packet against today ({baseline.get('source', '?')}; machine then: "
             f"{str(baseline.get('machine', '?')).rstrip('.')}). The last column divides by how "
             "far the trivial programs (the floor of a test run) moved: what is left of the "
             "machine's difference.", ""]
            + _table(["role", "program", "method", "peers", "ns now", "ns today", "now / today",
                      "over the floor"],
                     [[role, prog, method, f"{table:,}" if table is not None else "", _fmt(n),
                       _fmt(t), f"{r:.2f}x" if r else "-",
                       f"{r / floors[method]:.2f}x" if r and floors.get(method) else "-"]
                      for role, prog, method, table, n, t, r in rows],
                     ["---", "---", "---", "---:", "---:", "---:", "---:", "---:"]))


def offloads_off_target(table: dict, baseline: dict) -> str:
    """No regression with offloads off: xdp-teredo / plain, UDP 1200 B and TCP, per
    path, against today's ratios."""
    what = "offloads off, xdp-teredo / plain no worse than today"
    if not table:
        return f"- {what}: not measured in this run"
    then = (baseline or {}).get("ratios") or {}
    cells, worse = [], []
    for path in sorted({p for p, _ in table}):
        ours, plain = table.get((path, "xdp-teredo"), {}), table.get((path, "plain"), {})
        for key, label in (("udp1200", "UDP 1200 B"), ("tcp", "TCP")):
            now = _ratio(_med(ours.get(key, [])), _med(plain.get(key, [])))
            old = (then.get(path) or {}).get(key)
            if now is None:
                continue
            if old is None:
                cells.append(f"{path} {label} {now:.2f} (no figure today)")
                continue
            cells.append(f"{path} {label} {now:.2f} against {old:.2f}")
            if now < old * RATIO_TOLERANCE:
                worse.append(1 - now / old)
    if not cells:
        return f"- {what}: not measured in this run"
    verdict = ("**met**" if not worse else f"**missed**, up to {max(worse):.0%} below today")
    return (f"- {what} (>= {RATIO_TOLERANCE} of today's ratio, for noise): " + "; ".join(cells)
            + f", {verdict}. Today: {(baseline or {}).get('offloads', '?')}.")
