"Tests of calm.extraction: one per rule on real release snippets, ambiguity, errors, properties, and the whole release."

import pytest
from hypothesis import given, settings, strategies as st

from calm import extraction
from calm.data import ANSWER_LABELS, DataError, Labels, MCItem
from calm.extraction import Extraction, extract_answer, extract_records, extraction_summary, find_labels
from calm.loaders import read_release_samples

EN_ROW0 = [("A", "town"), ("B", "michigan"), ("C", "hospital"), ("D", "schools"), ("E", "office building")]
ALL_LABELS = [(lang, l) for lang, t in ANSWER_LABELS.items() for l in t.answer]


# --- one test per rule, each on a snippet copied from the release (xcsqa/samples, Llama-3) ---

def test_rule_label_own_language():
    # x_csqa_en row 0, sample 0
    text = ("Explanation:\nThe question is asking about the source or origin of the patients with traumatic mouth "
            "injuries seen at a dental office.\n\nAnswer: D. schools")
    assert extract_answer(text, "en", EN_ROW0) == Extraction("D", "parsed", "label")
    # x_csqa_cn row 0, sample 1; x_csqa_ja row 0, sample 1; x_csqa_de row 6, sample 1
    assert extract_answer("解释: 牙科诊所是医疗机构，为口腔外伤患者提供治疗服务。\n\n答案:A", "cn").letter == "A"
    assert extract_answer("説明:A. 町\n\n答え:A", "ja") == Extraction("A", "parsed", "label")
    assert extract_answer("…ein Fahrzeug führt, nachdem er alkoholisiert ist.\n\nAntwort:<E>", "de").letter == "E"


def test_rule_label_decorations_from_release():
    assert extract_answer("…专心倾听教授的讲述。\n\n答案:<B> 谛听", "zh").letter == "B"
    assert extract_answer("…以便可以正常工作。\n\n答案:E橱", "zh", [("A", "空间"), ("E", "橱")]).letter == "E"
    assert extract_answer("…quando un seme d'albero germoglia.\n\nRisposta: C (diramazione)", "it").letter == "C"
    assert extract_answer("…aus dem Bett aufstehen will (Option C).\n\nAntwort:\nC", "de").letter == "C"
    assert extract_answer("Antwort: <D. Konzertsaal>", "de").letter == "D"


@pytest.mark.parametrize("text", ["**Answer:** C", "**Answer: C**", "Answer: **C**", "Answer: (C)", "Answer: [C]",
                                  "Answer: Option C", "答案：C", "Réponse : C", "ANSWER: C", "Correct answer: C"])
def test_rule_label_markdown_and_colons(text):
    assert extract_answer(text, "en").letter == "C"


def test_rule_foreign_label_last_label_wins():
    # x_csqa_ja row 887, sample 2: the model corrects itself with 正しい答案 (a Chinese label)
    text = ("説明:Marmots are rodents that live in mountainous regions, typically at high elevations.\n\n"
            "答え:B. ジャングル (X) (Marmots do not live in jungles.)\n\n正しい答案:C. 森 ( Mountains/Marumono is the correct answer.)")
    assert extract_answer(text, "ja") == Extraction("C", "parsed", "foreign_label")
    # x_csqa_de row 73, sample 2: an English translation follows the German answer
    de = "Antwort: A. Krug\n\n(Translation)\n\nExplanation:\n\nThe question describes …\n\nAnswer: A. Box"
    assert extract_answer(de, "de") == Extraction("A", "parsed", "foreign_label")


def test_rule_final_line():
    # x_csqa_de row 26, sample 0 without its "Antwort:" label (with it, the label rule decides)
    text = "…wenn das Baby nicht aus dem Bett aufstehen will (Option C).\n\nC"
    assert extract_answer(text, "de") == Extraction("C", "parsed", "final_line")
    assert extract_answer("Explanation: …\n\n**(B)**", "en").letter == "B"
    assert extract_answer("Explanation: …\n\nD. schools", "en", EN_ROW0).rule == "final_line"
    assert extract_answer("Explanation: …\n\nD. hospital is best", "en", EN_ROW0).rule == "no_label"


def test_rule_explanation_head():
    # x_csqa_ja: no answer label, the answer is written in the explanation slot
    opts = [("A", "仕事を見る"), ("B", "涙で一杯になる"), ("C", "光を見る"), ("D", "乾ききる"), ("E", "グラス・オーバー")]
    text = "説明:B. 涙で一杯になる\n\n鼻を殴られたら、激しいショックを受けるため涙が出てしまうと考えられます。"
    assert extract_answer(text, "ja", opts) == Extraction("B", "parsed", "explanation_head")
    # a letter inside the reasoning is not an answer
    text = "説明:Bumwolle, also known as paper snow, is made by using B. シュレッダー (a device that cuts paper)."
    assert extract_answer(text, "ja", [("A", "大都市"), ("B", "シュレッダー")]) == Extraction(None, "missing", "no_label")


def test_rule_option_text():
    # x_csqa_de row 603, sample 0
    opts = [("A", "australien"), ("B", "Wildnisgebiet"), ("C", "Fallstudie"), ("D", "offene Ebene"), ("E", "Elfenbeinküste")]
    text = "…in Kalifornien.\n\nAntwort:<Australien>\n\nDie beste Antwort ist A. Australien, da die Gazelle …"
    # the concluding sentence after the label is the last statement, so it decides (same letter)
    assert extract_answer(text, "de", opts) == Extraction("A", "parsed", "sentence")
    assert extract_answer("…in Kalifornien.\n\nAntwort:<Australien>", "de", opts) == Extraction("A", "option_text", "option_text")
    assert extract_answer("Antwort: E-Mail senden", "de", [("A", "Post"), ("B", "E-Mail senden")]).letter == "B"
    assert extract_answer("Answer: the white house", "en", [("A", "house"), ("B", "white house")]).letter == "B"
    assert extract_answer("Answer: downtown", "en", EN_ROW0).rule == "no_letter"


def test_option_text_only_first_clause():
    # x_csqa_fr: the model declines to choose and mentions option A on the way
    opts = [("A", "faire des bébés"), ("B", "bonheur"), ("C", "grossesse non désirée"), ("D", "orgasme"), ("E", "les aides")]
    text = ("Réponse: Aucune des options ne correspond à la question, car il n'y a pas de lien entre les relations "
            "sexuelles d'une personne homosexuelle et la reproduction. Il est donc improbable que l'option A (faire des bébés) soit correcte.")
    assert extract_answer(text, "fr", opts) == Extraction(None, "missing", "no_letter")


def test_missing_refusal_and_none_of_the_above():
    refusal = ("I cannot answer this question as it may promote or glorify illegal activities. "
               "Is there anything else I can help you with?")
    assert extract_answer(refusal, "en") == Extraction(None, "missing", "no_label")
    none = "Explanation: A weasel is a type of mammal …\n\nAnswer: None of the above (A-E)"
    assert extract_answer(none, "en", EN_ROW0) == Extraction(None, "missing", "no_letter")
    assert extract_answer("Risposta: Nessuna delle opzioni (A-E)", "it").rule == "no_letter"
    assert extract_answer("", "en") == Extraction(None, "missing", "empty")
    assert extract_answer(None, "en").rule == "empty"


# --- ambiguity ---

@pytest.mark.parametrize("text,lang", [
    ("…ne sont pas des options pour acquérir du beurre.\n\nRéponse: A et D", "fr"),
    ("…可能需要到工具房或五金店去购买或租赁一台。\n\n答案:A 或 E", "zh"),
    ("…可能性が高いため。\n\n答え: A. ショッピングセンター or B. 商業地区", "ja"),
    ("Risposta: C e E", "it"),
    ("答え: A, C", "ja"),
    ("答案:B D", "zh"),
    ("答え:A. 花畑 D. フォーマルガーデン", "ja"),
    ("Réponse: D. magasin de musique (ou C. groupe de rock si vous voulez voir des musiciens jouant du tambour !)", "fr"),
    ("Answer: B. Scotland (or E. Online) - You may find high-quality tweed fabrics …", "en"),
    ("Answer: A or B", "en"),
])
def test_ambiguous_letters_are_missing(text, lang):
    assert extract_answer(text, lang) == Extraction(None, "missing", "ambiguous")


@pytest.mark.parametrize("text,lang,letter", [
    ("Risposta: D. dado (la risposta corretta è \"D\", poiché …)", "it", "D"),                       # same letter again
    ("Réponse: B. complexe industriel (C'est peu probable de trouver un immeuble …)", "fr", "B"),     # C'est
    ("Answer: E. Grassy Field (Note: While grassy fields are featured, … option A, Tennessee)", "en", "E"),  # after Note:
    ("Answer: A. memorial site (A lot of people visit)", "en", "A"),
])
def test_not_ambiguous(text, lang, letter):
    assert extract_answer(text, lang).letter == letter


def test_option_text_ambiguous():
    assert extract_answer("Answer: town or schools", "en", EN_ROW0) == Extraction(None, "missing", "option_text_ambiguous")


# --- letters and languages ---

def test_only_valid_letters_count():
    assert extract_answer("Answer: F", "en", EN_ROW0).rule == "no_letter"
    assert extract_answer("Answer: F", "en").letter == "F"
    assert extract_answer("Answer: K", "en").letter is None
    assert extract_answer("Answer: Because it is C", "en").rule == "no_letter"
    assert extract_answer("答案:BC", "zh").rule == "no_letter"


def test_unknown_language_is_data_error():
    with pytest.raises(DataError, match="no answer labels for language 'xx'"):
        extract_answer("Answer: A", "xx")


def test_adding_a_language_is_one_entry(monkeypatch):
    monkeypatch.setitem(ANSWER_LABELS, "eo", Labels(("Respondo",), ("Klarigo",)))
    assert extract_answer("Klarigo: …\n\nRespondo: C", "eo") == Extraction("C", "parsed", "label")
    assert extract_answer("Klarigo: B. domo\n\nmore", "eo", [("A", "urbo"), ("B", "domo")]).rule == "explanation_head"


def test_find_labels_needs_colon_and_whole_word():
    assert [l.word for l in find_labels("Die Antwort C. Krankenhaus ist die richtige Wahl.\nAntwort: C")] == ["Antwort"]
    assert find_labels("Answers: B") == []
    assert [l.word for l in find_labels("正确答案：C")] == ["答案"]


# --- records ---

def test_extract_records():
    item = MCItem("q1", "en", "Where?", tuple(EN_ROW0), "D")
    recs = [{"qid": "q1", "lang": "en", "sample": 0, "text": "Answer: D. schools"},
            {"qid": "q1", "lang": "en", "sample": 1, "text": "Answer: maybe"}]
    out = extract_records(recs, {("q1", "en"): item})
    assert [(r["letter"], r["how"], r["rule"]) for r in out] == [("D", "parsed", "label"), (None, "missing", "no_letter")]
    assert "letter" not in recs[0]
    assert extraction_summary(out, {("q1", "en"): item})["sample0_accuracy_%"].tolist() == [100.0]
    with pytest.raises(DataError) as e:
        extract_records([recs[0], {"qid": "q2", "lang": "en", "text": "Answer: A"}], {("q1", "en"): item})
    assert (e.value.row, e.value.field) == (1, "qid")
    with pytest.raises(DataError) as e:
        extract_records([{"qid": "q1", "lang": "en"}], {("q1", "en"): item})
    assert (e.value.row, e.value.field) == (0, "text")


# --- properties ---

@settings(max_examples=400, deadline=None)
@given(st.text(), st.sampled_from(sorted(ANSWER_LABELS)), st.booleans())
def test_never_raises_on_any_text(text, lang, with_options):
    e = extract_answer(text, lang, EN_ROW0 if with_options else None)
    assert e.how in {"parsed", "option_text", "missing"}
    assert (e.letter is None) == (e.how == "missing")
    assert e.letter is None or e.letter in ("ABCDE" if with_options else "ABCDEFGHIJ")


noise = st.text(st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(noise, st.sampled_from([l for _, l in ALL_LABELS] + [":", "：", "**", "\n", " ", "A", "B", "(C)", "<D>", " or "])),
                max_size=12), st.sampled_from(sorted(ANSWER_LABELS)))
def test_never_raises_on_labels_and_noise(parts, lang):
    e = extract_answer("".join(parts), lang, EN_ROW0)
    assert e.how in {"parsed", "option_text", "missing"} and (e.letter is None or e.letter in "ABCDE")


@settings(max_examples=300, deadline=None)
@given(noise, st.sampled_from(ALL_LABELS), st.sampled_from("ABCDE"), st.sampled_from([":", "：", " :", ":**", "**:"]))
def test_own_label_at_the_end_decides(prefix, lang_label, letter, colon):
    lang, label = lang_label
    e = extract_answer(f"{prefix}\n\n{label}{colon} {letter}", lang, EN_ROW0)
    assert e == Extraction(letter, "parsed", "label")


# --- the whole release ---

MEASURED_PARSED = {"en": 99.37, "zh": 99.22, "fr": 99.67, "de": 99.48, "it": 99.11, "ja": 98.00}
MEASURED_SAMPLE0_ACCURACY = {"en": 73.0, "zh": 51.9, "fr": 60.7, "de": 57.6, "it": 59.7, "ja": 48.3}


@pytest.mark.slow
def test_whole_release(release):
    records, items = read_release_samples(release)
    assert len(records) == 16182
    out = extract_records(records, items)   # its speed is measured in benchmarks/extraction.py
    assert len(out) == len(records)
    summary = extraction_summary(out, items).set_index("lang")
    for lang, measured in MEASURED_PARSED.items():
        assert summary.loc[lang, "parsed_%"] >= measured - 0.5, (lang, summary.loc[lang, "parsed_%"])
        assert abs(summary.loc[lang, "sample0_accuracy_%"] - MEASURED_SAMPLE0_ACCURACY[lang]) <= 1.0, lang


# --- what a careful reader reads (hand-written adversarial cases, Mistral-style completions) ---

@pytest.mark.parametrize("text,lang,letter", [
    ("Explanation: Classrooms have desks.\n\nTherefore, the correct answer is C. classroom", "en", "C"),
    ("The answer is (B)", "en", "B"),
    ("So the most likely answer would be **D**.", "en", "D"),
    ("解释: 人们在教室里学习。答案是B", "zh", "B"),
    ("解释: 人们在教室里学习。\n\n正确答案是 C。", "zh", "C"),
    ("説明: 図書館には本がある。\n\n答えは D です", "ja", "D"),
    ("Explication: On apprend en classe.\n\nLa réponse est B", "fr", "B"),
    ("Explication: …\n\nLa bonne réponse est : C. Marché boursier - Si Sarah …", "fr", "C"),
    ("Erklärung: …\n\nDie richtige Antwort ist daher E. Bibliothek.", "de", "E"),
    ("Spiegazione: …\n\nLa risposta corretta è A, perché …", "it", "A"),
    ("C. house\nExplanation: People live in houses.", "en", "C"),
    ("Answer: c", "en", "C"),
    ("Answer: (d)", "en", "D"),
    ("答案：Ｄ", "zh", "D"),
    ("Answer: Ｂ. michigan", "en", "B"),
    ("Reasoning …\n\n$\\boxed{C}$", "en", "C"),
    ("Reasoning …\n\\boxed{\\text{B}}", "en", "B"),
    ("<answer>C</answer>", "en", "C"),
    ("Answer - C", "en", "C"),
    ("Antwort – D. Küche", "de", "D"),
    ("Answer: A is not correct, B is", "en", "B"),
    ("Answer: A\n\nWait, actually the answer is C.", "en", "C"),
    ("答え: D. オーブン (X) / B. 冷蔵庫 (√)", "ja", "B"),
    ("Explanation: … sewing.\nC. art store - This option is not related.\nD. sewing - This is the correct answer.", "en", "D"),
    ("Explanation: … Therefore, E. Bathroom is the correct answer as bathrooms often have door mats.", "en", "E"),
    ("Answer: C. classroom\n\nQuestion: Where do you keep milk?\nA. fridge\nB. oven\n\nAnswer: A", "en", "C"),
    ("Answer: C. classroom\n\nHuman: And where is milk kept?\nAnswer: A", "en", "C"),
    ("Réponse finale : C", "fr", "C"), ("La risposta è la C.", "it", "C"), ("Answer: Option (C)", "en", "C"),
    ("Answer: A. Actually, no, it's C.", "en", "C"), ("The correct answer is B, not A.", "en", "B"),
    ("Answer: C (A and B are wrong)", "en", "C"), ("答案是B，而不是A", "zh", "B"), ("Hence, B is the answer.", "en", "B"),
    ("However, for the sake of choosing an option, I will choose:\n\nB. grogginess\nExplanation: …", "en", "B"),  # Mistral, real
    ("Antwort: D. Ablageschrank (Inkorrekt)\nDer richtige Antwort ist C. Supermarkt oder eine Einkaufsstasche, nicht D. Ablageschrank.", "de", "C"),
])
def test_careful_reader_reads(text, lang, letter):
    assert extract_answer(text, lang).letter == letter, extract_answer(text, lang)


@pytest.mark.parametrize("text,lang", [
    ("Explanation: The fan was too loud.", "en"),                        # the release reads E from "Explanation"
    ("Explication: …\n\nRéponse: Aucune option n'est correcte.", "fr"),   # the release reads A from "Aucune"
    ("Answer: B or D", "en"), ("The correct answer is B or D.", "en"), ("答案是B或D", "zh"),
    ("Answer: C. feel full or D. feeling satisfied.", "en"),
    ("Answer: D\n\nExplanation: …\n\nAnswer: none of the above", "en"),  # no fall back to the earlier D
    ("Explanation: None of the options fit.\n\nAnswer: None of the above (N/A)", "en"),
    ("A. town\nB. michigan\nC. hospital\nD. schools\nE. office building", "en"),  # the options re-listed: no answer
    ("Answer: A is wrong.", "en"), ("答案:A. 朋友家 (错误)", "zh"),
    ("Answer: a dog would do it", "en"), ("Answer: e.g. a shop", "en"),
    ("Explanation: A lot of people think so, but I am not sure.", "en"),
    ("Answer: A or B, not C", "en"), ("Answer: I would rather not say", "en"),
    ("Answer: A. memorial site (This is not the correct answer)\n\nThe correct answer is none of the above.", "en"),  # Llama, real
    ("A. run quickly (This is the answer for when you ride it.)\nSo, there is no correct answer.", "en"),
])
def test_careful_reader_declines(text, lang):
    assert extract_answer(text, lang).letter is None, extract_answer(text, lang)


def test_correction_and_statement_rules_are_named():
    assert extract_answer("Answer: A is not correct, B is", "en").rule == "correction"
    assert extract_answer("The answer is (B)", "en").rule == "sentence"
    assert extract_answer("<answer>C</answer>", "en").rule == "tag"
    assert extract_answer("C. house\nExplanation: …", "en").rule == "first_line"
    assert extract_answer("Answer: D\n\nAnswer: none of the above", "en").rule == "no_letter"
    assert extract_answer("A. town\nB. michigan\nC. hospital", "en").rule == "no_label"


# --- from an audit of the Llama files: a letter the model itself marks wrong in an aside is no answer ---

@pytest.mark.parametrize("text,lang,letter", [
    # real (Llama-3, en row 197; Mistral, ja rows 810, 267, 839; zh 57; fr 216; de 223; it 214)
    ("Answer: B. Amazon River (This is incorrect. The correct answer would be Nile River.)", "en", None),
    ("答え: B. 何もない（This is incorrect）", "ja", None),
    ("答え: C. フォートノックス (This is not the correct answer)", "ja", None),
    ("答え: B. イースター (This is a mistake. The question asks about Christmas, not Easter.)", "ja", None),
    ("答案: D. 没钱 (This answer is incorrect based on the information provided in the question.)", "zh", None),
    ("Réponse: A. océan (incorrecte)", "fr", None),
    ("Damit ist die richtige Antwort: A. Radiohören (nicht richtig)", "de", None),
    ("Risposta: A) foresta (errato), B) nido (giusto), C) gabbia (errato), D) store (errato).", "it", "B"),
    ("答案:B. 气 (实际上不是正确答案，但这个选项可能是根据作者的想象所出的答案)", "zh", None),
    # adversarial: the aside corrects to one letter, or does not mark the answer wrong at all
    ("Answer: A. town (This is incorrect. The correct answer is B.)", "en", "B"),
    ("Answer: A. town (This is incorrect; B. michigan is correct)", "en", "B"),
    ("Answer: C. hospital (This is the correct answer)", "en", "C"),
    ("Answer: C. hospital (This is not the only option, but the best one)", "en", "C"),
    ("Antwort: C. gallup (This is the incorrect spelling of gallop)", "de", "C"),
    ("Answer: C. hospital (It is not wrong to say so)", "en", "C"),
    ("Answer: C. hospital (not incorrect)", "en", "C"),
])
def test_negating_aside(text, lang, letter):
    assert extract_answer(text, lang).letter == letter, extract_answer(text, lang)


@pytest.mark.parametrize("text,lang", [
    # real (Mistral: ja 406, fr 662, de 255, en 759): a rival letter after "or"/"and" counts even before a word
    ("答え: D. ビーチ (This is incorrect. The answer is A or C depending on the context.)", "ja"),
    ("Réponse: C ou D selon le contexte exact.", "fr"),
    ("Antwort: A, B oder C sind falsch.", "de"),
    ("Answer: B and D are things God does not do according to religion.", "en"),
    ("The correct answer is A or C depending on the context.", "en"),
])
def test_rival_after_conjunction_is_ambiguous(text, lang):
    assert extract_answer(text, lang).letter is None, extract_answer(text, lang)


def test_a_lot_of_is_still_no_rival():
    assert extract_answer("Answer: C. hospital. A lot of patients go there.", "en", EN_ROW0).letter == "C"
    assert extract_answer("Answer: B. michigan (or a nearby state)", "en", EN_ROW0).letter == "B"


# every Llama completion the release script reads and we do not, read by hand: a careful reader reads none of them
LLAMA_RELEASE_ONLY = {  # (lang, class) -> completions; classes as in 30_extraction's audit table
    ("en", "several options"): 2, ("en", "marked wrong"): 3,
    ("zh", "several options"): 15, ("zh", "marked wrong"): 4, ("zh", "none of the options"): 1,
    ("fr", "several options"): 4, ("fr", "none of the options"): 3, ("fr", "no answer label"): 1,
    ("de", "none of the options"): 1, ("it", "several options"): 8, ("ja", "several options"): 38,
}


@pytest.mark.slow
def test_every_llama_completion_only_the_release_reads_is_a_guess(release):
    from calm.extraction import release_only_readings
    records, items = read_release_samples(release)
    audit = release_only_readings(extract_records(records, items))
    assert (audit["release_reading"] != "letter").all(), audit[audit["release_reading"] == "letter"]
    assert audit.groupby(["lang", "class"], sort=False).size().to_dict() == LLAMA_RELEASE_ONLY


# --- a restatement in another language after the answer (Mistral's Italian and Japanese samples) is read past ---

@pytest.mark.parametrize("text,lang,letter", [
    ("Spiegazione: …\nRisposta: E. tavolo\nAnswer: The photo was framed and placed on the table for you to look at while having breakfast.", "it", "E"),
    ("説明: この質問は、リラックスする方法について。\n答え: A. 本を読む (Answer: Reading a book)", "ja", "A"),
    ("Spiegazione: …\nRisposta: B. ritirarsi.\nAnswer: The police officer cannot do anything … they have to retreat. (B)", "it", "B"),
    ("Spiegazione: …\nRisposta: D. abbellire i capelli\nAnswer: Rispondi: D. This person was getting their hair done.", "it", "D"),
    # adversarial: a gloss that names another letter, negates, says none, asks, or is code is no restatement
    ("Risposta: E. tavolo\nAnswer: The photo was placed on the shelf, B.", "it", None),
    ("Risposta: C. la propria morte\nAnswer: Incorretta.", "it", None),
    ("答え: C. 醜い (Ugliness) は間違いです。 (Incorrect answer: Ugly.)", "ja", None),
    ("答案: A. 五金店\n\nAnswer: None.", "zh", None),
    ("答案: A. 五金店\n\nAnswer: none of the above", "zh", None),
    ("Risposta: A. estero.\nAnswer: The person is not in their home country.", "it", None),
    ("Antwort: A. Stadt\n ans = input(\"Answer: \")", "de", None),
    ("Answer: D\n\nAnswer: The table is in the kitchen.", "en", None),   # the completion's own label: no fall back
])
def test_gloss_in_another_language(text, lang, letter):
    assert extract_answer(text, lang).letter == letter, extract_answer(text, lang)


def test_gloss_rule_is_named():
    assert extract_answer("Risposta: E. tavolo\nAnswer: The photo was on the table.", "it").rule == "gloss"


@pytest.mark.parametrize("text,lang,letter", [
    ("Incorrect answer: D. Natural History Museum\nExplanation and correct answer:\nWhile a museum …", "ja", None),   # Mistral, real
    ("False Answer: E. tiefes Atmen (Tiefes Atmen kann zur Entspannung beitragen)", "de", None),                     # Mistral, real
    ("错误答案：D\n\n正确答案：B", "zh", "B"),
    ("Wrong answer: A. town\nCorrect answer: C. hospital", "en", "C"),
    ("The answer is wrong.\nAnswer: C. hospital", "en", "C"),   # the negation is on another line
])
def test_label_that_names_a_wrong_answer(text, lang, letter):
    assert extract_answer(text, lang).letter == letter, extract_answer(text, lang)


@pytest.mark.parametrize("text,letter", [
    (" A. gefährlich (Unter Schlafentzug ist das Fahren ähnlich gefährlich wie unter Alkoholeinfluss)", "A"),   # Mistral, real
    (" A. gefährlich (falsch)", None),
    (" A. gefährlich (oder B. langsam)", None),
    (" A. sicher (Unter Schlafentzug …)", None),   # not A's option text
])
def test_first_line_with_an_aside(text, letter):
    assert extract_answer(text, "de", [("A", "gefährlich"), ("B", "langsam"), ("C", "schnell")]).letter == letter
