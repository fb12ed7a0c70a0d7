"""Feed on disk: the reference vectors (npm hypercore 11), sparse readers, proofs and bad input."""

from __future__ import annotations

import os
import random
import shutil
import stat
from pathlib import Path

import pytest

from streamer.core import crypto
from streamer.core.errors import (
    BlockNotFoundError,
    CorruptFeedError,
    FeedError,
    KeyMismatchError,
    NotAFeedError,
    NotWritableError,
    ProofError,
)
from streamer.core.feed import ApplyResult, Feed, FeedEvent
from streamer.core.storage import Storage
from streamer.core.wire import (
    Data,
    DataBlock,
    DataHash,
    DataUpgrade,
    Node,
    Request,
    RequestBlock,
    RequestUpgrade,
)


def vector_blocks(vectors: dict) -> list[bytes]:
    out = []
    for b in vectors["blocks"]:
        out.append(
            bytes.fromhex(b["value_hex"])
            if b["value_hex"] is not None
            else b"\xab" * b["byteLength"]
        )
    return out


def vector_pair(vectors: dict) -> crypto.KeyPair:
    return crypto.key_pair(bytes.fromhex(vectors["keys"]["seed"]))


def nodes_of(items: list[dict]) -> list[Node]:
    return [Node(n["index"], n["size"], bytes.fromhex(n["hash"])) for n in items]


def data_of(proof: dict) -> Data:
    """A vectors.json proof as the wire.Data a peer would send."""
    data = Data(request=1, fork=proof["fork"])
    if proof["block"]:
        b = proof["block"]
        data.block = DataBlock(b["index"], bytes.fromhex(b["value_hex"]), nodes_of(b["nodes"]))
    if proof["hash"]:
        data.hash = DataHash(proof["hash"]["index"], nodes_of(proof["hash"]["nodes"]))
    if proof["upgrade"]:
        u = proof["upgrade"]
        data.upgrade = DataUpgrade(
            u["start"], u["length"], nodes_of(u["nodes"]), nodes_of(u["additionalNodes"]),
            bytes.fromhex(u["signature"]),
        )  # fmt: skip
    return data


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def upgrade_request(start: int, length: int, block: int | None = None, nodes: int = 0) -> Request:
    return Request(
        1, 0,
        block=RequestBlock(block, nodes) if block is not None else None,
        upgrade=RequestUpgrade(start, length) if length else None,
    )  # fmt: skip


@pytest.fixture
def writer(tmp_path: Path, vectors: dict) -> Feed:
    feed = Feed.create(tmp_path / "writer", vector_pair(vectors))
    feed.append(vector_blocks(vectors))
    yield feed
    feed.close()


# ---------------------------------------------------------------- the reference vectors


def test_a_feed_built_on_disk_matches_the_reference_core_at_every_length(
    tmp_path: Path, vectors: dict
) -> None:
    pair = vector_pair(vectors)
    blocks = vector_blocks(vectors)
    expected = vectors["cores"]["compat"]["lengths"]
    with Feed.create(tmp_path / "feed", pair) as feed:
        assert feed.key.hex() == vectors["cores"]["compat"]["key"]
        assert feed.discovery_key.hex() == vectors["cores"]["compat"]["discoveryKey"]
        assert feed.tree_hash().hex() == vectors["empty_tree_hash"]
        for block, want in zip(blocks, expected, strict=True):
            feed.append([block])
            assert feed.length == want["length"]
            assert feed.byte_length == want["byteLength"]
            assert feed.tree_hash().hex() == want["tree_hash"]
            assert feed.signature is not None and feed.signature.hex() == want["signature"]
    # The tree file holds exactly the reference's nodes at 40 * index.
    raw = (tmp_path / "feed" / "tree").read_bytes()
    for node in vectors["tree_nodes_by_length"][-1]["nodes"]:
        at = 40 * node["index"]
        assert raw[at : at + 40] == node["size"].to_bytes(8, "little") + bytes.fromhex(node["hash"])
    with Feed.open(tmp_path / "feed") as reopened:
        assert reopened.signature.hex() == expected[-1]["signature"]
        assert [reopened.get(i) for i in range(8)] == blocks
        reopened.verify_all()


def test_appending_all_blocks_in_one_call_signs_the_same_state(
    tmp_path: Path, vectors: dict
) -> None:
    with Feed.create(tmp_path / "feed", vector_pair(vectors)) as feed:
        assert feed.append(vector_blocks(vectors)) == 8
        assert feed.signature.hex() == vectors["cores"]["compat"]["lengths"][-1]["signature"]


def test_a_default_manifest_core_signs_like_the_reference(tmp_path: Path, vectors: dict) -> None:
    pair = vector_pair(vectors)
    with Feed.open(
        tmp_path / "default",
        secret_key=pair.secret_key,
        create=True,
        manifest_signer=pair.public_key,
    ) as feed:
        assert feed.key.hex() == vectors["cores"]["default"]["key"]
        for block, want in zip(
            vector_blocks(vectors), vectors["cores"]["default"]["lengths"], strict=True
        ):
            feed.append([block])
            assert feed.signature.hex() == want["signature"]


def reader_for(tmp_path: Path, vectors: dict, proof: dict, name: str) -> Feed:
    """A reader in the state the reference receiver was in when it got this proof."""
    pair = vector_pair(vectors)
    blocks = vector_blocks(vectors)
    default = proof["core"] == "default"
    signer = pair.public_key if default else None
    key = bytes.fromhex(proof["core_key"])
    reader = Feed.open(tmp_path / name, key=key, create=True, manifest_signer=signer)
    upgrade = proof["upgrade"]
    base = upgrade["start"] if upgrade else 8
    if base:
        # Bring the reader to the receiver's length with a proof from our own writer.
        source = Feed.open(
            tmp_path / (name + "-source"), secret_key=pair.secret_key, create=True,
            manifest_signer=signer,
        )  # fmt: skip
        source.append(blocks[:base])
        reader.verify_and_apply(source.proof(upgrade_request(0, base)))
        source.close()
    return reader


def test_the_seven_reference_proofs_verify_and_apply(tmp_path: Path, vectors: dict) -> None:
    for n, proof in enumerate(vectors["proofs"]):
        reader = reader_for(tmp_path, vectors, proof, f"reader{n}")
        result = reader.verify_and_apply(data_of(proof))
        if proof["upgrade"]:
            assert result.upgraded
            # The proof carries the sender's current signature, so the reader reaches its length.
            assert reader.length >= proof["upgrade"]["start"] + proof["upgrade"]["length"]
            assert reader.signature.hex() == proof["upgrade"]["signature"]
        if proof["block"]:
            index = proof["block"]["index"]
            assert result.block == index
            assert reader.get(index) == bytes.fromhex(proof["block"]["value_hex"])
        reader.verify_all()
        reader.close()
        with Feed.open(tmp_path / f"reader{n}") as reopened:
            reopened.verify_all()
            if proof["block"]:
                assert reopened.has(proof["block"]["index"])


def test_the_reference_reader_check_reaches_length_8(tmp_path: Path, vectors: dict) -> None:
    check = vectors["reader_apply_check"]
    proof = next(p for p in vectors["proofs"] if p["name"] == check["proof"])
    with reader_for(tmp_path, vectors, proof, "reader") as reader:
        reader.verify_and_apply(data_of(proof))
        assert reader.length == check["reader_length_after"]
        assert reader.get(1) == b"b"
        assert reader.present_ranges() == [(1, 2)]


def tamperings(data: Data) -> list[tuple[str, Data]]:
    """Copies of a valid proof, each with one thing wrong."""
    out: list[tuple[str, Data]] = []

    def copy() -> Data:
        c = data_of_data(data)
        return c

    if data.block is not None:
        c = copy()
        c.block.value = bytes([c.block.value[0] ^ 1]) + c.block.value[1:]
        out.append(("block value", c))
        c = copy()
        c.block.index += 1
        out.append(("block index", c))
        if c.block.nodes:
            c = copy()
            n = c.block.nodes[-1]
            c.block.nodes[-1] = Node(n.index, n.size, bytes([n.hash[0] ^ 1]) + n.hash[1:])
            out.append(("block node hash", c))
            c = copy()
            n = c.block.nodes[0]
            c.block.nodes[0] = Node(n.index, n.size + 1, n.hash)
            out.append(("block node size", c))
            c = copy()
            c.block.nodes.pop()
            out.append(("missing block node", c))
    if data.hash is not None:
        c = copy()
        n = c.hash.nodes[0]
        c.hash.nodes[0] = Node(n.index, n.size, bytes(32))
        out.append(("hash target", c))
    if data.upgrade is not None:
        c = copy()
        sig = c.upgrade.signature
        c.upgrade.signature = sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]
        out.append(("signature", c))
        c = copy()
        c.upgrade.length += 1
        out.append(("upgrade length", c))
        nodes = c.upgrade.nodes or c.upgrade.additional_nodes
        if nodes:
            c = copy()
            target = c.upgrade.nodes or c.upgrade.additional_nodes
            n = target[0]
            target[0] = Node(n.index, n.size, bytes([n.hash[0] ^ 0x80]) + n.hash[1:])
            out.append(("upgrade node", c))
        c = copy()
        c.fork = 1
        out.append(("fork", c))
    return out


def data_of_data(data: Data) -> Data:
    c = Data(request=data.request, fork=data.fork)
    if data.block is not None:
        c.block = DataBlock(data.block.index, data.block.value, list(data.block.nodes))
    if data.hash is not None:
        c.hash = DataHash(data.hash.index, list(data.hash.nodes))
    if data.upgrade is not None:
        u = data.upgrade
        c.upgrade = DataUpgrade(
            u.start, u.length, list(u.nodes), list(u.additional_nodes), u.signature
        )
    return c


def test_tampered_reference_proofs_are_rejected_and_leave_the_files_identical(
    tmp_path: Path, vectors: dict
) -> None:
    for n, proof in enumerate(vectors["proofs"]):
        reader = reader_for(tmp_path, vectors, proof, f"reader{n}")
        before = snapshot(tmp_path / f"reader{n}")
        state = (reader.length, reader.signature, reader.present_ranges())
        for what, bad in tamperings(data_of(proof)):
            with pytest.raises(ProofError):
                reader.verify_and_apply(bad)
            assert snapshot(tmp_path / f"reader{n}") == before, f"{proof['name']}: {what}"
            assert (reader.length, reader.signature, reader.present_ranges()) == state
        # The untampered proof still applies afterwards.
        reader.verify_and_apply(data_of(proof))
        reader.close()


# ---------------------------------------------------------------- writer and reader behaviour


def test_create_without_a_key_pair_keeps_the_secret_key_in_the_directory(tmp_path: Path) -> None:
    with Feed.create(tmp_path / "feed") as feed:
        key = feed.key
        feed.append([b"one"])
    secret = tmp_path / "feed" / "secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    with Feed.open(tmp_path / "feed") as reopened:
        assert reopened.writable and reopened.key == key
        assert reopened.append([b"two"]) == 2


def test_create_on_an_existing_feed_reopens_it_or_refuses_another_key(tmp_path: Path) -> None:
    pair = crypto.key_pair(b"\x05" * 32)
    with Feed.create(tmp_path / "feed", pair) as feed:
        feed.append([b"x"])
    with Feed.create(tmp_path / "feed", pair) as again:
        assert again.length == 1 and again.writable
    with pytest.raises(KeyMismatchError):
        Feed.create(tmp_path / "feed", crypto.key_pair(b"\x06" * 32))


def test_open_checks_the_key_and_the_secret_key(tmp_path: Path) -> None:
    pair = crypto.key_pair(b"\x05" * 32)
    other = crypto.key_pair(b"\x06" * 32)
    Feed.create(tmp_path / "feed", pair).close()
    with pytest.raises(KeyMismatchError, match="holds the feed"):
        Feed.open(tmp_path / "feed", key=other.public_key)
    with pytest.raises(KeyMismatchError, match="does not belong"):
        Feed.open(tmp_path / "feed", secret_key=other.secret_key)
    with pytest.raises(NotAFeedError):
        Feed.open(tmp_path / "none")
    with pytest.raises(NotAFeedError):
        Feed.open(tmp_path / "none", secret_key=pair.secret_key)
    with Feed.open(tmp_path / "feed", key=pair.public_key) as reader:
        assert not reader.writable
        with pytest.raises(NotWritableError, match="secret key"):
            reader.append([b"x"])


def test_get_and_has_out_of_range_and_missing(tmp_path: Path, writer: Feed) -> None:
    with pytest.raises(BlockNotFoundError, match="out of range"):
        writer.get(8)
    with pytest.raises(BlockNotFoundError, match="out of range"):
        writer.get(-1)
    assert not writer.has(8) and writer.has(7)
    with Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader:
        reader.verify_and_apply(writer.proof(upgrade_request(0, 8)))
        assert reader.length == 8 and reader.blocks_present == 0
        with pytest.raises(BlockNotFoundError, match="not stored"):
            reader.get(3)
        with pytest.raises(BlockNotFoundError):
            reader.proof(upgrade_request(0, 0, block=3))


def test_a_reader_downloads_blocks_in_any_order_while_the_writer_grows(tmp_path: Path) -> None:
    rng = random.Random(7)
    blocks = [os.urandom(rng.randrange(0, 3000)) for _ in range(150)]
    events: list[FeedEvent] = []
    with (
        Feed.create(tmp_path / "w", crypto.key_pair()) as writer,
        Feed.open(tmp_path / "r", key=writer.key, create=True) as reader,
    ):
        reader.add_listener(events.append)
        have: set[int] = set()
        for step in range(0, 150, 30):
            writer.append(blocks[step : step + 30])
            reader.verify_and_apply(
                writer.proof(upgrade_request(reader.length, writer.length - reader.length))
            )
            for index in rng.sample(range(writer.length), 20):
                data = writer.proof(
                    upgrade_request(0, 0, block=index, nodes=reader.missing_nodes(index))
                )
                result = reader.verify_and_apply(data)
                assert result.block == (None if index in have else index)
                have.add(index)
        assert reader.length == 150
        assert reader.blocks_present == len(have)
        for index in have:
            assert reader.get(index) == blocks[index]
        reader.verify_all()
        ranges = reader.present_ranges()
        assert sum(e - s for s, e in ranges) == len(have)
        assert reader.contiguous_length == (ranges[0][1] if ranges and ranges[0][0] == 0 else 0)
    assert sum(1 for e in events if e.upgraded) == 5
    assert {e.start for e in events if e.end > e.start} == have
    with Feed.open(tmp_path / "r") as reopened:
        assert reopened.blocks_present == len(have)
        reopened.verify_all()


def test_a_reader_with_blocks_serves_them_to_another_reader(tmp_path: Path, writer: Feed) -> None:
    with (
        Feed.open(tmp_path / "a", key=writer.key, create=True) as first,
        Feed.open(tmp_path / "b", key=writer.key, create=True) as second,
    ):
        first.verify_and_apply(writer.proof(upgrade_request(0, 8, block=4)))
        second.verify_and_apply(first.proof(upgrade_request(0, 8, block=4)))
        assert second.get(4) == b"\xab" * 65536
        assert second.signature == writer.signature


def test_listeners_hear_appends_after_commit(tmp_path: Path) -> None:
    seen: list[tuple[FeedEvent, int]] = []
    with Feed.create(tmp_path / "feed", crypto.key_pair()) as feed:
        feed.add_listener(lambda e: seen.append((e, Feed.open(tmp_path / "feed").length)))
        feed.add_listener(lambda e: 1 / 0)  # a broken listener must not break the append
        feed.append([b"a", b"b"])
        feed.append([b"c"])
    assert [e for e, _ in seen] == [FeedEvent(2, 0, 2, True, True), FeedEvent(3, 2, 3, True, True)]
    # The event fires only once the head is on disk: a fresh open already sees the new length.
    assert [length for _, length in seen] == [2, 3]


def test_append_rejects_a_bare_bytes_object_and_closed_feeds(tmp_path: Path) -> None:
    feed = Feed.create(tmp_path / "feed", crypto.key_pair())
    with pytest.raises(TypeError):
        feed.append(b"abc")
    assert feed.append([]) == 0
    feed.close()
    with pytest.raises(FeedError, match="closed"):
        feed.append([b"x"])


def test_a_proof_for_a_block_we_lack_cannot_be_applied_without_an_upgrade(
    tmp_path: Path, writer: Feed
) -> None:
    with Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader:
        before = snapshot(tmp_path / "reader")
        with pytest.raises(ProofError):
            reader.verify_and_apply(writer.proof(upgrade_request(0, 0, block=2, nodes=3)))
        assert snapshot(tmp_path / "reader") == before


# ---------------------------------------------------------------- damaged directories


def damaged(tmp_path: Path, vectors: dict) -> Path:
    with Feed.create(tmp_path / "feed", vector_pair(vectors)) as feed:
        feed.append(vector_blocks(vectors))
    return tmp_path / "feed"


def test_a_flipped_data_byte_is_named_by_verify_all(tmp_path: Path, vectors: dict) -> None:
    path = damaged(tmp_path, vectors)
    raw = bytearray((path / "data").read_bytes())
    raw[3] ^= 1  # block 3 ('hello world') starts at byte 3
    (path / "data").write_bytes(bytes(raw))
    with Feed.open(path) as feed:
        with pytest.raises(CorruptFeedError, match="block 3 is bad"):
            feed.verify_all()


def test_a_damaged_inner_tree_node_is_found_by_verify_all(tmp_path: Path, vectors: dict) -> None:
    path = damaged(tmp_path, vectors)
    raw = bytearray((path / "tree").read_bytes())
    raw[40 * 5 + 8] ^= 1  # node 5 = parent of blocks 2 and 3; not a root
    (path / "tree").write_bytes(bytes(raw))
    with Feed.open(path) as feed:
        with pytest.raises(CorruptFeedError, match="block 0 is bad: tree node 3 .* 1 and 5"):
            feed.verify_all()


def test_a_truncated_tree_or_data_file_is_refused_on_open(tmp_path: Path, vectors: dict) -> None:
    path = damaged(tmp_path, vectors)
    original = (path / "tree").read_bytes()
    (path / "tree").write_bytes(original[: 40 * 7])  # root 7 gone
    with pytest.raises(CorruptFeedError, match="tree file lacks the roots"):
        Feed.open(path)
    (path / "tree").write_bytes(original)
    (path / "data").write_bytes((path / "data").read_bytes()[:-1])
    with pytest.raises(CorruptFeedError, match="data file is truncated"):
        Feed.open(path)


def test_a_damaged_root_or_signature_is_refused_on_open(tmp_path: Path, vectors: dict) -> None:
    path = damaged(tmp_path, vectors)
    raw = bytearray((path / "tree").read_bytes())
    raw[40 * 7 + 20] ^= 1
    (path / "tree").write_bytes(bytes(raw))
    with pytest.raises(CorruptFeedError, match="roots do not match"):
        Feed.open(path)


def test_a_damaged_secret_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    from streamer.core.errors import KeyFileError

    Feed.create(tmp_path / "feed").close()
    (tmp_path / "feed" / "secret_key").write_text("zz\n")
    with pytest.raises(KeyFileError, match="not a key file"):
        Feed.open(tmp_path / "feed")


def test_two_writers_on_one_directory_are_refused(tmp_path: Path) -> None:
    pair = crypto.key_pair(b"\x09" * 32)
    with Feed.create(tmp_path / "feed", pair) as first:
        first.append([b"a"])
        with Feed.open(tmp_path / "feed", secret_key=pair.secret_key) as second:
            with pytest.raises(FeedError, match="another process"):
                second.append([b"b"])
    stale = Feed.open(tmp_path / "feed", secret_key=pair.secret_key)
    with Feed.open(tmp_path / "feed", secret_key=pair.secret_key) as fresh:
        fresh.append([b"c"])
    with pytest.raises(FeedError, match="changed on disk"):
        stale.append([b"d"])
    stale.close()
    with Feed.open(tmp_path / "feed") as feed:
        assert [feed.get(i) for i in range(feed.length)] == [b"a", b"c"]


def crashed_copy(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A copy of a writer's directory taken while it still had tree nodes pending (as a crash
    would leave it): 30 blocks with a flushed tree, then 5 appends of one block each."""
    blocks = [bytes([i]) * (100 + i) for i in range(35)]
    feed = Feed.create(tmp_path / "live", crypto.key_pair(b"\x0a" * 32))
    feed.append(blocks[:30])
    for b in blocks[30:]:
        feed.append([b])
    shutil.copytree(tmp_path / "live", tmp_path / "copy")
    feed.close()
    return tmp_path / "copy", blocks


def test_a_writer_flushes_its_tree_every_few_appends_and_records_the_rest(tmp_path: Path) -> None:
    path, _ = crashed_copy(tmp_path)
    store = Storage.open(path)
    assert (store.head.tree_flushed, store.head.pending) == (30, (130, 131, 132, 133, 134))
    store.close()
    # A clean close flushes the tree, so nothing is left pending.
    store = Storage.open(tmp_path / "live")
    assert (store.head.tree_flushed, store.head.pending) == (35, ())
    store.close()


def test_tree_nodes_lost_in_a_power_cut_are_rebuilt_from_the_data(tmp_path: Path) -> None:
    path, blocks = crashed_copy(tmp_path)
    raw = bytearray((path / "tree").read_bytes())
    raw[40 * 55 : 40 * 56] = bytes(40)  # node 55 (blocks 24..31) was made by a pending append
    (path / "tree").write_bytes(bytes(raw[: 40 * 60]))  # and every node from leaf 30 on is gone
    with Feed.open(path, secret_key=crypto.key_pair(b"\x0a" * 32).secret_key) as feed:
        assert feed.length == 35
        feed.verify_all()
        assert [feed.get(i) for i in range(35)] == blocks
        assert feed.append([b"more"]) == 36
    with Feed.open(path) as feed:
        feed.verify_all()


def test_damaged_data_of_pending_blocks_is_refused(tmp_path: Path) -> None:
    path, _ = crashed_copy(tmp_path)
    raw = bytearray((path / "data").read_bytes())
    raw[-3] ^= 0xFF
    (path / "data").write_bytes(bytes(raw))
    with pytest.raises(CorruptFeedError, match="do not match the signed tree"):
        Feed.open(path)


def test_a_duplicate_proof_changes_nothing(tmp_path: Path, writer: Feed) -> None:
    with Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader:
        data = writer.proof(upgrade_request(0, 8, block=3))
        assert reader.verify_and_apply(data).block == 3
        before = snapshot(tmp_path / "reader")
        again = reader.proof(upgrade_request(0, 0, block=3, nodes=0))
        assert reader.verify_and_apply(again) == ApplyResult(False, 8, None)
        assert snapshot(tmp_path / "reader") == before


def test_a_reader_batches_its_flushes_and_flush_or_close_records_everything(
    tmp_path: Path, writer: Feed
) -> None:
    reader = Feed.open(tmp_path / "reader", key=writer.key, create=True)
    reader.verify_and_apply(writer.proof(upgrade_request(0, 8)))
    for index in (1, 5, 6):
        reader.verify_and_apply(writer.proof(upgrade_request(0, 0, block=index, nodes=3)))
    assert reader.present_ranges() == [(1, 2), (5, 7)]  # served at once, before any flush
    shutil.copytree(tmp_path / "reader", tmp_path / "killed")
    with Feed.open(tmp_path / "killed") as killed:
        # A crash before the flush forgets the new length and the blocks (they are fetched
        # again), nothing worse.
        assert killed.length == 0 and killed.blocks_present == 0
        killed.verify_all()
    reader.flush()
    shutil.copytree(tmp_path / "reader", tmp_path / "flushed")
    with Feed.open(tmp_path / "flushed") as flushed:
        assert flushed.present_ranges() == [(1, 2), (5, 7)]
        flushed.verify_all()
    reader.verify_and_apply(writer.proof(upgrade_request(0, 0, block=0, nodes=1)))
    reader.close()
    with Feed.open(tmp_path / "reader") as reopened:
        assert reopened.present_ranges() == [(0, 2), (5, 7)]
        assert reopened.contiguous_length == 2


def test_a_writer_signs_for_the_handshake_and_a_reader_cannot(tmp_path: Path, writer: Feed) -> None:
    signature = writer.sign(b"handshake value")
    assert crypto.verify(b"handshake value", signature, writer.key)
    with Feed.open(tmp_path / "reader", key=writer.key, create=True) as reader:
        with pytest.raises(NotWritableError):
            reader.sign(b"x")


def test_an_empty_reader_joins_a_truncated_feed_on_its_new_fork(
    tmp_path: Path, vectors: dict
) -> None:
    # vectors "truncation": the compat core truncated to 6 blocks signs (length 6, fork 1).
    step = vectors["truncation"]["steps"][0]
    with Feed.create(tmp_path / "six", vector_pair(vectors)) as six:
        six.append(vector_blocks(vectors)[:6])
        assert six.tree_hash().hex() == step["tree_hash"]
        data = six.proof(upgrade_request(0, 6, block=0))
    assert data.upgrade is not None
    data.fork = 1
    data.upgrade.signature = bytes.fromhex(step["signature"])
    with Feed.open(tmp_path / "reader", key=six.key, create=True) as reader:
        assert reader.verify_and_apply(data).upgraded
        assert (reader.fork, reader.length, reader.get(0)) == (1, 6, b"a")
        reader.verify_all()
        # Once it holds data on fork 1, an older fork's proof is refused, not applied.
        stale = data_of_data(data)
        stale.fork = 0
        with pytest.raises(ProofError, match="fork"):
            reader.verify_and_apply(stale)
    with Feed.open(tmp_path / "reader") as reopened:
        assert reopened.fork == 1 and reopened.signature.hex() == step["signature"]
