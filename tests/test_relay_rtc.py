"""Live push over real aiortc peers found through a real hub (in-process, 127.0.0.1): viewers of a
real encoded stream subscribe, receive new blocks pushed the moment they verify upstream, push them
on, and end with exact, verified copies; nobody is dropped for pushing what was subscribed to."""

from __future__ import annotations

import asyncio

from streamer.core.feed import Feed
from streamer.core.replication import BlockVerified, Event, PeerMisbehaved
from streamer.core.scheduler import ReplicatorConfig
from tests.test_replicator_rtc import WRITER, assert_same_stream, broadcaster, complete, hub, nodes  # noqa: F401  (fixtures)
from tests.waiting import eventually


async def test_viewers_receive_pushed_blocks_over_aiortc(nodes, tmp_path):  # noqa: F811
    writer_feed = Feed.create(tmp_path / "w", WRITER)
    writer = nodes(writer_feed, writer=True, config=ReplicatorConfig(push=True))
    viewers = [
        nodes(
            Feed.open(tmp_path / f"v{i}", key=WRITER.public_key, create=True),
            archive=True,
            config=ReplicatorConfig(push=True),
        )
        for i in range(2)
    ]
    events: list[Event] = []
    for v in viewers:
        v.add_listener(events.append)
    await asyncio.gather(writer.start(), *(v.start() for v in viewers))
    await eventually(lambda: all(v.peers == 2 for v in viewers))

    await broadcaster(writer_feed, 6.0).run()
    await eventually(lambda: all(complete(v.feed, writer_feed) for v in viewers))
    for v in viewers:
        assert_same_stream(v.feed, writer_feed)
    stats = [v.stats() for v in viewers]
    # The push tree formed: every viewer has a parent, and blocks came pushed.
    assert all(s.push_parent for s in stats), [s.as_json() for s in stats]
    assert sum(s.pushes_received for s in stats) >= writer_feed.length // 2
    assert writer.stats().pushes_sent > 0
    assert not [e for e in events if isinstance(e, PeerMisbehaved)]
    assert {e.index for e in events if isinstance(e, BlockVerified)} == set(
        range(writer_feed.length)
    )
    assert all(s.peers_dropped == 0 for s in stats)
