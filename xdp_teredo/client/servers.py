"""Teredo servers: the built-in list, and names resolved to a primary and secondary IPv4.

RFC 4380 §5.2.1 needs two consecutive addresses per server: the client qualifies
against the primary, and the secondary answers the cone test. A server named by the
user (--server, ServerAddress) that cannot resolve (NXDOMAIN), or resolves to an
address that is not global unicast, is refused with one line, as Miredo refuses it
("Cannot resolve Teredo server address", "Teredo server has a non global IPv4
address"). A temporary failure (EAI_AGAIN: no network or no DNS yet, routine at
boot) is not the user's mistake: that name is skipped for now, and the client
stays offline and retries (client/qualify.py). Built-in servers are only our
guesses: those that fail, either way, are skipped and logged, and the client
carries on with the rest (or stays offline, retrying).

Name resolution goes through an injectable resolver (name -> IPv4 strings) so tests
never touch DNS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import Callable, Iterable, Optional, Sequence, Tuple

from xdp_teredo import log as xlog
from xdp_teredo.errors import UsageError
from xdp_teredo.teredo.ipv4 import is_global_unicast

# The public Teredo servers that have existed, Miredo's first, then Windows'.
# Most are gone (see docs and /work/shared/notes/teredo-facts.md): the remlab.net
# servers (Miredo's and Debian's defaults) were shut down, teredo.trex.fi has been
# offline since 2022, and Microsoft's are reported disabled; the last three are of
# unknown status. They are kept so that `attach eth0` does what `apt-get install
# miredo` did wherever one still answers; the real way out is a server of your own
# (`xdp-teredo server` on any host with two consecutive public IPv4 addresses).
DEFAULT_SERVERS: Tuple[str, ...] = (
    "teredo-debian.remlab.net",     # Debian's miredo.conf
    "teredo.remlab.net",            # Miredo's
    "teredo2.remlab.net",
    "teredo.trex.fi",
    "teredo.ipv6.microsoft.com",    # Windows' defaults, by release
    "win10.ipv6.microsoft.com",
    "win1710.ipv6.microsoft.com",
    "win1711.ipv6.microsoft.com",
    "win1807.ipv6.microsoft.com",
    "win1901.ipv6.microsoft.com",
    "teredo.iks-jena.de",
    "teredo.ginzado.ne.jp",
    "teredo.ngix.ne.kr",
)

# name -> IPv4 addresses as text, first preferred. Raises OSError (socket.gaierror)
# or returns nothing when the name does not resolve.
Resolver = Callable[[str], Sequence[str]]


# getaddrinfo's answers that say "not now" rather than "no such name": the resolver
# could not be reached or did not answer (EAI_AGAIN), or the system failed
# (EAI_SYSTEM: no network at all, among others).
TEMPORARY_ERRORS = frozenset({socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", -11)})


class TemporaryFailure(UsageError):
    """A name that may resolve later (TEMPORARY_ERRORS): retried, not refused."""


def system_resolver(name: str) -> Sequence[str]:
    """getaddrinfo(AF_INET), as Miredo's GetIPv4ByName (src/conf.c)."""
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM,
                               socket.IPPROTO_UDP)
    return [info[4][0] for info in infos]


@dataclasses.dataclass(frozen=True)
class TeredoServer:
    """A server as the client uses it: the name it was given and its two addresses."""

    name: str
    primary: ipaddress.IPv4Address
    secondary: ipaddress.IPv4Address

    def __str__(self) -> str:
        if self.name == str(self.primary):
            return self.name
        return f"{self.name} ({self.primary})"


def secondary_address(primary: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """Miredo's default secondary address: the primary plus one (miredo.conf(5))."""
    if int(primary) == 0xFFFFFFFF:
        raise UsageError(f"Teredo server {primary} has no next address")
    return primary + 1


def resolve_ipv4(name: str, resolver: Optional[Resolver] = None) -> ipaddress.IPv4Address:
    """The first IPv4 address of `name` (a dotted IPv4 address stays as is).

    UsageError "cannot resolve Teredo server address ..." when it does not resolve.
    """
    try:
        return ipaddress.IPv4Address(name)
    except ValueError:
        pass
    if name.rstrip(".").lower().endswith(".invalid") or name.lower() == "invalid":
        # RFC 6761 §6.4: never resolves, and resolvers should say so at once;
        # without DNS getaddrinfo would call it a temporary failure instead.
        raise UsageError(f'cannot resolve Teredo server address "{name}": Name or service '
                         'not known (.invalid never resolves, RFC 6761)')
    resolver = resolver or system_resolver
    try:
        found = list(resolver(name))
    except (OSError, UnicodeError) as err:
        # gaierror carries gai_strerror's text in args[1]; idna errors for names
        # like "a..b" are UnicodeErrors.
        reason = err.args[1] if isinstance(err, OSError) and len(err.args) > 1 else str(err)
        kind = TemporaryFailure if isinstance(err, socket.gaierror) \
            and err.errno in TEMPORARY_ERRORS else UsageError
        raise kind(f'cannot resolve Teredo server address "{name}": {reason}') from None
    for text in found:
        try:
            return ipaddress.IPv4Address(text)
        except ValueError:
            continue
    raise UsageError(f'cannot resolve Teredo server address "{name}": no IPv4 address')


def resolve_server(name: str, secondary: Optional[str] = None, *,
                   resolver: Optional[Resolver] = None) -> TeredoServer:
    """Resolve one server; UsageError (one line) if it cannot serve as a Teredo server.

    Both addresses must be global unicast (teredo/ipv4.py): the primary + 1 rule can
    step from a global address into a refused range (9.255.255.255 -> 10.0.0.0).
    """
    primary = resolve_ipv4(name, resolver)
    _require_global(name, primary)
    if secondary is None:
        second = secondary_address(primary)
    else:
        second = resolve_ipv4(secondary, resolver)
    _require_global(secondary or f"{name} + 1", second)
    return TeredoServer(name=name, primary=primary, secondary=second)


def resolve_servers(names: Iterable[str], *, secondary: Optional[str] = None,
                    explicit: bool = True, resolver: Optional[Resolver] = None,
                    log=None, unresolved: Optional[list] = None) -> Tuple[TeredoServer, ...]:
    """Resolve a server list in order; `secondary` applies to the first name only.

    explicit (the user named them): the first permanent failure is a UsageError; a
    temporary one (TemporaryFailure) skips the name for now.
    Not explicit (the built-in list): any failure skips the name.
    A skipped name logs `server_skipped` and goes on `unresolved` as (name, reason);
    the result may be empty, which the client reports and retries later (DNS may
    come up after boot).
    """
    log = log or xlog.get("xdp_teredo.servers")
    resolved = []
    for index, name in enumerate(names):
        try:
            resolved.append(resolve_server(name, secondary if index == 0 else None,
                                           resolver=resolver))
        except UsageError as err:
            if explicit and not isinstance(err, TemporaryFailure):
                raise
            log.info("server_skipped", server=name, reason=str(err),
                     temporary=isinstance(err, TemporaryFailure))
            if unresolved is not None:
                unresolved.append((name, str(err)))
    return tuple(resolved)


def servers_for(config, *, resolver: Optional[Resolver] = None, log=None,
                unresolved: Optional[list] = None) -> Tuple[TeredoServer, ...]:
    """resolve_servers for a config.ClientConfig (its list, secondary, explicitness)."""
    return resolve_servers(config.servers, secondary=config.server2,
                           explicit=config.servers_explicit, resolver=resolver, log=log,
                           unresolved=unresolved)


def _require_global(name: str, address: ipaddress.IPv4Address) -> None:
    if not is_global_unicast(address):
        raise UsageError(f"Teredo server {name} has a non global IPv4 address: {address}")
