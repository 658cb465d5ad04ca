"""The `xdp-teredo` command line: click only, thin commands, one library call each.

Any TeredoError becomes one line on stderr and exit 2 (usage/input) or 1
(runtime). click's own usage errors exit 2 as well.
"""

import functools
import json
import sys

import click

from . import __version__, log
from .errors import TeredoError


def _fail(err: TeredoError) -> None:
    click.echo(f"xdp-teredo: error: {err}", err=True)
    sys.exit(err.exit_code)


def handles_errors(fn):
    """Turn the project's errors into a one-line message and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TeredoError as err:
            _fail(err)

    return wrapper


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)


def _emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=None, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xdp-teredo")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]), default="auto",
              show_default=True, help="Log rendering: console on a terminal, JSON lines otherwise.")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")
def cli(log_format: str, verbose: int, quiet: int) -> None:
    """Teredo (RFC 4380) with its packet path in the kernel (XDP and tc).

    Shell completion: eval "$(_XDP_TEREDO_COMPLETE=bash_source xdp-teredo)" in
    ~/.bashrc (zsh_source, fish_source for those shells).
    """
    log.configure(log_format, verbose - quiet)


@cli.command()
@click.argument("address")
@json_option
@handles_errors
def decode(address: str, as_json: bool) -> None:
    """Say what a Teredo address (2001::/32) contains.

    Exit 2, with one line, for anything that is not a Teredo address someone could
    use: outside 2001::/32, or a server or client that is not a unicast IPv4
    address (2001:: would be server 0.0.0.0).
    """
    from .teredo.address import TeredoAddress

    info = TeredoAddress.parse_usable(address).describe()
    if as_json:
        _emit_json(info)
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@json_option
@handles_errors
def check(as_json: bool) -> None:
    """Preflight: can `attach` work on this machine? Exit 0 only if so."""
    from .daemon import preflight

    results = preflight.run_all()
    ok = all(r.ok for r in results)
    if as_json:
        _emit_json({"ok": ok, "checks": [r.as_dict() for r in results]})
    else:
        for r in results:
            mark = "pass" if r.ok else "FAIL"
            line = f"[{mark}] {r.name:<14} {r.detail}"
            if not r.ok and r.fix:
                line += f"  -> {r.fix}"
            click.echo(line)
        click.echo("ready: attach can work here" if ok else "not ready: fix the failed checks above")
    sys.exit(0 if ok else 1)


def _interfaces(ctx, param, incomplete: str):
    """Shell completion of an interface name: the devices of this network namespace."""
    import os

    try:
        names = sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []
    return [n for n in names if n.startswith(incomplete)]


def _rate_option(name: str, default: float, help_text: str):
    return click.option(name, type=float, default=default, show_default=True, help=help_text)


def _stats_interval_option(fn):
    return click.option("--stats-interval", type=float, default=0.0, metavar="SECONDS",
                        help="Log the counters every SECONDS (0: never).")(fn)


def _metrics_option(fn):
    """--metrics, shared by attach, relay and server (daemon/metrics.py, docs/metrics.md)."""
    return click.option("--metrics", "metrics", default=None, metavar="HOST:PORT",
                        help="Serve Prometheus metrics on HOST:PORT (/metrics): "
                             "127.0.0.1:9417, [::1]:9417, :9417 for every address.")(fn)


def _metrics_address(value):
    """The checked --metrics value, or None (UsageError, exit 2, on a bad one)."""
    if value is None:
        return None
    from .daemon.metrics import parse_address

    return parse_address(value)


# The server's defaults appear in --help; the modules are light (no bcc, no pyroute2).
from . import server as _teredo_server  # noqa: E402
from .client.config import XDP_MODES  # noqa: E402


@cli.command()
@click.option("--bind", metavar="ADDR",
              help="Primary public IPv4 address (UDP 3544); the one clients are given.")
@click.option("--bind2", metavar="ADDR2", help="Secondary address.  [default: ADDR + 1]")
@click.option("--native-ipv6/--no-native-ipv6", default=True, show_default=True,
              help="Forward clients' echo tests to native IPv6 (RFC 4380 §5.2.9).")
@_rate_option("--source-pps", _teredo_server.DEFAULT_SOURCE_PPS,
              "Packets/s one IPv4 address can make the server send.")
@_rate_option("--source-bps", _teredo_server.DEFAULT_SOURCE_BPS,
              "Bytes/s one IPv4 address can make the server send.")
@_rate_option("--global-pps", _teredo_server.DEFAULT_GLOBAL_PPS,
              "Packets/s the server sends in all (0: no overall limit).")
@_rate_option("--global-bps", _teredo_server.DEFAULT_GLOBAL_BPS,
              "Bytes/s the server sends in all (0: no overall limit).")
@click.option("--max-sources", type=click.IntRange(min=1),
              default=_teredo_server.DEFAULT_MAX_SOURCES,
              show_default=True,
              help="Addresses tracked by the rate limiter (least recent evicted).")
@click.option("--xdp-mode", type=click.Choice(list(_teredo_server.XDP_MODES)), default="auto",
              show_default=True,
              help="Answer Router Solicitations in XDP on the addresses' device: "
                   "native, generic, auto (native, else generic, else none), off.")
@_rate_option("--xdp-ra-pps", _teredo_server.DEFAULT_XDP_RA_PPS,
              "RAs/s the XDP fast path sends in all (0: no limit).")
@_stats_interval_option
@_metrics_option
@click.option("--status", "show_status", is_flag=True,
              help="Print the JSON status of the server running in this network namespace.")
@handles_errors
def server(bind, bind2, native_ipv6, source_pps, source_bps, global_pps, global_bps,
           max_sources, xdp_mode, xdp_ra_pps, stats_interval, metrics, show_status) -> None:
    """Run a Teredo server (RFC 4380 §5.3) on two consecutive public IPv4 addresses."""
    from .errors import UsageError

    if show_status:
        _emit_json(_teredo_server.query_status())
        return
    if not bind:
        raise UsageError("--bind ADDR is required (the server's primary public IPv4 address)")
    metrics_address = _metrics_address(metrics)
    sys.exit(_teredo_server.serve(_teredo_server.config_from_options(
        bind, bind2, native_ipv6=native_ipv6, source_pps=source_pps, source_bps=source_bps,
        global_pps=global_pps, global_bps=global_bps, max_sources=max_sources,
        stats_interval=stats_interval, xdp_mode=xdp_mode, xdp_ra_pps=xdp_ra_pps),
        metrics=metrics_address))


@cli.command()
@click.option("--pin-root", envvar="XDP_TEREDO_PIN_ROOT", metavar="DIR",
              help="Where running data paths pin their maps [env XDP_TEREDO_PIN_ROOT; "
                   "default /sys/fs/bpf/xdp-teredo]. `ip netns exec` hides /sys/fs/bpf: "
                   "see docs/datapath.md.")
@click.option("--instance", metavar="NAME",
              help="Which pinned instance (netns<inode>-if<ifindex>), when this "
                   "network namespace runs several.")
@click.option("--tunnel", default="teredo", show_default=True, metavar="NAME",
              help="Ask the client of this tunnel first (its control socket).")
@click.option("--all", "show_all", is_flag=True, help="Also list the reasons still at 0.")
@json_option
@handles_errors
def stats(pin_root: str, instance, tunnel: str, show_all: bool, as_json: bool) -> None:
    """Packet counters of the data path running in this network namespace.

    Fast path (decapsulated, encapsulated, ...), slow path (left to the stack and
    the control plane) and drops, one line per reason, summed over CPUs.
    """
    import os

    # Light imports only: reading pinned maps needs libbpf (ctypes), not bcc.
    from . import client as teredo_client
    from .daemon import control, render
    from .datapath import stats as dp_stats
    from .errors import RuntimeFailure

    snapshot = None
    if not instance and not pin_root:
        # A running client or relay answers over its abstract unix socket, which is
        # per network namespace and so works under `ip netns exec` and after the
        # daemon dropped root (it pins nothing then).
        try:
            snapshot = teredo_client.query("stats", tunnel)
            source = f"the daemon of tunnel {tunnel!r} (its control socket)"
        except control.NotRunning:
            snapshot = None
    if snapshot is None:
        pin_root = pin_root or dp_stats.DEFAULT_PIN_ROOT
        if not instance and not dp_stats.is_bpffs(pin_root):
            # Typically `ip netns exec`, which mounts a fresh /sys without the bpffs.
            raise RuntimeFailure(
                f"no client answers on tunnel {tunnel!r} and no bpffs at {pin_root}: under "
                "`ip netns exec` use `nsenter --net=/run/netns/NAME xdp-teredo stats`, or pin "
                "under a bpffs mounted outside /sys (--pin-root, XDP_TEREDO_PIN_ROOT)")
        source = dp_stats.find(pin_root, instance)
        snapshot = dp_stats.read(pin_root=pin_root, instance=os.path.basename(source))
    if as_json:
        _emit_json(render.stats_json(snapshot, source))
        return
    for line in render.stats_lines(snapshot, source, show_all):
        click.echo(line)


# -- the client: attach, status, peers, detach (xdp_teredo/client/) ---------------------

class _OneLineUsage(click.Command):
    """A bad option or a missing argument is one line and exit 2, like every other
    bad input of `attach` (click would print usage and a hint around it)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            from .errors import UsageError

            _fail(UsageError(err.format_message()))


def _tunnel_option(fn):
    return click.option("--tunnel", "tunnel", default=None, metavar="NAME",
                        help="The client's tunnel device.  [default: teredo]")(fn)


def _inbound_options(default: str, who: str):
    """--inbound and --allow, shared by attach and relay (docs/security.md)."""

    def decorate(fn):
        fn = click.option(
            "--allow", "allow", multiple=True, metavar="PROTO/PORT",
            help=f"With --inbound stateful, also let new connections to this port of {who} "
                 "in: tcp/22, udp/53, tcp/8000-8080. Repeatable.")(fn)
        return click.option(
            "--inbound", type=click.Choice(["stateful", "open"]), default=default,
            show_default=True,
            help=f"IPv6 arriving over Teredo for {who}: stateful lets in only replies to "
                 "conversations started here, --allow'ed ports and the ICMPv6 IPv6 needs; "
                 "open lets everything in.")(fn)

    return decorate


def _inbound_settings(inbound: str, allow, default: str):
    """The checked guard settings (UsageError, exit 2, on a bad --allow)."""
    from .teredo import guard

    return guard.Settings.from_options(inbound, allow, default=guard.Policy(default))


def _hidden_seconds(name: str, help_text: str):
    # Testing knobs: the protocol's timers, shortened so that tests wait seconds
    # rather than the RFC's 30 s / 100 s. Hidden from --help.
    return click.option(name, type=float, default=None, hidden=True, help=help_text)


@cli.command(cls=_OneLineUsage)
@click.argument("interface", metavar="IFACE", shell_complete=_interfaces)
@click.option("--server", "servers", multiple=True, metavar="ADDR",
              help="Teredo server (name or IPv4), repeatable, tried in order.  "
                   "[default: the config file's ServerAddress, else the built-in list]")
@_tunnel_option
@click.option("--bind-port", type=int, default=None, metavar="N",
              help="UDP port of the Teredo socket.  [default: 0, the kernel picks]")
@click.option("--user", default=None, metavar="USER",
              help="Run as USER after set-up, keeping CAP_NET_ADMIN only.  [default: nobody]")
@click.option("--hook", default=None, metavar="PATH",
              help="Run PATH on every change with Miredo's client-hook environment.")
@click.option("--xdp-mode", type=click.Choice(list(XDP_MODES)), default=None,
              help="Receive hook on IFACE. auto: per device, XDP where the driver has "
                   "native XDP, tc on a veth (containers) or a driver without it (`status` "
                   "says which and why); native/generic: XDP in that mode; off: tc.  "
                   "[default: auto]")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="A miredo.conf.  [default: /etc/miredo/miredo.conf if it exists]")
@click.option("--restart-safe", is_flag=True, default=False,
              help="SIGHUP hands over: leave the fast path running for the next "
                   "instance and exit 0 (an upgrade loses no packet). Without it SIGHUP "
                   "stops like SIGTERM. A crash or SIGKILL always leaves the fast path, "
                   "and every start adopts it (docs/reliability.md).")
@click.option("--peer-max", type=int, default=None, hidden=True,
              help="Capacity of the BPF peer table (tests fill a tiny one).")
@click.option("--upnp/--no-upnp", default=True, show_default=True,
              help="Ask a UPnP gateway on IFACE's network (SSDP) to map our UDP port "
                   "(RFC 6081 §4.3), in the background; removed at exit.")
@click.option("--veth-offloads", type=click.Choice(["finish", "pass"]), default="finish",
              show_default=True,
              help="On a veth IFACE (containers, namespaces), the checksums and GSO the "
                   "host left to offload. finish: round the client's checksum veth first, "
                   "so that a Teredo peer decapsulating in userspace on this host "
                   "(Miredo) reads them right, except to peers that answered an echo "
                   "left unfinished (GSO kept whole); pass: as they are for every peer, "
                   "GSO kept whole but for UDP GSO (only when every such peer "
                   "decapsulates in the kernel, as ours does).")
@_inbound_options("stateful", "this host")
@_metrics_option
@_hidden_seconds("--refresh-interval", "Seconds between maintenance RSs (RFC: 30).")
@_hidden_seconds("--qualification-timeout", "Seconds to wait for an RA (RFC: 4).")
@_hidden_seconds("--restart-delay", "Seconds offline before trying again (Miredo: 100).")
@_hidden_seconds("--peer-expiry", "Seconds before an idle peer is forgotten (300).")
@_hidden_seconds("--sync-interval", "Seconds between reads of the BPF peer table (5).")
@handles_errors
def attach(interface, servers, tunnel, bind_port, user, hook, xdp_mode, config_path,
           restart_safe, peer_max, refresh_interval, qualification_timeout, restart_delay,
           peer_expiry, sync_interval, upnp, veth_offloads, inbound, allow, metrics) -> None:
    """Give this host IPv6 over Teredo through IFACE (until SIGINT/SIGTERM)."""
    from . import client as teredo_client
    from .client import config as client_config
    from .client.plan import Timers

    inbound_settings = _inbound_settings(inbound, allow, "stateful")
    metrics_address = _metrics_address(metrics)

    settings = client_config.command_line(
        servers=servers, tunnel=tunnel, bind_port=bind_port, interface=interface,
        user=user, hook=hook, xdp_mode=xdp_mode)
    given = {"refresh_interval": refresh_interval,
             "qualification_timeout": qualification_timeout,
             "restart_delay": restart_delay, "peer_expiry": peer_expiry,
             "sync_interval": sync_interval}
    timers = Timers(**{k: v for k, v in given.items() if v is not None})
    extra = {"peer_max": peer_max} if peer_max is not None else {}
    extra["inbound"] = inbound_settings
    sys.exit(teredo_client.attach(settings, config_path, timers, restart_safe=restart_safe,
                                  metrics=metrics_address, upnp=upnp,
                                  veth_offloads=veth_offloads, **extra))


@cli.command()
@_tunnel_option
@json_option
@handles_errors
def status(tunnel, as_json: bool) -> None:
    """State of the client (or relay) of this network namespace. Exit 0 only when
    qualified (a relay: relaying); 3: running but not there; 1: nothing runs.

    The state is in colour only when stdout is a terminal and NO_COLOR is not set.
    """
    from . import client as teredo_client
    from .daemon import render

    info = teredo_client.query_status(tunnel or "teredo")
    if as_json:
        _emit_json(info)
    else:
        import os

        colour = render.colour_wanted(sys.stdout, os.environ)
        for line in render.status_lines(info, colour=colour):
            click.echo(line, color=colour)
    ready = "relaying" if info.get("role") == "relay" else "qualified"
    sys.exit(0 if info.get("state") == ready else 3)


@cli.command()
@_tunnel_option
@json_option
@handles_errors
def peers(tunnel, as_json: bool) -> None:
    """The peer table of the client of this network namespace (BPF map + pending)."""
    from . import client as teredo_client
    from .daemon import render

    rows = teredo_client.query_peers(tunnel or "teredo")
    if as_json:
        _emit_json(rows)
        return
    for line in render.peer_lines(rows):
        click.echo(line)


@cli.command(cls=_OneLineUsage)
@click.argument("interface", metavar="IFACE", shell_complete=_interfaces)
@_tunnel_option
@handles_errors
def detach(interface, tunnel) -> None:
    """Remove what a killed client left on IFACE (XDP, tc filters, pins, its tunnel, its checksum veth)."""
    from . import client as teredo_client

    removed = teredo_client.detach(interface, tunnel or "teredo")
    for line in removed:
        click.echo(f"removed {line}")
    if not removed:
        click.echo("nothing to remove")


# --- relay (RFC 4380 §5.4): self-contained; the heavy imports happen when it runs.

@cli.command()
@click.option("--ipv4-iface", metavar="IF4", shell_complete=_interfaces,
              help="The device on the IPv4 internet, where Teredo clients reach the relay.")
@click.option("--ipv6-iface", metavar="IF6", shell_complete=_interfaces,
              help="The device on the native IPv6 network the relay serves 2001::/32 to "
                   "(may be IF4).")
@click.option("--bind", metavar="ADDR",
              help="The relay's public IPv4 address.  [default: IF4's first global one]")
@click.option("--port", type=click.IntRange(1, 65535), default=3544, show_default=True,
              help="The relay's UDP port.")
@click.option("--path", "path", type=click.Choice(["auto", "xdp", "tc"]), default="auto",
              show_default=True,
              help="Fast path hook: auto picks XDP per device only where the other side "
                   "takes XDP-redirected frames, tc elsewhere (docs/relay.md).")
@click.option("--tunnel", default="teredo", show_default=True, metavar="NAME",
              help="The tun device that 2001::/32 is routed into (the slow path).")
@click.option("--max-peers", type=click.IntRange(min=16), default=65536, show_default=True,
              help="Capacity of the BPF peer table (136 bytes of kernel memory each).")
@click.option("--learn/--no-learn", default=True, show_default=True,
              help="Take clients whose IPv6 source embeds their UDP source (§5.4.2) as "
                   "trusted on their first packet, in the fast path.")
@click.option("--pin-root", envvar="XDP_TEREDO_PIN_ROOT", metavar="DIR", default=None,
              help="Where the maps are pinned for `xdp-teredo stats` [env XDP_TEREDO_PIN_ROOT; "
                   "default /sys/fs/bpf/xdp-teredo].")
@_stats_interval_option
@_metrics_option
@click.option("--announce-table", type=int, default=None, metavar="N",
              help="While relaying, keep the route 2001::/32 (via the tunnel, proto 144) in "
                   "kernel routing table N, for a routing daemon to announce "
                   "(docs/scaling.md).")
@click.option("--status", "show_status", is_flag=True,
              help="Print the JSON status of the relay running in this network namespace.")
@click.option("--user", default="nobody", show_default=True, metavar="USER",
              help="Run as USER after set-up, keeping CAP_NET_ADMIN only (root: stay root, "
                   "and pin the maps).")
@_inbound_options("open", "the Teredo clients it serves")
@handles_errors
def relay(ipv4_iface, ipv6_iface, bind, port, path, tunnel, max_peers, learn, pin_root,
          stats_interval, metrics, announce_table, show_status, user, inbound, allow) -> None:
    """Run a Teredo relay (RFC 4380 §5.4) between IF4 and IF6 (until SIGINT/SIGTERM)."""
    import ipaddress

    from . import client as teredo_client
    from . import relay as teredo_relay
    from .errors import UsageError

    if show_status:
        _emit_json(teredo_client.query("status", tunnel))
        return
    if not ipv4_iface or not ipv6_iface:
        raise UsageError("--ipv4-iface IF4 and --ipv6-iface IF6 are required")
    try:
        address = ipaddress.IPv4Address(bind.strip()) if bind else None
    except ValueError:
        raise UsageError(f"--bind {bind!r}: not an IPv4 address") from None
    if stats_interval < 0:
        raise UsageError(f"--stats-interval {stats_interval}: must be 0 (off) or positive")
    inbound_settings = _inbound_settings(inbound, allow, "open")
    metrics_address = _metrics_address(metrics)
    if announce_table is not None:
        from .relay.announce import check_table

        check_table(announce_table)
    sys.exit(teredo_relay.relay(teredo_relay.RelayConfig(
        ipv4_iface=ipv4_iface, ipv6_iface=ipv6_iface, bind=address, port=port, tunnel=tunnel,
        path=path, max_peers=max_peers, learn=learn, pin_root=pin_root,
        stats_interval=stats_interval, inbound=inbound_settings, user=_relay_user(user),
        announce_table=announce_table), metrics=metrics_address))


def _relay_user(user: str) -> str:
    """--user, checked before anything is touched (UsageError, exit 2)."""
    import pwd

    from .errors import UsageError

    if user != "root":
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise UsageError(f"no such user: {user!r} (--user)") from None
    return user


def main() -> None:
    cli(prog_name="xdp-teredo")


if __name__ == "__main__":
    main()
