"""tools/setup-test-deps.sh leaves a Miredo the user runs alone (issue: `make test`
stopped it). Run with stub commands first on PATH: nothing on the host is touched."""

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stub(directory, name, body):
    path = directory / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_running_miredo_that_was_installed_before_is_left_alone(tmp_path):
    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir()
    log = f'echo "$(basename "$0") $*" >> {calls}'
    _stub(stubs, "id", "echo 0")
    _stub(stubs, "dpkg-query", f"{log}; printf 'install ok installed'")   # all installed
    _stub(stubs, "pgrep", f'{log}; [ "$2" = miredo ] && echo 4242; exit 0')  # the user's miredo
    for name in ("systemctl", "pkill", "apt-get", "kill"):
        _stub(stubs, name, f"{log}; exit 0")
    res = subprocess.run(["bash", os.path.join(ROOT, "tools", "setup-test-deps.sh")],
                         env={**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    made = calls.read_text().splitlines()
    assert not [c for c in made if c.startswith(("systemctl", "pkill", "kill", "apt-get"))], made
    assert "stopped" not in res.stderr and "disabled" not in res.stderr


def test_the_set_up_scripts_find_sbin_tools_with_a_short_path():
    res = subprocess.run(["bash", "-c", f". {ROOT}/tools/lib.sh; echo $PATH"],
                         env={**os.environ, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10)
    assert res.stdout.strip() == "/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
