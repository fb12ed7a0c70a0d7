"""Make samples/sample.mp4: 10 s of the test pattern (640x360, 30 fps, H.264 + AAC tone/beeps).

The clock in the picture counts from 00:00:00.000 (stream time, not the wall clock), so the file
is reproducible. Used by the tests and the demo; run `python3 samples/make_sample.py` to rebuild.
It never touches anything but its output file.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av

from streamer.media.testpattern import TestPattern

WIDTH, HEIGHT, FPS, SECONDS, RATE = 640, 360, 30, 10, 48000


def make(path: Path) -> None:
    pattern = TestPattern(WIDTH, HEIGHT)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
        video = out.add_stream(
            "libx264", rate=FPS, options={"preset": "medium", "x264-params": "keyint=60"}
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.bit_rate = 900_000
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        audio.bit_rate = 64_000
        sample = 0
        for n in range(SECONDS * FPS):
            t = n / FPS
            frame = pattern.video_frame(t, t)
            frame.pts, frame.time_base = n, Fraction(1, FPS)
            out.mux(video.encode(frame))
            while sample < (n + 1) * RATE // FPS:
                chunk = pattern.audio_frame(sample, 1024, RATE)
                chunk.pts, chunk.time_base = sample, Fraction(1, RATE)
                out.mux(audio.encode(chunk))
                sample += 1024
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("sample.mp4")))
    make(Path(parser.parse_args().out))


if __name__ == "__main__":
    main()
