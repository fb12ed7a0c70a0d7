"""Crash safety: kill -9 a writer or a sparse reader mid-flight, reopen, verify, carry on; damaged
files give clear errors, never a traceback or a wrong block."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.core import crypto
from streamer.core.errors import SwarmcastError
from streamer.core.feed import Feed
from streamer.core.wire import Request, RequestBlock, RequestUpgrade

REPO = Path(__file__).resolve().parents[1]
SEED = b"\x42" * 32

# Block i is a pure function of i, so the test can check every block that survived a crash.
CHILD_COMMON = """
import hashlib, sys
from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.core.wire import Request, RequestBlock, RequestUpgrade

def block(i):
    size = (i * 7919) % 70000
    seed = hashlib.blake2b(i.to_bytes(8, "little")).digest()
    return (seed * (size // 64 + 1))[:size]
"""

WRITER_CHILD = (
    CHILD_COMMON
    + """
pair = crypto.key_pair(bytes.fromhex(sys.argv[2]))
feed = Feed.create(sys.argv[1], pair)
while True:
    n = feed.length
    count = 1 + n % 5
    feed.append([block(i) for i in range(n, n + count)])
    print(feed.length, flush=True)
"""
)

READER_CHILD = (
    CHILD_COMMON
    + """
import random
writer = Feed.open(sys.argv[1])
reader = Feed.open(sys.argv[2], key=writer.key, create=True)
rng = random.Random()
if reader.length < writer.length:
    up = RequestUpgrade(reader.length, writer.length - reader.length)
    reader.verify_and_apply(writer.proof(Request(1, 0, upgrade=up)))
    reader.flush()  # a new signed length is durable only once flushed
    print("upgraded", reader.length, flush=True)
applied = 0
while True:
    i = rng.randrange(writer.length)
    data = writer.proof(Request(1, 0, block=RequestBlock(i, reader.missing_nodes(i))))
    reader.verify_and_apply(data)
    print("have", i, flush=True)
    applied += 1
    if applied % 10 == 0:
        reader.flush()
        print("flushed", applied, flush=True)
"""
)


def block(i: int) -> bytes:
    size = (i * 7919) % 70000
    seed = hashlib.blake2b(i.to_bytes(8, "little")).digest()
    return (seed * (size // 64 + 1))[:size]


def start(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip


def kill_after(child: subprocess.Popen[str], lines: int, rng: random.Random) -> list[str]:
    """Read `lines` progress lines (each one a committed change), then kill -9 at a random moment."""
    seen = []
    deadline = time.monotonic() + 60
    assert child.stdout is not None
    while len(seen) < lines:
        line = child.stdout.readline()
        if not line:
            _, err = child.communicate(timeout=10)
            pytest.fail(f"child exited early: {err}")
        seen.append(line.split())
        assert time.monotonic() < deadline, "child made no progress"
    # Land somewhere inside the next append or apply, not always at its start.
    time.sleep(rng.random() * 0.004)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    child.stdout.close()
    assert child.stderr is not None
    child.stderr.close()
    return seen


def check_writer(path: Path, at_least: int) -> int:
    with Feed.open(path, secret_key=crypto.key_pair(SEED).secret_key) as feed:
        assert feed.length >= at_least, "a reported append was lost"
        feed.verify_all()
        assert feed.blocks_present == feed.length
        for i in range(feed.length):
            assert feed.get(i) == block(i)
        return feed.length


def test_a_writer_killed_mid_append_reopens_verifies_and_resumes(tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "feed"
    reported = 0
    for _ in range(6):
        child = start(WRITER_CHILD, str(path), SEED.hex())
        seen = kill_after(child, rng.randint(3, 25), rng)
        reported = max(reported, int(seen[-1][0]))
        length = check_writer(path, reported)
        reported = length
    # After all the kills, the same key still appends and signs in this process.
    with Feed.open(path, secret_key=crypto.key_pair(SEED).secret_key) as feed:
        feed.append([block(feed.length)])
        feed.verify_all()


def test_a_sparse_reader_killed_mid_download_keeps_only_verified_blocks(tmp_path: Path) -> None:
    rng = random.Random(99)
    with Feed.create(tmp_path / "writer", crypto.key_pair(SEED)) as writer:
        writer.append([block(i) for i in range(0, 300)])
    for round_ in range(5):
        if round_ == 2:
            with Feed.open(
                tmp_path / "writer", secret_key=crypto.key_pair(SEED).secret_key
            ) as writer:
                writer.append([block(i) for i in range(300, 420)])
        child = start(READER_CHILD, str(tmp_path / "writer"), str(tmp_path / "reader"))
        seen = kill_after(child, rng.randint(5, 60), rng)
        with Feed.open(tmp_path / "reader") as reader:
            reader.verify_all()
            upgraded = [int(s[1]) for s in seen if s[0] == "upgraded"]
            if upgraded:
                assert reader.length >= upgraded[-1]
            for start_, end in reader.present_ranges():
                for i in range(start_, end):
                    assert reader.get(i) == block(i)
            # Every block applied before the child's last flush survived the kill.
            flushes = [n for n, s in enumerate(seen) if s[0] == "flushed"]
            durable = seen[: flushes[-1]] if flushes else []
            assert all(reader.has(int(s[1])) for s in durable if s[0] == "have")
    with Feed.open(tmp_path / "reader") as reader:
        assert reader.length == 420


def make_feed(path: Path) -> None:
    with Feed.create(path, crypto.key_pair(SEED)) as feed:
        for i in range(0, 40, 4):
            feed.append([block(j) for j in range(i, i + 4)])


def open_and_verify(path: Path) -> str:
    """'ok' or the error class; anything else (a crash, a wrong block) fails the test."""
    try:
        with Feed.open(path) as feed:
            feed.verify_all()
            for s, e in feed.present_ranges():
                for i in range(s, e):
                    assert feed.get(i) == block(i), f"block {i} served wrong bytes"
            return "ok"
    except SwarmcastError as exc:
        message = str(exc)
        assert "\n" not in message and message
        return type(exc).__name__


@pytest.mark.parametrize("name", ["data", "tree", "bitfield", "head"])
def test_truncated_files_give_clear_errors(tmp_path: Path, name: str) -> None:
    make_feed(tmp_path / "good")
    size = (tmp_path / "good" / name).stat().st_size
    outcomes = set()
    for cut in sorted({0, 1, size // 3, size // 2, size - 41, size - 1}):
        if cut < 0 or cut >= size:
            continue
        path = tmp_path / f"cut{cut}"
        os.system(f"cp -r {tmp_path / 'good'} {path}")
        with open(path / name, "r+b") as fh:
            fh.truncate(cut)
        outcomes.add(open_and_verify(path))
    expected = {
        "data": {"CorruptFeedError"},
        "tree": {"CorruptFeedError"},
        "bitfield": {"ok"},  # lost bits are restored from the head's contiguous count
        "head": {"CorruptFeedError", "ok"},  # the first slot alone may still be valid
    }[name]
    assert outcomes <= expected, outcomes


@pytest.mark.parametrize("name", ["data", "tree", "head"])
def test_flipped_bytes_are_detected(tmp_path: Path, name: str) -> None:
    make_feed(tmp_path / "good")
    size = (tmp_path / "good" / name).stat().st_size
    rng = random.Random(name)
    for n in range(12):
        path = tmp_path / f"flip{n}"
        os.system(f"cp -r {tmp_path / 'good'} {path}")
        raw = bytearray((path / name).read_bytes())
        at = rng.randrange(size if name != "head" else 400)
        raw[at] ^= 1 << rng.randrange(8)
        (path / name).write_bytes(bytes(raw))
        outcome = open_and_verify(path)
        if name == "head":
            # A damaged slot falls back to the other one (an older, still valid head) or is refused.
            assert outcome in {"ok", "CorruptFeedError"}
        else:
            assert outcome == "CorruptFeedError", (name, at)


def test_a_rejected_proof_after_a_crash_changes_nothing(tmp_path: Path) -> None:
    make_feed(tmp_path / "writer")
    with (
        Feed.open(tmp_path / "writer") as writer,
        Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader,
    ):
        good = writer.proof(Request(1, 0, block=RequestBlock(5, 0), upgrade=RequestUpgrade(0, 40)))
        bad = writer.proof(Request(1, 0, block=RequestBlock(5, 0), upgrade=RequestUpgrade(0, 40)))
        assert bad.block is not None
        bad.block.value = bad.block.value[:-1] + bytes([bad.block.value[-1] ^ 1])
        before = {p.name: p.read_bytes() for p in (tmp_path / "reader").iterdir()}
        with pytest.raises(SwarmcastError):
            reader.verify_and_apply(bad)
        assert {p.name: p.read_bytes() for p in (tmp_path / "reader").iterdir()} == before
        reader.verify_and_apply(good)
        assert reader.get(5) == block(5)
