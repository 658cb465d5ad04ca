"""Tables, ratios and plots from one `make bench` run, into docs/benchmarks.md.

The generated part of docs/benchmarks.md sits between two marker lines and is
replaced on every run; the prose around it is kept.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

BEGIN = "<!-- make bench: begin (generated, do not edit) -->"
END = "<!-- make bench: end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
IMG = DOC.parent / "img"

# The targets, checked (never asserted) here.
TARGETS = [
    ("p2p", "udp1200", "miredo", 3.0),
    ("p2p", "udp1200", "plain", 0.8),
    ("p2p", "tcp", "miredo", 3.0),
]


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "iperf3": ver(["iperf3", "--version"]), "miredo": ver(["miredo", "-V"])}


def _metric(run: dict, key: str):
    if key.startswith("udp"):
        return run["udp"][str(int(key[3:]))]["delivered_pps"] if str(int(key[3:])) in run["udp"] \
            else run["udp"][int(key[3:])]["delivered_pps"]
    if key == "tcp":
        return run["tcp"]["bps"]
    raise KeyError(key)


def _udp(run: dict, size: int) -> dict:
    return run["udp"].get(str(size)) or run["udp"].get(size)


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def collate(results: dict) -> dict:
    """(path, impl) -> metric -> list of per-round values."""
    table: dict = {}
    for run in results["runs"]:
        cell = table.setdefault((run["path"], run["impl"]), {})
        for size in (64, 512, 1200):
            u = _udp(run, size)
            cell.setdefault(f"udp{size}", []).append(u["delivered_pps"])
            cell.setdefault(f"offered{size}", []).append(u["offered_pps"])
            cell.setdefault(f"cpu{size}", []).append(u["cpu_ns_per_pkt"])
            # Under 1% loss the path kept up with everything offered: the generator
            # (sharing the machine's cores) was the limit, and the path's capacity
            # is at least the rate shown. Compare CPU per packet there.
            cell.setdefault(f"bound{size}", []).append("generator" if u["loss"] < 0.01 else "path")
            for label, ns in (u.get("daemon_cpu_ns_per_pkt") or {}).items():
                cell.setdefault(f"daemon{size}:{label}", []).append(ns)
        cell.setdefault("tcp", []).append(run["tcp"]["bps"])
        cell.setdefault("p50", []).append(run["latency"]["p50_ms"])
        cell.setdefault("p99", []).append(run["latency"]["p99_ms"])
    return table


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "bps":
        return f"{v / 1e6:,.0f} Mbit/s"
    if unit == "ms":
        return f"{v:.2f}"
    return f"{v:,.0f}"


def _spread(vals, unit=""):
    if unit == "text":
        return "/".join(sorted(set(vals))) or "-"
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{_fmt(_med(vals), unit)} ({_fmt(min(vals), unit)}..{_fmt(max(vals), unit)})"


def markdown(results: dict, table: dict, plots: list) -> str:
    m = results["machine"]
    cfg = results["config"]
    lines = [BEGIN, "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['iperf3']}; "
             f"{m['miredo']}. {cfg['repeats']} rounds of {cfg['seconds']:g} s per measurement, "
             f"{cfg['streams']} UDP streams, implementations interleaved. Median (min..max).", ""]
    impls = sorted({i for _, i in table}, key=["plain", "miredo", "xdp-teredo"].index)
    for path in sorted({p for p, _ in table}):
        lines += [f"### Path `{path}`", "",
                  "| | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
        rows = [(f"UDP {s} B, delivered pkt/s", f"udp{s}", "") for s in (64, 512, 1200)]
        rows += [(f"UDP {s} B, offered pkt/s", f"offered{s}", "") for s in (64, 512, 1200)]
        rows += [(f"UDP {s} B, limited by", f"bound{s}", "text") for s in (64, 512, 1200)]
        rows += [(f"UDP {s} B, machine CPU ns/pkt", f"cpu{s}", "") for s in (64, 512, 1200)]
        rows += [("TCP, one stream", "tcp", "bps"), ("ping p50 under load, ms", "p50", "ms"),
                 ("ping p99 under load, ms", "p99", "ms")]
        for label, key, unit in rows:
            cells = [_spread(table.get((path, i), {}).get(key, []), unit) for i in impls]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        daemon_keys = sorted({k for i in impls for k in table.get((path, i), {}) if k.startswith("daemon1200:")})
        for key in daemon_keys:
            impl_of = next(i for i in impls if key in table.get((path, i), {}))
            lines.append(f"| tunnel daemon CPU ns/pkt, 1200 B, {key.split(':', 1)[1]} | " + " | ".join(
                _spread(table[(path, i)][key]) if i == impl_of else "" for i in impls) + " |")
        lines.append("")
        if "xdp-teredo" in impls:
            lines += ["| ratio | " + " | ".join(["UDP 64", "UDP 512", "UDP 1200", "TCP"]) + " |",
                      "|---|---:|---:|---:|---:|"]
            for base in ("miredo", "plain"):
                if base not in impls:
                    continue
                cells = []
                for key in ("udp64", "udp512", "udp1200", "tcp"):
                    a = _med(table[(path, "xdp-teredo")].get(key, []))
                    b = _med(table[(path, base)].get(key, []))
                    cells.append(f"{a / b:.2f}x" if a and b else "-")
                lines.append(f"| xdp-teredo / {base} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["Where a cell says the generator was the limit, the path delivered everything",
              "offered: its capacity is higher than the rate shown, and the machine CPU per",
              "packet is the fair comparison. Every host shares the same two cores.", "",
              "### Targets", ""]
    for path, key, base, want in TARGETS:
        a = _med(table.get((path, "xdp-teredo"), {}).get(key, []))
        b = _med(table.get((path, base), {}).get(key, []))
        if a is None or b is None:
            lines.append(f"- {path} {key} xdp-teredo/{base} >= {want}: not measured in this run")
            continue
        ratio = a / b
        verdict = "met" if ratio >= want else f"MISSED by {(want - ratio) / want:.0%}"
        lines.append(f"- {path} {key}: xdp-teredo/{base} = {ratio:.2f} (target {want}): {verdict}")
    lines.append("")
    for p in plots:
        lines.append(f"![{p.stem}](img/{p.name})")
    lines += ["", END]
    return "\n".join(lines)


def plot(table: dict) -> list:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    IMG.mkdir(parents=True, exist_ok=True)
    out = []
    sizes = (64, 512, 1200)
    for path in sorted({p for p, _ in table}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl in ("plain", "miredo", "xdp-teredo"):
            cell = table.get((path, impl))
            if not cell:
                continue
            ax.plot(sizes, [_med(cell[f"udp{s}"]) for s in sizes], marker="o", label=impl)
        ax.set_xlabel("UDP payload (bytes)")
        ax.set_ylabel("delivered packets/s")
        ax.set_title(f"Rate against packet size, path {path}")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        dest = IMG / f"bench-rate-{path}.png"
        fig.savefig(dest, dpi=90)
        plt.close(fig)
        out.append(dest)
        if (path, "xdp-teredo") in table:
            fig, ax = plt.subplots(figsize=(6, 4))
            for base in ("miredo", "plain"):
                if (path, base) not in table:
                    continue
                ratios = []
                for s in sizes:
                    a, b = _med(table[(path, "xdp-teredo")][f"udp{s}"]), _med(table[(path, base)][f"udp{s}"])
                    ratios.append(a / b if a and b else 0)
                ax.plot(sizes, ratios, marker="o", label=f"xdp-teredo / {base}")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_xlabel("UDP payload (bytes)")
            ax.set_ylabel("ratio of delivered packets/s")
            ax.set_title(f"Ratios, path {path}")
            ax.legend()
            fig.tight_layout()
            dest = IMG / f"bench-ratio-{path}.png"
            fig.savefig(dest, dpi=90)
            plt.close(fig)
            out.append(dest)
    return out


def write(results: dict, out_dir: Path) -> None:
    table = collate(results)
    md = markdown(results, table, plot(table))
    (out_dir / "report.md").write_text(md + "\n")
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc = head + md + tail
    else:
        doc = doc.rstrip() + "\n\n## xdp-teredo, Miredo and the plain path (`make bench`)\n\n" + md + "\n"
    DOC.write_text(doc)
    print(md)
