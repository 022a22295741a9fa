"""Alembic environment for the spool.

Migrations always run on a connection the caller opened (``config.attributes["connection"]``),
inside the caller's ``BEGIN IMMEDIATE`` transaction, so that concurrent first opens of one spool
serialise on SQLite's own lock. No logging configuration: a library must not touch the host's.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
