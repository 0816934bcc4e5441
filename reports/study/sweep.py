"""The X-CSQA study's training sweep, chosen on the validation slice of the release's TRAIN questions (never the test questions).

Each setting trains CALM (DPO, LoRA) as the study's `train:CALM` stage does -- the profile's `training` block with the setting's
changes, on the DPO pairs the study run built from its own samples -- and is scored against the base model on the LAST
`--val-questions` of the release's 899 sampled train questions (the study trains on the FIRST ones, so they never overlap) by
option likelihood (`calm.likelihood`: one forward per prompt, six languages): Consistency_2, Consistency_6, RankC and ACC_avg,
CALM minus base with 95% paired bootstrap intervals over questions, plus DPO's held-out preference accuracy, reward margin
and loss (TRL's evaluation on whole train questions kept out of training).

The rule, fixed before any number was seen (RULE): the setting with the largest validation likelihood Consistency_2 gain
over base; ties go to the cheaper setting (fewer steps). The choice is written into calm/profiles/study.yaml by hand.

Run from the repository root after the study's sample, vote and pairs stages (`calm reproduce --profile study` runs them; the
sweep reads reports/study/_run/smollm2-135m/xcsqa). Resumable: adapters and scores are kept under reports/study/_run/sweep/.
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/study/sweep.py --out reports/study
Writes sweep.{csv,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

LANGS = ["en", "zh", "fr", "de", "it", "ja"]

SETTINGS = [  # name: changes to the profile's `training` block; `questions`: train on the pairs of the run's first share of train questions
    {"name": "lr2e-3_s20", "learning_rate": 2e-3, "max_steps": 20},               # the demo's learning rate (its DPO learns)
    {"name": "lr2e-4_s20", "learning_rate": 2e-4, "max_steps": 20},               # the reduced run's setting
    {"name": "lr2e-3_s20_half", "learning_rate": 2e-3, "max_steps": 20, "questions": 0.5},   # half the pairs: does the pair count matter?
    {"name": "lr2e-3_s40", "learning_rate": 2e-3, "max_steps": 40},               # twice the steps
]                # a DPO step costs 10-20 s on one shared CPU core: the settings run in this order and the tables are rewritten after each
"The settings tried, in order."

RULE = "the largest CALM-minus-base likelihood Consistency_2 on the validation slice (six languages); ties: fewer steps"
"How the setting is chosen, stated before the sweep ran."

METRICS = ["Consistency_2", "Consistency_6", "RankC", "ACC_avg"]
"The likelihood metrics each setting is compared on (CALM minus base, percentage points)."


def setting_training(training: dict, setting: dict) -> dict:
    "The `training` block of one setting: the profile's, with the setting's changes (`name` and `questions` are not training fields)."
    out = {**training, **{k: v for k, v in setting.items() if k not in ("name", "questions")}}
    out["logging_steps"] = out["max_steps"]      # one held-out evaluation, after the last step: the CPU budget
    out.pop("eval_on_start", None)               # DPO before training is the reference (loss ln 2): not evaluated
    return out


def pairs_of_questions(pairs: pd.DataFrame, train_qids, questions=None) -> pd.DataFrame:
    "The pairs of the first `questions` of `train_qids` (an int, a fraction of them, or None: all)."
    qids = list(dict.fromkeys(train_qids))
    if questions is None: return pairs.reset_index(drop=True)
    k = int(round(questions * len(qids))) if isinstance(questions, float) else int(questions)
    if not 0 < k <= len(qids): raise ValueError(f"questions must select 1..{len(qids)} train questions, not {questions!r}")
    return pairs[pairs.qid.isin(set(qids[:k]))].reset_index(drop=True)


def held_out_metrics(adapter_dir) -> dict:
    "DPO's held-out loss, preference accuracy and reward margin at the last evaluation of a training run (NaN when none)."
    f = Path(adapter_dir) / "train_log.csv"
    log = pd.read_csv(f) if f.is_file() and f.stat().st_size else pd.DataFrame()
    ev = log.dropna(subset=["eval_loss"]) if "eval_loss" in log else pd.DataFrame()
    get = lambda k: float(ev[k].iloc[-1]) if len(ev) and k in ev else float("nan")
    return {"held_out_loss": get("eval_loss"), "held_out_pref_acc": get("eval_rewards/accuracies"), "held_out_margin": get("eval_rewards/margins")}


def sweep_row(base_lp: pd.DataFrame, lp: pd.DataFrame, items, languages=LANGS, n_boot: int = 2000, seed: int = 0) -> dict:
    "CALM minus base (percentage points, 95% paired bootstrap) on METRICS, from the option log-probabilities of each; plus each side's value."
    from calm.likelihood import compare_likelihood
    c = compare_likelihood(base_lp, lp, items, languages, s_values=[2, len(languages)], n_boot=n_boot, seed=seed).set_index("metric")
    row = {}
    for m in [f"Consistency_{len(languages)}" if x == "Consistency_6" else x for x in METRICS]:
        r = c.loc[m]
        row.update({f"{m}": round(r.b, 2), f"d_{m}": round(r["diff"], 2), f"d_{m}_ci": f"[{r.ci_low:+.1f}, {r.ci_high:+.1f}]",
                    f"d_{m}_excludes_0": bool(r.ci_low > 0 or r.ci_high < 0)})
    from calm.evaluation import answer_matrix
    from calm.likelihood import excess_rankc, likelihood_answers, option_rankings
    from calm.metrics import excess_consistency, paired_bootstrap_stat
    answers, base_answers = likelihood_answers(lp), likelihood_answers(base_lp)
    row["top_letter_share"] = round(100 * answers.letter.value_counts(normalize=True).iloc[0], 1)   # agreement by always answering one letter?
    qids = list(dict.fromkeys(it.qid for it in items))
    beyond_preference = {   # name: (statistic, CALM's input, base's input); each CALM minus base over the same resampled questions
        "excess_Consistency_2": (excess_consistency, answer_matrix(answers, items, languages)[1], answer_matrix(base_answers, items, languages)[1]),
        "excess_RankC": (lambda r: excess_rankc(r, languages), option_rankings(lp, languages, qids)[1], option_rankings(base_lp, languages, qids)[1])}
    for m, (stat, x, base_x) in beyond_preference.items():
        pb = paired_bootstrap_stat(stat, x, base_x, n_boot=n_boot, seed=seed)
        row.update({m: round(100 * stat(x), 2), f"d_{m}": round(100 * pb.diff, 2), f"d_{m}_ci": f"[{100 * pb.low:+.1f}, {100 * pb.high:+.1f}]",
                    f"d_{m}_excludes_0": bool(pb.low > 0 or pb.high < 0)})
    return row


def choose(table: pd.DataFrame) -> str:
    "The setting RULE picks: the largest `d_Consistency_2`; ties to fewer `max_steps`, then to the earlier row."
    t = table.assign(_order=range(len(table))).sort_values(["d_Consistency_2", "max_steps", "_order"], ascending=[False, True, True])
    return str(t.iloc[0]["name"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="study")
    ap.add_argument("--run", default="reports/study/_run/smollm2-135m/xcsqa", help="the study run folder (its pairs and train items)")
    ap.add_argument("--work", default="reports/study/_run/sweep", help="adapters and scores (resumable)")
    ap.add_argument("--out", default="reports/study")
    ap.add_argument("--settings", default=None, help="comma-separated names of SETTINGS to run (default: all)")
    ap.add_argument("--val-questions", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=2000)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from model_choice import prefix_scorer, validation_items
    from calm.data import read_items
    from calm.likelihood import option_logprobs
    from calm.models import load_model
    from calm.pairs import read_pairs
    from calm.reproduce import load_profile
    from calm.stages import stage_builder
    from calm.training import TrainConfig, load_adapter, train

    p = load_profile(a.profile); model = p.models[0]
    run, work, out = Path(a.run), Path(a.work), Path(a.out)
    pairs = read_pairs(run / "data" / "calm_pairs.jsonl")
    train_qids = [it.qid for it in read_items(run / "train_items.jsonl")]
    items = validation_items(a.val_questions)
    if set(train_qids) & {it.qid for it in items}: raise ValueError("the validation slice overlaps the study's train questions")
    builder = stage_builder(model, LANGS)

    def scores(name, load):
        "Option log-probabilities of one system on the validation items, cached in `work/<name>.csv`."
        f = work / f"{name}.csv"
        if f.is_file():                                          # a cache of more validation questions serves fewer
            lp = pd.read_csv(f, dtype={"qid": str, "option": str})
            lp = lp[lp.qid.isin({it.qid for it in items})]
            if len(lp.groupby(["qid", "lang"])) == len(items): return lp.reset_index(drop=True)
        t = time.time(); m, tok = load()
        lp = option_logprobs(items, LANGS, prefix_scorer(m, tok), prompt_builder=builder)
        f.parent.mkdir(parents=True, exist_ok=True); lp.to_csv(f, index=False)
        f.with_suffix(".seconds").write_text(f"{time.time() - t:.1f}\n")
        print(f"scored {name} on {a.val_questions} validation questions in {time.time() - t:.0f}s", flush=True)
        return lp

    base_lp = scores("base", lambda: load_model(model, device="cpu"))
    chosen = [s for s in SETTINGS if a.settings is None or s["name"] in a.settings.split(",")]
    rows = []
    for s in chosen:
        training = setting_training(dict(p.training), s)
        data = pairs_of_questions(pairs, train_qids, s.get("questions"))
        r = train(TrainConfig(**{**training, "method": "dpo", "model": model}), data, work / "adapters" / s["name"])

        def load_merged(d=r.out_dir):
            m, tok = load_adapter(model, d, device="cpu")
            return m.merge_and_unload(), tok
        t = time.time(); lp = scores(s["name"], load_merged); score_s = round(time.time() - t, 1)
        info = json.loads((Path(r.out_dir) / "calm_train_config.json").read_text())
        row = {"name": s["name"], "learning_rate": training["learning_rate"], "max_steps": training["max_steps"],
               "beta": training.get("beta", info["config"].get("beta")), "train_questions": len(set(data.qid)),
               "train_pairs": info["data"]["train_rows"], "held_out_pairs": info["data"]["eval_rows"],
               **held_out_metrics(r.out_dir), **sweep_row(base_lp, lp, items, LANGS, a.n_boot, p.sampling.seed),
               "train_wall_s": info["result"]["train_wall_s"], "train_cpu_s_per_step": info["result"].get("cpu_s_per_step"),
               "score_wall_s": float((work / f"{s['name']}.seconds").read_text()) if (work / f"{s['name']}.seconds").is_file() else score_s}
        rows.append(row); print(json.dumps(row, default=str), flush=True)
        pick = write_tables(pd.DataFrame(rows), base_lp, items, out, len(pairs), len(set(train_qids)), a.val_questions, LANGS,
                            "PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/study/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    table = pd.DataFrame(rows)
    print("chosen:", pick)
    return table


def write_tables(table: pd.DataFrame, base_lp, items, out, n_pairs: int, n_train_questions: int, val_questions: int, languages=LANGS,
                 command: str = "PYTHONPATH=$PWD OMP_NUM_THREADS=1 python reports/study/sweep.py --out reports/study") -> str:
    "Write `out/sweep.{csv,md}` for the settings run so far; returns the one RULE chooses among them."
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    pick = choose(table)
    base_row = {m: float(v) for m, v in sweep_row(base_lp, base_lp, items, languages, 10, 0).items() if not m.startswith("d_")}
    show = table.assign(**{f"d_{m}": table[f"d_{m}"].map("{:+.1f}".format) + " " + table[f"d_{m}_ci"]
                           for m in ["Consistency_2", f"Consistency_{len(languages)}", "RankC", "ACC_avg", "excess_Consistency_2", "excess_RankC"] if f"d_{m}" in table})
    show = show[[c for c in show.columns if not c.endswith(("_ci", "_excludes_0"))]]
    (out / "sweep.md").write_text(
        f"# Training sweep on the validation slice\n\nCALM (DPO, LoRA) trained on the study run's pairs ({n_pairs} pairs from "
        f"{n_train_questions} train questions) with each setting, scored by option likelihood on the last {val_questions} X-CSQA "
        f"train questions (never trained on, never the test questions) in {', '.join(languages)}. `d_*`: CALM minus base, percentage "
        f"points [95% paired bootstrap]; held-out: DPO's preference accuracy, reward margin and loss on whole train questions kept "
        f"out of training (log 2 = 0.693 before training); `top_letter_share`: the share of answers that are the most frequent letter; `excess_Consistency_2`: Consistency_2 minus what each "
        f"language's own letter frequencies give by chance (`calm.metrics.excess_consistency`); `excess_RankC`: RankC minus that of rankings from unrelated questions "
        f"(`calm.likelihood.excess_rankc`). "
        f"Base on the validation slice: {base_row}.\n\n"
        f"Rule, fixed before the sweep: {RULE}. Chosen: **{pick}** (of the {len(table)} settings run).\n\n"
        + show.to_markdown(index=False, floatfmt=".3g") + f"\n\nCommand: `{command}`\n",
        encoding="utf-8")
    return pick


if __name__ == "__main__":
    main()
