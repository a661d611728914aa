"""Resynthesis intelligibility of unit selection settings: one arm per set of overrides of a trained
token2wav's ``token2wav.json`` (its ``unit_selection`` costs, its ``mel_vocoder``), each judged by
Whisper against the first arm in the same run.

    .venv/bin/python bench/unit_selection.py --demo outputs/speech-demo --dev 30 \\
        --arm "150 candidates=" --arm "40 candidates=unit_selection.candidates=40" \\
        --arm "predicted durations=unit_selection.durations=predicted" \\
        --arm "MB-MelGAN=mel_vocoder=mb_melgan"
    .venv/bin/python bench/unit_selection.py --demo outputs/speech-demo --dev 30 --arm "units=" \
        --arm "true pitch=bound.pitch=1" --arm "true mel=bound.mel=4" --arm "half the corpus=bound.corpus=0.5"

Two sets of clips, each spoken from its own units (``kmeans/``) through the demo's token2wav
(``token2wav/``: the unit selection's corpus, and the decoder when it has one):

- **held-out answers** (``--limit`` per language): the answers the demo never trained on, spoken
  without durations (the arm's ``unit_selection.durations``: the runs' recorded lengths, or the
  decoder's predictions) and with the units' own run lengths (gold);
- **leave-one-out training clips** (``--dev`` per language, seeded): each clip spoken with its own
  clip taken out of the corpus, without durations. Many more and longer sentences than the held-out
  answers, so the settings are chosen here rather than on the answers the demo reports. (Predicted
  durations are in-sample here: the decoder learned them on these clips.)

**Bounds** (``bound.*`` in an arm, beside its overrides): what the search could reach if it knew what the
units cannot tell it — each spoken unit's true sound, taken from the clip's own audio (the answer's, or
the left-out clip's) over the unit's frames:

- ``bound.pitch=W``: ``+ W * min(|semitones between the run's and the true mean F0| / 2, 2)`` on the target
  cost (1 for a voiced / unvoiced mismatch; Praat's pitch tracker, ``pip install praat-parselmouth``):
  what units that also carried the pitch (tones) would buy;
- ``bound.mel=W``: ``+ W * min(RMS(the run's mean log-mel - the true mean log-mel) / median, 2)``;
  with ``bound.any_unit=1`` every run of the corpus is a candidate, whatever its unit (the costs are the
  true-mel term alone; slow): what any units at all could buy from this corpus and this joining;
- ``bound.corpus=F``: keep a seeded fraction F of the corpus's clips: what more (or less) recorded speech
  per voice buys.

en WER / zh CER, lower is better; the ratio column is each arm's error over the first arm's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soxr
import torch
from tqdm import tqdm

from llasm import settings
from llasm.audio import load_audio
from llasm.evaluation import metrics
from llasm.evaluation.speech import load_speech_items
from llasm.evaluation.systems import WhisperTranscriber, hear
from llasm.io import llasm_home, read_jsonl, write_json
from llasm.speech.mel import LogMel
from llasm.speech.token2wav import Token2WavConfig, load_token2wav
from llasm.speech.unit_selection import UnitSelection, rms_distances, run_spans
from llasm.speech.units import UnitExtractor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _arms import parse_arms, ratio_cell  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def leave_out(selection: UnitSelection, clip: int) -> UnitSelection:
    """The same corpus without clip ``clip``'s runs (its frames stay; nothing points at them)."""
    keep = selection.clip != clip
    return UnitSelection(selection.frames, selection.unit[keep], selection.begin[keep], selection.end[keep],
                         selection.clip[keep], selection.num_units, selection.mel, selection.config)


BOUNDS = {"pitch": 0.0, "mel": 0.0, "any_unit": 0.0, "corpus": 1.0}


def split_bounds(overrides: list[str]) -> tuple[list[str], dict[str, float]]:
    """An arm's overrides -> (its ``token2wav.json`` overrides, its ``bound.*`` settings over :data:`BOUNDS`).

    Raises ``ValueError`` naming the setting for an unknown ``bound.`` key or a value out of range."""
    rest, bounds = [], dict(BOUNDS)
    for override in overrides:
        key, _, value = override.partition("=")
        if not key.startswith("bound."):
            rest.append(override)
            continue
        name = key.removeprefix("bound.")
        if name not in BOUNDS:
            raise ValueError(f"unknown {key!r}{settings.did_you_mean(name, BOUNDS, 'bound.')}; "
                             f"the bounds are {', '.join('bound.' + b for b in BOUNDS)}")
        try:
            bounds[name] = float(value)
        except ValueError:
            bounds[name] = float("nan")
        if not np.isfinite(bounds[name]):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
    if bounds["pitch"] < 0 or bounds["mel"] < 0:
        raise ValueError("bound.pitch and bound.mel must be >= 0")
    if bounds["any_unit"] not in (0, 1) or (bounds["any_unit"] and not bounds["mel"]):
        raise ValueError("bound.any_unit is 0 or 1, and 1 needs bound.mel > 0 (the true mel is then the only target)")
    if not 0 < bounds["corpus"] <= 1:
        raise ValueError(f"bound.corpus is a fraction of the clips in (0, 1], got {bounds['corpus']}")
    return rest, bounds


def log_f0(audio: np.ndarray, frames: int, hop_seconds: float) -> np.ndarray:
    """``(frames,)`` natural-log F0 of 16 kHz ``audio`` at ``hop_seconds`` (NaN where unvoiced; Praat)."""
    try:
        import parselmouth
    except ImportError:
        raise SystemExit("bound.pitch needs Praat's pitch tracker: pip install praat-parselmouth") from None
    pitch = parselmouth.Sound(audio.astype(np.float64), sampling_frequency=16000).to_pitch(
        time_step=hop_seconds, pitch_floor=60, pitch_ceiling=500)
    f0, times = pitch.selected_array["frequency"], pitch.xs()
    step = times[1] - times[0] if len(times) > 1 else hop_seconds
    index = np.clip(np.round((np.arange(frames) * hop_seconds - times[0]) / step).astype(int), 0, len(f0) - 1)
    return np.log(np.where(f0[index] > 0, f0[index], np.nan))


def span_means(values: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per span ``[begin, end)`` of ``values`` (frames first), the mean over its finite entries (NaN if none)."""
    out = np.full((len(begin), *values.shape[1:]), np.nan)
    for i, (b, e) in enumerate(zip(begin, end)):
        part = values[b:max(e, b + 1)]
        finite = np.isfinite(part).all(axis=tuple(range(1, part.ndim)))
        if finite.any():
            out[i] = part[finite].mean(0)
    return out


class TrueSound:
    """Each unit's true sound in a clip: per 50 Hz run, its mean log-mel (the corpus's domain) and log-F0."""

    def __init__(self, selection: UnitSelection, pitch: bool):
        self.mel, self.pitch = selection.mel, pitch
        self.log_mel = LogMel(selection.mel)

    def __call__(self, audio, durations) -> dict[str, np.ndarray]:
        audio = load_audio(audio)
        with torch.no_grad():
            mel = self.log_mel(torch.from_numpy(soxr.resample(audio, 16000, self.mel.sampling_rate, quality="HQ"))).numpy()
        begin, end = run_spans(self.mel, durations, len(mel))
        begin = np.minimum(begin, len(mel) - 1)
        out = {"mel": span_means(mel, begin, end)}
        if self.pitch:
            out["pitch"] = span_means(log_f0(audio, len(mel), self.mel.hop_size / self.mel.sampling_rate), begin, end)
        return out


class BoundSelection(UnitSelection):
    """The corpus's search with a target cost on each unit's true sound (:class:`TrueSound`): see the module's
    bounds. :meth:`speaking` sets the utterance's targets, one per unit, before a search."""

    def __init__(self, base: UnitSelection, keep: np.ndarray, bounds: dict[str, float], run_mel: np.ndarray,
                 run_pitch: np.ndarray | None, mel_scale: float):
        super().__init__(base.frames, base.unit[keep], base.begin[keep], base.end[keep], base.clip[keep],
                         base.num_units, base.mel, base.config)
        self.bounds, self.run_mel, self.mel_scale = bounds, run_mel[keep], mel_scale
        self.run_pitch = run_pitch[keep] if run_pitch is not None else None
        self.target: dict[str, np.ndarray] = {}
        self._true: dict[str, np.ndarray] = {}
        self._t = 0

    def speaking(self, target: dict[str, np.ndarray]) -> "BoundSelection":
        self.target, self._t = target, 0
        return self

    def candidates(self, unit, previous, following, target_frames):
        self._true = {name: values[min(self._t, len(values) - 1)] for name, values in self.target.items()}
        self._t += 1  # the search asks once per unit, in order
        if not self.bounds["any_unit"]:
            return super().candidates(unit, previous, following, target_frames)
        cost = self.bounds["mel"] * self._mel_cost(np.arange(self.num_runs))
        keep = np.argsort(cost, kind="stable")[: self.config.candidates]
        return keep, cost[keep]

    def target_costs(self, runs, previous, following, target_frames):
        cost = super().target_costs(runs, previous, following, target_frames)
        if self.bounds["mel"] and np.isfinite(self._true["mel"]).all():
            cost = cost + self.bounds["mel"] * self._mel_cost(runs)
        if self.bounds["pitch"] and np.isfinite(self._true["pitch"]):
            semitones = np.abs(self.run_pitch[runs] - self._true["pitch"]) * 12 / np.log(2)
            cost = cost + self.bounds["pitch"] * np.where(np.isfinite(semitones), np.minimum(semitones / 2, 2), 1)
        return cost

    def _mel_cost(self, runs: np.ndarray) -> np.ndarray:
        distance = rms_distances(self.run_mel[runs], self._true["mel"][None].astype(np.float32))[:, 0]
        return np.minimum(distance / self.mel_scale, 2)


def corpus_sounds(selection: UnitSelection, audio: list[str], pitch: bool) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Per corpus run its mean log-mel (from the corpus frames) and, with ``pitch``, its mean log-F0 (from
    clip ``audio[i]``, aligned to the corpus frames); and the median RMS distance between two runs' means."""
    frames = np.concatenate([selection.frames.astype(np.float32), np.zeros((1, selection.mel.num_mels), np.float32)])
    sums = np.add.reduceat(frames, np.ravel([selection.begin, selection.end], "F"))[::2]
    run_mel = sums / (selection.end - selection.begin)[:, None]
    sample = run_mel[np.random.default_rng(0).choice(len(run_mel), min(2000, len(run_mel)), replace=False)]
    scale = float(np.median(rms_distances(sample, sample))) or 1.0
    if not pitch:
        return run_mel, None, scale
    frame_f0 = np.full(len(selection.frames), np.nan)
    hop = selection.mel.hop_size / selection.mel.sampling_rate
    for clip in tqdm(np.unique(selection.clip), desc="corpus F0", unit="clip"):
        runs = selection.clip == clip
        first, last = selection.begin[runs].min(), selection.end[runs].max()
        frame_f0[first:last] = log_f0(load_audio(audio[clip]), last - first, hop)
    return run_mel, span_means(frame_f0, selection.begin, selection.end), scale


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
                        help="token2wav.json overrides (unit_selection.candidates=40, mel_vocoder=mb_melgan) and bounds "
                             "(bound.pitch=W, bound.mel=W, bound.any_unit=1, bound.corpus=F: see the top of this file), "
                             "comma-separated; repeat for more arms (names unique)")
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
    missing = [str(demo / p) for p in ("data/answers.jsonl", "data/clips.jsonl", "data/token2wav_train.jsonl",
                                        "kmeans/kmeans.json", "kmeans/kmeans.safetensors") if not (demo / p).exists()]
    if missing:
        parser.error(f"{demo}: missing {', '.join(missing)} (a make speech-demo folder has them)")
    arms = parse_arms(args.arm)
    repeated = sorted({name for name, _ in arms if [n for n, _ in arms].count(name) > 1})
    if repeated:
        parser.error(f"arm names must differ (the table keys its rows by them): {', '.join(map(repr, repeated))}")
    bounds = {}
    for name, overrides in arms:  # every arm's settings checked before the first arm runs for minutes
        try:
            overrides[:], bounds[name] = split_bounds(overrides)
            settings.from_dict(Token2WavConfig, settings.apply_overrides(dict(saved), overrides, "token2wav.json"),
                               "token2wav.json")
        except (TypeError, ValueError) as err:
            parser.error(f"arm {name!r}: {err}")
    if any(b["pitch"] for b in bounds.values()):
        try:
            import parselmouth  # noqa: F401  (bound.pitch's tracker, checked before minutes of work)
        except ImportError:
            parser.error("bound.pitch needs Praat's pitch tracker: pip install praat-parselmouth")
    items, _ = load_speech_items(demo / "data" / "answers.jsonl", "test", args.limit)
    extractor, judge = UnitExtractor.load(demo / "kmeans"), WhisperTranscriber(args.judge)
    held_out = [(item.lang, item.answer, *extractor.extract(item.answer_audio), item.answer_audio) for item in items]
    dev = dev_clips(demo, args.dev)
    print(f"{len(held_out)} held-out answers, {len(dev)} leave-one-out training clips of {demo}; judge {args.judge}")
    if any(b != BOUNDS for b in bounds.values()):  # the true sounds: once, for every arm with a bound
        corpus = load_token2wav(demo / "token2wav").selection
        clip_audio = [row["audio"] for row in read_jsonl(demo / "data" / "token2wav_train.jsonl")]
        pitch = any(b["pitch"] for b in bounds.values())
        run_mel, run_pitch, mel_scale = corpus_sounds(corpus, clip_audio, pitch)
        true_sound = TrueSound(corpus, pitch)
        truth = {("held", i): true_sound(audio, durations) for i, (_, _, _, durations, audio) in enumerate(held_out)}
        truth |= {("dev", i): true_sound(clip_audio[c["clip"]], c["durations"]) for i, c in enumerate(dev)}
    rows = []
    for name, overrides in arms:
        config = settings.apply_overrides(dict(saved), overrides, "token2wav.json")
        token2wav = load_token2wav(demo / "token2wav", **config)
        corpus, pairs, bound = token2wav.selection, {}, bounds[name]
        kept_clips = np.random.default_rng(0).random(int(corpus.clip.max(initial=-1)) + 1) < bound["corpus"]

        def speaker(without: int, target: tuple) -> UnitSelection:
            """The arm's corpus for one utterance (``without``: a clip left out, -1 none)."""
            if bound == BOUNDS:
                return corpus if without < 0 else leave_out(corpus, without)
            keep = kept_clips[corpus.clip] & (corpus.clip != without)
            return BoundSelection(corpus, keep, bound, run_mel, run_pitch, mel_scale).speaking(truth[target])

        def heard(units, durations, lang, text):  # the speech eval's judge: padding and loop guard
            return text, hear(judge, token2wav.synthesize(units, durations), lang, text)[0]

        for i, (lang, text, units, durations, _) in enumerate(held_out):
            for kind, given in (("spoken", None), ("gold", durations)):
                token2wav.selection = speaker(-1, ("held", i))
                pairs.setdefault((kind, lang), []).append(heard(units, given, lang, text))
        for i, clip in enumerate(dev):
            token2wav.selection = speaker(clip["clip"], ("dev", i))
            pairs.setdefault(("dev", clip["lang"]), []).append(heard(clip["units"], None, clip["lang"], clip["text"]))
        token2wav.selection = corpus
        rows.append({"arm": name, "overrides": ",".join(overrides), "bounds": {k: v for k, v in bound.items() if v != BOUNDS[k]},
                     **error_rates(pairs)})
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
