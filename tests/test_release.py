import json

import pandas as pd
import pytest

from calm.cli import main


def test_calm_release_writes_every_file(release, tmp_path):
    assert main(["release", "--release-dir", str(release), "--out", str(tmp_path)]) == 0
    base = pd.read_csv(tmp_path / "table1_base.csv")
    assert list(base.columns) == ["lang", "accuracy", "parse_rate", "n"]
    assert base.lang.tolist() == ["en", "zh", "fr", "de", "it", "ja", "avg"] and (base.n[:6] == 899).all()
    # the paper's Table 1 Llama-3 base row, which these samples reproduce to within about a point
    paper = {"en": 73.1, "zh": 52.1, "fr": 60.8, "it": 59.8, "de": 57.5, "ja": 49.2}
    assert all(abs(a - paper[l]) < 1.5 for l, a in zip(base.lang, base.accuracy) if l in paper)
    vote = pd.read_csv(tmp_path / "vote.csv")
    assert list(vote.columns) == ["languages", "accuracy", "ties", "n"] and vote.languages.tolist() == ["en+zh+fr", "en+zh+fr+de+it+ja"]
    cons = pd.read_csv(tmp_path / "consistency.csv")
    assert cons.s.tolist() == [2, 3, 4, 5, 6] and cons.consistency.is_monotonic_decreasing
    pos = pd.read_csv(tmp_path / "positives.csv")
    assert list(pos.columns) == ["lang", "share"] and pos.share.between(0, 1).all()
    pairs = [json.loads(l) for l in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    need = {"qid", "lang", "chosen_letter", "rejected_letter", "prompt", "chosen", "rejected", "tie"}
    assert pairs and all(need <= set(p) and p["chosen_letter"] != p["rejected_letter"] for p in pairs)
    assert (tmp_path / "fig3.png").stat().st_size > 10_000 and (tmp_path / "fig3.pdf").exists()


def test_missing_release_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["release", "--release-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "release folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_release_notebook_runs_with_papermill(release, tmp_path):
    assert main(["release", "--release-dir", str(release), "--out", str(tmp_path), "--notebook", "--languages", "en", "zh", "fr"]) == 0
    nb = json.loads((tmp_path / "release.ipynb").read_text())
    assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert pd.read_csv(tmp_path / "vote.csv").languages.tolist() == ["en+zh+fr"]   # the two default sets coincide


def test_protocol_paper_prints_the_papers_table1_base_row(release, tmp_path, capsys):
    # `calm release --protocol paper --model llama` gives the paper's Table 1 base row to the second decimal
    assert main(["release", "--release-dir", str(release), "--out", str(tmp_path), "--protocol", "paper", "--model", "llama"]) == 0
    out = capsys.readouterr().out
    assert "acc (en zh fr it de ja) 73.08 / 52.06 / 60.85 / 59.84 / 57.51 / 49.17" in out
    assert "ACC_avg (en+zh+fr) 61.99; Consis 57.73 (892 questions); AC3 58.24" in out and "tie release" in out
    t = pd.read_csv(tmp_path / "protocols.csv").set_index("metric")
    paper = {"acc_en": 73.1, "acc_zh": 52.1, "acc_fr": 60.8, "acc_it": 59.8, "acc_de": 57.5, "acc_ja": 49.2, "ACC_avg": 62.0}
    assert all(round(t.loc[k, "paper"], 1) == v for k, v in paper.items())
    assert round(t.loc["Consis (paper) / Consistency_2", "paper"], 2) == 57.73
    assert round(t.loc["AC3 (paper) / AC3_2", "paper"], 2) == 58.24
    report = (tmp_path / "protocols_report.md").read_text(encoding="utf-8")
    assert "tie policy: **release**" in report and "## Where each difference comes from" in report
    assert "were not given" in report   # no --dpo-dir: said plainly


def test_strict_reads_at_least_every_sound_release_reading(release, tmp_path):
    # our parse rate against the release script's; the release's readings that a careful reader would not
    # make (a word's first letter, a line naming several options, an option marked wrong) are counted apart
    assert main(["release", "--release-dir", str(release), "--out", str(tmp_path)]) == 0
    r = pd.read_csv(tmp_path / "parse_rates.csv").set_index("lang")
    assert (r["strict_parsed_%"] >= r["release_sound_%"]).all(), r
    guesses = r[["release_word_initial", "release_several_options", "release_marked_wrong", "release_not_a_letter"]].sum(axis=1)
    assert ((r["release_parsed_%"] - r["release_sound_%"]) * r["completions"] / 100).round().astype(int).tolist() == guesses.tolist()
    assert "tie policy: **drop**" in (tmp_path / "protocols_report.md").read_text(encoding="utf-8")


def test_paper_row_on_synthetic_mistral_style_completions():
    # Mistral-style: the answer in a concluding sentence, multi-answer lines, "none of the above"
    from calm.extraction import extract_answer
    from calm.release import paper_row, strict_row
    texts = {"en": [" Explanation: A bar sells drinks. So, the correct answer is B. bar.", "Explanation: …\nAnswer: B. bar"],
             "zh": ["解释: …\n\n答案:B 或 D", "解释: …\n\n答案:B"],
             "fr": ["Explication: …\n\nRéponse: Aucune des réponses", "Explication: …\n\nRéponse: B"]}
    recs = pd.DataFrame([("q", l, k, t) for l, ts in texts.items() for k, t in enumerate(ts)], columns=["qid", "lang", "sample", "text"])
    p = paper_row(recs, {"q": "B"}, ["en", "zh", "fr"])
    assert (p["acc_en"], p["acc_zh"], p["acc_fr"]) == (0.0, 1.0, 0.0)    # release: "Explanation" -> E, "B 或 D" -> B, "Aucune" -> A
    assert p["Consis"] == 0.0 and p["questions_in_Consis"] == 1
    recs["letter"] = [extract_answer(t, l).letter for t, l in zip(recs.text, recs.lang)]
    assert recs.letter.fillna("-").tolist() == ["B", "B", "-", "B", "-", "B"]
    s = strict_row(recs, {"q": "B"}, ["en", "zh", "fr"])
    assert (s["acc_en"], s["acc_zh"], s["acc_fr"]) == (1.0, 0.0, 0.0)
    s_all = strict_row(recs, {"q": "B"}, ["en", "zh", "fr"], samples=None)   # every sample: the mean over samples
    assert (s_all["acc_zh"], s_all["Consistency_3"]) == (0.5, 0.5)


def test_dpo_counts_reads_the_release_files_when_given(tmp_path):
    from calm.release import dpo_counts
    (tmp_path / "DPO_cn.json").write_text(json.dumps([{"chosen": "x"}] * 3), encoding="utf-8")
    t, note = dpo_counts(pd.DataFrame({"lang": ["zh", "en"]}), ["en", "zh"], tmp_path)
    assert t.lang.tolist() == ["en", "zh"] and t.our_pairs.tolist() == [1, 1]
    assert t.release_dpo_pairs.isna().tolist() == [True, False] and t.release_dpo_pairs[1] == 3
    assert "absent: DPO_en.json" in note


def test_unknown_protocol_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["release", "--out", str(tmp_path), "--protocol", "loose"])
