"""Our Teredo server (`xdp-teredo server`) in the lab, with Miredo as the client.

Miredo clients behind one NAT (client1) and two stacked NATs (client2) qualify
against OUR server on 192.0.2.1/192.0.2.2, get addresses that name it and their
outermost NAT's mapping, and ping each other over Teredo, which needs our server to
forward their indirect bubbles (RFC 4380 §5.2.6, §5.3.1). A Miredo relay then
carries a client's ping to the IPv6-only host, which needs our server to forward
the direct connectivity test to native IPv6 (§5.2.9). A probe on the "public" host
checks which address answers an RS (§5.3.1) and the per-source rate limit. The
command-line contract (one-line errors, exit codes, clean exit on signals) is
checked against the real entry point.
"""

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from xdp_teredo.lab import miredo
from xdp_teredo.teredo.address import TeredoAddress
from xdp_teredo.teredo.constants import FLAG_G, FLAG_U, TEREDO_PORT

from tests.conftest import require_tool

pytestmark = pytest.mark.e2e

PRIMARY, SECONDARY = "192.0.2.1", "192.0.2.2"
CLIENTS = ("client1", "client2")
OUTER_NAT = {"client1": "nat1", "client2": "nat2a"}

# Sends COUNT Router Solicitations (with a nonce) from one UDP socket to SERVER:3544
# and prints, as one JSON object, every answer that arrives within half a second.
RS_PROBE = r"""
import json, socket, sys
from xdp_teredo.teredo import constants as C, encap, icmpv6
server, count, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
source = C.LINK_LOCAL_CONE if kind == "cone" else C.LINK_LOCAL_RESTRICTED
nonce = bytes(range(1, 9))
rs = encap.build_udp_payload(icmpv6.build_router_solicitation(source),
                             auth=encap.AuthHeader(nonce=nonce))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 0))
sock.settimeout(0.5)
for _ in range(count):
    sock.sendto(rs, (server, C.TEREDO_PORT))
answers = []
try:
    while True:
        data, peer = sock.recvfrom(4096)
        got = encap.parse_udp_payload(data)
        answers.append({"from": list(peer), "bytes": len(data),
                        "origin": [str(got.origin.address), got.origin.port],
                        "nonce_echoed": got.auth is not None and got.auth.nonce == nonce,
                        "to": str(got.ipv6.dst)})
except socket.timeout:
    pass
print(json.dumps({"port": sock.getsockname()[1], "answers": answers}))
"""


def _cli(*args) -> list:
    """The real entry point, with this interpreter (the venv's, our package)."""
    return [sys.executable, "-m", "xdp_teredo.cli", *args]


def _start_server(lab, *args, log="xdp-teredo-server.log"):
    proc = lab.spawn("server", *_cli("--log-format", "json", "server", *args), log=log)
    proc.wait_for_output(r'"event": "server_started"', timeout=10)
    if "off" not in args:
        # RSs are answered from Python at once; XDP takes over once compiled.
        proc.wait_for_output(r'"event": "(server_fast_path_ready|server_xdp_unavailable)"',
                             timeout=60)
    return proc


def _status(lab) -> dict:
    return json.loads(lab.run("server", *_cli("server", "--status")).stdout)


def _counters(lab) -> dict:
    return _status(lab)["counters"]


def _rs_probe(lab, server: str, count: int = 1, kind: str = "restricted",
              role: str = "public") -> dict:
    res = lab.run(role, sys.executable, "-c", RS_PROBE, server, str(count), kind)
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def teredo(make_module_lab):
    """The lab, our server on "server", two qualified Miredo clients."""
    require_tool("miredo")
    lab = make_module_lab("server", *CLIENTS, "public", "v6host")
    server = _start_server(lab, "--bind", PRIMARY)
    clients = {role: miredo.start_client(lab, role, PRIMARY) for role in CLIENTS}
    return SimpleNamespace(lab=lab, server=server, clients=clients)


def test_binds_3544_on_primary_and_primary_plus_one(teredo):
    status = _status(teredo.lab)
    assert (status["primary"], status["secondary"]) == (PRIMARY, SECONDARY)
    assert status["prefix"] == "2001:0:c000:201::/64"
    sockets = teredo.lab.run("server", "ss", "-H", "-u", "-l", "-n", "-p").stdout
    for address in (PRIMARY, SECONDARY):
        [line] = [l for l in sockets.splitlines() if f"{address}:{TEREDO_PORT} " in l]
        assert f"pid={status['pid']}," in line, sockets


def _mapped_port_on_outer_nat(lab, role: str) -> int:
    table = lab.run(OUTER_NAT[role], "conntrack", "-L", "-p", "udp", "--orig-dst", PRIMARY,
                    "--orig-port-dst", str(TEREDO_PORT)).stdout
    ports = {int(m.group(1)) for m in re.finditer(
        rf"src={re.escape(PRIMARY)} dst=\S+ sport={TEREDO_PORT} dport=(\d+)", table)}
    assert len(ports) == 1, table
    return ports.pop()


@pytest.mark.parametrize("role", CLIENTS)
def test_miredo_client_qualifies_against_our_server(teredo, role):
    lab, client = teredo.lab, teredo.clients[role]
    assert client.process.alive(), client.process.output()
    address = TeredoAddress.from_ipv6(client.address)
    assert address.server == ipaddress.IPv4Address(PRIMARY)
    # Behind two NATs, the server saw (and the address embeds) the outer one.
    assert address.client == lab[role].public_ipv4
    assert address.port == _mapped_port_on_outer_nat(lab, role)
    assert address.flags & (FLAG_U | FLAG_G) == 0
    assert _counters(lab)["rs_answered"] >= len(CLIENTS)


def test_solicitations_are_answered_in_xdp(teredo):
    """--xdp-mode auto (the default): the RSs never reach Python (docs/server.md)."""
    status = _status(teredo.lab)
    assert status["xdp"]["mode"] in ("native", "generic"), status["xdp"]
    before = status["xdp"]["counters"].get("server_ra", 0)
    got = _rs_probe(teredo.lab, PRIMARY, count=3)
    assert len(got["answers"]) == 3 and all(a["nonce_echoed"] for a in got["answers"])
    after = _status(teredo.lab)
    assert after["xdp"]["counters"]["server_ra"] == before + 3
    assert after["counters"]["rs_answered"] >= after["xdp"]["counters"]["server_ra"]


def test_xdp_mode_off_answers_in_python(make_lab):
    lab = make_lab("server", "public")
    _start_server(lab, "--bind", PRIMARY, "--xdp-mode", "off", log="off.log")
    got = _rs_probe(lab, PRIMARY, count=2)
    assert len(got["answers"]) == 2 and all(a["bytes"] == 117 for a in got["answers"])
    status = _status(lab)
    assert status["xdp"] == {"mode": "off", "why": "--xdp-mode off"}
    assert status["counters"]["rs_answered"] == 2


def test_clients_ping_each_other_through_our_indirect_bubbles(teredo):
    lab = teredo.lab
    c1, c2 = teredo.clients["client1"].address, teredo.clients["client2"].address
    status = _status(lab)
    before = status["counters"]["forwarded_bubble"]
    before_xdp = status["xdp"]["counters"].get("server_forwarded_bubble", 0)
    there = lab.ping("client1", c2, count=3, deadline=10)
    assert there.ok and there.replies_from == [str(c2)], there
    back = lab.ping("client2", c1, count=3, deadline=10)
    assert back.ok and back.replies_from == [str(c1)], back
    # Neither NAT lets the other client in until the server forwarded a bubble,
    # and the XDP program forwarded them (RFC 4380 §5.3.1 checks in BPF).
    status = _status(lab)
    assert status["counters"]["forwarded_bubble"] > before
    assert status["xdp"]["counters"].get("server_forwarded_bubble", 0) > before_xdp, status["xdp"]


def test_echo_test_to_native_ipv6_goes_through_our_server(teredo):
    lab = teredo.lab
    relay = miredo.start_relay(lab, "relay")
    v6host = lab["v6host"].ipv6[0]
    before = _counters(lab)["forwarded_native_echo"]
    out = lab.ping("client1", v6host, count=3, deadline=10)
    assert out.ok and out.replies_from == [str(v6host)], out
    assert _counters(lab)["forwarded_native_echo"] > before
    assert relay.process.alive(), relay.process.output()


@pytest.mark.parametrize("server, kind, answered_from", [
    # §5.3.1: from the address the RS reached, or from the other one for the cone test.
    (PRIMARY, "restricted", PRIMARY),
    (SECONDARY, "restricted", SECONDARY),
    (PRIMARY, "cone", SECONDARY),
])
def test_ra_comes_from_the_address_rfc_4380_says(teredo, server, kind, answered_from):
    got = _rs_probe(teredo.lab, server, kind=kind)
    [answer] = got["answers"]
    assert answer["from"] == [answered_from, TEREDO_PORT]
    public = str(teredo.lab["public"].public_ipv4)
    assert answer["origin"] == [public, got["port"]]
    assert answer["nonce_echoed"] and answer["bytes"] == 117


def test_a_flood_of_solicitations_is_rate_limited(teredo):
    lab = teredo.lab
    before = _counters(lab)
    got = _rs_probe(lab, PRIMARY, count=200)
    answered = len(got["answers"])
    # Default per source: 2048 B/s with a 4 s burst, i.e. about 8192 / 117 = 70 RAs.
    assert 40 <= answered <= 80, answered
    # Each RS the server read was answered or refused (a few could be lost in a full
    # socket buffer on the way, so not necessarily all 200).
    refused = _counters(lab)["rate_limited"] - before["rate_limited"]
    assert refused >= 100 and 190 <= answered + refused <= 200, (answered, refused)
    # Another source (client1's NAT) is not affected: its RS is answered at once.
    [answer] = _rs_probe(lab, PRIMARY, role="client1")["answers"]
    assert answer["origin"][0] == str(lab["client1"].public_ipv4)


def _ipv4_forwarding(lab) -> dict:
    out = lab.run("server", "sh", "-c", "grep -H . /proc/sys/net/ipv4/conf/*/forwarding").stdout
    return {line.split("/")[-2]: line.rsplit(":", 1)[1] for line in out.split()}


def test_sigterm_and_sigint_stop_it_with_exit_0(make_lab):
    lab = make_lab("server")
    found = _ipv4_forwarding(lab)
    server = _start_server(lab, "--bind", PRIMARY, log="term.log")
    # The XDP forwarding's fib lookup wants IPv4 forwarding on the server's device:
    # the daemon turns it on there alone, and back off at exit.
    running = _ipv4_forwarding(lab)
    changed = {dev for dev in found if found[dev] != running[dev]}
    assert len(changed) == 1 and running[changed.pop()] == "1", (found, running)
    assert server.stop() == 0
    assert '"event": "server_stopped"' in server.output()
    assert _ipv4_forwarding(lab) == found
    server = _start_server(lab, "--bind", PRIMARY, log="int.log")
    os.kill(server.pid, signal.SIGINT)
    assert server.wait(timeout=5) == 0
    assert '"signal": "SIGINT"' in server.output()


def _one_line_error(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xdp-teredo: error:"), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def test_bind_errors_are_one_line_exit_2_for_a_wrong_address_1_for_a_taken_one(make_lab):
    lab = make_lab("server")
    # An address the host does not have: the user's mistake, found by the preflight.
    res = lab.run("server", *_cli("server", "--bind", "198.51.100.200"), check=False)
    assert res.returncode == 2
    assert "--bind 198.51.100.200: not an address of this host" in _one_line_error(res)
    # An address another server already holds.
    _start_server(lab, "--bind", PRIMARY)
    res = lab.run("server", *_cli("server", "--bind", PRIMARY), check=False)
    assert res.returncode == 1
    assert "Address already in use" in _one_line_error(res)


@pytest.mark.parametrize("args, says", [
    (["--bind", "10.0.0.1"], "not a global unicast"),
    (["--bind", "192.168.1.1"], "not a global unicast"),
    (["--bind", "224.0.0.253"], "not a global unicast"),
    (["--bind", "not-an-address"], "not an IPv4 address"),
    (["--bind", "2001:db8::1"], "not an IPv4 address"),
    (["--bind", "9.255.255.255"], "--bind2 (default: --bind + 1) 10.0.0.0"),
    (["--bind", PRIMARY, "--bind2", "10.0.0.2"], "--bind2 10.0.0.2"),
    (["--bind", PRIMARY, "--bind2", PRIMARY], "must differ"),
    ([], "--bind ADDR is required"),
])
def test_bad_bind_is_one_line_and_exit_2(args, says):
    # Refused before any socket exists, so this runs in the test's own namespace.
    res = subprocess.run(_cli("server", *args), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert says in _one_line_error(res)
