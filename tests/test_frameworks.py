"""Each framework the way it expects: Flask's init_app (no error log for a block, its own block
page), Django's app config (started from settings.SQREEN, a template as the block page), and
Starlette's lifespan, under real servers and real frameworks."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import flask
import httpx

import sqreen
from sqreen import default
from sqreen.integrations.flask import init_app
from sqreen.security.action_store import add_operator_action
from sqreen.security.actions import read_action

from .test_actions import QuietHandler, ThreadingWSGIServer


def block(spooler: sqreen.Spooler, document: dict[str, object]) -> None:
    now = time.time()
    add_operator_action(spooler._store, read_action(document, now, "operator"), now)
    spooler.enforcer.invalidate()


def shop(block_page: object = None) -> flask.Flask:
    app = flask.Flask("shop", template_folder=None)

    @app.get("/me")
    def me() -> str:
        sqreen.identify({"email": flask.request.args["user"]})
        return "you"

    init_app(app, block_page=block_page)  # type: ignore[arg-type]
    return app


def serve(app: flask.Flask) -> Iterator[str]:
    from wsgiref.simple_server import make_server

    server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_flask_answers_a_block_without_logging_an_error(spool_path: Path) -> None:
    spooler = sqreen.start(path=spool_path)
    block(spooler, {"action": "block_user", "action_id": "u",
                    "parameters": {"users": [{"email": "ada"}]}})  # fmt: skip
    block(spooler, {"action": "block_ip", "action_id": "i",
                    "parameters": {"ip_cidr": ["127.0.0.2/32"]}})  # fmt: skip
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    app = shop(lambda action: f"<p>sorry ({action.action_id})</p>")
    app.logger.addHandler(handler)
    served = serve(app)
    url = next(served)
    try:
        assert httpx.get(f"{url}/me?user=bo").text == "you"
        blocked = httpx.get(f"{url}/me?user=ada")
        assert (blocked.status_code, blocked.text) == (403, "<p>sorry (u)</p>")
    finally:
        next(served, None)
    assert [r for r in records if r.levelno >= logging.ERROR] == []  # no "Exception on /me"
    client = app.test_client()
    from_blocked_ip = client.get("/me?user=bo", environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert (from_blocked_ip.status_code, from_blocked_ip.text) == (403, "<p>sorry (i)</p>")


def test_flask_default_and_template_block_pages(spool_path: Path, tmp_path: Path) -> None:
    spooler = sqreen.start(path=spool_path)
    block(spooler, {"action": "block_user", "action_id": "u",
                    "parameters": {"users": [{"email": "ada"}]}})  # fmt: skip
    plain = shop().test_client().get("/me?user=ada")
    assert plain.status_code == 403 and b"Your request was blocked" in plain.data
    (tmp_path / "blocked.html").write_text("blocked by {{ action.action_id }}")
    app = shop("blocked.html")
    app.template_folder = str(tmp_path)
    templated = app.test_client().get("/me?user=ada")
    assert (templated.status_code, templated.text) == (403, "blocked by u")


DJANGO = """
import django, sqreen
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

def me(request):
    sqreen.identify({{"email": request.GET["user"]}})
    return HttpResponse("you")

urlpatterns = [path("me/", me)]
settings.configure(
    DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="test",
    INSTALLED_APPS=["sqreen.integrations.django.SqreenConfig"],
    MIDDLEWARE=["sqreen.integrations.django.SqreenMiddleware"],
    TEMPLATES=[{{"BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [{templates!r}]}}],
    SQREEN={{"path": {spool!r}, "block_template": "blocked.html"}},
)
django.setup()
from sqreen import default
spooler = default._started
assert spooler is not None and str(spooler.settings.path) == {spool!r}  # started by ready()
import time
from sqreen.security.action_store import add_operator_action
from sqreen.security.actions import read_action
now = time.time()
add_operator_action(spooler._store, read_action({{"action": "block_user", "action_id": "u",
    "parameters": {{"users": [{{"email": "ada"}}]}}}}, now, "operator"), now)
spooler.enforcer.invalidate()
from django.test import Client
client = Client()
print(client.get("/me/?user=bo").content.decode(), client.get("/me/?user=ada").status_code,
      client.get("/me/?user=ada").content.decode())
"""


def test_django_app_config_starts_the_spooler_and_renders_its_template(
    spool_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "blocked.html").write_text("blocked-by-{{ action.action_id }}")
    code = DJANGO.format(templates=str(tmp_path), spool=str(spool_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["you", "403", "blocked-by-u"]


def test_starlette_lifespan_starts_the_spooler(spool_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from sqreen.integrations.asgi import SqreenMiddleware, lifespan

    async def me(request: object) -> PlainTextResponse:
        return PlainTextResponse("you")

    app = Starlette(routes=[Route("/me", me)], lifespan=lifespan(path=spool_path))
    with TestClient(SqreenMiddleware(app)) as client:
        assert default._started is not None and spool_path.exists()  # started at startup
        assert client.get("/me").text == "you"
    assert default._started is None  # closed at shutdown
