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


def _writer() -> UploadAdmission:
    # No extra budget: every copy after the first is refused.
    policy = UploadAdmission(_WriterFeed(), ReplicatorConfig(root_grace=0.0))  # type: ignore[arg-type]
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
