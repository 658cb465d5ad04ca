#!/usr/bin/env python3
"""Generate bpf/lib/shared.h from the Python source of truth.

The BPF C and the Python control plane share protocol numbers
(xdp_teredo/teredo/constants.py) and the layout of every map key and value, the
flag bits and the verdict reasons (xdp_teredo/datapath/layout.py). Both are
defined once, in Python; this script writes the C mirror. The header is committed;
tests/unit/test_shared_header.py fails when it differs from what this prints.

    python tools/gen_shared_header.py           # rewrite bpf/lib/shared.h
    python tools/gen_shared_header.py --check   # exit 1 if it is out of date
"""

import argparse
import ctypes
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from xdp_teredo.datapath import layout  # noqa: E402
from xdp_teredo.teredo import constants  # noqa: E402

HEADER_PATH = os.path.join(ROOT, "bpf", "lib", "shared.h")

# Protocol numbers the BPF code needs: (C name, value, why). Values come from
# constants.py; only the selection and the C spelling live here.
PROTOCOL = [
    ("TEREDO_PREFIX_HI32", constants.TEREDO_PREFIX_HI32, "RFC 4380 §2.6: 2001:0000::/32, first 32 bits"),
    ("TEREDO_MTU", constants.TEREDO_MTU, "RFC 4380 §5.1.2: tunnel MTU"),
    ("TEREDO_INDICATOR_AUTH", constants.INDICATOR_AUTH, "RFC 4380 §5.1.1: authentication header"),
    ("TEREDO_INDICATOR_ORIGIN", constants.INDICATOR_ORIGIN, "RFC 4380 §5.1.1: origin indication"),
    ("TEREDO_IPPROTO_UDP", constants.IPPROTO_UDP, "outer transport"),
    ("TEREDO_IPPROTO_NONE", constants.IPPROTO_NONE, "RFC 4380 §2.8: a bubble's next header"),
    ("TEREDO_IPPROTO_ICMPV6", constants.IPPROTO_ICMPV6, "RFC 4443: what a server answers (RS)"),
    ("TEREDO_IPV6_VERSION", constants.IPV6_VERSION, "RFC 8200 §3"),
    ("TEREDO_IPV4_HDR_LEN", constants.IPV4_HDR_LEN, "outer IPv4 header we write (no options)"),
    ("TEREDO_UDP_HDR_LEN", constants.UDP_HDR_LEN, "outer UDP header"),
    ("TEREDO_ENCAP_OVERHEAD", constants.ENCAP_OVERHEAD, "IPv4 + UDP in front of the IPv6 packet"),
    ("TEREDO_IPV6_HDR_LEN", constants.IPV6_HDR_LEN, "fixed IPv6 header"),
    ("TEREDO_ICMPV6_ECHO_REQUEST", constants.ICMPV6_ECHO_REQUEST, "RFC 4443 §4.1"),
    ("TEREDO_ICMPV6_ECHO_REPLY", constants.ICMPV6_ECHO_REPLY, "RFC 4443 §4.2"),
    ("TEREDO_SERVER_FORWARD_MAX_PAYLOAD", constants.SERVER_FORWARD_MAX_PAYLOAD,
     "the longest echo a server forwards (ICMPv6 bytes): nothing that could carry data"),
]

_C_SCALARS = {
    ctypes.c_uint8: "__u8",
    ctypes.c_uint16: "__u16",
    ctypes.c_uint32: "__u32",
    ctypes.c_uint64: "__u64",
}


def _c_field(struct: type, name: str, ctype: type) -> str:
    override = struct._c_types_.get(name)
    if hasattr(ctype, "_length_"):  # ctypes array
        base = _C_SCALARS[ctype._type_]
        return f"{override or base} {name}[{ctype._length_}];"
    return f"{override or _C_SCALARS[ctype]} {name};"


def _check_no_holes(struct: type) -> None:
    """Natural alignment only: then C (x86-64 and BPF) and ctypes agree by construction."""
    end = 0
    types = dict(struct._fields_)
    for name, offset, size in layout.struct_fields(struct):
        if offset != end:
            raise SystemExit(f"{struct.__name__}.{name}: hole before offset {offset}; add explicit padding")
        if offset % ctypes.alignment(types[name]):
            raise SystemExit(f"{struct.__name__}.{name}: not naturally aligned")
        end = offset + size
    if end != ctypes.sizeof(struct):
        raise SystemExit(f"{struct.__name__}: tail padding; add an explicit field")


def _struct(struct: type) -> str:
    _check_no_holes(struct)
    comments = layout.field_comments(struct)
    lines = [f"/* {struct._c_doc_} */", f"struct {struct._c_name_} {{"]
    for name, ctype in struct._fields_:
        decl = _c_field(struct, name, ctype)
        note = comments.get(name)
        lines.append(f"\t{decl:<28} /* {note} */" if note else f"\t{decl}")
    lines.append("};")
    lines.append(f"_Static_assert(sizeof(struct {struct._c_name_}) == {ctypes.sizeof(struct)}, "
                 f"\"struct {struct._c_name_} differs from layout.{struct.__name__}\");")
    return "\n".join(lines)


def _flags(prefix: str, flags: type, doc: str) -> str:
    comments = layout.member_comments(flags)
    lines = [f"/* {doc} */"]
    for member in flags:
        decl = f"#define {prefix}{member.name} 0x{int(member.value):x}"
        note = comments.get(member.name)
        lines.append(f"{decl:<36} /* {note} */" if note else decl)
    return "\n".join(lines)


def _reasons() -> str:
    comments = layout.member_comments(layout.Reason)
    lines = [
        "/* Verdict reasons: the index of the per-CPU stats array. Ordered by kind: ok,",
        " * then pass (untouched, to the stack / control plane), then drop. */",
        "enum teredo_reason {",
    ]
    for reason in layout.Reason:
        decl = f"TEREDO_R_{reason.name} = {int(reason)},"
        lines.append(f"\t{decl:<40} /* {reason.kind.value}: {comments.get(reason.name, '')} */")
    lines.append(f"\tTEREDO_R_MAX = {layout.REASON_COUNT},")
    lines.append("};")
    lines.append(f"#define TEREDO_R_FIRST_PASS {int(layout.FIRST_PASS)}")
    lines.append(f"#define TEREDO_R_FIRST_DROP {int(layout.FIRST_DROP)}")
    return "\n".join(lines)


def render() -> str:
    """The full text of bpf/lib/shared.h."""
    parts = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        "/*",
        " * GENERATED FILE, DO NOT EDIT.",
        " * Made by tools/gen_shared_header.py from xdp_teredo/teredo/constants.py and",
        " * xdp_teredo/datapath/layout.py: change those, then run",
        " *     .venv/bin/python tools/gen_shared_header.py",
        " * tests/unit/test_shared_header.py fails while this file is out of date.",
        " */",
        "#ifndef TEREDO_SHARED_H",
        "#define TEREDO_SHARED_H",
        "",
        "#include <linux/types.h>",
        "",
        "/* Protocol numbers (xdp_teredo/teredo/constants.py). */",
    ]
    for name, value, why in PROTOCOL:
        text = f"0x{value:x}" if value > 0xFFFF else str(value)
        parts.append(f"#define {name:<24} {text:<12} /* {why} */")
    parts += [
        "",
        _flags("TEREDO_CFG_", layout.ConfigFlag, "struct teredo_config.flags"),
        "",
        _flags("TEREDO_PEER_", layout.PeerFlag, "struct teredo_peer.flags"),
        "",
        _flags("TEREDO_SERVER_", layout.ServerFlag, "struct teredo_server_config.flags"),
        "",
        _flags("TEREDO_GUARD_", layout.GuardPolicy, "struct teredo_guard_config.policy"),
        "",
        _flags("TEREDO_FLOW_", layout.FlowState, "struct teredo_flow.state (xdp_teredo/teredo/guard.py)"),
        "",
        "/* struct teredo_xdp_meta.magic of a frame our XDP program decapsulated. */",
        f"#define TEREDO_XDP_META_MAGIC 0x{layout.XDP_META_MAGIC:08x}U",
        "",
    ]
    for struct in layout.STRUCTS:
        parts += [_struct(struct), ""]
    parts += [_reasons(), "", "#endif /* TEREDO_SHARED_H */", ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the header is out of date")
    parser.add_argument("--output", default=HEADER_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(args.output) as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{args.output} is out of date: run tools/gen_shared_header.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
