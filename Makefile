# The two quick-start commands: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-pretrain demo-det demo-seg demo-cost test bench bench-seg

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -u demo/run.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

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
