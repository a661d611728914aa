"""CTC warm start of the adaptor: held-out error and time of the demo's settings vs the old ones.

    python bench/warm_start.py --data outputs/demo-starter/data        # after `make demo`
    python bench/warm_start.py --data outputs/demo-starter/data --variants demo --steps 2400

Each variant starts from the same freshly initialized adaptor, runs ``ctc_align_adaptor`` on the
demo's training clips (``asr_train.jsonl``; encoder states from the demo's cache) and decodes the
held-out clips greedily with the CTC scorer (no LLM): the 35 + 35 held-out ASR sentences and the
24 + 24 spoken held-out questions. It prints en WER / zh CER on those and on 140 training clips (the
gap is memorization), the time of the training loop, and each variant's ratios against ``base``
(the first warm start: 800 steps, fp32, no augmentation, Chinese targets as the tokenizer's words),
all run in this process. ``augment``, ``bf16`` and ``chars`` (Chinese spelled by characters) each
change one thing of ``base``; ``demo`` is what ``make demo`` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {  # base and one change each, then the demo's settings (all the changes, 1,600 steps)
    "base": dict(steps=800, cjk_chars=False),
    "augment": dict(steps=800, cjk_chars=False, time_mask=0.2, channel_dropout=0.1),
    "bf16": dict(steps=800, cjk_chars=False, mixed_precision="bf16"),
    "chars": dict(steps=800, cjk_chars=True),
    "demo": None,  # llasm.demo.warm_start_config of the starter plan
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a demo's data folder (asr_train/asr_test/instruct_test.jsonl)")
    parser.add_argument("--model", default="configs/model/starter.yaml")
    parser.add_argument("--cache", type=Path, help="encoder cache (default: the demo's, <data>/../encoder_cache)")
    parser.add_argument("--variants", nargs="+", default=["base", "demo"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, help="override every variant's steps")
    args = parser.parse_args(argv)

    import torch

    from llasm.align import AlignConfig, ctc_align_adaptor
    from llasm.builder import build_model
    from llasm.configuration import audio_token_lengths
    from llasm.demo import PLANS, encode_clips, warm_start_config
    from llasm.metrics import asr_error_rate

    for name in ("asr_train.jsonl", "asr_test.jsonl", "instruct_test.jsonl"):
        if not (args.data / name).is_file():
            parser.error(f"{args.data / name} is missing: run `make demo` first (or point --data at its data folder)")
    torch.manual_seed(0)
    model, processor = build_model(args.model)
    initial = {k: v.clone() for k, v in model.adaptor.state_dict().items()}
    cache = args.cache or args.data.parent / "encoder_cache"
    train = encode_clips(model, processor, args.data / "asr_train.jsonl", cache, desc="encode train")
    asr = encode_clips(model, processor, args.data / "asr_test.jsonl", cache, desc="encode held-out")
    spoken = encode_clips(model, processor, args.data / "instruct_test.jsonl", cache,
                          text=lambda row: row["conversations"][0]["transcript"], desc="encode questions")
    held_out = [a + b for a, b in zip(asr, spoken)]
    seen = list(range(0, len(train[0]), max(1, len(train[0]) // 140)))[:140]
    train_sample = [[column[i] for i in seen] for column in train]

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
                for lang in ("en", "zh")}

    results = {}
    for name in args.variants:
        settings = VARIANTS[name]
        config = warm_start_config(PLANS["starter"]) if settings is None else AlignConfig(batch_size=16, lr=2e-3, **settings)
        config.max_minutes, config.log_every = None, 0
        if args.steps:
            config.steps = args.steps
        model.adaptor.load_state_dict(initial)
        start = time.time()
        with torch.enable_grad():
            losses, scorer, vocab = ctc_align_adaptor(model, *train[:3], processor.tokenizer, config,
                                                      log=lambda *_: None, return_scorer=True)
        seconds = time.time() - start
        results[name] = {"seconds": seconds, "steps": len(losses), "held_out": error_rates(scorer, vocab, *held_out),
                         "train": error_rates(scorer, vocab, *train_sample)}
        r = results[name]
        print(f"{name:8s} {r['steps']:5d} steps {seconds:6.0f} s  held-out en WER {100 * r['held_out']['en']:5.1f} % "
              f"zh CER {100 * r['held_out']['zh']:5.1f} %  (training clips {100 * r['train']['en']:.1f} / "
              f"{100 * r['train']['zh']:.1f} %)", flush=True)
    if "base" in results:
        base = results["base"]
        for name, r in results.items():
            if name != "base":
                print(f"{name} vs base: time {r['seconds'] / base['seconds']:.2f}x, held-out en WER "
                      f"{r['held_out']['en'] / base['held_out']['en']:.2f}x, zh CER {r['held_out']['zh'] / base['held_out']['zh']:.2f}x")
    print(f"({len(held_out[0])} held-out clips, {len(train[0])} training clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
