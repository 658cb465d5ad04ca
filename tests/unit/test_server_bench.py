"""The server benchmark's pure pieces: the closed loop's figures (tools/bench/
server_bench.py) and the loop's template (xdp_teredo/lab/rsloop.py)."""

import pytest

from tools.bench import server_bench as sb
from xdp_teredo.lab import rsloop
from xdp_teredo.teredo import encap, icmpv6


def run(k, pps, rnd=0, server=None, loop=None, cpu=None):
    return {"round": rnd, "k": k, "pps": pps, "turned": pps * 2,
            "server_total": server, "loop_total": loop, "daemon_cpu_us_per_ra": cpu}


def results(ours=(2_000_000, 1_900_000, 2_100_000), miredo=(400_000, 380_000, 420_000)):
    def cap(values, counted):
        return sb.loop_summary([run(64, v, i, *(counted or (None, None))) for i, v in enumerate(values)])
    return {"flood_pps": 100_000, "capacity": {"xdp-teredo": cap(ours, (10, 10)),
                                               "python": cap((20_000,), (5, 5)),
                                               "miredo": cap(miredo, None)},
            "flood": {impl: {"kept": 8, "clients": 8, "rs_answered_pct": 100.0}
                      for impl in sb.IMPLS}, "bpf": {}}


def test_the_best_k_by_median_decides_and_the_spread_is_its_rounds():
    got = sb.loop_summary([run(64, 100, 0), run(1024, 300, 0), run(64, 110, 1),
                           run(1024, 200, 1, cpu=2.0), run(1024, 250, 2, cpu=3.0)])
    assert got["k"] == 1024
    assert (got["answered_pps"], got["min"], got["max"]) == (250, 200, 300)
    assert got["per_k"][64]["median"] == 105
    assert got["daemon_cpu_us_per_ra"] == 2.5


def test_zero_daemon_cpu_is_a_figure_not_a_gap():
    assert sb.loop_summary([run(64, 1, cpu=0.0)])["daemon_cpu_us_per_ra"] == 0.0


def test_the_servers_count_against_the_loops():
    assert sb._agreement([run(64, 1, server=99, loop=100), run(64, 1, server=101, loop=100)]) == 1.0
    assert sb._agreement([run(64, 1, server=90, loop=100)]) == 0.9
    assert sb._agreement([run(64, 1)]) is None, "miredo-server counts nothing"


def test_the_ratio_and_the_range_the_rounds_allow():
    got = sb.ratio(results())
    assert got["median"] == pytest.approx(5.0)
    assert got["low"] == pytest.approx(1_900_000 / 420_000)
    assert got["high"] == pytest.approx(2_100_000 / 380_000)
    assert sb.ratio({"capacity": {}}) is None


def test_the_target_line_says_met_or_missed_and_why():
    missed = sb.target_line(results())
    assert "5.00" in missed and "**missed** by 50%" in missed and "In the way" in missed
    assert "8/8 legitimate clients kept" in missed
    met = sb.target_line(results(ours=(4_000_000, 4_100_000, 4_200_000)))
    assert "**met**" in met and "10.25" in met
    assert "not measured" in sb.target_line(None)


def test_the_summary_table_has_a_row_per_server():
    text = sb.summary(results())
    rows = [line for line in text.splitlines() if line.startswith("| xdp-teredo") or
            line.startswith("| miredo")]
    assert len(rows) == 3
    assert "| 2,000,000 (1,900,000..2,100,000) | 64 | 5.00 | 1.000 |" in rows[0]
    assert "bpf_stats" not in text
    assert "bpf_stats_enabled was on" in sb.summary({**results(), "bpf_stats_enabled": 1})


def test_profile_lines_name_the_programs_without_their_tags():
    prof = {"k": 1024, "seconds": 2, "xdp-teredo": {
        "loop_pps": 2_000_000, "clock_reads": 0.1,
        "bpf": {"bpf_prog_acad5f3afa737a7e_xdp_teredo_server": 0.05,
                "bpf_prog_2426cce242ca1736_rsloop_xdp": 0.026},
        "by_command": [{"name": "ksoftirqd/0", "share": 0.5}],
        "by_symbol": [{"name": "veth_xmit", "share": 0.056}]}}
    line = sb.profile_lines(prof)[-1]
    assert "xdp_teredo_server 5.0%, rsloop_xdp 2.6%" in line
    assert "clock reads 10.0%" in line and "veth_xmit 5.6%" in line
    assert sb.profile_lines({"error": "perf is not installed"})[-1].startswith("Profile:")
    assert sb.profile_lines(None) == []


def test_the_loops_template_is_an_rs_with_the_nonce_where_the_program_keeps_it():
    nonce = bytes(range(8))
    payload = rsloop.template(nonce)
    got = encap.parse_udp_payload(payload)
    assert got.auth.nonce == nonce and got.origin is None
    assert payload[rsloop.NONCE_OFFSET:rsloop.NONCE_OFFSET + 8] == nonce
    assert icmpv6.parse_icmpv6(got.ipv6).type == 133   # RFC 4861 §4.1; its checksum verifies
    assert f"-DRSLOOP_PAYLOAD_LEN={len(payload)}" in rsloop.cflags(payload)


def test_machine_shares_split_the_cpu_time_between_two_readings():
    before = [100, 0, 50, 1000, 0, 0, 10, 0, 0, 0]
    after = [150, 0, 100, 1100, 0, 0, 810, 0, 0, 0]   # +50 user +50 sys +100 idle +800 softirq
    assert sb.machine_shares(before, after) == {"softirq": 0.8, "processes": 0.1, "idle": 0.1}


def test_the_machine_column_is_the_best_ks_median():
    runs = [{**run(64, 10), "machine": {"softirq": s, "processes": 0.1, "idle": 0.0}}
            for s in (0.8, 0.9, 0.7)]
    got = sb.loop_summary(runs)
    assert got["machine"]["softirq"] == 0.8
    res = results()
    res["capacity"]["xdp-teredo"] = got
    assert "| 80.0% / 10.0% / 0.0% |" in sb.summary(res)
