"""`streamer broadcast SOURCE`: encode a file, a webcam or the test pattern into a signed feed.

Checks every option and opens the source before creating or touching the feed, so bad input
writes nothing. SIGINT/SIGTERM end the broadcast cleanly (last segment flushed, end marker
appended). Prints the stream key (hex) as the first line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from streamer.broadcast import (
    SEGMENT_RANGE,
    Broadcaster,
    parse_bitrate,
    parse_fps,
    parse_seconds,
    parse_size,
    plan_settings,
    resume_point,
)
from streamer.core import keyfile, storage
from streamer.core.errors import NetworkError, UsageError
from streamer.core.feed import SECRET_KEY_FILE, Feed
from streamer.core.names import validate_name
from streamer.core.scheduler import ReplicatorConfig
from streamer.hub import HubServer, start_hub
from streamer.media.sources import TEST_FPS, TEST_SIZE, open_source, parse_source
from streamer.net.hubclient import HubClient
from streamer.net.loop import run as run_loop
from streamer.net.replicator import NetworkReplicator
from streamer.net.swarm import Swarm

DEFAULT_UPLOAD_BUDGET = 1.2  # copies of the stream a broadcaster uploads at most by default

log = logging.getLogger("streamer.broadcast")

DEFAULT_FEED = "swarmcast-feed"
EMBEDDED_HUB_PORT = 8000
WRITER_MAX_PEERS = 3  # the broadcaster feeds a few viewers; they feed each other
LINGER_S = 5.0  # after the last segment, how long to wait for neighbours to fetch it


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broadcast",
        help="broadcast a file, a webcam or a test pattern",
        description=(
            "Encode SOURCE to H.264/AAC in keyframe-aligned fMP4 segments and append them to a "
            "signed feed. SOURCE: a media file or URL | webcam[:/dev/videoN] | test. Running "
            "again on the same --feed resumes the same stream."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="a file or URL, webcam[:DEVICE], or test")
    parser.add_argument(
        "--feed",
        metavar="DIR",
        default=DEFAULT_FEED,
        help=f"feed directory (default: ./{DEFAULT_FEED}; created if missing, resumed if it holds a stream)",
    )
    parser.add_argument(
        "--key",
        metavar="FILE",
        help="secret key file (streamer keygen); default: a key kept in the feed directory",
    )
    parser.add_argument("--title", help="stream title (default: the source's name)")
    parser.add_argument(
        "--segment", metavar="S", help="seconds per segment / keyframe interval (default 1.0)"
    )
    parser.add_argument(
        "--size",
        metavar="WxH",
        help="output picture size (default: the source's, at most 1920x1080)",
    )
    parser.add_argument(
        "--fps", metavar="N", help="output frame rate (default: the source's, else 30)"
    )
    parser.add_argument(
        "--bitrate", metavar="R", help="video bit rate, e.g. 2500k or 4M (default 2500k)"
    )
    parser.add_argument(
        "--preset", metavar="P", help="x264 preset (default veryfast; tune is always zerolatency)"
    )
    parser.add_argument("--duration", metavar="S", help="stop after S seconds of stream time")
    parser.add_argument(
        "--loop", action="store_true", help="repeat a file forever as a live stream"
    )
    parser.add_argument(
        "--fast", action="store_true", help="encode as fast as possible instead of in real time"
    )
    parser.add_argument(
        "--audio", metavar="DEV", help="microphone for a webcam source (ALSA device, e.g. hw:0)"
    )
    parser.add_argument(
        "--no-swarm", action="store_true", help="only write the feed, do not join a swarm"
    )
    parser.add_argument(
        "--hub",
        metavar="URL",
        help="signaling hub URL (default: an embedded hub on 127.0.0.1, port 8000 when free)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="register a stream name on the hub (signed by the stream key; first come, first served)",
    )
    parser.add_argument(
        "--stats", metavar="FILE", help="rewrite a JSON stats snapshot here every second"
    )
    parser.add_argument(
        "--upload-budget",
        metavar="X",
        help="copies of the stream the broadcaster may upload when viewers' uploads fall short "
        f"(default {DEFAULT_UPLOAD_BUDGET:g}: each block once plus 20 %%; e.g. 3 for a fat uplink)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    size = parse_size(args.size) if args.size is not None else None
    fps = parse_fps(args.fps) if args.fps is not None else None
    bitrate = parse_bitrate(args.bitrate) if args.bitrate is not None else None
    segment = (
        parse_seconds("--segment", args.segment, *SEGMENT_RANGE)
        if args.segment is not None
        else None
    )
    duration = (
        parse_seconds("--duration", args.duration, 0.001) if args.duration is not None else None
    )
    budget = (
        _parse_budget(args.upload_budget)
        if args.upload_budget is not None
        else DEFAULT_UPLOAD_BUDGET
    )
    kind, _ = parse_source(args.source)
    if args.loop and kind != "file":
        raise UsageError("--loop repeats a file; it does not apply to webcam or test sources")
    if args.audio and kind != "webcam":
        raise UsageError("--audio names a microphone and only goes with a webcam source")
    key_pair = (
        keyfile.key_pair_from_secret_key(keyfile.read_secret_key(args.key)) if args.key else None
    )
    feed_dir = Path(args.feed)
    if feed_dir.exists() and not feed_dir.is_dir():
        raise UsageError(f"--feed {feed_dir} is a file, not a directory")
    is_feed = storage.is_feed(feed_dir)
    if (
        not is_feed
        and feed_dir.is_dir()
        and any(p.name != "secret_key" for p in feed_dir.iterdir())
    ):
        raise UsageError(
            f"--feed {feed_dir} is a directory that holds no feed; give a new or empty directory"
        )
    if args.name is not None:
        if args.no_swarm:
            raise UsageError("--name is registered on a hub; it does not go with --no-swarm")
        validate_name(args.name)
    stats_path = Path(args.stats) if args.stats else None
    if stats_path is not None and not stats_path.parent.is_dir():
        raise UsageError(f"--stats {stats_path}: directory {stats_path.parent} does not exist")

    feed: Feed | None = None
    resume = None
    try:
        if is_feed:
            feed = Feed.create(feed_dir, key_pair)
            if not feed.writable:
                raise UsageError(
                    f"--feed {feed_dir} was started with --key FILE; pass the same --key to resume it"
                )
            resume = resume_point(feed)
        if resume is not None:
            size_hint = (resume.header.width, resume.header.height)
            fps_hint = resume.header.fps
        else:
            size_hint, fps_hint = size or TEST_SIZE, float(fps) if fps else TEST_FPS
        source = open_source(
            args.source,
            loop=args.loop,
            fast=args.fast,
            audio_device=args.audio,
            test_size=size_hint,
            test_fps=fps_hint,
        )
        try:
            settings = plan_settings(
                source,
                size=size,
                fps=fps,
                bitrate=bitrate,
                segment=segment,
                preset=args.preset,
                resume=resume,
            )
            if feed is None:
                feed = Feed.create(feed_dir, key_pair)
        except BaseException:
            source.close()
            raise
    except BaseException:
        if feed is not None:
            feed.close()
        raise

    with feed:
        broadcaster = Broadcaster(
            feed,
            source,
            settings,
            title=args.title or "",
            duration=duration,
            fast=args.fast,
            stats_path=stats_path,
        )
        print(feed.key.hex(), flush=True)
        what = (
            f"resuming the stream at {broadcaster.start:.2f} s"
            if resume
            else "starting a new stream"
        )
        log.info(
            "%s: %s -> %s (%dx%d %.4g fps, %d kbit/s, %.3g s segments)",
            what,
            source.description,
            feed_dir,
            settings.width,
            settings.height,
            float(settings.fps),
            settings.bitrate // 1000,
            settings.segment,
        )
        secret_key = key_pair.secret_key if key_pair else _stored_secret_key(feed_dir)
        swarm_plan = None if args.no_swarm else (args.hub, secret_key, args.name, budget)
        run_loop(_broadcast(broadcaster, swarm_plan))
        log.info(
            "stream ended: %d blocks, %.2f s of stream time",
            feed.length,
            broadcaster.pipeline.end_time,
        )
    return 0


def _parse_budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1.0 <= value <= 100.0:
        raise UsageError(
            f"--upload-budget {text!r} must be a number of stream copies from 1 to 100, e.g. 1.5"
        )
    return value


def _stored_secret_key(feed_dir: Path) -> bytes:
    return keyfile.read_secret_key(feed_dir / SECRET_KEY_FILE)


async def _go_live(
    broadcaster: Broadcaster,
    hub: str | None,
    secret_key: bytes,
    name: str | None,
    upload_budget: float = 1.2,
) -> tuple[NetworkReplicator, HubServer | None]:
    """Join the swarm of the broadcaster's feed through `hub`, or through an embedded hub on
    127.0.0.1 (port 8000 when free, so `viewer watch KEY` finds it without --hub)."""
    embedded: HubServer | None = None
    if hub is None:
        try:
            embedded = await start_hub("127.0.0.1", EMBEDDED_HUB_PORT)
        except NetworkError:  # port 8000 is taken: any free port will do
            embedded = await start_hub("127.0.0.1", 0)
        hub = embedded.url
        log.info("embedded hub listening on %s", hub)
    feed = broadcaster.feed
    swarm = Swarm(
        feed.discovery_key,
        feed.key,
        [hub],
        max_peers=WRITER_MAX_PEERS,
        writer_secret_key=secret_key,
    )
    if name is not None:
        async with HubClient([hub]) as client:
            await client.register_name(name, secret_key)
        log.info("registered the name %r on %s", name, hub)
    # Each block once for free (live push or the first request), plus extra copies worth
    # upload_budget - 1 of the stream, spent only on requests no viewer could take.
    config = ReplicatorConfig(writer_extra_ratio=upload_budget - 1.0)
    replicator = NetworkReplicator(feed, swarm, config=config)
    broadcaster.stats_providers.append(replicator.stats_fields)
    await replicator.start()
    log.info(
        "live on the swarm; watch with:\n  viewer watch %s --hub %s", name or feed.key.hex(), hub
    )
    return replicator, embedded


async def _broadcast(
    broadcaster: Broadcaster, swarm_plan: tuple[str | None, bytes, str | None, float] | None
) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if broadcaster.state == "stopping":
            return
        log.info("stopping: flushing the last segment")
        broadcaster.stop()

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):
            pass  # not on the main thread or not on Unix: Ctrl-C then interrupts as usual
    replicator: NetworkReplicator | None = None
    embedded: HubServer | None = None
    try:
        if swarm_plan is not None:
            replicator, embedded = await _go_live(broadcaster, *swarm_plan)
        await broadcaster.run()
        if replicator is not None and replicator.peers:
            # Give the neighbours a moment to fetch the last segment and the end marker.
            await replicator.wait_served(LINGER_S)
    finally:
        if replicator is not None:
            await replicator.stop()
        if embedded is not None:
            await embedded.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    sys.stdout.flush()
