"""Shared test plumbing.

Tiers: tests/unit (pure, no root), tests/bpf (BPF_PROG_TEST_RUN, needs root and
bcc), tests/e2e (network namespaces, needs root). CI runs as root, so every tier
runs there; a test skips only when a feature is truly absent, and says which.

Skips cannot hide a tier: under `make test` (and CI) XDP_TEREDO_REQUIRE_ALL=1 is
set, and then every skip (no root, no bcc, no Miredo, a tool `make test` installs,
a module of `.[test]`) is a failure with the same reason: where everything should
run, something that does not is a broken set-up, not a pass. Outside it (a
developer's `pytest tests/unit` as a user), skips stay, each with its reason. A
test that may skip even there says so with `@pytest.mark.may_skip`.
"""

import importlib
import os
import shutil

import pytest

from xdp_teredo.lab.netns import tool_path

# Tests call ip, tc, sysctl, ss, conntrack and miredo by name, and require_tool
# looks them up: with a PATH that lacks /usr/sbin (CI may run so) they would be
# "not installed" and their tests would skip. Extended once, for every tier.
os.environ["PATH"] = tool_path()

REQUIRE_ALL_ENV = "XDP_TEREDO_REQUIRE_ALL"
REQUIRE_ALL = os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


def skip_or_fail(reason: str, *, allow_module_level: bool = False):
    """pytest.skip(reason), or pytest.fail with it under XDP_TEREDO_REQUIRE_ALL=1."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} [{REQUIRE_ALL_ENV}=1: this must run here, not skip]",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def require_module(name: str):
    """importlib.import_module(name), or skip_or_fail (a module of `.[test]`)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        skip_or_fail(f"{name} not importable ({err}); `make test` installs .[test]",
                     allow_module_level=True)


def require_path(path: str, why: str) -> str:
    """`path` exists, or skip_or_fail saying `why`."""
    if not os.path.exists(path):
        skip_or_fail(f"no {path} ({why})")
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "may_skip(reason): a skip that is fine even under XDP_TEREDO_REQUIRE_ALL")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under XDP_TEREDO_REQUIRE_ALL=1, any skip left (a bare pytest.skip, a skipif
    marker) fails too, with its reason, unless the test is marked may_skip."""
    outcome = yield
    rep = outcome.get_result()
    if (REQUIRE_ALL and rep.skipped and not hasattr(rep, "wasxfail")
            and item.get_closest_marker("may_skip") is None):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"{reason} [{REQUIRE_ALL_ENV}=1: this must run here, not skip]"


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
        skip_or_fail(why)


@pytest.fixture(scope="session")
def require_bcc(require_root):
    why = _why_no_bcc()
    if why:
        skip_or_fail(why)


def require_tool(name: str) -> str:
    """The absolute path of `name` (PATH, then the sbin directories), or skip_or_fail."""
    path = shutil.which(name)
    if not path:
        skip_or_fail(f"{name} not installed; `make test` installs it")
    return path


@pytest.fixture(scope="session")
def datapath_program(require_bcc):
    """The data path (bpf/client.c), compiled and loaded ONCE per test run.

    Not attached to any device: tests drive it through BPF_PROG_TEST_RUN, or attach
    it themselves (and detach it before they end). Tests that use it must leave the
    maps as they want them: tests/bpf's `dp` fixture resets them around each test.
    """
    from xdp_teredo.datapath import ClientDatapath

    prog = ClientDatapath.compile()
    yield prog
    prog.close()
