"""Unit vocoder: shapes, duration path, weight norm, streaming, losses, resumable training, I/O."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llasm.speech.discriminators import (
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    duration_loss,
    feature_loss,
    generator_loss,
)
from llasm.speech.vocoder import UnitHifiGan
from llasm.speech.vocoder_config import UnitVocoderConfig, VocoderTrainConfig, load_vocoder_configs
from llasm.speech.vocoder_training import MelSpectrogram, UnitAudioDataset, VocoderTrainer

ROOT = Path(__file__).resolve().parents[1]
HOP = 320


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add synchronisation (seconds per step on a busy CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(**overrides) -> UnitVocoderConfig:
    values = dict(
        num_units=20, embedding_dim=16, upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1]], segment_size=1280, n_fft=256, hop_size=64, win_size=256,
        num_mels=20, discriminator_channel_divisor=32,
    )  # fmt: skip
    values.update(overrides)
    return UnitVocoderConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> UnitHifiGan:
    torch.manual_seed(seed)
    model = UnitHifiGan(tiny_config(**overrides)).eval()
    with torch.no_grad():  # HiFi-GAN's N(0, 0.01) init gives ~1e-4 outputs; scale up so comparisons mean something
        model.conv_post.parametrizations.weight.original0.mul_(100)
    return model


def test_output_length_is_320_samples_per_frame():
    model = tiny_model()
    units = torch.tensor([[3, 7, 1, 19], [0, 2, 4, 6]])
    durations = torch.tensor([[1, 2, 3, 4], [4, 3, 2, 1]])
    audio = model(units, durations)
    assert audio.shape == (2, 1, HOP * 10)
    assert audio.abs().max() <= 1
    synthesized = model.synthesize([3, 7, 1], [2, 1, 5])
    assert synthesized.dtype == np.float32 and synthesized.shape == (HOP * 8,)
    with pytest.raises(ValueError, match="different frame counts"):
        model(units, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        model.synthesize([3, 25])


def test_duration_predictor_path():
    model = tiny_model()
    units = [5, 9, 2, 11, 7]
    predicted = model.predict_durations(torch.tensor([units]))
    assert predicted.shape == (1, 5) and (predicted >= 1).all()
    audio = model.synthesize(units)  # no durations -> predicted ones
    assert len(audio) == HOP * int(predicted.sum())
    assert np.array_equal(audio, model.synthesize(units, predicted[0].numpy()))
    # without a predictor the units are taken as frame-level
    plain = tiny_model(duration_predictor=False)
    assert plain.duration_predictor is None
    assert len(plain.synthesize(units)) == HOP * len(units)
    # the duration loss is MSE on log(d + 1) over whole units only
    log_pred = torch.log(torch.tensor([[2.0, 3.0, 9.0]]))
    durations, mask = torch.tensor([[1, 2, 5]]), torch.tensor([[True, True, False]])
    assert duration_loss(log_pred, durations, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_remove_weight_norm_keeps_outputs():
    model = tiny_model()
    units, durations = torch.tensor([[1, 4, 8, 2, 6]]), torch.tensor([[2, 1, 3, 1, 2]])
    with torch.no_grad():
        before = model(units, durations)
        model.remove_weight_norm()
        after = model(units, durations)
    assert not model.has_weight_norm
    assert not any("parametrizations" in key for key in model.state_dict())
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_predictor", [True, False])
def test_stream_concatenates_to_full_synthesis(with_predictor):
    model = tiny_model(duration_predictor=with_predictor)
    units = np.random.default_rng(0).integers(0, 20, size=120)
    full = model.synthesize(units)
    arrivals = [units[i : i + 7].tolist() for i in range(0, len(units), 7)]  # units arrive 7 at a time
    chunks = list(model.stream(iter(arrivals), chunk_units=20))
    assert len(chunks) > 2
    streamed = np.concatenate(chunks)
    assert streamed.shape == full.shape
    # tolerance: 1e-5 of the peak (context covers the receptive field, so only float rounding differs)
    assert np.abs(streamed - full).max() <= 1e-5 * np.abs(full).max()
    assert list(model.stream(iter([]))) == []


def test_stream_first_chunk_comes_early():
    """The first chunk needs only ``first_chunk_units`` final units; the audio is unchanged."""
    from llasm.speech.vocoder import VocoderStream

    model = tiny_model(duration_predictor=False)
    units = np.random.default_rng(1).integers(0, 20, size=80)
    context = model.receptive_field_frames()
    early, late = (VocoderStream(model, chunk_units=40, first_chunk_units=5),
                   VocoderStream(model, chunk_units=40, first_chunk_units=40))
    arrivals = [units[i : i + 4].tolist() for i in range(0, len(units), 4)]
    first = {}
    for name, stream in (("early", early), ("late", late)):
        chunks = []
        for n, part in enumerate(arrivals):
            got = stream.push(part)
            if got and name not in first:
                first[name] = n
            chunks += got
        chunks += stream.finish()
        np.testing.assert_allclose(np.concatenate(chunks), model.synthesize(units), atol=1e-5 * 10, rtol=0)
    # without a duration predictor a unit is one frame: audio is ready once >= 5 units and more frames
    # than the right context arrived (4 units per push)
    assert first["early"] == min(n for n in range(len(arrivals)) if 4 * (n + 1) >= 5 and 4 * (n + 1) > context)
    assert first["early"] < first["late"]
    with pytest.raises(ValueError, match="first_chunk_units"):
        VocoderStream(model, first_chunk_units=0)


def test_stream_first_chunk_without_right_context():
    """first_chunk_context=0: the first chunk comes sooner; only its last receptive field may differ."""
    from llasm.speech.vocoder import VocoderStream

    model = tiny_model(duration_predictor=False)
    units = np.random.default_rng(2).integers(0, 20, size=60)
    context = model.receptive_field_frames()
    full = model.synthesize(units)
    arrivals = [units[i : i + 4].tolist() for i in range(0, len(units), 4)]
    results = {}
    for name, first_context in (("exact", None), ("fast", 0)):
        stream, chunks, first = VocoderStream(model, chunk_units=12, first_chunk_units=4, first_chunk_context=first_context), [], None
        for n, part in enumerate(arrivals):
            got = stream.push(part)
            if got and first is None:
                first = n
            chunks += got
        chunks += stream.finish()
        results[name] = (first, chunks)
    assert results["fast"][0] == 0 < results["exact"][0]  # 4 units are enough at once
    fast = np.concatenate(results["fast"][1])
    assert fast.shape == full.shape
    boundary = len(results["fast"][1][0])  # samples in the first chunk
    outside = np.ones(len(full), dtype=bool)
    outside[max(0, boundary - context * HOP) : boundary] = False
    assert np.abs(fast - full)[outside].max() <= 1e-5 * np.abs(full).max()


def test_discriminator_shapes_and_losses():
    torch.manual_seed(0)
    y, y_hat = torch.randn(2, 1, 1280) * 0.1, torch.randn(2, 1, 1280) * 0.1
    mpd, msd = MultiPeriodDiscriminator(divisor=32), MultiScaleDiscriminator(divisor=32)
    real, fake, real_maps, fake_maps = mpd(y, y_hat)
    assert len(real) == len(fake) == 5 and all(len(m) == 6 for m in real_maps)
    for period, score, maps in zip((2, 3, 5, 7, 11), real, real_maps):
        assert score.shape[0] == 2 and score.ndim == 2
        assert maps[0].shape[-1] == period  # (B, C, T / p, p)
    losses = [discriminator_loss(real, fake), generator_loss(fake), feature_loss(real_maps, fake_maps)]
    real, fake, real_maps, fake_maps = msd(y, y_hat)
    assert len(real) == 3 and all(len(m) == 8 for m in real_maps)
    assert real[0].shape[-1] > real[1].shape[-1] > real[2].shape[-1]  # x1, x1/2, x1/4
    assert "parametrizations.weight.0._u" in "".join(msd.discriminators[0].state_dict())  # spectral norm
    losses += [discriminator_loss(real, fake), generator_loss(fake), feature_loss(real_maps, fake_maps)]
    mel = MelSpectrogram(tiny_config())
    losses.append(torch.nn.functional.l1_loss(mel(y), mel(y_hat)) * 45)
    assert mel(y).shape == (2, 20, 1280 // 64)
    assert all(torch.isfinite(loss) for loss in losses)


def write_sine_dataset(folder: Path, rows: int = 3) -> Path:
    """Sine waves whose pitch follows fake units (unit u -> 100 + 40 u Hz), 16 kHz wav."""
    rng = np.random.default_rng(0)
    manifest = []
    for i in range(rows):
        units = rng.choice(20, size=12, replace=True)
        units = units[np.r_[True, units[1:] != units[:-1]]]  # deduplicated
        durations = rng.integers(1, 4, size=len(units))
        frequency = np.repeat(100 + 40 * units, durations * HOP)
        audio = 0.5 * np.sin(2 * np.pi * np.cumsum(frequency) / 16000)
        sf.write(folder / f"clip{i}.wav", audio.astype(np.float32), 16000)
        row = {"id": f"clip{i}", "audio": f"clip{i}.wav", "units": units.tolist(), "durations": durations.tolist()}
        manifest.append(row)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in manifest))
    return path


def test_dataset_segments_align_to_unit_frames(tmp_path):
    config = tiny_config()
    dataset = UnitAudioDataset(write_sine_dataset(tmp_path), config, seed=1)
    batch = dataset.batch(0, 2)
    assert batch["audio"].shape == (2, 1280)
    assert (batch["durations"].sum(dim=1) == 1280 // HOP).all()
    assert batch["units"].shape == batch["duration_mask"].shape
    again = dataset.batch(0, 2)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # a pure function of (seed, step)


def train_config(tmp_path: Path, manifest: Path, **overrides) -> VocoderTrainConfig:
    values = dict(
        train_manifest=str(manifest), output_dir=str(tmp_path / "run"), batch_size=2, max_steps=3,
        checkpoint_every=3, sample_every=2, log_every=1, seed=7, progress=False,
    )  # fmt: skip
    values.update(overrides)
    return VocoderTrainConfig(**values)


def test_training_checkpoint_and_exact_resume(tmp_path):
    manifest = write_sine_dataset(tmp_path)
    config = tiny_config()
    first = VocoderTrainer(config, train_config(tmp_path, manifest)).train()
    run = tmp_path / "run"
    assert [r["step"] for r in first] == [1, 2, 3]
    assert (run / "checkpoints" / "step_00000003" / "state.safetensors").exists()
    assert (run / "samples" / "step_00000002.wav").exists() and (run / "samples" / "step_00000002.png").exists()
    assert (run / "vocoder.safetensors").exists() and (run / "vocoder_config.json").exists()

    with pytest.raises(ValueError, match=r"another config or data(.|\n)*train.batch_size: 2 -> 3"):
        VocoderTrainer(config, train_config(tmp_path, manifest, max_steps=4, batch_size=3))
    with open(run / "log.jsonl", "a") as log:  # a run killed after logging past its checkpoint
        log.write('{"step": 4, "loss_g": 9.0}\n{"step": 5, "lo')
    resumed_trainer = VocoderTrainer(config, train_config(tmp_path, manifest, max_steps=4))
    assert resumed_trainer.step == 3
    resumed = resumed_trainer.train()
    assert [r["step"] for r in resumed] == [4]
    assert [json.loads(line)["step"] for line in open(run / "log.jsonl")] == [1, 2, 3, 4]  # each step once

    uninterrupted = train_config(tmp_path, manifest, max_steps=4, output_dir=str(tmp_path / "b"))
    straight = VocoderTrainer(config, uninterrupted).train()
    for key in ("loss_g", "loss_d", "mel_l1", "dur"):
        assert resumed[0][key] == pytest.approx(straight[3][key], abs=1e-5), key
        assert np.isfinite(straight[3][key])
    vocoder = UnitHifiGan.from_pretrained(run)
    assert len(vocoder.synthesize([1, 2, 3], [1, 1, 1])) == 3 * HOP


def test_gan_starts_after_mel_only_warmup(tmp_path):
    """Before gan_start_step only the generator learns (mel L1 + duration); the discriminators stay put."""
    manifest = write_sine_dataset(tmp_path)
    config = tiny_config()
    config.gan_start_step = 2
    trainer = VocoderTrainer(config, train_config(tmp_path, manifest, sample_every=0, checkpoint_every=100))
    before = {k: v.clone() for k, v in trainer.mpd.state_dict().items()}
    history = trainer.train()
    assert [r["loss_d"] for r in history[:2]] == [0.0, 0.0] and [r["adv"] for r in history[:2]] == [0.0, 0.0]
    assert history[2]["loss_d"] > 0 and history[2]["adv"] > 0
    assert history[0]["loss_g"] == pytest.approx(45 * history[0]["mel_l1"] + history[0]["dur"], rel=1e-5)
    after = trainer.mpd.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # step 3 trained them


def test_non_finite_loss_names_the_step(tmp_path):
    manifest = write_sine_dataset(tmp_path)
    trainer = VocoderTrainer(tiny_config(), train_config(tmp_path, manifest, sample_every=0))
    trainer.optim_g.param_groups[0]["lr"] = float("nan")  # step 1 leaves NaN weights; step 2 must stop
    with pytest.raises(FloatingPointError, match=r"step 2: .* loss is nan"):
        trainer.train()


def test_from_pretrained_round_trip(tmp_path):
    model = tiny_model(seed=3)
    units, durations = [4, 8, 15, 16, 2], [1, 3, 2, 1, 2]
    expected = model.synthesize(units, durations)
    model.save_pretrained(tmp_path)
    exact = UnitHifiGan.from_pretrained(tmp_path, for_inference=False)
    assert exact.has_weight_norm and np.array_equal(exact.synthesize(units, durations), expected)
    inference = UnitHifiGan.from_pretrained(tmp_path)
    assert not inference.has_weight_norm and not inference.training
    np.testing.assert_allclose(inference.synthesize(units, durations), expected, atol=1e-6)
    inference.save_pretrained(tmp_path / "folded")  # a weight-norm-free export reloads bit-identically
    again = UnitHifiGan.from_pretrained(tmp_path / "folded")
    assert np.array_equal(again.synthesize(units, durations), inference.synthesize(units, durations))


def test_configs_load_with_overrides(tmp_path):
    paper, train = load_vocoder_configs(ROOT / "configs" / "vocoder.yaml")
    assert paper.num_units == 1000 and paper.samples_per_frame == 320 and paper.segment_size == 8960
    assert paper.upsample_kernel_sizes == [11, 8, 8, 4, 4] and paper.adam_betas == [0.8, 0.99]
    cpu, cpu_train = load_vocoder_configs(
        ROOT / "configs" / "vocoder_cpu.yaml", ["vocoder.upsample_initial_channel=64", "max_steps=5"]
    )
    assert cpu.samples_per_frame == 320 and cpu.upsample_initial_channel == 64 and cpu_train.max_steps == 5
    with pytest.raises(ValueError, match="unknown config key .vocoder.nonsense."):
        load_vocoder_configs(ROOT / "configs" / "vocoder_cpu.yaml", ["vocoder.nonsense=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("vocoder: {}\ntrian: {max_steps: 3}\n")
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['trian'\]; did you mean 'train'\?"):
        load_vocoder_configs(bad)
    with pytest.raises(ValueError, match="samples per frame"):
        UnitVocoderConfig(upsample_rates=[5, 4, 4, 2], upsample_kernel_sizes=[11, 8, 8, 4])


def test_no_unsafe_torch_load():
    for path in [*sorted((ROOT / "llasm").rglob("*.py")), ROOT / "train" / "train_vocoder.py",
                 ROOT / "bench" / "vocoder_rtf.py"]:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_from_fairseq_checkpoint(tmp_path):
    """A fairseq CodeHiFiGAN checkpoint (old-style weight_g / weight_v, ``dict.``) loads and matches."""
    model = tiny_model(seed=5)
    fairseq_state = {}
    for key, tensor in model.state_dict().items():
        key = key.replace("unit_embedding.", "dict.").replace("duration_predictor.", "dur_predictor.")
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        fairseq_state[key] = tensor
    torch.save({"generator": fairseq_state}, tmp_path / "g_00000001")
    c = model.config
    (tmp_path / "config.json").write_text(json.dumps({
        "num_embeddings": c.num_units, "embedding_dim": c.embedding_dim, "model_in_dim": c.embedding_dim,
        "upsample_rates": c.upsample_rates, "upsample_kernel_sizes": c.upsample_kernel_sizes,
        "upsample_initial_channel": c.upsample_initial_channel, "resblock": "1",
        "resblock_kernel_sizes": c.resblock_kernel_sizes, "resblock_dilation_sizes": c.resblock_dilation_sizes,
        "segment_size": c.segment_size, "num_mels": c.num_mels, "n_fft": c.n_fft, "hop_size": c.hop_size,
        "win_size": c.win_size, "sampling_rate": 16000, "fmin": 0, "fmax": 8000,
        "dur_predictor_params": {"encoder_embed_dim": c.embedding_dim, "var_pred_hidden_dim": c.embedding_dim,
                                 "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
    }))  # fmt: skip
    loaded = UnitHifiGan.from_fairseq(tmp_path / "g_00000001", tmp_path / "config.json")
    units = [1, 5, 9, 13]
    np.testing.assert_allclose(loaded.synthesize(units), model.synthesize(units), atol=1e-6)
