"""Schema migrations through Alembic, imported only when the spool's schema is not current."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .revision import check_known, read_revision, write_transaction


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Upgrade the spool to the latest revision; return the revisions before and after.

    The whole upgrade runs in one ``BEGIN IMMEDIATE`` transaction: processes that open a new spool
    at once queue on SQLite's write lock, and all but the first find the work done.
    """
    with write_transaction(engine) as conn:
        before = read_revision(conn)
        check_known(before)
        config = Config()
        config.set_main_option("script_location", str(files("sqreen.migrations")))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        after = read_revision(conn)
    return before, after
