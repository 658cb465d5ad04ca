"""Offline start (issue 12): names that do not resolve yet are retried, not refused.

- a --server name whose lookup fails *temporarily* (EAI_AGAIN: no DNS yet) is
  skipped for now and kept as unresolved; NXDOMAIN stays a one-line UsageError;
  .invalid never asks the resolver (RFC 6761);
- the client, with no server address, stays offline, says why in `status`, tries
  again after 1, 2, 4 ... s (capped), and logs one line a minute, not one per try;
- once a name resolves, it qualifies without a restart.
"""

from __future__ import annotations

import random
import socket

import pytest
from structlog.testing import capture_logs

from xdp_teredo.client import config as cfg
from xdp_teredo.client import plan as C
from xdp_teredo.client import qualify as Q
from xdp_teredo.client import servers as S
from xdp_teredo.client.daemon import ClientDaemon
from xdp_teredo.client.servers import TeredoServer
from xdp_teredo.errors import UsageError
from xdp_teredo.teredo.clock import FakeClock

from tests.unit.test_client_wiring import (LOCAL, SERVER, FakeAttachment, FakeHook,
                                           FakeSocket, FakeTunnel)


def _no_dns(name):
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def _nxdomain(name):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_a_temporary_failure_of_a_named_server_is_skipped_not_refused():
    unresolved = []
    with capture_logs() as logs:
        found = S.resolve_servers(["teredo.example.net"], resolver=_no_dns,
                                  unresolved=unresolved)
    assert found == ()
    [(name, reason)] = unresolved
    assert name == "teredo.example.net" and "Temporary failure" in reason
    assert [e["temporary"] for e in logs if e["event"] == "server_skipped"] == [True]


def test_a_permanent_failure_of_a_named_server_is_still_one_line():
    with pytest.raises(UsageError, match="Name or service not known") as err:
        S.resolve_servers(["gone.example.net"], resolver=_nxdomain, unresolved=[])
    assert not isinstance(err.value, S.TemporaryFailure)


def test_invalid_names_never_ask_the_resolver():
    asked = []

    def resolver(name):
        asked.append(name)
        return _no_dns(name)

    with pytest.raises(UsageError, match="RFC 6761"):
        S.resolve_server("no-such-host.invalid", resolver=resolver)
    assert asked == []


def test_plan_resolve_keeps_what_failed_for_later():
    config = cfg.ClientConfig(servers=("a.example", "b.example"),
                              server_source=cfg.SOURCE_COMMAND_LINE)
    unresolved = []
    with capture_logs():
        found = C.resolve(config, lambda n: ["192.0.2.1"] if n == "b.example" else _no_dns(n),
                          unresolved)
    assert [s.name for s in found] == ["b.example"]
    assert [n for n, _ in unresolved] == ["a.example"]


@pytest.fixture
def offline():
    """A client whose only server name failed temporarily at start."""
    journal = []
    config = cfg.ClientConfig(servers=("teredo.example.net",),
                              server_source=cfg.SOURCE_COMMAND_LINE, interface="eth0")
    plan = C.Plan(config=config, nic=C.Nic("eth0", 2, LOCAL[0]), servers=(),
                  timers=C.Timers(restart_delay=100, sync_interval=1),
                  unresolved=(("teredo.example.net", 'cannot resolve Teredo server address '
                               '"teredo.example.net": Temporary failure in name resolution'),))
    clock = FakeClock(1000.0)
    c = ClientDaemon(plan, clock=clock, rng=random.Random(4380).randbytes)
    c.own_tunnel(FakeTunnel(journal))
    c.own_socket(FakeSocket())
    c.own_datapath(FakeAttachment(journal))
    c.start_peer_sync(c.att.peers)
    c.hook = FakeHook(journal)
    c.fake_clock = clock
    yield c
    c.loop.close()


def test_offline_says_why_backs_off_and_logs_once_a_minute(offline):
    c, clock = offline, offline.fake_clock
    delays = []
    with capture_logs() as logs:
        c.start_qualification()
        status = c.status()
        assert status["state"] == "offline" and status["address"] is None
        assert status["reason"].startswith(Q.NO_NAME_RESOLVED)
        assert "Temporary failure" in status["reason"]
        for _ in range(12):
            delays.append(round(c._resolve_at - clock.monotonic(), 3))
            clock.advance(c._resolve_at - clock.monotonic())
            c._names_unresolved(clock.monotonic())   # the thread's answer: still nothing
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
    # 241 s and 13 tries: a line at the start, then one a minute at most.
    assert sum(delays) == 241
    lines = [e for e in logs if e["event"] == "no_server_answered"]
    assert len(lines) == 1 + 241 // 60, lines
    assert lines[0]["tries"] == 1 and lines[-1]["tries"] > 6
    assert c.status()["resolve_tries"] == 13


def test_a_name_that_resolves_later_starts_qualifying_without_a_restart(offline):
    c = offline
    with capture_logs() as logs:
        c.start_qualification()
        c._resolved = ((TeredoServer("teredo.example.net", SERVER, SERVER + 1),), ())
        c.on_resolve_due(c.fake_clock.monotonic())
    assert [e for e in logs if e["event"] == "servers_resolved"]
    status = c.status()
    assert status["state"] == "qualifying" and status["reason"] is None
    assert status["server"] == str(SERVER)


def test_no_server_answering_is_a_reason_too(offline):
    c = offline
    c._resolved = ((TeredoServer("teredo.example.net", SERVER, SERVER + 1),), ())
    with capture_logs():
        c.on_resolve_due(c.fake_clock.monotonic())
        for _ in range(10):   # every RS unanswered
            c.fake_clock.advance(c.qual.timer_at - c.fake_clock.monotonic())
            c.on_qualification_timer(c.fake_clock.monotonic())
            if c.status()["state"] == "offline":
                break
    status = c.status()
    assert status["state"] == "offline"
    assert status["reason"].startswith(Q.NO_SERVER_ANSWERED), status
