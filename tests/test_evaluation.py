import pandas as pd
import pytest

from calm.data import DataError, MCItem
from calm.evaluation import answer_matrix, compare_systems, evaluate_model, results_table, score
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
