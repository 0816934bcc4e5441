import pandas as pd
import pytest

from calm.data import DataError, MCItem
from calm.evaluation import answer_matrix, compare_systems, evaluate_model, results_row, results_table, score
from calm.sampling import EchoBackend

ITEMS = [MCItem(q, l, "?", (("A", "a"), ("B", "b"), ("C", "c")), g) for q, g in (("q1", "A"), ("q2", "B"), ("q3", "C")) for l in ("en", "de", "ja")]


def recs(letters):
    "letters: {lang: 'ABC'-string of answers for q1..q3, '-' unparsed}"
    return pd.DataFrame([(f"q{i + 1}", l, 0, None if c == "-" else c) for l, s in letters.items() for i, c in enumerate(s)],
                        columns=["qid", "lang", "sample", "letter"])


def test_table1_row_hand_checked():
    # en: all right; de: right on q1 only; ja: q1 right, q2 unparsed, q3 wrong (A)
    r = recs({"en": "ABC", "de": "AAA", "ja": "A-A"})
    t = results_table({"base": r}, ITEMS, ["en", "de", "ja"]).iloc[0]
    assert (t.en, round(t.de, 4), round(t.ja, 4)) == (100.0, 33.3333, 33.3333)
    assert round(t.ACC_avg, 4) == 55.5556
    # all three agree only on q1 -> Consistency_3 = 1/3; AC3 = harmonic mean of 55.56 and 33.33
    assert round(t.Consistency_3, 4) == 33.3333
    assert round(t.AC3_3, 4) == round(2 * 55.5556 * 33.3333 / (55.5556 + 33.3333), 4)


def test_score_has_intervals_around_values():
    s = score(recs({"en": "ABC", "de": "AAA", "ja": "A-A"}), ITEMS, ["en", "de", "ja"], n_boot=200)
    assert {"acc_en", "ACC_avg", "Consistency_2", "AC3_3"} <= set(s.index)
    assert ((s.ci_low <= s.value + 1e-12) & (s.value <= s.ci_high + 1e-12)).all()


def test_missing_answers_count_as_wrong_and_paired_difference():
    a = recs({"en": "ABC", "de": "AAA"})
    b = recs({"en": "ABC", "de": "ABC"})
    missing = a[~((a.lang == "de") & (a.qid == "q3"))]
    _, pred, _ = answer_matrix(missing, ITEMS, ["en", "de"])
    assert pred[2].tolist() == [2, -1]
    c = compare_systems(a, b, ITEMS, ["en", "de"], n_boot=300).set_index("metric")
    assert c.loc["en", "diff"] == 0 and round(c.loc["de", "diff"], 4) == 66.6667 and c.loc["de", "p_le_0"] < 0.2


def test_items_without_gold_cannot_be_scored():
    items = [MCItem("q1", "en", "?", (("A", "a"), ("B", "b")), None)]
    with pytest.raises(DataError, match="no gold letter"):
        results_table({"x": recs({"en": "A"})}, items, ["en"])


def test_evaluate_model_resumes(tmp_path):
    be = EchoBackend()
    r1 = evaluate_model(tmp_path / "ev", ITEMS, ["en", "de", "ja"], be, greedy=True, max_new_tokens=12, progress=False)
    calls = len(be.calls)
    r2 = evaluate_model(tmp_path / "ev", ITEMS, ["en", "de", "ja"], be, greedy=True, max_new_tokens=12, progress=False)
    assert len(be.calls) == calls and r1.text.tolist() == r2.text.tolist() and len(r1) == 9
    assert set(r1.how) <= {"parsed", "option_text", "missing"}


# ---- agreement by option identity on options shuffled per language ----
import numpy as np

from calm.data import demo_items
from calm.metrics import consistency_at, consistency_by_enumeration, excess_consistency, excess_consistency_ci
from calm.voting import answer_array, encode_letters

LANGS5 = ["en", "fr", "de", "es", "it"]


def shuffled_set(n_questions=200, languages=LANGS5, n_options=4, seed=0):
    "Parallel 4-option questions whose options are shuffled independently per language (seeded), ids recorded; gold a random option."
    rng = np.random.default_rng(seed)
    items = []
    for q in range(n_questions):
        ids = [f"q{q}-o{k}" for k in range(n_options)]
        g = int(rng.integers(n_options))
        for lang in languages:
            order = rng.permutation(n_options)
            letters = "ABCDEFGHIJ"[:n_options]
            opts = tuple((letters[i], f"{ids[k]} in {lang}") for i, k in enumerate(order))
            items.append(MCItem(f"q{q}", lang, f"question {q}?", opts, letters[list(order).index(g)], option_ids=tuple(ids[k] for k in order)))
    return items


def answers(items, letter_of):
    "One record per item with the letter `letter_of(item)`."
    return pd.DataFrame([(it.qid, it.lang, 0, letter_of(it)) for it in items], columns=["qid", "lang", "sample", "letter"])


def test_constant_letter_model_has_no_excess_agreement_by_option():
    items = shuffled_set()
    always_a = answers(items, lambda it: "A")
    by_option = results_table({"A": always_a}, items, LANGS5).iloc[0]
    by_letter = results_table({"A": always_a}, items, LANGS5, agree_on="letter").iloc[0]
    assert (by_option.agree_on, by_letter.agree_on) == ("option", "letter")
    assert by_option.ACC_avg == by_letter.ACC_avg and 15 < by_option.ACC_avg < 35      # right where gold happens to be shown as A
    _, pred, _ = answer_matrix(always_a, items, LANGS5)
    assert abs(consistency_at(pred, 2) - 0.25) < 0.03                                     # by option: chance agreement of 4 options
    ci = excess_consistency_ci(pred, s=2, n_boot=500, seed=0)
    assert ci.low <= 0 <= ci.high and abs(ci.estimate) < 0.02
    assert abs(by_option.excess_Consistency_2) < 2
    assert by_letter.Consistency_5 == 100 and by_letter.excess_Consistency_2 == 0     # by letter: perfectly consistent, all of it preference
    s = score(always_a, items, LANGS5, n_boot=200)
    assert s.loc["excess_Consistency_2", "ci_low"] <= 0 <= s.loc["excess_Consistency_2", "ci_high"] and set(s.agree_on) == {"option"}
    _, pred_l, _ = answer_matrix(always_a, items, LANGS5, agree_on="letter")
    assert excess_consistency_ci(pred_l, s=2, n_boot=200) == excess_consistency_ci(np.zeros_like(pred_l), s=2, n_boot=200)


def test_gold_everywhere_agrees_by_option_not_by_letter():
    items = shuffled_set()
    gold = answers(items, lambda it: it.gold)
    o = results_row(gold, items, LANGS5)
    l = results_row(gold, items, LANGS5, agree_on="letter")
    assert o["ACC_avg"] == l["ACC_avg"] == 100 and all(o[x] == 100 for x in LANGS5)
    assert o["Consistency_5"] == 100 and o["excess_Consistency_2"] > 70
    assert l["Consistency_5"] < 5 and abs(l["excess_Consistency_2"]) < 5
    c = compare_systems(answers(items, lambda it: "A"), gold, items, LANGS5, n_boot=200).set_index("metric")
    assert c.loc["excess_Consistency_2", "ci_low"] > 50 and set(c.agree_on) == {"option"}


def test_consistency_by_option_equals_enumeration_on_brute_force_ids():
    items = shuffled_set(n_questions=60, seed=3)
    rng = np.random.default_rng(1)
    recs = answers(items, lambda it: rng.choice(list("ABCD") + [None]))
    _, pred, _ = answer_matrix(recs, items, LANGS5)
    # brute force, without canonical_letter: each answer's option id, then any one-to-one naming of the ids
    by_key = {(it.qid, it.lang): it for it in items}
    names: dict = {}
    ids = [[None if pd.isna(x := recs[(recs.qid == q) & (recs.lang == l)].letter.iloc[0])
            else by_key[(q, l)].option_ids[by_key[(q, l)].letters.index(x)] for l in LANGS5] for q in dict.fromkeys(recs.qid)]
    codes = np.array([[-1 if i is None else names.setdefault(i.split("-")[1], len(names)) for i in row] for row in ids], np.int8)
    for s in range(1, 6):
        assert consistency_at(pred, s) == pytest.approx(consistency_by_enumeration(codes, s), abs=1e-12)
        assert consistency_at(pred, s, per_question=True) == pytest.approx(consistency_by_enumeration(codes, s, per_question=True), abs=1e-12)
    assert excess_consistency(pred) == pytest.approx(excess_consistency(codes), abs=1e-12)


def test_unshuffled_items_give_the_old_numbers_both_ways():
    items = demo_items("test")
    langs = sorted({it.lang for it in items})
    rng = np.random.default_rng(0)
    recs = answers(items, lambda it: rng.choice(it.letters + [None]))
    old_q, old = answer_array(recs, langs, samples=[0])
    gold = {it.qid: it.gold for it in items}
    old_gold = encode_letters([gold[q] for q in old_q])
    for agree_on in ("option", "letter"):
        qids, pred, g = answer_matrix(recs, items, langs, agree_on=agree_on)
        assert qids.tolist() == old_q.tolist() and pred.tolist() == old[:, :, 0].tolist() and g.tolist() == old_gold.tolist()
    o, l = results_row(recs, items, langs), results_row(recs, items, langs, agree_on="letter")
    assert {k: v for k, v in o.items() if k != "agree_on"} == {k: v for k, v in l.items() if k != "agree_on"}
    assert o[f"Consistency_{len(langs)}"] == 100 * consistency_at(old[:, :, 0], len(langs))
    so, sl = score(recs, items, langs, n_boot=100), score(recs, items, langs, n_boot=100, agree_on="letter")
    assert so.drop(columns="agree_on").equals(sl.drop(columns="agree_on"))


def test_shuffled_gold_disagreement_is_still_an_error():
    items = shuffled_set(n_questions=2, languages=["en", "fr"])
    it = items[1]
    wrong = MCItem(it.qid, it.lang, it.question, it.options, next(x for x in it.letters if x != it.gold), option_ids=it.option_ids)
    with pytest.raises(DataError, match="different gold options"):
        results_table({"x": answers(items, lambda i: "A")}, [items[0], wrong], ["en", "fr"])
