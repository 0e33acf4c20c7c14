# pygpt in two commands, on a fresh machine with Python >= 3.10:
#
#   make train    set up (.venv, torch, the pygpt._C build, tiny Shakespeare), train the default model
#                 on the fused kernels, print a sample
#   make test     the same set-up, then the test suite (README's test command; .ci/run runs it)
#
# The set-up (tools/bootstrap.py) checks each step first and does only what is missing, so both
# commands can be run again at any time; after editing csrc/ or kernels/ they rebuild pygpt._C.
# Knobs (make VAR=value, or the environment):
#   ITERS=200              a shorter training run (default: the preset's 2000 iterations)
#   PRESET=shakespeare-cpu the model/training preset (python -m pygpt.train --help lists them)
#   DEVICE=auto            cpu | cuda | mps | auto
#   TRAIN_ARGS=...         more python -m pygpt.train flags
#   RUN=out/mine           the run's folder (default: out/<preset>, else the next free out/<preset>-N)
#   TORCH=auto             cpu | cuda | a pip requirement such as torch==2.13.0 (see tools/bootstrap.py)
#   DATA=path/input.txt    tiny Shakespeare from a local file (offline), or PYGPT_DATA_DIR=folder
#   PYTEST_ARGS=...        what `make test` passes to pytest instead of the whole suite
#   VENV=.venv  PYTHON=python3
#   BENCH_OPS / BENCH_DEVICE / BENCH_ARGS   what `make bench` measures (default: the 3 ops, cuda if a GPU)
#   make bench / gpucheck / clean (build outputs; keeps .venv, data, out) / distclean (also .venv)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= auto
DATA   ?=
ITERS  ?=
PRESET ?= shakespeare-cpu
DEVICE ?= auto
TRAIN_ARGS ?=
PYTEST_ARGS ?=
BENCH_OPS ?= attention layer_norm gelu_mlp
BENCH_DEVICE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
BENCH_ARGS ?=

PY := $(VENV)/bin/python
SETUP = $(PYTHON) tools/bootstrap.py setup --venv "$(VENV)" --torch "$(TORCH)" --data "$(DATA)"

.PHONY: setup setup-test train test bench gpucheck clean distclean

setup:
	@$(SETUP)

setup-test:
	@$(SETUP) --test

# Every `make train` trains a new run and never touches an earlier one: into out/<preset>, or the
# first of out/<preset>-2, -3, ... without a checkpoint (RUN=dir picks the folder yourself).
RUN ?= $(shell d=out/$(PRESET); n=1; while [ -e "$$d/ckpt.pt" ]; do n=$$((n+1)); d=out/$(PRESET)-$$n; done; echo $$d)

train: setup
	$(PY) -m pygpt.train --preset $(PRESET) --fused --device $(DEVICE) --data data/shakespeare_char \
		--out-dir $(RUN) $(if $(ITERS),--max-iters $(ITERS)) $(TRAIN_ARGS)
	@echo "== the run is in $(RUN): python -m pygpt.sample --ckpt $(RUN) (inside .venv) samples more"

# The README's test command: the whole suite, then the Triton kernels through Triton's CPU
# interpreter. PYTEST_ARGS replaces both with one pytest run of your choice.
test: setup-test
ifeq ($(strip $(PYTEST_ARGS)),)
	$(PY) -m pytest tests -q
	TRITON_INTERPRET=1 $(PY) -m pytest tests/kernels -q -k triton
else
	$(PY) -m pytest $(PYTEST_ARGS)
endif

# the three hot ops side by side on this machine's device; JSON, table and plot in bench/results/
bench: setup
	for op in $(BENCH_OPS); do $(PY) -m pygpt.bench $$op --device $(BENCH_DEVICE) $(BENCH_ARGS) || exit 1; done

gpucheck: setup-test
	$(PY) -m pygpt.gpucheck --budget 540

clean:
	rm -rf build dist *.egg-info pygpt/_C.*.so pygpt/_C.*.pyd .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf "$(VENV)"
