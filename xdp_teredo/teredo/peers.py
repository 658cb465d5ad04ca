"""The peer list and its policy (RFC 4380 §5.2.3, §5.2.4, §5.2.6, §5.2.9, §5.4.1).

Pure policy with an injected clock: every method returns the actions the
orchestrator performs (send, deliver, tell the BPF maps); nothing here does I/O.
The per-packet fast path is BPF: only the packets it punts reach this module
(unknown or untrusted peers, stale entries, bubbles, echo replies of our tests),
so this code aims at being simple and correct, not fast.

Decisions, in the order Miredo's relay.c takes them:

Sending (§5.2.4 client, §5.4.1 relay), `on_outgoing`:
- multicast destination: dropped.
- trusted peer, received from in the last PEER_RECENT s: SendDirect.
- Teredo destination otherwise: queue the packet; if the bubble rate limit allows
  (§5.2.6: BUBBLE_MIN_INTERVAL apart, at most BUBBLE_MAX_UNANSWERED in any
  BUBBLE_WINDOW without a reply), a direct bubble to the mapped address embedded
  in the destination (opens our NAT) and an indirect one through the server
  embedded in it. Once the limit is reached: Unreachable.
- non-Teredo destination (client only): queue and run the direct connectivity test
  (§5.2.9): an echo request with a random nonce of >= 64 bits through our server,
  ECHO_TIMEOUT apart, ECHO_TRIES tries. The matching reply comes from the relay
  nearest that host: its UDP source becomes the peer's mapping; trusted, flushed.
  After a failed test the destination is Unreachable until its entry expires
  (Miredo: pings stay exhausted until a reply).

Receiving (§5.2.3 client, §5.4.2 relay), `on_incoming`:
- multicast destination: dropped.
- from our server with an origin indication (or, like Miredo, a bubble with a
  Teredo source and none): an indirect bubble; answer it with a direct bubble to
  the origin; a bubble goes no further.
- link-local source: dropped (Miredo: lets no forged RA reach the kernel); a
  client answers a bubble from one (a challenge) to where it came from.
- trusted peer whose mapping is the UDP source: deliver (the peer answered:
  bubble counters reset, queue flushed).
- echo reply carrying the nonce of the peer's outstanding test: trusted with the
  UDP source as mapping, queue flushed, not delivered (it was ours).
- Teredo source embedding exactly the UDP source: trusted, delivered (a relay
  only accepts it from a peer already listed, i.e. one it sent to: Miredo's
  choice, allowed by §5.4.2, so spoofed sources cannot fill the list).
- bubble with a Teredo source, addressed to the link-local challenge of our
  bubbles to that source (security.bubble_challenge): it answers a bubble of
  ours, which went to the mapping its address embeds or through its server, so
  the sender owns the address: trusted with the UDP source as mapping, whatever
  the address embeds (a NAT that remapped the port, a symmetric NAT: RFC 6081
  §4.3's aim, Miredo's CheckBubble). A relay only for peers it sent to. A client
  then sends a bubble of its own there, so that the peer, waiting for us, trusts
  us back.
- Teredo source embedding something else: dropped, and (rate-limited as bubbles
  are) an indirect bubble carrying our challenge goes through the source's server:
  its answer proves the mapping it sends from (never a challenge to the UDP source:
  whoever sent from there could answer it for any address).
- non-Teredo source (client only): held, and a connectivity test started towards
  it; delivered only if the test's answer comes from the relay they came through.
- inbound_open (our address embeds a UPnP mapping, RFC 6081 §4.3): no direct bubble
  first, none to a client's indirect one (a relay's: as usual); a new peer's direct one is answered.

Queue: at most PEER_QUEUE_BYTES per peer; a packet that does not fit is refused and
the older ones kept (Miredo's peerlist.c); they leave in arrival order.

Capacity: at most `capacity` peers. Miredo refuses new peers when full; we evict
the least recently active peer instead, preferring untrusted entries, so that a
flood of spoofed sources neither grows memory nor pushes out established peers.

Expiry: a peer idle (no receive, no send, no bubble, no echo) for `expiry` s is
removed; BPF's own last_rx/last_tx come in through `observe`. An entry with a
bubble sent in the last BUBBLE_WINDOW s, or a connectivity test running, is kept
so that forgetting it cannot reset the bubble rate limit. Eviction under a flood
may still forget it: bounded memory comes first.

Data structures: lazyheap.py says how the list stays O(log n) per admission.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

import structlog

from xdp_teredo import log
from xdp_teredo.teredo import security
from xdp_teredo.teredo.clock import Clock
from xdp_teredo.teredo.constants import (
    BUBBLE_MAX_UNANSWERED,
    BUBBLE_MIN_INTERVAL,
    BUBBLE_WINDOW,
    ECHO_NONCE_MIN_LEN,
    ECHO_TIMEOUT,
    ECHO_TRIES,
    PEER_EXPIRY,
    PEER_LIST_MAX,
    PEER_QUEUE_BYTES,
)

# Miredo's is_ipv4_global_unicast: nothing is ever sent to a mapping outside it.
from xdp_teredo.teredo.ipv4 import is_global_unicast
from xdp_teredo.teredo.lazyheap import LazyHeap as _LazyHeap
from xdp_teredo.teredo.peer_local import LocalPeers
from xdp_teredo.teredo.peer_model import (  # noqa: F401 (re-exported: the actions)
    Action,
    Deliver,
    Incoming,
    Peer,
    PeerRemoved,
    PeerTrusted,
    QueuedPacket,
    SendDirect,
    SendDirectBubble,
    SendEcho,
    SendIndirectBubble,
    Unreachable,
    _ipv4,
    _ipv6,
    teredo_parts,
)
from xdp_teredo.teredo.peer_proof import ProvingMappings

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address

_LOGGER_NAME = "xdp_teredo.peers"
_log = log.get(_LOGGER_NAME)
_stdlib_log = logging.getLogger(_LOGGER_NAME)


def _debug_enabled() -> bool:
    """Whether this module's per-peer debug events go anywhere.

    Building one (str() of an IPv6 address, then structlog's processors, which
    run before the standard library looks at the level) costs more than the
    decision it records: under a flood of new peers, more than the rest of the
    admission. With the daemon's configuration (log.configure: stdlib loggers)
    the level decides; any other configuration gets every event, as before.
    """
    if _stdlib_log.isEnabledFor(logging.DEBUG):
        return True
    return not isinstance(structlog.get_config()["logger_factory"], structlog.stdlib.LoggerFactory)


# --- the list -------------------------------------------------------------------


class PeerList(ProvingMappings, LocalPeers):
    """Peers of a Teredo client (or, with relay=True, of a relay)."""

    def __init__(
        self,
        clock: Clock,
        *,
        rng: Optional[security.Rng] = None,
        relay: bool = False,
        expiry: float = PEER_EXPIRY,
        capacity: int = PEER_LIST_MAX,
        queue_bytes: int = PEER_QUEUE_BYTES,
        echo_timeout: float = ECHO_TIMEOUT,
        echo_tries: int = ECHO_TRIES,
        accept_unknown: bool = False,
        challenge_key: Optional[bytes] = None,
    ):
        if capacity < 1 or expiry <= 0 or echo_tries < 1 or echo_timeout <= 0:
            raise ValueError("capacity >= 1, expiry > 0, echo tries >= 1, echo timeout > 0")
        self._clock = clock
        self._rng = rng
        self.relay = relay
        self.inbound_open = False   # our address embeds a UPnP mapping (client/mapped_port.py)
        # Relay only: accept a Teredo source not listed yet that embeds the UDP source
        # (§5.4.2 allows it; Miredo does not): what the relay's fast path learns.
        self.accept_unknown = accept_unknown
        self.expiry = float(expiry)
        self.capacity = int(capacity)
        self.queue_limit = int(queue_bytes)
        self.echo_timeout = float(echo_timeout)
        self.echo_tries = int(echo_tries)
        self.peers: Dict[IPv6Address, Peer] = {}
        # Keys the link-local sources of our bubbles (module docstring, receiving).
        self._challenge_key = challenge_key or os.urandom(security.CHALLENGE_KEY_LEN)
        self.drops: Counter = Counter()  # packets not sent nor delivered, by reason
        # Peers trusted at a mapping other than their address embeds, on proof.
        self.proven = 0
        # The indexes (module docstring, "Data structures"). Creation order breaks
        # ties between equally idle peers, as iterating `peers` did.
        self._order: Dict[IPv6Address, int] = {}
        self._created = itertools.count()
        self._by_activity = {False: _LazyHeap(), True: _LazyHeap()}  # by `trusted`
        self._deadlines = _LazyHeap()
        self._holding: Dict[IPv6Address, None] = {}  # peers with queued packets
        # Local discovery (§5.2.8, client/discovery.py): our link's IPv4 networks (empty:
        # off), and each peer's local address and port there.
        self.local_networks: tuple = ()
        self._local: Dict[IPv6Address, Tuple[IPv4Address, int]] = {}

    def __len__(self) -> int:
        return len(self.peers)

    def __contains__(self, address) -> bool:
        return _ipv6(address) in self.peers

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self.peers.values()))

    def get(self, address) -> Optional[Peer]:
        return self.peers.get(_ipv6(address))

    # -- sending --

    def on_outgoing(self, destination, packet: bytes) -> list:
        """The kernel sent `packet` to `destination` and the fast path punted it."""
        dst = _ipv6(destination)
        try:
            return self._outgoing(dst, packet, self._clock.monotonic())
        finally:
            self._refile_address(dst)

    def _outgoing(self, dst: IPv6Address, packet: bytes, now: float) -> list:
        if dst.is_multicast:
            return self._drop("multicast_destination")
        parts = teredo_parts(dst)
        if parts is None:
            if self.relay:
                # A relay only routes towards Teredo clients: the routing is wrong.
                self.drops["relay_non_teredo_destination"] += 1
                return [Unreachable(dst, packet)]
            return self._outgoing_native(dst, packet, now)

        server, ip, port = parts
        # Miredo checks the server before creating an entry, so that junk
        # destinations do not fill the list; §4 mappings must be global too.
        if not is_global_unicast(server):
            return self._drop("peer_server_not_global")
        if not is_global_unicast(ip):
            return self._drop("peer_mapping_not_global")

        peer, actions = self._lookup_or_create(dst, now)
        if peer.trusted and peer.is_recent(now):
            return actions + [self._send_direct(peer, packet, now)]
        if peer.mapped_ip is None:
            peer.mapped_ip, peer.mapped_port = ip, port

        verdict = self._bubble_verdict(peer, now)
        if verdict == "exhausted":
            self.drops["bubble_limit"] += 1
            return actions + [Unreachable(dst, packet)]
        self._enqueue(peer, QueuedPacket(packet, incoming=False))
        if verdict == "later":
            return actions
        peer.bubbles.append(now)
        peer.last_tx = now
        # Direct first (to the mapping proven before, if any): it opens our NAT for the
        # answer the indirect one (with our challenge) asks for. A peer on our link gets
        # it at its local address (§5.2.8): NATs need not hairpin.
        challenge = self.challenge(dst)
        ip, port = self._local.get(dst, (peer.mapped_ip, peer.mapped_port))
        direct = SendDirectBubble(dst, ip, port, source=challenge if self.relay else None)
        # inbound_open: an early direct bubble would take the flow's tuple with a random port.
        return actions + [direct] * (not self.inbound_open) + [SendIndirectBubble(dst, server, source=challenge)]

    def _outgoing_native(self, dst: IPv6Address, packet: bytes, now: float) -> list:
        peer, actions = self._lookup_or_create(dst, now)
        if peer.trusted and peer.is_recent(now):
            return actions + [self._send_direct(peer, packet, now)]
        if peer.echo_failed:
            self.drops["connectivity_test_failed"] += 1
            return actions + [Unreachable(dst, packet)]
        self._enqueue(peer, QueuedPacket(packet, incoming=False))
        return actions + self._start_echo_test(peer, now)

    # -- receiving --

    def on_incoming(self, pkt: Incoming) -> list:
        """A packet arrived from the Teredo side and the fast path punted it."""
        src = _ipv6(pkt.source)
        try:
            return self._incoming(pkt, src, self._clock.monotonic())
        finally:
            self._refile_address(src)  # the only peer an incoming packet touches

    def _incoming(self, pkt: Incoming, src: IPv6Address, now: float) -> list:
        dst = _ipv6(pkt.destination)
        udp = (_ipv4(pkt.udp_ip), int(pkt.udp_port))
        if dst.is_multicast:
            return self._drop("multicast_destination")

        actions: list = []
        if pkt.from_server and not self.relay:
            origin = pkt.origin
            if origin is None and pkt.bubble:
                # Miredo: some servers omit the origin indication; a Teredo
                # source tells the mapping anyway.
                parts = teredo_parts(src)
                origin = parts[1:] if parts else None
            if origin is not None:
                # §5.2.3: an indirect bubble; answer with a direct one to open the
                # path from the peer through our NAT.
                ip, port = _ipv4(origin[0]), int(origin[1])
                if self.inbound_open and teredo_parts(src):   # a client: answered when its
                    pass                                      # direct bubble arrives
                elif is_global_unicast(ip) and 0 < port <= 0xFFFF:
                    actions.append(SendDirectBubble(src, ip, port))
                else:
                    self.drops["origin_not_global"] += 1
            if pkt.bubble:
                if origin is None:
                    self.drops["bubble_without_origin"] += 1
                return actions
            # Not a bubble: our server may be a relay as well; go on.

        parts = teredo_parts(src)
        if pkt.bubble and dst.is_link_local and parts is not None and dst == self.challenge(src):
            return actions + self._answered_challenge(src, parts, udp, now)

        if src.is_link_local:
            if pkt.bubble and not self.relay and not dst.is_link_local \
                    and is_global_unicast(udp[0]):
                # A direct bubble from a link-local source (Miredo's and relays'
                # challenges): answered with source and destination swapped, to
                # where it came from, as an indirect one is (§5.2.3). A peer behind
                # a symmetric NAT reaches us only so: its bubble opened that mapping,
                # and our answer proves our address to it. One bubble for one, at
                # most the slow path's per-source rate (docs/security.md).
                return actions + [SendDirectBubble(src, udp[0], udp[1])]
            return actions + self._drop("link_local_source")

        peer = self.peers.get(src)
        if peer is not None and pkt.echo_nonce is not None and peer.nonce is not None:
            if security.nonces_equal(peer.nonce, pkt.echo_nonce):
                # §5.2.9: the test succeeded; the relay's address is the mapping.
                # The reply answers our own request: it is not delivered.
                return actions + self._trust(peer, udp, now)
            self.drops["echo_nonce_mismatch"] += 1  # then handled as any packet

        if peer is not None and peer.trusted and peer.mapping == udp:
            actions += self._received(peer, now)
            return actions + ([] if pkt.bubble else [Deliver(pkt.packet)])

        if parts is not None and parts[1:] != udp and self.is_local(udp[0]):
            return actions + self._incoming_local(pkt, src, udp, now)
        if parts is not None:
            if parts[1:] != udp:
                return actions + self._challenge_mismatch(peer, src, parts, now)
            if peer is None and self.relay and not self.accept_unknown:
                # Miredo: relays may drop packets from peers they never sent to;
                # spoofed sources then cannot fill the list with trusted entries.
                return actions + self._drop("relay_unknown_peer")
            peer, evicted = self._lookup_or_create(src, now)
            actions += evicted + self._trust(peer, udp, now)
            if pkt.bubble and self.inbound_open:   # its flow through our NAT exists now
                return actions + [SendDirectBubble(src, udp[0], udp[1])]
            return actions + ([] if pkt.bubble else [Deliver(pkt.packet)])

        if self.relay:
            # §5.4.2: relays accept only Teredo sources matching the UDP source.
            return actions + self._drop("relay_non_teredo_source")
        if pkt.bubble:
            return actions + self._drop("bubble_from_non_teredo")

        # Non-Teredo source through a relay we do not know (or no longer know):
        # hold the packet until a connectivity test proves that relay.
        peer, evicted = self._lookup_or_create(src, now)
        actions += evicted
        if peer.echo_failed:
            return actions + self._drop("connectivity_test_failed")
        self._enqueue(peer, QueuedPacket(pkt.packet, True, udp[0], udp[1]))
        return actions + self._start_echo_test(peer, now)

    # -- time --

    def on_timer(self) -> list:
        """Echo-test retries and failures that are due, then expiry."""
        now = self._clock.monotonic()
        actions: list = []
        due = self._take_due(now)
        for peer in due:
            if peer.echo_deadline is None or now < peer.echo_deadline:
                continue  # its expiry is due: expire() below
            if peer.echo_tries < self.echo_tries:
                peer.echo_tries += 1
                peer.echo_deadline = now + self.echo_timeout
                peer.last_tx = now
                # Same nonce for every try: a late answer to an earlier try is as
                # good a proof as any.
                actions.append(SendEcho(peer.address, peer.nonce))
            else:
                actions += self._echo_failed(peer)
        for peer in due:
            self._refile(peer)
        return actions + self.expire()

    def next_deadline(self) -> Optional[float]:
        """When on_timer has something to do next (None: nothing scheduled)."""
        soonest = self._deadlines.peek()
        return None if soonest is None else soonest[0]

    def due(self) -> List[Peer]:
        """The peers on_timer would act on now (echo try due, or expiry), in list
        order, without acting: so that a caller can merge the data path's activity
        of just these (`observe`) before on_timer, instead of every peer's."""
        peers = self._take_due(self._clock.monotonic())
        for peer in peers:
            self._refile(peer)
        return peers

    def holding(self) -> List[Peer]:
        """The peers with packets in their queue, in list order: those whose answer,
        if the fast path saw it, `observe` turns into sends and deliveries."""
        return sorted((self.peers[a] for a in self._holding), key=lambda p: self._order[p.address])

    def expire(self) -> list:
        """Remove peers idle for `expiry` seconds or more."""
        now = self._clock.monotonic()
        actions = []
        for peer in self._take_due(now):
            if peer.echo_deadline is None and now >= self._expires_at(peer):
                actions += self._remove(peer, "expired")
            else:
                self._refile(peer)  # an echo retry is due: on_timer's business
        return actions

    def observe(self, address, last_rx: Optional[float] = None,
                last_tx: Optional[float] = None) -> list:
        """Merge the fast path's timestamps (seconds on this list's clock).

        A newer receive on a trusted peer is an answer the fast path saw: it
        resets the bubble count and flushes what waited in the queue.
        """
        peer = self.get(address)
        if peer is None:
            return []
        actions = []
        if last_tx is not None and (peer.last_tx is None or last_tx > peer.last_tx):
            peer.last_tx = float(last_tx)
        if last_rx is not None and (peer.last_rx is None or last_rx > peer.last_rx):
            if peer.trusted:
                actions = self._received(peer, float(last_rx))
            else:
                peer.last_rx = float(last_rx)
        self._refile(peer)
        return actions

    def flush(self) -> list:
        """Forget every peer (our address changed: §5.2.7)."""
        actions = []
        for peer in list(self.peers.values()):
            actions += self._remove(peer, "flushed")
        return actions

    # -- internals --

    def _drop(self, reason: str) -> list:
        self.drops[reason] += 1
        return []

    def _lookup_or_create(self, address: IPv6Address, now: float) -> Tuple[Peer, list]:
        peer = self.peers.get(address)
        if peer is not None:
            return peer, []
        actions = []
        if len(self.peers) >= self.capacity:
            actions = self._remove(self._least_recently_active(), "evicted")
        peer = Peer(address, created=now)
        self.peers[address] = peer
        self._order[address] = next(self._created)
        # Filed by the public method that created it, once its keys are final.
        return peer, actions

    def _least_recently_active(self) -> Peer:
        """The eviction victim: the least recently active untrusted peer, or if
        every peer is trusted the least recently active one."""
        entry = self._by_activity[False].peek() or self._by_activity[True].peek()
        return self.peers[entry[-1]]

    def _refile_address(self, address: IPv6Address) -> None:
        peer = self.peers.get(address)
        if peer is not None:
            self._refile(peer)

    def _refile(self, peer: Peer) -> None:
        """Bring the peer's heap entries up to date with its state."""
        address = peer.address
        by_activity = self._by_activity[peer.trusted]
        by_activity.put(address, (peer.last_activity(), self._order[address]))
        self._by_activity[not peer.trusted].discard(address)
        deadline = peer.echo_deadline if peer.echo_deadline is not None else self._expires_at(peer)
        self._deadlines.put(address, (deadline,))
        if peer.queue:
            self._holding[address] = None
        else:
            self._holding.pop(address, None)

    def _take_due(self, now: float) -> List[Peer]:
        """Unfile and return the peers whose deadline is `now` or earlier, in the
        list's order (the order a scan found them in); the caller re-files them."""
        due = []
        while True:
            soonest = self._deadlines.peek()
            if soonest is None or soonest[0] > now:
                break
            self._deadlines.pop()
            due.append(self.peers[soonest[-1]])
        due.sort(key=lambda peer: self._order[peer.address])
        return due

    def _remove(self, peer: Peer, reason: str) -> list:
        del self.peers[peer.address]
        self._order.pop(peer.address, None)
        self._local.pop(peer.address, None)
        for index in (self._by_activity[False], self._by_activity[True], self._deadlines):
            index.discard(peer.address)
        self._holding.pop(peer.address, None)
        if peer.queue:
            self.drops[f"queued_{reason}"] += len(peer.queue)
        if _debug_enabled():
            _log.debug("peer_removed", peer=str(peer.address), reason=reason)
        return [PeerRemoved(peer.address, reason)]

    def _enqueue(self, peer: Peer, item: QueuedPacket) -> bool:
        size = len(item.packet)
        if peer.queue_bytes + size > self.queue_limit:
            self.drops["queue_full"] += 1
            return False
        peer.queue.append(item)
        peer.queue_bytes += size
        return True

    def _send_direct(self, peer: Peer, packet: bytes, now: float) -> SendDirect:
        peer.last_tx = now
        return SendDirect(peer.address, peer.mapped_ip, peer.mapped_port, packet)

    def _bubble_verdict(self, peer: Peer, now: float) -> str:
        """"send", "later" (too soon after the last one) or "exhausted" (§5.2.6)."""
        # The window is closed ([now - BUBBLE_WINDOW, now]) so that no closed
        # window of that length ever holds more than BUBBLE_MAX_UNANSWERED.
        peer.bubbles = [t for t in peer.bubbles if now - t <= BUBBLE_WINDOW]
        # Exhaustion first: queueing for a peer we may not bubble is pointless.
        if len(peer.bubbles) >= BUBBLE_MAX_UNANSWERED:
            return "exhausted"
        if peer.bubbles and now - peer.bubbles[-1] < BUBBLE_MIN_INTERVAL:
            return "later"
        return "send"

    def _start_echo_test(self, peer: Peer, now: float) -> list:
        if peer.nonce is not None:
            return []  # a test is already running; the packet just waits
        peer.nonce = security.generate_nonce(self._rng, ECHO_NONCE_MIN_LEN)
        peer.echo_tries = 1
        peer.echo_deadline = now + self.echo_timeout
        peer.last_tx = now
        return [SendEcho(peer.address, peer.nonce)]

    def _echo_failed(self, peer: Peer) -> list:
        if _debug_enabled():
            _log.debug("connectivity_test_failed", peer=str(peer.address))
        peer.nonce, peer.echo_deadline, peer.echo_failed = None, None, True
        actions = []
        for item in peer.queue:
            if item.incoming:
                self.drops["connectivity_test_failed"] += 1
            else:
                actions.append(Unreachable(peer.address, item.packet))
        peer.queue.clear()
        peer.queue_bytes = 0
        return actions

    def _trust(self, peer: Peer, udp: Tuple[IPv4Address, int], now: float) -> list:
        actions = []
        if not peer.trusted or peer.mapping != udp:
            peer.trusted = True
            peer.mapped_ip, peer.mapped_port = udp
            if _debug_enabled():
                _log.debug("peer_trusted", peer=str(peer.address), mapped=f"{udp[0]}:{udp[1]}")
            actions.append(PeerTrusted(peer.address, udp[0], udp[1]))
        peer.nonce, peer.echo_tries, peer.echo_deadline = None, 0, None
        return actions + self._received(peer, now)

    def _received(self, peer: Peer, now: float) -> list:
        """The peer answered from its mapping: reset the rate limits, flush the queue."""
        peer.last_rx = now if peer.last_rx is None else max(peer.last_rx, now)
        peer.bubbles.clear()
        peer.echo_failed = False
        actions = []
        for item in peer.queue:
            if not item.incoming:
                actions.append(self._send_direct(peer, item.packet, now))
            elif (item.udp_ip, item.udp_port) == peer.mapping:
                actions.append(Deliver(item.packet))
            else:
                self.drops["held_source_mismatch"] += 1
        peer.queue.clear()
        peer.queue_bytes = 0
        return actions

    def _expires_at(self, peer: Peer) -> float:
        at = peer.last_activity() + self.expiry
        if peer.bubbles:
            # Keep the bubble history for its whole window (see module docstring).
            at = max(at, peer.bubbles[-1] + BUBBLE_WINDOW)
        return at
