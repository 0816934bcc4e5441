"""Bad item files: each is refused by `calm validate` with exit status 2 and a message naming file, row and field.

One case per defect class seen by adversarial users (issue: nothing silently wrong); before these checks the
first six passed validation and every answer then became "missing" downstream, silently."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calm.cli import main

OK = {"qid": "q1", "lang": "en", "question": "Where do you keep milk cold?", "gold": "B",
      "options": [{"label": "A", "text": "oven"}, {"label": "B", "text": "fridge"}]}


def line(**change) -> str:
    return json.dumps({**OK, **change}, ensure_ascii=False) + "\n"


CASES = {  # name: (file content, what the message must contain)
    "numeric labels": (line(options=[{"label": "1", "text": "a"}, {"label": "2", "text": "b"}], gold=None),
                       ":0: options[0].label: '1' is not an option letter"),
    "two-letter label": (line(options=[{"label": "A", "text": "a"}, {"label": "AA", "text": "b"}], gold=None),
                         ":0: options[1].label: 'AA' is not an option letter"),
    "eleven options": (line(options=[{"label": l, "text": l} for l in "ABCDEFGHIJK"]), ":0: options: 11 options; at most 10"),
    "qid is a list": (line(qid=[1, 2]), ":0: qid: expected a string or an integer, got list"),
    "qid is NaN": (line().replace('"q1"', "NaN"), ":0: qid: expected a string or an integer, got float"),
    "duplicate qid and lang": (line() + line(), ":1: qid: duplicate item: question 'q1' in 'en' is also row 0"),
    "lone surrogate": (line().replace("milk", "milk \\ud800"), ":0: question: text is not valid Unicode"),
    "language is a list": (line(lang=["en"]), ":0: lang: expected a language code"),
    "gold not an option": (line(gold="E"), ":0: gold: gold 'E' is not among the options"),
    "one option": (line(options=[{"label": "A", "text": "a"}], gold=None), ":0: options: fewer than two options"),
    "not JSON": (line() + "{oops\n", ":1: not valid JSON"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_item_file_exits_2_naming_file_row_field(name, tmp_path, capsys):
    text, want = CASES[name]
    p = tmp_path / "items.jsonl"
    p.write_text(text, encoding="utf-8")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}{want}" in err, err
    assert "Traceback" not in err


def test_not_utf8_names_the_row(tmp_path, capsys):
    p = tmp_path / "items.jsonl"
    p.write_bytes(line().encode() + line(qid="q2", question="Où est le café ?").encode("latin-1"))
    assert main(["validate", str(p)]) == 2
    assert f"{p}:1: not UTF-8 (byte 0xf9" in capsys.readouterr().err


def test_folder_given_for_a_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; expected a JSONL file" in capsys.readouterr().err


def test_fullwidth_and_lowercase_letters_are_read_as_letters(tmp_path, capsys):
    p = tmp_path / "items.jsonl"
    p.write_text(line(options=[{"label": "ａ", "text": "oven"}, {"label": "b", "text": "fridge"}], gold="Ｂ"), encoding="utf-8")
    assert main(["validate", str(p)]) == 0
    assert "1 items OK" in capsys.readouterr().out


def test_unknown_model_offline_is_a_one_line_error(monkeypatch):
    from calm.models import ModelNotFound, load_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="cannot load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model", device="cpu")
    assert issubclass(ModelNotFound, ValueError)   # the CLI's data-error path: exit 2, one line, no traceback


def test_prompt_longer_than_the_context_names_question_language_and_tokens():
    from calm.data import DataError, demo_items
    from calm.models import load_model
    from calm.prompts import PromptBuilder, check_context, model_context
    model, tok = load_model("smollm2-135m", device="cpu")
    context = model_context(model, tok)
    assert context == model.config.max_position_embeddings
    item = next(it for it in demo_items("test") if it.lang == "en")
    huge = type(item)(item.qid, item.lang, item.question + " really" * context, item.options, item.gold)
    build = PromptBuilder.auto(tok)
    with pytest.raises(DataError, match=rf"question '{item.qid}' in 'en': prompt of [\d,]+ tokens \+ 512 new > context of {context:,}"):
        check_context([item, huge], build, tok, 512, context)
    assert check_context([item, huge], build, tok, 512, context, skip=True) == [item]


# ---------------------------------------------------------------- API edges: a clear error or a defined value, never a silent wrong one

def test_vote_refuses_codes_beyond_the_letters():
    import numpy as np
    from calm.voting import majority_vote
    with pytest.raises(ValueError, match=r"letter codes must lie in -1..9"):
        majority_vote(np.array([[200, 200, 1]], dtype=np.int16))   # was: winner -56 (int8 overflow)


def test_vote_table_reads_lower_case_and_full_width_letters():
    import pandas as pd
    from calm.voting import vote_table
    recs = pd.DataFrame({"qid": ["q"] * 3, "lang": ["en", "zh", "fr"], "sample": [0, 0, 0], "letter": ["b", "Ｂ", "A"]})
    t = vote_table(recs, ["en", "zh", "fr"])
    assert t.winner.tolist() == ["B"] and t.votes.tolist() == [2] and t.n_valid.tolist() == [3]   # was: 'b' and 'Ｂ' dropped


def test_empty_inputs():
    import numpy as np
    import pandas as pd
    from calm.metrics import accuracy, consistency_at
    from calm.voting import majority_vote, vote_table
    assert len(majority_vote(np.zeros((0, 3, 2), np.int8))) == 0                          # was: a reshape error
    assert vote_table(pd.DataFrame(columns=["qid", "lang", "sample", "letter"]), ["en"]).empty
    with pytest.raises(ValueError, match="no questions to score"): accuracy(np.zeros((0, 3), int), np.zeros(0, int))   # was: NaN
    with pytest.raises(ValueError, match="no questions to score"): consistency_at(np.zeros((0, 3), int), 2)


def test_unknown_gold_is_an_error_not_a_wrong_answer():
    import numpy as np
    from calm.metrics import accuracy
    with pytest.raises(ValueError, match="1 unknown"):
        accuracy(np.array([[0], [1]]), np.array([0, np.nan]))   # was: 0.5, the NaN question counted wrong


def test_ac3_of_an_unknown_is_unknown():
    import numpy as np
    from calm.metrics import ac3
    assert np.isnan(ac3(float("nan"), 0.5)) and ac3(0.0, 0.0) == 0.0   # was: 0.0


def test_sample_refuses_a_prompt_longer_than_the_context_before_generating():
    from calm.data import DataError, demo_items
    from calm.models import load_model
    from calm.sampling import TransformersBackend, sample
    model, tok = load_model("smollm2-135m", device="cpu")
    backend = TransformersBackend(model, tok)
    calls = []
    backend.generate = lambda *a, **k: calls.append(a) or []                  # nothing may be generated
    item = next(it for it in demo_items("test") if it.lang == "en")
    huge = type(item)(item.qid, item.lang, item.question + " really" * model.config.max_position_embeddings, item.options, item.gold)
    with pytest.raises(DataError, match=rf"question '{item.qid}' in 'en': prompt of [\d,]+ tokens \+ 16 new > context"):
        sample([huge], ["en"], m=1, max_new_tokens=16, backend=backend, progress=False)
    assert calls == []


# ---------------------------------------------------------------- paths from data stay inside the output folder

def test_profile_dataset_name_cannot_leave_the_run_folder(tmp_path):
    import yaml
    from calm.profile import ProfileError, find_profile, load_profile
    raw = yaml.safe_load(find_profile("demo").read_text())
    raw["datasets"] = {"../../x": next(iter(raw["datasets"].values()))}
    p = tmp_path / "evil.yaml"; p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProfileError, match=r"datasets\.\.\./\.\./x.*a dataset name becomes a folder name"):
        load_profile(str(p))


def test_curriculum_stage_folders_are_language_codes_only():
    from calm.curriculum import stage_name
    from calm.data import DataError
    assert stage_name(1, ["en", "cn"]) == "01-en-zh"
    with pytest.raises(DataError, match="unknown language code '../../x'"):
        stage_name(0, ["../../x"])


def test_manifests_record_outputs_relative_to_their_folder(tmp_path):
    import json
    from calm.reports import write_manifest
    (tmp_path / "t.csv").write_text("x\n")
    m = write_manifest(tmp_path / "manifest.json", {"job": "x"}, outputs=[tmp_path / "t.csv", "/elsewhere/y.csv"])
    assert json.loads(m.read_text())["outputs"] == ["t.csv", "/elsewhere/y.csv"]   # no absolute path of this machine for its own files


# ---------------------------------------------------------------- settings that would silently change results: exit 2 before any model loads

@pytest.fixture
def no_model_load(monkeypatch):
    "Any model load fails the test: these errors must come before one."
    import calm.models
    def refuse(*a, **k): raise AssertionError("a model was loaded before the bad setting was refused")
    monkeypatch.setattr(calm.models, "load_model", refuse)
    monkeypatch.setattr("calm.sampling.TransformersBackend.from_name", classmethod(lambda cls, *a, **k: refuse()))


def test_infinite_temperature_is_refused(tmp_path, capsys, no_model_load):
    assert main(["sample", "--model", "echo", "--temperature", "inf", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "temperature must be a finite number >= 0 (0 is greedy), got inf" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("key,value,want", [("sampling.temperature", ".nan", "sampling.temperature: temperature must be a finite number"),
                                            ("estimate.tokens_per_s", ".inf", "estimate.tokens_per_s: must be a finite number, got inf"),
                                            ("estimate.tokens_per_s", ".nan", "estimate.tokens_per_s: must be a finite number, got nan"),
                                            ("sampling.top_p", ".nan", "sampling.top_p: top_p must be in (0, 1], got nan")])
def test_profile_with_a_non_finite_number_is_refused(key, value, want, tmp_path, capsys):
    from calm.profile import find_profile
    section, name = key.split(".")
    text = find_profile("demo").read_text()
    lines = [f"  {name}: {value}" if l.startswith(f"  {name}:") else l for l in text.splitlines()]
    p = tmp_path / "p.yaml"; p.write_text("\n".join(lines) + "\n")
    assert main(["reproduce", "--profile", str(p), "--dry-run"]) == 2     # was: "profile demo is valid", nan CPU-hours
    err = capsys.readouterr().err
    assert f"{p}: {want}" in err and "Traceback" not in err


@pytest.mark.parametrize("args,want", [(["-m", "-2"], "sampling.m: m (samples per question and language) must be an integer >= 1, got -2"),
                                       (["--max-new-tokens", "0"], "sampling.max_new_tokens: max_new_tokens must be an integer >= 1, got 0"),
                                       (["--train-questions", "0"], "datasets.demo.train_questions: must be > 0, got 0"),
                                       (["--train-questions", "41"], "datasets.demo.train_questions: the demo set has 40 train questions, got 41"),
                                       (["--languages", "en", "xx"], "datasets.demo.languages[1]: unknown language 'xx'"),
                                       (["--model", "./no-such-model"], "models[0]: local model not found")])
def test_demo_options_are_checked_before_the_model_loads(args, want, tmp_path, capsys, no_model_load):
    assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2      # was: -m -2 failed after the model had loaded
    err = capsys.readouterr().err
    assert "demo.yaml (with overrides): " + want in err, err
    assert not (tmp_path / "d").exists()


def test_evaluation_items_without_gold_fail_before_generation(tmp_path, capsys, no_model_load):
    p = tmp_path / "items.jsonl"
    p.write_text(line(gold=None), encoding="utf-8")
    assert main(["evaluate", "--items", str(p), "--out", str(tmp_path / "ev")]) == 2   # was: failed after every answer was generated
    assert f"{p}: gold: question 'q1' has no gold letter in 'en'" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------- a file where a folder is expected, and a folder where a file is

@pytest.mark.parametrize("command", [["sample", "--model", "echo", "--limit", "1"], ["evaluate", "--limit", "1"], ["demo", "--until", "data"]])
def test_out_naming_an_existing_file(command, tmp_path, capsys, no_model_load):
    f = tmp_path / "results.csv"; f.write_text("keep me\n")
    assert main([*command, "--out", str(f)]) == 2                     # was: FileExistsError / NotADirectoryError tracebacks
    err = capsys.readouterr().err
    assert f"{f}: is a file; expected a folder" in err and "Traceback" not in err
    assert f.read_text() == "keep me\n"


def test_out_below_an_existing_file(tmp_path, capsys):
    f = tmp_path / "notes.txt"; f.write_text("x")
    assert main(["sample", "--model", "echo", "--limit", "1", "--out", str(f / "run")]) == 2
    assert f"{f}: is a file; expected a folder (to hold {f / 'run'})" in capsys.readouterr().err


def test_folder_given_for_an_output_file(tmp_path, capsys):
    from calm.data import DataError
    from calm.loaders import release_dir
    try: group = release_dir() / "medqa" / "test" / "test_sft_en_q_1000"
    except DataError: pytest.skip("the paper's release is not here")
    assert main(["drift", str(group), "--csv", str(tmp_path)]) == 2     # was: IsADirectoryError traceback
    assert f"{tmp_path}: is a folder; expected a file" in capsys.readouterr().err


def test_folder_given_for_an_item_file(tmp_path, capsys, no_model_load):
    (tmp_path / "items.jsonl").mkdir()
    assert main(["evaluate", "--items", str(tmp_path / "items.jsonl"), "--out", str(tmp_path / "ev")]) == 2
    assert f"{tmp_path / 'items.jsonl'}: is a folder; expected a JSONL file of items" in capsys.readouterr().err


# ---------------------------------------------------------------- a full disk

def test_disk_full_while_sampling_is_one_line_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    import errno
    args = ["sample", "--model", "echo", "--items", "demo:train", "--languages", "en", "fr", "--limit", "4", "-m", "2", "--batch-size", "2"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    import builtins
    import calm.store
    appends = []
    class FullDisk:                                                  # the third batch finds the disk full half-way
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def write(self, data):
            self.f.write(data[:len(data) // 2]); self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
    def full_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        if mode == "ab": appends.append(path); return FullDisk(f) if len(appends) >= 3 else f
        return f
    monkeypatch.setattr(calm.store, "open", full_open, raising=False)
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"calm sample: error: no space left on device writing {run / 'samples.jsonl'}; what was written before is kept" in err
    assert "Traceback" not in err
    monkeypatch.delattr(calm.store, "open")                          # space freed
    with pytest.warns(UserWarning, match="dropped a partial last line"):
        assert main([*args, "--out", str(run)]) == 0
    assert (run / "samples.jsonl").read_bytes() == (tmp_path / "reference" / "samples.jsonl").read_bytes()


# ---------------------------------------------------------------- more of the same classes, through the commands users run

def test_sample_refuses_what_validate_refuses(tmp_path, capsys, no_model_load):
    p = tmp_path / "items.jsonl"
    p.write_text(line(options=[{"label": "1", "text": "a"}, {"label": "2", "text": "b"}], gold=None), encoding="utf-8")
    assert main(["sample", "--model", "echo", "--items", str(p), "--out", str(tmp_path / "s")]) == 2   # was: every answer "missing"
    assert f"{p}:0: options[0].label: '1' is not an option letter" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,want", [(["sample", "--model", "echo", "--limit", "0"], "limit: limit must be at least 1, got 0"),
                                       (["sample", "--model", "echo", "--languages", "en", "en"], "lang: languages repeat"),
                                       (["sample", "--model", "echo", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
                                       (["sample", "--model", "echo", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
                                       (["evaluate", "--languages", "en", "xx"], "--languages: unknown language code 'xx'"),
                                       (["evaluate", "--languages", "sw"], "demo:test: --languages: no items in sw")])
def test_out_of_range_options_exit_2_naming_the_option(args, want, tmp_path, capsys, no_model_load):
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_profile_that_is_not_yaml_names_the_file(tmp_path, capsys):
    p = tmp_path / "p.yaml"; p.write_text("name: x\nmodels: [a\n")
    for command in (["reproduce", "--dry-run"], ["demo"]):
        assert main([*command, "--profile", str(p), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"{p}: (file): not valid YAML" in err and "line 2" in err


def test_unknown_model_offline_exits_2_from_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "--model", "no-such-org/no-such-model", "--limit", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "cannot load model 'no-such-org/no-such-model'" in err and "Traceback" not in err


def test_unknown_model_with_the_hub_unreachable_fails_after_one_request(monkeypatch):
    import huggingface_hub.constants
    import huggingface_hub.utils
    import transformers
    import calm.models
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")   # a closed port: no network
    monkeypatch.setattr(calm.models, "_HUB_REACHABLE", {})
    session, heads, loads = huggingface_hub.utils.get_session(), [], []
    class CountingSession:
        def head(self, *args, **kwargs): heads.append(args); return session.head(*args, **kwargs)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", CountingSession)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: loads.append(a))
    for _ in range(2):
        with pytest.raises(calm.models.ModelNotFound, match="did not answer within 3 s"):
            calm.models.load_model("no-such-model-xyz", device="cpu")
    assert len(heads) == 1 and loads == []        # asked once, remembered; transformers' retrying download never starts


def test_cli_unknown_model_with_the_hub_unreachable_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", "import sys; from calm.cli import main; sys.exit(main(sys.argv[1:]))", "sample", "--model", "no-such-model-xyz", "--items", "demo:train",
                        "--limit", "1", "--out", str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert "cannot load model 'no-such-model-xyz': not in the Hugging Face cache, and the hub (http://127.0.0.1:9)" in r.stderr
    assert "Traceback" not in r.stderr
