# streambid: `make demo` runs a simulated day on the embedded bus; `make test` runs everything on a real Kafka.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint kafka-start kafka-stop bench clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streambid needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml deploy/constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -c deploy/constraints.txt -e '.[test,bench]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/streambid demo

test: $(STAMP)
	bash deploy/kafka-local/kafka.sh fetch
	bash deploy/prometheus/ensure-prometheus.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -rs --durations=10

# the bid path's benchmarks (about two minutes, both cores; see the README), never part of `make test`
bench: $(STAMP)
	$(VENV)/bin/streambid bench bidder
	$(VENV)/bin/streambid bench stages

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

kafka-start:
	bash deploy/kafka-local/kafka.sh start

kafka-stop:
	bash deploy/kafka-local/kafka.sh stop

clean:
	rm -rf $(VENV) out .pytest_cache .kafka-local .streambid-spill
