"""Which units carry the words: resynthesis intelligibility per Whisper encoder layer and K.

For every (layer, K): k-means on the training clips' layer features -> every clip's units -> a
closed-form ridge decoder (one-hot of the deduplicated unit and its neighbours -> the log-mel
frame, in the MB-MelGAN's mel domain) fitted on the training clips -> the held-out clips' units
(their own durations) -> MB-MelGAN -> Whisper-base judges against the clip's text (en WER, zh CER).
The decoder is the same small linear map for every (layer, K), so the table ranks the units; the
trained token2wav decoder (``train/train_token2wav.py``) does better with the chosen ones.

    python bench/unit_choice.py --clips outputs/speech-demo/data/clips.jsonl --layers 3,4,5,6 --ks 100,500,1000

``--clips``: JSONL rows ``{"id", "lang", "split", "text", "audio"}`` (``make speech-demo`` writes one:
the seed answers and sentences spoken by one natural voice per language).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import soxr
import torch

from llasm.audio import load_audio
from llasm.evaluation import metrics
from llasm.evaluation.systems import WhisperTranscriber
from llasm.io import llasm_home, read_jsonl
from llasm.speech.mel import LogMel
from llasm.speech.mel_vocoder import MbMelgan
from llasm.speech.units import UnitExtractor, dedup_units, fit_kmeans, load_feature_encoder


def design(frame_units: np.ndarray, num_units: int, mel_frames: int, context: int) -> sp.csr_matrix:
    """(mel_frames, (2 context + 1) K) one-hots: each mel frame's deduplicated unit and its neighbours."""
    units, durations = dedup_units(frame_units)
    units = np.asarray(units)
    unit_of_frame = np.repeat(np.arange(len(units)), durations)
    index = unit_of_frame[np.minimum(np.arange(mel_frames) * 5 // 8, len(unit_of_frame) - 1)]  # 80 Hz -> 50 Hz
    columns = np.stack([(c + context) * num_units + units[np.clip(index + c, 0, len(units) - 1)]
                        for c in range(-context, context + 1)], 1)
    rows = np.repeat(np.arange(mel_frames), columns.shape[1])
    return sp.csr_matrix((np.ones(columns.size, np.float32), (rows, columns.reshape(-1))),
                         shape=(mel_frames, (2 * context + 1) * num_units))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", required=True)
    parser.add_argument("--whisper", default=str(Path(llasm_home()) / "whisper-base"))
    parser.add_argument("--layers", default="3,4,5,6")
    parser.add_argument("--ks", default="100,500,1000")
    parser.add_argument("--test-per-lang", type=int, default=15)
    parser.add_argument("--max-frames", type=int, default=50_000, help="k-means sample")
    parser.add_argument("--context", type=int, default=1, help="neighbouring units on each side the decoder sees")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = read_jsonl(args.clips)
    base = Path(args.clips).parent
    train = [c for c in clips if c["split"] == "train"]
    test = [c for lang in ("en", "zh") for c in [x for x in clips if x["split"] == "test" and x["lang"] == lang]
            [: args.test_per_lang]]
    vocoder, judge = MbMelgan(threads=args.threads), WhisperTranscriber(args.whisper)
    log_mel = LogMel(vocoder.mel)
    audio = {c["id"]: load_audio(base / c["audio"]) for c in train + test}
    mels = {i: log_mel(soxr.resample(a, 16_000, vocoder.sampling_rate)).numpy() for i, a in audio.items()}
    print(f"{len(train)} training clips, {len(test)} held-out; judge {args.whisper}; MB-MelGAN")
    print("| layer | K | units/s | en WER % | zh CER % |\n|---|---|---|---|---|")
    for layer in map(int, args.layers.split(",")):
        features = load_feature_encoder(args.whisper, "whisper", layer)
        feats = {i: features(a).numpy() for i, a in audio.items()}
        sample = np.concatenate([feats[c["id"]] for c in train])
        sample = sample[np.random.default_rng(0).permutation(len(sample))[: args.max_frames]]
        for k in map(int, args.ks.split(",")):
            started = time.time()
            extractor = UnitExtractor(fit_kmeans([sample], k, n_init=1, max_iter=50))
            units = {i: extractor.assign(f).numpy() for i, f in feats.items()}
            frames = {i: min(len(mels[i]), len(units[i]) * 8 // 5) for i in units}
            x = sp.vstack([design(units[c["id"]], k, frames[c["id"]], args.context) for c in train])
            y = np.concatenate([mels[c["id"]][: frames[c["id"]]] for c in train])
            weights = np.linalg.solve((x.T @ x).toarray() + np.eye(x.shape[1]), x.T @ y)  # ridge, lambda 1
            pairs = {"en": ([], []), "zh": ([], [])}
            for c in test:
                mel = design(units[c["id"]], k, frames[c["id"]], args.context) @ weights
                wav = soxr.resample(vocoder(mel.astype(np.float32)), vocoder.sampling_rate, 16_000)
                pairs[c["lang"]][0].append(c["text"])
                pairs[c["lang"]][1].append(judge(wav, c["lang"]))
            rates = {lang: metrics.asr_error_rate(refs, hyps, lang)["value"] for lang, (refs, hyps) in pairs.items()
                     if refs}
            per_second = np.mean([len(dedup_units(units[c["id"]])[0]) / (len(units[c["id"]]) / 50) for c in train])
            print(f"| {layer} | {k} | {per_second:.1f} | {100 * rates.get('en', float('nan')):.1f} | "
                  f"{100 * rates.get('zh', float('nan')):.1f} |  ({time.time() - started:.0f} s)", flush=True)
            print(json.dumps({"layer": layer, "k": k, **rates}), flush=True)


if __name__ == "__main__":
    main()
