"""The writer's upload admission (core.admission): a copy of a new block counts only while the
peer it went to stays connected."""

from __future__ import annotations

from streamer.core.admission import UploadAdmission
from streamer.core.scheduler import ReplicatorConfig


class _WriterFeed:
    """Just what UploadAdmission reads of a writer's feed: 20 blocks of 1,000 bytes."""

    writable = True
    length = 20
    byte_length = 20 * 1000


def _writer(root_grace: float = 0.0) -> UploadAdmission:
    # No extra budget: every copy after the first is refused.
    config = ReplicatorConfig(root_grace=root_grace)
    policy = UploadAdmission(_WriterFeed(), config)  # type: ignore[arg-type]
    for _ in range(3):
        policy.peer_added()
    return policy


def test_a_new_block_is_owed_again_when_its_only_holder_leaves() -> None:
    policy = _writer()
    assert policy.admit("a", 19, 0.0)
    policy.started()
    assert not policy.admit("b", 19, 0.1)  # served once: "b" gets it from "a"
    policy.peer_closed("a")  # "a" leaves before passing it on
    assert policy.admit("b", 19, 0.2)
    policy.started()
    assert not policy.admit("c", 19, 0.3)


def test_a_copy_dropped_before_it_went_out_is_not_refunded_twice() -> None:
    policy = _writer()
    assert policy.admit("a", 19, 0.0)
    policy.dropped("a", 19)  # cancelled while queued: owed again at once
    assert policy.admit("b", 19, 0.1)
    policy.started()
    policy.peer_closed("a")  # "a" took nothing: "b"'s copy still counts
    assert not policy.admit("c", 19, 0.2)


def test_old_blocks_are_not_owed_again() -> None:
    policy = _writer()
    assert policy.admit("a", 2, 0.0)  # 18 s behind live: history, long spread
    policy.started()
    policy.peer_closed("a")
    assert not policy.admit("b", 2, 0.1)


class _ViewerFeed:
    """A viewer's feed of 100 blocks of 1,000 bytes."""

    writable = False
    length = 100
    byte_length = 100 * 1000


def test_a_block_only_we_hold_near_us_takes_one_place_more_in_a_full_queue() -> None:
    policy = UploadAdmission(_ViewerFeed(), ReplicatorConfig(max_queued_relays=2))  # type: ignore[arg-type]
    others_hold = {98}
    policy.held_elsewhere = lambda peer, block: block in others_hold
    assert policy.admit("a", 98, 0.0) and policy.admit("b", 98, 0.0)
    assert not policy.admit("c", 98, 0.0)  # full: "c" asks the neighbour that holds it too
    assert policy.admit("c", 99, 0.0)  # only we hold 99: one place more
    assert not policy.admit("d", 99, 0.0)  # but only one
    policy.started()
    assert policy.admit("d", 99, 0.0)


def test_a_block_asked_for_again_and_again_gets_one_more_copy_on_credit() -> None:
    policy = _writer(root_grace=0.3)
    assert policy.admit("a", 19, 0.0)
    policy.started()
    for _ in range(5):  # everyone asks at once: "a" passes it on (not counted)
        assert not policy.admit("b", 19, 0.1)
    for i in range(3):  # the swarm does not pass it on: "b" and "c" keep coming back
        assert not policy.admit("bc"[i % 2], 19, 0.3 + 0.1 * i)
    assert policy.copies_demanded == 0
    assert policy.admit("b", 19, 0.6)  # on credit: the bucket goes below zero
    assert policy.copies_demanded == 1  # the writer's stats say why it sent more
    policy.started()
    for i in range(3):
        assert not policy.admit("c", 19, 1.0 + 0.1 * i)
    assert not policy.admit("c", 19, 1.4)  # credit is one block: spent until appends repay it


def test_a_peer_with_no_other_neighbour_gets_every_block_and_the_stats_count_it() -> None:
    neighbours = {"a": 1, "b": 3}
    config = ReplicatorConfig()
    policy = UploadAdmission(_WriterFeed(), config, neighbours_of=neighbours.get)  # type: ignore[arg-type]
    for _ in range(2):
        policy.peer_added()
    assert policy.admit("b", 19, 0.0)  # the first copy
    policy.started()
    assert not policy.admit("b", 19, 0.0)  # no budget for a second one to a peer with others
    for _ in range(3):  # the peer that has only us gets it each time it asks
        assert policy.admit("a", 19, 0.0)
        policy.started()
    assert policy.copies_alone == 3 and policy.copies_demanded == 0
