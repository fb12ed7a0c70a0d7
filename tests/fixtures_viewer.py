"""Real test streams for the viewer tests and benchmark: PyAV encodes a small moving picture and a
tone into fragmented MP4 and cuts it into swarmcast blocks (header + one segment per second),
and real feeds (full, or sparse copies built from real proofs) hold them.

It never touches the network.
"""

from __future__ import annotations

import math
import struct
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from streamer.core.backfill import missing_runs
from streamer.core.feed import Feed
from streamer.core.wire import Request, RequestBlock, RequestUpgrade
from streamer.media.format import FLAG_END, Segment, StreamHeader
from viewer.source import LocalFeedSource

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"


@dataclass
class EncodedStream:
    header: bytes  # block 0
    segments: list[bytes]  # blocks 1..n (media only; no end marker)
    segment_duration: float

    def end_marker(self) -> bytes:
        last = Segment.decode_header(self.segments[-1])
        return Segment(last.pts + last.duration, 0.0, time.time(), b"", FLAG_END).encode()


class _BoxCutter:
    """A write()-only sink that splits the muxer output on top-level box boundaries."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.boxes: list[tuple[bytes, bytes]] = []

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= 8:
            size, kind = struct.unpack_from(">I4s", self.buffer)
            if size == 1:
                if len(self.buffer) < 16:
                    break
                size = struct.unpack_from(">Q", self.buffer, 8)[0]
            if len(self.buffer) < size:
                break
            self.boxes.append((bytes(kind), bytes(self.buffer[:size])))
            del self.buffer[:size]
        return len(data)


def _codec_string(extradata: bytes) -> str:
    if extradata[:1] == b"\x01":  # avcC: profile, compatibility, level follow the version byte
        return "avc1." + extradata[1:4].hex()
    nal = extradata.find(b"\x00\x00\x01\x67")  # Annex-B SPS
    return "avc1." + extradata[nal + 4 : nal + 7].hex()


def encode_test_stream(
    seconds: int,
    *,
    width: int = 160,
    height: int = 96,
    fps: int = 10,
    segment: float = 1.0,
    title: str = "test stream",
    audio: bool = True,
    noise: bool = False,
) -> EncodedStream:
    """Encode `seconds` of video (+audio) into a header block and one segment block per `segment`.

    `noise` fills the picture with random pixels: big blocks, to fill a player's buffer quickly.
    """
    sink = _BoxCutter()
    out = av.open(sink, "w", format="mp4", options={"movflags": MOVFLAGS})
    video = out.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "forced-idr": "1",
        "x264-params": "keyint=120:min-keyint=1:scenecut=0",
    }
    rate = 48000
    sound = out.add_stream("aac", rate=rate) if audio else None
    if sound is not None:
        sound.layout = "mono"
    video.codec_context.open()
    codecs = _codec_string(bytes(video.codec_context.extradata)) + (",mp4a.40.2" if audio else "")
    mime = f'video/mp4; codecs="{codecs}"'

    frames_per_segment = round(fps * segment)
    samples = 1024
    audio_pts = 0
    xs = np.arange(width)
    rng = np.random.default_rng(0)
    for n in range(int(seconds * fps)):
        t = n / fps
        image = (
            rng.integers(0, 256, (height, width, 3), np.uint8)
            if noise
            else np.zeros((height, width, 3), np.uint8)
        )
        image[:, :, 0] = (xs * 255 // width)[None, :]
        bar = (n * 4) % width
        image[:, bar : bar + 8, :] = 255
        image[: height // 4, : (n // fps) % width, 1] = 200  # a slow counter of whole seconds
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = n
        frame.time_base = Fraction(1, fps)
        if n % frames_per_segment == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in video.encode(frame):
            out.mux(packet)
        while sound is not None and audio_pts < (t + 1 / fps) * rate:
            tone = 0.2 * np.sin(2 * math.pi * 440 * (audio_pts + np.arange(samples)) / rate)
            aframe = av.AudioFrame.from_ndarray(
                tone.astype(np.float32)[None, :], format="fltp", layout="mono"
            )
            aframe.sample_rate = rate
            aframe.pts = audio_pts
            aframe.time_base = Fraction(1, rate)
            for packet in sound.encode(aframe):
                out.mux(packet)
            audio_pts += samples
    for stream in (video, sound):
        for packet in stream.encode(None) if stream is not None else ():
            out.mux(packet)
    out.close()

    kinds = [kind for kind, _ in sink.boxes]
    init_end = kinds.index(b"moov") + 1
    init = b"".join(box for _, box in sink.boxes[:init_end])
    fragments: list[bytes] = []
    current = b""
    for kind, box in sink.boxes[init_end:]:
        current += box
        if kind == b"mdat":
            fragments.append(current)
            current = b""
    now = time.time()
    header = StreamHeader(
        title=title,
        start_time=now,
        mime=mime,
        width=width,
        height=height,
        fps=fps,
        segment_duration=segment,
        audio_codec="aac" if audio else None,
        sample_rate=rate if audio else None,
        channels=1 if audio else None,
        init=init,
    )
    blocks = [
        Segment(i * segment, segment, now + i * segment, data).encode()
        for i, data in enumerate(fragments)
    ]
    return EncodedStream(header.encode(), blocks, segment)


def write_feed(directory: Path, blocks: list[bytes]) -> Feed:
    """A writable feed in `directory` holding `blocks` (appended in one batch)."""
    feed = Feed.create(directory)
    if blocks:
        feed.append(blocks)
    return feed


def sparse_copy(writer: Feed, directory: Path, indexes: list[int]) -> Feed:
    """A reader feed of `writer` holding only `indexes`, each verified from a real proof."""
    reader = Feed.open(directory, key=writer.key, create=True)
    for n, index in enumerate(indexes):
        request = Request(
            id=n + 1,
            fork=writer.fork,
            block=RequestBlock(index, reader.missing_nodes(index) if reader.length else 0),
            upgrade=RequestUpgrade(reader.length, writer.length - reader.length)
            if reader.length < writer.length
            else None,
        )
        reader.verify_and_apply(writer.proof(request))
    return reader


class HolesSource(LocalFeedSource):
    """A sparse feed (sparse_copy) whose missing blocks no one else holds either, as a network
    source sees history nobody kept: they never arrive, and each run of them that a held media
    block follows is a hole (NetworkSource asks its neighbours' announcements instead,
    core.scheduler.Replicator.holes)."""

    _can_fetch = True

    def holes(self) -> list[tuple[int, int]]:
        last_media = self.last_media
        runs = missing_runs(self.length, self.feed.present_ranges())
        return [(start, end) for start, end in runs if end <= last_media]


def ffmpeg_frames(playlist_url: str) -> int:
    """Decode an HLS playlist's video with the ffmpeg command from its first segment on (run in a
    thread: it blocks); how many frames it decoded. Fails on a non-zero exit."""
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-live_start_index", "0", "-i", playlist_url,
         "-map", "0:v", "-f", "framemd5", "-"],
        capture_output=True, text=True, timeout=120,
    )
    assert decode.returncode == 0, decode.stderr
    return sum(1 for ln in decode.stdout.splitlines() if ln and not ln.startswith("#"))
