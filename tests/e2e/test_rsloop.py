"""The server benchmark's closed loop (xdp_teredo/lab/rsloop.py) in a lab: on
the relay host's uplink it turns the RAs of our server and of miredo-server
back into RSs, keeps every one of its K in flight, sees exactly the answers our
server counts, and leaves nothing attached."""

import pytest

from tools.bench import server_bench as sb
from xdp_teredo.lab.rsloop import RsLoop

pytestmark = pytest.mark.e2e

K = 16


@pytest.mark.parametrize("impl", ["xdp-teredo", "miredo"])
def test_the_loop_goes_round_and_sees_what_the_server_answered(make_lab, impl):
    lab = make_lab("server", "relay")
    gen = lab[sb.GENERATOR]
    lab.run("inet", "ip", "route", "add", sb.NET, "via", str(gen.ipv4[0]))
    server = str(lab["server"].ipv4[0])
    stop, _ = sb._start(lab, impl, *sb.UNLIMITED)
    try:
        with RsLoop(gen.netns, gen.uplink) as loop:
            assert "prog/xdp" in lab.run(sb.GENERATOR, "ip", "-d", "link", "show",
                                         gen.uplink).stdout
            counted = sb._answered_by_server(lab, impl)
            before = loop.counts()
            got = loop.rate(server, K, sb.NET, 1.0, windows=2)
            after = loop.counts()
            assert min(got["window_pps"]) > 1000, f"the loop kept going: {got}"
            assert after["stopped"] - before["stopped"] == K, "all K still in flight at the end"
            assert after["tail_refused"] == before["tail_refused"]
            if counted is not None:   # miredo-server counts nothing
                seen = sum(after[c] - before[c] for c in ("turned", "stopped"))
                assert sb._answered_by_server(lab, impl) - counted == seen
    finally:
        stop()
    left = lab.run(sb.GENERATOR, "ip", "-d", "link", "show", gen.uplink).stdout
    assert "prog/xdp" not in left, "detached at close"
