"""What the two tunnel roles (client and relay) share: the slow path's two doors and
the peers they carry out the protocol core's decisions for.

The slow path, as in Miredo: a UDP socket (Teredo packets the XDP/tc programs
left to the control plane) and a tun device (IPv6 the tc program did not
encapsulate, or that the kernel routed into the tunnel). A subclass says what a
datagram and a tun packet mean to it (`on_datagram`, `on_tun_packet`); the
PeerList's actions (teredo/peers.py) are carried out here, the same for both,
with the few differences as small methods (`bubble_source`, `send_echo`,
`deliver_from_peer`, `trust_flags`).

Everything is counted (daemon/counters.py): "udp_received", "tun_read", what was
sent by kind, "delivered", and drop_<reason> for what was dropped.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from ..datapath.layout import PeerFlag
from ..errors import MalformedPacket, RuntimeFailure
from ..teredo import constants, encap, icmpv6, packet
from ..teredo import peers as peerlist
from ..teredo.ratelimit import Limits, TokenBucket
from . import render
from .base import Daemon

IPv6Address = ipaddress.IPv6Address

# Datagrams / packets handled from one fd before looking at the others: fairness,
# and a bound on the time between two deadline checks.
BATCH = 64


class TunnelDaemon(Daemon):
    # ICMPv6 errors the daemon sends into the tunnel (Miredo: 10 per second).
    unreachable_limits = Limits(10.0, 2_000_000.0)
    # A peer trusted / expired is one log line (a client) or only counted (a relay).
    verbose_peers = True

    def __init__(self, *, clock=None):
        super().__init__(clock=clock)
        self.sock = None            # net/udp.TeredoSocket
        self.tunnel = None          # net/tunnel.Tunnel
        self.prog = None            # datapath: the compiled programs and maps
        self.att = None             # datapath: attached to the devices
        self.peers: Optional[peerlist.PeerList] = None
        self.guard = None           # teredo/guard.Guard over the data path's maps
        self.sync = None            # datapath/peersync.PeerSync
        self._unreachable_bucket = TokenBucket(self.unreachable_limits, self.clock.monotonic())

    # -- what a tunnel role writes --

    def on_teredo(self, teredo, ip, port: int) -> None:
        """A Teredo datagram (encap.TeredoPayload, parsed) from ip:port."""
        raise NotImplementedError

    def on_tun_packet(self, packet_bytes: bytes) -> None:
        raise NotImplementedError

    def bubble_source(self) -> Optional[IPv6Address]:
        """The IPv6 source of our bubbles; None: we cannot send one now."""
        raise NotImplementedError

    def icmp_source(self) -> Optional[IPv6Address]:
        """The source of our ICMPv6 errors (RFC 4443 §2.2: an address of ours)."""
        raise NotImplementedError

    def send_echo(self, peer: IPv6Address, nonce: bytes) -> None:
        self.counters.drop("unexpected_SendEcho")  # a relay never tests connectivity

    def deliver_from_peer(self, packet_bytes: bytes) -> None:
        self.deliver(packet_bytes)

    def trust_flags(self, address: IPv6Address) -> PeerFlag:
        return PeerFlag.TRUSTED

    # -- the skeleton's part --

    def handlers(self) -> dict:
        return {"status": self.status, "peers": self.peer_table,
                "stats": self.stats, "counters": self.counter_table}

    def start_peer_sync(self, table) -> None:
        from ..datapath.peersync import PeerSync

        self.sync = PeerSync(table, self.counters, self.log, verbose=self.verbose_peers)

    def listen(self) -> None:
        """Serve the socket and the tun from the loop (set-up's last step)."""
        self.loop.add_reader(self.sock, self.read_udp)
        self.loop.add_reader(self.tunnel, self.read_tun)

    def read_udp(self) -> None:
        for _ in range(BATCH):
            got = self.sock.recvfrom()
            if got is None:
                return
            self.counters["udp_received"] += 1
            self.on_datagram(*got)

    def on_datagram(self, payload: bytes, ip, port: int) -> None:
        try:
            teredo = encap.parse_udp_payload(payload)
        except MalformedPacket as err:
            self.counters.drop(f"malformed_{err.reason}")
            return
        self.on_teredo(teredo, ip, port)

    def read_tun(self) -> None:
        for _ in range(BATCH):
            try:
                got = self.tunnel.read()
            except RuntimeFailure as err:
                self.tunnel_failed(err)
                return
            if got is None:
                return
            self.counters["tun_read"] += 1
            self.on_tun_packet(got)

    def tunnel_failed(self, err: RuntimeFailure) -> None:
        """The tun cannot be read any more. We do not make another: whoever deleted it
        wanted Teredo off; we stop, remove the rest, and exit 1, which a service
        manager may restart (docs/reliability.md)."""
        if self.tunnel.gone():
            self.log.error("tunnel_deleted", tunnel=self.tunnel.name, error=str(err))
            self.fail(f"tunnel {self.tunnel.name} was deleted while the {self.role} ran; "
                      "stopped and removed the rest")
        else:
            self.log.error("tunnel_failed", error=str(err))
            self.fail(str(err))

    def send(self, payload: bytes, ip, port: int, counter: str) -> None:
        if self.sock.sendto(payload, ip, port):
            self.counters[counter] += 1
        else:
            self.counters.drop(f"{counter}_refused")

    def deliver(self, packet_bytes: bytes) -> None:
        """Into the tun: the kernel takes it as if it had arrived there."""
        try:
            self.tunnel.write(packet_bytes)
            self.counters["delivered"] += 1
        except RuntimeFailure:
            self.counters.drop("deliver_failed")

    def unreachable(self, original_bytes: bytes) -> None:
        """The peer cannot be reached (bubbles unanswered, §5.2.6, or the connectivity
        test failed, §5.2.9): like Miredo, tell the local sender at once with an
        ICMPv6 address unreachable (RFC 4443 §3.1) rather than let it time out.
        Never about an ICMPv6 error (RFC 4443 §2.4 e); rate limited."""
        self.counters["unreachable"] += 1
        try:
            original = packet.parse_ipv6(original_bytes)
        except MalformedPacket:
            self.counters.drop("unreachable_malformed")
            return
        source = self.icmp_source()
        if (source is None or original.src.is_multicast or original.src.is_unspecified
                or (original.next_header == constants.IPPROTO_ICMPV6 and original.payload
                    and original.payload[0] < constants.ICMPV6_INFORMATIONAL_MIN)):
            self.counters.drop("unreachable_not_answered")
            return
        bucket = self._unreachable_bucket
        bucket.refill(self.clock.monotonic())
        if not bucket.has(0):
            self.counters.drop("unreachable_rate_limited")
            return
        bucket.take(0)
        # The error, with as much of the packet as fits in the minimum MTU.
        room = constants.TEREDO_MTU - constants.IPV6_HDR_LEN - 8
        error = icmpv6.build_icmpv6(source, original.src, constants.ICMPV6_DESTINATION_UNREACHABLE,
                                    constants.ICMPV6_CODE_ADDRESS_UNREACHABLE,
                                    bytes(4) + original_bytes[:room],
                                    hop_limit=constants.DEFAULT_HOP_LIMIT)
        try:
            self.tunnel.write(error)
            self.counters["unreachable_sent"] += 1
        except RuntimeFailure:
            self.counters.drop("unreachable_failed")

    def send_bubble(self, peer: IPv6Address, ip, port: int, counter: str,
                    source: Optional[IPv6Address] = None) -> None:
        # The peer list's challenge when it wants the answer to prove a mapping.
        source = source or self.bubble_source()
        if source is None:
            self.counters.drop("tx_not_qualified")
            return
        self.send(packet.build_bubble(source, peer), ip, port, counter)

    def carry_out(self, actions: list) -> None:
        """The PeerList's actions, in order."""
        for action in actions:
            if isinstance(action, peerlist.SendDirect):
                self.send(action.packet, action.ip, action.port, "sent_direct")
            elif isinstance(action, peerlist.SendDirectBubble):
                self.send_bubble(action.peer, action.ip, action.port, "bubble_direct",
                                 action.source)
            elif isinstance(action, peerlist.SendIndirectBubble):
                # §5.2.6 / §5.4.1: through the peer's own server, which relays it
                # with our origin indication.
                self.send_bubble(action.peer, action.server, constants.TEREDO_PORT,
                                 "bubble_indirect", action.source)
            elif isinstance(action, peerlist.SendEcho):
                self.send_echo(action.peer, action.nonce)
            elif isinstance(action, peerlist.Deliver):
                self.deliver_from_peer(action.packet)
            elif isinstance(action, peerlist.Unreachable):
                self.unreachable(action.packet)
            elif isinstance(action, peerlist.PeerTrusted):
                flags = self.trust_flags(action.peer)
                self.sync.install(action.peer, action.ip, action.port, flags)
                self.counters["peer_trusted"] += 1
                parts = peerlist.teredo_parts(action.peer)
                proven = parts is not None and parts[1:] != (action.ip, action.port)
                if proven:
                    # Its address embeds another mapping: trusted on proof (peers.py).
                    self.counters["peer_trusted_other_mapping"] += 1
                self.sync.note("peer_trusted", peer=str(action.peer),
                               mapped=f"{action.ip}:{action.port}",
                               relay=bool(flags & PeerFlag.RELAY), other_mapping=proven or None)
            elif isinstance(action, peerlist.PeerRemoved):
                self.sync.remove(action.peer)
                if action.reason == "expired":
                    self.counters["peer_expired"] += 1
                    self.sync.note("peer_expired", peer=str(action.peer))

    # -- what the control socket serves --

    def peer_table(self) -> list:
        from ..datapath.maps import now_ns

        return render.peer_rows(self.att.peers if self.att is not None else (),
                                self.peers, now_ns=now_ns(),
                                now=self.clock.monotonic(),
                                is_relay_peer=self.is_native_peer)

    def is_native_peer(self, address) -> bool:
        return render.native_peer(address)

    def stats(self) -> dict:
        """The data path's counters, as datapath.stats.read() returns them."""
        if self.att is None:
            raise RuntimeFailure("the data path is not loaded yet (compiling): "
                                 "the slow path carries everything meanwhile")
        return self.att.stats()

    def observe(self):
        """--metrics: the skeleton's view, plus the data path's verdicts and the peers."""
        seen = super().observe()
        if self.att is not None:
            seen.datapath = self.att.stats()
        seen.peers = {"datapath": len(self.att.peers) if self.att is not None else 0,
                      "pending": sum(1 for p in self.peers if not p.trusted)
                      if self.peers is not None else 0}
        seen.peer_list_drops = self.peers.drops if self.peers is not None else None
        return seen

    def inbound_status(self, settings) -> dict:
        maps = self.prog.guard if self.prog is not None else None
        return render.inbound(self.guard.settings if self.guard is not None else settings,
                              maps, self.counters)

    def counter_table(self) -> dict:
        """The control plane's own counters (the slow path), the policies' drops."""
        return {
            "slow_path": dict(self.counters),
            "peer_drops": dict(self.peers.drops),
            "socket_refusals": dict(self.sock.refusals) if self.sock else {},
            "control": {"served": self.control.served, "refused": self.control.refused},
        }
