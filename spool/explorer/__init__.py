"""The Event Explorer: a web page over an event store (and, read-only, a spool).

The queries behind each view (``views``: trend, breakdown, events, one event, decisions, the
dimensions the events carry, a draft playbook replayed over the stored history), the ASGI app
that serves them as JSON with the page (``app``: loopback by default, a token beyond it, a CSRF
token on the one POST that changes something), and the page itself (``static``: HTML, our
script and stylesheet, and the vendored uPlot chart library; nothing is loaded from elsewhere).

The page renders every stored text with ``textContent``, never as HTML, and its
Content-Security-Policy allows scripts from the page's own origin only.

May import: ``automation``, ``collector``, ``ops`` (the spool's report), ``wire``. Knows nothing
of delivery or of the spool's writer.
"""
