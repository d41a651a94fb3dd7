# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine:
# each creates .venv and installs xmr with its dependencies first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xmr-installed

.PHONY: serve test lint test-tools mutation-test docker-test cluster-test demo eval install train-shapes clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)  ## run the service (XMR_* variables configure it)
	$(PY) -m app

test: lint test-tools  ## lint, type-check, then run the test suite
	$(PY) -m pytest -q

# Debian's Chromium (the search-page test), strace (the power-loss test), HAProxy (the
# replica tests) and Ceph's RADOS Gateway with a monitor and an OSD (the S3 tests), where they
# can be installed (root with apt-get); elsewhere those tests are skipped and say so.
test-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v radosgw >/dev/null 2>&1 || missing="$$missing radosgw"; \
	command -v ceph-mon >/dev/null 2>&1 || missing="$$missing ceph-mon"; \
	command -v ceph-osd >/dev/null 2>&1 || missing="$$missing ceph-osd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	      >/dev/null) || echo "note: could not install$$missing; their tests will skip"; \
	  else echo "note: missing$$missing (apt-get install$$missing); their tests will skip"; fi; \
	fi

# Builds the Dockerfile and runs the image (minutes, gigabytes; not part of `make test`). Needs
# root for its own dockerd; installs Debian's docker.io, debootstrap and docker-compose first.
docker-test:
	@missing=""; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	    >/dev/null) || echo "note: could not install$$missing"; \
	fi
	bash scripts/docker_smoke.sh

# PostgreSQL, a shared Milvus server, Ceph's RADOS Gateway, a two-node Ray cluster and three
# replicas behind HAProxy on this machine, each component killed in turn (minutes; not part of
# `make test`). Installs Debian's haproxy and Ceph packages where it can (root with apt-get);
# prints SKIPPED and why where something cannot run.
cluster-test: $(STAMP)
	@missing=""; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v radosgw >/dev/null 2>&1 || missing="$$missing radosgw"; \
	command -v ceph-mon >/dev/null 2>&1 || missing="$$missing ceph-mon"; \
	command -v ceph-osd >/dev/null 2>&1 || missing="$$missing ceph-osd"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing \
	    >/dev/null) || echo "note: could not install$$missing"; \
	fi
	PATH="$$PATH:/usr/sbin" $(PY) -m scripts.cluster_test

mutation-test: $(STAMP)  ## break each promise on purpose; fails if a test does not notice
	$(PY) -m scripts.mutation_test

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
