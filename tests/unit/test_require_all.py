"""tests/conftest.py: under XDP_TEREDO_REQUIRE_ALL=1 (`make test`) a skip is a
failure with its reason; without it, skips stay, with their reason."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest
from tests.conftest import require_tool, skip_or_fail

def test_a_tool_that_is_not_there():
    require_tool("no-such-tool-xt")

def test_a_bare_skip():
    pytest.skip("bare reason")

@pytest.mark.skipif(True, reason="marker reason")
def test_a_skipif():
    pass

@pytest.mark.may_skip("allowed")
def test_a_skip_that_may_stay():
    pytest.skip("fine here")

@pytest.mark.xfail(reason="known")
def test_an_xfail():
    assert False

def test_passes():
    pass
'''


def _run(tmp_path, require_all):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "XDP_TEREDO_REQUIRE_ALL"}
    if require_all:
        env["XDP_TEREDO_REQUIRE_ALL"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "tests.conftest",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_skips_stay_skips_with_their_reason_outside_make_test(tmp_path):
    res = _run(tmp_path, require_all=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 4 skipped, 1 xfailed" in res.stdout
    assert "no-such-tool-xt not installed; `make test` installs it" in res.stdout


def test_under_require_all_every_skip_fails_with_its_reason(tmp_path):
    res = _run(tmp_path, require_all=True)
    assert res.returncode == 1, res.stdout + res.stderr
    # A skip in set-up (skipif, a require_* fixture) is reported as an error there.
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in res.stdout
    for reason in ("no-such-tool-xt not installed; `make test` installs it",
                   "bare reason", "marker reason"):
        assert f"{reason} [XDP_TEREDO_REQUIRE_ALL=1: this must run here, not skip]" \
            in res.stdout, res.stdout


def test_make_test_sets_it():
    makefile = (REPO / "Makefile").read_text()
    target = makefile[makefile.index("\ntest: "):].split("\n\n")[0]
    assert "$(REQUIRE_ALL) $(PYTEST) tests" in target
    assert "REQUIRE_ALL := XDP_TEREDO_REQUIRE_ALL=1" in makefile


@pytest.mark.parametrize("value, on", [("1", True), ("", False), ("0", False)])
def test_the_switch(value, on, monkeypatch):
    code = "import tests.conftest as c; print(c.REQUIRE_ALL)"
    env = {**os.environ, "XDP_TEREDO_REQUIRE_ALL": value}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(on)
