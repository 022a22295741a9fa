"""The spool file: everything that reads or writes it.

The writer and its commits (``store``: the hot-path insert, group commit in ``group``,
checkpoints, the connection's life across ``fork()``), the files on disk and their safety
(``files``), the host-wide locks (``locks``), what a storage failure is (``failures``), the size
bound (``bound``), the delivery state kept in the spool: leases, outcomes, counters
(``outbox``), pruning (``prune``), the schema (``schema``) and its revision and migration
(``revision``, ``migrate``, with Alembic imported only when a migration runs).

May import: the top-level ``config``, ``event``, ``errors``, ``health``. Knows nothing of
delivery, security responses or requests.
"""
