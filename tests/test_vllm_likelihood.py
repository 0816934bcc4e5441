"""Option likelihoods through vLLM (`calm.likelihood.VLLMScorer`, prompt log-probs) agree with transformers
(`TransformersScorer`) on the embedded SmolLM2-135M: the same tokens scored, the same log-probabilities to a stated
tolerance, the same answers and rankings wherever the options are not within that tolerance of each other.

Like tests/test_vllm_cpu.py this runs in `.venv-vllm` (`make pytest-vllm`, CALM_REQUIRE_VLLM=1 turns a missing vllm
into a failure) and skips in the base environment. One engine serves the module.
"""
import os

import pytest

if os.environ.get("CALM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm: `make pytest-vllm` runs this file there")

import numpy as np

from calm.likelihood import (TransformersScorer, VLLMScorer, encode_pair, likelihood_answers, option_logprobs,
                             option_rankings)
from calm.prompts import PromptBuilder, likelihood_context

LANGS = ["en", "zh", "fr", "ja"]
# Both run the float32 weights on CPU; they differ in kernels (vLLM's attention and fused layers, summation order).
# Measured here: max |difference| of an option log-probability 1.8e-5 to 3.0e-5 (printed by the test); 1e-3 leaves room
# while still catching a wrong token or position (those move log-probs by whole units).
ATOL = 1e-3
RANK = 8


@pytest.fixture(scope="module")
def vllm_scorer(model_dir):
    "One vLLM engine for the module, in float32 (the weights' dtype, as transformers runs them), LoRA on."
    from calm.serving import VLLMBackend
    b = VLLMBackend(model_dir, seed=0, dtype="float32", max_model_len=1024, enable_lora=True, lora_rank=RANK)
    yield VLLMScorer(b)
    b.close()


@pytest.fixture(scope="module")
def hf_scorer(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return TransformersScorer(model, tok, batch_size=6)


@pytest.fixture(scope="module")
def tables(items, vllm_scorer, hf_scorer):
    builder = PromptBuilder.auto(hf_scorer.tokenizer, languages=LANGS)
    return option_logprobs(items, LANGS, vllm_scorer, builder), option_logprobs(items, LANGS, hf_scorer, builder)


def test_same_rows_and_tokens(tables, items):
    v, t = tables
    assert len(v) == len(t) == len({it.qid for it in items}) * len(LANGS) * 5
    assert v[["qid", "lang", "option", "n_tokens"]].equals(t[["qid", "lang", "option", "n_tokens"]])
    assert v.attrs["scorer"] == "vllm" and t.attrs["scorer"] == "transformers"
    assert v.attrs["prompt_template_hash"] == t.attrs["prompt_template_hash"]
    assert set(v.evaluation) == set(t.evaluation) == {"likelihood"}


def test_logprobs_agree_within_tolerance(tables):
    v, t = tables
    diff = np.abs(v.logprob.to_numpy() - t.logprob.to_numpy())
    print(f"max |vLLM - transformers| over {len(diff)} option log-probs: {diff.max():.2e} (tolerance {ATOL})")
    assert diff.max() <= ATOL
    assert (v.logprob < 0).all() and v.logprob.std() > 0.1       # real, varied log-probs, not a constant


def test_answers_and_rankings_agree_where_not_tied(tables):
    v, t = tables
    av, at = likelihood_answers(v), likelihood_answers(t)
    lp = t.pivot_table(index=["qid", "lang"], columns="option", values="logprob", sort=False)
    top2 = np.sort(lp.to_numpy(), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * ATOL                  # the best option leads the next by more than the tolerance
    assert clear.mean() > 0.8
    assert (av.letter.to_numpy()[clear] == at.letter.to_numpy()[clear]).all()
    _, rv = option_rankings(v, LANGS)
    _, rt = option_rankings(t, LANGS)
    gaps = np.diff(np.sort(lp.to_numpy(), axis=1), axis=1).min(axis=1) > 2 * ATOL   # no two options within tolerance
    assert (rv.reshape(-1, 5)[gaps] == rt.reshape(-1, 5)[gaps]).all()


def test_multi_token_continuations_agree_token_by_token(items, vllm_scorer, hf_scorer):
    it = next(x for x in items if x.lang == "fr")
    ctx = likelihood_context(PromptBuilder.auto(hf_scorer.tokenizer), it)
    reqs = [(ctx, f" {l}. {it.option_text(l)}") for l in it.letters] + [("Paris is the capital of", " France, a country")]
    v, t = vllm_scorer.loglikelihood(reqs), hf_scorer.loglikelihood(reqs)
    assert [len(x) for x in v] == [len(x) for x in t] == [len(encode_pair(hf_scorer.tokenizer, c, x)[1]) for c, x in reqs]
    assert max(len(x) for x in v) > 2
    np.testing.assert_allclose(np.concatenate(v), np.concatenate(t), atol=ATOL)


def test_a_lora_adapter_scores_the_same_through_vllm_and_peft(items, vllm_scorer, hf_scorer, model_dir, tmp_path):
    "A trained system is a LoRA adapter: vLLM serving it unmerged scores as the PEFT model does in transformers."
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.0,
                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name: p.normal_(0, 0.02)
    peft.save_pretrained(tmp_path / "adapter")
    few = [it for it in items if it.qid == items[0].qid]
    builder = PromptBuilder.auto(hf_scorer.tokenizer, languages=LANGS)
    v = option_logprobs(few, LANGS, VLLMScorer(vllm_scorer.backend.with_lora(tmp_path / "adapter")), builder)
    t = option_logprobs(few, LANGS, TransformersScorer(peft.eval(), hf_scorer.tokenizer), builder)
    plain = option_logprobs(few, LANGS, vllm_scorer, builder)
    np.testing.assert_allclose(v.logprob, t.logprob, atol=ATOL)
    assert np.abs(v.logprob - plain.logprob).max() > 100 * ATOL                     # the adapter does change the scores
