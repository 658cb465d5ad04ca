"""The data path end to end: two Teredo ends, one behind a NAT, no control plane.

    client1 (10.1.0.2) -- nat1 (MASQUERADE, 198.51.100.1) -- inet -- public (203.0.113.10)

Both ends run the data path (XDP or tc-only decapsulation on eth0, tc encapsulation
on their tun "teredo"). Nothing else speaks Teredo: the peer entries are written
straight into the maps, as the control plane will once it has qualified and
bubbled (RFC 4380 §5.2.1, §5.2.6). So every ping and every TCP segment that gets
across was carried by the BPF fast path, and the counters say how many.

The NAT mapping comes first, the way Teredo opens it (§5.2.6): a UDP packet from
client1's Teredo port to public; public reads the mapped address and port off the
datagram (what the server would put in the origin indication), conntrack on the
NAT must agree. client1's Teredo address embeds that mapping.

Each end's tun is held open by a small reader (a tun has carrier only while a
process holds it): the control plane's slow path. It counts what reaches it by
IPv6 destination, so the test also proves that nothing of the peer traffic went
there. (A persistent `ip tuntap add` tun without a reader, NO-CARRIER, works for
both redirects too; nothing would read its slow path.)
"""

import ipaddress
import json
import os
import random
import subprocess
import sys
import textwrap
import uuid

import pytest

from xdp_teredo.datapath import Config, ClientDatapath, PeerEntry, PeerFlag, Reason, now_ns
from xdp_teredo.datapath.layout import Kind
from xdp_teredo.datapath.maps import delta
from xdp_teredo.lab import netns, probe
from xdp_teredo.teredo.address import TeredoAddress

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.e2e]

# Only embedded in the addresses: no server runs (no qualification needed).
SERVER_IPV4 = "192.0.2.1"
CLIENT_PORT = 40001   # client1's Teredo socket port, before the NAT
PUBLIC_PORT = 3544    # public's Teredo port (no NAT: also its mapped port)
TUN = "teredo"
TCP_PORT = 5001
TCP_BYTES = 2 * 1024 * 1024   # each way
PINGS = 10
XDP_TEREDO = os.path.join(os.path.dirname(sys.executable), "xdp-teredo")

TUN_READER = textwrap.dedent("""
    # Holds the tun open (carrier) and reads what the fast path left to it: the
    # control plane's slow path. On SIGTERM: one JSON line, packets per destination.
    import fcntl, ipaddress, json, os, signal, struct, sys
    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), IFF_TUN | IFF_NO_PI))
    seen = {}
    def report(*_):
        print(json.dumps({"event": "slow_path", "read": seen}), flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, report)
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        pkt = os.read(fd, 65535)
        dst = str(ipaddress.IPv6Address(pkt[24:40])) if len(pkt) >= 40 and pkt[0] >> 4 == 6 else "other"
        seen[dst] = seen.get(dst, 0) + 1
""")

TCP_SERVER = textwrap.dedent("""
    # Receives until EOF, then sends TCP_BYTES of its own; reports both digests.
    import hashlib, json, random, socket, sys
    addr, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(20)
    print(json.dumps({"event": "ready"}), flush=True)
    conn, peer = srv.accept()
    conn.settimeout(20)
    got, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        got.update(chunk)
        n += len(chunk)
    data = random.Random(seed).randbytes(size)
    conn.sendall(data)
    conn.close()
    print(json.dumps({"event": "done", "peer": peer[0], "received": n, "received_sha256": got.hexdigest(),
                      "sent_sha256": hashlib.sha256(data).hexdigest()}), flush=True)
""")

TCP_CLIENT = textwrap.dedent("""
    import hashlib, json, random, socket, sys, time
    addr, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    data = random.Random(seed).randbytes(size)
    t0 = time.monotonic()
    s = socket.create_connection((addr, port), timeout=20)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got, n = hashlib.sha256(), 0
    while chunk := s.recv(1 << 16):
        got.update(chunk)
        n += len(chunk)
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    s.close()
    print(json.dumps({"received": n, "received_sha256": got.hexdigest(),
                      "sent_sha256": hashlib.sha256(data).hexdigest(),
                      "seconds": round(time.monotonic() - t0, 3),
                      "total_retrans": int.from_bytes(info[100:104], "little")}))
""")


# Every new bpffs comes with these (the kernel's bpf_preload iterators); not ours.
PRELOADED = {"maps.debug", "progs.debug"}


def pins(root: str) -> list:
    return sorted(set(os.listdir(root)) - PRELOADED)


def _json_lines(text: str) -> list:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def datapaths(require_bcc):
    """One compiled ClientDatapath per end, compiled once for the module.

    A ClientDatapath owns its maps (peers, config, stats): two attachments of one object
    would share one peer table, one config (one local address, one Teredo address)
    and one set of counters, which is not two Teredo hosts. ClientDatapath.attach refuses
    a second attachment for that reason. So: two compiles (~2 s each), reused by
    every test of the module, maps reset before each test.
    """
    made = {}
    try:
        for role in ("client1", "public"):
            made[role] = ClientDatapath.compile()
        yield made
    finally:
        for prog in made.values():
            prog.close()


@pytest.fixture
def pin_root():
    """A bpffs of our own, mounted outside /sys so that `ip netns exec` sees it.

    `ip netns exec` mounts a fresh sysfs on /sys, hiding /sys/fs/bpf; other mounts
    made before it (here under /run) stay visible. Every bpffs mount is its own
    instance, so this one holds only what this test pins.
    """
    root = f"/run/xdp-teredo-e2e-{uuid.uuid4().hex[:8]}"
    os.makedirs(root)
    netns.run(["mount", "-t", "bpf", "bpf", root])
    try:
        yield root
    finally:
        leftovers = pins(root)
        netns.run(["umount", root])
        os.rmdir(root)
    assert not leftovers, f"pinned objects left under {root}: {leftovers}"


class End:
    """One Teredo host of the test: its namespace, devices, addresses, data path."""

    def __init__(self, lab, role, prog, local_port, mapped_ipv4, mapped_port, seed):
        self.lab, self.role, self.prog = lab, role, prog
        self.host = lab[role]
        self.ns = self.host.netns
        self.local_ipv4 = self.host.ipv4[0]
        self.local_port = local_port
        self.mapped_ipv4, self.mapped_port = ipaddress.IPv4Address(mapped_ipv4), mapped_port
        # RFC 4380 §4 / RFC 5991 §4, random flag bits from a seeded generator.
        self.address = TeredoAddress.build(SERVER_IPV4, mapped_ipv4, mapped_port,
                                           rng=random.Random(seed)).ipv6
        self.reader = None
        self.att = None

    def make_tun(self):
        self.reader = self.lab.spawn(self.role, sys.executable, "-c", TUN_READER, TUN,
                                     log=f"{self.role}-tun-reader.log")
        self.reader.wait_for_output(r'"event": "ready"', timeout=5)
        self.lab.run(self.role, "ip", "link", "set", TUN, "mtu", "1280", "up")
        # /32: the on-link route to 2001::/32 comes with it, as Miredo's hook does.
        netns.add_address(self.ns, TUN, f"{self.address}/32")

    def ifindex(self, name) -> int:
        out = self.lab.run(self.role, "ip", "-j", "link", "show", "dev", name).stdout
        return json.loads(out)[0]["ifindex"]

    def attach(self, ingress, pin_root, attached: list):
        self.prog.reset()
        self.att = self.prog.attach(self.ifindex(self.host.uplink), self.ifindex(TUN), ingress=ingress,
                                    xdp_mode="native", netns=self.ns, pin=True, pin_root=pin_root)
        attached.append(self.att)
        self.att.configure(Config(local_ipv4=self.local_ipv4, local_port=self.local_port,
                                  teredo_address=self.address))

    def trust(self, other: "End"):
        """What the control plane writes once `other` answered a bubble (§5.2.4)."""
        self.att.peers.put(PeerEntry(address=other.address, mapped_ipv4=other.mapped_ipv4,
                                     mapped_port=other.mapped_port, flags=PeerFlag.TRUSTED,
                                     last_rx_ns=now_ns()))

    def stats(self):
        return self.att.stats()

    def tcp_in_segs(self) -> int:
        """TCP InSegs of this namespace: one per skb its TCP received (seen: a GSO skb
        counts once)."""
        lines = [l.split() for l in self.lab.run(self.role, "cat", "/proc/net/snmp").stdout.splitlines()
                 if l.startswith("Tcp:")]
        return int(dict(zip(lines[0], lines[1]))["InSegs"])

    def cli(self, *args, via="ip-netns-exec", check=True, pin_root_env=None):
        """`xdp-teredo stats ARGS` in this end's namespace, as another process."""
        enter = (["ip", "netns", "exec", self.ns] if via == "ip-netns-exec"
                 else ["nsenter", f"--net=/run/netns/{self.ns}"])
        env = {k: v for k, v in os.environ.items() if k != "XDP_TEREDO_PIN_ROOT"}
        if pin_root_env:
            env["XDP_TEREDO_PIN_ROOT"] = pin_root_env
        res = subprocess.run([*enter, XDP_TEREDO, "stats", *args], capture_output=True, text=True,
                             timeout=30, env=env)
        if check:
            assert res.returncode == 0, res.stderr
        return res

    def slow_path(self) -> dict:
        """Stop the tun reader; what it read, by IPv6 destination."""
        self.reader.stop()
        reports = [e for e in _json_lines(self.reader.output()) if e.get("event") == "slow_path"]
        assert reports, self.reader.output()
        return reports[-1]["read"]


def open_nat_mapping(lab) -> tuple:
    """client1's Teredo port -> public: the mapping as public sees it (and conntrack)."""
    echo = lab.spawn("public", *probe.argv("udp-echo", "--port", PUBLIC_PORT, "--count", 1,
                                           "--timeout", 10), log="public-mapping-echo.log")
    echo.wait_for_output(r'"event": "ready"', timeout=5)
    sent = _json_lines(lab.run("client1", *probe.argv("udp-send", lab["public"].address, PUBLIC_PORT,
                                                      "--bind-port", CLIENT_PORT)).stdout)[-1]
    assert sent["reply"] is not None, "no echo through the NAT"
    echo.wait(timeout=5)
    seen = [e for e in _json_lines(echo.output()) if e.get("event") == "datagram"][0]
    mapped_ipv4, mapped_port = seen["peer"][0], seen["peer"][1]
    assert mapped_ipv4 == str(lab["nat1"].address), "public sees the NAT's address"
    table = netns.conntrack_list(lab["nat1"].netns)
    expect = (f"src={lab['client1'].address} dst={lab['public'].address} sport={CLIENT_PORT} "
              f"dport={PUBLIC_PORT} ")
    entry = [l for l in table.splitlines() if expect in l]
    assert len(entry) == 1, table
    assert f"dst={mapped_ipv4} sport={PUBLIC_PORT} dport={mapped_port} " in entry[0], entry
    return mapped_ipv4, mapped_port


def pinged(lab, src: End, dst: End, count: int):
    result = lab.ping(src.role, str(dst.address), count=count, interval=0.05, deadline=10)
    assert result.ok, result
    assert result.replies_from == [str(dst.address)]
    return result


def tcp_both_ways(lab, client: End, server: End) -> dict:
    srv = lab.spawn(server.role, sys.executable, "-c", TCP_SERVER, str(server.address), TCP_PORT,
                    TCP_BYTES, 2, log=f"{server.role}-tcp-server.log")
    srv.wait_for_output(r'"event": "ready"', timeout=5)
    res = lab.run(client.role, sys.executable, "-c", TCP_CLIENT, str(server.address), TCP_PORT,
                  TCP_BYTES, 1, timeout=40)
    out = json.loads(res.stdout)
    assert srv.wait(timeout=10) == 0, srv.output()
    done = [e for e in _json_lines(srv.output()) if e.get("event") == "done"][0]
    # Byte-identical both ways: the checksums survived encapsulation, GSO and the NAT.
    assert (done["received"], done["received_sha256"]) == (TCP_BYTES, out["sent_sha256"])
    assert (out["received"], out["received_sha256"]) == (TCP_BYTES, done["sent_sha256"])
    assert done["peer"] == str(client.address)
    return out


def not_fast(counted: dict) -> dict:
    """The non-"ok" reasons among counted ones."""
    return {k: n for k, n in counted.items() if Reason[k.upper()].kind != Kind.OK}


def attached_state(end: End) -> dict:
    """What `ip` and `tc` show of ours on the end's devices."""
    run = end.lab.run
    return {
        "xdp": "xdp" in run(end.role, "ip", "-d", "link", "show", "dev", end.host.uplink).stdout,
        "nic ingress": run(end.role, "tc", "filter", "show", "dev", end.host.uplink,
                           "ingress").stdout.strip(),
        "tun egress": run(end.role, "tc", "filter", "show", "dev", TUN, "egress").stdout.strip(),
        "clsact": "clsact" in run(end.role, "tc", "qdisc", "show").stdout,
    }


@pytest.fixture
def attached():
    """Attachments to detach if the test stops half-way (detach is idempotent).

    Requested last, so it is torn down before the lab and the pin root: the
    module's ClientDatapath objects must be free for the next test."""
    atts = []
    yield atts
    for att in atts:
        att.detach()


@pytest.mark.parametrize("ingress", ["xdp", "tc"])
def test_ping_and_tcp_take_the_fast_path_through_a_nat(make_lab, datapaths, pin_root, ingress, attached):
    lab = make_lab("client1", "public")
    mapped_ipv4, mapped_port = open_nat_mapping(lab)
    client = End(lab, "client1", datapaths["client1"], CLIENT_PORT, mapped_ipv4, mapped_port, seed=1)
    public = End(lab, "public", datapaths["public"], PUBLIC_PORT, lab["public"].address, PUBLIC_PORT,
                 seed=2)
    assert TeredoAddress.parse(client.address).embeds(mapped_ipv4, mapped_port)
    ends = (client, public)
    for end in ends:
        end.make_tun()
        end.attach(ingress, pin_root, attached)
    client.trust(public)
    public.trust(client)
    report = {}

    # -- ping6 both ways: every request and every reply crosses both data paths.
    before = {e.role: e.stats() for e in ends}
    pinged(lab, client, public, PINGS)
    pinged(lab, public, client, PINGS)
    for end in ends:
        counted = delta(before[end.role], end.stats())
        report[f"{end.role} ping"] = counted
        # Each end received PINGS requests and PINGS replies, and sent as many.
        assert counted.get("decapsulated", 0) >= 2 * PINGS, counted
        assert counted.get("encapsulated", 0) >= 2 * PINGS, counted
        if ingress == "xdp":
            assert counted.get("rx_redirected") == counted["decapsulated"], counted
        # Whatever else was counted is host traffic or multicast, never a drop.
        assert set(not_fast(counted)) <= {"rx_not_teredo", "tx_no_peer"}, counted

    # -- TCP both ways, byte-identical.
    before = {e.role: e.stats() for e in ends}
    segs_before = {e.role: e.tcp_in_segs() for e in ends}
    report["tcp client"] = tcp_both_ways(lab, client, public)
    for end in ends:
        after = end.stats()
        counted = delta(before[end.role], after)
        segs = end.tcp_in_segs() - segs_before[end.role]
        fast_bytes = {f"{k}_bytes": after[k]["bytes"] - before[end.role][k]["bytes"]
                      for k in ("decapsulated", "encapsulated")}
        report[f"{end.role} tcp"] = dict(counted, tcp_in_segs=segs, **fast_bytes)
        # Each end sent and received TCP_BYTES of payload, all of it through the fast
        # path (inner IPv6 bytes counted on encapsulation, outer frames on decapsulation).
        assert fast_bytes["encapsulated_bytes"] >= TCP_BYTES, report
        assert fast_bytes["decapsulated_bytes"] >= TCP_BYTES, report
        # Packets, not bytes: TCP hands GSO skbs to the tun and one encapsulation
        # wraps a whole one (FIXED_GSO; segmented on the way out), so "encapsulated"
        # is well below the segment count. Each decapsulation hands one packet to
        # the stack (seen: with native XDP on a veth, whose peer then segments, one
        # per 1280-byte frame; tc-only, the veths carry the GSO skb whole, ~28 KB),
        # and there is no other way in: TCP cannot have received more skbs (InSegs).
        assert counted["decapsulated"] >= segs > 0, report
        if ingress == "xdp":
            assert 0 < counted["rx_redirected"] <= counted["decapsulated"], report
        assert set(not_fast(counted)) <= {"rx_not_teredo", "tx_no_peer"}, report

    # -- the peer entries we installed carry the activity (no entry was learned instead).
    for end, other in ((client, public), (public, client)):
        peers = list(end.att.peers)
        assert [p.address for p in peers] == [other.address]
        assert peers[0].flags == PeerFlag.TRUSTED
        assert peers[0].rx_packets >= 2 * PINGS and peers[0].tx_packets >= 2 * PINGS

    # -- `xdp-teredo stats` from another process, in each end's namespace.
    for end in ends:
        low = end.stats()
        shown = json.loads(end.cli("--json", "--pin-root", pin_root).stdout)
        high = end.stats()
        assert shown["instance"] == end.att.pin_dir
        for reason in Reason:
            key = reason.key
            assert isinstance(shown[key], int)
            assert low[key]["packets"] <= shown[key] <= high[key]["packets"], key
            assert low[key]["bytes"] <= shown["bytes"][key] <= high[key]["bytes"], key
        assert shown["decapsulated"] >= 2 * PINGS and shown["encapsulated"] >= 2 * PINGS
        # nsenter keeps our mount namespace (and /sys/fs/bpf): the same answer; the
        # root given through the environment this time.
        again = json.loads(end.cli("--json", via="nsenter", pin_root_env=pin_root).stdout)
        assert again["instance"] == end.att.pin_dir and again["decapsulated"] >= shown["decapsulated"]
        table = end.cli("--pin-root", pin_root).stdout
        assert table.index("fast path") < table.index("slow path") < table.index("dropped")
        assert any(l.split()[:1] == ["decapsulated"] and int(l.split()[1]) >= 2 * PINGS
                   for l in table.splitlines()), table
        report[f"{end.role} stats cli"] = {k: shown[k] for k in ("decapsulated", "encapsulated")}
    # Under `ip netns exec`, the default root (on /sys/fs/bpf) is out of sight: one line, exit 1.
    hidden = client.cli(check=False)
    assert hidden.returncode == 1 and len(hidden.stderr.strip().splitlines()) == 1, hidden.stderr
    assert "nsenter" in hidden.stderr
    # A namespace without a data path: one line, exit 1.
    nat = subprocess.run(["ip", "netns", "exec", lab["nat1"].netns, XDP_TEREDO, "stats",
                          "--pin-root", pin_root], capture_output=True, text=True, timeout=30)
    assert nat.returncode == 1 and nat.stderr.startswith("xdp-teredo: error: no running data path")

    # -- detach leaves nothing: no XDP, no filter, no clsact, no pin.
    for end in ends:
        state = attached_state(end)
        assert state["xdp"] == (ingress == "xdp") and state["clsact"], state
        assert "tc_teredo" in state["nic ingress"] and "tc_teredo_tx" in state["tun egress"], state
        end.att.detach()
        assert attached_state(end) == {"xdp": False, "nic ingress": "", "tun egress": "", "clsact": False}
    assert pins(pin_root) == []
    assert client.cli("--pin-root", pin_root, check=False).returncode == 1

    # -- the slow path (tun readers) never saw the peer's traffic.
    for end, other in ((client, public), (public, client)):
        slow = end.slow_path()
        report[f"{end.role} slow path"] = slow
        assert str(other.address) not in slow, slow
        assert all(ipaddress.IPv6Address(d).is_multicast for d in slow if d != "other"), slow
    print(json.dumps({"ingress": ingress, **report}, indent=1))
