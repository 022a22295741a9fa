"""``sqreen-spool tail``: read back the last events of the JetStream stream that the spool
delivers into (``SQREEN_URL=nats://...``, the subject of ``SQREEN_SPOOL_NATS_SUBJECT``)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer

from sqreen.urls import is_nats

from .common import USAGE, Context, Json, fail, plain


def tail(
    ctx: typer.Context,
    count: Annotated[
        int, typer.Option("-n", "--count", min=1, max=10_000, help="How many of the last events.")
    ] = 10,
    json: Json = False,
) -> None:
    """Print the stream's last events, oldest first (--json: one stored event per line)."""
    context: Context = ctx.obj
    settings = context.settings()
    if settings.url is None or not is_nats(settings.url):
        fail("tail reads a JetStream stream: pass --url nats://... or set SQREEN_URL", USAGE)
    from nats.errors import Error as NatsError

    from sqreen.delivery.jetstream import Publisher

    publisher = Publisher(settings, "sqreen-spool-tail")

    async def read() -> tuple[str, list[tuple[int, str, bytes]]]:
        try:
            return await asyncio.wait_for(publisher.last(count), settings.http_timeout * 3)
        finally:
            await publisher.close()

    try:
        stream, found = asyncio.run(read())
    except (NatsError, OSError, TimeoutError) as exc:
        fail(f"NATS: {type(exc).__name__}: {exc}")
    for seq, subject, body in found:
        if json:
            typer.echo(body.decode(errors="replace"))
            continue
        try:
            event = orjson.loads(body)
            line = f"{seq}  {event.get('timestamp')}  {event.get('name')}  {event.get('id')}"
        except (orjson.JSONDecodeError, AttributeError):
            line = f"{seq}  {subject}  ({len(body)} bytes, not an event)"
        typer.echo(plain(line))
    if not json:
        typer.echo(f"{len(found)} events from stream {stream}", err=True)
