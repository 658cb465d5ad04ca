"""Fixtures for the namespace tier: labs that are always torn down.

- `make_lab(*hosts)`: builds a Lab (function scope); every lab it made is closed
  after the test, and a teardown failure (a namespace left) fails the test.
  `make_module_lab(*hosts)`: the same, closed after the module.
- `lab`: one Lab per test with the hosts named by `@pytest.mark.lab_hosts(...)`
  (default: every host).
- Logs and config files go to the test's tmp_path (pytest keeps the last few
  runs); when a test fails, the tail of each log is printed with the report.
- At session end, no namespace of any lab this session made may remain.
"""

import pytest

from xdp_teredo.lab import netns, topology
from xdp_teredo.lab.topology import Lab

from tests.conftest import require_tool


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lab_hosts(*roles): hosts the `lab` fixture builds (default: all)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures see, at teardown, whether the test itself failed.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _dump_logs(lab: Lab) -> None:
    for log in sorted(lab.workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"----- {log.name} (last 30 lines) -----")
        print("\n".join(lines[-30:]))


def _labs_fixture(request, workdir_for):
    """Shared body: a factory whose labs are closed (and checked) afterwards."""
    made = []

    def make(*hosts, **kwargs) -> Lab:
        kwargs.setdefault("workdir", workdir_for(len(made)))
        lab = Lab(hosts or None, **kwargs)
        made.append(lab)
        return lab.build()

    yield make
    failed = getattr(request.node, "rep_call", None)
    errors = []
    for lab in reversed(made):
        if failed is not None and failed.failed:
            _dump_logs(lab)
        try:
            lab.close()
        except Exception as err:  # close them all, then report
            errors.append(err)
    if errors:
        raise errors[0]


def _require_lab_tools():
    for tool in ("ip", "iptables", "conntrack", "sysctl", "ss"):
        require_tool(tool)


@pytest.fixture
def make_lab(require_root, tmp_path, request):
    """make_lab("server", "client1") -> a built Lab (dependencies included)."""
    _require_lab_tools()
    yield from _labs_fixture(request, lambda n: tmp_path / f"lab{n}")


@pytest.fixture(scope="module")
def make_module_lab(require_root, tmp_path_factory, request):
    """As make_lab, for labs shared by the tests of one module (e.g. with
    daemons that take a while to settle)."""
    _require_lab_tools()
    yield from _labs_fixture(request, lambda n: tmp_path_factory.mktemp(f"lab{n}-"))


@pytest.fixture
def lab(make_lab, request):
    """A Lab with the hosts of @pytest.mark.lab_hosts(...), or every host."""
    marker = request.node.get_closest_marker("lab_hosts")
    return make_lab(*(marker.args if marker else ()))


@pytest.fixture(scope="session", autouse=True)
def no_lab_namespace_leaks():
    """After the whole session: no namespace of any lab made in this process."""
    yield
    prefixes = topology.created_prefixes()
    if not prefixes:
        return
    left = [n for n in netns.list_netns(netns.NETNS_PREFIX)
            if any(n.startswith(p) for p in prefixes)]
    assert not left, f"lab namespaces leaked: {left}"
