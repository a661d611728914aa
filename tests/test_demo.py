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
    assert "en held-out TTS WER" in out and "zh held-out TTS CER" in out and "en real-voice dev WER" in out
    assert re.search(r"steps: warm start \d+, stage 1 \d+, stage 2 \d+", out) and "run-to-run spread" in out
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
                            "--clips", "4", "8", "--seed", "1", "--extra-train", str(tmp_path / "demo" / "data" / "asr_test.jsonl"),
                            "--plot", str(tmp_path / "curve.png")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert curve.returncode == 0, curve.stdout[-3000:] + curve.stderr[-3000:]
    assert re.search(r"^demo@4 +3 steps ", curve.stdout, re.M) and re.search(r"^demo@8 +3 steps ", curve.stdout, re.M)
    for lang in ("en", "zh"):
        assert re.search(rf"^demo {lang}: held-out error (~ [0-9.]+ \* clips\^-|does not fall)", curve.stdout, re.M)
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # the levers: named training sets (clean / augmented) scored on the held-out and real-voice clips, with bars
    data = tmp_path / "demo" / "data"
    assert "augment" in (data / "asr_train_augmented.jsonl").read_text()
    levers = subprocess.run([sys.executable, "bench/warm_start.py", "--data", str(data), "--model", "configs/model/tiny.yaml",
                             "--steps", "2", "--variants", "demo", "--train", f"clean={data / 'asr_train.jsonl'}",
                             f"aug={data / 'asr_train_augmented.jsonl'}", "--real", str(data / "real_dev" / "real_dev.jsonl"),
                             "--plot", str(tmp_path / "levers.png")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert levers.returncode == 0, levers.stdout[-3000:] + levers.stderr[-3000:]
    for name in ("clean", "aug"):
        assert re.search(rf"^demo\[{name}\] +2 steps .* real voices en WER +[0-9.]+ %", levers.stdout, re.M)
    assert (tmp_path / "levers.png").stat().st_size > 1000
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


@pytest.mark.parametrize("mode", ["starter", "tiny"])
def test_demo_configs_from_yaml_equal_the_settings_it_always_ran(mode, tmp_path):
    """configs/demo/*.yaml + the plan's overrides give exactly the warm start and stages the demo ran when
    they were Python dicts in demo.py (the reference below), so moving them to YAML changed no number."""
    from llasm.apps.demo import PLANS, stage_config, warm_start_config
    from llasm.training import load_config
    from llasm.training.align import AlignConfig

    plan = PLANS[mode]
    assert warm_start_config(plan) == AlignConfig(steps=plan.align_steps, batch_size=16, lr=2e-3,
                                                  max_minutes=plan.align_minutes, time_mask=0.2,
                                                  channel_dropout=0.1, mixed_precision="bf16")
    out, adaptor_lr = tmp_path / "out", 3e-6

    def old(name, sources, lora, minutes, max_steps, lr):  # demo.run_stage before configs/demo/
        return load_config({
            "model": plan.model, "output_dir": str(out / name), "resume": "none",
            "trainable": {"audio_tower": "frozen", "adaptor": "full", "language_model": "lora" if lora else "frozen"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {"sources": sources, "group_size": 8},
            "encoder_cache": {"enabled": True, "dir": str(out / "encoder_cache")},
            "train": {"epochs": 100, "max_steps": max_steps, "max_minutes": minutes, "batch_size": plan.batch_size,
                      "lr": lr, "part_lr": {"adaptor": adaptor_lr}, "warmup_steps": 3,
                      "scheduler": "constant_with_warmup", "save_every": 10_000, "log_every": 5,
                      "mixed_precision": "bf16"}})

    asr, instruct = out / "data" / "asr_train.jsonl", out / "data" / "instruct_train.jsonl"
    minutes = plan.stage1_budget(7.25)
    assert stage_config("stage1", plan, out, [asr], minutes) == old(
        "stage1", [{"path": str(asr), "weight": 1.0, "name": "asr"}], False, minutes, plan.stage1_max_steps, adaptor_lr)
    assert stage_config("stage2", plan, out, [instruct, asr], plan.stage2_minutes) == old(
        "stage2", [{"path": str(instruct), "weight": 0.6, "name": "spoken_instructions"},
                   {"path": str(asr), "weight": 0.4, "name": "asr"}], True, plan.stage2_minutes,
        plan.stage2_max_steps, 2e-4)


def test_speech_demo_stage3_yaml_is_the_measured_head(tmp_path):
    """The speech demo's stage 3 is the head docs/results.md measured (the phoneme head since 2026-11-30; bf16
    autocast over 1,250 steps since 2026-12-01; its steps fitted to its 12 minutes since the fresh run of
    2026-12-01 on a CPU without AVX-512)."""
    from llasm.apps.speech_demo import STAGE3
    from llasm.training import load_config

    head = {"num_units": 1000, "input": "phonemes", "upsample_factor": 5, "conv_layers": 2, "conv_kernel": 5,
            "hidden_size": 256, "num_layers": 3, "num_heads": 4, "intermediate_size": 1024}
    data, spec = tmp_path / "stage3_train.jsonl", "configs/model/starter.yaml"
    measured = load_config({
        "model": spec, "output_dir": str(tmp_path / "stage3"), "resume": "none",
        "trainable": {"audio_tower": "frozen", "adaptor": "frozen", "language_model": "frozen", "unit_head": "full"},
        "unit_head": head, "objective": {"type": "units"},
        "data": {"sources": [{"path": str(data), "weight": 1.0, "name": "spoken_answers"}]},
        "train": {"epochs": 1000, "max_steps": 1250, "max_minutes": 12, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.01,
                  "warmup_steps": 10, "scheduler": "cosine", "save_every": 100_000, "log_every": 10,
                  "mixed_precision": "bf16", "fit_steps_to_minutes": True}})
    new = load_config(STAGE3, [f"model={spec}", f"output_dir={tmp_path / 'stage3'}", f"data.sources.0.path={data}"])
    assert new == measured


def test_goals_spread_and_levers_are_printed(tmp_path, monkeypatch, capsys):
    from llasm.apps import demo

    report = {"results": {"llasm": {"en": {"wer": 0.30, "real_wer": 0.55, "accuracy": 0.5}, "zh": {"cer": 0.3, "accuracy": 0.0}},
                          "text": {"en": {"accuracy": 0.5}, "zh": {"accuracy": 0.0}}},
              "counts": {"llasm": {"en": {"asr": 35, "real": 27, "instruct": 24}, "zh": {"asr": 35, "instruct": 24}}}}
    demo.print_goals(report, "starter", {"warm start": 1600, "stage 1": 230, "stage 2": 60})
    out = capsys.readouterr().out
    assert "en held-out TTS WER 30.0 % on 35 clips (goal <= 25 %): MISSED by 5.0 points" in out
    assert "zh held-out TTS CER 30.0 % on 35 clips (goal <= 35 %): met" in out
    assert "en real-voice dev WER 55.0 % on 27 clips (goal <= 40 %): MISSED by 15.0 points" in out
    assert "en spoken-question accuracy 50 % vs typed 50 % on 24 questions: 1.00 of typed (goal >= 0.8): met" in out
    assert "zh spoken-question accuracy 0 % vs typed 0 % on 24 questions: no typed question answered" in out
    assert "steps: warm start 1600, stage 1 230, stage 2 60" in out
    monkeypatch.setenv("LLASM_DEMO_AUGMENT", "none")
    monkeypatch.setenv("LLASM_DEMO_TTS", "configs/tts_demo_3voices.yaml")
    plan = demo.PLANS["starter"]
    assert demo.demo_levers(plan) == ("configs/tts_demo_3voices.yaml", None)
    first = demo.record_run(tmp_path / "run1", report, {"stage 1": 230}, plan, 25.0)
    demo.print_spread(first)
    assert "first run of these settings" in capsys.readouterr().out
    report["results"]["llasm"]["en"]["wer"] = 0.40
    runs = demo.record_run(tmp_path / "run2", report, {"stage 1": 220}, plan, 25.5)
    monkeypatch.delenv("LLASM_DEMO_TTS")
    other = demo.record_run(tmp_path / "run3", report, {"stage 1": 220}, plan, 25.5)  # other settings: their own spread
    assert len(runs) == 2 and len(other) == 1 and other[0]["tts"] == "configs/tts_demo.yaml"
    monkeypatch.delenv("LLASM_DEMO_AUGMENT")
    assert demo.demo_levers(plan) == ("configs/tts_demo.yaml", None)  # the starter demo: the voices, no augmentation
    assert [r["output"] for r in runs] == [str(tmp_path / "run1"), str(tmp_path / "run2")]
    demo.print_spread(runs)
    out = capsys.readouterr().out
    assert "over 2 runs" in out and "en wer: 30.0 - 40.0 %" in out and "en spoken/typed: 1.00 - 1.00" in out


def test_bench_cuts_every_training_set_to_the_same_sentences(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("warm_start_bench", ROOT / "bench" / "warm_start.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clean = [{"id": f"s{i}"} for i in range(10)]
    augmented = [dict(id=f"s{i}~aug1", augment_of=f"s{i}") if i % 2 else {"id": f"s{i}"} for i in range(10)]
    (tmp_path / "clean.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    (tmp_path / "aug.jsonl").write_text("".join(json.dumps(r) + "\n" for r in augmented))
    cut = bench.same_sentences({"a": str(tmp_path / "clean.jsonl"), "b": str(tmp_path / "aug.jsonl")}, 4)
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in cut.items()}
    assert len(rows["a"]) == len(rows["b"]) == 4
    assert [r["id"] for r in rows["a"]] == [r.get("augment_of", r["id"]) for r in rows["b"]]
    assert cut["a"] == tmp_path / ".clean.4-sentences.jsonl"
