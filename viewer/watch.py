"""`viewer watch`: join a stream's swarm, fetch its header and a starting block, and serve the local
player page (and HLS, and /stats) on 127.0.0.1 until interrupted, re-sharing what it stores.

It never serves a block the local feed has not verified, never listens beyond 127.0.0.1, and
raises SwarmcastErrors (one line for the CLI) for every problem a user can cause.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamer.core.errors import NetworkError, StreamFormatError, UsageError
from streamer.net.aio import stop_on_signals
from streamer.net.replicator import NetworkReplicator
from viewer.netsource import (
    NetworkSource,
    default_store,
    network_replicator,
    open_store,
    resolve_stream,
    store_lock,
    until_failed,
    wait_for_stream,
)
from viewer.server import PlayerServer
from viewer.store import StoreKeeper

log = logging.getLogger("viewer.watch")

RETRY_S = 30.0  # without --timeout, a status line this often while no peer serves the stream


@dataclass(frozen=True, slots=True)
class WatchOptions:
    stream: str  # KEY (64 hex digits) or NAME
    hub: str
    port: int = 0
    store: Path | None = None
    at: float | None = None
    timeout: float | None = None  # None: wait and retry until a peer serves the stream
    open_browser: bool = True
    max_peers: int = 6
    ice: str | None = None  # --ice: STUN/TURN servers (None: the environment's or the hub's)
    hub_ca: str | None = None  # --hub-ca: a private CA for an https hub
    keep: int | None = 3  # peers besides the broadcaster that should hold each block (None: all)
    max_store: int | None = None  # bytes kept on disk (None: no bound)


def check_options(options: WatchOptions) -> None:
    if not 0 <= options.port <= 65535:
        raise UsageError(f"--port {options.port} is not a TCP port; use 0-65535 (0 = any free)")
    if options.timeout is not None and options.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if not 1 <= options.max_peers <= 64:
        raise UsageError(f"--max-peers {options.max_peers} is out of range; use 1-64")
    if options.at is not None and options.at < 0:
        raise UsageError("--at is seconds from the start of the stream; give 0 or more")
    if options.keep is not None and options.keep < 0:
        raise UsageError("--keep must be 0 (opt out), a positive number of peers, or 'all'")


async def watch(
    options: WatchOptions,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> int:
    """Watch until `stop` is set (or SIGINT/SIGTERM when run as a command); returns 0.

    `on_ready(url)` is called once the page can play; `status` receives progress lines.
    """
    check_options(options)
    key = await resolve_stream(options.stream, options.hub, options.hub_ca)
    store = options.store or default_store(key)
    with store_lock(store):
        await _watch(key, store, options, stop, on_ready, status)
    return 0


async def _watch(
    key: bytes,
    store: Path,
    options: WatchOptions,
    stop: asyncio.Event | None,
    on_ready: Callable[[str], None] | None,
    status: Callable[[str], None] | None,
) -> None:
    feed = await asyncio.to_thread(open_store, store, key)
    net = network_replicator(
        feed, options.hub, max_peers=options.max_peers, ice=options.ice, hub_ca=options.hub_ca
    )
    source = NetworkSource(net)
    server = PlayerServer(source, port=options.port)
    keeper = StoreKeeper(net, options.keep, options.max_store, say=status)
    try:
        await net.start()
        keeper.start()
        # Our own disk failing ends the watch at once with its message, whatever it was doing.
        await until_failed(net, _play(key, net, source, server, options, stop, on_ready, status))
    finally:
        await keeper.stop()
        await server.stop()  # also closes the source: the replicator, the swarm and the feed
    net.raise_if_failed()


async def _play(
    key: bytes,
    net: NetworkReplicator,
    source: NetworkSource,
    server: PlayerServer,
    options: WatchOptions,
    stop: asyncio.Event | None,
    on_ready: Callable[[str], None] | None,
    status: Callable[[str], None] | None,
) -> None:
    start = await _start_block(key, net, source, options, status)
    source.set_playhead(start)
    await server.start()
    if on_ready is not None:
        on_ready(server.url)
    if options.open_browser:
        # webbrowser may start a process and wait for it: keep that off the loop.
        await asyncio.to_thread(webbrowser.open, server.url)
    await (stop or asyncio.Event()).wait()


async def _start_block(
    key: bytes,
    net: NetworkReplicator,
    source: NetworkSource,
    options: WatchOptions,
    status: Callable[[str], None] | None,
) -> int:
    """The block to start at, once peers sent the header and it. With a timeout, NetworkError
    when that does not happen in time; without, a status line each RETRY_S and another try: a
    live viewer that nobody serves yet (or whose neighbours left) waits for one."""
    attempt = options.timeout or RETRY_S
    tell = status
    while True:
        try:
            await wait_for_stream(net, attempt, tell)
            try:
                return await source.start_block(attempt, options.at)
            except TimeoutError:
                raise NetworkError(
                    f"peers of stream {key.hex()} did not send a media block within "
                    f"{attempt:.0f} s; try again later"
                ) from None
        except StreamFormatError as e:
            raise NetworkError(
                f"stream {key.hex()} is not a playable swarmcast stream: {e}"
            ) from None
        except NetworkError as e:
            if options.timeout is not None:
                raise
            tell = None  # "waiting for peers" was said once
            if status is not None:
                status(f"{str(e).split(';')[0]}; still trying (Ctrl-C to stop)")


def run_watch(options: WatchOptions) -> int:
    """The command: prints the player URL (stdout), status lines (stderr), exits on a signal."""
    from streamer.net.loop import run

    async def main() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)

        def ready(url: str) -> None:
            print(url, flush=True)
            print(f"playing at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)

        def status(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        return await watch(options, stop=stop, on_ready=ready, status=status)

    return run(main())
