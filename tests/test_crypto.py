"""Hashes, keys, namespaces and signatures against the npm hypercore 11 vectors."""

from __future__ import annotations

import pytest

from streamer.core import crypto
from streamer.core.merkle import (
    CompatVerifier,
    DefaultManifestVerifier,
    MemoryNodeStore,
    MerkleTree,
    Node,
)

NAMES = [
    "TREE",
    "REPLICATE_INITIATOR",
    "REPLICATE_RESPONDER",
    "MANIFEST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_ENCRYPTION",
]


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


@pytest.fixture(scope="module")
def kp(vectors: dict) -> crypto.KeyPair:
    return crypto.key_pair(bytes.fromhex(vectors["keys"]["seed"]))


def test_constants(vectors: dict) -> None:
    c = vectors["constants"]
    for name in NAMES:
        assert getattr(crypto, name).hex() == c[name], name
    import hashlib

    assert hashlib.blake2b(b"hypercore", digest_size=32).hexdigest() == c["blake2b_hypercore"]


def test_keys(vectors: dict, kp: crypto.KeyPair) -> None:
    k = vectors["keys"]
    assert kp.public_key.hex() == k["publicKey"]
    assert kp.secret_key.hex() == k["secretKey"]
    assert crypto.discovery_key(kp.public_key).hex() == k["discoveryKey_of_publicKey"]
    manifest = crypto.default_manifest(kp.public_key)
    assert manifest.hex() == k["default_manifest_encoded"]
    assert (crypto.MANIFEST + manifest).hex() == k["manifest_hash_preimage"]
    mh = crypto.manifest_hash(manifest)
    assert mh.hex() == k["manifest_hash_key"] == k["Hypercore_key_of_publicKey"]
    assert crypto.discovery_key(mh).hex() == k["discoveryKey_of_manifest_hash_key"]
    assert kp.public_key.hex() == k["Hypercore_key_of_publicKey_compat"]
    for kind in ("compat", "legacy", "default"):
        core = vectors["cores"][kind]
        assert crypto.discovery_key(bytes.fromhex(core["key"])).hex() == core["discoveryKey"]


def test_random_key_pairs_differ_and_sign() -> None:
    a, b = crypto.key_pair(), crypto.key_pair()
    assert a.public_key != b.public_key and len(a.secret_key) == 64
    sig = crypto.sign(b"m", a.secret_key)
    assert crypto.verify(b"m", sig, a.public_key)
    assert not crypto.verify(b"m", sig, b.public_key)
    assert not crypto.verify(b"n", sig, a.public_key)
    assert not crypto.verify(b"m", sig[:63], a.public_key)
    assert not crypto.verify(b"m", sig, a.public_key[:31])
    with pytest.raises(ValueError):
        crypto.key_pair(b"short")


def test_replication_capability(vectors: dict) -> None:
    rc = vectors["replication_capability"]
    hh, key = bytes.fromhex(rc["handshakeHash"]), bytes.fromhex(rc["key"])
    assert crypto.replication_capability(hh, key, True).hex() == rc["initiator"]
    assert crypto.replication_capability(hh, key, False).hex() == rc["responder"]


def test_leaf_hashes(vectors: dict) -> None:
    for b, value in zip(vectors["blocks"], block_values(vectors), strict=True):
        assert len(value) == b["byteLength"]
        assert crypto.leaf_hash(value).hex() == b["leaf_hash"]


def test_parent_and_empty_tree(vectors: dict) -> None:
    values = block_values(vectors)
    a = Node(0, 1, crypto.leaf_hash(values[0]))
    b = Node(2, 1, crypto.leaf_hash(values[1]))
    pe = vectors["parent_example"]
    assert crypto.parent_hash(a, b).hex() == pe["hash"]
    assert crypto.parent_hash(b, a).hex() == pe["hash"]  # argument order does not matter
    assert crypto.tree_hash([]).hex() == vectors["empty_tree_hash"]


def test_tree_nodes_and_compat_roots(vectors: dict, kp: crypto.KeyPair) -> None:
    values = block_values(vectors)
    store = MemoryNodeStore()
    tree = MerkleTree(store, CompatVerifier(kp.public_key))
    for i, entry in enumerate(vectors["tree_nodes_by_length"]):
        batch = tree.append([values[i]], kp.secret_key)
        store.put(batch.nodes)
        tree.commit(batch)
        assert tree.length == entry["length"]
        assert sorted(store.nodes) == [n["index"] for n in entry["nodes"]]
        for n in entry["nodes"]:
            assert store.get_node(n["index"]) == node(n)
        c = vectors["cores"]["compat"]["lengths"][i]
        assert [node(r) for r in c["roots"]] == tree.roots
        assert tree.tree_hash().hex() == c["tree_hash"]
        assert crypto.tree_hash(tree.roots).hex() == c["tree_hash"]
        assert tree.byte_length == c["byteLength"]


@pytest.mark.parametrize("kind", ["compat", "legacy", "default"])
def test_signables_and_signatures(vectors: dict, kp: crypto.KeyPair, kind: str) -> None:
    values = block_values(vectors)
    compat = vectors["cores"]["compat"]["lengths"]
    mh = crypto.manifest_hash(crypto.default_manifest(kp.public_key))
    for i, entry in enumerate(vectors["cores"][kind]["lengths"]):
        th = bytes.fromhex(compat[i]["tree_hash"])
        length, fork = entry["length"], entry["fork"]
        if kind == "compat":
            s = crypto.signable(th, length, fork)
        elif kind == "legacy":
            s = crypto.signable_legacy(th, length, fork)
        else:
            s = crypto.signable_manifest(mh, th, length, fork)
        assert s.hex() == entry["signable"]
        raw = crypto.sign(s, kp.secret_key)
        if kind == "default":
            assert raw.hex() == entry["raw_ed25519_signature"]
            assert crypto.multisig_single(raw).hex() == entry["signature"]
            assert crypto.multisig_single_signature(bytes.fromhex(entry["signature"])) == raw
        else:
            assert raw.hex() == entry["signature"]
        assert crypto.verify(s, raw, kp.public_key)
    # the verifiers sign exactly as the reference cores do, length by length
    verifier = {
        "compat": CompatVerifier(kp.public_key),
        "legacy": CompatVerifier(kp.public_key, legacy=True),
        "default": DefaultManifestVerifier(kp.public_key),
    }[kind]
    store = MemoryNodeStore()
    tree = MerkleTree(store, verifier)
    for i, entry in enumerate(vectors["cores"][kind]["lengths"]):
        batch = tree.append([values[i]], kp.secret_key)
        assert batch.signature is not None and batch.signature.hex() == entry["signature"]
        store.put(batch.nodes)
        tree.commit(batch)
        assert tree.signature_valid()
        assert tree.byte_length == entry["byteLength"]


def test_truncation_signatures(vectors: dict, kp: crypto.KeyPair) -> None:
    values = block_values(vectors)
    store = MemoryNodeStore()
    tree = MerkleTree(store, CompatVerifier(kp.public_key))
    batch = tree.append(values, kp.secret_key)
    store.put(batch.nodes)
    tree.commit(batch)
    steps = vectors["truncation"]["steps"]
    trunc = tree.truncate(steps[0]["length"], kp.secret_key)
    tree.commit(trunc)
    for n in [n for n in store.nodes if n >= 2 * tree.length]:
        del store.nodes[n]
    assert (tree.length, tree.fork) == (steps[0]["length"], steps[0]["fork"])
    assert tree.tree_hash().hex() == steps[0]["tree_hash"]
    assert crypto.signable(tree.tree_hash(), tree.length, tree.fork).hex() == steps[0]["signable"]
    assert tree.signature is not None and tree.signature.hex() == steps[0]["signature"]
    batch = tree.append([b"X"], kp.secret_key)
    store.put(batch.nodes)
    tree.commit(batch)
    assert (tree.length, tree.fork) == (steps[1]["length"], steps[1]["fork"])
    assert tree.tree_hash().hex() == steps[1]["tree_hash"]
    assert crypto.signable(tree.tree_hash(), tree.length, tree.fork).hex() == steps[1]["signable"]
    assert tree.signature is not None and tree.signature.hex() == steps[1]["signature"]
