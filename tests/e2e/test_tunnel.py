"""The tunnel device (xdp_teredo/net/tunnel.py) in a throwaway network namespace.

A tun device lives in the namespace of the process that opens /dev/net/tun, so the
code under test runs in a child process inside the namespace: this file run as a
script (`--driver`) is that child, taking one JSON command a line on stdin and
answering one JSON line on stdout. The test (outside) checks the results with
`ip -n NS -j ...`: an observer independent of pyroute2 and of the code under test.

The namespace and every child are removed after each test, pass or fail.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from xdp_teredo.errors import TeredoError
from xdp_teredo.teredo import constants as C
from xdp_teredo.teredo import icmpv6
from xdp_teredo.teredo import packet as P


pytestmark = [pytest.mark.root, pytest.mark.e2e]

NAME = "teredo"
# Teredo addresses: server 192.0.2.1; ours maps 192.0.2.139:12345 (Miredo's own test
# vector), restricted (flags 0); the peer maps 203.0.113.7:40000.
ADDRESS = "2001:0:c000:201:0:cfc6:3fff:fd74"
ADDRESS2 = "2001:0:c000:201:0:cfc6:3fff:fd00"
CONE_ADDRESS = "2001:0:c000:201:8000:cfc6:3fff:fd74"
PEER = "2001:0:c000:201:0:63bf:3400:8cf8"
DRIVER_TIMEOUT = 20.0
_counter = itertools.count()


# -- the child: runs inside the namespace ------------------------------------------------

def _driver() -> None:
    """Serve commands on stdin until EOF or "exit"; one JSON answer per command."""
    from xdp_teredo import log
    from xdp_teredo.client.hook import Hook
    from xdp_teredo.net import tunnel as T
    from xdp_teredo.net.udp import TeredoSocket

    log.configure("json", 0, sys.stderr)     # stdout carries the answers

    state = {"tunnel": None}

    def op_create(name=NAME, mtu=C.TEREDO_MTU):
        state["tunnel"] = T.Tunnel.create(name, mtu=mtu)
        return describe()

    def describe():
        t = state["tunnel"]
        return {"name": t.name, "ifindex": t.ifindex, "mtu": t.mtu,
                "address": str(t.address) if t.address else None,
                "link_local": str(t.link_local) if t.link_local else None,
                "closed": t.closed, "pid": os.getpid()}

    def op_read(timeout=2.0):
        """Every packet read within `timeout` seconds, as hex."""
        t, packets = state["tunnel"], []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return packets
            if select.select([t], [], [], left)[0]:
                while (data := t.read()) is not None:
                    packets.append(data.hex())

    def op_hook(path, state_name, address=None, link_local=None, mtu=None):
        t = state["tunnel"]
        hook = Hook(path, iface=t.name, ifindex=t.ifindex)
        result = hook.up(address, link_local, mtu) if state_name == "up" else hook.down()
        return {"returncode": result.returncode, "output": result.output}

    def op_udp_exchange(local, remote):
        """Send one datagram from a TeredoSocket on `local` to a plain socket on
        `remote`; answer whether it arrived, and the refusal counters."""
        import socket
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((remote, 0))
        receiver.settimeout(2)
        with TeredoSocket(local, 0) as sock:
            sent = sock.sendto(b"\x60hello", remote, receiver.getsockname()[1])
            refused = sock.sendto(b"\x60hello", "10.0.0.1", 3544)
            data, source = receiver.recvfrom(100)
            return {"sent": sent, "refused": refused, "data": data.hex(),
                    "source": list(source),
                    "local": [str(sock.local_address[0]), sock.local_address[1]],
                    "refusals": dict(sock.refusals)}

    ops = {
        "create": op_create,
        "describe": describe,
        "set_address": lambda address: state["tunnel"].set_address(address),
        "replace_address": lambda old, new: state["tunnel"].replace_address(old, new),
        "clear_address": lambda: state["tunnel"].clear_address(),
        "set_mtu": lambda mtu: state["tunnel"].set_mtu(mtu),
        "write": lambda hex: state["tunnel"].write(bytes.fromhex(hex)),
        "read": op_read,
        "close": lambda: state["tunnel"].close(),
        "remove_stale": lambda name=NAME: T.remove_stale_tunnel(name),
        "hook": op_hook,
        "udp_exchange": op_udp_exchange,
    }
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "exit":
            break
        try:
            answer = {"ok": True, "result": ops[op](**command)}
        except TeredoError as err:
            answer = {"ok": False, "type": type(err).__name__, "error": str(err)}
        except Exception as err:  # a bug: report it, the test fails on it
            answer = {"ok": False, "type": type(err).__name__, "error": repr(err)}
        print(json.dumps(answer), flush=True)


# -- the parent side ---------------------------------------------------------------------

class DriverError(Exception):
    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Driver:
    """One child process inside the namespace."""

    def __init__(self, ns: str):
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--driver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # `ip netns exec` execs the command: this pid is the Python process.
        self.pid = self.process.pid

    def __call__(self, op: str, **kwargs):
        self.process.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.process.stdin.flush()
        ready = select.select([self.process.stdout], [], [], DRIVER_TIMEOUT)[0]
        if not ready:
            raise AssertionError(f"driver did not answer {op} within {DRIVER_TIMEOUT} s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"driver died during {op} (exit {self.process.wait()})")
        answer = json.loads(line)
        if not answer["ok"]:
            raise DriverError(answer["type"], answer["error"])
        return answer["result"]

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()


def ip_json(ns: str, *args):
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out) if out.strip() else []


def links(ns: str):
    return {link["ifname"]: link for link in ip_json(ns, "-d", "link", "show")}


def addresses(ns: str, dev: str = NAME):
    """{(address, prefixlen): entry} of the IPv6 addresses on dev."""
    found = {}
    for link in ip_json(ns, "-6", "addr", "show", "dev", dev):
        for entry in link.get("addr_info", []):
            found[(entry["local"], entry["prefixlen"])] = entry
    return found


def routes(ns: str, dev: str = NAME):
    """{(dst, metric)} of the IPv6 routes through dev in the main table."""
    return {(r["dst"], r.get("metric")) for r in ip_json(ns, "-6", "route", "show")
            if r.get("dev") == dev}


@pytest.fixture
def netns(require_root):
    from tests.conftest import require_tool  # not at the top: this file is a driver too

    require_tool("ip")
    name = f"xt-tun-{os.getpid()}-{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    drivers = []
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name, drivers
    finally:
        for driver in drivers:
            driver.kill()
            driver.stop()
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout


@pytest.fixture
def ns(netns):
    return netns[0]


@pytest.fixture
def start(netns):
    """start() -> a new Driver in the namespace (stopped after the test)."""
    name, drivers = netns

    def make() -> Driver:
        driver = Driver(name)
        drivers.append(driver)
        return driver

    return make


@pytest.fixture
def tunnel(start):
    driver = start()
    driver("create")
    return driver


# -- creation ------------------------------------------------------------------------------

def test_create_makes_an_up_tun_with_mtu_1280_and_nothing_else(ns, tunnel):
    info = tunnel("describe")
    link = links(ns)[NAME]
    assert link["ifindex"] == info["ifindex"]
    assert link["mtu"] == C.TEREDO_MTU == 1280
    assert "UP" in link["flags"]
    assert link["linkinfo"]["info_kind"] == "tun"
    assert link["linkinfo"]["info_data"]["pi"] is False
    assert link["linkinfo"]["info_data"]["persist"] is False
    # No kernel-made link-local: only what set_address adds will be there.
    assert link["inet6_addr_gen_mode"] == "none"
    assert addresses(ns) == {}
    assert routes(ns) == set()


def test_a_name_in_use_is_a_runtime_failure_naming_the_holder(start, tunnel):
    other = start()
    with pytest.raises(DriverError) as info:
        other("create")
    assert info.value.kind == "RuntimeFailure"
    assert f"tunnel {NAME} already exists and is in use by pid {tunnel.pid}" in \
        info.value.message


def test_a_name_taken_by_another_kind_of_interface_is_a_runtime_failure(ns, start):
    subprocess.run(["ip", "-n", ns, "link", "add", NAME, "type", "veth", "peer", "name",
                    "teredo-peer"], check=True)
    with pytest.raises(DriverError, match="RuntimeFailure: cannot create tunnel teredo: "
                                          "an interface of another type"):
        start()("create")


# -- addresses and routes ---------------------------------------------------------------------

def test_set_address_puts_miredos_addresses_and_routes(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    found = addresses(ns)
    assert set(found) == {(ADDRESS, 32), (C.LINK_LOCAL_RESTRICTED, 64)}
    # Our own 2001::/32 route, not the kernel's prefix route (see tunnel.py).
    assert found[(ADDRESS, 32)].get("noprefixroute") is True
    assert found[(ADDRESS, 32)]["scope"] == "global"
    assert found[(C.LINK_LOCAL_RESTRICTED, 64)]["scope"] == "link"
    assert routes(ns) == {("2001::/32", C.DEFAULT_ROUTE_METRIC),
                          ("default", C.DEFAULT_ROUTE_METRIC),
                          ("fe80::/64", 256)}             # the kernel's, for the link-local
    assert C.DEFAULT_ROUTE_METRIC == 1029
    described = tunnel("describe")
    assert (described["address"], described["link_local"]) == (ADDRESS,
                                                                C.LINK_LOCAL_RESTRICTED)


def test_the_kernel_picks_the_teredo_address_as_source(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    out = subprocess.run(["ip", "-n", ns, "-6", "-j", "route", "get", PEER],
                         capture_output=True, text=True, check=True).stdout
    route = json.loads(out)[0]
    assert (route["dev"], route["prefsrc"]) == (NAME, ADDRESS)
    out = subprocess.run(["ip", "-n", ns, "-6", "-j", "route", "get", "2001:db8::1"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0]["dev"] == NAME       # native IPv6 via the default route


def test_replace_address_swaps_the_address_and_keeps_the_routes(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    before = routes(ns)
    tunnel("replace_address", old=ADDRESS, new=ADDRESS2)
    assert set(addresses(ns)) == {(ADDRESS2, 32), (C.LINK_LOCAL_RESTRICTED, 64)}
    assert routes(ns) == before
    # A cone address brings Miredo's cone link-local instead.
    tunnel("replace_address", old=ADDRESS2, new=CONE_ADDRESS)
    assert set(addresses(ns)) == {(CONE_ADDRESS, 32), (C.LINK_LOCAL_CONE, 64)}
    assert routes(ns) == before


def test_replace_address_refuses_a_wrong_old_address(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    with pytest.raises(DriverError, match="ValueError"):
        tunnel("replace_address", old=ADDRESS2, new=CONE_ADDRESS)
    assert set(addresses(ns)) == {(ADDRESS, 32), (C.LINK_LOCAL_RESTRICTED, 64)}


def test_set_address_again_replaces(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    tunnel("set_address", address=ADDRESS2)
    assert set(addresses(ns)) == {(ADDRESS2, 32), (C.LINK_LOCAL_RESTRICTED, 64)}


def test_clear_address_removes_what_set_address_added(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    tunnel("clear_address")
    assert addresses(ns) == {}
    assert routes(ns) == set()
    assert NAME in links(ns)
    tunnel("set_address", address=ADDRESS2)        # and qualifying again works
    assert (ADDRESS2, 32) in addresses(ns)


def test_set_mtu(ns, tunnel):
    tunnel("set_mtu", mtu=1400)
    assert links(ns)[NAME]["mtu"] == 1400
    with pytest.raises(DriverError, match="ValueError"):
        tunnel("set_mtu", mtu=1000)


# -- the fd ---------------------------------------------------------------------------------

def test_packets_routed_into_the_tunnel_are_read(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    # Another process of the namespace sends to a Teredo peer: the kernel routes it
    # into the tunnel (2001::/32), where the control plane reads it.
    sender = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
              f"s.sendto(b'slow path', ('{PEER}', 4000))")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", sender], check=True)
    packets = [P.parse_ipv6(bytes.fromhex(h)) for h in tunnel("read", timeout=1.0)]
    udp = [p for p in packets if p.next_header == C.IPPROTO_UDP]
    assert len(udp) == 1
    assert (udp[0].src, udp[0].dst) == (ipaddress.IPv6Address(ADDRESS),
                                        ipaddress.IPv6Address(PEER))
    assert udp[0].payload[8:] == b"slow path"


def test_a_written_packet_is_received_by_the_stack(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    request = icmpv6.build_echo_request(PEER, ADDRESS, identifier=0x7e7e, sequence=9,
                                        data=b"into the tunnel")
    assert tunnel("write", hex=request.hex()) == len(request)
    # The kernel answers; the reply goes to PEER, i.e. back into the tunnel.
    replies = []
    for h in tunnel("read", timeout=1.0):
        try:
            echo = icmpv6.parse_echo(bytes.fromhex(h))
        except TeredoError:
            continue                       # MLD reports and the like
        replies.append(echo)
    assert len(replies) == 1
    reply = replies[0]
    assert reply.reply
    assert (str(reply.src), str(reply.dst)) == (ADDRESS, PEER)
    assert (reply.identifier, reply.sequence, reply.data) == (0x7e7e, 9, b"into the tunnel")


def test_nothing_waiting_reads_none(tunnel):
    assert tunnel("read", timeout=0.2) == []


def test_writing_garbage_is_a_runtime_failure(tunnel):
    with pytest.raises(DriverError, match="RuntimeFailure: tunnel teredo: write of 3 bytes"):
        tunnel("write", hex="ffffff")


# -- the end ------------------------------------------------------------------------------------

def test_close_leaves_nothing(ns, tunnel):
    tunnel("set_address", address=ADDRESS)
    tunnel("close")
    assert NAME not in links(ns)
    assert routes(ns) == set()
    all_routes = ip_json(ns, "-6", "route", "show")
    assert not [r for r in all_routes if r.get("dev") == NAME or "2001::" in r["dst"]]
    assert tunnel("describe")["closed"] is True
    tunnel("close")                                  # idempotent


def test_a_killed_client_leaves_no_tunnel_and_detach_finds_none(ns, start, tunnel):
    tunnel("set_address", address=ADDRESS)
    tunnel.kill(signal.SIGKILL)
    assert NAME not in links(ns)
    assert routes(ns) == set()
    assert start()("remove_stale") is False


def test_remove_stale_tunnel_deletes_a_left_over_tun(ns, start):
    # What a crashed client would leave if its tun outlived it: a persistent one.
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", NAME, "mode", "tun"], check=True)
    assert NAME in links(ns)
    assert start()("remove_stale") is True
    assert NAME not in links(ns)


def test_remove_stale_tunnel_refuses_a_tunnel_in_use(ns, start, tunnel):
    with pytest.raises(DriverError) as info:
        start()("remove_stale")
    assert f"tunnel {NAME} is in use by pid {tunnel.pid}" in info.value.message
    assert NAME in links(ns)


def test_remove_stale_tunnel_refuses_another_kind_of_interface(ns, start):
    subprocess.run(["ip", "-n", ns, "link", "add", NAME, "type", "veth", "peer", "name",
                    "teredo-peer"], check=True)
    with pytest.raises(DriverError, match="teredo is not a tun device"):
        start()("remove_stale")
    assert NAME in links(ns)


# -- Miredo's hook and the UDP socket, in the same namespace --------------------------------

MIREDO_HOOK = "/etc/miredo/client-hook"


def test_debians_miredo_hook_works_with_our_environment(ns, tunnel):
    """A Miredo user's hook keeps working: run Debian's own client-hook through Hook."""
    from tests.conftest import require_path

    require_path(MIREDO_HOOK, "miredo is not installed; `make test` installs it")
    result = tunnel("hook", path=MIREDO_HOOK, state_name="up", address=ADDRESS,
                    link_local=C.LINK_LOCAL_RESTRICTED, mtu=1280)
    assert result["returncode"] == 0, result["output"]
    assert set(addresses(ns)) == {(ADDRESS, 32), (C.LINK_LOCAL_RESTRICTED, 64)}
    assert ("default", C.DEFAULT_ROUTE_METRIC) in routes(ns)
    result = tunnel("hook", path=MIREDO_HOOK, state_name="down")
    assert result["returncode"] == 0, result["output"]
    assert addresses(ns) == {}


def test_udp_socket_sends_to_a_global_address_and_refuses_a_private_one(ns, tunnel):
    subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.1/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "198.51.100.1/32", "dev", "lo"],
                   check=True)
    result = tunnel("udp_exchange", local="198.51.100.1", remote="192.0.2.1")
    assert result["sent"] is True and result["refused"] is False
    assert bytes.fromhex(result["data"]) == b"\x60hello"
    assert result["source"] == result["local"]
    assert result["refusals"] == {"not_global_unicast": 1}


if __name__ == "__main__" and sys.argv[1:] == ["--driver"]:
    _driver()
