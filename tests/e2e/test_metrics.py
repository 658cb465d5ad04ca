"""`--metrics HOST:PORT` of every role, scraped in the lab while traffic flows.

Our server on "server", our relay on "relay", our client behind two NATs on
"client2", each with --metrics on 127.0.0.1:9417 of its own namespace. Each is
scraped (plain urllib, inside its namespace) before and after something happens:
the server's rs_answered grows when the client qualifies; pings between the client
and the IPv6-only v6host (through the relay) make the client's and the relay's
BPF counters (decapsulated, encapsulated) grow, and the relay's peer gauge shows
the client in its data path. First, a taken metrics port: one line, exit 1, and
nothing left behind (the relay, whose set-up attached its programs before).
"""

import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xdp_teredo.lab import roles

pytestmark = pytest.mark.e2e

METRICS = "127.0.0.1:9417"
PINGS = 4

# GET the URL; print the body (exit 1 with the error otherwise).
SCRAPE = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
"""

# Listen on HOST:PORT until killed (a port taken by someone else).
SQUAT = r"""
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def lab(make_module_lab, require_bcc):
    return make_module_lab("server", "relay", "client2", "v6host")


def scrape(lab, host: str) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape of `host`'s --metrics."""
    res = lab.run(host, sys.executable, "-c", SCRAPE, f"http://{METRICS}/metrics")
    samples = {}
    for family in text_string_to_metric_families(res.stdout):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def datapath(samples: dict, reason: str) -> float:
    return value(samples, "xdp_teredo_datapath_packets_total", reason=reason, kind="ok")


def test_a_taken_metrics_port_is_one_line_exit_1_and_nothing_left(lab):
    """First in the module: the relay host runs nothing yet. The metrics listener
    opens after set-up (compiled, attached), so the teardown has things to undo."""
    squat = lab.spawn("relay", sys.executable, "-c", SQUAT, "127.0.0.1", "9417",
                      log="squat.log")
    squat.wait_for_output("listening", timeout=10)
    h = lab["relay"]
    try:
        res = roles.cli(lab, "relay", "relay", "--ipv4-iface", h.uplink, "--ipv6-iface", h.lan,
                        "--metrics", METRICS, timeout=120)
    finally:
        squat.stop()
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("xdp-teredo:")]
    assert errors == [f"xdp-teredo: error: --metrics {METRICS}: cannot listen: in use"], \
        res.stderr
    assert "teredo" not in lab.run("relay", "ip", "link", "show").stdout
    for dev in (h.uplink, h.lan):
        assert "xdp" not in lab.run("relay", "ip", "-d", "link", "show", "dev", dev).stdout
        for direction in ("ingress", "egress"):
            shown = lab.run("relay", "tc", "filter", "show", "dev", dev, direction,
                            check=False).stdout
            assert not shown.strip(), (dev, direction, shown)


@pytest.fixture(scope="module")
def roles_running(lab):
    running = []
    primary = str(lab["server"].ipv4[0])
    server = lab.spawn("server", *roles.CLI, "--log-format", "json", "server", "--bind", primary,
                       "--metrics", METRICS, log="server-metrics.log")
    running.append(server)
    server.wait_for_output(r'"event": "server_started"', timeout=roles.START_TIMEOUT)
    server_before = scrape(lab, "server")
    running.append(roles.start_relay(lab, "xdp-teredo", "relay", "--metrics", METRICS))
    client = roles.start_client(lab, "xdp-teredo", "client2", primary, "--metrics", METRICS)
    running.append(client)
    yield lab, server_before, client
    for proc in reversed(running):
        proc.stop()


def test_the_server_counts_the_solicitations_it_answered(roles_running):
    lab, before, _client = roles_running
    assert value(before, "xdp_teredo_info", role="server", version=_version()) == 1
    assert value(before, "xdp_teredo_state", state="serving") == 1
    # The client qualified after the first scrape: at least one RS answered since.
    after = _wait_for(lambda: scrape(lab, "server"),
                      lambda s: value(s, "xdp_teredo_server_sent_total", outcome="rs_answered")
                      > value(before, "xdp_teredo_server_sent_total", outcome="rs_answered"))
    assert value(after, "xdp_teredo_server_received_total") > \
        value(before, "xdp_teredo_server_received_total")


def test_client_and_relay_counters_move_with_pings(roles_running):
    lab, _server, client = roles_running
    native = str(lab["v6host"].ipv6[0])
    client_before, relay_before = scrape(lab, "client2"), scrape(lab, "relay")
    assert value(client_before, "xdp_teredo_state", state="qualified") == 1
    assert value(client_before, "xdp_teredo_state", state="offline") == 0
    assert value(relay_before, "xdp_teredo_state", state="relaying") == 1

    for src, dst in (("client2", native), ("v6host", str(client.address))):
        res = lab.ping(src, dst, count=PINGS, deadline=20, interval=0.2)
        assert res.ok, f"{src} -> {dst}: {res.received}/{res.sent}"

    client_after, relay_after = scrape(lab, "client2"), scrape(lab, "relay")
    for name, before, after in (("client", client_before, client_after),
                                ("relay", relay_before, relay_after)):
        for reason in ("decapsulated", "encapsulated"):
            # Each way's first packet may wait in the slow path for the peer (§5.2.4/§5.4.1).
            assert datapath(after, reason) - datapath(before, reason) >= PINGS - 1, \
                (name, reason, datapath(before, reason), datapath(after, reason))
        assert value(after, "xdp_teredo_datapath_bytes_total", reason="decapsulated",
                     kind="ok") > value(before, "xdp_teredo_datapath_bytes_total",
                                        reason="decapsulated", kind="ok")
    assert value(relay_after, "xdp_teredo_peers", where="datapath") >= 1
    assert value(client_after, "xdp_teredo_peers", where="datapath") >= 1
    assert value(client_after, "xdp_teredo_slow_path_events_total", event="udp_received") >= \
        value(client_before, "xdp_teredo_slow_path_events_total", event="udp_received")
    assert value(client_after, "xdp_teredo_state_age_seconds") > 0


def _version() -> str:
    from xdp_teredo import __version__

    return __version__


def _wait_for(get, ok, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = get()
        if ok(got) or time.monotonic() > deadline:
            assert ok(got), "the metrics did not move in time"
            return got
        time.sleep(0.5)
