"""Where programs attach, and how it is all undone: tc, XDP, pins, the undo stack.

Hooks is the base of both roles' attachments (client.py, relay.py): every step
that changes the machine registers its undo step; detach (or a failure half-way)
runs them in reverse. Our tc filters are found again by priority and handle
("prio 3544", the Teredo port, is easy to spot in `tc filter show`).
remove_stale() takes away what an instance that died without detaching left:
only what is recognisably ours (our priority and handle, our program names).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Callable, Collection, Iterable, List, Optional, Tuple

from .. import log
from ..errors import RuntimeFailure
from ..teredo import constants
from . import libbpf, registry
from . import stats as _stats

TC_PRIO = constants.TEREDO_PORT
TC_HANDLE = ":1"
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"

# IFLA_XDP_FLAGS (uapi/linux/if_link.h).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODE_FLAGS = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED as pyroute2 names it -> our mode name.
XDP_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload"}

_log = log.get("xdp_teredo.datapath")


def xdp_mode_flag(mode: Optional[str]) -> int:
    """The flag that detaches (or replaces) an XDP program attached in `mode`."""
    return XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE


def open_iproute(netns: Optional[str] = None):
    try:
        from pyroute2 import IPRoute

        return IPRoute(netns=netns) if netns else IPRoute()
    except Exception as err:
        raise RuntimeFailure(f"cannot open netlink (netns {netns}): {err}") from err


class Hooks:
    """Netlink in one network namespace (`netns`, or the calling thread's) and the
    undo stack of what was done there."""

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns
        self.pin_dir: Optional[str] = None
        self._undo: List[Tuple[str, Callable[[], None]]] = []
        self._ipr = None

    def _iproute(self):
        if self._ipr is None:
            self._ipr = open_iproute(self.netns)
        return self._ipr

    def _close_iproute(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _link_exists(self, ifindex: int) -> bool:
        from pyroute2 import NetlinkError

        try:
            return bool(self._iproute().get_links(ifindex))
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return False
            raise

    # -- tc
    def _tc_filter(self, ifindex: int, parent: str, fn, where: str, stale_hint: str) -> None:
        """clsact (unless there) and our filter, each with its undo step."""
        from pyroute2 import NetlinkError

        ipr = self._iproute()
        try:
            ipr.tc("add", "clsact", ifindex)
            self._undo.append((f"clsact on {ifindex}", lambda: self._del_clsact(ifindex)))
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise RuntimeFailure(f"cannot add clsact on ifindex {ifindex} ({where}): {err}") from err
        try:
            ipr.tc("add-filter", "bpf", ifindex, TC_HANDLE, fd=fn.fd, name=fn.name, parent=parent,
                   classid=1, direct_action=True, prio=TC_PRIO)
        except NetlinkError as err:
            hint = f" (a filter of ours is there already: stale? see {stale_hint})" \
                if err.code == errno.EEXIST else ""
            raise RuntimeFailure(f"cannot add the tc filter on ifindex {ifindex} ({where}): "
                                 f"{err}{hint}") from err
        self._undo.append((f"tc filter {where}", lambda: self._del_filter(ifindex, parent)))

    def _replace_filter(self, ifindex: int, parent: str, fn) -> None:
        """Our program in place of the filter's, atomically (tc filter replace)."""
        self._iproute().tc("replace-filter", "bpf", ifindex, TC_HANDLE, fd=fn.fd, name=fn.name,
                           parent=parent, classid=1, direct_action=True, prio=TC_PRIO)

    def _own_filter(self, ifindex: int, parent: str, where: str) -> None:
        """The undo steps of a filter (and its clsact) found in place (adoption)."""
        self._undo.append((f"clsact on {ifindex}", lambda: self._del_clsact(ifindex)))
        self._undo.append((f"tc filter {where}", lambda: self._del_filter(ifindex, parent)))

    def _del_filter(self, ifindex: int, parent: str) -> None:
        self._iproute().tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=parent, prio=TC_PRIO)

    def _del_clsact(self, ifindex: int) -> None:
        """Remove the clsact we added, unless someone else's filters live there now."""
        ipr = self._iproute()
        for parent in (TC_INGRESS, TC_EGRESS):
            if any(f.get_attr("TCA_OPTIONS") for f in ipr.get_filters(ifindex, parent=parent)):
                return
        ipr.tc("del", "clsact", ifindex)

    # -- XDP
    def _attach_xdp(self, ifindex: int, fn, mode: str, unsupported=None) -> str:
        """Attach in `mode` (XDP_MODE_FLAGS) unless a program is there; the mode the
        kernel chose. unsupported(err): the error to raise for EOPNOTSUPP."""
        from pyroute2 import NetlinkError

        ipr = self._iproute()
        flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_MODE_FLAGS[mode]
        try:
            ipr.link("set", index=ifindex,
                     xdp={"attrs": [("IFLA_XDP_FD", fn.fd), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as err:
            if err.code == errno.EOPNOTSUPP and unsupported is not None:
                raise unsupported(err) from err
            label = "" if mode == "native" and unsupported else f" ({mode})"
            why = {errno.EBUSY: "another XDP program is attached",
                   errno.EEXIST: "another XDP program is attached",
                   errno.EOPNOTSUPP: f"the driver has no {mode} XDP mode"}.get(err.code, str(err))
            raise RuntimeFailure(f"cannot attach XDP{label} to ifindex {ifindex}: {why}") from err
        attached = ipr.get_links(ifindex)[0].get_attr("IFLA_XDP")
        kind = attached.get_attr("IFLA_XDP_ATTACHED") if attached else None
        got = XDP_ATTACHED.get(kind, str(kind))
        self._own_xdp(ifindex, got)
        return got

    def _own_xdp(self, ifindex: int, mode: Optional[str]) -> None:
        flag = xdp_mode_flag(mode)
        self._undo.append((f"XDP on {ifindex}", lambda: self._del_xdp(ifindex, flag)))

    def _replace_xdp(self, ifindex: int, fn, old_id: int, mode: Optional[str]) -> None:
        """Our XDP program in place of the running one, in one netlink request: the
        kernel swaps them only if `old_id` is still the one attached (XDP_FLAGS_REPLACE)."""
        old_fd = libbpf.prog_fd_by_id(old_id)
        try:
            self._iproute().link("set", index=ifindex, xdp={"attrs": [
                ("IFLA_XDP_FD", fn.fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_REPLACE | xdp_mode_flag(mode)),
                ("IFLA_XDP_EXPECTED_FD", old_fd)]})
        finally:
            os.close(old_fd)

    def _del_xdp(self, ifindex: int, mode_flag: int) -> None:
        self._iproute().link("set", index=ifindex,
                             xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", mode_flag)]})

    # -- pins
    def _pin(self, maps, names: Iterable[str], pin, pin_root: str, instance: str) -> None:
        """Pin `names` of `maps` under <pin_root>/<instance>/ for other processes
        (stats.py). pin: True (must), False (never), "auto" (when on a bpffs)."""
        if pin is False:
            return
        if not _stats.is_bpffs(pin_root):
            if pin is True:
                raise RuntimeFailure(f"cannot pin maps: no bpffs mounted at or above {pin_root} "
                                     "(mount -t bpf bpf /sys/fs/bpf)")
            _log.warning("maps_not_pinned", pin_root=pin_root, reason="no bpffs mounted there")
            return
        path = os.path.join(pin_root, instance)
        os.makedirs(path, exist_ok=True)
        self._undo.append(("pin dir", lambda: rmdir_quiet(path)))
        for name in names:
            target = os.path.join(path, name)
            if os.path.exists(target):
                # A pin left by an instance that died without detaching: it holds
                # an old map alive and nothing else; ours replaces it.
                os.unlink(target)
            libbpf.obj_pin(maps[name].fd, target)
            self._undo.append((f"pin {name}", lambda t=target: os.unlink(t)))
        self.pin_dir = path

    # -- undo
    @contextlib.contextmanager
    def _all_or_nothing(self, what: str, event: str):
        """Undo every step so far when one fails (logging `event` if undoing fails
        too); whatever failed comes out as a RuntimeFailure."""
        try:
            yield
        except Exception as err:
            failures = self._undo_all()
            if failures:
                _log.error(event, failures=failures)
            if isinstance(err, RuntimeFailure):
                raise
            raise RuntimeFailure(f"attaching {what} failed: {err}") from err

    def _undo_all(self) -> List[str]:
        """Run the undo stack; what failed (a device gone took its hooks along)."""
        failures = []
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as err:
                code = getattr(err, "code", None) or getattr(err, "errno", None)
                if code in (errno.ENODEV, errno.ENOENT):
                    continue
                failures.append(f"{what}: {err}")
        return failures

    def _forget(self) -> None:
        """Leave everything in place (release, or a failed adoption)."""
        self._undo.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # The log event of a detach (each role's name for it) and its fields.
    detached_event = "datapath_detached"

    def _detached_fields(self) -> dict:
        return {}

    def _after_undo(self) -> List[str]:
        """What a role removes after its undo stack (the relay's devmap); the failures."""
        return []

    def detach(self) -> None:
        """Undo everything attach did, in reverse order. Idempotent."""
        failures = self._undo_all() + self._after_undo()
        self.pin_dir = None
        if self.prog.attachment is self:
            self.prog.attachment = None
        self._close_iproute()
        if failures:
            raise RuntimeFailure("detaching left things behind: " + "; ".join(failures))
        _log.info(self.detached_event, **self._detached_fields())


def rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def remove_stale(ipr, tc_hooks: Iterable[Tuple[int, str]], xdp_ifindexes: Iterable[int],
                 programs: Collection[str], xdp_program: str) -> List[str]:
    """Our tc filters (priority, handle, a program named in `programs`) at each
    (ifindex, parent), and an XDP program named `xdp_program` on each of
    xdp_ifindexes; what was removed. Other programs stay."""
    from pyroute2 import NetlinkError

    ours = {func[:registry.NAME_LEN] for func in programs}  # the kernel keeps 15 chars
    removed: List[str] = []
    for ifindex, parent in tc_hooks:
        try:
            filters = ipr.get_filters(ifindex, parent=parent)
        except NetlinkError:
            continue  # no clsact, or no device
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME") if opts else None
            if name and name[:registry.NAME_LEN] in ours and f["info"] >> 16 == TC_PRIO:
                try:
                    ipr.tc("del-filter", "bpf", ifindex, TC_HANDLE, parent=parent, prio=TC_PRIO)
                except NetlinkError as err:
                    raise RuntimeFailure(f"removing a stale tc filter failed: {err}") from err
                removed.append(f"tc filter {name} on ifindex {ifindex}")
    for ifindex in xdp_ifindexes:
        try:
            links = ipr.get_links(ifindex)
        except NetlinkError:
            continue
        xdp = links[0].get_attr("IFLA_XDP") if links else None
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
        if prog_id and libbpf.prog_name(prog_id) == xdp_program[:registry.NAME_LEN]:
            mode = XDP_FLAGS_SKB_MODE if xdp.get_attr("IFLA_XDP_ATTACHED") == "xdpgeneric" \
                else XDP_FLAGS_DRV_MODE
            try:
                ipr.link("set", index=ifindex,
                         xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", mode)]})
            except NetlinkError as err:
                raise RuntimeFailure(f"removing stale programs failed: {err}") from err
            removed.append(f"XDP {xdp_program} on ifindex {ifindex}")
    return removed


def unpin_stale(path: str, names: Iterable[str]) -> List[str]:
    """The pins an instance left in `path`, and the directory if empty."""
    removed = []
    for name in names:
        target = os.path.join(path, name)
        if os.path.exists(target):
            os.unlink(target)
            removed.append(f"pin {target}")
    if os.path.isdir(path):
        rmdir_quiet(path)
    return removed
