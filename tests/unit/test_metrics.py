"""daemon/metrics.py: --metrics' address, the collector over a fake daemon's
observation, and the HTTP answer served from the event loop (over a socketpair:
no port is opened here). No root."""

import socket

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xdp_teredo import __version__
from xdp_teredo.daemon import metrics
from xdp_teredo.daemon.base import Daemon
from xdp_teredo.daemon.counters import Counters
from xdp_teredo.daemon.loop import EventLoop
from xdp_teredo.datapath.layout import Reason
from xdp_teredo.errors import UsageError
from xdp_teredo.teredo.server_policy import DROP_REASONS, SENT_OUTCOMES


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:9417", "127.0.0.1", 9417),
    ("[::1]:9417", "::1", 9417),
    (":9417", "", 9417),
    (" 10.0.0.1:1 ", "10.0.0.1", 1),
])
def test_good_addresses(text, host, port):
    assert metrics.parse_address(text) == metrics.MetricsAddress(host, port)


@pytest.mark.parametrize("text, says", [
    ("9417", "expected HOST:PORT"),
    ("localhost:9417", "not an IP address"),
    ("::1:9417", "goes in brackets"),
    ("[10.0.0.1]:9417", "not an IPv6 address"),
    ("127.0.0.1:0", "from 1 to 65535"),
    ("127.0.0.1:65536", "from 1 to 65535"),
    ("127.0.0.1:http", "from 1 to 65535"),
])
def test_bad_addresses_are_one_usage_error(text, says):
    with pytest.raises(UsageError, match=says) as err:
        metrics.parse_address(text)
    assert "\n" not in str(err.value)


def _client_observation(counters=None, datapath=None):
    slow = Counters(counters or {"udp_received": 7, "bubble_direct": 2})
    slow.drop("malformed_truncated")
    return metrics.Observation(
        role="client", state="qualified", states=("offline", "qualifying", "qualified"),
        state_since=1000.0, slow_path=slow,
        datapath=datapath or {r.key: {"packets": int(r), "bytes": 100 * int(r)} for r in Reason},
        peers={"datapath": 3, "pending": 1}, peer_list_drops={"bubble_limit": 4})


def _scrape(observation, wall=1042.5):
    registry = metrics.CollectorRegistry()
    registry.register(metrics.DaemonCollector(lambda: observation, wall=lambda: wall))
    text = generate_latest(registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def _samples(family, name=None):
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if name is None or s.name == name}


def test_every_verdict_of_the_data_path_is_a_labelled_counter():
    _, families = _scrape(_client_observation())
    packets = _samples(families["xdp_teredo_datapath_packets"], "xdp_teredo_datapath_packets_total")
    octets = _samples(families["xdp_teredo_datapath_bytes"], "xdp_teredo_datapath_bytes_total")
    assert len(packets) == len(octets) == len(Reason)
    for reason in Reason:
        labels = (("kind", reason.kind.value), ("reason", reason.key))
        assert packets[labels] == int(reason)
        assert octets[labels] == 100 * int(reason)
    assert families["xdp_teredo_datapath_packets"].type == "counter"


def test_slow_path_events_and_drops_are_apart():
    _, families = _scrape(_client_observation())
    events = _samples(families["xdp_teredo_slow_path_events"])
    drops = _samples(families["xdp_teredo_slow_path_drops"])
    assert events[(("event", "udp_received"),)] == 7
    assert drops[(("reason", "malformed_truncated"),)] == 1
    assert not any("drop_" in v for labels in events for _, v in labels)
    assert _samples(families["xdp_teredo_peer_list_drops"])[(("reason", "bubble_limit"),)] == 4


def test_state_is_an_enum_gauge_with_its_age():
    _, families = _scrape(_client_observation(), wall=1042.5)
    state = _samples(families["xdp_teredo_state"])
    assert state == {(("state", "offline"),): 0, (("state", "qualifying"),): 0,
                     (("state", "qualified"),): 1}
    assert _samples(families["xdp_teredo_state_age_seconds"]) == {(): 42.5}
    assert _samples(families["xdp_teredo_state_changed_timestamp_seconds"]) == {(): 1000.0}
    peers = _samples(families["xdp_teredo_peers"])
    assert peers == {(("where", "datapath"),): 3, (("where", "pending"),): 1}


def test_info_says_role_and_version():
    _, families = _scrape(_client_observation())
    info = families["xdp_teredo_info"]   # the text format has no info type: a gauge at 1
    assert [(s.labels, s.value) for s in info.samples] == \
        [({"role": "client", "version": __version__}, 1.0)]


def test_the_server_role_shows_its_policy_counters_and_no_data_path():
    server = {"received": 10, **{o: 0 for o in SENT_OUTCOMES}, "rate_limited": 2,
              "dropped_total": 1, "dropped": {r: 0 for r in DROP_REASONS}}
    server["rs_answered"] = 5
    server["dropped"]["malformed"] = 1
    seen = metrics.Observation(role="server", state="serving", states=("starting", "serving"),
                               state_since=0.0, slow_path=Counters({"send_failed": 1}),
                               server=server)
    _, families = _scrape(seen)
    assert "xdp_teredo_datapath_packets" not in families
    assert "xdp_teredo_peers" not in families
    assert _samples(families["xdp_teredo_server_received"]) == {(): 10}
    sent = _samples(families["xdp_teredo_server_sent"])
    assert sent[(("outcome", "rs_answered"),)] == 5 and len(sent) == len(SENT_OUTCOMES)
    assert _samples(families["xdp_teredo_server_rate_limited"]) == {(): 2}
    drops = _samples(families["xdp_teredo_server_drops"])
    assert len(drops) == len(DROP_REASONS) and drops[(("reason", "malformed"),)] == 1


def test_names_follow_the_prometheus_conventions():
    text, families = _scrape(_client_observation())
    for family in families.values():
        assert family.name.startswith("xdp_teredo")
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created"))
            assert not sample.name.endswith("_total") or family.type == "counter"
    assert "# TYPE xdp_teredo_datapath_packets_total counter" in text


def test_the_collector_reads_live_state_at_each_scrape():
    seen = _client_observation()
    _, before = _scrape(seen)
    seen.slow_path["udp_received"] += 5
    _, after = _scrape(seen)
    key = (("event", "udp_received"),)
    assert _samples(after["xdp_teredo_slow_path_events"])[key] == \
        _samples(before["xdp_teredo_slow_path_events"])[key] + 5


class _Skeleton(Daemon):
    role = "toy"

    def status(self):
        return {}


def test_the_skeleton_observes_every_role_the_same_way():
    toy = _Skeleton()
    toy.counters["delivered"] += 2
    seen = toy.observe()
    assert (seen.role, seen.state, seen.slow_path["delivered"]) == ("toy", "starting", 2)
    toy.serving_now = True
    assert toy.observe().state == "serving"
    toy.loop.close()


# -- the HTTP side, on the loop, over a socketpair ------------------------------------------

def _served(request: bytes):
    loop = EventLoop()
    registry = metrics.registry_for(lambda: _client_observation())
    server = metrics.MetricsServer(metrics.MetricsAddress("127.0.0.1", 1), registry)
    server._loop = loop
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = metrics._Connection(ours, 0.0)
    server._connections[ours.fileno()] = conn
    loop.add_reader(ours, lambda: server._read(conn))
    theirs.sendall(request)
    answer = b""
    theirs.settimeout(5)
    loop.every(0.01, lambda: None)
    while server._connections:
        for key, _ in loop.selector.select(1.0):
            key.data()
    while True:
        chunk = theirs.recv(65536)
        if not chunk:
            break
        answer += chunk
    theirs.close()
    loop.close()
    return answer, server


def test_get_metrics_answers_the_text_format_and_closes():
    answer, server = _served(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b'xdp_teredo_datapath_packets_total{kind="ok",reason="decapsulated"}' in body
    assert b"process_cpu_seconds_total" in body   # the process' own, on Linux
    assert server.scrapes == 1


def test_openmetrics_when_asked():
    answer, _ = _served(b"GET /metrics HTTP/1.1\r\n"
                        b"Accept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    assert b"application/openmetrics-text" in answer.split(b"\r\n\r\n")[0]
    assert answer.rstrip().endswith(b"# EOF")


@pytest.mark.parametrize("request_line, status", [
    (b"GET /other HTTP/1.1", b"404"),
    (b"POST /metrics HTTP/1.1", b"405"),
    (b"nonsense", b"400"),
])
def test_anything_else_is_an_error_status(request_line, status):
    answer, server = _served(request_line + b"\r\n\r\n")
    assert answer.split(b" ")[1] == status
    assert server.scrapes == 0


def test_stalled_connections_are_swept():
    now = [0.0]
    server = metrics.MetricsServer(metrics.MetricsAddress("127.0.0.1", 1),
                                   metrics.CollectorRegistry(), monotonic=lambda: now[0])
    server._loop = EventLoop()
    ours, theirs = socket.socketpair()
    server._connections[ours.fileno()] = metrics._Connection(ours, 0.0)
    server._loop.add_reader(ours, lambda: None)
    now[0] = metrics.CONNECTION_TIMEOUT + 0.1
    server._sweep()
    assert not server._connections and ours.fileno() == -1
    theirs.close()
    server._loop.close()


def test_the_grafana_dashboard_uses_only_metrics_that_exist():
    import json
    import pathlib
    import re

    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bxdp_teredo_[a-z_]+", e)}
    server = {"received": 1, "rate_limited": 0, "dropped": {"malformed": 0}}
    offered = set()
    for seen in (_client_observation(),
                 metrics.Observation(role="server", state="serving",
                                     states=("starting", "serving"), state_since=0.0,
                                     slow_path=Counters(), server=server)):
        _, families = _scrape(seen)
        offered |= {s.name for f in families.values() for s in f.samples}
    assert used and used <= offered, used - offered
    for needed in ("xdp_teredo_datapath_packets_total", "xdp_teredo_slow_path_events_total",
                   "xdp_teredo_peers", "xdp_teredo_state", "xdp_teredo_server_sent_total"):
        assert needed in used


@pytest.mark.parametrize("command", [
    ["attach", "eth0", "--server", "192.0.2.1"],
    ["relay", "--ipv4-iface", "eth0", "--ipv6-iface", "eth1"],
    ["server", "--bind", "192.0.2.1"],
])
def test_every_role_takes_metrics_and_a_bad_value_is_one_line_exit_2(command, monkeypatch):
    from click.testing import CliRunner

    from xdp_teredo import cli as cli_mod

    # Nothing may start: the value is checked before any role is set up.
    for target in ("xdp_teredo.client.attach", "xdp_teredo.relay.relay",
                   "xdp_teredo.server.serve"):
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("started"))
    res = CliRunner().invoke(cli_mod.cli, [*command, "--metrics", "localhost:9417"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["xdp-teredo: error: --metrics 'localhost:9417': 'localhost' is not "
                     "an IP address"]
    assert "--metrics HOST:PORT" in CliRunner().invoke(cli_mod.cli, [command[0], "--help"]).output
