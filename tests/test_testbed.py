"""The testbed profile end to end on a tiny model: gate, option votes, pairs with the same budget, every system trained and
scored, a second round, the pre-registered comparison and the report; a rerun reuses every stage."""
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import tiny_llama

from calm.demo import run_demo
from calm.profile import ProfileError, load_profile
from calm.pipeline import read_stage_log
from calm.pipeline import testbed_folder as folder_of
from calm.testbed_data import testbed_items as split_of

PROFILE = """
name: tinybed
backend: transformers
dtype: float32
models: [{model}]
datasets:
  testbed: {{source: testbed, languages: [en, fr], train_questions: 6, test_questions: 5}}
sampling: {{m: 1, temperature: 1.0, top_p: 0.9, max_new_tokens: 1, batch_size: 8, seed: 0, tie: order}}
training: {{max_steps: 2, per_device_train_batch_size: 2, learning_rate: 1.0e-3, max_length: 128, logging_steps: 1,
            eval_strategy: steps, eval_on_start: true, val_ratio: 0.3, seed: 0}}
evaluation: {{m: 1, greedy: true, max_new_tokens: 1, batch_size: 8}}
systems: [base]
testbed:
  validation_questions: 5
  scorings: [letter, cloze]
  best_min: 0.0
  gain_min: -1.0
  systems: [CALM, permuted, english, gold, SFT, CALM-robust, DCO]
  rounds: 2
  n_boot: 200
notebooks: [testbed]
estimate: {{mean_completion_tokens: 1, tokens_per_s: 10, device: CPU, throughput_source: assumption}}
"""


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinybed")
    words = " ".join(f"{it.question} {' '.join(t for _, t in it.options)}" for s in ("train", "validation", "test")
                     for it in split_of(s, ["en", "fr"])[:40])
    model, tok = tiny_llama([words, "Question: Answer: Réponse : A B C D ."], hidden=32)
    model.save_pretrained(d / "tiny"); tok.save_pretrained(d / "tiny")
    f = d / "tinybed.yaml"; f.write_text(PROFILE.format(model=d / "tiny"), encoding="utf-8")
    return f


@pytest.mark.slow
def test_testbed_runs_end_to_end_and_resumes(tiny_profile, tmp_path):
    out = tmp_path / "report"
    res = run_demo(out, tiny_profile)
    p = load_profile(tiny_profile)
    folder = folder_of(p, out / "_run")
    choice = json.loads((folder / "gate" / "choice.json").read_text())
    assert choice["passes"] and choice["scoring"] in ("letter", "cloze")
    gate = pd.read_csv(folder / "gate" / "gate.csv")
    assert len(gate) == 2 and {"acc_en", "acc_fr", "vote_gain", "passes"} <= set(gate.columns)
    counts = pd.read_csv(folder / "data" / "counts.csv").set_index("system")
    n = counts.loc["CALM", "rows"]
    assert (counts.rows <= n).all()                          # every control is cut to CALM's count of pairs
    for x in ("CALM", "permuted", "SFT", "CALM-r2"):
        assert (folder / "adapters" / x / "adapter_config.json").is_file() or x == "CALM-r2" and not (folder / "data" / "CALM-r2.jsonl").stat().st_size
    readme = Path(res["report"]).read_text()
    assert readme.startswith("# The testbed") and "**Verdict.**" in readme
    endpoints = pd.read_csv(out / "endpoints.csv")
    assert len(endpoints) == 4 and {"p_holm", "mde", "significant"} <= set(endpoints.columns)
    systems = pd.read_csv(out / "systems.csv")
    assert set(systems.agree_on) == {"option", "letter"}
    again = run_demo(out, tiny_profile)                      # a rerun reuses every stage and writes the same endpoints
    log = read_stage_log(out / "_run")
    assert all(v["status"] in ("reused", "no output") for k, v in log.items() if k.split("/")[-1] in again["timings"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "endpoints.csv"), endpoints)


def test_testbed_section_is_checked(tmp_path):
    f = tmp_path / "bad.yaml"
    base = PROFILE.format(model="smollm2-135m")
    f.write_text(base.replace("rounds: 2", "rounds: 3"), encoding="utf-8")
    with pytest.raises(ProfileError, match="testbed.rounds"): load_profile(f)
    f.write_text(base.replace("  n_boot: 200", "  n_boot: 200\n  colour: blue"), encoding="utf-8")
    with pytest.raises(ProfileError, match="testbed.colour: unknown key"): load_profile(f)
    f.write_text(base.replace("[CALM, permuted,", "[CALM, magic,"), encoding="utf-8")
    with pytest.raises(ProfileError, match="unknown system 'magic'"): load_profile(f)


def test_shipped_testbed_profiles_load():
    for name in ("testbed", "testbed_demo"):
        p = load_profile(name)
        assert p.testbed is not None and p.datasets[0].source == "testbed"
        assert "CALM" in p.testbed.systems and p.testbed.control in p.testbed.systems
