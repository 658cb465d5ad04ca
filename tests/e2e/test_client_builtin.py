"""`xdp-teredo attach eth0` with nothing configured: the built-in server list.

Like `apt-get install miredo`, no option is needed: without --server and without
ServerAddress the client tries the public servers that have existed. They are
(nearly) all gone, and in the lab nothing resolves at all: the client stays
offline, keeps trying, still answers `status`, and says plainly that running
`xdp-teredo server` somewhere is the way out. SIGTERM still leaves nothing.
"""

import pytest

from tests.conftest import require_tool
from tests.e2e import client_support as cs

pytestmark = pytest.mark.e2e


def test_no_server_at_all_stays_offline_and_says_what_to_do(make_lab):
    require_tool("ethtool")
    lab = make_lab("public")
    empty = lab.workdir / "empty.conf"
    empty.write_text("# no ServerAddress: the built-in list\n")
    client = cs.start_client(lab, "public", "--config", str(empty), server=None, wait=False,
                             log="builtin.log")
    client.wait_for_output(r'"event": "no_server_answered"', timeout=cs.QUALIFY_TIMEOUT)
    code, info = cs.status(lab, "public")
    assert code == 3 and info["state"] == "offline" and info["address"] is None
    assert info["servers"] == []
    assert info["reason"].startswith("no server name resolved yet (retrying)"), info
    # It keeps trying (backing off up to --restart-delay here), and answers
    # meanwhile although each try waits for DNS timeouts; it logs one line a
    # minute, not one per try.
    cs.wait_until("a second try", lambda: (cs.status(lab, "public")[1] or {}).get(
        "resolve_tries", 0) >= 2, timeout=20, proc=client)
    assert len(cs.events(client, "no_server_answered")) == 1
    record = cs.events(client, "no_server_answered")[-1]
    assert "xdp-teredo server" in record["hint"]
    assert record["reason"] == "none of the servers resolved"
    assert client.stop() == 0
    assert cs.leftovers(lab, "public") == cs.NOTHING_LEFT
