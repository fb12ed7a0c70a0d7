"""What every media source is: a Source yields SourceFrames (decoded, timed in seconds from the
source's start) and, when it can pass its input through, SourcePackets (compressed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import av


@dataclass
class SourceFrame:
    """A decoded frame and its place on the source's timeline."""

    kind: Literal["video", "audio"]
    frame: av.VideoFrame | av.AudioFrame
    time: float  # seconds since the source started (monotonic, also across --loop passes)
    captured: float  # time.monotonic() when the frame was captured or decoded
    discontinuity: bool = False  # the first video frame after the input restarted (a reconnect)


@dataclass
class SourcePacket:
    """A compressed packet for passthrough, timed like SourceFrame (pts and dts in seconds)."""

    kind: Literal["video", "audio"]
    packet: av.Packet
    pts: float
    dts: float
    captured: float
    discontinuity: bool = False


class Source:
    """Base of all sources; subclasses fill in the attributes and frames()."""

    description: str = ""
    title: str = ""  # a default stream title
    width: int = 0
    height: int = 0
    fps: float | None = None  # the source's nominal frame rate, if known
    has_audio: bool = False
    live: bool = False  # produces frames at real time by itself, so nobody else paces it
    duration: float | None = None  # seconds, when known (a file; not a live source)

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame | None]:
        """Frames until the source ends or `stop` is set. A live input that pauses (a publisher
        left and another may come) yields None there: encode and append what is held."""
        raise NotImplementedError

    def close(self) -> None:
        """Release devices and files; safe to call twice."""
