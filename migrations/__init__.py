"""Alembic migrations of the spool schema, installed as ``sqreen.migrations``."""
