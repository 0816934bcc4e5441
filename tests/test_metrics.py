"Tests of calm.metrics: hand-checked values, closed form == enumeration, bootstrap behaviour, and the benchmark."
import itertools
import json
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from calm.metrics import (CI, ac3, acc_avg, accuracy, bootstrap_ci, bootstrap_means, consistency_at,
                          consistency_by_enumeration, consistency_curve, correctness, metrics_table,
                          paired_bootstrap, pairwise_consistency)
from calm.metrics import bootstrap_stat, excess_consistency, excess_consistency_ci, paired_bootstrap_stat
from calm.voting import encode_letters as E

ROOT = Path(__file__).resolve().parents[1]

PRED = E([["A", "A", "A"], ["B", "C", None], ["C", "A", "D"], ["E", "D", "E"]])
GOLD = E(["A", "B", "C", "D"])


# ---------------------------------------------------------------- accuracy
def test_accuracy_hand_checked():
    assert accuracy(PRED, GOLD).tolist() == [0.75, 0.5, 0.25]
    assert acc_avg(PRED, GOLD) == pytest.approx(0.5)


def test_unparsed_is_wrong_even_against_unparsed():
    assert correctness(E([[None]]), E(["A"])).tolist() == [[False]]
    with pytest.raises(ValueError, match="gold is unknown"):
        accuracy(E([[None]]), E([None]))


# ---------------------------------------------------------------- consistency
@pytest.mark.parametrize("row, s, want", [
    (["A", "A", "B"], 2, 1 / 3), (["A", "A", "B"], 3, 0.0),
    (["A", "A", "A", "A"], 4, 1.0), (["A", "A", None, None], 2, 1 / 6),
    (["A", "A", "B", "B"], 2, 1 / 3), (["A", "A", "A", "B"], 3, 1 / 4),
    ([None, None], 2, 0.0), (["A", None], 1, 0.5),
])
def test_consistency_hand_checked(row, s, want):
    assert consistency_at(E([row]), s) == pytest.approx(want)
    assert consistency_by_enumeration(E([row]), s) == pytest.approx(want)


def test_consistency_curve_average():
    four = E([["A", "A", "A", "A"], ["A", "A", None, None], ["A", "A", "B", "B"], ["A", "A", "A", "B"]])
    curve = consistency_curve(four)
    assert curve.index.tolist() == [2, 3, 4]
    assert curve.tolist() == pytest.approx([1 / 2, 5 / 16, 1 / 4])


def _enumerate_python(row, s):
    "Plain-Python Consistency_s of one question, straight from the definition."
    subsets = list(itertools.combinations(range(len(row)), s))
    return sum(all(row[i] == row[sub[0]] and row[i] >= 0 for i in sub) for sub in subsets) / len(subsets)


@settings(max_examples=200, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(1, 30), st.integers(1, 7)), elements=st.integers(-1, 4)), st.data())
def test_closed_form_equals_enumeration(pred, data):
    s = data.draw(st.integers(1, pred.shape[1]))
    closed = consistency_at(pred, s, per_question=True)
    assert np.allclose(closed, consistency_by_enumeration(pred, s, per_question=True), atol=1e-12)
    assert np.allclose(closed, [_enumerate_python(r, s) for r in pred], atol=1e-12)
    assert consistency_at(pred, s) == pytest.approx(closed.mean(), abs=1e-12)


def test_closed_form_equals_enumeration_sixteen_languages():
    pred = np.random.default_rng(0).integers(-1, 3, size=(200, 16), dtype=np.int8)
    closed = consistency_curve(pred)
    for s in (2, 5, 9, 16):
        assert closed[s] == pytest.approx(consistency_by_enumeration(pred, s), abs=1e-12)


def test_consistency_rejects_bad_s():
    with pytest.raises(ValueError, match="s must lie"):
        consistency_at(PRED, 4)
    with pytest.raises(ValueError, match="s must lie"):
        consistency_at(PRED, 0)


# ---------------------------------------------------------------- release variant
def _release_pairwise(row):
    "The release script's per-question number (what it means to do): pairs agreeing among valid answers."
    keys = [k for k in row if k >= 0]
    if len(keys) < 2:
        return 0.0
    same = sum(keys[i] == keys[j] for i in range(len(keys)) for j in range(i + 1, len(keys)))
    return same / (len(keys) * (len(keys) - 1) / 2)


def test_pairwise_consistency_matches_release_semantics():
    pred = np.random.default_rng(1).integers(-1, 5, size=(500, 6), dtype=np.int8)
    want = np.array([_release_pairwise(r) for r in pred])
    assert np.allclose(pairwise_consistency(pred, per_question=True), want)
    assert pairwise_consistency(pred) == pytest.approx(want.mean())
    assert pairwise_consistency(pred) > consistency_at(pred, 2)  # unparsed answers shrink its denominator


def test_pairwise_equals_consistency_2_without_unparsed():
    pred = np.random.default_rng(2).integers(0, 5, size=(500, 6), dtype=np.int8)
    assert pairwise_consistency(pred) == pytest.approx(consistency_at(pred, 2), abs=1e-12)


# ---------------------------------------------------------------- ac3
def test_ac3():
    assert ac3(0.5, 0.5) == 0.5
    assert ac3(0.6, 0.3) == pytest.approx(0.4)
    assert ac3(0.0, 0.0) == 0.0
    assert ac3(1.0, 0.0) == 0.0
    assert np.allclose(ac3(0.5, np.array([1.0, 0.5, 0.0])), [2 / 3, 0.5, 0.0])


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_estimate_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for q in (100, 400, 1600):
        right = (rng.random(q) < 0.6).astype(float)
        ci = bootstrap_ci(right, n_boot=2000, seed=1)
        assert isinstance(ci, CI)
        assert ci.estimate == pytest.approx(right.mean())
        assert ci.low < ci.estimate < ci.high
        widths.append(ci.high - ci.low)
        assert widths[-1] == pytest.approx(2 * 1.96 * np.sqrt(0.24 / q), rel=0.2)  # the normal approximation
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[1] == pytest.approx(2, rel=0.2)


def test_bootstrap_ci_per_column_and_seeded():
    c = correctness(PRED, GOLD)
    ci = bootstrap_ci(c, seed=4)
    assert ci.estimate.tolist() == [0.75, 0.5, 0.25]
    assert (ci.low <= ci.estimate).all() and (ci.estimate <= ci.high).all()
    assert np.array_equal(ci.low, bootstrap_ci(c, seed=4).low)


def test_bootstrap_constant_values_have_zero_width():
    ci = bootstrap_ci(np.ones(50))
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_bootstrap_means_do_not_depend_on_batching():
    v = np.random.default_rng(0).random((1000, 3))
    a = bootstrap_means(v, 50, seed=1)
    b = bootstrap_means(v, 50, seed=1, max_batch_cells=3000)
    assert a.shape == (50, 3)
    assert np.allclose(a, b, atol=1e-12)
    assert np.allclose(a.mean(axis=0), v.mean(axis=0), atol=0.02)


def test_paired_bootstrap():
    a = np.r_[np.ones(70), np.zeros(30)]
    b = np.r_[np.ones(60), np.zeros(40)]
    pb = paired_bootstrap(a, b)
    assert pb.diff == pytest.approx(0.1)
    assert 0 < pb.low <= pb.diff <= pb.high
    assert pb.p_le_0 == 0.0
    same = paired_bootstrap(a, a)
    assert (same.diff, same.low, same.high, same.p_le_0) == (0.0, 0.0, 0.0, 1.0)
    worse = paired_bootstrap(b, a)
    assert worse.diff == pytest.approx(-0.1) and worse.p_le_0 == 1.0
    unpaired = paired_bootstrap(a, np.random.default_rng(1).permutation(b))
    assert unpaired.high - unpaired.low > pb.high - pb.low
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap(a, b[:10])


def test_paired_bootstrap_on_language_matrices_is_acc_avg():
    rng = np.random.default_rng(5)
    ca, cb = rng.random((300, 6)) < 0.7, rng.random((300, 6)) < 0.6
    pb = paired_bootstrap(ca, cb)
    assert pb.diff == pytest.approx(ca.mean() - cb.mean())


# ---------------------------------------------------------------- table
def test_metrics_table_hand_checked():
    t = metrics_table(PRED, GOLD, ["en", "zh", "fr"], n_boot=500)
    assert t.index.tolist() == ["acc_en", "acc_zh", "acc_fr", "ACC_avg", "Consistency_2", "AC3_2",
                                "Consistency_3", "AC3_3", "pairwise_release"]
    want = [0.75, 0.5, 0.25, 0.5, 1 / 3, 0.4, 1 / 4, 1 / 3, 1 / 3]
    assert t["value"].tolist() == pytest.approx(want)
    assert ((t.ci_low <= t.value + 1e-12) & (t.value <= t.ci_high + 1e-12)).all()


def test_metrics_table_ci_matches_bootstrap_ci():
    rng = np.random.default_rng(0)
    pred = rng.integers(-1, 5, size=(300, 4), dtype=np.int8)
    gold = rng.integers(0, 5, size=300, dtype=np.int8)
    t = metrics_table(pred, gold, ["en", "de", "fr", "it"], n_boot=400, seed=9)
    ci = bootstrap_ci(correctness(pred, gold), n_boot=400, seed=9)
    assert np.allclose(t.loc[["acc_en", "acc_de", "acc_fr", "acc_it"], "ci_low"], ci.low)
    assert t.loc["AC3_4", "value"] == pytest.approx(ac3(acc_avg(pred, gold), consistency_at(pred, 4)))


# ---------------------------------------------------------------- benchmark script
@pytest.mark.slow
def test_benchmark_script_runs(tmp_path):
    out = tmp_path / "metrics.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "metrics.py"), "--questions", "20000", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=1800)   # generous: only a hang should fail
    r = json.loads(out.read_text())
    for key in ("release_s", "large_s", "large_peak_mb", "closed_form_speedup", "machine", "questions"):
        assert key in r
    assert r["questions"] == 20000 and r["large_shape"] == [20000, 16, 8]
    assert r["closed_form_speedup"] > 0 and r["large_s"] > 0   # figures recorded; their size is the benchmark's to report, not a test's to judge
    assert sorted(r["large_consistency"]) == sorted(str(s) for s in range(2, 17))


def test_paper_consis_is_pairwise_consistency_over_fully_parsed_questions():
    # protocol paper's Consis (calm.release.paper_row) is the release script's pairwise score restricted to the
    # questions where every language parsed; on those it equals Consistency_2
    import pandas as pd
    from calm.metrics import consistency_at, pairwise_consistency
    from calm.release import paper_row
    from calm.voting import encode_letters
    rng = np.random.default_rng(3)
    langs = ["en", "zh", "fr", "de"]
    letters = rng.choice(list("ABCD") + [None], size=(40, 4), p=[0.22, 0.22, 0.22, 0.22, 0.12])
    labels = {"en": "Answer: ", "zh": "答案:", "fr": "Réponse: ", "de": "Antwort: "}
    recs = pd.DataFrame([(f"q{i}", l, 0, labels[l] + (x if x else "none")) for i, row in enumerate(letters) for l, x in zip(langs, row)],
                        columns=["qid", "lang", "sample", "text"])
    row = paper_row(recs, {f"q{i}": "A" for i in range(40)}, langs)
    full = encode_letters(letters[[all(x is not None for x in r) for r in letters]])
    assert row["questions_in_Consis"] == len(full)
    assert abs(row["Consis"] - pairwise_consistency(full)) < 1e-12 and abs(row["Consis"] - consistency_at(full, 2)) < 1e-12


def test_correctness_takes_gold_per_language():
    pred = E([["A", "B"], ["C", None]])
    assert correctness(pred, E([["A", "A"], ["C", "B"]])).tolist() == [[True, False], [True, False]]
    assert correctness(pred, E(["A", "C"])).tolist() == correctness(pred, E([["A", "A"], ["C", "C"]])).tolist()
    with pytest.raises(ValueError, match="gold must be shaped"): correctness(pred, E([["A", "A"]]))


def test_excess_consistency_ci_shares_paired_resamples():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(150, 4)).astype(np.int8)
    b = np.repeat(a[:, :1], 4, axis=1)
    stat = lambda p: excess_consistency(p, 2)
    ca, cb = excess_consistency_ci(a, n_boot=300, seed=5), excess_consistency_ci(b, n_boot=300, seed=5)
    assert ca.estimate == pytest.approx(stat(a)) and ca.low <= 0 <= ca.high          # independent answers: no excess
    assert cb.low > 0.6                                                               # the same varied answer in every language
    zero = np.zeros_like(a)                                                           # stat(zero) = 0: the paired interval is the single one
    pb = paired_bootstrap_stat(stat, b, zero, n_boot=300, seed=5)
    assert (pb.diff, pb.low, pb.high) == pytest.approx((cb.estimate, cb.low, cb.high))
    assert bootstrap_stat(np.mean, np.ones(10)) == CI(1.0, 1.0, 1.0)
