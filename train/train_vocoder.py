r"""Train the unit HiFi-GAN vocoder (units -> 16 kHz audio) from a YAML config.

    .venv/bin/python train/train_vocoder.py configs/vocoder_cpu.yaml                       # ~10 min on a CPU
    .venv/bin/python train/train_vocoder.py configs/vocoder.yaml train.max_steps=400000    # paper size
    .venv/bin/python train/train_vocoder.py configs/vocoder_cpu.yaml \
        train.train_manifest=data/vocoder/train.jsonl train.output_dir=runs/voc train.resume=never

Overrides are ``section.key=value`` (or a bare ``key=value``), values parsed as YAML. The manifest
is a JSONL of ``{"id", "audio": 16 kHz wav/flac, "units": [deduplicated ids], "durations": [50 Hz
frames per unit]}``. Re-running the same command resumes from the newest checkpoint in
``output_dir`` (``train.resume=auto``). The result, ``output_dir/vocoder.safetensors`` +
``vocoder_config.json``, loads with ``llasm.speech.vocoder.UnitHifiGan.from_pretrained(output_dir)``.
"""

from __future__ import annotations

import sys

from llasm.speech.vocoder_config import load_vocoder_configs
from llasm.speech.vocoder_training import VocoderTrainer


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        config, train_config = load_vocoder_configs(argv[0], argv[1:])
        trainer = VocoderTrainer(config, train_config)
    except (ValueError, FileNotFoundError) as err:  # bad config, override or manifest: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.resumed_from:
        print(f"resuming from {trainer.resumed_from} (step {trainer.step})")
    try:
        history = trainer.train()
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    last = history[-1] if history else {"step": trainer.step}
    print(f"done at step {trainer.step}: {last}; vocoder saved in {train_config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
