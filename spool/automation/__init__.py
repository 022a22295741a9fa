"""Security automation: playbooks on any event, and the engine that runs them.

A playbook file (TOML) read and checked (``playbooks``), the dimensions and conditions that
select and key events (``conditions``), the engine that counts events in windows by their own
timestamps and decides security responses once (``engine``, its state in SQLite: ``state``),
and replaying history through a draft file (``replay``). The engine is the same code live (the
collector's event store) and in replay; it knows nothing of where its events come from.

May import: ``security`` (the actions it decides, as the agents enforce them), the top-level
``config`` (durations), ``wire`` (event times), ``errors``. Knows nothing of delivery or of the
spool's storage.
"""
