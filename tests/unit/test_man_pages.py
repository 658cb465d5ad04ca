"""docs/man/man1 is exactly what tools/gen_man.py makes from the click help: no
hand-kept copy (as test_shared_header.py does for the C header)."""

import importlib.util
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generator():
    spec = importlib.util.spec_from_file_location("gen_man",
                                                  os.path.join(ROOT, "tools", "gen_man.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_pages_are_what_the_generator_makes():
    gen = _generator()
    assert gen.stale() == [], "docs/man/man1 is stale: run tools/gen_man.py (make man)"


def test_one_page_per_command_and_nothing_hidden():
    gen = _generator()
    pages = gen.render()
    from xdp_teredo.cli import cli

    assert set(pages) == {"xdp-teredo.1"} | {f"xdp-teredo-{c}.1" for c in cli.commands
                                             if not cli.commands[c].hidden}
    attach = pages["xdp-teredo-attach.1"]
    assert "\\-\\-server ADDR" in attach and "\\-\\-inbound" in attach
    assert "refresh\\-interval" not in attach, "hidden testing knobs stay out of the page"
    assert "_XDP_TEREDO_COMPLETE=bash_source" in pages["xdp-teredo.1"]


def test_the_check_mode_sees_a_changed_and_a_missing_page(tmp_path):
    gen = _generator()
    gen.write(str(tmp_path))
    assert gen.stale(str(tmp_path)) == []
    (tmp_path / "xdp-teredo-decode.1").write_text("hand-edited\n")
    (tmp_path / "xdp-teredo-status.1").unlink()
    (tmp_path / "xdp-teredo-gone.1").write_text("a command that is no more\n")
    assert gen.stale(str(tmp_path)) == ["xdp-teredo-gone.1", "xdp-teredo-decode.1",
                                        "xdp-teredo-status.1"]


def test_man_renders_them_without_warnings():
    if shutil.which("man") is None:
        pytest.skip("man is not installed (man-db): the pages are checked as text above")
    for name in sorted(os.listdir(os.path.join(ROOT, "docs", "man", "man1"))):
        res = subprocess.run(["man", "--warnings", "-l", "-P", "cat",
                              os.path.join(ROOT, "docs", "man", "man1", name)],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "MANWIDTH": "80"})
        assert res.returncode == 0 and res.stderr == "", (name, res.stderr)
        assert "NAME" in res.stdout
