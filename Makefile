# Every target bootstraps its own .venv: a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast demo bench lint clean nats-server chromium tmux model

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,collector]'
	touch $(STAMP)

test: $(STAMP) nats-server chromium tmux
	$(PY) -m pytest -q -n 2

# The tests that run no process, signal, NATS server or long wait (those are marked slow).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow"

# The spool against its model over 100,000 random steps (make test runs a few hundred).
model: $(STAMP)
	MODEL_STEPS=100000 $(PY) -m pytest -q -s -p no:cacheprovider tests/test_model.py

# The JetStream tests and bench run a real nats-server: Debian's package, installed when missing
# (CI runs as root).
nats-server:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || \
	  apt-get install -y -q nats-server >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nats-server >/dev/null 2>&1) || \
	  { echo "make test needs nats-server: install Debian's nats-server package" \
	    "(apt-get install nats-server, as root)" >&2; exit 1; }

# The Event Explorer's tests drive Debian's chromium through Playwright (the browser Playwright
# downloads cannot be fetched here): installed when missing, as nats-server is.
chromium:
	@test -x /usr/bin/chromium || \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || \
	  { echo "make test needs chromium: install Debian's chromium package" \
	    "(apt-get install chromium, as root)" >&2; exit 1; }

# `sqreen-spool top` is tested in a real terminal: tmux.
tmux:
	@command -v tmux >/dev/null || apt-get install -y -q tmux >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q tmux >/dev/null 2>&1) || \
	  { echo "make test needs tmux: install Debian's tmux package (as root)" >&2; exit 1; }

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP) nats-server
	$(PY) bench/track.py
	$(PY) bench/drain.py
	$(PY) bench/import.py
	$(PY) bench/startup.py
	$(PY) bench/request.py
	$(PY) bench/outage.py
	$(PY) bench/peaks.py
	$(PY) bench/concurrency.py
	$(PY) bench/jetstream.py
	$(PY) bench/playbooks.py
	$(PY) bench/explorer.py
	$(PY) bench/boot.py

# mypy resolves `sqreen` from a link tree shaped like the installed package, since the
# editable install maps the folders to it through an import hook mypy cannot follow.
lint: $(STAMP)
	$(VENV)/bin/ruff check spool cli migrations tests bench examples
	$(VENV)/bin/ruff format --check spool cli migrations tests bench examples
	rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/sqreen
	ln -s $(CURDIR)/spool/*.py $(CURDIR)/spool/py.typed $(VENV)/typecheck/sqreen/
	for d in $(CURDIR)/spool/*/; do ln -s $${d%/} $(VENV)/typecheck/sqreen/; done
	ln -s $(CURDIR)/cli $(VENV)/typecheck/sqreen/cli
	ln -s $(CURDIR)/migrations $(VENV)/typecheck/sqreen/migrations
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
