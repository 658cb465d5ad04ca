"""The inbound guard's maps (bpf/lib/guard.h), typed, for the control plane.

    maps = GuardMaps.of(datapath)          # from the maps of a ClientDatapath or RelayDatapath
    maps.configure(guard.Settings(...))    # policy + timeouts, and --allow's ports
    guard.inbound(view, settings, maps.flows, maps.fragments, maps.allowed, now)

`flows` and `fragments` are MutableMappings over the BPF maps, with the keys and
values of xdp_teredo.teredo.guard, so the slow path decides with the same policy
module over the same state the BPF programs keep: a flow the fast path recorded
lets a reply in on the slow path, and the other way round.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import MutableMapping
from typing import Dict, Iterator, Optional, Tuple

from ..errors import RuntimeFailure
from ..teredo import guard
from . import layout
from . import registry
from .libbpf import MapFd

# guard_config, guard_flows, guard_fragments, guard_allow (registry.py, lib/guard.h).
MAPS = registry.group("guard")

_FLOW_KEY = struct.Struct("!16s16sHHB3x")     # layout.FlowKey: ports in network order
_FLOW_VALUE = struct.Struct("=QII")           # layout.FlowValue
_FRAGMENT_KEY = struct.Struct("!16s16sI")     # layout.FragmentKey
_U64 = struct.Struct("=Q")
_ALLOW_KEY = struct.Struct("!BxH")            # layout.AllowKey
_ZERO = (0).to_bytes(4, "little")

assert _FLOW_KEY.size == ctypes.sizeof(layout.FlowKey)
assert _FLOW_VALUE.size == ctypes.sizeof(layout.FlowValue)
assert _FRAGMENT_KEY.size == ctypes.sizeof(layout.FragmentKey)
assert _ALLOW_KEY.size == ctypes.sizeof(layout.AllowKey)


def flow_key_bytes(key: guard.FlowKey) -> bytes:
    return _FLOW_KEY.pack(key.local, key.remote, key.local_port, key.remote_port, key.proto)


def flow_key_of(raw: bytes) -> guard.FlowKey:
    local, remote, lport, rport, proto = _FLOW_KEY.unpack(raw)
    return guard.FlowKey(local, remote, proto, lport, rport)


class _Table(MutableMapping):
    """A BPF hash map as a MutableMapping (keys and values converted both ways)."""

    def __init__(self, m: MapFd):
        self.map = m

    def _k(self, key) -> bytes:
        raise NotImplementedError

    def _key_of(self, raw: bytes):
        raise NotImplementedError

    def _v(self, value) -> bytes:
        raise NotImplementedError

    def _value_of(self, raw: bytes):
        raise NotImplementedError

    def __getitem__(self, key):
        raw = self.map.lookup(self._k(key))
        if raw is None:
            raise KeyError(key)
        return self._value_of(raw)

    def __setitem__(self, key, value) -> None:
        try:
            self.map.update(self._k(key), self._v(value))
        except OSError as err:
            raise RuntimeFailure(f"cannot write to map {self.map.name}: {err}") from err

    def __delitem__(self, key) -> None:
        if not self.map.delete(self._k(key)):
            raise KeyError(key)

    def __iter__(self) -> Iterator:
        for raw in list(self.map.keys()):
            yield self._key_of(raw)

    def __len__(self) -> int:
        return sum(1 for _ in self.map.keys())

    def clear(self) -> None:
        for raw in list(self.map.keys()):
            self.map.delete(raw)


class FlowTable(_Table):
    """guard_flows: FlowKey -> Flow."""

    def _k(self, key: guard.FlowKey) -> bytes:
        return flow_key_bytes(key)

    def _key_of(self, raw: bytes) -> guard.FlowKey:
        return flow_key_of(raw)

    def _v(self, value: guard.Flow) -> bytes:
        return _FLOW_VALUE.pack(value.seen_ns, int(value.state), 0)

    def _value_of(self, raw: bytes) -> guard.Flow:
        seen, state, _ = _FLOW_VALUE.unpack(raw[:_FLOW_VALUE.size])
        return guard.Flow(seen, state)


class FragmentTable(_Table):
    """guard_fragments: FragmentKey -> when its first fragment came in (ns)."""

    def _k(self, key: guard.FragmentKey) -> bytes:
        return _FRAGMENT_KEY.pack(key.local, key.remote, key.identification)

    def _key_of(self, raw: bytes) -> guard.FragmentKey:
        return guard.FragmentKey(*_FRAGMENT_KEY.unpack(raw))

    def _v(self, value: int) -> bytes:
        return _U64.pack(value)

    def _value_of(self, raw: bytes) -> int:
        return _U64.unpack(raw[:8])[0]


class AllowTable:
    """guard_allow: the (protocol, port) pairs --allow opened, with their hit counts."""

    def __init__(self, m: MapFd):
        self.map = m

    def __contains__(self, pair) -> bool:
        proto, port = pair
        return self.map.lookup(_ALLOW_KEY.pack(proto, port)) is not None

    def hits(self) -> Dict[Tuple[int, int], int]:
        out = {}
        for raw in list(self.map.keys()):
            value = self.map.lookup(raw)
            if value is not None:
                out[_ALLOW_KEY.unpack(raw)] = _U64.unpack(value[:8])[0]
        return out

    def replace(self, pairs) -> None:
        """Exactly these pairs; the counters of pairs that stay are kept."""
        want = {_ALLOW_KEY.pack(proto, port) for proto, port in pairs}
        for raw in list(self.map.keys()):
            if raw not in want:
                self.map.delete(raw)
        for raw in want:
            if self.map.lookup(raw) is None:
                try:
                    self.map.update(raw, _U64.pack(0))
                except OSError as err:
                    raise RuntimeFailure(f"cannot write to map {self.map.name}: {err}") from err

    def clear(self) -> None:
        self.replace(())


def config_value(settings: guard.Settings) -> layout.GuardConfigValue:
    t = settings.timeouts

    def ns(seconds: float) -> int:
        return int(round(seconds * 1e9))

    policy = layout.GuardPolicy.STATEFUL if settings.policy is guard.Policy.STATEFUL \
        else layout.GuardPolicy.OPEN
    return layout.GuardConfigValue(
        policy=int(policy), tcp_handshake_ns=ns(t.tcp_handshake),
        tcp_established_ns=ns(t.tcp_established), tcp_closing_ns=ns(t.tcp_closing),
        tcp_closed_ns=ns(t.tcp_closed), udp_ns=ns(t.udp), udp_replied_ns=ns(t.udp_replied),
        icmp_echo_ns=ns(t.icmp_echo), other_ns=ns(t.other), fragment_ns=ns(t.fragment))


class GuardMaps:
    """The four guard maps of one data path (client or relay)."""

    def __init__(self, config: MapFd, flows: MapFd, fragments: MapFd, allow: MapFd):
        self.config_map = config
        self.flows = FlowTable(flows)
        self.fragments = FragmentTable(fragments)
        self.allowed = AllowTable(allow)

    @classmethod
    def of(cls, maps: Dict[str, MapFd]) -> "GuardMaps":
        return cls(*(maps[name] for name in MAPS))

    def configure(self, settings: guard.Settings) -> None:
        """The allowed ports first, then the policy: a stateful guard never runs
        without the ports it should let in."""
        self.allowed.replace(settings.allowed_pairs())
        try:
            self.config_map.update(_ZERO, bytes(config_value(settings)))
        except OSError as err:
            raise RuntimeFailure(f"cannot write the guard's policy: {err}") from err

    def policy(self) -> Optional[layout.GuardPolicy]:
        raw = self.config_map.lookup(_ZERO)
        if raw is None:
            return None
        return layout.GuardPolicy(layout.GuardConfigValue.from_buffer_copy(raw).policy)

    def clear(self) -> None:
        """Open policy, no flows, no fragments, no allowed ports (tests)."""
        self.config_map.update(_ZERO, bytes(ctypes.sizeof(layout.GuardConfigValue)))
        self.flows.clear()
        self.fragments.clear()
        self.allowed.clear()

    def summary(self) -> dict:
        """For `status`: flows by state, and hits per allowed port."""
        by_state: Dict[str, int] = {}
        for raw in list(self.flows.map.keys()):
            value = self.flows.map.lookup(raw)
            if value is None:
                continue
            state = _FLOW_VALUE.unpack(value[:_FLOW_VALUE.size])[1]
            try:
                name = guard.FlowState(state).name.lower()
            except ValueError:
                name = str(state)
            by_state[name] = by_state.get(name, 0) + 1
        hits = {f"{guard.protocol_name(proto)}/{port}": n
                for (proto, port), n in sorted(self.allowed.hits().items())}
        return {"flows": sum(by_state.values()), "flows_by_state": by_state, "allowed_hits": hits}
