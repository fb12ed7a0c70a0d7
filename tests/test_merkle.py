"""Merkle tree: appends, the seven reference proofs (generation, wire bytes, verification),
tampered proofs, and seeded random round-trips between a writer and sparse readers."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import pytest

from streamer.core import crypto, wire
from streamer.core.errors import BlockNotFoundError, ForkMismatchError, ProofError
from streamer.core.flat_tree import depth, full_roots, left_span, right_span
from streamer.core.merkle import (
    CompatVerifier,
    DefaultManifestVerifier,
    MemoryNodeStore,
    MerkleTree,
    Node,
    ProofBatch,
    Verifier,
)

SEED = bytes([1]) * 32
N_HOSTILE = 1500


def block_values(vectors: dict) -> list[bytes]:
    out = []
    for b in vectors["blocks"]:
        if b["value_hex"] is not None:
            out.append(bytes.fromhex(b["value_hex"]))
        else:
            out.append(bytes([int(b["fill_byte"], 16)]) * b["byteLength"])
    return out


def node(j: dict) -> Node:
    return Node(j["index"], j["size"], bytes.fromhex(j["hash"]))


def verifier_for(kind: str, kp: crypto.KeyPair) -> Verifier:
    return (
        CompatVerifier(kp.public_key)
        if kind == "compat"
        else DefaultManifestVerifier(kp.public_key)
    )


def writer(
    kind: str, values: list[bytes], kp: crypto.KeyPair
) -> tuple[MerkleTree, MemoryNodeStore]:
    """A writer tree built one append per block, as the reference cores were."""
    store = MemoryNodeStore()
    tree = MerkleTree(store, verifier_for(kind, kp))
    for v in values:
        batch = tree.append([v], kp.secret_key)
        store.put(batch.nodes)
        tree.commit(batch)
    return tree, store


def compat_writer(
    blocks: list[bytes], kp: crypto.KeyPair
) -> tuple[MerkleTree, MemoryNodeStore]:
    """A compat-signed writer tree holding `blocks`, appended in one batch."""
    store = MemoryNodeStore()
    tree = MerkleTree(store, CompatVerifier(kp.public_key))
    batch = tree.append(blocks, kp.secret_key)
    store.put(batch.nodes)
    tree.commit(batch)
    return tree, store


def assert_only_the_writers(
    got: ProofBatch, w: MerkleTree, store: MemoryNodeStore, blocks: list[bytes]
) -> None:
    """An accepted proof carries only the writer's nodes, block values and roots."""
    for n in got.nodes:
        assert store.get_node(n.index) == n
    if got.value is not None:
        assert got.block is not None and got.value == blocks[got.block]
    if got.upgraded:
        assert got.roots == w.roots and got.length == w.length


def reader_at(src: MerkleTree, length: int) -> tuple[MerkleTree, MemoryNodeStore]:
    """A sparse reader that knows only the signed roots of `length` blocks of the writer's feed."""
    roots = [src.get_node(i) for i in full_roots(2 * length)]
    assert all(r is not None for r in roots)
    store = MemoryNodeStore(roots)  # type: ignore[arg-type]
    sig = None
    if length:
        th = crypto.tree_hash(roots)  # type: ignore[arg-type]
        sig = src.verifier.sign(th, length, src.fork, crypto.key_pair(SEED).secret_key)
    return MerkleTree(store, src.verifier, length=length, signature=sig), store


def request_of(j: dict) -> wire.Request:
    return wire.Request(
        id=1,
        fork=0,
        block=wire.RequestBlock(**j["block"]) if "block" in j else None,
        hash=wire.RequestBlock(**j["hash"]) if "hash" in j else None,
        upgrade=wire.RequestUpgrade(**j["upgrade"]) if "upgrade" in j else None,
    )


@pytest.fixture(scope="module")
def kp() -> crypto.KeyPair:
    return crypto.key_pair(SEED)


@pytest.fixture(scope="module")
def values(vectors: dict) -> list[bytes]:
    return block_values(vectors)


def sender_for(p: dict, values: list[bytes], kp: crypto.KeyPair) -> MerkleTree:
    n = 7 if p["name"].startswith("len7") else 8
    return writer(p["core"], values[:n], kp)[0]


def made_proof(p: dict, values: list[bytes], kp: crypto.KeyPair) -> tuple[MerkleTree, wire.Data]:
    tree = sender_for(p, values, kp)
    data = tree.proof(request_of(p["request"]))
    if data.block is not None:
        data.block.value = values[data.block.index]
    return tree, data


def reader_for(p: dict, sender: MerkleTree) -> tuple[MerkleTree, MemoryNodeStore]:
    up = p["request"].get("upgrade")
    return reader_at(sender, up["start"] if up else sender.length)


def test_append_batches_equal_single_appends(values: list[bytes], kp: crypto.KeyPair) -> None:
    one, one_store = writer("compat", values, kp)
    store = MemoryNodeStore()
    tree = MerkleTree(store, CompatVerifier(kp.public_key))
    for chunk in (values[:3], values[3:4], values[4:]):
        batch = tree.append(chunk, kp.secret_key)
        assert tree.length == batch.base_length  # not applied before commit
        store.put(batch.nodes)
        tree.commit(batch)
    assert store.nodes == one_store.nodes
    assert (tree.roots, tree.signature, tree.tree_hash()) == (
        one.roots,
        one.signature,
        one.tree_hash(),
    )
    stale = tree.append([b"x"])
    tree.commit(tree.append([b"y"]))
    with pytest.raises(ValueError):
        tree.commit(stale)


def test_reopen_reads_roots_from_storage(values: list[bytes], kp: crypto.KeyPair) -> None:
    tree, store = writer("compat", values, kp)
    again = MerkleTree(store, tree.verifier, length=tree.length, signature=tree.signature)
    assert again.roots == tree.roots and again.signature_valid()


def test_byte_offsets_and_missing_nodes(
    vectors: dict, values: list[bytes], kp: crypto.KeyPair
) -> None:
    tree, _ = writer("compat", values, kp)
    offset = 0
    for i, v in enumerate(values):
        assert tree.byte_offset(i) == offset
        offset += len(v)
    assert tree.byte_offset(len(values)) == offset == tree.byte_length
    with pytest.raises(BlockNotFoundError):
        tree.byte_offset(len(values) + 1)
    assert all(tree.missing_nodes(i) == 0 for i in range(8))
    # the reference example: a reader holding only root 7 lacks 3 nodes above block 5
    reader, _ = reader_at(tree, 8)
    assert reader.missing_nodes(5) == 3
    assert reader.missing_nodes(8) == 0  # beyond the tree: unknown
    with pytest.raises(BlockNotFoundError):
        reader.byte_offset(5)  # a sparse reader lacks the nodes left of block 5


@pytest.mark.parametrize("index", range(7))
def test_reference_proof_generation(
    vectors: dict, values: list[bytes], kp: crypto.KeyPair, index: int
) -> None:
    p = vectors["proofs"][index]
    tree, data = made_proof(p, values, kp)
    assert tree.get_node(0) is not None
    assert data.fork == p["fork"] and data.request == 1
    if p["block"]:
        assert data.block is not None and data.block.index == p["block"]["index"]
        assert data.block.value.hex() == p["block"]["value_hex"]
        assert data.block.nodes == [node(n) for n in p["block"]["nodes"]]
    else:
        assert data.block is None
    if p["hash"]:
        assert data.hash is not None and data.hash.index == p["hash"]["index"]
        assert data.hash.nodes == [node(n) for n in p["hash"]["nodes"]]
    else:
        assert data.hash is None
    if p["upgrade"]:
        u = data.upgrade
        assert u is not None
        assert (u.start, u.length) == (p["upgrade"]["start"], p["upgrade"]["length"])
        assert u.nodes == [node(n) for n in p["upgrade"]["nodes"]]
        assert u.additional_nodes == [node(n) for n in p["upgrade"]["additionalNodes"]]
        assert u.signature.hex() == p["upgrade"]["signature"]
    else:
        assert data.upgrade is None
    payload = wire.encode_payload(data)
    assert len(payload) == p["wire_data_message_len"]
    assert payload.hex() == p["wire_data_message_hex"]
    assert wire.decode_message(wire.encode_message(data)) == data


@pytest.mark.parametrize("index", range(7))
def test_reference_proof_verification(
    vectors: dict, values: list[bytes], kp: crypto.KeyPair, index: int
) -> None:
    p = vectors["proofs"][index]
    sender = sender_for(p, values, kp)
    # verify the reference bytes, not our own proof object
    data = wire.decode_payload(wire.DATA, bytes.fromhex(p["wire_data_message_hex"]))
    assert isinstance(data, wire.Data)
    reader, store = reader_for(p, sender)
    batch = reader.verify(data)
    assert isinstance(batch, ProofBatch)
    for n in batch.nodes:
        assert sender.get_node(n.index) == n
    store.put(batch.nodes)
    reader.commit(batch)
    if p["upgrade"]:
        assert batch.upgraded and reader.length == sender.length
        assert reader.tree_hash() == sender.tree_hash() and reader.signature_valid()
    else:
        assert not batch.upgraded
    if p["block"]:
        i = p["block"]["index"]
        assert batch.block == i and batch.value == values[i]
        assert store.get_node(2 * i) == sender.get_node(2 * i)
        assert reader.missing_nodes(i) == 0
    if p["hash"]:
        assert batch.hash_index == p["hash"]["index"]
        assert store.get_node(p["hash"]["index"]) == sender.get_node(p["hash"]["index"])


def test_reader_apply_check(vectors: dict, values: list[bytes], kp: crypto.KeyPair) -> None:
    check = vectors["reader_apply_check"]
    p = next(x for x in vectors["proofs"] if x["name"] == check["proof"])
    sender, data = made_proof(p, values, kp)
    reader = MerkleTree(MemoryNodeStore(), CompatVerifier(bytes.fromhex(p["core_key"])))
    batch = reader.verify(data)
    reader.reader.put(batch.nodes)  # type: ignore[attr-defined]
    reader.commit(batch)
    assert check["applied"] is True
    assert reader.length == check["reader_length_after"]


# ------------------------------------------------------------------ tampering


def node_lists(d: wire.Data) -> list[list[Node]]:
    lists = []
    if d.block is not None:
        lists.append(d.block.nodes)
    if d.hash is not None:
        lists.append(d.hash.nodes)
    if d.upgrade is not None:
        lists += [d.upgrade.nodes, d.upgrade.additional_nodes]
    return lists


def tampered(data: wire.Data) -> list[tuple[str, wire.Data]]:
    """Every single-change forgery of a proof we can think of."""
    out: list[tuple[str, wire.Data]] = []
    extra = Node(2, 1, bytes(32))

    def variant(name: str, change: Callable[[wire.Data], None]) -> None:
        d = copy.deepcopy(data)
        change(d)
        out.append((name, d))

    if data.block is not None:
        variant("value", lambda d: setattr(d.block, "value", d.block.value[:-1] + b"\x00"))
        variant("value+", lambda d: setattr(d.block, "value", d.block.value + b"\x00"))
        variant("index", lambda d: setattr(d.block, "index", d.block.index ^ 1))
    for li, nodes in enumerate(node_lists(data)):
        for ni, n in enumerate(nodes):

            def flip(d: wire.Data, li: int = li, ni: int = ni, n: Node = n) -> None:
                node_lists(d)[li][ni] = Node(n.index, n.size, bytes([n.hash[0] ^ 1]) + n.hash[1:])

            def grow(d: wire.Data, li: int = li, ni: int = ni, n: Node = n) -> None:
                node_lists(d)[li][ni] = Node(n.index, n.size + 1, n.hash)

            def drop(d: wire.Data, li: int = li, ni: int = ni) -> None:
                del node_lists(d)[li][ni]

            variant(f"hash {li}/{ni}", flip)
            variant(f"size {li}/{ni}", grow)
            variant(f"missing {li}/{ni}", drop)

        def add(d: wire.Data, li: int = li) -> None:
            node_lists(d)[li].append(extra)

        def dup(d: wire.Data, li: int = li) -> None:
            lst = node_lists(d)[li]
            if lst:
                lst.append(lst[-1])
            else:
                lst.append(extra)

        variant(f"extra {li}", add)
        variant(f"dup {li}", dup)
    if data.upgrade is not None:
        sig = data.upgrade.signature
        variant(
            "signature", lambda d: setattr(d.upgrade, "signature", sig[:-1] + bytes([sig[-1] ^ 1]))
        )
        variant("no signature", lambda d: setattr(d.upgrade, "signature", b""))
        variant("length", lambda d: setattr(d.upgrade, "length", d.upgrade.length + 1))
    variant("fork", lambda d: setattr(d, "fork", d.fork + 1))
    return out


@pytest.mark.parametrize("index", range(7))
def test_tampered_reference_proofs_rejected(
    vectors: dict, values: list[bytes], kp: crypto.KeyPair, index: int
) -> None:
    p = vectors["proofs"][index]
    sender, data = made_proof(p, values, kp)
    cases = tampered(data)
    assert len(cases) >= 8
    for name, bad in cases:
        reader, store = reader_for(p, sender)
        before = (
            reader.length,
            reader.fork,
            list(reader.roots),
            reader.signature,
            dict(store.nodes),
        )
        with pytest.raises(ProofError):
            reader.verify(bad)
            pytest.fail(f"tampered proof accepted: {p['name']} / {name}")
        after = (
            reader.length,
            reader.fork,
            list(reader.roots),
            reader.signature,
            dict(store.nodes),
        )
        assert after == before, name
        reader.verify(data)  # the genuine proof still verifies on the same reader


def test_fork_mismatch_without_upgrade(values: list[bytes], kp: crypto.KeyPair) -> None:
    sender, _ = writer("compat", values, kp)
    reader, _ = reader_at(sender, 8)
    data = sender.proof(wire.Request(1, 0, block=wire.RequestBlock(5, reader.missing_nodes(5))))
    assert data.block is not None
    data.block.value = values[5]
    data.fork = 1
    with pytest.raises(ForkMismatchError):
        reader.verify(data)


def test_reorg_to_new_fork(values: list[bytes], kp: crypto.KeyPair) -> None:
    sender, store = writer("compat", values, kp)
    reader, rstore = reader_at(sender, 8)
    trunc = sender.truncate(6, kp.secret_key)
    sender.commit(trunc)
    for i in [i for i in store.nodes if i >= 12]:
        del store.nodes[i]
    batch = sender.append([b"X"], kp.secret_key)
    store.put(batch.nodes)
    sender.commit(batch)
    data = sender.proof(
        wire.Request(1, 0, block=wire.RequestBlock(6, 0), upgrade=wire.RequestUpgrade(0, 7))
    )
    assert data.block is not None
    data.block.value = b"X"
    with pytest.raises(ProofError):  # a new fork must restart from block 0 ...
        bad = copy.deepcopy(data)
        assert bad.upgrade is not None
        bad.upgrade.start = 8
        reader.verify(bad)
    got = reader.verify(data)  # ... and then verifies as a reorg
    assert got.reorg and got.fork == 1 and got.length == 7
    rstore.put(got.nodes)
    reader.commit(got)
    assert reader.tree_hash() == sender.tree_hash() and reader.signature_valid()


def test_requests_the_sender_cannot_serve(values: list[bytes], kp: crypto.KeyPair) -> None:
    sender, _ = writer("compat", values, kp)
    for req in (
        wire.Request(1, 0, block=wire.RequestBlock(8, 0)),
        wire.Request(1, 0, upgrade=wire.RequestUpgrade(4, 5)),
        wire.Request(1, 0, upgrade=wire.RequestUpgrade(4, 0)),
        wire.Request(1, 0, block=wire.RequestBlock(1, 9)),
        wire.Request(1, 0, block=wire.RequestBlock(7, 0), upgrade=wire.RequestUpgrade(0, 5)),
        wire.Request(
            1,
            0,
            block=wire.RequestBlock(6, 0),
            seek=wire.RequestSeek(3),
            upgrade=wire.RequestUpgrade(0, 8),
        ),
        wire.Request(1, 0, block=wire.RequestBlock(1, 1), seek=wire.RequestSeek(4)),
    ):
        with pytest.raises(BlockNotFoundError):
            sender.proof(req)
    reader, _ = reader_at(sender, 8)
    with pytest.raises(BlockNotFoundError):  # a sparse reader cannot serve what it lacks
        reader.proof(wire.Request(1, 0, block=wire.RequestBlock(3, 2)))
    assert sender.proof(wire.Request(1, 0)) == wire.Data(1, 0)


# ------------------------------------------------------------------ random round trips


def apply(reader: MerkleTree, store: MemoryNodeStore, data: wire.Data) -> ProofBatch:
    batch = reader.verify(wire.decode_message(wire.encode_message(data)))  # type: ignore[arg-type]
    store.put(batch.nodes)
    reader.commit(batch)
    return batch


@pytest.mark.parametrize("seed", range(12))
def test_random_appends_and_requests_round_trip(seed: int) -> None:
    rnd = random.Random(seed)
    kp = crypto.key_pair(rnd.randbytes(32))
    wstore = MemoryNodeStore()
    w = MerkleTree(wstore, CompatVerifier(kp.public_key))
    blocks: list[bytes] = []
    readers = [
        (MerkleTree(s, CompatVerifier(kp.public_key)), s)
        for s in (MemoryNodeStore(), MemoryNodeStore())
    ]
    for _ in range(25):
        new = [rnd.randbytes(rnd.randrange(0, 40)) for _ in range(rnd.choice([1, 1, 2, 3, 7, 16]))]
        batch = w.append(new, kp.secret_key)
        wstore.put(batch.nodes)
        w.commit(batch)
        blocks += new
        assert w.signature_valid()
        for reader, rstore in readers:
            if rnd.random() < 0.3:
                continue  # this reader falls behind for a while
            upgrade = (
                wire.RequestUpgrade(reader.length, w.length - reader.length)
                if rnd.random() < 0.8
                else None
            )
            req = wire.Request(1, 0, upgrade=upgrade)
            kind = rnd.random()
            if kind < 0.6:
                i = rnd.randrange(w.length)
                known = upgrade is None or i < reader.length
                if not known or reader.length > i:
                    req.block = wire.RequestBlock(i, reader.missing_nodes(i) if known else 0)
            elif kind < 0.8 and upgrade is not None:
                i = rnd.randrange(reader.length, w.length)
                req.hash = wire.RequestBlock(2 * i, 0)
            if req.block is None and req.hash is None and upgrade is None:
                continue
            if req.block is not None and upgrade is None and reader.length <= req.block.index:
                continue
            data = w.proof(req)
            if data.block is not None:
                data.block.value = blocks[data.block.index]
            got = apply(reader, rstore, data)
            if upgrade is not None:
                assert got.upgraded and reader.length == w.length
                assert reader.roots == w.roots and reader.signature_valid()
            if req.block is not None:
                i = req.block.index
                assert rstore.get_node(2 * i) == wstore.get_node(2 * i) and got.value == blocks[i]
                assert reader.missing_nodes(i) == 0
            for n in got.nodes:
                assert wstore.get_node(n.index) == n
    # finally every block of the writer can be fetched into a fresh sparse reader in random order
    reader, rstore = MerkleTree(MemoryNodeStore(), w.verifier), None
    rstore = reader.reader
    assert isinstance(rstore, MemoryNodeStore)
    apply(reader, rstore, w.proof(wire.Request(1, 0, upgrade=wire.RequestUpgrade(0, w.length))))
    order = list(range(w.length))
    rnd.shuffle(order)
    for i in order:
        data = w.proof(wire.Request(1, 0, block=wire.RequestBlock(i, reader.missing_nodes(i))))
        assert data.block is not None
        data.block.value = blocks[i]
        apply(reader, rstore, data)
    assert all(rstore.get_node(2 * i) == wstore.get_node(2 * i) for i in range(w.length))
    assert sum(rstore.get_node(2 * i).size for i in range(w.length)) == w.byte_length  # type: ignore[union-attr]


def mutate(rnd: random.Random, data: wire.Data) -> wire.Data:
    """A random hostile variant of a genuine proof: indexes, sizes, hashes, lengths, lists."""
    d = copy.deepcopy(data)
    for _ in range(rnd.randrange(1, 4)):
        lists = [lst for lst in node_lists(d)]
        choice = rnd.randrange(8)
        if choice < 4 and any(lists):
            lst = rnd.choice([x for x in lists if x])
            i = rnd.randrange(len(lst))
            n = lst[i]
            field_ = rnd.randrange(3)
            if field_ == 0:
                lst[i] = Node(
                    rnd.choice([n.index ^ (1 << rnd.randrange(8)), rnd.randrange(1 << 64)]),
                    n.size,
                    n.hash,
                )
            elif field_ == 1:
                lst[i] = Node(
                    n.index, rnd.choice([0, n.size + 1, max(0, n.size - 1), 1 << 63]), n.hash
                )
            else:
                lst[i] = Node(n.index, n.size, rnd.randbytes(32))
        elif choice == 4 and lists:
            lst = rnd.choice(lists)
            lst.insert(
                rnd.randrange(len(lst) + 1),
                Node(rnd.randrange(64), rnd.randrange(100), rnd.randbytes(32)),
            )
        elif choice == 5 and d.upgrade is not None:
            d.upgrade.start = rnd.choice([0, d.upgrade.start + 1, rnd.randrange(1 << 64)])
            d.upgrade.length = rnd.choice([0, 1, d.upgrade.length + 1, rnd.randrange(1 << 64)])
        elif choice == 6 and d.block is not None:
            d.block.index = rnd.choice([d.block.index + 1, rnd.randrange(1 << 64)])
        elif lists and any(lists):
            lst = rnd.choice([x for x in lists if x])
            del lst[rnd.randrange(len(lst))]
    return d


def test_hostile_proofs_never_store_forged_nodes() -> None:
    """Whatever a peer sends, verify either raises ProofError or yields only the writer's nodes."""
    rnd = random.Random(99)
    kp = crypto.key_pair(bytes([3]) * 32)
    blocks = [rnd.randbytes(rnd.randrange(1, 30)) for _ in range(37)]
    w, store = compat_writer(blocks, kp)
    accepted = 0
    for _ in range(N_HOSTILE):
        start = rnd.choice([0, rnd.randrange(w.length)])
        reader, rstore = reader_at(w, start)
        req = wire.Request(1, 0)
        if rnd.random() < 0.8:
            req.upgrade = wire.RequestUpgrade(start, w.length - start) if start < w.length else None
        i = rnd.randrange(w.length)
        if req.upgrade is not None and rnd.random() < 0.25:
            req.seek = wire.RequestSeek(rnd.randrange(w.byte_length))
        elif req.upgrade is None or i < start:
            req.block = wire.RequestBlock(i, reader.missing_nodes(i))
        else:
            req.block = wire.RequestBlock(i, 0)
        data = w.proof(req)
        if data.block is not None:
            data.block.value = blocks[data.block.index]
        bad = mutate(rnd, data)
        try:
            got = reader.verify(bad)
        except ProofError:
            continue
        accepted += 1
        assert_only_the_writers(got, w, store, blocks)
    assert accepted < N_HOSTILE


def test_seek_proofs_verify_and_locate_bytes() -> None:
    """Seek proofs (byte offset -> node) verify on sparse readers, alone with an upgrade or beside a block."""
    rnd = random.Random(5)
    kp = crypto.key_pair(bytes([4]) * 32)
    blocks = [rnd.randbytes(rnd.randrange(1, 40)) for _ in range(45)]
    w, store = compat_writer(blocks, kp)
    seen_seek = 0
    for offset in range(0, w.byte_length, 7):
        reader, rstore = MerkleTree(MemoryNodeStore(), w.verifier), None
        rstore = reader.reader
        assert isinstance(rstore, MemoryNodeStore)
        data = w.proof(
            wire.Request(
                1, 0, seek=wire.RequestSeek(offset), upgrade=wire.RequestUpgrade(0, w.length)
            )
        )
        if data.seek is not None:
            seen_seek += 1
            assert data.seek.bytes == offset
            first = data.seek.nodes[0]
            assert store.get_node(first.index) == first
        got = apply(reader, rstore, data)
        assert got.upgraded and reader.roots == w.roots
        # a block request that also seeks inside the block's subtree, against the signed roots
        i = next(b for b in range(w.length) if w.byte_offset(b + 1) > offset)
        nodes = reader.missing_nodes(i)
        req = wire.Request(1, 0, block=wire.RequestBlock(i, nodes), seek=wire.RequestSeek(offset))
        try:
            data = w.proof(req)
        except BlockNotFoundError:
            continue  # the offset lies outside the subtree this block's proof climbs to
        assert data.block is not None
        data.block.value = blocks[i]
        got = apply(reader, rstore, data)
        assert got.value == blocks[i]
        for n in got.nodes:
            assert store.get_node(n.index) == n
    assert seen_seek > 10


def test_hostile_requests_only_raise_block_not_found() -> None:
    """A peer's request with absurd fields gets a proof or BlockNotFoundError, nothing else."""
    rnd = random.Random(8)
    kp = crypto.key_pair(bytes(32))

    def num() -> int:
        return rnd.choice([0, 1, 2, 3, rnd.randrange(64), rnd.randrange(1 << 64), (1 << 64) - 1])

    for length in (0, 1, 5, 37):
        store = MemoryNodeStore()
        tree = MerkleTree(store, CompatVerifier(kp.public_key))
        if length:
            batch = tree.append(
                [rnd.randbytes(rnd.randrange(1, 9)) for _ in range(length)], kp.secret_key
            )
            store.put(batch.nodes)
            tree.commit(batch)
        for _ in range(1500):
            req = wire.Request(1, 0)
            if rnd.random() < 0.5:
                req.block = wire.RequestBlock(num(), num())
            if rnd.random() < 0.3:
                req.hash = wire.RequestBlock(num(), num())
            if rnd.random() < 0.3:
                req.seek = wire.RequestSeek(num(), rnd.choice([0, 0, 1, num()]))
            if rnd.random() < 0.5:
                req.upgrade = wire.RequestUpgrade(num(), num())
            try:
                tree.proof(req)
            except BlockNotFoundError:
                pass


def _full_path_proof(w: MerkleTree, blocks: list[bytes], i: int, reader: MerkleTree) -> wire.Data:
    """A proof of block i carrying its whole path up to the reader's root, as a request sent
    before an earlier answer delivered part of that path brings it."""
    root = next(r for r in full_roots(2 * reader.length) if left_span(r) <= 2 * i <= right_span(r))
    data = w.proof(wire.Request(1, 0, block=wire.RequestBlock(i, depth(root))))
    assert data.block is not None and len(data.block.nodes) == depth(root)
    data.block.value = blocks[i]
    return data


@pytest.fixture
def filled() -> tuple[MerkleTree, list[bytes], MerkleTree, MemoryNodeStore]:
    """A 64-block writer and a reader at its length holding blocks 0..7 and their proofs."""
    rnd = random.Random(5)
    kp = crypto.key_pair(bytes([4]) * 32)
    blocks = [rnd.randbytes(rnd.randrange(1, 50)) for _ in range(64)]
    w, store = compat_writer(blocks, kp)
    reader, rstore = reader_at(w, w.length)
    for i in range(8):
        apply(reader, rstore, _full_path_proof(w, blocks, i, reader))
    return w, blocks, reader, rstore


def test_a_proof_stops_hashing_at_a_node_we_trust(filled: tuple) -> None:
    """Block 9's full path (6 nodes) repeats nodes that the proofs of blocks 0..7 delivered: it
    verifies, and past the first node we trust nothing more is returned to store."""
    w, blocks, reader, rstore = filled
    data = _full_path_proof(w, blocks, 9, reader)
    got = reader.verify(data)
    assert got.value == blocks[9]
    # Path 16 21 27 | 7 47 95: hashing stops at node 23 (held, with its sibling 7); nodes 7, 47
    # and 95 are compared with ours, not hashed, and not returned.
    assert {n.index for n in got.nodes} == {16, 17, 18, 19, 21, 23, 27}
    assert all(w.get_node(n.index) == n for n in got.nodes)
    assert [n.index for n in got.nodes if rstore.get_node(n.index) is not None] == [23]


def test_a_tampered_node_we_already_hold_is_rejected(filled: tuple) -> None:
    """A proof whose upper nodes (which we hold and trust) differ from ours is rejected, not
    merely skipped: each is compared with ours."""
    w, blocks, reader, rstore = filled
    good = _full_path_proof(w, blocks, 9, reader)
    for k, n in enumerate(good.block.nodes):
        held = rstore.get_node(n.index)
        if held is None:
            continue
        for bad_node in (Node(n.index, n.size, bytes(32)), Node(n.index, n.size + 1, n.hash)):
            bad = copy.deepcopy(good)
            bad.block.nodes[k] = bad_node
            with pytest.raises(ProofError):
                reader.verify(bad)


def test_a_tampered_node_below_our_tree_is_rejected(filled: tuple) -> None:
    """A wrong lower node (one we lack) or a wrong value makes the computed node differ from the
    node of ours it reaches: rejected, and nothing is stored."""
    w, blocks, reader, rstore = filled
    good = _full_path_proof(w, blocks, 9, reader)
    before = dict(rstore.nodes)
    lacking = [k for k, n in enumerate(good.block.nodes) if rstore.get_node(n.index) is None]
    assert lacking
    for k in lacking:
        bad = copy.deepcopy(good)
        n = bad.block.nodes[k]
        bad.block.nodes[k] = Node(n.index, n.size, bytes(32))
        with pytest.raises(ProofError):
            reader.verify(bad)
    bad = copy.deepcopy(good)
    bad.block.value = b"not block 9"
    with pytest.raises(ProofError):
        reader.verify(bad)
    # The sibling leaf 16 arrives in block 8's proof; a wrong block 8 must not match it later.
    apply(reader, rstore, good)
    bad = _full_path_proof(w, blocks, 8, reader)
    bad.block.value = blocks[8] + b"x"
    with pytest.raises(ProofError):
        reader.verify(bad)
    assert set(before) <= set(rstore.nodes)


def test_hostile_proofs_against_a_reader_holding_part_of_the_tree() -> None:
    """Mutated proofs to a reader that holds random blocks (so proofs cross nodes it trusts):
    an accepted proof carries only the writer's nodes, and yields only the writer's data."""
    rnd = random.Random(7)
    kp = crypto.key_pair(bytes([6]) * 32)
    blocks = [rnd.randbytes(rnd.randrange(1, 30)) for _ in range(45)]
    w, store = compat_writer(blocks, kp)
    accepted = rejected = 0
    for _ in range(300):
        start = rnd.choice([w.length, rnd.randrange(1, w.length + 1)])
        reader, rstore = reader_at(w, start)
        for i in rnd.sample(range(start), rnd.randrange(0, start + 1)):
            apply(reader, rstore, _full_path_proof(w, blocks, i, reader))
        i = rnd.randrange(w.length)
        req = wire.Request(1, 0)
        if start < w.length and rnd.random() < 0.5:
            req.upgrade = wire.RequestUpgrade(start, w.length - start)
        if req.upgrade is None and i >= start:
            i = rnd.randrange(start)
        known = i < start
        nodes = reader.missing_nodes(i) if known else 0
        if known and rnd.random() < 0.5:
            nodes = len(_full_path_proof(w, blocks, i, reader).block.nodes)  # the whole path
        if req.upgrade is not None and not known:
            nodes = 0
        req.block = wire.RequestBlock(i, nodes)
        try:
            data = w.proof(req)
        except BlockNotFoundError:
            continue
        assert data.block is not None
        data.block.value = blocks[i]
        bad = mutate(rnd, data)
        try:
            got = reader.verify(bad)
        except ProofError:
            rejected += 1
            continue
        accepted += 1
        for lst in node_lists(bad)[:1]:
            assert all(store.get_node(n.index) == n for n in lst)
        assert_only_the_writers(got, w, store, blocks)
    assert rejected > 100
