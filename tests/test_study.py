"The X-CSQA study profile (calm/profiles/study.yaml): it validates, plans the six-language test, and (slow) runs end to end on a tiny slice."
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from calm.cli import main
from calm.reproduce import CONFIGS_DIR, ProfileError, load_profile, plan, profile_stages, reproduce, wanted


def _study(tmp_path, name="s", **changes):
    "A copy of calm/profiles/study.yaml with `changes` applied (dotted keys); returns its path."
    from test_reproduce import _profile
    return _profile(tmp_path, name, profile="study", **changes)


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
