"""Real-time factor of token2wav on this CPU, for 10 s of speech: the demo's ``unit_mel`` (units ->
mel decoder -> MB-MelGAN, or Griffin-Lim; or unit selection over a corpus -> Griffin-Lim) against the
unit HiFi-GAN ``vocoder_cpu`` in the same run.

    .venv/bin/python bench/token2wav_rtf.py                                  # random weights, the demo's sizes
    .venv/bin/python bench/token2wav_rtf.py --token2wav outputs/speech-demo/token2wav --threads 2

RTF = synthesis time / audio duration (lower is faster; goal <= 0.1). Reports the best and the
median of ``--repeats`` runs (the best is the least disturbed by other processes on a shared CPU)
and, for ``unit_mel``, the share of the mel source (decoder or unit selection) vs the mel vocoder.
Speed does not depend on the weights; the random unit selection's corpus has ``--corpus-minutes`` of
random frames and units (the search's cost grows with the runs per unit); a trained token2wav dir
measures its own sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from llasm.speech.mel_decoder import UnitMelDecoder
from llasm.speech.mel_training import load_token2wav_configs
from llasm.speech.token2wav import Token2WavConfig, UnitMelToken2Wav, load_token2wav
from llasm.speech.unit_selection import UnitSelection, mel_frames
from llasm.speech.vocoder import UnitHifiGan
from llasm.speech.vocoder_config import FRAME_RATE, UnitVocoderConfig

GOAL_RTF = 0.1
ROOT = Path(__file__).resolve().parents[1]


def units_for(seconds: float, num_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Random deduplicated units of 1-4 frames summing to exactly ``seconds`` at 50 Hz."""
    rng = np.random.default_rng(0)
    frames = int(seconds * FRAME_RATE)
    durations = rng.integers(1, 5, size=frames)
    durations = durations[np.cumsum(durations) <= frames]
    durations[-1] += frames - durations.sum()
    return rng.integers(0, num_units, size=len(durations)), durations


def random_selection(num_units: int, mel, minutes: float, config) -> UnitSelection:
    """A unit selection over ``minutes`` of random units and log-mel frames: the search costs what a real
    corpus of that size costs (it grows with the runs per unit), whatever the frames say."""
    units, durations = units_for(60 * minutes, num_units)
    frames = np.random.default_rng(1).standard_normal((mel_frames(mel, int(durations.sum())) + 2, mel.num_mels),
                                                      np.float32) - 2
    return UnitSelection.from_corpus([units], [durations], [frames], num_units, mel, config)


def measure(token2wav, seconds: float, repeats: int) -> dict:
    units, durations = units_for(seconds, token2wav.num_units)
    token2wav.synthesize(units[:20], durations[:20])  # warm-up
    times, split = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        if isinstance(token2wav, UnitMelToken2Wav):  # recorded durations: the runs' own, as deployed
            mel = token2wav.log_mel(units, None if token2wav.recorded_durations else durations)
            middle = time.perf_counter()
            audio = token2wav.to_16k(token2wav.vocoder(mel))
            split.append((middle - start) / (time.perf_counter() - start))
        else:
            audio = token2wav.synthesize(units, durations)
        times.append(time.perf_counter() - start)
    seconds_out = len(audio) / token2wav.sampling_rate
    return {"best": min(times) / seconds_out, "median": statistics.median(times) / seconds_out,
            "decoder_share": statistics.median(split) if split else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token2wav", default=None, help="a trained token2wav dir (default: random, the demo's sizes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus-minutes", type=float, default=137.0,
                        help="the random unit selection's corpus (the speech demo's: 137 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    systems = {}
    if args.token2wav:
        systems[args.token2wav] = load_token2wav(args.token2wav, threads=args.threads)
    else:
        token2wav, decoder, _ = load_token2wav_configs(ROOT / "configs" / "token2wav_cpu.yaml")
        for vocoder in ("mb_melgan", "griffin_lim"):
            config = Token2WavConfig(mel_vocoder=vocoder, threads=args.threads,
                                     griffin_lim_iterations=token2wav.griffin_lim_iterations)
            systems[f"unit_mel decoder + {vocoder}"] = UnitMelToken2Wav(UnitMelDecoder(decoder), config)
        selection = random_selection(decoder.num_units, decoder.mel, args.corpus_minutes, token2wav.unit_selection)
        config = Token2WavConfig(mel_vocoder="griffin_lim", griffin_lim_iterations=token2wav.griffin_lim_iterations,
                                 mel_source="unit_selection", unit_selection=token2wav.unit_selection)
        systems[f"unit_mel unit selection ({args.corpus_minutes:g} min) + griffin_lim"] = UnitMelToken2Wav(
            UnitMelDecoder(decoder) if config.needs_decoder else None, config, selection=selection)
    baseline = UnitHifiGan(UnitVocoderConfig.from_yaml(ROOT / "configs" / "vocoder_cpu.yaml")).remove_weight_norm().eval()
    systems["unit_hifigan (configs/vocoder_cpu.yaml, baseline)"] = baseline
    print(f"torch {torch.__version__}, {args.threads} threads, {args.seconds:g} s of units, {args.repeats} runs")
    results = {name: measure(system, args.seconds, args.repeats) for name, system in systems.items()}
    base = results["unit_hifigan (configs/vocoder_cpu.yaml, baseline)"]["best"]
    for name, r in results.items():
        share = f"; mel source {100 * r['decoder_share']:.0f} % of it" if r["decoder_share"] is not None else ""
        print(f"{name}: RTF {r['best']:.4f} best, {r['median']:.4f} median ({r['best'] / base:.2f}x the baseline; "
              f"{'meets' if r['best'] <= GOAL_RTF else 'misses'} the goal {GOAL_RTF}){share}")


if __name__ == "__main__":
    main()
