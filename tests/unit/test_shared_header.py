"""bpf/lib/shared.h mirrors the Python source of truth, and C agrees on layouts.

1. The committed header is exactly what tools/gen_shared_header.py generates now.
2. gcc compiles a small program against that header that prints sizeof/offsetof of
   every struct and field, and the numbers equal what ctypes computes (layout.py).
3. The enum contract the BPF code relies on (reasons ordered ok < pass < drop).
"""

import ctypes
import importlib.util
import os
import subprocess

import pytest

from tests.conftest import require_tool
from xdp_teredo.datapath import layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generator():
    spec = importlib.util.spec_from_file_location("gen_shared_header",
                                                  os.path.join(ROOT, "tools", "gen_shared_header.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_header_is_up_to_date():
    gen = _generator()
    with open(gen.HEADER_PATH) as f:
        committed = f.read()
    assert committed == gen.render(), "bpf/lib/shared.h is stale: run tools/gen_shared_header.py"
    assert "GENERATED FILE, DO NOT EDIT" in committed


def test_check_mode_detects_a_stale_header(tmp_path):
    gen = _generator()
    stale = tmp_path / "shared.h"
    stale.write_text(gen.render().replace("TEREDO_MTU               1280", "TEREDO_MTU               1500"))
    assert gen.main(["--check", "--output", str(stale)]) == 1
    stale.write_text(gen.render())
    assert gen.main(["--check", "--output", str(stale)]) == 0


def test_c_layout_equals_ctypes_layout(tmp_path):
    gcc = require_tool("gcc")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "shared.h"', "int main(void) {"]
    expected = []
    for struct in layout.STRUCTS:
        c = f"struct {struct._c_name_}"
        lines.append(f'printf("{struct._c_name_} %zu %zu\\n", sizeof({c}), _Alignof({c}));')
        expected.append(f"{struct._c_name_} {ctypes.sizeof(struct)} {ctypes.alignment(struct)}")
        for name, offset, size in layout.struct_fields(struct):
            lines.append(f'printf("{struct._c_name_}.{name} %zu %zu\\n", offsetof({c}, {name}), '
                         f"sizeof((({c} *)0)->{name}));")
            expected.append(f"{struct._c_name_}.{name} {offset} {size}")
    for reason in layout.Reason:
        lines.append(f'printf("TEREDO_R_{reason.name} %d\\n", (int)TEREDO_R_{reason.name});')
        expected.append(f"TEREDO_R_{reason.name} {int(reason)}")
    lines.append('printf("TEREDO_R_MAX %d\\n", (int)TEREDO_R_MAX);')
    expected.append(f"TEREDO_R_MAX {layout.REASON_COUNT}")
    lines.append('printf("magic %u\\n", TEREDO_XDP_META_MAGIC);')
    expected.append(f"magic {layout.XDP_META_MAGIC}")
    lines += ["return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([gcc, "-std=c11", "-Wall", "-Werror", "-I", os.path.join(ROOT, "bpf", "lib"), str(src),
                    "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[:-1] == expected


def test_reasons_are_ordered_by_kind():
    kinds = [r.kind for r in layout.Reason]
    assert kinds == sorted(kinds, key=[layout.Kind.OK, layout.Kind.PASS, layout.Kind.DROP].index)
    assert [int(r) for r in layout.Reason] == list(range(layout.REASON_COUNT)), "dense: array indexes"
    assert layout.Reason.DECAPSULATED.kind == layout.Kind.OK
    assert layout.Reason.RX_BUBBLE.kind == layout.Kind.PASS
    assert layout.Reason.RX_IPV4_CHECKSUM.kind == layout.Kind.DROP
    assert len({r.key for r in layout.Reason}) == layout.REASON_COUNT


def test_every_reason_and_flag_is_commented_in_the_header():
    text = _generator().render()
    for reason in layout.Reason:
        line = next(l for l in text.splitlines() if f"TEREDO_R_{reason.name} =" in l)
        assert "/*" in line and len(line.split("/*")[1].strip(" */")) > 10, line


def test_docs_explain_every_reason():
    with open(os.path.join(ROOT, "docs", "datapath.md")) as f:
        doc = f.read()
    missing = [r.key for r in layout.Reason if f"| `{r.key}` | {r.kind.value} |" not in doc]
    assert not missing, f"docs/datapath.md lacks (or mislabels) {missing}"


@pytest.mark.parametrize("struct", layout.STRUCTS, ids=lambda s: s.__name__)
def test_no_implicit_padding(struct):
    end = 0
    for _, offset, size in layout.struct_fields(struct):
        assert offset == end
        end = offset + size
    assert end == ctypes.sizeof(struct)
