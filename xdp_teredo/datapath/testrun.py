"""BPF_PROG_TEST_RUN: run a loaded program on a packet without any device.

bcc 0.26 has no Python API for it, so this goes through libbpf.so.1's
bpf_prog_test_run_opts. Things to know (docs/kernel-notes.md):
- a SCHED_CLS test run always parses an Ethernet header first, so a tc program
  written for the L3 tun sees 14 more bytes than it would there (our config's
  l2_len says where the IPv6 header is);
- the context is reused on every repeat: a program that grows or shrinks the
  packet does so again each time, and a tc encap returns -EALREADY from the second
  repeat on; time such programs with repeat=1 in a loop;
- XDP runs with 256 bytes of headroom, so bpf_xdp_adjust_head/meta work, and the
  output starts at the metadata (ctx_out's data field says how long it is).
"""

import ctypes
import struct
from dataclasses import dataclass
from typing import Optional

from . import libbpf


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts, libbpf 1.1 (/usr/include/bpf/bpf.h, libbpf-dev).
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


# struct xdp_md (uapi/linux/bpf.h): data, data_end, data_meta, ingress_ifindex,
# rx_queue_index, egress_ifindex.
_XDP_MD = struct.Struct("=6I")
# The kernel refuses an output buffer too small for what the program produced.
_HEADROOM = 512


@dataclass(frozen=True)
class RunResult:
    retval: int          # the program's return value, as the kernel gave it (u32)
    data: bytes          # the packet afterwards (for XDP: metadata + frame)
    duration_ns: int     # average per repetition, as measured by the kernel
    meta_len: int = 0    # XDP only: bytes of metadata at the start of `data`

    @property
    def signed(self) -> int:
        """retval as a C int (helpers' negative errnos show up as such)."""
        return self.retval - (1 << 32) if self.retval >= 1 << 31 else self.retval

    @property
    def frame(self) -> bytes:
        """The packet without any XDP metadata in front."""
        return self.data[self.meta_len:]

    @property
    def meta(self) -> bytes:
        return self.data[: self.meta_len]


def run(prog_fd: int, data: bytes, *, repeat: int = 1, ctx_in: Optional[bytes] = None,
        ctx_out_size: int = 0) -> RunResult:
    """Run the program once (or `repeat` times) on `data`. Raises BpfError (an OSError)."""
    if not data:
        raise ValueError("BPF_PROG_TEST_RUN needs at least one byte of packet")
    data_in = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = len(data) + _HEADROOM
    data_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts()
    opts.sz = ctypes.sizeof(opts)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = out_size
    opts.repeat = repeat
    ctx_in_buf = ctx_out_buf = None
    if ctx_in is not None:
        ctx_in_buf = ctypes.create_string_buffer(ctx_in, len(ctx_in))
        opts.ctx_in = ctypes.cast(ctx_in_buf, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx_in)
    if ctx_out_size:
        ctx_out_buf = ctypes.create_string_buffer(ctx_out_size)
        opts.ctx_out = ctypes.cast(ctx_out_buf, ctypes.c_void_p)
        opts.ctx_size_out = ctx_out_size
    ret = libbpf.lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    libbpf._check(ret, "bpf_prog_test_run_opts")
    out = data_out.raw[: opts.data_size_out]
    meta_len = 0
    if ctx_out_buf is not None and opts.ctx_size_out >= _XDP_MD.size:
        meta_len = _XDP_MD.unpack_from(ctx_out_buf.raw)[0]  # xdp_md.data: offset of the frame
    return RunResult(opts.retval, out, opts.duration, meta_len)


def run_xdp(prog_fd: int, frame: bytes, *, repeat: int = 1, ingress_ifindex: int = 0) -> RunResult:
    """An XDP test run that also reports the metadata length.

    With a context, the kernel insists on data == 0 and data_end == len(frame).
    """
    ctx = _XDP_MD.pack(0, len(frame), 0, ingress_ifindex, 0, 0)
    return run(prog_fd, frame, repeat=repeat, ctx_in=ctx, ctx_out_size=_XDP_MD.size)
