"""Speech-output evaluation (eval/speech.py): items, the three systems, errors, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SR, tone

from llasm.evaluation.speech import evaluate_speech, load_speech_items

HEAD = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64}


def write_items(root):
    rows = []
    for i, (lang, answer) in enumerate([("en", "hello world"), ("zh", "你好世界"), ("en", "good morning"),
                                        ("en", "missing audio")]):
        audio = f"a{i}.wav"
        if answer != "missing audio":
            sf.write(root / audio, tone(0.6 + 0.1 * i, seed=i), SR)
        rows.append({"id": f"q{i}", "lang": lang, "split": "test", "conversations": [
            {"from": "human", "value": "<speech>", "transcript": f"question {i}"},
            {"from": "gpt", "value": answer, "audio": audio}]})
    rows.append({"id": "train0", "lang": "en", "split": "train", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hi", "audio": "a0.wav"}]})
    rows.append({"id": "broken", "split": "test", "conversations": [{"from": "human", "value": "no answer"}]})
    path = root / "conv.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_bases):
    """A tiny model with a unit head, a tiny vocoder and a k-means unit model on the tiny Whisper."""
    import llasm
    from llasm.speech.units import UnitExtractor, fit_unit_extractor, load_feature_encoder
    from llasm.speech.vocoder import UnitHifiGan
    from llasm.speech.vocoder_config import UnitVocoderConfig

    root = tmp_path_factory.mktemp("speech_eval")
    data = write_items(root)
    model, processor = llasm.build_model(dict(tiny_bases, unit_head=HEAD))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.unit_head.parameters():  # make units win over the blank
            p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    vocoder = UnitHifiGan(UnitVocoderConfig(num_units=20, upsample_initial_channel=32, resblock_kernel_sizes=[3],
                                            resblock_dilation_sizes=[[1]], embedding_dim=8)).eval()
    vocoder.save_pretrained(root / "vocoder")
    features = load_feature_encoder(tiny_bases["audio"]["name_or_path"], "whisper")
    extractor = fit_unit_extractor(features, [root / "a0.wav", root / "a1.wav", root / "a2.wav"], 20)
    extractor.save(root / "kmeans")
    return {"root": root, "data": data, "model": model, "vocoder": vocoder,
            "extractor": UnitExtractor.load(root / "kmeans")}


class FakeJudge:
    """Says ``hello world`` for any audio; records what it heard."""

    def __init__(self):
        self.heard = []

    def __call__(self, audio, lang):
        audio = np.asarray(audio)
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
        self.heard.append(lang)
        return "hello world" if lang == "en" else "你好世界"


def test_load_speech_items(parts):
    items, errors = load_speech_items(parts["data"], split="test")
    assert [i.id for i in items] == ["q0", "q1", "q2", "q3"]
    assert items[0].question == "question 0" and items[0].answer == "hello world" and items[1].lang == "zh"
    assert items[0].answer_audio.endswith("a0.wav")
    assert len(errors) == 1 and errors[0]["id"] == "broken" and "needs a human and a gpt turn" in errors[0]["error"]
    limited, _ = load_speech_items(parts["data"], split="test", limit=1)
    assert [i.id for i in limited] == ["q0", "q1"]  # at most one per language


def test_evaluate_speech_systems(parts, tmp_path):
    items, _ = load_speech_items(parts["data"], split="test")
    judge = FakeJudge()
    out = evaluate_speech(items, judge, model=parts["model"], vocoder=parts["vocoder"], extractor=parts["extractor"],
                          max_new_tokens=4, samples_dir=tmp_path / "samples", samples_per_lang=1, progress=False)
    res = out["results"]
    # the fake judge repeats the references of q0/q1, and misses "good morning" (2 of 4 English words)
    assert res["source"]["en"]["wer"] == pytest.approx(0.5) and res["source"]["zh"]["cer"] == 0.0
    assert res["resynthesis"]["en"]["wer"] == pytest.approx(0.5)
    assert out["counts"]["source"]["en"]["speech"] == 2 and out["counts"]["resynthesis"]["zh"]["speech"] == 1
    # q3's audio is missing: one error per system that needs it, and the run went on
    failed = {(e["system"], e["id"]) for e in out["errors"]}
    assert failed == {("source", "q3"), ("resynthesis", "q3")}
    missing = next(e["error"] for e in out["errors"] if e["system"] == "source")
    assert missing == f"AudioError: {parts['root'] / 'a3.wav'}: file not found"
    # round trip: the reference is the text the model wrote, the hypothesis what the judge heard
    round_trip = [r["round_trip"] for r in out["details"]["speech"] if "round_trip" in r]
    assert len(round_trip) + sum(e["system"] == "round_trip" for e in out["errors"]) == 4
    assert all(r["judge"] in ("hello world", "你好世界", "") for r in round_trip)
    wavs = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert "q0.source.wav" in wavs and "q0.resynthesis.wav" in wavs and "q2.source.wav" not in wavs


def test_skipped_systems_are_noted(parts):
    items, _ = load_speech_items(parts["data"], split="test")
    out = evaluate_speech(items[:1], FakeJudge(), progress=False)
    assert set(out["results"]) == {"source"}
    assert any("resynthesis: skipped" in n for n in out["notes"]) and any("round_trip: skipped" in n for n in out["notes"])


def test_the_judge_goes_through_the_loop_guard(parts):
    """A judge that loops past the reference ("hello world again again …") is cut back as
    every ASR hypothesis is (collapse_loops); the raw transcript is kept; keep_loops scores it raw."""
    items, _ = load_speech_items(parts["data"], split="test")
    item = next(i for i in items if i.lang == "en" and i.answer_audio)

    def looping(audio, lang):
        return item.answer + " again" * 6

    guarded = evaluate_speech([item], looping, progress=False)
    row = guarded["details"]["speech"][0]["source"]
    assert row["judge"] == item.answer + " again" and row["raw_judge"] == item.answer + " again" * 6
    raw = evaluate_speech([item], looping, progress=False, keep_loops=True)
    assert "raw_judge" not in raw["details"]["speech"][0]["source"]
    words = len(item.answer.split())
    assert guarded["results"]["source"]["en"]["wer"] == pytest.approx(1 / words)
    assert raw["results"]["source"]["en"]["wer"] == pytest.approx(6 / words)


def test_eval_speech_cli_writes_report(parts, tmp_path):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("eval_speech", ROOT / "eval" / "speech.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--model", "injected", "--data", str(parts["data"]), "--vocoder", str(parts["root"] / "vocoder"),
                      "--kmeans", str(parts["root"] / "kmeans"), "--output", str(tmp_path / "eval"),
                      "--max-new-tokens", "4", "--no-progress", "--no-cascade"],
                     model=parts["model"], speech_transcriber=FakeJudge())
    assert rc == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["tasks"] == ["speech"] and report["meta"]["speech"]["judge_whisper"] == "injected transcriber"
    assert report["meta"]["speech"]["judge_loop_guard"].startswith("loop guard v")
    assert report["meta"]["command"].endswith("--max-new-tokens 4 --no-progress --no-cascade")
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "- **speech judge loop guard**: loop guard v" in markdown and "- **command**: `" in markdown
    assert report["results"]["speech_source"]["en"]["wer"] == pytest.approx(0.5)
    assert "speech_resynthesis" in report["results"]
    assert (tmp_path / "eval" / "report.png").exists()
    assert "speech_source" in (tmp_path / "eval" / "report.md").read_text()


def test_eval_speech_cli_speaks_through_a_unit_mel_token2wav(parts, tmp_path):
    """eval/speech.py --vocoder <unit_mel dir>: resynthesis and the round trip run through units -> mel -> vocoder."""
    import importlib.util

    from conftest import ROOT, tiny_token2wav

    tiny_token2wav("unit_mel").save_pretrained(tmp_path / "voice")
    spec = importlib.util.spec_from_file_location("eval_speech", ROOT / "eval" / "speech.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = parts["model"]
    previous = model.vocoder
    model.set_vocoder(None)  # the CLI attaches the --vocoder it is given
    try:
        rc = module.main(["--model", "injected", "--data", str(parts["data"]), "--vocoder", str(tmp_path / "voice"),
                          "--kmeans", str(parts["root"] / "kmeans"), "--output", str(tmp_path / "eval"),
                          "--max-new-tokens", "4", "--no-progress", "--no-cascade"],
                         model=model, speech_transcriber=FakeJudge())
        assert rc == 0
        assert type(model.vocoder).__name__ == "UnitMelToken2Wav"
    finally:
        model.set_vocoder(previous)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert {"speech_resynthesis", "speech_round_trip"} <= set(report["results"]), [e for e in report["errors"] if e["system"] == "round_trip"]
    wavs = [r["resynthesis"]["wav"] for r in report["details"]["speech"] if "wav" in r.get("resynthesis", {})]
    assert wavs and len(sf.read(wavs[0])[0]) % 200 == 0  # 80 Hz mel frames at 16 kHz


def test_round_trip_batches_a_phoneme_heads_replies(parts, tiny_bases, monkeypatch):
    """A head that reads the reply's text speaks replies written a batch at a time: the texts ``chat`` writes one
    by one (greedy); a batch that fails goes one by one, and only its items' own errors are recorded."""
    import llasm

    model, _ = llasm.build_model(dict(tiny_bases, unit_head=dict(HEAD, input="phonemes", conv_layers=1)))
    model.eval()
    items, _ = load_speech_items(parts["data"], split="test")
    alone = {i.id: model.chat(text=i.question, max_new_tokens=4) for i in items}
    calls = []
    batched = model.chat_batch

    def count(conversations, **kw):
        calls.append(len(conversations))
        return batched(conversations, **kw)

    monkeypatch.setattr(model, "chat_batch", count)
    out = evaluate_speech(items, FakeJudge(), model=model, vocoder=parts["vocoder"], max_new_tokens=4,
                          progress=False, batch_size=3)
    assert calls == [3, 1]
    written = {r["id"]: r["round_trip"]["reference"] for r in out["details"]["speech"] if "round_trip" in r}
    assert written == alone and not [e for e in out["errors"] if e["system"] == "round_trip"]

    def fail(conversations, **kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "chat_batch", fail)
    out = evaluate_speech(items, FakeJudge(), model=model, vocoder=parts["vocoder"], max_new_tokens=4,
                          progress=False, batch_size=3)
    written = {r["id"]: r["round_trip"]["reference"] for r in out["details"]["speech"] if "round_trip" in r}
    assert written == alone
