"""Benchmark loaders on miniature copies in the real layouts, and `--benchmark` runs end to end on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_YAML
from test_evaluation import FakeJudgeServer

from llasm.evaluation import main as eval_main
from llasm.evaluation.benchmarks import BenchmarkError, load_benchmark
from llasm.evaluation.benchmarks.fixtures import build_fixtures, tts_synth
from llasm.evaluation.benchmarks.items import load_item_audio

HEAD = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
        "intermediate_size": 64}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return build_fixtures(tmp_path_factory.mktemp("bench"))


def test_loaders_read_every_layout(fixtures):
    expected = {"voicebench:openbookqa": 8, "voicebench:mmsu": 4, "voicebench:ifeval": 8, "voicebench:bbh": 8,
                "voicebench:advbench": 6, "voicebench:sd-qa": 1, "urobench:basic": 8, "urobench:Repeat-zh": 3,
                "librispeech:test-clean": 3, "aishell1": 3, "fleurs:en_us": 3, "fleurs:cmn_hans_cn": 3,
                "wenetspeech:test_net": 2}
    for spec, n in expected.items():
        items, errors = load_benchmark(spec, str(fixtures[spec.split(":")[0]]))
        assert len(items) == n, spec
        for item in items[:2]:
            audio = load_item_audio(item.audio)
            assert audio.dtype == np.float32 and audio.size > 1600 and item.prompt
    ifeval, _ = load_benchmark("voicebench:ifeval", str(fixtures["voicebench"]))
    assert ifeval[0].meta["instruction_id_list"] == ["change_case:english_lowercase"] and ifeval[0].scorer == "ifeval"
    bbh, _ = load_benchmark("voicebench:bbh", str(fixtures["voicebench"]))
    assert bbh[0].id == "sports_understanding_0" and bbh[0].reference == "yes"
    mmsu, errors = load_benchmark("voicebench:mmsu", str(fixtures["voicebench"]))
    assert {i.meta["split"] for i in mmsu} == {"physics", "biology"} and "law" in errors[0]["error"]
    libri, _ = load_benchmark("librispeech:test-clean", str(fixtures["librispeech"]))
    assert libri[0].reference == "the cat sat on the mat" and libri[0].lang == "en"
    aishell, _ = load_benchmark("aishell1:test", str(fixtures["aishell1"]))
    assert aishell[0].reference == "今天天气很好"  # the transcript's word spaces are gone
    alias, _ = load_benchmark("aishell:test", str(fixtures["aishell1"]))  # prepare-asr's name for the corpus
    assert [(i.id, i.group) for i in alias] == [(i.id, "aishell1:test") for i in aishell]
    uro, _ = load_benchmark("urobench:Repeat", str(fixtures["urobench"]))
    assert uro[0].id == "Repeat-0000" and uro[0].reference == "the train leaves at nine in the morning"
    net, _ = load_benchmark("wenetspeech:test_net", str(fixtures["wenetspeech"]))
    assert net[1].audio["start"] > 0.5  # the second segment of one recording


def test_loader_errors_are_clear(fixtures, tmp_path, monkeypatch):
    with pytest.raises(BenchmarkError, match="choose one of"):
        load_benchmark("voicebench:nope", str(fixtures["voicebench"]))
    with pytest.raises(BenchmarkError, match=r"unknown name; choose from .*aishell1.* \(aliases: aishell = aishell1\)"):
        load_benchmark("mmlu", str(tmp_path))
    with pytest.raises(BenchmarkError, match="hub layout"):
        load_benchmark("voicebench:openbookqa", str(tmp_path))
    with pytest.raises(BenchmarkError, match="URO-Bench-data"):
        load_benchmark("urobench:Repeat", str(tmp_path))
    with pytest.raises(BenchmarkError, match="needs --data"):
        load_benchmark("librispeech:test-clean", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchmarkError, match="offline"):
        load_benchmark("voicebench:openbookqa", None)
    bad = tmp_path / "basic" / "Repeat"
    bad.mkdir(parents=True)
    (bad / "test.jsonl").write_text('{"source_text": "no wav"}\nnot json\n', encoding="utf-8")
    items, errors = load_benchmark("urobench:Repeat", str(tmp_path))
    assert items == [] and [e["id"] for e in errors] == ["Repeat-0000", "Repeat-0001"]


def _run(fixtures, tmp_path, spec, data, *extra, **kwargs):
    out = tmp_path / spec.replace(":", "_").replace(",", "+")
    rc = eval_main(["--benchmark", spec, "--data", str(fixtures[data]), "--model", str(TINY_YAML), "--output",
                     str(out), "--max-new-tokens", "6", "--no-progress", "--device", "cpu", *extra], **kwargs)
    assert rc == 0
    return json.loads((out / "report.json").read_text(encoding="utf-8")), (out / "report.md").read_text(encoding="utf-8")


def test_voicebench_rule_based_end_to_end(fixtures, tmp_path, tiny):
    model, _ = tiny
    report, md = _run(fixtures, tmp_path, "voicebench:openbookqa,voicebench:ifeval,voicebench:bbh,voicebench:advbench",
                      "voicebench", "--limit", "3", model=model, transcriber=lambda audio, lang: "the answer is b")
    res = report["results"]
    assert set(res) == {"llasm", "cascade", "text"}
    for system in res:
        assert set(res[system]) == {"voicebench:openbookqa", "voicebench:ifeval", "voicebench:bbh",
                                    "voicebench:advbench"}
        assert 0 <= res[system]["voicebench:openbookqa"]["acc"] <= 100
        assert set(res[system]["voicebench:ifeval"]) == {"strict-prompt", "strict-instruction", "loose-prompt",
                                                        "loose-instruction", "final"}
    # the cascade answered the injected transcript "the answer is b" with the same LLM
    rows = report["details"]["rows"]["voicebench:openbookqa"]["llasm"]
    assert len(rows) == 3 and all("pred" in r for r in rows)
    assert report["meta"]["fixture"].startswith("Miniature copy") and "Not the official benchmark" in md
    assert "| voicebench:bbh | acc |" in md


def test_asr_sets_end_to_end_two_normalizations(fixtures, tmp_path, tiny):
    model, _ = tiny
    # "aishell": the alias; the report names the benchmark aishell1
    for spec, data, metric in (("librispeech:test-clean", "librispeech", "wer"), ("aishell", "aishell1", "cer"),
                               ("fleurs:cmn_hans_cn", "fleurs", "cer"), ("wenetspeech:test_net", "wenetspeech", "cer")):
        heard = "the cat sat on the mat" if metric == "wer" else "今天天气很好"
        report, _ = _run(fixtures, tmp_path, spec, data, "--no-text", model=model,
                         transcriber=lambda audio, lang, heard=heard: heard)
        group = report["results"]["cascade"]
        (name, scores), = group.items()
        assert set(scores) == {metric, f"{metric}_peer"}
        assert "text" not in report["results"] and report["results"]["llasm"][name][metric] >= 0
        # hand-worked: the one hypothesis against the 3 references (0 + 7 + 8 word errors of 6 + 8 + 9 words;
        # 0 + 6 + 7 character errors of 6 + 7 + 7 characters); no numbers or punctuation, so both agree
        if spec.startswith("librispeech"):
            assert scores["wer"] == pytest.approx(15 / 23) and scores["wer_peer"] == pytest.approx(15 / 23)
        if spec == "aishell":
            assert report["meta"]["benchmarks"] == "aishell1" and name == "aishell1:test"
            assert scores["cer"] == pytest.approx(13 / 20) and scores["cer_peer"] == pytest.approx(13 / 20)


def test_judge_subsets_use_the_pinned_prompt_and_three_samples(fixtures, tmp_path, tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setenv("LLASM_JUDGE_API_KEY", "k")
    with FakeJudgeServer("4") as server:
        report, _ = _run(fixtures, tmp_path, "voicebench:alpacaeval", "voicebench", "--no-cascade", "--no-text",
                         "--judge-url", server.url, "--judge-model", "judge-x", model=model)
    assert report["results"]["llasm"]["voicebench:alpacaeval"] == {"gpt": 4.0}
    assert len(server.requests) == 2 * 3  # 2 items; the server answers one choice per call, asked until 3
    body = server.requests[0]["body"]
    assert body["n"] == 3 and body["temperature"] == 0.5 and body["top_p"] == 0.95 and body["model"] == "judge-x"
    assert body["messages"][0]["content"].startswith("You are a helpful assistant who tries")
    assert "### [Instruction]: What are some good ways to stay focused" in body["messages"][1]["content"]
    assert report["details"]["judge"]["prompts_sha256"]["open"].startswith("98f2e991")


@pytest.fixture(scope="module")
def speaker(tiny_bases):
    import llasm
    from llasm.speech.vocoder import UnitHifiGan, UnitVocoderConfig

    model, _ = llasm.build_model(dict(tiny_bases, unit_head=HEAD))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.unit_head.parameters():  # make units win over the blank, so there is audio
            p.add_(torch.randn_like(p) * 0.5)
    model.set_vocoder(UnitHifiGan(UnitVocoderConfig(num_units=20, upsample_initial_channel=32, resblock_kernel_sizes=[3],
                                                    resblock_dilation_sizes=[[1]], embedding_dim=8)).eval())
    return model.eval()


def test_urobench_speech_to_speech_side_by_side(fixtures, tmp_path, speaker):
    heard = []

    def speech_judge(audio, lang):
        heard.append(len(audio))
        return "the train leaves at nine in the morning" if lang == "en" else "今天下午三点开会"

    report, md = _run(fixtures, tmp_path, "urobench:Repeat,urobench:Repeat-zh", "urobench", "--no-cascade",
                      model=speaker, speech_transcriber=speech_judge)
    res = report["results"]
    assert {"llasm", "text", "llasm-speech"} <= set(res)
    for group in ("urobench:Repeat", "urobench:Repeat-zh"):
        assert {"score", "ok_rate", "wer_ok"} <= set(res["llasm"][group])
        assert {"score", "ok_rate", "wer_ok", "asr_wer"} <= set(res["llasm-speech"][group])
    assert len(heard) == 6 and min(heard) >= 1600
    # the first en sentence is heard exactly: that item's spoken answer scores error 0
    row = report["details"]["rows"]["urobench:Repeat"]["llasm-speech"][0]
    assert row["response"] == "the train leaves at nine in the morning" and row["error_rate"] == 0
    assert "| urobench:Repeat | score |" in md


def test_fixture_audio_from_the_project_tts(tmp_path):
    synth = tts_synth({"languages": {"en": ["espeak"], "zh": ["espeak"]}})
    paths = build_fixtures(tmp_path, synth)
    items, errors = load_benchmark("urobench:Repeat-zh", str(paths["urobench"]))
    audio = load_item_audio(items[0].audio)
    assert not errors and audio.size > 16000 * 0.5 and float(np.abs(audio).max()) > 0.1
    note = (paths["fleurs"] / "LLASM_FIXTURE.txt").read_text(encoding="utf-8")
    assert "en: espeak; zh: espeak" in note and "not the official" in note


def test_llasm_eval_command_loads_the_model_yaml(fixtures, tmp_path, capsys):
    from llasm.cli import main as llasm_main

    out = tmp_path / "cli"
    rc = llasm_main(["eval", "--benchmark", "fleurs:en_us", "--data", str(fixtures["fleurs"]), "--model", str(TINY_YAML),
                     "--output", str(out), "--max-new-tokens", "4", "--no-progress", "--device", "cpu"])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rc == 0 and set(report["results"]["llasm"]["fleurs:en_us"]) == {"wer", "wer_peer"}
    assert report["meta"]["cascade"].startswith("skipped: no Whisper")  # the tiny model names no base Whisper
    assert "| fleurs:en_us | wer |" in capsys.readouterr().out


def test_hub_ids_need_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spec, hub in (("librispeech:test-other", "openslr/librispeech_asr"), ("fleurs:en_us", "google/fleurs")):
        with pytest.raises(BenchmarkError, match="offline"):
            load_benchmark(spec, hub)
