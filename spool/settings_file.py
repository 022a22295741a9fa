"""The settings file, as the Sqreen agent read it: ``SQREEN_CONFIG_FILE``, else ``sqreen.ini`` in
the working directory, else ``~/.sqreen.ini``; its ``[sqreen]`` section, one key per setting
named as its environment variable without the ``SQREEN_`` prefix (``token``, ``url``,
``spool_path``, ``heartbeat_delay``, ...).

An agent deployment's file keeps working: its keys that name none of our settings
(``app_name``, ``debug``, ...) are ignored, and logged once. A file that cannot be read, or that
is not INI, is a :class:`sqreen.ConfigError`: :func:`sqreen.start` raises it at boot.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("sqreen.spool")

FILE_VARIABLE = "SQREEN_CONFIG_FILE"
SECTION = "sqreen"


def find(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The settings file in use, or None."""
    named = environ.get(FILE_VARIABLE)
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f"{FILE_VARIABLE}: {named} is not a file")
        return Path(named)
    for candidate in (Path("sqreen.ini"), Path.home() / ".sqreen.ini"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def read(path: Path, known: Iterable[str]) -> dict[str, str]:
    """The file's settings as environment variables (``SQREEN_<KEY>``), those we know only."""
    parser = configparser.RawConfigParser()
    try:
        with path.open(encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ConfigError(f"{path}: cannot be read as a settings file: {exc}") from None
    if not parser.has_section(SECTION):
        return {}
    names = set(known)
    found, ignored = {}, []
    for key, value in parser.items(SECTION):
        variable = f"SQREEN_{key.upper()}"
        if variable in names:
            found[variable] = value
        else:
            ignored.append(key)
    if ignored:
        log.info("%s: keys for the Sqreen agent, not this spool, ignored: %s", path,
                 ", ".join(sorted(ignored)))  # fmt: skip
    return found
