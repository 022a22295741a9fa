"""Security responses: the actions (block or redirect a user or an IP) as a model and their
matching (``actions``), their storage in the spool (``action_store``), each process's compiled
and fresh view of them (``enforcer``), the tally of the requests they stop (``tally``), and
their application to requests and identified users (``responder``).

May import: ``storage``, ``request`` (the request a response stops) and the top-level
``config``, ``errors``. Knows nothing of delivery or of web frameworks.
"""
