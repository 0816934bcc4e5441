import json

import pytest

from calm.data import DataError
from calm.loaders import (align_parallel, from_medqa, from_xcsr, load_release_medqa, load_release_xcsqa, parse_gold,
                          parse_question, read_release_file)


def test_parse_question_layouts():
    assert parse_question("質問: どこ？\nA. 町\nB. 病院\n答え:") == ("どこ？", [("A", "町"), ("B", "病院")])
    q, opts = parse_question("Which? (A) B-cell (B) V(D)J recombination (C) Thymocyte (D) Negative selection")
    assert [l for l, _ in opts] == list("ABCD") and opts[1][1] == "V(D)J recombination"
    assert parse_gold("(d) 寨卡病毒") == "D" and parse_gold("") is None


def test_release_file_errors_name_row_and_field(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"input": "Q (A) a (B) b", "output": "(B) b"}, {"input": "Q (A) a (B) b", "output": "(E) e"}]))
    with pytest.raises(DataError, match=r"bad.json:1: gold: gold 'E' is not among"):
        read_release_file(p, "en", "t")
    p.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_release_file(p, "en", "t")


def _group(tmp_path, native, other):
    d = tmp_path / "g"; d.mkdir()
    (d / "all_test_native_en.json").write_text(json.dumps(native))
    (d / "all_test_en2fr.json").write_text(json.dumps(other))
    return d


def _row(i, gold):
    return {"input": f"A {20 + i}-year-old with {i * 7} mg. Which? (A) x{i} (B) y{i} (C) z", "output": f"({gold}) w"}


def test_drift_is_detected_and_realigned(tmp_path):
    native = [_row(i, "ABC"[i % 3]) for i in range(30)]
    other = native[:10] + [_row(99, "A")] + native[10:]           # one inserted row
    g = load_release_medqa(_group(tmp_path, native, other))
    d = g.drift()
    assert d.query("status == 'extra_in_other'").other_row.tolist() == [10]
    assert len(d.query("status == 'shifted'")) == 20
    fr = {it.qid: it for it in g.items if it.lang == "fr"}
    en = {it.qid: it for it in g.items if it.lang == "en"}
    assert all(fr[q].question == en[q].question for q in en)    # never pairs different questions
    with pytest.raises(DataError, match="21 rows out of line with all_test_native_en.json; first: native row <NA>, this file's row 10"):
        load_release_medqa(tmp_path / "g", on_drift="raise")


def test_in_line_files_have_no_drift(tmp_path):
    native = [_row(i, "ABC"[i % 3]) for i in range(12)]
    g = load_release_medqa(_group(tmp_path, native, native))
    assert g.drift().empty and len(g.items) == 24


def test_hub_schemas():
    xs = from_xcsr([{"id": "1", "lang": "de", "question": {"stem": "Wo?", "choices": {"label": ["A", "B"], "text": ["hier", "da"]}}, "answerKey": "B"}])
    assert xs[0].gold == "B" and xs[0].lang == "de"
    ms = from_medqa([{"question": "Dose?", "options": {"A": "1 mg", "B": "2 mg"}, "answer_idx": "A"}], lang="en")
    assert ms[0].options == (("A", "1 mg"), ("B", "2 mg"))
    with pytest.raises(DataError, match=r"0: question: expected question.stem"):
        from_xcsr([{"id": "1", "lang": "de", "question": "Wo?"}])


def test_release_xcsqa_loads(release):
    items = load_release_xcsqa(release)
    assert len(items) == 600 and {it.lang for it in items} == {"en", "zh", "fr", "de", "it", "ja"}


@pytest.mark.slow
def test_release_medqa_english_group_drift(release):
    g = load_release_medqa(release / "medqa" / "test" / "test_sft_en_q_1000")
    d = g.drift()
    assert d.query("lang == 'zh' and status == 'extra_in_other'").other_row.tolist() == [297]
    assert len(d.query("lang == 'zh' and status == 'shifted'")) == 703
    assert [(e.file.name, e.row) for e in g.skipped] == [("all_test_en2fr.json", 454), ("all_test_en2fr.json", 581)]
