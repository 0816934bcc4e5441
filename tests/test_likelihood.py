"""Option-likelihood evaluation (calm.likelihood) through transformers: RankC against the source's definition,
answers and tables on synthetic log-probabilities, and the embedded SmolLM2-135M (loaded once) on a few demo
questions: the scored tokens are exactly the options', batching and shared contexts change nothing, every question
gets an answer. The vLLM scorer is checked against this one in tests/test_vllm_likelihood.py (.venv-vllm)."""
import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from calm.data import DataError, MCItem, demo_items
from calm.likelihood import (ContinuationScorer, excess_rankc, rankc_chance, TransformersScorer, _score_rows, as_scorer, compare_likelihood, encode_pair,
                             likelihood_answers, likelihood_context, likelihood_per_question, likelihood_row, likelihood_table,
                             option_continuation,
                             option_logprobs, option_rankings, rankc, rankc_by_sets, rankc_matrix, rankc_pair, rankc_weights)
from calm.prompts import PromptBuilder

LANGS = ["en", "zh", "fr"]
ALL = ["en", "zh", "fr", "de", "it", "ja"]


# ---- RankC ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_rankc_closed_form_equals_the_source_sets(n):
    rng = np.random.default_rng(n)
    a = rng.permuted(np.tile(np.arange(n), (300, 1)), axis=1)
    b = rng.permuted(np.tile(np.arange(n), (300, 1)), axis=1)
    b[:50] = a[:50]                                                          # some identical rankings
    closed = rankc_pair(a, b, per_question=True)
    np.testing.assert_allclose(closed, rankc_by_sets(a, b, per_question=True), atol=1e-12)
    np.testing.assert_allclose(closed[:50], 1.0)
    np.testing.assert_allclose(closed, rankc_pair(b, a, per_question=True), atol=1e-12)
    assert (closed >= rankc_weights(n)[-1] - 1e-12).all() and (closed <= 1 + 1e-12).all()


def test_rankc_chance_is_the_mean_over_all_pairs_of_rankings():
    for n in (2, 3, 4):
        perms = np.array(list(itertools.permutations(range(n))))
        a, b = np.repeat(perms, len(perms), axis=0), np.tile(perms, (len(perms), 1))
        assert rankc_pair(a, b) == pytest.approx(rankc_chance(n))
    assert rankc_chance(1) == 1.0 and 0.3 < rankc_chance(5) < 0.32


def test_rankc_by_hand():
    e = np.e
    w = np.array([e**4, e**3, e**2, e]) / (e**4 + e**3 + e**2 + e)          # softmax of (4, 3, 2, 1)
    np.testing.assert_allclose(rankc_weights(4), w)
    # (A, B, C, D) vs (D, C, B, A): P@1 = 0, P@2 = 0, P@3 = 2/3, P@4 = 1
    assert rankc_pair([[0, 1, 2, 3]], [[3, 2, 1, 0]]) == pytest.approx(w[2] * 2 / 3 + w[3])
    # (A, B, C, D) vs (A, C, B, D): P@1 = 1, P@2 = 1/2, P@3 = 1, P@4 = 1
    assert rankc_pair([[0, 1, 2, 3]], [[0, 2, 1, 3]]) == pytest.approx(w[0] + w[1] / 2 + w[2] + w[3])
    # any change costs: even swapping the last two candidates, (A, B, D, C), brings RankC below 0.99
    perms = np.array(list(itertools.permutations(range(4))))
    vals = rankc_pair(np.repeat([[0, 1, 2, 3]], 24, axis=0), perms, per_question=True)
    assert sorted(vals)[-1] == pytest.approx(1.0) and sorted(vals)[-2] < 0.99


def test_rankc_over_languages_is_the_mean_over_pairs():
    rng = np.random.default_rng(3)
    R = np.stack([rng.permuted(np.tile(np.arange(5), (40, 1)), axis=1) for _ in range(4)], axis=1)   # (Q, L, N)
    langs = ["en", "zh", "fr", "de"]
    pairs = list(itertools.combinations(range(4), 2))
    assert rankc(R, langs) == pytest.approx(np.mean([rankc_pair(R[:, i], R[:, j]) for i, j in pairs]))
    assert rankc(R, langs, reference="zh") == pytest.approx(np.mean([rankc_pair(R[:, 1], R[:, j]) for j in (0, 2, 3)]))
    M = rankc_matrix(R, langs)
    assert np.allclose(M.to_numpy(), M.to_numpy().T) and np.allclose(np.diag(M), 1)
    assert M.loc["en", "fr"] == pytest.approx(rankc_pair(R[:, 0], R[:, 2]))
    with pytest.raises(ValueError, match="at least two languages"): rankc(R[:, :1], ["en"])
    with pytest.raises(ValueError, match="not a permutation"): rankc_pair([[0, 1, 1]], [[0, 1, 2]])


# ---- answers and tables on synthetic log-probabilities ----------------------------------------------------------

class GoldScorer(ContinuationScorer):
    "A fake scorer: the gold letter scores -0.1 in `right` languages, else a fixed 'wrong' letter does; others -3 - k/10."
    kind, model_id = "gold", "gold"

    def __init__(self, items, right):
        self.by_ctx = {likelihood_context(PromptBuilder("plain"), it): it for it in items}
        self.right, self.requests = set(right), []

    def loglikelihood(self, requests):
        self.requests += requests
        out = []
        for ctx, cont in requests:
            it, letter = self.by_ctx[ctx], cont.strip()
            best = it.gold if it.lang in self.right else ("A" if it.gold != "A" else "B")
            out.append([-0.1 if letter == best else -3 - "ABCDE".index(letter) / 10])
        return out


def test_fake_scores_flow_into_the_papers_metrics_and_rankc(items):
    sc = GoldScorer(items, right={"en", "fr"})
    lp = option_logprobs(items, LANGS, sc)
    assert len(sc.requests) == len(lp) == 3 * 3 * 5
    assert {c for _, c in sc.requests} == {" A", " B", " C", " D", " E", "A", "B", "C", "D", "E"}
    ans = likelihood_answers(lp)
    assert ans.letter.notna().all() and set(ans.evaluation) == {"likelihood"}
    tab = likelihood_table(lp, items, LANGS, n_boot=100)
    assert set(tab.evaluation) == {"likelihood"}
    assert tab.loc[["acc_en", "acc_zh", "acc_fr"], "value"].tolist() == [1.0, 0.0, 1.0]
    assert tab.loc["Consistency_3", "value"] == 0.0 and tab.loc["Consistency_2", "value"] == pytest.approx(1 / 3)
    # the rankings: en and fr identical (gold first, then letter order), zh differs at the top
    _, R = option_rankings(lp, LANGS)
    assert (R[:, 0] == R[:, 2]).all() and (R[:, 0, 0] != R[:, 1, 0]).all()
    assert tab.loc["RankC", "value"] == pytest.approx(rankc(R, LANGS))
    assert 0 < tab.loc["RankC", "value"] < 1 and tab.loc["RankC_en", "value"] == pytest.approx(rankc(R, LANGS, reference="en"))
    row = likelihood_row(lp, items, LANGS)
    assert row["evaluation"] == "likelihood" and row["en"] == 100 and row["zh"] == 0 and row["RankC"] == pytest.approx(100 * rankc(R, LANGS))


def test_comparing_two_systems_pairs_the_same_questions(items):
    base = option_logprobs(items, LANGS, GoldScorer(items, right={"en", "fr"}))
    better = option_logprobs(items, LANGS, GoldScorer(items, right=LANGS))                  # zh now right too
    per_q = likelihood_per_question(base, items, LANGS, s_values=[2, 3])
    assert list(per_q.columns) == ["correct_en", "correct_zh", "correct_fr", "ACC_avg", "Consistency_2", "Consistency_3", "RankC", "RankC_en"]
    tab = likelihood_table(base, items, LANGS, n_boot=50)
    for col in ("ACC_avg", "Consistency_2", "Consistency_3", "RankC", "RankC_en"):
        assert per_q[col].mean() == pytest.approx(tab.loc[col, "value"])                   # the means are the table's metrics
    c = compare_likelihood(base, better, items, LANGS, n_boot=200).set_index("metric")
    assert set(c.evaluation) == {"likelihood"} and (c.n == 3).all()
    assert c.loc["acc_zh", "diff"] == pytest.approx(100) and c.loc["acc_en", "diff"] == 0
    assert c.loc["Consistency_3", "diff"] == pytest.approx(100) and c.loc["Consistency_3", "ci_low"] == pytest.approx(100)
    assert c.loc["RankC", "b"] == pytest.approx(100) and c.loc["RankC", "diff"] > 0 and c.loc["RankC", "p_le_0"] == 0


def test_answers_take_the_first_of_equal_maxima_and_renormalise():
    lp = pd.DataFrame({"qid": ["q"] * 4, "lang": "en", "option": list("ABCD"), "logprob": [-2.0, -1.0, -1.0, -5.0]})
    a = likelihood_answers(lp)
    assert a.letter.tolist() == ["B"]
    assert a.p_option.iloc[0] == pytest.approx(np.exp(-1) / np.exp([-2.0, -1.0, -1.0, -5.0]).sum())
    _, R = option_rankings(lp, ["en"])
    assert R[0, 0].tolist() == [1, 2, 0, 3]
    with pytest.raises(DataError, match="missing"): likelihood_answers(lp.assign(logprob=[np.nan, 1, 1, 1]))


def test_bad_inputs_fail_clearly(items):
    sc = GoldScorer(items, right=LANGS)
    with pytest.raises(DataError, match="have no item"): option_logprobs([it for it in items if it.lang != "fr"], LANGS, sc)
    with pytest.raises(DataError, match="no prompt for language 'pt'"): option_logprobs(items, ["en", "pt"], sc)
    with pytest.raises(DataError, match="needs at least two options"):
        option_logprobs([replace(it, options=it.options[:1]) for it in items if it.lang == "en"][:1], ["en"], sc)
    lp = option_logprobs(items, LANGS, sc)
    with pytest.raises(DataError, match="no option log-probabilities for question"): option_rankings(lp, ["en", "de"])
    with pytest.raises(DataError, match="different numbers of options"): option_rankings(lp.iloc[1:], LANGS)
    with pytest.raises(TypeError, match="cannot score with"): option_logprobs(items, LANGS, 42)
    with pytest.raises(ValueError, match="both have tokens"): _score_rows([([1], [])])


def test_prompt_ends_in_the_answer_label_in_every_mode(items):
    it_en = next(it for it in items if it.lang == "en")
    it_ja = next(it for it in items if it.lang == "ja")
    for b in (PromptBuilder("plain"), PromptBuilder("fewshot")):
        assert likelihood_context(b, it_en).endswith("\nE. " + it_en.option_text("E") + "\nAnswer:")
        assert likelihood_context(b, it_ja).endswith("\n答え:")
    assert option_continuation(PromptBuilder("plain"), "ja", "C") == "C"
    assert option_continuation(PromptBuilder("plain"), "de", "C") == " C"


# ---- the embedded model -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    "SmolLM2-135M through transformers, loaded once for the module."
    from calm.models import load_model
    return load_model("smollm2-135m", device="cpu")


def test_scored_tokens_are_exactly_the_options_tokens(items, smol):
    _, tok = smol
    chat = PromptBuilder.auto(tok)
    for it in [x for x in demo_items("test") if x.qid == items[0].qid]:                # all six languages
        ctx = likelihood_context(chat, it)
        assert ctx.endswith(f"<|im_start|>assistant\n{chat.spec(it.lang).answer}:")
        for letter in it.letters:
            cont = option_continuation(chat, it.lang, letter)
            c, x = encode_pair(tok, ctx, cont)
            assert tok.decode(x) == cont and len(x) == 1
            assert c == tok(ctx, add_special_tokens=False)["input_ids"]
            assert c + x == tok(ctx + cont, add_special_tokens=False)["input_ids"]
    c, x = encode_pair(tok, "Say hel", "lo")                                             # "hello" is one token here
    assert tok.decode(c) == "Say hel" and tok.decode(x) == "lo"


def test_batches_and_shared_contexts_change_nothing(items, smol):
    import torch
    model, tok = smol
    chat = PromptBuilder.auto(tok)
    ctxs = [likelihood_context(chat, it) for it in items if it.lang in ("en", "zh")][:3]
    reqs = [(c, x) for c in ctxs for x in (" A", " C", "B")] + [(ctxs[0], " E. " + items[0].option_text("E")), ("The sky is", " blue today")]
    one = TransformersScorer(model, tok, batch_size=1).loglikelihood(reqs)
    many = TransformersScorer(model, tok, batch_size=4).loglikelihood(reqs)                        # shared prefixes
    unshared = TransformersScorer(model, tok, batch_size=4, share_prefix=False).loglikelihood(reqs)
    for c, x in reqs[-2:]:
        assert len(encode_pair(tok, c, x)[1]) > 1                                        # multi-token continuations included
    for (c, x), a, b, u in zip(reqs, one, many, unshared):
        ci, xi = encode_pair(tok, c, x)
        with torch.inference_mode(): lp = torch.log_softmax(model(torch.tensor([ci + xi])).logits[0].float(), -1)
        alone = [float(lp[len(ci) - 1 + j, t]) for j, t in enumerate(xi)]
        np.testing.assert_allclose(a, alone, atol=1e-4)
        np.testing.assert_allclose(b, alone, atol=1e-4)
        np.testing.assert_allclose(u, alone, atol=1e-4)


def test_every_question_gets_an_answer_and_a_table(items, smol):
    model, tok = smol
    scorer = as_scorer(type("B", (), {"model": model, "tokenizer": tok, "model_id": "smollm2-135m"})())   # a backend-like object
    assert isinstance(scorer, TransformersScorer)
    lp = option_logprobs(items, LANGS, scorer)
    assert len(lp) == 3 * 3 * 5 and (lp.n_tokens == 1).all() and (lp.logprob < 0).all()
    assert lp.attrs["prompt_mode"] == "chat" and lp.attrs["model"] == "smollm2-135m" and lp.attrs["scorer"] == "transformers"
    assert lp.groupby(["qid", "lang"]).logprob.nunique().min() > 1                       # the options really differ
    ans = likelihood_answers(lp)
    assert len(ans) == 9 and ans.letter.isin(list("ABCDE")).all()
    p = np.exp(lp.logprob.to_numpy().reshape(9, 5))
    assert (p.sum(axis=1) <= 1 + 1e-6).all()                                             # a distribution over the vocabulary
    tab = likelihood_table(lp, items, LANGS, n_boot=100)
    assert set(tab.evaluation) == {"likelihood"} and {"ACC_avg", "Consistency_3", "AC3_3", "RankC", "RankC_en"} <= set(tab.index)
    assert ((tab.ci_low <= tab.value + 1e-12) & (tab.value <= tab.ci_high + 1e-12)).all()


def test_a_zero_lora_scores_like_the_base_model(items, smol):
    "A PEFT model scores through the same code; a fresh LoRA (B = 0) leaves every log-probability as it was."
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from calm.models import cached_model_dir
    model, tok = smol
    base = AutoModelForCausalLM.from_pretrained(cached_model_dir()).eval()
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)).eval()
    few = [it for it in items if it.qid == items[0].qid]
    a = option_logprobs(few, LANGS, TransformersScorer(model, tok))
    b = option_logprobs(few, LANGS, TransformersScorer(peft, tok))
    np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4)


def test_gemma_few_shot_prompts_score_exactly_the_options():
    "Gemma-3-270M (the multilingual embedded model; SentencePiece, BOS, no chat template: few-shot prompts), where converted."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from calm.models import MARKER, models_cache_dir
    d = models_cache_dir() / "gemma3-270m"
    if not (d / MARKER).exists(): pytest.skip("gemma3-270m is not converted in the model cache (calm.models.cached_model_dir)")
    tok = AutoTokenizer.from_pretrained(d)
    b = PromptBuilder.auto(tok)
    assert b.mode == "fewshot"
    its = [x for x in demo_items("test") if x.qid == "demo-041"]
    for it in its:
        ctx = likelihood_context(b, it)
        for letter in it.letters:
            cont = option_continuation(b, it.lang, letter)
            c, x = encode_pair(tok, ctx, cont)
            assert c[0] == tok.bos_token_id and tok.decode(x) == cont and len(x) == 1
            assert c + x == tok(ctx + cont)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    reqs = [(likelihood_context(b, it), option_continuation(b, it.lang, l)) for it in its if it.lang in ("en", "ja") for l in "AE"]
    got = TransformersScorer(model, tok, batch_size=4).loglikelihood(reqs)
    for (c, x), g in zip(reqs, got):
        ci, xi = encode_pair(tok, c, x)
        with torch.inference_mode(): lp = torch.log_softmax(model(torch.tensor([ci + xi])).logits[0].float(), -1)
        np.testing.assert_allclose(g, [float(lp[len(ci) - 1, xi[0]])], atol=1e-4)


def _shuffled_items(n_questions=200, langs=("en", "fr", "de", "es", "it"), seed=0):
    "4-option questions shown in an independently shuffled order per language, option ids recorded."
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n_questions):
        g = int(rng.integers(4))
        for lang in langs:
            order = rng.permutation(4)
            out.append(MCItem(f"q{q}", lang, "?", tuple(("ABCD"[i], f"o{k}") for i, k in enumerate(order)), "ABCD"[list(order).index(g)],
                              option_ids=tuple(f"o{k}" for k in order)))
    return out


def test_fixed_letter_order_has_no_excess_rankc_by_option():
    langs = ["en", "fr", "de", "es", "it"]
    items = _shuffled_items(langs=langs)
    lp = pd.DataFrame([(it.qid, it.lang, x, -1.0 - i) for it in items for i, x in enumerate(it.letters)], columns=["qid", "lang", "option", "logprob"])
    _, by_letter = option_rankings(lp, langs, items=items, agree_on="letter")
    _, by_option = option_rankings(lp, langs, items=items)
    assert rankc(by_letter, langs) == pytest.approx(1.0) and excess_rankc(by_letter, langs) == pytest.approx(0.0, abs=1e-12)
    assert abs(rankc(by_option, langs) - rankc_chance(4)) < 0.03 and abs(excess_rankc(by_option, langs)) < 0.02
    row, row_l = likelihood_row(lp, items, langs), likelihood_row(lp, items, langs, agree_on="letter")
    assert (row["agree_on"], row_l["agree_on"]) == ("option", "letter") and row["ACC_avg"] == row_l["ACC_avg"]
    assert abs(row["excess_RankC"]) < 2 and abs(row["excess_Consistency_2"]) < 2 and row_l["Consistency_5"] == 100
    tab = likelihood_table(lp, items, langs, n_boot=100)
    assert set(tab.agree_on) == {"option"} and tab.loc["excess_Consistency_2", "ci_low"] <= 0 <= tab.loc["excess_Consistency_2", "ci_high"]
    # a model that ranks the options the same way in every language, whatever letter shows them
    lp_opt = pd.DataFrame([(it.qid, it.lang, x, -1.0 - int(it.option_id(x)[1:])) for it in items for x in it.letters],
                          columns=["qid", "lang", "option", "logprob"])
    assert rankc(option_rankings(lp_opt, langs, items=items)[1], langs) == pytest.approx(1.0)
    assert excess_rankc(option_rankings(lp_opt, langs, items=items)[1], langs) == pytest.approx(0.0, abs=1e-12)   # one fixed option order: preference
    assert rankc(option_rankings(lp_opt, langs, items=items, agree_on="letter")[1], langs) < 0.6
