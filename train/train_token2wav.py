r"""Build token2wav ``unit_mel`` from a YAML config: the unit selection's corpus, and the units -> mel
decoder when the config uses one (``mel_source: decoder`` or ``unit_selection.durations: predicted``).

    .venv/bin/python train/train_token2wav.py configs/token2wav_cpu.yaml      # unit selection: the clips' mels only
    .venv/bin/python train/train_token2wav.py configs/token2wav_cpu.yaml token2wav.mel_source=decoder \
        train.train_manifest=data/vocoder/train.jsonl train.output_dir=runs/t2w train.max_steps=4000

Overrides are ``section.key=value`` (sections ``token2wav``, ``mel_decoder``, ``train``), values
parsed as YAML. The manifest is a JSONL of ``{"id", "audio": 16 kHz wav/flac, "units":
[deduplicated ids], "durations": [50 Hz frames per unit]}`` (``data_prep/units.py manifest``).
Re-running the same command resumes from the newest checkpoint in ``output_dir``
(``train.resume=auto``). The result loads with ``llasm.speech.token2wav.load_token2wav(output_dir)``
and speaks with ``model.set_vocoder(output_dir)``.
"""

from __future__ import annotations

import sys

from llasm.io import write_jsonl
from llasm.speech.mel_training import UnitMelTrainer, load_token2wav_configs


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        token2wav, decoder, train = load_token2wav_configs(argv[0], argv[1:])
        trainer = UnitMelTrainer(token2wav, decoder, train)
    except (ValueError, FileNotFoundError) as err:  # bad config, override or manifest: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.dataset.rejects:
        path = write_jsonl(f"{train.output_dir}/rejects.jsonl", trainer.dataset.rejects)
        print(f"{len(trainer.dataset.rejects)} manifest rows rejected: {path}", file=sys.stderr)
    if trainer.resumed_from:
        print(f"resuming from {trainer.resumed_from} (step {trainer.step})")
    try:
        history = trainer.train()
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not trainer.learns:
        print(f"unit selection over {len(trainer.dataset)} clips ({trainer.token2wav().selection.num_runs} runs; "
              f"durations recorded, so no decoder to train); token2wav saved in {train.output_dir}")
        return 0
    last = history[-1] if history else {"step": trainer.step}
    print(f"done at step {trainer.step}: {last}; token2wav saved in {train.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
