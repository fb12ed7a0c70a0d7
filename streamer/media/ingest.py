"""Live ingest sources: wait for a publisher (OBS, ffmpeg) to push to rtmp://HOST:PORT/APP/KEY, or
to an srt:// listener where this FFmpeg has SRT, and yield its frames (or, for passthrough, its
packets) on one continuous timeline across publisher reconnects.

Opening the source blocks until the first publisher is live (or --timeout passes), so nothing is
written before there is something to broadcast. A publisher that drops leaves the stream open:
the next one continues it, its first frame flagged as a discontinuity.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import av

from streamer.core.errors import MediaError, UsageError
from streamer.media.frames import Source, SourceFrame, SourcePacket
from streamer.media.rtmp import Publisher, RtmpServer

log = logging.getLogger(__name__)

DEFAULT_RTMP_PORT = 1935
PROBE_KEYFRAMES = 3  # keyframes a passthrough check looks at (two intervals)
PROBE_LIMIT_S = 12.0  # ... or this much video, whichever comes first
OPEN_OPTIONS = {"analyzeduration": "200000", "probesize": "500000", "fpsprobesize": "0"}


@dataclass(frozen=True)
class IngestAddress:
    scheme: str
    host: str
    port: int
    app: str
    key: str

    @property
    def server_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.app}"


def parse_ingest_url(url: str) -> IngestAddress:
    """rtmp://HOST[:PORT]/APP/KEY (UsageError if a part is missing)."""
    parts = urlsplit(url)
    try:
        port = DEFAULT_RTMP_PORT if parts.port is None else parts.port
    except ValueError:
        raise UsageError(f"{url}: the port is not a number from 0 to 65535") from None
    path = parts.path.strip("/")
    if "/" not in path:
        raise UsageError(
            f"{url} has no stream key; give rtmp://HOST:PORT/APP/KEY, e.g. "
            "rtmp://0.0.0.0:1935/live/mysecretkey"
        )
    app, key = path.rsplit("/", 1)
    if not app or not key:
        raise UsageError(f"{url}: give both an application and a stream key, e.g. /live/KEY")
    return IngestAddress(parts.scheme, parts.hostname or "0.0.0.0", port, app, key)


@dataclass
class _Session:
    """One publisher's stream as PyAV sees it."""

    publisher: Publisher | None
    container: av.container.InputContainer
    video: av.VideoStream
    audio: av.AudioStream | None
    packets: Iterator[av.Packet]
    buffered: deque[av.Packet] = field(default_factory=deque)
    origin: float | None = None  # pts (s) of its first video keyframe

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.disconnect()
        try:
            self.container.close()
        except (av.FFmpegError, OSError):
            pass  # the publisher is gone anyway

    def next_packet(self) -> av.Packet | None:
        if self.buffered:
            return self.buffered.popleft()
        try:
            return next(self.packets)
        except StopIteration:
            return None
        except (av.FFmpegError, OSError, ValueError) as exc:
            log.debug("publisher stream ended: %s", exc)
            return None

    def describe(self) -> str:
        v = self.video.codec_context
        text = f"{v.name} {v.width}x{v.height}"
        if self.video.average_rate:
            text += f" {float(self.video.average_rate):.4g} fps"
        if self.audio is not None:
            a = self.audio.codec_context
            text += f", {a.name} {a.sample_rate} Hz"
        else:
            text += ", no audio"
        return text


def _stream_signature(session: _Session) -> tuple:
    """What a passthrough stream's init segment depends on."""
    v = session.video.codec_context
    a = session.audio.codec_context if session.audio else None
    return (
        v.name,
        v.width,
        v.height,
        bytes(v.extradata or b""),
        a.name if a else None,
        a.sample_rate if a else None,
        a.channels if a else None,
    )


class IngestSource(Source):
    """A live stream pushed to us over RTMP (or SRT)."""

    live = True

    def __init__(self, url: str, *, timeout: float | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.address = parse_ingest_url(url)
        self._publishers: queue.Queue[Publisher] = queue.Queue()
        self._server: RtmpServer | None = None
        self._srt = self.address.scheme == "srt"
        self.keep_signature: tuple | None = None  # passthrough: later publishers must match
        self.video_codec = ""
        self.audio_codec: str | None = None
        if self._srt:
            self.description = f"SRT listener {self.address.host}:{self.address.port}"
        else:
            self._server = RtmpServer(
                self.address.host,
                self.address.port,
                self.address.app,
                self.address.key,
                self._publishers.put,
            )
            self.description = (
                f"RTMP ingest on {self.address.host}:{self._server.port}/{self.address.app}"
            )
        self.title = "live"
        self.port = self._server.port if self._server else self.address.port
        if self._server is not None:
            log.info(
                "waiting for a publisher: server rtmp://%s:%d/%s, stream key %s",
                "127.0.0.1" if self.address.host in ("0.0.0.0", "::") else self.address.host,
                self.port,
                self.address.app,
                self.address.key,
            )
        try:
            session = self._wait_session(None)
        except BaseException:
            self.close()
            raise
        if session is None:
            self.close()
            raise MediaError(
                f"nothing was published to {self.url} within {self.timeout:g} s (point OBS or "
                "ffmpeg at it, or give a longer --timeout)"
            )
        self._session: _Session | None = session
        self._adopt(session)

    def _adopt(self, session: _Session) -> None:
        v = session.video.codec_context
        self.width, self.height = v.width, v.height
        rate = session.video.average_rate or session.video.guessed_rate
        self.fps = float(rate) if rate and 1 <= float(rate) <= 240 else None
        self.has_audio = session.audio is not None
        self.video_codec = v.name
        self.audio_codec = session.audio.codec_context.name if session.audio else None

    # -- publishers ---------------------------------------------------------------------------

    def _wait_session(self, stop: threading.Event | None) -> _Session | None:
        """The next usable publisher's stream, or None after --timeout (or once stop is set)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if self._srt:
            return self._open_srt()
        while True:
            if stop is not None and stop.is_set():
                return None
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                publisher = self._publishers.get(timeout=wait)
            except queue.Empty:
                continue
            if stop is not None:
                publisher.pipe.stop = stop
            session = self._open_publisher(publisher)
            if session is not None:
                return session

    def _open_publisher(self, publisher: Publisher) -> _Session | None:
        who = publisher.address.rsplit(":", 1)[0]
        try:
            container = av.open(publisher.pipe, "r", format="flv", options=OPEN_OPTIONS)
        except (av.FFmpegError, OSError, ValueError) as exc:
            log.warning("publisher %s left before its stream could be read (%s)", who, exc)
            publisher.disconnect()
            return None
        session = self._session_of(container, publisher)
        if session is None:
            return None
        if self.keep_signature is not None and _stream_signature(session) != self.keep_signature:
            log.warning(
                "refused publisher %s: it sends %s, other encoder settings than this passthrough "
                "stream (publish with the same settings as before)",
                who,
                session.describe(),
            )
            session.close()
            return None
        log.info("publisher %s is live: %s", who, session.describe())
        return session

    def _session_of(self, container, publisher: Publisher | None) -> _Session | None:
        who = publisher.address.rsplit(":", 1)[0] if publisher else self.url
        if not container.streams.video:
            log.warning("refused publisher %s: it sends no video (add a video source in OBS)", who)
            if publisher is not None:
                publisher.disconnect()
            container.close()
            return None
        video = container.streams.video[0]
        if not video.codec_context.width:
            log.warning(
                "refused publisher %s: its video codec (%s) is not one FFmpeg can decode; send "
                "H.264",
                who,
                video.codec_context.name,
            )
            if publisher is not None:
                publisher.disconnect()
            container.close()
            return None
        video.thread_type = "AUTO"
        audio = container.streams.audio[0] if container.streams.audio else None
        streams = [video] + ([audio] if audio is not None else [])
        return _Session(publisher, container, video, audio, container.demux(streams))

    def _open_srt(self) -> _Session | None:
        a = self.address
        target = f"srt://{a.host}:{a.port}?mode=listener&streamid={a.key}"
        options = {"mode": "listener"}
        if self.timeout is not None:
            options["listen_timeout"] = str(int(self.timeout * 1_000_000))
        try:
            container = av.open(target, "r", format="mpegts", options=options)
        except av.error.ProtocolNotFoundError:
            raise MediaError(
                "srt:// needs an FFmpeg with SRT (libsrt), which this PyAV build lacks; publish "
                "over rtmp://HOST:PORT/APP/KEY --listen instead"
            ) from None
        except (av.FFmpegError, OSError) as exc:
            log.warning("SRT listener: %s", exc)
            return None
        return self._session_of(container, None)

    # -- passthrough ------------------------------------------------------------------------

    @property
    def templates(self) -> tuple[av.VideoStream, av.AudioStream | None]:
        """The current publisher's streams (for a passthrough muxer)."""
        assert self._session is not None
        return self._session.video, self._session.audio

    def probe_keyframes(self) -> list[float]:
        """Times (s) of the first few video keyframes, read ahead and kept for packets()."""
        session = self._session
        assert session is not None
        keys: list[float] = []
        first: float | None = None
        while len(keys) < PROBE_KEYFRAMES:
            try:
                packet = next(session.packets)
            except (StopIteration, av.FFmpegError, OSError, ValueError):
                break
            session.buffered.append(packet)
            if packet.stream is not session.video or packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if first is None:
                first = t
            if packet.is_keyframe:
                keys.append(t)
            if t - first > PROBE_LIMIT_S:
                break
        return keys

    def keep_publisher_settings(self) -> None:
        """Passthrough: from now on, only publishers sending the same kind of stream join."""
        assert self._session is not None
        self.keep_signature = _stream_signature(self._session)

    def _timed_packets(
        self, stop: threading.Event
    ) -> Iterator[tuple[SourcePacket | None, float, _Session]]:
        """(packet, shift) across sessions: stream seconds = source seconds + shift."""
        offset = 0.0
        first = True
        session = self._session
        step = 1.0 / (self.fps or 30.0)
        while session is not None:
            if session.publisher is not None:
                session.publisher.pipe.stop = stop
            end = offset
            discontinuity = not first
            while not stop.is_set():
                packet = session.next_packet()
                if packet is None:
                    break
                if packet.pts is None or packet.dts is None or packet.size == 0:
                    continue
                tb = packet.time_base
                pts, dts = float(packet.pts * tb), float(packet.dts * tb)
                video = packet.stream is session.video
                if session.origin is None:
                    if not (video and packet.is_keyframe):
                        continue
                    session.origin = pts
                shift = offset - session.origin
                captured = time.monotonic()
                if video and session.publisher is not None:
                    captured = session.publisher.arrivals.pop(int(packet.dts), captured)
                yield (
                    SourcePacket(
                        "video" if video else "audio",
                        packet,
                        pts + shift,
                        dts + shift,
                        captured,
                        discontinuity and video,
                    ),
                    shift,
                    session,
                )
                if video:
                    discontinuity = False
                    end = max(end, pts + shift + step)
            if session.origin is not None:
                yield None, offset - session.origin, session
            session.close()
            self._session = None
            if stop.is_set():
                return
            log.warning(
                "the publisher disconnected at %.1f s of stream; waiting for it to come back "
                "(the stream stays open; Ctrl-C ends it)",
                end,
            )
            offset = end
            first = False
            session = self._wait_session(stop)
            self._session = session
            if session is None and not stop.is_set():
                log.warning(
                    "no publisher came back within %g s; ending the stream (run the same command "
                    "to resume it)",
                    self.timeout,
                )

    def packets(self, stop: threading.Event) -> Iterator[SourcePacket | None]:
        """The publishers' packets; None where one left (the input pauses: flush what is held)."""
        for packet, _, _ in self._timed_packets(stop):
            yield packet

    def frames(self, stop: threading.Event) -> Iterator[SourceFrame | None]:
        """The publishers' frames; None where one left (the input pauses: flush what is held)."""
        errors = 0
        pending_discontinuity = False
        for item, shift, session in self._timed_packets(stop):
            captured = time.monotonic()
            try:
                if item is None:  # the publisher left: take what the decoders still hold
                    frames: list[av.VideoFrame | av.AudioFrame] = list(session.video.decode(None))
                    if session.audio is not None:
                        frames += session.audio.decode(None)
                else:
                    pending_discontinuity |= item.discontinuity
                    captured = item.captured
                    frames = list(item.packet.decode())
            except av.FFmpegError as exc:
                errors += 1
                if errors > 100:
                    raise MediaError(f"the publisher's stream is undecodable ({exc})") from None
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                # Frames flushed at the end carry no time base of their own: use the stream's.
                stream = session.video if isinstance(frame, av.VideoFrame) else session.audio
                base = frame.time_base or (stream.time_base if stream is not None else None)
                if base is None:
                    continue
                t = float(frame.pts * base) + shift
                if isinstance(frame, av.VideoFrame):
                    yield SourceFrame("video", frame, t, captured, pending_discontinuity)
                    pending_discontinuity = False
                else:
                    yield SourceFrame("audio", frame, t, captured)
            if item is None:
                yield None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None
