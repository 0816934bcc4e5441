"""Load a dataset with LLaMA-Factory's own loader and print, per row, the prompt and answer token ids it trains on.

    python tools/llamafactory_load.py MODEL_DIR DATASET_DIR NAME STAGE [TEMPLATE]

Runs in the LLaMA-Factory environment (`make lf-venv`: its pins conflict with calm's, so it has its own
virtual environment). STAGE is `sft` or `rm` (LLaMA-Factory's preference stage; DPO reads the same way).
Prints one JSON object: {"template", "rows": [{"prompt_ids", "answers": {name: ids}}]}, where the prompt is
the part whose labels are masked (-100) and each answer the labelled rest.
"""
import importlib.machinery
import json
import sys
import tempfile
import types

import transformers  # noqa: F401  (imported before the stub below, so transformers sees no torchaudio)

# LLaMA-Factory imports torchaudio at start-up for its audio plugin; no torchaudio build matches torch 2.13,
# and text data never touches it, so an empty module stands in for it.
if "torchaudio" not in sys.modules:
    stub = types.ModuleType("torchaudio"); stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    sys.modules["torchaudio"] = stub

from llamafactory.data import get_dataset, get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402


def split(ids, labels):
    "Prompt ids (masked labels) and answer ids (the rest)."
    n = next((i for i, l in enumerate(labels) if l != -100), len(labels))
    return ids[:n], ids[n:]


def main(model_dir, dataset_dir, name, stage, template="smollm2"):
    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, training_args, *_ = get_train_args(dict(
            model_name_or_path=model_dir, dataset=name, dataset_dir=dataset_dir, template=template, stage=stage,
            do_train=True, output_dir=out, finetuning_type="lora", cutoff_len=4096, overwrite_cache=True, report_to="none"))
        tok = load_tokenizer(model_args)
        tmpl = get_template_and_fix_tokenizer(tok["tokenizer"], data_args)
        ds = get_dataset(tmpl, model_args, data_args, training_args, stage=stage, **tok)["train_dataset"]
    rows = []
    for r in ds:
        if stage == "rm":
            (p, c), (p2, rj) = split(r["chosen_input_ids"], r["chosen_labels"]), split(r["rejected_input_ids"], r["rejected_labels"])
            if p != p2: raise SystemExit("chosen and rejected prompts differ")
            rows.append({"prompt_ids": p, "answers": {"chosen": c, "rejected": rj}})
        else:
            p, c = split(r["input_ids"], r["labels"])
            rows.append({"prompt_ids": p, "answers": {"completion": c}})
    print(json.dumps({"template": template, "rows": rows}))


if __name__ == "__main__":
    main(*sys.argv[1:])
