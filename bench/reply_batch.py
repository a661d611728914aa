"""Writing many replies: one ``generate`` call per question against batches (``model.chat_batch``).

What ``llasm eval --batch-size`` buys where many prompts wait (the speech evaluation's round trip with a
head that reads the reply's text; the text tasks): the held-out questions of a speech-demo data file
(``--data``, the first turn of each ``split=test`` row, ``--limit`` per language), answered greedily by
``--model`` one by one, then ``--batch-sizes`` at a time. Prints each arm's seconds, its ratio against one
by one, and how many replies are the texts the one-by-one arm wrote (greedy; padding's floating-point
effects may change a reply).

    python bench/reply_batch.py --model outputs/speech-demo/stage3/final \
        --data outputs/speech-demo/data/answers.jsonl [--limit 24] [--batch-sizes 16 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an llasm checkpoint dir")
    parser.add_argument("--data", required=True, help="a speech-demo answers.jsonl (conversations with split=test)")
    parser.add_argument("--limit", type=int, default=24, help="questions per language")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 48])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes must be >= 1, got {args.batch_sizes}")

    from llasm import LlasmForConditionalGeneration
    from llasm.chat import user_turn
    from llasm.evaluation.speech import load_speech_items

    torch.set_num_threads(args.threads)
    items, errors = load_speech_items(args.data, "test", args.limit)
    questions = [i.question for i in items if i.question]
    if not questions:
        parser.error(f"--data {args.data}: no split=test question with text ({len(errors)} rows rejected)")
    model = LlasmForConditionalGeneration.from_pretrained(args.model).eval()
    print(f"{len(questions)} questions, {args.max_new_tokens} new tokens at most, {args.threads} threads")

    start = time.perf_counter()
    alone = [model.chat(text=q, max_new_tokens=args.max_new_tokens) for q in questions]
    base = time.perf_counter() - start
    print(f"  one by one       {base:7.1f} s  1.00x")
    for size in args.batch_sizes:
        start = time.perf_counter()
        replies = []
        for k in range(0, len(questions), size):
            replies += model.chat_batch([[user_turn(text=q)] for q in questions[k : k + size]],
                                        max_new_tokens=args.max_new_tokens)
        took = time.perf_counter() - start
        same = sum(a == b for a, b in zip(alone, replies))
        print(f"  batches of {size:<4}  {took:7.1f} s  {base / took:.2f}x  (same replies {same}/{len(questions)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
