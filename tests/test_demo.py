"""`LLASM_DEMO=tiny make demo`: the whole pipeline (TTS, warm start, stage 1, LoRA stage 2, eval, answers)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tmp_path):
    env = {**os.environ, "LLASM_DEMO": "tiny", "LLASM_DEMO_DIR": str(tmp_path / "demo")}
    run = subprocess.run([sys.executable, "-m", "llasm.apps.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for step in ("speak the seed corpus", "warm start", "stage 1", "stage 2", "evaluation", "two spoken questions"):
        assert f"=== {step}" in out
    assert "[en] llasm:" in out and "[zh] llasm:" in out
    assert "en WER" in out and "zh CER" in out
    report = json.loads((tmp_path / "demo" / "eval" / "report.json").read_text())
    assert {"en", "zh"} <= set(report["results"]["llasm"])
    assert (tmp_path / "demo" / "eval" / "report.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "stage2" / "final" / "model.safetensors").exists()
    assert (tmp_path / "demo" / "stage1" / "loss_curve.png").exists()
    # bench/warm_start.py on the demo's data: both variants train from the same start and are scored
    bench = subprocess.run([sys.executable, "bench/warm_start.py", "--data", str(tmp_path / "demo" / "data"),
                            "--model", "configs/model/tiny.yaml", "--steps", "5"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    assert re.search(r"^base +5 steps .* held-out en WER +[0-9.]+ % zh CER +[0-9.]+ %", bench.stdout, re.M)
    assert re.search(r"^demo +5 steps ", bench.stdout, re.M)
    assert re.search(r"^demo vs base: time [0-9.]+x, held-out en WER [0-9.]+x", bench.stdout, re.M)
    # the data curve: subsets of the training clips (+ one more file of clips), a power-law fit and a PNG
    curve = subprocess.run([sys.executable, "bench/warm_start.py", "--data", str(tmp_path / "demo" / "data"),
                            "--model", "configs/model/tiny.yaml", "--steps", "3", "--variants", "demo",
                            "--clips", "4", "8", "--extra-train", str(tmp_path / "demo" / "data" / "asr_test.jsonl"),
                            "--plot", str(tmp_path / "curve.png")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert curve.returncode == 0, curve.stdout[-3000:] + curve.stderr[-3000:]
    assert re.search(r"^demo@4 +3 steps ", curve.stdout, re.M) and re.search(r"^demo@8 +3 steps ", curve.stdout, re.M)
    for lang in ("en", "zh"):
        assert re.search(rf"^demo {lang}: held-out error (~ [0-9.]+ \* clips\^-|does not fall)", curve.stdout, re.M)
    assert (tmp_path / "curve.png").stat().st_size > 1000
    missing = subprocess.run([sys.executable, "bench/warm_start.py", "--data", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and f"{tmp_path / 'asr_train.jsonl'} is missing: run `make demo` first" in missing.stderr


def test_stage1_gets_what_is_left_of_the_budget():
    from dataclasses import replace

    from llasm.apps.demo import PLANS

    plan = replace(PLANS["starter"], budget_minutes=26.0, reserve_minutes=7.5, stage1_minutes=5.0)
    assert plan.stage1_budget(9.0) == pytest.approx(9.5)  # 26 - 9 - 7.5
    assert plan.stage1_budget(16.0) == 5.0  # a slow machine still gets the floor
    assert replace(plan, budget_minutes=None).stage1_budget(9.0) == 5.0  # no budget: the fixed minutes


def test_generated_sentences_are_clean_and_bundled():
    from llasm.io import read_jsonl
    from llasm.prep.sentences import keep, key

    rows = read_jsonl(ROOT / "data" / "seed" / "generated_sentences.jsonl")
    assert {r["lang"] for r in rows} == {"en", "zh"} and len(rows) > 2000
    assert all(keep(r["text"], r["lang"]) and r["split"] == "train" for r in rows)
    assert len({key(r["text"]) for r in rows}) == len(rows) == len({r["id"] for r in rows})
    seed = {key(r["text"]) for r in read_jsonl(ROOT / "data" / "seed" / "asr_sentences.jsonl")}
    assert not seed & {key(r["text"]) for r in rows}  # nothing of the seed corpus (its held-out half included)
    assert keep("It is raining today in the park.", "en") and not keep("It rained 3 times.", "en")
    assert keep("今天公园里有很多人。", "zh") and not keep("今天有 AI 课。", "zh")


def test_sentence_generator_names_its_missing_word_lists(monkeypatch):
    from llasm.prep.sentences import topic_words

    monkeypatch.setitem(sys.modules, "wordfreq", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"needs wordfreq's word lists: pip install wordfreq==3.1.1"):
        topic_words(10)
