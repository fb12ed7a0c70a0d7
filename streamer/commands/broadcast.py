"""`streamer broadcast SOURCE`: encode a file, a webcam or the test pattern into a signed feed.

Checks every option and opens the source before creating or touching the feed, so bad input
writes nothing. SIGINT/SIGTERM end the broadcast cleanly (last segment flushed, end marker
appended). Prints the stream key (hex) as the first line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from streamer.broadcast import (
    FPS_RANGE,
    SEGMENT_RANGE,
    X264_PRESETS,
    Broadcaster,
    BroadcastOptions,
    BroadcastState,
    plan_settings,
    rational_fps,
    resume_point,
)
from streamer.commands.status import show_status
from streamer.core import keyfile, storage
from streamer.core.backfill import describe_runs
from streamer.core.errors import NetworkError, UsageError
from streamer.core.feed import SECRET_KEY_FILE, Feed
from streamer.core.names import validate_name
from streamer.core.scheduler import ReplicatorConfig
from streamer.hub import HubServer, start_hub
from streamer.media.parts import DEFAULT_PART
from streamer.media.passthrough import COPY_PRESET
from streamer.media.sources import TEST_FPS, TEST_SIZE, open_source, parse_source
from streamer.net.aio import run_until
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
MAX_DIMENSION = 4096
BITRATE_RANGE = (50_000, 50_000_000)


@dataclass(frozen=True)
class SwarmPlan:
    """How the broadcaster joins its swarm: through `hub` (None: an embedded hub), signing with
    `secret_key`, registering `name` if given; `ice` and `hub_ca` as --ice and --hub-ca."""

    hub: str | None
    secret_key: bytes
    name: str | None
    ice: str | None = None
    hub_ca: str | None = None
    upload_budget: float = DEFAULT_UPLOAD_BUDGET  # --upload-budget: copies of the stream at most


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if not (16 <= w <= MAX_DIMENSION and 16 <= h <= MAX_DIMENSION):
        raise UsageError(
            f"--size {text} is out of range; width and height must be 16..{MAX_DIMENSION}"
        )
    if w % 2 or h % 2:
        raise UsageError(
            f"--size {text} has an odd dimension; H.264 4:2:0 needs even width and height"
        )
    return w, h


def parse_fps(text: str) -> Fraction:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--fps {text!r} is not a number, e.g. 30 or 29.97") from None
    if not FPS_RANGE[0] <= value <= FPS_RANGE[1]:
        raise UsageError(f"--fps {text} is out of range; use {FPS_RANGE[0]:g}..{FPS_RANGE[1]:g}")
    return rational_fps(value)


def parse_bitrate(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000}
    raw = text.strip().lower()
    scale = units.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if raw[-1:] in units else raw) * scale
    except ValueError:
        raise UsageError(f"--bitrate {text!r} is not a bit rate, e.g. 2500k or 2.5M") from None
    if not (BITRATE_RANGE[0] <= value <= BITRATE_RANGE[1]) or math.isnan(value):
        raise UsageError(f"--bitrate {text} is out of range; use 50k..50M")
    return int(value)


def parse_seconds(option: str, text: str, low: float, high: float = math.inf) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a number of seconds") from None
    if not low <= value <= high:
        bound = f"{low:g}..{high:g}" if high != math.inf else f"at least {low:g}"
        raise UsageError(f"{option} {text} is out of range; use {bound} seconds")
    return value


def parse_preset(text: str) -> str:
    if text not in X264_PRESETS:
        raise UsageError(
            f"--preset {text!r} is not an x264 preset; use one of {', '.join(X264_PRESETS)}"
        )
    return text


def parse_options(args: argparse.Namespace) -> BroadcastOptions:
    """The typed, range-checked options of a `broadcast` command line (UsageError if not)."""
    stats_path = Path(args.stats) if args.stats else None
    if stats_path is not None and not stats_path.parent.is_dir():
        raise UsageError(f"--stats {stats_path}: directory {stats_path.parent} does not exist")
    return BroadcastOptions(
        size=parse_size(args.size) if args.size is not None else None,
        fps=parse_fps(args.fps) if args.fps is not None else None,
        bitrate=parse_bitrate(args.bitrate) if args.bitrate is not None else None,
        segment=parse_seconds("--segment", args.segment, *SEGMENT_RANGE)
        if args.segment is not None
        else None,
        preset=parse_preset(args.preset) if args.preset is not None else None,
        title=args.title or "",
        duration=parse_seconds("--duration", args.duration, 0.001)
        if args.duration is not None
        else None,
        fast=args.fast,
        stats_path=stats_path,
        copy=True if args.copy else False if args.reencode else None,
        part=parse_seconds("--part", args.part, 0.01, SEGMENT_RANGE[1])
        if args.part is not None
        else None,
    )

LINGER_DEFAULT_S = 30.0  # --linger: how long to wait for blocks held by no viewer yet


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broadcast",
        help="broadcast a file, OBS over RTMP, a webcam, the screen or a test pattern",
        description=(
            "Cut SOURCE into keyframe-aligned H.264/AAC fMP4 segments of short parts (copied "
            "when the input allows, else encoded) and append them to a signed feed. SOURCE: a "
            "media file or "
            "URL | rtmp://HOST:PORT/APP/KEY --listen (OBS, ffmpeg) | webcam[:DEVICE] | "
            "screen[:DISPLAY] | test. Running again on the same --feed resumes the same stream."
        ),
    )
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a file or URL, rtmp://HOST:PORT/APP/KEY with --listen, webcam[:DEVICE], "
        "screen[:DISPLAY], or test",
    )
    parser.add_argument(
        "--listen",
        action="store_true",
        help="serve SOURCE's rtmp:// (or srt://) address and broadcast what a publisher pushes",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        help="with --listen: give up when no publisher is live for S seconds (default: wait)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--copy",
        action="store_true",
        help="cut blocks from the input's H.264/AAC without re-encoding (default when safe)",
    )
    mode.add_argument(
        "--reencode", action="store_true", help="always encode, even when copying is possible"
    )
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
        "--part",
        metavar="S",
        help="seconds per part, the block a viewer can fetch as soon as it is encoded "
        f"(default {DEFAULT_PART:g}, a whole number of frames; equal to --segment for one block "
        "per segment)",
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
        "--audio",
        metavar="DEV",
        help="microphone for a webcam or screen source (ALSA device, e.g. hw:0)",
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
        "--hub-ca", metavar="FILE", default=None,
        help="PEM certificate of the private CA that signed an https hub's certificate",
    )
    parser.add_argument(
        "--ice", metavar="SERVERS", default=None,
        help="STUN/TURN servers as in $SWARMCAST_ICE_SERVERS, or 'none' (default: "
        "$SWARMCAST_ICE_SERVERS, else the hub's)",
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
    parser.add_argument(
        "--linger",
        metavar="S",
        help="after the end, stay up to S seconds while some blocks exist only on this disk, "
        f"so the viewers can fetch them (default {LINGER_DEFAULT_S:g}; Ctrl-C again leaves now)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = parse_options(args)
    timeout = parse_seconds("--timeout", args.timeout, 0.1) if args.timeout is not None else None
    budget = (
        _parse_budget(args.upload_budget)
        if args.upload_budget is not None
        else DEFAULT_UPLOAD_BUDGET
    )
    kind, _ = parse_source(args.source, args.listen)
    if args.loop and kind != "file":
        raise UsageError("--loop repeats a file; it does not apply to live sources")
    if args.audio and kind not in ("webcam", "screen"):
        raise UsageError("--audio names a microphone and only goes with a webcam or screen source")
    if timeout is not None and kind != "ingest":
        raise UsageError("--timeout is how long --listen waits for a publisher; add --listen")
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
    linger = (
        parse_seconds("--linger", args.linger, 0.0) if args.linger is not None else LINGER_DEFAULT_S
    )

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
            size_hint = options.size or TEST_SIZE
            fps_hint = float(options.fps) if options.fps else TEST_FPS
        source = open_source(
            args.source,
            loop=args.loop,
            fast=args.fast,
            audio_device=args.audio,
            test_size=size_hint,
            test_fps=fps_hint,
            listen=args.listen,
            timeout=timeout,
        )
        try:
            settings = plan_settings(source, options, resume)
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
        broadcaster = Broadcaster(feed, source, settings, options)
        print(feed.key.hex(), flush=True)
        what = (
            f"resuming the stream at {broadcaster.start:.2f} s"
            if resume
            else "starting a new stream"
        )
        copying = settings.preset == COPY_PRESET
        log.info(
            "%s: %s -> %s (%dx%d %.4g fps, %s, %.3g s segments, %.3g s parts)",
            what,
            source.description,
            feed_dir,
            settings.width,
            settings.height,
            float(settings.fps),
            "copying the input's H.264/AAC" if copying else f"{settings.bitrate // 1000} kbit/s",
            settings.segment,
            settings.part or settings.segment,
        )
        secret_key = key_pair.secret_key if key_pair else _stored_secret_key(feed_dir)
        swarm_plan = None if args.no_swarm else SwarmPlan(
            args.hub, secret_key, args.name, args.ice, args.hub_ca, budget
        )
        total = None
        if options.fast and source.duration:
            total = min(source.duration, options.duration or source.duration)
        run_loop(_broadcast(broadcaster, swarm_plan, total, linger))
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


async def _linger(replicator: NetworkReplicator, linger: float, leave_now: asyncio.Event) -> None:
    """Before leaving: let the neighbours fetch the last segment and the end marker, then stay up
    to `linger` seconds while some blocks exist only on this disk (no neighbour announced them),
    and say so in one line if some still do when we go."""
    if replicator.peers:
        await run_until(replicator.wait_served(min(LINGER_S, linger)), leave_now)
    deadline = asyncio.get_running_loop().time() + linger
    only = replicator.replicator.safety().only_here
    if only and replicator.peers and linger > 0 and not leave_now.is_set():
        log.info(
            "%s exist only on this disk; staying up to %g s until viewers hold them "
            "(Ctrl-C again to leave now)",
            describe_runs(only),
            linger,
        )
    while only and replicator.peers and not leave_now.is_set():
        if asyncio.get_running_loop().time() >= deadline:
            break
        # Viewers' announcements arrive as peer messages, which no single event here signals.
        await run_until(asyncio.sleep(0.25), leave_now)
        only = replicator.replicator.safety().only_here
    if only:
        log.warning(
            "warning: leaving while %s exist only on this disk: no viewer holds them, so the "
            "swarm loses them unless this feed is seeded (viewer seed) or broadcast again",
            describe_runs(only),
        )


def _stored_secret_key(feed_dir: Path) -> bytes:
    return keyfile.read_secret_key(feed_dir / SECRET_KEY_FILE)


async def _go_live(
    broadcaster: Broadcaster, plan: SwarmPlan
) -> tuple[NetworkReplicator, HubServer | None]:
    """Join the swarm of the broadcaster's feed through the plan's hub, or through an embedded hub
    on 127.0.0.1 (port 8000 when free, so `viewer watch KEY` finds it without --hub)."""
    hub, secret_key, name = plan.hub, plan.secret_key, plan.name
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
        ice_servers=plan.ice,
        hub_ca=plan.hub_ca,
    )
    if name is not None:
        async with HubClient([hub], ca_file=plan.hub_ca) as client:
            await client.register_name(name, secret_key)
        log.info("registered the name %r on %s", name, hub)
    settings = broadcaster.settings
    # Each block once for free (live push or the first request), plus extra copies worth
    # upload_budget - 1 of the stream, spent only on requests no viewer could take.
    config = ReplicatorConfig(
        writer_extra_ratio=plan.upload_budget - 1.0,
        block_duration=settings.part or settings.segment,  # the windows are seconds of media
    )
    replicator = NetworkReplicator(feed, swarm, config=config)
    broadcaster.stats_providers.append(replicator.stats_fields)
    await replicator.start()
    target = name or feed.key.hex()
    log.info(
        "live on the swarm; watch with:\n  viewer watch %s --hub %s\n  or in a browser: %s/watch/%s",
        target, hub, hub.rstrip("/"), target,
    )
    return replicator, embedded


async def _broadcast(
    broadcaster: Broadcaster,
    swarm_plan: SwarmPlan | None,
    import_total: float | None = None,
    linger: float = LINGER_DEFAULT_S,
) -> None:
    """Run the broadcast (and its swarm) with a progress display; `import_total`: the seconds a
    --fast import will take, for its progress bar."""
    loop = asyncio.get_running_loop()
    leave_now = asyncio.Event()

    def on_signal() -> None:
        if broadcaster.state is BroadcastState.ENDED:
            leave_now.set()  # a second Ctrl-C while lingering
            return
        if broadcaster.state is BroadcastState.STOPPING:
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
    status: asyncio.Task | None = None
    try:
        if swarm_plan is not None:
            replicator, embedded = await _go_live(broadcaster, swarm_plan)
        status = asyncio.create_task(show_status(broadcaster.snapshot, import_total))
        await broadcaster.run()
        status.cancel()
        if replicator is not None:
            # The stats file follows the linger too (viewers fetching the last blocks), and its
            # last snapshot is the swarm as we leave it.
            stats = asyncio.create_task(broadcaster.write_stats_every_second())
            try:
                await _linger(replicator, linger, leave_now)
            finally:
                stats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stats
            await broadcaster.write_stats()
    finally:
        if status is not None:
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
        if replicator is not None:
            await replicator.stop()
        if embedded is not None:
            await embedded.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    sys.stdout.flush()
