"""A reader's flushes: verify_and_apply never fsyncs, flush() makes everything durable without
holding the feed's lock across its fsyncs, and kill -9 between applies and flushes keeps every
block flushed before it (and nothing unverified)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from streamer.core import crypto
from streamer.core.errors import FeedError
from streamer.core.feed import Feed
from streamer.core.wire import Request, RequestBlock, RequestUpgrade
from tests.test_crash import CHILD_COMMON, block, kill_after, start

SEED = b"\x43" * 32


def upgrade(start_: int, length: int) -> Request:
    return Request(1, 0, upgrade=RequestUpgrade(start_, length))


def block_request(reader: Feed, index: int) -> Request:
    return Request(1, 0, block=RequestBlock(index, reader.missing_nodes(index)))


@pytest.fixture
def writer(tmp_path: Path) -> Feed:
    feed = Feed.create(tmp_path / "writer", crypto.key_pair(SEED))
    feed.append([block(i) for i in range(64)])
    yield feed
    feed.close()


@pytest.fixture
def disk_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the fsync/fdatasync calls made from now on (they still run)."""
    calls: list[str] = []

    def counted(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            calls.append(name)
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", counted("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", counted("fdatasync", os.fdatasync))
    return calls


def test_verify_and_apply_never_syncs_and_flush_makes_it_all_durable(
    tmp_path: Path, writer: Feed, disk_syncs: list[str]
) -> None:
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    disk_syncs.clear()  # creating the reader's directory fsyncs, as it should
    reader.verify_and_apply(writer.proof(upgrade(0, 64)))
    for index in range(0, 64, 3):
        reader.verify_and_apply(writer.proof(block_request(reader, index)))
    writer.append([block(i) for i in range(64, 70)])
    disk_syncs.clear()  # the writer's append syncs its own feed
    reader.verify_and_apply(writer.proof(upgrade(64, 6)))
    for index in (41, 66, 69):
        reader.verify_and_apply(writer.proof(block_request(reader, index)))
    assert disk_syncs == []
    assert reader.flush_due and reader.length == 70

    # Served at once, before any flush.
    assert reader.get(66) == block(66)
    reader.flush()
    assert disk_syncs, "flush() must fsync"
    assert not reader.flush_due
    # A copy taken now is what a crash right after the flush would leave.
    shutil.copytree(tmp_path / "reader", tmp_path / "copy")
    reader.close()
    have = sorted([*range(0, 64, 3), 41, 66, 69])
    for path in (tmp_path / "copy", tmp_path / "reader"):
        with Feed.open(path) as reopened:
            assert reopened.length == 70
            reopened.verify_all()
            assert [i for i in range(70) if reopened.has(i)] == have
            assert all(reopened.get(i) == block(i) for i in have)


def test_a_flush_with_nothing_due_writes_nothing(
    tmp_path: Path, writer: Feed, disk_syncs: list[str]
) -> None:
    with Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader:
        reader.verify_and_apply(writer.proof(upgrade(0, 64)))
        reader.flush()
        disk_syncs.clear()
        reader.flush()
        assert disk_syncs == []


def test_verify_and_apply_does_not_wait_for_a_slow_flush_in_another_thread(
    tmp_path: Path, writer: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    reader.verify_and_apply(writer.proof(upgrade(0, 64)))
    for index in range(10):
        reader.verify_and_apply(writer.proof(block_request(reader, index)))

    stalled, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        # A loaded disk: the flush thread's first fsync stalls until the test lets it go.
        if threading.current_thread().name == "slow-flush" and not release.is_set():
            stalled.set()
            assert release.wait(30), "the test never released the flush"
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            reader.flush()
        except BaseException as exc:
            errors.append(exc)

    flusher = threading.Thread(target=flush, name="slow-flush")
    flusher.start()
    try:
        assert stalled.wait(10), "the flush never reached its fsync"
        # The flush is stuck in its fsync: the loop thread still verifies, stores and serves.
        for index in (20, 21, 30):
            result = reader.verify_and_apply(writer.proof(block_request(reader, index)))
            assert result.block == index
        assert reader.get(30) == block(30)
        assert reader.proof(Request(1, 0, block=RequestBlock(20, 0))).block is not None
        assert flusher.is_alive() and not release.is_set()
    finally:
        release.set()
        flusher.join(30)
    assert not errors
    # That flush covered what was applied before it began, not the blocks applied during it.
    shutil.copytree(tmp_path / "reader", tmp_path / "after-first")
    with Feed.open(tmp_path / "after-first") as copy:
        copy.verify_all()
        assert copy.present_ranges() == [(0, 10)]
    assert reader.flush_due
    reader.flush()
    shutil.copytree(tmp_path / "reader", tmp_path / "after-second")
    with Feed.open(tmp_path / "after-second") as copy:
        copy.verify_all()
        assert copy.present_ranges() == [(0, 10), (20, 22), (30, 31)]
    reader.close()


def test_a_failed_flush_leaves_everything_due_and_the_next_one_records_it(
    tmp_path: Path, writer: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    reader.verify_and_apply(writer.proof(upgrade(0, 64)))
    for index in (3, 4, 9):
        reader.verify_and_apply(writer.proof(block_request(reader, index)))
    real = os.fdatasync
    failures = [OSError(errno.EIO, os.strerror(errno.EIO))]

    def failing_fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(FeedError, match="cannot write"):
        reader.flush()
    assert reader.flush_due
    shutil.copytree(tmp_path / "reader", tmp_path / "failed")
    with Feed.open(tmp_path / "failed") as copy:
        assert copy.length == 0 and copy.blocks_present == 0
    reader.flush()
    reader.close()
    with Feed.open(tmp_path / "reader") as reopened:
        reopened.verify_all()
        assert reopened.length == 64
        assert reopened.present_ranges() == [(3, 5), (9, 10)]


def test_a_writer_appends_while_it_flushes_from_another_thread(tmp_path: Path) -> None:
    # A writable feed may be flushed from a worker thread too: heads still land in order.
    with Feed.create(tmp_path / "w", crypto.key_pair(SEED)) as feed:
        stop = threading.Event()

        def flush_often() -> None:
            while not stop.is_set():
                feed.flush()

        flusher = threading.Thread(target=flush_often)
        flusher.start()
        try:
            for i in range(0, 120, 3):
                feed.append([block(j) for j in range(i, i + 3)])
        finally:
            stop.set()
            flusher.join(30)
    with Feed.open(tmp_path / "w") as reopened:
        assert reopened.length == 120
        reopened.verify_all()


def test_nodes_of_a_length_lost_in_a_crash_are_not_trusted_after_the_next_upgrade(
    tmp_path: Path,
) -> None:
    # The reader verifies length 48 and flushes, then verifies 54 (storing its roots, nodes 99
    # and 105) and is killed before flushing: on disk, the head says 48 and the tree holds 99.
    writer = Feed.create(tmp_path / "writer", crypto.key_pair(SEED))
    writer.append([block(i) for i in range(48)])
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    reader.verify_and_apply(writer.proof(upgrade(0, 48)))
    reader.flush()
    writer.append([block(i) for i in range(48, 54)])
    reader.verify_and_apply(writer.proof(upgrade(48, 6)))
    shutil.copytree(tmp_path / "reader", tmp_path / "killed")  # what kill -9 leaves
    reader.close()
    writer.append([block(i) for i in range(54, 57)])
    with Feed.open(tmp_path / "killed") as survivor:
        assert survivor.length == 48
        # Length 57's roots come straight from 31 and 79: nothing links node 99 to them, so a
        # proof of block 48 must climb to root 103, not stop at the leftover 99.
        survivor.verify_and_apply(writer.proof(upgrade(48, 9)))
        survivor.verify_and_apply(writer.proof(block_request(survivor, 48)))
        survivor.flush()
        survivor.verify_all()
        assert survivor.present_ranges() == [(48, 49)]
    with Feed.open(tmp_path / "killed") as reopened:
        reopened.verify_all()
        assert reopened.get(48) == block(48)
    writer.close()


class Killed(BaseException):
    """Stands for kill -9 in the middle of a write: nothing after it runs."""


def killed_after_node_writes(
    count: int, real: Callable[[int, bytes, int], int]
) -> Callable[[int, bytes, int], int]:
    """os.pwrite that writes `count` tree nodes (40 bytes each), then dies."""
    written = 0

    def pwrite(fd: int, raw: bytes, offset: int) -> int:
        nonlocal written
        if len(raw) == 40:
            if written == count:
                raise Killed
            written += 1
        return real(fd, raw, offset)

    return pwrite


def test_a_proof_cut_short_while_storing_its_nodes_leaves_no_false_anchor(
    tmp_path: Path, writer: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    reader.verify_and_apply(writer.proof(upgrade(0, 64)))
    reader.flush()
    reader.close()
    proof = writer.proof(block_request(Feed.open(tmp_path / "reader"), 48))
    assert len(proof.block.nodes) == 6  # 98, 101, 107, 119, 79 and 31 up to root 63
    real = os.pwrite
    for cut in range(1, 12):  # of 12 node writes: the leaf, 6 siblings and 5 parents
        copy = tmp_path / f"cut-{cut}"
        shutil.copytree(tmp_path / "reader", copy)
        crashed = Feed.open(copy)
        monkeypatch.setattr(os, "pwrite", killed_after_node_writes(cut, real))
        try:
            with pytest.raises(Killed):
                crashed.verify_and_apply(proof)
        finally:
            monkeypatch.setattr(os, "pwrite", real)
        # What kill -9 leaves is the files as they are now (the page cache outlives the process).
        shutil.copytree(copy, tmp_path / f"killed-{cut}")
        crashed.close()
        with Feed.open(tmp_path / f"killed-{cut}") as survivor:
            survivor.verify_all()
            # The nodes that made it hang from root 63; a proof may stop only where the path
            # up is whole, so block 48 (and its neighbour 50) chain up once stored.
            for index in (48, 50):
                survivor.verify_and_apply(writer.proof(block_request(survivor, index)))
            survivor.flush()
            survivor.verify_all()
        with Feed.open(tmp_path / f"killed-{cut}") as reopened:
            reopened.verify_all()
            assert reopened.present_ranges() == [(48, 49), (50, 51)]


# The child applies proofs on its main thread while another thread flushes; "flushed N" means
# the first N applies it reported are durable.
FLUSHING_READER_CHILD = (
    CHILD_COMMON
    + """
import random, threading, time
pair = crypto.key_pair(bytes.fromhex(sys.argv[3]))
writer = Feed.create(sys.argv[1], pair)
reader = Feed.open(sys.argv[2], key=writer.key, create=True)
lock = threading.Lock()
applied = 0

def flusher():
    while True:
        with lock:
            mark = applied
        reader.flush()
        with lock:
            print("flushed", mark, flush=True)
        time.sleep(0.002)

threading.Thread(target=flusher, daemon=True).start()
rng = random.Random()
while True:
    if writer.length < 3 or rng.random() < 0.05:
        writer.append([block(i) for i in range(writer.length, writer.length + 3)])
    if reader.length < writer.length and (reader.length == 0 or rng.random() < 0.2):
        up = RequestUpgrade(reader.length, writer.length - reader.length)
        reader.verify_and_apply(writer.proof(Request(1, 0, upgrade=up)))
        line = "upgraded %d" % reader.length
    else:
        i = rng.randrange(reader.length)
        req = Request(1, 0, block=RequestBlock(i, reader.missing_nodes(i)))
        reader.verify_and_apply(writer.proof(req))
        line = "have %d" % i
    with lock:
        applied += 1
        print(line, flush=True)
"""
)


def test_a_reader_killed_between_applies_and_flushes_keeps_every_flushed_block(
    tmp_path: Path,
) -> None:
    rng = random.Random(2024)
    kept_something = False
    for _ in range(5):
        child = start(
            FLUSHING_READER_CHILD, str(tmp_path / "writer"), str(tmp_path / "reader"), SEED.hex()
        )
        seen = kill_after(child, rng.randint(20, 200), rng)
        applies = [s for s in seen if s[0] in ("have", "upgraded")]
        marks = [int(s[1]) for s in seen if s[0] == "flushed"]
        durable = applies[: max(marks, default=0)]
        with Feed.open(tmp_path / "reader") as reader:
            reader.verify_all()
            for start_, end in reader.present_ranges():
                for i in range(start_, end):
                    assert reader.get(i) == block(i)
            for what, value in durable:
                if what == "upgraded":
                    assert reader.length >= int(value), "a flushed signed length was lost"
                else:
                    assert reader.has(int(value)), f"flushed block {value} was lost"
            kept_something = kept_something or reader.blocks_present > 0
    assert kept_something
