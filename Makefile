# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine:
# each creates .venv and installs xmr with its dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xmr-installed

.PHONY: serve test lint browser demo eval install train-shapes clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)  ## run the service (XMR_* variables configure it)
	$(PY) -m app

test: lint browser  ## lint, type-check, then run the test suite
	$(PY) -m pytest -q

# Debian's Chromium for the search-page test, where it can be installed (root with apt-get);
# elsewhere that one test is skipped and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null) || echo "note: chromium could not be installed; the page test will skip"; \
	  else echo "note: no chromium (apt-get install chromium); the page test will skip"; fi; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(STAMP)  ## serve the bundled shapes model, index a generated gallery, search it
	$(PY) -m scripts.demo

eval: $(STAMP)  ## evaluate a running server on held-out shapes data
	$(PY) -m xmr.eval --shapes

train-shapes: $(STAMP)  ## re-train the bundled shapes-tiny model (about 15 minutes on 2 cores)
	$(PY) scripts/train_shapes_clip.py

clean:
	rm -rf $(VENV) .pytest_cache
