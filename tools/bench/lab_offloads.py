"""The bench's second configuration: every lab veth's transmit offloads off.

The headline comparison runs with the offloads as the kernel sets them, which is
what users have. For the second table the bench turns `tx-checksumming` off on
every veth the lab made (both ends, every namespace), for every implementation
alike; the kernel drops TSO with it, so checksums are finished and TCP segmented
in software at every hop. This is a bench configuration: the product never relies
on it, and nothing here is a lab default. The state each device ended up in is
read back and recorded in the results.

The veths are listed once, before any implementation runs, so that devices a
daemon makes for itself (the relay's checksum veth) are left to it. A daemon that
restores its own NIC's offload at exit would undo the setting: apply() is called
again before every round.
"""

from __future__ import annotations

import json
from typing import Dict, List

# tx-tcp-segmentation, not the "tcp-segmentation-offload" group: on 6.18 the group
# reads "on" after tx off, as tx-tcp-accecn-segmentation stays (docs/kernel-notes.md).
FEATURES = ("tx-checksumming", "tx-tcp-segmentation", "generic-segmentation-offload")


def veths(lab) -> List[tuple]:
    """(role, interface) of every veth in the lab's namespaces."""
    out = []
    for role in sorted(lab.hosts):
        res = lab.run(role, "ip", "-j", "link", "show", "type", "veth", check=False)
        for link in json.loads(res.stdout or "[]"):
            out.append((role, link["ifname"]))
    return out


def features(lab, role: str, iface: str) -> Dict[str, str]:
    """The FEATURES of one device as ethtool -k shows them ("on", "off", ...)."""
    got = {}
    for line in lab.run(role, "ethtool", "-k", iface).stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in FEATURES:
            got[name.strip()] = value.split()[0] if value.split() else ""
    return got


def apply(lab, devices: List[tuple], tx: str) -> List[dict]:
    """tx-checksumming `tx` ("on" / "off") on each device; what each shows after."""
    record = []
    for role, iface in devices:
        lab.run(role, "ethtool", "-K", iface, "tx", tx)
        record.append({"host": role, "iface": iface, **features(lab, role, iface)})
    return record


def summary(record: List[dict]) -> str:
    """One line for the report: how many devices ended in which state."""
    counts: Dict[tuple, int] = {}
    for dev in record:
        key = tuple(dev.get(f, "?") for f in FEATURES)
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{n} veth{'s' if n != 1 else ''} with "
             + ", ".join(f"{f} {v}" for f, v in zip(FEATURES, key))
             for key, n in sorted(counts.items())]
    return "; ".join(parts)
