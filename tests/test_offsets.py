"""Where the Kafka offset commit is decided: a partition commits up to its oldest unfinished
message, never past it, and only when it moved."""

from __future__ import annotations

from pipeline.kafka.offsets import OffsetTracker


def _tracker_with(topic: str, partition: int, offsets: range | list[int]) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.received(topic, partition, offset)
    return tracker


def test_partition_commit_is_its_lowest_pending_offset():
    tracker = _tracker_with("jobs", 0, range(10, 15))
    tracker.done("jobs", 0, 10)
    tracker.done("jobs", 0, 11)

    assert tracker.committable() == {("jobs", 0): 12}


def test_nothing_done_yet_commits_the_first_received_offset():
    # "Everything before 10 is done" is true even before any job finished.
    tracker = _tracker_with("jobs", 0, [10, 11])

    assert tracker.committable() == {("jobs", 0): 10}


def test_partition_commit_waits_for_the_oldest_unfinished_job():
    tracker = _tracker_with("jobs", 0, range(0, 5))
    for offset in (1, 2, 3, 4):
        tracker.done("jobs", 0, offset)

    assert tracker.committable() == {("jobs", 0): 0}

    tracker.committed(tracker.committable())
    tracker.done("jobs", 0, 0)
    assert tracker.committable() == {("jobs", 0): 5}


def test_commit_stops_at_a_gap_of_unfinished_offsets_in_the_middle():
    tracker = _tracker_with("media", 2, range(100, 106))
    for offset in (100, 101, 104, 105):
        tracker.done("media", 2, offset)

    assert tracker.committable() == {("media", 2): 102}

    tracker.done("media", 2, 102)
    assert tracker.committable() == {("media", 2): 103}


def test_partition_with_everything_done_commits_one_past_the_highest_offset():
    tracker = _tracker_with("jobs", 3, [7, 8, 42])
    for offset in (42, 7, 8):
        tracker.done("jobs", 3, offset)

    assert tracker.committable() == {("jobs", 3): 43}


def test_partition_that_did_not_move_since_its_commit_is_not_returned_again():
    tracker = _tracker_with("jobs", 0, range(0, 3))
    tracker.done("jobs", 0, 0)
    tracker.committed(tracker.committable())

    assert tracker.committable() == {}

    tracker.done("jobs", 0, 2)  # finished, but still behind the unfinished offset 1
    assert tracker.committable() == {}

    tracker.done("jobs", 0, 1)
    assert tracker.committable() == {("jobs", 0): 3}


def test_committable_is_returned_again_until_it_is_reported_committed():
    # A commit that failed (no ``committed`` call) is offered again on the next round.
    tracker = _tracker_with("jobs", 0, [0])
    tracker.done("jobs", 0, 0)

    assert tracker.committable() == {("jobs", 0): 1}
    assert tracker.committable() == {("jobs", 0): 1}


def test_only_the_partitions_that_moved_are_returned():
    tracker = OffsetTracker()
    for partition in (0, 1):
        tracker.received("jobs", partition, 0)
        tracker.received("jobs", partition, 1)
    tracker.committed(tracker.committable())

    tracker.done("jobs", 1, 0)

    assert tracker.committable() == {("jobs", 1): 1}


def test_forget_drops_a_revoked_partition():
    tracker = _tracker_with("jobs", 0, range(0, 3))
    tracker.received("jobs", 1, 5)
    tracker.forget("jobs", 0)

    assert tracker.committable() == {("jobs", 1): 5}

    # A job of the revoked partition that finishes late commits nothing for it.
    tracker.done("jobs", 0, 0)
    assert ("jobs", 0) not in tracker.committable()


def test_a_reassigned_partition_commits_from_its_new_messages_after_forget():
    tracker = _tracker_with("jobs", 0, range(0, 10))
    for offset in range(10):
        tracker.done("jobs", 0, offset)
    tracker.committed(tracker.committable())  # 10
    tracker.forget("jobs", 0)

    # Given back later, from a lower committed position (another consumer rewound it).
    tracker.received("jobs", 0, 4)
    assert tracker.committable() == {("jobs", 0): 4}


def test_partitions_and_topics_are_independent():
    tracker = OffsetTracker()
    for topic, partition in (("jobs", 0), ("jobs", 1), ("media", 0)):
        for offset in range(3):
            tracker.received(topic, partition, offset)
    tracker.done("jobs", 0, 0)
    tracker.done("jobs", 0, 1)
    tracker.done("jobs", 1, 1)
    for offset in range(3):
        tracker.done("media", 0, offset)

    assert tracker.committable() == {("jobs", 0): 2, ("jobs", 1): 0, ("media", 0): 3}

    tracker.committed({("media", 0): 3})
    assert tracker.committable() == {("jobs", 0): 2, ("jobs", 1): 0}
