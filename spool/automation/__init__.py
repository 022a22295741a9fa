"""Security automation: playbooks on any event, and the engine that runs them.

A playbook file (TOML) read and checked (``playbooks``), the dimensions and conditions that
select and key events (``conditions``), the engine that counts events in windows by their own
timestamps and decides security responses once (``engine``, its state in SQLite: ``state``).
The engine is the same code live (:mod:`sqreen.collector.ingest`) and in replay
(:mod:`sqreen.collector.replay`); it knows nothing of where its events come from.

May import: ``security`` (the actions it decides, as the agents enforce them), ``request`` (the
names of its fields), ``storage.sql`` (helpers on a connection), the top-level ``config``
(durations), ``wire`` (event times). Knows nothing of delivery or of the spool.
"""
