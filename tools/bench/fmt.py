"""Numbers into the report's cells: medians, spreads, ratios, markdown tables.

Pure helpers shared by the report (report.py) and the parts that format their own
sections (host_traffic.py, baseline.py, server_bench.py).
"""

from __future__ import annotations

import statistics

MIB = 1024 * 1024
# The comparison's implementations, in the tables' column order, and UDP payloads.
IMPLS = ["plain", "miredo", "xdp-teredo"]
SIZES = (64, 512, 1200)


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _get(d: dict, key):
    """A dict that went through JSON has string keys."""
    if d is None:
        return None
    return d.get(key, d.get(str(key)))


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "bps":
        return f"{v / 1e6:,.0f} Mbit/s"
    if unit == "ms":
        return f"{v:.2f}"
    if unit == "mib":
        return f"{v / MIB:,.1f}"
    if unit == "pct":
        return f"{100 * v:.0f}%"
    return f"{v:,.0f}"


def _spread(vals, unit=""):
    if unit == "text":
        return "/".join(sorted(set(vals))) or "-"
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1 or min(vals) == max(vals):
        return _fmt(vals[0] if len(vals) == 1 else _med(vals), unit)
    return f"{_fmt(_med(vals), unit)} ({_fmt(min(vals), unit)}..{_fmt(max(vals), unit)})"


def _ratio(a, b):
    return a / b if a and b else None


def _table(header: list, rows: list, align=None) -> list:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    return (["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows] + [""])
