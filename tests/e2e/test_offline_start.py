"""Offline start (issue 12): `attach eth0 --server NAME` with no DNS and no server.

What it shows: client1's resolver (`ip netns exec` bind-mounts
/etc/netns/NS/resolv.conf over /etc/resolv.conf) points at 192.0.2.1:53, where
nothing listens yet, and no Teredo server runs either. Looking NAME up then fails
the way it does at boot before the network is up: "Temporary failure in name
resolution" (EAI_AGAIN), not "no such name". The client must not exit: for 30 s
it stays up, offline, answers `status` with the reason, keeps retrying (back-off,
capped here by the short --restart-delay) and logs one line, not one per try.
Then a tiny DNS server (below, by hand: one A record) and our Teredo server start
on 192.0.2.1: the client resolves NAME on its next try and qualifies, without a
restart. SIGTERM still leaves nothing.
"""

import os
import shutil
import time

import pytest

from xdp_teredo.lab import roles

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e

NAME = "teredo.lab.test"      # RFC 6761 .test: ours to define
OFFLINE_SECONDS = 30.0

# A DNS server for one name: A NAME -> ADDRESS; anything else: an empty NOERROR.
DNS = r"""
import socket, struct, sys
name, address = sys.argv[1].lower().rstrip("."), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((address, 53))
print("dns_listening", flush=True)
while True:
    query, peer = s.recvfrom(512)
    at, labels = 12, []
    while query[at]:
        labels.append(query[at + 1:at + 1 + query[at]].decode().lower())
        at += 1 + query[at]
    qtype = struct.unpack("!H", query[at + 1:at + 3])[0]
    question = query[12:at + 5]
    ours = ".".join(labels) == name and qtype == 1
    header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if ours else 0, 0, 0)
    answer = (struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)) if ours else b""
    s.sendto(header + question + answer, peer)
    print("answered", ".".join(labels), qtype, ours, flush=True)
"""


@pytest.fixture
def resolv_conf(lab):
    """client1's /etc/resolv.conf under `ip netns exec`: the server host, port 53."""
    path = f"/etc/netns/{lab['client1'].netns}"
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "resolv.conf"), "w") as conf:
        conf.write(f"nameserver {cs.SERVER}\noptions timeout:1 attempts:1\n")
    os.chmod(os.path.join(path, "resolv.conf"), 0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.lab_hosts("server", "client1")
def test_no_dns_and_no_server_stays_offline_then_qualifies_without_a_restart(lab, resolv_conf):
    require_tool("ethtool")
    # The name fails temporarily, as at boot (and not permanently: that is exit 2).
    probe = lab.run("client1", "getent", "ahostsv4", NAME, check=False)
    assert probe.returncode != 0, probe.stdout
    client = cs.start_client(lab, "client1", server=NAME, wait=False, log="offline.log")
    client.wait_for_output(r'"event": "no_server_answered"', timeout=cs.QUALIFY_TIMEOUT)
    began = time.monotonic()
    while time.monotonic() - began < OFFLINE_SECONDS:
        assert client.alive(), client.output()[-2000:]
        code, info = cs.status(lab, "client1")
        assert code == 3 and info["state"] == "offline" and info["address"] is None, info
        assert info["reason"].startswith("no server name resolved yet (retrying)"), info
        assert NAME in info["reason"] and "Temporary failure" in info["reason"], info
        time.sleep(5.0)
    tries = cs.status(lab, "client1")[1]["resolve_tries"]
    lines = cs.events(client, "no_server_answered")
    print(f"\noffline for {OFFLINE_SECONDS:.0f} s: {tries} lookups, {len(lines)} log line(s)")
    assert tries >= 5 and len(lines) == 1, (tries, lines)

    # The network comes: a name server, and a Teredo server behind the name.
    dns = lab.spawn("server", "python3", "-c", DNS, NAME, cs.SERVER, log="dns.log")
    dns.wait_for_output("dns_listening", timeout=10)
    roles.start_server(lab, "xdp-teredo")
    up = time.monotonic()
    client.wait_for_output(r'"event": "qualified"', timeout=30)
    print(f"qualified {time.monotonic() - up:.1f} s after DNS and the server came up")
    [resolved] = cs.events(client, "servers_resolved")
    assert resolved["servers"] == [f"{NAME} ({cs.SERVER})"], resolved
    code, info = cs.status(lab, "client1")
    assert code == 0 and info["state"] == "qualified" and info["reason"] is None, info
    assert client.pid == info["pid"]          # the same process: no restart
    assert client.stop() == 0, client.output()[-2000:]
    assert cs.leftovers(lab, "client1") == cs.NOTHING_LEFT
