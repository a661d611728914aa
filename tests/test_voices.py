"""More voices: flite and festival backends, espeak-ng variant files, and the voice of every clip in the manifest.

flite / festival tests run the real programs (Debian ``flite``, ``festival`` + ``festvox-*``, installed
by ``make setup``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llasm.prep.tts import EspeakBackend, TTSRouter
from llasm.prep.tts_base import TTSError, TTSUnavailable
from llasm.prep.voices import FestivalBackend, FliteBackend, festival_voice_dirs

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
needs_festival = pytest.mark.skipif(shutil.which("text2wave") is None or not festival_voice_dirs(),
                                    reason="festival or its voices not installed (make setup)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
TEXT = "Would you like some more rice with your soup?"


@needs_flite
def test_flite_voices_rate_and_pitch_per_seed():
    flite = FliteBackend()
    audio, rate = flite.synthesize(TEXT, "en", voice_seed=1)
    assert audio.dtype == np.float32 and rate in (8000, 16_000) and 1.2 < len(audio) / rate < 5
    again, _ = flite.synthesize(TEXT, "en", voice_seed=1)
    assert np.array_equal(audio, again)  # one seed, one speaker
    names = {flite.voice_name("en", s) for s in range(40)}
    assert {n.split()[0] for n in names} == {f"flite:{v}" for v in ("kal", "kal16", "awb", "rms", "slt")}
    slow = FliteBackend(voices=["slt"], stretch=1.3).synthesize(TEXT, "en", voice_seed=2)[0]
    fast = FliteBackend(voices=["slt"], stretch=0.8).synthesize(TEXT, "en", voice_seed=2)[0]
    assert len(slow) > 1.4 * len(fast)  # duration_stretch is the speaking rate
    with pytest.raises(TTSError, match="English only"):
        flite.synthesize("你好", "zh", voice_seed=0)
    with pytest.raises(TTSUnavailable, match="unknown voice"):
        FliteBackend(voices=["awb_time"])


@needs_festival
def test_festival_voices_per_seed():
    festival = FestivalBackend()
    assert set(festival.voices) <= {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"} and festival.voices
    audio, rate = festival.synthesize(TEXT, "en", voice_seed=3)
    assert rate >= 16_000 and 1.2 < len(audio) / rate < 6 and np.abs(audio).max() > 0.05
    assert festival.voice_name("en", 3).startswith("festival:")
    with pytest.raises(TTSError, match="English only"):
        festival.synthesize("你好", "zh", voice_seed=0)


def test_missing_programs_are_named(monkeypatch):
    with pytest.raises(TTSUnavailable, match="apt-get install flite"):
        FliteBackend.check({"binary": "no-such-flite"})
    with pytest.raises(TTSUnavailable, match="apt-get install festival"):
        FestivalBackend.check({"binary": "no-such-text2wave"})
    monkeypatch.setenv("LLASM_FESTIVAL_VOICES", "/nonexistent")
    if shutil.which("text2wave"):
        with pytest.raises(TTSUnavailable, match="festvox-kallpc16k"):
            FestivalBackend.check({})


@needs_espeak
def test_espeak_variant_files_multiply_the_voices():
    espeak = EspeakBackend(voices={"en": ["en-us", "en-gb-scotland"]}, variants=["m3", "f2", "klatt"])
    assert espeak.voices["en"] == sorted(["en-us", "en-gb-scotland"] + [f"{v}+{x}" for v in ("en-us", "en-gb-scotland")
                                                                         for x in ("m3", "f2", "klatt")])
    picked = {espeak.voice_for("en", s)[0] for s in range(60)}
    assert len(picked) >= 6
    audio, rate = espeak.synthesize(TEXT, "en", voice_seed=4)
    assert len(audio) / rate > 1.0 and espeak.voice_name("en", 4).startswith("espeak:")


@needs_flite
@needs_espeak
def test_every_clip_records_its_voice(tmp_path):
    from llasm.prep.synthesize import synthesize_dataset

    source = tmp_path / "asr.jsonl"
    source.write_text("".join(json.dumps({"id": f"s{i}", "lang": "en", "text": TEXT, "split": "train"}) + "\n"
                              for i in range(6)))
    config = {"languages": {"en": {"flite": 1.0, "espeak": 1.0}}, "text_turn_ratio": 0.0}
    counts = synthesize_dataset(source, tmp_path / "out.jsonl", config=config, workers=1, progress=False)
    assert counts["items"] == 6
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    voices = [r["voices"][0] for r in rows]
    assert all(len(r["voices"]) == len(r["audios"]) for r in rows)
    assert {v.split(":")[0] for v in voices} == {"flite", "espeak"}  # both backends drawn over 6 seeds
    router = TTSRouter(config)
    for row, voice in zip(rows, voices):  # the name is what the seed stands for, reproducibly
        name = voice.split(":")[0]
        assert router.voice_name(name, "en", _human_seed(row["id"])) == voice


def _human_seed(item_id: str) -> int:
    from llasm.prep.synthesize import _stable_int

    return _stable_int(0, item_id, "human")
