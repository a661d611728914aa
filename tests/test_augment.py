"""Acoustic augmentation (llasm.prep.augment): lengths, SNR reached, spectra, determinism, the JSONL job."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import SR, tone

from llasm.prep import augment as A


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / SR)[np.argmax(spectrum)])


def _band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


def test_speed_perturbation_changes_length_and_pitch_together():
    clip = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    fast = A.speed_perturb(clip, 1.1)
    assert abs(len(fast) - round(SR / 1.1)) <= 1
    assert abs(len(A.speed_perturb(clip, 0.9)) - round(SR / 0.9)) <= 1
    assert abs(_peak_hz(fast) - 484) < 5  # 440 Hz played 1.1x faster
    with pytest.raises(ValueError, match="speed factor"):
        A.speed_perturb(clip, 0.0)


def test_pitch_shift_keeps_length_and_moves_frequency():
    clip = np.sin(2 * np.pi * 440 * np.arange(SR) / SR).astype(np.float32)
    up = A.pitch_shift(clip, 12.0)
    assert len(up) == len(clip)
    assert abs(_peak_hz(up[SR // 4 : 3 * SR // 4]) - 880) < 15


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 20.0, 35.0])
@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_noise_reaches_the_drawn_snr(kind, snr_db):
    clip = tone(1.0)
    noise = A.colored_noise(len(clip), kind, np.random.default_rng(0))
    noisy = A.add_noise(clip, noise, snr_db)
    assert len(noisy) == len(clip)
    reached = 10 * np.log10(np.mean(clip**2) / np.mean((noisy - clip) ** 2))
    assert abs(reached - snr_db) < 0.01


def test_colored_noise_spectra_fall_with_beta():
    rng = np.random.default_rng(0)
    low = {k: _band_energy(A.colored_noise(SR, k, rng), 0, 500) for k in ("white", "pink", "brown")}
    assert low["white"] < low["pink"] < low["brown"]
    with pytest.raises(ValueError, match="noise kind"):
        A.colored_noise(10, "purple", rng)
    with pytest.raises(ValueError, match="silent"):
        A.add_noise(np.zeros(100, np.float32), np.ones(100, np.float32), 10)


def test_room_reverb_is_aligned_and_keeps_length():
    rir, params = A.room_impulse_response(random.Random(0), [0.3, 0.6], [[4, 6], [4, 6], [2.5, 3]])
    assert np.argmax(np.abs(rir)) == 0 and 0.3 <= params["rt60"] <= 0.6 and len(rir) > 0.05 * SR
    clip = tone(1.0)
    wet = A.reverberate(clip, rir)
    assert len(wet) == len(clip)
    assert np.corrcoef(wet, clip)[0, 1] > 0.3  # the direct path is kept in place
    assert not np.allclose(wet, clip * rir[0], atol=1e-3)  # and reflections are added


@pytest.mark.parametrize("kind", ["telephone", "lowpass", "mp3", "ogg", "opus"])
def test_codecs_keep_length_and_band_limit(kind):
    rng = np.random.default_rng(1)
    clip = (0.3 * rng.standard_normal(SR)).astype(np.float32)
    out = A.codec(clip, kind, quality=0.5, lowpass_hz=3000)
    assert len(out) == len(clip) and np.all(np.isfinite(out))
    if kind in ("telephone", "lowpass"):
        assert _band_energy(out, 4000, 8000) < 0.02 < _band_energy(clip, 4000, 8000)
    with pytest.raises(ValueError, match="codec kind"):
        A.codec(clip, "gsm")


def test_augmenter_is_seeded_and_records_what_it_did():
    config = {"speed": {"p": 1}, "pitch": {"p": 1}, "reverb": {"p": 1, "rirs": 2}, "noise": {"p": 1, "kinds": ["pink"]},
              "codec": {"p": 1, "kinds": ["mp3"]}}
    clip = tone(1.0)
    first, effects = A.Augmenter(config)(clip, "row-1:0:1")
    again, effects_again = A.Augmenter(config)(clip, "row-1:0:1")
    other, _ = A.Augmenter(config)(clip, "row-1:0:2")
    assert np.array_equal(first, again) and effects == effects_again
    assert [e["effect"] for e in effects] == ["speed", "pitch", "reverb", "noise", "codec"]
    assert len(first) == round(len(clip) / effects[0]["factor"]) or abs(len(first) - len(clip) / effects[0]["factor"]) <= 1
    assert not np.array_equal(first, other[: len(first)]) and np.max(np.abs(first)) <= 1.0
    nothing, none = A.Augmenter({name: {"p": 0} for name in A.EFFECTS})(clip, "x")
    assert none == [] and np.array_equal(nothing, clip)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'volume'"):
        A.load_augment_config({"volume": 1})
    with pytest.raises(ValueError, match="unknown config key 'noise.snr'"):
        A.load_augment_config({"noise": {"snr": [1, 2]}})
    with pytest.raises(ValueError, match=r"speed.p must be in \[0, 1\]"):
        A.load_augment_config({"speed": {"p": 2}})
    path = tmp_path / "aug.yaml"
    path.write_text("augment:\n  copies: 3\n  noise: {snr_db: [10, 20]}\n")  # a YAML with an augment: section
    config = A.load_augment_config(path)
    assert config.copies == 3 and config.noise.snr_db == [10, 20] and config.speed.p == 0.5
    path.write_text("augment:\n  reverb: {rt60s: [1, 2]}\n")
    with pytest.raises(ValueError, match=f"{path}: unknown config key 'augment.reverb.rt60s'"):
        A.load_augment_config(path)


def test_augment_dataset_writes_copies_rejects_and_new_cache_keys(tmp_path):
    from llasm.audio import load_audio, save_audio
    from llasm.data.dataset import audio_key

    rows = []
    for i in range(4):
        save_audio(tmp_path / "in" / f"c{i}.flac", tone(0.8, seed=i, freq=200 + 40 * i))
        rows.append({"id": f"c{i}", "lang": "en", "voice": "espeak:en-us", "audios": [f"c{i}.flac"],
                     "conversations": [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "hi"}]})
    rows.append(dict(rows[0], id="gone", audios=["missing.flac"]))
    source = tmp_path / "in" / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"copies": 2, "reverb": {"p": 1, "rirs": 2}, "noise": {"p": 1}}
    counts = A.augment_dataset(source, tmp_path / "out" / "train.jsonl", config, progress=False)
    assert counts == {"rows": 5 + 8, "augmented": 8, "replaced": 0, "rejects": 2}
    out = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    copies = [r for r in out if "augment_of" in r]
    assert [r["id"] for r in copies[:2]] == ["c0~aug1", "c0~aug2"] and copies[0]["voice"] == "espeak:en-us"
    assert all(any(e["effect"] == "reverb" for e in r["augment"][0]) for r in copies)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "train.rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"gone~aug1", "gone~aug2"} and "missing.flac" in rejects[0]["reason"]
    clean = load_audio(tmp_path / "out" / out[0]["audios"][0])
    twin = load_audio(tmp_path / "out" / copies[0]["audios"][0])
    assert audio_key(clean, "m") != audio_key(twin, "m")  # an augmented clip is its own encoder-cache entry
    again = A.augment_dataset(source, tmp_path / "again" / "train.jsonl", config, progress=False)
    assert again == counts
    assert copies[0]["audios"] == ["train_audio/c0~aug1_a0.flac"]
    assert np.array_equal(load_audio(tmp_path / "again" / "train_audio" / "c0~aug1_a0.flac"), twin)  # seeded


def test_replace_keeps_the_clip_count(tmp_path):
    from llasm.audio import save_audio

    rows = []
    for i in range(40):
        save_audio(tmp_path / f"c{i}.flac", tone(0.3, seed=i))
        rows.append({"id": f"c{i}", "audios": [f"c{i}.flac"], "conversations": [
            {"from": "human", "value": "<speech>"}, {"from": "gpt", "value": "x"}]})
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"copies": 1, "replace": 0.5, "reverb": {"p": 0}, "pitch": {"p": 0}}
    counts = A.augment_dataset(source, tmp_path / "out" / "train.jsonl", config, progress=False)
    out = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert counts["rows"] == len(out) == 40 and counts["augmented"] == counts["replaced"] and 10 < counts["replaced"] < 30
    assert {r.get("augment_of", r["id"]) for r in out} == {f"c{i}" for i in range(40)}  # every sentence once
