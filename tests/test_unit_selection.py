"""Unit selection (llasm.speech.unit_selection): the corpus, the search, rendering, streaming, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llasm.speech.mel import MelConfig
from llasm.speech.token2wav import Token2WavConfig, UnitMelToken2Wav, load_token2wav
from llasm.speech.unit_selection import UnitSelection, UnitSelectionConfig, mel_frames, run_spans, unit_frame_of_mel
from tests.conftest import tone
from tests.test_token2wav import needs_mb_melgan, tiny_decoder

MEL = MelConfig()  # the MB-MelGAN's domain: 80 mel frames a second against 50 unit frames


def corpus(clips: int = 6, length: int = 40, num_units: int = 20, seed: int = 0):
    """Random clips: units without repeats, durations 1-4, a log-mel whose frames are all different."""
    rng = np.random.default_rng(seed)
    units, durations, mels = [], [], []
    for _ in range(clips):
        u = [int(rng.integers(num_units))]
        while len(u) < length:
            nxt = int(rng.integers(num_units))
            if nxt != u[-1]:
                u.append(nxt)
        d = rng.integers(1, 5, length)
        units.append(u)
        durations.append(d.tolist())
        frames = mel_frames(MEL, int(d.sum())) + 2  # a clip's log-mel runs past its last unit frame
        mels.append(rng.normal(-2, 1, (frames, MEL.num_mels)).astype(np.float32))
    return units, durations, mels


def test_run_spans_are_the_frames_the_length_regulator_gives_each_run():
    durations = np.random.default_rng(1).integers(0, 5, 50)
    begins, ends = run_spans(MEL, durations)
    frames = mel_frames(MEL, int(durations.sum()))
    reads = np.repeat(np.arange(len(durations)), durations)[unit_frame_of_mel(MEL, 0, frames)]
    for run in range(len(durations)):
        assert np.flatnonzero(reads == run).tolist() == list(range(begins[run], min(ends[run], frames)))
    # a run's span does not depend on the units after it (what streaming needs)
    assert run_spans(MEL, durations[:20])[1].tolist() == ends[:20].tolist()
    decoder = tiny_decoder()
    assert decoder.source_frames(0, frames).tolist() == unit_frame_of_mel(MEL, 0, frames).tolist()


def test_a_corpus_clip_is_spoken_back_with_its_own_frames():
    """Its own runs match every neighbour and duration and join for free: the search finds them."""
    units, durations, mels = corpus()
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL)
    for clip in (0, 3):
        mel = selection.generate(units[clip], durations[clip])
        assert mel.shape == (mel_frames(MEL, sum(durations[clip])), MEL.num_mels)
        np.testing.assert_allclose(mel, mels[clip][: len(mel)].astype(np.float16).astype(np.float32))


def test_new_sequences_use_corpus_frames_and_unseen_units_speak_silence():
    units, durations, mels = corpus(num_units=20)
    selection = UnitSelection.from_corpus(units, durations, mels, 30, MEL)  # ids 20-29 never seen
    corpus_frames = {tuple(f) for f in selection.frames.astype(np.float32)}
    sequence, lengths = [3, 7, 1, 25, 9, 4], [2, 3, 1, 4, 2, 2]
    mel = selection.generate(sequence, lengths)
    assert mel.shape == (mel_frames(MEL, sum(lengths)), MEL.num_mels)
    begins, ends = run_spans(MEL, lengths)
    for run in range(len(sequence)):
        for frame in mel[begins[run]: ends[run]]:
            if sequence[run] == 25:
                assert (frame == MEL.log_floor).all()
            else:
                assert tuple(frame) in corpus_frames
    with pytest.raises(ValueError, match=r"unit ids must lie in \[0, 30\)"):
        selection.generate([3, 30], [1, 1])
    with pytest.raises(ValueError, match="one non-negative count per unit"):
        selection.generate([3, 4], [1])
    with pytest.raises(ValueError, match="no units"):
        selection.generate([], [])


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_the_search_chooses_the_same_runs_when_units_arrive_one_by_one(lookahead):
    units, durations, mels = corpus(clips=8)
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL,
                                          UnitSelectionConfig(candidates=8, lookahead=lookahead))
    target_units, target_durations = corpus(clips=1, length=30, seed=5)[:2]
    target_units, target_durations = target_units[0], target_durations[0]
    whole = selection.search().extend(target_units, target_durations, final=True)
    assert len(whole) == len(target_units)
    search, grown = selection.search(), []
    for n in range(1, len(target_units) + 1):  # durations lag the units by two, as the decoder's do
        path = search.extend(target_units[:n], target_durations[: max(0, n - 2)])
        assert path[: len(grown)] == grown  # a choice, once made, stays
        assert len(path) <= max(0, min(n - 1, n - 2) - lookahead)
        grown = path
    assert search.extend(target_units, target_durations, final=True) == whole
    # any window of the rendering equals the same rows of the whole
    mel = selection.render(whole, target_durations)
    np.testing.assert_array_equal(selection.render(whole, target_durations, 7, 41), mel[7:41])


def test_an_eager_call_chooses_with_the_lookahead_that_came_and_the_search_goes_on():
    units, durations, mels = corpus(clips=8)
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL, UnitSelectionConfig(candidates=8, lookahead=3))
    target = corpus(clips=1, length=30, seed=5)[0][0]
    assert len(selection.search().extend(target[:6])) == 2  # 6 units: the 5 with both neighbours, less 3 ahead
    search = selection.search()
    first = search.extend(target[:6], eager=True)
    assert len(first) == 5  # every unit whose neighbours came
    assert search.extend(target[:12])[:5] == first  # the eager choices stay; the search goes on from them
    whole = search.extend(target, final=True)
    assert whole[:5] == first and len(whole) == len(target)


def test_the_first_chunk_without_context_comes_before_the_searchs_lookahead():
    """first_chunk_context=0 (chat_stream's default): the first chunk waits for its units' neighbours,
    not for the search's look-ahead; None (exact) waits for both."""
    t2w = selection_token2wav(durations="recorded")
    units = np.random.default_rng(3).integers(0, 20, 40).tolist()
    units = [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]
    pushed = {}
    for context in (0, None):
        stream = t2w.streamer(chunk_units=12, first_chunk_units=4, first_chunk_context=context)
        for n, unit in enumerate(units, 1):
            if stream.push(unit):
                pushed[context] = n
                break
    lookahead = t2w.selection.config.lookahead
    assert pushed == {0: 4 + 1, None: 4 + 1 + lookahead}
    fast = list(t2w.stream(iter(units), chunk_units=12, first_chunk_units=4, first_chunk_context=0))
    assert len(fast) >= 2 and all(len(c) for c in fast)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_recorded_durations_speak_each_chosen_run_at_its_own_length(lookahead):
    """No durations: no duration term, each run keeps its recorded mel frames; streaming = whole."""
    units, durations, mels = corpus(clips=8)
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL,
                                          UnitSelectionConfig(candidates=8, lookahead=lookahead))
    # a corpus clip without its durations comes back as its own runs: exactly its recorded frames
    mel = selection.generate(units[2])
    np.testing.assert_array_equal(mel, mels[2][: run_spans(MEL, durations[2])[1][-1]].astype(np.float16))
    target = corpus(clips=1, length=30, seed=5)[0][0]
    whole = selection.search().extend(target, None, final=True)
    mel = selection.render(whole)
    lengths = selection.end[whole] - selection.begin[whole]
    assert len(mel) == lengths.sum() == selection.spans(whole)[2]
    np.testing.assert_array_equal(mel[lengths[0]: lengths[0] + lengths[1]], selection.frames[
        selection.begin[whole[1]]: selection.end[whole[1]]].astype(np.float32))
    np.testing.assert_array_equal(selection.render(whole, None, 5, 33), mel[5:33])
    search, grown = selection.search(), []
    for n in range(1, len(target) + 1):
        path = search.extend(target[:n])
        assert path[: len(grown)] == grown and len(path) <= max(0, n - 1 - lookahead)
        grown = path
    assert search.extend(target, final=True) == whole
    with pytest.raises(ValueError, match="on every call of one search, or on none"):
        search.extend(target, [2] * len(target))


def test_a_lookahead_never_costs_more_than_greedy_choice():
    units, durations, mels = corpus(clips=8)
    target_units, target_durations = corpus(clips=1, length=30, seed=7)[:2]

    def cost(lookahead):
        selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL, UnitSelectionConfig(lookahead=lookahead))
        search = selection.search()
        search.extend(target_units[0], target_durations[0], final=True)
        return search.cost

    assert cost(len(target_units[0])) <= cost(0) + 1e-9  # a full-length horizon is the Viterbi path


def test_unit_distances_come_from_the_units_mean_frames():
    """0 to itself, symmetric, in [0, 1]; a unit the corpus never saw is 1 from all others."""
    units, durations, mels = corpus(num_units=20)
    selection = UnitSelection.from_corpus(units, durations, mels, 22, MEL)  # 20, 21 never seen
    d = selection.unit_distances()
    assert d.shape == (22, 22) and np.allclose(d, d.T) and (np.diag(d) == 0).all()
    assert d.min() >= 0 and d.max() <= 1 and (d[20, :20] == 1).all() and (d[:20, 21] == 1).all()
    # the median pair of seen units sits at the cap: half the pairs are closer
    pairs = d[:20, :20][~np.eye(20, dtype=bool)]
    assert 0.4 < (pairs < 1).mean() < 0.6
    # from each unit's mean frame over the runs it covers (counted here the slow way)
    frames = {}
    for u, dur, mel in zip(units, durations, mels):
        for unit, begin, end in zip(u, *run_spans(MEL, dur, len(mel))):
            frames.setdefault(int(unit), []).extend(mel[begin:end].astype(np.float16).astype(np.float64))
    means = np.stack([np.mean(frames[u], 0) for u in range(20)])
    raw = np.sqrt(((means[:, None] - means[None]) ** 2).mean(-1))
    expected = np.minimum(raw / np.median(raw[~np.eye(20, dtype=bool)]), 1)
    np.testing.assert_allclose(d[:20, :20], expected, atol=1e-5)


def test_acoustic_context_ranks_a_run_beside_a_similar_unit_first():
    """No run of unit 2 follows unit 0; the one after unit 1 (which sounds like 0) costs less than
    the one after unit 3 (which does not) — with exact matching both cost a whole mismatch."""
    rng = np.random.default_rng(0)
    sound = {0: -1.0, 1: -1.1, 2: -3.0, 3: 2.0, 4: -5.0}
    units, durations, mels = [[3, 2, 4], [1, 2, 4], [0, 4]], [[2, 2, 2], [2, 2, 2], [2, 2]], []
    for u, d in zip(units, durations):
        level = np.zeros(mel_frames(MEL, sum(d)))
        for i, b, e in zip(u, *run_spans(MEL, d)):
            level[b:e] = sound[i]
        mels.append((level[:, None] + rng.normal(0, 0.01, (len(level), MEL.num_mels))).astype(np.float32))
    for match, expected in (("exact", [1.0, 1.0]), ("acoustic", None)):
        selection = UnitSelection.from_corpus(units, durations, mels, 5, MEL, UnitSelectionConfig(context_match=match))
        runs, cost = selection.candidates(2, previous=0, following=4, target_frames=None)
        by_clip = dict(zip(selection.clip[runs].tolist(), cost.tolist()))
        if expected:
            assert [by_clip[0], by_clip[1]] == expected
        else:
            assert by_clip[1] < 0.2 < 0.9 < by_clip[0] and runs[0] == np.flatnonzero(selection.clip == 1)[1]
    with pytest.raises(ValueError, match="context_match must be one of"):
        UnitSelectionConfig(context_match="fuzzy")


def test_config_and_corpus_checks():
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        UnitSelectionConfig(candidates=0)
    with pytest.raises(ValueError, match="lookahead must be >= 0"):
        UnitSelectionConfig(lookahead=-1)
    with pytest.raises(ValueError, match="join_weight must be >= 0"):
        UnitSelectionConfig(join_weight=-1)
    frames = np.zeros((4, MEL.num_mels))
    with pytest.raises(ValueError, match=r"unit ids must lie in \[0, 5\)"):
        UnitSelection(frames, [7], [0], [2], [0], 5, MEL)
    with pytest.raises(ValueError, match="at least one frame inside frames"):
        UnitSelection(frames, [1], [2], [9], [0], 5, MEL)
    with pytest.raises(ValueError, match=r"frames must be \(F, 80\)"):
        UnitSelection(np.zeros((4, 3)), [1], [0], [2], [0], 5, MEL)


def selection_token2wav(vocoder: str = "griffin_lim", durations: str = "predicted") -> UnitMelToken2Wav:
    """With predicted durations (the tiny decoder's) or recorded ones (no decoder)."""
    units, durations_, mels = corpus(clips=6, num_units=20)
    selection = UnitSelection.from_corpus(units, durations_, mels, 20, MEL)
    config = Token2WavConfig(mel_vocoder=vocoder, griffin_lim_iterations=2, threads=1, mel_source="unit_selection",
                             unit_selection=UnitSelectionConfig(durations=durations))
    return UnitMelToken2Wav(tiny_decoder() if durations == "predicted" else None, config, selection=selection)


def test_token2wav_without_a_decoder_speaks_recorded_durations_and_saves_no_decoder(tmp_path):
    t2w = selection_token2wav(durations="recorded")
    units = [3, 7, 1, 9, 4, 12, 5]
    assert t2w.decoder is None and t2w.num_units == 20 and t2w.recorded_durations
    assert len(t2w.synthesize(units)) > 0
    t2w.save_pretrained(tmp_path / "t2w")
    assert sorted(p.name for p in (tmp_path / "t2w").iterdir()) == ["token2wav.json", "unit_selection.safetensors"]
    loaded = load_token2wav(tmp_path / "t2w")
    assert loaded.decoder is None and loaded.selection.mel == MEL and loaded.num_units == 20
    np.testing.assert_array_equal(loaded.log_mel(units), t2w.log_mel(units))
    with pytest.raises(FileNotFoundError):  # predicted durations need the decoder this folder has not
        load_token2wav(tmp_path / "t2w", unit_selection={"durations": "predicted"})
    with pytest.raises(ValueError, match="no mel decoder"):
        UnitMelToken2Wav(None, Token2WavConfig(mel_vocoder="griffin_lim"))
    with pytest.raises(ValueError, match="durations must be one of"):
        UnitSelectionConfig(durations="guessed")
    for bad in ([1.5, 2.0], [[1, 2], [3, 4]]):  # neither speaks: ids are whole numbers in a flat list
        with pytest.raises(ValueError, match="1-D sequence of integer ids"):
            t2w.synthesize(bad)
        with pytest.raises(ValueError, match="1-D sequence of integer ids"):
            tiny_decoder().unit_tensor(bad)


def test_token2wav_with_unit_selection_saves_loads_and_checks(tmp_path):
    t2w = selection_token2wav()
    units = [3, 7, 1, 9, 4, 12, 5]
    audio = t2w.synthesize(units)
    assert audio.dtype == np.float32 and len(audio) > 0
    given = t2w.synthesize(units, durations=[2] * 7)
    assert len(given) == round(mel_frames(MEL, 14) * MEL.hop_size * 16000 / MEL.sampling_rate)
    t2w.save_pretrained(tmp_path / "t2w")
    loaded = load_token2wav(tmp_path / "t2w")
    assert loaded.config.mel_source == "unit_selection" and loaded.selection.num_runs == t2w.selection.num_runs
    np.testing.assert_array_equal(loaded.log_mel(units), t2w.log_mel(units))
    # the saved costs travel in token2wav.json; a load may override them
    tuned = load_token2wav(tmp_path / "t2w", unit_selection={"candidates": 3, "lookahead": 0})
    assert tuned.selection.config.candidates == 3
    (tmp_path / "t2w" / "unit_selection.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no unit_selection.safetensors"):
        load_token2wav(tmp_path / "t2w")
    with pytest.raises(ValueError, match="mel_source is 'unit_selection' but a unit selection was not given"):
        UnitMelToken2Wav(tiny_decoder(), Token2WavConfig(mel_vocoder="griffin_lim", mel_source="unit_selection"))
    with pytest.raises(ValueError, match="has 20 units, the decoder 30"):
        UnitMelToken2Wav(tiny_decoder(num_units=30), t2w.config, selection=t2w.selection)
    with pytest.raises(ValueError, match="mel_source must be one of"):
        Token2WavConfig(mel_source="lookup")
    with pytest.raises(ValueError, match="one non-negative count per unit"):
        t2w.synthesize(units, durations=[1, 2])
    # durations that give no frame say nothing, through either mel source
    for token2wav in (t2w, UnitMelToken2Wav(tiny_decoder(), Token2WavConfig(mel_vocoder="griffin_lim"))):
        assert token2wav.synthesize([1, 2, 3], [0, 0, 0]).shape == (0,)


@needs_mb_melgan
@pytest.mark.parametrize("durations", ["predicted", "recorded"])
def test_mb_melgan_stream_of_selected_frames_equals_whole_synthesis(durations):
    t2w = selection_token2wav("mb_melgan", durations)
    units = np.random.default_rng(2).integers(0, 20, 60).tolist()
    units = [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]
    whole = t2w.synthesize(units)
    pieces = [units[i: i + 3] for i in range(0, len(units), 3)]
    chunks = list(t2w.stream(iter(pieces), chunk_units=12))
    assert len(chunks) >= 3
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() <= 1e-4 * max(1e-6, np.abs(whole).max())


@pytest.mark.parametrize("durations", ["predicted", "recorded"])
def test_trainer_builds_the_unit_selection_from_its_rows(tmp_path, durations):
    """Predicted durations train the decoder; recorded ones need none: no steps, no checkpoints, no decoder."""
    from llasm.audio import save_audio
    from llasm.io import write_jsonl
    from llasm.speech.mel_training import MelTrainConfig, UnitMelTrainer, load_token2wav_configs

    rows = []
    for i in range(2):
        save_audio(tmp_path / f"c{i}.wav", tone(1.0, seed=i, freq=150.0 + 50 * i))
        order = list(range(20)) if i == 0 else list(range(19, -1, -1))  # no unit twice in one context
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "units": order, "durations": [2] * 20})
    write_jsonl(tmp_path / "m.jsonl", rows)
    t2w_config, decoder_config, _ = load_token2wav_configs("configs/token2wav_cpu.yaml", [
        "mel_decoder.num_units=20", "mel_decoder.hidden_size=16", "mel_decoder.encoder_layers=1",
        "mel_decoder.decoder_layers=1", "token2wav.mel_vocoder=griffin_lim", "token2wav.griffin_lim_iterations=2",
        "token2wav.mel_source=unit_selection", "token2wav.unit_selection.candidates=4",
        f"token2wav.unit_selection.durations={durations}"])
    trainer = UnitMelTrainer(t2w_config, decoder_config, MelTrainConfig(
        train_manifest=str(tmp_path / "m.jsonl"), output_dir=str(tmp_path / "out"), batch_size=2, segment_frames=30,
        max_steps=2, sample_every=2, checkpoint_every=0, progress=False, warmup_steps=1))
    trainer.train()
    t2w = load_token2wav(tmp_path / "out")
    assert t2w.selection is not None and t2w.selection.config.candidates == 4
    assert t2w.selection.num_runs == 40  # every run of both clips covers a mel frame at 2 x 20 ms
    # a training row spoken with its own durations is its own recording's frames
    target = trainer.dataset.mels[0]
    mel = t2w.log_mel(rows[0]["units"], rows[0]["durations"])
    np.testing.assert_allclose(mel, target[: len(mel)].astype(np.float16).astype(np.float32))
    step = 2 if durations == "predicted" else 0
    assert (tmp_path / "out" / "samples" / f"step_{step:08d}.png").exists()
    if durations == "predicted":
        assert torch.is_tensor(next(t2w.decoder.parameters()))
        return
    assert trainer.step == 0 and trainer.model is None and t2w.decoder is None
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "mel_decoder.safetensors").exists()
    # without durations its runs come back at their recorded lengths: the same frames again
    np.testing.assert_array_equal(t2w.log_mel(rows[0]["units"]), mel)


def test_selection_bench_leaves_a_clip_out_and_picks_dev_clips(tmp_path):
    """bench/unit_selection.py: a left-out clip is spoken from the other clips' frames only."""
    import importlib.util

    from llasm.io import write_jsonl

    spec = importlib.util.spec_from_file_location("unit_selection_bench", "bench/unit_selection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    units, durations, mels = corpus(clips=4)
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL)
    without = bench.leave_out(selection, 2)
    assert without.num_runs == selection.num_runs - int((selection.clip == 2).sum())
    path = without.search().extend(units[2], durations[2], final=True)
    assert not (without.clip[path] == 2).any()
    own = selection.search().extend(units[2], durations[2], final=True)
    assert (selection.clip[own] == 2).all()  # with it, the clip speaks itself back

    demo = tmp_path / "demo"
    write_jsonl(demo / "data" / "token2wav_train.jsonl", [
        {"id": f"{lang}{i}", "audio": "x.flac", "units": [1, 2], "durations": [1, 1]} for lang in ("en", "zh") for i in range(3)])
    write_jsonl(demo / "data" / "clips.jsonl", [
        {"id": f"{lang}{i}", "lang": lang, "split": "train", "text": f"{lang} {i}"} for lang in ("en", "zh") for i in range(3)])
    picked = bench.dev_clips(demo, 2)
    assert [p["lang"] for p in picked] == ["en", "en", "zh", "zh"]
    assert all(p["text"] == f"{p['lang']} {p['clip'] % 3}" for p in picked)
    assert len({p["clip"] for p in picked}) == 4


def test_selection_bench_rejects_bad_arguments_before_any_arm_runs(tmp_path):
    """bench/unit_selection.py exits with an argument error naming the folder or the arm, before it
    loads the judge or speaks anything."""
    import json
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "bench/unit_selection.py", *args], capture_output=True, text=True, timeout=120)

    missing = run("--demo", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no token2wav/token2wav.json" in missing.stderr
    (tmp_path / "token2wav").mkdir()
    (tmp_path / "token2wav" / "token2wav.json").write_text(json.dumps({"type": "unit_mel", "mel_source": "decoder"}))
    decoder = run("--demo", str(tmp_path))
    assert decoder.returncode == 2 and "mel_source is 'decoder', not unit_selection" in decoder.stderr
    (tmp_path / "token2wav" / "token2wav.json").write_text(json.dumps({"type": "unit_mel", "mel_source": "unit_selection"}))
    empty = run("--demo", str(tmp_path))
    assert empty.returncode == 2 and "missing" in empty.stderr and "data/answers.jsonl" in empty.stderr
    for name in ("data/answers.jsonl", "data/clips.jsonl", "data/token2wav_train.jsonl", "kmeans/kmeans.json",
                 "kmeans/kmeans.safetensors"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("{}")
    bad = run("--demo", str(tmp_path), "--arm", "fine=", "--arm", "typo=unit_selection.candidatez=3")
    assert bad.returncode == 2 and "arm 'typo'" in bad.stderr and "candidatez" in bad.stderr
    top = run("--demo", str(tmp_path), "--arm", "x=foo=3")
    assert top.returncode == 2 and "unknown config key 'foo'" in top.stderr
    twice = run("--demo", str(tmp_path), "--arm", "a=", "--arm", "a=bound.mel=4")
    assert twice.returncode == 2 and "arm names must differ (the table keys its rows by them): 'a'" in twice.stderr
    bound = run("--demo", str(tmp_path), "--arm", "a=", "--arm", "b=bound.=1")
    assert bound.returncode == 2 and "arm 'b': unknown 'bound.'; the bounds are bound.pitch, bound.mel" in bound.stderr
    infinite = run("--demo", str(tmp_path), "--arm", "a=bound.mel=inf")
    assert infinite.returncode == 2 and "bound.mel must be a finite number, got 'inf'" in infinite.stderr


def load_selection_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("unit_selection_bench", "bench/unit_selection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_selection_bench_bounds_settings_and_the_true_mel_search(monkeypatch):
    """bench/unit_selection.py's bounds: ``bound.*`` settings are split from the token2wav overrides and
    checked; with the true mel and any unit allowed, a clip in the corpus speaks itself back from units
    that are all wrong; with the true pitch, of two recordings of one clip the one at that pitch; the true sound
    of audio comes per unit run; a missing pitch tracker says what to install."""
    bench = load_selection_bench()
    rest, bound = bench.split_bounds(["unit_selection.candidates=40", "bound.mel=4", "bound.any_unit=1"])
    assert rest == ["unit_selection.candidates=40"] and bound == {**bench.BOUNDS, "mel": 4.0, "any_unit": 1.0}
    for overrides, message in ((["bound.mle=4"], "unknown 'bound.mle'; did you mean 'bound.mel'?"),
                               (["bound.mel=high"], "bound.mel must be a finite number, got 'high'"),
                               (["bound.any_unit=1"], "1 needs bound.mel > 0"),
                               (["bound.corpus=0"], "bound.corpus is a fraction of the clips in (0, 1], got 0.0"),
                               (["bound.pitch=-1"], "must be >= 0")):
        with pytest.raises(ValueError) as err:
            bench.split_bounds(overrides)
        assert message in str(err.value)

    units, durations, mels = corpus(clips=4)
    selection = UnitSelection.from_corpus(units, durations, mels, 20, MEL)
    run_mel, run_pitch, scale = bench.corpus_sounds(selection, [], pitch=False)
    own = np.flatnonzero(selection.clip == 2)
    first = slice(selection.begin[own[0]], selection.end[own[0]])
    np.testing.assert_allclose(run_mel[own[0]], selection.frames[first].astype(np.float32).mean(0), rtol=1e-5)
    wrong = [(u + 1) % 20 for u in units[2]]
    true_mel = bench.BoundSelection(selection, np.ones(selection.num_runs, bool), bound, run_mel, run_pitch, scale)
    assert true_mel.speaking({"mel": run_mel[own]}).search().extend(wrong, None, final=True) == own.tolist()
    plain = UnitSelection.from_corpus(units, durations, mels, 20, MEL)
    assert not (plain.clip[plain.search().extend(wrong, None, final=True)] == 2).all()  # the units alone cannot

    # the true pitch: of two recordings of the same units an octave apart, the search takes the one at the pitch
    twice = UnitSelection.from_corpus([units[0], units[0]], [durations[0]] * 2, [mels[0], mels[0] + 0.01], 20, MEL)
    run_pitch = np.where(twice.clip == 1, np.log(200.0), np.log(100.0))
    run_mel, _, scale = bench.corpus_sounds(twice, [], pitch=False)
    pitched = bench.BoundSelection(twice, np.ones(twice.num_runs, bool), {**bench.BOUNDS, "pitch": 1.0}, run_mel,
                                   run_pitch, scale)
    assert (twice.clip[twice.search().extend(units[0], None, final=True)] == 0).all()  # the units alone: the first
    for octave, clip in ((np.log(200.0), 1), (np.log(100.0), 0)):
        target = {"mel": run_mel[twice.clip == 0], "pitch": np.full(len(units[0]), octave)}
        assert (twice.clip[pitched.speaking(target).search().extend(units[0], None, final=True)] == clip).all()

    sound = bench.TrueSound(selection, pitch=False)(tone(1.0), [10] * 5)
    assert sound["mel"].shape == (5, MEL.num_mels) and np.isfinite(sound["mel"]).all()
    monkeypatch.setitem(__import__("sys").modules, "parselmouth", None)
    with pytest.raises(SystemExit, match="pip install praat-parselmouth"):
        bench.log_f0(tone(1.0), 80, 0.0125)
