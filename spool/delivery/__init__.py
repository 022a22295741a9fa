"""Delivery: the flusher that claims batches from the spool and settles their outcomes
(``flusher``), and the sinks it posts to: an HTTP collector (``http``) and NATS JetStream
(``jetstream``, with nats-py imported only for a ``nats://`` URL).

May import: ``storage`` (the outbox), ``security`` (a collector's answer carries its actions),
and the top-level ``config``, ``urls``, ``event``, ``errors``, ``health``.
"""
