"""Flask, the way a Flask extension works: ``sqreen.integrations.flask.init_app(app)``.

It wraps ``app.wsgi_app`` with the WSGI middleware (each request current for ``track()``),
screens blocked IPs in a ``before_request`` hook and answers ``UserBlocked`` with an error
handler, so that a block is an ordinary response: Flask logs no ``Exception on ...`` traceback
for it (an error tracker would report each one). The block page is ours unless ``block_page``
names a template (rendered with ``action``) or a view function taking the action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserBlocked
from ..request.context import current
from ..security.actions import Action
from ..spooler import Spooler
from . import answer, screened
from .wsgi import SqreenMiddleware

BlockPage = str | Callable[[Action], Any] | None


def init_app(app: Any, *, spooler: Spooler | None = None, block_page: BlockPage = None) -> None:
    """Wire sqreen into the Flask ``app`` (see the module docstring)."""
    import flask  # the application's own dependency: imported only by its caller

    app.wsgi_app = SqreenMiddleware(app.wsgi_app, spooler=spooler, screen=False)

    def render(action: Action) -> Any:
        request = current()
        if request is not None:
            request.answered = True  # the middleware keeps this response
        if action.url is not None:
            return flask.redirect(action.url, 303)
        if isinstance(block_page, str):
            return flask.render_template(block_page, action=action), 403
        if block_page is not None:
            return flask.make_response(block_page(action), 403)
        status, headers, body = answer(action, flask.request.headers.get("Accept"))
        return flask.Response(body, status, headers)

    def screen_ip() -> Any:
        request = current()
        if request is not None and screened(request, spooler):
            return render(request.blocked)
        return None

    def blocked(exc: UserBlocked) -> Any:
        request = current()
        if request is not None and request.blocked is not None:
            return render(request.blocked)
        return flask.Response(status=403)  # raised outside a request of this middleware

    # Registered by call, not as decorators: app is untyped here (Flask is not imported to type).
    app.before_request(screen_ip)
    app.register_error_handler(UserBlocked, blocked)
