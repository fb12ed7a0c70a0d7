"""`streamer keygen` and `streamer feed info|verify|append`: output, files and one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.core.feed import Feed

SEED = "01" * 32
PUBLIC_KEY = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"  # vectors.json keys
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real `python -m streamer` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("streamer: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_keygen_append_info_verify_end_to_end_in_subprocesses(tmp_path: Path) -> None:
    keygen = run_cli("keygen", "--seed", SEED, "--out", "me.key", cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    assert keygen.stdout.strip() == PUBLIC_KEY
    assert stat.S_IMODE((tmp_path / "me.key").stat().st_mode) == 0o600
    assert PUBLIC_KEY not in (tmp_path / "me.key").read_text()[:64]  # the seed comes first

    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    append = run_cli("feed", "append", "feed", "--key", "me.key", "a", "b", cwd=tmp_path)
    assert append.returncode == 0, append.stderr
    info = run_cli("feed", "info", "feed", "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    fields = json.loads(info.stdout)
    assert fields["key"] == PUBLIC_KEY
    assert (
        fields["discovery_key"]
        == "c1feb82a2b3ba065ffed9f6addcf19ac250793bcab748986a1b4272c62da20e6"
    )
    assert fields["length"] == 2 and fields["byte_length"] == 2 and fields["fork"] == 0
    # Same signature as npm hypercore for blocks 'a', 'b' (vectors.json, compat length 2).
    assert fields["signature"].startswith("85441bcb4602f2a4")
    assert fields["writable"] is False and fields["blocks_present"] == 2

    verify = run_cli("feed", "verify", "feed", cwd=tmp_path)
    assert verify.returncode == 0 and "verified" in verify.stdout


def test_a_bad_key_file_fails_in_one_line_without_traceback_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not hex at all\n")
    (tmp_path / "a").write_bytes(b"a")
    result = run_cli("feed", "append", "feed", "--key", "bad.key", "a", cwd=tmp_path)
    assert result.returncode == 1
    one_line_error(result.stderr, "bad.key", "not a key file")
    assert not (tmp_path / "feed").exists()


def test_verify_names_the_first_bad_block_in_a_subprocess(tmp_path: Path) -> None:
    assert main(["keygen", "--seed", SEED, "--out", str(tmp_path / "k")]) == 0
    blocks = []
    for name in "abcd":
        (tmp_path / name).write_bytes(name.encode() * 100)
        blocks.append(str(tmp_path / name))
    assert (
        main(["feed", "append", str(tmp_path / "feed"), "--key", str(tmp_path / "k"), *blocks]) == 0
    )
    data = bytearray((tmp_path / "feed" / "data").read_bytes())
    data[250] ^= 0xFF  # inside block 2
    (tmp_path / "feed" / "data").write_bytes(bytes(data))
    result = run_cli("feed", "verify", "feed", cwd=tmp_path)
    assert result.returncode == 1
    one_line_error(result.stderr, "block 2 is bad")


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert call(capsys, "keygen", "--out", str(key))[0] == 0
    before = key.read_bytes()
    code, out, err = call(capsys, "keygen", "--seed", SEED, "--out", str(key))
    assert code == 1 and out == ""
    one_line_error(err, "already exists")
    assert key.read_bytes() == before


@pytest.mark.parametrize(
    ("seed", "words"),
    [("zz", "must be hex"), ("01" * 31, "32 bytes")],
)
def test_keygen_rejects_bad_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str, words: str
) -> None:
    code, _, err = call(capsys, "keygen", "--seed", seed, "--out", str(tmp_path / "k"))
    assert code == 1
    one_line_error(err, words)
    assert not (tmp_path / "k").exists()


def test_keygen_into_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = call(capsys, "keygen", "--out", str(tmp_path / "no" / "k"))
    assert code == 1
    one_line_error(err, "does not exist")


def test_append_creates_then_extends_the_feed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call(capsys, "keygen", "--seed", SEED, "--out", str(tmp_path / "k"))
    (tmp_path / "x").write_bytes(b"x" * 1000)
    feed = str(tmp_path / "feed")
    code, out, _ = call(
        capsys, "feed", "append", feed, "--key", str(tmp_path / "k"), str(tmp_path / "x")
    )
    assert code == 0 and "length 1" in out
    code, out, _ = call(
        capsys,
        "feed",
        "append",
        feed,
        "--key",
        str(tmp_path / "k"),
        str(tmp_path / "x"),
        str(tmp_path / "x"),
    )
    assert code == 0 and "length 3" in out
    code, out, _ = call(capsys, "feed", "info", feed)
    assert code == 0
    assert "length             3" in out and "byte_length        3000" in out


def test_append_with_another_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call(capsys, "keygen", "--seed", SEED, "--out", str(tmp_path / "k1"))
    call(capsys, "keygen", "--out", str(tmp_path / "k2"))
    (tmp_path / "x").write_bytes(b"x")
    feed = tmp_path / "feed"
    call(capsys, "feed", "append", str(feed), "--key", str(tmp_path / "k1"), str(tmp_path / "x"))
    before = {p.name: p.read_bytes() for p in feed.iterdir()}
    code, _, err = call(
        capsys, "feed", "append", str(feed), "--key", str(tmp_path / "k2"), str(tmp_path / "x")
    )
    assert code == 1
    one_line_error(err, "does not belong")
    assert {p.name: p.read_bytes() for p in feed.iterdir()} == before


def test_append_of_a_missing_input_file_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call(capsys, "keygen", "--out", str(tmp_path / "k"))
    (tmp_path / "x").write_bytes(b"x")
    code, _, err = call(
        capsys, "feed", "append", str(tmp_path / "feed"), "--key", str(tmp_path / "k"),
        str(tmp_path / "x"), str(tmp_path / "missing"),
    )  # fmt: skip
    assert code == 1
    one_line_error(err, "missing", "does not exist")
    assert not (tmp_path / "feed").exists()


def test_a_missing_key_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").write_bytes(b"x")
    code, _, err = call(
        capsys,
        "feed",
        "append",
        str(tmp_path / "f"),
        "--key",
        str(tmp_path / "nokey"),
        str(tmp_path / "x"),
    )
    assert code == 1
    one_line_error(err, "nokey", "does not exist")


@pytest.mark.parametrize("action", ["info", "verify"])
def test_info_and_verify_of_something_that_is_not_a_feed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, _, err = call(capsys, "feed", action, str(tmp_path / "nothing"))
    assert code == 1
    one_line_error(err, "no feed", "does not exist")
    (tmp_path / "plain").mkdir()
    code, _, err = call(capsys, "feed", action, str(tmp_path / "plain"))
    assert code == 1
    one_line_error(err, "no feed", "head")


def test_info_of_a_damaged_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        feed.append([b"a"])
    (tmp_path / "feed" / "head").write_bytes(b"garbage")
    code, _, err = call(capsys, "feed", "info", str(tmp_path / "feed"))
    assert code == 1
    one_line_error(err, "damaged", "head record")


def test_info_of_a_writable_feed_with_its_stored_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        key = feed.key
    code, out, _ = call(capsys, "feed", "info", "--json", str(tmp_path / "feed"))
    info = json.loads(out)
    assert code == 0 and info["writable"] is True and info["key"] == key.hex()
    assert info["length"] == 0 and info["signature"] is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("01" * 64 + "\n", "damaged"),  # the public half does not belong to the seed
        ("abcd\n", "expected 128 hex characters"),
        (None, "is a directory"),
    ],
)
def test_unusable_key_files_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, words: str
) -> None:
    key = tmp_path / "k"
    if content is None:
        key.mkdir()
    else:
        key.write_text(content)
    (tmp_path / "x").write_bytes(b"x")
    code, _, err = call(
        capsys, "feed", "append", str(tmp_path / "f"), "--key", str(key), str(tmp_path / "x")
    )
    assert code == 1
    one_line_error(err, words)
    assert not (tmp_path / "f").exists()
