"""The hook script runner (xdp_teredo/hook.py), with real shell scripts.

Each script records its environment in a file; the tests read back what the script
really saw, run by run.
"""

import os
import time

import pytest
from structlog.testing import capture_logs

from xdp_teredo.client import hook as H
from xdp_teredo.errors import UsageError

ADDRESS = "2001:0:c000:201:0:cfc6:3fff:fd74"
ADDRESS2 = "2001:0:c000:201:0:cfc6:3fff:fd00"
CONE_ADDRESS = "2001:0:c000:201:8000:cfc6:3fff:fd74"
LL = "fe80::ffff:ffff:ffff"
LL_CONE = "fe80::8000:5445:5245:444f"
BASE_ENV = {"PATH": "/usr/bin:/bin", "KEEP_ME": "yes",
            # Stale values in our own environment must never reach a run unset.
            "ADDRESS": "stale", "OLD_MTU": "stale"}


def script(tmp_path, body: str, name="hook.sh"):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def recorder(tmp_path):
    """A hook that appends its environment (NUL-separated) to runs.log, then a marker."""
    log = tmp_path / "runs.log"
    path = script(tmp_path, f'env -0 >> "{log}"; printf "\\n==END==\\n" >> "{log}"\n')

    def runs():
        text = log.read_text() if log.exists() else ""
        result = []
        for chunk in text.split("\n==END==\n")[:-1]:
            env = dict(item.split("=", 1) for item in chunk.split("\0") if "=" in item)
            result.append(env)
        return result

    return path, runs


def hook_vars(env):
    return {k: v for k, v in env.items() if k in H.HOOK_VARIABLES}


def test_miredo_environment_across_a_lifetime(recorder):
    path, runs = recorder
    hook = H.Hook(path, iface="teredo", ifindex=7, base_env=BASE_ENV)
    with capture_logs():
        assert hook.up(ADDRESS, LL, 1280).ok
        assert hook.up(ADDRESS2, LL, 1400).ok       # requalified: a new mapping
        assert hook.down().ok                       # server lost
        assert hook.up(CONE_ADDRESS, LL_CONE, 1280).ok
        assert hook.destroy().ok                    # exit: down, then destroy
        assert hook.destroy() is None               # once only
    seen = [hook_vars(env) for env in runs()]
    assert seen == [
        {"STATE": "up", "ADDRESS": ADDRESS, "LLADDRESS": LL, "MTU": "1280",
         "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "down"},
        {"STATE": "up", "ADDRESS": ADDRESS2, "LLADDRESS": LL, "MTU": "1400",
         "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "up", "OLD_ADDRESS": ADDRESS,
         "OLD_LLADDRESS": LL, "OLD_MTU": "1280"},
        {"STATE": "down", "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "up",
         "OLD_ADDRESS": ADDRESS2, "OLD_LLADDRESS": LL, "OLD_MTU": "1400"},
        {"STATE": "up", "ADDRESS": CONE_ADDRESS, "LLADDRESS": LL_CONE, "MTU": "1280",
         "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "down"},
        # Miredo's last two runs keep the OLD_ values of the last change.
        {"STATE": "down", "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "up",
         "OLD_ADDRESS": CONE_ADDRESS, "OLD_LLADDRESS": LL_CONE, "OLD_MTU": "1280"},
        {"STATE": "destroy", "IFACE": "teredo", "IFINDEX": "7", "OLD_STATE": "up",
         "OLD_ADDRESS": CONE_ADDRESS, "OLD_LLADDRESS": LL_CONE, "OLD_MTU": "1280"},
    ]


def test_the_rest_of_the_environment_is_inherited(recorder):
    path, runs = recorder
    with capture_logs():
        H.Hook(path, iface="teredo", ifindex=7, base_env=BASE_ENV).down()
    env = runs()[0]
    assert env["KEEP_ME"] == "yes"
    assert env["PATH"] == "/usr/bin:/bin"
    assert "ADDRESS" not in env and "OLD_MTU" not in env


def test_addresses_are_passed_compressed(recorder):
    path, runs = recorder
    with capture_logs():
        H.Hook(path, iface="t", ifindex=1, base_env={}).up(
            "2001:0000:c000:0201:0000:cfc6:3fff:fd74", "FE80:0:0:0:0:FFFF:FFFF:FFFF", 1280)
    env = runs()[0]
    assert (env["ADDRESS"], env["LLADDRESS"]) == (ADDRESS, LL)


def test_output_goes_to_the_log_line_by_line(tmp_path):
    path = script(tmp_path, 'echo "adding $ADDRESS"\necho "to stderr" >&2\n')
    with capture_logs() as logs:
        result = H.Hook(path, iface="teredo", ifindex=3).up(ADDRESS, LL, 1280)
    lines = [e["line"] for e in logs if e["event"] == "hook_output"]
    assert lines == [f"adding {ADDRESS}", "to stderr"]
    assert result.output == f"adding {ADDRESS}\nto stderr\n"
    assert [e["event"] for e in logs][-1] == "hook_ran"


def test_a_failing_hook_is_logged_not_fatal(tmp_path):
    path = script(tmp_path, "echo broken\nexit 3\n", "failing.sh")
    hook = H.Hook(path, iface="teredo", ifindex=3)
    with capture_logs() as logs:
        first = hook.up(ADDRESS, LL, 1280)
        second = hook.down()
    assert (first.returncode, first.ok, first.timed_out) == (3, False, False)
    assert second.returncode == 3       # the next change still runs it
    failures = [e for e in logs if e["event"] == "hook_failed"]
    assert [(e["state"], e["returncode"], e["log_level"]) for e in failures] == [
        ("up", 3, "warning"), ("down", 3, "warning")]


def test_a_hook_that_hangs_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    path = script(tmp_path, f'sleep 60 &\necho $! > "{pid_file}"\nwait\n', "hangs.sh")
    started = time.monotonic()
    with capture_logs() as logs:
        result = H.Hook(path, iface="teredo", ifindex=3, timeout=0.5).down()
    assert time.monotonic() - started < 5
    assert result.timed_out and result.returncode is None and not result.ok
    assert any(e["event"] == "hook_failed" and "timed out" in e["error"] for e in logs)
    child = int(pid_file.read_text())
    # The background sleep died with the script's process group.
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_a_hook_leaving_a_background_process_returns_when_it_exits(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    path = script(tmp_path, f'sleep 30 &\necho $! > "{pid_file}"\necho started\nexit 0\n',
                  "daemonises.sh")
    started = time.monotonic()
    try:
        with capture_logs():
            result = H.Hook(path, iface="teredo", ifindex=3, timeout=10).down()
        assert time.monotonic() - started < 5     # did not wait for the sleep's stdout
        assert result.ok and result.output == "started\n"
    finally:
        os.kill(int(pid_file.read_text()), 9)


def test_a_hook_that_cannot_run_is_logged_not_fatal(tmp_path):
    path = tmp_path / "bad-interpreter.sh"
    path.write_text("#!/nonexistent/shell\n")
    path.chmod(0o755)
    with capture_logs() as logs:
        result = H.Hook(str(path), iface="teredo", ifindex=3).down()
    assert result.returncode is None and result.error
    assert logs[-1]["event"] == "hook_failed"


def test_no_hook_does_nothing():
    hook = H.Hook(None, iface="teredo", ifindex=3)
    assert hook.up(ADDRESS, LL, 1280) is None
    assert hook.down() is None
    assert hook.destroy() is None


@pytest.mark.parametrize("kind", ["absent", "directory", "not executable"])
def test_a_hook_that_is_not_an_executable_file_is_a_usage_error(tmp_path, kind):
    path = tmp_path / "hook"
    if kind == "directory":
        path.mkdir()
    elif kind == "not executable":
        path.write_text("#!/bin/sh\n")   # mode 0644: even root may not execute it
    with pytest.raises(UsageError, match="is not an executable file"):
        H.Hook(str(path), iface="teredo", ifindex=3)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False
