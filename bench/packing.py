"""Stage-2 training speed and memory: padded vs packed rows, with and without gradient checkpointing.

Same model, data, steps and seed for every variant; each variant runs in its own process (so its
peak RSS is its own). Stage 2 updates the whole LLM on multi-turn spoken conversations of very
uneven length (a short spoken question, answers of 5-150 words), where padding costs the most:

  padded       random batches (``data.group_size: 1``), every row padded to the batch's longest;
  grouped      padded, batches drawn from length-sorted groups of 16 batches (llasm's default);
  packed       random batches, conversations packed into rows of ``--pack-length`` tokens
               (``data.packing``): no padding inside a row, each conversation attends to itself;
  padded+ckpt  padded, with ``train.gradient_checkpointing`` (memory vs speed).

Prints conversations/s, the share of computed token slots that are real tokens, peak RSS, and
ratios against ``padded``. The LLM is a random Llama of ``--width`` x ``--layers`` (big enough that
its activations, not Python, dominate the RSS); the audio tower is the tiny random Whisper.

    python bench/packing.py [--conversations 48] [--batch-size 8] [--steps 6] [--width 512 --layers 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "padded": {"data.group_size": 1},
    "grouped": {"data.group_size": 16},
    "packed": {"data.group_size": 1, "data.packing": True},
    "padded+ckpt": {"data.group_size": 1, "train.gradient_checkpointing": True},
}


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` conversations of 1-3 turns: a spoken question (tone, 1-4 s) and a text answer of 5-150 words."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        audios, turns = [], []
        for t in range(int(rng.integers(1, 4))):
            seconds = float(rng.uniform(1, 4))
            wav = root / "wavs" / f"{i}-{t}.wav"
            samples = np.arange(int(seconds * 16000)) / 16000
            sf.write(wav, (0.3 * np.sin(2 * np.pi * (150 + 10 * i) * samples)).astype(np.float32), 16000)
            audios.append(f"wavs/{i}-{t}.wav")
            words = " ".join(f"word{int(w)}" for w in rng.integers(0, 500, int(rng.integers(5, 150))))
            turns += [{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": words}]
        rows.append({"id": f"conv-{i}", "lang": "en", "audios": audios, "conversations": turns})
    path = root / "conversations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def model_yaml(root: Path, width: int, layers: int) -> Path:
    import yaml

    from llasm.io import load_yaml

    spec = load_yaml(ROOT / "configs" / "model" / "tiny.yaml")
    spec["text"]["config"].update(hidden_size=width, intermediate_size=int(width * 2.6875), num_hidden_layers=layers,
                                  num_attention_heads=width // 64, num_key_value_heads=width // 64)
    path = root / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_variant(args) -> None:
    """Child process: train one variant, print one JSON line."""
    import torch

    from llasm.training import Trainer, load_config

    torch.set_num_threads(args.threads)
    overrides = [f"{k}={json.dumps(v)}" for k, v in VARIANTS[args.variant].items()]
    cfg = load_config({
        "model": args.model, "output_dir": args.out, "resume": "none", "seed": 0,
        "trainable": {"audio_tower": "frozen", "adaptor": "full", "language_model": "full"},
        "data": {"sources": [{"path": args.data}], "max_length": args.pack_length},
        "encoder_cache": {"enabled": True, "dir": args.cache},
        "train": {"batch_size": args.batch_size, "max_steps": args.steps, "save_every": 10**9, "lr": 1e-4,
                  "scheduler": "constant"},
    }, overrides)
    trainer = Trainer(cfg)
    slots = real = 0
    forward, pad = trainer.loss, trainer.processor.tokenizer.pad_token_id

    def counting_loss(batch, needs=None):  # computed token slots vs real (non-padding) tokens
        nonlocal slots, real
        slots += batch["input_ids"].numel()
        real += int((batch["input_ids"] != pad).sum())
        return forward(batch, needs)

    trainer.loss = counting_loss
    started = time.time()
    result = trainer.fit()
    seconds = time.time() - started
    print("RESULT " + json.dumps({
        "variant": args.variant, "conversations": args.steps * args.batch_size, "seconds": seconds,
        "real_share": real / slots, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": [loss for _, loss in result["losses"]]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pack-length", type=int, default=2048, help="packed row length (data.max_length)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants; the fastest run counts")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    for hidden in ("--data", "--out", "--model", "--cache"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return run_variant(args)

    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="llasm-bench-packing-"))
    results = {}
    try:
        data = make_data(work / "data", args.conversations)
        model = model_yaml(work, args.width, args.layers)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        for round_ in range(args.repeats):  # interleaved rounds, the fastest of each kept: a shared machine's load varies
            for variant in VARIANTS:
                cmd = [sys.executable, __file__, "--variant", variant, "--data", str(data),
                       "--out", str(work / f"{variant}-{round_}"), "--model", str(model), "--cache", str(work / "cache"),
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--pack-length", str(args.pack_length), "--threads", str(args.threads)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode or not lines:
                    sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(lines[-1][len("RESULT "):])
                if variant not in results or result["seconds"] < results[variant]["seconds"]:
                    results[variant] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["padded"]
    print(f"LLM {args.width} x {args.layers} layers (random), {args.steps} steps of {args.batch_size} conversations, "
          f"rows of <= {args.pack_length} tokens when packed, {args.threads} threads, fastest of {args.repeats} runs")
    print(f"{'variant':12s} {'conv/s':>8s} {'speed-up':>9s} {'real tokens':>12s} {'peak RSS':>10s} {'RSS ratio':>10s}")
    for name, r in results.items():
        rate, base_rate = r["conversations"] / r["seconds"], base["conversations"] / base["seconds"]
        print(f"{name:12s} {rate:8.2f} {rate / base_rate:8.2f}x {r['real_share']:11.0%} "
              f"{r['peak_rss_mb']:8.0f} MB {r['peak_rss_mb'] / base['peak_rss_mb']:9.2f}x")
    same = np.allclose(results["padded+ckpt"]["losses"], base["losses"], rtol=1e-4)
    print(f"checkpointing: same losses as padded: {same}")


if __name__ == "__main__":
    main()
