"""Resynthesis intelligibility of token2wav decoders trained for equal minutes: one arm per set of
overrides of ``configs/token2wav_cpu.yaml``, each judged by Whisper on the held-out answers of a
speech demo, against the first arm in the same run.

    .venv/bin/python bench/resynthesis.py --demo outputs/speech-demo --minutes 3 \\
        --arm "no prior=mel_decoder.unit_prior=false" --arm "unit prior=mel_decoder.unit_prior=true"

Each arm trains a fresh units -> mel decoder on the demo's ``data/token2wav_train.jsonl`` (its
units: ``kmeans/``) for ``--minutes`` of wall time, then speaks the held-out answers' units twice —
with the decoder's *predicted* durations (as in generation) and with the units' own run lengths
(gold durations: the duration predictor's share of the error) — and Whisper (``--judge``) reads
them: en WER / zh CER, lower is better. The ratio column is each arm's error over the first arm's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llasm.evaluation import metrics
from llasm.evaluation.speech import MIN_JUDGE_SAMPLES, load_speech_items
from llasm.evaluation.systems import WhisperTranscriber
from llasm.io import llasm_home
from llasm.speech.mel_training import UnitMelTrainer, load_token2wav_configs
from llasm.speech.units import UnitExtractor

ROOT = Path(__file__).resolve().parents[1]


def judge_arm(token2wav, items, units, judge) -> dict[str, dict[str, float]]:
    """{"predicted"|"gold": {lang: error rate}} over ``items``."""
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for item in items:
        clip_units, durations = units[item.id]
        for name, given in (("predicted", None), ("gold", durations)):
            audio = token2wav.synthesize(clip_units, durations=given)
            audio = np.pad(audio, (0, max(0, MIN_JUDGE_SAMPLES - len(audio))))
            pairs.setdefault((name, item.lang), []).append((item.answer, judge(audio, item.lang)))
    out: dict[str, dict[str, float]] = {}
    for (name, lang), scored in pairs.items():
        out.setdefault(name, {})[lang] = metrics.asr_error_rate([r for r, _ in scored], [h for _, h in scored], lang)["value"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=str(ROOT / "outputs" / "speech-demo"), help="a `make speech-demo` output folder")
    parser.add_argument("--config", default=str(ROOT / "configs" / "token2wav_cpu.yaml"))
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="one decoder to train: a name and dotted overrides (repeat; the first is the baseline)")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock training minutes per arm")
    parser.add_argument("--limit", type=int, default=24, help="held-out answers (split between the languages)")
    parser.add_argument("--judge", default=str(Path(llasm_home()) / "whisper-base"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    arms = [a.split("=", 1) for a in args.arm] or [["default", ""]]
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    items, _ = load_speech_items(demo / "data" / "answers.jsonl", "test", args.limit)
    extractor, judge = UnitExtractor.load(demo / "kmeans"), WhisperTranscriber(args.judge)
    units = {item.id: extractor.extract(item.answer_audio) for item in items}
    print(f"{len(items)} held-out answers of {demo}; {args.minutes} min per arm; judge {args.judge}")
    rows = []
    for name, overrides in arms:
        with tempfile.TemporaryDirectory() as scratch:
            t2w, decoder, train = load_token2wav_configs(args.config, [
                f"mel_decoder.num_units={extractor.num_units}",
                f"train.train_manifest={demo / 'data' / 'token2wav_train.jsonl'}", f"train.output_dir={scratch}",
                f"train.max_minutes={args.minutes}", "train.resume=never", "train.sample_every=0", "train.progress=false",
                *[o for o in overrides.split(",") if o]])
            trainer = UnitMelTrainer(t2w, decoder, train)
            started = time.monotonic()
            history = trainer.train()
            seconds = time.monotonic() - started
            rates = judge_arm(trainer.token2wav(), items, units, judge)
        rows.append({"arm": name, "overrides": overrides, "steps": trainer.step, "seconds": round(seconds),
                     "mel_loss": [history[0]["mel"], history[-1]["mel"]] if history else None, **rates})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print("\n| arm | steps | mel loss first -> last | en WER pred. | zh CER pred. | en WER gold dur. | zh CER gold dur. "
          "| ratio to the first (pred. en / zh) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['mel_loss'][0]:.3f} -> {r['mel_loss'][1]:.3f}" if r["mel_loss"] else "-"
        cells = [f"{100 * r[kind].get(lang, float('nan')):.1f} %" for kind in ("predicted", "gold") for lang in ("en", "zh")]
        ratio = " / ".join(f"{r['predicted'][lang] / base['predicted'][lang]:.2f}" if base["predicted"].get(lang) else "-"
                           for lang in ("en", "zh"))
        print(f"| {r['arm']} | {r['steps']} | {loss} | " + " | ".join(cells) + f" | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
