"The X-CSQA study profile (calm/profiles/study.yaml): it validates, plans the six-language test, and (slow) runs end to end on a tiny slice."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from calm.cli import main
from conftest import profile_copy
from calm.reproduce import CONFIGS_DIR, ProfileError, load_profile, plan, profile_stages, reproduce, wanted


def _study(tmp_path, name="s", **changes):
    "A copy of calm/profiles/study.yaml with `changes` applied (dotted keys); returns its path."
    return profile_copy(tmp_path, name, profile="study", **changes)


def test_study_profile_validates_and_plans_a_six_language_test(release, capsys):
    assert main(["reproduce", "--profile", "study", "--dry-run"]) == 0
    assert "profile study is valid" in capsys.readouterr().out
    p = load_profile("study")
    d = p.datasets[0]
    assert (d.source, d.languages, d.test_languages) == ("release:xcsqa", ["en", "zh", "fr"], ["en", "zh", "fr", "de", "it", "ja"])
    assert d.test_questions == 100 and d.train_questions <= 899 - 100   # the last 100 train questions are model_choice.py's validation slice
    t = plan(p).set_index("stage")
    assert t.loc["sample", "languages"] == 3 and (t.loc[[f"evaluate:{s}" for s in ("base", "SFT", "CALM")], "languages"] == 6).all()
    names = [s.name for s in profile_stages(p, "r") if wanted(s, p.notebooks)]   # no Table 3/9/10 stages: the notebook is `study`
    assert names == ["sample", "vote", "pairs", "train:SFT", "train:CALM", "evaluate:base", "evaluate:SFT", "evaluate:CALM", "results"]
    ev = next(s for s in profile_stages(p, "r") if s.name == "evaluate:CALM")
    assert ev.kwargs["dataset"]["languages"] == ["en", "zh", "fr", "de", "it", "ja"]
    sample = next(s for s in profile_stages(p, "r") if s.name == "sample")
    assert sample.kwargs["dataset"]["languages"] == ["en", "zh", "fr"]


def test_test_languages_are_checked(tmp_path):
    with pytest.raises(ProfileError, match=r"datasets\.xcsqa\.test_languages\[1\]: unknown language 'xx'"):
        load_profile(_study(tmp_path, **{"datasets.xcsqa.test_languages": ["en", "xx"]}))
    p = load_profile(_study(tmp_path, "t", **{"datasets.xcsqa.test_languages": ["EN", "de"]}))
    assert p.datasets[0].test_languages == ["en", "de"]


@pytest.mark.slow
def test_study_runs_end_to_end_on_a_tiny_slice(release, tmp_path):
    "Sample, vote, pairs, SFT and CALM, six-language generation and option-likelihood evaluation, and the study report, on 2 + 2 questions."
    f = _study(tmp_path, "tiny", **{"datasets.xcsqa.train_questions": 2, "datasets.xcsqa.test_questions": 2, "sampling.m": 2,
                                    "sampling.max_new_tokens": 8, "evaluation.max_new_tokens": 8, "training.max_steps": 1,
                                    "training.logging_steps": 1, "training.val_ratio": 0.0, "training.eval_strategy": "no"})
    out = tmp_path / "r"
    assert main(["reproduce", "--profile", str(f), "--out", str(out)]) == 0
    s = out / "study"
    for x in ("study.png", "study.pdf", "differences.csv", "systems.csv", "summary.md", "README.md"): assert (s / x).is_file(), x
    diffs = pd.read_csv(s / "differences.csv")
    assert {"generation", "likelihood"} == set(diffs.evaluation)
    assert {"Consistency_6", "ACC_avg", "RankC"} <= set(diffs.metric)
    assert (diffs.ci_low <= diffs["diff"] + 1e-9).all() and (diffs["diff"] <= diffs.ci_high + 1e-9).all()
    calm = diffs[(diffs.comparison == "CALM - base") & (diffs.evaluation == "likelihood") & (diffs.metric == "RankC")]
    assert len(calm) in (0, 1)                                    # CALM may have no pairs on 2 questions: then it was not trained
    lik = pd.read_csv(out / "_run" / "smollm2-135m" / "xcsqa" / "likelihood" / "base.csv")
    assert set(lik.lang) == {"en", "zh", "fr", "de", "it", "ja"} and lik.groupby(["qid", "lang"]).size().eq(5).all()
    readme = (s / "README.md").read_text()
    assert "What changed" in readme and "How sure we are" in readme and "What it does not show" in readme
    bias = pd.read_csv(s / "letter_bias.csv")                    # how much of each system's agreement a letter preference gives
    assert len(bias) == 2 * bias.system.nunique() and "base" in set(bias.system) and bias.top_letter_share.between(0, 100).all()
    excess = pd.read_csv(s / "excess_differences.csv")
    assert {"excess_Consistency_2", "excess_RankC"} == set(excess.metric) and "Beyond a letter preference" in readme


def _sweep():
    "reports/study/sweep.py, imported as a module."
    import importlib.util
    spec = importlib.util.spec_from_file_location("study_sweep", Path(__file__).parents[1] / "reports" / "study" / "sweep.py")
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def test_sweep_scores_a_setting_against_base_and_chooses_by_its_rule(tmp_path):
    "On 4 questions in 3 languages: a system answering A everywhere is more consistent than one that disagrees; the rule picks it."
    from calm.data import MCItem
    sw = _sweep()
    langs, opts = ["en", "zh", "fr"], (("A", "a"), ("B", "b"), ("C", "c"))
    items = [MCItem(f"q{i}", l, "?", opts, "A") for i in range(4) for l in langs]
    def lp(best):   # best(i, lang) -> the letter with the highest log-probability
        return pd.DataFrame([{"qid": f"q{i}", "lang": l, "option": o, "logprob": 0.0 if o == best(i, l) else -1.0 - "ABC".index(o)}
                             for i in range(4) for l in langs for o in "ABC"])
    base = lp(lambda i, l: "ABC"[langs.index(l)])             # every language answers differently: Consistency_2 = 0
    calm = lp(lambda i, l: "A")                               # all agree, all correct
    row = sw.sweep_row(base, calm, items, langs, n_boot=200)
    assert row["d_Consistency_2"] == 100 and row["d_Consistency_3"] == 100 and row["d_ACC_avg"] == pytest.approx(200 / 3, abs=0.01)
    assert row["d_Consistency_2_excludes_0"] and row["Consistency_2"] == 100 and row["top_letter_share"] == 100
    assert sw.sweep_row(base, base, items, langs, n_boot=200)["d_RankC"] == 0
    # answering A everywhere is all letter preference: no agreement beyond it, for either system
    assert row["excess_Consistency_2"] == 0 and row["d_excess_Consistency_2"] == 0 and not row["d_excess_Consistency_2_excludes_0"]
    assert row["excess_RankC"] == pytest.approx(0, abs=1e-9) and row["d_excess_RankC"] == pytest.approx(0, abs=1e-9)
    t = pd.DataFrame([{"name": "a", "max_steps": 60, "d_Consistency_2": 1.0}, {"name": "b", "max_steps": 20, "d_Consistency_2": 1.0},
                      {"name": "c", "max_steps": 20, "d_Consistency_2": -3.0}])
    assert sw.choose(t) == "b"                                # a tie goes to fewer steps
    assert sw.choose(t.assign(d_Consistency_2=[2.0, 1.0, 0.0])) == "a"
    table = pd.DataFrame([{"name": "x", "max_steps": 20, **row}])
    assert sw.write_tables(table, base, items, tmp_path, 5, 4, 4, langs) == "x"
    assert pd.read_csv(tmp_path / "sweep.csv").loc[0, "d_Consistency_2"] == 100
    assert "Chosen: **x**" in (tmp_path / "sweep.md").read_text() and "+100.0 [+100.0, +100.0]" in (tmp_path / "sweep.md").read_text()


def test_sweep_settings_and_pair_subsets(tmp_path):
    sw = _sweep()
    tr = sw.setting_training({"learning_rate": 2e-4, "max_steps": 20, "logging_steps": 10, "seed": 0, "eval_on_start": True},
                             {"name": "x", "learning_rate": 2e-3, "max_steps": 60, "questions": 0.5})
    assert tr == {"learning_rate": 2e-3, "max_steps": 60, "logging_steps": 60, "seed": 0}
    pairs = pd.DataFrame({"qid": ["q1", "q1", "q2", "q3", "q4"], "x": range(5)})
    qids = ["q1", "q2", "q3", "q4", "q4"]
    assert list(sw.pairs_of_questions(pairs, qids, 0.5).x) == [0, 1, 2]
    assert list(sw.pairs_of_questions(pairs, qids, 3).x) == [0, 1, 2, 3] and len(sw.pairs_of_questions(pairs, qids)) == 5
    with pytest.raises(ValueError, match="questions must select"): sw.pairs_of_questions(pairs, qids, 9)
    d = tmp_path / "a"; d.mkdir()
    pd.DataFrame({"step": [10, 20, 20], "loss": [0.7, None, 0.5], "eval_loss": [None, 0.6, None],
                  "eval_rewards/accuracies": [None, 0.75, None], "eval_rewards/margins": [None, 0.2, None]}).to_csv(d / "train_log.csv", index=False)
    assert sw.held_out_metrics(d) == {"held_out_loss": 0.6, "held_out_pref_acc": 0.75, "held_out_margin": 0.2}
    assert np.isnan(sw.held_out_metrics(tmp_path)["held_out_loss"])
