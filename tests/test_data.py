import json

import pytest

from calm.data import (DEMO_LANGUAGES, DataError, MCItem, by_question, check_item, check_parallel, demo_items,
                       fingerprint, read_items, summarize, write_items)

REC = {"qid": "q1", "lang": "en", "question": "Where is milk kept?",
       "options": [{"label": "A", "text": "oven"}, {"label": "B", "text": "fridge"}], "gold": "B", "source": "t"}


def write_lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("change,field,msg", [
    ({"options": REC["options"][:1]}, "options", "fewer than two options"),
    ({"options": REC["options"] + [{"label": "b", "text": "x"}]}, "options", "duplicate letters"),
    ({"gold": "C"}, "gold", "not among the options"),
    ({"question": ""}, "question", "empty text"),
    ({"lang": "klingon"}, "lang", "unknown language code"),
    ({"options": [{"label": "A", "text": ""}, {"label": "B", "text": "x"}]}, "options[0].text", "empty text"),
])
def test_bad_rows_name_file_row_field(tmp_path, change, field, msg):
    p = write_lines(tmp_path / "items.jsonl", [REC, {**REC, "lang": "fr"}, {**REC, **change}])
    with pytest.raises(DataError) as e:
        read_items(p)
    err = e.value.problems[0]
    assert (err.file, err.row, err.field) == (p, 2, field)
    assert msg in str(e.value) and f"items.jsonl:2: {field}:" in str(e.value)


def test_every_bad_row_is_reported_at_once(tmp_path):
    p = write_lines(tmp_path / "x.jsonl", [REC, "{broken", {**REC, "gold": "Z"}, {**REC, "lang": "xx"}])
    with pytest.raises(DataError) as e:
        read_items(p)
    assert [x.row for x in e.value.problems] == [1, 2, 3]


def test_roundtrip_and_fingerprint(tmp_path):
    items = [check_item(REC), check_item({**REC, "lang": "zh", "question": "牛奶放在哪里？"})]
    back = read_items(write_items(items, tmp_path / "a.jsonl"))
    assert back == items
    assert fingerprint(back) == fingerprint(items) != fingerprint(items[::-1])
    assert "牛奶" in (tmp_path / "a.jsonl").read_text(encoding="utf-8")


def test_parallel_checks():
    en, fr = check_item(REC), check_item({**REC, "lang": "fr"})
    check_parallel([en, fr], ["en", "fr"])
    with pytest.raises(DataError, match="missing in \\['de'\\]"):
        check_parallel([en, fr], ["en", "fr", "de"])
    with pytest.raises(DataError, match="different gold letters"):
        check_parallel([en, check_item({**REC, "lang": "fr", "gold": "A"})])
    with pytest.raises(DataError, match="duplicate item"):
        check_parallel([en, en])


def test_demo_set_is_parallel_balanced_and_split():
    train, test = demo_items("train"), demo_items("test")
    assert len(by_question(train)) == 40 and len(by_question(test)) == 20
    assert not set(by_question(train)) & set(by_question(test))
    s = summarize(train + test)
    assert sorted(s.lang) == sorted(DEMO_LANGUAGES)
    assert (s[[f"gold_{l}" for l in "ABCDE"]] == 12).all().all()
    assert all(len(it.options) == 5 for it in train + test)
