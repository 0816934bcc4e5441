"Tests of calm.voting: letter codes, vote counts, every tie policy, and the record adapters."
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from calm.data import OPTION_LETTERS, DataError
from calm.voting import (TIE_POLICIES, answer_array, decode_letters, encode_letters, majority_vote,
                         pair_share_by_language, vote_counts, vote_table, winning_share_by_language)


def E(x):
    return encode_letters(x)


# ---------------------------------------------------------------- codes and counts
def test_encode_decode_roundtrip():
    letters = list(OPTION_LETTERS) + [None]
    codes = E(letters)
    assert codes.dtype == np.int8
    assert codes.tolist() == list(range(10)) + [-1]
    assert decode_letters(codes).tolist() == letters


@pytest.mark.parametrize("bad", [None, "", "K", "AB", float("nan"), 3, "k"])
def test_unknown_is_minus_one(bad):
    assert E([bad]).tolist() == [-1]


@pytest.mark.parametrize("letter", ["a", "A ", "Ａ", "ａ"])
def test_case_and_full_width_are_folded(letter):   # as extraction reads them (issue: lower-case letters were dropped silently)
    assert E([letter]).tolist() == [0]


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError):
        decode_letters([10])
    with pytest.raises(ValueError):
        decode_letters([-2])


def test_vote_counts_hand_checked():
    codes = E([["A", "A", "B", None, "E"], [None] * 5])
    assert vote_counts(codes).tolist() == [[2, 1, 0, 0, 1], [0, 0, 0, 0, 0]]
    assert vote_counts(codes, k=2).tolist() == [[2, 1], [0, 0]]  # codes >= k are ignored


@pytest.mark.parametrize("n", [1, 6, 18, 64, 65, 128, 300])
def test_vote_counts_matches_bincount(n):
    rng = np.random.default_rng(n)
    codes = rng.integers(-1, 6, size=(257, n), dtype=np.int8)
    want = np.stack([np.bincount(r[r >= 0], minlength=6) for r in codes])
    got = vote_counts(codes, k=6, chunk=100)  # several chunks, both the narrow and the wide path
    assert np.array_equal(got, want)


def test_vote_counts_3d_is_flattened():
    codes = np.random.default_rng(0).integers(-1, 5, size=(50, 4, 3), dtype=np.int8)
    assert np.array_equal(vote_counts(codes), vote_counts(codes.reshape(50, 12)))


def test_vote_counts_rejects_bad_shapes():
    with pytest.raises(ValueError):
        vote_counts(np.zeros(5, np.int8))
    with pytest.raises(ValueError):
        vote_counts(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- majority vote
# Two languages x two samples per question.
CODES = E([[["A", "A"], ["B", "C"]],      # A wins 2 of 4
           [["B", "C"], ["C", "B"]],      # B/C tie
           [["A", None], [None, "B"]],    # A/B tie, one vote each
           [[None, None], [None, None]],  # nothing parsed
           [["D", None], [None, None]]])  # a single vote wins


def test_drop_policy():
    r = majority_vote(CODES, tie="drop")
    assert r.letters().tolist() == ["A", None, None, None, "D"]
    assert r.tie.tolist() == [False, True, True, False, False]
    assert r.votes.tolist() == [2, 2, 1, 0, 1]
    assert r.n_valid.tolist() == [4, 4, 2, 0, 1]
    assert r.share[[0, 1, 2, 4]].tolist() == [0.5, 0.5, 0.5, 1.0]
    assert np.isnan(r.share[3])
    assert len(r) == 5


def test_default_policy_is_drop():
    assert np.array_equal(majority_vote(CODES).winner, majority_vote(CODES, tie="drop").winner)


def test_order_policy_follows_language_then_sample():
    assert majority_vote(CODES, tie="order").letters().tolist() == ["A", "B", "A", None, "D"]
    r = majority_vote(CODES, tie="order", lang_order=[1, 0])
    assert r.letters().tolist() == ["A", "C", "B", None, "D"]
    assert r.tie.tolist() == [False, True, True, False, False]  # the tie is still recorded


def test_order_policy_skips_letters_outside_the_tie():
    codes = E([[["E", "B"], ["C", "B"], ["C", None]]])  # B 2, C 2, E 1
    assert majority_vote(codes, tie="order").letters().tolist() == ["B"]
    assert majority_vote(codes, tie="order", lang_order=[2, 0]).letters().tolist() == ["C"]


def _release_rule(row, lang_order):
    "The release script's vote: Counter over answers in language order, max() keeps the first-seen tied letter."
    answers = [int(a) for l in lang_order for a in row[l] if a >= 0]
    if not answers:
        return -1, False
    cnt = Counter(answers)
    best = max(cnt, key=cnt.get)
    return best, sum(v == cnt[best] for v in cnt.values()) > 1


@pytest.mark.parametrize("lang_order", [None, [2, 0, 1, 3], [3]])
def test_order_policy_equals_release_rule(lang_order):
    rng = np.random.default_rng(7)
    codes = rng.integers(-1, 4, size=(2000, 4, 2), dtype=np.int8)
    r = majority_vote(codes, tie="order", lang_order=lang_order)
    full = list(lang_order or []) + [l for l in range(4) if l not in (lang_order or [])]
    for q in range(len(codes)):
        assert (r.winner[q], r.tie[q]) == _release_rule(codes[q], full), q


def test_random_policy_is_seeded_and_stays_in_the_tie():
    codes = np.tile(E([["A", "B", "C", "C", "D", "D"]]), (3000, 1))
    r1 = majority_vote(codes, tie="random", seed=5)
    r2 = majority_vote(codes, tie="random", seed=5)
    assert np.array_equal(r1.winner, r2.winner)
    assert set(r1.letters().tolist()) == {"C", "D"}
    assert 0.45 < (r1.winner == 2).mean() < 0.55
    assert r1.tie.all()
    assert not np.array_equal(r1.winner, majority_vote(codes, tie="random", seed=6).winner)


@pytest.mark.parametrize("policy", TIE_POLICIES)
def test_policies_agree_without_ties(policy):
    rng = np.random.default_rng(3)
    codes = rng.integers(-1, 5, size=(3000, 3, 3), dtype=np.int8)
    r, drop = majority_vote(codes, tie=policy, seed=0), majority_vote(codes, tie="drop")
    assert np.array_equal(r.tie, drop.tie)
    assert np.array_equal(r.winner[~r.tie], drop.winner[~drop.tie])
    assert (r.winner[r.tie] >= 0).all() if policy != "drop" else (r.winner[r.tie] == -1).all()
    # whatever the policy, the winner has the top count
    counts = vote_counts(codes, k=5)
    won = r.winner >= 0
    assert np.array_equal(counts[won, r.winner[won]], counts[won].max(axis=1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tie must be"):
        majority_vote(CODES, tie="first")
    with pytest.raises(ValueError, match="lang_order"):
        majority_vote(CODES, tie="order", lang_order=[0, 0])
    with pytest.raises(ValueError, match="lang_order"):
        majority_vote(CODES, tie="order", lang_order=[5])


def test_two_dimensional_codes_use_column_order():
    codes = E([["A", "B"], ["B", "A"]])
    assert majority_vote(codes, tie="order").letters().tolist() == ["A", "B"]
    assert majority_vote(codes, tie="order", lang_order=[1]).letters().tolist() == ["B", "A"]


# ---------------------------------------------------------------- records
def _records():
    rows = [("q1", "en", 0, "A"), ("q1", "en", 1, "B"), ("q1", "cn", 0, "A"), ("q1", "cn", 1, None),
            ("q2", "en", 0, "C"), ("q2", "en", 1, "C"), ("q2", "zh", 0, "D"),
            ("q2", "fr", 0, "D"), ("q2", "fr", 1, "D")]
    return pd.DataFrame(rows, columns=["qid", "lang", "sample", "letter"])


def test_answer_array_layout():
    qids, codes = answer_array(_records(), ["en", "zh"])
    assert qids.tolist() == ["q1", "q2"]
    assert codes.dtype == np.int8
    assert codes.tolist() == [[[0, 1], [0, -1]], [[2, 2], [3, -1]]]
    assert answer_array(_records(), ["fr"], samples=[1])[1].tolist() == [[[-1]], [[3]]]


def test_answer_array_errors_name_the_row():
    recs = pd.concat([_records(), _records().iloc[[2]]], ignore_index=True)
    with pytest.raises(DataError) as e:
        answer_array(recs, ["en", "zh"])
    assert e.value.row == 9 and e.value.field == "sample"
    with pytest.raises(DataError) as e:
        answer_array(_records().drop(columns="sample"), ["en"])
    assert e.value.field == "sample"
    bad = _records(); bad.loc[4, "lang"] = "xx"
    with pytest.raises(DataError) as e:
        answer_array(bad, ["en"])
    assert e.value.row == 4


def test_vote_table():
    v = vote_table(_records(), ["en", "zh"])
    assert list(v.columns) == ["qid", "winner", "votes", "n_valid", "share", "tie"]
    assert v.winner.tolist() == ["A", "C"] and v.votes.tolist() == [2, 2] and v.n_valid.tolist() == [3, 3]
    v3 = vote_table(_records(), ["en", "zh", "fr"])
    assert v3.winner.tolist() == ["A", "D"] and v3.votes.tolist() == [2, 3]
    ef = vote_table(_records(), ["en", "fr"])
    assert ef.winner.tolist() == [None, None] and ef.tie.tolist() == [True, True]
    assert vote_table(_records(), ["en", "fr"], tie="order").winner.tolist() == ["A", "C"]
    assert vote_table(_records(), ["en", "fr"], tie="order", lang_order=["fr"]).winner.tolist() == ["A", "D"]


def test_winning_share_by_language():
    recs = _records()
    votes = vote_table(recs, ["en", "zh"])  # q1 A, q2 C
    ws = winning_share_by_language(recs, votes, ["en", "zh", "fr"])
    assert ws.lang.tolist() == ["en", "zh", "fr"]
    assert ws.samples.tolist() == [4, 3, 2]
    assert ws.agree.tolist() == [3, 1, 0]
    assert ws.share.tolist() == pytest.approx([0.75, 1 / 3, 0.0])
    assert ws.share_of_winning_votes.tolist() == pytest.approx([0.75, 0.25, 0.0])


def test_winning_share_skips_undecided_questions():
    recs = _records()
    votes = pd.DataFrame({"qid": ["q1", "q2"], "winner": [None, "D"]})
    ws = winning_share_by_language(recs, votes)
    assert dict(zip(ws.lang, ws.samples)) == {"en": 2, "zh": 1, "fr": 2}
    assert dict(zip(ws.lang, ws.agree)) == {"en": 0, "zh": 1, "fr": 2}


def test_pair_share_by_language():
    ps = pair_share_by_language(pd.DataFrame({"lang": ["en", "cn", "zh", "fr", "zh"]}))
    assert dict(zip(ps.lang, ps.pairs)) == {"en": 1, "zh": 3, "fr": 1}
    assert ps.share.sum() == pytest.approx(1.0)
    ps = pair_share_by_language(pd.DataFrame({"lang": ["en"]}), ["de", "en"])
    assert ps.pairs.tolist() == [0, 1] and ps.share.tolist() == [0.0, 1.0]


@pytest.mark.slow
def test_large_vote_agrees_with_counting_each_question():
    # speed is measured in benchmarks/metrics.py (large_s); here: the vectorised vote on a large array is right
    codes = np.random.default_rng(0).integers(-1, 5, size=(200_000, 16, 8), dtype=np.int8)
    r = majority_vote(codes, tie="order")
    assert (r.winner >= 0).all()
    for q in np.random.default_rng(1).choice(len(codes), 300, replace=False):
        c = Counter(int(x) for x in codes[q].ravel() if x >= 0)
        top = max(c.values())
        assert r.votes[q] == top and r.tie[q] == (sum(v == top for v in c.values()) > 1)
        first = next(int(x) for x in codes[q].ravel() if x >= 0 and c[int(x)] == top)   # order: first top answer, language by language
        assert r.winner[q] == first, q


def test_release_policy_follows_the_release_language_order():
    # the release's code states the order cn, en, fr, it, de, ja; its get_final_ans keeps the first tied letter seen
    from calm.voting import RELEASE_TIE_ORDER
    assert RELEASE_TIE_ORDER == ("zh", "en", "fr", "it", "de", "ja")
    recs = pd.DataFrame({"qid": ["q"] * 4, "lang": ["en", "en", "de", "it"], "sample": [0, 1, 0, 0], "letter": ["A", "A", "B", "B"]})
    assert vote_table(recs, ["en", "de", "it"], tie="release").winner.tolist() == ["A"]      # en comes before it and de
    recs2 = recs.assign(lang=["ja", "ja", "de", "it"])
    assert vote_table(recs2, ["ja", "de", "it"], tie="release").winner.tolist() == ["B"]     # it comes before de and ja
    assert vote_table(recs2, ["ja", "de", "it"], tie="order").winner.tolist() == ["A"]       # order: the given languages
    assert vote_table(recs2, ["ja", "de", "it"], tie="drop").winner.tolist() == [None]
