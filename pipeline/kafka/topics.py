"""Topics avfuse needs exist before it consumes: a consumer subscribed to a missing
topic would only notice it minutes later, at its next metadata refresh."""

from __future__ import annotations

import logging

from pipeline.core.config import KafkaConfig
from pipeline.kafka.sink import client_security

log = logging.getLogger("avfuse.kafka")


def ensure_topics(cfg: KafkaConfig, names: list[str], configs: dict[str, str] | None = None) -> list[str]:
    """Create the missing ones (``kafka.new_topic_partitions``, the broker's replication factor).

    Returns the names created. A cluster that forbids creating topics is not an error
    here: an administrator made them, or the first produce/subscribe will say so.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = KafkaAdminClient(client_id=f"{cfg.client_id}-admin", **client_security(cfg))
    try:
        existing = set(admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, num_partitions=cfg.new_topic_partitions, replication_factor=-1,
                                              topic_configs=configs or {}) for name in missing])
            except TopicAlreadyExistsError:
                pass  # another replica was quicker
            except KafkaError as exc:
                log.warning("could not create topics %s: %s", ", ".join(missing), exc, extra={"stage": "kafka"})
                return []
            log.info("created topics %s", ", ".join(missing))
        return missing
    finally:
        admin.close()
