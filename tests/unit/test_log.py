"""structlog set-up: JSON off a terminal, console on one, stdlib logging routed."""

import io
import json
import logging

from xdp_teredo import log


def _lines(buf):
    return [l for l in buf.getvalue().splitlines() if l.strip()]


def test_json_lines_when_not_a_terminal():
    buf = io.StringIO()
    log.configure("auto", 0, stream=buf)
    log.get("xdp_teredo.test").info("state_changed", old="offline", new="qualifying")
    (line,) = _lines(buf)
    rec = json.loads(line)
    assert rec["event"] == "state_changed" and rec["new"] == "qualifying"
    assert rec["level"] == "info" and "timestamp" in rec


def test_stdlib_logging_comes_out_the_same_way():
    buf = io.StringIO()
    log.configure("json", 0, stream=buf)
    logging.getLogger("pyroute2.test").warning("netlink said %s", "hello")
    rec = json.loads(_lines(buf)[0])
    assert rec["event"] == "netlink said hello" and rec["logger"] == "pyroute2.test"


def test_verbosity_filters():
    buf = io.StringIO()
    log.configure("json", -1, stream=buf)  # -q: errors only
    log.get().info("noise")
    log.get().error("trouble")
    assert [json.loads(l)["event"] for l in _lines(buf)] == ["trouble"]


def test_console_format_is_not_json():
    buf = io.StringIO()
    log.configure("console", 0, stream=buf)
    log.get().info("qualified", address="2001::1")
    (line,) = _lines(buf)
    assert "qualified" in line and "address" in line and not line.startswith("{")
