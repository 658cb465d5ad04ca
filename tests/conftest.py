"""Shared test plumbing.

Tiers: tests/unit (pure, no root), tests/bpf (BPF_PROG_TEST_RUN, needs root and
bcc), tests/e2e (network namespaces, needs root). CI runs as root, so every tier
runs there; a test skips only when a feature is truly absent, and says which.
"""

import os
import shutil

import pytest

from xdp_teredo.lab.netns import tool_path

# Tests call ip, tc, sysctl, ss, conntrack and miredo by name, and require_tool
# looks them up: with a PATH that lacks /usr/sbin (CI may run so) they would be
# "not installed" and their tests would skip. Extended once, for every tier.
os.environ["PATH"] = tool_path()


def _why_no_root():
    return None if os.geteuid() == 0 else "needs root (CAP_BPF/CAP_NET_ADMIN)"


def _why_no_bcc():
    try:
        import bcc  # noqa: F401  (python3-bpfcc, from the OS)
    except ImportError as err:
        return f"bcc not importable ({err}); run `make setup`"
    return None


@pytest.fixture(scope="session")
def require_root():
    why = _why_no_root()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def require_bcc(require_root):
    why = _why_no_bcc()
    if why:
        pytest.skip(why)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} not installed; `make test` installs it")
    return path


@pytest.fixture(scope="session")
def datapath_program(require_bcc):
    """The data path (bpf/teredo_encap.c), compiled and loaded ONCE per test run.

    Not attached to any device: tests drive it through BPF_PROG_TEST_RUN, or attach
    it themselves (and detach it before they end). Tests that use it must leave the
    maps as they want them: tests/bpf's `dp` fixture resets them around each test.
    """
    from xdp_teredo.datapath import Datapath

    prog = Datapath.compile()
    yield prog
    prog.close()
