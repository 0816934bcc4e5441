#!/usr/bin/env bash
# Here (no GPU): gather what the device check needs into .gpu/ and .whl/ (both git-ignored through .git/info/exclude).
# The device image has torch, transformers, peft and accelerate but not trl/datasets; the real SmolLM2 weights
# (538 MB converted, 98 MB GGUF) are over the 64 MiB a device call can carry, so the check uses SmolLM2-135M's
# config and tokenizer with random weights (same shapes, so the same speed; answers are meaningless).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude || echo /.gpu/ >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude || echo /.whl/ >> .git/info/exclude
mkdir -p .gpu/model .whl
src=$(.venv/bin/python -c "from calm.models import cached_model_dir; print(cached_model_dir())")
cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja,generation_config.json} .gpu/model/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
echo "ready: run 'bash benchmarks/gpu/run.sh' on the GPU machine with .gpu and .whl carried"
