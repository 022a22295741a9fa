"""The HTTP request an event is tracked in: what a middleware captures, the request object an
event carries, the current request of each thread or task (``context``), and PII scrubbing
(``scrub``).

May import: the top-level ``event``, ``errors``. Knows nothing of storage or delivery.
"""
