"""miredo.conf parsing, command-line settings and their merge (xdp_teredo/config.py)."""

import ipaddress

import pytest

from xdp_teredo.client import config as cfg
from xdp_teredo.errors import UsageError
from xdp_teredo.client.servers import DEFAULT_SERVERS

from tests.conftest import require_path

# Debian's /etc/miredo.conf as shipped by miredo 1.2.6, verbatim.
DEBIAN_MIREDO_CONF = """\
# Please refer to the miredo.conf(5) man page for details.
InterfaceName\tteredo

# Pick a Teredo server:
#ServerAddress\tteredo.ipv6.microsoft.com
ServerAddress\tteredo-debian.remlab.net

# Some firewall/NAT setups require a specific UDP port number:
#BindPort\t3545
"""


def parse(text, path="miredo.conf"):
    return cfg.parse_miredo_conf(text, path)


def error_of(text, path="miredo.conf"):
    with pytest.raises(UsageError) as info:
        parse(text, path)
    return str(info.value)


# -- the file ---------------------------------------------------------------------------

def test_debian_miredo_conf_is_accepted_as_is():
    settings = parse(DEBIAN_MIREDO_CONF, "/etc/miredo/miredo.conf")
    assert settings.tunnel == "teredo"
    assert settings.servers == ("teredo-debian.remlab.net",)
    assert settings.server2 is None
    assert settings.bind_port is None          # commented out
    assert settings.source == "/etc/miredo/miredo.conf"


def test_every_client_directive():
    settings = parse("""
        RelayType client
        ServerAddress 192.0.2.1
        ServerAddress2 192.0.2.9
        InterfaceName tun-teredo
        BindAddress 198.51.100.7
        BindPort 3545
        InterfaceMTU 1400
    """)
    assert settings.relay_type == cfg.RELAY_CLIENT
    assert settings.servers == ("192.0.2.1",)
    assert settings.server2 == "192.0.2.9"
    assert settings.tunnel == "tun-teredo"
    assert settings.bind_address == ipaddress.IPv4Address("198.51.100.7")
    assert settings.bind_port == 3545
    assert settings.mtu == 1400
    assert settings.notes == ()


def test_directives_are_case_insensitive_and_trailing_comments_allowed():
    settings = parse("serveraddress teredo.example.net   # our own server\n"
                     "BINDPORT 0\n"
                     "   # an indented comment\n"
                     "#BindPort 99 (a disabled directive)\n")
    assert settings.servers == ("teredo.example.net",)
    assert settings.bind_port == 0


@pytest.mark.parametrize("value, expected", [
    ("client", cfg.RELAY_CLIENT), ("autoclient", cfg.RELAY_CLIENT),
    ("cone", cfg.RELAY_CONE), ("relay", cfg.RELAY_CONE), ("Restricted", cfg.RELAY_RESTRICTED),
])
def test_relay_types_follow_miredo(value, expected):
    assert parse(f"RelayType {value}\n").relay_type == expected


def test_syslog_facility_is_accepted_and_ignored_with_a_note():
    settings = parse("ServerAddress 192.0.2.1\nSyslogFacility local3\n", "/etc/m.conf")
    assert len(settings.notes) == 1
    assert settings.notes[0].startswith("/etc/m.conf:2: SyslogFacility local3 is ignored")


@pytest.mark.parametrize("text, message", [
    ("Prefix 2001::\n", "miredo.conf:1: unknown directive 'Prefix'"),
    ("\n\nServerAdress 192.0.2.1\n", "miredo.conf:3: unknown directive 'ServerAdress'"),
    ("ServerAddress\n", "miredo.conf:1: ServerAddress needs a value"),
    ("ServerAddress a b\n", "miredo.conf:1: ServerAddress takes one value, not 2: 'a b'"),
    ("BindPort 65536\n", "miredo.conf:1: BindPort must be between 0 and 65535, not 65536"),
    ("BindPort 0x10\n", "miredo.conf:1: BindPort must be a decimal number, not '0x10'"),
    ("BindPort -1\n", "miredo.conf:1: BindPort must be a decimal number, not '-1'"),
    ("BindAddress eth0\n", "miredo.conf:1: BindAddress must be an IPv4 address, not 'eth0'"),
    ("BindAddress 2001:db8::1\n", "miredo.conf:1: BindAddress must be an IPv4 address"),
    ("RelayType server\n", "miredo.conf:1: invalid RelayType 'server'"),
    ("InterfaceMTU 1279\n", "miredo.conf:1: InterfaceMTU must be between 1280 and 65535"),
    ("InterfaceMTU 70000\n", "miredo.conf:1: InterfaceMTU must be between 1280 and 65535"),
    ("InterfaceName a-name-far-too-long\n", "miredo.conf:1: invalid InterfaceName"),
    ("InterfaceName te/redo\n", "miredo.conf:1: invalid InterfaceName"),
    ("SyslogFacility console\n", "miredo.conf:1: unknown syslog facility 'console'"),
    ("ServerAddress2 192.0.2.2\n",
     "miredo.conf:1: ServerAddress2 without ServerAddress"),
    ("ServerAddress 192.0.2.1\n# x\nServerAddress 192.0.2.5\n",
     "miredo.conf:3: ServerAddress given twice (first at line 1)"),
])
def test_bad_lines_are_one_line_errors_with_file_and_line(text, message):
    error = error_of(text)
    assert error.startswith(message), error
    assert "\n" not in error


def test_load_reads_a_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "miredo.conf"
    path.write_text("ServerAddress 192.0.2.1\nBindPort nope\n")
    with pytest.raises(UsageError, match=rf"^{path}:2: BindPort must be a decimal number"):
        cfg.load_miredo_conf(str(path))
    path.write_text(DEBIAN_MIREDO_CONF)
    assert cfg.load_miredo_conf(str(path)).servers == ("teredo-debian.remlab.net",)


def test_load_of_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read config file .*No such file"):
        cfg.load_miredo_conf(str(tmp_path / "absent.conf"))


def test_the_installed_miredo_conf_parses():
    require_path(cfg.DEFAULT_CONFIG_PATH, "the miredo package is not installed; `make test` "
                                          "installs it")
    settings = cfg.load_miredo_conf(cfg.DEFAULT_CONFIG_PATH)
    assert settings.source == cfg.DEFAULT_CONFIG_PATH


# -- the command line ---------------------------------------------------------------------

def test_command_line_settings_are_checked():
    settings = cfg.command_line(servers=["192.0.2.1", "teredo.example.net"], tunnel="t0",
                                bind_port=3545, user="teredo", xdp_mode="generic")
    assert settings.servers == ("192.0.2.1", "teredo.example.net")
    assert settings.bind_port == 3545
    with pytest.raises(UsageError, match="--bind-port must be between 0 and 65535"):
        cfg.command_line(bind_port=70000)
    with pytest.raises(UsageError, match="invalid --tunnel name"):
        cfg.command_line(tunnel="x" * 16)
    with pytest.raises(UsageError, match="--xdp-mode must be one of"):
        cfg.command_line(xdp_mode="offload")
    with pytest.raises(UsageError, match="invalid --server"):
        cfg.command_line(servers=["bad name"])


def test_command_line_hook_must_be_executable(tmp_path):
    hook = tmp_path / "hook"
    with pytest.raises(UsageError, match=f"--hook {hook} is not an executable file"):
        cfg.command_line(hook=str(hook))
    hook.write_text("#!/bin/sh\n")
    with pytest.raises(UsageError, match="is not an executable file"):
        cfg.command_line(hook=str(hook))
    hook.chmod(0o755)
    assert cfg.command_line(hook=str(hook)).hook == str(hook)


@pytest.mark.parametrize("name", ["teredo", "t", "x" * 15, "tun-0.a_b"])
def test_valid_interface_names(name):
    assert cfg.check_interface_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb"])
def test_invalid_interface_names(name):
    with pytest.raises(UsageError):
        cfg.check_interface_name(name)


# -- the merge ----------------------------------------------------------------------------

FILE = cfg.Settings(source="/etc/miredo/miredo.conf", servers=("192.0.2.1",),
                    server2="192.0.2.9", tunnel="miredo", bind_port=3545, mtu=1400)


def test_defaults_when_nothing_is_given():
    config = cfg.merge(cfg.command_line(), None, default_servers=DEFAULT_SERVERS)
    assert config.servers == DEFAULT_SERVERS
    assert config.server_source == cfg.SOURCE_BUILTIN
    assert not config.servers_explicit
    assert (config.tunnel, config.bind_port, config.mtu, config.user) == ("teredo", 0, 1280,
                                                                          "nobody")
    assert config.bind_address == ipaddress.IPv4Address("0.0.0.0")
    assert config.relay_type == cfg.RELAY_CLIENT
    assert config.config_file is None


def test_the_file_wins_over_the_defaults():
    config = cfg.merge(cfg.command_line(), FILE, default_servers=DEFAULT_SERVERS)
    assert config.servers == ("192.0.2.1",)
    assert config.server2 == "192.0.2.9"
    assert config.server_source == "/etc/miredo/miredo.conf"
    assert config.servers_explicit
    assert (config.tunnel, config.bind_port, config.mtu) == ("miredo", 3545, 1400)
    assert config.config_file == "/etc/miredo/miredo.conf"


def test_the_command_line_wins_over_the_file_key_by_key():
    command = cfg.command_line(tunnel="teredo", bind_port=0)
    config = cfg.merge(command, FILE, default_servers=DEFAULT_SERVERS)
    assert config.tunnel == "teredo"
    assert config.bind_port == 0             # 0 given explicitly still wins over 3545
    assert config.mtu == 1400                # not on the command line: the file's
    assert config.servers == ("192.0.2.1",)  # likewise


def test_command_line_servers_replace_the_file_and_its_server2():
    command = cfg.command_line(servers=["203.0.113.1", "203.0.113.10"])
    config = cfg.merge(command, FILE, default_servers=DEFAULT_SERVERS)
    assert config.servers == ("203.0.113.1", "203.0.113.10")
    assert config.server2 is None
    assert config.server_source == cfg.SOURCE_COMMAND_LINE
    assert any("ServerAddress2 192.0.2.9 is ignored" in note for note in config.notes)


def test_require_client_refuses_relay_modes():
    relay = cfg.merge(cfg.command_line(), cfg.Settings(source="r.conf", relay_type="cone"))
    with pytest.raises(UsageError, match="r.conf: RelayType cone is a relay mode"):
        relay.require_client()
    client = cfg.merge(cfg.command_line(), None)
    assert client.require_client() is client


def test_load_client_config_reads_the_default_file_only_if_it_exists(tmp_path):
    command = cfg.command_line()
    absent = tmp_path / "absent.conf"
    config = cfg.load_client_config(command, default_path=str(absent))
    assert config.servers == DEFAULT_SERVERS
    present = tmp_path / "miredo.conf"
    present.write_text("ServerAddress 198.51.100.1\n")
    config = cfg.load_client_config(command, default_path=str(present))
    assert config.servers == ("198.51.100.1",)
    assert config.config_file == str(present)


def test_load_client_config_requires_an_explicit_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read config file"):
        cfg.load_client_config(cfg.command_line(), str(tmp_path / "absent.conf"))


def test_an_explicit_file_replaces_the_default_one(tmp_path):
    default = tmp_path / "default.conf"
    default.write_text("ServerAddress 198.51.100.1\n")
    chosen = tmp_path / "chosen.conf"
    chosen.write_text("BindPort 4000\n")
    config = cfg.load_client_config(cfg.command_line(), str(chosen),
                                    default_path=str(default), default_servers=("x.test",))
    assert config.servers == ("x.test",)     # the default file was not read
    assert config.bind_port == 4000


def test_client_config_is_frozen():
    config = cfg.merge(cfg.command_line(), None)
    with pytest.raises(Exception):
        config.tunnel = "other"
