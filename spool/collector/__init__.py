"""The reference collector's library side: what ``sqreen-spool collect`` keeps and decides.

The event store (``store``: every accepted event, durable before the answer, deduplicated by id
across workers and restarts, bounded by age and size, shared by every worker with the
playbooks' state), taking a batch in (``ingest``: one transaction that keeps the new events,
runs the playbooks over them and reads the actions to answer with), and the notifications
queued in the store and posted to the playbooks' webhooks (``notify``), and replaying recorded
history through a draft playbook file (``replay``).

May import: ``automation``, ``storage`` (its files and connection settings), ``wire`` and the
top-level ``config``, ``errors``. Knows nothing of the HTTP server (``sqreen.cli.reference``).
"""
