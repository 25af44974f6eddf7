# Two entry points a fresh machine needs: `make run` (main job) and `make test` (the whole suite). Both set up .venv first.
PY := .venv/bin/python
export HYPOTHESIS_PROFILE ?= ci

.PHONY: setup run bench test test-unit test-contract test-upstream
setup:
	bash scripts/setup_cpu.sh

run: setup
	$(PY) -m openrlhf_darts.local.compare

test: setup
	$(PY) -m pytest tests -q -rs
	bash scripts/run_upstream_tests.sh

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-contract: setup
	$(PY) -m pytest tests/contract -q -rs

test-upstream: setup
	bash scripts/run_upstream_tests.sh

bench: setup
	$(PY) -m openrlhf_darts.bench.rollout
