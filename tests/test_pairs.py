import json

import pandas as pd
import pytest

from calm.data import DataError
from calm.pairs import (IdentityTranslator, build_pairs, filter_by_gold, from_trl, pair_quality, pair_quality_table, read_jsonl,
                        read_llamafactory, read_pairs, sft_from_gold, sft_from_votes, to_trl_preference, to_trl_sft, untranslated,
                        write_training_sets)


class Upper:
    "A fake translator that visibly changes text, to check which side gets translated."
    name, translates = "upper", True
    def __init__(self): self.calls = []
    def translate(self, texts, source, target):
        self.calls.append((source, target, len(texts)))
        return [f"[{target}] " + t.upper() for t in texts]


def records():
    rows = [("q1", "en", 0, "en A", "A"), ("q1", "en", 1, "en B", "B"), ("q1", "de", 0, "de C", "C"),
            ("q1", "de", 1, "de A", "A"), ("q1", "ja", 0, "ja B", "B"), ("q1", "ja", 1, "ja ?", None),
            ("q2", "en", 0, "en2 A", "A"), ("q2", "de", 0, "de2 B", "B"), ("q2", "ja", 0, "ja2 C", "C")]
    return pd.DataFrame(rows, columns=["qid", "lang", "sample", "text", "letter"])


def test_pairs_prefer_same_language_then_source_order_and_translate():
    votes = pd.DataFrame({"qid": ["q1", "q2"], "winner": ["A", None], "tie": [False, True]})
    tr = Upper()
    p = build_pairs(records(), votes, lambda q, l: f"{q}/{l}", tr, source_order=["de", "en"])
    assert p[["lang", "rejected_letter", "chosen_source_lang", "translated"]].values.tolist() == [
        ["de", "C", "de", False], ["en", "B", "en", False], ["ja", "B", "de", True]]
    assert p.loc[2, "chosen"] == "[ja] DE A" and p.loc[2, "translator"] == "upper"
    assert tr.calls == [("de", "ja", 1)]                       # batched per language pair
    assert (p.chosen_letter == "A").all() and "q2" not in set(p.qid)   # dropped tie gives no pairs


def test_identity_translation_is_marked_untranslated():
    votes = pd.DataFrame({"qid": ["q1"], "winner": ["A"], "tie": [False]})
    p = build_pairs(records(), votes, lambda q, l: "", IdentityTranslator(), source_order=["en"])
    ja = p[p.lang == "ja"].iloc[0]
    assert ja.chosen == "en A" and not ja.translated and ja.translator == "identity"


def test_gold_filter_and_sft_sets():
    votes = pd.DataFrame({"qid": ["q1", "q2"], "winner": ["A", "B"], "tie": [False, False]})
    p = build_pairs(records(), votes, lambda q, l: "", gold={"q1": "A", "q2": "C"})
    assert set(filter_by_gold(p).qid) == {"q1"}
    with pytest.raises(DataError, match="no gold letters"):
        filter_by_gold(build_pairs(records(), votes, lambda q, l: ""))
    sv = sft_from_votes(records(), votes, lambda q, l: "", languages=["en", "de", "ja"])
    assert len(sv) == 6 and set(sv[sv.qid == "q2"].letter) == {"B"}
    g = sft_from_gold(records(), {"q1": "B", "q2": "C"}, lambda q, l: "")
    assert g[["qid", "lang"]].values.tolist() == [["q1", "en"], ["q1", "ja"], ["q2", "ja"]]


def test_all_formats_round_trip(tmp_path):
    votes = pd.DataFrame({"qid": ["q1", "q2"], "winner": ["A", "B"], "tie": [False, False]})
    p = build_pairs(records(), votes, lambda q, l: f"Q {q} in {l}", Upper())        # translated: every pair trains
    sv = sft_from_votes(records(), votes, lambda q, l: f"Q {q} in {l}", translator=Upper())
    paths = write_training_sets(tmp_path, p, sv)
    base = p[["prompt", "chosen", "rejected"]].values.tolist()
    assert read_pairs(paths["pairs"])[["prompt", "chosen", "rejected"]].values.tolist() == base
    trl = [json.loads(l) for l in paths["trl_preference"].read_text(encoding="utf-8").splitlines()]
    cols = ["prompt", "chosen", "rejected"]
    assert from_trl(trl)[cols].values.tolist() == base
    assert from_trl(to_trl_preference(p, conversational=True))[cols].values.tolist() == base
    assert from_trl(to_trl_sft(sv, conversational=True))[["prompt", "completion"]].values.tolist() == sv[["prompt", "completion"]].values.tolist()
    lf = tmp_path / "llamafactory"
    assert read_llamafactory(lf, "calm_dpo")[cols].values.tolist() == base
    assert read_llamafactory(lf, "calm_sft")[["prompt", "completion"]].values.tolist() == sv[["prompt", "completion"]].values.tolist()
    info = json.loads((lf / "dataset_info.json").read_text())
    assert info["calm_dpo"]["ranking"] is True and "ranking" not in info["calm_sft"]


def test_chat_prompts_export_as_messages(tmp_path):
    votes = pd.DataFrame({"qid": ["q1", "q2"], "winner": ["A", "B"], "tie": [False, False]})
    msgs = lambda q, l: [{"role": "system", "content": "S"}, {"role": "user", "content": f"Q {q} in {l}"}]
    p = build_pairs(records(), votes, msgs, Upper())
    sv = sft_from_votes(records(), votes, msgs, translator=Upper())
    assert p.chat.all() and (p.system == "S").all() and p.prompt.iloc[0] == "Q q1 in de"
    paths = write_training_sets(tmp_path, p, sv)
    trl = read_jsonl(paths["trl_preference"])
    assert trl[0]["prompt"] == msgs("q1", "de") and trl[0]["chosen"] == [{"role": "assistant", "content": p.chosen.iloc[0]}]
    assert read_jsonl(paths["trl_sft"])[0]["completion"][0]["role"] == "assistant"
    back = from_trl(trl)
    assert back[["prompt", "system", "chat"]].values.tolist() == p[["prompt", "system", "chat"]].values.tolist()
    lf = tmp_path / "llamafactory"
    info = json.loads((lf / "dataset_info.json").read_text())
    assert info["calm_dpo"]["formatting"] == "sharegpt" and info["calm_dpo"]["tags"]["system_tag"] == "system"
    rows = json.loads((lf / "calm_dpo.json").read_text())
    assert rows[0]["messages"] == msgs("q1", "de") and rows[0]["chosen"]["role"] == "assistant"
    assert read_llamafactory(lf, "calm_sft")[["prompt", "completion", "system"]].values.tolist() == sv[["prompt", "completion", "system"]].values.tolist()


def test_untranslated_pairs_are_kept_apart_and_counted(tmp_path):
    votes = pd.DataFrame({"qid": ["q1"], "winner": ["A"], "tie": [True]})
    p = build_pairs(records(), votes, lambda q, l: "p", IdentityTranslator(), source_order=["en"], gold={"q1": "B"})
    assert untranslated(p).tolist() == [False, False, True]    # de and en have their own winner; ja's chosen side is English
    paths = write_training_sets(tmp_path, p)
    assert read_pairs(paths["pairs"]).lang.tolist() == ["de", "en"]
    assert read_pairs(paths["pairs_untranslated"]).lang.tolist() == ["ja"]
    assert len(read_jsonl(paths["trl_preference"])) == 2
    assert len(json.loads((tmp_path / "llamafactory" / "calm_dpo.json").read_text())) == 2
    q = pair_quality(tmp_path, tie_policy="order")
    assert q == {"tie_policy": "order", "pairs": 3, "cot_pairs": 2, "translated_pairs": 0, "option_pairs": 0, "from_tied_votes": 1.0,
                 "chosen_is_gold": 0.0, "untranslated_chosen": 1 / 3, "untranslated": 1, "trainable": 2}
    filled = build_pairs(records(), votes, lambda q, l: "p", Upper(), source_order=["en"])
    assert not untranslated(filled).any()                      # a translator fills them
    assert len(read_pairs(write_training_sets(tmp_path / "keep", p, keep_untranslated=True)["pairs"])) == 3
    t = pair_quality_table(p, "order")
    assert t.lang.tolist() == ["de", "en", "ja", "all"] and t.pairs.tolist() == [1, 1, 1, 3] and t.untranslated.tolist() == [0, 0, 1, 1]


def test_trl_dataset_loads_with_datasets(tmp_path):
    import datasets
    votes = pd.DataFrame({"qid": ["q1"], "winner": ["A"], "tie": [False]})
    paths = write_training_sets(tmp_path, build_pairs(records(), votes, lambda q, l: "p", Upper()))
    ds = datasets.load_dataset("json", data_files=str(paths["trl_preference"]), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 3


def test_bad_inputs():
    with pytest.raises(DataError, match="lack columns \\['letter'\\]"):
        build_pairs(records().drop(columns="letter"), pd.DataFrame({"qid": [], "winner": []}), lambda q, l: "")
    with pytest.raises(DataError, match=":1: rejected: missing field"):
        from_trl([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "c"}], file="f.jsonl")


def test_empty_pair_file_reads_back_with_columns(tmp_path):
    votes = pd.DataFrame({"qid": ["q1"], "winner": ["A"], "tie": [False]})
    empty = build_pairs(records(), votes, lambda q, l: "").iloc[:0]
    back = read_pairs(write_training_sets(tmp_path, empty)["pairs"])
    assert len(back) == 0 and {"gold", "chosen_letter", "lang"} <= set(back.columns)
    assert len(filter_by_gold(back)) == 0


def test_pairs_from_votes_by_option_on_shuffled_items():
    from calm.data import MCItem
    from calm.pairs import build_pairs, sft_from_votes
    from calm.voting import vote_table
    items = [MCItem("q1", "en", "?", (("A", "x"), ("B", "y")), "A", option_ids=("x", "y")),
             MCItem("q1", "zh", "?", (("A", "y"), ("B", "x")), "B", option_ids=("y", "x"))]
    recs = pd.DataFrame({"qid": "q1", "lang": ["en", "en", "zh", "zh"], "sample": [0, 1, 0, 1], "letter": ["A", "B", "B", "A"],
                         "text": ["en x", "en y", "zh x", "zh y"]})
    votes = vote_table(recs, ["en", "zh"], tie="drop", items=items)          # by option: x twice (en A, zh B), y twice: a tie
    assert votes.winner.tolist() == [None]
    recs.loc[3, "letter"] = "B"                                              # zh's second sample now says x too
    votes = vote_table(recs, ["en", "zh"], items=items)
    assert votes.winner.tolist() == ["A"]                                    # canonical A = option x
    pairs = build_pairs(recs, votes, lambda q, l: f"{q} {l}", items=items)
    assert pairs[["lang", "chosen", "rejected", "chosen_letter", "rejected_letter"]].values.tolist() == [["en", "en x", "en y", "A", "B"]]
    sft = sft_from_votes(recs, votes, lambda q, l: f"{q} {l}", items=items)
    assert sft[["lang", "completion", "letter"]].values.tolist() == [["en", "en x", "A"], ["zh", "zh x", "B"]]
    # without items the same records vote by letter: B (en y, zh x, zh x) wins, a different answer
    assert vote_table(recs, ["en", "zh"]).winner.tolist() == ["B"]


def shuffled_items():
    "Two questions in en, zh, fr, options shuffled per language (ids paris/rome/oslo; canonical A = oslo, B = paris, C = rome)."
    opts = {"en": ("paris", "rome", "oslo"), "zh": ("rome", "oslo", "paris"), "fr": ("oslo", "paris", "rome")}
    names = {"en": {"paris": "Paris", "rome": "Rome", "oslo": "Oslo"}, "zh": {"paris": "巴黎", "rome": "罗马", "oslo": "奥斯陆"},
             "fr": {"paris": "Paris", "rome": "Rome", "oslo": "Oslo"}}
    from calm.data import MCItem
    return [MCItem(q, l, "?", tuple(zip("ABC", [names[l][i] for i in opts[l]])), "ABC"[opts[l].index("paris")], option_ids=opts[l])
            for q in ("q1", "q2") for l in ("en", "zh", "fr")]


def shuffled_records():
    "en and zh answer Paris (their own letters A and C), each once Rome; fr never answers Paris: it has no winning explanation."
    rows = [("q1", "en", 0, "Explanation: Paris.\nAnswer: A", "A"), ("q1", "en", 1, "Explanation: Rome.\nAnswer: B", "B"),
            ("q1", "zh", 0, "解释: 巴黎。\n答案: C", "C"), ("q1", "zh", 1, "解释: 巴黎。\n答案: C", "C"),
            ("q1", "fr", 0, "Explication: Oslo.\nRéponse: A", "A"), ("q1", "fr", 1, "Explication: Rome.\nRéponse: C", "C"),
            ("q2", "en", 0, "Explanation: Paris.\nAnswer: A", "A"), ("q2", "zh", 0, "解释: 巴黎。\n答案: C", "C"),
            ("q2", "zh", 1, "解释: 罗马。\n答案: A", "A"), ("q2", "fr", 0, "Explication: Oslo.\nRéponse: A", "A")]
    return pd.DataFrame(rows, columns=["qid", "lang", "sample", "text", "letter"])


def test_no_translator_states_the_voted_option_and_gold_is_canonical():
    from calm.prompts import PromptBuilder
    from calm.voting import vote_table
    items, recs = shuffled_items(), shuffled_records()
    votes = vote_table(recs, ["en", "zh", "fr"], items=items)
    assert votes.winner.tolist() == ["B", "B"]                               # canonical B = paris, in every language
    gold = {it.qid: it.canonical_letter(it.gold) for it in items}            # as calm.stages.run_state gives it
    p = build_pairs(recs, votes, lambda q, l: f"{q} {l}", items=items, builder=PromptBuilder("plain"), gold=gold)
    assert p[["qid", "lang", "kind", "chosen", "chosen_letter", "rejected_letter"]].values.tolist() == [
        ["q1", "en", "cot", "Explanation: Paris.\nAnswer: A", "B", "C"], ["q1", "fr", "option", "Réponse: B. Paris", "B", "A"],
        ["q1", "fr", "option", "Réponse: B. Paris", "B", "C"], ["q2", "fr", "option", "Réponse: B. Paris", "B", "A"],
        ["q2", "zh", "cot", "解释: 巴黎。\n答案: C", "B", "C"]]
    assert not untranslated(p).any() and (p.gold == "B").all()
    assert len(filter_by_gold(p)) == 5                                       # canonical chosen letters against canonical gold
    q = pair_quality(p, "order")
    assert (q["cot_pairs"], q["option_pairs"], q["translated_pairs"], q["chosen_is_gold"], q["trainable"]) == (2, 3, 0, 1.0, 5)
    assert sft_from_gold(recs, gold, lambda q, l: l, items=items)[["lang", "letter"]].values.tolist() == [
        ["en", "A"], ["zh", "C"], ["zh", "C"], ["en", "A"], ["zh", "C"]]     # Paris, as each sample shows it
    assert sft_from_gold(recs, {"q1": "A", "q2": "A"}, lambda q, l: l).lang.tolist() == ["en", "fr", "en", "zh", "fr"]
    sft = sft_from_votes(recs, votes, lambda q, l: l, ["en", "zh", "fr"], items=items, builder=PromptBuilder("plain"))
    assert sft[["qid", "lang", "letter", "kind"]].values.tolist() == [
        ["q1", "en", "A", "cot"], ["q1", "zh", "C", "cot"], ["q1", "fr", "B", "option"],
        ["q2", "en", "A", "cot"], ["q2", "zh", "C", "cot"], ["q2", "fr", "B", "option"]]
    old = build_pairs(recs, votes, lambda q, l: "", items=items, gold=gold)  # no builder: the English explanation, kept apart
    assert old[old.lang == "fr"].kind.unique().tolist() == ["untranslated"] and untranslated(old).sum() == 3


def test_translated_answers_name_the_letter_their_language_shows():
    from calm.prompts import PromptBuilder
    from calm.voting import vote_table
    items, recs = shuffled_items(), shuffled_records()
    votes = vote_table(recs, ["en", "zh", "fr"], items=items)
    tr = Upper()
    p = build_pairs(recs, votes, lambda q, l: "", tr, source_order=["en"], items=items, builder=PromptBuilder("plain"))
    fr = p[p.lang == "fr"]
    assert fr.kind.unique().tolist() == ["translated"] and fr.translated.all()
    assert fr.chosen.tolist() == ["[fr] EXPLANATION: PARIS.\nANSWER: B"] * 3       # en shows Paris as A, fr as B
    sft = sft_from_votes(recs, votes, lambda q, l: l, ["fr"], tr, source_order=["en"], items=items)
    assert sft.completion.tolist() == ["[fr] EXPLANATION: PARIS.\nANSWER: B"] * 2 and sft.kind.unique().tolist() == ["translated"]
    unshuffled = build_pairs(records(), pd.DataFrame({"qid": ["q1"], "winner": ["A"]}), lambda q, l: "", tr, source_order=["de"])
    assert unshuffled.loc[unshuffled.lang == "ja", "chosen"].tolist() == ["[ja] DE A"]  # letters as they were: no rewrite


def test_a_language_without_a_winner_gets_option_pairs_and_the_curriculum_runs(tmp_path, monkeypatch, capsys):
    "A run folder like the demo's (en, zh, fr; French never wins): the pairs stage writes French pairs, Table 10's stages train."
    from calm import stages
    from calm.pairs import PAIR_COLUMNS
    from calm.prompts import PromptBuilder
    from calm.voting import vote_table
    items, recs, langs = shuffled_items(), shuffled_records(), ["en", "zh", "fr"]
    st = {"items": items, "by_key": {(it.qid, it.lang): it for it in items}, "records": recs,
          "votes": vote_table(recs, langs, tie="order", lang_order=langs, items=items), "pairs": pd.DataFrame(columns=PAIR_COLUMNS),
          "gold": {it.qid: it.canonical_letter(it.gold) for it in items}}
    monkeypatch.setattr(stages, "run_state", lambda out, items=None: st)
    monkeypatch.setattr(stages, "stage_builder", lambda model, languages, rag=None: PromptBuilder("plain"))
    data = stages.run_pairs(tmp_path, "tiny", langs)
    pairs = read_pairs(data / "calm_pairs.jsonl")
    assert pairs[pairs.lang == "fr"].kind.tolist() == ["option"] * 3 and len(read_pairs(data / "calm_pairs_untranslated.jsonl")) == 0
    assert set(pairs.lang) == set(langs) and list(pairs.columns) == PAIR_COLUMNS
    assert read_jsonl(data / "calm_sft.jsonl")[2]["kind"] == "option"
    calls = []
    monkeypatch.setattr(stages, "train_curriculum", lambda config, pairs, out, stages: calls.append(stages) or [])
    stages.run_curriculum(tmp_path, "tiny", {}, langs)
    assert "no pairs in some language" not in capsys.readouterr().out
    assert calls == [[["en"], ["en", "zh"], ["en", "zh", "fr"]]]
