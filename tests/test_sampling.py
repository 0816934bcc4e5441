"""Sampling: the batch/seed contract (resume equals an uninterrupted run), bad inputs, the real tiny model, vLLM on GPU."""
import random
import re
from dataclasses import replace

import pytest

from calm.data import DataError, demo_items
from calm.prompts import PromptBuilder
from calm.sampling import (EchoBackend, _cut_at_stop, batch_seed, check_sampling_args, plan_batches, prompt_keys,
                           sample)
from calm.serving import split_evenly
from conftest import first_demo_questions, sample_key

LANGS = ["en", "zh", "fr"]


@pytest.fixture(scope="module")
def items():
    return first_demo_questions(5)


def run(items, backend=None, **kw):
    kw = {"m": 3, "batch_size": 4, "seed": 11, "progress": False, **kw}
    return sample(items, LANGS, backend=backend or EchoBackend(), **kw)


def test_plan_batches_and_seeds():
    keys = [(f"q{i}", "en") for i in range(10)]
    b = plan_batches(keys, 4)
    assert [len(x) for x in b] == [4, 4, 2] and sum(b, []) == keys
    assert batch_seed(3, 1) == batch_seed(3, 1) != batch_seed(3, 2) != batch_seed(4, 1)


def test_key_order_is_items_then_languages(items):
    keys, _ = prompt_keys(items, LANGS)
    qids = list(dict.fromkeys(it.qid for it in items))
    assert keys == [(q, l) for q in qids for l in LANGS]


def test_records_and_seeds(items):
    echo = EchoBackend()
    recs = run(items, echo)
    assert len(recs) == 5 * 3 * 3 and len({sample_key(r) for r in recs}) == len(recs)
    assert [c["seed"] for c in echo.calls] == [batch_seed(11, b) for b in range(4)]   # 15 prompts in batches of 4
    assert all(c["n"] == 3 for c in echo.calls)
    assert {r["finish_reason"] for r in recs} == {"stop"}
    assert run(items) == recs                                       # deterministic
    assert run(items, seed=12) != recs


@pytest.mark.parametrize("trial", range(20))
def test_any_done_subset_resumes_to_the_uninterrupted_run(items, trial):
    full = run(items)
    rng = random.Random(trial)
    done = {sample_key(r) for r in full if rng.random() < rng.choice([0.1, 0.5, 0.9])}
    echo, batches = EchoBackend(), []
    new = run(items, echo, done=done, on_batch=batches.append)
    assert {sample_key(r) for r in new}.isdisjoint(done)
    assert new == [r for r in full if sample_key(r) not in done]           # exactly the missing records, identical
    assert sum(batches, []) == new and all(batches)
    expected = {b for b, batch in enumerate(plan_batches(prompt_keys(items, LANGS)[0], 4))
                if any((q, l, j) not in done for q, l in batch for j in range(3))}
    assert [c["seed"] for c in echo.calls] == [batch_seed(11, b) for b in sorted(expected)]
    assert all(len(c["prompts"]) == (4 if b < 3 else 3) for c, b in zip(echo.calls, sorted(expected)))  # whole batches


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3])
def test_interrupted_run_resumes(items, stop_after):
    store = []
    def append(recs):
        if len(store) >= stop_after * 12: raise Interrupted
        store.extend(recs)
    with pytest.raises(Interrupted): run(items, on_batch=append)
    rest = run(items, done={sample_key(r) for r in store}, on_batch=store.extend)
    assert sorted(map(sample_key, store)) == sorted(map(sample_key, run(items)))
    assert sorted(store, key=sample_key) == sorted(run(items), key=sample_key)
    assert len(rest) == 45 - stop_after * 12


class ChatlessTok:
    chat_template = None
    name_or_path = "base-model"


class CountingEcho(EchoBackend):
    tokenizer = ChatlessTok()


@pytest.mark.parametrize("call, match", [
    (lambda it, b: sample(it, ["en", "tlh"], 2, backend=b), "unknown language code 'tlh'"),
    (lambda it, b: sample(it, ["pt"], 2, backend=b), "no prompt for language 'pt'"),
    (lambda it, b: sample([replace(it[0], question="  ")] + it[1:], LANGS, 2, backend=b), "empty question"),
    (lambda it, b: sample(it, LANGS, 2, backend=b, prompt_mode="chat"), "'base-model' has no chat template"),
    (lambda it, b: sample(it, LANGS, 0, backend=b), r"m \(samples per question and language\) must be an integer >= 1"),
    (lambda it, b: sample(it, LANGS, 2, max_new_tokens=0, backend=b), "max_new_tokens must be an integer >= 1"),
    (lambda it, b: sample(it, LANGS, 2, batch_size=0, backend=b), "batch_size"),
    (lambda it, b: sample(it[:2], LANGS, 2, backend=b), "have no item"),
])
def test_bad_inputs_fail_before_any_work(items, call, match):
    b = CountingEcho()
    with pytest.raises((DataError, ValueError), match=match): call(items, b)
    assert b.calls == []


def test_a_base_tokenizer_gets_fewshot_prompts(items):
    b = CountingEcho()
    sample(items[:3], ["en"], 1, backend=b, progress=False)
    p = b.calls[0]["prompts"][0]
    assert p.endswith("\nExplanation:") and len(re.findall(r"\nAnswer: [A-E]\n", p)) == 1


def test_backend_returning_the_wrong_shape_is_an_error(items):
    class Short(EchoBackend):
        def generate(self, prompts, n, **kw): return super().generate(prompts, n - 1, **kw)
    with pytest.raises(RuntimeError, match="returned"): run(items, Short())


def test_helpers():
    assert _cut_at_stop("abc\nQuestion: x", ["\nQuestion:"]) == ("abc", True)
    assert _cut_at_stop("abc", ["zz"]) == ("abc", False)
    assert [len(r) for r in split_evenly(10, 4)] == [3, 3, 2, 2]
    with pytest.raises(ValueError, match="top_p"): check_sampling_args(1, 1, top_p=1.5)


# ---- the real embedded model (slow) ----

@pytest.fixture(scope="module")
def smol():
    from calm.models import load_model
    from calm.sampling import TransformersBackend
    model, tok = load_model(device="cpu")
    return TransformersBackend(model, tok, name="smollm2-135m")


@pytest.mark.slow
def test_real_model_is_deterministic_and_resumes(items, smol):
    its = [it for it in items if it.qid in {items[0].qid, items[6].qid}]
    kw = dict(m=2, max_new_tokens=24, batch_size=2, seed=5, progress=False)
    full = sample(its, ["en", "de"], backend=smol, **kw)
    assert len(full) == 8 and len({r["text"] for r in full}) > 2
    assert all(r["finish_reason"] in ("stop", "length") and 0 < r["completion_tokens"] <= 24 for r in full)
    done = {sample_key(r) for r in full[:3]}                             # killed after one sample of the second batch
    again = sample(its, ["en", "de"], backend=smol, done=done, **kw)
    assert again == full[3:]


@pytest.mark.slow
def test_forcing_gives_every_unparsable_record_a_letter(items, smol):
    from calm.extraction import force_answers
    it = items[0]
    recs = [{"qid": it.qid, "lang": it.lang, "sample": j, "text": t} for j, t in
            enumerate(["Let me think about this.", "The answer is clearly", f"Explanation: x\nAnswer: {it.letters[1]}"])]
    out = force_answers(recs, items, smol.model, smol.tokenizer, batch_size=2)
    assert [o["how"] for o in out] == ["forced", "forced", "parsed"]
    assert out[2]["letter"] == it.letters[1]
    assert all(o["letter"] in it.letters for o in out) and all(0 < o["force_p"] <= 1 for o in out[:2])
    single = [force_answers([r], items, smol.model, smol.tokenizer)[0]["letter"] for r in recs[:2]]
    assert single == [o["letter"] for o in out[:2]]
    assert [o["how"] for o in force_answers(recs, items, smol.model, smol.tokenizer, min_prob=1.01)] == ["missing", "missing", "parsed"]


def _legacy_backend(smol):
    "benchmarks/decode_step.py's copy of the decode loop as it was before it was vectorised, on the same model."
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("decode_step", Path(__file__).resolve().parents[1] / "benchmarks" / "decode_step.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.LegacyBackend(smol.model, smol.tokenizer, name="smollm2-135m")


@pytest.mark.slow
@pytest.mark.parametrize("mode, stop, temperature", [
    ("fewshot", None, 1.0),                 # the few-shot prompts' own stop string (from the builder)
    ("chat", [".", "\n"], 1.0),             # stop strings that fire often: rows finish at different steps and are dropped
    ("chat", ["the"], 0.0),                 # greedy, a stop string inside words
    ("fewshot", ["答", "é"], 1.0),           # multi-byte characters: completed by byte-level tokens
])
def test_vectorised_decode_loop_gives_the_old_loops_completions(items, smol, mode, stop, temperature):
    b = PromptBuilder.auto(smol.tokenizer, mode, languages=LANGS)
    prompts = [b(it) for it in items if it.lang in ("en", "zh")][:4]
    stop = stop or b.stop_strings("en")
    legacy = _legacy_backend(smol)
    for seed in (0, 1):
        kw = dict(temperature=temperature, top_p=0.9, max_new_tokens=20, seed=seed, stop=stop)
        new = smol.generate(prompts, 3, **kw)
        assert new == legacy.generate(prompts, 3, **kw)
    assert {r["finish_reason"] for row in new for r in row} <= {"stop", "length"}


@pytest.mark.slow
def test_only_tokens_that_can_complete_a_stop_string_are_decoded():
    from transformers import AutoTokenizer
    from calm.models import cached_model_dir
    from calm.sampling import can_complete_stop
    tok = AutoTokenizer.from_pretrained(cached_model_dir())
    ids = lambda text: tok.encode(text, add_special_tokens=False)
    q = ["\nQuestion:"]
    assert can_complete_stop(tok, q, ids(" Question: the answer")) == [False, True, False, False]
    assert can_complete_stop(tok, q, ids("答")) == [True, True]              # parts of a multi-byte character
    assert can_complete_stop(tok, q, [len(tok), len(tok) + 2]) == [True, True]   # ids past the tokenizer (padded embeddings)
    assert can_complete_stop(tok, None, ids(" the")) == [False] and can_complete_stop(tok, [], ids(" the")) == [False]
    assert can_complete_stop(tok, ["Answer: "], ids(" the end")) == [True, True]   # a trailing space: every token is checked
    every = can_complete_stop(tok, q, list(range(len(tok))))
    assert 0 < sum(every) < len(tok) // 4                                   # few tokens need a decode


# ---- vLLM (GPU only) ----

def test_vllm_absent_is_a_clear_error():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from calm.serving import VLLMBackend
    with pytest.raises(ImportError, match=r"pip install 'calm\[gpu\]'"):
        VLLMBackend("any-model")


@pytest.fixture(scope="module")
def vllm_model():
    pytest.importorskip("vllm", reason="the vLLM backend needs vllm (pip install 'calm[gpu]')")
    from calm.models import cached_model_dir
    return str(cached_model_dir())


@pytest.mark.gpu
def test_vllm_backend_samples_and_is_seeded(items, vllm_model):
    from calm.serving import VLLMBackend
    b = VLLMBackend(vllm_model, gpu_memory_utilization=0.3, max_model_len=2048)
    kw = dict(m=3, max_new_tokens=48, batch_size=8, seed=3, progress=False)
    a = sample(items, LANGS, backend=b, **kw)
    assert len(a) == 45 and {r["finish_reason"] for r in a} <= {"stop", "length"}
    assert all(r["prompt_tokens"] > 50 and 0 < r["completion_tokens"] <= 48 for r in a)
    assert sample(items, LANGS, backend=b, **kw) == a


@pytest.mark.gpu
def test_vllm_serves_a_lora_adapter_unmerged(items, vllm_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from calm.serving import VLLMBackend
    base = AutoModelForCausalLM.from_pretrained(vllm_model, dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    b = VLLMBackend(vllm_model, lora=tmp_path / "adapter", lora_rank=8, gpu_memory_utilization=0.3, max_model_len=2048)
    recs = sample(items[:3], ["en"], m=2, max_new_tokens=16, backend=b, progress=False)
    assert len(recs) == 2 and all(r["completion_tokens"] > 0 for r in recs)


def test_next_tokens_draws_exactly_from_the_nucleus():
    import torch
    from calm.sampling import next_tokens
    probs = torch.tensor([0.05, 0.4, 0.02, 0.25, 0.2, 0.08])       # nucleus at top_p 0.8: tokens 1, 3, 4 (0.4+0.25 < 0.8 <= 0.85)
    logits = probs.log().repeat(30000, 1)
    c = torch.bincount(next_tokens(logits, 1.0, 0.8, torch.Generator().manual_seed(3)), minlength=6).tolist()
    assert c[0] == c[2] == c[5] == 0
    for tok, p in ((1, 0.4), (3, 0.25), (4, 0.2)):
        assert abs(c[tok] / 30000 - p / 0.85) < 0.015, (tok, c)
    hot = torch.bincount(next_tokens(logits * 2, 2.0, 1.0, torch.Generator().manual_seed(3)), minlength=6)
    assert hot.min() > 0                                            # top_p 1: every token can come
    assert next_tokens(logits[:4], 0, 0.5).tolist() == [1, 1, 1, 1]


def test_shared_prefixes_groups_prompts():
    from calm.sampling import shared_prefixes
    en = [[7] * 30 + [1, 2, 3], [7] * 30 + [1, 9], [7] * 30 + [4]]
    zh = [[8] * 40 + [5], [8] * 40 + [6, 6]]
    assert shared_prefixes(en + zh + [[9] * 50]) == [30, 30, 30, 40, 40, 0]
    assert shared_prefixes([[1, 2]]) == [0]
