"""Prompts: the per-language table, the three prompt modes, the template hash, and the release's own wording."""
from dataclasses import replace

import pytest

from calm.data import ANSWER_LABELS, DEMO_LANGUAGES, DataError, MCItem, demo_items
from calm.extraction import extract_answer
from calm.prompts import (PROMPTS, PromptBuilder, PromptSpec, check_prompt_item, format_question, format_worked_example,
                          load_release_prompts, prompt_spec, prompt_template_hash)

LABELS = {"en": ("Explanation", "Answer"), "zh": ("解释", "答案"), "fr": ("Explication", "Réponse"),
          "de": ("Erklärung", "Antwort"), "it": ("Spiegazione", "Risposta"), "ja": ("説明", "答え"),
          "es": ("Explicación", "Respuesta")}


@pytest.fixture(scope="module")
def train():
    "The demo set's train split, and the testbed's Spanish train items (the demo set has no Spanish)."
    from calm.testbed_data import make_testbed
    return demo_items("train") + [it for it in make_testbed().splits["train"] if it.lang == "es"]


def item_in(items, lang, k=0):
    return [it for it in items if it.lang == lang][k]


class ChatTok:
    chat_template = "{{ messages }}"
    name_or_path = "toy-chat"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


class BaseTok:
    chat_template = None
    name_or_path = "toy-base"


def test_labels_are_the_release_labels_and_come_from_the_extractor():
    assert {l: (s.explanation, s.answer) for l, s in PROMPTS.items()} == LABELS
    for l, s in PROMPTS.items():
        assert s.answer == ANSWER_LABELS[l].answer[0] and s.explanation == ANSWER_LABELS[l].explanation[0]


@pytest.mark.parametrize("lang", list(PROMPTS))
def test_instruction_asks_for_the_format_in_its_language(lang):
    s = PROMPTS[lang]
    text = s.render_instruction(["A", "B", "C", "D", "E"])
    assert "A/B/C/D/E" in text
    assert text.endswith(f"{s.answer}{s.sep}" + text.rsplit(s.sep, 1)[1])   # the answer line closes the instruction
    assert f"\n{s.explanation}{s.sep}" in text and f"\n{s.answer}{s.sep}" in text
    assert "{" not in text and "}" not in text


@pytest.mark.parametrize("lang", list(PROMPTS))
def test_worked_example_answer_is_parsed_by_the_extractor(lang, train):
    it = item_in(train, lang)
    answer_part = format_worked_example(it)[len(format_question(it)):]
    e = extract_answer(answer_part, lang, it.options)
    assert (e.letter, e.how) == (it.gold, "parsed")
    assert it.option_text(it.gold) in answer_part


def test_adding_a_language_is_one_entry(train):
    pt = PromptSpec("pt", "Responda à pergunta ({letters}). Formato:\n{explanation}{sep}...\n{answer}{sep}<letra>",
                    "Pergunta", "«{option}» é a melhor opção.")
    table = {**PROMPTS, "pt": pt}
    it = replace(item_in(train, "en"), lang="pt")
    text = PromptBuilder(prompts=table)(it)
    assert "Explicação: ...\nResposta: <letra>" in text and "Pergunta: " in text
    with pytest.raises(DataError, match="no prompt for language 'pt'"):
        PromptBuilder()(it)


def test_bad_items_are_rejected(train):
    it = item_in(train, "fr")
    with pytest.raises(DataError, match="empty question"): check_prompt_item(replace(it, question=""))
    with pytest.raises(DataError, match="at least two options"): check_prompt_item(replace(it, options=it.options[:1]))
    with pytest.raises(DataError, match="option B is empty"):
        check_prompt_item(replace(it, options=(it.options[0], ("B", " "))))
    with pytest.raises(DataError, match="unknown language"): prompt_spec("klingon")


def test_chat_mode_uses_the_template_and_needs_one(train):
    it = item_in(train, "ja")
    text = PromptBuilder("chat", ChatTok())(it)
    assert text.startswith("<user>" + PROMPTS["ja"].render_instruction(it.letters)) and text.endswith("</user><assistant>")
    assert format_question(it) in text
    with pytest.raises(ValueError, match="'toy-base' has no chat template"):
        PromptBuilder("chat", BaseTok())
    assert PromptBuilder.auto(ChatTok()).mode == "chat" and PromptBuilder.auto(BaseTok()).mode == "fewshot"


def test_fewshot_prompt(train):
    test = demo_items("test")
    it = item_in(test, "it")
    b = PromptBuilder("fewshot", shots=2)
    text = b(it)
    ex = b.examples(it)
    assert [e.lang for e in ex] == ["it", "it"] and all(e.qid != it.qid for e in ex)
    for e in ex: assert format_worked_example(e) in text
    assert text.endswith(format_question(it) + "\nSpiegazione:")
    assert text.startswith(PROMPTS["it"].render_instruction(it.letters))
    assert b.stop_strings("it") == ["\nDomanda:"]
    first = item_in(train, "it")                      # the first demo is never its own example
    assert first.qid not in [e.qid for e in b.examples(first)]
    with pytest.raises(DataError, match="only 0 worked example"):
        PromptBuilder("fewshot", demos=[x for x in train if x.lang != "it"])(it)


def test_template_hash_tracks_what_changes_the_prompt(train):
    base = PromptBuilder(languages=["en", "zh"])
    assert base.template_hash == PromptBuilder(languages=["zh", "en"]).template_hash
    assert len(base.template_hash) == 16
    changed = {**PROMPTS, "zh": replace(PROMPTS["zh"], instruction=PROMPTS["zh"].instruction + "。")}
    assert PromptBuilder(prompts=changed, languages=["en", "zh"]).template_hash != base.template_hash
    assert PromptBuilder(prompts=changed, languages=["en"]).template_hash == PromptBuilder(languages=["en"]).template_hash
    assert PromptBuilder("chat", ChatTok(), languages=["en"]).template_hash != PromptBuilder(languages=["en"]).template_hash
    assert PromptBuilder("fewshot", demos=train[:60], languages=["en"]).template_hash != \
        PromptBuilder("fewshot", demos=train, languages=["en"]).template_hash
    assert prompt_template_hash(PROMPTS) == prompt_template_hash(dict(PROMPTS))


def test_release_prompts_are_verbatim(release):
    import json
    from calm.loaders import xcsqa_file
    for lang in DEMO_LANGUAGES:                     # the release's languages
        spec = load_release_prompts(release, lang)
        raw = json.loads(xcsqa_file(release, lang, "train").read_text(encoding="utf-8"))[0]["instruction"]
        assert spec.render_instruction("ABCDE") == raw
        assert f"\n{spec.explanation}:" in raw and f"\n{spec.answer}:" in raw


def test_release_prompts_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_release_prompts(tmp_path, "en")
