"""Speech units: k-means on encoder-layer features, dedup + durations, save/load, batch jobs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SR, tone

from llasm.speech.units import (
    HubertLayerFeatures,
    UnitExtractor,
    WhisperLayerFeatures,
    dedup_units,
    fit_kmeans,
)
from llasm.speech.units_cli import main

K = 8


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("tiny_whisper")
    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                        vocab_size=100, max_source_positions=1500, max_target_positions=64,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    WhisperForConditionalGeneration(cfg).save_pretrained(root)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for i, (sec, freq) in enumerate([(1.0, 150.0), (0.7, 300.0), (1.3, 500.0)]):
        sf.write(root / f"a{i}.wav", tone(sec, seed=i, freq=freq), SR)
    return root


@pytest.fixture(scope="module")
def fitted(whisper_dir, audio_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("km")
    rc = main(["fit", "--encoder", str(whisper_dir), "--num-units", str(K), "--input", str(audio_dir),
               "--output", str(out)])
    assert rc == 0
    return out


def test_dedup_units():
    units, durations = dedup_units([5, 5, 5, 1, 1, 5, 2, 2, 2, 2])
    assert units == [5, 1, 5, 2] and durations == [3, 2, 1, 4]
    assert dedup_units([]) == ([], [])
    assert dedup_units(torch.tensor([7])) == ([7], [1])
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4, 500)
    units, durations = dedup_units(frames)
    assert sum(durations) == 500 and all(a != b for a, b in zip(units, units[1:]))
    np.testing.assert_array_equal(np.repeat(units, durations), frames)


def test_whisper_layer_features(whisper_dir):
    feats = WhisperLayerFeatures(str(whisper_dir))
    assert feats.layer == 1 and feats.feature_dim == 32
    audio = tone(1.0)
    x = feats(audio)
    assert x.shape == (50, 32)  # 50 Hz: 16000 samples / 320
    # layer 2 = output of the last layer (before the final layer norm); layer 0 = conv + positions
    captured = {}
    handle = feats.encoder.layers[1].register_forward_hook(lambda m, a, o: captured.setdefault("x", o))
    from transformers import WhisperFeatureExtractor

    mel = WhisperFeatureExtractor.from_pretrained(whisper_dir)(
        audio, sampling_rate=SR, truncation=False, padding="longest", return_tensors="pt").input_features[..., :100]
    with torch.no_grad():
        feats.encoder(mel)
    handle.remove()
    last = WhisperLayerFeatures(str(whisper_dir), layer=2, encoder=feats.encoder)
    torch.testing.assert_close(last(audio), captured["x"][0])
    assert WhisperLayerFeatures(str(whisper_dir), layer=0, encoder=feats.encoder)(audio).shape == (50, 32)
    with pytest.raises(ValueError, match="layer"):
        WhisperLayerFeatures(str(whisper_dir), layer=3, encoder=feats.encoder)


def test_long_audio_is_chunked(whisper_dir):
    feats = WhisperLayerFeatures(str(whisper_dir))
    x = feats(np.tile(tone(1.0), 31))  # 31 s > one 30 s Whisper window
    assert x.shape == (31 * 50, 32)


def test_fit_save_load_identical(fitted, whisper_dir, audio_dir):
    meta = json.loads((fitted / "kmeans.json").read_text())
    assert meta["num_units"] == K and meta["layer"] == 1 and meta["feature_dim"] == 32
    assert meta["encoder"] == str(whisper_dir) and meta["encoder_type"] == "whisper"
    assert sorted(p.name for p in fitted.iterdir()) == ["kmeans.json", "kmeans.safetensors", "rejects.jsonl"]
    ext = UnitExtractor.load(fitted)
    units, durations = ext.extract(audio_dir / "a0.wav")
    assert sum(durations) == 50 and all(0 <= u < K for u in units)
    # assignment = nearest centroid (brute force check)
    x = ext.features(tone(1.0, seed=0, freq=150.0))
    brute = torch.cdist(x, ext.centroids).argmin(-1)
    torch.testing.assert_close(ext.assign(x), brute)
    # save again -> load -> identical
    ext.save(fitted.parent / "km_copy")
    again = UnitExtractor.load(fitted.parent / "km_copy", features=ext.features)
    assert again.extract(audio_dir / "a2.wav") == ext.extract(audio_dir / "a2.wav")
    torch.testing.assert_close(again.centroids, ext.centroids)


def test_a_frame_cap_samples_clips_from_the_whole_list(tmp_path):
    """max_frames encodes a seeded random sample of the clips, not the head of the list: a list ordered
    by language must not give the first language nearly all the clusters."""
    from llasm.speech.units import fit_unit_extractor

    clips = []
    for n, lang in enumerate(("en", "zh")):
        for i in range(10):
            clips.append(tmp_path / f"{lang}{i}.wav")
            sf.write(clips[-1], tone(0.1, seed=10 * n + i), SR)
    encoded = []

    class Features:  # 10 frames a clip; records which clip it was given (by its samples)
        layer, name_or_path, encoder_type, feature_dim = 1, "fake", "whisper", 4

        def __call__(self, audio):
            encoded.append(next(c.stem for c in clips if np.allclose(sf.read(c, dtype="float32")[0], audio, atol=1e-4)))
            return np.random.default_rng(len(encoded)).standard_normal((10, 4)).astype(np.float32)

    features = Features()

    fitted = fit_unit_extractor(features, clips, 4, seed=0, max_frames=60, progress=False)
    first = list(encoded)
    assert len(first) == 6 and {c[:2] for c in first} == {"en", "zh"}
    assert fitted.meta["clips_read"] == 6 and fitted.meta["max_frames"] == 60 and fitted.meta["num_frames"] == 60
    encoded.clear()
    fit_unit_extractor(features, clips, 4, seed=0, max_frames=60, progress=False)
    assert encoded == first  # the same seed, the same sample
    encoded.clear()
    fit_unit_extractor(features, clips, 4, seed=0, progress=False)
    assert len(encoded) == 20


def test_the_fit_hands_back_the_features_it_encoded(tmp_path):
    """fit_unit_extractor(encoded=...) keeps each sampled clip's features, and units made from them are the
    units extract() makes from the clip (the speech demo encodes its clips once)."""
    from llasm.speech.units import dedup_units, fit_unit_extractor

    clips = []
    for i in range(8):
        clips.append(str(tmp_path / f"{i}.wav"))
        sf.write(clips[-1], tone(0.2, seed=i, freq=150 + 40 * i), SR)

    class Features:  # 4-d frames read from the audio itself, 64 samples a frame
        layer, name_or_path, encoder_type, feature_dim = 1, "fake", "whisper", 4

        def __call__(self, audio):
            return torch.as_tensor(audio[: len(audio) // 64 * 64].reshape(-1, 16, 4).mean(1) * 10)

    encoded = {}
    fitted = fit_unit_extractor(Features(), clips, 6, seed=0, max_frames=200, progress=False, encoded=encoded,
                                n_init=1)
    assert 0 < len(encoded) < len(clips) and set(encoded) <= set(clips)
    assert sum(f.shape[0] for f in encoded.values()) == fitted.meta["num_frames"]
    for clip, feats in encoded.items():
        assert dedup_units(fitted.assign(feats)) == fitted.extract(clip)


def test_fit_kmeans_errors(caplog):
    with pytest.raises(ValueError, match="at least"):
        fit_kmeans([np.zeros((3, 4))], 8)
    with pytest.raises(ValueError, match="no features"):
        fit_kmeans([], 8)
    with caplog.at_level("WARNING", logger="llasm.speech.units"):
        centroids = fit_kmeans([np.random.default_rng(0).standard_normal((312, 4))], 8)  # 39 frames a unit
        assert not caplog.records
        fit_kmeans([np.random.default_rng(0).standard_normal((200, 4))], 8)
    assert centroids.shape == (8, 4) and centroids.dtype == np.float32
    assert [r.getMessage() for r in caplog.records] == [
        "k-means with K=8 on 200 frames (25.0 a unit; faiss asks for at least 39): many units will be fitted to a "
        "handful of frames; give it more audio or a smaller K"]


def test_annotate_conversations(fitted, audio_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rows = [
        {"id": "c0", "audios": ["q.wav"], "conversations": [
            {"from": "human", "value": "<speech>\nHi"},
            {"from": "gpt", "value": "Hello.", "audio": str(audio_dir / "a0.wav")}]},  # absolute path
        {"id": "c1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "text only"}]},
        {"id": "c2", "conversations": [{"from": "human", "value": "Hi"},
                                       {"from": "gpt", "value": "Bad.", "audio": "missing.wav"}]},
    ]
    sf.write(src / "rel.wav", tone(0.5, seed=5), SR)
    rows.append({"id": "c3", "conversations": [{"from": "human", "value": "Hi"},
                                               {"from": "gpt", "value": "Rel.", "audio": "rel.wav"}]})
    (src / "conv.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "conv.units.jsonl"
    assert main(["annotate", "--kmeans", str(fitted), "--input", str(src / "conv.jsonl"), "--output", str(out)]) == 0
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in items] == ["c0", "c1", "c3"]
    gpt0 = items[0]["conversations"][1]
    assert sum(gpt0["durations"]) == 50 and len(gpt0["units"]) == len(gpt0["durations"])
    assert "units" not in items[0]["conversations"][0] and "units" not in items[1]["conversations"][1]
    gpt3 = items[2]["conversations"][1]
    assert sum(gpt3["durations"]) == 25
    assert (out.parent / gpt3["audio"]).resolve() == (src / "rel.wav").resolve()  # relative to the output
    rejects = [json.loads(line) for line in (tmp_path / "out" / "conv.units.rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["c2"] and "not found" in rejects[0]["reason"]


def test_manifest_mode(fitted, audio_dir, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"")
    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"id": "x", "audio": str(audio_dir / "a1.wav")}) + "\n"
                       + json.dumps({"id": "y", "audio": "bad.wav"}) + "\n")
    out = tmp_path / "voc" / "manifest.jsonl"
    assert main(["manifest", "--kmeans", str(fitted), "--input", str(audio_dir), str(listing),
                 "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a0", "a1", "a2", "x"]
    for row in rows:
        assert set(row) == {"id", "audio", "units", "durations"}
        n = sf.info(out.parent / row["audio"]).frames
        assert sum(row["durations"]) == -(-(n // 160) // 2)  # ceil(mel frames / 2) = len // 320
    rejects = [json.loads(line) for line in (out.parent / "manifest.rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["y"] and "empty" in rejects[0]["reason"]
    # the vocoder's dataset reads it
    from llasm.speech.vocoder_config import UnitVocoderConfig
    from llasm.speech.vocoder_training import UnitAudioDataset

    ds = UnitAudioDataset(out, UnitVocoderConfig(num_units=K, segment_size=3200))
    assert len(ds) == 4


def test_cli_errors(tmp_path, capsys):
    assert main(["annotate", "--kmeans", str(tmp_path), "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_hubert_code_path(tmp_path, audio_dir):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16, 16, 16, 16, 16), num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=2)
    HubertModel(cfg).save_pretrained(tmp_path / "hubert")
    assert main(["fit", "--encoder", str(tmp_path / "hubert"), "--encoder-type", "hubert", "--layer", "2",
                 "--num-units", "4", "--input", str(audio_dir), "--output", str(tmp_path / "km")]) == 0
    ext = UnitExtractor.load(tmp_path / "km")
    assert isinstance(ext.features, HubertLayerFeatures) and ext.meta["layer"] == 2
    units, durations = ext.extract(audio_dir / "a0.wav")
    assert 48 <= sum(durations) <= 50 and all(0 <= u < 4 for u in units)  # HuBERT: 49 frames per second


def test_manifest_in_two_shards_merges_to_the_single_run(fitted, audio_dir, tmp_path):
    from llasm import sharding

    single, out = tmp_path / "one" / "m.jsonl", tmp_path / "two" / "m.jsonl"
    assert main(["manifest", "--kmeans", str(fitted), "--input", str(audio_dir), "--output", str(single)]) == 0
    for index in range(2):
        assert main(["manifest", "--kmeans", str(fitted), "--input", str(audio_dir), "--output", str(out),
                     "--num-shards", "2", "--shard-index", str(index)]) == 0
    assert len(out.with_name("m.shard-00000-of-00002.jsonl").read_text().splitlines()) == 2  # clips 0 and 2
    assert sharding.merge(out, 2) == {"items": 3, "rejects": 0, "inputs": 3}
    assert out.read_text() == single.read_text()
