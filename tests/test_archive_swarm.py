"""The swarm keeps the whole stream, end to end with real processes on 127.0.0.1: a hub, a
broadcaster, three viewers that join late and backfill the history they never watched, the
broadcaster leaving, and a new `viewer archive` that then gets every block from the viewers alone
(`streamer feed verify` passes). The viewers' live delay while they backfill is printed beside
their delay after it. And for a stream whose first media block exists nowhere: the archive stops
with one line naming it, and `viewer export` names the same block."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from pathlib import Path

from tests import test_e2e as e2e
from tests.fixtures_viewer import encode_test_stream, sparse_copy, write_feed

spawn = e2e.spawn  # the fixture: processes ended (SIGTERM, then kill) after the test
# Long enough that viewers joining at about 11 s (later on a loaded machine) finish backfilling
# some 13 s later and still sample the live edge with every block held (at 30 s that margin was
# 7 s, and one idle run missed it).
STREAM_SECONDS = 45.0
JOIN_AFTER_BLOCKS = 80  # the viewers join this late (10 s of 2-frame parts at 15 fps): history
FPS = 15
PY = sys.executable


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


async def wait_file(path: Path, predicate, timeout: float = 60.0) -> dict:
    """Poll a --stats file another process rewrites every second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await asyncio.to_thread(read_json, path)
        if data is not None and predicate(data):
            return data
        if loop.time() > deadline:
            raise AssertionError(f"{path} never got there: {data}")
        await asyncio.sleep(0.2)


async def test_late_viewers_keep_the_whole_stream_after_the_broadcaster_left(spawn, tmp_path):
    hub = await spawn("hub", PY, "-m", "streamer", "hub", "--port", "0")
    hub_url = (await hub.line()).rsplit(" ", 1)[-1]
    stats_file = tmp_path / "broadcast.json"
    writer = await spawn(
        "broadcaster",
        *(PY, "-m", "streamer", "broadcast", "test", "--hub", hub_url),
        *("--size", "320x180", "--fps", str(FPS), "--bitrate", "800k"),
        *("--duration", str(STREAM_SECONDS), "--linger", "30"),
        *("--feed", str(tmp_path / "feed"), "--stats", str(stats_file)),
    )
    key = await writer.line()
    await wait_file(stats_file, lambda s: s["length"] >= JOIN_AFTER_BLOCKS)

    viewers = [
        await spawn(
            f"viewer{i}",
            *(PY, "-m", "viewer", "watch", key, "--hub", hub_url, "--no-browser"),
            *("--port", "0", "--store", str(tmp_path / f"v{i}"), "--keep", "3"),
        )
        for i in range(3)
    ]
    urls = [await v.line(90.0) for v in viewers]  # a loaded machine starts them slowly

    # Sample every viewer's live delay while the stream is live: while it still lacks history,
    # and once it holds it all. A viewer that caught up only after the end counts as backfilled
    # (a loaded machine), and the delays are compared on what the live part gave.
    during: list[float] = []
    after: list[float] = []
    backfilled: set[str] = set()
    ended: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_SECONDS + 30.0
    while len(backfilled) < len(urls) or (len(after) < 20 and len(ended) < len(urls)):
        assert loop.time() < deadline, f"viewers never held every block: {backfilled}"
        for url in urls:
            s = await asyncio.to_thread(e2e.get_stats, url)
            if s["blocks_have"] == s["length"]:
                backfilled.add(url)
            if s["ended"]:
                ended.add(url)
                continue
            if s["live_delay_s"] is None or s["playhead"] == 0:
                continue
            if s["blocks_have"] < s["length"] - 1:  # the newest may be on its way
                during.append(s["live_delay_s"])
            elif s["blocks_have"] == s["length"]:
                after.append(s["live_delay_s"])
        await asyncio.sleep(0.1)
    assert during, "the viewers never lacked history: they joined too early to test backfill"
    assert after, "no viewer held every block while the stream was live"
    mean_during = statistics.fmean(during)
    mean_after = statistics.fmean(after)
    print(
        f"live delay while backfilling: mean {mean_during:.2f} s over {len(during)} samples; "
        f"after: mean {mean_after:.2f} s over {len(after)} samples"
    )
    # Backfill runs on spare capacity: the live edge is no later than a segment worse for it.
    assert mean_during <= mean_after + 1.0

    # History nobody watched came from backfill (a viewer that joined before most of it, on a
    # slow machine, may have fetched it all for playback instead: the swarm counts, not each).
    final = [await asyncio.to_thread(e2e.get_stats, url) for url in urls]
    assert all(s["keep"] == 3 for s in final)
    assert sum(s["backfill_requests"] for s in final) >= 1
    safe = await wait_file(stats_file, lambda s: s["replicated_share"] == 1.0, 30.0)
    assert safe["rarest_copies"] >= 3 and safe["unreplicated_blocks"] == 0

    assert await writer.wait(STREAM_SECONDS + 60.0) == 0
    err = await writer.stderr()
    assert "exist only on this disk" not in err, err
    # The broadcaster leaves once every block is on some viewer, not yet on all three: a viewer
    # may still be fetching the newest blocks from the others, and each learns of the others'
    # copies as they announce them. What must hold is where they settle (once in some 1,400
    # tests, on a clean clone, one viewer still counted one block on two viewers after 30 s; the
    # failure now shows every viewer's counts).
    for url in urls:
        try:
            final = await e2e.stats_until(
                url, lambda s: s["ended"] and s["replicated_share"] == 1.0, 60.0
            )
        except AssertionError:
            keys = ("length", "blocks_have", "ended", "replicated_share", "rarest_copies", "peers")
            every = [await asyncio.to_thread(e2e.get_stats, u) for u in urls]
            seen = [{k: s[k] for k in keys} for s in every]
            raise AssertionError(f"{url} never counted 3 copies of every block; all: {seen}") from None
        assert final["blocks_have"] == final["length"]
        assert final["rarest_copies"] == 3, final

    archive_dir = tmp_path / "archive"
    archiver = await spawn(
        "archive", PY, "-m", "viewer", "archive", key, str(archive_dir), "--hub", hub_url
    )
    code = await archiver.wait(60.0)
    out = (await archiver.proc.stdout.read()).decode()
    err = await archiver.stderr()
    assert code == 0, err
    assert f"archived {final['length']} blocks" in out
    verify = await spawn("verify", PY, "-m", "streamer", "feed", "verify", str(archive_dir))
    assert await verify.wait(30.0) == 0, await verify.stderr()


async def test_a_block_no_peer_holds_is_named_by_archive_and_export(spawn, tmp_path):
    stream = encode_test_stream(6.0, fps=FPS)
    blocks = [stream.header, *stream.segments, stream.end_marker()]
    writer = write_feed(tmp_path / "w", blocks)
    held = [i for i in range(writer.length) if i != 1]  # the first media block exists nowhere
    sparse_copy(writer, tmp_path / "seed", held).close()
    key = writer.key.hex()
    writer.close()

    hub = await spawn("hub", PY, "-m", "streamer", "hub", "--port", "0")
    hub_url = (await hub.line()).rsplit(" ", 1)[-1]
    seeder = await spawn(
        "seed", PY, "-m", "viewer", "seed", str(tmp_path / "seed"), "--hub", hub_url
    )
    assert await seeder.line() == key

    archive_dir = tmp_path / "archive"
    archiver = await spawn(
        "archive", PY, "-m", "viewer", "archive", key, str(archive_dir), "--hub", hub_url
    )
    assert await archiver.wait(60.0) == 1
    err = (await archiver.stderr()).strip().splitlines()
    last = err[-1]
    total = len(blocks)
    assert "Traceback" not in "\n".join(err)
    assert "block 1 is held by none of the 1 online peer(s)" in last, last
    assert f"have {total - 1} of {total} blocks" in last, last  # what the progress bar counts
    assert "no progress" not in last

    exporter = await spawn(
        "export", PY, "-m", "viewer", "export", str(archive_dir), str(tmp_path / "out.mp4")
    )
    assert await exporter.wait(60.0) == 0
    note = (await exporter.stderr()).strip()
    assert "block 1 is missing" in note, note
    assert f"blocks 2..{total - 2} were exported" in note, note
