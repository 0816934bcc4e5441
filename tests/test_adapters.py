"""Adapters point at their base model's hub id and carry a filled model card."""
import json

import pytest

from calm.adapters import hub_id, publish_adapter
from calm.models import EMBEDDED_MODELS


def test_every_embedded_model_has_a_hub_id():
    for name in EMBEDDED_MODELS: assert hub_id(name) and "/" in hub_id(name)


def test_a_real_peft_adapter_points_at_the_hub(tmp_path):
    import torch
    from peft import LoraConfig, PeftConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    local = tmp_path / "cache" / "smollm2-135m"          # stands for ~/.cache/calm/models/smollm2-135m
    local.mkdir(parents=True)
    (local / "conversion.json").write_text(json.dumps({"name": "smollm2-135m"}))
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    base.config._name_or_path = str(local); base.name_or_path = str(local)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    out = tmp_path / "adapter"
    model.save_pretrained(str(out))
    assert PeftConfig.from_pretrained(str(out)).base_model_name_or_path == str(local)    # what PEFT writes: this machine's path
    assert "Model Card for Model ID" in (out / "README.md").read_text()
    (out / "calm_train_config.json").write_text(json.dumps({
        "config": {"method": "dpo", "model": "smollm2-135m", "learning_rate": 5e-6, "beta": 0.1, "max_steps": 4, "seed": 0},
        "data": {"source": "/tmp/run/data/trl/calm_dpo.jsonl", "rows": 12, "train_rows": 12, "eval_rows": 0,
                 "languages": ["en", "fr"], "trl_sha256": "00ff"},
        "result": {"global_step": 4, "train_loss": 0.69, "device": "cpu"}}))
    r = publish_adapter(out)
    assert PeftConfig.from_pretrained(str(out)).base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: peft\n")
    for s in ("| lora r | 4 |", "| method | dpo |", "| beta | 0.1 |", "rows: 12", "languages: en, fr", str(local)):
        assert s in card, s
    assert "<!--" not in card and r["local"] == str(local)
    assert json.loads((out / "calm_train_config.json").read_text())["local_base_model"] == str(local)


def test_unknown_base_is_left_as_it_is(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "somewhere"), "r": 2}))
    r = publish_adapter(tmp_path)
    assert r["hub_id"] is None and json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path / "somewhere")
    assert "hub id: unknown" in (tmp_path / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="adapter_config.json missing"): publish_adapter(tmp_path / "nothing")
