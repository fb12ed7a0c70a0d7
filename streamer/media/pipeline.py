"""Source -> encoder -> fragments in worker threads: a reader thread decodes and scales the
source's frames while the encoding thread runs x264 (itself threaded) and the muxer, so the
stages overlap. Paces non-live sources at real time (unless fast), stops at a duration or when
asked, and always flushes the last GOP.

It hands the init segment and each fragment to callbacks and keeps encoder statistics; it never
touches a feed or an event loop itself (the callbacks decide how results cross threads).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import av

from streamer.core.errors import MediaError
from streamer.media.encoder import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    MEDIA_DELAY,
    EncoderSettings,
    Fragment,
    StreamEncoder,
)
from streamer.media.frames import Source, SourceFrame

log = logging.getLogger(__name__)

READ_AHEAD = 8  # decoded frames the reader may hold ready for the encoder
_END = object()


def read_ahead(
    frames: Iterator[SourceFrame | None],
    prepare: Callable[[SourceFrame | None], SourceFrame | None],
    stop: threading.Event,
    depth: int = READ_AHEAD,
) -> Generator[SourceFrame | None, None, None]:
    """Pull `frames` (and apply `prepare`) in a reader thread, up to `depth` ahead of the
    consumer. The reader has stopped when this generator returns or raises."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()

    def reader() -> None:
        try:
            for item in frames:
                item = prepare(item)
                while not done.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            ready.put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    thread = threading.Thread(target=reader, daemon=True, name="media-reader")
    thread.start()
    try:
        while True:
            try:
                item = ready.get(timeout=0.1)
            except queue.Empty:
                if not thread.is_alive() and ready.empty():
                    return
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()
        stop.set()  # the run is over: a source waiting for input gives up too
        stop_wait = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < stop_wait:
            try:  # unblock a reader waiting to put
                ready.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        if thread.is_alive():
            log.warning("the media reader did not stop in time")


class Pipeline:
    """Encodes one run of a source onto the stream timeline starting at `start` seconds."""

    def __init__(
        self,
        source: Source,
        settings: EncoderSettings,
        *,
        start: float = 0.0,
        duration: float | None = None,
        fast: bool = False,
    ) -> None:
        self.source = source
        self.settings = settings
        self.start = start
        self.duration = duration
        self.paced = not fast and not source.live
        self.stop_event = threading.Event()
        # Statistics, written by the worker thread, read by anyone (plain floats and ints).
        self.frames = 0
        self.stream_seconds = 0.0
        self.cpu_seconds = 0.0  # whole-process CPU time while this run encoded
        self.wall_seconds = 0.0
        self.end_time = start  # stream time where the encoded video ends

    def stop(self) -> None:
        """Ask the run to end soon; thread-safe. The last GOP is still flushed."""
        self.stop_event.set()

    def stream_fields(self) -> dict[str, Any]:
        """Stream header fields this pipeline decides."""
        s = self.settings
        return {
            "sample_rate": AUDIO_RATE,
            "channels": AUDIO_CHANNELS,
            "extra": {
                "bitrate": s.bitrate,
                "preset": s.preset,
                "audio_bitrate": s.audio_bitrate,
                # media timestamps (tfdt) = segment pts + media_delay (the AAC priming frame)
                "media_delay": float(MEDIA_DELAY),
            },
        }

    def run(
        self, on_init: Callable[[bytes, str], None], on_fragment: Callable[[Fragment], None]
    ) -> None:
        """Encode until the source ends, the duration is reached or stop() is called."""
        # Without source audio, silence runs two AAC frames ahead of the video so the muxer's
        # interleaver never holds a fragment back waiting for sound (measured: -45 ms at p50);
        # real audio gets a second of slack for interleaving jitter before silence fills in.
        audio_lag = 1.0 if self.source.has_audio else -0.05
        first = StreamEncoder(self.settings, start=self.start, audio_lag=audio_lag)
        encoder: StreamEncoder | None = first
        first_start = first.start
        frames_before = 0  # frames of encoders finished at an input pause
        # Process CPU time: x264 encodes in its own threads, which thread_time() would miss.
        cpu0, wall0 = time.process_time(), time.monotonic()
        init: bytes | None = None

        def deliver(encoder: StreamEncoder, fragments: list[Fragment]) -> None:
            nonlocal init
            if init is None and encoder.init is not None:
                init = encoder.init
                on_init(encoder.init, encoder.mime)
            elif encoder.init is not None and encoder.init != init:
                raise MediaError("the encoder restarted with another init segment; this is a bug")
            for fragment in fragments:
                on_fragment(fragment)
            self.frames = frames_before + encoder.frame_count
            self.end_time = encoder.video_end
            self.stream_seconds = encoder.video_end - first_start
            self.cpu_seconds = time.process_time() - cpu0
            self.wall_seconds = time.monotonic() - wall0

        stop = self.stop_event
        size = (self.settings.width, self.settings.height)

        def prepare(item: SourceFrame | None) -> SourceFrame | None:
            # Scale here, in the reader thread, rather than in the encoding thread.
            if item is None or not isinstance(item.frame, av.VideoFrame):
                return item
            frame = item.frame
            if (frame.width, frame.height) != size:
                try:
                    item.frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
                except (av.FFmpegError, ValueError) as exc:
                    raise MediaError(f"cannot convert a video frame: {exc}") from None
            elif frame.format.name != "yuv420p":
                item.frame = frame.reformat(format="yuv420p")
            return item

        items = read_ahead(self.source.frames(stop), prepare, stop)
        try:
            for item in items:
                if stop.is_set():
                    break
                if item is None:
                    # The input paused (a publisher left): append what is held now, rather than
                    # when it comes back; the next frames start a new GOP with a fresh encoder.
                    if encoder is not None and encoder.frame_count:
                        deliver(encoder, encoder.close())
                        frames_before += encoder.frame_count
                        encoder = None
                    continue
                if encoder is None:
                    end = self.end_time
                    encoder = StreamEncoder(self.settings, start=end, audio_lag=audio_lag)
                if self.duration is not None and item.time >= self.duration:
                    if item.kind == "video":
                        break
                    continue
                if self.paced:
                    delay = wall0 + item.time - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    item.captured = time.monotonic()
                at = self.start + item.time
                if isinstance(item.frame, av.VideoFrame):
                    added = encoder.add_video(item.frame, at, item.captured, item.discontinuity)
                    deliver(encoder, added)
                else:
                    deliver(encoder, encoder.add_audio(item.frame, at))
            if encoder is not None:
                deliver(encoder, encoder.close())
        except BaseException:
            if encoder is not None:
                encoder.abort()
            raise
        finally:
            items.close()  # joins the reader thread before the source closes under it
            self.source.close()
