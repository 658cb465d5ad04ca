"""Server names to addresses, and who may be a server (xdp_teredo/servers.py).

The resolver is injected: no test touches DNS.
"""

import ipaddress
import socket

import pytest
from structlog.testing import capture_logs

from xdp_teredo.client import config as cfg
from xdp_teredo.client import servers as S
from xdp_teredo.errors import UsageError

IP = ipaddress.IPv4Address


class FakeDns:
    """A resolver from a table; names not in it fail as getaddrinfo does."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def __call__(self, name):
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[name]


DNS = FakeDns({
    "teredo.example.net": ["192.0.2.1", "192.0.2.77"],
    "second.example.net": ["192.0.2.9"],
    "private.example.net": ["10.1.2.3"],
    "edge.example.net": ["9.255.255.255"],
    "v6only.example.net": ["2001:db8::1"],
})


def test_a_name_resolves_to_its_first_address_and_the_next_one():
    server = S.resolve_server("teredo.example.net", resolver=DNS)
    assert server == S.TeredoServer("teredo.example.net", IP("192.0.2.1"), IP("192.0.2.2"))
    assert str(server) == "teredo.example.net (192.0.2.1)"


def test_a_literal_address_does_not_ask_the_resolver():
    dns = FakeDns({})
    server = S.resolve_server("198.51.100.4", resolver=dns)
    assert (server.primary, server.secondary) == (IP("198.51.100.4"), IP("198.51.100.5"))
    assert dns.asked == []
    assert str(server) == "198.51.100.4"


def test_server_address2_overrides_primary_plus_one():
    server = S.resolve_server("teredo.example.net", "second.example.net", resolver=DNS)
    assert server.secondary == IP("192.0.2.9")


def test_secondary_is_primary_plus_one_across_a_byte_boundary():
    assert S.secondary_address(IP("192.0.2.255")) == IP("192.0.3.0")


@pytest.mark.parametrize("name, message", [
    ("nowhere.example.net",
     'cannot resolve Teredo server address "nowhere.example.net": Name or service not known'),
    ("v6only.example.net", 'cannot resolve Teredo server address "v6only.example.net": '
                           "no IPv4 address"),
    ("private.example.net",
     "Teredo server private.example.net has a non global IPv4 address: 10.1.2.3"),
    ("192.168.1.1", "Teredo server 192.168.1.1 has a non global IPv4 address"),
    ("127.0.0.1", "non global IPv4 address"),
    ("224.0.0.253", "non global IPv4 address"),
    # Global, but primary + 1 steps into 10/8.
    ("edge.example.net", "Teredo server edge.example.net + 1 has a non global IPv4 "
                         "address: 10.0.0.0"),
])
def test_refusals_are_one_line_usage_errors(name, message):
    with pytest.raises(UsageError) as info:
        S.resolve_server(name, resolver=DNS)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_non_global_server_address2_is_refused():
    with pytest.raises(UsageError, match="private.example.net has a non global"):
        S.resolve_server("teredo.example.net", "private.example.net", resolver=DNS)


def test_resolver_errors_of_any_os_kind_become_usage_errors():
    def broken(name):
        raise UnicodeError("label empty or too long")

    with pytest.raises(UsageError, match='"a..b": label empty'):
        S.resolve_server("a..b", resolver=broken)


def test_system_resolver_resolves_a_literal_without_dns():
    # getaddrinfo on a numeric address never queries a name server.
    assert S.system_resolver("192.0.2.1") == ["192.0.2.1"]


def test_explicit_servers_must_all_resolve():
    with pytest.raises(UsageError, match="nowhere.example.net"):
        S.resolve_servers(["teredo.example.net", "nowhere.example.net"], resolver=DNS)


def test_built_in_servers_that_fail_are_skipped_and_logged():
    with capture_logs() as logs:
        found = S.resolve_servers(["nowhere.example.net", "private.example.net",
                                   "teredo.example.net"], explicit=False, resolver=DNS)
    assert [s.name for s in found] == ["teredo.example.net"]
    skipped = [e for e in logs if e["event"] == "server_skipped"]
    assert [e["server"] for e in skipped] == ["nowhere.example.net", "private.example.net"]
    assert "non global" in skipped[1]["reason"]


def test_none_of_the_built_in_servers_resolving_is_not_an_error():
    with capture_logs():
        assert S.resolve_servers(S.DEFAULT_SERVERS, explicit=False,
                                 resolver=FakeDns({})) == ()


def test_secondary_applies_to_the_first_server_only():
    found = S.resolve_servers(["teredo.example.net", "198.51.100.1"],
                              secondary="second.example.net", resolver=DNS)
    assert found[0].secondary == IP("192.0.2.9")
    assert found[1].secondary == IP("198.51.100.2")


def test_servers_for_a_config_follows_where_the_list_came_from():
    explicit = cfg.merge(cfg.command_line(servers=["nowhere.example.net"]), None)
    with pytest.raises(UsageError):
        S.servers_for(explicit, resolver=DNS)
    from_file = cfg.merge(cfg.command_line(), cfg.Settings(
        source="m.conf", servers=("teredo.example.net",), server2="second.example.net"))
    assert S.servers_for(from_file, resolver=DNS)[0].secondary == IP("192.0.2.9")
    built_in = cfg.merge(cfg.command_line(), None,
                         default_servers=("nowhere.example.net", "teredo.example.net"))
    with capture_logs():
        assert [s.name for s in S.servers_for(built_in, resolver=DNS)] == [
            "teredo.example.net"]


def test_the_default_list_holds_miredo_and_windows_servers():
    assert "teredo-debian.remlab.net" in S.DEFAULT_SERVERS
    assert "teredo.remlab.net" in S.DEFAULT_SERVERS
    assert "teredo.ipv6.microsoft.com" in S.DEFAULT_SERVERS
    assert "win10.ipv6.microsoft.com" in S.DEFAULT_SERVERS
    assert len(set(S.DEFAULT_SERVERS)) == len(S.DEFAULT_SERVERS)
