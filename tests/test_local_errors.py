"""A local fault is not the peer's fault: when our own disk refuses a write (full, or over a file
size limit) replication stops with one clear line, nobody is banned, and the feed on disk stays
consistent (it reopens, verifies, and the same command resumes it).

The sans-IO tests wire two sessions in memory; the disk tests run real processes under a real
RLIMIT_FSIZE (EFBIG), the viewer ones against a real `viewer seed` over real aiortc and a real hub.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest

from streamer.core.errors import (
    BlockNotFoundError,
    FeedError,
    LocalStorageError,
    ProofError,
    WireError,
)
from streamer.core.feed import ApplyResult, Feed
from streamer.core.replication import (
    BlockVerified,
    Event,
    LocalError,
    PeerMisbehaved,
    Session,
    is_local_error,
)
from streamer.core.scheduler import Replicator
from streamer.core.storage import storage_error
from streamer.core.wire import Data
from streamer.hub import HubConfig, HubServer, start_hub
from tests.fixtures_viewer import encode_test_stream, sparse_copy, write_feed

# ---------------------------------------------------------------- sans-IO


class FullDiskFeed(Feed):
    """A real feed whose disk fills up after `room` blocks: the next block write fails the way
    Storage reports ENOSPC."""

    room = 0

    def verify_and_apply(self, data: Data) -> ApplyResult:
        if data.block is not None and not self.has(data.block.index):
            if self.room == 0:
                raise storage_error(self.directory, OSError(errno.ENOSPC, "No space left"))
            self.room -= 1
        return super().verify_and_apply(data)


def pump(
    ra: Replicator, a: Session, rb: Replicator, b: Session, events: dict[int, list[Event]]
) -> None:
    """Deliver messages both ways until both sessions are quiet, collecting their events."""
    for _ in range(10_000):
        moved = False
        for src, rep, dst in ((a, rb, b), (b, ra, a)):
            for chunk in src.datagrams_to_send(0.0):
                rep.receive(dst, chunk, 0.0)
                moved = True
        for rep in (ra, rb):
            while (item := rep.next_event()) is not None:
                events.setdefault(id(item[0]), []).append(item[1])
        if not moved:
            return
    raise AssertionError("the sessions never went quiet")


def blocks(n: int) -> list[bytes]:
    return [bytes([i]) * (1000 + i) for i in range(n)]


def test_a_full_disk_is_a_local_error_and_no_peer_is_blamed(tmp_path):
    writer = write_feed(tmp_path / "w", blocks(12))
    reader = FullDiskFeed.open(tmp_path / "r", key=writer.key, create=True)
    reader.room = 3
    wrep, rrep = Replicator(writer), Replicator(reader)
    rrep.set_archive(True)
    a = rrep.add_session(name="writer", remote_is_writer=True)
    b = wrep.add_session(name="reader")
    events: dict[int, list[Event]] = {}
    pump(rrep, a, wrep, b, events)

    mine = events[id(a)]
    assert not any(isinstance(e, PeerMisbehaved) for e in mine)
    assert not any(isinstance(e, PeerMisbehaved) for e in events.get(id(b), []))
    failures = [e for e in mine if isinstance(e, LocalError)]
    assert len(failures) == 1
    error = failures[0].error
    assert isinstance(error, LocalStorageError)
    assert "no space left on device" in str(error) and str(tmp_path / "r") in str(error)
    assert rrep.failure is error
    assert rrep.totals.peers_dropped == 0 and wrep.totals.peers_dropped == 0
    assert a.closed and rrep.sessions == []
    # Exactly the blocks the disk took are held, and they are announced as verified.
    assert sum(isinstance(e, BlockVerified) for e in mine) == 3 == reader.blocks_present
    # Stopped for good: a new peer is not asked for anything either.
    c = rrep.add_session(name="late", remote_is_writer=True)
    assert c.closed and c.datagrams_to_send(0.0) == []
    reader.close()
    reopened = Feed.open(tmp_path / "r", key=writer.key)
    reopened.verify_all()
    assert reopened.blocks_present == 3
    reopened.close()
    writer.close()


def test_a_closed_feed_and_raw_os_errors_are_local_but_a_bad_proof_is_not(tmp_path):
    writer = write_feed(tmp_path / "w", blocks(4))
    reader = Feed.open(tmp_path / "r", key=writer.key, create=True)
    wrep, rrep = Replicator(writer), Replicator(reader)
    rrep.want(0, 4)
    a = rrep.add_session(name="writer", remote_is_writer=True)
    b = wrep.add_session(name="reader")
    # The writer's answers are on their way when our feed is closed under the session.
    for chunk in a.datagrams_to_send(0.0):
        wrep.receive(b, chunk, 0.0)
    reader.close()
    events: dict[int, list[Event]] = {}
    pump(rrep, a, wrep, b, events)
    kinds = [type(e) for e in events[id(a)]]
    assert LocalError in kinds and PeerMisbehaved not in kinds
    assert isinstance(rrep.failure, FeedError) and "closed" in str(rrep.failure)
    writer.close()

    assert is_local_error(OSError(errno.EIO, "I/O error"))
    assert is_local_error(LocalStorageError("cannot write"))
    for peer_fault in (ProofError("bad"), WireError("bad"), BlockNotFoundError("x"), ValueError()):
        assert not is_local_error(peer_fault)


def test_storage_errors_are_one_line_and_say_what_to_do(tmp_path):
    for code, needle in (
        (errno.ENOSPC, "no space left on device; free some space"),
        (errno.EFBIG, "file size limit"),
        (errno.EDQUOT, "quota"),
    ):
        message = str(storage_error(tmp_path, OSError(code, os.strerror(code))))
        assert message.startswith(f"cannot write to {tmp_path}: ")
        assert needle in message and "\n" not in message


# ---------------------------------------------------------------- a real file size limit


def limited(size: int) -> None:
    """preexec_fn: writes past `size` bytes fail with EFBIG (SIGXFSZ ignored, not fatal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


APPLY_ALL = textwrap.dedent(
    """
    import json, sys
    from streamer.core.feed import Feed
    from streamer.core.wire import Request, RequestBlock, RequestUpgrade
    writer = Feed.open(sys.argv[1])
    reader = Feed.open(sys.argv[2], key=writer.key, create=True)
    applied, errors = [], []
    for n, index in enumerate(json.loads(sys.argv[3])):
        request = Request(
            id=n + 1, fork=0,
            block=RequestBlock(index, reader.missing_nodes(index) if reader.length else 0),
            upgrade=RequestUpgrade(reader.length, writer.length - reader.length)
            if reader.length < writer.length else None,
        )
        try:
            reader.verify_and_apply(writer.proof(request))
            applied.append(index)
        except Exception as exc:
            errors.append([type(exc).__name__, str(exc)])
    try:
        reader.flush()
    except Exception as exc:
        errors.append([type(exc).__name__, str(exc)])
    reader.close()
    print(json.dumps({"applied": applied, "errors": errors}))
    """
)


def test_a_write_over_the_file_size_limit_leaves_a_feed_that_verifies_and_resumes(tmp_path):
    values = [os.urandom(3000) for _ in range(30)]
    writer = write_feed(tmp_path / "w", values)
    writer.close()
    order = [0, 29, 5, 1, 2, 20, 3, 4, 10, 6, 7, 8, 9, 15, 11, 12, 13, 14, 25]
    order += [i for i in range(30) if i not in order]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            APPLY_ALL,
            str(tmp_path / "w"),
            str(tmp_path / "r"),
            json.dumps(order),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: limited(40_000),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["errors"], "the limit was never reached"
    for kind, message in report["errors"]:
        assert kind == "LocalStorageError" and "file size limit" in message, message
    assert 0 < len(report["applied"]) < 30

    writer = Feed.open(tmp_path / "w")
    reader = Feed.open(tmp_path / "r", key=writer.key)
    reader.verify_all()
    held = [i for i in range(reader.length) if reader.has(i)]
    assert held and set(held) <= set(report["applied"])
    assert all(reader.get(i) == values[i] for i in held)
    reader.close()
    # Without the limit the same feed takes the rest.
    full = sparse_copy(writer, tmp_path / "r", [i for i in range(30) if i not in held])
    full.flush()
    full.verify_all()
    assert [full.get(i) for i in range(30)] == values
    full.close()
    writer.close()


# ---------------------------------------------------------------- the viewer commands


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def stream_blocks() -> list[bytes]:
    stream = encode_test_stream(8)
    return [stream.header, *stream.segments, stream.end_marker()]


@pytest.fixture
async def seeder(hub, tmp_path, stream_blocks) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A real `viewer seed` of a complete copy of the stream (a reader: it serves every block
    as often as asked, as a viewer that archived it would)."""
    writer = write_feed(tmp_path / "w", stream_blocks)
    sparse_copy(writer, tmp_path / "seed", list(range(len(stream_blocks)))).close()
    key = writer.key.hex()
    writer.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "viewer", "seed", str(tmp_path / "seed"), "--hub", hub.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        assert line.decode().strip() == key
        yield key, stream_blocks
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def run(*args: str, limit: int | None = None, timeout: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "XDG_DATA_HOME": "/nonexistent"},
        preexec_fn=None if limit is None else (lambda: limited(limit)),
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def assert_one_disk_error(code: int, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("viewer: error:")]
    assert len(errors) == 1, err
    assert "cannot write to" in errors[0] and "file size limit" in errors[0], errors[0]
    # Said once: the other lines (progress, peers leaving) do not repeat it.
    assert err.count("file size limit") == 1, err
    # Our disk is not the peer's fault: nobody was dropped or banned.
    assert "misbehaved" not in err, err


async def test_archive_over_a_file_size_limit_fails_with_one_line_and_resumes(
    hub, seeder, tmp_path
):
    key, stream = seeder
    archive = tmp_path / "arc"
    # The header and a few segments fit; the rest of the data file does not.
    limit = sum(len(b) for b in stream[:4]) + 100
    assert limit < sum(len(b) for b in stream)
    args = ("-m", "viewer", "archive", key, str(archive), "--hub", hub.url, "--timeout", "20")
    code, err = await run(*args, limit=limit)
    assert_one_disk_error(code, err)

    # What was stored is consistent: it opens and verifies, as a feed and by the command.
    feed = Feed.open(archive, key=bytes.fromhex(key))
    feed.verify_all()
    held = [i for i in range(feed.length) if feed.has(i)]
    assert all(feed.get(i) == stream[i] for i in held)
    feed.close()
    code, err = await run("-m", "streamer", "feed", "verify", str(archive))
    assert code == 0, err

    # The same command without the limit completes it, served by the same seeder at once.
    code, err = await run(*args)
    assert code == 0, err
    assert "misbehaved" not in err, err
    feed = Feed.open(archive, key=bytes.fromhex(key))
    assert [feed.get(i) for i in range(feed.length)] == stream
    feed.close()


async def test_watch_over_a_file_size_limit_fails_with_one_line(hub, seeder, tmp_path):
    key, stream = seeder
    store = tmp_path / "store"
    code, err = await run(
        "-m", "viewer", "watch", key, "--hub", hub.url, "--no-browser", "--store", str(store),
        "--timeout", "20",
        limit=len(stream[0]) + 100,
    )  # fmt: skip
    assert_one_disk_error(code, err)
    code, err = await run("-m", "streamer", "feed", "verify", str(store))
    assert code == 0, err
