"Device check only: SmolLM2-135M's architecture and tokenizer with random weights (the real weights are too large to carry)."
import json, os, shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM
src = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu/model"); dst = Path(os.environ["CALM_CACHE"]) / "models" / "smollm2-135m"
dst.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
cfg = AutoConfig.from_pretrained(src)
m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
m.save_pretrained(dst)
for f in src.iterdir():
    if f.name != "config.json": shutil.copy(f, dst / f.name)
(dst / "conversion.json").write_text(json.dumps({"name": "smollm2-135m", "source": "random init of SmolLM2-135M's config (device check)",
                                                  "has_chat_template": True}))
print("model at", dst, sum(p.numel() for p in m.parameters()), "params")
