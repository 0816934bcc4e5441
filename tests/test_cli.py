import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from calm.cli import main, parser


def test_every_subcommand_has_help(capsys):
    sub = parser()._subparsers._group_actions[0].choices
    for name, p in sub.items():
        text = p.format_help()
        assert name in text and len(p.description or "") > 10
        for act in p._actions:
            if act.dest not in ("help",):
                assert act.help, f"{name} {act.dest} has no help"


def test_demo_writes_summary(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--languages", "en", "zh", "fr", "--until", "data"]) == 0
    t = pd.read_csv(tmp_path / "data_summary.csv")
    assert set(t.lang) == {"en", "zh", "fr"} and (tmp_path / "data_summary.md").exists() and (tmp_path / "main_job_manifest.json").exists()


def test_bad_file_exits_2_with_location(tmp_path, capsys):
    p = tmp_path / "x.jsonl"
    p.write_text('{"qid": "q", "lang": "en", "question": "?", "options": [{"label": "A", "text": "a"}]}\n')
    assert main(["validate", str(p)]) == 2
    assert "x.jsonl:0: options: fewer than two options" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).parent / "calm"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout and "drift" in r.stdout


def test_train_reports_a_missing_run_file(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.slow
def test_evaluate_writes_results(tmp_path):
    assert main(["evaluate", "--items", "demo:test", "--languages", "en", "fr", "--limit", "2", "--greedy",
                 "--max-new-tokens", "8", "--out", str(tmp_path)]) == 0
    t = pd.read_csv(tmp_path / "results.csv")
    assert t.system.tolist() == ["base"] and {"en", "fr", "ACC_avg", "Consistency_2", "AC3_2"} <= set(t.columns)
    assert (tmp_path / "metrics.md").exists() and len(pd.read_json(tmp_path / "samples" / "samples.jsonl", lines=True)) == 4


@pytest.mark.slow
def test_evaluate_protocol_paper_writes_the_papers_computation(tmp_path):
    assert main(["evaluate", "--items", "demo:test", "--languages", "en", "fr", "--limit", "2", "--greedy",
                 "--max-new-tokens", "8", "--out", str(tmp_path), "--protocol", "paper"]) == 0
    m = pd.read_csv(tmp_path / "metrics_paper.csv").set_index("metric")["value"]
    assert {"acc_en", "acc_fr", "ACC_avg", "Consis", "AC3", "questions_in_Consis"} <= set(m.index) and m["questions"] == 2
    assert (tmp_path / "results.csv").exists()   # the strict results are written as before
