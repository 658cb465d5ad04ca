"""Receiving in big packets (issue 13): a Teredo TCP flow between two of our data
paths (the tc receive hook; XDP with GRO), and one across our relay.

    client1 (10.1.0.2) -- nat1 (MASQUERADE) -- inet -- public (203.0.113.10)

The same two ends as test_datapath (no control plane, the peer entries written
into the maps). The sender's TCP hands GSO skbs to its tun, tc_teredo_tx wraps a
whole one (FIXED_GSO, gso_type UDP_TUNNEL | TCPV6) and the veths and the NAT carry
it whole: at public's NIC the tc hook sees super-packets, not 1280-byte frames.
What must hold at the receiver:
  - they are decapsulated whole: the decapsulated frames average well above one
    segment, and TCP received one skb per decapsulated packet (InSegs counts a
    GSO skb once): none was segmented on the way in. (The tun's own rx counters
    stay at 0: a bpf_redirect into it is not counted there.)
  - gso_size still says the sender's segment size (snd_mss): without
    BPF_F_ADJ_ROOM_FIXED_GSO the kernel adds the 28 stripped bytes to it, and a
    router segmenting the packet again would send segments 28 bytes over the
    path MTU. TCP's rcv_mss cannot show it (clamped at its own advertised MSS),
    so a small observer on the tun's tc ingress (where the redirect delivers)
    records what the skbs carry;
  - the bytes arrive intact (digests both ends).
Evidence is counted, never timed.
"""

import contextlib
import ctypes
import json
import sys
import textwrap

import pytest

from xdp_teredo.datapath.hooks import open_iproute

from . import test_datapath as ends
from .test_datapath import TUN, End, open_nat_mapping

# test_datapath's fixtures, shared under their names.
datapaths, pin_root, attached = ends.datapaths, ends.pin_root, ends.attached

pytestmark = [pytest.mark.root, pytest.mark.bpf, pytest.mark.e2e]

TCP_PORT = 5002
TCP_BYTES = 8 * 1024 * 1024
# One 1280-MTU segment on the wire, Ethernet + IPv4 + UDP + IPv6 packet.
SEGMENT_FRAME = 14 + 28 + 1280

# tcp_info: tcpi_snd_mss at byte 16, tcpi_rcv_mss at byte 20 (linux/tcp.h).
RECEIVER = textwrap.dedent("""
    import hashlib, json, socket, sys
    addr, port = sys.argv[1], int(sys.argv[2])
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(30)
    print(json.dumps({"event": "ready"}), flush=True)
    conn, peer = srv.accept()
    conn.settimeout(30)
    got, n = hashlib.sha256(), 0
    while chunk := conn.recv(1 << 16):
        got.update(chunk)
        n += len(chunk)
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    conn.close()
    print(json.dumps({"event": "done", "received": n, "sha256": got.hexdigest(),
                      "rcv_mss": int.from_bytes(info[20:24], "little")}), flush=True)
""")

SENDER = textwrap.dedent("""
    import hashlib, json, os, socket, sys
    addr, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = os.urandom(size)
    s = socket.create_connection((addr, port), timeout=30)
    s.sendall(data)
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    print(json.dumps({"sha256": hashlib.sha256(data).hexdigest(),
                      "snd_mss": int.from_bytes(info[16:20], "little")}))
""")


OBSERVER = r"""
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>
struct seen { u64 packets, gso, gso_size_min, gso_size_max, len_max; };
BPF_ARRAY(seen, struct seen, 1);
int observe(struct __sk_buff *skb)
{
    int zero = 0;
    struct seen *s = seen.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    s->packets++;
    if (skb->len > s->len_max)
        s->len_max = skb->len;
    if (skb->gso_size) {
        s->gso++;
        if (!s->gso_size_min || skb->gso_size < s->gso_size_min)
            s->gso_size_min = skb->gso_size;
        if (skb->gso_size > s->gso_size_max)
            s->gso_size_max = skb->gso_size;
    }
    return TC_ACT_OK;
}
"""


class Observer:
    """What reaches the tun's tc ingress: skbs, GSO skbs, their gso_size range."""

    def __init__(self, end: End):
        from bcc import BPF

        self.bpf = BPF(text=OBSERVER)
        fn = self.bpf.load_func("observe", BPF.SCHED_CLS)
        ipr = open_iproute(end.ns)
        try:
            index = end.ifindex(TUN)  # its clsact is there: our encapsulation on egress
            ipr.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name, parent="ffff:fff2",
                   classid=1, direct_action=True)
        finally:
            ipr.close()
        # The filter goes with the tun (the lab removes the namespace).

    def read(self) -> dict:
        value = self.bpf["seen"][ctypes.c_int(0)]
        return {k: getattr(value, k) for k in
                ("packets", "gso", "gso_size_min", "gso_size_max", "len_max")}

    def close(self) -> None:
        self.bpf.cleanup()


def send_tcp(lab, src: End, dst: End) -> dict:
    rcv = lab.spawn(dst.role, sys.executable, "-c", RECEIVER, str(dst.address), TCP_PORT,
                    log=f"{dst.role}-gso-receiver.log")
    rcv.wait_for_output(r'"event": "ready"', timeout=5)
    sent = json.loads(lab.run(src.role, sys.executable, "-c", SENDER, str(dst.address), TCP_PORT,
                              TCP_BYTES, timeout=60).stdout)
    assert rcv.wait(timeout=15) == 0, rcv.output()
    done = [json.loads(line) for line in rcv.output().splitlines()
            if line.startswith("{") and '"done"' in line][0]
    assert (done["received"], done["sha256"]) == (TCP_BYTES, sent["sha256"])
    return {"snd_mss": sent["snd_mss"], "rcv_mss": done["rcv_mss"]}


def test_tcp_arrives_in_super_packets_decapsulated_whole(make_lab, datapaths, pin_root, attached):
    report = _flow_into(make_lab, datapaths, pin_root, attached, "tc")
    decap, segs, seen = report["decap"], report["tcp_in_segs"], report["tun_ingress"]
    assert decap["bytes"] >= TCP_BYTES, report
    # Whole: on average several segments per decapsulated packet (one segment per
    # packet would be <= SEGMENT_FRAME), and TCP took each as one skb: the only way
    # in, so no more skbs than decapsulations, and far fewer than 1280-byte packets.
    assert decap["bytes"] / decap["packets"] > 4 * SEGMENT_FRAME, report
    assert 0 < segs <= decap["packets"], report
    assert segs < TCP_BYTES // 1280 // 4, report
    # gso_size kept: the sender's segment size, not 28 bytes more.
    assert seen["gso"] > 0 and seen["len_max"] > 4 * 1280, report
    assert seen["gso_size_min"] == seen["gso_size_max"] == report["snd_mss"], report


def test_gro_aggregates_what_xdp_decapsulated(make_lab, datapaths, pin_root, attached):
    """XDP on the NIC: a program without frags support makes the veth peer drop
    its GSO, so the segments arrive one by one and XDP decapsulates each. The
    frame it passes up is a plain Ethernet + IPv6/TCP frame (same MACs, same
    metadata mark on every one), so the NIC's GRO aggregates them again before
    tc_teredo_ingress redirects into the tun: TCP gets super-packets with a
    gso_size of the sender's segment. GRO has to be on at the NIC, as a real NIC
    has it; a veth comes with it off (then every frame stays its own skb), and
    only its owner may change that: the test plays the owner."""
    report = _flow_into(make_lab, datapaths, pin_root, attached, "xdp", nic_gro=True)
    decap, segs, seen = report["decap"], report["tcp_in_segs"], report["tun_ingress"]
    assert decap["bytes"] >= TCP_BYTES, report
    assert decap["bytes"] / decap["packets"] <= SEGMENT_FRAME, report   # one by one
    assert seen["gso"] > 0 and seen["len_max"] > 4 * 1280, report       # aggregated
    assert 0 < segs < decap["packets"] // 4, report
    assert seen["gso_size_min"] == seen["gso_size_max"] == report["snd_mss"], report


def _flow_into(make_lab, datapaths, pin_root, attached, ingress: str, nic_gro: bool = False) -> dict:
    """client1 sends TCP_BYTES to public, whose receive hook is `ingress`; what public's
    counters, its TCP and the observer on its tun saw."""
    lab = make_lab("client1", "public")
    mapped_ipv4, mapped_port = open_nat_mapping(lab)
    client = End(lab, "client1", datapaths["client1"], 40001, mapped_ipv4, mapped_port, seed=1)
    public = End(lab, "public", datapaths["public"], 3544, lab["public"].address, 3544, seed=2)
    for end in (client, public):
        end.make_tun()
        end.attach(ingress, pin_root, attached)
    client.trust(public)
    public.trust(client)
    if nic_gro:
        lab.run("public", "ethtool", "-K", lab["public"].uplink, "gro", "on")

    observer = Observer(public)
    try:
        before, segs_before = public.stats(), public.tcp_in_segs()
        mss = send_tcp(lab, client, public)
        after = public.stats()
        seen = observer.read()
    finally:
        observer.close()
    decap = {k: after["decapsulated"][k] - before["decapsulated"][k] for k in ("packets", "bytes")}
    segs = public.tcp_in_segs() - segs_before
    return dict(decap=decap, tcp_in_segs=segs, tun_ingress=seen, **mss)


def _relay_stats(lab) -> dict:
    from xdp_teredo.lab import roles

    return json.loads(roles.cli(lab, "relay", "stats", "--json", check=True).stdout)


@contextlib.contextmanager
def _through_our_relay(make_lab, *client_args):
    """Our server, our relay (tc on its veths, as `auto` picks there) and our client
    on client1 with client_args, client1 -> v6host answering: (lab, client, target)."""
    from xdp_teredo.lab import roles

    lab = make_lab("server", "relay", "client1", "v6host")
    roles.start_server(lab, "xdp-teredo")
    relay = roles.start_relay(lab, "xdp-teredo", "relay")
    client = roles.start_client(lab, "xdp-teredo", "client1", lab["server"].ipv4[0], *client_args)
    try:
        target = lab["v6host"].ipv6[0]
        assert lab.ping("client1", target, count=3, deadline=10).ok
        yield lab, client, target
    finally:
        client.stop()
        relay.stop()


def _moved(before: dict, after: dict) -> dict:
    """The relay's packet counters that moved between two `stats --json` reads."""
    return {k: after[k] - before[k] for k in after if isinstance(after[k], int) and after[k] != before[k]}


def _in_segs(lab, role: str) -> int:
    lines = [line.split() for line in lab.run(role, "cat", "/proc/net/snmp").stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["InSegs"])


def test_a_clients_super_packets_cross_the_relay_whole(make_lab):
    """Teredo -> native across our relay (tc on its veths, as `auto` picks there),
    our client sending with --veth-offloads pass (no detour for TCP: it leaves in
    GSO super-packets, as from a client on a NIC that is not a veth), so that
    super-packets reach the relay. They must be forwarded whole (the egress MTU
    checked per segment, not against the whole skb, which sent each one to the slow
    path: relay_frag_needed)."""
    from xdp_teredo.lab import traffic

    with _through_our_relay(make_lab, "--veth-offloads", "pass") as (lab, _client, target):
        before, segs_before = _relay_stats(lab), _in_segs(lab, "v6host")
        flow = traffic.iperf3(lab, "client1", "v6host", target, seconds=2)
        after, segs = _relay_stats(lab), _in_segs(lab, "v6host") - segs_before
    counted = _moved(before, after)
    decap_bytes = after["bytes"]["decapsulated"] - before["bytes"]["decapsulated"]
    report = dict(counted, decapsulated_bytes=decap_bytes, v6host_in_segs=segs,
                  mbps=round(flow.delivered_bps / 1e6))
    assert counted.get("decapsulated", 0) > 0, report
    assert "relay_frag_needed" not in counted, report
    # Whole: several segments per forwarded packet on average, and v6host's TCP
    # took no more skbs than the relay forwarded (a GSO skb counts once).
    assert decap_bytes / counted["decapsulated"] > 4 * SEGMENT_FRAME, report
    assert segs <= counted["decapsulated"] + 10, report


def test_native_super_packets_reach_our_client_through_the_relay_whole(make_lab):
    """Native -> Teredo across our relay (tc, as `auto` picks on veths), to our client
    as it starts by default: its packets reach the relay with the outer UDP checksum
    finished (0), so the relay learns that it takes offloads, and v6host's TCP
    super-packets are encapsulated whole instead of going round the relay's checksum
    veth to be cut (bpf/relay.c relay_learn_offloads)."""
    from xdp_teredo.lab import roles, traffic

    with _through_our_relay(make_lab, *traffic.ALLOW_IPERF) as (lab, client, target):
        rows = json.loads(roles.cli(lab, "relay", "peers", "--json", check=True).stdout)
        row = next(r for r in rows if r["address"] == str(client.address))
        before = _relay_stats(lab)
        flow = traffic.iperf3(lab, "client1", "v6host", target, seconds=2, reverse=True)
        after = _relay_stats(lab)
    counted = _moved(before, after)
    encap_bytes = after["bytes"]["encapsulated"] - before["bytes"]["encapsulated"]
    report = dict(counted, encapsulated_bytes=encap_bytes, row=row,
                  mbps=round(flow.delivered_bps / 1e6))
    assert row["takes_offloads"], report
    assert flow.delivered_bps > 0 and counted.get("encapsulated", 0) > 0, report
    # Whole: several segments per encapsulated packet on average, and none of
    # v6host's super-packets sent round (the iperf3 control connection's first
    # packets may be, before the client's first packet taught the relay).
    assert encap_bytes / counted["encapsulated"] > 4 * SEGMENT_FRAME, report
    assert counted.get("relay_csum_detour", 0) < 10, report


def test_with_veth_offloads_pass_udp_gso_still_arrives_and_tcp_leaves_whole(make_lab):
    """--veth-offloads pass (what every NIC that is not a veth gets): TCP leaves in
    GSO super-packets, but a UDP_SEGMENT packet, which the kernel cannot cut once
    encapsulated, still goes round the checksum veth first: every datagram
    arrives intact (before, none did)."""
    from xdp_teredo.lab import roles, traffic

    from .client_support import delta, nbytes, packets, query
    from .test_client_ours import UDP_GSO_SINK, UDP_GSO_SOURCE

    lab = make_lab("server", "client1", "public")
    roles.start_server(lab, "xdp-teredo")
    server = lab["server"].ipv4[0]
    ours = roles.start_client(lab, "xdp-teredo", "client1", server, "--veth-offloads", "pass")
    peer = roles.start_client(lab, "xdp-teredo", "public", server, "--veth-offloads", "pass",
                              "--allow", "udp/5203", *traffic.ALLOW_IPERF)
    try:
        assert lab.ping("client1", peer.address, count=3, deadline=10).ok
        stats0 = query(lab, "client1", "stats")
        sink = lab.spawn("public", sys.executable, "-c", UDP_GSO_SINK, str(peer.address),
                         "5203", "1000", log="udp-gso-sink.log")
        sink.wait_for_output("listening", timeout=10)
        sent = lab.run("client1", sys.executable, "-c", UDP_GSO_SOURCE, str(peer.address),
                       "5203", "1000", "20", check=False)
        assert sent.returncode == 0, sent.stderr
        sink.wait_for_output(r"good=\d+", timeout=15)
        good, bad = (int(kv.split("=")[1]) for kv in sink.output().split()[-2:])
        stats1 = query(lab, "client1", "stats")
        traffic.iperf3(lab, "client1", "public", peer.address, seconds=1)
        stats2 = query(lab, "client1", "stats")
        slow = query(lab, "client1", "counters")["slow_path"]
    finally:
        ours.stop()
        peer.stop()
    udp = delta(packets(stats0), packets(stats1))
    tcp, tcp_bytes = delta(packets(stats1), packets(stats2)), delta(nbytes(stats1), nbytes(stats2))
    report = dict(good=good, bad=bad, udp=udp, tcp=tcp)
    assert bad == 0 and good >= 0.9 * 20 * 8, report
    assert udp.get("tx_csum_detour", 0) >= 10, report
    assert tcp.get("tx_csum_detour", 0) == 0, report
    assert tcp_bytes.get("encapsulated", 0) > 2 * SEGMENT_FRAME * tcp.get("encapsulated", 1), report
    # Nothing is asked under `pass`: every peer takes offloads already.
    assert slow.get("offload_probe_sent", 0) == 0, slow
