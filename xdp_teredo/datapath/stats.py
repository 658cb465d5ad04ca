"""Statistics of a running data path, from this process or from another one.

A running instance pins its maps under <pin_root>/<instance>/ (hooks.py): the
instance name is "netns<inode>-if<ifindex>" (the network namespace and the NIC),
so a reader in the same namespace finds it without being told. `ip netns exec`
gives each command a fresh /sys, where a bpffs mounted by another command is not
visible: there, the daemon will serve the same dict over its unix socket instead
(the socket is per network namespace); `read` here is the pinned-map half.

    stats.read()                      # the one instance of this netns
    stats.read(pin_root=..., instance="netns4026531840-if2")
    stats.read(datapath_or_attachment)
"""

import glob
import os
from typing import List, Optional

from ..errors import RuntimeFailure
from .libbpf import MapFd
from .maps import ConfigMap, PeerTable, Snapshot, StatsTable

DEFAULT_PIN_ROOT = "/sys/fs/bpf/xdp-teredo"


def netns_inode(netns: Optional[str] = None) -> int:
    """Inode of a named network namespace (ip netns), or of ours."""
    path = f"/var/run/netns/{netns}" if netns else "/proc/self/ns/net"
    return os.stat(path).st_ino


def instance_name(nic_ifindex: int, netns: Optional[str] = None) -> str:
    return f"netns{netns_inode(netns)}-if{nic_ifindex}"


def is_bpffs(path: str) -> bool:
    """Whether `path` would be on a bpf filesystem (the longest mount prefix)."""
    path = os.path.abspath(path)
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3:
                continue
            mnt = fields[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype == "bpf"


def instances(pin_root: str = DEFAULT_PIN_ROOT, netns: Optional[str] = None) -> List[str]:
    """Pinned instances of one network namespace (ours by default)."""
    prefix = f"netns{netns_inode(netns)}-"
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(pin_root, prefix + "*")))


class PinnedMaps:
    """The maps of a running instance, opened by path (close them, or use `with`)."""

    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir
        opened = {}
        try:
            # Every role pins its verdict counters; the peer list and the config are
            # the client's and the relay's (a server's instance has neither).
            for name in ("stats", "peers", "config"):
                path = os.path.join(pin_dir, name)
                if name == "stats" or os.path.exists(path):
                    opened[name] = MapFd.open_pinned(path)
        except OSError as err:
            for m in opened.values():
                m.close()
            raise RuntimeFailure(f"cannot open the pinned maps in {pin_dir}: {err}") from err
        self._maps = list(opened.values())
        self.statistics = StatsTable(opened["stats"])
        self.peers = PeerTable(opened["peers"]) if "peers" in opened else None
        self.config = ConfigMap(opened["config"]) if "config" in opened else None

    def close(self) -> None:
        for m in self._maps:
            m.close()

    def __enter__(self) -> "PinnedMaps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find(pin_root: str = DEFAULT_PIN_ROOT, instance: Optional[str] = None,
         netns: Optional[str] = None) -> str:
    """The pin directory of the instance to read; RuntimeFailure says why not."""
    if instance:
        path = os.path.join(pin_root, instance)
        if not os.path.isdir(path):
            raise RuntimeFailure(f"no data path pinned at {path}")
        return path
    if not is_bpffs(pin_root):
        raise RuntimeFailure(f"no bpffs at {pin_root}: no pinned data path to read here "
                             "(under `ip netns exec` each command has its own /sys)")
    found = instances(pin_root, netns)
    if not found:
        raise RuntimeFailure(f"no running data path of this network namespace is pinned under "
                             f"{pin_root} (is xdp-teredo attached?)")
    if len(found) > 1:
        raise RuntimeFailure(f"several data paths are pinned under {pin_root} ({', '.join(found)}): "
                             "name one")
    return os.path.join(pin_root, found[0])


def read(source=None, *, pin_root: str = DEFAULT_PIN_ROOT, instance: Optional[str] = None,
         netns: Optional[str] = None) -> Snapshot:
    """{reason: {"packets": n, "bytes": n}} summed over CPUs, every reason listed.

    source: a ClientDatapath, RelayDatapath, an attachment or a StatsTable of this process; without one, the
    pinned maps of a running instance (see `find`).
    """
    if source is not None:
        table = getattr(source, "statistics", None) or source
        if isinstance(table, StatsTable):
            return table.read()
        return source.stats()
    with PinnedMaps(find(pin_root, instance, netns)) as pinned:
        return pinned.statistics.read()
