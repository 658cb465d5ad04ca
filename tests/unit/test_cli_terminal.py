"""The terminal user: shell completion from click, `status` in colour only on a
terminal (and never with NO_COLOR)."""

import io
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from xdp_teredo import cli as cli_mod
from xdp_teredo import client as teredo_client
from xdp_teredo.daemon import render

QUALIFIED = {"state": "qualified", "address": "2001:0:c000:201::1", "server": "192.0.2.1",
             "interface": "eth0"}


def _complete(*words, shell="bash"):
    """What the shell's completion function asks the command (click's protocol)."""
    env = {**os.environ, "_XDP_TEREDO_COMPLETE": f"{shell}_complete",
           "COMP_WORDS": " ".join(["xdp-teredo", *words]), "COMP_CWORD": str(len(words))}
    res = subprocess.run([sys.executable, "-c", "from xdp_teredo.cli import main; main()"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [line.split(",", 1)[1] for line in res.stdout.splitlines()]


def test_bash_completion_script():
    env = {**os.environ, "_XDP_TEREDO_COMPLETE": "bash_source"}
    res = subprocess.run([sys.executable, "-c", "from xdp_teredo.cli import main; main()"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "complete -o nosort -F _xdp_teredo_completion xdp-teredo" in res.stdout


def test_commands_options_choices_and_interfaces_complete():
    assert _complete("st") == ["stats", "status"]
    assert _complete("attach", "--xdp-mode", "") == ["auto", "native", "generic", "off"]
    assert "--restart-safe" in _complete("attach", "--re")
    if os.path.exists("/sys/class/net/lo"):
        assert _complete("attach", "l") == ["lo"]
        assert _complete("relay", "--ipv4-iface", "l") == ["lo"]


def test_colour_only_on_a_terminal_and_without_no_color():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert render.colour_wanted(Tty(), {}) is True
    assert render.colour_wanted(Tty(), {"NO_COLOR": "1"}) is False
    assert render.colour_wanted(Tty(), {"NO_COLOR": ""}) is True   # no-color.org: set and non-empty
    assert render.colour_wanted(io.StringIO(), {}) is False


@pytest.mark.parametrize("state, colour", [("qualified", "32"), ("qualifying", "33"),
                                           ("offline", "31")])
def test_the_state_is_coloured_when_asked(state, colour):
    lines = render.status_lines({**QUALIFIED, "state": state}, colour=True)
    assert f"\x1b[{colour}m" in lines[0] and state in lines[0]
    assert all("\x1b[" not in line for line in lines[1:])
    assert "\x1b[" not in "".join(render.status_lines({**QUALIFIED, "state": state}))


def test_status_through_a_pipe_has_no_escape_codes(monkeypatch):
    monkeypatch.setattr(teredo_client, "query_status", lambda tunnel: QUALIFIED)
    res = CliRunner().invoke(cli_mod.cli, ["status"])
    assert res.exit_code == 0 and "qualified" in res.output and "\x1b[" not in res.output


def test_status_on_a_terminal_is_in_colour_unless_no_color(monkeypatch):
    monkeypatch.setattr(teredo_client, "query_status", lambda tunnel: QUALIFIED)
    monkeypatch.setattr(render, "colour_wanted", lambda stream, environ: not environ.get("NO_COLOR"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[32m" in CliRunner().invoke(cli_mod.cli, ["status"]).output
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in CliRunner().invoke(cli_mod.cli, ["status"]).output
