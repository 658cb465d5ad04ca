"""The inbound guard end to end: two of our clients in the lab, over our server.

client1 ("A", behind one NAT) runs the default policy, stateful, with one TCP and
one UDP port allowed; client2 ("B", behind two NATs) runs `--inbound open`. Both
have listeners. From B, a Teredo peer anywhere on the IPv6 internet as far as A
knows: a connection to A's closed port times out, and A's data path counts every
SYN it dropped; the allowed port answers; datagrams to a closed UDP port are
dropped one for one. From A: TCP and UDP sessions to B work, because the replies
belong to flows A started; B, open, takes everything. Ping works both ways
(RFC 4890: echo requests pass). Counters are read from each client's control socket.

Last, our relay with `--inbound stateful` in front of B (which is open itself): the
native host cannot open a connection to B, B's own sessions to it work.
"""

import json
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import require_tool
from tests.e2e import client_support as cs
from xdp_teredo.lab import roles

pytestmark = pytest.mark.e2e

CLOSED_TCP, ALLOWED_TCP, CLOSED_UDP, ALLOWED_UDP = 7001, 7002, 7003, 7004
B_TCP, B_UDP = 7101, 7102
V6_TCP, V6_UDP = 7201, 7202
DATAGRAMS = 5

# Listens on TCP and UDP ports; answers each TCP connection with a line and each
# datagram with "echo:<data>"; prints one JSON line per event.
LISTENER = r"""
import json, selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    proto, port = spec.split("/")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    if proto == "tcp":
        s.listen(8)
    sel.register(s, selectors.EVENT_READ, (proto, int(port)))
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        proto, port = key.data
        if proto == "tcp":
            conn, peer = key.fileobj.accept()
            conn.sendall(f"hello from {port}\n".encode())
            conn.close()
        else:
            data, peer = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(b"echo:" + data, peer)
        print(json.dumps({"proto": proto, "port": port, "from": peer[0]}), flush=True)
"""

# TCP: connect (timeout), read the greeting. UDP: send N datagrams, collect answers.
TRY = r"""
import json, socket, sys, time
proto, address = sys.argv[1], sys.argv[2]
port, n, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
out = {"ok": False}
try:
    if proto == "tcp":
        s = socket.create_connection((address, port), timeout=timeout)
        out = {"ok": True, "greeting": s.makefile().readline().strip()}
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        answers = []
        for i in range(n):
            s.sendto(f"d{i}".encode(), (address, port))
        deadline = time.monotonic() + timeout
        while len(answers) < n and time.monotonic() < deadline:
            try:
                answers.append(s.recv(2048).decode())
            except socket.timeout:
                break
        out = {"ok": len(answers) == n, "answers": answers}
except OSError as err:
    out = {"ok": False, "error": type(err).__name__}
print(json.dumps(out))
"""


def _syn_retransmits(lab, role) -> int:
    """TcpExt TCPSynRetrans of the role's network namespace (/proc/net/netstat)."""
    text = lab.run(role, "cat", "/proc/net/netstat").stdout.splitlines()
    for names, values in zip(text[::2], text[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["TCPSynRetrans"])
    raise AssertionError("no TcpExt line")


def _try(lab, role, proto, address, port, n=1, timeout=3.0) -> dict:
    res = lab.run(role, sys.executable, "-c", TRY, proto, str(address), str(port), str(n), str(timeout),
                  timeout=timeout + 20)
    return json.loads(res.stdout)


def _guard(lab, role) -> dict:
    """The guard_* packet counters of the role's data path, and decapsulated."""
    stats = cs.packets(cs.query(lab, role, "stats"))
    return {k: v for k, v in stats.items() if k.startswith("guard_") or k == "decapsulated"}


@pytest.fixture(scope="module")
def world(make_module_lab):
    require_tool("ethtool")
    lab = make_module_lab("server", "relay", "client1", "client2", "v6host")
    server = lab.spawn("server", *cs.CLI, "--log-format", "json", "server", "--bind", cs.SERVER,
                       log="xdp-teredo-server.log")
    server.wait_for_output(r'"event": "server_started"', timeout=10)
    procs = {
        "client1": cs.start_client(lab, "client1", "--allow", f"tcp/{ALLOWED_TCP}",
                                   "--allow", f"udp/{ALLOWED_UDP}", wait=False),
        "client2": cs.start_client(lab, "client2", "--inbound", "open", wait=False),
    }
    for proc in procs.values():
        cs.wait_ready(proc)
    a = cs.status(lab, "client1")[1]["address"]
    b = cs.status(lab, "client2")[1]["address"]
    listeners = {
        "client1": lab.spawn("client1", sys.executable, "-c", LISTENER, f"tcp/{CLOSED_TCP}",
                             f"tcp/{ALLOWED_TCP}", f"udp/{CLOSED_UDP}", f"udp/{ALLOWED_UDP}",
                             log="listener-client1.log"),
        "client2": lab.spawn("client2", sys.executable, "-c", LISTENER, f"tcp/{B_TCP}", f"udp/{B_UDP}",
                             log="listener-client2.log"),
    }
    listeners["v6host"] = lab.spawn("v6host", sys.executable, "-c", LISTENER, f"tcp/{V6_TCP}",
                                    f"udp/{V6_UDP}", log="listener-v6host.log")
    for proc in listeners.values():
        proc.wait_for_output("listening", timeout=10)
    relay = roles.start_relay(lab, "xdp-teredo", "relay", "--inbound", "stateful")
    # Peers first (bubbles, §5.2.6), so that what follows takes the fast path.
    assert lab.ping("client2", a, count=2, deadline=15).ok
    assert lab.ping("client1", b, count=2, deadline=15).ok
    return SimpleNamespace(lab=lab, procs=procs, a=a, b=b, listeners=listeners, relay=relay,
                           v6=str(lab["v6host"].ipv6[0]))


def _heard(world, role) -> list:
    return [json.loads(line) for line in world.listeners[role].output().splitlines()
            if line.startswith("{")]


def test_status_shows_the_policy(world):
    info_a = cs.status(world.lab, "client1")[1]["inbound"]
    info_b = cs.status(world.lab, "client2")[1]["inbound"]
    assert info_a["policy"] == "stateful"
    assert info_a["allowed"] == [f"tcp/{ALLOWED_TCP}", f"udp/{ALLOWED_UDP}"]
    assert info_b == {**info_b, "policy": "open", "allowed": []}
    text = cs.cli(world.lab, "client1", "status").stdout
    assert f"inbound    stateful (allowed: tcp/{ALLOWED_TCP}, udp/{ALLOWED_UDP};" in text


def test_unsolicited_tcp_is_refused_and_every_syn_counted(world):
    lab = world.lab
    before, retrans = _guard(lab, "client1"), _syn_retransmits(lab, "client2")
    got = _try(lab, "client2", "tcp", world.a, CLOSED_TCP, timeout=2.5)
    assert got == {"ok": False, "error": "TimeoutError"}, got   # dropped: no RST, no answer
    syns = 1 + _syn_retransmits(lab, "client2") - retrans
    moved = cs.delta(before, _guard(lab, "client1"))
    assert moved == {"guard_unsolicited": syns}, (moved, syns)
    assert not [e for e in _heard(world, "client1") if e["port"] == CLOSED_TCP]


def test_an_allowed_port_takes_connections(world):
    lab = world.lab
    before = _guard(lab, "client1")
    got = _try(lab, "client2", "tcp", world.a, ALLOWED_TCP)
    assert got == {"ok": True, "greeting": f"hello from {ALLOWED_TCP}"}, got
    moved = cs.delta(before, _guard(lab, "client1"))
    assert not {k for k in moved if k.startswith("guard_")}, moved
    assert moved["decapsulated"] >= 3   # SYN, ACK, FIN at least
    assert [e["from"] for e in _heard(world, "client1") if e["port"] == ALLOWED_TCP] == [world.b]


def test_udp_counters_match_what_was_sent(world):
    lab = world.lab
    before = _guard(lab, "client1")
    closed = _try(lab, "client2", "udp", world.a, CLOSED_UDP, n=DATAGRAMS, timeout=1.5)
    assert closed == {"ok": False, "answers": []}
    moved = cs.delta(before, _guard(lab, "client1"))
    assert moved == {"guard_unsolicited": DATAGRAMS}, moved
    before = _guard(lab, "client1")
    opened = _try(lab, "client2", "udp", world.a, ALLOWED_UDP, n=DATAGRAMS)
    assert opened["ok"] and sorted(opened["answers"]) == [f"echo:d{i}" for i in range(DATAGRAMS)]
    assert cs.delta(before, _guard(lab, "client1")) == {"decapsulated": DATAGRAMS}


def test_sessions_a_starts_work_both_ways(world):
    """A, stateful, talks to B: the replies belong to A's flows and come in; B is
    open and takes the connection itself."""
    lab = world.lab
    before_a, before_b = _guard(lab, "client1"), _guard(lab, "client2")
    tcp = _try(lab, "client1", "tcp", world.b, B_TCP)
    assert tcp == {"ok": True, "greeting": f"hello from {B_TCP}"}, tcp
    udp = _try(lab, "client1", "udp", world.b, B_UDP, n=DATAGRAMS)
    assert udp["ok"] and len(udp["answers"]) == DATAGRAMS, udp
    moved_a = cs.delta(before_a, _guard(lab, "client1"))
    assert not {k for k in moved_a if k.startswith("guard_")}, moved_a
    assert moved_a["decapsulated"] >= 2 + DATAGRAMS   # SYN-ACK, FIN..., and the UDP answers
    assert not {k for k in cs.delta(before_b, _guard(lab, "client2")) if k.startswith("guard_")}
    # A's flow table holds what it started (the UDP flow answered: replied).
    flows = cs.status(lab, "client1")[1]["inbound"]
    assert flows["flows"] >= 2 and flows["flows_by_state"].get("udp_replied", 0) >= 1, flows


def test_ping_both_ways(world):
    lab = world.lab
    before = _guard(lab, "client1")
    there = lab.ping("client1", world.b, count=3, interval=0.2, deadline=10)
    back = lab.ping("client2", world.a, count=3, interval=0.2, deadline=10)
    assert there.ok and back.ok, (there, back)
    assert not {k for k in cs.delta(before, _guard(lab, "client1")) if k.startswith("guard_")}


def _relay_guard(lab) -> dict:
    stats = cs.packets(cs.query(lab, "relay", "stats"))
    return {k: v for k, v in stats.items() if k.startswith("guard_")}


def test_a_stateful_relay_guards_the_clients_it_serves(world):
    lab, v6 = world.lab, world.v6
    info = cs.query(lab, "relay", "status")["inbound"]
    assert (info["policy"], info["allowed"]) == ("stateful", [])
    # B reaches the native host (its echo test finds the relay, §5.2.9); pings pass
    # both ways, echo requests being what IPv6 needs (RFC 4890).
    assert lab.ping("client2", v6, count=2, deadline=20).ok
    assert lab.ping("v6host", world.b, count=2, deadline=20).ok
    # The native host cannot open a connection to B, open as B is: the relay drops it.
    before_relay, before_b = _relay_guard(lab), _guard(lab, "client2")
    retrans = _syn_retransmits(lab, "v6host")
    got = _try(lab, "v6host", "tcp", world.b, B_TCP, timeout=2.5)
    assert got == {"ok": False, "error": "TimeoutError"}, got
    syns = 1 + _syn_retransmits(lab, "v6host") - retrans
    assert cs.delta(before_relay, _relay_guard(lab)) == {"guard_unsolicited": syns}
    assert cs.delta(before_b, _guard(lab, "client2")) == {}, "nothing reached B"
    assert not [e for e in _heard(world, "client2") if e["from"] == v6]
    # B's own sessions to the native host work: the relay recorded B's flows.
    tcp = _try(lab, "client2", "tcp", v6, V6_TCP)
    assert tcp == {"ok": True, "greeting": f"hello from {V6_TCP}"}, tcp
    udp = _try(lab, "client2", "udp", v6, V6_UDP, n=DATAGRAMS)
    assert udp["ok"], udp
    assert cs.delta(before_relay, _relay_guard(lab)) == {"guard_unsolicited": syns}
    assert cs.query(lab, "relay", "status")["inbound"]["flows"] >= 2
