import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from calm.cli import main
from calm.reproduce import CONFIGS_DIR, NotebookFailed, ProfileError, load_profile, plan, profile_stages, reproduce
from calm.data import read_items
from conftest import profile_copy


@pytest.mark.parametrize("changes, key, words", [
    ({"colour": "blue"}, "colour", "unknown key"),
    ({"sampling.topp": 0.9}, "sampling.topp", "unknown key"),
    ({"sampling.m": None}, "sampling.m", "missing"),
    ({"sampling.m": 0}, "sampling.m", "must be an integer >= 1"),
    ({"sampling.top_p": 1.5}, "sampling.top_p", "(0, 1]"),
    ({"sampling.temperature": "hot"}, "sampling.temperature", "must be float"),
    ({"sampling.tie": "coin"}, "sampling.tie", "must be one of drop, order, random, release"),
    ({"backend": "tgi"}, "backend", "transformers or vllm"),
    ({"release_dir": "no/such/folder"}, "release_dir", "folder not found"),
    ({"models": ["./no-such-model"]}, "models[0]", "local model not found"),
    ({"models": ["not a model"]}, "models[0]", "neither an embedded model"),
    ({"datasets.demo.languages": ["en", "xx"]}, "datasets.demo.languages[1]", "unknown language"),
    ({"datasets.demo.languages": ["en"]}, "datasets.demo.languages", "at least two"),
    ({"datasets.demo.train_questions": 41}, "datasets.demo.train_questions", "40 train questions"),
    ({"datasets.demo.source": "web"}, "datasets.demo.source", "must be one of"),
    ({"training.learning_rat": 1e-5}, "training.learning_rat", "TrainConfig field"),
    ({"systems": ["base", "RLHF"]}, "systems[1]", "unknown system"),
    ({"notebooks": ["table1", "table4"]}, "notebooks[1]", "unknown notebook"),
    ({"estimate.tokens_per_s": -1}, "estimate.tokens_per_s", "> 0"),
])
def test_profile_errors_name_file_and_key(tmp_path, changes, key, words):
    f = profile_copy(tmp_path, **changes)
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert e.value.key == key and str(f) in str(e.value) and words in str(e.value)


def test_bad_profile_exits_2_from_the_cli(tmp_path, capsys):
    f = profile_copy(tmp_path, **{"sampling.m": -3})
    assert main(["reproduce", "--profile", str(f), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "sampling.m" in err
    assert main(["reproduce", "--profile", "nope", "--dry-run"]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err


def test_demo_dry_run_prints_the_plan(release, capsys):
    assert main(["reproduce", "--profile", "demo", "--dry-run"]) == 0
    text = capsys.readouterr().out
    # demo.yaml: 32 train questions x 3 languages x m=3 samples; 5 systems x 20 test questions x 3 languages x 1 answer;
    # the notebooks' own: MedQA 2 groups x 8 x 3 x 3 systems, curriculum 10 x 6 x 4, RAG 8 x 4; 96 tokens per completion at 25 tokens/s
    gens = 32 * 3 * 3 + 5 * 20 * 3 + 2 * 8 * 3 * 3 + 10 * 6 * 4 + 8 * 4
    assert f"total: {gens} generations, {gens * 96} generated tokens, {gens * 96 / 25 / 3600:.3g} CPU-hours" in text
    assert "ok: notebook table1" in text and "not implemented" not in text
    assert "wired: smollm2-135m / demo / evaluate:CALM@MedQA-cn" in text and "wired: smollm2-135m / demo / train:curriculum" in text
    assert main(["reproduce", "--profile", "demo", "--dry-run", "--only", "table1"]) == 0     # needs no release


def test_paper_dry_run_validates_and_plans(release, capsys):
    assert main(["reproduce", "--profile", "paper", "--dry-run"]) == 0
    text = capsys.readouterr().out
    # per model: X-CSQA 899 x 6 x 3 samples + 7 systems (CALM-robust and DCO included) x 1000 x 6; MedQA 1000 x 3 x 3
    # + 7 x 1000 x 3; two models plus, per model, Table 3 (7 systems on the other dataset: 1000 x 3 and 1000 x 6), Table 9's
    # MCMLE group (7 x 1000 x 3) and Table 10's curriculum (3 stages x 1000 x 6); and the Self-RAG rows on MedQA: the generator
    # samples 1000 x 3 x 3, then base and CALM answer 1000 x 3 each
    gens = (2 * ((899 * 6 * 3 + 7 * 1000 * 6) + (1000 * 3 * 3 + 7 * 1000 * 3) + 7 * 1000 * 3 + 7 * 1000 * 6 + 7 * 1000 * 3 + 3 * 1000 * 6)
            + 1000 * 3 * 3 + 2 * 1000 * 3)
    assert gens == 395364
    assert f"total: {gens} generations, {gens * 256} generated tokens, {gens * 256 / 2500 / 3600:.3g} GPU-hours" in text
    assert "needs network: model meta-llama/Meta-Llama-3-8B-Instruct" in text and "mistralai/Mistral-7B-Instruct-v0.2" in text
    assert "ok: dataset xcsqa train: 6 release files, 899 questions each" in text
    wired = [l for l in text.splitlines() if l.startswith("wired: ")]
    # per model and dataset: sample, vote, pairs, 6 train, 7 evaluate, results; per model 21 more evaluations (Tables 3 and 9)
    # and the curriculum (1 train, 3 evaluate); 8 Self-RAG stages
    assert len(wired) == 2 * 2 * 17 + 2 * (21 + 4) + 8
    assert "wired: selfrag/selfrag_llama2_7b / medqa / rag:sample -> calm.reproduce.run_sample (needs GPU (vLLM)" in text
    assert "needs data: rag corpus" in text and "ok: rag prompts in the selfrag format" in text
    p = load_profile("paper")
    assert p.backend == "vllm" and p.sampling["m"] == 3 and p.sampling["top_p"] == 0.9 and p.sampling["max_new_tokens"] == 512
    assert [d.languages for d in p.datasets] == [["en", "zh", "fr", "de", "it", "ja"], ["en", "zh", "fr"]]


def test_plan_counts_follow_the_profile(tmp_path):
    f = profile_copy(tmp_path, **{"sampling.m": 5, "datasets.demo.train_questions": 7, "systems": ["base", "CALM"], "notebooks": ["table1"],
                              "parameters": None})
    t = plan(f)
    assert t.stage.tolist()[:3] == ["sample", "evaluate:base", "evaluate:CALM"]
    assert t.generations.tolist() == [7 * 3 * 5, 20 * 3, 20 * 3, 7 * 3 * 5 + 2 * 20 * 3]


def test_paper_profile_does_not_pretend_to_run(release, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA GPU and vllm"):
        reproduce("paper", out=tmp_path)


def test_only_rejects_unknown_notebooks(tmp_path):
    with pytest.raises(ValueError, match="not a notebook of profile demo"):
        reproduce("demo", only="table4", dry_run=True)
    with pytest.raises(ValueError, match="not a notebook of profile demo"):
        reproduce("demo", only="table1,tabel2", dry_run=True)


def _notebook(path, code):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('profile = run_dir = out = release_dir = None'), nbformat.v4.new_code_cell(code),
                nbformat.v4.new_code_cell('print("after")')]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_failing_notebook_stops_with_nonzero_exit_and_keeps_the_partial_notebook(tmp_path, capsys):
    nbs = tmp_path / "nbs"; nbs.mkdir()
    _notebook(nbs / "release.ipynb", 'print("before the failure")\nraise RuntimeError("boom from the notebook")')
    f = profile_copy(tmp_path, notebooks=["release"], parameters=None)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--profile", str(f), "--out", str(out), "--notebooks", str(nbs)])
    assert e.value.code == 1
    assert "boom from the notebook" in capsys.readouterr().err
    executed = json.loads((out / "release" / "release.ipynb").read_text())
    texts = [o.get("text", "") for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("before the failure" in "".join(t) for t in texts)
    assert not any("after" == "".join(t).strip() for t in texts)            # stopped at the failing cell
    assert "FAILED" in (out / "README.md").read_text()
    with pytest.raises(NotebookFailed):
        reproduce(f, out=tmp_path / "out2", notebooks_dir=nbs)


@pytest.mark.slow
def test_reduced_demo_reproduce_writes_every_artifact(release, tmp_path):
    f = profile_copy(tmp_path, "tiny", **{"datasets.demo.languages": ["en", "fr"], "datasets.demo.train_questions": 2,
                                      "datasets.demo.test_questions": 2, "sampling.m": 2, "sampling.max_new_tokens": 16,
                                      "evaluation.max_new_tokens": 16, "training.max_steps": 1,
                                      "datasets.demo.tests.MedQA-en.questions": 1, "datasets.demo.tests.MedQA-cn.questions": 1,
                                      "datasets.demo.curriculum.questions": 1})
    out = tmp_path / "reports"
    assert main(["reproduce", "--profile", str(f), "--out", str(out)]) == 0
    check_reduced_outputs(out)


def check_reduced_outputs(out):
    "What a reduced demo reproduction must have written into `out`."
    for name, files in {"table1": ["table1.csv", "table1.md", "table1.tex", "table1.png", "table1.pdf"],
                        "table2": ["table2.csv", "table2.md", "table2.tex", "table2.png", "table2.pdf"],
                        "table7_8": ["table7.csv", "table7.tex", "table8.csv", "table8.md", "table7.png", "table7.pdf"],
                        "fig3": ["fig3.png", "fig3.pdf", "fig3_release.png", "fig3_data.csv", "fig3_data.tex"],
                        "release": ["table1_base.csv", "fig3.png", "positives.csv"],
                        "table3": ["table3.csv", "table3.md", "table3.tex", "table3.png", "table3.pdf"],
                        "table9": ["table9.csv", "table9.md", "table9.tex", "table9_average.csv", "table9.png", "table9.pdf"],
                        "table10": ["table10.csv", "table10.md", "table10.tex", "table10.png", "table10.pdf"],
                        "rag": ["retrieved.csv", "prompts.md", "rag_accuracy.csv", "rag_accuracy.md", "rag_accuracy.png"]}.items():
        for x in files: assert (out / name / x).is_file(), f"{name}/{x} missing"
        assert (out / name / f"{name}.ipynb").is_file()
    t1 = pd.read_csv(out / "table1" / "table1.csv")
    assert t1.system.tolist()[0] == "base" and {"en", "fr", "ACC_avg"} <= set(t1.columns)
    assert t1[["en", "fr"]].stack().between(0, 100).all()
    # the table is the run's own results, recomputed from the stores
    demo = pd.read_csv(out / "results.csv")
    pd.testing.assert_series_equal(t1.set_index("system").sort_index().en.round(1), demo.set_index("system").sort_index().en.round(1))
    t2 = pd.read_csv(out / "table2" / "table2.csv")
    assert "base" in t2.system.tolist() and set(t2.labels) <= {"none", "gold", "self (vote)"}
    untrained = {"SFT_gold", "CALM_gold"} - set(t2.system)                  # a variant with no rows is named in the notes
    if untrained: assert all(s in (out / "table2" / "table2_notes.md").read_text() for s in untrained)
    t7 = pd.read_csv(out / "table7_8" / "table7.csv")
    assert t7.source.str.startswith("release").any() and t7.share.between(0, 100).all()
    t9 = pd.read_csv(out / "table9" / "table9.csv")
    assert set(t9.group) == {"en", "cn"} and t9[t9.system == "base"].delta_ACC_avg.eq(0).all()
    assert dict(zip(t9.group, t9.native)) == {"en": "en", "cn": "zh"}
    t3 = pd.read_csv(out / "table3" / "table3.csv")
    assert set(t3.tested_on) == {"demo (in-domain)", "MedQA-en (cross-dataset)"}
    in_domain = t3[t3.tested_on == "demo (in-domain)"].set_index("system").ACC_avg      # the run's own answers, as in Table 1
    pd.testing.assert_series_equal(in_domain.sort_index(), t1.set_index("system").ACC_avg.sort_index(), check_names=False)
    t10 = pd.read_csv(out / "table10" / "table10.csv")
    assert t10.system.iloc[0] == "base" and {"en", "fr", "de", "it", "ja", "zh", "unseen_avg"} <= set(t10.columns)
    rag = pd.read_csv(out / "rag" / "rag_accuracy.csv")
    assert set(rag.retrieval) == {"none", "top-3"} and rag.questions.eq(8).all()
    index = (out / "README.md").read_text()
    for link in ("table1/table1.md", "table2/table2.csv", "table7_8/table8.tex", "fig3/fig3.pdf", "release/fig3.png", "manifest.json"):
        assert link in index
    assert ".ipynb)" not in index and "pairs.jsonl)" not in index          # links only to what is committed
    assert "rag/index/" not in index and "eval_medqa_en" not in index
    assert index.startswith("# Reproduction: profile `demo`") and "[main_job.md](main_job.md)" in index   # the run shares the folder
    assert (out / "main_job.md").read_text().startswith("# ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["profile"] == "demo" and manifest["config"]["datasets"][0]["train_questions"] == 2
    assert manifest["inputs"]["failed"] == {} and "stages" in manifest["inputs"]


@pytest.mark.slow
def test_release_profile_runs_every_stage_on_cpu(release, tmp_path):
    "The stages of a non-demo profile (the paper's wiring) run end to end with the transformers backend on a tiny X-CSQA slice."
    f = profile_copy(tmp_path, "xtiny", **{"datasets": {"x": {"source": "release:xcsqa", "languages": ["en", "fr"], "train_questions": 2,
                                                          "test_questions": 2},
                                                    "d": {"source": "demo", "languages": ["en", "fr"], "train_questions": 2, "test_questions": 2}},
                                       "systems": ["base", "SFT", "CALM", "SFT_gold"], "sampling.m": 2, "sampling.max_new_tokens": 12,
                                       "evaluation.max_new_tokens": 12, "training.max_steps": 1, "parameters": None,
                                       "notebooks": ["table1", "table2", "table3", "table7_8", "table9", "table10", "fig3"]})
    out = tmp_path / "r"
    assert main(["reproduce", "--profile", str(f), "--dry-run"]) == 0
    assert main(["reproduce", "--profile", str(f), "--out", str(out)]) == 0
    run = out / "_run" / "smollm2-135m" / "x"
    assert (run / "votes.csv").is_file() and (run / "data" / "calm_pairs.jsonl").is_file()
    assert len(read_items(run / "train_items.jsonl")) == 4                   # 2 questions x 2 languages
    assert (run / "eval" / "base").is_dir() and (run / "adapters" / "SFT" / "adapter_config.json").is_file()
    res = pd.read_csv(out / "results" / "smollm2-135m__x.csv")
    assert res.system.iloc[0] == "base" and {"en", "fr", "ACC_avg"} <= set(res.columns)
    assert "results/smollm2-135m__x.md" in (out / "README.md").read_text()
    assert "stages" in json.loads((out / "manifest.json").read_text())["inputs"]
    t1 = pd.read_csv(out / "table1" / "table1.csv")                      # the notebooks read the stages' run
    assert (t1.model.unique().tolist(), t1.dataset.unique().tolist(), t1.system.iloc[0]) == (["smollm2-135m"], ["x", "d"], "base")
    pd.testing.assert_series_equal(t1[t1.dataset == "x"].ACC_avg.reset_index(drop=True), res.ACC_avg)
    t2 = set(pd.read_csv(out / "table2" / "table2.csv").system)
    assert {"base", "SFT"} <= t2
    if "SFT_gold" not in t2: assert "SFT_gold" in (out / "table2" / "table2_notes.md").read_text()   # no gold-correct sample at this size
    assert (out / "table7_8" / "table8.csv").is_file() and (out / "fig3" / "fig3.png").is_file()
    t3 = pd.read_csv(out / "table3" / "table3.csv")                      # each run on its own and on the other dataset's test set
    assert set(zip(t3.tested_on, t3.system)) >= {("x (in-domain)", "base"), ("d (cross-dataset)", "base"), ("d (in-domain)", "base"),
                                                  ("x (cross-dataset)", "base")}
    assert "no MedQA dataset" in (out / "table9" / "table9_notes.md").read_text()
    t10 = pd.read_csv(out / "table10" / "table10.csv")
    assert t10.run.unique().tolist() == ["smollm2-135m / x"] and t10.system.iloc[0] == "base"
    assert [s.name for s in profile_stages(load_profile(f), out / "_run") if "curriculum" in s.name] == \
        ["train:curriculum", "evaluate:curriculum:00-en", "evaluate:curriculum:01-en-fr"]


def test_notebook_parameters_and_notebooks_are_checked(tmp_path):
    f = profile_copy(tmp_path, **{"parameters": {"table10": {"questoins": 3}}})
    with pytest.raises(ProfileError, match=r"parameters\.table10\.questoins: not a parameter of table10.ipynb"):
        reproduce(f, only="table10", dry_run=True)
    f = profile_copy(tmp_path, "x", **{"parameters": {"table4": {}}})
    with pytest.raises(ProfileError, match="parameters.table4: not one of this profile's notebooks"):
        load_profile(f)
    f = profile_copy(tmp_path, "y", **{"datasets": {"x": {"source": "release:xcsqa", "languages": ["en", "fr"], "train_questions": 2,
                                                       "test_questions": 2}}, "parameters": None})
    with pytest.raises(ProfileError, match="reads a demo run"):
        load_profile(f)


def test_medqa_train_questions_come_from_the_hub_and_are_translated(release, monkeypatch):
    "The paper profile's MedQA train path: English questions from the hub (stubbed: no network here), translated per language."
    import calm.stages
    from dataclasses import asdict
    from calm.reproduce import MEDQA_TRAIN_HUB, Dataset, medqa_items, profile_items
    english, _ = medqa_items(release, "en", 3, ["en"])
    asked = []
    def hub(name, config=None, split="test", lang=None, **kw):
        asked.append((name, split, lang)); return english
    monkeypatch.setattr(calm.stages, "load_hub", hub)          # where calm.stages looks it up
    class Tagger:
        name, translates = "tagger", True
        def translate(self, texts, source, target): return [f"[{source}->{target}] {t}" for t in texts]
    d = asdict(Dataset("medqa", "release:medqa", ["en", "zh", "fr"], 2, 2))
    items = profile_items(d, "train", release, Tagger())
    assert asked == [(MEDQA_TRAIN_HUB, "train", "en")]
    assert [(it.qid, it.lang) for it in items][:3] == [(english[0].qid, l) for l in ("en", "zh", "fr")] and len(items) == 6
    zh = items[1]
    assert zh.question.startswith("[en->zh] ") and zh.gold == english[0].gold and zh.options[0][1].startswith("[en->zh] ")
    test, langs = medqa_items(release, "en", 2, ["en", "zh", "fr"])
    assert profile_items(d, "test", release) == test and langs == ["en", "zh", "fr"]


def test_demo_plan_counts_what_the_tables_answer(tmp_path):
    f = profile_copy(tmp_path, **{"datasets.demo.tests.MedQA-en.questions": 5, "datasets.demo.tests.MedQA-cn.questions": 5,
                              "datasets.demo.curriculum.questions": 2, "notebooks": ["table9", "table10"]})
    t = plan(f)
    total = lambda pat: int(t[t.stage.str.contains(pat, regex=False)].generations.sum())
    assert (total("@MedQA-en"), total("@MedQA-cn"), total("evaluate:curriculum")) == (5 * 3 * 3, 5 * 3 * 3, 2 * 6 * 4)
    assert "rag:evaluate" not in set(t.stage)


def test_xcsqa_test_questions_beyond_the_release_come_from_the_hub(release, monkeypatch):
    "The paper asks 1000 X-CSQA test questions; the release holds 100 per language, so all come from the hub's X-CSQA dev (stubbed here)."
    import calm.stages
    from dataclasses import asdict
    from calm.data import MCItem
    from calm.reproduce import XCSQA_HUB, Dataset, profile_items
    asked = []
    def hub(name, config=None, split="test", lang=None, **kw):
        asked.append((name, config, split)); l = config.split("-")[-1]
        return [MCItem(f"dev-{i}", l, f"q{i}", [("A", "a"), ("B", "b")], "A", "hub") for i in range(300)]
    monkeypatch.setattr(calm.stages, "load_hub", hub)          # where calm.stages looks it up
    d = Dataset("xcsqa", "release:xcsqa", ["en", "fr"], 2, 150)
    items = profile_items(asdict(d), "test", release)
    assert asked == [(XCSQA_HUB, "X-CSQA-en", "validation"), (XCSQA_HUB, "X-CSQA-fr", "validation")]
    assert len(items) == 300 and {it.qid for it in items} == {f"dev-{i}" for i in range(150)}
    d = Dataset("xcsqa", "release:xcsqa", ["en", "fr"], 2, 50)                     # within the release: no hub
    assert len({it.qid for it in profile_items(asdict(d), "test", release)}) == 50 and len(asked) == 2


def _store_files(run):
    "The files the shared stages wrote in a run folder, by relative path (manifests without their creation time)."
    out = {}
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if not f.is_file() or f.name.endswith(".lock") or rel.startswith("adapters/") and f.suffix not in (".safetensors", ".jsonl"):
            continue
        if f.suffix == ".json":
            d = json.loads(f.read_text())
            out[rel] = {k: v for k, v in d.items() if k not in ("created", "command", "versions")} if isinstance(d, dict) else d
        else: out[rel] = f.read_bytes()
    return out


@pytest.mark.slow
def test_demo_and_reproduce_write_identical_stores(tmp_path):
    "`calm demo` and `calm reproduce` run the same stages: on a reduced demo profile, the stores they share are identical."
    f = profile_copy(tmp_path, "tiny", **{"datasets.demo.languages": ["en", "fr"], "datasets.demo.train_questions": 3,
                                      "datasets.demo.test_questions": 2, "sampling.m": 2, "sampling.max_new_tokens": 24,
                                      "evaluation.max_new_tokens": 24, "training.max_steps": 1, "notebooks": [], "parameters": None})
    assert main(["demo", "--profile", str(f), "--out", str(tmp_path / "a")]) == 0
    assert main(["reproduce", "--profile", str(f), "--out", str(tmp_path / "b")]) == 0
    a, b = (_store_files(tmp_path / x / "_run" / "smollm2-135m" / "demo") for x in "ab")
    for part in ("samples/samples.jsonl", "votes.csv", "data/calm_pairs.jsonl", "eval/base/samples.jsonl", "eval/SFT/samples.jsonl", "results.csv"):
        assert part in a, part
    assert any(k.startswith("adapters/SFT/") and k.endswith(".safetensors") for k in a)
    assert a.keys() == b.keys()
    for k in a: assert a[k] == b[k], k
    assert (tmp_path / "a" / "main_job.md").is_file() and (tmp_path / "b" / "main_job.md").is_file()
