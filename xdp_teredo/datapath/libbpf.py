"""The few libbpf calls bcc 0.26 does not give us, through ctypes on libbpf.so.1.

bcc's tables only exist inside the process that compiled the program. Another
process (`xdp-teredo stats`) opens the pinned maps by path (bpf_obj_get) and reads
them through plain map file descriptors; the drivers pin them (bpf_obj_pin, hooks.py). The
same MapFd wrapper serves both, so typed map access (maps.py) is written once.
BPF_PROG_TEST_RUN lives in testrun.py, on the same library handle.

libbpf >= 1.0 returns -errno from these calls (and sets errno); every failure
becomes a BpfError: an OSError (errno) that is also the project's RuntimeFailure.
"""

import ctypes
import ctypes.util
import dataclasses
import errno as errno_mod
import os
from typing import Iterator, Optional, Tuple

from ..errors import RuntimeFailure


class BpfError(OSError, RuntimeFailure):
    """A bpf() call failed: .errno says why."""


_LIB: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1, loaded once (Debian's libbpf1, a dependency of bcc)."""
    global _LIB
    if _LIB is None:
        name = "libbpf.so.1"
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError as err:
            found = ctypes.util.find_library("bpf")
            if not found:
                raise RuntimeFailure(f"cannot load {name} ({err}): install libbpf1") from err
            handle = ctypes.CDLL(found, use_errno=True)
        c_int, c_void_p, c_char_p, c_uint32 = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32
        handle.bpf_map_lookup_elem.argtypes = [c_int, c_void_p, c_void_p]
        handle.bpf_map_update_elem.argtypes = [c_int, c_void_p, c_void_p, ctypes.c_uint64]
        handle.bpf_map_delete_elem.argtypes = [c_int, c_void_p]
        handle.bpf_map_get_next_key.argtypes = [c_int, c_void_p, c_void_p]
        handle.bpf_obj_pin.argtypes = [c_int, c_char_p]
        handle.bpf_obj_get.argtypes = [c_char_p]
        handle.bpf_obj_get_info_by_fd.argtypes = [c_int, c_void_p, ctypes.POINTER(c_uint32)]
        handle.libbpf_num_possible_cpus.argtypes = []
        handle.bpf_prog_get_fd_by_id.argtypes = [c_uint32]
        handle.bpf_prog_test_run_opts.argtypes = [c_int, c_void_p]
        handle.bpf_map_get_fd_by_id.argtypes = [c_uint32]
        handle.bpf_map_lookup_batch.argtypes = [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                                ctypes.POINTER(c_uint32), c_void_p]
        _LIB = handle
    return _LIB


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else (ctypes.get_errno() or errno_mod.EIO)
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def num_possible_cpus() -> int:
    """Per-CPU maps hold one value per *possible* CPU (not online)."""
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"bpf_obj_pin {path}")


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"bpf_obj_get {path}")


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info (uapi/linux/bpf.h), up to the name.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


def prog_name(prog_id: int) -> str:
    """The (16-byte, truncated) name of a loaded program, by id."""
    fd = _check(lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id {prog_id}")
    try:
        info = _ProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
               "bpf_obj_get_info_by_fd")
        return info.name.decode(errors="replace")
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class ProgInfo:
    """What the kernel says about a loaded program (adopt.py finds ours with it).

    tag: the kernel's hash of the instructions with map references zeroed, so two
    loads of the same code have the same tag whatever maps they use.
    """

    id: int
    name: str
    tag: str
    map_ids: Tuple[int, ...]


def prog_info(prog_id: int) -> ProgInfo:
    """Name, tag and map ids of a loaded program, by id (needs CAP_SYS_ADMIN)."""
    fd = _check(lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id {prog_id}")
    try:
        return prog_info_by_fd(fd)
    finally:
        os.close(fd)


def prog_info_by_fd(fd: int) -> ProgInfo:
    # Twice: first to learn how many maps, then with room for their ids.
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "bpf_obj_get_info_by_fd")
    count = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(count, 1))()
    info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
           "bpf_obj_get_info_by_fd")
    return ProgInfo(id=info.id, name=info.name.decode(errors="replace"),
                    tag=bytes(info.tag).hex(), map_ids=tuple(ids[:min(count, info.nr_map_ids)]))


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd on the program with this id (needs CAP_SYS_ADMIN); the caller closes it."""
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    """A new fd on the map with this id (needs CAP_SYS_ADMIN); the caller closes it."""
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"bpf_map_get_fd_by_id {map_id}")


class _MapInfo(ctypes.Structure):
    # The head of struct bpf_map_info (uapi/linux/bpf.h); the kernel fills as much
    # as we give it room for.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2


class MapFd:
    """A BPF map by file descriptor: raw bytes in, raw bytes out.

    Per-CPU maps return one value per possible CPU, each padded to 8 bytes, as
    the kernel lays them out. `owned` maps (opened by path) close their fd.
    """

    def __init__(self, fd: int, owned: bool = False):
        self.fd = fd
        self.owned = owned
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
               "bpf_obj_get_info_by_fd")
        self.map_type = info.type
        self.id = info.id
        self.name = info.name.decode(errors="replace")
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.percpu = info.type in _PERCPU_TYPES
        self.ncpus = num_possible_cpus() if self.percpu else 1
        self.slot_size = (self.value_size + 7) & ~7 if self.percpu else self.value_size

    @classmethod
    def open_pinned(cls, path: str) -> "MapFd":
        return cls(obj_get(path), owned=True)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: bytes):
        if len(key) != self.key_size:
            raise ValueError(f"map {self.name}: key of {len(key)} bytes, want {self.key_size}")
        return ctypes.create_string_buffer(key, self.key_size)

    def lookup(self, key: bytes) -> Optional[bytes]:
        """The raw value (all CPUs' values for a per-CPU map), or None."""
        value = ctypes.create_string_buffer(self.slot_size * self.ncpus)
        ret = lib().bpf_map_lookup_elem(self.fd, self._key(key), value)
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno_mod.ENOENT:
                return None
            _check(ret, f"lookup in map {self.name}")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        want = self.slot_size * self.ncpus
        if len(value) != want:
            raise ValueError(f"map {self.name}: value of {len(value)} bytes, want {want}")
        _check(lib().bpf_map_update_elem(self.fd, self._key(key),
                                         ctypes.create_string_buffer(value, want), flags),
               f"update in map {self.name}")

    def delete(self, key: bytes) -> bool:
        ret = lib().bpf_map_delete_elem(self.fd, self._key(key))
        if ret < 0:
            err = -ret if ret != -1 else ctypes.get_errno()
            if err == errno_mod.ENOENT:
                return False
            _check(ret, f"delete in map {self.name}")
        return True

    def items(self, batch: int = 4096) -> Iterator[Tuple[bytes, bytes]]:
        """Every (key, raw value), `batch` entries per bpf() call
        (BPF_MAP_LOOKUP_BATCH, Linux 5.6): a table of 100,000 peers in tens of
        milliseconds, where a lookup per key takes seconds. A map or kernel
        without batch lookups falls back to keys() and lookup()."""
        slot = self.slot_size * self.ncpus
        keys = ctypes.create_string_buffer(self.key_size * batch)
        values = ctypes.create_string_buffer(slot * batch)
        # The position between calls is opaque to us (a hash bucket for hash maps);
        # the kernel wants room for at least a key.
        token_size = max(self.key_size, 8)
        in_token, out_token = None, ctypes.create_string_buffer(token_size)
        while True:
            count = ctypes.c_uint32(batch)
            ret = lib().bpf_map_lookup_batch(self.fd, in_token, out_token, keys, values,
                                             ctypes.byref(count), None)
            err = 0 if ret >= 0 else (-ret if ret != -1 else ctypes.get_errno())
            if err in (errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP) \
                    and in_token is None:
                yield from self._items_one_by_one()
                return
            if err and err != errno_mod.ENOENT:
                _check(ret, f"read map {self.name}")
            raw_keys, raw_values = keys.raw, values.raw
            for i in range(count.value):
                yield (raw_keys[i * self.key_size:(i + 1) * self.key_size],
                       raw_values[i * slot:(i + 1) * slot])
            if err == errno_mod.ENOENT:  # that was the last of them
                return
            in_token = ctypes.create_string_buffer(out_token.raw, token_size)

    def _items_one_by_one(self) -> Iterator[Tuple[bytes, bytes]]:
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:  # deleted or evicted meanwhile
                yield key, value

    def keys(self) -> Iterator[bytes]:
        """Every key; a hash map that changes meanwhile may repeat or skip some."""
        prev = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib().bpf_map_get_next_key(self.fd, prev, nxt)
            if ret < 0:
                err = -ret if ret != -1 else ctypes.get_errno()
                if err == errno_mod.ENOENT:
                    return
                _check(ret, f"iterate map {self.name}")
            key = nxt.raw
            yield key
            prev = ctypes.create_string_buffer(key, self.key_size)
