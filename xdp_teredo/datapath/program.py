"""The compiled and loaded (not attached) programs of one role, and their maps.

Built on file descriptors, whoever loaded them: compile() here, with bcc (tests,
tools), or compile_isolated() in a child process that hands them over
(isolated.py: the daemons, which so never load bcc and LLVM). A role's driver
(client.py, relay.py) subclasses Program and declares what differs: ROLE (its
maps, registry.py), PROGRAMS, its default peer table size, its extra wrappers.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import isolated, kheaders, probe, registry, source
from .guard import GuardMaps
from .isolated import ProgramFd
from .libbpf import MapFd
from .limits import SlowPathMaps
from .maps import ConfigMap, PeerTable, Snapshot, StatsTable

_log = log.get("xdp_teredo.datapath")


class Program:
    ROLE = ""                                   # registry.CLIENT / RELAY / SERVER
    PROGRAMS: Dict[str, Tuple[str, str]] = {}   # our name -> (C function, bcc program type)
    PEER_MAX = constants.PEER_LIST_MAX

    def __init__(self, functions: Dict[str, ProgramFd], maps: Dict[str, MapFd],
                 cflags: List[str], reused: Tuple[str, ...] = (), *, bpf=None,
                 features: Optional[List[probe.Feature]] = None):
        # bcc's object when compiled here: it owns the descriptors (cleanup()).
        # Without one, functions and maps own theirs (ProgramFd, MapFd owned=True).
        self.bpf = bpf
        self.functions = functions
        self.cflags = cflags
        # Maps that are a running data path's, not fresh ones (compile(maps=...)).
        self.reused = reused
        # The kernel's features as the compiling child probed them; None: attach
        # probes them in this process (probe.run, with bcc).
        self.features = features
        self.maps = maps
        # Every role counts its verdicts and admits its slow path; the peer list,
        # the client/relay config and the guard are the tunnel roles' (the server's
        # unit has none of them: registry.py).
        self.statistics = StatsTable(maps["stats"])
        tunnel = "peers" in maps
        self.peers = PeerTable(maps["peers"]) if tunnel else None
        self.config = ConfigMap(maps["config"]) if tunnel else None
        self.guard = GuardMaps.of(maps) if tunnel else None
        # Admission to the slow path (limits.py); no limit until written.
        self.slow_path = SlowPathMaps.of(maps)
        self.attachment = None

    @classmethod
    def compile(cls, *, peer_max: Optional[int] = None, ttl: int = 64,
                cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                debug: int = 0, maps: Optional[Dict[str, MapFd]] = None):
        """Compile the role's unit with bcc and load every program (verifier), in
        this process (which keeps bcc and LLVM loaded: see compile_isolated).

        peer_max (peer table capacity) and ttl (outer IPv4 TTL) become -D flags,
        with every other capacity of the registry; cflags are passed as they are.
        maps: a running data path's maps by name (adopt.open_maps): the programs
        use those instead of fresh ones wherever the layout is the same
        (`_reuse_maps`); the caller still closes what it passed.
        """
        try:
            from bcc import BPF
        except ImportError as err:
            raise RuntimeFailure(f"bcc is not importable ({err}): install python3-bpfcc "
                                 "(run `make setup`)") from err
        headers = kheaders.export()
        if headers is None and not os.path.exists(f"/lib/modules/{os.uname().release}/build"):
            raise RuntimeFailure("no kernel headers for bcc: run `make setup` "
                                 "(tools/kernel-headers.sh)")
        source_dir = source_dir or source.bpf_dir()
        peer_max = cls.PEER_MAX if peer_max is None else peer_max
        capacities = {"TEREDO_PEER_MAX": int(peer_max)} if "peers" in registry.names(cls.ROLE) else {}
        flags = [f"-I{source_dir}", f"-DTEREDO_TTL={int(ttl)}",
                 *registry.cflags(cls.ROLE, capacities), *cflags]
        src = source.unit_path(cls.ROLE, source_dir)
        text = source.text(cls.ROLE, source_dir)
        try:
            bpf = BPF(text=text.encode(), cflags=flags, debug=debug)
        except Exception as err:  # bcc raises plain Exception; clang's errors went to stderr
            raise RuntimeFailure(f"cannot compile {src}: {err}") from err
        functions = {}
        try:
            reused = _reuse_maps(bpf, cls.ROLE, maps or {})
            for name, (func, kind) in cls.PROGRAMS.items():
                try:
                    fn = bpf.load_func(func.encode(), getattr(BPF, kind))
                except Exception as err:
                    raise RuntimeFailure(f"the verifier rejected {func}: {err}") from err
                functions[name] = ProgramFd(fn.fd, func, owned=False)
            prog = cls(functions, {name: MapFd(bpf[name.encode()].map_fd)
                                   for name in registry.names(cls.ROLE)},
                       flags, tuple(reused), bpf=bpf)
        except BaseException:
            bpf.cleanup()
            raise
        _log.info("datapath_compiled", role=cls.ROLE, source=src, cflags=flags,
                  kernel_headers=headers.path if headers else None, reused_maps=reused or None)
        return prog

    @classmethod
    def compile_isolated(cls, *, peer_max: Optional[int] = None, ttl: int = 64,
                         cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                         debug: int = 0, maps: Optional[Dict[str, MapFd]] = None,
                         timeout: float = isolated.TIMEOUT):
        """compile() in a short-lived child process (isolated.py), which also probes
        the kernel's features: this process never imports bcc. The same options and
        the same RuntimeFailure messages; `maps` are passed to the child (the
        caller still closes its own). What the daemons use."""
        return cls.compile_started(peer_max=peer_max, ttl=ttl, cflags=cflags,
                                   source_dir=source_dir, debug=debug, maps=maps,
                                   timeout=timeout).result()

    @classmethod
    def compile_started(cls, *, peer_max: Optional[int] = None, ttl: int = 64,
                        cflags: Tuple[str, ...] = (), source_dir: Optional[str] = None,
                        debug: int = 0, maps: Optional[Dict[str, MapFd]] = None,
                        timeout: float = isolated.TIMEOUT) -> isolated.Compiling:
        """compile_isolated() without waiting: the child compiles while the caller
        goes on; `.result()` (once its fileno() is readable) is the Program."""
        options = {"peer_max": int(cls.PEER_MAX if peer_max is None else peer_max),
                   "ttl": int(ttl), "cflags": list(cflags), "source_dir": source_dir,
                   "debug": int(debug)}
        return isolated.start(
            cls.ROLE, options, maps, timeout=timeout,
            make=lambda got: cls(got.programs, got.maps, got.cflags, got.reused,
                                 features=got.features))

    def fd(self, program: str) -> int:
        """File descriptor of a program by our name (PROGRAMS), for test runs."""
        return self.functions[program].fd

    def stats(self) -> Snapshot:
        return self.statistics.read()

    def reset(self) -> None:
        """Empty the tables and the counters, zero the config (tests)."""
        self.statistics.clear()
        self.slow_path.clear()
        for table in (self.peers, self.config, self.guard):
            if table is not None:
                table.clear()

    def close(self) -> None:
        """Detach if attached, then free the programs and maps (each descriptor
        once: bcc's by bcc, received ones by their owners here)."""
        if self.attachment is not None:
            self.attachment.detach()
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None
        for fn in self.functions.values():
            fn.close()
        for m in self.maps.values():
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reuse_maps(bpf, role: str, maps: Dict[str, MapFd]) -> List[str]:
    """Make the programs about to be loaded use `maps` instead of bcc's fresh ones.

    bcc creates every map while it compiles and writes the map's fd *number* into
    the instructions; the kernel turns that number into a map when the program is
    loaded (load_func). Putting another map on the same number in between (dup2)
    makes the programs, and bcc's table objects, use it. Only a map with the same
    type, key and value size is taken (its capacity may differ: a running table
    keeps its own); the others stay fresh, and are logged.
    """
    reused = []
    # By our names; the running maps may be named as the kernel keeps them.
    given = {name[:registry.NAME_LEN]: old for name, old in maps.items()}
    for name in registry.names(role):
        old = given.pop(name[:registry.NAME_LEN], None)
        if old is None:
            continue
        fd = bpf[name.encode()].map_fd
        fresh = MapFd(fd)
        if (fresh.map_type, fresh.key_size, fresh.value_size) != \
                (old.map_type, old.key_size, old.value_size):
            _log.warning("map_not_reused", map=name, reason="layout changed",
                         running=[old.map_type, old.key_size, old.value_size],
                         ours=[fresh.map_type, fresh.key_size, fresh.value_size])
            continue
        os.dup2(old.fd, fd, inheritable=False)
        reused.append(name)
    for name in sorted(given):
        _log.warning("map_not_reused", map=name, reason="this build has no such map")
    return reused
