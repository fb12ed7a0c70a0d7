"""Source -> encoder -> fragments, run synchronously in one worker thread: paces non-live sources
at real time (unless fast), stops at a duration or when asked, and always flushes the last GOP.

It hands the init segment and each fragment to callbacks and keeps encoder statistics; it never
touches a feed or an event loop itself (the callbacks decide how results cross threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from streamer.media.encoder import (
    AUDIO_CHANNELS,
    AUDIO_RATE,
    MEDIA_DELAY,
    EncoderSettings,
    Fragment,
    StreamEncoder,
)
from streamer.media.sources import Source


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
        encoder = StreamEncoder(
            self.settings, start=self.start, audio_lag=1.0 if self.source.has_audio else -0.05
        )
        # Process CPU time: x264 encodes in its own threads, which thread_time() would miss.
        cpu0, wall0 = time.process_time(), time.monotonic()
        init_sent = False

        def deliver(fragments: list[Fragment]) -> None:
            nonlocal init_sent
            if not init_sent and encoder.init is not None:
                on_init(encoder.init, encoder.mime)
                init_sent = True
            for fragment in fragments:
                on_fragment(fragment)
            self.frames = encoder.frame_count
            self.end_time = encoder.video_end
            self.stream_seconds = encoder.video_end - encoder.start
            self.cpu_seconds = time.process_time() - cpu0
            self.wall_seconds = time.monotonic() - wall0

        stop = self.stop_event
        try:
            for item in self.source.frames(stop):
                if stop.is_set():
                    break
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
                if item.kind == "video":
                    deliver(encoder.add_video(item.frame, at, item.captured, item.discontinuity))
                else:
                    deliver(encoder.add_audio(item.frame, at))
            deliver(encoder.close())
        except BaseException:
            encoder.abort()
            raise
        finally:
            self.source.close()
