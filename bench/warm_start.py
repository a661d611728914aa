"""CTC warm start of the adaptor: held-out error and time of the demo's settings vs the old ones.

    python bench/warm_start.py --data outputs/demo-starter/data        # after `make demo`
    python bench/warm_start.py --data outputs/demo-starter/data --variants demo --steps 2400
    python bench/warm_start.py --data outputs/demo-starter/data --variants demo --clips 229 458 916 --plot curve.png

Each variant starts from the same freshly initialized adaptor, runs ``ctc_align_adaptor`` on the
demo's training clips (``asr_train.jsonl``; encoder states from the demo's cache) and decodes the
held-out clips greedily with the CTC scorer (no LLM): the 35 + 35 held-out ASR sentences and the
24 + 24 spoken held-out questions. It prints en WER / zh CER on those and on 140 training clips (the
gap is memorization), the time of the training loop, and each variant's ratios against ``base``
(the first warm start: 800 steps, fp32, no augmentation, Chinese targets as the tokenizer's words),
all run in this process. ``augment``, ``bf16`` and ``chars`` (Chinese spelled by characters) each
change one thing of ``base``; ``demo`` is what ``make demo`` runs.

``--train NAME=FILE ...`` measures levers of the training data (voices, augmentation, their mix) one at
a time: each variant trains on each named set of clips in turn, and ``--real FILE`` (the real-voice dev
set of ``llasm real-voices``) and ``--held-out-also DIR`` (another demo's held-out clips, e.g. spoken by
other voices) are scored beside the held-out clips of ``--data``; ``--plot`` then draws the bars (PNG).

``--clips N ...`` is the data curve: each variant also runs on random subsets of N training clips
(same steps, so fewer clips are seen more often), and a power law ``error = a * clips^-b`` fitted
to each language's held-out error says how many clips of this kind the demo's goals (en WER 25 %,
zh CER 35 %) would take, if the trend held. ``--plot`` draws the curve (PNG).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEMO_WARM_START = Path(__file__).resolve().parents[1] / "configs" / "demo" / "warm_start.yaml"
VARIANTS = {  # base and one change each, then the demo's settings (all the changes, 1,600 steps)
    "base": dict(steps=800, cjk_chars=False),
    "augment": dict(steps=800, cjk_chars=False, time_mask=0.2, channel_dropout=0.1),
    "bf16": dict(steps=800, cjk_chars=False, mixed_precision="bf16"),
    "chars": dict(steps=800, cjk_chars=True),
    "demo": None,  # configs/demo/warm_start.yaml, what the starter demo runs
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a demo's data folder (asr_train/asr_test/instruct_test.jsonl)")
    parser.add_argument("--model", default="configs/model/starter.yaml")
    parser.add_argument("--cache", type=Path, help="encoder cache (default: the demo's, <data>/../encoder_cache)")
    parser.add_argument("--variants", nargs="+", default=["base", "demo"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, help="override every variant's steps")
    parser.add_argument("--clips", type=int, nargs="+", default=[],
                        help="also train on random subsets of this many training clips (the data curve)")
    parser.add_argument("--extra-train", type=Path, nargs="+", default=[],
                        help="more spoken ASR JSONL files (one clip per row) added to the training clips")
    parser.add_argument("--plot", type=Path, help="PNG of held-out error against training clips (with --clips), "
                        "or of each training set's errors (with --train)")
    parser.add_argument("--train", nargs="+", default=[], metavar="NAME=FILE",
                        help="named sets of training clips (spoken ASR JSONL) to compare, in place of asr_train.jsonl")
    parser.add_argument("--real", type=Path, help="real-voice dev set JSONL (llasm real-voices): its en WER is scored too")
    parser.add_argument("--held-out-also", type=Path, help="another demo data folder whose held-out clips are scored too")
    parser.add_argument("--json", type=Path, help="write every run's numbers here (JSON)")
    parser.add_argument("--sentences", type=int, help="with --train: only these many sentences, the same in every set "
                        "(drawn from the first set's rows; an augmented row counts as its clean row's sentence)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the adaptor's initialization and the batch order (a second seed measures the run-to-run spread)")
    args = parser.parse_args(argv)
    sets = dict(item.split("=", 1) for item in args.train)
    for name, path in sets.items():
        if not Path(path).is_file():
            parser.error(f"--train {name}={path}: file not found")

    import torch

    from llasm import settings as config_reader
    from llasm.builder import build_model
    from llasm.configuration import audio_token_lengths
    from llasm.evaluation.metrics import asr_error_rate
    from llasm.training.align import AlignConfig, ctc_align_adaptor
    from llasm.training.encoder_cache import encode_clips

    for name in ("asr_train.jsonl", "asr_test.jsonl", "instruct_test.jsonl"):
        if not (args.data / name).is_file():
            parser.error(f"{args.data / name} is missing: run `make demo` first (or point --data at its data folder)")
    torch.manual_seed(args.seed)
    model, processor = build_model(args.model)
    initial = {k: v.clone() for k, v in model.adaptor.state_dict().items()}
    cache = args.cache or args.data.parent / "encoder_cache"
    def held_out_of(folder: Path):
        asr = encode_clips(model, processor, folder / "asr_test.jsonl", cache, desc="encode held-out")
        spoken = encode_clips(model, processor, folder / "instruct_test.jsonl", cache,
                              text=lambda row: row["conversations"][0]["transcript"], desc="encode questions")
        return [a + b for a, b in zip(asr, spoken)]

    trains = {}
    if args.sentences:
        sets = same_sentences(sets, args.sentences)
    for name, path in (sets or {"": args.data / "asr_train.jsonl"}).items():
        train = encode_clips(model, processor, Path(path), cache, desc=f"encode train {name}")
        for path in args.extra_train:
            extra = encode_clips(model, processor, path, cache, desc=f"encode {path.name}")
            train = tuple(a + b for a, b in zip(train, extra))
        trains[name] = train
    held_out = held_out_of(args.data)
    scored = {"held_out": held_out}
    if args.held_out_also:
        scored["held_out_also"] = held_out_of(args.held_out_also)
    if args.real:
        scored["real"] = encode_clips(model, processor, args.real, cache, desc="encode real voices")

    def error_rates(scorer, vocab, states, frames, texts, langs) -> dict:
        hyps = []
        with torch.no_grad():
            for start in range(0, len(states), 16):
                part = states[start : start + 16]
                batch = torch.nn.utils.rnn.pad_sequence([s.float() for s in part], batch_first=True)
                lengths = [audio_token_lengths([f], model.config)[0] for f in frames[start : start + 16]]
                ids = scorer.greedy(model.adaptor(batch.to(model.adaptor_dtype)), lengths)
                hyps += [processor.tokenizer.decode([vocab[i] for i in row]) for row in ids]
        return {lang: asr_error_rate([t for t, g in zip(texts, langs) if g == lang],
                                     [h for h, g in zip(hyps, langs) if g == lang], lang)["value"]
                for lang in ("en", "zh") if lang in langs}

    results = {}

    def sizes_of(train):
        return sorted({n for n in args.clips if 0 < n < len(train[0])}) + [len(train[0])]

    for set_name, train in trains.items():
        for name in args.variants:
            settings = VARIANTS[name]
            for n in sizes_of(train):
                config = (config_reader.load(AlignConfig, DEMO_WARM_START) if settings is None
                          else AlignConfig(batch_size=16, lr=2e-3, **settings))
                config.max_minutes, config.log_every, config.seed = None, 0, args.seed
                if args.steps:
                    config.steps = args.steps
                subset = sorted(torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(0))[:n].tolist())
                model.adaptor.load_state_dict(initial)
                start = time.time()
                with torch.enable_grad():
                    losses, scorer, vocab = ctc_align_adaptor(model, *[[column[i] for i in subset] for column in train[:3]],
                                                              processor.tokenizer, config, log=lambda *_: None,
                                                              return_scorer=True)
                seconds = time.time() - start
                seen = subset[:: max(1, n // 140)][:140]  # training clips this run learned from
                train_sample = [[column[i] for i in seen] for column in train]
                key = (name if n == len(train[0]) else f"{name}@{n}") + (f"[{set_name}]" if set_name else "")
                results[key] = {"seconds": seconds, "steps": len(losses), "clips": n, "train": error_rates(scorer, vocab, *train_sample),
                                **{what: error_rates(scorer, vocab, *clips) for what, clips in scored.items()}}
                r = results[key]
                also = "".join(f"  {label} en WER {100 * r[what]['en']:5.1f} %" + (f" zh CER {100 * r[what]['zh']:5.1f} %"
                                                                                if what != "real" else "")
                               for what, label in (("held_out_also", "other held-out"), ("real", "real voices")) if what in r)
                print(f"{key:12s} {r['steps']:5d} steps {seconds:6.0f} s  held-out en WER {100 * r['held_out']['en']:5.1f} % "
                      f"zh CER {100 * r['held_out']['zh']:5.1f} %{also}  (training clips {100 * r['train']['en']:.1f} / "
                      f"{100 * r['train']['zh']:.1f} %; {n} clips)", flush=True)
    if "base" in results:
        base = results["base"]
        for name, r in results.items():
            if name != "base" and "@" not in name:
                print(f"{name} vs base: time {r['seconds'] / base['seconds']:.2f}x, held-out en WER "
                      f"{r['held_out']['en'] / base['held_out']['en']:.2f}x, zh CER {r['held_out']['zh'] / base['held_out']['zh']:.2f}x")
    sizes = sizes_of(train)
    if len(sizes) > 1:
        for name in args.variants:
            curve = {r["clips"]: r["held_out"] for key, r in results.items() if key.split("@")[0] == name}
            for lang, goal in (("en", 0.25), ("zh", 0.35)):
                a, b = power_law(list(curve), [curve[n][lang] for n in curve])
                need = (a / goal) ** (1 / b) if b > 0 else float("inf")
                print(f"{name} {lang}: held-out error ~ {a:.2f} * clips^-{b:.3f}; the goal ({100 * goal:.0f} %) "
                      f"would take ~{need:,.0f} clips ({need / len(train[0]):.1f}x these {len(train[0])})" if b > 0 else
                      f"{name} {lang}: held-out error does not fall with more clips here")
            if args.plot:
                path = args.plot if len(args.variants) == 1 else args.plot.with_name(f"{args.plot.stem}-{name}.png")
                plot_curve(curve, path, f"{name}: held-out error of the CTC warm start ({len(held_out[0])} clips)")
                print(f"plot: {path}")
    if args.json:
        from llasm.io import write_json

        write_json(args.json, results)
    if sets and args.plot:
        plot_levers(results, args.plot, f"CTC warm start ({', '.join(args.variants)}) by training clips")
        print(f"plot: {args.plot}")
    print(f"({len(held_out[0])} held-out clips, " + ", ".join(f"{len(t[0])} training clips{f' ({k})' if k else ''}"
                                                           for k, t in trains.items()) + ")")
    return 0


def same_sentences(sets: dict[str, str], n: int, seed: int = 0) -> dict[str, Path]:
    """Each set cut to the rows of ``n`` sentences drawn from the first set (an augmented row, ``augment_of``,
    stands for its clean row's sentence), written beside it as ``.<stem>.<n>-sentences.jsonl``."""
    import random

    from llasm.io import read_jsonl, write_jsonl

    tables = {name: read_jsonl(path) for name, path in sets.items()}
    first = list(dict.fromkeys(row.get("augment_of", row["id"]) for row in next(iter(tables.values()))))
    chosen = set(random.Random(seed).sample(first, min(n, len(first))))
    out = {}
    for name, path in sets.items():
        path = Path(path)
        out[name] = write_jsonl(path.with_name(f".{path.stem}.{n}-sentences.jsonl"),
                                [r for r in tables[name] if r.get("augment_of", r["id"]) in chosen])
    return out


def plot_levers(results: dict[str, dict], path: Path, title: str) -> None:
    """Grouped bars: each run's held-out en WER / zh CER (and the other held-out set, real voices when scored)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [(what, lang, label) for what, lang, label in
            (("held_out", "en", "held-out en WER"), ("held_out", "zh", "held-out zh CER"),
             ("held_out_also", "en", "other held-out en WER"), ("held_out_also", "zh", "other held-out zh CER"),
             ("real", "en", "real voices en WER")) if all(what in r for r in results.values())]
    keys = list(results)
    fig = Figure(figsize=(1.6 + 1.4 * len(keys), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(bars)
    for k, (what, lang, label) in enumerate(bars):
        ax.bar(np.arange(len(keys)) + k * width, [100 * results[key][what][lang] for key in keys], width, label=label)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, fontsize=8)
    ax.set_ylabel("error, %")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit ``log y = log a - b log x``."""
    import numpy as np

    slope, intercept = np.polyfit(np.log(x), np.log(np.maximum(y, 1e-6)), 1)
    return float(np.exp(intercept)), float(-slope)


def plot_curve(curve: dict[int, dict[str, float]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    clips = sorted(curve)
    for lang, label, goal in (("en", "en WER", 0.25), ("zh", "zh CER", 0.35)):
        line, = ax.plot(clips, [100 * curve[n][lang] for n in clips], "o-", label=label)
        ax.axhline(100 * goal, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training clips")
    ax.set_ylabel("held-out error, % (dotted: the goals)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
