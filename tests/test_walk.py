"""The README's training path, end to end on the tiny model, through the `llasm` command only:
raw LibriSpeech-style tree -> prepare-asr -> stage 1 -> stage 2 (LoRA, from stage 1 by `model=`,
with an Alpaca file as a text-only source) -> chat, eval and from_pretrained on final/ and checkpoint-N."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_data_prep import make_librispeech, tone

from llasm import cli


@pytest.mark.slow
def test_raw_corpus_to_a_chatting_model(tmp_path, monkeypatch, capsys):
    from llasm import LlasmForConditionalGeneration

    corpus = make_librispeech(tmp_path / "LibriSpeech")
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Name colour number {i}.", "input": "", "output": "Blue."}
                                  for i in range(10)]))
    data = tmp_path / "data"
    common = ["data.num_workers=0", f"encoder_cache.dir={tmp_path / 'cache'}", "train.batch_size=2",
              "train.max_steps=3", "train.save_every=2", "train.warmup_steps=0"]

    # 1. raw corpus -> JSONL
    assert cli.main(["prepare-asr", "--format", "librispeech", "--input", str(corpus), "--split", "train-clean-100",
                     "--output", str(data / "asr.jsonl")]) == 0
    # 2. stage 1: the adaptor on ASR
    stage1 = tmp_path / "runs" / "stage1"
    assert cli.main(["train", "configs/stage1_asr_align.yaml", "model=configs/model/tiny.yaml",
                     f"data.sources.0.path={data / 'asr.jsonl'}", f"output_dir={stage1}", *common]) == 0
    # 3. stage 2 from stage 1 (one field: model=), LoRA; the adaptor held still to see that it is stage 1's
    stage2 = tmp_path / "runs" / "stage2"
    assert cli.main(["train", "configs/stage2_instruct_lora.yaml", f"model={stage1 / 'final'}", f"output_dir={stage2}",
                     f"data.sources.0.path={alpaca}", f"data.sources.1.path={data / 'asr.jsonl'}",
                     f"data.sources.2.path={data / 'asr.jsonl'}", "train.part_lr.adaptor=0.0", *common]) == 0
    out = capsys.readouterr().out
    assert f"model: {stage1 / 'final'}" in out and "alpaca" in out  # the resolved config and the text source
    # the tiny model's bases have no path, so final/ holds everything (LoRA merged into the LLM)
    first, second = load_file(stage1 / "final" / "model.safetensors"), load_file(stage2 / "final" / "model.safetensors")
    adaptor = [k for k in first if k.startswith("adaptor.")]
    assert adaptor and all(torch.equal(first[k], second[k]) for k in adaptor)
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("language_model."))
    # 4. chat with the result, and with an intermediate checkpoint of either stage
    for model_dir in (stage2 / "final", stage2 / "checkpoint-2", stage1 / "checkpoint-2"):
        monkeypatch.setattr(sys, "stdin", io.StringIO("and then?\n"))
        assert cli.main(["chat", "--model", str(model_dir), "--text", "hello", "--max-new-tokens", "2"]) == 0
        assert capsys.readouterr().out.count("\n") >= 2  # two replies (a library may log a line too)
    assert isinstance(LlasmForConditionalGeneration.from_pretrained(stage2 / "checkpoint-2"), LlasmForConditionalGeneration)
    # and evaluate it on your own data (no keywords): accuracy n/a, chrF reported
    spoken = tmp_path / "mine.jsonl"
    (tmp_path / "q.wav").write_bytes(b"")
    tone(tmp_path / "q.wav", seconds=1.0)
    spoken.write_text(json.dumps({"id": "q1", "lang": "en", "audios": ["q.wav"], "conversations": [
        {"from": "human", "value": "<speech>", "transcript": "What is the capital of Japan?"},
        {"from": "gpt", "value": "The capital of Japan is Tokyo."}]}) + "\n")
    assert cli.main(["eval", "--model", str(stage2 / "checkpoint-2"), "--data", str(spoken), "--tasks", "instruct",
                     "--no-cascade", "--split", "all", "--max-new-tokens", "4", "--no-progress",
                     "--output", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert "accuracy" not in report["results"]["llasm"]["en"] and "chrf" in report["results"]["llasm"]["en"]
    assert report["not_applicable"]["en"]["accuracy"] == "no item carries keywords"
