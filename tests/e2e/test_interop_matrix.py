"""The interoperability matrix of the roles, xdp-teredo and Miredo in every mix.

- clients x servers: {xdp-teredo, Miredo} clients behind one NAT (client1) and two
  NATs (client2) qualify with a {xdp-teredo, Miredo} server, get addresses naming
  it, and ping each other both ways over Teredo (which needs the server to forward
  their indirect bubbles, RFC 4380 §5.2.6/§5.3.1);
- clients x relays: a {xdp-teredo, Miredo} client behind two NATs reaches the
  IPv6-only host through a {xdp-teredo, Miredo} relay, and the host reaches it
  back (RFC 4380 §5.4); with our relay, its counters show the fast path carried
  the traffic.

Roles are started through xdp_teredo.lab.roles, as `make demo` and tools/lab.py
start them. One lab for the module; each case starts and stops its daemons.
"""

import json

import pytest

from xdp_teredo.lab import roles
from xdp_teredo.teredo.address import TeredoAddress

pytestmark = pytest.mark.e2e

IMPLS = ("xdp-teredo", "miredo")
PINGS = 4


@pytest.fixture(scope="module")
def lab(make_module_lab, require_bcc):
    return make_module_lab("server", "relay", "client1", "client2", "v6host")


@pytest.fixture
def started(lab):
    """Collects the roles a case starts and stops them afterwards, last first."""
    running = []
    yield running
    for role in reversed(running):
        role.stop()


def _ping(lab, src, dst, count=PINGS):
    res = lab.ping(src, str(dst), count=count, deadline=20, interval=0.2)
    assert res.ok, f"{src} -> {dst}: {res.received}/{res.sent}"


@pytest.mark.parametrize("server_impl", IMPLS)
@pytest.mark.parametrize("client_impl", IMPLS)
def test_clients_qualify_with_the_server_and_talk(lab, started, client_impl, server_impl):
    server = lab["server"].ipv4[0]
    started.append(roles.start_server(lab, server_impl))
    clients = {}
    for host in ("client1", "client2"):
        clients[host] = roles.start_client(lab, client_impl, host, server)
        started.append(clients[host])
        decoded = TeredoAddress.parse(clients[host].address)
        assert decoded.server == server
        assert decoded.client == lab[host].public_ipv4
    _ping(lab, "client2", clients["client1"].address)
    _ping(lab, "client1", clients["client2"].address)


@pytest.mark.parametrize("relay_impl", IMPLS)
@pytest.mark.parametrize("client_impl", IMPLS)
def test_clients_reach_the_native_host_through_the_relay(lab, started, client_impl, relay_impl):
    server = lab["server"].ipv4[0]
    started.append(roles.start_server(lab, "xdp-teredo"))
    started.append(roles.start_relay(lab, relay_impl))
    client = roles.start_client(lab, client_impl, "client2", server)
    started.append(client)
    native = lab["v6host"].ipv6[0]
    if relay_impl == "xdp-teredo":
        before = json.loads(roles.cli(lab, "relay", "stats", "--json", check=True).stdout)
    _ping(lab, "client2", native)
    _ping(lab, "v6host", client.address)
    if relay_impl == "xdp-teredo":
        after = json.loads(roles.cli(lab, "relay", "stats", "--json", check=True).stdout)
        # Echo requests and replies in each direction, less the first packet of
        # each way that waits for the client to be trusted (§5.4.1).
        assert after["decapsulated"] - before["decapsulated"] >= 2 * PINGS - 2
        assert after["encapsulated"] - before["encapsulated"] >= 2 * PINGS - 2
        assert after["relay_source_mismatch"] == before["relay_source_mismatch"]
