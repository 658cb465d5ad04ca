"""docs/interop.md is what tools/interop.py renders from docs/interop.json: the page
says what the last run of tests/e2e/test_nat_matrix.py saw, nothing else."""

import json

import pytest

from tools import interop


def test_the_page_is_the_rendering_of_the_results():
    doc = interop.DOC.read_text()
    assert interop.BEGIN in doc and interop.END in doc
    assert doc == interop.render(interop.load(), doc), \
        "docs/interop.md is stale: rerun tests/e2e/test_nat_matrix.py"


def test_results_name_known_cells_only():
    for row, columns in interop.load().items():
        assert row in interop.ROWS
        for column, outcome in columns.items():
            assert column in interop.COLUMN_IDS and set(outcome) <= set(interop.CHECKS)


def test_record_keeps_other_cells(tmp_path):
    path = tmp_path / "r.json"
    interop.record("open", "ours-ours", {"ping_there": True, "ping_back": False}, path)
    table = interop.record("symmetric", "ours-ours", {"ping_there": True}, path)
    assert table == json.loads(path.read_text())
    assert table["open"]["ours-ours"] == {"ping_there": True, "ping_back": False}
    with pytest.raises(ValueError):
        interop.record("full-cone", "ours-ours", {}, path)


def test_cell_text():
    assert interop.cell_text(None) == "not run"
    text = interop.cell_text({c: True for c in interop.CHECKS} | {"tcp_back": False})
    assert text == "ping ✓✓ TCP ✓✗ UDP ✓✓"
