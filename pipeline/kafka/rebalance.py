"""The consumer group's rebalances, as the service sees them: which streams stop, which records are
held or dropped, and what is committed before another consumer may take a partition.

kafka-python calls the listener on the client's I/O thread, inside a poll; the service's state
lives on its asyncio loop. So the listener hands work to the loop and waits for it where the
group protocol needs an answer first (a revocation's commit), and never blocks otherwise.

- revoked (exactly-once): the revoked partitions' streams hold their records and everything
  written is committed, so that a new owner reads exactly the committed progress;
- assigned: streams fed from partitions this consumer no longer owns stop, their held records
  dropped; the others' held records go out. Decided on assignment, not revocation: an eager
  rebalance revokes every partition first (a broker restart does that too), and most come back;
- lost (exactly-once): this consumer was dropped from the group (its session expired: frozen,
  starved), so its partitions may already be another's. Nothing more of them may be committed:
  every stream stops without its records and the open transaction aborts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from pipeline.core.errors import one_line
from pipeline.kafka.service_streams import ServiceStream

if TYPE_CHECKING:
    from pipeline.kafka.service import Service

log = logging.getLogger("avfuse.service")

# A revocation waits this long for its commit (it blocks the consumer's I/O thread meanwhile).
REVOKE_COMMIT_TIMEOUT_S = 20.0


class GroupRebalance(ConsumerRebalanceListener):
    """The service's rebalance listener, and the group state between a revocation and an assignment."""

    def __init__(self, service: Service):
        self.service = service
        self.rebalancing = False  # between a revocation and the next assignment: no periodic commit
        self._assigned: list | None = None  # partitions just assigned, their progress not yet read

    # -- the listener (the client's I/O thread) ------------------------------------------

    def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in revoked))
            self.rebalancing = True
            self._wait_on_loop(self._hold_and_commit, revoked, "committing at a revocation")

    def on_partitions_lost(self, lost) -> None:
        if lost:
            log.warning("partitions lost (this consumer was dropped from the group): %s",
                        sorted(f"{tp.topic}:{tp.partition}" for tp in lost))
            self.rebalancing = True
            # On failure the transaction stays open; the broker aborts it at its timeout.
            self._wait_on_loop(self._abandon_lost, lost, "aborting at a lost membership")

    def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))
        service = self.service
        owned = {(tp.topic, tp.partition) for tp in assigned}
        self.rebalancing = False
        moved = set()
        for stream in list(service.streams.values()):
            if stream.partitions() - owned:
                service.loop.call_soon_threadsafe(stop_without_records, stream)
                moved.update(stream.partitions())
            elif stream.sink is not None:
                service.loop.call_soon_threadsafe(stream.sink.release)
        for topic, partition in moved - owned:
            service.offsets.forget(topic, partition)
        service.loop.call_soon_threadsafe(self._forget_partitions, moved - owned)
        # This thread must not block: the progress and the committed offsets are read after
        # this poll returns, before its messages (read_assignment).
        self._assigned = list(assigned)

    def _wait_on_loop(self, work, partitions, what: str) -> None:
        """Exactly-once only: at-least-once repeats what a new owner reads again, by contract."""
        service = self.service
        if service.cfg.kafka.delivery != "exactly_once" or service.committer is None or service.stopping:
            return  # stopping: the drain commits, and the clients close
        try:
            done = asyncio.run_coroutine_threadsafe(work({(tp.topic, tp.partition) for tp in partitions}),
                                                    service.loop)
            done.result(timeout=REVOKE_COMMIT_TIMEOUT_S)
        except Exception as exc:  # the new owner may repeat what the open transaction held: it aborts
            log.warning("%s failed (%s)", what, one_line(exc), extra={"stage": "commit"})

    # -- on the service's loop -------------------------------------------------------------

    async def _hold_and_commit(self, revoked: set[tuple[str, int]]) -> None:
        service = self.service
        for stream in service.streams.values():
            if stream.sink is not None and stream.partitions() & revoked:
                stream.sink.hold()
        await service.commit_now()

    async def _abandon_lost(self, lost: set[tuple[str, int]]) -> None:
        service = self.service
        await service.commit_settled()  # refused by the broker, or committed before the loss
        # The open transaction holds every stream's records: all of them stop, not only the lost.
        abandoned = list(service.streams.values())
        for stream in abandoned:
            stop_without_records(stream)
        for topic, partition in lost:
            service.offsets.forget(topic, partition)
        self._forget_partitions(lost)
        await service.committer.abandon([stream.stream_id for stream in abandoned])

    def _forget_partitions(self, partitions) -> None:
        for tp in partitions:
            self.service.redelivery.forget(tp)

    # -- after the poll (the consumer thread) ------------------------------------------------

    def assignment_pending(self) -> bool:
        return self._assigned is not None

    def read_assignment(self) -> None:
        """Consumer thread, after a poll that assigned partitions: what was committed there."""
        assigned, self._assigned = self._assigned, None
        consumer = self.service.consumer
        committed = {}
        for tp in assigned or ():
            try:
                offset = consumer.committed(tp)
            except KafkaError:
                offset = None
            if offset is not None:
                committed[(tp.topic, tp.partition)] = offset
        self.service.committer.reassigned(committed)


def stop_without_records(stream: ServiceStream) -> None:
    """Its partition is another's now (or may be): its records are dropped, its run cancelled."""
    if stream.sink is not None:
        stream.sink.drop()
    if stream.task is not None:
        stream.task.cancel()
