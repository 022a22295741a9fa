"""What the command line reads and changes in a spool: the summary ``inspect`` prints
(``report``), listings by status, name and time (``selection``), requeue and purge
(``admin``), and importing past events from JSON lines (``importer``).

May import: ``storage`` and the top-level modules. Used by ``sqreen.cli`` only.
"""
