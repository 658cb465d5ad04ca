"""SSDP and IGD parsing against miniupnpd 2.3.1's own answers (recorded in the
lab: tests/unit/fixtures/upnp/), and the PortMapper's choices with a fake gateway."""

from pathlib import Path

import pytest

from xdp_teredo.client import upnp
from xdp_teredo.net import igd, ssdp

FIX = Path(__file__).parent / "fixtures" / "upnp"
LOCATION = "http://10.1.0.1:5000/rootDesc.xml"


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


def test_msearch_is_what_uda_asks():
    msg = ssdp.build_msearch(ssdp.SEARCH_TARGETS[1]).decode()
    assert msg.startswith("M-SEARCH * HTTP/1.1\r\n")
    assert "HOST: 239.255.255.250:1900\r\n" in msg and 'MAN: "ssdp:discover"\r\n' in msg
    assert msg.endswith("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n")


def test_miniupnpd_answer_parsed():
    answer = ssdp.parse_answer(fixture("ssdp-answer.txt"))
    assert answer.location == LOCATION
    assert answer.st == "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
    assert "MiniUPnPd/2.3.1" in answer.server


@pytest.mark.parametrize("data", [
    b"", b"\xff\xfe", b"NOTIFY * HTTP/1.1\r\nLOCATION: http://a/\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nLOCATION: http://a/\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n"])
def test_other_datagrams_ignored(data):
    assert ssdp.parse_answer(data) is None


def test_description_gives_wanipconnection_2():
    service = igd.parse_description(fixture("rootDesc.xml"), LOCATION)
    assert service == igd.Service("urn:schemas-upnp-org:service:WANIPConnection:2",
                                  "http://10.1.0.1:5000/ctl/IPConn")


def test_description_without_service_or_broken():
    assert igd.parse_description(b"<root xmlns='urn:schemas-upnp-org:device-1-0'/>", LOCATION) is None
    assert igd.parse_description(b"<root", LOCATION) is None


def test_external_ip_answer():
    out = igd.parse_response(fixture("soap-GetExternalIPAddress-200.xml"), "GetExternalIPAddress")
    assert str(igd.parse_external_ip(out)) == "198.51.100.1"
    with pytest.raises(igd.UpnpError):
        igd.parse_external_ip({"NewExternalIPAddress": ""})   # miniupnpd before STUN


def test_add_answer_and_conflict_fault():
    assert igd.parse_response(fixture("soap-AddPortMapping-200.xml"), "AddPortMapping") == {}
    with pytest.raises(igd.UpnpError) as err:
        igd.parse_response(fixture("soap-AddPortMapping-718.xml"), "AddPortMapping")
    assert err.value.code == igd.CONFLICT


def test_mapping_entries_and_end_of_list():
    out = igd.parse_response(fixture("soap-GetGenericPortMappingEntry-200.xml"),
                             "GetGenericPortMappingEntry")
    entry = igd.parse_mapping(out)
    assert (entry.external_port, entry.protocol, entry.internal_client, entry.internal_port,
            entry.description, entry.lease) == (40001, "UDP", "10.1.0.2", 40001,
                                                "xdp-teredo test", 3600)
    with pytest.raises(igd.UpnpError) as err:
        igd.parse_response(fixture("soap-GetGenericPortMappingEntry-713.xml"),
                           "GetGenericPortMappingEntry")
    assert err.value.code == igd.ARRAY_INDEX_INVALID


def test_answer_to_another_action_refused():
    with pytest.raises(igd.UpnpError):
        igd.parse_response(fixture("soap-AddPortMapping-200.xml"), "DeletePortMapping")


def test_request_escapes_values():
    service = igd.Service(igd.SERVICE_TYPES[0], "http://10.1.0.1:5000/ctl/IPConn")
    body = igd.build_request(service, "AddPortMapping", [("NewPortMappingDescription", "a<b&")])
    assert b"<NewPortMappingDescription>a&lt;b&amp;</NewPortMappingDescription>" in body


class _Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **kw: self.events.append((event, kw))


class _Gateway:
    """What PortMapper asks of net/igd.py, answered from a dict of mappings."""

    def __init__(self, taken=(), entries=()):
        self.taken = set(taken)
        self.entries = list(entries)
        self.calls = []

    def install(self, monkeypatch):
        monkeypatch.setattr(igd, "add_mapping", self.add)
        monkeypatch.setattr(igd, "delete_mapping",
                            lambda s, port, t: self.calls.append(("delete", port)))
        monkeypatch.setattr(igd, "mappings", lambda s, t: self.entries)

    def add(self, service, port, internal, description, lease, timeout):
        self.calls.append(("add", port))
        if port in self.taken:
            raise igd.UpnpError("taken", igd.CONFLICT)


def _mapper():
    mapper = upnp.PortMapper(("10.1.0.2", 40001), "teredo", _Log(), rng=__import__("random").Random(1))
    mapper.service = igd.Service(igd.SERVICE_TYPES[0], "http://10.1.0.1:5000/ctl/IPConn")
    return mapper


def test_own_port_first_then_another(monkeypatch):
    gw = _Gateway(taken={40001})
    gw.install(monkeypatch)
    port = _mapper()._map(40001)
    assert gw.calls[0] == ("add", 40001) and port != 40001 and gw.calls[-1] == ("add", port)


def test_stale_mappings_of_ours_removed_only(monkeypatch):
    mine = igd.PortMapping(40001, "UDP", 39999, "10.1.0.2", True, "xdp-teredo teredo", 3600)
    other_host = igd.PortMapping(40002, "UDP", 1, "10.1.0.3", True, "xdp-teredo teredo", 3600)
    other_app = igd.PortMapping(40003, "UDP", 1, "10.1.0.2", True, "game", 3600)
    gw = _Gateway(entries=[mine, other_host, other_app])
    gw.install(monkeypatch)
    _mapper()._remove_stale()
    assert gw.calls == [("delete", 40001)]


def test_status_text_shows_the_mapping_or_a_dash():
    from xdp_teredo.daemon import render

    lines = render.status_lines({"state": "qualified", "upnp": "mapped 198.51.100.1:40001",
                                 "nat_type": "symmetric",
                                 "nat_detail": {"type": "symmetric", "upnp": True}})
    assert "upnp       mapped 198.51.100.1:40001" in lines
    assert "nat_type   symmetric (UPnP yes)" in lines
    assert "upnp       -" in render.status_lines({"state": "offline"})


def test_describe_before_and_after_a_mapping():
    mapper = _mapper()
    assert mapper.describe() is None
    mapper.mapped = (__import__("ipaddress").IPv4Address("198.51.100.1"), 40001)
    assert mapper.describe() == "mapped 198.51.100.1:40001"


def test_stop_while_searching_does_not_wait(monkeypatch):
    import threading
    import time

    started = threading.Event()

    def slow_search(local_ip, timeout):
        started.set()
        time.sleep(1.0)
        return None

    monkeypatch.setattr(ssdp, "discover", slow_search)
    mapper = upnp.PortMapper(("10.1.0.2", 40001), "teredo", _Log())
    mapper.start()
    assert started.wait(2)
    mapper.stop()
    # No gateway found yet: exit did not wait for the search (still running).
    assert mapper._thread.is_alive() and mapper.mapped is None
