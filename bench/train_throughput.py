"""Stage-1 training throughput: ours vs the LLaSM recipe, same models and data, in one run.

ours:  no 30 s padding, batches grouped by length, frozen-Whisper outputs cached (fp16 safetensors)
       once and reused by later epochs;
       the LM head only on answer positions and the frozen LLM's shared prompt prefix computed once;
LLaSM: every clip padded to 30 s (``pad_to_30s: true``, 1500 encoder frames -> 188 audio tokens at
       stack 8), random batches, the encoder re-run every step, the plain full-sequence loss.
Each recipe runs in its own process (so its peak RSS is its own) for the same epochs over the same
short clips (espeak-ng speech, or tones without it). Goal: ratio >= 8x.

    python bench/train_throughput.py [--model configs/model/starter.yaml] [--clips 24] [--epochs 3] [--batch-size 8]

Batch 8 by default: closer to stage 1's 16 per device (configs/stage1_asr_align.yaml) than 4, and
the LLaSM recipe's padded batches of 16 would not fit this machine's 24 GB (batch 8: 12 GB).

``--model`` defaults to the starter model when ``$LLASM_HOME/whisper-base`` and
``$LLASM_HOME/qwen2.5-0.5b-instruct`` exist, else ``configs/model/tiny.yaml``.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech models learn to listen",
    "hello world",
    "he hoped there would be stew for dinner turnips and carrots",
    "a short clip",
    "training throughput matters when the encoder is frozen",
    "please transcribe this sentence",
    "one two three four five six seven",
]


def default_model() -> str:
    from llasm.io import llasm_home

    home = Path(llasm_home())
    if (home / "whisper-base").is_dir() and (home / "qwen2.5-0.5b-instruct").is_dir():
        return str(ROOT / "configs" / "model" / "starter.yaml")
    return str(ROOT / "configs" / "model" / "tiny.yaml")


def make_clips(root: Path, n: int) -> Path:
    """``n`` ASR rows: espeak-ng speech (1-4 s) when installed, else tones of similar lengths."""
    import soundfile as sf

    (root / "wavs").mkdir(parents=True, exist_ok=True)
    espeak = shutil.which("espeak-ng")
    rows = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        wav = root / "wavs" / f"{i}.wav"
        if espeak:
            subprocess.run([espeak, "-s", str(150 + 10 * (i % 5)), "-w", str(wav), text], check=True)
        else:
            seconds = 1.0 + 3.0 * (i % 7) / 6
            t = np.arange(int(seconds * 16000)) / 16000
            sf.write(wav, (0.3 * np.sin(2 * np.pi * (180 + 20 * i) * t)).astype(np.float32), 16000)
        rows.append({"id": f"clip-{i}", "lang": "en", "audios": [f"wavs/{i}.wav"],
                     "conversations": [{"from": "human", "value": "<speech>\nTranscribe the audio."},
                                       {"from": "gpt", "value": text}]})
    path = root / "asr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_variant(args) -> None:
    """Child process: train one recipe, print one JSON line."""
    import torch

    from llasm.builder import build_model
    from llasm.io import load_yaml
    from llasm.training import Trainer, load_config

    torch.set_num_threads(args.threads)
    spec = load_yaml(args.model)
    spec.setdefault("audio", {})["pad_to_30s"] = args.variant == "llasm"
    model, processor = build_model(spec)
    cfg = load_config({
        "model": args.model, "output_dir": args.out, "resume": "none", "seed": 0,
        "data": {"sources": [{"path": args.data}], "group_size": 16 if args.variant == "ours" else 1},
        "encoder_cache": {"enabled": args.variant == "ours", "dir": os.path.join(args.out, "cache")},
        "train": {"batch_size": args.batch_size, "epochs": args.epochs, "save_every": 10**9, "lr": 1e-4,
                  "scheduler": "constant", "fast_loss": args.variant == "ours"},
    })
    trainer = Trainer(cfg, model, processor)
    result = trainer.fit()
    samples = args.epochs * len(trainer.dataset)
    print("RESULT " + json.dumps({
        "variant": args.variant, "samples": samples, "seconds": result["seconds"],
        "samples_per_s": samples / result["seconds"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result["losses"][-1][1], "audio_tokens_per_clip": processor.num_audio_tokens(3 * 16000),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model YAML (default: starter if installed, else tiny)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=["ours", "llasm"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or default_model()
    if args.variant:
        return run_variant(args)

    work = Path(tempfile.mkdtemp(prefix="llasm-bench-"))
    try:
        data = make_clips(work / "data", args.clips)
        results = {}
        for variant in ("ours", "llasm"):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--data", str(data),
                   "--out", str(work / variant), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(lines[-1][len("RESULT "):])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model: {args.model}; {args.clips} clips x {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.threads} threads")
    for name, label in (("ours", "ours (cache, length groups, no pad, fast loss)"), ("llasm", "LLaSM (pad to 30 s, re-encode)")):
        r = results[name]
        print(f"  {label:44s} {r['samples_per_s']:8.3f} samples/s  {r['seconds']:8.1f} s  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB  final loss {r['final_loss']:.3f}")
    ratio = results["ours"]["samples_per_s"] / results["llasm"]["samples_per_s"]
    print(f"throughput ratio ours / LLaSM: {ratio:.1f}x (goal >= 8x)")


if __name__ == "__main__":
    main()
