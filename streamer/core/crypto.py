"""Hypercore-compatible hashing, keys and signatures (docs/feed.md, compat mode).

BLAKE2b-256 leaf/parent/tree hashes, Ed25519 key pairs and signatures (PyNaCl), namespaces,
discovery keys and replication capabilities. Pure functions: never touches storage or the network.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import nacl.bindings
import nacl.exceptions

_U64 = struct.Struct("<Q")


class NodeLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def hash(self) -> bytes: ...


class KeyPair(NamedTuple):
    public_key: bytes  # 32 bytes
    secret_key: bytes  # 64 bytes = seed || public key


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _namespace(name: str, count: int) -> list[bytes]:
    ns = _h(name.encode())
    return [_h(ns + bytes([i])) for i in range(count)]


(
    TREE,
    REPLICATE_INITIATOR,
    REPLICATE_RESPONDER,
    MANIFEST,
    DEFAULT_NAMESPACE,
    DEFAULT_ENCRYPTION,
) = _namespace("hypercore", 6)

_LEAF = b"\x00"
_PARENT = b"\x01"
_ROOT = b"\x02"


def key_pair(seed: bytes | None = None) -> KeyPair:
    """An Ed25519 key pair; deterministic for a given 32-byte seed, random without one."""
    if seed is None:
        seed = os.urandom(32)
    if len(seed) != 32:
        raise ValueError("a key pair seed must be 32 bytes")
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
    return KeyPair(pk, sk)


def leaf_hash(block: bytes) -> bytes:
    """Hash of a data block: H(0x00 || u64(len) || block)."""
    h = hashlib.blake2b(_LEAF, digest_size=32)
    h.update(_U64.pack(len(block)))
    h.update(block)
    return h.digest()


def parent_hash(a: NodeLike, b: NodeLike) -> bytes:
    """Hash of the parent of two sibling nodes (ordered by index)."""
    if a.index > b.index:
        a, b = b, a
    return _h(_PARENT + _U64.pack(a.size + b.size) + a.hash + b.hash)


def parent_hash_raw(size: int, left_hash: bytes, right_hash: bytes) -> bytes:
    """parent_hash without node objects, for hot loops: size is the sum of both children's sizes."""
    return _h(_PARENT + _U64.pack(size) + left_hash + right_hash)


def tree_hash(roots: Sequence[NodeLike]) -> bytes:
    """Hash of a tree's full roots (left to right): H(0x02 || (hash || u64 index || u64 size)*)."""
    h = hashlib.blake2b(_ROOT, digest_size=32)
    for r in roots:
        h.update(r.hash)
        h.update(_U64.pack(r.index))
        h.update(_U64.pack(r.size))
    return h.digest()


def signable(tree_hash: bytes, length: int, fork: int) -> bytes:
    """Compat signable bytes: TREE || treeHash || u64 length || u64 fork (80 bytes)."""
    return TREE + tree_hash + _U64.pack(length) + _U64.pack(fork)


def signable_legacy(tree_hash: bytes, length: int, fork: int) -> bytes:
    """v10.0 'legacy' signable: treeHash || u64 length || u64 fork (48 bytes)."""
    return tree_hash + _U64.pack(length) + _U64.pack(fork)


def signable_manifest(manifest_hash: bytes, tree_hash: bytes, length: int, fork: int) -> bytes:
    """Non-compat (manifest v>=1) signable: TREE || manifestHash || treeHash || u64 length || u64 fork."""
    return TREE + manifest_hash + tree_hash + _U64.pack(length) + _U64.pack(fork)


def sign(message: bytes, secret_key: bytes) -> bytes:
    """Detached deterministic Ed25519 signature (64 bytes)."""
    return nacl.bindings.crypto_sign(message, secret_key)[:64]


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """True iff signature is a valid Ed25519 signature of message by public_key; never raises."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def discovery_key(key: bytes) -> bytes:
    """Keyed BLAKE2b-256 of b'hypercore' with the core key: safe to announce publicly."""
    return hashlib.blake2b(b"hypercore", digest_size=32, key=key).digest()


def replication_capability(handshake_hash: bytes, key: bytes, initiator: bool) -> bytes:
    """Proof that the sender knows the core key, bound to one secure-channel handshake."""
    ns = REPLICATE_INITIATOR if initiator else REPLICATE_RESPONDER
    return hashlib.blake2b(ns + key, digest_size=32, key=handshake_hash).digest()


def default_manifest(public_key: bytes) -> bytes:
    """Encoded default signer manifest (v1, blake2b, quorum 1, one ed25519 signer)."""
    return b"\x01\x00\x00\x01\x01\x00" + DEFAULT_NAMESPACE + public_key


def manifest_hash(encoded_manifest: bytes) -> bytes:
    """The non-compat core key: H(MANIFEST || manifest)."""
    return _h(MANIFEST + encoded_manifest)


def multisig_single(signature: bytes) -> bytes:
    """The 68-byte multiSignature a single-signer (default manifest) core stores."""
    return b"\x01\x00" + signature + b"\x00\x00"


def multisig_single_signature(multisig: bytes) -> bytes | None:
    """The raw Ed25519 signature of a single-signer, unpatched multiSignature; None if it is not one."""
    if len(multisig) != 68 or multisig[:2] != b"\x01\x00" or multisig[66:] != b"\x00\x00":
        return None
    return multisig[2:66]
