"""The Merkle tree of a Hypercore-compatible feed (docs/feed.md), sans-IO.

Builds append batches, proofs for wire.Request and verifies wire.Data against the signed roots, over
any node reader (`get_node(index) -> Node | None`). Never writes storage itself: callers store a
batch's nodes and then `commit` it; a proof that fails verification raises ProofError and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamer.core import crypto
from streamer.core.compat import SLOTS
from streamer.core.errors import BlockNotFoundError, ForkMismatchError, ProofError
from streamer.core.flat_tree import full_roots, left_span, parent, right_span, sibling
from streamer.core.wire import (
    Data,
    DataBlock,
    DataHash,
    DataSeek,
    DataUpgrade,
    Node,
    Request,
)

__all__ = [
    "AppendBatch",
    "CompatVerifier",
    "DefaultManifestVerifier",
    "ForkMismatchError",
    "MemoryNodeStore",
    "MerkleTree",
    "Node",
    "NodeReader",
    "ProofBatch",
    "Verifier",
]

MAX_PROOF_NODES = 256  # a real proof has at most ~3 * 64 nodes; more is hostile
MAX_U64 = (1 << 64) - 1
MAX_BLOCKS = 1 << 61  # keeps every tree index of a verified tree within u64



class NodeReader(Protocol):
    def get_node(self, index: int) -> Node | None: ...


class MemoryNodeStore:
    """A dict-backed node reader/writer, for tests and for in-memory trees."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[int, Node] = {n.index: n for n in nodes}

    def get_node(self, index: int) -> Node | None:
        return self.nodes.get(index)

    def put(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.nodes[n.index] = n


class Verifier(Protocol):
    """Turns (tree hash, length, fork) into signed bytes and checks signatures of them."""

    def sign(self, tree_hash: bytes, length: int, fork: int, secret_key: bytes) -> bytes: ...

    def verify(self, tree_hash: bytes, length: int, fork: int, signature: bytes) -> bool: ...


class CompatVerifier:
    """Compat cores (core key = public key): raw Ed25519 over the 80-byte (or legacy 48-byte) signable."""

    def __init__(self, public_key: bytes, legacy: bool = False) -> None:
        self.public_key = public_key
        self._signable = crypto.signable_legacy if legacy else crypto.signable

    def sign(self, tree_hash: bytes, length: int, fork: int, secret_key: bytes) -> bytes:
        return crypto.sign(self._signable(tree_hash, length, fork), secret_key)

    def verify(self, tree_hash: bytes, length: int, fork: int, signature: bytes) -> bool:
        return crypto.verify(self._signable(tree_hash, length, fork), signature, self.public_key)


class DefaultManifestVerifier:
    """v11 default cores (core key = manifest hash, one ed25519 signer): 68-byte multiSignature."""

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.key = crypto.manifest_hash(crypto.default_manifest(public_key))

    def sign(self, tree_hash: bytes, length: int, fork: int, secret_key: bytes) -> bytes:
        raw = crypto.sign(crypto.signable_manifest(self.key, tree_hash, length, fork), secret_key)
        return crypto.multisig_single(raw)

    def verify(self, tree_hash: bytes, length: int, fork: int, signature: bytes) -> bool:
        raw = crypto.multisig_single_signature(signature)
        if raw is None:
            return False
        msg = crypto.signable_manifest(self.key, tree_hash, length, fork)
        return crypto.verify(msg, raw, self.public_key)


@dataclass(**SLOTS)
class AppendBatch:
    """New state after appending (or truncating); store `nodes`, then MerkleTree.commit(batch)."""

    base_length: int
    base_fork: int
    nodes: list[Node]
    roots: list[Node]
    length: int
    fork: int
    tree_hash: bytes
    signature: bytes | None

    @property
    def byte_length(self) -> int:
        return sum(r.size for r in self.roots)


@dataclass(**SLOTS)
class ProofBatch:
    """What a verified wire.Data proves: nodes to store and, if upgraded, the new signed state.

    `reorg` is True when the proof moved us to a newer fork: the caller must drop local blocks
    and nodes the new tree does not confirm before committing.
    """

    base_length: int
    base_fork: int
    nodes: list[Node] = field(default_factory=list)
    upgraded: bool = False
    reorg: bool = False
    length: int = 0
    fork: int = 0
    roots: list[Node] = field(default_factory=list)
    signature: bytes | None = None
    block: int | None = None  # block number whose value verified
    value: bytes | None = None
    hash_index: int | None = None  # tree index of a verified `hash` target

    @property
    def byte_length(self) -> int:
        return sum(r.size for r in self.roots)


@dataclass(**SLOTS)
class _PendingProof:
    """The target's and the seek's node lists while a proof is assembled (None = not yet placed)."""

    target: int | None
    is_block: bool
    seeking: bool
    nodes: list[Node] | None = None
    seek_nodes: list[Node] | None = None

    @property
    def open(self) -> bool:
        """Whether the target or seek path still has to be attached under some root."""
        return (
            (self.target is not None or self.seeking)
            and self.nodes is None
            and self.seek_nodes is None
        )


def _contains(node: int, index: int) -> bool:
    return left_span(node) <= index <= right_span(node)


def _parent_node(a: Node, b: Node) -> Node:
    if a.index > b.index:
        a, b = b, a
    size = a.size + b.size
    return Node(parent(a.index), size, crypto.parent_hash_raw(size, a.hash, b.hash))


def _checked_parent(a: Node, b: Node) -> Node:
    """_parent_node for untrusted nodes: sizes and indexes must stay within u64 as on the wire."""
    if a.size + b.size > MAX_U64 or max(a.index, b.index) >= MAX_U64 >> 1:
        raise ProofError("proof nodes overflow 64 bits; the peer sent a bad proof")
    return _parent_node(a, b)


def _check_nodes(data: Data) -> None:
    lists = []
    if data.block is not None:
        lists.append(data.block.nodes)
    if data.hash is not None:
        lists.append(data.hash.nodes)
    if data.seek is not None:
        lists.append(data.seek.nodes)
    if data.upgrade is not None:
        lists += [data.upgrade.nodes, data.upgrade.additional_nodes]
    for nodes in lists:
        if len(nodes) > MAX_PROOF_NODES:
            raise ProofError("proof has too many nodes; the peer sent a bad proof")
        for n in nodes:
            if not (0 <= n.index <= MAX_U64 and 0 <= n.size <= MAX_U64 and len(n.hash) == 32):
                raise ProofError(f"malformed proof node {n.index}; the peer sent a bad proof")


def order_for_storing(nodes: Iterable[Node]) -> list[Node]:
    """Verified nodes in the order to write them: top down, siblings next to each other.

    A write cut short (kill -9, a full disk) then leaves whole sibling pairs under parents that
    are already stored, plus at most one lone node, which MerkleTree._anchored never trusts.
    """
    return sorted(nodes, key=lambda n: (-_depth_blocks(n.index), parent(n.index), n.index))


def _depth_blocks(index: int) -> int:
    """Blocks under a node: 2^depth."""
    return (index + 1) & ~index


class MerkleTree:
    """Signed Merkle tree state (length, fork, roots, signature) over a node reader.

    The tree keeps its roots in memory and reads every other node through `reader.get_node`.
    A sparse reader tree may hold any subset of nodes.
    """

    def __init__(
        self,
        reader: NodeReader,
        verifier: Verifier,
        *,
        length: int = 0,
        fork: int = 0,
        signature: bytes | None = None,
        roots: Sequence[Node] | None = None,
    ) -> None:
        """Open a tree of `length` blocks; roots are read from `reader` unless given."""
        self.reader = reader
        self.verifier = verifier
        self.length = length
        self.fork = fork
        self.signature = signature
        if roots is None:
            roots = [self._need(i) for i in full_roots(2 * length)]
        self.roots: list[Node] = list(roots)

    # ------------------------------------------------------------ state

    @property
    def byte_length(self) -> int:
        return sum(r.size for r in self.roots)

    def tree_hash(self) -> bytes:
        return crypto.tree_hash(self.roots)

    def signature_valid(self) -> bool:
        """True iff the stored signature signs the current roots, length and fork."""
        if self.signature is None:
            return self.length == 0
        return self.verifier.verify(self.tree_hash(), self.length, self.fork, self.signature)

    def get_node(self, index: int) -> Node | None:
        return self.reader.get_node(index)

    def _need(self, index: int) -> Node:
        node = self.reader.get_node(index)
        if node is None:
            raise BlockNotFoundError(f"tree node {index} is not stored; fetch it from a peer first")
        return node

    def byte_offset(self, block: int) -> int:
        """Byte offset of a block in the feed: the byte length of the tree of `block` blocks."""
        if not 0 <= block <= self.length:
            raise BlockNotFoundError(f"block {block} is outside the feed (length {self.length})")
        return sum(self._need(i).size for i in full_roots(2 * block))

    def missing_nodes(self, block: int) -> int:
        """How many nodes on the path up from block's leaf we lack (Request.block.nodes): the
        proof stops at the first node we hold whose own path to a root is stored (_anchored)."""
        head = 2 * self.length
        index = 2 * block
        if index >= head:
            return 0
        count = 0
        roots = {r.index for r in self.roots}
        get = self.reader.get_node
        # Hot (once per block request): flat_tree arithmetic inline. `low` = 2^depth(index); a node
        # above the leaf contains `head` when its right span (index + low - 1) reaches it.
        while True:
            low = (index + 1) & ~index
            if index + low - 1 >= head:
                return count
            if get(index) is not None and (index in roots or get(index ^ (low << 1)) is not None):
                return count  # _anchored: held, and a root or its sibling held
            count += 1
            index = (index & ~(low << 1)) | low  # parent

    def _anchored(self, index: int, roots: set[int]) -> bool:
        """Whether a proof may stop at node index: we hold it and it is a root, or we hold its
        sibling too. Nodes are stored in sibling pairs, top down (order_for_storing), so a held
        pair's parent is held and anchored in turn; a node held without its sibling is what a
        crash or a failed write left half way through a proof, and its path up may be missing."""
        if self.reader.get_node(index) is None:
            return False
        return index in roots or self.reader.get_node(sibling(index)) is not None

    # ------------------------------------------------------------ writing

    def append(self, blocks: Sequence[bytes], secret_key: bytes | None = None) -> AppendBatch:
        """Hash blocks into new nodes and roots; signs the new state when secret_key is given."""
        roots = list(self.roots)
        nodes: list[Node] = []
        length = self.length
        leaf_hash = crypto.leaf_hash
        for block in blocks:
            node = Node(2 * length, len(block), leaf_hash(block))
            nodes.append(node)
            length += 1
            # Merge while the two last roots are siblings (equal size): at most log2(length) times.
            while len(roots) and sibling(node.index) == roots[-1].index:
                node = _parent_node(roots.pop(), node)
                nodes.append(node)
            roots.append(node)
        th = crypto.tree_hash(roots)
        sig = self.verifier.sign(th, length, self.fork, secret_key) if secret_key else None
        return AppendBatch(self.length, self.fork, nodes, roots, length, self.fork, th, sig)

    def truncate(self, length: int, secret_key: bytes | None = None) -> AppendBatch:
        """Shrink to `length` blocks on the next fork (fork + 1), signed when secret_key is given.

        The caller removes blocks and nodes beyond the new length after committing.
        """
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a feed of length {self.length} to {length}")
        roots = [self._need(i) for i in full_roots(2 * length)]
        th = crypto.tree_hash(roots)
        fork = self.fork + 1
        sig = self.verifier.sign(th, length, fork, secret_key) if secret_key else None
        return AppendBatch(self.length, self.fork, [], roots, length, fork, th, sig)

    def commit(self, batch: AppendBatch | ProofBatch) -> None:
        """Adopt a batch's state; its nodes must already be stored by the caller."""
        if isinstance(batch, ProofBatch):
            if not batch.upgraded:
                return
            if not batch.reorg and (batch.base_length, batch.base_fork) != (self.length, self.fork):
                raise ValueError("batch was built against another tree state; verify again")
        elif (batch.base_length, batch.base_fork) != (self.length, self.fork):
            raise ValueError("batch was built against another tree state; build it again")
        self.length = batch.length
        self.fork = batch.fork
        self.roots = list(batch.roots)
        self.signature = batch.signature

    # ------------------------------------------------------------ proofs (sender)

    def proof(self, request: Request) -> Data:
        """Build the response to a request, except block values (left empty for the feed to fill).

        Raises BlockNotFoundError when the request is out of range or needs nodes we lack.
        """
        head = 2 * self.length
        up = request.upgrade
        if up is not None:
            start = 2 * up.start
            to = start + 2 * up.length
            if start >= to or to > head:
                raise BlockNotFoundError(
                    f"cannot upgrade from {up.start} by {up.length}: the feed has {self.length} blocks"
                )
        else:
            start, to = 0, head

        target: int | None = None
        wanted = 0
        is_block = False
        last = 0
        if request.block is not None:
            target, wanted, is_block = 2 * request.block.index, request.block.nodes, True
            last = request.block.index
        elif request.hash is not None:
            target, wanted = request.hash.index, request.hash.nodes
            last = right_span(target) // 2
        if target is not None and right_span(target) >= head:
            raise BlockNotFoundError(
                f"requested {'block ' + str(last) if is_block else 'node ' + str(target)} "
                f"is beyond the feed length {self.length}"
            )
        seek = request.seek
        if seek is not None and up is not None and target is not None and target >= start:
            raise BlockNotFoundError("a request cannot seek and fetch a block inside its upgrade")

        data = Data(request=request.id, fork=self.fork)
        if target is None and up is None:
            return data  # a seek without a block or upgrade proves nothing (as in hypercore)

        proof = _PendingProof(target, is_block, seek is not None)
        sub_tree = head
        if target is not None and (up is None or last < up.start):
            sub_tree = self._nodes_to_root(target, wanted, to)
            seek_root = head
            if seek is not None:
                seek_root = self._seek_untrusted(sub_tree, seek.bytes, seek.padding)
            self._target_and_seek(proof, seek_root, sub_tree)
        elif up is not None and seek is not None:
            sub_tree = self._seek_from_head(to, seek.bytes, seek.padding)
        elif target is not None:
            sub_tree = target

        if up is not None:
            nodes: list[Node] = []
            connected = start == 0
            for root in full_roots(to):
                if right_span(root) + 2 < start:
                    continue  # the receiver already has this root
                if not connected and _contains(root, start - 2):
                    # Connect to the receiver's last root: siblings to the right of its last leaf.
                    connected = True
                    cur = start - 2
                    while cur != root:
                        sib = sibling(cur)
                        if sib > start - 2:
                            if proof.open and _contains(sib, sub_tree):
                                self._target_and_seek(proof, sub_tree, sib)
                            else:
                                nodes.append(self._need(sib))
                        cur = parent(cur)
                    continue
                connected = True
                if proof.open and _contains(root, sub_tree):
                    # The receiver rebuilds this root from the target's path, so it is not sent.
                    self._target_and_seek(proof, sub_tree, root)
                    continue
                nodes.append(self._need(root))
            additional = self._additional(to, head) if head > to else []
            data.upgrade = DataUpgrade(
                up.start, up.length, nodes, additional, self.signature or b""
            )

        if target is not None:
            if proof.nodes is None:
                raise BlockNotFoundError("the requested block lies beyond the requested upgrade")
            if is_block:
                data.block = DataBlock(target // 2, b"", proof.nodes)
            else:
                data.hash = DataHash(target, proof.nodes)
        if seek is not None and proof.seek_nodes is not None:
            data.seek = DataSeek(seek.bytes, proof.seek_nodes)
        return data

    def _nodes_to_root(self, index: int, nodes: int, head: int) -> int:
        for _ in range(nodes):
            index = parent(index)
            if _contains(index, head):
                raise BlockNotFoundError("request asks for more proof nodes than the tree holds")
        return index

    def _target_and_seek(self, proof: _PendingProof, seek_root: int, root: int) -> None:
        """Sibling path from the target up to root; a seek path replaces the sibling holding seek_root."""
        if proof.target is None:
            proof.seek_nodes = self._path(seek_root, root, True)
            return
        index = proof.target
        out = [] if proof.is_block else [self._need(index)]
        while index != root:
            sib = sibling(index)
            if proof.seeking and sib != seek_root and _contains(sib, seek_root):
                proof.seek_nodes = self._path(seek_root, sib, True)
            else:
                out.append(self._need(sib))
            index = parent(index)
        proof.nodes = out

    def _path(self, index: int, root: int, include_target: bool) -> list[Node]:
        out = [self._need(index)] if include_target else []
        while index != root:
            out.append(self._need(sibling(index)))
            index = parent(index)
        return out

    # Seeks find the node whose span starts (or ends) at a byte offset, as hypercore does;
    # `padding` is per-block overhead that does not count as content bytes.

    def _unpadded(self, node: Node, padding: int) -> int:
        return node.size - padding * _depth_blocks(node.index) if padding else node.size

    def _seek_from_head(self, head: int, offset: int, padding: int) -> int:
        for root in full_roots(head):
            size = self._unpadded(self._need(root), padding)
            if offset == size:
                return root
            if offset > size:
                offset -= size
                continue
            return self._seek_trusted(root, offset, padding)
        return head

    def _seek_untrusted(self, root: int, offset: int, padding: int) -> int:
        first = left_span(root) // 2
        base = sum(self._need(i).size for i in full_roots(2 * first)) - padding * first
        if base > offset or self._unpadded(self._need(root), padding) <= offset - base:
            raise BlockNotFoundError(f"byte {offset} is not inside the requested block's subtree")
        if base == offset:
            return root
        return self._seek_trusted(root, offset - base, padding)

    def _seek_trusted(self, root: int, offset: int, padding: int) -> int:
        if not offset:
            return root
        index = root
        while index & 1:
            index = index - (_depth_blocks(index) >> 1)  # left child
            left = self.reader.get_node(index)
            if left is None:
                return parent(index)
            size = self._unpadded(left, padding)
            if size == offset:
                return index
            if size > offset:
                continue
            offset -= size
            index = sibling(index)
        return index

    def _additional(self, start: int, to: int) -> list[Node]:
        out: list[Node] = []
        connected = start == 0
        for root in full_roots(to):
            if right_span(root) + 2 < start:
                continue
            if not connected and _contains(root, start - 2):
                connected = True
                cur = start - 2
                while cur != root:
                    sib = sibling(cur)
                    if sib > start - 2:
                        out.append(self._need(sib))
                    cur = parent(cur)
                continue
            connected = True
            out.append(self._need(root))
        return out

    # ------------------------------------------------------------ proofs (receiver)

    def verify(self, data: Data) -> ProofBatch:
        """Check a proof; return what it proves. Raises ProofError (nothing changes) if invalid."""
        if data.block is not None and data.hash is not None:
            raise ProofError("a proof carries both a block and a hash; the peer sent a bad proof")
        reorg = False
        if data.fork != self.fork:
            if data.upgrade is None or data.fork < self.fork:
                raise ForkMismatchError(
                    f"proof is for fork {data.fork} but the feed is at fork {self.fork}"
                )
            if data.upgrade.start != 0:
                raise ProofError("a proof for a new fork must upgrade from block 0")
            reorg = True

        _check_nodes(data)
        if data.block is not None and data.block.index > MAX_BLOCKS:
            raise ProofError(f"block {data.block.index} is out of range; the peer sent a bad proof")
        if data.upgrade is not None and data.upgrade.start + data.upgrade.length > MAX_BLOCKS:
            raise ProofError("upgrade is out of range; the peer sent a bad proof")
        batch = ProofBatch(self.length, self.fork)
        top = self._verify_tree(data, batch, trust=not reorg)

        if data.upgrade is not None:
            if self._verify_upgrade(data, top, batch, reorg):
                top = None
            batch.reorg = reorg

        if top is not None:
            stored = self.reader.get_node(top.index)
            if stored is None or stored.hash != top.hash or stored.size != top.size:
                raise ProofError(
                    f"proof does not match our tree at node {top.index}; the peer sent a bad proof"
                )
            if not self._anchored(top.index, {r.index for r in self.roots}):
                raise ProofError(
                    f"proof stops at node {top.index}, whose path to a root we do not hold; "
                    "the peer sent fewer nodes than asked"
                )
        return batch

    def _verify_tree(self, data: Data, batch: ProofBatch, trust: bool) -> Node | None:
        """Hash the seek and target sibling paths up; return the path root (not yet trusted
        unless it is one of our own nodes). `trust`: our stored nodes are of the proof's fork."""
        out = batch.nodes
        roots = {r.index for r in self.roots} if trust else None
        seek_root: Node | None = None
        if data.seek is not None and data.seek.nodes:
            seek_root = self._climb(data.seek.nodes[0], data.seek.nodes[1:], None, out, roots)
        if data.block is not None:
            b = data.block
            leaf = Node(2 * b.index, len(b.value), crypto.leaf_hash(b.value))
            batch.block = b.index
            batch.value = b.value
            return self._climb(leaf, b.nodes, seek_root, out, roots)
        if data.hash is not None:
            if not data.hash.nodes:
                raise ProofError("hash proof without its target node; the peer sent a bad proof")
            first = data.hash.nodes[0]
            if first.index != data.hash.index:
                raise ProofError("hash proof for the wrong node; the peer sent a bad proof")
            batch.hash_index = first.index
            return self._climb(first, data.hash.nodes[1:], seek_root, out, roots)
        return seek_root

    def _climb(
        self,
        cur: Node,
        path: Sequence[Node],
        extra: Node | None,
        out: list[Node],
        roots: set[int] | None,
    ) -> Node:
        """Merge cur with each sibling in turn; `extra` (a seek root) stands in for one sibling.

        With `roots` (our roots' indexes; None: do not use our nodes), a computed node that
        equals one we hold and can trust (_anchored) proves the rest of the path: from there each
        proof node must equal the node we hold at its index (compared, not hashed) and our
        stored parents are used, until the path leaves our tree (an upgrade's new roots), where
        hashing resumes. Nodes we hold already are not added to `out`. A computed node that
        differs from a trusted one of ours is a bad proof.
        """
        get = self.reader.get_node
        trusted = roots is not None and self._trusted(cur, roots)
        if not trusted:
            out.append(cur)
        i = 0
        while i < len(path) or extra is not None:
            index = cur.index
            low = (index + 1) & ~index  # 2^depth: flat_tree's sibling and parent, inline (hot)
            want = index ^ (low << 1)
            if extra is not None and extra.index == want:
                node, extra = extra, None
            elif i < len(path) and path[i].index == want:
                node = path[i]
                i += 1
            else:
                got = path[i].index if i < len(path) else "nothing"
                raise ProofError(f"expected node {want}, got {got}; the peer sent a bad proof")
            if trusted:
                held = get(want)
                above = get((index & ~(low << 1)) | low) if held is not None else None
                if held is not None and above is not None:
                    if held != node:
                        raise ProofError(
                            f"proof node {want} does not match ours; the peer sent a bad proof"
                        )
                    cur = above
                    continue
                trusted = False  # above our tree: the new roots of an upgrade
            cur = _checked_parent(cur, node)
            out.append(node)
            out.append(cur)
            if roots is not None:
                trusted = self._trusted(cur, roots)
        return cur

    def _trusted(self, node: Node, roots: set[int]) -> bool:
        """True if we hold node, anchored (so its path to a signed root is stored); ProofError if
        we hold a different node there, anchored; False otherwise."""
        get = self.reader.get_node
        held = get(node.index)
        if held is None or not (node.index in roots or get(sibling(node.index)) is not None):
            return False
        if held != node:
            raise ProofError(
                f"proof does not match our tree at node {node.index}; the peer sent a bad proof"
            )
        return True

    def _verify_upgrade(self, data: Data, top: Node | None, batch: ProofBatch, reorg: bool) -> bool:
        """Rebuild the signed roots from ours plus the proof; True if `top` was used for them."""
        up = data.upgrade
        assert up is not None
        base_length = 0 if reorg else self.length
        if up.start != base_length:
            raise ProofError(
                f"upgrade starts at block {up.start} but we have {base_length}; "
                "the proof is stale or bad"
            )
        if up.length == 0:
            raise ProofError("upgrade of zero blocks; the peer sent a bad proof")

        roots: list[Node] = [] if reorg else list(self.roots)
        out = batch.nodes
        length = base_length
        queue = up.nodes
        qi = 0
        extra = top

        def shift(index: int) -> Node:
            nonlocal qi, extra
            if extra is not None and extra.index == index:
                node, extra = extra, None
                return node
            if qi >= len(queue) or queue[qi].index != index:
                got = queue[qi].index if qi < len(queue) else "nothing"
                raise ProofError(f"expected node {index}, got {got}; the peer sent a bad proof")
            node = queue[qi]
            qi += 1
            return node

        def append_root(node: Node) -> None:
            nonlocal length
            out.append(node)
            length += _depth_blocks(node.index)
            while roots and roots[-1].index == sibling(node.index):
                node = _checked_parent(roots.pop(), node)
                out.append(node)
            roots.append(node)

        to = 2 * (up.start + up.length)
        grow = len(roots) > 0
        i = 0
        for root in full_roots(to):
            if i < len(roots) and roots[i].index == root:
                i += 1
                continue
            if grow:
                grow = False
                if i < len(roots):
                    cur = roots[-1].index
                    if not _contains(root, cur):
                        raise ProofError(
                            "upgrade does not extend our tree; the peer sent a bad proof"
                        )
                    while cur != root:
                        append_root(shift(sibling(cur)))
                        cur = roots[-1].index
                    continue
            append_root(shift(root))
        if qi != len(queue):
            raise ProofError("upgrade carries unused nodes; the peer sent a bad proof")
        if not roots or length != up.start + up.length:
            raise ProofError("upgrade does not reach its stated length; the peer sent a bad proof")

        extra_nodes = up.additional_nodes
        k = 0
        pos = sibling(roots[-1].index)
        while k < len(extra_nodes) and extra_nodes[k].index == pos:
            append_root(extra_nodes[k])
            k += 1
            pos = sibling(roots[-1].index)
        while k < len(extra_nodes):
            node = extra_nodes[k]
            k += 1
            while node.index != pos:
                if not pos & 1 or node.index > right_span(pos) or node.index < left_span(pos):
                    raise ProofError(f"unexpected node {node.index}; the peer sent a bad proof")
                pos = pos - (_depth_blocks(pos) >> 1)  # left child
            append_root(node)
            pos = sibling(roots[-1].index)

        th = crypto.tree_hash(roots)
        if not self.verifier.verify(th, length, data.fork, up.signature):
            raise ProofError(
                f"bad signature for length {length} fork {data.fork}; the peer sent a bad proof"
            )
        batch.upgraded = True
        batch.length = length
        batch.fork = data.fork
        batch.roots = roots
        batch.signature = bytes(up.signature)
        return extra is None
