"""The swarm: finds the other peers of one feed through signaling hubs and keeps WebRTC data
channels to a bounded set of them, each opened by a handshake proving knowledge of the feed key.
The hub only ever sees the discovery key. It never reads or writes feed data: verified channels
go to the caller. Who to dial, answer, evict or refuse is streamer.core.membership's to decide;
this module does the I/O it asks for (hub posts, aiortc dials, closing channels) and the timing.
"""

# Signaling channels: `{dk}` for everyone on the topic, `{dk}.{peer}` for messages to one peer.


from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceServer

from streamer.core import crypto
from streamer.core.errors import ChannelClosed, HandshakeFailed, NetworkError
from streamer.core.handshake import Handshaker
from streamer.core.membership import (
    Action,
    Answer,
    CancelDial,
    Dial,
    Evict,
    Ignored,
    Membership,
    Post,
    Refused,
    answer_message,
    bye_message,
    offer_message,
)
from streamer.core.signal import SignalAuth, Verdict
from streamer.net.channel import MessageChannel
from streamer.net.hubclient import HubClient, Subscription
from streamer.net.iceservers import IceServers, user_ice_servers
from streamer.net.rtc import RtcPeer

log = logging.getLogger(__name__)

APP = "swarmcast"
# An offer unanswered this long is given up and its slot reused: the answerer only gathers its
# candidates (at most 5 s, aioice's limit) before it answers.
ANSWER_TIMEOUT_S = 8.0
HUB_POLL_S = 0.5  # how often the hub stream open count is checked to notice a reconnect

ConnectionCallback = Callable[[MessageChannel], Awaitable[None] | None]


@dataclass(slots=True)
class SwarmStats:
    connections_opened: int = 0
    connections_replaced: int = 0  # a neighbour dialled again and the new channel took over
    evictions: int = 0  # neighbours dropped to make room for a node that had none
    handshakes_failed: int = 0  # peers that did not prove the feed key (banned for a while)
    dials_failed: int = 0  # offers unanswered, bad SDP, ICE failures, peers gone mid-way
    hub_messages_ignored: int = 0  # malformed or misaddressed signaling messages
    signals_refused: int = 0  # signaling messages without a valid proof (forged, stale, replayed)
    signals_refused_by: dict[str, int] = field(default_factory=dict)  # by Verdict value
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
        answer_timeout: float = ANSWER_TIMEOUT_S,
        handshake_timeout: float = 10.0,
        ban_seconds: float = 60.0,
        identity: crypto.KeyPair | None = None,
        hub_ca: str | None = None,
    ) -> None:
        """`ice_servers`: a list, or a spec as in SWARMCAST_ICE_SERVERS ("none" for no servers);
        None takes $SWARMCAST_ICE_SERVERS, and when that is unset too, the hub's (GET /v1/ice).
        `hub_ca`: a PEM file of the private CA of https hubs. `identity`: the node's signaling
        key pair (a fresh one by default); the peer id is its hash."""
        if len(topic) != 32 or len(feed_key) != 32:
            raise ValueError("topic and feed key must be 32 bytes each")
        if writer_secret_key is not None and writer_secret_key[32:] != feed_key:
            raise ValueError("the writer secret key does not belong to this feed key")
        if not hubs:
            raise ValueError("a swarm needs at least one hub URL")
        # A fresh signaling key per node and per run, so ids say nothing about who is behind
        # them; the id is the key's hash, so nobody can sign messages in another node's name.
        self._auth = SignalAuth(feed_key, topic, identity)
        self.peer_id = self._auth.peer_id
        self.topic = topic
        self.stats = SwarmStats()
        self._feed_key = feed_key
        self._writer_secret_key = writer_secret_key
        user_servers = (
            ice_servers if isinstance(ice_servers, list) else user_ice_servers(ice_servers)
        )
        self._connect_timeout = connect_timeout
        self._answer_timeout = min(answer_timeout, connect_timeout)
        self._handshake_timeout = handshake_timeout
        self._ban_seconds = ban_seconds
        self._membership = Membership(
            self.peer_id,
            max_peers=max_peers,
            ban_seconds=ban_seconds,
            announce_interval=announce_interval,
            auth=self._auth,
        )
        self._hub = HubClient(hubs, ca_file=hub_ca)
        self._ice = IceServers(user_servers, self._hub.ice)
        self._dk = topic.hex()
        self._peers: dict[str, MessageChannel] = {}
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._answers: dict[str, asyncio.Future[str]] = {}
        # Arrivals not yet taken by connections(); closed ones are pruned, so it stays small
        # even when nobody iterates.
        self._arrivals: deque[MessageChannel] = deque()
        self._arrived = asyncio.Event()
        self._callbacks: list[ConnectionCallback] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()  # the announce loop re-reads the membership deadline when set
        self._joined = False
        self._leaving = False
        self._post_failing = False
        self._refusals_logged: set[Verdict] = set()

    # -- public surface ------------------------------------------------------------------------

    @property
    def max_peers(self) -> int:
        """The most neighbours (dials in progress included) this node keeps."""
        return self._membership.max_peers

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

    def neighbour_count(self, peer_id: str) -> int | None:
        """How many neighbours `peer_id` last said it has (None: not heard)."""
        return self._membership.neighbour_count(peer_id)

    def is_banned(self, peer_id: str) -> bool:
        return self._membership.is_banned(peer_id, time.monotonic())

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
        self._membership.leave()
        for task in list(self._dialing.values()):
            task.cancel()
        if self._joined:
            with contextlib.suppress(NetworkError, asyncio.TimeoutError):
                await asyncio.wait_for(self._send(bye_message()), 2.0)
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

    async def _send(self, post: Post) -> None:
        channel = self._dk if post.to is None else f"{self._dk}.{post.to}"
        sealed = self._auth.seal(post.message, int(time.time() * 1000), secrets.token_hex(8))
        await self._hub.broadcast(APP, channel, sealed)

    async def _send_quietly(self, post: Post) -> None:
        """Post, logging a failure once until a post succeeds again (the hub may be down a while;
        open channels do not need it, and announcing again later is enough)."""
        try:
            await self._send(post)
        except NetworkError as e:
            if not self._post_failing:
                log.info("swarm %s: cannot signal (%s); retrying in the background",
                         self.peer_id[:8], e)
            self._post_failing = True
            return
        self._post_failing = False

    async def _announce_loop(self) -> None:
        membership = self._membership
        # Ends on leave() even if its cancellation is lost (asyncio.wait_for can swallow one that
        # races the wake-up).
        while not self._leaving:
            for action in membership.announce():
                if isinstance(action, Post):
                    await self._send_quietly(action)
                else:
                    self._execute(action)
            membership.announced(time.monotonic())
            # The deadline moves with every input (a request, a first neighbour): re-read it on
            # every wake-up.
            while (remaining := membership.announce_deadline() - time.monotonic()) > 0:
                if self._leaving:
                    return
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)

    def _execute(self, action: Action) -> None:
        """Carry out one decision of the membership policy."""
        if isinstance(action, Post):
            self._spawn(self._send_quietly(action))
        elif isinstance(action, Dial):
            self._dial(action.peer, action.offer)
        elif isinstance(action, Evict):
            victim = self._peers.pop(action.peer, None)
            if victim is not None:
                self.stats.evictions += 1
                self._spawn(victim.close("made room for a newcomer"))
        elif isinstance(action, Answer):
            future = self._answers.get(action.peer)
            if future is None or future.done():
                return
            if action.sdp is not None:
                future.set_result(action.sdp)
            else:
                future.set_exception(NetworkError(f"peer {action.peer} declined the connection"))
        elif isinstance(action, CancelDial):
            task = self._dialing.get(action.peer)
            if task is not None:
                task.cancel()
        elif isinstance(action, Ignored):
            self.stats.hub_messages_ignored += 1
            log.info("swarm %s: ignored a signaling message: %s", self.peer_id[:8], action.why)
        elif isinstance(action, Refused):
            self._refused(action)

    def _refused(self, refused: Refused) -> None:
        """Count a message without a valid proof; say so once per kind (a storm of forgeries
        must not flood the log), and name a clock far off, which only the user can fix."""
        self.stats.signals_refused += 1
        by = self.stats.signals_refused_by
        by[refused.verdict.value] = by.get(refused.verdict.value, 0) + 1
        if refused.verdict in self._refusals_logged:
            return
        self._refusals_logged.add(refused.verdict)
        if refused.verdict is Verdict.STALE:
            log.warning(
                "swarm %s: dropping signaling messages stamped %.0f s away from this machine's "
                "clock; check that the clocks of this machine and the other peers are set (NTP)",
                self.peer_id[:8], refused.skew_s,
            )
        else:
            log.info(
                "swarm %s: dropping signaling messages without a valid proof (%s); counted in "
                "the stats as signals_refused", self.peer_id[:8], refused.verdict.value,
            )

    async def _listen(self, subscription: Subscription) -> None:
        try:
            async for message in subscription:
                try:
                    deadline = self._membership.announce_deadline()
                    actions = self._membership.signal(
                        message, time.monotonic(), int(time.time() * 1000)
                    )
                    for action in actions:
                        self._execute(action)
                    if self._membership.announce_deadline() != deadline:
                        self._wake.set()
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
                self._membership.request_announce()
                self._wake.set()

    # -- connections ---------------------------------------------------------------------------

    def _dial(self, remote: str, offer: str | None) -> None:
        task = asyncio.ensure_future(self._connect(remote, offer is None, offer))
        self._dialing[remote] = task
        task.add_done_callback(lambda _: self._dial_ended(remote))

    def _dial_ended(self, remote: str) -> None:
        self._dialing.pop(remote, None)
        self._membership.dial_ended(remote)

    async def _connect(self, remote: str, initiator: bool, offer: str | None) -> None:
        peer = RtcPeer(remote, initiator=initiator, ice_servers=self._ice.current())
        conn: MessageChannel | None = None
        try:
            if initiator:
                future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self._answers[remote] = future
                sdp = await peer.offer()
                await self._send(offer_message(remote, sdp))
                try:
                    answer = await asyncio.wait_for(future, self._answer_timeout)
                except asyncio.TimeoutError:
                    raise NetworkError("no answer to our offer") from None
                await peer.accept(answer)
            else:
                assert offer is not None
                answer = await peer.answer(offer)
                await self._send(answer_message(remote, answer))
            conn = await peer.channel(self._connect_timeout)
            await asyncio.wait_for(self._handshake(peer, conn, initiator), self._handshake_timeout)
        except asyncio.CancelledError:
            await peer.close()
            raise
        except HandshakeFailed as e:
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
        """The feed-key handshake (core.handshake, sans-IO) over a new channel."""
        handshake = Handshaker(
            self._feed_key, peer.handshake_hash(), initiator, self._writer_secret_key
        )
        for chunk in handshake.datagrams_to_send():
            await conn.send(chunk)
        conn.is_writer = handshake.receive(await conn.recv())

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
        for action in self._membership.connected(remote, conn.is_writer):
            self._execute(action)
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
            # A free slot: the membership announces at once so a replacement finds us.
            for action in self._membership.disconnected(conn.peer_id):
                self._execute(action)
            self._wake.set()

    def ban(self, peer_id: str) -> None:
        """Refuse `peer_id` (no dialling, no answering) for `ban_seconds`: for peers that failed the
        handshake here, or misbehaved in replication. Its open channel is the caller's to close."""
        self._membership.ban(peer_id, time.monotonic())

    _ban = ban  # the name streamer/net/replicator.py calls until it switches to ban()
