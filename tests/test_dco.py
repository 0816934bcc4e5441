"""DCO: the loss against a literal copy of the authors' formula, its gradient's direction, rows from parallel questions paired
by option id, settings through TRL's parser, and two training steps on the tiny model that a second call reuses."""
import random
from dataclasses import dataclass

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from calm.data import DataError, MCItem
from calm.dco import DCO_COLUMNS, dco_data, dco_loss, dco_rows, dco_trl_rows
from calm.training import TrainConfig, check_training_rows, data_fingerprint, read_run_info, train, variant_data, variant_settings
from conftest import save_tiny_llama


def authors_dco_loss(chosen_1_logps, rejected_1_logps, chosen_2_logps, rejected_2_logps, ref_chosen_1_logps,
                     ref_rejected_1_logps, ref_chosen_2_logps, ref_rejected_2_logps, beta):
    "The released `DCOTrainer.dco_loss` (Betswish/ConsistencyRL, trl/trl/trainer/dco_trainer.py), written out as it reads there."
    offset_1 = ref_chosen_1_logps - ref_rejected_1_logps
    offset_2 = ref_chosen_2_logps - ref_rejected_2_logps
    reward_chosen_1 = chosen_1_logps - ref_chosen_1_logps - rejected_1_logps + ref_rejected_1_logps
    reward_chosen_2 = chosen_2_logps - ref_chosen_2_logps - rejected_2_logps + ref_rejected_2_logps
    return torch.abs(reward_chosen_1 - (1.0 / beta) * offset_2) + torch.abs(reward_chosen_2 - beta * offset_1)


def random_logps(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-20 * torch.rand(n, generator=g, dtype=torch.float64) for _ in range(8)]


@pytest.mark.parametrize("beta", [1.0, 0.1, 0.5, 2.0])
def test_loss_equals_the_authors_on_random_logprobs(beta):
    lps = random_logps(seed=int(beta * 10))
    assert torch.allclose(dco_loss(*lps, beta=beta), authors_dco_loss(*lps, beta), atol=1e-6, rtol=0)
    assert torch.allclose(dco_loss(*lps, beta=beta, gamma_1=1.0, gamma_2=beta ** 2), authors_dco_loss(*lps, beta), atol=1e-6, rtol=0)


def test_direction_hyperparameters_change_the_targets():
    lps = random_logps(seed=3)
    policy, ref = lps[:4], lps[4:]
    o1, o2 = ref[0] - ref[1], ref[2] - ref[3]
    h1 = policy[0] - ref[0] - policy[1] + ref[1]
    h2 = policy[2] - ref[2] - policy[3] + ref[3]
    got = dco_loss(*lps, beta=2.0, gamma_1=0.0, gamma_2=4.0)
    assert torch.allclose(got, h1.abs() + (h2 - 2.0 * o1).abs(), atol=1e-9)


def test_a_gradient_step_moves_each_language_toward_the_others_reference_preference():
    policy = torch.stack(random_logps(n=256, seed=7)[:4]).requires_grad_()
    ref = [x.detach() for x in random_logps(n=256, seed=8)[4:]]
    o1, o2 = ref[0] - ref[1], ref[2] - ref[3]
    pref = lambda p, k: p[2 * k - 2] - p[2 * k - 1]
    h = lambda p, k: pref(p, k) - (o1 if k == 1 else o2)              # the policy's change of preference in language k
    dco_loss(*policy, *ref).sum().backward()
    stepped = policy.detach() - 0.01 * policy.grad
    for k, target in ((1, o2), (2, o1)):                              # the authors' loss at beta = 1: language k toward the other's
        before, after = (h(policy.detach(), k) - target).abs(), (h(stepped, k) - target).abs()
        assert bool((after < before).all())
        moved = pref(stepped, k) - pref(policy.detach(), k)
        assert bool((torch.sign(moved) == torch.sign(target - h(policy.detach(), k))).all())


# --- rows from parallel questions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShuffledItem(MCItem):
    "An item whose options carry language-independent ids (as `MCItem.option_ids` does where calm.data has it)."
    ids: tuple = ()
    def option_id(self, letter): return self.ids[self.letters.index(letter)]
    def letter_of(self, option_id): return self.letters[self.ids.index(option_id)]


TEXT = {"en": {"o1": "fridge", "o2": "oven", "o3": "garden", "o4": "car"},
        "fr": {"o1": "frigo", "o2": "four", "o3": "jardin", "o4": "voiture"}}


def shuffled(qid, lang, order, gold="o1"):
    letters = "ABCD"[:len(order)]
    return ShuffledItem(qid, lang, f"{qid} question in {lang}?", tuple((l, TEXT[lang][o]) for l, o in zip(letters, order)),
                        letters[order.index(gold)], ids=tuple(order))


ITEMS = [shuffled(f"q{i}", "en", ["o1", "o2", "o3", "o4"]) for i in range(5)] + \
        [shuffled(f"q{i}", "fr", ["o3", "o1", "o4", "o2"]) for i in range(5)]


def test_rows_pair_the_same_option_by_id_not_by_letter():
    rows = dco_rows(ITEMS, draws=3, seed=1, completion="text")
    assert len(rows) == 5 * 3 and set(rows.pick) == {"random"}
    for _, r in rows.iterrows():
        for side in ("chosen", "rejected"):
            oid = r[f"{side}_option"]
            assert r[f"{side}_letter_1"] == "ABCD"[["o1", "o2", "o3", "o4"].index(oid)]
            assert r[f"{side}_letter_2"] == "ABCD"[["o3", "o1", "o4", "o2"].index(oid)]
            assert r[f"{side}_1"].endswith(TEXT["en"][oid]) and r[f"{side}_2"].endswith(TEXT["fr"][oid])
    assert rows.chosen_letter_1.ne(rows.chosen_letter_2).any()       # shuffled: the letters differ, the answers do not


def test_gold_and_top_draws():
    gold = dco_rows(ITEMS, pick="gold")
    assert set(gold.chosen_option) == {"o1"} and not gold.rejected_option.eq("o1").any()
    lps = pd.DataFrame([{"qid": it.qid, "lang": it.lang, "option": l, "logprob": {"o2": -0.1, "o4": -0.5}.get(it.option_id(l), -3.0)}
                        for it in ITEMS for l in it.letters])
    m, top = dco_data(ITEMS, lps)
    assert m == "dco" and set(top.pick) == {"top"} and set(zip(top.chosen_option, top.rejected_option)) == {("o2", "o4")}
    with pytest.raises(DataError, match="no option log-probability"): dco_rows(ITEMS, pick="top", option_logprobs=lps.iloc[1:])
    with pytest.raises(ValueError, match="needs the model's option log-probabilities"): dco_rows(ITEMS, pick="top")


def test_rows_need_two_languages_of_a_question():
    with pytest.raises(DataError, match="no DCO rows"): dco_rows([it for it in ITEMS if it.lang == "en"])


# --- settings and training ------------------------------------------------------------------------------------------

def test_settings_go_through_trls_parser():
    c = TrainConfig(method="dco", gamma_1=0.0)
    assert type(c.args).__name__ == "DCOConfig" and (c.beta, c.gamma_1, c.gamma_2) == (1.0, 0.0, None)
    with pytest.raises(ValueError, match="gamma_1"): TrainConfig(method="dco", gamma_1=-1.0)
    with pytest.raises(ValueError, match="unknown training setting"): TrainConfig(method="dpo", gamma_1=1.0)


ROWS = pd.DataFrame({
    "qid": ["q1", "q2", "q3", "q4"], "lang_1": "en", "lang_2": "fr",
    "prompt_1": ["question : where do you keep milk ? answer :", "question : what is ice made of ? answer :",
                 "question : where do fish live ? answer :", "question : what do cows eat ? answer :"],
    "chosen_1": ["B", "A", "C", "A"], "rejected_1": ["A", "B", "A", "C"],
    "prompt_2": ["question : où garder le lait ? réponse :", "question : de quoi est fait la glace ? réponse :",
                 "question : où vivent les poissons ? réponse :", "question : que mangent les vaches ? réponse :"],
    "chosen_2": ["A", "C", "B", "B"], "rejected_2": ["B", "A", "C", "A"]})


def test_rows_with_nothing_to_prefer_are_refused():
    with pytest.raises(DataError, match="chosen equals rejected") as e: check_training_rows(ROWS.assign(rejected_2=ROWS.chosen_2), "dco")
    assert e.value.field == "rejected_2"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", [*ROWS.prompt_1, *ROWS.prompt_2, "A B C"])


def test_dco_trains_two_steps_and_a_second_call_reuses_the_run(tiny_dir, tmp_path):
    cfg = TrainConfig(method="dco", model=str(tiny_dir), max_steps=2, learning_rate=1e-2, disable_tqdm=True, eval_strategy="no",
                      val_ratio=0.25, per_device_train_batch_size=2)
    run = train(cfg, ROWS, tmp_path / "dco")
    assert not run.skipped and type(run.trainer).__name__ == "DCOTrainer" and run.trainer.ref_model is None
    info = read_run_info(run.out_dir)
    assert info["result"]["global_step"] == 2 and info["config"]["method"] == "dco"
    assert info["data"]["trl_sha256"] == data_fingerprint(ROWS, "dco") and info["data"]["languages"] == ["en", "fr"]
    assert info["reference"] == "adapter disabled (base model)"
    log = pd.read_csv(run.out_dir / "train_log.csv")
    assert log.loss.notna().sum() == 2 and "dco/agreement" in log.columns
    for f in ("adapter_config.json", "adapter_model.safetensors", "train_curves.png"): assert (run.out_dir / f).stat().st_size > 0
    again = train(cfg, ROWS, tmp_path / "dco")
    assert again.skipped and again.info["created"] == info["created"]


def test_dco_trl_rows_and_variant():
    assert list(dco_trl_rows(ROWS)[0]) == DCO_COLUMNS
    m, rows = variant_data("dco", items=ITEMS)
    assert m == "dco" and len(rows) == 5
    with pytest.raises(ValueError, match="needs items"): variant_data("dco")


def test_calm_robust_trains_trls_robust_loss_and_records_the_rate(tiny_dir, tmp_path):
    from test_training import PAIRS
    method, pairs = variant_data("calm-robust", PAIRS)
    cfg = TrainConfig(**{"method": method, "model": str(tiny_dir), "max_steps": 1, "disable_tqdm": True, "eval_strategy": "no",
                         "val_ratio": 0.0, **variant_settings("calm-robust", 0.15)})
    run = train(cfg, pairs, tmp_path / "robust")
    assert run.trainer.loss_types == ["robust"] and run.trainer.label_smoothing == 0.15
    assert read_run_info(run.out_dir)["robust_label_smoothing"] == 0.15
