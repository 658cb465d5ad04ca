"""The benchmark's pure pieces (tools/bench): what they compute from what they read.

Nothing here measures: the synthetic peers' addresses, the bubbles the admission
generator sends, the parsing of the client's log and of py-spy's output, and the
report's verdicts from a results document.
"""

import ipaddress
import json
from pathlib import Path

import pytest

from tools.bench import admission, report, synthetic
from xdp_teredo.lab import traffic
from xdp_teredo.teredo import encap
from xdp_teredo.teredo import packet as P
from xdp_teredo.teredo.address import TeredoAddress


@pytest.mark.parametrize("index", [0, 1, 59_999, 60_000, 99_999, 15_359_999])
def test_synthetic_peer_embeds_its_mapping(index):
    key, ip, port = synthetic.address(index)
    decoded = TeredoAddress.from_ipv6(ipaddress.IPv6Address(key))
    assert decoded.server == synthetic.SERVER
    assert decoded.embeds(ipaddress.IPv4Address(ip), port)
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("203.0.113.0/24")


def test_synthetic_peers_are_distinct():
    keys = {synthetic.address(i)[0] for i in range(200_000)}
    assert len(keys) == 200_000


class _FakeMap:
    """A MapFd stand-in: keys and values in a dict."""

    def __init__(self, real=()):
        self.data = {k: b"" for k in real}

    def update(self, key, value, flags=0):
        assert len(key) == 16
        self.data[key] = value

    def delete(self, key):
        return self.data.pop(key, None) is not None

    def keys(self):
        return iter(list(self.data))


def test_synthetic_resize_counts_the_real_entries_and_keeps_them():
    real = [ipaddress.IPv6Address("2001:0:c000:201::1").packed]
    fake = _FakeMap(real)
    table = synthetic.SyntheticPeers(fake)
    assert table.resize(100) == 100
    assert table.resize(10) == 10
    assert real[0] in fake.data
    table.clear()
    assert list(fake.data) == real


def test_peer_bubble_is_a_direct_bubble_from_an_embedding_source():
    gen = traffic.PeerBubbles.__new__(traffic.PeerBubbles)  # no socket: only the packets
    gen.sources = [ipaddress.IPv4Address("192.0.2.21"), ipaddress.IPv4Address("192.0.2.22")]
    gen.server = ipaddress.IPv4Address("192.0.2.1")
    gen.target_ip = ipaddress.IPv4Address("203.0.113.10")
    gen.target_port = 40001
    gen.target_address = ipaddress.IPv6Address("2001:0:c000:201:8000:63bf:3cff:fdf5")
    gen._first_port, gen._ports, gen._next = 1024, 65536 - 1024, 0
    for index in (0, 1, 2, 129023):
        peer, raw = gen._packet(index)
        assert raw[0] == 0x45 and raw[9] == 17                  # IPv4, UDP
        src = ipaddress.IPv4Address(raw[12:16])
        sport = int.from_bytes(raw[20:22], "big")
        assert int.from_bytes(raw[22:24], "big") == 40001
        assert int.from_bytes(raw[24:26], "big") == len(raw) - 20  # UDP length
        teredo = encap.parse_udp_payload(raw[28:])
        assert P.is_bubble(teredo.ipv6)
        assert teredo.ipv6.src == peer and teredo.ipv6.dst == gen.target_address
        assert TeredoAddress.from_ipv6(peer).embeds(src, sport)
    # Consecutive peers take the sources in turn; the ports follow.
    assert [ipaddress.IPv4Address(gen._packet(i)[1][12:16]) for i in range(3)] == \
        [gen.sources[0], gen.sources[1], gen.sources[0]]
    assert int.from_bytes(gen._packet(2)[1][20:22], "big") == 1025


def test_admission_log_reads_whole_lines_only(tmp_path: Path):
    log = tmp_path / "client.log"
    a, b = "2001:0:c000:201::1", "2001:0:c000:201::2"
    log.write_text(json.dumps({"event": "client_started"}) + "\n"
                   + json.dumps({"peer": a, "event": "peer_trusted",
                                 "timestamp": "2026-01-01T00:00:01.250000Z"}) + "\n"
                   + '{"peer": "' + b + '", "event": "peer_tru')
    reader = admission.AdmissionLog(log)
    assert reader.poll() == 1
    assert reader.admitted[ipaddress.IPv6Address(a)] == pytest.approx(1767225601.25)
    with open(log, "a") as f:
        f.write('sted", "timestamp": "2026-01-01T00:00:02Z"}\n')
    assert reader.poll() == 1
    assert ipaddress.IPv6Address(b) in reader.admitted


def test_profile_summary_leaves_out_what_is_above_the_event_loop():
    raw = "\n".join([
        "main (cli.py:1);Client.serve (client.py:10);Client._read_udp (client.py:20);"
        "Peer.last_activity (peers.py:30) 6",
        "main (cli.py:1);Client.serve (client.py:10);PeerList.next_deadline (peers.py:40) 4",
    ])
    out = admission.profile_summary(raw)
    assert out["samples"] == 10
    assert out["self"][0] == {"function": "Peer.last_activity (peers.py)", "share": 0.6}
    names = {row["function"] for row in out["inclusive"]}
    assert "Client._read_udp (client.py)" in names
    assert not names & {"main (cli.py)", "Client.serve (client.py)"}


def _run(impl, path, rnd, udp1200, tcp):
    udp = {str(s): {"delivered_pps": udp1200 * (2 if s == 64 else 1), "offered_pps": udp1200 * 2,
                    "loss": 0.5, "cpu_ns_per_pkt": 1000.0, "daemon_cpu_ns_per_pkt": {}}
           for s in (64, 512, 1200)}
    return {"round": rnd, "impl": impl, "path": path, "udp": udp, "tcp": {"bps": tcp},
            "latency": {"p50_ms": 0.2, "p99_ms": 1.0}}


def _results():
    runs = []
    for rnd in range(3):
        runs += [_run("plain", "p2p", rnd, 100_000, 2e9), _run("miredo", "p2p", rnd, 20_000, 4e8),
                 _run("xdp-teredo", "p2p", rnd, 70_000 + rnd, 1.6e9)]
    table_runs = [{"round": r, "size": size, "entries": size, "udp_pps": pps, "udp_loss": 0.01,
                   "tcp_bps": 1e9, "cpu_ns_per_pkt": 1.0, "relay_cpu_ns_per_pkt": 0.0,
                   "relay_programs": {"xdp_teredo_rela": {"runs": 10, "ns_per_run": 800.0}}}
                  for r in range(2) for size, pps in ((10, 50_000), (100_000, 40_000))]
    return {"machine": {"cpu": "test", "cores": 2, "kernel": "6.18", "iperf3": "iperf 3",
                        "miredo": "Miredo"},
            "config": {"repeats": 3, "seconds": 3.0, "streams": 2}, "runs": runs,
            "relay_table": {"max_peers": 131072, "payload": 1200, "runs": table_runs}}


def test_report_verdicts():
    results = _results()
    table = report.collate(results)
    lines = report.targets(results, table)
    text = "\n".join(lines)
    # 70,001 / 20,000 = 3.50 >= 3: met; 70,001 / 100,000 = 0.70 < 0.8: missed by 12%.
    assert "xdp-teredo / miredo >= 3.0: 3.50, **met**" in text
    # Issue 13: 70,001 / 100,000 = 0.70 < 0.9: missed by 22%; TCP 1.6 / 2 = 0.80 >= 0.8.
    assert "p2p, UDP 1200 B, xdp-teredo / plain >= 0.9: 0.70, **missed** by 22%" in text
    assert "p2p, one TCP stream, xdp-teredo / plain >= 0.8: 0.80, **met**" in text
    assert "one TCP stream, xdp-teredo / miredo >= 3.0: 4.00, **met**" in text
    # The relay path was not in this run: said so, not left out.
    assert "relay, one TCP stream, xdp-teredo / plain >= 0.8: not measured in this run" in text
    # The relay lost 20% of its UDP rate at 100,000 peers: beyond the 5% tolerance.
    assert "UDP 1200 B 0.800, **missed**, 15.0% below the bar" in text
    assert "TCP 1.000, **met**" in text


def test_report_ratio_rows_and_ceiling():
    results = _results()
    md = report.markdown(results, report.collate(results), [])
    assert md.startswith(report.BEGIN) and md.endswith(report.END)
    assert "| xdp-teredo / miredo | 3.50x | 3.50x | 3.50x | 4.00x |" in md
    assert "| plain / miredo (the ceiling of any tunnel's ratio) | 5.00x | 5.00x | 5.00x | 5.00x |" in md


def test_the_other_direction_gets_its_own_row_ratio_and_target():
    """TCP dst -> src (iperf3 -R): through a relay, the clients' downloads."""
    results = _results()
    for run in results["runs"]:
        run["path"] = "relay"
        run["tcp_reverse"] = {"bps": {"plain": 2e9, "miredo": 2e8, "xdp-teredo": 1.8e9}[run["impl"]]}
    table = report.collate(results)
    text = "\n".join(report.targets(results, table))
    assert ("relay, one TCP stream the other way (dst -> src), xdp-teredo / plain >= 0.8: "
            "0.90, **met**") in text
    md = report.markdown(results, table, [])
    assert "| ratio of medians | UDP 64 | UDP 512 | UDP 1200 | TCP | TCP other way |" in md
    assert "| xdp-teredo / plain | 0.70x | 0.70x | 0.70x | 0.80x | 0.90x |" in md


def test_a_partial_run_reports_beside_its_results_and_leaves_the_docs_alone(tmp_path, monkeypatch):
    doc, img = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img"
    doc.parent.mkdir()
    doc.write_text(f"# Benchmarks\n\n{report.BEGIN}\nthe published figures\n{report.END}\n")
    monkeypatch.setattr(report, "DOC", doc)
    monkeypatch.setattr(report, "IMG", img)
    out = tmp_path / "out"
    out.mkdir()
    report.write(_results(), out, docs=False)
    assert "the published figures" in doc.read_text() and not img.exists()
    assert "xdp-teredo / miredo" in (out / "report.md").read_text()
    report.write(_results(), out, docs=True)
    assert "the published figures" not in doc.read_text()
    assert "xdp-teredo / miredo" in doc.read_text()


def test_iperf_ports_stay_where_the_guard_lets_them_in():
    allowed = {traffic.ALLOW_IPERF[i + 1] for i in range(0, len(traffic.ALLOW_IPERF), 2)}
    ranges = {tuple(int(p) for p in a.split("/")[1].split("-")) for a in allowed}
    assert len(ranges) == 1
    first, last = ranges.pop()
    ports = [traffic._next_port() for _ in range(3 * (last - first + 1))]
    assert min(ports) == first and max(ports) == last
    assert len(set(ports[: last - first + 1])) == last - first + 1   # each once per lap


def test_startup_section_reports_the_median_of_the_starts():
    from tools.bench import report

    runs = [{"address_s": a, "fast_path_s": f} for a, f in ((0.3, 2.8), (0.29, 2.7), (0.31, 5.5))]
    start = {"miredo": {"runs": [{"address_s": 0.03, "fast_path_s": None}] * 3},
             "xdp-teredo": {"runs": runs}}
    text = "\n".join(report.startup_section(start))
    assert "| miredo | 3 | 0.03 s (0.03..0.03) | - |" in text
    assert "| xdp-teredo | 3 | 0.30 s (0.29..0.31) | 2.80 s (2.70..5.50) |" in text
    assert report.startup_section(None) == []


def test_status_text_says_the_receive_hook_why_and_the_fast_path():
    from xdp_teredo.daemon.render import status_lines

    lines = status_lines({"state": "qualified", "decap": "tc", "decap_why": "eth0 is a veth",
                          "fast_path": "compiling", "fast_path_s": None})
    assert "decap      tc (eth0 is a veth)" in lines and "fast path  compiling" in lines


def test_the_startup_target_is_judged_on_the_median():
    from tools.bench import report

    runs = [{"address_s": 0.3, "fast_path_s": 2.8}] * 5
    lines = report.targets({"startup": {"xdp-teredo": {"runs": runs, "address_s": 0.3,
                                                       "fast_path_s": 2.8}}}, {})
    [line] = [l for l in lines if "`attach`" in l]
    assert "0.30 s, **met**" in line and "2.80 s" in line and "5 starts" in line


# ----------------------------------------------------------------- issue 13's report pieces

def test_flow_cpu_per_offered_and_per_delivered_packet():
    cpu = traffic.CpuSample(machine=2.0, daemons={"d": 0.5})
    flow = traffic.Flow("udp", 1200, 1.0, sent_packets=200_000, delivered_packets=100_000,
                        delivered_bps=0.0, sender_cpu_pct=0.0, cpu=cpu)
    # Half the packets lost: per delivered packet the path is charged twice as much.
    assert flow.cpu_ns_per_packet() == pytest.approx(20_000)
    assert flow.cpu_ns_per_offered() == pytest.approx(10_000)
    assert flow.cpu_ns_per_offered("d") == pytest.approx(2_500)
    assert traffic.Flow("tcp", 0, 1.0, 0, 0, 1e9, 0.0, cpu).cpu_ns_per_offered() is None


def _with_offered(results):
    for run in results["runs"]:
        for u in run["udp"].values():
            u["cpu_ns_per_offered"] = 500.0
    return results


def test_the_comparison_shows_cpu_per_offered_and_per_delivered_packet():
    results = _with_offered(_results())
    md = report.markdown(results, report.collate(results), [])
    assert "| UDP 1200 B, machine CPU ns per delivered pkt | 1,000 | 1,000 | 1,000 |" in md
    assert "| UDP 1200 B, machine CPU ns per offered pkt | 500 | 500 | 500 |" in md
    # An older results.json without the per-offered figure: a dash, no error.
    old = _results()
    assert "| UDP 64 B, machine CPU ns per offered pkt | - | - | - |" in \
        report.markdown(old, report.collate(old), [])


def _offloads_off(xdp_tcp=1.5e9):
    runs = []
    for impl, pps, tcp in (("plain", 90_000, 2e9), ("xdp-teredo", 63_000, xdp_tcp),
                           ("miredo", 30_000, 5e8)):
        run = _run(impl, "p2p", 0, pps, tcp)
        run["udp"] = {"1200": run["udp"]["1200"]}      # the second table: 1200 B only
        runs.append(run)
    devices = [{"host": "client1", "iface": "eth0", "tx-checksumming": "off",
                "tx-tcp-segmentation": "off", "generic-segmentation-offload": "on"}] * 3
    return {"runs": runs, "devices": devices, "sizes": [1200], "repeats": 1}


def test_the_offloads_off_table_is_a_second_table_with_its_sizes_only():
    results = {**_results(), "offloads_off": _offloads_off()}
    md = report.markdown(results, report.collate(results), [])
    head, off = md.split("## The comparison with the lab's veth offloads off", 1)
    assert "### Path `p2p`" in head and "UDP 64 B, delivered pkt/s" in head
    assert "### Path `p2p`, offloads off" in off
    assert "UDP 64 B" not in off.split("###", 2)[1] and "UDP 1200 B, delivered pkt/s" in off
    assert "| ratio of medians | UDP 1200 | TCP |" in off
    assert "| xdp-teredo / plain | 0.70x | 0.75x |" in off
    assert "3 veths with tx-checksumming off, tx-tcp-segmentation off" in off


def test_no_regression_with_offloads_off_against_todays_ratios():
    from tools.bench import baseline

    today = {"ratios": {"p2p": {"udp1200": 0.69, "tcp": 0.78}}, "offloads": "endpoints off"}
    table = report.collate(_offloads_off())
    line = baseline.offloads_off_target(table, today)
    assert "p2p UDP 1200 B 0.70 against 0.69; p2p TCP 0.75 against 0.78, **met**" in line
    worse = report.collate(_offloads_off(xdp_tcp=1.2e9))     # 0.60 against 0.78
    line = baseline.offloads_off_target(worse, today)
    assert "**missed**, up to 23% below today" in line
    assert "not measured" in baseline.offloads_off_target({}, today)


def _datapath(xdp_ns):
    return {"client": {"rows": [
        {"program": "trivial XDP_PASS", "method": "looped", "ns": 120.0, "min": 1, "max": 1},
        {"program": "xdp_teredo_rx, decapsulate", "method": "looped", "ns": xdp_ns, "min": 1, "max": 1},
        {"program": "new program", "method": "looped", "ns": 1.0, "min": 1, "max": 1}]},
        "relay": {"rows": [{"program": "xdp_teredo_relay, decapsulate (client to native)",
                            "method": "looped", "table": 100000, "ns": 900.0, "min": 1, "max": 1}]}}


def test_bpf_ns_against_today():
    from tools.bench import baseline

    today = report.load_baseline()          # the committed baseline.json
    assert today["datapath"]["client"]["rows"] and today["ratios"]["p2p"]["tcp"]
    rows = baseline.datapath_rows(_datapath(400.0), today["datapath"])
    names = {(r[1], r[3]) for r in rows}
    assert ("xdp_teredo_rx, decapsulate", None) in names
    assert ("xdp_teredo_relay, decapsulate (client to native)", 100000) in names
    assert all(r[1] != "new program" for r in rows)     # nothing to compare it with
    cpu = today["machine"].split(",")[0]       # the same machine: raw ratios decide
    line = baseline.datapath_target(_datapath(400.0), today, cpu)
    assert "**met**" in line and "another machine" not in line
    line = baseline.datapath_target(_datapath(600.0), today, cpu)   # 600 / 411 = 1.46x
    assert "worst xdp_teredo_rx, decapsulate (looped) 1.46x" in line
    assert "**missed** by 33%" in line
    # Another machine whose trivial program runs in 120 ns against 140: 400 / 411 = 0.97x
    # is 1.14x once divided by the floor's 0.86x, more than the 1.10 allowed.
    line = baseline.datapath_target(_datapath(400.0), today, "another cpu")
    assert "timed the same way moved, 0.86x for this one" in line
    assert "decapsulate (looped) 1.14x" in line and "**missed** by 3%" in line
    assert "not measured" in baseline.datapath_target(None, today)
    assert "no earlier figures" in baseline.datapath_target(_datapath(400.0), {})


def test_a_results_file_as_the_baseline(tmp_path: Path):
    earlier = {**_results(), "offloads_off": _offloads_off(), "datapath": _datapath(300.0),
               "machine": {"cpu": "earlier", "kernel": "6.1"}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    got = report.load_baseline(path)
    assert got["ratios"]["p2p"]["tcp"] == pytest.approx(0.75)
    assert got["datapath"]["client"]["rows"][1]["ns"] == 300.0
    assert report.load_baseline(tmp_path / "missing.json") == {}


def _host_traffic(send_attached=1.9e9, recv_attached=1.95e9):
    runs = []
    for rnd in range(3):
        runs.append({"round": rnd, "variant": "not attached", "nic": {"tx-checksumming": "on"},
                     "tcp_send_bps": 2e9, "tcp_receive_bps": 2e9, "udp_pps": 100_000,
                     "udp_offered_pps": 100_000, "udp_cpu_ns_per_pkt": 4000.0,
                     "udp_cpu_ns_per_offered": 4000.0})
        runs.append({"round": rnd, "variant": "auto", "hook": "tc", "hook_why": "eth0 is a veth",
                     "nic": {"tx-checksumming": "on"}, "tcp_send_bps": send_attached,
                     "tcp_receive_bps": recv_attached, "udp_pps": 50_000,
                     "udp_offered_pps": 100_000, "udp_cpu_ns_per_pkt": 8000.0,
                     "udp_cpu_ns_per_offered": 4000.0})
    return {"host": "client1", "peer": "public", "payload": 1200, "seconds": 3.0, "streams": 2,
            "runs": runs}


def test_host_traffic_ratio_target_and_section():
    from tools.bench import host_traffic

    ht = _host_traffic()
    got = host_traffic.ratios(ht)["auto"]
    assert got["tcp_send_bps"] == pytest.approx(0.95) and got["udp_pps"] == pytest.approx(0.5)
    line = host_traffic.target_line(ht)
    assert "(the default receive hook, auto: tc): send 0.95, receive 0.97, **met**" in line
    line = host_traffic.target_line(_host_traffic(send_attached=1.0e9))
    assert "send 0.50" in line and "**missed** by 47%" in line
    text = "\n".join(host_traffic.section(ht))
    assert "| attached / not attached | attached, auto (tc) |" in text
    assert "| UDP 1200 B, machine CPU ns per delivered pkt | 2.00x |" in text
    assert "| UDP 1200 B, machine CPU ns per offered pkt | 1.00x |" in text
    assert "the client says: eth0 is a veth" in text
    assert host_traffic.section(None) == [] and "not measured" in host_traffic.target_line(None)


def test_every_issue_13_target_has_a_line_even_when_not_measured():
    text = "\n".join(report.targets({}, {}))
    for what in ("p2p, UDP 1200 B, xdp-teredo / plain >= 0.9", "p2p, one TCP stream, xdp-teredo / plain >= 0.8",
                 "relay, one TCP stream, xdp-teredo / plain >= 0.8", "the host's plain TCP",
                 "offloads off, xdp-teredo / plain", "BPF ns per packet", "`attach` to a Teredo address"):
        [line] = [l for l in text.splitlines() if what in l]
        assert "not measured" in line or "no earlier figures" in line, line


def test_lab_offloads_summary_counts_the_states():
    from tools.bench import lab_offloads

    rec = [{"host": "a", "iface": "eth0", "tx-checksumming": "off",
            "tx-tcp-segmentation": "off", "generic-segmentation-offload": "on"}] * 2
    rec += [{"host": "b", "iface": "eth0", "tx-checksumming": "on",
             "tx-tcp-segmentation": "on", "generic-segmentation-offload": "on"}]
    text = lab_offloads.summary(rec)
    assert text.startswith("2 veths with tx-checksumming off")
    assert "1 veth with tx-checksumming on" in text


def test_plots_from_a_results_document(tmp_path: Path):
    """Every figure the report links is drawn from the results alone (or none at all
    where matplotlib, the `bench` extra, is not installed)."""
    import importlib.util

    from tools.bench import plots

    results = _results()
    made = plots.plot(results, report.collate(results), tmp_path)
    if importlib.util.find_spec("matplotlib") is None:
        assert made == []
        return
    assert {p.name for p in made} == {"bench-rate-p2p.png", "bench-ratio-p2p.png",
                                      "bench-relay-table.png"}
    assert all(p.stat().st_size > 0 for p in made)
