"""The `test` source's pictures and sound: moving colour bars, the wall-clock time drawn with a
built-in digit font and, for machines, as a strip of black/white blocks along the bottom (the
capture time in milliseconds, read back by read_time_code), a white flash and a beep at the start
of every stream second, a quiet tone otherwise. Pure numpy + PyAV frame construction: no pacing,
no encoding, no fonts on disk.
"""

from __future__ import annotations

import math
import time as _time

import av
import numpy as np

# 5x7 bitmaps, one string of 7 rows per glyph; '#' is lit.
_FONT = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": (".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."),
    ":": (".....", "..#..", "..#..", ".....", "..#..", "..#..", "....."),
    ".": (".....", ".....", ".....", ".....", ".....", "..#..", "..#.."),
    " ": (".....",) * 7,
}
_GLYPHS = {ch: np.array([[c == "#" for c in row] for row in rows]) for ch, rows in _FONT.items()}

FLASH_S = 0.1  # flash and beep length at each whole stream second
TONE_HZ = 440.0
BEEP_HZ = 1000.0
TONE_LEVEL = 0.05
BEEP_LEVEL = 0.5

# Colour bars as (Y, U, V): white, yellow, cyan, green, magenta, red, blue, black.
_BARS = np.array(
    [
        (235, 128, 128),
        (210, 16, 146),
        (170, 166, 16),
        (145, 54, 34),
        (106, 202, 222),
        (81, 90, 240),
        (41, 240, 110),
        (16, 128, 128),
    ],
    dtype=np.uint8,
)


# The time code: TIME_CODE_BITS blocks across the bottom strip, most significant first: the
# capture time in ms modulo 2**32, then an 8-bit checksum (the sum of those four bytes, mod 256).
# Blocks are at least 8 px wide and tall, black (16) or white (235): they survive H.264.
TIME_CODE_BITS = 40
_WRAP_MS = 1 << 32


def time_code_strip(width: int, height: int) -> tuple[int, int]:
    """(top row, height) of the time-code strip in a width x height picture."""
    strip = max(8, height // 12) & ~1
    return height - strip, strip


def time_code_bits(wall: float) -> list[int]:
    """The bits the strip shows for Unix time `wall`."""
    ms = int(round(wall * 1000)) % _WRAP_MS
    data = ms.to_bytes(4, "big")
    value = (ms << 8) | (sum(data) & 0xFF)
    return [(value >> (TIME_CODE_BITS - 1 - i)) & 1 for i in range(TIME_CODE_BITS)]


def read_time_code(gray: np.ndarray, near: float) -> float | None:
    """The capture time (Unix seconds) coded in a picture's strip, given as a 2-D array of
    brightness (luma or grey, any size with the same layout), or None when it does not read
    (checksum wrong). `near` is any time within 24 days of it, to undo the 2**32 ms wrap."""
    h, w = gray.shape[:2]
    top, strip = time_code_strip(w, h)
    row = gray[top + strip // 2].astype(np.float64)
    bits = []
    for i in range(TIME_CODE_BITS):
        x0, x1 = i * w // TIME_CODE_BITS, (i + 1) * w // TIME_CODE_BITS
        mid = row[x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4]
        bits.append(1 if mid.mean() > 128 else 0)
    value = 0
    for b in bits:
        value = (value << 1) | b
    ms, check = value >> 8, value & 0xFF
    if sum(ms.to_bytes(4, "big")) & 0xFF != check:
        return None
    near_ms = int(near * 1000)
    delta = (near_ms - ms) % _WRAP_MS
    if delta > _WRAP_MS // 2:
        delta -= _WRAP_MS
    return (near_ms - delta) / 1000


def draw_time_code(luma: np.ndarray, chroma: np.ndarray, wall: float) -> None:
    """Draw the time-code strip for `wall` into a picture's luma and (2, h/2, w/2) chroma."""
    h, w = luma.shape
    top, strip = time_code_strip(w, h)
    for i, bit in enumerate(time_code_bits(wall)):
        x0, x1 = i * w // TIME_CODE_BITS, (i + 1) * w // TIME_CODE_BITS
        luma[top:, x0:x1] = 235 if bit else 16
    chroma[:, top // 2 :, :] = 128


def clock_text(wall: float) -> str:
    """HH:MM:SS.mmm of a Unix time in UTC, the form burnt into the picture."""
    whole = int(wall)
    ms = int(round((wall - whole) * 1000))
    if ms == 1000:
        whole, ms = whole + 1, 0
    return _time.strftime("%H:%M:%S", _time.gmtime(whole)) + f".{ms:03d}"


def draw_text(plane: np.ndarray, text: str, x: int, y: int, scale: int, value: int = 235) -> None:
    """Draw text into a luma plane with the built-in font (unknown characters draw as blanks)."""
    for i, ch in enumerate(text):
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        gx = x + i * 6 * scale
        region = plane[y : y + big.shape[0], gx : gx + big.shape[1]]
        region[big[: region.shape[0], : region.shape[1]]] = value


class TestPattern:
    """Draws frame n of a width x height pattern and the matching tone samples."""

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("the test pattern needs an even width and height")
        self.width = width
        self.height = height
        columns = (np.arange(width) * len(_BARS) // width).astype(np.intp)
        bars = _BARS[columns]
        self._y_row = bars[:, 0]
        self._u_row = bars[::2, 1]
        self._v_row = bars[::2, 2]
        self._scale = max(1, height // 90)

    def video_frame(self, stream_time: float, wall: float) -> av.VideoFrame:
        """The picture at `stream_time` seconds, showing the Unix time `wall`."""
        w, h = self.width, self.height
        shift = int(stream_time * w / 8) % w  # bars scroll one screen width every 8 s
        y = np.empty((h * 3 // 2, w), dtype=np.uint8)
        luma = y[:h]
        luma[:] = np.roll(self._y_row, shift)
        chroma = y[h:].reshape(2, h // 2, w // 2)
        chroma[0] = np.roll(self._u_row, shift // 2)
        chroma[1] = np.roll(self._v_row, shift // 2)
        # A grey box bouncing across the lower half shows motion even where bars look static.
        box = max(4, h // 8) & ~1
        phase = (stream_time / 4.0) % 2.0
        bx = int((phase if phase < 1 else 2 - phase) * (w - box)) & ~1
        by = (h - box - h // 10) & ~1
        luma[by : by + box, bx : bx + box] = 128
        chroma[:, by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 128
        if stream_time - math.floor(stream_time + 1e-9) < FLASH_S - 1e-9:
            fx = (w - box - w // 20) & ~1
            luma[h // 20 : h // 20 + box, fx : fx + box] = 235
            chroma[:, h // 40 : (h // 20 + box) // 2, fx // 2 : (fx + box) // 2] = 128
        s = self._scale
        text = clock_text(wall)
        tw, th = len(text) * 6 * s + 2 * s, 9 * s
        luma[: th + s, : tw + s] = 16
        chroma[:, : (th + s) // 2 + 1, : (tw + s) // 2 + 1] = 128
        draw_text(luma, text, 2 * s, 2 * s, s)
        draw_time_code(luma, chroma, wall)
        return av.VideoFrame.from_ndarray(y, format="yuv420p")

    @staticmethod
    def audio_frame(first_sample: int, count: int, rate: int = 48000) -> av.AudioFrame:
        """Mono float samples [first_sample, first_sample + count) of the tone: a quiet 440 Hz
        tone with a loud 1 kHz beep during the first FLASH_S of every stream second."""
        n = np.arange(first_sample, first_sample + count, dtype=np.float64)
        t = n / rate
        beep = (t - np.floor(t + 1e-9)) < FLASH_S
        wave = np.where(
            beep,
            BEEP_LEVEL * np.sin(2 * np.pi * BEEP_HZ * t),
            TONE_LEVEL * np.sin(2 * np.pi * TONE_HZ * t),
        ).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        return frame
