"""Bad input to `viewer watch`, `viewer archive` and `viewer seed`, run as real processes: each gives
one error line, a non-zero exit and no traceback, and writes nothing it should not."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamer.core import crypto
from streamer.core.feed import Feed
from streamer.hub import HubConfig, HubServer, start_hub

KEY = crypto.key_pair(b"\x05" * 32)
OTHER = crypto.key_pair(b"\x06" * 32)
DEAD_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    server = await start_hub(config=HubConfig(rate_per_second=10_000, rate_burst=10_000))
    yield server
    await server.stop()


async def viewer(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    env = {**os.environ, "XDG_DATA_HOME": os.environ.get("XDG_DATA_HOME", "/nonexistent")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "viewer",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_error(code: int, err: str, *needles: str) -> str:
    assert code != 0
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("viewer: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["watch", "archive"])
async def test_a_malformed_key_or_name_is_one_line(command, tmp_path):
    args = [command, "NOT A KEY!", *([str(tmp_path / "a")] if command == "archive" else [])]
    code, _, err = await viewer(*args, "--hub", DEAD_HUB)
    assert_one_error(code, err, "64 hex digits")
    assert not (tmp_path / "a").exists()


async def test_an_unknown_name_is_one_line(hub, tmp_path):
    code, _, err = await viewer(
        "watch", "no-such-stream", "--hub", hub.url, "--no-browser", "--store", str(tmp_path / "s")
    )
    assert_one_error(code, err, "no-such-stream")
    assert not (tmp_path / "s").exists()


async def test_a_name_with_the_hub_down_is_one_line(tmp_path):
    code, _, err = await viewer(
        "watch", "some-stream", "--hub", DEAD_HUB, "--no-browser", "--store", str(tmp_path / "s")
    )
    assert_one_error(code, err, "hub")


async def test_a_key_nobody_serves_waits_then_fails_with_one_line(hub, tmp_path):
    code, out, err = await viewer(
        "watch",
        KEY.public_key.hex(),
        "--hub",
        hub.url,
        "--no-browser",
        "--store",
        str(tmp_path / "s"),
        "--timeout",
        "2",
    )
    assert "waiting for peers" in err
    assert_one_error(code, err, "no peer", "2 s")
    assert out == ""


async def test_a_store_of_another_stream_is_refused(tmp_path):
    store = tmp_path / "s"
    Feed.open(store, key=OTHER.public_key, create=True).close()
    before = sorted((p.name, p.stat().st_size) for p in store.iterdir())
    code, _, err = await viewer(
        "watch", KEY.public_key.hex(), "--hub", DEAD_HUB, "--no-browser", "--store", str(store)
    )
    assert_one_error(code, err, OTHER.public_key.hex())
    assert sorted((p.name, p.stat().st_size) for p in store.iterdir()) == before


async def test_a_store_that_is_a_file_or_a_foreign_directory_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    code, _, err = await viewer(
        "watch", KEY.public_key.hex(), "--hub", DEAD_HUB, "--no-browser", "--store", str(file)
    )
    assert_one_error(code, err, "is a file")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    code, _, err = await viewer("archive", KEY.public_key.hex(), str(foreign), "--hub", DEAD_HUB)
    assert_one_error(code, err, "no stream feed")
    assert [p.name for p in foreign.iterdir()] == ["cat.jpg"]


async def test_a_store_in_use_by_another_viewer_is_refused(hub, tmp_path):
    store = tmp_path / "s"
    first = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "viewer",
        "watch",
        KEY.public_key.hex(),
        "--hub",
        hub.url,
        "--no-browser",
        "--store",
        str(store),
        "--timeout",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert first.stderr is not None
        # Once it waits for peers it holds the store.
        line = await asyncio.wait_for(first.stderr.readline(), 20.0)
        while b"waiting for peers" not in line:
            line = await asyncio.wait_for(first.stderr.readline(), 20.0)
        for command in (
            ["watch", KEY.public_key.hex(), "--store", str(store), "--no-browser"],
            ["archive", KEY.public_key.hex(), str(store)],
            ["seed", str(store)],
        ):
            code, _, err = await viewer(*command, "--hub", hub.url)
            assert_one_error(code, err, "in use")
    finally:
        first.terminate()
        await first.wait()


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--port", "70000"], "--port"),
        (["--timeout", "0"], "--timeout"),
        (["--at", "-5"], "--at"),
        (["--keep", "-1"], "--keep"),
        (["--keep", "many"], "--keep 'many'"),
        (["--max-store", "12X"], "--max-store '12X' is not a size"),
        (["--max-store", "10k"], "too small"),
        (["--keep", "all", "--max-store", "1G"], "--keep all keeps a full copy"),
    ],
)
async def test_bad_watch_options_are_one_line(option, needle, tmp_path):
    code, _, err = await viewer(
        "watch",
        KEY.public_key.hex(),
        "--hub",
        DEAD_HUB,
        "--no-browser",
        "--store",
        str(tmp_path / "s"),
        *option,
    )
    assert_one_error(code, err, needle)


async def test_archive_into_a_feed_of_another_stream_is_refused(tmp_path):
    store = tmp_path / "arc"
    Feed.open(store, key=OTHER.public_key, create=True).close()
    code, _, err = await viewer("archive", KEY.public_key.hex(), str(store), "--hub", DEAD_HUB)
    assert_one_error(code, err, "not " + KEY.public_key.hex())


async def test_seed_of_a_directory_without_a_feed_is_one_line(tmp_path):
    code, _, err = await viewer("seed", str(tmp_path / "missing"), "--hub", DEAD_HUB)
    assert_one_error(code, err, "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = await viewer("seed", str(empty), "--hub", DEAD_HUB)
    assert_one_error(code, err)
    assert list(empty.iterdir()) == []


async def test_seed_of_an_empty_feed_is_one_line(tmp_path):
    store = tmp_path / "arc"
    Feed.open(store, key=KEY.public_key, create=True).close()
    code, _, err = await viewer("seed", str(store), "--hub", DEAD_HUB)
    assert_one_error(code, err, "empty")


def test_default_store_is_per_key_in_the_data_dir(monkeypatch, tmp_path):
    from viewer.netsource import default_store

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store(KEY.public_key) == Path(tmp_path) / "swarmcast" / KEY.public_key.hex()
