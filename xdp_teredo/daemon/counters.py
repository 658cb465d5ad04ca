"""The control plane's own counters: what the slow path did, and what it dropped.

The data path counts per packet in BPF (datapath/stats.py); these count what
reached the daemon. Drops are "drop_<reason>", so `counters` lists them apart.
"""

from collections import Counter


class Counters(Counter):
    def drop(self, reason: str) -> None:
        self[f"drop_{reason}"] += 1

    def activity(self) -> dict:
        """Everything but the drops (the "<role>_stopped" log line)."""
        return {k: v for k, v in self.items() if not k.startswith("drop_")}
