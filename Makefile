# The two quick-start commands: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-pretrain demo-det demo-seg demo-cost test bench bench-seg

# The editable install (pyproject.toml) makes lth, pruning_utils and the task folders importable from
# any folder, so that every script runs from the repository root or from its own folder.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(PY) -u demo/run.py

# Two pytest-xdist workers, one thread each, a test file per worker at a time (a file's module fixtures
# train once): 1.6x faster than one process on 2 cores. TEST_WORKERS=1 runs them in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) tests

bench: $(VENV)/.installed
	$(PY) -u bench/train_throughput.py

demo-pretrain: $(VENV)/.installed
	$(PY) -u demo/pretrain.py

demo-det: $(VENV)/.installed
	$(PY) -u demo/detection.py

demo-seg: $(VENV)/.installed
	$(PY) -u demo/segmentation.py

demo-cost: $(VENV)/.installed
	$(PY) -u demo/cost.py

bench-seg: $(VENV)/.installed
	$(PY) -u bench/segmentation_throughput.py
