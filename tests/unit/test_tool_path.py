"""The lab finds its tools (ip, tc, sysctl, ...) with a PATH that lacks /usr/sbin."""

import shutil

import pytest

from xdp_teredo.lab import netns


def test_sbin_is_appended_once_and_order_is_kept():
    assert netns.tool_path("/usr/bin:/bin") == "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    assert netns.tool_path("/usr/sbin:/usr/bin") == "/usr/sbin:/usr/bin:/usr/local/sbin:/sbin"
    assert netns.tool_path("") == ":".join(netns.SBIN_DIRS)


def test_a_lab_command_runs_with_a_path_without_sbin(monkeypatch):
    # tc is in /usr/sbin only on Debian (ip is in /usr/bin as well).
    if shutil.which("tc", path="/usr/sbin:/sbin") is None:
        pytest.skip("iproute2's tc is not in /usr/sbin or /sbin here")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    # `tc -V` touches no namespace; it only has to be found.
    assert "iproute2" in netns.run(["tc", "-V"]).stdout
    assert "/usr/sbin" in netns.tool_env()["PATH"]
