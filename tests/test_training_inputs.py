"""Bad training inputs: settings that would silently change a run and run files that cannot be read
are errors that exit 2 and name the file, line or key, before any model loads, with no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from calm.train import main

ROOT = Path(__file__).resolve().parents[1]


def _run_file(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {tmp_path / 'pairs.jsonl'}\nout_dir: {tmp_path / 'out'}\n{text}")
    return p


def _main(capsys, argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("setting, key", [
    ("max_steps: 0", "max_steps"), ("max_steps: -5", "max_steps"), ("max_steps: 2.5", "max_steps"),
    ("num_train_epochs: 0", "num_train_epochs"), ("num_train_epochs: -3", "num_train_epochs"),
    ("learning_rate: .nan", "learning_rate"), ("learning_rate: -1e-5", "learning_rate"), ("learning_rate: .inf", "learning_rate"),
    ("per_device_train_batch_size: 0", "per_device_train_batch_size"), ("gradient_accumulation_steps: -1", "gradient_accumulation_steps"),
    ("lora_r: 0", "lora_r"), ("lora_dropout: 1.5", "lora_dropout"), ("beta: 0", "beta"), ("max_length: 0", "max_length"),
    ("warmup_steps: -0.1", "warmup_steps"), ("val_ratio: 1", "val_ratio"), ("method: ppo", "method"), ("use_peft: false", "use_peft"),
    ("epochs: 3", "epochs"), ("learning_rate: fast", "learning_rate"),
])
def test_a_setting_out_of_range_is_an_error_naming_the_key(tmp_path, capsys, setting, key):
    code, err = _main(capsys, ["--config", _run_file(tmp_path, setting + "\n")])
    assert code == 2 and key in err and "run.yaml" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--set", "max_steps=0"], ["--set", "max_steps=-5"], ["--max_steps", "0"], ["--max_steps=-5"]])
def test_steps_zero_or_negative_on_the_command_line(tmp_path, capsys, flags):
    code, err = _main(capsys, ["--config", _run_file(tmp_path, "max_steps: 4\n"), *flags])
    assert code == 2 and "max_steps must be an integer >= 1" in err, err


def test_minus_one_steps_still_means_the_epochs():
    from calm.training import TrainConfig
    assert TrainConfig(max_steps=-1).args.max_steps == -1


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    p = _run_file(tmp_path, "max_steps: 4\nlearning_rate: [1e-5\nseed: 0\n")
    code, err = _main(capsys, ["--config", p])
    assert code == 2 and f"{p}:" in err and "not valid YAML" in err, err
    line = int(err.split(f"{p}:")[1].split(":")[0])
    assert line in (4, 5), err                                   # the unclosed list opens on line 4; the parser stops on 5


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing.yaml", "missing.yaml: no such run file"),
    (lambda d: d, "is a folder, not a run file"),
    (lambda d: (d / "latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1")) and d / "latin1.yaml", "latin1.yaml: not UTF-8"),
])
def test_a_run_file_that_cannot_be_read_is_named(tmp_path, capsys, make, says):
    code, err = _main(capsys, ["--config", make(tmp_path)])
    assert code == 2 and says in err and "Traceback" not in err, err


def test_the_command_exits_2_without_a_traceback(tmp_path):
    "The real process: `python -m calm.train` on a YAML syntax error and on `max_steps: 0`."
    for text, says in (("max_steps: [4\n", "not valid YAML"), ("max_steps: 0\n", "max_steps must be")):
        p = _run_file(tmp_path, text)
        r = subprocess.run([sys.executable, "-m", "calm.train", "--config", str(p)], capture_output=True, text=True, cwd=ROOT,
                           timeout=600)
        assert r.returncode == 2 and str(p) in r.stderr and says in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr


def test_an_out_dir_that_is_a_file_is_an_error_before_any_model_loads(tmp_path, capsys):
    (tmp_path / "pairs.jsonl").write_text('{"qid": "q1", "lang": "en", "prompt": "p : ", "chosen": "B yes", "rejected": "A no"}\n')
    (tmp_path / "out").write_text("a file the user keeps\n")
    code, err = _main(capsys, ["--config", _run_file(tmp_path, f"model: {tmp_path / 'no-such-model'}\n")])
    assert code == 2 and f"{tmp_path / 'out'}: out_dir is a file" in err, err
    assert (tmp_path / "out").read_text() == "a file the user keeps\n"
    from calm.training import TrainConfig, train
    with pytest.raises(ValueError, match="out_dir is a file"):
        train(TrainConfig(model=str(tmp_path / "no-such-model")), tmp_path / "pairs.jsonl", tmp_path / "out")
