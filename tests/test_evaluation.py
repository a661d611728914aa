"""llasm.evaluation + eval/*.py: metric wiring with fake systems, the tiny model end to end (with a tiny
random Whisper as the cascade), error recording, and the LLM judge against a local fake server."""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import soundfile as sf
from conftest import ROOT, SR, TINY_YAML, tone

from llasm import evaluation as E
from llasm.evaluation import metrics
from llasm.evaluation.items import JUDGE_PROMPT_PATH

# ------------------------------------------------------------------------------------ helpers

INSTRUCT = [
    # id, lang, question, answer, keywords, split
    ("q-en-1", "en", "What is the capital of France?", "The capital of France is Paris.", ["paris"], "test"),
    ("q-en-2", "en", "What is seven plus five?", "Seven plus five is twelve.", ["12", "twelve"], "test"),
    ("q-zh-1", "zh", "一年有几个季节？", "一年有四个季节。", ["四", "4"], "test"),
    ("q-en-train", "en", "What animal says moo?", "A cow says moo.", ["cow"], "train"),
]
ASR = [
    ("a-en-1", "en", "the cat sat on the mat", "test"),
    ("a-zh-1", "zh", "今天天气很好", "test"),
]


def write_data(tmp: Path, missing: set[str] = frozenset()) -> tuple[Path, Path]:
    """DESIGN.md JSONL files like data_prep/synthesize.py writes, with tone audio (ids in
    ``missing`` point at audio files that do not exist)."""
    (tmp / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (rid, lang, q, a, kw, split) in enumerate(INSTRUCT):
        wav = f"wavs/{rid}.wav"
        if rid not in missing:
            sf.write(tmp / wav, tone(0.6, seed=n), SR)
        rows.append({"id": rid, "lang": lang, "audios": [wav], "category": "x", "keywords": kw, "split": split,
                     "conversations": [{"from": "human", "value": "<speech>", "transcript": q},
                                       {"from": "gpt", "value": a}]})
    instruct = tmp / "instruct.jsonl"
    instruct.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rows = []
    for n, (rid, lang, text, split) in enumerate(ASR):
        wav = f"wavs/{rid}.wav"
        if rid not in missing:
            sf.write(tmp / wav, tone(0.5, seed=10 + n), SR)
        rows.append({"id": rid, "lang": lang, "audios": [wav], "split": split, "conversations": [
            {"from": "human", "value": "<speech>\nTranscribe the audio.", "transcript": text},
            {"from": "gpt", "value": text}]})
    asr = tmp / "asr.jsonl"
    asr.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return instruct, asr


class FakeSystem:
    """Outputs keyed by item id: known replies/transcripts, so metric values are known exactly."""

    def __init__(self, transcripts=None, replies=None, text_replies=None, fail=()):
        self.transcripts, self.replies, self.text_replies = transcripts or {}, replies or {}, text_replies or {}
        self.fail = set(fail)
        self.by_text = {}

    def transcribe(self, audio, lang):  # transcripts keyed by language (one ASR item per language)
        assert audio.dtype.name == "float32" and audio.ndim == 1  # loaded audio, not a path
        return self.transcripts[lang], {}

    def answer_spoken(self, item, audio):
        if item.id in self.fail:
            raise RuntimeError("boom")
        return self.replies[item.id], [{"type": "text", "text": item.question}], {}

    def answer_text(self, text):
        return self.text_replies[text]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", ROOT / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_whisper(path: Path) -> Path:
    """A tiny random WhisperForConditionalGeneration + WhisperProcessor (offline, a 64-token vocab)."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    path.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ"]
    vocab = {c: i for i, c in enumerate(chars)}
    for i in range(len(vocab), 61):
        vocab[f"w{i}"] = i
    vocab.update({"<|startoftranscript|>": 61, "<|notimestamps|>": 62, "<|endoftext|>": 63})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    special = "<|endoftext|>"
    tok = WhisperTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), unk_token=special,
                           bos_token=special, eos_token=special, pad_token=special)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=32, vocab_size=64, max_target_positions=32, num_mel_bins=80,
        pad_token_id=63, bos_token_id=63, eos_token_id=63, decoder_start_token_id=61))
    model.generation_config = GenerationConfig(decoder_start_token_id=61, eos_token_id=63, pad_token_id=63,
                                               bos_token_id=63, max_length=8)
    model.save_pretrained(path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(path)
    return path


class FakeJudgeServer:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1 that answers a canned score."""

    def __init__(self, content="Score: 4"):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": outer.content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args):
                pass

        self.content = content
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------------------------- tests


def test_loaders_split_extra_text_and_bad_records(tmp_path):
    instruct, asr = write_data(tmp_path)
    with instruct.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "bad-1", "lang": "en", "split": "test", "audios": [],
                            "conversations": [{"from": "human", "value": "no speech here"},
                                              {"from": "gpt", "value": "x"}]}) + "\n")
        f.write(json.dumps({"id": "typed-1", "lang": "en", "split": "test", "audios": ["wavs/q-en-1.wav"],
                            "keywords": ["a"], "conversations": [
                                {"from": "human", "value": "<speech>\nAnswer briefly.", "transcript": "Say a."},
                                {"from": "gpt", "value": "a"}]}) + "\n")
    items, errors = E.load_instruct_items(instruct)
    assert [i.id for i in items] == ["q-en-1", "q-en-2", "q-zh-1", "typed-1"]  # train split dropped
    assert not errors  # bad-1 has no spoken turn and no audio: a typed row, skipped and counted in a note
    assert E.items.text_only_note(instruct, "test") == f"{instruct}: 1 text-only record(s) without a spoken turn skipped"
    typed = items[-1]
    assert typed.extra_text == "Answer briefly." and typed.text_prompt == "Say a.\nAnswer briefly."
    assert Path(items[0].audio) == tmp_path / "wavs" / "q-en-1.wav"
    assert E.load_instruct_items(instruct, split=None, limit=2)[0][1].id == "q-en-2"
    asr_items, asr_errors = E.load_asr_items(asr)
    assert [(i.id, i.lang, i.text) for i in asr_items] == [(r[0], r[1], r[2]) for r in ASR] and not asr_errors


def test_prompts_are_pinned_and_versioned():
    prompts = E.load_prompts()
    assert prompts["version"] and prompts["asr"]["en"] == "Transcribe the audio."
    info = E.prompt_info()
    assert info["prompts_version"] == prompts["version"] and len(info["judge_prompt_sha256"]) == 64
    text = JUDGE_PROMPT_PATH.read_text(encoding="utf-8")
    assert "Score: N" in text and E.Judge("http://x/v1", "m").prompt("Q?", "R.", "A.", "en").count("Q?") == 1


def test_metrics_wired_exactly_with_fake_systems(tmp_path):
    instruct, asr = write_data(tmp_path, missing={"q-en-2"})
    items, _ = E.load_instruct_items(instruct)
    asr_items, _ = E.load_asr_items(asr)
    q = {i.id: i.question for i in items}
    text_replies = {q["q-en-1"]: "It is Paris.", q["q-zh-1"]: "四个。"}
    llasm = FakeSystem(
        transcripts={"en": "the cat sat on a mat", "zh": "今天天气好"},  # 1/6 WER, 1/6 CER
        replies={"q-en-1": "It is Paris.", "q-zh-1": "I do not know."},
        text_replies=text_replies)
    cascade = FakeSystem(transcripts={"en": "the cat sat on the mat", "zh": "今天天气很好"},
                         replies={"q-en-1": "London."}, fail={"q-zh-1"})

    def scorer(content, reply):  # 1 nat/token under the question text, 2 under anything else
        return (1.0 if content[0]["text"] in q.values() else 2.0) * 3, 3

    report = E.evaluate({"llasm": llasm, "cascade": cascade}, instruct_items=items, asr_items=asr_items,
                        scorer=scorer, progress=False)
    res = report["results"]
    assert res["llasm"]["en"]["wer"] == pytest.approx(1 / 6)
    assert res["llasm"]["zh"]["cer"] == pytest.approx(1 / 6)
    assert res["cascade"]["en"]["wer"] == 0 and res["cascade"]["zh"]["cer"] == 0
    # instruction following: q-en-2 has no audio -> error, not scored
    assert res["llasm"]["en"]["accuracy"] == 1.0 and res["llasm"]["zh"]["accuracy"] == 0.0
    assert res["cascade"]["en"]["accuracy"] == 0.0 and "zh" not in res["cascade"] or \
        "accuracy" not in res["cascade"].get("zh", {})
    assert res["text"]["en"]["accuracy"] == 1.0 and res["text"]["zh"]["accuracy"] == 1.0
    assert res["llasm"]["en"]["lang_consistency"] == 1.0 and res["llasm"]["zh"]["lang_consistency"] == 0.0
    assert res["llasm"]["en"]["chrf"] > res["cascade"]["en"]["chrf"]
    # invariance
    assert res["llasm"]["en"]["agreement"] == 1.0 and res["llasm"]["en"]["exact_match"] == 1.0
    assert res["llasm"]["en"]["chrf_vs_text"] == pytest.approx(100.0)
    assert res["llasm"]["zh"]["agreement"] == 0.0 and res["cascade"]["en"]["agreement"] == 0.0
    assert res["text"]["en"]["ppl_text_reply"] == pytest.approx(math.e)
    assert res["llasm"]["en"]["ppl_text_reply"] == pytest.approx(math.e)  # fake content = the question text
    errs = {(e["task"], e["system"], e["id"]) for e in report["errors"]}
    assert ("instruct", "all", "q-en-2") in errs and ("instruct", "cascade", "q-zh-1") in errs
    assert any("AudioError" in e["error"] for e in report["errors"])
    assert report["counts"]["llasm"]["en"]["instruct"] == 1
    assert any("judge: skipped" in n for n in report["notes"])


def test_data_without_keywords_marks_accuracy_not_applicable(tmp_path):
    """Your own data rarely has keywords: accuracy and agreement are n/a (never 0), chrF against the
    reference still scores, and the report says why."""
    instruct, _ = write_data(tmp_path)
    rows = [json.loads(line) for line in instruct.read_text().splitlines()]
    for row in rows:
        row.pop("keywords")
    instruct.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    items, _ = E.load_instruct_items(instruct)
    q = {i.id: i.question for i in items}
    answers = {i.id: i.reference for i in items}  # a perfect system: it answers with the reference
    system = FakeSystem(replies=answers, text_replies={q[k]: v for k, v in answers.items()})
    report = E.evaluate({"llasm": system}, instruct_items=items, progress=False)
    res = report["results"]
    for system_name in ("llasm", "text"):
        assert "accuracy" not in res[system_name]["en"] and "accuracy" not in res[system_name]["zh"]
        assert res[system_name]["en"]["chrf"] == pytest.approx(100.0)
    assert "agreement" not in res["llasm"]["en"] and res["llasm"]["en"]["exact_match"] == 1.0
    assert report["not_applicable"]["en"] == {"accuracy": "no item carries keywords",
                                              "agreement": "no item carries keywords"}
    assert any("not applicable" in n for n in report["notes"])
    table = E.summary_tables(report)
    assert "| accuracy | n/a | n/a |" in table and "| agreement | n/a | n/a |" in table


def test_asr_loops_count_once_unless_kept(tmp_path):
    _, asr = write_data(tmp_path)
    asr_items, _ = E.load_asr_items(asr)
    looping = FakeSystem(transcripts={"en": "the cat sat on the mat mat mat mat mat", "zh": "今天天气很好好好好好好"})
    report = E.evaluate({"llasm": looping}, asr_items=asr_items, tasks=["asr"], progress=False)
    assert report["results"]["llasm"]["en"]["wer"] == 0 and report["results"]["llasm"]["zh"]["cer"] == 0
    raw = {row["lang"]: row["raw_hypotheses"]["llasm"] for row in report["items"]["asr"]}
    assert raw == looping.transcripts  # what the model said stays in the report
    kept = E.evaluate({"llasm": looping}, asr_items=asr_items, tasks=["asr"], progress=False, keep_loops=True)
    assert kept["results"]["llasm"]["en"]["wer"] == pytest.approx(4 / 6)
    assert kept["results"]["llasm"]["zh"]["cer"] == pytest.approx(5 / 6)
    assert E.collapse_loops("It cost 10000 yuan, 哈哈哈.") == "It cost 10000 yuan, 哈哈哈."  # digits, 3 repeats kept


def test_true_repetitions_score_zero_and_loops_stay_bounded(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.0), 16000)
    refs = {"zh": "哈哈哈哈，太好笑了。", "en": "Ha ha ha ha, that is so funny."}
    items = [E.AsrItem(f"{lang}-1", lang, str(tmp_path / "a.wav"), text) for lang, text in refs.items()]

    def score(transcripts, **kw):
        report = E.evaluate({"s": FakeSystem(transcripts=transcripts)}, asr_items=items, tasks=["asr"], progress=False, **kw)
        return report["results"]["s"]["zh"]["cer"], report["results"]["s"]["en"]["wer"]

    assert score(refs) == (0, 0)  # verbatim is perfect (version 1 of the guard gave CER 37.5 %, WER 20 %)
    assert score({"zh": "哈哈哈哈哈哈哈哈哈哈，太好笑了。", "en": "ha ha ha ha ha ha ha ha that is so funny"}) == (0, 0)
    runaway = {"zh": "哈" * 300, "en": "ha " * 300}
    assert score(runaway) == pytest.approx((4 / 8, 4 / 8))  # cut to the reference's 4: the rest is missing
    assert score(runaway, keep_loops=True) == pytest.approx((296 / 8, 296 / 8))  # 4 substituted, 292 inserted
    assert E.collapse_loops("把把把把把把", reference="把") == "把"
    assert E.collapse_loops("把把把把把把") == "把"  # no reference: one copy


def test_a_repetition_the_judge_mishears_keeps_the_copies_the_reference_has():
    """A reply that really repeats a phrase, heard with the same slip in every copy and looped on by the
    judge past the audio's end (the speech demo's bamboo reply): version 2 kept one copy, so the copies that
    were said counted as deletions; version 3 keeps the reference loop's copies of an alike unit."""
    reference = "竹子是世界上最大的竹子之一，" + "是世界上最大的竹子之一，" * 4 + "是世界上最大的"
    heard = "路子是世界上最大的住自之一," + "世界上最大的住自之一," * 15 + "世界上最"
    kept = E.collapse_loops(heard, reference=reference)
    assert kept == "路子是世界上最大的住自之一," + "世界上最大的住自之一," * 4 + "世界上最"  # the reference's 5
    assert E.collapse_loops(heard) == "路子是世界上最大的住自之一,世界上最"  # no reference: one copy
    # a loop unlike the reference's loop still keeps one copy: the guard is not loosened for other loops
    assert E.collapse_loops("哎呀,哎呀,哎呀,哎呀,哎呀,", reference=reference) == "哎呀,"
    # nor does an alike unit lend copies where the reference does not loop
    assert E.collapse_loops("住自之一,住自之一,住自之一,住自之一,", reference="竹子之一。") == "住自之一,"
    # three copies said and misheard keep three; a long phrase is a unit too; the last copy without its comma counts
    assert E.collapse_loops("大的住自," * 10, reference="大的竹子，大的竹子，大的竹子。") == "大的住自," * 3
    said = "The biggest bamboo in the world, " * 4
    assert E.collapse_loops("biggest bambu in the word, " * 9, reference=said) == "biggest bambu in the word, " * 4
    assert E.collapse_loops("I know, I know, I know, I know, I know", reference="I know, I know, I know, I know.") == \
        "I know, I know, I know, I know,"  # four, as the reference (the comma-less fifth was not counted before)
    assert E.collapse_loops("請問,請問,請問,請問,請問") == "請問,"
    assert E.collapse_loops("谢谢呢" * 5, reference="谢谢你谢谢你") == "谢谢呢" * 2  # the reference's unit at any offset
    # units of other lengths are not alike however much they share; numbers are never cut
    assert E.collapse_loops("你好哈" * 10, reference="哈哈哈哈") == "你好哈"
    assert E.collapse_loops("I know " * 6, reference="No no no no") == "I know "
    assert E.collapse_loops("1, 1, 1, 1, 1, 1", reference="1") == "1, 1, 1, 1, 1, 1"
    assert E.collapse_loops("hello!!!!!! world") == "hello! world"  # a unit of separators only: the space stays
    one_copy = metrics.cer([reference], ["路子是世界上最大的住自之一,世界上最"])
    assert metrics.cer([reference], [kept]) == pytest.approx(18 / 64) and one_copy == pytest.approx(50 / 64)


def test_run_all_tiny_model_with_whisper_cascade(tmp_path, capsys):
    instruct, asr = write_data(tmp_path / "data", missing={"q-zh-1"})
    whisper = make_tiny_whisper(tmp_path / "whisper")
    out = tmp_path / "report"
    rc = load_script("run_all").main([
        "--model", str(TINY_YAML), "--data", str(instruct), "--asr-data", str(asr), "--output", str(out),
        "--max-new-tokens", "4", "--cascade-whisper", str(whisper), "--no-progress", "--device", "cpu"])
    assert rc == 0
    for name in ("report.json", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["loop_guard_version"] == "3" and "loop guard v3" in report["meta"]["decoding"]
    res = report["results"]
    assert set(res) == {"llasm", "cascade", "text"}
    assert {"wer", "accuracy", "chrf", "lang_consistency", "agreement", "chrf_vs_text", "ppl_text_reply"} <= \
        set(res["cascade"]["en"])
    assert "cer" in res["llasm"]["zh"] and "cer" in res["cascade"]["zh"]
    for system in ("llasm", "cascade", "text"):
        ppl = res[system]["en"]["ppl_text_reply"]
        assert ppl is not None and math.isfinite(ppl) and ppl > 1
    assert [e["id"] for e in report["errors"]] == ["q-zh-1"] and report["errors"][0]["system"] == "all"
    meta = report["meta"]
    assert meta["prompts_version"] == E.load_prompts()["version"] and meta["judge"]["status"] == "skipped"
    assert "Whisper" in meta["cascade"] and meta["normalizer_version"]
    row = next(r for r in report["items"]["instruct"] if r["id"] == "q-en-1")
    assert set(row["replies"]) == {"llasm", "cascade", "text"} and "cascade" in row["transcripts"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | llasm | cascade | text |" in md and "q-zh-1" in md
    printed = capsys.readouterr().out
    assert "| metric | llasm | cascade | text |" in printed and "report.json" in printed


def test_judge_through_local_openai_server(tmp_path, tiny, monkeypatch):
    instruct, asr = write_data(tmp_path)
    model, _ = tiny
    monkeypatch.setenv("LLASM_JUDGE_API_KEY", "test-key")
    with FakeJudgeServer("Score: 4") as server:
        out = tmp_path / "out"
        load_script("instruct").main(
            ["--model", "injected", "--data", str(instruct), "--output", str(out), "--max-new-tokens", "3",
             "--judge-url", server.url, "--judge-model", "judge-x", "--no-progress"],
            model=model, transcriber=lambda audio, lang: "what is the capital of france")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["meta"]["judge"]["model"] == "judge-x" and report["meta"]["judge"]["url"].endswith("/chat/completions")
    for system in ("llasm", "cascade", "text"):
        for lang in ("en", "zh"):
            assert report["results"][system][lang]["judge"] == 4.0
    assert "wer" not in report["results"]["llasm"]["en"] and "agreement" not in report["results"]["llasm"]["en"]
    assert len(server.requests) == 3 * 3  # 3 test items x (llasm, cascade, text)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "judge-x"
    assert req["auth"] == "Bearer test-key" and req["body"]["temperature"] == 0
    assert "What is the capital of France?" in req["body"]["messages"][0]["content"]


def test_asr_limit_is_separate_from_limit(tmp_path, tiny):
    instruct, asr = write_data(tmp_path)
    out = tmp_path / "out"
    E.main(["--model", "injected", "--data", str(instruct), "--asr-data", str(asr), "--output", str(out),
            "--tasks", "asr,instruct", "--limit", "2", "--asr-limit", "1", "--max-new-tokens", "2", "--no-cascade",
            "--no-progress"], model=tiny[0])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in report["items"]["asr"]] == [ASR[0][0]] and len(report["items"]["instruct"]) == 2
    assert report["meta"]["limit"] == 2 and report["meta"]["asr_limit"] == 1


def test_judge_bad_reply_is_an_item_error(tmp_path):
    instruct, _ = write_data(tmp_path)
    items, _ = E.load_instruct_items(instruct)
    items = items[:1]
    system = FakeSystem(replies={"q-en-1": "Paris"}, text_replies={items[0].question: "Paris"})
    with FakeJudgeServer("I think it's fine") as server:
        report = E.evaluate({"llasm": system}, instruct_items=items, judge=E.Judge(server.url, "m"),
                            tasks=["instruct"], progress=False)
    assert "judge" not in report["results"]["llasm"]["en"] and report["results"]["llasm"]["en"]["accuracy"] == 1.0
    assert {e["task"] for e in report["errors"]} == {"judge"} and len(report["errors"]) == 2
    # unreachable endpoint: also an item error, the run goes on
    report = E.evaluate({"llasm": system}, instruct_items=items, judge=E.Judge("http://127.0.0.1:9/v1", "m", timeout=2),
                        tasks=["instruct"], progress=False)
    assert report["errors"] and "failed" in report["errors"][0]["error"]


def test_asr_script_no_cascade_and_missing_audio(tmp_path, tiny):
    _, asr = write_data(tmp_path, missing={"a-en-1"})
    out = tmp_path / "asr-out"
    rc = load_script("asr").main(["--model", "x", "--asr-data", str(asr), "--output", str(out), "--no-cascade",
                                  "--max-new-tokens", "3", "--no-progress"], model=tiny[0])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"llasm"} and set(report["results"]["llasm"]) == {"zh"}
    assert [e["id"] for e in report["errors"]] == ["a-en-1"] and "not found" in report["errors"][0]["error"]
    assert report["meta"]["cascade"].startswith("disabled")


def test_dtype_option_loads_the_model_and_cascade_in_bfloat16(tmp_path, tiny):
    import torch

    ckpt = tmp_path / "ckpt"
    tiny[0].save_pretrained(ckpt, merge=True)
    for spec in (str(TINY_YAML), str(ckpt)):
        model = E.load_model(spec, "cpu", "bfloat16")
        assert model.dtype == torch.bfloat16 and model.language_model.dtype == torch.bfloat16
    assert E.load_model(str(ckpt), "cpu").dtype == torch.float32
    _, asr = write_data(tmp_path / "data")
    whisper = make_tiny_whisper(tmp_path / "whisper")
    out = tmp_path / "asr-out"
    rc = load_script("asr").main(["--model", str(ckpt), "--asr-data", str(asr), "--output", str(out), "--dtype",
                                  "bfloat16", "--cascade-whisper", str(whisper), "--max-new-tokens", "3",
                                  "--no-progress", "--device", "cpu"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"llasm", "cascade"} and not report["errors"]


def test_llasm_transcription_is_capped_by_audio_length():
    """ASR decoding stops at 12 tokens per second of audio (+10), as the Whisper cascade's does; in a
    batch every clip keeps its own limit."""
    import numpy as np

    from llasm.evaluation import systems

    limits = []

    class Recorder:  # the model's chat_batch, recording each call's limits
        def chat_batch(self, conversations, max_new_tokens, **kwargs):
            limits.append(max_new_tokens)
            return ["x"] * len(conversations)

    system = systems.LlasmSystem(Recorder(), max_new_tokens=40)
    one, ten = np.zeros(16000, dtype=np.float32) + 0.01, np.zeros(16000 * 10, dtype=np.float32) + 0.01
    system.transcribe(one, "en")
    system.transcribe(ten, "zh")
    system.transcribe_batch([one, ten], ["en", "zh"])
    assert limits == [[22], [40], [22, 40]]


def test_text_only_records_are_skipped_with_a_note_not_errors(tmp_path):
    """`llasm synthesize` keeps --text-turn-ratio of the items typed; as eval data those are no spoken
    items: skipped and counted in a note, never reported as failures."""
    from llasm.evaluation import items

    sf.write(tmp_path / "q.wav", tone(1.0), SR)
    spoken = {"id": "s", "lang": "en", "audios": ["q.wav"], "keywords": ["tokyo"],
              "conversations": [{"from": "human", "value": "<speech>", "transcript": "Capital of Japan?"},
                                {"from": "gpt", "value": "Tokyo."}]}
    typed = {"id": "t", "lang": "en", "conversations": [{"from": "human", "value": "Capital of Japan?"},
                                                        {"from": "gpt", "value": "Tokyo."}]}
    broken = {"id": "b", "lang": "en", "audios": ["q.wav"], "conversations": [{"from": "human", "value": "hi"},
                                                                             {"from": "gpt", "value": "ho"}]}
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (spoken, typed, broken)) + "\n")
    loaded, errors = items.load_instruct_items(path, split=None)
    assert [i.id for i in loaded] == ["s"]
    assert [e["id"] for e in errors] == ["b"]  # audios but no <speech> mark: a real mistake, still an error
    assert items.text_only_note(path, None) == f"{path}: 1 text-only record(s) without a spoken turn skipped"


def test_judge_files_scores_each_file_and_each_language(tmp_path):
    from llasm.evaluation.judge_cli import judge_files

    paths = []
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", tone(0.5, seed=i), SR)
        paths.append(str(tmp_path / f"{i}.wav"))
    heard = {0: "the cat sat", 1: "北京", 2: "dog"}
    calls = []

    def transcriber(audio, lang):
        calls.append((len(audio), lang))
        return heard[len(calls) - 1]

    result = judge_files(paths, ["The cat sat down.", "北京市", "Dog!"], transcriber)
    assert [c[1] for c in calls] == ["en", "zh", "en"]  # each reference's language
    assert [r["error"] for r in result["files"]] == [pytest.approx(0.25), pytest.approx(1 / 3), 0.0]
    assert result["summary"]["en"]["value"] == pytest.approx(1 / 5) and result["summary"]["en"]["n_utts"] == 2
    assert result["summary"]["zh"]["value"] == pytest.approx(1 / 3)
    calls.clear()
    only = judge_files(paths[:1], [], transcriber, lang="zh")  # no reference: a transcript, no score
    assert only["files"][0]["error"] is None and only["summary"] == {} and calls[0][1] == "zh"
    calls.clear()
    assert judge_files(paths[:1], ["!?"], transcriber)["files"][0]["error"] is None  # nothing to score
    with pytest.raises(ValueError, match="2 recording.* but 1 --text"):
        judge_files(paths[:2], ["one"], transcriber)
    calls.clear()
    missing = judge_files([str(tmp_path / "gone.wav"), paths[0]], ["a", "the cat"], transcriber)
    assert [f["audio"] for f in missing["files"]] == [paths[0]] and "gone.wav" in missing["failed"][0]["reason"]


def test_llasm_judge_command(tmp_path, capsys):
    from llasm.cli import main

    whisper = make_tiny_whisper(tmp_path / "whisper")
    sf.write(tmp_path / "reply.wav", tone(1.0), SR)
    out = tmp_path / "judged.json"
    assert main(["judge", str(tmp_path / "reply.wav"), "--text", "The capital is Paris.", "--judge", str(whisper),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    row = saved["files"][0]
    assert row["lang"] == "en" and row["reference"] == "The capital is Paris." and row["error"] >= 0
    assert f"heard: {row['heard']}" in printed and "en: WER " in printed and saved["judge"] == str(whisper)
    for argv, message in [(["nowhere.wav", "--text", "x"], "no such recording: nowhere.wav"),
                          ([str(tmp_path / "reply.wav"), "--text", "a", "--text", "b"], "1 recording(s) but 2 --text"),
                          ([str(tmp_path / "reply.wav"), "--text", " "], "an empty --text"),
                          ([str(tmp_path)], f"{tmp_path} is a folder, not a recording")]:
        with pytest.raises(SystemExit) as stop:
            main(["judge", *argv, "--judge", str(whisper)])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    # an unreadable file among good ones: the good one is judged, the bad one named, the exit code says so
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    assert main(["judge", str(tmp_path / "bad.wav"), str(tmp_path / "reply.wav"), "--text", "x", "--text", "hello there",
                 "--lang", "zh", "--judge", str(whisper), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "not judged: " in captured.err and "bad.wav" in captured.err and "reply.wav [zh]" in captured.out
    assert "note: --lang zh, but the reference 'hello there' reads as en" in captured.err
    saved = json.loads(out.read_text())
    assert [f["audio"] for f in saved["files"]] == [str(tmp_path / "reply.wav")] and saved["loop_guard"].startswith("loop guard v3:")
    assert saved["failed"][0]["audio"] == str(tmp_path / "bad.wav")
