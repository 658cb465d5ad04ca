"""What /proc says of the test process: for tests that check that nothing leaks."""

import os


def open_fds() -> dict:
    """This process's descriptors and what they are."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the directory listing's own descriptor, closed meanwhile
    return out


def children() -> set:
    """The pids of this process's children (zombies included, until reaped)."""
    pids = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids
