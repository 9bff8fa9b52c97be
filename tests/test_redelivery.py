"""Re-reading deferred media messages: each message is handled once, each stream's in order."""

from __future__ import annotations

import random

from pipeline.kafka.redelivery import Redelivery, Verdict

TP = ("media", 0)


def _consume(redelivery: Redelivery, log: list[tuple[int, str]], room: dict[str, int], handled: list,
             start: int = 0) -> None:
    """Read the partition from ``start`` like a consumer, following seeks, until its end."""
    position = start
    while position < len(log):
        offset, stream_id = position, log[position][1]
        verdict = redelivery.verdict(TP, offset, stream_id, room[stream_id] > 0)
        if verdict is Verdict.HANDLE:
            handled.append((offset, stream_id))
            room[stream_id] -= 1
        position += 1
        if position == len(log) or random.random() < 0.2:  # between polls: room comes back, seeks happen
            for sid in room:
                room[sid] = max(room[sid], random.randint(0, 3))
            for sid in redelivery.waiting().get(TP, []):
                if room[sid] > 0:
                    redelivery.reread(TP, sid)
            seeks = redelivery.seeks()
            if TP in seeks:
                position = seeks[TP]


def test_every_message_is_handled_once_and_each_stream_in_its_order():
    random.seed(7)
    for _ in range(200):
        streams = ["a", "b", "c"]
        log = [(i, random.choice(streams)) for i in range(60)]
        redelivery, handled = Redelivery(), []
        _consume(redelivery, log, {sid: random.randint(0, 2) for sid in streams}, handled)
        for _ in range(50):  # leftovers: keep giving room until everything deferred was read again
            if not redelivery.waiting():
                break
            _consume(redelivery, log, dict.fromkeys(streams, 100), handled,
                     start=min(redelivery._deferred[TP][s].from_offset for s in redelivery.waiting()[TP]))
        assert sorted(handled) == log  # once each
        for sid in streams:
            mine = [offset for offset, s in handled if s == sid]
            assert mine == sorted(mine), sid  # in order


def test_a_full_stream_defers_and_its_later_messages_wait_behind_the_first():
    redelivery = Redelivery()
    assert redelivery.verdict(TP, 0, "a", True) is Verdict.HANDLE
    assert redelivery.verdict(TP, 1, "b", False) is Verdict.DEFER
    assert redelivery.verdict(TP, 2, "a", True) is Verdict.HANDLE  # others go on
    assert redelivery.verdict(TP, 3, "b", True) is Verdict.DEFER  # room again, but 1 comes first
    redelivery.reread(TP, "b")
    assert redelivery.seeks() == {TP: 1}
    assert redelivery.verdict(TP, 1, "b", True) is Verdict.HANDLE
    assert redelivery.verdict(TP, 2, "a", True) is Verdict.SKIP
    assert redelivery.verdict(TP, 3, "b", True) is Verdict.HANDLE
    assert redelivery.verdict(TP, 4, "b", True) is Verdict.HANDLE  # caught up: new messages as usual
    assert not redelivery.waiting()


def test_a_stream_run_again_reads_its_messages_from_its_first():
    redelivery = Redelivery()
    for offset, sid in enumerate("abab"):
        assert redelivery.verdict(TP, offset, sid, True) is Verdict.HANDLE
    redelivery.reread(TP, "a", from_offset=0)  # its actor died: its bytes are gone
    assert redelivery.seeks() == {TP: 0}
    assert [redelivery.verdict(TP, o, s, True) for o, s in enumerate("abab")] == [
        Verdict.HANDLE, Verdict.SKIP, Verdict.HANDLE, Verdict.SKIP]
