"""Encoder time for a 2 s clip vs a 30 s clip vs the pad-to-30 s path (LLaSM), in one run.

Whisper-base sized encoder (the starter model's shape; weights from $LLASM_HOME/whisper-base when
converted, random otherwise — timing does not depend on the values). Goal: 2 s / 30 s <= 0.12.

    python bench/encoder_length.py [--model whisper-base|whisper-large-v2-shape] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig, WhisperFeatureExtractor

from llasm.audio_tower import LlasmWhisperEncoder, load_whisper_encoder
from llasm.io import llasm_home

SHAPES = {
    "whisper-base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
    "whisper-large-v2-shape": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-base", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    local = Path(llasm_home()) / "whisper-base"
    if args.model == "whisper-base" and (local / "model.safetensors").exists():
        encoder, source = load_whisper_encoder(str(local)), f"weights from {local}"
    else:
        encoder, source = LlasmWhisperEncoder(WhisperConfig(**SHAPES[args.model])), "random weights"
    encoder.eval()
    fe = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    rng = np.random.default_rng(0)

    def features(seconds: float, pad: bool):
        audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        if pad:
            return torch.from_numpy(fe(audio, sampling_rate=16000, return_tensors="np").input_features)
        mel = fe(audio, sampling_rate=16000, truncation=False, padding="longest", return_tensors="np").input_features
        return torch.from_numpy(mel[..., : len(audio) // 160])

    inputs = {"2 s": features(2, False), "30 s": features(30, False), "2 s padded to 30 s": features(2, True)}
    results = {}
    with torch.inference_mode():
        for name, feats in inputs.items():
            results[name] = timed(lambda f=feats: encoder(f), args.repeats)
    print(f"encoder: {args.model} ({source}), {args.threads} threads, median of {args.repeats}")
    for name, seconds in results.items():
        print(f"  {name:<20} {1000 * seconds:8.1f} ms")
    short, full, padded = results["2 s"], results["30 s"], results["2 s padded to 30 s"]
    print(f"ratio 2 s / 30 s            = {short / full:.3f}  (goal <= 0.12: {'met' if short / full <= 0.12 else 'MISSED'})")
    print(f"ratio 2 s / 2 s padded (LLaSM) = {short / padded:.3f}  ({padded / short:.1f}x faster without padding)")


if __name__ == "__main__":
    main()
