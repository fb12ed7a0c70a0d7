"""Media sources: a file or URL PyAV can open, a webcam or the screen (v4l2 / x11grab, or the
macOS and Windows inputs, optional microphone), an ingest listener (media/ingest.py), or the
generated test pattern. Each yields decoded frames timed in seconds from the source's start.

Sources only capture and decode: they never scale, encode or pace a non-live source (the
pipeline does that), and opening one validates it, raising MediaError with a one-line reason.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Literal

import av

from streamer.core.errors import MediaError
from streamer.media.frames import Source, SourceFrame, SourcePacket
from streamer.media.ingest import IngestSource
from streamer.media.testpattern import TestPattern

__all__ = ["Source", "SourceFrame", "SourcePacket", "open_source", "parse_source"]

log = logging.getLogger(__name__)

DEFAULT_WEBCAM = "/dev/video0"
TEST_SIZE = (1280, 720)
TEST_FPS = 30.0
_AUDIO_CHUNK = 1024  # test-pattern samples per audio frame
# Demuxers FFmpeg picks for text files by their extension; they are never what a user meant.
_NOT_MEDIA_FORMATS = {"tty"}


def _open_input(
    target: str, what: str, fmt: str | None = None, options: dict[str, str] | None = None
):
    try:
        return av.open(target, "r", format=fmt, options=options or {}, timeout=10.0)
    except FileNotFoundError:
        raise MediaError(f"{what} {target} does not exist") from None
    except IsADirectoryError:
        raise MediaError(f"{what} {target} is a directory, not a media file") from None
    except PermissionError:
        raise MediaError(f"{what} {target} is not readable (permission denied)") from None
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise MediaError(f"{what} {target} is busy (another program is using it)") from None
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            raise MediaError(f"{what} {target} does not exist") from None
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(f"cannot open {what} {target}: {reason}") from None
    except av.error.InvalidDataError:
        raise MediaError(f"{what} {target} is not a media file FFmpeg can read") from None
    except (av.FFmpegError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(f"cannot open {what} {target}: {reason}") from None


def _frame_time(frame: av.VideoFrame | av.AudioFrame) -> float | None:
    t = frame.time
    return None if t is None else float(t)


_Decoded = tuple[Literal["video", "audio"], av.VideoFrame | av.AudioFrame, float]  # kind, frame, time

class FileSource(Source):
    """Any file or URL FFmpeg demuxes; --loop replays it with a continuing timeline."""

    def __init__(self, url: str, loop: bool = False) -> None:
        self.url = url
        self.loop = loop
        self.description = url
        self.title = url.rstrip("/").rsplit("/", 1)[-1] or url
        self._container = self._open()
        vs = self._container.streams.video[0]
        self.width = vs.codec_context.width
        self.height = vs.codec_context.height
        rate = vs.average_rate or vs.guessed_rate
        self.fps = float(rate) if rate else None
        self.has_audio = bool(self._container.streams.audio)
        if self._container.duration and not loop:
            self.duration = self._container.duration / av.time_base
        # Decode up to the first picture now, so an undecodable file fails before any feed exists.
        self._pass = self._decode_pass(self._container)
        self._prelude: list[_Decoded] = []
        for item in self._pass:
            self._prelude.append(item)
            if item[0] == "video":
                break
        else:
            self._container.close()
            raise MediaError(f"{url} holds no decodable video frame")
        if not self.width:
            first = self._prelude[-1][1]
            assert isinstance(first, av.VideoFrame)  # the prelude ends at the first video frame
            self.width, self.height = first.width, first.height

    def _open(self):
        if "://" not in self.url and not os.path.exists(self.url):
            raise MediaError(
                f"source {self.url} does not exist (give a media file, a URL, webcam or test)"
            )
        container = _open_input(self.url, "source")
        if container.format.name in _NOT_MEDIA_FORMATS:
            container.close()
            raise MediaError(f"source {self.url} is not a media file")
        if not container.streams.video:
            container.close()
            raise MediaError(f"source {self.url} has no video stream")
        return container

    def _decode_pass(
        self, container
    ) -> Iterator[_Decoded]:
        """One pass over the file: (kind, frame, seconds since the pass's first picture)."""
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        video.thread_type = "AUTO"
        streams = [video] + ([audio] if audio is not None else [])
        origin: float | None = None
        early_audio: list[tuple[av.AudioFrame, float]] = []
        last_video: float | None = None
        step = 1.0 / self.fps if self.fps else 1.0 / 30
        errors = 0
        for packet in container.demux(streams):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                # One damaged packet should not end a broadcast; a file of nothing else should.
                errors += 1
                if errors > 100:
                    raise MediaError(f"{self.url}: too many undecodable packets ({exc})") from None
                continue
            for frame in frames:
                t = _frame_time(frame)
                if isinstance(frame, av.VideoFrame):
                    if t is None:
                        t = (last_video + step) if last_video is not None else 0.0
                    if origin is None:
                        origin = t
                        for a, at in early_audio:
                            yield "audio", a, at - origin
                        early_audio.clear()
                    last_video = t
                    yield "video", frame, t - origin
                else:
                    if t is None:
                        continue
                    if origin is None:
                        early_audio.append((frame, t))
                    else:
                        yield "audio", frame, t - origin

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        offset = 0.0
        items: Iterator[_Decoded] = iter(self._prelude)
        rest = self._pass
        step = 1.0 / self.fps if self.fps else 1.0 / 30
        while True:
            end = 0.0
            for source in (items, rest):
                for kind, frame, t in source:
                    if stop.is_set():
                        return
                    if kind == "video":
                        end = max(end, t + step)
                    yield SourceFrame(kind, frame, offset + t, time.monotonic())
            if not self.loop or stop.is_set() or end == 0.0:
                return
            offset += end
            self._container.close()
            self._container = self._open()
            items, rest = iter(()), self._decode_pass(self._container)

    # -- passthrough: compressed packets instead of frames ----------------------------------

    @property
    def video_codec(self) -> str:
        return self._container.streams.video[0].codec_context.name

    @property
    def audio_codec(self) -> str | None:
        audio = self._container.streams.audio
        return audio[0].codec_context.name if audio else None

    @property
    def templates(self) -> tuple[av.VideoStream, av.AudioStream | None]:
        streams = self._container.streams
        return streams.video[0], (streams.audio[0] if streams.audio else None)

    def probe_keyframes(self, count: int = 4, limit: float = 12.0) -> list[float]:
        """Times (s) of the first `count` video keyframes within `limit` seconds."""
        keys: list[float] = []
        with self._open() as container:
            video = container.streams.video[0]
            first: float | None = None
            for packet in container.demux(video):
                if packet.pts is None:
                    continue
                t = float(packet.pts * packet.time_base)
                first = t if first is None else first
                if packet.is_keyframe:
                    keys.append(t)
                if len(keys) >= count or t - first > limit:
                    break
        return keys

    def packets(self, stop: threading.Event) -> Iterator[SourcePacket]:
        """The file's packets from its first video keyframe (each --loop pass continuing)."""
        offset = 0.0
        step = 1.0 / self.fps if self.fps else 1.0 / 30
        while True:
            container = self._open()
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            origin: float | None = None
            end = offset
            try:
                for packet in container.demux([video] + ([audio] if audio else [])):
                    if stop.is_set():
                        return
                    if packet.pts is None or packet.dts is None or packet.size == 0:
                        continue
                    is_video = packet.stream is video
                    pts = float(packet.pts * packet.time_base)
                    if origin is None:
                        if not (is_video and packet.is_keyframe):
                            continue
                        origin = pts
                    shift = offset - origin
                    dts = float(packet.dts * packet.time_base) + shift
                    if is_video:
                        end = max(end, pts + shift + step)
                    yield SourcePacket(
                        "video" if is_video else "audio",
                        packet,
                        pts + shift,
                        dts,
                        time.monotonic(),
                    )
            finally:
                container.close()
            if not self.loop or stop.is_set() or end == offset:
                return
            offset = end

    def close(self) -> None:
        self._container.close()


class WebcamSource(Source):
    """A capture device (v4l2 by default) with an optional microphone (ALSA by default).

    Frames are timed by arrival, since camera and microphone stamp with unrelated clocks. Tests
    pass format="lavfi" with a real-time filter graph to exercise this same code without a camera.
    """

    live = True

    what = "webcam"

    def __init__(
        self,
        device: str = DEFAULT_WEBCAM,
        audio_device: str | None = None,
        video_format: str = "v4l2",
        audio_format: str = "alsa",
        options: dict[str, str] | None = None,
    ) -> None:
        what = self.what
        self.description = f"{what} {device}" + (
            f" + microphone {audio_device}" if audio_device else ""
        )
        _require_format(video_format, what)
        if audio_device:
            _require_format(audio_format, "microphone")
        if video_format == "v4l2" and not os.path.exists(device):
            raise MediaError(
                f"no webcam at {device} (is it connected? name another with webcam:/dev/videoN)"
            )
        self._video = _open_input(device, what, video_format, options)
        if not self._video.streams.video:
            self._video.close()
            raise MediaError(f"{what} {device} offers no video stream")
        vs = self._video.streams.video[0]
        self.width, self.height = vs.codec_context.width, vs.codec_context.height
        rate = vs.average_rate or vs.guessed_rate
        self.fps = float(rate) if rate else None
        self._audio = None
        if audio_device:
            try:
                self._audio = _open_input(audio_device, "microphone", audio_format)
            except MediaError:
                self._video.close()
                raise
            if not self._audio.streams.audio:
                self.close()
                raise MediaError(f"microphone {audio_device} offers no audio stream")
            self.has_audio = True
        self._closed = False

    def _capture_audio(self, out: queue.Queue, done: threading.Event, origin: float) -> None:
        assert self._audio is not None
        try:
            for frame in self._audio.decode(self._audio.streams.audio[0]):
                if done.is_set():
                    return
                arrived = time.monotonic()
                # A chunk arrives when its last sample was captured.
                try:
                    out.put_nowait(
                        (frame, arrived - origin - frame.samples / frame.sample_rate, arrived)
                    )
                except queue.Full:
                    log.warning("microphone audio is piling up unread; dropping a chunk")
        except (av.FFmpegError, OSError, ValueError) as exc:
            log.warning("microphone stopped: %s; continuing with silence", exc)

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        origin = time.monotonic()
        audio_queue: queue.Queue = queue.Queue(maxsize=500)
        done = threading.Event()
        microphone = None
        if self._audio is not None:
            microphone = threading.Thread(
                target=self._capture_audio,
                args=(audio_queue, done, origin),
                daemon=True,
                name="microphone",
            )
            microphone.start()
        try:
            for frame in self._video.decode(self._video.streams.video[0]):
                arrived = time.monotonic()
                while True:
                    try:
                        a, at, acaptured = audio_queue.get_nowait()
                    except queue.Empty:
                        break
                    yield SourceFrame("audio", a, at, acaptured)
                yield SourceFrame("video", frame, arrived - origin, arrived)
                if stop.is_set():
                    return
        except (av.FFmpegError, OSError) as exc:
            raise MediaError(f"the {self.what} stopped delivering frames: {exc}") from None
        finally:
            done.set()
            if microphone is not None:
                # Closing a container another thread is reading crashes FFmpeg: wait for the
                # reader to see `done` (it wakes with each audio chunk).
                microphone.join(5.0)
                if microphone.is_alive():
                    log.warning("the microphone did not stop; leaving it open")
                    self._audio = None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._video.close()
            if self._audio is not None:
                self._audio.close()


class ScreenSource(WebcamSource):
    """The screen: x11grab on Linux (DISPLAY like :0 or :0.0+0,0), avfoundation on macOS
    ("Capture screen 0"), gdigrab on Windows ("desktop"); timed by arrival like a webcam."""

    what = "screen"


# Capture inputs by platform, for messages: FFmpeg format -> where it exists.
CAPTURE_FORMATS = {
    "v4l2": "Linux",
    "x11grab": "Linux (X11)",
    "avfoundation": "macOS",
    "dshow": "Windows",
    "gdigrab": "Windows",
    "alsa": "Linux",
    "pulse": "Linux",
}


def _require_format(fmt: str, what: str) -> None:
    try:
        av.format.ContainerFormat(fmt, "r")
    except ValueError:
        where = CAPTURE_FORMATS.get(fmt)
        hint = f" (it exists in {where} builds)" if where else ""
        raise MediaError(f"this FFmpeg has no {fmt} input for the {what}{hint}") from None


class TestPatternSource(Source):
    """The generated `test` source; live (real-time) unless made for --fast import."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, width: int, height: int, fps: float, live: bool = True) -> None:
        self.description = self.title = "test pattern"
        self.width, self.height, self.fps = width, height, fps
        self.has_audio = True
        self.live = live
        self._pattern = TestPattern(width, height)

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame]:
        assert self.fps is not None
        origin = time.monotonic()
        wall_origin = time.time()
        rate = 48000
        sample = 0
        n = 0
        while not stop.is_set():
            t = n / self.fps
            if self.live:
                delay = origin + t - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                wall = time.time()
            else:
                wall = wall_origin + t
            # Audio up to the end of this frame, so sound never lags the picture.
            until = int((n + 1) / self.fps * rate)
            while sample < until:
                frame = self._pattern.audio_frame(sample, _AUDIO_CHUNK, rate)
                yield SourceFrame("audio", frame, sample / rate, time.monotonic())
                sample += _AUDIO_CHUNK
            yield SourceFrame("video", self._pattern.video_frame(t, wall), t, time.monotonic())
            n += 1


def parse_source(spec: str, listen: bool = False) -> tuple[str, str | None]:
    """('test' | 'webcam' | 'screen' | 'ingest' | 'file', device, URL or path).

    webcam[:DEVICE] and screen[:DISPLAY] take an optional FFmpeg input format first:
    webcam:avfoundation:0, webcam:dshow:video=NAME, screen:gdigrab:desktop.
    """
    if spec == "test":
        return "test", None
    for kind in ("webcam", "screen"):
        if spec == kind:
            return kind, None
        if spec.startswith(kind + ":"):
            device = spec.split(":", 1)[1]
            if not device:
                example = "webcam:/dev/video0" if kind == "webcam" else "screen::0"
                raise MediaError(f"{kind}: needs a device after the colon, e.g. {example}")
            return kind, device
    if listen:
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
        if scheme not in ("rtmp", "srt"):
            raise MediaError(
                f"--listen takes rtmp://HOST:PORT/APP/KEY (or srt://HOST:PORT); {spec} is not one"
            )
        return "ingest", spec
    return "file", spec


def capture_device(kind: str, target: str | None) -> tuple[str, str]:
    """(FFmpeg input format, device) for a webcam or screen target as parse_source gives it."""
    default_format = "v4l2" if kind == "webcam" else "x11grab"
    if target is None:
        if kind == "webcam":
            return default_format, DEFAULT_WEBCAM
        return default_format, os.environ.get("DISPLAY") or ":0"
    head, _, rest = target.partition(":")
    if head in CAPTURE_FORMATS and rest:
        return head, rest
    if kind == "screen" and target[0].isdigit():
        target = ":" + target  # screen:99 means display :99
    return default_format, target


def open_source(
    spec: str,
    *,
    loop: bool = False,
    fast: bool = False,
    audio_device: str | None = None,
    test_size: tuple[int, int] = TEST_SIZE,
    test_fps: float = TEST_FPS,
    listen: bool = False,
    timeout: float | None = None,
) -> Source:
    """Open and validate SOURCE as given on the command line (MediaError if unusable).

    An ingest URL (with listen) blocks until a publisher is live or `timeout` passes.
    """
    kind, target = parse_source(spec, listen)
    if kind == "test":
        return TestPatternSource(*test_size, test_fps, live=not fast)
    if kind in ("webcam", "screen"):
        fmt, device = capture_device(kind, target)
        audio_format = {"avfoundation": "avfoundation", "dshow": "dshow"}.get(fmt, "alsa")
        if kind == "webcam":
            return WebcamSource(device, audio_device, fmt, audio_format)
        options = {"framerate": f"{test_fps:g}"}
        if fmt == "x11grab":
            options["draw_mouse"] = "1"
        return ScreenSource(device, audio_device, fmt, audio_format, options)
    if audio_device:
        raise MediaError(
            "--audio selects a microphone and only goes with a webcam or screen source"
        )
    if kind == "ingest":
        return IngestSource(spec, timeout=timeout)
    return FileSource(spec, loop=loop)
