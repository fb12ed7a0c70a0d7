"""Flat-tree index arithmetic (docs/feed.md): block i is leaf 2i, parents are odd.

Pure integer functions on node indexes; this module never touches hashes, storage or I/O.
"""

from __future__ import annotations


def depth(index: int) -> int:
    """Number of trailing 1-bits of the index (0 for leaves)."""
    # (x+1) & ~x isolates the lowest 0-bit; its bit position is the count of trailing ones
    return ((index + 1) & ~index).bit_length() - 1


def offset(index: int) -> int:
    """Position of the node among the nodes of its depth."""
    return index >> (depth(index) + 1)


def index_of(d: int, o: int) -> int:
    """The node at depth d and offset o."""
    return ((2 * o + 1) << d) - 1


def parent(index: int) -> int:
    d = depth(index)
    return index_of(d + 1, (index >> (d + 1)) >> 1)


def sibling(index: int) -> int:
    d = depth(index)
    return index_of(d, (index >> (d + 1)) ^ 1)


def children(index: int) -> tuple[int, int] | None:
    """Left and right child of a parent; None for a leaf."""
    if not index & 1:
        return None
    d = depth(index)
    o = index >> (d + 1)
    return index_of(d - 1, 2 * o), index_of(d - 1, 2 * o + 1)


def left_child(index: int) -> int:
    """The left child of a parent; a leaf is its own left child (as flat-tree does)."""
    if not index & 1:
        return index
    return index - (1 << (depth(index) - 1))


def right_child(index: int) -> int:
    if not index & 1:
        return index
    return index + (1 << (depth(index) - 1))


def spans(index: int) -> tuple[int, int]:
    """Leftmost and rightmost leaf index covered by the node."""
    d = depth(index)
    o = index >> (d + 1)
    return o << (d + 1), ((o + 1) << (d + 1)) - 2


def left_span(index: int) -> int:
    d = depth(index)
    return (index >> (d + 1)) << (d + 1)


def right_span(index: int) -> int:
    d = depth(index)
    return (((index >> (d + 1)) + 1) << (d + 1)) - 2


def count(index: int) -> int:
    """Number of nodes in the subtree rooted at index (itself included)."""
    return (2 << depth(index)) - 1


def count_leaves(index: int) -> int:
    """Number of leaves (blocks) under the node."""
    return 1 << depth(index)


def full_roots(leaf_end: int) -> list[int]:
    """Roots of the tree whose leaves are 0..leaf_end-2 (leaf_end = 2 * length), left to right."""
    if leaf_end & 1:
        raise ValueError("full_roots needs an even leaf index (2 * length)")
    roots: list[int] = []
    blocks = leaf_end >> 1
    off = 0
    while blocks:
        f = 1 << (blocks.bit_length() - 1)
        roots.append(2 * off + f - 1)
        off += f
        blocks -= f
    return roots
