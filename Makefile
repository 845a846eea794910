# Two commands do all set-up on a fresh Debian machine with Python 3.11:
#   make demo   – the main job (local demo on embedded brokers)
#   make test   – the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check setup brokers clean

setup: $(STAMP) mosquitto

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch's CPU wheel first, so no resolver pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The broker, and its C clients (mosquitto_pub/sub: the ingest ceiling in benchmarks/).
mosquitto:
	@{ command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; } \
	  && command -v mosquitto_pub >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; }

.PHONY: mosquitto

demo: setup
	$(VENV)/bin/fedmoe demo

test: setup
	$(PY) -m pytest

check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

brokers: setup
	$(VENV)/bin/fedmoe brokers up

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
