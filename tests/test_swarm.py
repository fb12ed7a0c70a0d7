"""The swarm over a real hub (in-process aiohttp on a free port) and real aiortc peers on
127.0.0.1: mesh forming, the neighbour bound, making room for newcomers, the feed-key handshake,
writer identification, hub restarts and two hubs, graceful leave, hostile signaling, silent and
flooding peers, ICE server configuration. (Idle timeouts: tests/test_channel_conformance.py.)"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from streamer.core import crypto
from streamer.core.errors import UsageError
from streamer.core.signal import SignalAuth, peer_id_of
from streamer.hub import HubConfig, HubServer, start_hub
from streamer.net.channel import MessageChannel
from streamer.net.hubclient import HubClient
from streamer.net.iceservers import parse_ice_servers
from streamer.net.loop import run
from streamer.net.rtc import RtcPeer
from streamer.net.swarm import APP, Swarm
from tests.waiting import eventually

# Every peer of a test shares 127.0.0.1, so the hub's per-address rate limit must not bite.
HUB_CONFIG = HubConfig(rate_per_second=10_000, rate_burst=10_000)
WRITER = crypto.key_pair(b"\x01" * 32)
TOPIC = crypto.discovery_key(WRITER.public_key)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub(config=HUB_CONFIG)
    yield server
    await server.stop()


@pytest.fixture
async def make_swarm(hub: HubServer) -> AsyncIterator[Callable[..., Swarm]]:
    swarms: list[Swarm] = []

    def make(**kwargs) -> Swarm:
        kwargs.setdefault("announce_interval", 0.5)
        kwargs.setdefault("feed_key", WRITER.public_key)
        kwargs.setdefault("ice_servers", [])
        swarm = Swarm(TOPIC, hubs=[hub.url], **kwargs)
        swarms.append(swarm)
        return swarm

    yield make
    await asyncio.gather(*(s.leave() for s in swarms))


def identity_where(ok: Callable[[str], bool]) -> crypto.KeyPair:
    """A node key pair whose peer id passes `ok` (to choose who offers)."""
    while True:
        pair = crypto.key_pair()
        if ok(peer_id_of(pair.public_key)):
            return pair


def insider(ok: Callable[[str], bool]) -> SignalAuth:
    """A node that knows the stream key (it signs valid messages), its id passing `ok`."""
    return SignalAuth(WRITER.public_key, TOPIC, identity_where(ok))


def sealed(auth: SignalAuth, message: dict) -> dict:
    return auth.seal(message, int(time.time() * 1000), secrets.token_hex(8))


def connected(a: Swarm, b: Swarm) -> bool:
    return b.peer_id in a.peers and a.peer_id in b.peers


async def test_peers_of_one_feed_form_a_mesh_and_know_the_writer(make_swarm):
    writer = make_swarm(writer_secret_key=WRITER.secret_key, max_peers=3)
    viewers = [make_swarm() for _ in range(4)]
    everyone = [writer, *viewers]
    await asyncio.gather(*(s.join() for s in everyone))

    def mesh_is_connected() -> bool:
        """Over links both ends hold (one end may count a channel a moment before the other)."""
        seen, todo = {writer.peer_id}, [writer]
        by_id = {s.peer_id: s for s in everyone}
        while todo:
            node = todo.pop()
            for peer_id in node.peers:
                if peer_id not in seen and connected(node, by_id[peer_id]):
                    seen.add(peer_id)
                    todo.append(by_id[peer_id])
        return len(seen) == len(everyone)

    await eventually(mesh_is_connected)
    assert 1 <= len(writer.peers) <= 3
    for viewer in viewers:
        for peer_id, conn in viewer.peers.items():
            assert conn.is_writer == (peer_id == writer.peer_id)
    assert not any(conn.is_writer for conn in writer.peers.values())

    # The channels handed out carry the caller's bytes, both ways.
    viewer = next(v for v in viewers if writer.peer_id in v.peers)
    await writer.peers[viewer.peer_id].send(b"block 0")
    assert await asyncio.wait_for(viewer.peers[writer.peer_id].recv(), 10) == b"block 0"
    await viewer.peers[writer.peer_id].send(b"want 1")
    assert await asyncio.wait_for(writer.peers[viewer.peer_id].recv(), 10) == b"want 1"


async def test_connections_arrive_through_the_iterator_and_the_callback(make_swarm):
    a, b = make_swarm(), make_swarm()
    called: list[MessageChannel] = []
    a.on_connection(called.append)
    await asyncio.gather(a.join(), b.join())

    async def first(swarm: Swarm) -> MessageChannel:
        async for conn in swarm.connections():
            return conn
        raise AssertionError("the swarm ended without a connection")

    conn_a, conn_b = await asyncio.wait_for(asyncio.gather(first(a), first(b)), 20)
    assert (conn_a.peer_id, conn_b.peer_id) == (b.peer_id, a.peer_id)
    assert called == [conn_a]


async def test_no_peer_keeps_more_neighbours_than_its_bound(make_swarm):
    swarms = [make_swarm(max_peers=2) for _ in range(5)]
    peak = 0

    def record(_: MessageChannel) -> None:
        nonlocal peak
        peak = max(peak, *(len(s.peers) for s in swarms))

    for swarm in swarms:
        swarm.on_connection(record)
    await asyncio.gather(*(s.join() for s in swarms))
    # With 5 nodes and at most 2 neighbours each, every state nobody can improve has >= 4 links.
    await eventually(lambda: sum(len(s.peers) for s in swarms) >= 8)
    assert peak <= 2
    assert all(len(s.peers) <= 2 for s in swarms)


async def test_a_newcomer_gets_a_neighbour_even_when_everyone_is_full(make_swarm):
    trio = [make_swarm(max_peers=2) for _ in range(3)]
    await asyncio.gather(*(s.join() for s in trio))
    await eventually(lambda: all(len(s.peers) == 2 for s in trio))
    newcomer = make_swarm(max_peers=2)
    await newcomer.join()
    await eventually(lambda: len(newcomer.peers) >= 1)
    assert sum(s.stats.evictions for s in trio) >= 1
    assert all(len(s.peers) <= 2 for s in [*trio, newcomer])


async def test_a_peer_with_the_wrong_feed_key_is_refused_on_both_sides(make_swarm, caplog):
    """Same discovery key, another stream key: its signaling carries no valid proof, so neither
    side ever dials the other (the handshake would refuse it too: tests/test_handshake.py)."""
    caplog.set_level(logging.INFO, logger="streamer.net.swarm")
    good = make_swarm()
    impostor = make_swarm(feed_key=crypto.key_pair(b"\x02" * 32).public_key)
    await asyncio.gather(good.join(), impostor.join())
    await eventually(
        lambda: good.stats.signals_refused >= 2 and impostor.stats.signals_refused >= 2
    )
    assert good.stats.signals_refused_by.keys() == {"bad_mac"}
    assert not good.peers and not impostor.peers
    assert good.stats.dials_failed == 0 and good.stats.handshakes_failed == 0
    refusals = [r.getMessage() for r in caplog.records if "without a valid proof" in r.getMessage()]
    assert len(refusals) == 2  # one line per node, however many messages

    # A newcomer that knows the key still gets in.
    friend = make_swarm()
    await friend.join()
    await eventually(lambda: connected(good, friend))
    assert impostor.peer_id not in friend.peers


async def test_a_forged_writer_claim_is_rejected(make_swarm):
    # Knows the feed key (so its capability is right) but signs with a key that is not the writer's.
    liar = make_swarm()
    liar._writer_secret_key = crypto.key_pair(b"\x03" * 32).secret_key
    honest = make_swarm()
    await asyncio.gather(liar.join(), honest.join())
    await eventually(lambda: honest.stats.handshakes_failed >= 1)
    assert not honest.peers


async def test_connections_survive_a_hub_restart_and_newcomers_join_after_it(hub, make_swarm):
    # Long announce intervals: after the restart only the reconnect makes them announce soon.
    a, b = make_swarm(announce_interval=60), make_swarm(announce_interval=60)
    await asyncio.gather(a.join(), b.join())
    await eventually(lambda: connected(a, b))
    conn_ab, conn_ba = a.peers[b.peer_id], b.peers[a.peer_id]

    await hub.stop()
    await conn_ab.send(b"while the hub is down")
    assert await asyncio.wait_for(conn_ba.recv(), 10) == b"while the hub is down"

    again = HubServer(hub.host, hub.port, config=HUB_CONFIG)
    await again.start()
    try:
        # Both announce themselves again as soon as their hub stream reopens.
        await eventually(lambda: again.hub.metrics.messages_received >= 2, timeout=10)
        c = make_swarm()
        await c.join()
        await eventually(lambda: c.peers and (connected(c, a) or connected(c, b)), timeout=30)
        assert a.peers[b.peer_id] is conn_ab and not conn_ab.closed
        await conn_ba.send(b"after the restart")
        assert await asyncio.wait_for(conn_ab.recv(), 10) == b"after the restart"
    finally:
        await again.stop()


async def test_a_graceful_leave_is_seen_by_the_neighbours(make_swarm):
    a, b = make_swarm(), make_swarm()
    await asyncio.gather(a.join(), b.join())
    await eventually(lambda: connected(a, b))
    conn = a.peers[b.peer_id]
    await b.leave()
    await asyncio.wait_for(conn.wait_closed(), 10)
    assert conn.close_reason == "closed by peer"
    await eventually(lambda: not a.peers)


async def test_hostile_signaling_is_ignored_and_the_node_keeps_working(hub, make_swarm):
    target = make_swarm(connect_timeout=2.0, identity=identity_where(lambda i: i < "2"))
    await target.join()
    dk = TOPIC.hex()
    direct = f"{dk}.{target.peer_id}"
    async with HubClient([hub.url]) as raw:
        # Without the stream key (anyone on the hub): dropped and counted, whatever it says.
        for channel, message in [
            (dk, "not an object"),
            (dk, [1, 2, 3]),
            (dk, {"type": "hello"}),
            (dk, {"type": "hello", "from": "not hex"}),
            (direct, {"type": "offer", "from": "0" * 32, "to": target.peer_id, "sdp": "v=0"}),
            (dk, {"type": "hello", "from": "f" * 32, "n": 0}),
        ]:
            await raw.broadcast(APP, channel, message)
        await eventually(
            lambda: target.stats.hub_messages_ignored >= 2 and target.stats.signals_refused >= 4
        )
        assert target.stats.signals_refused_by == {"no_proof": 4}
        # With the key (a viewer of a named stream): signed, but hostile.
        low = insider(lambda i: i < target.peer_id)
        high = insider(lambda i: i > target.peer_id)
        for channel, message, auth in [
            (dk, {"type": "teleport"}, low),
            (direct, {"type": "offer", "to": target.peer_id, "sdp": "garbage"}, low),
            (direct, {"type": "offer", "to": target.peer_id, "sdp": 42}, low),
            (direct, {"type": "answer", "to": target.peer_id, "sdp": "v=0"}, high),
            (direct, {"type": "offer", "to": target.peer_id, "sdp": "v=0"}, high),
            # A peer that asks to be dialled and then never answers.
            (dk, {"type": "hello"}, high),
        ]:
            await raw.broadcast(APP, channel, sealed(auth, message))
        await eventually(lambda: target.stats.hub_messages_ignored >= 4)
        await eventually(lambda: target.stats.dials_failed >= 2)
        # Replayed, and in another peer's name: dropped too.
        replay = sealed(high, {"type": "hello", "n": 0})
        await raw.broadcast(APP, dk, replay)
        await raw.broadcast(APP, dk, replay)
        forged = {**sealed(high, {"type": "bye"}), "pk": low.identity.public_key.hex()}
        await raw.broadcast(APP, dk, forged)
        await eventually(lambda: target.stats.signals_refused >= 6)
        assert target.stats.signals_refused_by == {"no_proof": 4, "replay": 1, "not_sender": 1}

    friend = make_swarm()
    await friend.join()
    await eventually(lambda: connected(target, friend))


def test_ice_servers_come_from_json_or_a_url_list():
    servers = parse_ice_servers(
        '[{"urls": ["turn:t.example:3478"], "username": "u", "credential": "p"}, "stun:s:3478"]'
    )
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        (["turn:t.example:3478"], "u", "p"),
        ("stun:s:3478", None, None),
    ]
    servers = parse_ice_servers("stun:stun.example.org:3478, turn:alice:s%40cret@t.example:3478")
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        ("stun:stun.example.org:3478", None, None),
        ("turn:t.example:3478", "alice", "s@cret"),
    ]
    assert parse_ice_servers("") == []


@pytest.mark.parametrize("spec", ["[not json", '[{"url": "stun:x"}]', "http://x", "stun:"])
def test_a_bad_ice_server_list_says_what_is_wrong(spec):
    with pytest.raises(UsageError, match="ICE server"):
        parse_ice_servers(spec)


async def _fake_answerer(hub_url: str, target: Swarm) -> RtcPeer:
    """Pose as a peer (that knows the key; higher than the target, so the target dials), answer
    its offer and return our side of the connection, which never sends a handshake."""
    dk = TOPIC.hex()
    fake = insider(lambda i: i > target.peer_id)
    fake_id = fake.peer_id
    async with HubClient([hub_url]) as raw, raw.subscribe(APP, [f"{dk}.{fake_id}"]) as inbox:
        await inbox.wait_connected(10)
        await raw.broadcast(APP, dk, sealed(fake, {"type": "hello"}))
        async for message in inbox:
            if isinstance(message, dict) and message.get("type") == "offer":
                break
        peer = RtcPeer(target.peer_id, initiator=False)
        answer = await peer.answer(message["sdp"])
        await raw.broadcast(
            APP,
            f"{dk}.{target.peer_id}",
            sealed(fake, {"type": "answer", "to": target.peer_id, "sdp": answer}),
        )
    await peer.channel()
    return peer


async def test_peers_that_stall_or_vanish_mid_handshake_are_dropped(hub, make_swarm):
    target = make_swarm(handshake_timeout=1.0, identity=identity_where(lambda i: i < "2"))
    await target.join()
    silent = await _fake_answerer(hub.url, target)
    await eventually(lambda: target.stats.dials_failed >= 1)
    vanishing = await _fake_answerer(hub.url, target)
    await vanishing.close()
    await eventually(lambda: target.stats.dials_failed >= 2)
    await silent.close()
    assert not target.peers

    friend = make_swarm()
    await friend.join()
    await eventually(lambda: connected(target, friend))


async def test_a_peer_that_ignores_the_receive_window_is_dropped():
    # The far end is a bare aiortc data channel that sends without waiting for window grants.
    window = 256 * 1024
    ours = RtcPeer("flooder", initiator=False, window=window)
    theirs = RTCPeerConnection()
    flood = theirs.createDataChannel("swarmcast", ordered=True)
    await theirs.setLocalDescription(await theirs.createOffer())
    answer = await ours.answer(theirs.localDescription.sdp)
    await theirs.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    channel = await ours.channel()
    for _ in range(2 * window // 65536):
        flood.send(b"\0" * 65536)
    await asyncio.wait_for(channel.wait_closed(), 10)
    assert channel.close_reason == "peer overran its receive window"
    await theirs.close()


async def test_a_swarm_on_two_hubs_keeps_working_when_one_is_down(hub):
    second = await start_hub(config=HUB_CONFIG)
    hubs = [hub.url, second.url]
    swarms = [
        Swarm(TOPIC, WRITER.public_key, hubs, ice_servers=[], announce_interval=0.5)
        for _ in range(3)
    ]
    try:
        a, b, c = swarms
        await asyncio.gather(a.join(), b.join())
        await eventually(lambda: connected(a, b))
        await hub.stop()
        await c.join()
        await eventually(lambda: connected(c, a) and connected(c, b))
        assert a.peers[b.peer_id].closed is False  # the first link never depended on the hub
    finally:
        await asyncio.gather(*(s.leave() for s in swarms))
        await second.stop()


def test_run_uses_uvloop():
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")
