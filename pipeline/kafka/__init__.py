"""The Kafka service (``avfuse run``): jobs and media segments in, records out. Job parsing, which
offsets may be committed (``offsets``), delivery guarantees and transactions, the Kafka sink, topics.

May import ``compute`` and everything below it.
"""
