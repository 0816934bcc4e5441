"""Time the retrieval index: chunking, embedding, FAISS build, reopening and query latency on a generated corpus.

    python benchmarks/retrieval.py [--passages 100000] [--embed-budget-s 240] [--queries 200] [--threads auto]
                                   [--no-hnsw] [--out reports/bench/retrieval.json]

The corpus is GENERATED (seeded): books of synthetic medical-style sentences, written as *_en.txt and *_de.txt
files (the language tag only matters for the language-filter timings; the text is English-like), cut with
calm.retrieval at --max-tokens/--overlap (default 32/8: short passages) until at least --passages passages exist.

Threads: torch and FAISS both use OpenMP. On a CPU shared with other work, 2 threads on 2 cores can be MUCH
slower than 1 (threads spin at barriers waiting for a descheduled sibling). --threads auto times 256 passages at
1 and at all usable cores (torch and FAISS set alike) and runs everything with the faster; both timings are in
"threads". --threads N forces N.

Writes (and prints) JSON with, per stage, what was measured:
  threads          the calibration (passages/s at each setting), the setting used, and the load average
  chunk            calm.retrieval.chunk_text over every book (MiniLM tokenizer + word-boundary windows): passages/s
  embed            all-MiniLM-L6-v2 (the offline default, CPU) on the first passages, batch --batch-size, until
                   --embed-budget-s ran out (or all were embedded): passages/s over `embedded` passages, and the
                   projected time to embed the whole corpus at that rate (a projection, not a measurement)
  vectors          which vectors went into the index: the real embeddings of the embedded passages, and for the
                   rest SYNTHETIC ones (a real embedding, cycled, plus Gaussian noise, renormalized). FAISS's build and
                   search cost does not depend on what the vectors mean; retrieval quality is not measured here.
  index_add        VectorIndex.add_passages(rows, vectors=...) for the whole corpus in one call (FAISS add + passages
                   JSONL + SHA-256 of both files + manifest): passages/s; and faiss_add alone (IndexFlatIP.add)
  append           the same corpus added in --appends equal parts (each a build_index-style append that writes and
                   re-hashes the files): seconds per part, to show that appends do not redo earlier work
  reopen           VectorIndex.open with hash verification (and without): seconds
  query            one question at a time (question + 5 options, as RetrievalPromptBuilder does without prefetch):
                   MiniLM query embedding, FAISS search (top-k, exact inner product) and both, p50/p95 in ms;
                   with and without a language filter (half of the passages); and batched queries per second
  hnsw             (unless --no-hnsw) an HNSW index (M=32) over the same vectors: build s, search p50/p95 ms,
                   recall@k against the exact index
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from calm.retrieval import Embedder, VectorIndex, chunk_text, find_books, question_query, read_book  # noqa: E402
from calm.data import MCItem  # noqa: E402

ORGANS = "heart lung liver kidney pancreas thyroid adrenal brain spleen stomach colon bone skin retina".split()
CELLS = "hepatocyte cardiomyocyte neuron podocyte beta-cell macrophage fibroblast osteoclast enterocyte lymphocyte".split()
DRUGS = ("metformin warfarin heparin lisinopril losartan furosemide spironolactone digoxin amiodarone isoniazid "
         "rifampin vancomycin ceftriaxone methimazole levothyroxine prednisone insulin atorvastatin").split()
EFFECTS = ("hyperkalemia hypokalemia hyponatremia hypoglycemia lactic-acidosis ototoxicity nephrotoxicity hepatitis "
           "neuropathy bradycardia angioedema gynecomastia thrombocytopenia agranulocytosis").split()
ORGANISMS = ("Vibrio Clostridioides Streptococcus Staphylococcus Neisseria Mycobacterium Helicobacter Treponema "
             "Escherichia Klebsiella Pseudomonas Listeria").split()
TEMPLATES = [
    "{drug} acts on the {organ} and may cause {effect} in older patients.",
    "Infection of the {organ} by {org} is treated with {drug} for {n} days.",
    "The {cell} of the {organ} is damaged early, which explains the {effect}.",
    "{org} produces a toxin that injures each {cell}; {drug} is not effective.",
    "A level of {n} mg/dL suggests {effect}, and {drug} should be stopped.",
    "In chronic disease of the {organ}, the {cell} shows changes within {n} weeks.",
]


def sentence(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(drug=rng.choice(DRUGS).capitalize(), organ=rng.choice(ORGANS), effect=rng.choice(EFFECTS),
                                        org=rng.choice(ORGANISMS), cell=rng.choice(CELLS), n=rng.randint(2, 400))


def generate_corpus(folder: Path, n_books: int, sentences_per_book: int, seed: int) -> list[Path]:
    rng, paths = random.Random(seed), []
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(n_books):
        lang = "en" if b % 2 == 0 else "de"
        p = folder / f"book{b:03d}_{lang}.txt"
        paras = [" ".join(sentence(rng) for _ in range(8)) for _ in range(sentences_per_book // 8)]
        p.write_text(f"Synthetic textbook {b}\n\n" + "\n\n".join(paras) + "\n", encoding="utf-8")
        paths.append(p)
    return paths


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 3)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passages", type=int, default=100_000, help="at least this many passages")
    p.add_argument("--books", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--embed-budget-s", type=float, default=240.0, help="seconds of MiniLM passage embedding at most")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--appends", type=int, default=5)
    p.add_argument("--no-hnsw", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="auto", help="torch and FAISS threads: auto (calibrate 1 vs all cores) or a number")
    p.add_argument("--workdir", default=None, help="where to write the corpus and indexes (default: a temporary folder, removed)")
    p.add_argument("--out", default="reports/bench/retrieval.json")
    args = p.parse_args(argv)
    import faiss
    import sentence_transformers
    import torch

    t_start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="calm-bench-retrieval-"))
    res = {"machine": {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                       "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                       "sentence_transformers": sentence_transformers.__version__},
           "params": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
           "corpus": "generated: seeded synthetic medical-style sentences (see the script); half the books tagged en, half de"}

    # ---------------------------------------------------------------- corpus and chunking
    em = Embedder(batch_size=args.batch_size)
    tokens_per_sentence = 21
    stride = args.max_tokens - args.overlap
    per_book = int(args.passages * stride / tokens_per_sentence / args.books * 1.05) + 8
    paths = generate_corpus(work / "corpus", args.books, per_book, args.seed)
    books = find_books(work / "corpus")
    t0 = time.perf_counter()
    rows = []
    for b in books:
        rows += [{"book": b.id, "lang": b.lang, **c} for c in chunk_text(read_book(b.path), em, args.max_tokens, args.overlap)]
    dt = time.perf_counter() - t0
    if len(rows) < args.passages: raise SystemExit(f"generated only {len(rows)} passages; raise --books")
    n = len(rows)
    res["chunk"] = {"books": len(books), "chars": sum(b.chars for b in books), "passages": n, "seconds": round(dt, 2),
                    "passages_per_s": round(n / dt, 1), "mean_tokens": round(float(np.mean([r["n_tokens"] for r in rows])), 1)}
    print(f"chunk: {n} passages in {dt:.1f}s", file=sys.stderr)

    # ---------------------------------------------------------------- threads
    def set_threads(k: int):
        torch.set_num_threads(k); faiss.omp_set_num_threads(k)
    t0 = time.perf_counter(); _ = em.model; load_s = time.perf_counter() - t0
    em.encode([rows[0]["text"]] * 8)                        # warm-up
    cores = res["machine"]["cpus_usable"] or os.cpu_count() or 1
    calib = {}
    if args.threads == "auto":
        for k in sorted({1, cores}):
            set_threads(k); em.encode([r["text"] for r in rows[:32]])
            t0 = time.perf_counter(); em.encode([r["text"] for r in rows[:256]]); calib[k] = round(256 / (time.perf_counter() - t0), 1)
        used = max(calib, key=calib.get)
    else: used = int(args.threads)
    set_threads(used)
    res["threads"] = {"calibration_passages_per_s": calib, "used": used, "loadavg_before_embedding": [round(x, 2) for x in os.getloadavg()]}
    print(f"threads: {res['threads']}", file=sys.stderr)

    # ---------------------------------------------------------------- embedding (time-budgeted)
    done, vecs, t0 = 0, [], time.perf_counter()
    chunk = 4 * args.batch_size
    while done < n and time.perf_counter() - t0 < args.embed_budget_s:
        part = rows[done:done + chunk]
        vecs.append(em.encode([r["text"] for r in part]))
        done += len(part)
    embed_s = time.perf_counter() - t0
    real = np.concatenate(vecs)
    rate = done / embed_s
    res["embed"] = {"model": em.name, "device": "cpu", "model_load_s": round(load_s, 2), "batch_size": args.batch_size,
                    "embedded": done, "seconds": round(embed_s, 2), "passages_per_s": round(rate, 1),
                    "all_embedded": done == n, "projected_s_for_all": round(n / rate, 1),
                    "note": "measured on the first `embedded` passages only; projected_s_for_all = passages / passages_per_s"}
    print(f"embed: {done} passages in {embed_s:.1f}s ({rate:.1f}/s)", file=sys.stderr)

    # ---------------------------------------------------------------- vectors for the whole corpus
    rng = np.random.default_rng(args.seed)
    if done < n:
        fill = real[np.arange(n - done) % done] + rng.normal(0, 0.05, size=(n - done, real.shape[1])).astype(np.float32)
        fill /= np.linalg.norm(fill, axis=1, keepdims=True)
        vectors = np.concatenate([real, fill]).astype(np.float32)
    else: vectors = real
    res["vectors"] = {"real": done, "synthetic": n - done, "dim": int(vectors.shape[1]),
                      "synthetic_how": "a real embedding (cycled) + N(0, 0.05) noise per dimension, L2-normalized"}

    # ---------------------------------------------------------------- index build: one call, FAISS alone, appends
    t0 = time.perf_counter()
    ix = VectorIndex.create(work / "flat", em, args.max_tokens, args.overlap)
    ix.add_passages(rows, vectors=vectors)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter(); fl = faiss.IndexFlatIP(vectors.shape[1]); fl.add(vectors); faiss_s = time.perf_counter() - t0
    sizes = {f.name: f.stat().st_size for f in (work / "flat").iterdir()}
    res["index_add"] = {"passages": n, "seconds": round(add_s, 2), "passages_per_s": round(n / add_s, 1),
                        "faiss_add_seconds": round(faiss_s, 3), "faiss_add_passages_per_s": round(n / faiss_s, 1),
                        "bytes": sizes, "what": "VectorIndex.add_passages with precomputed vectors: FAISS add + JSONL + hashes + manifest",
                        "projected_end_to_end_passages_per_s": round(1 / (1 / rate + 1 / (n / add_s) + 1 / res["chunk"]["passages_per_s"]), 1)}
    print(f"index: {add_s:.1f}s; faiss alone {faiss_s:.2f}s", file=sys.stderr)
    ap = VectorIndex.create(work / "appended", em, args.max_tokens, args.overlap)
    per, parts = [], np.array_split(np.arange(n), args.appends)
    for idx in parts:
        t0 = time.perf_counter(); ap.add_passages([rows[i] for i in idx], vectors=vectors[idx]); per.append(round(time.perf_counter() - t0, 2))
    res["append"] = {"parts": args.appends, "passages_per_part": int(len(parts[0])), "seconds_per_part": per,
                     "same_files_as_one_call": (work / "appended" / "passages.jsonl").read_bytes() == (work / "flat" / "passages.jsonl").read_bytes()}

    # ---------------------------------------------------------------- reopen
    t0 = time.perf_counter(); re_ix = VectorIndex.open(work / "flat", embedder=em); open_s = time.perf_counter() - t0
    t0 = time.perf_counter(); VectorIndex.open(work / "flat", embedder=em, verify=False); open_nv_s = time.perf_counter() - t0
    res["reopen"] = {"seconds_verified": round(open_s, 2), "seconds_unverified": round(open_nv_s, 2), "passages": len(re_ix)}

    # ---------------------------------------------------------------- queries
    qrng = random.Random(args.seed + 1)
    items = [MCItem(f"q{i}", "en", f"A patient treated with {qrng.choice(DRUGS)} develops {qrng.choice(EFFECTS)} affecting the "
                    f"{qrng.choice(ORGANS)}. Which organism or drug is most likely responsible?",
                    tuple((l, qrng.choice(DRUGS + ORGANISMS)) for l in "ABCDE")) for i in range(args.queries)]
    queries = [question_query(it) for it in items]
    for q in queries[:5]: re_ix.search(q, k=args.k)          # warm-up (selector cache, threads)
    lat = {}
    for label, langs in (("all_languages", None), ("language_filter_en", ["en"])):
        e_t, s_t, tot = [], [], []
        for q in queries:
            t0 = time.perf_counter(); v = em.encode([q], "query"); t1 = time.perf_counter()
            params = re_ix._params(langs, args.k)
            re_ix.index.search(v, args.k, params=params) if params is not None else re_ix.index.search(v, args.k)
            t2 = time.perf_counter(); e_t.append(t1 - t0); s_t.append(t2 - t1); tot.append(t2 - t0)
        lat[label] = {"embed_ms_p50": pct(e_t, 50), "embed_ms_p95": pct(e_t, 95), "search_ms_p50": pct(s_t, 50),
                      "search_ms_p95": pct(s_t, 95), "total_ms_p50": pct(tot, 50), "total_ms_p95": pct(tot, 95)}
    qv = em.encode(queries[:50], "query")
    compare = {}
    for kth in sorted({1, cores}):
        faiss.omp_set_num_threads(kth); ts = []
        for i in range(len(qv)):
            t0 = time.perf_counter(); re_ix.index.search(qv[i:i + 1], args.k); ts.append(time.perf_counter() - t0)
        compare[kth] = {"search_ms_p50": pct(ts, 50), "search_ms_p95": pct(ts, 95)}
    faiss.omp_set_num_threads(used)
    lat["faiss_search_by_threads_50_queries"] = compare
    t0 = time.perf_counter(); re_ix.search(queries, k=args.k); batch_s = time.perf_counter() - t0
    t0 = time.perf_counter(); re_ix.search(queries, k=args.k, langs=["en"]); batch_f_s = time.perf_counter() - t0
    res["query"] = {"queries": len(queries), "k": args.k, "index_type": "flat (exact inner product)", "passages": n, **lat,
                    "batched_queries_per_s": round(len(queries) / batch_s, 1),
                    "batched_queries_per_s_language_filter": round(len(queries) / batch_f_s, 1),
                    "what": "per query: MiniLM embedding of question + 5 options, then FAISS top-k; batched: VectorIndex.search on all queries"}
    print(f"query: {lat}", file=sys.stderr)

    # ---------------------------------------------------------------- HNSW
    if not args.no_hnsw:
        t0 = time.perf_counter()
        h = VectorIndex.create(work / "hnsw", em, args.max_tokens, args.overlap, index_type="hnsw")
        h.add_passages(rows, vectors=vectors)
        hb = time.perf_counter() - t0
        qv = em.encode(queries, "query")
        _, exact = fl.search(qv, args.k)
        params = h._params(None, args.k)
        st_, got = [], []
        for i in range(len(queries)):
            t0 = time.perf_counter(); _, I = h.index.search(qv[i:i + 1], args.k, params=params); st_.append(time.perf_counter() - t0); got.append(I[0])
        recall = float(np.mean([len(set(g) & set(e)) / args.k for g, e in zip(got, exact)]))
        res["hnsw"] = {"M": 32, "efSearch": max(64, 2 * args.k), "build_seconds": round(hb, 2), "build_passages_per_s": round(n / hb, 1),
                       "search_ms_p50": pct(st_, 50), "search_ms_p95": pct(st_, 95), f"recall_at_{args.k}": round(recall, 4)}
        print(f"hnsw: {res['hnsw']}", file=sys.stderr)

    res["peak_rss_mb"] = peak_rss_mb()
    res["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.workdir: shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(res, indent=2, ensure_ascii=False))
    return res


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*unknown to.*")
    sys.exit(0 if main() else 1)
