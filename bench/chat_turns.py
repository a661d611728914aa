"""Multi-turn spoken chat: time to the first token and to the whole reply, with and without ``PromptCache``.

A four-turn conversation, spoken questions (espeak-ng) alternating with typed ones, each turn
re-sending the whole history as ``llasm chat`` does (``PromptCache``: only what is new since the last
call runs); the same greedy replies are checked to match. Starter models (whisper-base +
Qwen2.5-0.5B, untrained adaptor: timing is real, answers are not), else the tiny random model.
Prints each turn and the ratios (cached / whole history) over turns 2-4.

    python bench/chat_turns.py [--max-new-tokens 16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TURNS = [("en-us", "What is the capital of France?"), (None, "And of Germany?"),
         ("cmn-latn-pinyin", "中国最长的河流是哪一条？"), (None, "Answer in English, please.")]


class FirstToken(BaseStreamer):
    """perf_counter() at the first generated token (generate's first put is the prompt)."""

    def __init__(self):
        self.puts, self.at = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the conversation (medians)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not shutil.which("espeak-ng"):
        raise SystemExit("espeak-ng is needed to synthesize the questions (apt-get install espeak-ng)")
    import llasm
    from llasm.audio import load_audio
    from llasm.chat import PromptCache, user_turn
    from llasm.io import llasm_home

    home = Path(llasm_home())
    starter = (home / "whisper-base" / "config.json").exists() and (home / "qwen2.5-0.5b-instruct" / "config.json").exists()
    model, _ = llasm.build_model(ROOT / "configs" / "model" / ("starter.yaml" if starter else "tiny.yaml"))
    model.eval()
    print(f"model: {'starter (untrained adaptor)' if starter else 'tiny random (starter models missing)'}; "
          f"{args.max_new_tokens} new tokens per turn; {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        turns = []
        for i, (voice, text) in enumerate(TURNS):
            if voice is None:
                turns.append(user_turn(None, text))
                continue
            path = Path(tmp) / f"q{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
            turns.append(user_turn(load_audio(path)))
        model.chat([turns[1]], max_new_tokens=2)  # warm-up
        replies: list[str] = []  # fixed by the first pass, so every pass sends the same history
        times = {"fresh": [[] for _ in turns], "cached": [[] for _ in turns]}  # per turn: (first, whole)
        for r in range(args.repeats):
            cache, history = PromptCache(), []
            for t, turn in enumerate(turns):
                history.append(turn)
                order = [("fresh", {}), ("cached", {"cache": cache})]
                for name, kwargs in order if r % 2 == 0 or not replies else order[::-1]:  # order effects cancel
                    hook, start = FirstToken(), time.perf_counter()
                    reply = model.chat(history, max_new_tokens=args.max_new_tokens,
                                       min_new_tokens=args.max_new_tokens, streamer=hook, **kwargs)
                    times[name][t].append((hook.at - start, time.perf_counter() - start))
                    if len(replies) == t:
                        replies.append(reply)
                    elif reply != replies[t]:
                        print(f"  note: a reply differs at turn {t + 1} (float rounding between the two paths)")
                history.append({"role": "assistant", "content": replies[t]})
    median = lambda pairs, k: statistics.median(p[k] for p in pairs)  # noqa: E731
    rows = [((median(f, 0), median(f, 1)), (median(c, 0), median(c, 1)))
            for f, c in zip(times["fresh"], times["cached"])]
    print(f"median of {args.repeats} passes")
    for i, (fresh, cached) in enumerate(rows, 1):
        print(f"  turn {i}: first token {fresh[0] * 1e3:6.0f} -> {cached[0] * 1e3:6.0f} ms, "
              f"whole reply {fresh[1] * 1e3:6.0f} -> {cached[1] * 1e3:6.0f} ms  (whole history -> PromptCache)")
    later = rows[1:]
    for k, what in ((0, "first token"), (1, "whole reply")):
        ratio = sum(r[1][k] for r in later) / sum(r[0][k] for r in later)
        print(f"  turns 2-{len(rows)}, {what}: PromptCache / whole history = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
