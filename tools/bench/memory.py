"""Memory of a daemon: its resident set, and the kernel memory of its BPF objects.

The resident set (VmRSS, the process and its children) is the daemon's memory:
the Python control plane, its peer list, and bcc with LLVM/clang, which an
xdp-teredo daemon loads to compile its programs at start-up. It is given split
into anonymous memory (the process's own) and mapped files (mostly those shared
libraries: shared between processes that map them, and reclaimable). The BPF maps and programs live in kernel memory that
VmRSS does not show; the kernel accounts it per object ("memlock" in the fdinfo
of each descriptor the daemon holds), which is what this reads: no bpftool.
"""

from __future__ import annotations

from typing import Iterable

from xdp_teredo.lab import traffic


def snapshot(pids: Iterable[int]) -> dict:
    """{"rss", "rss_anon", "rss_file": bytes, "maps": {name: {"memlock", "max_entries"}},
    "maps_total": bytes, "progs_total": bytes} of the processes `pids` and their
    descendants."""
    pids = list(pids)
    objects = traffic.bpf_objects(pids)
    names = traffic.map_names(objects)
    maps = {}
    for obj in objects:
        if obj.kind == "map":
            name = names.get(obj.id, f"map{obj.id}")
            maps[name] = {"memlock": obj.memlock, "max_entries": obj.max_entries}
    return {
        "rss": traffic.rss_bytes(pids),
        "rss_anon": traffic.rss_bytes(pids, "RssAnon"),
        "rss_file": traffic.rss_bytes(pids, "RssFile"),
        "maps": maps,
        "maps_total": sum(o.memlock for o in objects if o.kind == "map"),
        "progs_total": sum(o.memlock for o in objects if o.kind == "prog"),
    }
