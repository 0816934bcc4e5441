"""Translation backends, the on-disk cache every backend goes through, and dataset translation."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from calm.data import DataError, check_parallel, demo_items
from calm.translation import (NLLB_CODES, CachedTranslator, LLMTranslator, Seq2SeqTranslator, TranslationError,
                              WebAPITranslator, make_translator, mt_lang_code, translate_items, translation_key)


class Tagger:
    "A backend that prefixes texts with its name and target, and records every call."
    translates = True

    def __init__(self, name="tag"):
        self.name, self.calls = name, []

    def translate(self, texts, source, target):
        self.calls.append((list(texts), source, target))
        return [f"{self.name}/{target}: {t}" for t in texts]


def test_cache_hit_avoids_backend_calls(tmp_path):
    b = Tagger()
    c = CachedTranslator(b, tmp_path)
    assert c.translate(["a", "b"], "en", "fr") == ["tag/fr: a", "tag/fr: b"]
    assert c.translate(["b", "a", "b"], "en", "fr") == ["tag/fr: b", "tag/fr: a", "tag/fr: b"]
    assert len(b.calls) == 1 and (c.hits, c.misses) == (3, 2)
    b2 = Tagger()                                           # another process, same cache folder
    assert CachedTranslator(b2, tmp_path).translate(["a"], "en", "fr") == ["tag/fr: a"] and b2.calls == []


def test_keys_separate_backends_and_directions(tmp_path):
    x, y = Tagger("x"), Tagger("y")
    cx, cy = CachedTranslator(x, tmp_path), CachedTranslator(y, tmp_path)
    assert cx.translate(["hi"], "en", "fr") == ["x/fr: hi"]
    assert cy.translate(["hi"], "en", "fr") == ["y/fr: hi"]          # same text and direction, other backend
    assert cx.translate(["hi"], "fr", "en") == ["x/en: hi"]          # reverse direction
    assert cx.translate(["hi"], "en", "de") == ["x/de: hi"]          # other target
    assert cx.translate(["hi"], "en", "cn") == ["x/zh: hi"]          # codes are normalized before keying
    assert len(x.calls) == 4 and len(y.calls) == 1
    keys = {translation_key("hi", s, t, n) for n, s, t in [("x", "en", "fr"), ("y", "en", "fr"), ("x", "fr", "en"), ("x", "en", "de")]}
    assert len(keys) == 4


def test_corrupted_cache_lines_are_skipped_with_a_warning(tmp_path):
    b = Tagger()
    CachedTranslator(b, tmp_path).translate(["one", "two", "three"], "en", "fr")
    p = tmp_path / "translations.jsonl"
    lines = p.read_text().splitlines()
    tampered = json.loads(lines[1]); tampered["text"] = "TWO"         # key no longer matches content
    p.write_text("\n".join([lines[0], json.dumps(tampered), "{not json", lines[2][:25]]))   # last line torn
    with pytest.warns(UserWarning, match=r"skipped 3 corrupted cache line\(s\), rows \[1, 2, 3\]"):
        c = CachedTranslator(Tagger(), tmp_path)
    assert c.skipped == 3
    assert c.translate(["one", "two", "three"], "en", "fr") == ["tag/fr: one", "tag/fr: two", "tag/fr: three"]
    assert c.backend.calls == [(["two", "three"], "en", "fr")]       # only the lost ones are redone
    with pytest.warns(UserWarning, match="skipped 3"):               # the torn line got its newline: new lines parse
        again = CachedTranslator(Tagger(), tmp_path)
    assert again.translate(["two", "three"], "en", "fr") and again.backend.calls == []


def test_backend_returning_the_wrong_count_is_an_error(tmp_path):
    class Short(Tagger):
        def translate(self, texts, source, target): return texts[:-1]
    with pytest.raises(TranslationError, match="returned 1 translations for 2 texts"):
        CachedTranslator(Short(), tmp_path).translate(["a", "b"], "en", "fr")
    assert not (tmp_path / "translations.jsonl").exists()


def test_make_translator_wraps_every_backend_in_the_cache(tmp_path):
    for kind, kw in [("llm", {"model_name": "smollm2-135m"}), ("seq2seq", {"model_id": "facebook/m2m100_418M"}),
                     ("web", {"url": "http://127.0.0.1:9/x"})]:
        t = make_translator(kind, tmp_path, **kw)
        assert isinstance(t, CachedTranslator) and t.name == t.backend.name and t.translates
    assert make_translator("identity").translates is False
    with pytest.raises(ValueError, match="unknown translator kind"): make_translator("deepl", tmp_path)


def test_nllb_codes_and_seq2seq_errors():
    assert [mt_lang_code("nllb", l) for l in ["en", "zh", "fr", "de", "it", "ja"]] == \
        ["eng_Latn", "zho_Hans", "fra_Latn", "deu_Latn", "ita_Latn", "jpn_Jpan"]
    assert len(set(NLLB_CODES.values())) == len(NLLB_CODES) == 16
    with pytest.raises(ValueError, match="pass family="): Seq2SeqTranslator("google/mt5-small")
    with pytest.raises(ValueError, match="unknown seq2seq family"): Seq2SeqTranslator("x", family="t5")
    t = Seq2SeqTranslator("Helsinki-NLP/opus-mt-en-ROMANCE", target_prefix={"fr": ">>fra<<"})
    assert t.model_for("en", "fr") == "Helsinki-NLP/opus-mt-en-ROMANCE"
    with pytest.raises(TranslationError, match="does not translate en->de"): t.model_for("en", "de")
    with pytest.raises(TranslationError, match="not in the local Hugging Face cache"):
        Seq2SeqTranslator("facebook/nllb-200-distilled-600M", local_files_only=True).translate(["hi"], "en", "fr")
    with pytest.raises(DataError, match="unknown language code 'xx'"):
        Seq2SeqTranslator("facebook/nllb-200-distilled-600M").translate(["hi"], "en", "xx")


@pytest.fixture
def stub_server():
    "A translation service on 127.0.0.1 that tags texts; fails the first request when asked to."
    class H(BaseHTTPRequestHandler):
        calls, fail_first = [], 0
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            H.calls.append(body)
            if H.fail_first:
                H.fail_first -= 1; self.send_response(503); self.end_headers(); self.wfile.write(b"busy"); return
            if body.get("target") == "ja":
                self.send_response(400); self.end_headers(); self.wfile.write(b"unsupported target"); return
            out = json.dumps({"result": [f"<{body['target']}>{t}" for t in body["q"]]}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(out)
        def log_message(self, *a): pass
    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/v1/translate", H
    srv.shutdown(); srv.server_close()


def test_web_api_against_a_local_stub(stub_server, tmp_path):
    url, H = stub_server
    H.fail_first = 1
    web = WebAPITranslator(url, texts_field="q", result_field="result", extra={"format": "text"}, batch_size=2)
    c = CachedTranslator(web, tmp_path)
    assert c.translate(["a", "b", "c"], "en", "de") == ["<de>a", "<de>b", "<de>c"]
    assert [b["q"] for b in H.calls] == [["a", "b"], ["a", "b"], ["c"]]          # the 503 was retried
    assert H.calls[0]["format"] == "text" and H.calls[0]["source"] == "en"
    c.translate(["a"], "en", "de"); assert len(H.calls) == 3                      # cached
    with pytest.raises(TranslationError, match="HTTP 400: unsupported target"): web.translate(["a"], "en", "ja")
    with pytest.raises(TranslationError, match="CALM_NO_SUCH_KEY"):
        WebAPITranslator(url, api_key_env="CALM_NO_SUCH_KEY").translate(["a"], "en", "de")


def test_web_api_unreachable_is_a_clear_error():
    web = WebAPITranslator("http://127.0.0.1:9/none", retries=0, timeout=2)
    with pytest.raises(TranslationError, match="could not be reached"): web.translate(["a"], "en", "de")


def test_translate_items_makes_parallel_items(tmp_path):
    en = [it for it in demo_items("test") if it.lang == "en"][:4]
    b = Tagger("mt")
    par = translate_items(en, ["de", "zh"], CachedTranslator(b, tmp_path))
    check_parallel(par, ["en", "de", "zh"])
    assert [it.lang for it in par[:3]] == ["en", "de", "zh"] and len(par) == 12
    assert [(s, t) for _, s, t in b.calls] == [("en", "de"), ("en", "zh")]
    for it in par:
        src = next(e for e in en if e.qid == it.qid)
        assert it.letters == src.letters and it.gold == src.gold
        if it.lang != "en":
            assert it.question == f"mt/{it.lang}: {src.question}"
            assert [t for _, t in it.options] == [f"mt/{it.lang}: {t}" for _, t in src.options]
            assert it.source.endswith(f"translated en->{it.lang} by mt")
    with pytest.raises(DataError, match="pass source_lang="): translate_items(par, ["fr"], b)
    assert {it.lang for it in translate_items(par, ["fr"], b, source_lang="en", keep_source=False)} == {"fr"}


def test_llm_translator_needs_both_model_and_tokenizer():
    with pytest.raises(ValueError, match="pass both"): LLMTranslator(model=object())
    assert LLMTranslator().name.startswith("llm:smollm2-135m#")


@pytest.mark.slow
def test_llm_translator_with_the_embedded_model(tmp_path):
    c = CachedTranslator(LLMTranslator(max_new_tokens=16), tmp_path)
    out = c.translate(["Good morning.", "Good morning."], "en", "de")
    assert len(out) == 2 and out[0] == out[1] and out[0].strip() and c.misses == 1
