"""Running it like a service: a miredo.conf as is, options over the file, and the
privilege choices.

One client reads a miredo.conf (RelayType, ServerAddress, InterfaceName, BindPort),
is told --xdp-mode generic and --user root on the command line, and its --bind-port
overrides the file's BindPort: the tunnel, the socket, the XDP mode and the user are
what that says. Staying root, it pins its maps, which `xdp-teredo stats` reads. SIGTERM
still leaves nothing of the renamed tunnel, nor a pin, behind.
"""

import json
import re
import subprocess

import pytest

from xdp_teredo.lab import miredo

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

MIREDO_CONF = """# /etc/miredo/miredo.conf, as Debian ships it, pointed at the lab's server
RelayType        client
InterfaceName    teredo7
ServerAddress    192.0.2.1
ServerAddress2   192.0.2.2
BindPort         3545    # a trailing comment, as Miredo allows
"""


@pytest.fixture
def pin_root(tmp_path, monkeypatch):
    """A bpffs outside /sys (which `ip netns exec` replaces), named to the client and to
    `xdp-teredo stats` through XDP_TEREDO_PIN_ROOT."""
    root = tmp_path / "bpffs"
    root.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(root)], check=True)
    monkeypatch.setenv("XDP_TEREDO_PIN_ROOT", str(root / "xdp-teredo"))
    yield root / "xdp-teredo"
    subprocess.run(["umount", str(root)], check=True)


def test_a_miredo_conf_with_options_over_it(make_lab, pin_root):
    require_tool("miredo-server")
    lab = make_lab("server", "client1")
    miredo.start_server(lab)
    conf = lab.workdir / "miredo.conf"
    conf.write_text(MIREDO_CONF)
    client = cs.start_client(lab, "client1", "--config", str(conf), "--bind-port", "40123",
                             "--xdp-mode", "generic", "--user", "root", server=None)
    code, info = cs.status(lab, "client1", "--tunnel", "teredo7")
    assert code == 0, info
    assert info["tunnel"] == "teredo7" and info["server"] == "192.0.2.1"
    assert info["local"] == f"{lab['client1'].ipv4[0]}:40123"   # --bind-port wins
    assert info["xdp"] == "generic" and info["user"] == "root"
    assert " xdpgeneric " in lab.run("client1", "ip", "link", "show", "dev", "eth0").stdout
    with open(f"/proc/{info['pid']}/status") as f:
        assert re.search(r"^Uid:\s+0\s", f.read(), re.M)
    # The default tunnel name has no client here; this one does.
    assert cs.status(lab, "client1")[0] == 1
    assert cs.query(lab, "client1", "status", tunnel="teredo7")["state"] == "qualified"
    # Root keeps its pins: `xdp-teredo stats` in another command finds them. The
    # same maps: a refresh RA (every 2 s here) counted by the fast path shows in both.
    def served():
        return cs.packets(cs.query(lab, "client1", "stats", tunnel="teredo7"))["rx_auth"]
    cs.wait_until("a refresh RA seen by the fast path", lambda: served() >= 1, timeout=10)
    before = served()
    res = cs.cli(lab, "client1", "stats", "--json")
    assert res.returncode == 0, res.stderr
    pinned = json.loads(res.stdout)
    assert before <= pinned["rx_auth"] <= served(), pinned
    assert client.stop() == 0
    assert list(pin_root.iterdir()) == []           # unpinned at exit
    assert cs.leftovers(lab, "client1", tunnel="teredo7") == cs.NOTHING_LEFT
    [stopped] = cs.events(client, "client_stopped")
    assert stopped["failures"] is None


def test_the_systemd_unit_runs_attach_and_leaves_a_crash_to_the_next_start(request):
    """The unit in the repository starts `attach %i`, and does not `detach %i` after
    the process ends: a crash's fast path is for the next start to adopt."""
    path = request.config.rootpath / "systemd" / "xdp-teredo@.service"
    unit = path.read_text()
    assert re.search(r"^ExecStart=\S*xdp-teredo attach %i$", unit, re.M)
    assert not re.search(r"^ExecStopPost=.*detach", unit, re.M)
    assert re.search(r"^Restart=on-failure$", unit, re.M)
