"""The client finds the kind of NAT it is behind and says so (`status`, JSON
`nat_type`), as Windows' `netsh interface teredo show state` does: one Router
Solicitation to the server's secondary address after qualification
(teredo/nat_type.py)."""

import json
import time

import pytest

from xdp_teredo.lab import roles

pytestmark = pytest.mark.e2e

EXPECTED = {"firewalled": "restricted", "open": "restricted", "symmetric": "symmetric"}


def _nat_type(lab, host: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(roles.cli(lab, host, "status", "--json", check=True).stdout)
        if info["nat_type"] != "probing" or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_client_reports_the_nat_type(make_lab, require_bcc, kind):
    lab = make_lab("server", "client2", "public", nat={"nat2a": kind, "nat2b": kind})
    roles.start_server(lab, "xdp-teredo")
    server = lab["server"].ipv4[0]
    roles.start_client(lab, "xdp-teredo", "client2", server)
    roles.start_client(lab, "xdp-teredo", "public", server)
    behind = _nat_type(lab, "client2")
    assert behind["nat_type"] == EXPECTED[kind], behind
    detail = behind["nat_detail"]
    if kind == "symmetric":
        assert detail["secondary_mapped"] != behind["mapped"]
    else:
        assert detail["secondary_mapped"] == behind["mapped"] and detail["port_preserving"]
    text = roles.cli(lab, "client2", "status", check=True).stdout
    assert f"nat_type   {EXPECTED[kind]}" in text, text
    public = _nat_type(lab, "public")
    assert public["nat_type"] == "none" and public["nat"] is False, public
