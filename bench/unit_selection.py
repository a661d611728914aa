"""Resynthesis intelligibility of unit selection settings: one arm per set of overrides of a trained
token2wav's ``token2wav.json`` (its ``unit_selection`` costs, its ``mel_vocoder``), each judged by
Whisper against the first arm in the same run.

    .venv/bin/python bench/unit_selection.py --demo outputs/speech-demo --dev 30 \\
        --arm "150 candidates=" --arm "40 candidates=unit_selection.candidates=40" \\
        --arm "predicted durations=unit_selection.durations=predicted" \\
        --arm "MB-MelGAN=mel_vocoder=mb_melgan"

Two sets of clips, each spoken from its own units (``kmeans/``) through the demo's token2wav
(``token2wav/``: the unit selection's corpus, and the decoder when it has one):

- **held-out answers** (``--limit`` per language): the answers the demo never trained on, spoken
  without durations (the arm's ``unit_selection.durations``: the runs' recorded lengths, or the
  decoder's predictions) and with the units' own run lengths (gold);
- **leave-one-out training clips** (``--dev`` per language, seeded): each clip spoken with its own
  clip taken out of the corpus, without durations. Many more and longer sentences than the held-out
  answers, so the settings are chosen here rather than on the answers the demo reports. (Predicted
  durations are in-sample here: the decoder learned them on these clips.)

en WER / zh CER, lower is better; the ratio column is each arm's error over the first arm's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from llasm import settings
from llasm.evaluation import metrics
from llasm.evaluation.speech import load_speech_items
from llasm.evaluation.systems import WhisperTranscriber, hear
from llasm.io import llasm_home, read_jsonl, write_json
from llasm.speech.token2wav import Token2WavConfig, load_token2wav
from llasm.speech.unit_selection import UnitSelection
from llasm.speech.units import UnitExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arms import parse_arms, ratio_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def leave_out(selection: UnitSelection, clip: int) -> UnitSelection:
    """The same corpus without clip ``clip``'s runs (its frames stay; nothing points at them)."""
    keep = selection.clip != clip
    return UnitSelection(selection.frames, selection.unit[keep], selection.begin[keep], selection.end[keep],
                         selection.clip[keep], selection.num_units, selection.mel, selection.config)


def dev_clips(demo: Path, per_language: int, seed: int = 0) -> list[dict]:
    """``per_language`` training clips per language: ``{"clip", "lang", "text", "units", "durations"}``.
    ``clip`` is the row's index in ``data/token2wav_train.jsonl``, the unit selection's clip number."""
    rows = list(read_jsonl(demo / "data" / "token2wav_train.jsonl"))
    texts = {r["id"]: r for r in read_jsonl(demo / "data" / "clips.jsonl")}
    rng, picked = np.random.default_rng(seed), []
    for lang in ("en", "zh"):
        pool = [i for i, r in enumerate(rows) if texts.get(r["id"], {}).get("lang") == lang]
        for i in rng.choice(pool, min(per_language, len(pool)), replace=False):
            picked.append({"clip": int(i), "lang": lang, "text": texts[rows[i]["id"]]["text"],
                           "units": rows[i]["units"], "durations": rows[i]["durations"]})
    return picked


def error_rates(pairs: dict[tuple[str, str], list[tuple[str, str]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (name, lang), scored in pairs.items():
        out.setdefault(name, {})[lang] = metrics.asr_error_rate([r for r, _ in scored], [h for _, h in scored], lang)["value"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=str(ROOT / "outputs" / "speech-demo"),
                        help="a `make speech-demo` output folder (its token2wav has mel_source unit_selection)")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                        help="token2wav.json overrides (unit_selection.candidates=40, mel_vocoder=mb_melgan); repeat")
    parser.add_argument("--limit", type=int, default=24, help="held-out answers per language")
    parser.add_argument("--dev", type=int, default=30, help="leave-one-out training clips per language (0: none)")
    parser.add_argument("--judge", default=str(Path(llasm_home()) / "whisper-base"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    if not (demo / "token2wav" / "token2wav.json").exists():
        parser.error(f"{demo}: no token2wav/token2wav.json (run make speech-demo, or give --demo a speech demo's folder)")
    saved = json.loads((demo / "token2wav" / "token2wav.json").read_text())
    if saved.get("mel_source") != "unit_selection":
        parser.error(f"{demo / 'token2wav'}: mel_source is {saved.get('mel_source')!r}, not unit_selection")
    missing = [str(demo / p) for p in ("data/answers.jsonl", "data/token2wav_train.jsonl", "kmeans/kmeans.json")
               if not (demo / p).exists()]
    if missing:
        parser.error(f"{demo}: missing {', '.join(missing)} (a make speech-demo folder has them)")
    arms = parse_arms(args.arm)
    for name, overrides in arms:  # every arm's settings checked before the first arm runs for minutes
        try:
            settings.from_dict(Token2WavConfig, settings.apply_overrides(dict(saved), overrides, "token2wav.json"),
                               "token2wav.json")
        except (TypeError, ValueError) as err:
            parser.error(f"arm {name!r}: {err}")
    items, _ = load_speech_items(demo / "data" / "answers.jsonl", "test", args.limit)
    extractor, judge = UnitExtractor.load(demo / "kmeans"), WhisperTranscriber(args.judge)
    held_out = [(item.lang, item.answer, *extractor.extract(item.answer_audio)) for item in items]
    dev = dev_clips(demo, args.dev)
    print(f"{len(held_out)} held-out answers, {len(dev)} leave-one-out training clips of {demo}; judge {args.judge}")
    rows = []
    for name, overrides in arms:
        config = settings.apply_overrides(dict(saved), overrides, "token2wav.json")
        token2wav = load_token2wav(demo / "token2wav", **config)
        corpus, pairs = token2wav.selection, {}

        def heard(units, durations, lang, text):  # the speech eval's judge: padding and loop guard
            return text, hear(judge, token2wav.synthesize(units, durations), lang, text)[0]

        for lang, text, units, durations in held_out:
            for kind, given in (("spoken", None), ("gold", durations)):
                pairs.setdefault((kind, lang), []).append(heard(units, given, lang, text))
        for clip in dev:
            token2wav.selection = leave_out(corpus, clip["clip"])
            pairs.setdefault(("dev", clip["lang"]), []).append(heard(clip["units"], None, clip["lang"], clip["text"]))
        token2wav.selection = corpus
        rows.append({"arm": name, "overrides": ",".join(overrides), **error_rates(pairs)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| arm | held-out en WER | zh CER | en WER gold dur. | zh CER gold dur. "
          "| leave-one-out en WER | zh CER | ratio to the first arm (leave-one-out en / zh) |")
    print("|---|---|---|---|---|---|---|---|")
    cell = lambda r, kind, lang: f"{100 * r[kind][lang]:.1f} %" if lang in r.get(kind, {}) else "-"  # noqa: E731
    for r in rows:
        cells = [cell(r, kind, lang) for kind in ("spoken", "gold", "dev") for lang in ("en", "zh")]
        ratio = ratio_cell(r.get("dev", {}), rows[0].get("dev", {}))
        print(f"| {r['arm']} | " + " | ".join(cells) + f" | {ratio} |")
    if args.json:
        write_json(args.json, rows)  # atomic; makes the folder


if __name__ == "__main__":
    main()
