"The weights sampling and answering read: a profile's `dtype`, checked before any model loads and carried to the backends."
import pytest
import torch
import yaml

from calm.profile import ProfileError, load_profile
from conftest import profile_copy, save_tiny_llama


def test_profile_dtype_defaults_to_auto_and_keeps_a_given_one(tmp_path):
    assert load_profile("demo").dtype in ("auto", "float32", "bfloat16")
    assert load_profile(str(profile_copy(tmp_path, dtype="float32"))).dtype == "float32"
    assert load_profile(str(profile_copy(tmp_path, "q", dtype=None))).dtype == "auto"


def test_a_misspelt_dtype_names_file_and_key(tmp_path):
    with pytest.raises(ProfileError, match=r"p\.yaml.*dtype.*must be auto, float32, bfloat16 or float16, got 'fp32'"):
        load_profile(str(profile_copy(tmp_path, dtype="fp32")))


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny_llama(tmp_path / "tiny", ["Question Answer A B C D E"])


@pytest.mark.parametrize("dtype,want", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_stage_backends_load_the_profile_dtype(dtype, want, tiny_dir, tmp_path):
    from calm.stages import profile_backend
    from calm.training import TrainConfig
    assert profile_backend("transformers", str(tiny_dir), dtype=dtype).model.dtype == want
    # an adapter is answered on its base model in the same dtype (its own LoRA weights may stay in float32)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ad = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(ad)
    b = profile_backend("transformers", str(tiny_dir), adapter=ad, dtype=dtype)
    assert b.model.get_base_model().model.embed_tokens.weight.dtype == want
    out = b.generate(["Question A B"], 2, max_new_tokens=3, seed=0)
    assert len(out) == 1 and len(out[0]) == 2


def test_auto_is_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    import calm.models as cm
    monkeypatch.setattr(cm, "native_bfloat16", lambda device=None: False)
    assert cm.inference_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(cm, "native_bfloat16", lambda device=None: True)
    assert cm.inference_dtype("auto", "cpu") == "bfloat16"
    assert cm.inference_dtype("float32", "cuda") == "float32"


def test_a_store_sampled_in_float32_is_not_reused_in_bfloat16(tiny_dir, tmp_path):
    "The same weights read in another dtype answer differently: the store moves the float32 run aside and samples again."
    import json
    from calm.data import demo_items
    from calm.stages import profile_backend
    from calm.store import run_sampling
    items = [it for it in demo_items("train") if it.lang == "en"][:1]
    run = tmp_path / "samples"
    run_sampling(run, items, ["en"], 2, profile_backend("transformers", str(tiny_dir), dtype="float32"), max_new_tokens=2,
                 on_change="aside", progress=False)
    first = json.loads((run / "manifest.json").read_text())
    assert "dtype" not in json.dumps(first.get("extra", {}))          # float32 is not recorded: stores written before stay valid
    run_sampling(run, items, ["en"], 2, profile_backend("transformers", str(tiny_dir), dtype="bfloat16"), max_new_tokens=2,
                 on_change="aside", progress=False)
    assert json.loads((run / "manifest.json").read_text())["extra"]["dtype"] == "bfloat16"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("samples") and p != run]
    assert len(aside) == 1 and json.loads((aside[0] / "manifest.json").read_text()) == first
