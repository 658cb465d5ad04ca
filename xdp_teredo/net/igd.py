"""An Internet Gateway Device's WANIPConnection service (UPnP IGD 1 and 2):
its description, and the four SOAP actions a Teredo client needs
(GetExternalIPAddress, AddPortMapping, DeletePortMapping,
GetGenericPortMappingEntry). Parsing is separate from the blocking HTTP calls
so that tests feed it miniupnpd's recorded answers. No per-packet work.
"""

from __future__ import annotations

import http.client
import ipaddress
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

from ..errors import TeredoError

_DEVICE_NS = "{urn:schemas-upnp-org:device-1-0}"
_CONTROL_NS = "{urn:schemas-upnp-org:control-1-0}"
# Services that map ports, the one to prefer first (IGD:2 devices offer v2).
SERVICE_TYPES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
                 "urn:schemas-upnp-org:service:WANIPConnection:1",
                 "urn:schemas-upnp-org:service:WANPPPConnection:1")
MAX_BODY = 64 * 1024
# UPnP IGD error codes we act on (WANIPConnection:2 §2.5).
NO_SUCH_ENTRY = 714
ARRAY_INDEX_INVALID = 713
CONFLICT = 718


class UpnpError(TeredoError):
    """The gateway refused (code from its UPnPError) or did not answer sensibly."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Service:
    service_type: str
    control_url: str     # absolute


@dataclass(frozen=True)
class PortMapping:
    external_port: int
    protocol: str
    internal_port: int
    internal_client: str
    enabled: bool
    description: str
    lease: int


def parse_description(xml: bytes, location: str) -> Optional[Service]:
    """The best port-mapping service in a device description, its control URL
    made absolute against URLBase or `location`; None if it offers none."""
    try:
        root = ElementTree.fromstring(xml[:MAX_BODY])
    except ElementTree.ParseError:
        return None
    base = (root.findtext(f"{_DEVICE_NS}URLBase") or "").strip() or location
    found = {}
    for svc in root.iter(f"{_DEVICE_NS}service"):
        stype = (svc.findtext(f"{_DEVICE_NS}serviceType") or "").strip()
        control = (svc.findtext(f"{_DEVICE_NS}controlURL") or "").strip()
        if stype in SERVICE_TYPES and control and stype not in found:
            found[stype] = urljoin(base, control)
    for stype in SERVICE_TYPES:
        if stype in found:
            return Service(stype, found[stype])
    return None


def build_request(service: Service, action: str, args: list) -> bytes:
    """The SOAP envelope of `action` with `args` ((name, value), in the order
    the service's SCPD lists them: some gateways care)."""
    from xml.sax.saxutils import escape

    body = "".join(f"<{name}>{escape(str(value))}</{name}>" for name, value in args)
    return ('<?xml version="1.0"?>\r\n'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{service.service_type}">{body}</u:{action}>'
            '</s:Body></s:Envelope>').encode("utf-8")


def parse_response(xml: bytes, action: str) -> dict:
    """The out-arguments of `action`'s answer; UpnpError (with its code) for a
    SOAP fault or anything that is not the answer."""
    try:
        root = ElementTree.fromstring(xml[:MAX_BODY])
    except ElementTree.ParseError as err:
        raise UpnpError(f"{action}: unreadable answer ({err})") from None
    for elem in root.iter():
        if elem.tag.endswith("}UPnPError") or elem.tag == "UPnPError":
            code = elem.findtext(f"{_CONTROL_NS}errorCode") or elem.findtext("errorCode")
            text = elem.findtext(f"{_CONTROL_NS}errorDescription") \
                or elem.findtext("errorDescription") or ""
            try:
                number = int((code or "").strip())
            except ValueError:
                number = None
            raise UpnpError(f"{action}: UPnP error {code} {text.strip()}".strip(), number)
        if elem.tag.split("}")[-1] == f"{action}Response":
            return {child.tag.split("}")[-1]: (child.text or "").strip() for child in elem}
    raise UpnpError(f"{action}: no {action}Response in the answer")


def parse_mapping(out: dict, external_port: Optional[int] = None,
                  protocol: Optional[str] = None) -> PortMapping:
    """A GetGenericPortMappingEntry / GetSpecificPortMappingEntry answer."""
    try:
        return PortMapping(
            external_port=int(out.get("NewExternalPort") or external_port),
            protocol=(out.get("NewProtocol") or protocol or "").upper(),
            internal_port=int(out["NewInternalPort"]),
            internal_client=out["NewInternalClient"],
            enabled=out.get("NewEnabled", "1") in ("1", "true"),
            description=out.get("NewPortMappingDescription", ""),
            lease=int(out.get("NewLeaseDuration") or 0))
    except (KeyError, TypeError, ValueError) as err:
        raise UpnpError(f"a port mapping entry without {err}") from None


def parse_external_ip(out: dict) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(out.get("NewExternalIPAddress", ""))
    except ValueError:
        raise UpnpError("GetExternalIPAddress: the gateway has no external address") from None


# -- the blocking calls (client/upnp.py runs them in a thread) ---------------------------

def fetch(url: str, timeout: float, *, body: Optional[bytes] = None,
          headers: Optional[dict] = None) -> tuple:
    """(status, body) of a GET (or POST with `body`) to an http URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UpnpError(f"not an http URL: {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("POST" if body is not None else "GET", path, body=body,
                     headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as err:
        raise UpnpError(f"{url}: {err}") from None
    finally:
        conn.close()


def call(service: Service, action: str, args: list, timeout: float) -> dict:
    """One SOAP action; its out-arguments, or UpnpError."""
    _status, body = fetch(service.control_url, timeout,
                          body=build_request(service, action, args),
                          headers={"Content-Type": 'text/xml; charset="utf-8"',
                                   "SOAPAction": f'"{service.service_type}#{action}"'})
    return parse_response(body, action)


def describe(location: str, timeout: float) -> Service:
    status, body = fetch(location, timeout)
    if status != 200:
        raise UpnpError(f"{location}: HTTP {status}")
    service = parse_description(body, location)
    if service is None:
        raise UpnpError(f"{location}: the gateway offers no WANIPConnection service")
    return service


def external_ip(service: Service, timeout: float) -> ipaddress.IPv4Address:
    return parse_external_ip(call(service, "GetExternalIPAddress", [], timeout))


def add_mapping(service: Service, external_port: int, internal: tuple, description: str,
                lease: int, timeout: float) -> None:
    call(service, "AddPortMapping", [
        ("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", "UDP"),
        ("NewInternalPort", internal[1]), ("NewInternalClient", internal[0]),
        ("NewEnabled", 1), ("NewPortMappingDescription", description),
        ("NewLeaseDuration", lease)], timeout)


def delete_mapping(service: Service, external_port: int, timeout: float) -> None:
    call(service, "DeletePortMapping", [
        ("NewRemoteHost", ""), ("NewExternalPort", external_port), ("NewProtocol", "UDP")],
        timeout)


def mappings(service: Service, timeout: float, limit: int = 256) -> list:
    """Every port mapping the gateway lists (GetGenericPortMappingEntry 0, 1, ...
    until error 713)."""
    found = []
    for index in range(limit):
        try:
            out = call(service, "GetGenericPortMappingEntry",
                       [("NewPortMappingIndex", index)], timeout)
        except UpnpError as err:
            if err.code in (ARRAY_INDEX_INVALID, NO_SUCH_ENTRY):
                break
            raise
        found.append(parse_mapping(out))
    return found
