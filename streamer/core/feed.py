"""Feed: one signed append-only log on disk (a Hypercore in compat mode), for writers and readers.

Joins merkle.MerkleTree (hashes, proofs, signatures) and storage.Storage (crash-safe files):
append, get, has, proof for a peer's request, verify-and-apply a peer's proof, full re-verify.
It never stores, announces or serves anything that has not verified against a signed root, and a
rejected proof leaves the files untouched. Sans-IO apart from its own directory: no sockets, no asyncio.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from streamer.core import crypto, keyfile, storage
from streamer.core.bitfield import Bitfield
from streamer.core.compat import SLOTS
from streamer.core.errors import (
    BlockNotFoundError,
    CorruptFeedError,
    FeedError,
    ForkMismatchError,
    KeyMismatchError,
    NotWritableError,
)
from streamer.core.flat_tree import full_roots, parent, sibling
from streamer.core.merkle import (
    CompatVerifier,
    DefaultManifestVerifier,
    MerkleTree,
    ProofBatch,
    Verifier,
    order_for_storing,
)
from streamer.core.storage import MAX_PENDING, Flush, Head, Storage
from streamer.core.wire import Data, Node, Request

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "secret_key"


@dataclass(frozen=True, **SLOTS)
class ApplyResult:
    """What verify_and_apply stored: whether the signed length grew, the length, the new block."""

    upgraded: bool
    length: int
    block: int | None


@dataclass(frozen=True, **SLOTS)
class FeedEvent:
    """Passed to listeners after each append (once durable) and each applied proof (once stored
    and servable; it becomes durable at the next Feed.flush).

    Blocks start..end-1 became present (start == end when none did); `upgraded` means the signed
    length grew to `length`; `local` is True for our own append, False for a peer's verified data.
    """

    length: int
    start: int
    end: int
    upgraded: bool
    local: bool


Listener = Callable[[FeedEvent], None]


class _SignedNodes:
    """Node reader that hides nodes past the signed length: they were written for a head that never
    landed (a crash between the tree flush and the head write) and are not covered by a signature."""

    __slots__ = ("store", "limit")

    def __init__(self, store: Storage, length: int) -> None:
        self.store = store
        self.limit = 2 * length

    def get_node(self, index: int) -> Node | None:
        # right_span(index) >= limit, inline (hot: every proof step reads nodes through here).
        if index + ((index + 1) & ~index) - 1 >= self.limit:
            return None
        return self.store.get_node(index)


class Feed:
    """A feed directory opened for reading (key only) or writing (with the secret key).

    Methods are thread-safe (one lock); listeners run on the thread that made the change.
    verify_and_apply never waits for the disk (a reader calls flush() from a worker thread),
    and flush() holds the lock only around its bookkeeping, never across an fsync.
    """

    def __init__(self, store: Storage, secret_key: bytes | None) -> None:
        head = store.head
        self._store = store
        self._lock = threading.RLock()
        # One flush (or append commit) at a time, so heads reach the disk in order. Taken before
        # self._lock, never while holding it.
        self._flush_lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._verifier: Verifier
        if head.signer is None:
            self._signer = head.key
            self._verifier = CompatVerifier(head.key)
        else:
            self._signer = head.signer
            manifest = DefaultManifestVerifier(head.signer)
            if manifest.key != head.key:
                raise CorruptFeedError(
                    f"{store.directory} is damaged: its key does not match its signer"
                )
            self._verifier = manifest
        if secret_key is not None and secret_key[32:] != self._signer:
            raise KeyMismatchError(
                f"the secret key (public key {secret_key[32:].hex()}) does not belong to the feed in "
                f"{store.directory} (key {head.key.hex()})"
            )
        self._secret_key = secret_key
        self._unflushed = 0  # applied proofs not yet made durable by flush()
        # The signed state a peer's proof upgraded us to, kept in memory until flush() has made
        # the data and tree it vouches for durable: the head on disk never runs ahead of them.
        self._pending_head: Head | None = None
        # A crash may have left nodes of a longer, never flushed, signed length: no proof may
        # stop at one of them (see Storage.forget_nodes_from).
        store.forget_nodes_from(2 * head.length)
        self._recover_pending()
        self._nodes = _SignedNodes(store, head.length)
        try:
            self._tree = MerkleTree(
                self._nodes,
                self._verifier,
                length=head.length,
                fork=head.fork,
                signature=head.signature if head.length else None,
            )
        except BlockNotFoundError:
            raise CorruptFeedError(
                f"{store.directory} is damaged: the tree file lacks the roots of its {head.length} "
                "blocks (truncated?); run `streamer feed verify` or fetch the feed again"
            ) from None
        self._check_head()

    # ------------------------------------------------------------ opening

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], key_pair: crypto.KeyPair | None = None
    ) -> Feed:
        """A new writable feed in directory (created if needed).

        Without key_pair a key pair is generated and its secret key kept in the directory (file
        `secret_key`, mode 0600). A directory that already holds a feed is reopened if the key
        matches; KeyMismatchError otherwise.
        """
        path = Path(directory)
        if storage.is_feed(path):
            return cls.open(path, secret_key=key_pair.secret_key if key_pair else None)
        if key_pair is None:
            key_pair = _stored_or_new_key_pair(path)
        elif (path / SECRET_KEY_FILE).exists():
            stored = keyfile.read_secret_key(path / SECRET_KEY_FILE)
            if stored != key_pair.secret_key:
                raise KeyMismatchError(
                    f"{path} holds a secret_key file for another key; remove it or use another directory"
                )
        store = Storage.create(path, Head(key=key_pair.public_key))
        return cls._wrap(store, key_pair.secret_key)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        secret_key: bytes | None = None,
        create: bool = False,
        manifest_signer: bytes | None = None,
    ) -> Feed:
        """Open the feed in directory; NotAFeedError if there is none, KeyMismatchError if key or
        secret_key do not belong to it. With create=True and a key, an empty sparse reader feed
        is created when none exists. Writable if a matching secret key is given or stored.

        manifest_signer (for interop with non-compat v11 cores only): the signer's public key of
        a default-manifest core, whose key is then the manifest hash.
        """
        path = Path(directory)
        if secret_key is not None and len(secret_key) != 64:
            raise KeyMismatchError("a secret key is 64 bytes; this one is not a secret key")
        if key is not None and len(key) != 32:
            raise KeyMismatchError(f"a feed key is 32 bytes, got {len(key)}")
        if create and not storage.is_feed(path):
            expected: bytes | None
            if manifest_signer is not None:
                expected = DefaultManifestVerifier(manifest_signer).key
            elif secret_key is not None:
                expected = secret_key[32:]
            else:
                expected = key
            if expected is None:
                raise ValueError("creating a feed needs its key or secret key")
            if key is not None and key != expected:
                raise KeyMismatchError("the key does not belong to the given secret key or signer")
            store = Storage.create(path, Head(key=expected, signer=manifest_signer))
        else:
            store = Storage.open(path)
        if key is not None and key != store.head.key:
            store.close()
            raise KeyMismatchError(f"{path} holds the feed {store.head.key.hex()}, not {key.hex()}")
        if manifest_signer is not None and manifest_signer != store.head.signer:
            store.close()
            raise KeyMismatchError(f"{path} holds a feed with another signer")
        if secret_key is None:
            stored = path / SECRET_KEY_FILE
            if stored.exists():
                try:
                    secret_key = keyfile.read_secret_key(stored)
                except BaseException:
                    store.close()
                    raise
        return cls._wrap(store, secret_key)

    @classmethod
    def _wrap(cls, store: Storage, secret_key: bytes | None) -> Feed:
        try:
            return cls(store, secret_key)
        except BaseException:
            store.close()
            raise

    def _recover_pending(self) -> None:
        """Rebuild the tree nodes of the blocks a writer appended after its last tree flush.

        Their data was flushed before the head that lists them, so re-hashing it restores any
        node a power cut lost; the result must reproduce the signed tree hash. Nodes are
        rewritten only if they differ (a killed writer's nodes are normally all there).
        """
        store = self._store
        head = store.head
        if not head.pending:
            return
        where = store.directory
        try:
            base = MerkleTree(
                _SignedNodes(store, head.tree_flushed),
                self._verifier,
                length=head.tree_flushed,
                fork=head.fork,
            )
        except BlockNotFoundError:
            raise CorruptFeedError(
                f"{where} is damaged: the tree file lacks the roots of its first "
                f"{head.tree_flushed} blocks (truncated?)"
            ) from None
        offset = base.byte_length
        blocks = []
        for size in head.pending:
            blocks.append(store.read(offset, size))
            offset += size
        batch = base.append(blocks)
        if batch.tree_hash != head.tree_hash:
            raise CorruptFeedError(
                f"{where} is damaged: blocks {head.tree_flushed}..{head.length - 1} in the data "
                "file do not match the signed tree"
            )
        stale = [n for n in batch.nodes if store.get_node(n.index) != n]
        if stale:
            store.put_nodes(stale)
            store.commit(replace(head, tree_flushed=head.length, pending=()))

    def _check_head(self) -> None:
        """The head must describe the stored roots and carry a valid signature (cheap: one verify)."""
        head, tree, where = self._store.head, self._tree, self._store.directory
        if tree.tree_hash() != head.tree_hash and head.length:
            raise CorruptFeedError(
                f"{where} is damaged: the tree roots do not match the head record; "
                "run `streamer feed verify` or fetch the feed again"
            )
        if tree.byte_length != head.byte_length:
            raise CorruptFeedError(
                f"{where} is damaged: the tree sizes do not match the head record"
            )
        if not tree.signature_valid():
            raise CorruptFeedError(f"{where} is damaged: the head signature does not verify")
        ranges = self._store.bitfield.ranges(limit=head.length)
        if ranges:
            last = ranges[-1][1] - 1
            offset, size = self._byte_range(last)
            end = offset + size
            if self._store.data_size() < end:
                raise CorruptFeedError(
                    f"{where} is damaged: the data file is truncated (block {last} ends at byte {end})"
                )

    # ------------------------------------------------------------ state

    @property
    def directory(self) -> Path:
        return self._store.directory

    @property
    def key(self) -> bytes:
        return self._store.head.key

    @property
    def discovery_key(self) -> bytes:
        return crypto.discovery_key(self.key)

    @property
    def writable(self) -> bool:
        return self._secret_key is not None

    @property
    def length(self) -> int:
        """The signed length: blocks 0..length-1 exist (a sparse reader may hold only some)."""
        return self._tree.length

    @property
    def byte_length(self) -> int:
        return self._tree.byte_length

    @property
    def fork(self) -> int:
        return self._tree.fork

    @property
    def signature(self) -> bytes | None:
        """The writer's signature of (tree hash, length, fork); None while the feed is empty."""
        return self._tree.signature

    def tree_hash(self) -> bytes:
        return self._tree.tree_hash()

    @property
    def contiguous_length(self) -> int:
        """n such that blocks 0..n-1 are all present locally."""
        return min(self._store.bitfield.contiguous_length, self._tree.length)

    @property
    def closed(self) -> bool:
        return self._store.closed

    @property
    def flush_due(self) -> bool:
        """True while verified data from peers (blocks, a newer signed length) is stored but not
        yet durable; flush() makes it so."""
        return self._unflushed > 0 or self._pending_head is not None

    @property
    def blocks_present(self) -> int:
        return self._store.bitfield.count

    @property
    def bitfield(self) -> Bitfield:
        """The blocks present locally (read it, never change it)."""
        return self._store.bitfield

    def has(self, index: int) -> bool:
        return 0 <= index < self._tree.length and self._store.bitfield.get(index)

    def present_ranges(self) -> list[tuple[int, int]]:
        """Runs of locally present blocks as (start, end) pairs, end exclusive."""
        with self._lock:
            return self._store.bitfield.ranges(limit=self._tree.length)

    def missing_nodes(self, index: int) -> int:
        """How many proof nodes above block index we lack (for Request.block.nodes)."""
        with self._lock:
            return self._tree.missing_nodes(index)

    # ------------------------------------------------------------ listeners

    def add_listener(self, callback: Listener) -> None:
        """Call callback(FeedEvent) after each committed append or applied proof."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._listeners.remove(callback)

    def _notify(self, event: FeedEvent) -> None:
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                # The change is already committed; a broken listener must not make it look failed.
                log.exception("feed listener %r failed", callback)

    # ------------------------------------------------------------ reading

    def get(self, index: int) -> bytes:
        """Block index; BlockNotFoundError if out of range or not present locally."""
        with self._lock:
            self._check_open()
            if not 0 <= index < self._tree.length:
                raise BlockNotFoundError(
                    f"block {index} is out of range: the feed has {self._tree.length} blocks"
                )
            if not self._store.bitfield.get(index):
                raise BlockNotFoundError(
                    f"block {index} is not stored here yet; fetch it from a peer"
                )
            offset, size = self._byte_range(index)
            return self._store.read(offset, size)

    def _byte_range(self, index: int, extra: dict[int, Node] | None = None) -> tuple[int, int]:
        """(byte offset, size) of block index from tree nodes (stored ones, or `extra` first)."""

        def node(i: int) -> Node:
            found = extra.get(i) if extra else None
            found = found or self._nodes.get_node(i)
            if found is None:
                raise CorruptFeedError(
                    f"{self._store.directory} is damaged: tree node {i} (needed to locate block "
                    f"{index}) is missing"
                )
            return found

        offset = sum(node(i).size for i in full_roots(2 * index))
        return offset, node(2 * index).size

    # ------------------------------------------------------------ writing

    def append(self, blocks: Sequence[bytes]) -> int:
        """Append blocks, sign the new length and flush once; returns the new length."""
        if isinstance(blocks, (bytes, bytearray, memoryview)):
            raise TypeError("append takes a sequence of blocks; wrap a single block in a list")
        values = [bytes(b) for b in blocks]
        with self._flush_lock, self._lock:
            self._check_open()
            if self._secret_key is None:
                raise NotWritableError(
                    f"the feed in {self._store.directory} was opened without its secret key; "
                    "open it with its secret key (--key FILE) to append"
                )
            if not values:
                return self._tree.length
            tree, store = self._tree, self._store
            start = tree.length
            # Data first, so its flush overlaps the hashing and signing below.
            store.write_blocks(tree.byte_length, values)
            store.begin_data_flush()
            batch = tree.append(values, self._secret_key)
            store.put_nodes(batch.nodes)
            bits = store.bitfield
            bits.set_range(start, batch.length)
            # The tree is flushed only every MAX_PENDING blocks; until then the head lists the
            # sizes of the newer blocks, whose nodes _recover_pending rebuilds from the data.
            # Blocks applied from peers and not yet flushed need their nodes durable before
            # the bitfield records them, so they force a tree flush too.
            pending = store.head.pending + tuple(len(v) for v in values)
            flush_tree = len(pending) > MAX_PENDING or self.flush_due
            head = Head(
                key=self.key,
                fork=batch.fork,
                length=batch.length,
                byte_length=batch.byte_length,
                tree_hash=batch.tree_hash,
                signature=batch.signature or b"",
                contiguous=min(bits.contiguous_length, batch.length),
                signer=store.head.signer,
                tree_flushed=batch.length if flush_tree else store.head.tree_flushed,
                pending=() if flush_tree else pending,
            )
            try:
                store.commit(head, flush_tree=flush_tree)
            except BaseException:
                bits.set_range(start, batch.length, False)
                raise
            self._unflushed = 0
            self._pending_head = None
            tree.commit(batch)
            self._nodes.limit = 2 * batch.length
        self._notify(FeedEvent(batch.length, start, batch.length, True, True))
        return batch.length

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of message with the writer's key (e.g. the replication handshake's
        writer proof), so callers never handle the secret key; NotWritableError on a reader."""
        if self._secret_key is None:
            raise NotWritableError(
                f"the feed in {self._store.directory} has no secret key to sign with"
            )
        return crypto.sign(message, self._secret_key)

    # ------------------------------------------------------------ proofs

    def proof(self, request: Request) -> Data:
        """The response to a peer's request; BlockNotFoundError when we cannot serve it."""
        with self._lock:
            self._check_open()
            if request.block is not None and not self.has(request.block.index):
                raise BlockNotFoundError(f"block {request.block.index} is not stored here")
            data = self._tree.proof(request)
            if data.block is not None:
                data.block.value = self.get(data.block.index)
            return data

    def verify(self, data: Data) -> None:
        """Check a peer's proof against our signed state without storing anything (ProofError)."""
        with self._lock:
            self._check_open()
            self._verify(data)

    def _verify(self, data: Data) -> ProofBatch:
        batch = self._tree.verify(data)
        if batch.reorg and (self._tree.length or self._store.bitfield.count):
            # Our writers never truncate; following another fork would mean dropping verified
            # data, which a viewer's archive must not do silently (hypercore also refuses here).
            # An empty reader has nothing to drop, so it may join a feed on any fork.
            raise ForkMismatchError(
                f"proof is for fork {data.fork} but the feed is at fork {self._tree.fork}"
            )
        return batch

    def verify_and_apply(self, data: Data) -> ApplyResult:
        """Verify a peer's proof and store what it proves (block, nodes, newer signed length).

        ProofError (and nothing stored) when it does not verify. It never fsyncs: what it stores
        is served at once and made durable by the next flush(); a crash before that merely
        forgets it (the blocks are fetched again).
        """
        with self._lock:
            self._check_open()
            tree, store = self._tree, self._store
            batch = self._verify(data)
            block = batch.block
            new_block = block is not None and not store.bitfield.get(block)
            # Only what we lack is written: a duplicate proof (two peers answered) costs no I/O.
            # Top down, in sibling pairs, so that a write cut short leaves no node a later proof
            # could stop at without its path to a root being stored.
            fresh = order_for_storing(n for n in batch.nodes if store.get_node(n.index) != n)
            if not (new_block or fresh or batch.upgraded):
                return ApplyResult(False, tree.length, None)
            if new_block:
                assert block is not None and batch.value is not None
                extra = {n.index: n for n in batch.nodes}
                offset, _ = self._byte_range(block, extra)
                store.write(offset, batch.value)
            store.put_nodes(fresh)
            if new_block:
                assert block is not None
                # The in-memory bit only: storage writes it to the bitfield file after the flush
                # that makes this block durable.
                store.bitfield.set(block)
            if batch.upgraded:
                self._pending_head = Head(
                    key=store.head.key,
                    fork=batch.fork,
                    length=batch.length,
                    byte_length=batch.byte_length,
                    tree_hash=crypto.tree_hash(batch.roots),
                    signature=batch.signature or b"",
                    signer=store.head.signer,
                )
                tree.commit(batch)
                self._nodes.limit = 2 * batch.length
            self._unflushed += 1
            length = tree.length
            result = ApplyResult(batch.upgraded, length, block if new_block else None)
        if new_block or batch.upgraded:
            start = block if new_block and block is not None else 0
            self._notify(
                FeedEvent(length, start, start + 1 if new_block else start, batch.upgraded, False)
            )
        return result

    # ------------------------------------------------------------ a bounded store

    def block_size(self, index: int) -> int:
        """Bytes of block index (held or not, within the signed length)."""
        with self._lock:
            return self._byte_range(index)[1]

    def held_bytes(self) -> int:
        """Bytes of the blocks held here (what a viewer's --max-store bounds)."""
        with self._lock:
            total = 0
            for start, end in self._store.bitfield.ranges(limit=self._tree.length):
                first = self._byte_range(start)[0]
                last_offset, last_size = self._byte_range(end - 1)
                total += last_offset + last_size - first
            return total

    def evict(self, indexes: Sequence[int]) -> list[int]:
        """Drop held blocks (a reader's bounded store): clear their bits, make that durable, then
        give their bytes back to the file system. Returns the blocks dropped. Blocking like
        flush(); NotWritableError on a writer, whose feed is the stream itself."""
        if self._secret_key is not None:
            raise NotWritableError("a writer keeps every block of its feed; it never evicts")
        with self._flush_lock:
            with self._lock:
                self._check_open()
                bits = self._store.bitfield
                dropped = [i for i in sorted(set(indexes)) if self.has(i)]
                if not dropped:
                    return []
                for index in dropped:
                    bits.set(index, False)
                # The cleared bits (and the lower contiguous count) reach the disk before the bytes
                # go: a crash in between must not leave a bit that claims a hole.
                head, flush, taken = self._begin_flush()
            try:
                self._store.sync(flush)
                self._store.finish_flush(flush, head, durable=True)
            except BaseException:
                with self._lock:
                    self._abort_flush(flush, taken)
                raise
            with self._lock:
                for index in dropped:
                    if not bits.get(index):  # not fetched again meanwhile
                        offset, size = self._byte_range(index)
                        self._store.punch(offset, size)
        return dropped

    # ------------------------------------------------------------ checking

    def verify_all(self) -> None:
        """Recheck every present block against the tree and the tree against the signature.

        CorruptFeedError naming the first bad block.
        """
        with self._lock:
            self._check_open()
            tree, where = self._tree, self._store.directory
            if not tree.signature_valid():
                raise CorruptFeedError(f"{where} is damaged: the head signature does not verify")
            roots = {r.index: r for r in tree.roots}
            verified: set[int] = set()
            get = self._nodes.get_node
            for start, end in self.present_ranges():
                for index in range(start, end):
                    problem = self._check_block(index, roots, verified, get)
                    if problem:
                        raise CorruptFeedError(f"{where}: block {index} is bad: {problem}")

    def _check_block(
        self,
        index: int,
        roots: dict[int, Node],
        verified: set[int],
        get: Callable[[int], Node | None],
    ) -> str | None:
        """Why block index does not chain up to a signed root, or None if it does."""
        leaf = get(2 * index)
        if leaf is None:
            return "its tree node is missing"
        try:
            offset, _ = self._byte_range(index)
            value = self._store.read(offset, leaf.size)
        except CorruptFeedError as exc:
            return str(exc).split(": ", 1)[-1]
        cur = Node(2 * index, len(value), crypto.leaf_hash(value))
        if cur != leaf:
            return "its data does not match its hash in the tree"
        while cur.index not in verified:
            root = roots.get(cur.index)
            if root is not None:
                if root != cur:
                    return f"tree node {cur.index} does not match the signed root"
                break
            sib = get(sibling(cur.index))
            if sib is None:
                return f"tree node {sibling(cur.index)} is missing"
            verified.add(cur.index)
            size = cur.size + sib.size
            left, right = (cur, sib) if cur.index < sib.index else (sib, cur)
            up = Node(parent(cur.index), size, crypto.parent_hash_raw(size, left.hash, right.hash))
            stored = get(up.index)
            if stored is not None and stored != up:
                return f"tree node {up.index} does not match its children {left.index} and {right.index}"
            cur = up
        return None

    # ------------------------------------------------------------ closing

    def _check_open(self) -> None:
        if self._store.closed:
            raise FeedError(f"the feed in {self._store.directory} is closed")

    def flush(self) -> None:
        """Make every applied block and signed length durable now (verify_and_apply never does).

        The lock is held only to take what must be written: the fsyncs run without it, so
        verify_and_apply, get and proof go on meanwhile. Safe from any thread; blocking (call it
        from a worker thread, not the event loop). FeedError if the disk refuses.
        """
        with self._flush_lock:
            with self._lock:
                self._check_open()
                if not (self.flush_due or self._store.head.pending):
                    return
                head, flush, taken = self._begin_flush()
            try:
                self._store.sync(flush)
                self._store.finish_flush(flush, head, durable=True)
            except BaseException:
                with self._lock:
                    self._abort_flush(flush, taken)
                raise

    def _begin_flush(self) -> tuple[Head, Flush, tuple[int, Head | None]]:
        """Under the lock: the head to record (the signed state now, nothing pending, the current
        contiguous count), the writes to make durable first, and the bookkeeping they clear."""
        store = self._store
        base = self._pending_head or store.head
        head = replace(
            base,
            contiguous=min(store.bitfield.contiguous_length, base.length),
            tree_flushed=base.length,
            pending=(),
        )
        flush = store.begin_flush()
        taken = (self._unflushed, self._pending_head)
        self._unflushed, self._pending_head = 0, None
        return head, flush, taken

    def _abort_flush(self, flush: Flush, taken: tuple[int, Head | None]) -> None:
        """Under the lock: a flush failed, so what it took is due again."""
        self._store.abort_flush(flush)
        self._unflushed += taken[0]
        # An upgrade applied since then is newer and covers the one taken.
        self._pending_head = self._pending_head or taken[1]

    def close(self) -> None:
        """Flush what is due (a clean close leaves nothing to rebuild), then close the files.
        Blocking like flush()."""
        with self._flush_lock, self._lock:
            store = self._store
            if not store.closed and store.locked and (self.flush_due or store.head.pending):
                head, flush, taken = self._begin_flush()
                try:
                    store.sync(flush)
                    store.finish_flush(flush, head, durable=True)
                except FeedError:
                    # Closing anyway: what was not flushed is fetched (or rebuilt) next time.
                    self._abort_flush(flush, taken)
            store.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "writer" if self.writable else "reader"
        return (
            f"<Feed {self.key.hex()[:16]} {mode} length={self.length} at {self._store.directory}>"
        )


def _stored_or_new_key_pair(path: Path) -> crypto.KeyPair:
    """The key pair kept in a feed directory: reuse one a crashed create left, else make one."""
    stored = path / SECRET_KEY_FILE
    if stored.exists():
        return keyfile.key_pair_from_secret_key(keyfile.read_secret_key(stored))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeedError(f"cannot create {path}: {exc.strerror}") from None
    pair = crypto.key_pair()
    keyfile.write_secret_key(stored, pair.secret_key)
    return pair
