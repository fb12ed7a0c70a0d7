"""One feed directory on disk, crash-safe: `data`, `tree`, `bitfield` and a two-slot `head`.

`data` holds each block at its byte offset (holes for blocks a sparse reader lacks), `tree` node i
at 40*i as u64le size || 32-byte hash (all zero = absent), `bitfield` one bit per present block,
`head` the signed state in two CRC-checked 512-byte slots. A head is written only after the data
it describes is fsynced, and after the tree too unless it lists the blocks whose nodes are still
unflushed (`pending`, rebuilt from the data by feed.py); bitfield bits are written only after
their blocks are durable. A flush comes in three steps (begin_flush, sync, finish_flush) so its
fsyncs can run while the caller goes on writing. Never verifies hashes or signatures (feed.py does).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from streamer.core.bitfield import Bitfield
from streamer.core.compat import SLOTS
from streamer.core.errors import CorruptFeedError, FeedError, LocalStorageError, NotAFeedError
from streamer.core.wire import Node

HEAD_FILE = "head"
_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2


def _load_fallocate() -> Callable[..., int] | None:
    """Linux fallocate(2) from the C library, to punch holes; None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    func = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        func.restype = ctypes.c_int
    return func


_FALLOCATE = _load_fallocate()
# PyPy has no os.pwritev (compat.py): write_blocks then makes one joined pwrite.
_PWRITEV = getattr(os, "pwritev", None)

DATA_FILE = "data"
TREE_FILE = "tree"
BITFIELD_FILE = "bitfield"

NODE_BYTES = 40
SLOT_BYTES = 512  # one sector: a torn write damages at most the slot being written
HEAD_MAGIC = b"SWFH"
HEAD_VERSION = 1

_NODE = struct.Struct("<Q32s")
# magic, version, flags, signature length, seq, fork, length, byte_length, contiguous,
# tree_flushed, key, tree hash, signature (64 bytes raw, 68 as a default-manifest multiSignature),
# manifest signer, pending count, pending sizes (u64le each)
MAX_SIGNATURE = 96
MAX_PENDING = 24
_SLOT = struct.Struct(f"<4sBBHQQQQQQ32s32s{MAX_SIGNATURE}s32sB{8 * MAX_PENDING}s")
_U64 = struct.Struct("<Q")
_FLAG_SIGNER = 1  # a v11 default-manifest core: key = manifest hash of `signer`'s manifest
_CRC = struct.Struct("<I")
_ZERO_NODE = bytes(NODE_BYTES)
_NODE_CACHE_LIMIT = 1 << 17
# Files a create may leave before its head exists (secret_key is feed.py's, written first).
_CREATE_LEFTOVERS = {"data", "tree", "bitfield", "head.tmp", "secret_key"}

# What to do about the disk errors a user can fix, by errno; others get their strerror.
_ADVICE = {
    errno.ENOSPC: "no space left on device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space (or raise the quota) and run again",
    errno.EFBIG: (
        "file too large: a file size limit was reached; raise it (ulimit -f) or use another "
        "directory, and run again"
    ),
    errno.EROFS: "the file system is read-only; use a writable directory",
    errno.EIO: "input/output error; check the disk, then run `streamer feed verify`",
}


def storage_error(directory: Path, exc: OSError, verb: str = "write to") -> LocalStorageError:
    """The one-line LocalStorageError for a disk error on a feed directory."""
    what = _ADVICE.get(exc.errno or 0) or f"{(exc.strerror or str(exc)).lower()}; check the disk"
    return LocalStorageError(f"cannot {verb} {directory}: {what}")


@dataclass(frozen=True, **SLOTS)
class Head:
    """The signed state of a feed as last committed."""

    key: bytes
    fork: int = 0
    length: int = 0
    byte_length: int = 0
    tree_hash: bytes = bytes(32)
    signature: bytes = b""  # empty while length == 0 (nothing signed yet)
    # Blocks 0..contiguous-1 were present and durable when this head was written; reopening
    # re-marks them even if the (unsynced) bitfield file lost their bits.
    contiguous: int = 0
    # None for a compat core (key = public key); the signer's public key for a default-manifest one.
    signer: bytes | None = None
    # Tree nodes of blocks 0..tree_flushed-1 were durable when this head was written. A writer
    # flushes the tree only every few appends: the sizes of the blocks after it (`pending`,
    # at most MAX_PENDING) let feed.py rebuild their nodes from the (always flushed) data.
    tree_flushed: int = 0
    pending: tuple[int, ...] = ()


@dataclass(**SLOTS)
class Flush:
    """The writes one flush makes durable, taken at once by Storage.begin_flush."""

    data: bool  # the data file has writes not yet fsynced
    tree: bool  # the tree file has writes not yet fsynced (and this flush covers them)
    background: Future[None] | None  # an append's data fsync still running (begin_data_flush)
    # (byte offset, bytes) of the bitfield as it stood: only bits of blocks already written.
    bits: tuple[int, bytes] | None = None


def encode_head(head: Head, seq: int) -> bytes:
    if len(head.pending) > MAX_PENDING or head.tree_flushed + len(head.pending) != head.length:
        raise ValueError("a head's pending sizes must cover tree_flushed..length")
    if len(head.signature) > MAX_SIGNATURE:
        raise ValueError("signature too long for a head record")
    flags = _FLAG_SIGNER if head.signer is not None else 0
    pending = b"".join(_U64.pack(size) for size in head.pending)
    body = _SLOT.pack(
        HEAD_MAGIC, HEAD_VERSION, flags, len(head.signature), seq, head.fork, head.length,
        head.byte_length, head.contiguous, head.tree_flushed, head.key, head.tree_hash,
        head.signature, head.signer or bytes(32), len(head.pending), pending,
    )  # fmt: skip
    record = body + _CRC.pack(zlib.crc32(body))
    return record + bytes(SLOT_BYTES - len(record))


def decode_head(slot: bytes) -> tuple[Head, int] | None:
    """(head, seq) of a slot, or None when it is empty, torn or not ours."""
    size = _SLOT.size
    if len(slot) < size + _CRC.size:
        return None
    body = slot[:size]
    (crc,) = _CRC.unpack_from(slot, size)
    if zlib.crc32(body) != crc:
        return None
    (magic, version, flags, sig_len, seq, fork, length, byte_length, contiguous, tree_flushed,
     key, tree_hash, sig, signer, pending_count, pending_raw) = _SLOT.unpack(body)  # fmt: skip
    if magic != HEAD_MAGIC or version != HEAD_VERSION or contiguous > length:
        return None
    if sig_len > MAX_SIGNATURE or pending_count > MAX_PENDING:
        return None
    if tree_flushed + pending_count != length:
        return None
    pending = tuple(size for (size,) in _U64.iter_unpack(pending_raw[: 8 * pending_count]))
    head = Head(
        key, fork, length, byte_length, tree_hash, sig[:sig_len], contiguous,
        signer if flags & _FLAG_SIGNER else None, tree_flushed, pending,
    )  # fmt: skip
    return head, seq


def is_feed(directory: str | os.PathLike[str]) -> bool:
    """True if directory holds a committed feed (its head file exists)."""
    return (Path(directory) / HEAD_FILE).is_file()


class Storage:
    """Open file handles of one feed directory, with the head and bitfield loaded in memory."""

    def __init__(self, directory: Path, fds: dict[str, int], head: Head, seq: int, bits: Bitfield):
        self.directory = directory
        self._fds = fds
        self._head = head
        self._seq = seq
        self.bitfield = bits
        self._nodes: dict[int, Node | None] = {}
        # Set by forget_nodes_from: nodes from this index on are hidden until the first write cuts them.
        self._stale_from: int | None = None
        self._data_dirty = False
        self._tree_dirty = False
        self._head_dirty = False  # head or bitfield written since their last fsync
        # Bitfield bytes lo..hi that a failed flush did not write: the next flush writes them.
        self._bits_retry: tuple[int, int] | None = None
        self._locked = False
        self.read_only = False  # opened without write access: every write raises FeedError
        # One helper thread fsyncs the data file while the caller hashes and signs (both release
        # the GIL), so an append costs about max(flush, CPU) instead of their sum.
        self._flusher: ThreadPoolExecutor | None = None
        self._data_flush: Future[None] | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    def create(cls, directory: str | os.PathLike[str], head: Head) -> Storage:
        """Make a new feed directory holding head; FeedError if one already exists there."""
        path = Path(directory)
        if is_feed(path):
            raise FeedError(f"{path} already holds a feed")
        if path.is_dir():
            # Only what a crashed create leaves behind may be there: never clobber other files.
            strangers = sorted(p.name for p in path.iterdir() if p.name not in _CREATE_LEFTOVERS)
            if strangers:
                raise FeedError(
                    f"{path} is not empty (it holds {strangers[0]}) and has no feed; "
                    "choose a new or empty directory"
                )
        try:
            path.mkdir(parents=True, exist_ok=True)
            # Files left by a create that crashed before its head was written belong to no feed.
            for name in (DATA_FILE, TREE_FILE, BITFIELD_FILE):
                with open(path / name, "wb") as fh:
                    os.fsync(fh.fileno())
            tmp = path / (HEAD_FILE + ".tmp")
            with open(tmp, "wb") as fh:
                # seq 1 lives in slot 1 (seq % 2), so the next head (seq 2, slot 0) never
                # overwrites the only valid copy.
                fh.write(bytes(SLOT_BYTES) + encode_head(head, 1))
                fh.flush()
                os.fsync(fh.fileno())
            # The rename is the moment the directory becomes a feed.
            os.replace(tmp, path / HEAD_FILE)
            _fsync_dir(path)
        except OSError as exc:
            raise storage_error(path, exc, "create a feed in") from None
        return cls.open(path)

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Storage:
        """Open an existing feed directory; NotAFeedError or CorruptFeedError when unusable."""
        path = Path(directory)
        if not path.exists():
            raise NotAFeedError(f"no feed at {path}: the directory does not exist")
        if not path.is_dir():
            raise NotAFeedError(f"no feed at {path}: it is a file, not a feed directory")
        if not is_feed(path):
            raise NotAFeedError(f"no feed in {path}: the directory has no {HEAD_FILE} file")
        read_only = False
        try:
            fds = _open_files(path, os.O_RDWR)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise FeedError(f"cannot open the feed in {path}: {exc.strerror}") from None
            # A copy on read-only media (or owned by someone else) can still be read and verified.
            read_only = True
            try:
                fds = _open_files(path, os.O_RDONLY)
            except OSError as again:
                raise FeedError(f"cannot open the feed in {path}: {again.strerror}") from None
        try:
            head, seq = _read_head(fds[HEAD_FILE], path)
            bits = Bitfield(_read_all(fds[BITFIELD_FILE]))
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        # Bits at or past the signed length describe blocks whose head never landed (a crash
        # between the data flush and the head write): they are not verified, so they do not count.
        # The cleared bits reach the file at the next commit.
        bits.truncate(head.length)
        bits.set_range(0, head.contiguous)
        store = cls(path, fds, head, seq, bits)
        store.read_only = read_only
        return store

    # ------------------------------------------------------------ state

    @property
    def head(self) -> Head:
        return self._head

    def data_size(self) -> int:
        return os.fstat(self._fds[DATA_FILE]).st_size

    # ------------------------------------------------------------ tree

    def get_node(self, index: int) -> Node | None:
        """The stored node at a flat-tree index, or None if absent (never written, zeroed, or
        hidden by forget_nodes_from)."""
        if self._stale_from is not None and index >= self._stale_from:
            return None
        try:
            return self._nodes[index]
        except KeyError:
            pass
        try:
            raw = os.pread(self._fds[TREE_FILE], NODE_BYTES, NODE_BYTES * index)
        except OSError as exc:
            raise storage_error(self.directory, exc, "read") from None
        node = None
        if len(raw) == NODE_BYTES and raw != _ZERO_NODE:
            size, digest = _NODE.unpack(raw)
            node = Node(index, size, digest)
        if len(self._nodes) >= _NODE_CACHE_LIMIT:
            self._nodes.clear()
        self._nodes[index] = node
        return node

    def forget_nodes_from(self, index: int) -> None:
        """Treat the nodes at index and beyond as absent, and cut them from the tree file at the
        first write (before anything is written: a read-only open leaves the file alone).

        feed.py calls it on open with 2 * the signed length: nodes past it were left by a crash
        after verifying a longer length that was never flushed. They hash right, but no node
        links them to the roots a later upgrade brings (that proof may skip them), so a proof
        that stopped at one would store blocks whose path to a root is not on disk.
        """
        if self._locked:
            raise ValueError("forget_nodes_from must come before the first write")
        self._nodes = {i: n for i, n in self._nodes.items() if i < index}
        self._stale_from = index

    def put_nodes(self, nodes: list[Node]) -> None:
        """Write nodes (durable at the next commit)."""
        self._lock_for_writing()
        fd = self._fds[TREE_FILE]
        self._tree_dirty = True
        node = None
        try:
            for node in nodes:
                raw, where = _NODE.pack(node.size, node.hash), NODE_BYTES * node.index
                if os.pwrite(fd, raw, where) != NODE_BYTES:
                    _pwrite_all(fd, raw, where)  # again: the disk's own error surfaces
                self._nodes[node.index] = node
        except OSError as exc:
            assert node is not None
            self._unwrite_node(node.index)
            raise storage_error(self.directory, exc) from None

    def _unwrite_node(self, index: int) -> None:
        """A node write failed part way: a torn node must not read back as present (it would
        make valid proofs look wrong), so zero its slot if the disk still lets us."""
        self._nodes.pop(index, None)
        fd = self._fds[TREE_FILE]
        where = NODE_BYTES * index
        with contextlib.suppress(OSError):
            size = os.fstat(fd).st_size
            if where < size <= where + NODE_BYTES:
                os.ftruncate(fd, where)
            elif size > where:
                os.pwrite(fd, _ZERO_NODE, where)

    # ------------------------------------------------------------ data

    def read(self, offset: int, size: int) -> bytes:
        """size bytes at offset of the data file; CorruptFeedError if the file is shorter."""
        try:
            raw = os.pread(self._fds[DATA_FILE], size, offset)
        except OSError as exc:
            raise storage_error(self.directory, exc, "read") from None
        if len(raw) != size:
            raise CorruptFeedError(
                f"{self.directory} is damaged: the data file ends before byte {offset + size}"
            )
        return raw

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write bytes at offset of the data file (durable at the next commit)."""
        self.write_blocks(offset, [data])

    def punch(self, offset: int, size: int) -> None:
        """Give the bytes of a dropped block back to the file system (a hole; the file keeps its
        size). Best effort: where holes are not supported the bytes stay, unreachable."""
        self._lock_for_writing()
        if _FALLOCATE is None or size <= 0:
            return
        mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
        if _FALLOCATE(self._fds[DATA_FILE], mode, offset, size) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise storage_error(self.directory, OSError(err, os.strerror(err))) from None

    def write_blocks(self, offset: int, blocks: list[bytes] | list[bytes | memoryview]) -> None:
        """Write consecutive blocks starting at offset, with one system call when possible."""
        self._lock_for_writing()
        fd = self._fds[DATA_FILE]
        self._data_dirty = True
        try:
            if _PWRITEV is None:
                _pwrite_all(fd, b"".join(blocks), offset)
                return
            # pwritev takes at most IOV_MAX (1024) buffers and may write less than asked.
            if len(blocks) > 1024:
                blocks = [b"".join(blocks)]
            total = sum(len(b) for b in blocks)
            written = _PWRITEV(fd, blocks, offset)
            if written < total:
                # The rest either goes in or raises the disk's real error (ENOSPC, EFBIG, ...).
                _pwrite_all(fd, memoryview(b"".join(blocks))[written:], offset + written)
        except OSError as exc:
            # Bytes written before the failure belong to no block: no bit claims them.
            raise storage_error(self.directory, exc) from None

    def _lock_for_writing(self) -> None:
        """Take the directory's write lock at the first write (readers such as `feed info` never
        do): two processes writing one feed would interleave heads. The OS drops it on exit."""
        if self._locked:
            return
        if self.read_only:
            raise FeedError(
                f"{self.directory} is read-only for this user; copy it somewhere writable"
            )
        try:
            fcntl.flock(self._fds[HEAD_FILE], fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FeedError(
                f"{self.directory} is being written by another process; stop it or use another directory"
            ) from None
        # Someone may have committed between our open and this lock: writing on top of a stale
        # head would sign a second, conflicting tree with the same key.
        if _read_head(self._fds[HEAD_FILE], self.directory) != (self._head, self._seq):
            fcntl.flock(self._fds[HEAD_FILE], fcntl.LOCK_UN)
            raise FeedError(f"{self.directory} changed on disk since it was opened; open it again")
        self._drop_stale_nodes()
        self._locked = True

    def _drop_stale_nodes(self) -> None:
        """Cut the nodes forget_nodes_from hid, so that every node past that point was
        written by this handle (stored with its path to a root), and stop hiding."""
        keep = self._stale_from
        if keep is None:
            return
        fd = self._fds[TREE_FILE]
        try:
            # Not fsynced: should the cut be lost, the next open hides and cuts them again.
            if os.fstat(fd).st_size > NODE_BYTES * keep:
                os.ftruncate(fd, NODE_BYTES * keep)
        except OSError as exc:
            fcntl.flock(self._fds[HEAD_FILE], fcntl.LOCK_UN)
            raise storage_error(self.directory, exc) from None
        self._stale_from = None

    # ------------------------------------------------------------ commit

    def commit(self, head: Head | None = None, *, flush_tree: bool = True) -> None:
        """Make written data (and nodes, if flush_tree) durable, then record head, then the bitfield.

        The order is the crash-safety argument: a head or a bitfield bit reaches the disk only
        after everything it vouches for already has (with flush_tree=False the head must list
        the unflushed blocks in `pending`). The head itself is not fsynced here (close() does
        it): a power cut may then fall back to the previous head, which is as consistent, and a
        killed process loses nothing since the page cache outlives it.
        """
        flush = self.begin_flush(tree=flush_tree)
        try:
            self.sync(flush)
            self.finish_flush(flush, head, durable=False)
        except BaseException:
            self.abort_flush(flush)
            raise

    def begin_flush(self, *, tree: bool = True) -> Flush:
        """Take every write made so far as the work of one flush; later writes belong to the next.

        Call it where no write is half done (feed.py holds its lock), then sync(), then
        finish_flush(), or abort_flush() if either fails. One flush at a time (feed.py's
        flush lock): two could record their heads out of order.
        """
        self._lock_for_writing()
        flush = Flush(self._data_dirty, self._tree_dirty and tree, self._data_flush)
        self._data_dirty = False
        self._data_flush = None
        if tree:
            self._tree_dirty = False
        dirty = self.bitfield.take_dirty()
        retry, self._bits_retry = self._bits_retry, None
        if retry is None:
            flush.bits = dirty
        else:
            lo, hi = retry
            if dirty is not None:
                lo, hi = min(lo, dirty[0]), max(hi, dirty[0] + len(dirty[1]))
            flush.bits = (lo, self.bitfield.to_bytes()[lo:hi])
        return flush

    def sync(self, flush: Flush) -> None:
        """fsync the data and tree writes `flush` took. It touches no shared state, so the caller
        may go on writing meanwhile (a pwrite and an fsync of one file may run at once)."""
        try:
            if flush.background is not None:
                flush.background.result()
            if flush.data:
                os.fdatasync(self._fds[DATA_FILE])
            if flush.tree:
                os.fdatasync(self._fds[TREE_FILE])
        except OSError as exc:
            raise storage_error(self.directory, exc) from None

    def finish_flush(self, flush: Flush, head: Head | None, *, durable: bool) -> None:
        """After sync(flush): record head (it must vouch for nothing newer than what was synced),
        then the bitfield bytes `flush` took; with durable, fsync both before returning."""
        try:
            if head is not None and head != self._head:
                seq = self._seq + 1
                # Alternate slots: the previous head stays intact while this one is written.
                os.pwrite(self._fds[HEAD_FILE], encode_head(head, seq), SLOT_BYTES * (seq % 2))
                self._head, self._seq = head, seq
                self._head_dirty = True
            if flush.bits is not None:
                os.pwrite(self._fds[BITFIELD_FILE], flush.bits[1], flush.bits[0])
                self._head_dirty = True
            if durable and self._head_dirty:
                os.fdatasync(self._fds[BITFIELD_FILE])
                os.fdatasync(self._fds[HEAD_FILE])
                self._head_dirty = False
        except OSError as exc:
            raise storage_error(self.directory, exc) from None

    def abort_flush(self, flush: Flush) -> None:
        """sync() or finish_flush() failed: what `flush` took counts as unflushed again."""
        self._data_dirty = self._data_dirty or flush.data or flush.background is not None
        self._tree_dirty = self._tree_dirty or flush.tree
        if flush.bits is not None:
            lo, hi = flush.bits[0], flush.bits[0] + len(flush.bits[1])
            if self._bits_retry is not None:
                lo, hi = min(lo, self._bits_retry[0]), max(hi, self._bits_retry[1])
            self._bits_retry = (lo, hi)

    def begin_data_flush(self) -> None:
        """Start making the data written so far durable in the background; the next flush waits."""
        if not self._data_dirty or self._data_flush is not None:
            return
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(1, thread_name_prefix="feed-flush")
        self._data_dirty = False
        self._data_flush = self._flusher.submit(os.fdatasync, self._fds[DATA_FILE])

    def close(self) -> None:
        background, self._data_flush = self._data_flush, None
        if background is not None:
            with contextlib.suppress(OSError):
                background.result()
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None
        if self._head_dirty and self._fds:
            # What commit() left unsynced: make the last head and its bitfield durable on a clean close.
            with contextlib.suppress(OSError):
                os.fdatasync(self._fds[BITFIELD_FILE])
                os.fdatasync(self._fds[HEAD_FILE])
            self._head_dirty = False
        self._locked = False
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def closed(self) -> bool:
        return not self._fds

    @property
    def locked(self) -> bool:
        """True once this handle has written (and holds the directory's write lock)."""
        return self._locked


def _open_files(path: Path, flags: int) -> dict[str, int]:
    """File descriptors of the four feed files; CorruptFeedError if one is missing."""
    fds: dict[str, int] = {}
    try:
        for name in (HEAD_FILE, DATA_FILE, TREE_FILE, BITFIELD_FILE):
            try:
                fds[name] = os.open(path / name, flags)
            except FileNotFoundError:
                raise CorruptFeedError(f"{path} is damaged: the {name} file is missing") from None
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _read_head(fd: int, path: Path) -> tuple[Head, int]:
    raw = os.pread(fd, 2 * SLOT_BYTES, 0)
    slots = [decode_head(raw[i * SLOT_BYTES : (i + 1) * SLOT_BYTES]) for i in (0, 1)]
    valid = [s for s in slots if s is not None]
    if not valid:
        raise CorruptFeedError(f"{path} is damaged: both copies of its head record are unreadable")
    return max(valid, key=lambda s: s[1])


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite all of data at offset; a short write is retried so the disk's own error surfaces."""
    rest = memoryview(data)
    while rest:
        step = os.pwrite(fd, rest, offset)
        if step == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        rest = rest[step:]
        offset += step


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
