"""relay/announce.py: the route that publishes a relay's health, without a kernel."""

import errno
import socket

import pytest
from click.testing import CliRunner
from pyroute2.netlink.exceptions import NetlinkError

from xdp_teredo import cli as cli_mod
from xdp_teredo.errors import RuntimeFailure, UsageError
from xdp_teredo.relay import announce


class FakeIPRoute:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail or {}

    def route(self, command, **kw):
        self.calls.append((command, kw))
        if command in self.fail:
            raise NetlinkError(self.fail[command])


@pytest.mark.parametrize("table", [0, 253, 254, 255, -1, 2 ** 32])
def test_reserved_or_out_of_range_tables_are_refused(table):
    with pytest.raises(UsageError, match="--announce-table"):
        announce.check_table(table)


@pytest.mark.parametrize("table", [1, 100, 252, 256, 2 ** 32 - 1])
def test_tables_of_its_own_are_taken(table):
    assert announce.check_table(table) == table


def test_publish_replaces_the_prefix_through_the_tunnel_then_withdraw_deletes_it():
    ipr = FakeIPRoute()
    ann = announce.Announcement(ipr, 100, oif=7)
    ann.withdraw()                     # nothing published: nothing to do
    assert ipr.calls == []
    ann.publish()
    command, kw = ipr.calls[0]
    assert command == "replace"        # a leftover never makes a start fail
    assert kw == {"family": socket.AF_INET6, "dst": "2001::", "dst_len": 32, "oif": 7,
                  "table": 100, "proto": announce.ANNOUNCE_PROTO}
    assert ann.describe()["published"] is True
    ann.withdraw()
    assert ipr.calls[1][0] == "del" and ipr.calls[1][1] == kw
    assert ann.describe()["published"] is False


def test_withdraw_after_the_tunnel_took_the_route_with_it_is_fine():
    ann = announce.Announcement(FakeIPRoute(fail={"del": errno.ESRCH}), 100, oif=7)
    ann.publish()
    ann.withdraw()
    assert not ann.published


def test_netlink_errors_become_runtime_failures():
    ann = announce.Announcement(FakeIPRoute(fail={"replace": errno.EPERM}), 100, oif=7)
    with pytest.raises(RuntimeFailure, match="cannot add 2001::/32"):
        ann.publish()
    ann = announce.Announcement(FakeIPRoute(fail={"del": errno.EPERM}), 100, oif=7)
    ann.publish()
    with pytest.raises(RuntimeFailure, match="cannot remove"):
        ann.withdraw()


def test_cli_refuses_the_main_table_before_anything_starts():
    res = CliRunner().invoke(cli_mod.cli, ["relay", "--ipv4-iface", "eth0", "--ipv6-iface",
                                           "eth1", "--announce-table", "254"])
    assert res.exit_code == 2
    assert "'main' table" in res.output
