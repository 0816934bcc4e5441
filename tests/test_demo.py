import json

import pandas as pd
import pytest

from calm.demo import DemoConfig, run_demo


def test_data_stage_needs_no_model(tmp_path):
    res = run_demo(tmp_path, config=DemoConfig(languages=["en", "ja"], train_questions=5), until="data")
    t = pd.read_csv(res["data_summary"])
    assert t.groupby("split").questions.first().to_dict() == {"test": 20, "train": 5}
    assert json.loads((tmp_path / "manifest.json").read_text())["config"]["until"] == "data"


@pytest.mark.slow
def test_whole_loop_on_the_embedded_model_reduced(tmp_path):
    cfg = DemoConfig(languages=["en", "fr"], train_questions=3, test_questions=2, m=2, max_new_tokens=24,
                     eval_max_new_tokens=24, train_steps=1, batch_size=4)
    res = run_demo(tmp_path, config=cfg)
    t = pd.read_csv(res["results"])
    assert t.system.tolist()[0] == "base" and set(t.columns) >= {"en", "fr", "ACC_avg", "Consistency_2", "AC3_2"}
    assert (tmp_path / "README.md").read_text().startswith("# Demo report")
    assert (tmp_path / "results.png").exists() and (tmp_path / "vote_stats.md").exists()
    n = len(pd.read_json(tmp_path / "samples" / "samples.jsonl", lines=True))
    assert n == 3 * 2 * 2
    again = run_demo(tmp_path, config=cfg)          # everything is reused: no new samples, adapters skipped
    assert len(pd.read_json(tmp_path / "samples" / "samples.jsonl", lines=True)) == n
    assert again["timings"]["sample"] < res["timings"]["sample"] + 5
