"""Find kernel headers for bcc, which compiles BPF C at run time.

bcc's own order is $BCC_KERNEL_SOURCE, then /lib/modules/$(uname -r)/{build,source},
then kheaders. When none fits the running kernel (a kernel the distribution did not
build), tools/kernel-headers.sh merges the distribution's generic headers into a
cached folder, which we point bcc at through BCC_KERNEL_SOURCE.
"""

import os
from dataclasses import dataclass
from typing import Optional

CACHE = os.environ.get("XDP_TEREDO_CACHE", "/var/cache/xdp-teredo")
_MARKER = "include/linux/kconfig.h"


@dataclass(frozen=True)
class KernelHeaders:
    path: str
    how: str  # "env", "modules" or "merged"


def _usable(path: str) -> bool:
    return os.path.exists(os.path.join(path, _MARKER))


def find() -> Optional[KernelHeaders]:
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and _usable(env):
        return KernelHeaders(env, "env")
    release = os.uname().release
    for sub in ("build", "source"):
        path = f"/lib/modules/{release}/{sub}"
        if _usable(path):
            return KernelHeaders(path, "modules")
    merged = os.path.join(CACHE, "kernel-headers", "current")
    if _usable(merged):
        return KernelHeaders(os.path.realpath(merged), "merged")
    return None


def export() -> Optional[KernelHeaders]:
    """Find headers and make bcc use them. Returns None when there are none."""
    found = find()
    if found and found.how == "merged":
        os.environ["BCC_KERNEL_SOURCE"] = found.path
    return found
