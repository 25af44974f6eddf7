# Two entry points a fresh machine needs: `make run` (main job) and `make test` (the whole suite). Both set up .venv first.
PY := .venv/bin/python
export HYPOTHESIS_PROFILE ?= ci

.PHONY: setup run bench test test-unit test-contract test-upstream
setup:
	bash scripts/setup_cpu.sh

# The main job: bench.dynamics scaled down (README, "Main job"): the Pattern I task, where the policy learns, at the
# saved run's learning rate (benchmarks/README.md, "Training dynamics").
MAIN_JOB := --mix pattern1 --lr 3e-4 --arms baseline,darts_adaptive --seeds 2 --steps 16 --prompts-per-step 8 --n 8 \
	--eval-every 8 --eval-size 64 --eval-samples 2 --out runs/main_job

run: setup
	$(PY) -m openrlhf_darts.bench.dynamics $(MAIN_JOB)

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
