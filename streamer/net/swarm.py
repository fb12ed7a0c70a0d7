"""The swarm: finds the other peers of one feed through signaling hubs and keeps WebRTC data
channels to a bounded set of them, each opened by a handshake proving knowledge of the feed key.
The hub only ever sees the discovery key. It never reads or writes feed data: verified channels
go to the caller.
"""

# Signaling: `{dk}` carries "I am here" (hello, with the neighbour count) and "bye"; `{dk}.{peer}`
# carries hello, full, offer, answer and reject addressed to one peer. The lower peer id offers.
# A node with no neighbour that only hears "full" asks one full node to make room for it.


from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCIceServer

from streamer.core import wire
from streamer.core.errors import NetworkError, ProofError, WireError
from streamer.core.replication import check_handshake, make_handshake
from streamer.net.channel import ChannelClosed, MessageChannel
from streamer.net.hubclient import HubClient, Subscription
from streamer.net.iceservers import IceServers, user_ice_servers
from streamer.net.rtc import MAX_SDP, RtcPeer

log = logging.getLogger(__name__)

APP = "swarmcast"
PEER_ID = re.compile(r"[0-9a-f]{32}")
HUB_POLL_S = 0.5  # how often the hub stream open count is checked to notice a reconnect
MAX_BANNED = 1024  # peer ids remembered as bad at once; the oldest is forgotten first
MAX_FULL_NODES = 32  # full nodes an isolated node remembers as candidates to make room for it
EVICT_COOLDOWN_S = 5.0  # a full node makes room for a newcomer at most this often
ISOLATED_RETRY_S = 2.0  # a node with no neighbour announces (or asks for room) this often

ConnectionCallback = Callable[[MessageChannel], Awaitable[None] | None]


@dataclass(slots=True)
class SwarmStats:
    connections_opened: int = 0
    connections_replaced: int = 0  # a neighbour dialled again and the new channel took over
    evictions: int = 0  # neighbours dropped to make room for a node that had none
    handshakes_failed: int = 0  # peers that did not prove the feed key (banned for a while)
    dials_failed: int = 0  # offers unanswered, bad SDP, ICE failures, peers gone mid-way
    hub_messages_ignored: int = 0  # malformed or misaddressed signaling messages
    closed_bytes_sent: int = 0  # payload bytes of neighbours already gone (live ones: conn.stats)
    closed_bytes_received: int = 0


class Swarm:
    """One node's membership in the swarm of one feed.

    `async for conn in swarm.connections()` (one consumer) or `swarm.on_connection(cb)` yields
    every neighbour once its handshake verified; `conn.peer_id`, `conn.is_writer` describe it.
    """

    def __init__(
        self,
        topic: bytes,
        feed_key: bytes,
        hubs: list[str],
        *,
        max_peers: int = 6,
        writer_secret_key: bytes | None = None,
        ice_servers: list[RTCIceServer] | str | None = None,
        announce_interval: float = 10.0,
        connect_timeout: float = 15.0,
        handshake_timeout: float = 10.0,
        ban_seconds: float = 60.0,
        peer_id: str | None = None,
        hub_ca: str | None = None,
    ) -> None:
        """`ice_servers`: a list, or a spec as in SWARMCAST_ICE_SERVERS ("none" for no servers);
        None takes $SWARMCAST_ICE_SERVERS, and when that is unset too, the hub's (GET /v1/ice).
        `hub_ca`: a PEM file of the private CA of https hubs."""
        if len(topic) != 32 or len(feed_key) != 32:
            raise ValueError("topic and feed key must be 32 bytes each")
        if writer_secret_key is not None and writer_secret_key[32:] != feed_key:
            raise ValueError("the writer secret key does not belong to this feed key")
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        if not hubs:
            raise ValueError("a swarm needs at least one hub URL")
        if peer_id is not None and not PEER_ID.fullmatch(peer_id):
            raise ValueError("a peer id is 32 lowercase hex digits")
        # Random per node (and per run), so ids say nothing about who is behind them.
        self.peer_id = peer_id or secrets.token_hex(16)
        self.topic = topic
        self.max_peers = max_peers
        self.stats = SwarmStats()
        self._feed_key = feed_key
        self._writer_secret_key = writer_secret_key
        user_servers = (
            ice_servers if isinstance(ice_servers, list) else user_ice_servers(ice_servers)
        )
        self._announce_interval = announce_interval
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._ban_seconds = ban_seconds
        self._hub = HubClient(hubs, ca_file=hub_ca)
        self._ice = IceServers(user_servers, self._hub.ice)
        self._dk = topic.hex()
        self._peers: dict[str, MessageChannel] = {}
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._answers: dict[str, asyncio.Future[str]] = {}
        self._banned: dict[str, float] = {}
        # Arrivals not yet taken by connections(); closed ones are pruned, so it stays small
        # even when nobody iterates.
        self._arrivals: deque[MessageChannel] = deque()
        self._arrived = asyncio.Event()
        self._callbacks: list[ConnectionCallback] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()  # the announce loop re-evaluates when set
        self._announce_requested = False
        self._full_nodes: dict[str, None] = {}  # heard "full" from them while we were isolated
        self._asked: str | None = None  # the full node last asked to make room for us
        self._last_eviction = -EVICT_COOLDOWN_S
        self._joined = False
        self._leaving = False
        self._post_failing = False

    # -- public surface ------------------------------------------------------------------------

    @property
    def peers(self) -> dict[str, MessageChannel]:
        """Verified neighbours by peer id (a copy)."""
        return dict(self._peers)

    def traffic(self) -> tuple[int, int]:
        """Payload bytes (sent, received) over all neighbours since join, gone ones included."""
        live = list(self._peers.values())
        return (
            self.stats.closed_bytes_sent + sum(c.stats.bytes_sent for c in live),
            self.stats.closed_bytes_received + sum(c.stats.bytes_received for c in live),
        )

    def is_banned(self, peer_id: str) -> bool:
        until = self._banned.get(peer_id)
        return until is not None and until > time.monotonic()

    def on_connection(self, callback: ConnectionCallback) -> None:
        """Call `callback(conn)` (plain or async) for every verified neighbour from now on."""
        self._callbacks.append(callback)

    async def connections(self) -> AsyncIterator[MessageChannel]:
        """Verified neighbours as they arrive, including ones that arrived before the call;
        ends when the swarm leaves."""
        while True:
            while self._arrivals:
                conn = self._arrivals.popleft()
                if not conn.closed:
                    yield conn
            if self._leaving:
                return
            self._arrived.clear()
            await self._arrived.wait()

    async def join(self) -> None:
        """Subscribe to the hubs and announce this node; returns once listening."""
        if self._joined:
            return
        self._joined = True
        subscription = self._hub.subscribe(APP, [self._dk, f"{self._dk}.{self.peer_id}"])
        self._spawn(self._listen(subscription))
        with contextlib.suppress(asyncio.TimeoutError):
            # A hub that is down now is retried in the background; joining does not wait for it.
            await asyncio.gather(subscription.wait_connected(5.0), self._ice.wait_ready(5.0))
        self._spawn(self._watch_hubs(subscription))
        self._spawn(self._announce_loop())

    async def leave(self) -> None:
        """Close every channel, say bye on the hubs, stop. Idempotent."""
        if self._leaving:
            return
        self._leaving = True
        for task in list(self._dialing.values()):
            task.cancel()
        if self._joined:
            with contextlib.suppress(NetworkError, asyncio.TimeoutError):
                await asyncio.wait_for(self._post(self._dk, {"type": "bye"}), 2.0)
        await asyncio.gather(*(c.close("left the swarm") for c in list(self._peers.values())))
        await asyncio.gather(*self._dialing.values(), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._ice.close()
        await self._hub.close()
        self._arrived.set()

    async def __aenter__(self) -> Swarm:
        await self.join()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.leave()

    # -- signaling -----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _room(self) -> bool:
        return len(self._peers) + len(self._dialing) < self.max_peers

    async def _post(self, channel: str, message: dict[str, Any]) -> None:
        await self._hub.broadcast(APP, channel, {**message, "from": self.peer_id})

    async def _post_quietly(self, channel: str, message: dict[str, Any]) -> None:
        """Post, logging a failure once until a post succeeds again (the hub may be down a while;
        open channels do not need it, and announcing again later is enough)."""
        try:
            await self._post(channel, message)
        except NetworkError as e:
            if not self._post_failing:
                log.info("swarm %s: cannot signal (%s); retrying in the background",
                         self.peer_id[:8], e)
            self._post_failing = True
            return
        self._post_failing = False

    async def _announce_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before posting: replies to this announcement may ask for the next one.
            self._announce_requested = False
            if self._room():
                if not self._peers and not self._dialing and self._full_nodes:
                    await self._ask_for_room()
                else:
                    await self._post_quietly(self._dk, {"type": "hello", "n": len(self._peers)})
            posted_at = loop.time()
            # Jitter keeps a swarm that started together from announcing in lockstep.
            jitter = random.uniform(0.8, 1.2)
            while not self._announce_requested:
                # Recomputed on every wake-up: a node that just found its first neighbour
                # moves from the quick isolated retry to the normal interval.
                interval = self._announce_interval * jitter
                if not self._peers:
                    interval = min(interval, ISOLATED_RETRY_S)
                remaining = posted_at + interval - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)

    def _request_announce(self) -> None:
        self._announce_requested = True
        self._wake.set()

    async def _listen(self, subscription: Subscription) -> None:
        try:
            async for message in subscription:
                try:
                    self._handle(message)
                except Exception as e:  # one bad message must never stop the listener
                    self.stats.hub_messages_ignored += 1
                    log.warning(
                        "swarm %s: ignored a signaling message (%s: %s)",
                        self.peer_id[:8],
                        e.__class__.__name__,
                        e,
                    )
        except NetworkError as e:
            log.error("swarm %s: %s", self.peer_id[:8], e)
        finally:
            await subscription.aclose()

    async def _watch_hubs(self, subscription: Subscription) -> None:
        """Announce as soon as a hub stream (re)opens: after a hub restart nobody there knows us."""
        opens = subscription.opens
        while True:
            await asyncio.sleep(HUB_POLL_S)
            if subscription.opens != opens:
                opens = subscription.opens
                self._request_announce()

    def _handle(self, message: object) -> None:
        if not isinstance(message, dict):
            self._ignore("not an object")
            return
        kind, sender, to = message.get("type"), message.get("from"), message.get("to")
        if not isinstance(sender, str) or not PEER_ID.fullmatch(sender):
            self._ignore("bad sender id")
            return
        if sender == self.peer_id or self._leaving:
            return
        if to is not None and to != self.peer_id:
            self._ignore("addressed to another peer")
            return
        if kind == "hello":
            self._on_hello(
                sender, message.get("n"), message.get("evict") is True and to is not None
            )
        elif kind == "full" and to is not None:
            self._on_full(sender)
        elif kind == "offer" and to is not None:
            self._on_offer(sender, message.get("sdp"))
        elif kind in ("answer", "reject") and to is not None:
            future = self._answers.get(sender)
            if future is None or future.done():
                return
            sdp = message.get("sdp")
            if kind == "answer" and isinstance(sdp, str) and len(sdp) <= MAX_SDP:
                future.set_result(sdp)
            else:
                future.set_exception(NetworkError(f"peer {sender} declined the connection"))
        elif kind == "bye":
            task = self._dialing.get(sender)
            if task is not None:
                task.cancel()
        else:
            self._ignore(f"unknown type {str(kind)[:20]!r}")

    def _ignore(self, why: str) -> None:
        self.stats.hub_messages_ignored += 1
        log.info("swarm %s: ignored a signaling message: %s", self.peer_id[:8], why)

    def _on_hello(self, sender: str, their_peers: object, evict: bool) -> None:
        if sender in self._peers or sender in self._dialing or self.is_banned(sender):
            return
        if not self._room() and evict:
            self._make_room()
        if not self._room():
            if their_peers == 0:
                # It has nobody; tell it we exist (or that we cannot make room just now), so it
                # can ask one of us, or another one, to make room.
                self._spawn(
                    self._post_quietly(f"{self._dk}.{sender}", {"type": "full", "to": sender})
                )
            return
        if self.peer_id < sender:
            self._dial(sender, initiator=True)
        else:
            # The lower id offers: ask it to dial us.
            self._spawn(self._post_quietly(f"{self._dk}.{sender}", {"type": "hello", "to": sender}))

    def _on_full(self, sender: str) -> None:
        if self._peers:
            return
        if sender == self._asked:
            # It cannot make room just now: ask the next one at once.
            self._asked = None
            self._request_announce()
        elif sender not in self._full_nodes and len(self._full_nodes) < MAX_FULL_NODES:
            if not self._full_nodes:
                # Ask the first one at once; the others are asked only if it cannot help, so
                # one newcomer does not make several nodes drop a neighbour.
                self._request_announce()
            self._full_nodes[sender] = None

    async def _ask_for_room(self) -> None:
        """We have no neighbour and everyone we heard of is full: ask one of them to make room."""
        target = random.choice(list(self._full_nodes))
        del self._full_nodes[target]
        self._asked = target
        await self._post_quietly(
            f"{self._dk}.{target}", {"type": "hello", "to": target, "n": 0, "evict": True}
        )

    def _make_room(self) -> None:
        """Drop one neighbour (never the writer if another will do) so an isolated node gets in.
        The dropped one keeps its other neighbours and finds a replacement by announcing."""
        now = time.monotonic()
        if now - self._last_eviction < EVICT_COOLDOWN_S or not self._peers:
            return
        candidates = [c for c in self._peers.values() if not c.is_writer] or list(
            self._peers.values()
        )
        victim = random.choice(candidates)
        self._last_eviction = now
        self.stats.evictions += 1
        del self._peers[victim.peer_id]
        self._spawn(victim.close("made room for a newcomer"))

    def _on_offer(self, sender: str, sdp: object) -> None:
        reply_to = f"{self._dk}.{sender}"
        if sender > self.peer_id:
            self._ignore("offer from the higher peer id")
            return
        if sender in self._dialing:
            return
        if self.is_banned(sender) or not isinstance(sdp, str) or len(sdp) > MAX_SDP:
            self._spawn(self._post_quietly(reply_to, {"type": "reject", "to": sender}))
            return
        # A neighbour that dials again has lost our channel. The old one is kept until the new
        # one passes the handshake, so a forged offer cannot cut a working connection.
        if sender not in self._peers and not self._room():
            self._spawn(self._post_quietly(reply_to, {"type": "reject", "to": sender}))
            return
        self._dial(sender, initiator=False, offer=sdp)

    # -- connections ---------------------------------------------------------------------------

    def _dial(self, remote: str, *, initiator: bool, offer: str | None = None) -> None:
        task = asyncio.ensure_future(self._connect(remote, initiator, offer))
        self._dialing[remote] = task
        task.add_done_callback(lambda _: self._dialing.pop(remote, None))

    async def _connect(self, remote: str, initiator: bool, offer: str | None) -> None:
        peer = RtcPeer(remote, initiator=initiator, ice_servers=self._ice.current())
        conn: MessageChannel | None = None
        try:
            if initiator:
                future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self._answers[remote] = future
                sdp = await peer.offer()
                await self._post(
                    f"{self._dk}.{remote}", {"type": "offer", "to": remote, "sdp": sdp}
                )
                try:
                    answer = await asyncio.wait_for(future, self._connect_timeout)
                except asyncio.TimeoutError:
                    raise NetworkError("no answer to our offer") from None
                await peer.accept(answer)
            else:
                assert offer is not None
                answer = await peer.answer(offer)
                await self._post(
                    f"{self._dk}.{remote}", {"type": "answer", "to": remote, "sdp": answer}
                )
            conn = await peer.channel(self._connect_timeout)
            await asyncio.wait_for(self._handshake(peer, conn, initiator), self._handshake_timeout)
        except asyncio.CancelledError:
            await peer.close()
            raise
        except _HandshakeFailed as e:
            self.stats.handshakes_failed += 1
            self.ban(remote)
            log.warning(
                "swarm %s: peer %s failed the handshake (%s); banned for %.0f s",
                self.peer_id[:8],
                remote[:8],
                e,
                self._ban_seconds,
            )
            await peer.close()
            return
        except (NetworkError, ChannelClosed, asyncio.TimeoutError) as e:
            self.stats.dials_failed += 1
            log.info(
                "swarm %s: connecting to %s failed: %s",
                self.peer_id[:8],
                remote[:8],
                e or "timeout",
            )
            await peer.close()
            return
        except Exception as e:  # aiortc can fail in many ways on hostile input: drop only this peer
            self.stats.dials_failed += 1
            log.warning(
                "swarm %s: connecting to %s failed: %s: %s",
                self.peer_id[:8],
                remote[:8],
                e.__class__.__name__,
                e,
            )
            await peer.close()
            return
        finally:
            self._answers.pop(remote, None)
        self._accept(conn)

    async def _handshake(self, peer: RtcPeer, conn: MessageChannel, initiator: bool) -> None:
        handshake_hash = peer.handshake_hash()
        ours = make_handshake(self._feed_key, handshake_hash, initiator, self._writer_secret_key)
        for chunk in wire.Framer().frame(wire.encode_message(ours)):
            await conn.send(chunk)
        try:
            messages = wire.Reassembler().feed(await conn.recv())
            theirs = wire.decode_message(messages[0]) if messages else None
        except WireError as e:
            raise _HandshakeFailed(f"bad handshake message: {e}") from None
        if not isinstance(theirs, wire.Handshake):
            raise _HandshakeFailed("its first message is not a handshake")
        try:
            conn.is_writer = check_handshake(theirs, self._feed_key, handshake_hash, initiator)
        except ProofError as e:
            raise _HandshakeFailed(str(e)) from None

    def _accept(self, conn: MessageChannel) -> None:
        remote = conn.peer_id
        if self._leaving:
            self._spawn(conn.close("left the swarm"))
            return
        old = self._peers.get(remote)
        if old is not None:
            self.stats.connections_replaced += 1
            self._spawn(old.close("replaced by a new connection"))
        self._peers[remote] = conn
        self._full_nodes.clear()
        self._wake.set()
        self.stats.connections_opened += 1
        log.info(
            "swarm %s: connected to %s%s (%d neighbours)",
            self.peer_id[:8],
            remote[:8],
            " (writer)" if conn.is_writer else "",
            len(self._peers),
        )
        self._spawn(self._watch(conn))
        self._arrivals = deque(c for c in self._arrivals if not c.closed)
        self._arrivals.append(conn)
        self._arrived.set()
        for callback in self._callbacks:
            try:
                result = callback(conn)
                if asyncio.iscoroutine(result):
                    self._spawn(self._guard(result))
            except Exception:
                log.exception("swarm %s: connection callback failed", self.peer_id[:8])

    async def _guard(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except Exception:
            log.exception("swarm %s: connection callback failed", self.peer_id[:8])

    async def _watch(self, conn: MessageChannel) -> None:
        await conn.wait_closed()
        self.stats.closed_bytes_sent += conn.stats.bytes_sent
        self.stats.closed_bytes_received += conn.stats.bytes_received
        if self._peers.get(conn.peer_id) is conn:
            del self._peers[conn.peer_id]
            log.info(
                "swarm %s: %s left (%s)", self.peer_id[:8], conn.peer_id[:8], conn.close_reason
            )
            # A free slot: announce now so a replacement finds us.
            self._request_announce()

    def ban(self, peer_id: str) -> None:
        """Refuse `peer_id` (no dialling, no answering) for `ban_seconds`: for peers that failed the
        handshake here, or misbehaved in replication. Its open channel is the caller's to close."""
        now = time.monotonic()
        for stale in [p for p, until in self._banned.items() if until <= now]:
            del self._banned[stale]
        if len(self._banned) >= MAX_BANNED:
            self._banned.pop(next(iter(self._banned)))
        self._banned[peer_id] = now + self._ban_seconds

    _ban = ban  # the name streamer/net/replicator.py calls until it switches to ban()


class _HandshakeFailed(Exception):
    """The peer did not prove it knows the feed key (or lied about being the writer)."""
