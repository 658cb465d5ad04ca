"""systemd's notify protocol with a real role: the test binds the unix datagram
socket a service manager would, starts `xdp-teredo server` with NOTIFY_SOCKET
(and WATCHDOG_USEC) pointing at it, and reads what arrives (daemon/notify.py).
"""

import os
import signal
import socket
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

PRIMARY = "192.0.2.1"


class Manager:
    """The service manager's side: a path socket (abstract names are per network
    namespace; a path reaches into the lab's namespace)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []

    def wait_for(self, assignment: str, timeout: float = 10.0) -> str:
        """The first datagram (from now) holding `assignment` as one of its lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.got.append(message)
            if assignment in message.split("\n"):
                return message
            if "STOPPING=1" in message.split("\n"):
                break   # it gave up: no point waiting for the rest
        raise AssertionError(f"no {assignment} within {timeout} s; got {self.got}")

    def wait_for_status(self, start: str, timeout: float = 10.0) -> str:
        """The first STATUS= line (from now, or already received) that starts so."""
        for message in self.got:
            for line in message.split("\n"):
                if line.startswith("STATUS=" + start):
                    return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.wait_for_any(deadline - time.monotonic())
            for line in message.split("\n"):
                if line.startswith("STATUS=" + start):
                    return line
        raise AssertionError(f"no STATUS={start}... within {timeout} s; got {self.got}")

    def wait_for_any(self, timeout: float) -> str:
        self.sock.settimeout(max(0.01, timeout))
        try:
            message = self.sock.recv(4096).decode()
        except socket.timeout:
            return ""
        self.got.append(message)
        return message

    def close(self):
        self.sock.close()


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path / "notify")
    yield m
    m.close()


def _server(lab, manager, *extra_env):
    env = ["env", f"NOTIFY_SOCKET={manager.path}", *extra_env]
    return lab.spawn("server", *env, sys.executable, "-m", "xdp_teredo.cli",
                     "--log-format", "json", "server", "--bind", PRIMARY,
                     log="server-notify.log")


def test_server_ready_status_watchdog_stopping(make_lab, manager):
    lab = make_lab("server")
    proc = _server(lab, manager, "WATCHDOG_USEC=400000")   # a ping every 0.2 s
    ready = manager.wait_for("READY=1")
    assert f"STATUS=serving: {PRIMARY} and 192.0.2.2, UDP port 3544, " \
           "prefix 2001:0:c000:201::/64" in ready.split("\n"), ready
    # It served before it said so: the control socket answers by now.
    assert '"event": "server_started"' in proc.output()
    started = time.monotonic()
    manager.wait_for("WATCHDOG=1", timeout=2)
    manager.wait_for("WATCHDOG=1", timeout=2)
    assert time.monotonic() - started < 2.0
    os.kill(proc.pid, signal.SIGTERM)        # `ip netns exec` exec'd the daemon itself
    stopping = manager.wait_for("STOPPING=1")
    assert "STATUS=stopping" in stopping.split("\n")
    assert proc.wait(timeout=10) == 0
    assert all("READY=1" not in m for m in manager.got[1:]), "READY=1 is sent once"


def test_no_watchdog_unless_asked(make_lab, manager):
    lab = make_lab("server")
    proc = _server(lab, manager)
    manager.wait_for("READY=1")
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1")
    assert proc.wait(timeout=10) == 0
    assert not any("WATCHDOG=1" in m for m in manager.got), manager.got


def test_a_failed_start_never_says_ready(make_lab, manager):
    """A second server on the same address cannot bind: STOPPING=1, exit 1, no READY."""
    lab = make_lab("server")
    first = lab.spawn("server", sys.executable, "-m", "xdp_teredo.cli", "--log-format", "json",
                      "server", "--bind", PRIMARY, log="server-first.log")
    first.wait_for_output(r'"event": "server_started"', timeout=10)
    second = _server(lab, manager)
    stopping = manager.wait_for("STOPPING=1")
    assert "cannot bind UDP" in stopping, stopping
    assert second.wait(timeout=10) != 0
    assert not any("READY=1" in m for m in manager.got), manager.got


# -- a client in the lab: READY=1 once it has started qualifying (not once qualified:
# a unit must not hang at boot when no server answers), STATUS= follows the state.

def _client(lab, manager, *args, log):
    from tests.e2e import client_support as cs

    return lab.spawn("client1", "env", f"NOTIFY_SOCKET={manager.path}", "WATCHDOG_USEC=2000000",
                     *cs.CLI, "--log-format", "json", "attach", "eth0", *cs.FAST, *args,
                     log=log)


@pytest.fixture(scope="module")
def client_lab(make_module_lab):
    from tests.conftest import require_tool
    from tests.e2e import client_support as cs

    require_tool("ethtool")
    lab = make_module_lab("server", "client1")
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    return lab


def test_client_ready_then_qualified_in_status(client_lab, manager):
    from tests.e2e import client_support as cs

    proc = _client(client_lab, manager, "--server", cs.SERVER, log="client-notify.log")
    ready = manager.wait_for("READY=1", timeout=cs.QUALIFY_TIMEOUT)
    # Dropped to nobody by now: the socket, connected as root, still takes our pings.
    assert '"event": "privileges_dropped"' in proc.output()
    assert any(line.startswith("STATUS=") and "on eth0" in line for line in ready.split("\n"))
    qualified = manager.wait_for_status("qualified: 2001:0:c000:201:", timeout=20)
    assert f"via server {cs.SERVER} on eth0 (mapped " in qualified
    code, info = cs.status(client_lab, "client1")
    assert code == 0 and info["address"] in qualified
    manager.wait_for("WATCHDOG=1", timeout=3)
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1", timeout=10)
    assert proc.wait(timeout=30) == 0


def test_client_ready_without_any_server_answering(client_lab, manager):
    """No server answers (192.0.2.3 is nobody): READY=1 all the same, and STATUS=
    says offline; `systemctl start` would not hang."""
    from tests.e2e import client_support as cs

    proc = _client(client_lab, manager, "--server", "192.0.2.3", log="client-notify-offline.log")
    manager.wait_for("READY=1", timeout=cs.QUALIFY_TIMEOUT)
    offline = manager.wait_for_status("offline: no server answered", timeout=20)
    assert "192.0.2.3" in offline and "on eth0" in offline
    assert cs.status(client_lab, "client1")[0] == 3
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1", timeout=10)
    assert proc.wait(timeout=30) == 0


# -- the units' CapabilityBoundingSet= and NoNewPrivileges=, without systemd: the
# same restrictions applied by setpriv(1) around the real role. Enough for the role
# to get to READY=1 (and the client to qualify and drop to nobody) is the claim.

def _bounded(unit: str) -> list:
    """setpriv's argv for the unit's capability bounding set and no_new_privs."""
    import configparser

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(os.path.join(root, "systemd", unit))
    service = parser["Service"]
    caps = ",".join("+" + c.lower().removeprefix("cap_")
                    for c in service["CapabilityBoundingSet"].split())
    argv = ["setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all"]
    if service.get("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    return argv


def test_the_server_runs_with_its_units_capabilities(make_lab, manager):
    from tests.conftest import require_tool

    require_tool("setpriv")
    lab = make_lab("server")
    proc = lab.spawn("server", "env", f"NOTIFY_SOCKET={manager.path}",
                     *_bounded("xdp-teredo-server.service"), sys.executable, "-m",
                     "xdp_teredo.cli", "--log-format", "json", "server", "--bind", PRIMARY,
                     log="server-bounded.log")
    manager.wait_for("READY=1")
    status = proc.output()
    assert "native_ipv6_unavailable" not in status, "CAP_NET_RAW is in the set: raw IPv6 works"
    with open(f"/proc/{proc.pid}/status") as f:
        bounding = [l for l in f if l.startswith("CapBnd:")][0].split()[1]
    assert int(bounding, 16) == 1 << 13, bounding      # CAP_NET_RAW only
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1")
    assert proc.wait(timeout=10) == 0


def test_the_client_runs_with_its_units_capabilities(client_lab, manager):
    from tests.conftest import require_tool
    from tests.e2e import client_support as cs

    require_tool("setpriv")
    proc = client_lab.spawn(
        "client1", "env", f"NOTIFY_SOCKET={manager.path}", *_bounded("xdp-teredo@.service"),
        *cs.CLI, "--log-format", "json", "attach", "eth0", "--server", cs.SERVER, *cs.FAST,
        log="client-bounded.log")
    manager.wait_for("READY=1", timeout=cs.QUALIFY_TIMEOUT)
    manager.wait_for_status("qualified: ", timeout=20)
    assert '"event": "privileges_dropped"' in proc.output()
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1", timeout=10)
    assert proc.wait(timeout=30) == 0


def test_the_relay_says_ready_with_its_units_capabilities(make_lab, manager):
    """READY=1 once attached, STATUS=relaying, under the unit's bounding set."""
    from tests.conftest import require_tool

    require_tool("setpriv")
    lab = make_lab("relay", "v6host")   # eth1 is the link to v6host
    entry = os.path.join(os.path.dirname(sys.executable), "xdp-teredo")
    proc = lab.spawn("relay", "env", f"NOTIFY_SOCKET={manager.path}", "WATCHDOG_USEC=2000000",
                     *_bounded("xdp-teredo-relay.service"), entry, "--log-format", "json",
                     "relay", "--ipv4-iface", "eth0", "--ipv6-iface", "eth1",
                     log="relay-notify.log")
    ready = manager.wait_for("READY=1", timeout=60)
    assert '"event": "relay_started"' in proc.output()
    assert any(line.startswith("STATUS=relaying: ") and "on eth0, 2001::/32 to eth1"
               in line for line in ready.split("\n")), ready
    manager.wait_for("WATCHDOG=1", timeout=3)
    os.kill(proc.pid, signal.SIGTERM)
    manager.wait_for("STOPPING=1", timeout=10)
    assert proc.wait(timeout=30) == 0
