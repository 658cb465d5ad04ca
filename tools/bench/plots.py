"""The plots of one `make bench` run (matplotlib, headless): rate and ratio against
packet size per path, the relay table's ratios, the admission latency.
"""

from __future__ import annotations

from pathlib import Path

from .fmt import IMPLS, SIZES, _med, _ratio
from .relay_scale import TABLE_TOLERANCE, by_size as _scale_summary


def plot(results: dict, table: dict, img_dir: Path) -> list:
    """The report's figures into img_dir; the paths written ([] without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    img_dir.mkdir(parents=True, exist_ok=True)
    out = []

    def save(fig, name):
        fig.tight_layout()
        dest = img_dir / name
        fig.savefig(dest, dpi=90)
        plt.close(fig)
        out.append(dest)

    for path in sorted({p for p, _ in table}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl in IMPLS:
            cell = table.get((path, impl))
            if cell:
                ax.plot(SIZES, [_med(cell[f"udp{s}"]) for s in SIZES], marker="o", label=impl)
        ax.set_xlabel("UDP payload (bytes)")
        ax.set_ylabel("delivered packets/s")
        ax.set_title(f"Rate against packet size, path {path}")
        ax.set_yscale("log")
        ax.legend()
        save(fig, f"bench-rate-{path}.png")
        if (path, "xdp-teredo") in table:
            fig, ax = plt.subplots(figsize=(6, 4))
            for base in ("miredo", "plain"):
                if (path, base) not in table:
                    continue
                ratios = [_ratio(_med(table[(path, "xdp-teredo")][f"udp{s}"]),
                                 _med(table[(path, base)][f"udp{s}"])) or 0 for s in SIZES]
                ax.plot(SIZES, ratios, marker="o", label=f"xdp-teredo / {base}")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_xlabel("UDP payload (bytes)")
            ax.set_ylabel("ratio of delivered packets/s")
            ax.set_title(f"Ratios, path {path}")
            ax.legend()
            save(fig, f"bench-ratio-{path}.png")

    scale = results.get("relay_table")
    if scale:
        s = _scale_summary(scale)
        small, big = min(s), max(s)
        labels, values = [], []
        for label, key in (("UDP 1200 B pkt/s", "udp_pps"), ("TCP bit/s", "tcp_bps"),
                           ("relay program ns/run", "prog_ns"), ("machine CPU ns/pkt", "cpu")):
            r = _ratio(_med(s[big][key]), _med(s[small][key]))
            if r:
                labels.append(label)
                values.append(r)
        if values:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            ax.bar(labels, values, color=["C0", "C0", "C1", "C1"][:len(values)])
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.axhline(TABLE_TOLERANCE, color="red", lw=0.5, ls="--")
            ax.set_ylabel(f"{big:,} peers / {small:,} peers")
            ax.set_title("Relay: the table's size (throughput: blue, cost: orange)")
            ax.tick_params(axis="x", labelsize=8)
            save(fig, "bench-relay-table.png")

    adm = results.get("admission")
    if adm and adm.get("steps"):
        steps = sorted(adm["steps"], key=lambda x: x["rate"])
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            ax.plot([st["rate"] for st in steps], [st[key] for st in steps], marker="o", label=label)
        ax.axhline(1000 * 0.100, color="red", lw=0.5, ls="--", label="lag threshold (p99)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("new peers offered per second")
        ax.set_ylabel("admission latency (ms)")
        ax.set_title("Client control plane: admitting new peers")
        ax.legend()
        save(fig, "bench-admission.png")
    return out
