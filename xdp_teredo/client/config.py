"""The client's configuration: a miredo.conf, command-line options, built-in defaults.

A miredo.conf (miredo.conf(5)) is accepted as is, so that migrating from Miredo is
`xdp-teredo attach eth0 --config /etc/miredo/miredo.conf`. Its syntax, as Miredo's
src/conf.c reads it: one directive a line, a case-insensitive name, white space, a
value; blank lines and lines whose first word starts with '#' are comments.

Where we are stricter than Miredo, on purpose (it only warns and carries on, which
is how a typo in ServerAddress becomes "libteredo cannot be initialized"):
- an unknown directive, a directive without a value, extra words after the value
  (a trailing "# comment" is fine), a value of the wrong kind, and a directive given
  twice are errors, reported as "FILE:LINE: message" (UsageError, exit 2);
- BindAddress must be an IPv4 literal (Miredo would also resolve a host name).

Precedence, per key: command-line options, then the file, then built-in defaults
(`merge`). The file is --config FILE if given (it must exist), else
/etc/miredo/miredo.conf if it exists (`load_client_config`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Dict, Optional, Tuple

from xdp_teredo.errors import UsageError
from xdp_teredo.net.names import DEFAULT_TUNNEL, check_interface_name  # noqa: F401 (used and re-exported)
from xdp_teredo.teredo import constants

# The file `attach` reads when no --config is given: Miredo's, so that a host that ran
# Miredo keeps its server (Debian ships one naming teredo-debian.remlab.net).
DEFAULT_CONFIG_PATH = "/etc/miredo/miredo.conf"

# Miredo (src/relayd.c): port 0, the kernel picks an unused port (miredo.conf(5),
# BindPort). A fixed port only helps with firewall rules.
DEFAULT_BIND_ADDRESS = ipaddress.IPv4Address("0.0.0.0")
DEFAULT_BIND_PORT = 0
# Miredo drops root to this user after setup (miredo(8), -u).
DEFAULT_USER = "nobody"
# "off": no XDP; the tc-only receive program decapsulates (docs/client.md): on a
# veth, where native XDP first copies every frame that a local sender built, that
# costs less CPU per packet; on a physical NIC, XDP runs before any skb exists.
XDP_MODES = ("auto", "native", "generic", "off")

# RelayType values (Miredo's ParseRelayType in src/relayd.c). "autoclient" is
# documented as an alias of client; "relay" as an alias of cone. "restricted" is kept
# apart because miredo.conf(5) says it sends direct bubbles, unlike cone.
RELAY_CLIENT = "client"
RELAY_CONE = "cone"
RELAY_RESTRICTED = "restricted"
_RELAY_TYPES = {
    "client": RELAY_CLIENT,
    "autoclient": RELAY_CLIENT,
    "cone": RELAY_CONE,
    "relay": RELAY_CONE,
    "restricted": RELAY_RESTRICTED,
}

# Where the server list came from: explicit servers (command line or file) must
# resolve, built-in ones may be skipped (see servers.resolve_servers).
SOURCE_COMMAND_LINE = "command line"
SOURCE_BUILTIN = "built-in"

# -- one layer of settings ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """The values one source gives; None (or an empty tuple) means "not given here".

    `source` names the layer in messages: a file path or SOURCE_COMMAND_LINE.
    `notes` are things the orchestrator should log once (e.g. an ignored directive).
    """

    source: str = SOURCE_COMMAND_LINE
    relay_type: Optional[str] = None
    servers: Tuple[str, ...] = ()
    server2: Optional[str] = None
    tunnel: Optional[str] = None
    bind_address: Optional[ipaddress.IPv4Address] = None
    bind_port: Optional[int] = None
    mtu: Optional[int] = None
    interface: Optional[str] = None
    user: Optional[str] = None
    hook: Optional[str] = None
    xdp_mode: Optional[str] = None
    notes: Tuple[str, ...] = ()


def command_line(*, servers=(), tunnel=None, bind_address=None, bind_port=None,
                 interface=None, user=None, hook=None, xdp_mode=None) -> Settings:
    """The command line's layer, with each value checked (UsageError naming the option).

    click has already checked types; this checks what click cannot (ranges, names).
    """
    servers = tuple(servers or ())
    for name in servers:
        _check_server_name(name, "--server")
    if tunnel is not None:
        check_interface_name(tunnel, "--tunnel name")
    if interface is not None:
        check_interface_name(interface, "interface")
    if bind_address is not None:
        bind_address = _parse_ipv4(str(bind_address), "--bind-address")
    if bind_port is not None:
        bind_port = _parse_port(str(bind_port), "--bind-port")
    if xdp_mode is not None and xdp_mode not in XDP_MODES:
        raise UsageError(f"--xdp-mode must be one of {', '.join(XDP_MODES)}, not {xdp_mode!r}")
    if user is not None and not user:
        raise UsageError("--user must not be empty")
    if hook is not None and not (os.path.isfile(hook) and os.access(hook, os.X_OK)):
        # Checked here too (hook.Hook checks again) so that a typo fails before
        # anything is attached.
        raise UsageError(f"--hook {hook} is not an executable file")
    return Settings(source=SOURCE_COMMAND_LINE, servers=servers, tunnel=tunnel,
                    bind_address=bind_address, bind_port=bind_port, interface=interface,
                    user=user, hook=hook, xdp_mode=xdp_mode)


# -- miredo.conf ------------------------------------------------------------------------

def _relay_type(value: str) -> str:
    try:
        return _RELAY_TYPES[value.lower()]
    except KeyError:
        raise ValueError(f"invalid RelayType {value!r} (client, autoclient, cone, relay "
                         "or restricted)") from None


def _server(value: str) -> str:
    _check_server_name(value, "server")
    return value


def _tunnel(value: str) -> str:
    try:
        return check_interface_name(value, "InterfaceName")
    except UsageError as err:
        raise ValueError(str(err)) from None


def _mtu(value: str) -> int:
    # RFC 4380 §5.1.2 sets 1280; an RA may raise it up to 65535 (§5.2.1).
    mtu = _parse_int(value, "InterfaceMTU")
    if not constants.TEREDO_MTU <= mtu <= constants.RA_MTU_MAX:
        raise ValueError(f"InterfaceMTU must be between {constants.TEREDO_MTU} and {constants.RA_MTU_MAX}, "
                         f"not {mtu}")
    return mtu


# Miredo's syslog facilities (src/conf.c); the value is checked, then ignored.
_SYSLOG_FACILITIES = frozenset({
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
    "user", "uucp", *(f"local{n}" for n in range(8)),
})


def _syslog_facility(value: str) -> str:
    if value.lower() not in _SYSLOG_FACILITIES:
        raise ValueError(f"unknown syslog facility {value!r}")
    return value.lower()


# Directive (lower case) -> (Settings field, value parser). SyslogFacility maps to no
# field: we log to stderr (structlog), which systemd's journal collects.
_DIRECTIVES = {
    "relaytype": ("relay_type", _relay_type),
    "serveraddress": ("servers", _server),
    "serveraddress2": ("server2", _server),
    "interfacename": ("tunnel", _tunnel),
    "bindaddress": ("bind_address", lambda v: _parse_ipv4_value(v, "BindAddress")),
    "bindport": ("bind_port", lambda v: _parse_port_value(v, "BindPort")),
    "interfacemtu": ("mtu", _mtu),
    "syslogfacility": (None, _syslog_facility),
}


def parse_miredo_conf(text: str, path: str = "<config>") -> Settings:
    """Parse the text of a miredo.conf; UsageError "PATH:LINE: message" on a bad line."""
    values: Dict[str, object] = {}
    first_line: Dict[str, int] = {}
    notes = []
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path}:{number}"
        name, rest = words[0], words[1:]
        # A trailing comment after the value is harmless; anything else is not.
        for index, word in enumerate(rest):
            if word.startswith("#"):
                rest = rest[:index]
                break
        key = name.lower()
        if key not in _DIRECTIVES:
            raise UsageError(f"{where}: unknown directive {name!r}")
        if not rest:
            raise UsageError(f"{where}: {name} needs a value")
        if len(rest) > 1:
            raise UsageError(f"{where}: {name} takes one value, not {len(rest)}: "
                             f"{' '.join(rest)!r}")
        if key in first_line:
            # Miredo takes the first and warns about the rest; silently preferring one
            # of two servers is how a migration goes wrong, so we refuse.
            raise UsageError(f"{where}: {name} given twice (first at line {first_line[key]})")
        first_line[key] = number
        field, parse = _DIRECTIVES[key]
        try:
            value = parse(rest[0])
        except ValueError as err:
            raise UsageError(f"{where}: {err}") from None
        if field is None:
            notes.append(f"{where}: {name} {value} is ignored: logs go to stderr "
                         "(the journal under systemd)")
        elif field == "servers":
            values[field] = (value,)
        else:
            values[field] = value
    if "serveraddress2" in first_line and "serveraddress" not in first_line:
        raise UsageError(f"{path}:{first_line['serveraddress2']}: ServerAddress2 without "
                         "ServerAddress (it is the secondary address of that server)")
    return Settings(source=path, notes=tuple(notes), **values)


def load_miredo_conf(path: str) -> Settings:
    """Read and parse a miredo.conf; a file that cannot be read is a UsageError."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UsageError(f"cannot read config file {path}: {reason}") from err
    return parse_miredo_conf(text, path)


# -- the merged result --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Everything `attach` needs to know before it touches the machine.

    servers: host names or IPv4 literals, tried in order; server2 is the secondary
    address of servers[0] (ServerAddress2), None meaning primary + 1 (Miredo).
    server_source says where the list came from; see `servers_explicit`.
    mtu is the tunnel's MTU until a Router Advertisement's MTU option says otherwise
    (RFC 4380 §5.2.1); Miredo reads InterfaceMTU in relay modes only.
    """

    servers: Tuple[str, ...]
    server2: Optional[str] = None
    server_source: str = SOURCE_BUILTIN
    tunnel: str = DEFAULT_TUNNEL
    bind_address: ipaddress.IPv4Address = DEFAULT_BIND_ADDRESS
    bind_port: int = DEFAULT_BIND_PORT
    mtu: int = constants.TEREDO_MTU
    relay_type: str = RELAY_CLIENT
    interface: Optional[str] = None
    user: str = DEFAULT_USER
    hook: Optional[str] = None
    xdp_mode: str = "auto"
    config_file: Optional[str] = None
    notes: Tuple[str, ...] = ()

    @property
    def servers_explicit(self) -> bool:
        """True when the user named the servers: each must then resolve (as Miredo)."""
        return self.server_source != SOURCE_BUILTIN

    def require_client(self) -> "ClientConfig":
        """self, or UsageError if the file asks for a relay (`attach` is the client)."""
        if self.relay_type != RELAY_CLIENT:
            where = self.config_file or "configuration"
            raise UsageError(f"{where}: RelayType {self.relay_type} is a relay mode; "
                             "`attach` runs a Teredo client")
        return self


def merge(command: Settings, file: Optional[Settings] = None, *,
          default_servers: Tuple[str, ...] = ()) -> ClientConfig:
    """One ClientConfig: per key, the command line wins over the file, the file over
    the built-in defaults.

    The server list is taken whole from one layer: --server replaces the file's
    ServerAddress, and then the file's ServerAddress2 (the secondary address of
    *that* server) is dropped with it.
    """
    file = file or Settings(source="")
    if command.servers:
        servers, server2, source = command.servers, None, SOURCE_COMMAND_LINE
    elif file.servers:
        servers, server2, source = file.servers, file.server2, file.source
    else:
        servers, server2, source = tuple(default_servers), None, SOURCE_BUILTIN
    notes = list(file.notes)
    if file.server2 is not None and server2 is None:
        notes.append(f"{file.source}: ServerAddress2 {file.server2} is ignored: it belongs "
                     "to the file's ServerAddress, which --server replaces")

    def pick(field: str, default):
        for layer in (command, file):
            value = getattr(layer, field)
            if value is not None:
                return value
        return default

    return ClientConfig(
        servers=servers,
        server2=server2,
        server_source=source,
        tunnel=pick("tunnel", DEFAULT_TUNNEL),
        bind_address=pick("bind_address", DEFAULT_BIND_ADDRESS),
        bind_port=pick("bind_port", DEFAULT_BIND_PORT),
        mtu=pick("mtu", constants.TEREDO_MTU),
        relay_type=pick("relay_type", RELAY_CLIENT),
        interface=pick("interface", None),
        user=pick("user", DEFAULT_USER),
        hook=pick("hook", None),
        xdp_mode=pick("xdp_mode", "auto"),
        config_file=file.source or None,
        notes=tuple(notes),
    )


def load_client_config(command: Settings, config_path: Optional[str] = None, *,
                       default_path: str = DEFAULT_CONFIG_PATH,
                       default_servers: Optional[Tuple[str, ...]] = None) -> ClientConfig:
    """The configuration `attach` runs with.

    config_path (--config) must be readable; without it, default_path is read if it
    exists. default_servers defaults to servers.DEFAULT_SERVERS.
    """
    if default_servers is None:
        from xdp_teredo.client.servers import DEFAULT_SERVERS
        default_servers = DEFAULT_SERVERS
    if config_path is not None:
        file = load_miredo_conf(config_path)
    elif default_path and os.path.exists(default_path):
        file = load_miredo_conf(default_path)
    else:
        file = None
    return merge(command, file, default_servers=default_servers)


# -- value parsers ---------------------------------------------------------------------

def _check_server_name(name: str, what: str) -> None:
    # A host name or an IPv4 literal; whether it resolves is servers.py's question.
    if not isinstance(name, str) or not name or len(name) > 253 or any(
            ch.isspace() for ch in name):
        raise UsageError(f"invalid {what} {name!r}: not a host name or IPv4 address")


def _parse_int(value: str, what: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{what} must be a decimal number, not {value!r}")
    return int(value)


def _parse_port_value(value: str, what: str) -> int:
    port = _parse_int(value, what)
    if port > 0xFFFF:
        raise ValueError(f"{what} must be between 0 and 65535, not {port}")
    return port


def _parse_ipv4_value(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{what} must be an IPv4 address, not {value!r}") from None


def _parse_port(value: str, what: str) -> int:
    try:
        return _parse_port_value(value, what)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _parse_ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return _parse_ipv4_value(value, what)
    except ValueError as err:
        raise UsageError(str(err)) from None
