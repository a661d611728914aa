"""Resynthesis intelligibility of token2wav decoders trained for equal minutes: one arm per set of
overrides of ``configs/token2wav_cpu.yaml`` (with the decoder's mel through the MB-MelGAN unless an arm
says otherwise), each judged by Whisper on the held-out answers of a
speech demo, against the first arm in the same run.

    .venv/bin/python bench/resynthesis.py --demo outputs/speech-demo --minutes 3 \\
        --arm "no prior=mel_decoder.unit_prior=false" --arm "unit prior=mel_decoder.unit_prior=true"

Each arm trains a fresh units -> mel decoder on the demo's ``data/token2wav_train.jsonl`` (its
units: ``kmeans/``) for ``--minutes`` of wall time, then speaks the held-out answers' units twice —
with the decoder's *predicted* durations (as in generation) and with the units' own run lengths
(gold durations: the duration predictor's share of the error) — and Whisper (``--judge``) reads
them: en WER / zh CER, lower is better. The ratio column is each arm's error over the first arm's
at the same minutes.

``--at 2.5,7.5,15,30`` judges each arm at those cumulative training minutes instead (one decoder
trained on, judged between legs: the judging is off the clock): the decoder's learning curve, and with
``--plot`` a PNG of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from llasm.evaluation import metrics
from llasm.evaluation.speech import load_speech_items
from llasm.evaluation.systems import WhisperTranscriber, hear
from llasm.io import atomic_path, llasm_home, write_json
from llasm.speech.mel_training import UnitMelTrainer, load_token2wav_configs
from llasm.speech.units import UnitExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arms import legs, minute_marks, parse_arms, ratio_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"en": 15.0, "zh": 25.0}  # issue 24's resynthesis goals: en WER / zh CER, %


def judge_arm(token2wav, items, units, judge) -> dict[str, dict[str, float]]:
    """{"predicted"|"gold": {lang: error rate}} over ``items``."""
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for item in items:
        clip_units, durations = units[item.id]
        for name, given in (("predicted", None), ("gold", durations)):
            audio = token2wav.synthesize(clip_units, durations=given)  # judged as the speech eval judges
            pairs.setdefault((name, item.lang), []).append((item.answer, hear(judge, audio, item.lang, item.answer)[0]))
    out: dict[str, dict[str, float]] = {}
    for (name, lang), scored in pairs.items():
        out.setdefault(name, {})[lang] = metrics.asr_error_rate([r for r, _ in scored], [h for _, h in scored], lang)["value"]
    return out


def plot_curve(rows: list[dict], path: Path) -> None:
    """Error rate against training minutes, one line per arm, language and duration source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, lang, metric in zip(axes, ("en", "zh"), ("WER", "CER")):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            mine = [r for r in rows if r["arm"] == arm]
            for kind, style in (("predicted", "-o"), ("gold", "--s")):
                ax.plot([r["minutes"] for r in mine], [100 * r[kind].get(lang, float("nan")) for r in mine], style,
                        label=f"{arm}, {kind} durations")
        ax.axhline(GOALS[lang], color="grey", linestyle=":", label=f"goal {GOALS[lang]:g} %")
        ax.set(title=f"resynthesis {lang} {metric}", xlabel="decoder training minutes", ylabel=f"{metric} %")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # makes the folder
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=str(ROOT / "outputs" / "speech-demo"), help="a `make speech-demo` output folder")
    parser.add_argument("--config", default=str(ROOT / "configs" / "token2wav_cpu.yaml"))
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="one decoder to train: a name and dotted overrides (repeat; the first is the baseline)")
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-clock training minutes per arm")
    parser.add_argument("--at", default=None, metavar="M1,M2,...",
                        help="judge each arm at these cumulative training minutes (a learning curve; replaces --minutes)")
    parser.add_argument("--plot", default=None, help="with --at: write the curve here (PNG)")
    parser.add_argument("--limit", type=int, default=24, help="held-out answers per language")
    parser.add_argument("--judge", default=str(Path(llasm_home()) / "whisper-base"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    arms = parse_arms(args.arm)
    try:
        marks = minute_marks(args.at, args.minutes)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    items, _ = load_speech_items(demo / "data" / "answers.jsonl", "test", args.limit)
    extractor, judge = UnitExtractor.load(demo / "kmeans"), WhisperTranscriber(args.judge)
    units = {item.id: extractor.extract(item.answer_audio) for item in items}
    print(f"{len(items)} held-out answers of {demo}; judged at {marks} min of training per arm; judge {args.judge}")
    rows = []
    for name, overrides in arms:
        with tempfile.TemporaryDirectory() as scratch:
            t2w, decoder, train = load_token2wav_configs(args.config, [
                f"mel_decoder.num_units={extractor.num_units}",
                f"train.train_manifest={demo / 'data' / 'token2wav_train.jsonl'}", f"train.output_dir={scratch}",
                f"train.max_minutes={marks[0]}", "train.resume=never", "train.sample_every=0", "train.progress=false",
                # the decoder's own mel through the MelGAN, as the curves in docs/experiments/token2wav.md were
                # measured; an arm may set token2wav.mel_source=unit_selection (bench/unit_selection.py tunes that)
                "token2wav.mel_source=decoder", "token2wav.mel_vocoder=mb_melgan", *overrides])
            trainer, history, seconds = UnitMelTrainer(t2w, decoder, train), [], 0.0
            for mark, leg in zip(marks, legs(marks)):
                trainer.train_config.max_minutes = leg  # train() continues from trainer.step, its own clock
                started = time.monotonic()
                history += trainer.train()
                seconds += time.monotonic() - started
                rates = judge_arm(trainer.token2wav(), items, units, judge)
                rows.append({"arm": name, "overrides": ",".join(overrides), "minutes": mark, "steps": trainer.step,
                             "seconds": round(seconds),
                             "mel_loss": [history[0]["mel"], sum(h["mel"] for h in history[-20:]) / len(history[-20:])] if history else None, **rates})
                print(json.dumps(rows[-1]), flush=True)
    base = {r["minutes"]: r for r in rows if r["arm"] == rows[0]["arm"]}
    print("\n| arm | minutes | steps | mel loss first -> last 20 | en WER pred. | zh CER pred. | en WER gold dur. "
          "| zh CER gold dur. | ratio to the first arm (pred. en / zh) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = f"{r['mel_loss'][0]:.3f} -> {r['mel_loss'][1]:.3f}" if r["mel_loss"] else "-"
        cells = [f"{100 * r[kind].get(lang, float('nan')):.1f} %" for kind in ("predicted", "gold") for lang in ("en", "zh")]
        ratio = ratio_cell(r["predicted"], base[r["minutes"]]["predicted"])
        print(f"| {r['arm']} | {r['minutes']:g} | {r['steps']} | {loss} | " + " | ".join(cells) + f" | {ratio} |")
    if args.plot:
        plot_curve(rows, Path(args.plot))
        print(f"curve: {args.plot}")
    if args.json:
        write_json(args.json, rows)  # atomic; makes the folder


if __name__ == "__main__":
    main()
