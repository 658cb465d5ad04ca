"""The fleet lab's pure parts: the outage measured from a steady ping, BIRD configs."""

import math
import shutil
import subprocess

import pytest

from xdp_teredo.lab import bird, fleet


def _flow(sent_times, answered, rtt=0.01):
    sent = [[seq, t] for seq, t in enumerate(sent_times)]
    replies = [[seq, t + rtt, "2001:db8:1:1::2"] for seq, t in enumerate(sent_times)
               if seq in answered]
    return {"dst": "2001:db8:1:1::2", "sent": sent, "replies": replies}


TIMES = [10.0 + i * 0.1 for i in range(60)]        # 6 s of requests every 0.1 s
KILL = 12.0                                         # seq 20 is sent at the kill


def test_a_flow_that_lost_nothing_had_no_outage():
    assert fleet.outage(_flow(TIMES, set(range(60))), KILL) == 0.0


def test_the_outage_ends_with_the_first_reply_after_the_last_loss():
    answered = set(range(60)) - {20, 21, 22, 25}
    got = fleet.outage(_flow(TIMES, answered), KILL)
    assert got == pytest.approx(TIMES[26] + 0.01 - KILL)


def test_a_loss_in_flight_just_before_the_kill_counts_an_older_one_does_not():
    # Sent 0.2 s before the kill, the flow back only after it: the kill's.
    got = fleet.outage(_flow(TIMES, set(range(60)) - {18, 19, 20, 21}), KILL)
    assert got == pytest.approx(TIMES[22] + 0.01 - KILL)
    # Lost and back before the kill: not the kill's.
    assert fleet.outage(_flow(TIMES, set(range(60)) - {15}), KILL) == 0.0
    assert fleet.outage(_flow(TIMES, set(range(60)) - {5}), KILL) == 0.0


def test_a_flow_that_never_came_back_is_an_infinite_outage():
    assert math.isinf(fleet.outage(_flow(TIMES, set(range(20))), KILL))


def test_failover_is_the_worst_flow_and_baseline_needs_every_flow_before_the_kill():
    good = ("client1", _flow(TIMES, set(range(60))))
    bad = ("client2", _flow(TIMES, set(range(60)) - {20, 21}))
    assert fleet.failover([good, bad], KILL) == pytest.approx(TIMES[22] + 0.01 - KILL)
    assert fleet.baseline_ok([good, bad], KILL)
    assert not fleet.baseline_ok([("client1", _flow(TIMES, set(range(30, 60))))], KILL)


def test_the_slowest_reply_counts_from_a_second_before_the_kill():
    flow = _flow(TIMES, set(range(60)))
    flow["replies"][25][1] += 0.3          # held by a relay bubbling its client
    flow["replies"][2][1] += 5.0           # long before the kill: not counted
    assert fleet.slowest_reply([("client1", flow)], KILL) == pytest.approx(0.31)


def _configs():
    return {
        "relay": bird.relay_config("192.0.2.20", "2001:db8:3:1::1", "2001:db8:3:1::ff", 100),
        "router": bird.router_config("203.0.113.100", [
            ("relay1", "2001:db8:3:1::ff", "2001:db8:3:1::1"),
            ("relay2", "2001:db8:3:2::ff", "2001:db8:3:2::1")]),
    }


def test_the_relay_announces_only_its_own_route_from_its_table():
    conf = _configs()["relay"]
    assert "kernel table 100;" in conf and "learn;" in conf
    assert "import where krt_source = 144 && net = 2001::/32; export none;" in conf
    assert 'export where proto = "relay_health"; next hop self;' in conf
    assert "hold time 3;" in conf


def test_the_router_takes_only_2001_32_and_merges_paths():
    conf = _configs()["router"]
    assert "merge paths on;" in conf
    assert conf.count("import where net = 2001::/32; export none;") == 2
    assert conf.count("neighbor 2001:db8:3:") == 2


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (Debian bird2) not installed")
@pytest.mark.parametrize("which", ["relay", "router"])
def test_bird_parses_the_configs(tmp_path, which):
    path = tmp_path / f"{which}.conf"
    path.write_text(_configs()[which])
    res = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
