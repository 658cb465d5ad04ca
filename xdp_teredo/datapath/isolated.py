"""Compile and load the BPF programs in a short-lived child process, so that the
daemons never load bcc.

Why: bcc compiles with LLVM/clang inside libbcc. A daemon that compiles in its own
process keeps libbcc mapped and keeps what the compile allocated (docs/benchmarks.md,
Memory: ~225 MiB against Miredo's ~7). A loaded program and its maps, however, are
kernel objects reachable through file descriptors, and descriptors can be handed to
another process (SCM_RIGHTS over a unix socket). So a child compiles, loads
(verifier), runs the feature probes (probe.py, also bcc), sends the descriptors and
exits; the daemon builds its ClientDatapath / RelayDatapath on them and never imports bcc.

    loaded = isolated.load("client", {"peer_max": 1024}, maps=running_maps)
    prog = ClientDatapath(loaded.programs, loaded.maps, ...)   # Program.compile_isolated

Why a new interpreter (subprocess, running main() below with the request as JSON)
and not fork(): the daemon is single-threaded when it compiles, so forking would be
safe, but the child would be a copy of the daemon: its control socket (the lock
against a second instance) and its tun held open while LLVM compiles, pyroute2's
sockets and the logging set-up shared. A new interpreter starts clean and inherits
only the descriptors named in pass_fds: its end of the socketpair, and the running
maps to compile against (adoption after a restart, program._reuse_maps). The price
is an interpreter start, small next to the compile. The child runs as the daemon
does at that point: root, before the daemon drops its privileges.

The protocol: one SOCK_SEQPACKET message from the child, JSON + descriptors:
    {"ok": true, "programs": [[key, name], ...], "maps": [name, ...], "cflags": [...],
     "reused": [...], "features": [...], "log": [...]}     fds: programs, then maps
    {"ok": false, "error": "one line", "log": [...]}       no fds
The child's log events travel in "log" and are logged again by the daemon, so
that they come out in the daemon's format (log.py); clang's and the verifier's own
messages go to the daemon's stderr, as with an in-process compile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .. import log
from ..errors import RuntimeFailure
from .libbpf import MapFd

# What the child builds: our name -> (module, class); both have compile(**options).
KINDS = {"client": ("xdp_teredo.datapath.client", "ClientDatapath"),
         "relay": ("xdp_teredo.datapath.relay", "RelayDatapath"),
         "server": ("xdp_teredo.datapath.server", "ServerDatapath")}
MODULE = "xdp_teredo.datapath.isolated"
# A first compile takes a few seconds; a loaded 2-core machine, several times that.
TIMEOUT = 180.0
# How long a child that answered may take to exit before it is killed.
EXIT_GRACE = 10.0
# Room for the answer; SCM_MAX_FD (253) descriptors fit in one message.
_MAX_REPLY = 1 << 20
_MAX_FDS = 253
# linux/prctl.h
_PR_SET_PDEATHSIG = 1

_log = log.get("xdp_teredo.datapath.isolated")


@dataclasses.dataclass
class ProgramFd:
    """A loaded program by file descriptor, as attach needs it (fd, name): bcc's
    function objects have the same two attributes. `owned` descriptors (received
    from the child) are closed by close(); bcc closes its own (BPF.cleanup)."""

    fd: int
    name: str
    owned: bool = True

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


@dataclasses.dataclass
class Loaded:
    """What the child sent: owned programs and maps, and what it learned."""

    programs: Dict[str, ProgramFd]
    maps: Dict[str, MapFd]
    cflags: List[str]
    reused: Tuple[str, ...]
    features: list  # probe.Feature, from the child's probe.run()

    def close(self) -> None:
        """Close every descriptor once (the program built on them takes them over)."""
        for prog in self.programs.values():
            prog.close()
        for m in self.maps.values():
            m.close()


# -- the daemon's side ----------------------------------------------------------------


def load(kind: str, options: dict, maps: Optional[Dict[str, MapFd]] = None, *,
         timeout: float = TIMEOUT) -> Loaded:
    """Compile and load `kind` (KINDS) with `options` (those of its compile()) in a
    child process; its programs and maps, received as descriptors.

    maps: running maps to compile against (compile(maps=...)); they are passed to
    the child, and the caller still closes its own. Every failure is one
    RuntimeFailure: the child's own (the same message as an in-process compile),
    or that the child died, said nothing or took longer than `timeout` seconds.
    Nothing is left open and no child is left behind on any path.
    """
    return start(kind, options, maps, timeout=timeout).loaded()


def start(kind: str, options: dict, maps: Optional[Dict[str, MapFd]] = None, *,
          timeout: float = TIMEOUT, make=None) -> "Compiling":
    """load() without waiting: the child is started and compiles while the caller
    goes on (the client qualifies on its slow path meanwhile). The answer is read
    with Compiling.result() once its socket is readable (an event loop's reader),
    or at once, blocking; Compiling.cancel() kills and reaps the child."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}")
    passed = {name: m.fd for name, m in (maps or {}).items()}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.set_inheritable(ours.fileno(), False)
    request = {"kind": kind, "options": options, "socket": theirs.fileno(), "maps": passed,
               "parent": os.getpid()}
    try:
        proc = subprocess.Popen(
            _child_argv(request), pass_fds=(theirs.fileno(), *passed.values()),
            stdin=subprocess.DEVNULL,
            # stdout to the daemon's stderr: nothing the child prints lands in
            # output the daemon's caller may parse.
            stdout=2, env=_child_env())
    except (OSError, subprocess.SubprocessError) as err:
        ours.close()
        raise RuntimeFailure(f"cannot start the process that compiles the data path: {err}") from err
    finally:
        # Only the child holds its end now: its exit is our end-of-file.
        theirs.close()
    return Compiling(kind, proc, ours, timeout, make)


class Compiling:
    """A compile under way in a child process (start()).

    fileno(): the socket the answer arrives on, for an event loop; `deadline`
    (time.monotonic()) after which the caller gives up. result() is called once:
    the Loaded (or make(loaded)), or one RuntimeFailure; either way the child is
    reaped and the socket closed. cancel() is the teardown's: idempotent."""

    def __init__(self, kind: str, proc: subprocess.Popen, sock: socket.socket,
                 timeout: float, make=None):
        self.kind = kind
        self.proc = proc
        self.sock: Optional[socket.socket] = sock
        self.timeout = timeout
        self.make = make
        self.started = time.monotonic()
        self.deadline = self.started + timeout

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def loaded(self) -> Loaded:
        """Wait for the answer (at most until the deadline): the descriptors."""
        if self.sock is None:
            raise RuntimeFailure("the compile was cancelled")
        sock, self.sock = self.sock, None
        proc = self.proc
        try:
            reply, fds = _receive(sock, proc, max(0.0, self.deadline - time.monotonic()),
                                  self.timeout)
        finally:
            sock.close()
            status = _reap(proc)
        try:
            for event in reply.get("log", ()):
                _replay(event, proc.pid)
            if not reply.get("ok"):
                raise RuntimeFailure(str(reply.get("error") or "the data path did not compile"))
        except BaseException:
            _close_fds(fds)
            raise
        loaded = _loaded(reply, fds)  # owns the descriptors from here, also when it fails
        _log.debug("datapath_received", kind=self.kind, pid=proc.pid, exit_status=status,
                   seconds=round(time.monotonic() - self.started, 3),
                   programs=sorted(loaded.programs), maps=len(loaded.maps))
        return loaded

    def result(self):
        """loaded(), then make(loaded) if a `make` was given (see build())."""
        loaded = self.loaded()
        if self.make is None:
            return loaded
        try:
            return self.make(loaded)
        except BaseException:
            loaded.close()
            raise

    def cancel(self) -> None:
        """Stop the child and forget its answer. After the daemon dropped root
        the child (still root) cannot be signalled: closing our end makes its
        answer fail, and PR_SET_PDEATHSIG kills it when the daemon exits."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        if self.proc.returncode is not None:
            return
        try:
            self.proc.kill()
        except (PermissionError, ProcessLookupError):
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass


def build(kind: str, options: dict, make, maps: Optional[Dict[str, MapFd]] = None, *,
          timeout: float = TIMEOUT):
    """load(), then make(loaded) (a ClientDatapath / RelayDatapath taking the descriptors
    over); if make fails, every descriptor is closed before the error goes on."""
    return start(kind, options, maps, timeout=timeout, make=make).result()


def _child_argv(request: dict) -> List[str]:
    # `-c` rather than `-m MODULE`: the package imports this module (program.py),
    # and runpy would run it a second time as __main__ (and warn on stderr).
    return [sys.executable, "-c", f"import sys; from {MODULE} import main; sys.exit(main())",
            json.dumps(request)]


def _child_env() -> Dict[str, str]:
    """The daemon's environment (BCC_KERNEL_SOURCE, XDP_TEREDO_BPF_DIR, ...), with
    this very package first on the path: the child must run the code the daemon
    runs, whatever the working directory and however the daemon was started."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _receive(sock: socket.socket, proc: subprocess.Popen, timeout: float,
             limit: Optional[float] = None) -> Tuple[dict, List[int]]:
    """The child's one message: (decoded JSON, descriptors). Received descriptors
    are close-on-exec: the hooks and scripts the daemon runs later get none.
    `timeout`: how long to wait from now; `limit`: the whole allowance, for the message."""
    timeout = max(timeout, 0.001)
    limit = timeout if limit is None else limit
    sock.settimeout(timeout)
    try:
        data, fds, flags, _ = socket.recv_fds(sock, _MAX_REPLY, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except socket.timeout:
        try:
            proc.kill()
        except (PermissionError, ProcessLookupError):
            pass  # root's child after the drop: PR_SET_PDEATHSIG ends it with us
        raise RuntimeFailure(f"compiling the data path took more than {limit:g} s "
                             f"(pid {proc.pid}, stopped)") from None
    except OSError as err:
        raise RuntimeFailure(f"no answer from the process that compiles the data path: "
                             f"{err}") from err
    if not data:
        _close_fds(fds)
        status = _reap(proc)
        raise RuntimeFailure(f"the process that compiles the data path (pid {proc.pid}) "
                             f"{_describe_exit(status)} without an answer")
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError("the answer was truncated")
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        _close_fds(fds)
        raise RuntimeFailure(f"the process that compiles the data path sent a bad answer "
                             f"({err})") from err
    return reply, fds


def _loaded(reply: dict, fds: List[int]) -> Loaded:
    """The Loaded these descriptors make up. Takes them over: on failure, every
    one of them is closed, once."""
    from .probe import Feature

    loaded = Loaded({}, {}, [], (), [])
    rest = list(fds)
    try:
        programs = [(str(key), str(name)) for key, name in reply.get("programs", ())]
        names = [str(name) for name in reply.get("maps", ())]
        if len(fds) != len(programs) + len(names):
            raise RuntimeFailure(f"the process that compiles the data path sent {len(fds)} "
                                 f"descriptors for {len(programs)} programs and {len(names)} maps")
        loaded.cflags = [str(flag) for flag in reply.get("cflags", ())]
        loaded.reused = tuple(str(name) for name in reply.get("reused", ()))
        loaded.features = [Feature(**f) for f in reply.get("features", ())]
        for key, name in programs:
            loaded.programs[key] = ProgramFd(rest[0], name)
            rest.pop(0)
        for name in names:
            loaded.maps[name] = MapFd(rest[0], owned=True)  # reads its type and sizes
            rest.pop(0)
    except BaseException as err:
        loaded.close()
        _close_fds(rest)
        if isinstance(err, (TypeError, ValueError)):
            raise RuntimeFailure(f"the process that compiles the data path sent a bad "
                                 f"answer ({err})") from err
        raise
    return loaded


def _reap(proc: subprocess.Popen) -> int:
    """Wait for the child; kill it if it does not end soon. Its exit status."""
    try:
        return proc.wait(timeout=EXIT_GRACE if proc.returncode is None else None)
    except subprocess.TimeoutExpired:
        try:
            proc.kill()
        except PermissionError:
            return -1   # root's child after the drop: PR_SET_PDEATHSIG ends it with us
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _describe_exit(status: int) -> str:
    if status < 0:
        return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_LEVELS = {"debug", "info", "warning", "error", "critical"}


def _replay(event: dict, pid: int) -> None:
    """Log one of the child's events again, in the daemon's format."""
    if not isinstance(event, dict):
        return
    event = dict(event)
    logger = log.get(str(event.pop("logger", "xdp_teredo.datapath")))
    level = str(event.pop("level", "info"))
    text = str(event.pop("event", ""))
    getattr(logger, level if level in _LEVELS else "info")(text, compiled_by=pid, **event)


# -- the child's side -----------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    """Compile as asked, answer on the socket, exit. Always answers if it can: a
    failure becomes {"ok": false, "error": ...} rather than a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        request = json.loads(argv[0])
        sock = socket.socket(fileno=int(request["socket"]))
    except (IndexError, ValueError, KeyError, TypeError, OSError) as err:
        print(f"{MODULE}: bad request ({err}); this module is started by the daemons",
              file=sys.stderr)
        return 2
    _die_with_parent(request.get("parent"))
    events = _capture_logs()
    fds: List[int] = []
    try:
        reply, fds = _build(request)
    except RuntimeFailure as err:
        reply = {"ok": False, "error": str(err)}
    except Exception as err:  # noqa: BLE001 (anything else still reaches the daemon as one line)
        reply = {"ok": False, "error": f"compiling the data path failed: "
                                       f"{type(err).__name__}: {err}"}
    reply["log"] = events
    data = json.dumps(reply, default=str).encode()
    if len(data) > _MAX_REPLY:
        reply = {"ok": False, "error": "the answer is too long", "log": []}
        data, fds = json.dumps(reply).encode(), []
    try:
        socket.send_fds(sock, [data], fds)
    except OSError as err:  # the daemon is gone, or gave up waiting
        print(f"{MODULE}: cannot answer ({err})", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return 0


def _die_with_parent(parent: Optional[int]) -> None:
    """SIGKILL when the daemon dies (PR_SET_PDEATHSIG): its compile is of no use
    to anyone else. Best effort: without it, the child ends when its answer
    finds no reader."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the daemon died before prctl: nobody to answer


def _build(request: dict) -> Tuple[dict, List[int]]:
    """Compile in this process, probe the kernel; the answer and the descriptors."""
    import importlib

    from . import probe

    module, name = KINDS[request["kind"]]
    cls = getattr(importlib.import_module(module), name)
    options = dict(request.get("options") or {})
    if "cflags" in options:
        options["cflags"] = tuple(options["cflags"])
    maps = {name: MapFd(int(fd)) for name, fd in (request.get("maps") or {}).items()}
    if maps:
        options["maps"] = maps
    prog = cls.compile(**options)
    # The probes compile with bcc too: the daemon asks them here, once, and
    # attach() uses the answer (Program.features).
    features = probe.run()
    programs = list(prog.functions.items())
    reply = {"ok": True,
             "programs": [[key, fn.name] for key, fn in programs],
             "maps": list(prog.maps),
             "cflags": list(prog.cflags),
             "reused": list(prog.reused),
             "features": [f.as_dict() for f in features]}
    # The process exits right after sending: bcc's object is not cleaned up here
    # (the kernel closes what the process held; the daemon holds its own copies).
    return reply, [fn.fd for _, fn in programs] + [m.fd for m in prog.maps.values()]


def _capture_logs() -> list:
    """Keep this process's log events (structlog and the standard library's) in a
    list, for the daemon to log them (see _replay)."""
    import structlog

    events: list = []

    def keep(logger, method_name, event_dict):
        event_dict.setdefault("level", method_name)
        events.append(event_dict)
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.stdlib.add_logger_name, keep],
                        logger_factory=structlog.stdlib.LoggerFactory(),
                        wrapper_class=structlog.stdlib.BoundLogger,
                        cache_logger_on_first_use=False)

    class Keep(logging.Handler):
        def emit(self, record):
            events.append({"logger": record.name, "level": record.levelname.lower(),
                           "event": record.getMessage()})

    root = logging.getLogger()
    root.handlers[:] = [Keep()]
    root.setLevel(logging.DEBUG)
    return events
