"""`viewer export`: a stream feed remuxed (no re-encode) into a plain faststart MP4 whose duration
matches the stream's; --from/--to; a partial archive exports its contiguous part and says so; bad
input is one line and a non-zero exit, with nothing written."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import av
import pytest

from tests.fixtures_viewer import EncodedStream, encode_test_stream, sparse_copy, write_feed
from viewer.cli import main
from viewer.export import export_feed_async

SECONDS = 12
FPS = 10


@pytest.fixture(scope="module")
def stream() -> EncodedStream:
    return encode_test_stream(SECONDS, fps=FPS)


@pytest.fixture
def archive(stream: EncodedStream, tmp_path: Path) -> Path:
    directory = tmp_path / "archive"
    write_feed(directory, [stream.header, *stream.segments, stream.end_marker()]).close()
    return directory


def top_level_boxes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if size == 1:
            size = struct.unpack_from(">Q", data, at + 8)[0]
        boxes.append(kind)
        at += size
    return boxes


def probe(path: Path) -> tuple[float, int, float]:
    """(container duration, decoded video frames, first video frame time)."""
    with av.open(str(path)) as container:
        duration = container.duration / 1e6
        times = [frame.time for frame in container.decode(video=0)]
    return duration, len(times), times[0]


def test_a_full_stream_exports_to_a_faststart_mp4_of_the_same_duration(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.mp4"
    assert main(["export", str(archive), str(out)]) == 0
    duration, frames, first = probe(out)
    assert duration == pytest.approx(SECONDS, rel=0.01)
    assert frames == SECONDS * FPS
    assert first == pytest.approx(0.0, abs=0.05)
    boxes = top_level_boxes(out)
    assert boxes.index(b"moov") < boxes.index(b"mdat")
    assert b"moof" not in boxes  # a plain MP4, not fragments
    captured = capsys.readouterr()
    assert "blocks 1..12" in captured.out and captured.err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "out.mp4"]


def test_from_and_to_cut_on_the_blocks_around_them(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut.mp4"
    assert main(["export", str(archive), str(out), "--from", "3.5", "--to", "7.2"]) == 0
    duration, frames, first = probe(out)
    assert duration == pytest.approx(5.0, rel=0.01)  # blocks covering [3, 8)
    assert frames == 5 * FPS
    assert first == pytest.approx(0.0, abs=0.05)  # a mid-stream run starts at zero


def test_a_partial_archive_exports_its_contiguous_part_and_says_so(
    stream: EncodedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = write_feed(tmp_path / "w", [stream.header, *stream.segments, stream.end_marker()])
    held = [i for i in range(writer.length) if i != 6]
    sparse_copy(writer, tmp_path / "partial", held).close()
    writer.close()
    out = tmp_path / "partial.mp4"
    assert main(["export", str(tmp_path / "partial"), str(out)]) == 0
    duration, frames, _ = probe(out)
    assert duration == pytest.approx(5.0, rel=0.01)
    assert frames == 5 * FPS
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "partial" in err[0] and "block 6 is missing" in err[0]


async def test_export_runs_off_the_event_loop(archive: Path, tmp_path: Path) -> None:
    result = await export_feed_async(archive, tmp_path / "a.mp4", start=10)
    assert (result.first_block, result.last_block) == (11, 12)
    assert result.duration == pytest.approx(2.0)


def _fails_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str], words: str) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("viewer: error:"), err
    assert words in err[0]


def test_an_empty_archive_is_one_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_feed(tmp_path / "empty", []).close()
    out = tmp_path / "out.mp4"
    _fails_with_one_line(["export", str(tmp_path / "empty"), str(out)], capsys, "no stream header")
    assert not out.exists()


def test_a_header_without_media_is_nothing_to_export(
    stream: EncodedStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_feed(tmp_path / "f", [stream.header]).close()
    _fails_with_one_line(
        ["export", str(tmp_path / "f"), str(tmp_path / "o.mp4")], capsys, "no media"
    )


def test_a_directory_without_a_feed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "nothing").mkdir()
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o.mp4")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("viewer: error:")


def test_a_feed_that_is_not_a_stream_leaves_an_existing_out_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_feed(tmp_path / "f", [b"just some bytes", b"more bytes"]).close()
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    _fails_with_one_line(
        ["export", str(tmp_path / "f"), str(out)], capsys, "not a swarmcast stream"
    )
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "o.mp4"]


@pytest.mark.parametrize("where", ["missing-dir/out.mp4", "."])
def test_an_unwritable_output_is_one_line(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    _fails_with_one_line(["export", str(archive), str(tmp_path / where)], capsys, "cannot write")


def test_a_range_past_the_end_is_one_line(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.mp4"
    _fails_with_one_line(["export", str(archive), str(out), "--from", "500"], capsys, "shorter")
    _fails_with_one_line(
        ["export", str(archive), str(out), "--from", "5", "--to", "2"], capsys, "--to"
    )
    assert not out.exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(archive: Path, tmp_path: Path) -> None:
    # A file-size limit makes writes fail with EFBIG the way a full disk fails them with ENOSPC.
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from viewer.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "big.mp4"
    done = subprocess.run(
        [sys.executable, "-c", code, "export", str(archive), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("viewer: error: cannot write"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]
