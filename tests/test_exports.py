"""The exported training sets, read back by the libraries that train on them.

TRL: its own data utilities (`is_conversational`, `maybe_apply_chat_template`) on the JSONL loaded with
`datasets`, with the embedded SmolLM2 tokenizer. LLaMA-Factory: its own `get_dataset` with template
`smollm2`, run in its own environment (`make lf-venv`; its pins conflict with calm's) through
tools/llamafactory_load.py; skipped, and said so, where that environment is absent.
In both, the tokenized prompt must equal the chat template applied once to the question, which is
exactly the prompt the model answered when it was sampled.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from calm.data import MCItem
from calm.pairs import (build_pairs, prompt_messages, read_jsonl, sft_from_votes, write_training_sets)
from calm.prompts import PromptBuilder

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [MCItem("q1", "en", "Where do you keep milk cold?", [("A", "fridge"), ("B", "oven"), ("C", "shelf")], "A"),
         MCItem("q1", "fr", "Où garde-t-on le lait au frais ?", [("A", "réfrigérateur"), ("B", "four"), ("C", "étagère")], "A")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    from calm.models import resolve_model
    try: path = resolve_model("smollm2-135m")
    except Exception as e: pytest.skip(f"embedded SmolLM2 not available: {e}")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def exported(tokenizer, tmp_path_factory):
    "A chat-mode run's training sets: prompts as messages, answers as the samples wrote them."
    builder = PromptBuilder("chat", tokenizer)
    recs = pd.DataFrame([("q1", "en", 0, "Explanation: a fridge keeps milk cold.\nAnswer: A", "A"),
                         ("q1", "en", 1, "Explanation: the oven.\nAnswer: B", "B"),
                         ("q1", "fr", 0, "Explication : le réfrigérateur.\nRéponse : A", "A"),
                         ("q1", "fr", 1, "Explication : l'étagère.\nRéponse : C", "C")], columns=["qid", "lang", "sample", "text", "letter"])
    votes = pd.DataFrame({"qid": ["q1"], "winner": ["A"], "tie": [False]})
    by_key = {(it.qid, it.lang): it for it in ITEMS}
    prompt_of = lambda q, l: prompt_messages(builder, by_key[(q, l)])
    pairs = build_pairs(recs, votes, prompt_of, source_order=["en", "fr"])
    sft = sft_from_votes(recs, votes, prompt_of, ["en", "fr"])
    out = tmp_path_factory.mktemp("sets")
    paths = write_training_sets(out, pairs, sft)
    sampled = {l: builder(by_key[("q1", l)]) for l in ("en", "fr")}   # what the model saw when it was sampled
    return pairs, sft, paths, sampled


def test_pairs_store_messages_not_templated_text(exported):
    pairs, sft, paths, sampled = exported
    assert pairs.chat.all() and sft.chat.all()
    assert not any("<|im_start|>" in p for p in pairs.prompt) and "<|im_start|>" in sampled["en"]
    rows = read_jsonl(paths["trl_preference"])
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"


def test_trl_applies_the_template_once(exported, tokenizer):
    import datasets
    from trl.data_utils import is_conversational, maybe_apply_chat_template
    pairs, sft, paths, sampled = exported
    for key, n in (("trl_preference", len(pairs)), ("trl_sft", len(sft))):
        ds = datasets.load_dataset("json", data_files=str(paths[key]), split="train")
        assert len(ds) == n
        frame = pairs if key == "trl_preference" else sft
        for row, lang, answer in zip(ds, frame.lang, frame.chosen if key == "trl_preference" else frame.completion):
            assert is_conversational(row)
            text = maybe_apply_chat_template(row, tokenizer)
            assert text["prompt"] == sampled[lang]
            assert text["prompt"].count("<|im_start|>system") == 1 and text["prompt"].count("<|im_start|>user") == 1
            ids = tokenizer(text["prompt"], add_special_tokens=False).input_ids
            assert ids == tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            assert ids == tokenizer(sampled[lang], add_special_tokens=False).input_ids
            assert (text["chosen"] if key == "trl_preference" else text["completion"]).startswith(answer)


def test_default_system_message_is_made_explicit(tokenizer):
    from calm.pairs import default_system_message
    assert default_system_message(tokenizer) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    msgs = prompt_messages(PromptBuilder("chat", tokenizer), ITEMS[0])
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == default_system_message(tokenizer)
    assert prompt_messages(PromptBuilder("chat", tokenizer, system="Be brief."), ITEMS[0])[0]["content"] == "Be brief."


def test_a_baked_template_warns(tokenizer):
    builder = PromptBuilder("chat", tokenizer)
    recs = pd.DataFrame([("q1", "en", 0, "A", "A"), ("q1", "en", 1, "B", "B")], columns=["qid", "lang", "sample", "text", "letter"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = build_pairs(recs, pd.DataFrame({"qid": ["q1"], "winner": ["A"]}), lambda q, l: builder(ITEMS[0]))
    assert not p.chat.any() and any("chat template" in str(x.message) for x in w)


def llamafactory_python() -> str | None:
    "The Python of an environment with LLaMA-Factory: $CALM_LLAMAFACTORY_PYTHON, ./.lf-venv, or this one."
    for p in (os.environ.get("CALM_LLAMAFACTORY_PYTHON"), ROOT / ".lf-venv" / "bin" / "python"):
        if p and Path(p).exists(): return str(p)
    try:
        import llamafactory  # noqa: F401
        return sys.executable
    except ImportError: return None


@pytest.mark.slow
@pytest.mark.parametrize("name,stage", [("calm_dpo", "rm"), ("calm_sft", "sft")])
def test_llamafactory_applies_the_template_once(exported, tokenizer, name, stage):
    py = llamafactory_python()
    if py is None: pytest.skip("no LLaMA-Factory environment (make lf-venv builds .lf-venv)")
    from calm.models import resolve_model
    pairs, sft, paths, sampled = exported
    r = subprocess.run([py, str(ROOT / "tools" / "llamafactory_load.py"), str(resolve_model("smollm2-135m")),
                        str(paths["llamafactory"].parent), name, stage, "smollm2"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}, cwd=paths["llamafactory"].parent)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])["rows"]
    frame = pairs if stage == "rm" else sft
    assert len(rows) == len(frame)
    for row, lang, answer in zip(rows, frame.lang, frame.chosen if stage == "rm" else frame.completion):
        assert row["prompt_ids"] == tokenizer(sampled[lang], add_special_tokens=False).input_ids, tokenizer.decode(row["prompt_ids"])
        first = row["answers"]["chosen" if stage == "rm" else "completion"]
        assert tokenizer.decode(first).startswith(answer + "<|im_end|>")


@pytest.mark.slow
def test_calm_training_feeds_trl_the_template_once(exported, tokenizer, tmp_path):
    "calm.training.train on the exported TRL file: DPOTrainer's tokenized prompts are the prompts the model was sampled with."
    from calm.training import TrainConfig, file_sha256, train
    pairs, sft, paths, sampled = exported
    cfg = TrainConfig(preset="quick", method="dpo", model="smollm2-135m", max_steps=1, seed=0, disable_tqdm=True)
    run = train(cfg, paths["trl_preference"], tmp_path / "CALM", skip_done=False)
    assert run.info["data"]["trl_sha256"] == file_sha256(paths["trl_preference"]) and run.info["result"]["global_step"] == 1
    ds = run.trainer.train_dataset
    assert len(ds) == len(pairs)
    for row, lang in zip(ds, pairs.lang):
        assert row["prompt_ids"] == tokenizer(sampled[lang], add_special_tokens=False).input_ids
