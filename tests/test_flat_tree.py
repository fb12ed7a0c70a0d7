"""Flat-tree index arithmetic against the reference vectors (flat-tree 1.13)."""

from __future__ import annotations

import random

from streamer.core import flat_tree as ft


def test_node_vectors(vectors: dict) -> None:
    for n in vectors["flat_tree"]["nodes"]:
        i = n["index"]
        assert ft.depth(i) == n["depth"], i
        assert ft.offset(i) == n["offset"], i
        assert ft.index_of(n["depth"], n["offset"]) == i
        assert ft.parent(i) == n["parent"], i
        assert ft.sibling(i) == n["sibling"], i
        children = ft.children(i)
        assert (list(children) if children else None) == n["children"], i
        assert list(ft.spans(i)) == n["spans"], i
        assert ft.left_span(i) == n["spans"][0] and ft.right_span(i) == n["spans"][1]
        assert ft.count(i) == n["count"], i


def test_full_roots_vectors(vectors: dict) -> None:
    for length, roots in vectors["flat_tree"]["full_roots_by_length"].items():
        assert ft.full_roots(2 * int(length)) == roots, length


def test_relations_hold_for_large_indexes() -> None:
    rnd = random.Random(7)
    for _ in range(2000):
        i = rnd.randrange(0, 1 << 60)
        p = ft.parent(i)
        assert ft.depth(p) == ft.depth(i) + 1
        assert i in ft.children(p)
        assert ft.sibling(ft.sibling(i)) == i
        assert ft.parent(ft.sibling(i)) == p
        lo, hi = ft.spans(p)
        assert lo <= i <= hi
        if i & 1:
            assert ft.children(i) == (ft.left_child(i), ft.right_child(i))
        assert ft.count_leaves(i) == 1 << ft.depth(i)


def test_full_roots_cover_every_leaf_once() -> None:
    for length in range(0, 300):
        covered = []
        for r in ft.full_roots(2 * length):
            lo, hi = ft.spans(r)
            covered.extend(range(lo, hi + 1, 2))
        assert covered == list(range(0, 2 * length, 2))
