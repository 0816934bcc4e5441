import json

import pandas as pd
import pytest

from calm.demo import run_demo


def test_data_stage_needs_no_model(tmp_path):
    res = run_demo(tmp_path, languages=["en", "ja"], train_questions=5, until="data")
    t = pd.read_csv(res["data_summary"])
    assert t.groupby("split").questions.first().to_dict() == {"test": 20, "train": 5}
    assert json.loads((tmp_path / "main_job_manifest.json").read_text())["config"]["until"] == "data"


REDUCED = dict(languages=["en", "fr"], train_questions=3, test_questions=2, m=2, max_new_tokens=24, train_steps=1)


@pytest.mark.slow
def test_whole_loop_on_the_embedded_model_reduced(tmp_path, capsys):
    res = run_demo(tmp_path, **REDUCED)
    t = pd.read_csv(res["results"]) if "results" in res else pd.read_csv(tmp_path / "results.csv")
    assert t.system.tolist()[0] == "base" and set(t.columns) >= {"en", "fr", "ACC_avg", "Consistency_2", "AC3_2"}
    assert (tmp_path / "main_job.md").read_text().startswith("# Demo report")
    assert (tmp_path / "results.png").exists() and (tmp_path / "vote_stats.md").exists()
    report = (tmp_path / "main_job.md").read_text()
    q = pd.read_csv(tmp_path / "pair_quality.csv")                    # pair quality, with the tie policy named
    assert "## The DPO pairs" in report and "Votes break ties by `" in report and q.lang.tolist()[-1] == "all"
    assert set(q.columns) >= {"tie_policy", "pairs", "from_tied_votes", "chosen_is_gold", "untranslated_chosen"}
    run = tmp_path / "_run" / "smollm2-135m" / "demo"
    n = len(pd.read_json(run / "samples" / "samples.jsonl", lines=True))
    assert n == 3 * 2 * 2
    out = capsys.readouterr().out
    assert "sampling" in out or "stage 1/" in out                      # progress is shown
    tracked = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    again = run_demo(tmp_path, **REDUCED)          # everything is reused: no new samples, adapters skipped
    assert len(pd.read_json(run / "samples" / "samples.jsonl", lines=True)) == n
    # a rerun that does the same work leaves the report's files as they were (no 0 s stage times, no new manifest)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == tracked
    log = json.loads((tmp_path / "_run" / "stages.json").read_text())
    assert {v["status"] for v in log.values()} <= {"reused", "no output"} and "reused" in {v["status"] for v in log.values()}
    manifest = json.loads((tmp_path / "main_job_manifest.json").read_text())
    assert not any(str(tmp_path) in o for o in manifest["outputs"])    # paths relative to the run folder
