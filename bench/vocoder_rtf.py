"""Real-time factor of the unit vocoder on this CPU (2 threads), for 10 s of speech.

    .venv/bin/python bench/vocoder_rtf.py                      # configs/vocoder_cpu.yaml + configs/vocoder.yaml
    .venv/bin/python bench/vocoder_rtf.py configs/vocoder_cpu.yaml --threads 2 --seconds 10

RTF = synthesis time / audio duration (lower is faster); the goal for the CPU config is <= 0.1.
Reports the best and the median of --repeats runs (the best is the least disturbed by other
processes on a shared CPU). Weights are random (speed does not depend on them); weight norm is removed as for inference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from llasm.speech.vocoder import UnitHifiGan
from llasm.speech.vocoder_config import FRAME_RATE, UnitVocoderConfig

GOAL_RTF = 0.1


def measure(config_path: str, seconds: float, repeats: int) -> tuple[float, float, int]:
    """(best RTF, median RTF, generator parameters); the best is the least disturbed by other load."""
    config = UnitVocoderConfig.from_yaml(config_path)
    torch.manual_seed(0)
    model = UnitHifiGan(config).remove_weight_norm().eval()
    rng = np.random.default_rng(0)
    frames = int(seconds * FRAME_RATE)
    durations = rng.integers(1, 5, size=frames)  # deduplicated units of 1-4 frames ...
    durations = durations[np.cumsum(durations) <= frames]
    durations[-1] += frames - durations.sum()  # ... summing to exactly `seconds`
    units = rng.integers(0, config.num_units, size=len(durations))
    model.synthesize(units[:20], durations[:20])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        audio = model.synthesize(units, durations)
        times.append(time.perf_counter() - start)
    assert len(audio) == frames * config.samples_per_frame
    parameters = sum(p.numel() for p in model.parameters())
    return min(times) / seconds, statistics.median(times) / seconds, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=["configs/vocoder_cpu.yaml", "configs/vocoder.yaml"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.seconds:g} s of units, {args.repeats} runs")
    for path in args.configs:
        rtf, median, parameters = measure(path, args.seconds, args.repeats)
        print(f"{path}: RTF {rtf:.4f} best, {median:.4f} median ({parameters / 1e6:.2f} M generator parameters); "
              f"{rtf / GOAL_RTF:.2f}x the goal RTF {GOAL_RTF} ({'meets' if rtf <= GOAL_RTF else 'misses'} it)")


if __name__ == "__main__":
    main()
